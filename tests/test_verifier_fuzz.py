"""The verifiers given bad input say invalid: they never crash and never say ok.

- Checkpoint texts mutated by hypothesis: `parse_checkpoint` raises only CheckpointError, or the text parses
  and its signature fails (CheckpointError) unless the text is the original, byte for byte; a chain or an
  export checked against such a checkpoint is not ok.
- `verify_signature` with random keys, messages and signatures answers False and never raises.
- JSON Lines export lines mutated by hypothesis (random bytes, JSON of wrong types, huge numbers, missing
  fields, ...): `verify_export` answers, never raises, and says ok only when the lines still mean what the
  original lines meant (or a prefix of them: a truncated tail needs a checkpoint, see test_structural_attacks).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.checkpoint import Checkpoint, CheckpointError, check_signature, parse_checkpoint, sign_checkpoint
from ledger.codec import decode_event, encode_event
from ledger.crypto import Keyring, MasterKey, SigningKey, verify_signature
from ledger.events import Actor, SecretRevealed, Source
from ledger.export import ExportLine, jsonl, verify_export
from ledger.records import GENESIS_HASH, chain_hash
from ledger.service import Ledger
from ledger.sqlite_store import SqliteRecorder, iter_org_records, iter_rows
from ledger.verify import Row, verify_rows
from projections.sqlite_tables import all_projectors
from tests.conftest import ADMIN, ctx_for

KEY = SigningKey(hashlib.sha256(b"keyledger fuzz signing key").digest())
FUZZ = settings(max_examples=5 * settings.default.max_examples)  # each example costs little: try many
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@functools.cache
def ledger_data() -> tuple[tuple[Row, ...], tuple[bytes, ...], str]:
    """A small real ledger of one org: its rows, its JSON Lines export, and a checkpoint text of its head."""

    async def build(path: Path) -> None:
        led = Ledger(SqliteRecorder(path, all_projectors()), Keyring(MasterKey.generate()[0]))
        await led.start()
        try:
            admin = ctx_for(await led.create_org(ADMIN, "acme"))
            await led.upsert_secret(admin, "acme", "db", b"value-1", scope="tools", description="the db")
            await led.reveal_secret(admin, "acme", "db", reason="deploy \u00e9\u4e2d")
            await led.upsert_secret(admin, "acme", "db", b"value-2")
            await led.delete_secret(admin, "acme", "db")
        finally:
            await led.stop()

    with tempfile.TemporaryDirectory(prefix="keyledger-fuzz-") as tmp:
        path = Path(tmp) / "keyledger.db"
        asyncio.run(build(path))
        rows = tuple(iter_rows(path))
        records = list(iter_org_records(path, "acme"))
    lines = tuple(jsonl((r, decode_event(r.body)) for r in records))
    head = records[-1]
    text = sign_checkpoint(KEY, "acme", head.org_seq, head.hash, head.at).text()
    return rows, lines, text


def original_checkpoint() -> str:
    return ledger_data()[2]


def test_the_original_checkpoint_verifies() -> None:
    rows, lines, text = ledger_data()
    checkpoint = parse_checkpoint(text)
    check_signature(checkpoint, {KEY.public_key})
    assert verify_rows(rows, checkpoints=[checkpoint], trusted_keys={KEY.public_key}).ok
    assert verify_export(lines, checkpoint=checkpoint, trusted_keys={KEY.public_key}).ok
    assert verify_export(lines).ok and len(lines) == 6


# -- checkpoint texts ------------------------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def non_canonical(encoded: str) -> str:
    """The same bytes in base64 whose unused low bits of the last character are not zero."""
    stripped = encoded.rstrip("=")
    last = B64.index(stripped[-1])
    unused = {1: 0b11, 2: 0b1111}[len(encoded) - len(stripped)]
    return stripped[:-1] + B64[last | unused] + encoded[len(stripped):]


def signature_tokens(encoded: str, size: int) -> st.SearchStrategy[str]:
    """Ways to spoil a base64 token of `size` bytes: other bytes, other lengths, other alphabets, damage."""
    return st.one_of(
        st.binary(min_size=size, max_size=size).map(b64),
        st.binary(max_size=3 * size).map(b64),
        st.just(non_canonical(encoded)),
        st.just(encoded.rstrip("=")),
        st.just(base64.urlsafe_b64encode(base64.b64decode(encoded)).decode()),
        st.just(encoded + "="),
        st.just(encoded[:-4]),
        st.just(encoded[1:] + "A"),
        st.just(encoded.lower()),
        st.just(" " + encoded),
        st.just(""),
        st.text(max_size=100),
        st.text(alphabet=B64 + "=-_", max_size=120),
    )


ORG_SEQS = ("0", "-1", "01234", "9" * 19, "9" * 18, "1 ", "+1", "1_0", "1e3", "0x10", str(2**64), str(10**400),
            "\uff11\uff12", "\u0661\u0662", "\u00b2", "\u2460", "\U0001d7d9", " 6", "6\t", "")
TIMES = ("2026-13-01T00:00:00.000000Z", "2026-02-30T00:00:00.000000Z", "2026-01-01T24:00:00.000000Z",
         "2026-01-01T00:00:60.000000Z", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00.000000+00:00",
         "2026-01-01T00:00:00.000000z", "2026-01-01 00:00:00.000000Z", "0000-01-01T00:00:00.000000Z",
         "0001-01-01T00:00:00.000000Z", "1969-12-31T23:59:59.999999Z", "1970-01-01T00:00:00.000000Z",
         "2026-01-01T00:00:00.0000000Z", "\u0662\u0660\u0662\u0666-01-01T00:00:00.000000Z",
         "2026-01-01T00:00:00.000001Z", "9999-12-30T23:59:59.000000Z", "99999-01-01T00:00:00.000000Z")
ORG_NAMES = ("ACME", "globex", "", "a" * 63, "a" * 64, "_system", "acme\x00", "acm\u00e9", "acme ", "-acme", "a/b")


@st.composite
def line_variants(draw: st.DrawFn, text: str) -> str:
    """Replace, drop, repeat, swap or add whole lines; well-formed field lines spoiled one way or another."""
    original = original_checkpoint().split("\n")
    head_b64 = original[3].split(" ", 1)[1]
    _, _, public_key, signature = original[5].split(" ")
    lines = text.split("\n")
    k = draw(st.integers(0, len(lines) - 1))
    choice = draw(st.sampled_from(("org_seq", "time", "org", "head", "signature", "public_key", "header",
                                   "drop", "duplicate", "swap", "extra", "crlf", "random line")))
    replacement = {
        "org_seq": (2, st.sampled_from(ORG_SEQS) | st.integers(1, 10**30).map(str), "org_seq {}"),
        "time": (4, st.sampled_from(TIMES), "time {}"),
        "org": (1, st.sampled_from(ORG_NAMES), "org {}"),
        "head": (3, signature_tokens(head_b64, 32), "head {}"),
        "signature": (5, signature_tokens(signature, 64), f"signature ed25519 {public_key} {{}}"),
        "public_key": (5, signature_tokens(public_key, 32), f"signature ed25519 {{}} {signature}"),
        "header": (0, st.sampled_from(("keyledger-checkpoint/v2", "keyledger-checkpoint/v1 ", "", "\ufeff" +
                                       original[0])), "{}"),
    }
    if choice in replacement:
        index, values, form = replacement[choice]
        line = form.format(draw(values))
        if index < len(lines):
            lines[index] = line
        else:
            lines.append(line)
    elif choice == "drop":
        del lines[k]
    elif choice == "duplicate":
        lines.insert(k, lines[k])
    elif choice == "swap":
        j = draw(st.integers(0, len(lines) - 1))
        lines[k], lines[j] = lines[j], lines[k]
    elif choice == "extra":
        lines.insert(k, draw(st.text(max_size=20)))
    elif choice == "crlf":
        return "\r\n".join(lines)
    else:
        lines[k] = draw(st.text(max_size=60))
    return "\n".join(lines)


@st.composite
def text_edits(draw: st.DrawFn, text: str) -> str:
    i = draw(st.integers(0, len(text)))
    j = draw(st.integers(i, min(len(text), i + 20)))
    choice = draw(st.sampled_from(("truncate", "insert", "delete", "replace", "huge")))
    if choice == "truncate":
        return text[:i]
    if choice == "insert":
        return text[:i] + draw(st.text(min_size=1, max_size=8)) + text[i:]
    if choice == "delete":
        return text[:i] + text[j:]
    if choice == "replace":
        return text[:i] + draw(st.characters()) + text[i + 1:]
    return text[:i] + "9" * draw(st.integers(1, 5000)) + text[i:]


@st.composite
def mutated_checkpoints(draw: st.DrawFn) -> str:
    text = original_checkpoint()
    for _ in range(draw(st.integers(1, 3))):
        text = draw(line_variants(text) | text_edits(text))
    return text


@FUZZ
@given(text=mutated_checkpoints())
def test_mutated_checkpoint_texts_are_refused_never_crash_and_never_verify(text: str) -> None:
    rows, lines, original = ledger_data()
    try:
        checkpoint = parse_checkpoint(text)
    except CheckpointError:
        return  # refused, with a reason; any other exception fails this test
    if text == original:
        check_signature(checkpoint, {KEY.public_key})
        return
    with pytest.raises(CheckpointError):
        check_signature(checkpoint)
    assert not verify_rows(rows, checkpoints=[checkpoint]).ok
    assert not verify_export(lines, checkpoint=checkpoint).ok


def well_formed_changes(text: str) -> list[str]:
    """Texts that parse (each field well formed) but are not what was signed."""
    lines = text.split("\n")
    head_b64 = lines[3].split(" ", 1)[1]
    _, _, public_key, signature = lines[5].split(" ")
    other_key = SigningKey(bytes(32)).public_key
    replaced = {
        1: ["org globex", "org _system"],
        2: ["org_seq 1", "org_seq 999999999999999999", f"org_seq {int(lines[2].split()[1]) + 1}"],
        3: [f"head {b64(bytes(32))}", f"head {b64(hashlib.sha256(head_b64.encode()).digest())}"],
        4: ["time 2026-01-01T00:00:00.000000Z", "time 1970-01-01T00:00:00.000000Z"],
        5: [f"signature ed25519 {public_key} {non_canonical(signature)}",
            f"signature ed25519 {non_canonical(public_key)} {signature}",
            f"signature ed25519 {other_key} {signature}",
            f"signature ed25519 {public_key} {b64(bytes(64))}",
            f"signature ed25519 {public_key} {signature[:-4] + 'AAA='}"],
    }
    return ["\n".join([*lines[:k], line, *lines[k + 1:]]) for k, options in replaced.items() for line in options]


@pytest.mark.parametrize("index", range(14))
def test_well_formed_but_changed_checkpoints_parse_and_fail_their_signature(index: int) -> None:
    """The branch the property above reaches when a mutation keeps the form: every field, and the
    non-canonical base64 of a signature or key that decodes to the very same bytes."""
    rows, lines, original = ledger_data()
    changes = well_formed_changes(original)
    assert len(changes) == 14
    text = changes[index]
    checkpoint = parse_checkpoint(text)
    assert checkpoint.text() == text
    with pytest.raises(CheckpointError, match="bad signature"):
        check_signature(checkpoint)
    assert not verify_rows(rows, checkpoints=[checkpoint]).ok
    assert not verify_export(lines, checkpoint=checkpoint).ok


def test_a_non_canonical_head_is_refused_though_it_decodes_to_the_same_bytes() -> None:
    original = original_checkpoint()
    lines = original.split("\n")
    head = lines[3].split(" ", 1)[1]
    assert base64.b64decode(non_canonical(head)) == base64.b64decode(head)
    lines[3] = "head " + non_canonical(head)
    with pytest.raises(CheckpointError, match="canonical base64"):
        parse_checkpoint("\n".join(lines))


@pytest.mark.parametrize("text", [None, b"keyledger-checkpoint/v1\n", 12, ["x"], "x" * 5000])
def test_a_checkpoint_that_is_not_text_is_refused(text: Any) -> None:
    with pytest.raises(CheckpointError):
        parse_checkpoint(text)


def test_parse_checkpoint_reads_the_last_microsecond_of_year_9999_exactly() -> None:
    # Once a ValueError from float rounding (year 10000); now integer arithmetic, and the signature,
    # made over another time, does not check.
    lines = original_checkpoint().split("\n")
    lines[4] = "time 9999-12-31T23:59:59.999999Z"
    parsed = parse_checkpoint("\n".join(lines))
    assert parsed.at == 253402300799_999999_000
    assert parsed.text() == "\n".join(lines)
    with pytest.raises(CheckpointError):
        check_signature(parsed)


# -- verify_signature ------------------------------------------------------------------------------------------------


MESSAGE = b"keyledger-checkpoint/v1\norg acme\n"
SIGNATURE = KEY.sign(MESSAGE)

IDENTITY = bytes([1]) + bytes(31)  # the neutral point of Ed25519: a public key with no private key behind it
P = 2**255 - 19
# The encodings of the points of small order (libsodium's list; the sign bit is ignored): no private key
# stands behind them, and each accepts (R = a small-order point, S = 0) for many or all messages.
SMALL_ORDER = {
    IDENTITY, (P - 1).to_bytes(32, "little"), bytes(32), P.to_bytes(32, "little"), (P + 1).to_bytes(32, "little"),
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
}


def small_order(public_key: str) -> bool:
    try:
        raw = base64.b64decode(public_key, validate=True)
    except ValueError:
        return False
    return len(raw) == 32 and raw[:31] + bytes([raw[31] & 0x7F]) in SMALL_ORDER


def test_verify_signature_says_true_for_the_real_signature_only() -> None:
    assert verify_signature(KEY.public_key, MESSAGE, SIGNATURE) is True
    assert verify_signature(KEY.public_key, MESSAGE + b"x", SIGNATURE) is False
    assert verify_signature(non_canonical(KEY.public_key), MESSAGE, SIGNATURE) is False
    assert verify_signature(KEY.public_key, MESSAGE, non_canonical(SIGNATURE)) is False


@FUZZ
@given(
    public_key=st.one_of(st.text(max_size=80), st.binary(min_size=32, max_size=32).map(b64),
                         st.binary(max_size=80).map(b64), signature_tokens(KEY.public_key, 32)),
    message=st.binary(max_size=200),
    signature=st.one_of(st.text(max_size=120), st.binary(min_size=64, max_size=64).map(b64),
                        st.binary(max_size=130).map(b64), signature_tokens(SIGNATURE, 64)),
)
def test_verify_signature_with_random_inputs_says_false_and_never_raises(public_key: str, message: bytes,
                                                                         signature: str) -> None:
    assert verify_signature(public_key, message, signature) is False


@FUZZ
@given(message=st.binary(max_size=200), bit=st.integers(0, 64 * 8 - 1))
def test_verify_signature_of_a_changed_message_or_a_flipped_bit_is_false(message: bytes, bit: int) -> None:
    signature = bytearray(base64.b64decode(SIGNATURE))
    signature[bit // 8] ^= 1 << (bit % 8)
    assert verify_signature(KEY.public_key, MESSAGE, b64(bytes(signature))) is False
    if message != MESSAGE:
        assert verify_signature(KEY.public_key, message, SIGNATURE) is False


@pytest.mark.parametrize("message", [MESSAGE, b"any message at all", b""])
def test_bug_verify_signature_accepts_any_message_under_a_small_order_public_key(message: bytes) -> None:
    assert small_order(b64(IDENTITY))
    assert verify_signature(b64(IDENTITY), message, b64(IDENTITY + bytes(32))) is False


# Just enough Ed25519 arithmetic (RFC 8032, section 5.1) to forge with a small-order public key.
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
Point = tuple[int, int]


def _add(a: Point, b: Point) -> Point:
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2
    return (x1 * y2 + x2 * y1) * pow(1 + t, P - 2, P) % P, (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P) % P


def _decode(raw: bytes) -> Point:
    """Decompress like OpenSSL does (a y of p or more is taken modulo p); the point must exist."""
    number = int.from_bytes(raw, "little")
    y, sign = number % 2**255 % P, number >> 255
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * pow(2, (P - 1) // 4, P) % P
    assert (x * x - x2) % P == 0
    return (P - x if x & 1 != sign and x else x), y


def _encode(point: Point) -> bytes:
    return (point[1] | (point[0] & 1) << 255).to_bytes(32, "little")


BASE = _decode((4 * pow(5, P - 2, P) % P).to_bytes(32, "little"))


def small_order_encodings() -> list[bytes]:
    """Every encoding of the 8 points of order dividing 8: both signs of x (a set sign with x = 0 is not
    canonical) and y + p where that still fits in 255 bits."""
    t8 = _decode(bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"))
    points, point = [], (0, 1)
    for _ in range(8):
        points.append(point)
        point = _add(point, t8)
    assert point == (0, 1) and len(set(points)) == 8  # t8 has order 8
    out = set()
    for _, y in points:
        for sign in (0, 1):
            for big_y in (y, y + P):
                if big_y < 2**255:
                    out.add((big_y | sign << 255).to_bytes(32, "little"))
    return sorted(out)


def forge(public_key: bytes) -> bytes:
    """(R = B - A, S = 1): valid for a message exactly when its challenge k is 1 modulo the order of A."""
    x, y = _decode(public_key)
    return _encode(_add(BASE, ((P - x) % P, y))) + (1).to_bytes(32, "little")


def test_the_forgery_arithmetic_agrees_with_real_signatures() -> None:
    """Positive control: the same arithmetic rebuilds the real key's R + [k]A = [S]B."""
    raw_key, raw_sig = base64.b64decode(KEY.public_key), base64.b64decode(SIGNATURE)
    k = int.from_bytes(hashlib.sha512(raw_sig[:32] + raw_key + MESSAGE).digest(), "little") % L

    def times(n: int, point: Point) -> Point:
        out = (0, 1)
        while n:
            if n & 1:
                out = _add(out, point)
            point, n = _add(point, point), n >> 1
        return out

    s = int.from_bytes(raw_sig[32:], "little")
    assert times(s, BASE) == _add(_decode(raw_sig[:32]), times(k, _decode(raw_key)))
    assert _encode(_decode(raw_key)) == raw_key and len(small_order_encodings()) >= 8


