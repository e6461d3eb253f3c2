"""Structural attacks on a real database file, by someone who can write the file but has no signing key.

The ledger is built once with the real Ledger (three orgs, interleaved), stopped, and copied; each attack
works on its own copy with plain sqlite3 (or on the file's bytes), after dropping the append-only triggers.
Every attack is caught by the verifier alone, except three that leave a valid chain: a truncated tail, a
chain rewritten consistently, and an older copy of the database put back. Those are shown missed without a
checkpoint kept outside the database and caught with it, both on the database and on an org's export.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from ledger.checkpoint import Checkpoint, CheckpointError, check_signature, parse_checkpoint, sign_checkpoint
from ledger.codec import decode_event, encode_event
from ledger.commands import CreatedKey
from ledger.crypto import Keyring, MasterKey, SigningKey
from ledger.errors import RevealDeniedError
from ledger.events import Actor, SecretRevealed
from ledger.export import jsonl, verify_export
from ledger.records import GENESIS_HASH, StoredRecord, chain_hash
from ledger.service import Ledger
from ledger.sqlite_store import SqliteRecorder, iter_org_records, iter_records, iter_rows
from ledger.verify import VerifyReport, verify_rows
from projections.sqlite_tables import all_projectors
from tests.conftest import ADMIN, ctx_for

ORGS = ("acme", "globex", "initech")
COLUMNS = ("seq", "org", "org_seq", "stream", "stream_version", "type", "at", "body", "sealed", "prev_hash", "hash")
INSERT = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


@dataclass(frozen=True)
class Built:
    path: Path  # the ledger as it is now
    old: Path  # a copy of it taken earlier
    checkpoint_texts: dict[str, str]  # each org's head, signed, as kept outside the database
    public_key: str
    needle: bytes  # a reveal reason that occurs once in the file's bytes

    @property
    def records(self) -> list[StoredRecord]:
        return list(iter_records(self.path))

    def checkpoints(self) -> list[Checkpoint]:
        return [parse_checkpoint(text) for text in self.checkpoint_texts.values()]


def backup(source: Path, target: Path) -> None:
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


async def _work(led: Ledger, admins: dict[str, CreatedKey], round_: int, needle: str = "") -> None:
    async def one(org: str) -> None:
        admin = ctx_for(admins[org])
        bot = await led.create_api_key(admin, org, f"bot {round_}", scope="agents")
        for i in range(4):
            await led.upsert_secret(admin, org, f"S{i}", f"{org}-{round_}-{i}".encode(),
                                    scope=("all", "tools")[i % 2])
        for i in range(4):
            await led.reveal_secret(admin, org, f"S{i}", reason=needle if (org, i) == ("acme", 1) else "deploy")
            try:
                await led.reveal_secret(ctx_for(bot), org, f"S{i}")
            except RevealDeniedError:
                pass
        await led.delete_secret(admin, org, "S0")
        await led.revoke_api_key(admin, org, bot.key_id)

    await asyncio.gather(*(one(org) for org in ORGS))  # group commit interleaves the orgs


async def _build(path: Path, old: Path, keyring: Keyring, needle: str) -> tuple[dict[str, str], str]:
    led = Ledger(SqliteRecorder(path, all_projectors()), keyring)
    await led.start()
    try:
        admins = {org: await led.create_org(ADMIN, org) for org in ORGS}
        await _work(led, admins, 1, needle)
    finally:
        await led.stop()
    backup(path, old)  # an older copy, taken while the server was down
    led = Ledger(SqliteRecorder(path, all_projectors()), keyring)
    await led.start()
    try:
        await _work(led, admins, 2)
        checkpoints = {org: await led.checkpoint(org) for org in ORGS}
        return {org: cp.text() for org, cp in checkpoints.items() if cp is not None}, led.signing_key.public_key
    finally:
        await led.stop()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    folder = tmp_path_factory.mktemp("structural")
    path, old = folder / "ledger.db", folder / "old.db"
    needle = f"needle-{os.urandom(8).hex()}"
    texts, public_key = asyncio.run(_build(path, old, Keyring(MasterKey.generate()[0]), needle))
    assert set(texts) == set(ORGS)
    return Built(path=path, old=old, checkpoint_texts=texts, public_key=public_key,
                 needle=f'"reason":"{needle}"'.encode())


@pytest.fixture
def copy(built: Built, tmp_path: Path) -> Path:
    target = tmp_path / "attacked.db"
    backup(built.path, target)
    return target


@contextmanager
def attacker(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for trigger in ("events_no_update", "events_no_delete", "events_no_replace"):
            conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        conn.execute("BEGIN")
        yield conn
        conn.execute("COMMIT")
    finally:
        conn.close()


def rows_of(conn: sqlite3.Connection) -> list[list[object]]:
    return [list(row) for row in conn.execute(f"SELECT {', '.join(COLUMNS)} FROM events ORDER BY seq")]


def rewrite_all(conn: sqlite3.Connection, rows: list[list[object]]) -> None:
    conn.execute("DELETE FROM events")
    conn.executemany(INSERT, rows)


def verify(path: Path, checkpoints: list[Checkpoint] | None = None, public_key: str | None = None) -> VerifyReport:
    if checkpoints is None:
        return verify_rows(iter_rows(path))
    return verify_rows(iter_rows(path), checkpoints=checkpoints, trusted_keys={public_key} if public_key else None)


def export_of(path: Path, org: str) -> list[bytes]:
    return list(jsonl((record, decode_event(record.body)) for record in iter_org_records(path, org)))


def assert_caught(report: VerifyReport, seq: int | None, reason: str) -> None:
    assert not report.ok, report.summary()
    assert report.first_bad_seq == seq, report.summary()
    assert reason in report.reason, report.summary()


def of_org(records: list[StoredRecord], org: str) -> list[StoredRecord]:
    return [r for r in records if r.org == org]


# -- the untouched ledger --------------------------------------------------------------------------------------


def test_the_checkpoints_round_trip_through_their_text(built: Built) -> None:
    for org, text in built.checkpoint_texts.items():
        checkpoint = parse_checkpoint(text)
        assert checkpoint.text() == text
        assert (checkpoint.org, checkpoint.public_key) == (org, built.public_key)
        check_signature(checkpoint, {built.public_key})
        head = of_org(built.records, org)[-1]
        assert (checkpoint.org_seq, checkpoint.head) == (head.org_seq, head.hash)


def test_the_untouched_file_and_exports_verify_with_and_without_checkpoints(built: Built, copy: Path) -> None:
    records = built.records
    assert len(records) > 80
    assert {r.org for r in records[:40]} == set(ORGS)  # the orgs interleave
    for report in (verify(copy), verify(copy, built.checkpoints(), built.public_key)):
        assert report.ok and report.checked == len(records), report.summary()
    for org, checkpoint in zip(ORGS, built.checkpoints(), strict=True):
        assert verify_export(export_of(copy, org), checkpoint=checkpoint, trusted_keys={built.public_key}).ok
    assert verify(built.old).ok


# -- caught by the chain alone --------------------------------------------------------------------------------------


def test_a_changed_byte_in_the_file_is_caught(built: Built, copy: Path) -> None:
    """One byte of an event's body, changed in the file itself: SQLite does not notice, the verifier does."""
    wal = Path(f"{copy}-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # every page is in the main file
    data = bytearray(copy.read_bytes())
    assert data.count(built.needle) == 1
    where = data.index(built.needle) + len(built.needle) - 2  # a hex digit of the reason
    data[where] = ord("a") if data[where] != ord("a") else ord("b")
    copy.write_bytes(bytes(data))
    victim = next(r for r in built.records if built.needle in r.body)
    changed = next(r for r in iter_records(copy) if r.seq == victim.seq)
    assert changed.body != victim.body and len(changed.body) == len(victim.body)  # SQLite read it back
    assert_caught(verify(copy), victim.seq, "hash does not match the stored bytes")
    assert not verify_export(export_of(copy, victim.org)).ok


@pytest.mark.parametrize("column", ["body", "hash", "prev_hash"])
def test_a_changed_byte_of_a_column_is_caught(built: Built, copy: Path, column: str) -> None:
    victim = built.records[len(built.records) // 2]
    value = bytearray(getattr(victim, column))
    value[len(value) // 2] ^= 0x01
    with attacker(copy) as conn:
        conn.execute(f"UPDATE events SET {column} = ? WHERE seq = ?", (bytes(value), victim.seq))
    report = verify(copy)
    assert_caught(report, victim.seq, "prev_hash does not link" if column == "prev_hash" else "hash does not match")
    assert not verify_export(export_of(copy, victim.org)).ok


def test_a_deleted_middle_event_is_caught(built: Built, copy: Path) -> None:
    records = built.records
    victim = records[len(records) // 2]
    with attacker(copy) as conn:
        conn.execute("DELETE FROM events WHERE seq = ?", (victim.seq,))
    assert_caught(verify(copy), victim.seq + 1, "seq gap")
    report = verify_export(export_of(copy, victim.org))
    assert not report.ok and "missing or reordered" in report.reason


def test_a_deleted_middle_event_with_seq_renumbered_is_caught(built: Built, copy: Path) -> None:
    """seq is not hashed, so the gap can be closed; the org's own chain still breaks at its next event."""
    records = built.records
    victim = records[len(records) // 2]
    following = next(r for r in records if r.seq > victim.seq and r.org == victim.org)
    with attacker(copy) as conn:
        rows = [row for row in rows_of(conn) if row[0] != victim.seq]
        for row in rows:
            if row[0] > victim.seq:  # type: ignore[operator]
                row[0] -= 1  # type: ignore[operator]
        rewrite_all(conn, rows)
    assert_caught(verify(copy), following.seq - 1, f"org_seq of org {victim.org!r}")


@pytest.mark.parametrize("same_org", [True, False])
def test_two_swapped_events_are_caught(built: Built, copy: Path, same_org: bool) -> None:
    records = built.records
    a = records[40]
    b = next(r for r in records[50:] if (r.org == a.org) == same_org)
    with attacker(copy) as conn:
        conn.execute("DELETE FROM events WHERE seq IN (?, ?)", (a.seq, b.seq))
        for seq, other in ((a.seq, b), (b.seq, a)):
            conn.execute(INSERT, (seq, *[getattr(other, c) for c in COLUMNS[1:]]))
    moved = {r.seq: r for r in iter_records(copy)}
    assert moved[a.seq].body == b.body and moved[b.seq].body == a.body
    report = verify(copy)
    assert not report.ok and report.first_bad_seq == a.seq, report.summary()
    if same_org:
        assert not verify_export(export_of(copy, a.org)).ok


def forged_reveal(org: str, at: int) -> SecretRevealed:
    return SecretRevealed(org=org, stream=f"secret:{org}/S1", stream_version=None, at=at,
                          actor=Actor(key_id="key_forged", label="nobody"), name="S1", version=1)


@pytest.mark.parametrize("rehash", [False, True])
def test_a_forged_event_inserted_in_the_middle_is_caught(built: Built, copy: Path, rehash: bool) -> None:
    """With a made-up hash it fails on itself; with its own hash computed, the org's next event does not link."""
    records = built.records
    k = records[len(records) // 2].seq
    org = "acme"
    before = [r for r in records if r.org == org and r.seq < k][-1]
    following = next(r for r in records if r.org == org and r.seq > before.seq)
    event = forged_reveal(org, records[k - 2].at)
    body = encode_event(event)
    digest = chain_hash(org, before.org_seq + 1, before.hash, body) if rehash else os.urandom(32)
    with attacker(copy) as conn:
        rows = rows_of(conn)
        for row in rows:
            if row[0] >= k:  # type: ignore[operator]
                row[0] += 1  # type: ignore[operator]
                if row[1] == org:
                    row[2] += 1  # type: ignore[operator]
        forged = [k, org, before.org_seq + 1, event.stream, None, "secret.revealed", event.at, body, None,
                  before.hash, digest]
        rewrite_all(conn, sorted([*rows, forged], key=lambda row: row[0]))  # type: ignore[arg-type,return-value]
    if rehash:
        assert_caught(verify(copy), following.seq + 1, "prev_hash does not link")
    else:
        assert_caught(verify(copy), k, "hash does not match")
    assert not verify_export(export_of(copy, org)).ok


# -- missed by the chain alone, caught with a checkpoint kept outside ------------------------------------------------


def truncate_tail(built: Built, copy: Path) -> set[str]:
    records = built.records
    gone = records[-7:]
    with attacker(copy) as conn:
        conn.execute("DELETE FROM events WHERE seq >= ?", (gone[0].seq,))
    return {r.org for r in gone}


def rewrite_consistently(built: Built, copy: Path) -> set[str]:
    """Change who revealed a secret, then recompute every later hash of the org: a valid chain again."""
    records = built.records
    org = "acme"
    mine = of_org(records, org)
    victim = next(r for r in mine[len(mine) // 3:] if r.type == "secret.revealed")
    event = decode_event(victim.body)
    assert isinstance(event, SecretRevealed)
    bodies = {victim.seq: encode_event(msgspec.structs.replace(event, reason="nothing to see",
                                                               actor=Actor(key_id="key_scapegoat")))}
    with attacker(copy) as conn:
        prev = GENESIS_HASH
        for r in mine:
            body = bodies.get(r.seq, r.body)
            if r.org_seq >= victim.org_seq:
                digest = chain_hash(org, r.org_seq, prev, body)
                conn.execute("UPDATE events SET body = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                             (body, prev, digest, r.seq))
                prev = digest
            else:
                prev = r.hash
    assert next(r for r in iter_records(copy) if r.seq == victim.seq).body != victim.body
    return {org}


def restore_old_copy(built: Built, copy: Path) -> set[str]:
    backup(built.old, copy)
    return set(ORGS)


NEEDS_CHECKPOINT: dict[str, Callable[[Built, Path], set[str]]] = {
    "truncated tail": truncate_tail,
    "chain rewritten consistently": rewrite_consistently,
    "older copy restored": restore_old_copy,
}


@pytest.mark.parametrize("attack", sorted(NEEDS_CHECKPOINT))
def test_attacks_that_keep_a_valid_chain_are_missed_without_a_checkpoint_and_caught_with_it(
    built: Built, copy: Path, attack: str
) -> None:
    orgs = NEEDS_CHECKPOINT[attack](built, copy)
    checkpoints = {cp.org: cp for cp in built.checkpoints()}  # parsed from their text form

    missed = verify(copy)
    assert missed.ok, f"{attack}: the chain alone should not see this ({missed.summary()})"
    assert missed.checked == sum(1 for _ in iter_rows(copy))
    caught = verify(copy, list(checkpoints.values()), built.public_key)
    assert not caught.ok, f"{attack} was not caught with the checkpoints"
    if attack == "chain rewritten consistently":
        head = of_org(built.records, "acme")[-1]
        assert_caught(caught, head.seq, "differs from its signed checkpoint")
    else:
        assert "events were removed" in caught.reason, caught.summary()
    for org in orgs:  # an org's export alone, the same
        lines = export_of(copy, org)
        assert verify_export(lines).ok, (attack, org)
        report = verify_export(lines, checkpoint=checkpoints[org], trusted_keys={built.public_key})
        assert not report.ok, (attack, org)


def test_a_checkpoint_signed_by_the_attacker_is_not_trusted(built: Built, copy: Path) -> None:
    """Without the signing key, an attacker can only sign a checkpoint of the rewritten chain with another key."""
    rewrite_consistently(built, copy)
    head = of_org(list(iter_records(copy)), "acme")[-1]
    forged = sign_checkpoint(SigningKey(os.urandom(32)), "acme", head.org_seq, head.hash, head.at)
    check_signature(forged)  # a valid signature...
    with pytest.raises(CheckpointError, match="not trusted"):
        check_signature(forged, {built.public_key})  # ...by a key no one trusts
    report = verify(copy, [parse_checkpoint(forged.text())], built.public_key)
    assert not report.ok and "not trusted" in report.reason
    # the real checkpoint with the attacker's head put in breaks its signature
    real = parse_checkpoint(built.checkpoint_texts["acme"])
    moved = msgspec.structs.replace(real, head=head.hash)
    with pytest.raises(CheckpointError, match="bad signature"):
        check_signature(moved, {built.public_key})
    assert not verify(copy, [moved], built.public_key).ok


def test_an_older_checkpoint_still_catches_a_rewrite_before_it(built: Built, tmp_path: Path) -> None:
    """A checkpoint taken earlier (inside the older copy's time) covers the events up to it."""
    old_head = of_org(list(iter_records(built.old)), "acme")[-1]
    key = SigningKey(os.urandom(32))
    early = parse_checkpoint(sign_checkpoint(key, "acme", old_head.org_seq, old_head.hash, old_head.at).text())
    copy = tmp_path / "rewritten.db"
    backup(built.path, copy)
    rewrite_consistently(built, copy)
    report = verify(copy, [early], key.public_key)
    assert_caught(report, old_head.seq, "differs from its signed checkpoint")
