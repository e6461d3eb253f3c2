"""Envelope encryption: master key parsing, sealing, tamper detection, key wrapping and rewrapping."""

from __future__ import annotations

import base64
import os
import random
import secrets
import traceback
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ledger.commands import CreatedKey, Revealed, UpsertSecret
from ledger.crypto import (
    IV_BYTES,
    KEY_BYTES,
    TAG_BYTES,
    Keyring,
    MasterKey,
    new_data_key,
    new_data_key_id,
    open_value,
    parse_sealed,
    seal_value,
)
from ledger.errors import CryptoError, IntegrityError, MasterKeyError
from ledger.keys import rewrap_all
from ledger.recorder import Recorder
from ledger.records import DataKeyRow
from ledger.service import Ledger
from ledger.sqlite_store import SqliteRecorder
from ledger.verify import verify_since_checkpoints
from projections.sqlite_tables import all_projectors
from tests.conftest import ADMIN, ctx_for

ENV = "KEYLEDGER_MASTER_KEY"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def join(*parts: bytes) -> str:
    return ":".join(b64(part) for part in parts)


def assert_key_text_absent(exc: BaseException, *texts: str) -> None:
    """Neither the message, the repr nor the printed traceback carries the key material."""
    printed = "".join(traceback.format_exception(exc))
    for text in texts:
        if not text.strip():
            continue
        assert text not in str(exc)
        assert text not in repr(exc)
        assert text not in printed


# -- MasterKey.parse ------------------------------------------------------------------------------


def test_parse_accepts_base64_urlsafe_base64_and_hex_of_the_same_key() -> None:
    raw = os.urandom(KEY_BYTES)
    while b"+" not in base64.b64encode(raw) and b"/" not in base64.b64encode(raw):
        raw = os.urandom(KEY_BYTES)  # make sure the urlsafe form differs from the standard one
    forms = [
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        raw.hex(),
        raw.hex().upper(),
        f"  {raw.hex()}\n",  # as read from a file
        base64.b64encode(raw).decode() + "\n",
    ]
    assert forms[0] != forms[1]
    ids = {MasterKey.parse(form).kek_id for form in forms}
    assert ids == {MasterKey(raw).kek_id}
    assert MasterKey.parse(forms[0]).kek_id != MasterKey(os.urandom(KEY_BYTES)).kek_id


def test_parsed_key_is_the_key_that_was_given() -> None:
    """The same bytes in any notation wrap and unwrap for one another."""
    raw = os.urandom(KEY_BYTES)
    wrapping = Keyring(MasterKey.parse(raw.hex()))
    kek_id, wrapped = wrapping.wrap("dek_1", b"k" * KEY_BYTES)
    opening = Keyring(MasterKey.parse(base64.urlsafe_b64encode(raw).decode()))
    assert opening.unwrap("dek_1", kek_id, wrapped) == b"k" * KEY_BYTES


@pytest.mark.parametrize("text", [None, "", "   ", "\n"])
def test_parse_missing_key(text: str | None) -> None:
    with pytest.raises(MasterKeyError, match=f"{ENV} is missing") as info:
        MasterKey.parse(text)
    assert "base64" in str(info.value) and "hex" in str(info.value)


def test_parse_names_the_variable_it_was_given() -> None:
    with pytest.raises(MasterKeyError, match="OLD_MASTER_KEY is missing"):
        MasterKey.parse("", name="OLD_MASTER_KEY")


@pytest.mark.parametrize("size", [16, 31, 33, 48, 64])
@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
def test_parse_wrong_length_names_the_length_not_the_key(size: int, encode: object) -> None:
    assert callable(encode)
    raw = os.urandom(size)
    text = encode(raw).decode()
    with pytest.raises(MasterKeyError) as info:
        MasterKey.parse(text)
    message = str(info.value)
    assert ENV in message
    assert f"{KEY_BYTES} bytes" in message and f"got {size}" in message
    assert_key_text_absent(info.value, text, raw.hex())


