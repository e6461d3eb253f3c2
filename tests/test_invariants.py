"""One test (at least) per invariant of DESIGN.md, numbered as there, against real SQLite files."""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import re
import secrets
import shutil
import sqlite3
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ledger.codec import decode_event, encode_event
from ledger.commands import Context, CreatedKey, Revealed, UpsertOutcome
from ledger.crypto import Keyring
from ledger.errors import (
    ConcurrencyError,
    LedgerError,
    NotFoundError,
    PreconditionFailedError,
    RevealDeniedError,
    StoreUnavailableError,
    UnauthenticatedError,
    ValueTooLargeError,
)
from ledger.events import (
    Actor,
    ApiKeyCreated,
    ApiKeyRevoked,
    Event,
    SecretCreated,
    SecretDeleted,
    SecretRevealDenied,
    SecretRevealed,
    SecretUpdated,
    event_type,
)
from ledger.model import MAX_VALUE_BYTES, secret_stream
from ledger.records import GENESIS_HASH, PendingRecord, StoredRecord, chain_hash
from ledger.service import Ledger
from ledger.sqlite_store import SqliteRecorder, iter_records
from ledger.verify import verify_records
from ledger.writer import WriteCache, WriteView
from projections.sqlite_reader import SqliteProjections
from projections.sqlite_tables import PROJECTION_TABLES, PROJECTOR_NAMES, SecretsProjector, all_projectors
from tests.conftest import ADMIN, ctx_for

ROOT = Path(__file__).resolve().parents[1]
PROJECTION_DUMPS = {
    "secrets": "SELECT * FROM secrets ORDER BY org, name",
    "api_keys": "SELECT * FROM api_keys ORDER BY key_id",
    "audit": "SELECT * FROM audit ORDER BY seq",
}


# -- helpers -------------------------------------------------------------------------------------


@dataclass
class World:
    acme: CreatedKey
    globex: CreatedKey
    agents: CreatedKey  # member of acme, scope agents
    tools: CreatedKey  # member of acme, scope tools; revoked at the end of the workload


async def workload(ledger: Ledger) -> World:
    """Two orgs, keys, every kind of secret change, a granted and a denied reveal, a revocation.

    Commands refused by the rules are mixed in: they must leave no trace.
    """
    acme = await ledger.create_org(ADMIN, "acme")
    globex = await ledger.create_org(ADMIN, "globex")
    a = ctx_for(acme)
    agents = await ledger.create_api_key(a, "acme", "agents bot", role="member", scope="agents")
    tools = await ledger.create_api_key(a, "acme", "tools bot", role="member", scope="tools")
    await ledger.upsert_secret(a, "acme", "db", b"pw-1", scope="agents", category="provider", description="main")
    await ledger.upsert_secret(a, "acme", "db", b"pw-2", if_match=1)
    await ledger.upsert_secret(ctx_for(globex), "globex", "db", b"globex-1", scope="tools")
    with pytest.raises(PreconditionFailedError):
        await ledger.upsert_secret(a, "acme", "db", b"stale", if_match=1)
    with pytest.raises(NotFoundError):
        await ledger.reveal_secret(a, "acme", "nope")
    revealed = await ledger.reveal_secret(ctx_for(agents), "acme", "db", reason="deploy")
    assert (revealed.version, revealed.value) == (2, b"pw-2")
    with pytest.raises(RevealDeniedError):
        await ledger.reveal_secret(ctx_for(tools), "acme", "db")
    await ledger.delete_secret(a, "acme", "db")
    await ledger.upsert_secret(a, "acme", "db", b"pw-3")
    await ledger.revoke_api_key(a, "acme", tools.key_id)
    with pytest.raises(UnauthenticatedError):
        await ledger.upsert_secret(ctx_for(tools), "acme", "db", b"from a revoked key")
    return World(acme=acme, globex=globex, agents=agents, tools=tools)


def decoded(path: Path) -> list[tuple[StoredRecord, Event]]:
    return [(r, decode_event(r.body)) for r in iter_records(path)]