def test_bug_no_small_order_public_key_verifies_a_forged_signature() -> None:
    forged = []
    for public_key in small_order_encodings():
        signature = forge(public_key)
        for i in range(64):
            message = b"keyledger-checkpoint/v1\norg acme\norg_seq %d\n" % i
            if verify_signature(b64(public_key), message, b64(signature)):
                forged.append((public_key.hex(), i))
    assert forged == []


# -- export lines ------------------------------------------------------------------------------------------------------


_line = msgspec.json.Decoder(ExportLine)
_raw_fields = msgspec.json.Decoder(dict[str, msgspec.Raw])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from((2**63, -(2**63) - 1, 10**30, -(10**30), 2**64))
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
    | st.sampled_from(("", "0" * 64, "zz" * 32, "ACME", "acme", "secret.revealed", "1970-01-01T00:00:00.000000Z")),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
FIELDS = tuple(ExportLine.__struct_fields__)
numbers = st.integers(0, 40) | st.integers() | st.sampled_from((2**63 - 1, 2**64, 10**30, -1))
texts = st.text(max_size=12) | st.sampled_from(("acme", "globex", "secret.revealed", "granted", "denied", "ok"))
hexes = st.binary(min_size=32, max_size=32).map(bytes.hex) | st.text(alphabet="0123456789abcdefABCDEF ", max_size=66)
TYPED: dict[str, st.SearchStrategy[Any]] = {
    "seq": numbers, "org": texts, "org_seq": numbers, "type": texts, "time": texts, "at": numbers,
    "actor": st.fixed_dictionaries({"key_id": texts, "label": texts,
                                    "kind": st.sampled_from(("api_key", "admin", "system"))}),
    "source": st.fixed_dictionaries({"address": texts, "user_agent": texts}),
    "request_id": texts, "secret": st.none() | texts, "version": st.none() | numbers, "outcome": texts,
    "detail": texts, "prev_hash": hexes, "hash": hexes,
    "body": st.dictionaries(st.sampled_from(("type", "org", "at", "name", "stream")), texts | numbers),
}