@pytest.mark.parametrize(
    "text",
    [
        "not a key at all!",
        "A" * 43 + "!",
        "=" + "A" * 43,  # padding first
        "AAAA=AAAA" + "A" * 35,  # padding in the middle
        "AAA",  # a lone partial quantum
        "A" * 43 + "===",
        "é" * 44,
        "\x00" * 44,
    ],
)
def test_parse_bad_base64(text: str) -> None:
    expected = f"{ENV} (is not valid base64|is neither base64 nor 64 hexadecimal|must decode to 32 bytes)"
    with pytest.raises(MasterKeyError, match=expected) as i:
        MasterKey.parse(text)
    assert_key_text_absent(i.value, text)


@pytest.mark.parametrize("length", [63, 65, 62])
def test_parse_wrong_number_of_hex_characters(length: int) -> None:
    text = secrets.token_hex(33)[:length]
    with pytest.raises(MasterKeyError) as info:
        MasterKey.parse(text)
    assert ENV in str(info.value)
    assert_key_text_absent(info.value, text)


def test_parse_non_hex_64_characters_is_refused() -> None:
    text = "g" + secrets.token_hex(32)[1:]  # 64 characters, one not hex: base64 of 48 bytes
    with pytest.raises(MasterKeyError, match="got 48"):
        MasterKey.parse(text)


def test_master_key_constructor_refuses_wrong_sizes() -> None:
    for size in (0, 31, 33):
        with pytest.raises(MasterKeyError, match=f"got {size}"):
            MasterKey(os.urandom(size))


def test_gap_parse_accepts_unpadded_urlsafe_base64() -> None:
    raw = os.urandom(KEY_BYTES)
    text = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert len(text) == 43
    assert MasterKey.parse(text).kek_id == MasterKey(raw).kek_id


def test_gap_63_hex_characters_message_mentions_hex() -> None:
    with pytest.raises(MasterKeyError) as info:
        MasterKey.parse(secrets.token_hex(32)[:63])
    assert "hex" in str(info.value)


# -- sealing: tampering, moving, malformed text ----------------------------------------------------


def _flip(raw: bytes, bit: int) -> bytes:
    out = bytearray(raw)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_every_single_bit_flip_of_a_sealed_value_is_rejected() -> None:
    data_key = new_data_key()
    plaintext = os.urandom(64)
    sealed = seal_value(data_key, plaintext, "acme", "DB_PASSWORD", 3)
    assert open_value(data_key, sealed, "acme", "DB_PASSWORD", 3) == plaintext
    parts = list(parse_sealed(sealed))
    assert [len(p) for p in parts] == [IV_BYTES, 64, TAG_BYTES]
    flips = 0
    for index, part in enumerate(parts):
        for bit in range(len(part) * 8):
            tampered = list(parts)
            tampered[index] = _flip(part, bit)
            text = join(*tampered)
            assert parse_sealed(text)[index] == tampered[index]  # canonical: only the bit changed
            with pytest.raises((IntegrityError, CryptoError)):
                open_value(data_key, text, "acme", "DB_PASSWORD", 3)
            flips += 1
    assert flips == (IV_BYTES + 64 + TAG_BYTES) * 8 == 736


def test_tamper_error_names_no_value() -> None:
    data_key = new_data_key()
    plaintext = b"hunter2-" + secrets.token_hex(16).encode()
    iv, body, tag = parse_sealed(seal_value(data_key, plaintext, "acme", "X", 1))
    with pytest.raises(IntegrityError) as info:
        open_value(data_key, join(iv, body, _flip(tag, 0)), "acme", "X", 1)
    assert "failed authentication" in str(info.value)
    assert_key_text_absent(info.value, plaintext.decode(), data_key.hex(), b64(data_key))