def query(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def count(path: Path, type_: str) -> int:
    return int(query(path, "SELECT COUNT(*) FROM events WHERE type = ?", (type_,))[0][0])


def projection_dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    return {table: query(path, sql) for table, sql in PROJECTION_DUMPS.items()}


def head_and_positions(path: Path) -> tuple[int, dict[str, int]]:
    head = int(query(path, "SELECT COALESCE(MAX(seq), 0) FROM events")[0][0])
    return head, dict(query(path, "SELECT name, position FROM projection_positions"))


async def reopen(ledger: Ledger, keyring: Keyring) -> Ledger:
    await ledger.stop()
    again = Ledger(SqliteRecorder(ledger.recorder.path, all_projectors()), keyring)  # type: ignore[attr-defined]
    await again.start()
    return again


# -- 1. append-only ------------------------------------------------------------------------------

_LEDGER_WRITES = re.compile(
    r"\b(UPDATE\s+(OR\s+\w+\s+)?events\b|DELETE\s+FROM\s+events\b|(INSERT\s+OR\s+)?REPLACE\s+INTO\s+events\b"
    # Projection tables are derived and may be dropped and rebuilt (their schema changed); nothing else.
    r"|DROP\s+TRIGGER\b|DROP\s+TABLE\s+(IF\s+EXISTS\s+)?(?!(IF|secrets|api_keys|audit|secret_versions|secret_rotation|ssh_keys|dashboard_sessions|members|sso_settings|connected_apps)\b)\w+"
    r"|ALTER\s+TABLE\s+events\b)",
    re.IGNORECASE,
)


async def test_invariant_1_append_only(ledger: Ledger, db_path: Path, keyring: Keyring) -> None:
    # The program: the rows written first are still there, byte for byte, after everything it can do.
    world = await workload(ledger)
    before = query(db_path, "SELECT * FROM events ORDER BY seq")
    a = ctx_for(world.acme)
    await ledger.upsert_secret(a, "acme", "db", b"pw-4")
    await ledger.delete_secret(a, "acme", "db")
    await ledger.reveal_secret(ctx_for(world.globex), "globex", "db")
    await ledger.recorder.rebuild_projections()
    ledger = await reopen(ledger, keyring)
    try:
        await ledger.upsert_secret(a, "acme", "db", b"pw-5")
        await ledger.revoke_api_key(a, "acme", world.agents.key_id)
    finally:
        await ledger.stop()
    after = query(db_path, "SELECT * FROM events ORDER BY seq")
    assert len(after) == len(before) + 5
    assert after[: len(before)] == before

    # The database refuses it too.
    conn = sqlite3.connect(db_path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE events SET body = x'00' WHERE seq = 1")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM events WHERE seq = 1")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(
                "INSERT INTO events SELECT * FROM events WHERE seq = 1 ON CONFLICT(seq) DO UPDATE SET type = 'x'"
            )
        conn.rollback()
    finally:
        conn.close()
    assert query(db_path, "SELECT * FROM events ORDER BY seq") == after

    # And no code of the program writes such a statement.
    sources = [p for d in ("ledger", "projections", "api") for p in sorted((ROOT / d).rglob("*.py"))]
    assert ROOT / "ledger" / "sqlite_store.py" in sources
    assert any("INSERT INTO events" in p.read_text() for p in sources)  # the scan reads the real SQL
    hits = [
        f"{p.relative_to(ROOT)}: {m.group(0)}" for p in sources for m in _LEDGER_WRITES.finditer(p.read_text())
    ]
    assert hits == []


async def test_bug_invariant_1_insert_or_replace_overwrites_an_event(
    ledger: Ledger, db_path: Path
) -> None:
    """BUG: the triggers refuse UPDATE and DELETE, but `INSERT OR REPLACE` deletes the old row without
    firing the DELETE trigger (SQLite fires it only with recursive_triggers on), so SQLite lets an event
    be overwritten in place. The program never does this; the database should refuse it too."""
    await workload(ledger)
    original = query(db_path, "SELECT body FROM events WHERE seq = 1")
    conn = sqlite3.connect(db_path)
    try:
        with pytest.raises(sqlite3.DatabaseError):
            conn.execute(
                "INSERT OR REPLACE INTO events SELECT seq, org, org_seq, stream, stream_version, type, at, "
                "x'7b7d', sealed, prev_hash, hash FROM events WHERE seq = 1"
            )
            conn.commit()
    finally:
        conn.rollback()
        conn.close()
    assert query(db_path, "SELECT body FROM events WHERE seq = 1") == original


# -- 2. everything is an event -------------------------------------------------------------------


async def test_invariant_2_everything_is_an_event(ledger: Ledger, db_path: Path) -> None:
    w = await workload(ledger)
    records = decoded(db_path)
    a, g = w.acme.key_id, w.globex.key_id

    def summary(event: Event) -> tuple[Any, ...]:
        subject = getattr(event, "key_id", None) if event_type(event).startswith("api_key") else None
        return (event_type(event), event.org, getattr(event, "name", subject), getattr(event, "version", None),
                event.actor.key_id)

    # Exactly the state changes and reveals of the workload, in order; the refused commands left nothing.
    assert [summary(e) for _, e in records] == [
        ("org.created", "acme", None, None, "admin"),
        ("api_key.created", "acme", a, None, "admin"),
        ("org.created", "globex", None, None, "admin"),
        ("api_key.created", "globex", g, None, "admin"),
        ("api_key.created", "acme", w.agents.key_id, None, a),
        ("api_key.created", "acme", w.tools.key_id, None, a),
        ("secret.created", "acme", "db", 1, a),
        ("secret.updated", "acme", "db", 2, a),
        ("secret.created", "globex", "db", 1, g),
        ("secret.revealed", "acme", "db", 2, w.agents.key_id),
        ("secret.reveal_denied", "acme", "db", 2, w.tools.key_id),
        ("secret.deleted", "acme", "db", 2, a),
        ("secret.created", "acme", "db", 3, a),
        ("api_key.revoked", "acme", w.tools.key_id, None, a),
    ]
    denied = next(e for _, e in records if isinstance(e, SecretRevealDenied))
    assert (denied.key_scope, denied.secret_scope) == ("tools", "agents")
    granted = next(e for _, e in records if isinstance(e, SecretRevealed))
    assert (granted.key_scope, granted.reason) == ("agents", "deploy")

    # The data keys: one row per value event, each named by its event; nothing else.
    value_events = [e for _, e in records if isinstance(e, SecretCreated | SecretUpdated)]
    data_keys = {row[0] for row in query(db_path, "SELECT id FROM data_keys")}
    assert data_keys == {e.data_key_id for e in value_events}
    assert len(data_keys) == len(value_events) == 4

    # Every projected row is explained by events.
    created_keys = {e.key_id for _, e in records if isinstance(e, ApiKeyCreated)}
    revoked_keys = {e.key_id for _, e in records if isinstance(e, ApiKeyRevoked)}
    assert {r[0] for r in query(db_path, "SELECT key_id FROM api_keys")} == created_keys
    assert {r[0] for r in query(db_path, "SELECT key_id FROM api_keys WHERE revoked_at IS NOT NULL")} == revoked_keys
    latest = {(e.org, e.name): e.version for e in value_events}
    assert dict(((o, n), v) for o, n, v in query(db_path, "SELECT org, name, version FROM secrets")) == latest
    assert [r[0] for r in query(db_path, "SELECT seq FROM audit ORDER BY seq")] == [r.seq for r, _ in records]

    # Every table is the ledger, a projection, the data keys, or bookkeeping: no other mutable state.
    tables = {r[0] for r in query(db_path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    bookkeeping = {"projection_positions", "meta", "idempotency", "checkpoints"}  # checkpoints: signed heads
    assert tables == {"events", "data_keys", *bookkeeping, *PROJECTION_TABLES}


# -- 3. reveal fails closed ----------------------------------------------------------------------


async def test_invariant_3_reveal_fails_closed(ledger: Ledger, db_path: Path) -> None:
    admin = await ledger.create_org(ADMIN, "acme")
    a = ctx_for(admin)
    value = secrets.token_hex(16).encode()
    await ledger.upsert_secret(a, "acme", "db", value, scope="agents")
    tools = await ledger.create_api_key(a, "acme", "tools", scope="tools")
    recorder: SqliteRecorder = ledger.recorder  # type: ignore[assignment]

    recorder.fail_next_commits = 1
    with pytest.raises(StoreUnavailableError) as failed:
        await ledger.reveal_secret(a, "acme", "db")
    assert recorder.fail_next_commits == 0  # the commit was tried, and failed
    assert value.decode() not in "".join(traceback.format_exception(failed.value))
    assert count(db_path, "secret.revealed") == 0

    # A denied reveal whose record cannot be committed is not answered as denied either: 503, no record.
    recorder.fail_next_commits = 1
    with pytest.raises(StoreUnavailableError):
        await ledger.reveal_secret(ctx_for(tools), "acme", "db")
    assert count(db_path, "secret.reveal_denied") == 0

    # Once the store commits again, the value is answered, and only after its event is committed:
    # a fresh connection sees the event as soon as the caller has the value.
    revealed = await ledger.reveal_secret(a, "acme", "db", reason="after the outage")
    assert revealed.value == value
    rows = query(db_path, "SELECT body FROM events WHERE type = 'secret.revealed'")
    assert len(rows) == 1 and b"after the outage" in rows[0][0]


async def test_invariant_3_reveal_fails_closed_when_a_fifth_of_commits_fail(ledger: Ledger, db_path: Path) -> None:
    admin = await ledger.create_org(ADMIN, "acme")
    a = ctx_for(admin)
    agents = ctx_for(await ledger.create_api_key(a, "acme", "agents", scope="agents"))
    values = {f"s{i}": secrets.token_hex(8).encode() for i in range(4)}
    for name, value in values.items():
        await ledger.upsert_secret(a, "acme", name, value, scope="tools" if name == "s3" else "all")
    recorder: SqliteRecorder = ledger.recorder  # type: ignore[assignment]
    rng = random.Random(1234)
    commits = {"tried": 0, "failed": 0}

    async def maybe_fail() -> None:  # runs before each batch's commit
        commits["tried"] += 1
        if rng.random() < 0.2:
            commits["failed"] += 1
            recorder.fail_next_commits = 1

    ledger.writer.before_commit = maybe_fail
    outcomes: list[Revealed | LedgerError] = []
    asked: list[str] = []

    async def attempt(ctx: Context, name: str) -> Revealed | LedgerError:
        try:
            return await ledger.reveal_secret(ctx, "acme", name)
        except LedgerError as exc:
            return exc

    for _ in range(125):  # 1,000 reveals, 8 at a time so that batches vary
        batch = [(rng.choice((a, agents)), rng.choice(sorted(values))) for _ in range(8)]
        asked.extend(name for _, name in batch)
        outcomes.extend(await asyncio.gather(*(attempt(ctx, name) for ctx, name in batch)))
    ledger.writer.before_commit = None

    granted = [o for o in outcomes if isinstance(o, Revealed)]
    denied = [o for o in outcomes if isinstance(o, RevealDeniedError)]
    unavailable = [o for o in outcomes if isinstance(o, StoreUnavailableError)]
    assert len(granted) + len(denied) + len(unavailable) == len(outcomes) == 1000
    assert 0.1 < commits["failed"] / commits["tried"] < 0.3 and unavailable and denied
    for name, outcome in zip(asked, outcomes, strict=True):
        if isinstance(outcome, Revealed):
            assert outcome.value == values[name]
    assert count(db_path, "secret.revealed") == len(granted)
    assert count(db_path, "secret.reveal_denied") == len(denied)
    audit = dict(query(db_path, "SELECT outcome, COUNT(*) FROM audit WHERE action LIKE 'secret.reveal%' GROUP BY 1"))
    assert audit == {"granted": len(granted), "denied": len(denied)}
    assert verify_records(iter_records(db_path)).ok


# -- 4. no plaintext at rest or in passing -------------------------------------------------------


def encodings(canary: bytes) -> list[bytes]:
    """The canary as raw bytes, hex, and base64 at every alignment (the part that does not depend on neighbours)."""
    out = [canary, canary.hex().encode(), canary.hex().upper().encode()]
    for shift in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * shift + canary)
            out.append(text[(4 if shift else 0) : -4])
    return out


def database_files(db_path: Path) -> dict[str, bytes]:
    """The raw bytes of the database file and everything beside it (-wal, -shm, .lock)."""
    return {path.name: path.read_bytes() for path in sorted(db_path.parent.glob(db_path.name + "*"))}


def assert_absent(canaries: list[bytes], blob: bytes, where: str) -> None:
    for canary in canaries:
        for form in encodings(canary):
            assert form not in blob, f"a form of the planted value ({form[:12]!r}...) appears in {where}"


async def test_invariant_4_no_plaintext_at_rest(
    ledger: Ledger, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    canaries = [f"canary-{secrets.token_hex(16)}-{i}".encode() for i in range(3)]
    admin = await ledger.create_org(ADMIN, "acme")
    a = ctx_for(admin)
    tools = await ledger.create_api_key(a, "acme", "tools", scope="tools")
    texts: list[str] = []  # everything the ledger answered or raised, as text

    created = await ledger.upsert_secret(a, "acme", "k", canaries[0], scope="agents", description="planted")
    updated = await ledger.upsert_secret(a, "acme", "k", canaries[1], if_match=1)
    texts += [repr(created), repr(updated)]
    texts += [msgspec.json.encode(created).decode(), msgspec.json.encode(updated).decode()]
    revealed = await ledger.reveal_secret(a, "acme", "k")
    assert revealed.value == canaries[1]
    texts.append(repr(revealed))
    failures: list[BaseException] = []
    for attempt in (
        lambda: ledger.reveal_secret(ctx_for(tools), "acme", "k"),
        lambda: ledger.upsert_secret(a, "acme", "k", canaries[2], if_match=1),
        lambda: ledger.upsert_secret(a, "acme", "k", canaries[2] * (MAX_VALUE_BYTES // len(canaries[2]) + 1)),
        lambda: ledger.upsert_secret(a, "other", "k", canaries[2]),
    ):
        with pytest.raises(LedgerError) as info:
            await attempt()
        failures.append(info.value)
    ledger.recorder.fail_next_commits = 1  # type: ignore[attr-defined]
    with pytest.raises(StoreUnavailableError) as info:
        await ledger.upsert_secret(a, "acme", "k", canaries[2])
    failures.append(info.value)
    ledger.recorder.fail_next_commits = 1  # type: ignore[attr-defined]
    with pytest.raises(StoreUnavailableError) as info:
        await ledger.reveal_secret(a, "acme", "k")
    failures.append(info.value)
    assert [type(f) for f in failures] == [
        RevealDeniedError, PreconditionFailedError, ValueTooLargeError, UnauthenticatedError,
        StoreUnavailableError, StoreUnavailableError,
    ]
    for failure in failures:
        texts += [str(failure), repr(failure), "".join(traceback.format_exception(failure))]

    projections = SqliteProjections(db_path)
    await projections.open()
    try:
        texts += [
            msgspec.json.encode(await projections.list_secrets("acme")).decode(),
            msgspec.json.encode(await projections.get_secret("acme", "k")).decode(),
            msgspec.json.encode(await projections.audit("acme")).decode(),
            msgspec.json.encode(await projections.list_keys("acme")).decode(),
        ]
    finally:
        await projections.close()
    assert '"version":2' in texts[-4] and "planted" in texts[-4]  # the answers are real, not empty

    assert_absent(canaries, "\n".join(texts).encode(), "an answer or an exception")
    assert caplog.records, "nothing was logged at DEBUG: the log check would be vacuous"
    logged = "\n".join([caplog.text, *(r.getMessage() for r in caplog.records)])
    assert_absent(canaries, logged.encode(), "the logs")

    # The files: while running (the WAL holds the recent pages) and after a clean close (checkpointed).
    files = database_files(db_path)
    assert files.get(f"{db_path.name}-wal"), "no WAL to read: the check would miss the recent pages"
    for name, raw in files.items():
        assert_absent(canaries, raw, name)
    await ledger.stop()
    files = database_files(db_path)
    for name, raw in files.items():
        assert_absent(canaries, raw, f"{name} (closed)")
    # The check can see text stored in the clear: the description is in the file.
    assert b"planted" in files[db_path.name]


# -- 5. verifiable -------------------------------------------------------------------------------


async def test_invariant_5_verifiable(ledger: Ledger, db_path: Path, tmp_path: Path) -> None:
    await workload(ledger)
    records = list(iter_records(db_path))
    report = verify_records(records)
    assert report.ok and report.checked == len(records) == 14, report.summary()
    for org in ("acme", "globex"):
        org_seq, head = await ledger.recorder.org_head(org)
        assert report.orgs[org] == (org_seq, head.hex())

    # Each org's chain stands alone: its first event links to zeros, each to the org's previous one.
    for org in ("acme", "globex"):
        prev = GENESIS_HASH
        for n, r in enumerate((r for r in records if r.org == org), start=1):
            assert (r.org_seq, r.prev_hash) == (n, prev)
            assert r.hash == chain_hash(org, n, prev, r.body)
            prev = r.hash

    def first_bad(changed: list[StoredRecord]) -> int | None:
        result = verify_records(changed)
        assert not result.ok
        return result.first_bad_seq

    k = 8  # an event of acme in the middle of the ledger
    assert records[k - 1].seq == k and records[k - 1].org == "acme"
    replace = msgspec.structs.replace
    # changed: a byte of the body, a column copied out of it, the sealed value
    flipped = records[k - 1].body.replace(b'"db"', b'"dB"')
    assert flipped != records[k - 1].body
    assert first_bad([*records[: k - 1], replace(records[k - 1], body=flipped), *records[k:]]) == k
    assert first_bad([*records[: k - 1], replace(records[k - 1], type="secret.deleted"), *records[k:]]) == k
    assert records[k - 1].sealed is not None
    assert first_bad([*records[: k - 1], replace(records[k - 1], sealed=records[6].sealed), *records[k:]]) == k
    # missing: with the seq gap, and with seq renumbered to hide it
    assert first_bad([*records[: k - 1], *records[k:]]) == k + 1
    renumbered = [*records[: k - 1], *(replace(r, seq=r.seq - 1) for r in records[k:])]
    next_acme = next(r for r in records[k:] if r.org == "acme")
    assert first_bad(renumbered) == next_acme.seq - 1
    # reordered within the org, even with seq swapped back into order
    after = next(i for i in range(k, len(records)) if records[i].org == "acme")
    swapped = list(records)
    swapped[k - 1], swapped[after] = replace(records[after], seq=k), replace(records[k - 1], seq=records[after].seq)
    assert first_bad(swapped) == k
    # inserted: a well-linked forged event of acme, renumbering everything after it; the org's next
    # real event then no longer follows on from its predecessor
    prev = records[k - 2]
    assert prev.org == "acme"
    fake = SecretRevealed(org="acme", stream=secret_stream("acme", "db"), stream_version=None, at=prev.at,
                          actor=Actor(key_id="intruder"), name="db", version=1)
    body = encode_event(fake)
    forged = StoredRecord(
        seq=k, org="acme", org_seq=prev.org_seq + 1, stream=fake.stream, stream_version=None,
        type=event_type(fake), at=fake.at, body=body, sealed=None, prev_hash=prev.hash,
        hash=chain_hash("acme", prev.org_seq + 1, prev.hash, body),
    )
    inserted = [*records[: k - 1], forged, *(replace(r, seq=r.seq + 1) for r in records[k - 1 :])]
    assert verify_records(inserted[:k]).ok  # the forgery alone links up
    assert first_bad(inserted) == k + 1

    # The same, on a copy of the file whose append-only trigger was dropped.
    copy = tamper_with_a_copy(db_path, tmp_path / "t.db", "UPDATE events SET body = ? WHERE seq = ?", (flipped, k))
    tampered = verify_records(iter_records(copy))
    assert (tampered.ok, tampered.first_bad_seq, tampered.checked) == (False, k, k - 1)
    assert "hash" in tampered.reason and f"seq {k}" in tampered.summary()


def tamper_with_a_copy(db_path: Path, copy: Path, sql: str, params: tuple[Any, ...]) -> Path:
    """Copy the database (with its WAL, where the recent pages live), drop a trigger and run `sql`."""
    shutil.copy(db_path, copy)
    if Path(f"{db_path}-wal").exists():
        shutil.copy(f"{db_path}-wal", f"{copy}-wal")
    conn = sqlite3.connect(copy)
    try:
        conn.execute("DROP TRIGGER events_no_update")
        conn.execute(sql, params)
        conn.commit()
    finally:
        conn.close()
    return copy


# -- 6. projections are pure ---------------------------------------------------------------------


async def test_invariant_6_projections_are_pure(ledger: Ledger, db_path: Path) -> None:
    w = await workload(ledger)
    await asyncio.gather(*(
        ledger.upsert_secret(ctx_for(w.acme), "acme", f"batch-{i}", b"v", category="tool") for i in range(10)
    ))
    incremental = projection_dump(db_path)
    head, positions = head_and_positions(db_path)
    assert positions == dict.fromkeys(PROJECTOR_NAMES, head)
    assert all(incremental.values()) and len(incremental["audit"]) == head
    conn = sqlite3.connect(db_path)
    try:  # derived data may be lost or damaged: a rebuild from the first event does not look at it
        conn.execute("DELETE FROM audit WHERE seq > 3")
        conn.execute("UPDATE secrets SET version = 99, deleted = 1")
        conn.execute("UPDATE api_keys SET last_used_at = NULL")
        conn.commit()
    finally:
        conn.close()
    assert projection_dump(db_path) != incremental
    await ledger.recorder.rebuild_projections()
    assert projection_dump(db_path) == incremental
    assert head_and_positions(db_path) == (head, dict.fromkeys(PROJECTOR_NAMES, head))


# -- 7. exactly once -----------------------------------------------------------------------------


async def test_invariant_7_exactly_once(ledger: Ledger, db_path: Path, keyring: Keyring) -> None:
    w = await workload(ledger)
    head, positions = head_and_positions(db_path)
    assert positions == dict.fromkeys(PROJECTOR_NAMES, head) and head == 14
    before = projection_dump(db_path)
    data_keys = query(db_path, "SELECT * FROM data_keys ORDER BY id")
    a = ctx_for(w.acme)

    # A commit that fails moves neither the rows nor the positions (nor the ledger, nor the data keys).
    for command in (
        lambda: ledger.upsert_secret(a, "acme", "db", b"new value"),
        lambda: ledger.reveal_secret(a, "acme", "db"),
        lambda: ledger.create_api_key(a, "acme", "new key"),
        lambda: ledger.delete_secret(a, "acme", "db"),
    ):
        ledger.recorder.fail_next_commits = 1  # type: ignore[attr-defined]
        with pytest.raises(StoreUnavailableError):
            await command()
        assert head_and_positions(db_path) == (head, positions)
        assert projection_dump(db_path) == before
        assert query(db_path, "SELECT * FROM data_keys ORDER BY id") == data_keys

    # The same commands, committed: rows and positions move together, to the new head.
    await ledger.upsert_secret(a, "acme", "db", b"new value")
    await ledger.reveal_secret(a, "acme", "db")
    await asyncio.gather(ledger.create_api_key(a, "acme", "new key"), ledger.delete_secret(a, "acme", "db"))
    assert head_and_positions(db_path) == (head + 4, dict.fromkeys(PROJECTOR_NAMES, head + 4))
    assert [r[0] for r in query(db_path, "SELECT seq FROM audit ORDER BY seq")] == list(range(1, head + 5))

    # Reopening applies nothing twice (audit's primary key is the seq) and skips nothing.
    ledger = await reopen(ledger, keyring)
    try:
        assert head_and_positions(db_path) == (head + 4, dict.fromkeys(PROJECTOR_NAMES, head + 4))
        assert [r[0] for r in query(db_path, "SELECT seq FROM audit ORDER BY seq")] == list(range(1, head + 5))
    finally:
        await ledger.stop()


async def test_bug_invariant_7_appends_move_the_positions_of_projectors_that_did_not_run(
    db_path: Path, keyring: Keyring
) -> None:
    """BUG: SqliteRecorder._project writes `UPDATE projection_positions SET position = ?` with no WHERE,
    so a recorder opened with some of the projectors advances the positions of all of them. The others'
    rows never get those events: on the next open with every projector, catch-up skips them for good."""
    ledger = Ledger(SqliteRecorder(db_path, all_projectors()), keyring)
    await ledger.start()
    admin = await ledger.create_org(ADMIN, "acme")
    await ledger.stop()

    ledger = Ledger(SqliteRecorder(db_path, [SecretsProjector()]), keyring)
    await ledger.start()
    await ledger.upsert_secret(ctx_for(admin), "acme", "db", b"v")
    positions = await ledger.recorder.projection_positions()
    await ledger.stop()
    assert positions == {"secrets": 3, "api_keys": 2, "audit": 2, "secret_versions": 2, "secret_rotation": 2,
                         "ssh_keys": 2, "dashboard_sessions": 2, "people": 2, "connected_apps": 2}

    ledger = Ledger(SqliteRecorder(db_path, all_projectors()), keyring)
    await ledger.start()
    await ledger.stop()
    assert [r[0] for r in query(db_path, "SELECT seq FROM audit ORDER BY seq")] == [1, 2, 3]


# -- 8. optimistic concurrency -------------------------------------------------------------------


async def test_invariant_8_optimistic_concurrency(ledger: Ledger, db_path: Path) -> None:
    admin = await ledger.create_org(ADMIN, "acme")
    a = ctx_for(admin)
    await ledger.upsert_secret(a, "acme", "db", b"v1")
    await ledger.upsert_secret(a, "acme", "db", b"v2")
    events = count(db_path, "secret.updated")

    # A stale If-Match: 412, nothing recorded.
    with pytest.raises(PreconditionFailedError) as stale:
        await ledger.upsert_secret(a, "acme", "db", b"lost update", if_match=1)
    assert (stale.value.expected, stale.value.actual) == (1, 2)
    with pytest.raises(PreconditionFailedError):
        await ledger.delete_secret(a, "acme", "db", if_match=3)
    assert count(db_path, "secret.updated") == events

    # Two commands with the same (current) If-Match at once: the second is decided after the first.
    first, second = await asyncio.gather(
        ledger.upsert_secret(a, "acme", "db", b"v3", if_match=2),
        ledger.upsert_secret(a, "acme", "db", b"v3 too", if_match=2),
        return_exceptions=True,
    )
    assert isinstance(first, UpsertOutcome) and first.event.version == 3
    assert isinstance(second, PreconditionFailedError) and second.actual == 3

    # Two commands without If-Match at once: both decided against the state the other left.
    up, gone = await asyncio.gather(
        ledger.upsert_secret(a, "acme", "db", b"v4"), ledger.delete_secret(a, "acme", "db")
    )
    assert up.event.version == 4 and gone is None
    again, seen = await asyncio.gather(
        ledger.upsert_secret(a, "acme", "db", b"v5"),
        ledger.reveal_secret(a, "acme", "db"),
    )
    assert again.created and again.event.version == 5  # re-created after the delete; versions only grow
    assert isinstance(seen, Revealed) and (seen.version, seen.value) == (5, b"v5")

    # The recorder: a (stream, stream_version) pair is taken at most once.
    recorder: SqliteRecorder = ledger.recorder  # type: ignore[assignment]
    head = await recorder.max_seq()
    stream = secret_stream("acme", "db")
    taken = SecretDeleted(org="acme", stream=stream, stream_version=3, at=time.time_ns(), actor=admin_actor(admin),
                          name="db", version=3)
    with pytest.raises(ConcurrencyError) as conflict:
        await recorder.append([pending(taken)], [taken])
    assert (conflict.value.stream, conflict.value.stream_version) == (stream, 3)
    assert await recorder.max_seq() == head
    # Records without a stream version (reveals) never conflict.
    reveal = SecretRevealed(org="acme", stream=stream, stream_version=None, at=time.time_ns(),
                            actor=admin_actor(admin), name="db", version=5)
    await recorder.append([pending(reveal), pending(reveal)], [reveal, reveal])
    assert await recorder.max_seq() == head + 2
    # And the ledger goes on, its chain intact.
    assert (await ledger.upsert_secret(a, "acme", "db", b"v6")).event.version == 6
    assert verify_records(iter_records(db_path)).ok


def admin_actor(key: CreatedKey) -> Any:
    return ctx_for(key).actor


def pending(event: Event, sealed: str | None = None) -> PendingRecord:
    return PendingRecord(
        org=event.org, stream=event.stream, stream_version=event.stream_version, type=event_type(event),
        at=event.at, body=encode_event(event), sealed=sealed,
    )


async def _foreign_update(ledger: Ledger, ctx: Context, name: str, value: bytes) -> None:
    """Append an update of `name` behind the writer's back, as another writer would."""
    from ledger.commands import UpsertSecret

    view = WriteView(ledger.recorder, ledger.keyring, at=time.time_ns())
    view._committed = WriteCache(ledger.recorder)
    decision = await UpsertSecret(org="acme", ctx=ctx, name=name, value=value).decide(view)
    await ledger.recorder.append(
        [pending(e, s) for e, s in zip(decision.events, decision.sealed or [], strict=True)],
        decision.events, data_keys=decision.data_keys,
    )


async def test_invariant_8_a_conflict_without_if_match_is_decided_again(ledger: Ledger, db_path: Path) -> None:
    admin = await ledger.create_org(ADMIN, "acme")
    a = ctx_for(admin)
    await ledger.upsert_secret(a, "acme", "db", b"v1")
    injected: list[int] = []

    async def another_writer_first() -> None:  # takes the stream version the batch is about to append
        if not injected:
            injected.append(1)
            await _foreign_update(ledger, a, "db", b"theirs")

    ledger.writer.before_commit = another_writer_first
    outcome = await ledger.upsert_secret(a, "acme", "db", b"mine")
    assert injected and outcome.event.version == 3  # decided again against version 2, not lost
    assert (await ledger.reveal_secret(a, "acme", "db")).value == b"mine"

    # With an If-Match, the same conflict is a 412: the client's version is no longer current.
    injected.clear()
    with pytest.raises(PreconditionFailedError) as stale:
        await ledger.upsert_secret(a, "acme", "db", b"mine again", if_match=3)
    assert stale.value.actual == 4
    ledger.writer.before_commit = None
    assert (await ledger.reveal_secret(a, "acme", "db")).value == b"theirs"
    versions = [r[0] for r in query(db_path, "SELECT stream_version FROM events WHERE stream = 'secret:acme/db' "
                                             "AND stream_version IS NOT NULL ORDER BY seq")]
    assert versions == [1, 2, 3, 4]
    assert verify_records(iter_records(db_path)).ok


async def test_bug_invariant_8_concurrency_error_names_the_wrong_stream(ledger: Ledger) -> None:
    """BUG: on a UNIQUE(stream, stream_version) violation the SQLite recorder builds the ConcurrencyError
    from the first record of the batch that has a stream version (`_conflict` in sqlite_store.py), not
    from the record that conflicted, so the error names a stream that had no conflict."""
    admin = await ledger.create_org(ADMIN, "acme")
    a = ctx_for(admin)
    await ledger.upsert_secret(a, "acme", "a", b"v")
    await ledger.upsert_secret(a, "acme", "b", b"v")
    free = SecretDeleted(org="acme", stream=secret_stream("acme", "a"), stream_version=2, at=time.time_ns(),
                         actor=admin_actor(admin), name="a", version=1)
    taken = SecretDeleted(org="acme", stream=secret_stream("acme", "b"), stream_version=1, at=time.time_ns(),
                          actor=admin_actor(admin), name="b", version=1)
    with pytest.raises(ConcurrencyError) as conflict:
        await ledger.recorder.append([pending(free), pending(taken)], [free, taken])
    assert (conflict.value.stream, conflict.value.stream_version) == (secret_stream("acme", "b"), 1)


# -- group commit --------------------------------------------------------------------------------


async def test_32_concurrent_upserts_of_one_name_lose_nothing(ledger: Ledger, db_path: Path) -> None:
    admin = await ledger.create_org(ADMIN, "acme")
    a = ctx_for(admin)
    values = [f"value-{i}".encode() for i in range(32)]
    outcomes = await asyncio.gather(*(ledger.upsert_secret(a, "acme", "hot", v) for v in values))
    assert sorted(o.event.version for o in outcomes) == list(range(1, 33))
    assert [o.created for o in outcomes].count(True) == 1
    last = values[next(i for i, o in enumerate(outcomes) if o.event.version == 32)]
    revealed = await ledger.reveal_secret(a, "acme", "hot")
    assert (revealed.version, revealed.value) == (32, last)
    assert count(db_path, "secret.created") + count(db_path, "secret.updated") == 32
    projections = SqliteProjections(db_path)
    await projections.open()
    try:
        meta = await projections.get_secret("acme", "hot")
    finally:
        await projections.close()
    assert meta is not None and meta.version == 32


async def test_a_command_refused_in_a_batch_does_not_fail_its_neighbours(ledger: Ledger, db_path: Path) -> None:
    admin = await ledger.create_org(ADMIN, "acme")
    a = ctx_for(admin)
    await ledger.upsert_secret(a, "acme", "db", b"v1")
    batches = ledger.writer.batches
    results = await asyncio.gather(
        ledger.upsert_secret(a, "acme", "x", b"x1"),
        ledger.upsert_secret(a, "acme", "db", b"v2"),
        ledger.upsert_secret(a, "acme", "db", b"stale", if_match=1),  # decided after v2: stale
        ledger.delete_secret(a, "acme", "missing"),
        ledger.upsert_secret(a, "acme", "y", b"y1"),
        ledger.reveal_secret(a, "acme", "db"),
        return_exceptions=True,
    )
    assert ledger.writer.batches == batches + 1  # they did share one batch
    x, v2, stale, missing, y, revealed = results
    assert isinstance(stale, PreconditionFailedError) and isinstance(missing, NotFoundError)
    assert isinstance(x, UpsertOutcome) and isinstance(v2, UpsertOutcome) and isinstance(y, UpsertOutcome)
    assert (x.event.version, v2.event.version, y.event.version) == (1, 2, 1)
    assert isinstance(revealed, Revealed) and (revealed.version, revealed.value) == (2, b"v2")
    assert [r[0] for r in query(db_path, "SELECT type FROM events WHERE seq > 3 ORDER BY seq")] == [
        "secret.created", "secret.updated", "secret.created", "secret.revealed",
    ]
