"""The offline verifier against an attacker with write access to the SQLite file.

A ledger of a few orgs is built once with the real Ledger; each attack works on its own copy of the
file with plain sqlite3, dropping the append-only triggers first as an attacker would. Bit flips
are done in memory on the records (the same StoredRecords the file yields), for speed.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import sqlite3
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from ledger.codec import encode_event
from ledger.crypto import Keyring, MasterKey
from ledger.errors import RevealDeniedError
from ledger.events import Actor, SecretRevealed
from ledger.records import StoredRecord, chain_hash
from ledger.service import Ledger
from ledger.sqlite_store import SqliteRecorder, iter_records
from ledger.verify import VerifyReport, verify_records
from projections.sqlite_tables import all_projectors
from tests.conftest import ADMIN, ctx_for

ORGS = ("acme", "globex", "initech")
COLUMNS = ("seq", "org", "org_seq", "stream", "stream_version", "type", "at", "body", "sealed", "prev_hash", "hash")


@dataclass(frozen=True)
class Built:
    path: Path
    records: list[StoredRecord]


async def _build(path: Path) -> None:
    led = Ledger(SqliteRecorder(path, all_projectors()), Keyring(MasterKey.generate()[0]))
    await led.start()
    try:
        admins = {org: await led.create_org(ADMIN, org) for org in ORGS}
        agents = {org: await led.create_api_key(ctx_for(admins[org]), org, "agent bot", scope="agents")
                  for org in ORGS}
        temps = {org: await led.create_api_key(ctx_for(admins[org]), org, "temp") for org in ORGS}

        async def work(org: str) -> None:
            admin, agent = ctx_for(admins[org]), ctx_for(agents[org])
            for i in range(8):
                scope = ("all", "tools", "agents")[i % 3]
                await led.upsert_secret(admin, org, f"S{i}", f"{org}-{i}".encode(), scope=scope)
            for i in range(8):
                if i % 2:
                    await led.upsert_secret(admin, org, f"S{i}", b"second", description="v2")
                await led.reveal_secret(admin, org, f"S{i}", reason="deploy")
                try:
                    await led.reveal_secret(agent, org, f"S{i}")
                except RevealDeniedError:
                    pass
            await led.delete_secret(admin, org, "S0")
            await led.upsert_secret(admin, org, "S0", b"again")
            await led.revoke_api_key(admin, org, temps[org].key_id)

        # Concurrently, so that group commit interleaves the orgs within and across batches.
        await asyncio.gather(*(work(org) for org in ORGS))
    finally:
        await led.stop()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    path = tmp_path_factory.mktemp("tamper") / "ledger.db"
    asyncio.run(_build(path))
    records = list(iter_records(path))
    return Built(path=path, records=records)


@pytest.fixture
def copy(built: Built, tmp_path: Path) -> Path:
    """A private copy of the built file for one attack."""
    target = tmp_path / "attacked.db"
    with sqlite3.connect(built.path) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    src.close()
    dst.close()
    return target


@contextmanager
def attacker(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER IF EXISTS events_no_update")
        conn.execute("DROP TRIGGER IF EXISTS events_no_delete")
        conn.execute("BEGIN")
        yield conn
        conn.execute("COMMIT")
    finally:
        conn.close()


def rows_of(conn: sqlite3.Connection) -> list[list[object]]:
    return [list(row) for row in conn.execute(f"SELECT {', '.join(COLUMNS)} FROM events ORDER BY seq")]


def rewrite(conn: sqlite3.Connection, rows: Sequence[Sequence[object]]) -> None:
    """Replace the whole events table (for attacks that renumber rows)."""
    conn.execute("DELETE FROM events")
    conn.executemany(f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", rows)


def verify_file(path: Path) -> VerifyReport:
    return verify_records(iter_records(path))


def assert_caught(report: VerifyReport, seq: int, reason: str = "", *, removed: int = 0) -> None:
    """The verifier failed exactly at `seq`, for `reason`, having passed every record before it."""
    assert not report.ok, report.summary()
    assert report.first_bad_seq == seq, report.summary()
    assert reason in report.reason, report.summary()
    assert report.checked == seq - 1 - removed


def col(name: str) -> int:
    return COLUMNS.index(name)


def next_of_org(records: Sequence[StoredRecord], after: int, org: str) -> StoredRecord:
    return next(r for r in records if r.seq > after and r.org == org)


def forged_reveal(org: str, at: int, name: str = "S1") -> SecretRevealed:
    return SecretRevealed(
        org=org, stream=f"secret:{org}/{name}", stream_version=None, at=at,
        actor=Actor(key_id="key_forged", label="nobody"), name=name, version=1,
    )


# -- the ledger under attack ----------------------------------------------------------------------


def test_the_built_ledger_is_big_varied_and_verifies(built: Built) -> None:
    records = built.records
    assert len(records) >= 100
    types = Counter(r.type for r in records)
    assert set(types) == {
        "org.created", "api_key.created", "api_key.revoked", "secret.created", "secret.updated",
        "secret.deleted", "secret.revealed", "secret.reveal_denied",
    }
    assert {r.org for r in records} == set(ORGS)
    # The orgs interleave, so a chain is not just a contiguous block of seq.
    assert sum(1 for a, b in itertools.pairwise(records) if a.org != b.org) > 10
    report = verify_records(records)
    assert report.ok and report.first_bad_seq is None, report.summary()
    assert report.checked == len(records)
    for org in ORGS:
        last = [r for r in records if r.org == org][-1]
        assert report.orgs[org] == (last.org_seq, last.hash.hex())


def test_triggers_refuse_updates_and_deletes(copy: Path) -> None:
    conn = sqlite3.connect(copy, isolation_level=None)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE events SET at = at + 1 WHERE seq = 5")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM events WHERE seq = 5")
    finally:
        conn.close()
    assert verify_file(copy).ok


# -- single-bit flips, in memory ---------------------------------------------------------------------------


def _flip(raw: bytes, bit: int) -> bytes:
    out = bytearray(raw)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _verify_with(records: list[StoredRecord], index: int, tampered: StoredRecord) -> VerifyReport:
    return verify_records(itertools.chain(records[:index], (tampered,), records[index + 1:]))


# Every bit of every hash under the soak profile; in CI each event gets every 8th bit (from a starting bit
# that moves with the event), so any 8 events in a row still flip all 256 positions between them.
HASH_BIT_STRIDE = 1 if os.environ.get("KEYLEDGER_HYPOTHESIS_PROFILE") == "soak" else 8


@pytest.mark.parametrize("field", ["prev_hash", "hash"])
def test_bit_flips_of_every_hash_and_prev_hash_are_caught_at_its_event(built: Built, field: str) -> None:
    records = built.records
    flips = 0
    for index, record in enumerate(records):
        value: bytes = getattr(record, field)
        assert len(value) == 32
        for bit in range(index % HASH_BIT_STRIDE, 256, HASH_BIT_STRIDE):
            report = _verify_with(records, index, msgspec.structs.replace(record, **{field: _flip(value, bit)}))
            assert report.first_bad_seq == record.seq and not report.ok, (field, record.seq, bit)
            flips += 1
    assert flips == 256 // HASH_BIT_STRIDE * len(records)


def test_bit_flips_of_every_body_are_caught_at_its_event(built: Built) -> None:
    """Every event; each body's first and last 4 bytes fully, plus 48 random bits of it (seeded)."""
    records = built.records
    rng = random.Random(20_260_101)
    for index, record in enumerate(records):
        size = len(record.body) * 8
        bits = set(range(32)) | set(range(size - 32, size)) | set(rng.sample(range(size), 48))
        for bit in sorted(bits):
            report = _verify_with(records, index, msgspec.structs.replace(record, body=_flip(record.body, bit)))
            assert report.first_bad_seq == record.seq and not report.ok, (record.seq, bit)
            assert report.reason == "hash does not match the stored bytes"