@pytest.mark.parametrize(
    ("org", "name", "version"),
    [
        ("globex", "DB_PASSWORD", 3),  # another org
        ("acme", "DB_PASSWORD_2", 3),  # another name
        ("acme", "db_password", 3),
        ("acme", "DB_PASSWORD", 2),  # another version
        ("acme", "DB_PASSWORD", 4),
        ("acmeD", "B_PASSWORD", 3),  # the same characters split differently
        ("acme", "DB_PASSWORD3", 3),
    ],
)
def test_a_ciphertext_moved_to_another_row_does_not_open(org: str, name: str, version: int) -> None:
    data_key = new_data_key()
    sealed = seal_value(data_key, b"value", "acme", "DB_PASSWORD", 3)
    with pytest.raises(IntegrityError):
        open_value(data_key, sealed, org, name, version)
    assert open_value(data_key, sealed, "acme", "DB_PASSWORD", 3) == b"value"


def test_a_value_does_not_open_with_another_data_key() -> None:
    sealed = seal_value(new_data_key(), b"value", "acme", "X", 1)
    with pytest.raises(IntegrityError):
        open_value(new_data_key(), sealed, "acme", "X", 1)


# Fixed bytes, not os.urandom: the test ids must be the same in every collecting process (pytest-xdist).
fixed_bytes = random.Random(20261128).randbytes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected three base64 parts"),
        (join(fixed_bytes(12), fixed_bytes(5)), "expected three base64 parts"),  # a part missing
        (join(fixed_bytes(12), fixed_bytes(5), fixed_bytes(16), fixed_bytes(4)), "expected three base64 parts"),
        (join(fixed_bytes(12), fixed_bytes(5), fixed_bytes(16)).replace(":", ";"), "expected three base64 parts"),
        ("!!!!:" + join(fixed_bytes(5), fixed_bytes(16)), "iv is not valid base64"),
        (join(fixed_bytes(12)) + ":AA*A:" + join(fixed_bytes(16)), "ciphertext is not valid base64"),
        (join(fixed_bytes(12), fixed_bytes(6)) + ":" + b64(fixed_bytes(16))[:-2], "tag is not valid base64"),
        (join(fixed_bytes(12)) + ": AAA:" + join(fixed_bytes(16)), "ciphertext is not valid base64"),
        (join(fixed_bytes(12)) + ":AAF=:" + join(fixed_bytes(16)), "ciphertext is not canonical base64"),
        (join(fixed_bytes(16), fixed_bytes(5), fixed_bytes(16)), "iv must be 12 bytes, got 16"),
        (join(fixed_bytes(11), fixed_bytes(5), fixed_bytes(16)), "iv must be 12 bytes, got 11"),
        (join(b"", fixed_bytes(5), fixed_bytes(16)), "iv must be 12 bytes, got 0"),
        (join(fixed_bytes(12), fixed_bytes(5), fixed_bytes(12)), "tag must be 16 bytes, got 12"),
        (join(fixed_bytes(12), fixed_bytes(5), fixed_bytes(17)), "tag must be 16 bytes, got 17"),
        ("::", "iv must be 12 bytes, got 0"),
    ],
)
def test_malformed_stored_strings_are_crypto_errors(text: str, message: str) -> None:
    with pytest.raises(CryptoError, match="^malformed ciphertext: " + message) as info:
        parse_sealed(text)
    assert not isinstance(info.value, MasterKeyError)
    with pytest.raises(CryptoError, match=message):
        open_value(new_data_key(), text, "acme", "X", 1)
    for part in text.split(":"):
        if len(part) >= 4:
            assert part not in str(info.value)


def test_empty_plaintext_is_a_valid_sealed_value() -> None:
    data_key = new_data_key()
    sealed = seal_value(data_key, b"", "acme", "EMPTY", 1)
    assert parse_sealed(sealed)[1] == b""
    assert open_value(data_key, sealed, "acme", "EMPTY", 1) == b""


_B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_: "