@st.composite
def line_mutations(draw: st.DrawFn, line: bytes) -> list[bytes]:
    """One line, spoiled: the result may be several lines (or none)."""
    choice = draw(st.sampled_from(("bytes", "insert", "flip", "truncate", "field", "typed", "typed", "typed",
                                   "drop field", "nested", "body", "json", "duplicate key")))
    if choice == "bytes" or len(line) < 2:
        return [draw(st.binary(max_size=200))]
    i = draw(st.integers(0, max(0, len(line) - 2)))
    if choice == "insert":
        return [line[:i] + draw(st.binary(min_size=1, max_size=8)) + line[i:]]
    if choice == "flip":
        return [line[:i] + bytes([line[i] ^ (1 << draw(st.integers(0, 7)))]) + line[i + 1:]]
    if choice == "truncate":
        return [line[:i] + b"\n"]
    if choice == "json":
        return [msgspec.json.encode(draw(json_values)) + b"\n"]
    try:  # an earlier round may have spoiled this line already
        fields: dict[str, Any] = dict(_raw_fields.decode(line))
        body = msgspec.json.decode(fields["body"])
        nested = {part: msgspec.json.decode(fields[part]) for part in ("actor", "source")}
        assert isinstance(body, dict) and all(isinstance(v, dict) for v in nested.values())
    except (msgspec.DecodeError, ValueError, KeyError, AssertionError):  # ValueError: bytes not UTF-8
        return [draw(st.binary(max_size=200))]
    name = draw(st.sampled_from(FIELDS))
    if choice == "field":
        fields[name] = msgspec.Raw(msgspec.json.encode(draw(json_values)))
    elif choice == "typed":  # a value of the right type, so that the line decodes and deeper checks run
        fields[name] = msgspec.Raw(msgspec.json.encode(draw(TYPED[name])))
    elif choice == "drop field":
        fields.pop(name, None)
    elif choice == "nested":
        inner = draw(st.sampled_from(("actor", "source")))
        part = nested[inner]
        part[draw(st.sampled_from((*part, "extra")))] = draw(json_values)
        fields[inner] = msgspec.Raw(msgspec.json.encode(part))
    elif choice == "body":
        body[draw(st.sampled_from(sorted(body) or ["type"]))] = draw(json_values)
        fields["body"] = msgspec.Raw(msgspec.json.encode(body))
    else:  # a second value for a key, after the first
        encoded = msgspec.json.encode(fields)
        extra = msgspec.json.encode({name: draw(json_values)})
        return [encoded[:-1] + b"," + extra[1:] + b"\n"]
    return [msgspec.json.encode(fields) + b"\n"]