def test_every_bit_flip_of_one_body_of_each_type_is_caught(built: Built) -> None:
    """Exhaustive over the body bits of the first event of each type."""
    records = built.records
    first: dict[str, int] = {}
    for index, record in enumerate(records):
        first.setdefault(record.type, index)
    assert len(first) == 8
    for index in first.values():
        record = records[index]
        for bit in range(len(record.body) * 8):
            report = _verify_with(records, index, msgspec.structs.replace(record, body=_flip(record.body, bit)))
            assert report.first_bad_seq == record.seq and not report.ok, (record.seq, bit)


# -- attacks on the file ---------------------------------------------------------------------------------------


def test_the_copied_file_verifies_untouched(built: Built, copy: Path) -> None:
    report = verify_file(copy)
    assert report.ok, report.summary()
    assert report.checked == len(built.records)
    assert list(iter_records(copy)) == built.records


def test_a_deleted_middle_event_is_caught(built: Built, copy: Path) -> None:
    victim = built.records[len(built.records) // 2]
    with attacker(copy) as conn:
        conn.execute("DELETE FROM events WHERE seq = ?", (victim.seq,))
    assert_caught(verify_file(copy), victim.seq + 1, "seq gap: expected", removed=1)


def test_a_deleted_middle_event_with_seq_renumbered_is_caught_at_the_orgs_next_event(
    built: Built, copy: Path
) -> None:
    """seq is not hashed, so an attacker closes the gap; the org's own chain still breaks."""
    records = built.records
    victim = records[len(records) // 2]
    following = next_of_org(records, victim.seq, victim.org)
    with attacker(copy) as conn:
        rows = [row for row in rows_of(conn) if row[0] != victim.seq]
        for row in rows:
            if row[0] > victim.seq:  # type: ignore[operator]
                row[0] -= 1  # type: ignore[operator]
        rewrite(conn, rows)
    assert_caught(verify_file(copy), following.seq - 1, f"org_seq of org {victim.org!r}")


@pytest.mark.parametrize("same_org", [True, False])
def test_two_swapped_events_are_caught(built: Built, copy: Path, same_org: bool) -> None:
    records = built.records
    a = records[30]
    b = next(r for r in records[40:] if (r.org == a.org) == same_org)
    with attacker(copy) as conn:
        rows = {row[0]: row for row in rows_of(conn)}
        conn.execute("DELETE FROM events WHERE seq IN (?, ?)", (a.seq, b.seq))
        swapped = [[a.seq, *rows[b.seq][1:]], [b.seq, *rows[a.seq][1:]]]
        conn.executemany(f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * 11)})", swapped)
    moved = list(iter_records(copy))
    assert moved[a.seq - 1].body == b.body and moved[b.seq - 1].body == a.body
    assert_caught(verify_file(copy), a.seq, "org_seq")


