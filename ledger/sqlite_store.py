"""The SQLite recorder: one file, WAL, synchronous=FULL, one writer connection, one process.

Why these choices (measured in research/performance.md):
- Transactions are explicit (`isolation_level=None`, BEGIN IMMEDIATE ... COMMIT), owned by the one
  writer; no other coroutine ever runs a statement on the write connection.
- Records that change no stream (reveals) take no stream version, so the UNIQUE index on
  (stream, stream_version) is partial and costs nothing on the hot path.
- The program never updates or deletes a ledger row; triggers make SQLite refuse it too.
- A second process is refused through an advisory lock on `<file>.lock`, released by the kernel
  even on SIGKILL (SQLite < 3.51.3 has a WAL-reset race between writers in different processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import aiosqlite

from ledger.checkpoint import Checkpoint
from ledger.codec import decode_event
from ledger.errors import ConcurrencyError, IntegrityError, StaleReadError, StoreLockedError, StoreUnavailableError
from ledger.events import Event
from ledger.recorder import (
    Progress,
    Projector,
    ReadSet,
    Recorder,
    no_fault,
    pending_migrations,
    schema_fingerprint,
)
from ledger.records import (
    GENESIS_HASH,
    DataKeyRow,
    IdempotencyRow,
    PendingRecord,
    StoredRecord,
    chain_hash,
    check_continuation,
)

LEDGER_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY,
        org TEXT NOT NULL,
        org_seq INTEGER NOT NULL,
        stream TEXT NOT NULL,
        stream_version INTEGER,
        type TEXT NOT NULL,
        at INTEGER NOT NULL,
        body BLOB NOT NULL,
        sealed TEXT,
        prev_hash BLOB NOT NULL,
        hash BLOB NOT NULL
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS events_org_seq ON events(org, org_seq)",
    """CREATE UNIQUE INDEX IF NOT EXISTS events_stream_version ON events(stream, stream_version)
       WHERE stream_version IS NOT NULL""",
    """CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
       BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
       BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END""",
    # INSERT OR REPLACE deletes the old row without firing DELETE triggers: refuse taken positions.
    """CREATE TRIGGER IF NOT EXISTS events_no_replace BEFORE INSERT ON events
       WHEN EXISTS (SELECT 1 FROM events WHERE seq = NEW.seq)
         OR EXISTS (SELECT 1 FROM events WHERE org = NEW.org AND org_seq = NEW.org_seq)
       BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END""",
    """CREATE TABLE IF NOT EXISTS data_keys (
        id TEXT PRIMARY KEY, kek_id TEXT NOT NULL, wrapped TEXT NOT NULL) WITHOUT ROWID""",
    "CREATE TABLE IF NOT EXISTS projection_positions (name TEXT PRIMARY KEY, position INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS checkpoints (
        org TEXT NOT NULL, org_seq INTEGER NOT NULL, head BLOB NOT NULL, at INTEGER NOT NULL,
        public_key TEXT NOT NULL, signature TEXT NOT NULL, PRIMARY KEY (org, org_seq)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS idempotency (
        scope TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, kek_id TEXT NOT NULL,
        sealed TEXT NOT NULL, created_at INTEGER NOT NULL, PRIMARY KEY (scope, key)) WITHOUT ROWID""",
]

# The ledger's schema by version: a new version appends an entry (never edits a released one); it
# runs once per database, at the first start of a program that knows it.
MIGRATIONS: dict[int, list[str]] = {1: LEDGER_SCHEMA}

_COLUMNS = "seq, org, org_seq, stream, stream_version, type, at, body, sealed, prev_hash, hash"
_INSERT_EVENT = f"INSERT INTO events ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
_REBUILD_CHUNK = 20_000

Row = tuple[int, str, int, str, int | None, str, int, bytes, str | None, bytes, bytes]
T = TypeVar("T")


def _record(row: Row) -> StoredRecord:
    return StoredRecord(
        seq=row[0], org=row[1], org_seq=row[2], stream=row[3], stream_version=row[4], type=row[5],
        at=row[6], body=row[7], sealed=row[8], prev_hash=row[9], hash=row[10],
    )


