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
import fcntl
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import aiosqlite

from ledger.codec import decode_event
from ledger.errors import ConcurrencyError, StoreLockedError, StoreUnavailableError
from ledger.events import Event
from ledger.recorder import Progress, Projector, Recorder
from ledger.records import GENESIS_HASH, DataKeyRow, IdempotencyRow, PendingRecord, StoredRecord, chain_hash

SCHEMA_VERSION = "1"

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
    """CREATE TABLE IF NOT EXISTS data_keys (
        id TEXT PRIMARY KEY, kek_id TEXT NOT NULL, wrapped TEXT NOT NULL) WITHOUT ROWID""",
    "CREATE TABLE IF NOT EXISTS projection_positions (name TEXT PRIMARY KEY, position INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS idempotency (
        scope TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, kek_id TEXT NOT NULL,
        sealed TEXT NOT NULL, created_at INTEGER NOT NULL, PRIMARY KEY (scope, key)) WITHOUT ROWID""",
]

_COLUMNS = "seq, org, org_seq, stream, stream_version, type, at, body, sealed, prev_hash, hash"
_INSERT_EVENT = f"INSERT INTO events ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
_REBUILD_CHUNK = 20_000

Row = tuple[int, str, int, str, int | None, str, int, bytes, str | None, bytes, bytes]


def _record(row: Row) -> StoredRecord:
    return StoredRecord(
        seq=row[0], org=row[1], org_seq=row[2], stream=row[3], stream_version=row[4], type=row[5],
        at=row[6], body=row[7], sealed=row[8], prev_hash=row[9], hash=row[10],
    )


class SqliteRecorder(Recorder):
    """Recorder on one SQLite file; `projectors` are updated in every append's transaction."""

    def __init__(self, path: str | Path, projectors: Sequence[Projector] = (), *, synchronous: str = "FULL"):
        self.path = Path(path)
        self.projectors = list(projectors)
        self.synchronous = synchronous
        self._write: aiosqlite.Connection | None = None
        self._read: aiosqlite.Connection | None = None
        self._lock_fd: int | None = None
        self._write_lock = asyncio.Lock()
        self._heads: dict[str, tuple[int, bytes]] = {}
        self._seq = 0
        self.fail_next_commits = 0  # test hook: make the next N commits fail like a full disk

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self._lock_fd = acquire_process_lock(self.path)
        try:
            self._write = await aiosqlite.connect(self.path, isolation_level=None)
            await self._configure(self._write)
            async with self._write_lock:
                await self._write.execute("BEGIN IMMEDIATE")
                for ddl in LEDGER_SCHEMA:
                    await self._write.execute(ddl)
                for projector in self.projectors:
                    for ddl in projector.schema():
                        await self._write.execute(ddl)
                    await self._write.execute(
                        "INSERT OR IGNORE INTO projection_positions(name, position) VALUES (?, 0)",
                        (projector.name,),
                    )
                await self._write.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
                )
                await self._write.execute("COMMIT")
            self._seq = await self._fetch_max_seq(self._write)
            self._read = await aiosqlite.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
            await self._read.execute("PRAGMA query_only = ON")
            await self._catch_up_projections()
        except BaseException:
            await self.close()
            raise

    async def _configure(self, conn: aiosqlite.Connection) -> None:
        cursor = await conn.execute("PRAGMA journal_mode = WAL")
        mode = await cursor.fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise StoreUnavailableError(f"{self.path}: could not switch to WAL journal mode")
        await conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        await conn.execute("PRAGMA busy_timeout = 5000")

    async def close(self) -> None:
        for conn in (self._read, self._write):
            if conn is not None:
                try:
                    await conn.close()
                except sqlite3.Error:
                    pass
        self._read = self._write = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def write_connection(self) -> aiosqlite.Connection:
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
    ) -> list[StoredRecord]:
        if len(pending) != len(events):
            raise ValueError("pending records and events must pair up")
        conn = self.write_connection
        async with self._write_lock:
            heads: dict[str, tuple[int, bytes]] = {}
            for org in {p.org for p in pending}:
                heads[org] = self._heads[org] if org in self._heads else await self._load_head(conn, org)
            seq = self._seq
            stored: list[StoredRecord] = []
            for p in pending:
                org_seq, prev = heads[p.org]
                seq += 1
                org_seq += 1
                digest = chain_hash(p.org, org_seq, prev, p.body)
                heads[p.org] = (org_seq, digest)
                stored.append(
                    StoredRecord(
                        seq=seq, org=p.org, org_seq=org_seq, stream=p.stream, stream_version=p.stream_version,
                        type=p.type, at=p.at, body=p.body, sealed=p.sealed, prev_hash=prev, hash=digest,
                    )
                )
            await self._commit(conn, stored, events, data_keys, drop_data_keys, idempotency)
            self._seq = seq
            self._heads.update(heads)
            return stored

    async def _commit(
        self,
        conn: aiosqlite.Connection,
        stored: Sequence[StoredRecord],
        events: Sequence[Event],
        data_keys: Sequence[DataKeyRow],
        drop_data_keys: Sequence[str],
        idempotency: Sequence[IdempotencyRow] = (),
    ) -> None:
        try:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                if stored:
                    await conn.executemany(
                        _INSERT_EVENT,
                        [
                            (r.seq, r.org, r.org_seq, r.stream, r.stream_version, r.type, r.at, r.body,
                             r.sealed, r.prev_hash, r.hash)
                            for r in stored
                        ],
                    )
                if data_keys:
                    await conn.executemany(
                        "INSERT INTO data_keys(id, kek_id, wrapped) VALUES (?,?,?)",
                        [(k.id, k.kek_id, k.wrapped) for k in data_keys],
                    )
                if drop_data_keys:
                    await conn.executemany("DELETE FROM data_keys WHERE id = ?", [(i,) for i in drop_data_keys])
                if idempotency:
                    await conn.executemany(
                        "INSERT OR REPLACE INTO idempotency(scope, key, fingerprint, kek_id, sealed, created_at) "
                        "VALUES (?,?,?,?,?,?)",
                        [(i.scope, i.key, i.fingerprint, i.kek_id, i.sealed, i.created_at) for i in idempotency],
                    )
                if stored:
                    await self._project(conn, list(zip(stored, events, strict=True)))
                if self.fail_next_commits > 0:
                    self.fail_next_commits -= 1
                    raise sqlite3.OperationalError("database or disk is full (injected)")
                await conn.execute("COMMIT")
            except BaseException:
                await _rollback(conn)
                raise
        except sqlite3.IntegrityError as exc:
            conflict = _conflict(stored, str(exc))
            if conflict is not None:
                raise conflict from None
            raise StoreUnavailableError(f"append refused by the database: {exc}") from None
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"the ledger could not commit: {exc}") from None

    async def _project(self, conn: aiosqlite.Connection, batch: list[tuple[StoredRecord, Event]]) -> None:
        last = batch[-1][0].seq
        for projector in self.projectors:
            for statement in projector.project(batch):
                if statement.rows:
                    await conn.executemany(statement.sql, statement.rows)
        if self.projectors:
            await conn.execute("UPDATE projection_positions SET position = ?", (last,))

    async def _load_head(self, conn: aiosqlite.Connection, org: str) -> tuple[int, bytes]:
        cursor = await conn.execute(
            "SELECT org_seq, hash FROM events WHERE org = ? ORDER BY org_seq DESC LIMIT 1", (org,)
        )
        row = await cursor.fetchone()
        return (0, GENESIS_HASH) if row is None else (int(row[0]), bytes(row[1]))

    async def _fetch_max_seq(self, conn: aiosqlite.Connection) -> int:
        cursor = await conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events")
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def replace_data_keys(self, rows: Sequence[DataKeyRow]) -> None:
        conn = self.write_connection
        async with self._write_lock:
            try:
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    await conn.executemany(
                        "UPDATE data_keys SET kek_id = ?, wrapped = ? WHERE id = ?",
                        [(r.kek_id, r.wrapped, r.id) for r in rows],
                    )
                    await conn.execute("COMMIT")
                except BaseException:
                    await _rollback(conn)
                    raise
            except sqlite3.Error as exc:
                raise StoreUnavailableError(f"could not rewrap data keys: {exc}") from None

    # -- projections -----------------------------------------------------------------------

    async def projection_positions(self) -> dict[str, int]:
        rows = await self.read_connection.execute_fetchall("SELECT name, position FROM projection_positions")
        return {str(name): int(pos) for name, pos in rows}

    async def _catch_up_projections(self, progress: Progress | None = None) -> None:
        """Fold records a projector has not seen yet (a new projector, or an interrupted rebuild)."""
        conn = self.write_connection
        async with self._write_lock:
            rows = await conn.execute_fetchall("SELECT name, position FROM projection_positions")
            positions = {str(n): int(p) for n, p in rows}
            behind = [p for p in self.projectors if positions.get(p.name, 0) < self._seq]
            if not behind:
                return
            start = min(positions.get(p.name, 0) for p in behind)
            total = self._seq
            while start < total:
                chunk = await conn.execute_fetchall(
                    f"SELECT {_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (start, _REBUILD_CHUNK)
                )
                if not chunk:
                    break
                records = [_record(r) for r in chunk]  # type: ignore[arg-type]
                batch = [(r, decode_event(r.body)) for r in records]
                last = records[-1].seq
                try:
                    await conn.execute("BEGIN IMMEDIATE")
                    for projector in behind:
                        mine = [item for item in batch if item[0].seq > positions.get(projector.name, 0)]
                        if not mine:
                            continue
                        for statement in projector.project(mine):
                            if statement.rows:
                                await conn.executemany(statement.sql, statement.rows)
                        await conn.execute(
                            "UPDATE projection_positions SET position = ? WHERE name = ?", (last, projector.name)
                        )
                        positions[projector.name] = last
                    await conn.execute("COMMIT")
                except BaseException:
                    await _rollback(conn)
                    raise
                start = last
                if progress is not None:
                    progress(last, total)

    async def rebuild_projections(self, progress: Progress | None = None) -> None:
        conn = self.write_connection
        async with self._write_lock:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                for projector in self.projectors:
                    for sql in projector.reset():
                        await conn.execute(sql)
                await conn.execute("UPDATE projection_positions SET position = 0")
                await conn.execute("COMMIT")
            except BaseException:
                await _rollback(conn)
                raise
        await self._catch_up_projections(progress)

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

    async def max_seq(self) -> int:
        return await self._fetch_max_seq(self.read_connection)

    async def org_head(self, org: str) -> tuple[int, bytes]:
        return await self._load_head(self.read_connection, org)

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


async def _rollback(conn: aiosqlite.Connection) -> None:
    # SQLite may already have rolled back (SQLITE_FULL, SQLITE_IOERR); "no transaction" is fine.
    try:
        await conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def _conflict(stored: Sequence[StoredRecord], message: str) -> ConcurrencyError | None:
    if "stream" not in message:
        return None
    versioned = [r for r in stored if r.stream_version is not None]
    if not versioned:
        return None
    first = versioned[0]
    assert first.stream_version is not None
    return ConcurrencyError(first.stream, first.stream_version)


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


def iter_raw_bodies(path: str | Path, *, chunk: int = 10_000) -> Iterator[tuple[int, bytes]]:
    """(seq, body) of every record: the raw scan the benchmarks compare against."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cursor = conn.execute("SELECT seq, body FROM events ORDER BY seq")
        while rows := cursor.fetchmany(chunk):
            yield from rows
    finally:
        conn.close()