def test_a_forged_event_appended_at_the_end_with_a_made_up_hash_is_caught(built: Built, copy: Path) -> None:
    records = built.records
    last = records[-1]
    org = "globex"
    head = [r for r in records if r.org == org][-1]
    event = forged_reveal(org, last.at + 1)
    with attacker(copy) as conn:
        conn.execute(
            f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * 11)})",
            (last.seq + 1, org, head.org_seq + 1, event.stream, None, "secret.revealed", event.at,
             encode_event(event), None, head.hash, os.urandom(32)),
        )
    assert_caught(verify_file(copy), last.seq + 1, "hash does not match")


def _insert_in_middle(copy: Path, records: list[StoredRecord], *, rehash: bool) -> tuple[int, StoredRecord]:
    """Insert a forged event of org `acme` at seq k, renumbering seq (and acme's org_seq) after it."""
    at_index = len(records) // 2
    k = records[at_index].seq
    org = "acme"
    before = [r for r in records if r.org == org and r.seq < k][-1]
    event = forged_reveal(org, records[at_index - 1].at)
    body = encode_event(event)
    org_seq = before.org_seq + 1
    digest = chain_hash(org, org_seq, before.hash, body) if rehash else os.urandom(32)
    with attacker(copy) as conn:
        rows = rows_of(conn)
        for row in rows:
            if row[col("seq")] >= k:  # type: ignore[operator]
                row[col("seq")] += 1  # type: ignore[operator]
                if row[col("org")] == org:
                    row[col("org_seq")] += 1  # type: ignore[operator]
        forged = [k, org, org_seq, event.stream, None, "secret.revealed", event.at, body, None, before.hash, digest]
        rewrite(conn, sorted([*rows, forged], key=lambda row: row[0]))  # type: ignore[arg-type,return-value]
    return k, next_of_org(records, before.seq, org)


def test_a_forged_event_inserted_in_the_middle_is_caught(built: Built, copy: Path) -> None:
    k, _ = _insert_in_middle(copy, built.records, rehash=False)
    assert_caught(verify_file(copy), k, "hash does not match")


def test_a_correctly_hashed_forged_event_in_the_middle_breaks_the_next_link(built: Built, copy: Path) -> None:
    """The attacker can compute a forged event's own hash, but the org's next event does not link to it."""
    k, following = _insert_in_middle(copy, built.records, rehash=True)
    assert_caught(verify_file(copy), following.seq + 1, "prev_hash does not link")
    assert following.seq + 1 > k