@given(st.one_of(st.text(), st.text(alphabet=_B64_CHARS), st.binary().map(lambda b: b.decode("latin-1"))))
@example("\ud800:AAAA:AAAA")
@example("AAAAAAAAAAAAAAAA:AAAA:AAAAAAAAAAAAAAAAAAAAAA==")
def test_fuzz_parse_and_open_arbitrary_text(text: str) -> None:
    """Arbitrary text never opens, and never fails with anything but the ledger's crypto errors."""
    try:
        parse_sealed(text)
    except CryptoError:
        pass
    with pytest.raises((CryptoError, IntegrityError)):
        open_value(b"\x01" * KEY_BYTES, text, "acme", "X", 1)


@st.composite
def sealed_like(draw: st.DrawFn) -> str:
    """Three well-formed parts of random lengths: reaches the size checks and AES-GCM itself."""
    sizes = [draw(st.sampled_from([0, 11, 12, 13])), draw(st.integers(0, 40)), draw(st.sampled_from([0, 15, 16]))]
    return join(*(draw(st.binary(min_size=n, max_size=n)) for n in sizes))


@given(sealed_like())
def test_fuzz_well_formed_but_forged_parts(text: str) -> None:
    with pytest.raises((CryptoError, IntegrityError)):
        open_value(b"\x02" * KEY_BYTES, text, "acme", "X", 1)


# -- round trip and IV uniqueness ---------------------------------------------------------------------


@given(
    size=st.integers(0, 65_536),
    seed=st.randoms(use_true_random=False),
    org=st.from_regex(r"[a-z0-9][a-z0-9_-]{0,62}", fullmatch=True),
    name=st.text(min_size=1, max_size=256).filter(lambda n: "/" not in n),
    version=st.integers(1, 2**31),
)
@example(size=0, seed=None, org="a", name="n", version=1)
@example(size=65_536, seed=None, org="acme", name="BIG", version=7)
def test_seal_open_round_trip(size: int, seed: object, org: str, name: str, version: int) -> None:
    plaintext = seed.randbytes(size) if seed is not None else os.urandom(size)  # type: ignore[attr-defined]
    data_key = new_data_key()
    sealed = seal_value(data_key, plaintext, org, name, version)
    iv, body, tag = parse_sealed(sealed)
    assert (len(iv), len(body), len(tag)) == (IV_BYTES, size, TAG_BYTES)
    if size >= 16:
        assert plaintext not in body  # it is encrypted, not copied
    assert open_value(data_key, sealed, org, name, version) == plaintext


def test_100k_seals_never_repeat_an_iv() -> None:
    data_key = new_data_key()
    ivs = {seal_value(data_key, b"v", "acme", "X", 1).split(":", 1)[0] for _ in range(100_000)}
    assert len(ivs) == 100_000


def test_sealing_twice_gives_different_ciphertexts() -> None:
    data_key = new_data_key()
    assert seal_value(data_key, b"same", "a", "n", 1) != seal_value(data_key, b"same", "a", "n", 1)


# -- wrapping data keys --------------------------------------------------------------------------------


def test_wrap_unwrap_round_trip_and_binding_to_the_data_key_id() -> None:
    ring = Keyring(MasterKey.generate()[0])
    data_key, data_key_id = new_data_key(), new_data_key_id()
    kek_id, wrapped = ring.wrap(data_key_id, data_key)
    assert kek_id == ring.current.kek_id
    assert ring.unwrap(data_key_id, kek_id, wrapped) == data_key
    ring.check(data_key_id, kek_id, wrapped)
    with pytest.raises(IntegrityError):  # a wrapped key copied to another row does not open
        ring.unwrap(new_data_key_id(), kek_id, wrapped)


def test_a_wrong_master_key_does_not_open_a_wrapped_data_key() -> None:
    right, wrong = MasterKey.generate()[0], MasterKey.generate()[0]
    data_key_id = new_data_key_id()
    kek_id, wrapped = Keyring(right).wrap(data_key_id, new_data_key())
    # Another key is a different kek id: refused by name, naming no key material.
    with pytest.raises(CryptoError, match="not configured") as info:
        Keyring(wrong).unwrap(data_key_id, kek_id, wrapped)
    assert kek_id in str(info.value)
    with pytest.raises(CryptoError):
        Keyring(wrong).check(data_key_id, kek_id, wrapped)
    # And if a wrong key were presented under the right id, AES-GCM itself refuses it.
    impostor = MasterKey.generate()[0]
    impostor.kek_id = kek_id
    with pytest.raises(IntegrityError):
        Keyring(impostor).unwrap(data_key_id, kek_id, wrapped)