def meaning(lines: list[bytes]) -> list[Any] | None:
    """What the lines say, as the verifier reads them, with `seq` left out (it is not hashed: the verifier
    only checks that it grows) and hashes as bytes; None if any line is not an export line."""
    out = []
    for data in lines:
        if not data.strip():
            continue
        try:
            line = _line.decode(data)
            out.append((msgspec.structs.replace(line, seq=0, prev_hash="", hash="", body=msgspec.Raw(b"0")),
                        bytes.fromhex(line.prev_hash), bytes.fromhex(line.hash), bytes(line.body)))
        except (msgspec.DecodeError, ValueError):
            return None
    return out


@st.composite
def mutated_exports(draw: st.DrawFn) -> list[bytes]:
    lines = list(ledger_data()[1])
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.integers(0, len(lines)))
        if k == len(lines) or (draw(st.booleans()) and draw(st.booleans())):
            lines.insert(k, draw(st.binary(max_size=120) | json_values.map(lambda v: msgspec.json.encode(v))))
        else:
            lines[k:k + 1] = draw(line_mutations(lines[k]))
    return lines


@FUZZ
@given(lines=mutated_exports())
def test_mutated_export_lines_never_crash_and_never_verify(lines: list[bytes]) -> None:
    _, original, text = ledger_data()
    checkpoint = parse_checkpoint(text)
    report = verify_export(lines)
    with_checkpoint = verify_export(lines, checkpoint=checkpoint, trusted_keys={KEY.public_key})
    said = meaning(lines)
    full = meaning(list(original))
    assert full is not None
    if said is None or said != full[:len(said)]:  # changed: not the export, nor a prefix of it
        assert not report.ok, (report.summary(), lines)
        assert not with_checkpoint.ok
    elif said != full:  # a prefix: a truncated tail, which only the checkpoint shows
        assert not with_checkpoint.ok
    assert report.checked <= len(lines) and isinstance(report.reason, str)