def test_a_changed_sealed_column_is_caught(built: Built, copy: Path) -> None:
    records = built.records
    values = [r for r in records if r.sealed is not None]
    victim, donor = values[len(values) // 2], values[len(values) // 2 + 1]
    assert victim.sealed != donor.sealed
    with attacker(copy) as conn:
        conn.execute("UPDATE events SET sealed = ? WHERE seq = ?", (donor.sealed, victim.seq))
    assert_caught(verify_file(copy), victim.seq, "sealed value does not match the digest")


@pytest.mark.parametrize("attack", ["null", "flipped", "added to a reveal"])
def test_other_sealed_column_attacks_are_caught(built: Built, copy: Path, attack: str) -> None:
    records = built.records
    victim = next(r for r in records[20:] if (r.sealed is None) == (attack == "added to a reveal"))
    if attack == "null":
        new: str | None = None
        reason = "sealed value does not match the digest"
    elif attack == "flipped":
        assert victim.sealed is not None
        new = victim.sealed[:20] + ("A" if victim.sealed[20] != "A" else "B") + victim.sealed[21:]
        reason = "sealed value does not match the digest"
    else:
        new = next(r.sealed for r in records if r.sealed is not None)
        reason = "a sealed value is stored with an event that has none"
    with attacker(copy) as conn:
        conn.execute("UPDATE events SET sealed = ? WHERE seq = ?", (new, victim.seq))
    assert_caught(verify_file(copy), victim.seq, reason)


@pytest.mark.parametrize(
    ("column", "change", "reason"),
    [
        ("type", "secret.updated", "columns type do not match"),
        ("at", 1, "columns at do not match"),
        ("at", -1, "columns at do not match"),
        ("stream", "secret:acme/OTHER", "columns stream do not match"),
        ("stream_version", 99, "columns stream_version do not match"),
        ("org", "umbrella", "org_seq of org 'umbrella'"),
    ],
)
def test_a_changed_column_is_caught(built: Built, copy: Path, column: str, change: object, reason: str) -> None:
    victim = next(r for r in built.records[25:] if r.type == "secret.created" and r.org == "acme")
    value = victim.at + change if column == "at" else change  # type: ignore[operator]
    with attacker(copy) as conn:
        conn.execute(f"UPDATE events SET {column} = ? WHERE seq = ?", (value, victim.seq))
    assert_caught(verify_file(copy), victim.seq, reason)


# -- what the chain alone cannot see: an anchor outside the database does ----------------------------------


def test_tail_truncation_and_a_rehashed_tail_are_caught_only_against_a_checkpoint(
    built: Built, copy: Path, tmp_path: Path
) -> None:
    """Dropping the newest events, or appending correctly hashed ones, leaves a valid chain; the org
    heads the verifier reports differ from a checkpoint kept outside the database."""
    checkpoint = verify_file(copy).orgs
    last = built.records[-1]
    with attacker(copy) as conn:
        conn.execute("DELETE FROM events WHERE seq = ?", (last.seq,))
    truncated = verify_file(copy)
    assert truncated.ok
    assert truncated.orgs[last.org] != checkpoint[last.org]
    assert truncated.orgs[last.org][0] == checkpoint[last.org][0] - 1

    extended = tmp_path / "extended.db"
    with sqlite3.connect(built.path) as src, sqlite3.connect(extended) as dst:
        src.backup(dst)
    src.close()
    dst.close()
    event = forged_reveal(last.org, last.at + 1)
    body = encode_event(event)
    with attacker(extended) as conn:
        conn.execute(
            f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * 11)})",
            (last.seq + 1, last.org, last.org_seq + 1, event.stream, None, "secret.revealed", event.at, body,
             None, last.hash, chain_hash(last.org, last.org_seq + 1, last.hash, body)),
        )
    forged = verify_file(extended)
    assert forged.ok
    assert forged.orgs[last.org] != checkpoint[last.org]


def test_bug_verifier_reports_a_body_that_is_not_utf8(built: Built, copy: Path) -> None:
    last = built.records[-1]
    body = encode_event(forged_reveal(last.org, last.at + 1)).replace(b"nobody", b"nob\xffdy")
    with attacker(copy) as conn:
        conn.execute(
            f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * 11)})",
            (last.seq + 1, last.org, last.org_seq + 1, f"secret:{last.org}/S1", None, "secret.revealed",
             last.at + 1, body, None, last.hash, chain_hash(last.org, last.org_seq + 1, last.hash, body)),
        )
    assert_caught(verify_file(copy), last.seq + 1, "undecodable event body")


def test_gap_swapping_adjacent_events_of_different_orgs_is_caught(built: Built, copy: Path) -> None:
    """Each org's chain stays intact, but time runs backwards at the swapped pair."""
    records = built.records
    a, b = next((a, b) for a, b in itertools.pairwise(records) if a.org != b.org and a.at < b.at)
    with attacker(copy) as conn:
        rows = {row[0]: row for row in rows_of(conn)}
        conn.execute("DELETE FROM events WHERE seq IN (?, ?)", (a.seq, b.seq))
        swapped = [[a.seq, *rows[b.seq][1:]], [b.seq, *rows[a.seq][1:]]]
        conn.executemany(f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * 11)})", swapped)
    report = verify_file(copy)
    assert not report.ok
    assert report.first_bad_seq in (a.seq, b.seq)