def test_a_wrapped_data_key_does_not_open_under_another_kek_id_of_the_keyring() -> None:
    """The kek id is bound into the associated data: relabelling a wrapped key does not open it."""
    first, second = MasterKey.generate()[0], MasterKey.generate()[0]
    data_key_id = new_data_key_id()
    kek_id, wrapped = Keyring(first).wrap(data_key_id, new_data_key())
    assert kek_id == first.kek_id
    ring = Keyring(second, previous=[first])
    with pytest.raises(IntegrityError):
        ring.unwrap(data_key_id, second.kek_id, wrapped)


def test_keyring_wraps_with_current_and_unwraps_with_previous() -> None:
    old, new = MasterKey.generate()[0], MasterKey.generate()[0]
    data_key = new_data_key()
    old_kek, old_wrapped = Keyring(old).wrap("dek_a", data_key)
    ring = Keyring(new, previous=[old])
    assert ring.kek_ids == sorted([old.kek_id, new.kek_id])
    assert ring.unwrap("dek_a", old_kek, old_wrapped) == data_key
    new_kek, new_wrapped = ring.rewrap("dek_a", old_kek, old_wrapped)
    assert new_kek == new.kek_id and new_wrapped != old_wrapped
    assert Keyring(new).unwrap("dek_a", new_kek, new_wrapped) == data_key
    with pytest.raises(CryptoError):
        Keyring(old).unwrap("dek_a", new_kek, new_wrapped)


# -- rewrapping every data key of a real ledger ------------------------------------------------------------


async def all_data_keys(recorder: Recorder) -> list[DataKeyRow]:
    return await recorder.data_keys_after("", limit=1_000_000)