class SqliteRecorder(Recorder):
    """Recorder on one SQLite file; `projectors` are updated in every append's transaction.

    Every write runs as one function on a dedicated thread that owns the only write connection:
    a whole transaction (records, data keys, projections, positions, COMMIT) costs one hop from the
    event loop, where aiosqlite would cost one per statement. Reads use an aiosqlite connection.
    """

    def __init__(self, path: str | Path, projectors: Sequence[Projector] = (), *, synchronous: str = "FULL"):
        self.path = Path(path)
        self.projectors = list(projectors)
        self.synchronous = synchronous
        self._write: sqlite3.Connection | None = None
        self._read: aiosqlite.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock_fd: int | None = None
        self._heads: dict[str, tuple[int, bytes]] = {}
        self._seq = 0
        self._head_at = 0  # the last record's time: a batch stamped earlier is refused
        self.fail_next_commits = 0  # test hook: make the next N commits fail like a full disk
        # Test hook: called with each step of an append's transaction (APPEND_STEPS) inside it; an
        # exception it raises (sqlite3.Error for a storage fault) fails the append at that step.
        self.inject_fault: Callable[[str], None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self._lock_fd = acquire_process_lock(self.path)
        try:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keyledger-sqlite-writer")
            await self._run(self._open_sync)
            self._read = await aiosqlite.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
            await self._read.execute("PRAGMA query_only = ON")
            await self._run(self._catch_up_sync, None)
        except BaseException:
            await self.close()
            raise

    def _open_sync(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._write = conn
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise StoreUnavailableError(f"{self.path}: could not switch to WAL journal mode")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("PRAGMA busy_timeout = 5000")
        with _transaction(conn):
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            pending = pending_migrations(MIGRATIONS, int(row[0]) if row else 0, str(self.path))
            for version in pending:
                for ddl in MIGRATIONS[version]:
                    conn.execute(ddl)
            for projector in self.projectors:
                shape, key = schema_fingerprint(projector), f"projection_schema:{projector.name}"
                known = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
                had = conn.execute("SELECT 1 FROM projection_positions WHERE name = ?", (projector.name,)).fetchone()
                if had is not None and (known is None or known[0] != shape):
                    for ddl in projector.drop():  # its tables changed shape: rebuilt by the catch-up below
                        conn.execute(ddl)
                    conn.execute("DELETE FROM projection_positions WHERE name = ?", (projector.name,))
                for ddl in projector.schema():
                    conn.execute(ddl)
                conn.execute(
                    "INSERT OR IGNORE INTO projection_positions(name, position) VALUES (?, 0)", (projector.name,)
                )
                conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, shape))
            if pending:
                conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                             (str(pending[-1]),))
        row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        self._seq = int(row[0]) if row else 0
        row = conn.execute("SELECT at FROM events WHERE seq = ?", (self._seq,)).fetchone()
        self._head_at = int(row[0]) if row else 0

    async def close(self) -> None:
        if self._read is not None:
            try:
                await self._read.close()
            except sqlite3.Error:
                pass
            self._read = None
        if self._executor is not None:
            if self._write is not None:
                try:
                    await self._run(self._write.close)
                except (sqlite3.Error, StoreUnavailableError):
                    pass
            self._executor.shutdown(wait=True)
            self._executor = None
        self._write = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._executor is None:
            raise StoreUnavailableError("the store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def write_connection(self) -> sqlite3.Connection:
        """The writer thread's connection (use only through the writer thread)."""
        if self._write is None:
            raise StoreUnavailableError("the store is closed")
        return self._write

    @property
    def read_connection(self) -> aiosqlite.Connection:
        if self._read is None:
            raise StoreUnavailableError("the store is closed")
        return self._read

    # -- writing ---------------------------------------------------------------------------

    async def append(
        self,
        pending: Sequence[PendingRecord],
        events: Sequence[Event],
        *,
        data_keys: Sequence[DataKeyRow] = (),
        drop_data_keys: Sequence[str] = (),
        idempotency: Sequence[IdempotencyRow] = (),
        read_set: ReadSet | None = None,
    ) -> list[StoredRecord]:
        if len(pending) != len(events):
            raise ValueError("pending records and events must pair up")
        return await self._run(self._append_sync, pending, events, data_keys, drop_data_keys, idempotency, read_set)

    def _append_sync(
        self,
        pending: Sequence[PendingRecord],
        events: Sequence[Event],
        data_keys: Sequence[DataKeyRow],
        drop_data_keys: Sequence[str],
        idempotency: Sequence[IdempotencyRow],
        read_set: ReadSet | None = None,
    ) -> list[StoredRecord]:
        conn = self.write_connection
        if pending and min(p.at for p in pending) < self._head_at:
            raise StaleReadError(set(), not_before=self._head_at)  # times never go backwards
        if read_set is not None and self._seq > read_set.as_of:
            # One process writes this file, so only a writer whose cache lags can get here.
            changed = self._changed_sync(read_set.as_of, self._seq)
            if changed & read_set.streams:
                raise StaleReadError(changed & read_set.streams)
            read_set.changed_by_others = changed
        heads: dict[str, tuple[int, bytes]] = {}
        for org in {p.org for p in pending}:
            heads[org] = self._heads[org] if org in self._heads else self._load_head(conn, org)
        seq = self._seq
        stored: list[StoredRecord] = []
        rows: list[Row] = []
        for p in pending:
            org_seq, prev = heads[p.org]
            seq += 1
            org_seq += 1
            digest = chain_hash(p.org, org_seq, prev, p.body)
            heads[p.org] = (org_seq, digest)
            row: Row = (seq, p.org, org_seq, p.stream, p.stream_version, p.type, p.at, p.body, p.sealed, prev, digest)
            rows.append(row)
            stored.append(_record(row))
        fault = self.inject_fault or no_fault
        try:
            with _transaction(conn):
                fault("begin")
                if rows:
                    conn.executemany(_INSERT_EVENT, rows)
                fault("events")
                if data_keys:
                    conn.executemany(
                        "INSERT INTO data_keys(id, kek_id, wrapped) VALUES (?,?,?)",
                        [(k.id, k.kek_id, k.wrapped) for k in data_keys],
                    )
                fault("data_keys")
                if drop_data_keys:
                    conn.executemany("DELETE FROM data_keys WHERE id = ?", [(i,) for i in drop_data_keys])
                fault("drop_data_keys")
                if idempotency:
                    conn.executemany(
                        "INSERT OR REPLACE INTO idempotency(scope, key, fingerprint, kek_id, sealed, created_at) "
                        "VALUES (?,?,?,?,?,?)",
                        [(i.scope, i.key, i.fingerprint, i.kek_id, i.sealed, i.created_at) for i in idempotency],
                    )
                fault("idempotency")
                if stored:
                    self._project(conn, self.projectors, list(zip(stored, events, strict=True)), fault)
                fault("commit")
                if self.fail_next_commits > 0:
                    self.fail_next_commits -= 1
                    raise sqlite3.OperationalError("database or disk is full (injected)")
        except sqlite3.IntegrityError as exc:
            conflict = _find_conflict(conn, stored)
            if conflict is not None:
                raise conflict from None
            raise StoreUnavailableError(f"append refused by the database: {exc}") from None
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"the ledger could not commit: {exc}") from None
        self._seq = seq
        if stored:
            self._head_at = stored[-1].at
        self._heads.update(heads)
        return stored

    @staticmethod
    def _project(conn: sqlite3.Connection, projectors: Sequence[Projector],
                 batch: Sequence[tuple[StoredRecord, Event]], fault: Callable[[str], None] | None = None) -> None:
        last = batch[-1][0].seq
        for projector in projectors:
            for statement in projector.project(batch):
                if statement.rows:
                    conn.executemany(statement.sql, statement.rows)
            if fault is not None:
                fault(f"projection:{projector.name}")
            conn.execute("UPDATE projection_positions SET position = ? WHERE name = ?", (last, projector.name))
            if fault is not None:
                fault(f"position:{projector.name}")

    def _changed_sync(self, after: int, upto: int) -> set[str]:
        rows = self.write_connection.execute(
            "SELECT DISTINCT stream FROM events WHERE seq > ? AND seq <= ? AND stream_version IS NOT NULL",
            (after, upto),
        ).fetchall()
        return {str(r[0]) for r in rows}

    async def schema_version(self) -> int:
        rows = list(await self.read_connection.execute_fetchall(
            "SELECT value FROM meta WHERE key = 'schema_version'"))
        return int(rows[0][0]) if rows else 0

    async def changed_streams(self, after: int, upto: int | None = None) -> tuple[int, set[str]]:
        head = self._seq if upto is None else min(upto, self._seq)
        if after >= head:
            return head, set()
        return head, await self._run(self._changed_sync, after, head)

    @staticmethod
    def _load_head(conn: sqlite3.Connection, org: str) -> tuple[int, bytes]:
        row = conn.execute("SELECT org_seq, hash FROM events WHERE org = ? ORDER BY org_seq DESC LIMIT 1",
                           (org,)).fetchone()
        return (0, GENESIS_HASH) if row is None else (int(row[0]), bytes(row[1]))

    async def replace_data_keys(self, rows: Sequence[DataKeyRow]) -> None:
        def replace() -> None:
            try:
                with _transaction(self.write_connection) as conn:
                    conn.executemany(
                        "UPDATE data_keys SET kek_id = ?, wrapped = ? WHERE id = ?",
                        [(r.kek_id, r.wrapped, r.id) for r in rows],
                    )
            except sqlite3.Error as exc:
                raise StoreUnavailableError(f"could not rewrap data keys: {exc}") from None

        await self._run(replace)

    async def put_checkpoint(self, checkpoint: Checkpoint) -> None:
        def put() -> None:
            try:
                with _transaction(self.write_connection) as conn:
                    conn.execute(
                        "INSERT OR REPLACE INTO checkpoints(org, org_seq, head, at, public_key, signature) "
                        "VALUES (?,?,?,?,?,?)",
                        (checkpoint.org, checkpoint.org_seq, checkpoint.head, checkpoint.at, checkpoint.public_key,
                         checkpoint.signature),
                    )
            except sqlite3.Error as exc:
                raise StoreUnavailableError(f"could not keep a checkpoint: {exc}") from None

        await self._run(put)

    async def latest_checkpoint(self, org: str) -> Checkpoint | None:
        rows = list(await self.read_connection.execute_fetchall(
            "SELECT org, org_seq, head, at, public_key, signature FROM checkpoints WHERE org = ? "
            "ORDER BY org_seq DESC LIMIT 1", (org,)
        ))
        if not rows:
            return None
        r = rows[0]
        return Checkpoint(org=r[0], org_seq=r[1], head=bytes(r[2]), at=r[3], public_key=r[4], signature=r[5])

    # -- projections -----------------------------------------------------------------------

    async def projection_positions(self) -> dict[str, int]:
        rows = await self.read_connection.execute_fetchall("SELECT name, position FROM projection_positions")
        return {str(name): int(pos) for name, pos in rows}

    def _catch_up_sync(self, progress: Progress | None) -> None:
        """Fold records a projector has not seen yet (a new projector, or an interrupted rebuild)."""
        conn = self.write_connection
        positions = {str(n): int(p) for n, p in conn.execute("SELECT name, position FROM projection_positions")}
        behind = [p for p in self.projectors if positions.get(p.name, 0) < self._seq]
        if not behind:
            return
        total = self._seq
        start = min(positions.get(p.name, 0) for p in behind)
        reader = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        gc_was_enabled = gc.isenabled()
        gc.disable()  # millions of short-lived objects, no cycles: collection would only cost time
        try:
            cursor = reader.execute(f"SELECT {_COLUMNS} FROM events WHERE seq > ? AND seq <= ? ORDER BY seq",
                                    (start, total))
            while chunk := cursor.fetchmany(_REBUILD_CHUNK):
                batch = [(record, decode_event(record.body)) for record in map(_record, chunk)]
                last = batch[-1][0].seq
                with _transaction(conn):
                    for projector in behind:
                        seen = positions.get(projector.name, 0)
                        mine = batch if batch[0][0].seq > seen else [item for item in batch if item[0].seq > seen]
                        if mine:
                            self._project(conn, [projector], mine)
                            positions[projector.name] = last
                if progress is not None:
                    progress(last, total)
        finally:
            reader.close()
            if gc_was_enabled:
                gc.enable()

    async def rebuild_projections(self, progress: Progress | None = None) -> None:
        def reset() -> None:
            with _transaction(self.write_connection) as conn:
                for projector in self.projectors:
                    for sql in projector.reset():
                        conn.execute(sql)
                    conn.execute("UPDATE projection_positions SET position = 0 WHERE name = ?", (projector.name,))

        await self._run(reset)
        await self._run(self._catch_up_sync, progress)

    # -- reading ---------------------------------------------------------------------------

    async def _select(self, sql: str, params: tuple[object, ...]) -> list[StoredRecord]:
        rows = await self.read_connection.execute_fetchall(sql, params)
        return [_record(r) for r in rows]  # type: ignore[arg-type]

    async def read_after(self, seq: int, limit: int = 1000) -> list[StoredRecord]:
        return await self._select(f"SELECT {_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))

    async def read_stream(self, stream: str) -> list[StoredRecord]:
        return await self._select(
            f"SELECT {_COLUMNS} FROM events WHERE stream = ? AND stream_version IS NOT NULL "
            "ORDER BY stream_version",
            (stream,),
        )

    async def read_org(self, org: str, after_org_seq: int = 0, limit: int = 1000) -> list[StoredRecord]:
        return await self._select(
            f"SELECT {_COLUMNS} FROM events WHERE org = ? AND org_seq > ? ORDER BY org_seq LIMIT ?",
            (org, after_org_seq, limit),
        )

    async def orgs(self) -> list[str]:
        # One index seek per org (a skip scan of events_org_seq), not a scan of every record.
        found: list[str] = []
        while True:
            rows = list(await self.read_connection.execute_fetchall(
                "SELECT org FROM events WHERE org > ? ORDER BY org LIMIT 1", (found[-1] if found else "",)
            ))
            if not rows:
                return found
            found.append(str(rows[0][0]))

    async def max_seq(self) -> int:
        rows = list(await self.read_connection.execute_fetchall("SELECT COALESCE(MAX(seq), 0) FROM events"))
        return int(rows[0][0])

    async def org_head(self, org: str) -> tuple[int, bytes]:
        rows = list(await self.read_connection.execute_fetchall(
            "SELECT org_seq, hash FROM events WHERE org = ? ORDER BY org_seq DESC LIMIT 1", (org,)
        ))
        return (0, GENESIS_HASH) if not rows else (int(rows[0][0]), bytes(rows[0][1]))

    async def get_data_key(self, data_key_id: str) -> DataKeyRow | None:
        rows = list(
            await self.read_connection.execute_fetchall(
                "SELECT id, kek_id, wrapped FROM data_keys WHERE id = ?", (data_key_id,)
            )
        )
        if not rows:
            return None
        row = rows[0]
        return DataKeyRow(id=row[0], kek_id=row[1], wrapped=row[2])

    async def get_idempotency(self, scope: str, key: str, not_before: int) -> IdempotencyRow | None:
        rows = list(
            await self.read_connection.execute_fetchall(
                "SELECT scope, key, fingerprint, kek_id, sealed, created_at FROM idempotency "
                "WHERE scope = ? AND key = ? AND created_at >= ?",
                (scope, key, not_before),
            )
        )
        if not rows:
            return None
        r = rows[0]
        return IdempotencyRow(scope=r[0], key=r[1], fingerprint=r[2], kek_id=r[3], sealed=r[4], created_at=r[5])

    async def data_keys_after(self, data_key_id: str, limit: int = 1000) -> list[DataKeyRow]:
        rows = await self.read_connection.execute_fetchall(
            "SELECT id, kek_id, wrapped FROM data_keys WHERE id > ? ORDER BY id LIMIT ?", (data_key_id, limit)
        )
        return [DataKeyRow(id=r[0], kek_id=r[1], wrapped=r[2]) for r in rows]

    async def data_keys_by_kek(self) -> dict[str, int]:
        rows = await self.read_connection.execute_fetchall("SELECT kek_id, COUNT(*) FROM data_keys GROUP BY kek_id")
        return {str(r[0]): int(r[1]) for r in rows}

    # -- migration -------------------------------------------------------------------------

    async def import_records(self, records: Sequence[StoredRecord], events: Sequence[Event]) -> None:
        if len(records) != len(events):
            raise ValueError("records and events must pair up")
        if records:
            await self._run(self._import_sync, records, events)

    def _import_sync(self, records: Sequence[StoredRecord], events: Sequence[Event]) -> None:
        conn = self.write_connection
        heads = {org: self._heads[org] if org in self._heads else self._load_head(conn, org)
                 for org in dict.fromkeys(r.org for r in records)}
        heads.update(check_continuation(self._seq, heads, records))
        rows: list[Row] = [
            (r.seq, r.org, r.org_seq, r.stream, r.stream_version, r.type, r.at, r.body, r.sealed, r.prev_hash, r.hash)
            for r in records
        ]
        try:
            with _transaction(conn):
                conn.executemany(_INSERT_EVENT, rows)
                self._project(conn, self.projectors, list(zip(records, events, strict=True)))
        except sqlite3.IntegrityError as exc:
            raise IntegrityError(f"import refused by the database: {exc}") from None
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"the ledger could not commit: {exc}") from None
        self._seq = records[-1].seq
        self._head_at = records[-1].at
        self._heads.update(heads)

    async def import_data_keys(self, rows: Sequence[DataKeyRow]) -> None:
        def insert() -> None:
            try:
                with _transaction(self.write_connection) as conn:
                    conn.executemany(
                        "INSERT OR IGNORE INTO data_keys(id, kek_id, wrapped) VALUES (?,?,?)",
                        [(r.id, r.kek_id, r.wrapped) for r in rows],
                    )
            except sqlite3.Error as exc:
                raise StoreUnavailableError(f"could not import data keys: {exc}") from None

        if rows:
            await self._run(insert)


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error (SQLite may have rolled back already)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise


def _find_conflict(conn: sqlite3.Connection, stored: Sequence[StoredRecord]) -> ConcurrencyError | None:
    """The first record whose (stream, stream_version) is taken, in the batch or in the table."""
    seen: set[tuple[str, int]] = set()
    for record in stored:
        if record.stream_version is None:
            continue
        key = (record.stream, record.stream_version)
        taken = key in seen or conn.execute(
            "SELECT 1 FROM events WHERE stream = ? AND stream_version = ?", key
        ).fetchone() is not None
        if taken:
            return ConcurrencyError(record.stream, record.stream_version)
        seen.add(key)
    return None


def acquire_process_lock(path: Path) -> int:
    """Hold an exclusive advisory lock beside the database for the life of this process."""
    lock_path = Path(f"{path}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreLockedError(
            f"{path} is already open for writing by another process (pid {holder}); "
            "keyledger allows one server per SQLite file"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def iter_records(path: str | Path, *, chunk: int = 10_000) -> Iterator[StoredRecord]:
    """Every record of a database file in seq order, read-only (safe while a server runs)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cursor = conn.execute(f"SELECT {_COLUMNS} FROM events ORDER BY seq")
        while rows := cursor.fetchmany(chunk):
            for row in rows:
                yield _record(row)
    finally:
        conn.close()


def iter_rows(path: str | Path, *, chunk: int = 10_000) -> Iterator[Row]:
    """Every record of a database file as a row tuple in seq order, read-only (for the verifier)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cursor = conn.execute(f"SELECT {_COLUMNS} FROM events ORDER BY seq")
        while rows := cursor.fetchmany(chunk):
            yield from rows
    finally:
        conn.close()


def iter_raw_bodies(path: str | Path, *, chunk: int = 10_000) -> Iterator[tuple[int, bytes]]:
    """(seq, body) of every record: the raw scan the benchmarks compare against."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cursor = conn.execute("SELECT seq, body FROM events ORDER BY seq")
        while rows := cursor.fetchmany(chunk):
            yield from rows
    finally:
        conn.close()


def iter_org_records(path: str | Path, org: str, *, chunk: int = 10_000) -> Iterator[StoredRecord]:
    """One org's records in org_seq order, read-only (offline export)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cursor = conn.execute(f"SELECT {_COLUMNS} FROM events WHERE org = ? ORDER BY org_seq", (org,))
        while rows := cursor.fetchmany(chunk):
            for row in rows:
                yield _record(row)
    finally:
        conn.close()


def count_org_records(path: str | Path, org: str) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT COUNT(*) FROM events WHERE org = ?", (org,)).fetchone()
        return int(row[0]) if row else 0
    finally:
        conn.close()