def crafted_line(event: SecretRevealed, *, time: str | None = None) -> bytes:
    """A one-line export made by someone who computes the chain hash of a body of their own."""
    body = encode_event(event)
    digest = chain_hash(event.org, 1, GENESIS_HASH, body)
    return msgspec.json.encode({
        "seq": 1, "org": event.org, "org_seq": 1, "type": "secret.revealed", "time": time or "?", "at": event.at,
        "actor": event.actor, "source": event.source, "request_id": event.request_id, "secret": event.name,
        "version": event.version, "outcome": "granted", "detail": event.reason, "prev_hash": GENESIS_HASH.hex(),
        "hash": digest.hex(), "body": msgspec.Raw(body),
    }) + b"\n"


def rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns // 10**9, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 10**9 // 1000:06d}Z"


@FUZZ
@given(
    at=st.integers(-(2**63), 2**63 - 1), name=st.text(min_size=1, max_size=10), label=st.text(max_size=10),
    reason=st.text(max_size=10), request_id=st.text(max_size=10), version=st.integers(1, 2**63 - 1),
)
def test_crafted_consistent_lines_verify_and_any_field_changed_does_not(
    at: int, name: str, label: str, reason: str, request_id: str, version: int
) -> None:
    event = SecretRevealed(org="acme", stream=f"secret:acme/{name}", stream_version=None, at=at,
                           actor=Actor(key_id="key_x", label=label), source=Source(user_agent=label),
                           request_id=request_id, name=name, version=version, reason=reason)
    line = crafted_line(event, time=rfc3339(at))
    assert verify_export([line]).ok
    for tampered in (crafted_line(event, time=rfc3339(at) + " "), line.replace(b'"seq":1', b'"seq":0')):
        assert not verify_export([tampered]).ok


@pytest.mark.parametrize("at", [10**30, -(10**30), 2**70])
def test_bug_verify_export_crashes_on_a_consistent_line_with_a_time_out_of_range(at: int) -> None:
    event = SecretRevealed(org="acme", stream="secret:acme/db", stream_version=None, at=at,
                           actor=Actor(key_id="key_x"), name="db", version=1)
    report = verify_export([crafted_line(event)])
    assert not report.ok


@pytest.mark.parametrize("field", ["org_seq", "time", "org"])
def test_each_malformed_sample_alone_is_refused_or_fails_its_signature(field: str) -> None:
    """Each fixed sample of the strategies above, on its own (non-decimal digits such as '\u00b2' included)."""
    lines = original_checkpoint().split("\n")
    index, samples = {"org_seq": (2, ORG_SEQS), "time": (4, TIMES), "org": (1, ORG_NAMES)}[field]
    for value in samples:
        text = "\n".join([*lines[:index], f"{field} {value}", *lines[index + 1:]])
        try:
            checkpoint: Checkpoint = parse_checkpoint(text)
        except CheckpointError:
            continue
        with pytest.raises(CheckpointError, match="bad signature"):
            check_signature(checkpoint)