async def test_rewrap_moves_every_data_key_to_the_new_master_key(
    ledger: Ledger, master_key: MasterKey, db_path: Path
) -> None:
    admin = await ledger.create_org(ADMIN, "acme")
    other = await ledger.create_org(ADMIN, "globex")
    values: dict[tuple[str, str], bytes] = {}
    for created, count in ((admin, 5), (other, 3)):
        for i in range(count):
            name = f"SECRET_{i}"
            for _ in range(1 + i % 2):  # some get a second version, and so a second data key
                value = os.urandom(24)
                await ledger.upsert_secret(ctx_for(created), created.org, name, value)
                values[(created.org, name)] = value
    await ledger.delete_secret(ctx_for(admin), "acme", "SECRET_0")
    del values[("acme", "SECRET_0")]

    before = await all_data_keys(ledger.recorder)
    assert len(before) == 5 + 2 + 3 + 1
    assert {row.kek_id for row in before} == {master_key.kek_id}
    data_keys = {row.id: Keyring(master_key).unwrap(row.id, row.kek_id, row.wrapped) for row in before}

    new_key = MasterKey.generate()[0]
    seen: list[int] = []
    assert await rewrap_all(ledger, new_key, ADMIN, progress=lambda done, _total: seen.append(done)) == len(before)
    assert seen[-1] == len(before)
    # While the ledger keeps serving, a value written now is wrapped by the new key and all still open.
    await ledger.upsert_secret(ctx_for(admin), "acme", "AFTER", b"after")
    assert (await ledger.reveal_secret(ctx_for(admin), "acme", "SECRET_1")).value == values[("acme", "SECRET_1")]
    rotated_events = [r for r in await ledger.recorder.read_after(0, 10_000) if r.type == "master_key.rotated"]
    assert len(rotated_events) == 1
    assert b"kek_" in rotated_events[0].body and master_key.kek_id.encode() in rotated_events[0].body

    after = [row for row in await all_data_keys(ledger.recorder) if row.id in data_keys]
    assert [row.id for row in after] == [row.id for row in before]
    for old_row, row in zip(before, after, strict=True):
        assert row.kek_id == new_key.kek_id
        assert row.wrapped != old_row.wrapped
        assert Keyring(new_key).unwrap(row.id, row.kek_id, row.wrapped) == data_keys[row.id]
        with pytest.raises(CryptoError):
            Keyring(master_key).unwrap(row.id, row.kek_id, row.wrapped)
        impostor = MasterKey.generate()[0]  # the old key presented under the new id: still refused
        impostor._aead, impostor.kek_id = master_key._aead, new_key.kek_id
        with pytest.raises(IntegrityError):
            Keyring(impostor).unwrap(row.id, row.kek_id, row.wrapped)

    # Every org's head is checkpointed under the new key, so a start with the new key alone trusts it.
    for org in await ledger.recorder.orgs():
        checkpoint = await ledger.recorder.latest_checkpoint(org)
        assert checkpoint is not None and checkpoint.public_key == new_key.signing_key().public_key
    assert (await verify_since_checkpoints(ledger.recorder, Keyring(new_key).signing_public_keys)).ok
    assert not (await verify_since_checkpoints(ledger.recorder, Keyring(master_key).signing_public_keys)).ok

    # A server restarted with the new key alone reveals every value; with the old key alone, none,
    # and a reveal that cannot open records nothing.
    await ledger.stop()
    rotated = Ledger(SqliteRecorder(db_path, all_projectors()), Keyring(new_key))
    await rotated.start()
    try:
        for (org, name), value in values.items():
            key = admin if org == "acme" else other
            revealed = await rotated.reveal_secret(ctx_for(key), org, name)
            assert revealed.value == value
    finally:
        await rotated.stop()
    stale = Ledger(SqliteRecorder(db_path, all_projectors()), Keyring(master_key))
    await stale.start()
    try:
        seq = await stale.recorder.max_seq()
        with pytest.raises(CryptoError):
            await stale.reveal_secret(ctx_for(admin), "acme", "SECRET_1")
        assert await stale.recorder.max_seq() == seq
    finally:
        await stale.stop()


# -- reprs never carry secrets ------------------------------------------------------------------------------


def test_reprs_carry_no_key_bytes_api_key_or_value() -> None:
    master, text = MasterKey.generate()
    raw = base64.b64decode(text)
    previous = MasterKey.generate()
    ring = Keyring(master, previous=[previous[0]])
    forbidden = [text, raw.hex(), base64.urlsafe_b64encode(raw).decode(), repr(raw)[2:-1],
                 previous[1], base64.b64decode(previous[1]).hex()]
    api_key = "rt_live_" + secrets.token_hex(20)
    created = CreatedKey(key_id="key_1", org="acme", label="ci", role="admin", scope="all", created_at=1,
                         api_key=api_key)
    value = b"sk-" + secrets.token_hex(24).encode()
    revealed = Revealed(name="OPENAI", version=2, value=value)
    command = UpsertSecret(org="acme", ctx=ADMIN, name="OPENAI", value=value)
    for obj in (master, ring, created, revealed, command):
        for shown in (repr(obj), str(obj), f"{obj!r}", f"{[obj]}"):
            for text_form in (*forbidden, api_key, value.decode(), repr(value)):
                assert text_form not in shown, type(obj).__name__
    assert master.kek_id in repr(master) and master.kek_id in repr(ring)
    assert "key_1" in repr(created) and "OPENAI" in repr(revealed)


def test_gap_key_creating_commands_hide_the_api_key_in_repr() -> None:
    from ledger.commands import CreateApiKey, CreateOrg

    api_key = "rt_live_" + secrets.token_hex(20)
    commands = [
        CreateOrg(org="acme", ctx=ADMIN, key_id="key_1", api_key=api_key),
        CreateApiKey(org="acme", ctx=ADMIN, key_id="key_2", api_key=api_key, label="ci", role="member", scope="all"),
    ]
    for command in commands:
        assert api_key not in repr(command)
