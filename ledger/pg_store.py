"""Recorder on PostgreSQL (asyncpg), for several API processes sharing one database.

The same contract as SQLite (tests/contracts/recorder.py), with one difference that matters: other
processes append too. So nothing about the chain is cached between appends: each append takes
`LOCK TABLE events IN EXCLUSIVE MODE` inside its transaction (readers go on; appenders queue), reads
the global head and each org's head under the lock, and commits. Appends are thereby serialised in
commit order, which makes `seq` gapless *and* visible in order: a reader tailing `seq > N` can never
see N+2 commit before N+1 (the way the `eventsourcing` library's PostgreSQL recorder does it).
Every append NOTIFYs `keyledger_events` with its last seq, so other processes' caches can follow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import asyncpg

from ledger.checkpoint import Checkpoint
from ledger.codec import decode_event
from ledger.errors import ConcurrencyError, IntegrityError, StaleReadError, StoreUnavailableError
from ledger.events import Event
from ledger.idempotency import TTL_NS
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

NOTIFY_CHANNEL = "keyledger_events"
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy  # what a pool hands out

LEDGER_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS events (
        seq BIGINT PRIMARY KEY, org TEXT NOT NULL, org_seq BIGINT NOT NULL, stream TEXT NOT NULL,
        stream_version BIGINT, type TEXT NOT NULL, at BIGINT NOT NULL, body BYTEA NOT NULL, sealed TEXT,
        prev_hash BYTEA NOT NULL, hash BYTEA NOT NULL)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS events_org_seq ON events(org, org_seq)",
    """CREATE UNIQUE INDEX IF NOT EXISTS events_stream_version ON events(stream, stream_version)
       WHERE stream_version IS NOT NULL""",
    """CREATE OR REPLACE FUNCTION keyledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN RAISE EXCEPTION 'the ledger is append-only'; END $$""",
    """DO $$ BEGIN
         IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'events_append_only') THEN
           CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
             FOR EACH ROW EXECUTE FUNCTION keyledger_append_only();
           CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
             FOR EACH STATEMENT EXECUTE FUNCTION keyledger_append_only();
         END IF;
       END $$""",
    "CREATE TABLE IF NOT EXISTS data_keys (id TEXT PRIMARY KEY, kek_id TEXT NOT NULL, wrapped TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS projection_positions (name TEXT PRIMARY KEY, position BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS checkpoints (
        org TEXT NOT NULL, org_seq BIGINT NOT NULL, head BYTEA NOT NULL, at BIGINT NOT NULL,
        public_key TEXT NOT NULL, signature TEXT NOT NULL, PRIMARY KEY (org, org_seq))""",
    """CREATE TABLE IF NOT EXISTS idempotency (
        scope TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, kek_id TEXT NOT NULL,
        sealed TEXT NOT NULL, created_at BIGINT NOT NULL, PRIMARY KEY (scope, key))""",
]
# Version 2: an append's whole critical section in one round trip. Under the table lock: the global
# head and its time, every stream other writers changed since the caller's cache was current
# (`as_of`; NULL: do not look), and the head of each of the batch's orgs. One row per org.
LOCK_FOR_APPEND = """CREATE OR REPLACE FUNCTION keyledger_lock_for_append(as_of BIGINT, batch_orgs TEXT[])
    RETURNS TABLE (head BIGINT, changed TEXT[], org TEXT, org_seq BIGINT, hash BYTEA, head_at BIGINT)
    LANGUAGE plpgsql AS $$
    #variable_conflict use_column
    DECLARE
      current_head BIGINT;
      current_at BIGINT;
      changed_streams TEXT[] := '{}';
    BEGIN
      LOCK TABLE events IN EXCLUSIVE MODE;
      SELECT COALESCE(MAX(e.seq), 0) INTO current_head FROM events e;
      SELECT e.at INTO current_at FROM events e WHERE e.seq = current_head;
      IF as_of IS NOT NULL AND current_head > as_of THEN
        SELECT COALESCE(array_agg(DISTINCT e.stream), '{}') INTO changed_streams FROM events e
          WHERE e.seq > as_of AND e.stream_version IS NOT NULL;
      END IF;
      RETURN QUERY SELECT current_head, changed_streams, o.name, h.org_seq, h.hash, current_at
        FROM unnest(batch_orgs) AS o(name)
        LEFT JOIN LATERAL (SELECT e.org_seq, e.hash FROM events e WHERE e.org = o.name
                           ORDER BY e.org_seq DESC LIMIT 1) h ON true;
    END $$"""

# The ledger's schema by version: a new version appends an entry (never edits a released one); it
# runs once per database, at the first start of a program that knows it.
MIGRATIONS: dict[int, list[str]] = {1: LEDGER_SCHEMA, 2: [LOCK_FOR_APPEND]}

_COLUMNS = "seq, org, org_seq, stream, stream_version, type, at, body, sealed, prev_hash, hash"
_INSERT_EVENT = f"INSERT INTO events ({_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)"
_REBUILD_CHUNK = 20_000
# Every DDL above runs once per database at a time, whichever process starts first.
_SCHEMA_LOCK = 0x6B65796C  # "keyl"


def _record(row: asyncpg.Record) -> StoredRecord:
    return StoredRecord(
        seq=row[0], org=row[1], org_seq=row[2], stream=row[3], stream_version=row[4], type=row[5],
        at=row[6], body=bytes(row[7]), sealed=row[8], prev_hash=bytes(row[9]), hash=bytes(row[10]),
    )


class PostgresRecorder(Recorder):
    """Recorder on a PostgreSQL database; `projectors` (in PostgreSQL's dialect) run in each append."""

    def __init__(self, dsn: str, projectors: Sequence[Projector] = (), *, pool_size: int = 8) -> None:
        self.dsn = dsn
        self.projectors = list(projectors)
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        # Test hook, as on SQLite: called with each step of an append's transaction inside it.
        self.inject_fault: Callable[[str], None] | None = None
        self.fail_next_commits = 0
        # LISTEN connection: the highest seq any process announced. Only a wake-up: a writer that
        # missed an announcement is still stopped by the ReadSet check under the append lock.
        self._listener: asyncpg.Connection | None = None
        self._heard = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self.pool_size)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreUnavailableError(f"cannot reach PostgreSQL: {type(exc).__name__}: {exc}") from None
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                await conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                current = await conn.fetchval("SELECT value FROM meta WHERE key = 'schema_version'")
                pending = pending_migrations(MIGRATIONS, int(current or 0), "the PostgreSQL database")
                for version in pending:
                    for ddl in MIGRATIONS[version]:
                        await conn.execute(ddl)
                for projector in self.projectors:
                    shape, key = schema_fingerprint(projector), f"projection_schema:{projector.name}"
                    known = await conn.fetchval("SELECT value FROM meta WHERE key = $1", key)
                    had = await conn.fetchval("SELECT 1 FROM projection_positions WHERE name = $1", projector.name)
                    if had is not None and known != shape:
                        for ddl in projector.drop():  # its tables changed shape: rebuilt by the catch-up
                            await conn.execute(ddl)
                        await conn.execute("DELETE FROM projection_positions WHERE name = $1", projector.name)
                    for ddl in projector.schema():
                        await conn.execute(ddl)
                    await conn.execute(
                        "INSERT INTO projection_positions(name, position) VALUES ($1, 0) ON CONFLICT DO NOTHING",
                        projector.name,
                    )
                    await conn.execute(
                        "INSERT INTO meta(key, value) VALUES ($1, $2) "
                        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", key, shape,
                    )
                if pending:
                    await conn.execute(
                        "INSERT INTO meta(key, value) VALUES ('schema_version', $1) "
                        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", str(pending[-1]),
                    )
            await self._catch_up(None)
            await self._listen()
        except BaseException:
            await self.close()
            raise

    async def _listen(self) -> None:
        listener = await asyncpg.connect(self.dsn)
        await listener.add_listener(NOTIFY_CHANNEL, self._on_notify)
        listener.add_termination_listener(self._on_listener_lost)
        self._listener = listener
        self._heard = await self.max_seq()  # after LISTEN: nothing committed since goes unheard

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            self._heard = max(self._heard, int(str(payload)))
        except ValueError:
            pass

    def _on_listener_lost(self, _conn: object) -> None:
        self._listener = None  # changed_streams queries every time from now on

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None and not listener.is_closed():
            await listener.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailableError("the store is closed")
        return self._pool

    # -- appending -------------------------------------------------------------------------

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
        fault = self.inject_fault or no_fault
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                fault("begin")
                stored = await self._insert_records(conn, pending, read_set)
                fault("events")
                if data_keys:
                    await conn.executemany("INSERT INTO data_keys(id, kek_id, wrapped) VALUES ($1,$2,$3)",
                                           [(k.id, k.kek_id, k.wrapped) for k in data_keys])
                fault("data_keys")
                if drop_data_keys:
                    await conn.executemany("DELETE FROM data_keys WHERE id = $1", [(i,) for i in drop_data_keys])
                fault("drop_data_keys")
                if idempotency:
                    await self._keep_idempotency(conn, idempotency)
                fault("idempotency")
                if stored:
                    await self._project(conn, self.projectors, list(zip(stored, events, strict=True)), fault,
                                        notify=True)
                fault("commit")
                if self.fail_next_commits > 0:
                    self.fail_next_commits -= 1
                    raise asyncpg.DiskFullError("could not extend file (injected)")
        except asyncpg.UniqueViolationError as exc:
            conflict = await self._find_conflict(pending)
            if conflict is not None:
                raise conflict from None
            raise StoreUnavailableError(f"append refused by the database: {exc}") from None
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailableError(f"the ledger could not commit: {type(exc).__name__}: {exc}") from None
        if stored:
            # Our own NOTIFY comes back later; until it does, the fast path must not hide this batch.
            self._heard = max(self._heard, stored[-1].seq)
        return stored

    @staticmethod
    async def _keep_idempotency(conn: Connection, rows: Sequence[IdempotencyRow]) -> None:
        """Store the answers of idempotent requests; an expired record of the same key is replaced.

        Another process may have answered the same key since this batch looked it up (each checks
        before the other commits): then the batch is decided again, and replays that answer."""
        kept = await conn.fetch(
            "INSERT INTO idempotency(scope, key, fingerprint, kek_id, sealed, created_at) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[]) "
            "ON CONFLICT (scope, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, kek_id = EXCLUDED.kek_id, "
            "sealed = EXCLUDED.sealed, created_at = EXCLUDED.created_at "
            "WHERE idempotency.created_at < EXCLUDED.created_at - $7 RETURNING scope, key",
            [i.scope for i in rows], [i.key for i in rows], [i.fingerprint for i in rows],
            [i.kek_id for i in rows], [i.sealed for i in rows], [i.created_at for i in rows], TTL_NS,
        )
        if len(kept) < len(rows):
            stored = {(str(r[0]), str(r[1])) for r in kept}
            raise StaleReadError({f"idempotency:{i.scope}/{i.key}" for i in rows if (i.scope, i.key) not in stored})

    async def _find_conflict(self, pending: Sequence[PendingRecord]) -> ConcurrencyError | None:
        """The first record whose (stream, stream_version) is taken, in the batch or in the table."""
        seen: set[tuple[str, int]] = set()
        for record in pending:
            if record.stream_version is None:
                continue
            key = (record.stream, record.stream_version)
            taken = key in seen or await self.pool.fetchval(
                "SELECT 1 FROM events WHERE stream = $1 AND stream_version = $2", *key
            ) is not None
            if taken:
                return ConcurrencyError(record.stream, record.stream_version)
            seen.add(key)
        return None

    @staticmethod
    async def _insert_records(conn: Connection, pending: Sequence[PendingRecord],
                              read_set: ReadSet | None) -> list[StoredRecord]:
        if not pending:
            return []
        # Serialise appenders (not readers) until COMMIT: the heads read under the lock cannot move
        # meanwhile. One round trip: the lock, the head, what others changed, each org's head.
        orgs = list(dict.fromkeys(p.org for p in pending))
        locked = await conn.fetch(
            "SELECT head, changed, org, org_seq, hash, head_at FROM keyledger_lock_for_append($1, $2)",
            None if read_set is None else read_set.as_of, orgs,
        )
        seq = int(locked[0][0])
        head_at = locked[0][5]
        if head_at is not None and min(p.at for p in pending) < head_at:
            # Another process's clock ran ahead (or this batch waited for the lock): the ledger's
            # times never go backwards, so this batch is stamped again, no earlier than the head.
            raise StaleReadError(set(), not_before=int(head_at))
        if read_set is not None:
            changed = set(locked[0][1])
            if changed & read_set.streams:
                raise StaleReadError(changed & read_set.streams)
            read_set.changed_by_others = changed
        heads: dict[str, tuple[int, bytes]] = {
            str(row[2]): (0, GENESIS_HASH) if row[3] is None else (int(row[3]), bytes(row[4])) for row in locked
        }
        rows: list[tuple[object, ...]] = []
        stored: list[StoredRecord] = []
        for p in pending:
            org_seq, prev = heads[p.org]
            seq += 1
            org_seq += 1
            digest = chain_hash(p.org, org_seq, prev, p.body)
            heads[p.org] = (org_seq, digest)
            rows.append((seq, p.org, org_seq, p.stream, p.stream_version, p.type, p.at, p.body, p.sealed, prev,
                         digest))
            stored.append(StoredRecord(seq=seq, org=p.org, org_seq=org_seq, stream=p.stream,
                                       stream_version=p.stream_version, type=p.type, at=p.at, body=p.body,
                                       sealed=p.sealed, prev_hash=prev, hash=digest))
        await conn.executemany(_INSERT_EVENT, rows)
        return stored

    @staticmethod
    async def _project(conn: Connection, projectors: Sequence[Projector], batch: Sequence[tuple[StoredRecord, Event]],
                       fault: Callable[[str], None], *, notify: bool = False) -> None:
        """The projectors' rows, then every position (and the announcement) in one round trip: in an
        append the lock is held, and each round trip is time no other process can append."""
        for projector in projectors:
            for statement in projector.project(batch):
                if statement.rows:
                    await conn.executemany(statement.sql, statement.rows)
            fault(f"projection:{projector.name}")
        last = batch[-1][0].seq
        await conn.execute(
            "WITH moved AS (UPDATE projection_positions SET position = $1 WHERE name = ANY($2::text[]) RETURNING 1) "
            "SELECT CASE WHEN $3 THEN pg_notify($4, $1::text) END",
            last, [p.name for p in projectors], notify, NOTIFY_CHANNEL,
        )
        for projector in projectors:
            fault(f"position:{projector.name}")

    async def replace_data_keys(self, rows: Sequence[DataKeyRow]) -> None:
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.executemany("UPDATE data_keys SET kek_id = $1, wrapped = $2 WHERE id = $3",
                                       [(r.kek_id, r.wrapped, r.id) for r in rows])
        except (asyncpg.PostgresError, OSError) as exc:
            raise StoreUnavailableError(f"could not rewrap data keys: {exc}") from None

    async def put_checkpoint(self, checkpoint: Checkpoint) -> None:
        try:
            await self.pool.execute(
                "INSERT INTO checkpoints(org, org_seq, head, at, public_key, signature) VALUES ($1,$2,$3,$4,$5,$6) "
                "ON CONFLICT (org, org_seq) DO UPDATE SET head = EXCLUDED.head, at = EXCLUDED.at, "
                "public_key = EXCLUDED.public_key, signature = EXCLUDED.signature",
                checkpoint.org, checkpoint.org_seq, checkpoint.head, checkpoint.at, checkpoint.public_key,
                checkpoint.signature,
            )
        except (asyncpg.PostgresError, OSError) as exc:
            raise StoreUnavailableError(f"could not keep a checkpoint: {exc}") from None

    async def latest_checkpoint(self, org: str) -> Checkpoint | None:
        r = await self.pool.fetchrow(
            "SELECT org, org_seq, head, at, public_key, signature FROM checkpoints WHERE org = $1 "
            "ORDER BY org_seq DESC LIMIT 1", org,
        )
        if r is None:
            return None
        return Checkpoint(org=r[0], org_seq=r[1], head=bytes(r[2]), at=r[3], public_key=r[4], signature=r[5])

    # -- projections -----------------------------------------------------------------------

    async def projection_positions(self) -> dict[str, int]:
        rows = await self.pool.fetch("SELECT name, position FROM projection_positions")
        return {str(r[0]): int(r[1]) for r in rows}

    async def _catch_up(self, progress: Progress | None) -> None:
        """Fold records a projector has not seen yet (a new projector, or an interrupted rebuild)."""
        total = await self.max_seq()
        positions = await self.projection_positions()
        behind = [p for p in self.projectors if positions.get(p.name, 0) < total]
        if not behind:
            return
        position = min(positions.get(p.name, 0) for p in behind)
        while position < total:
            records = await self.read_after(position, _REBUILD_CHUNK)
            if not records:
                break
            batch = [(record, decode_event(record.body)) for record in records]
            async with self.pool.acquire() as conn, conn.transaction():
                for projector in behind:
                    seen = positions.get(projector.name, 0)
                    mine = [item for item in batch if item[0].seq > seen]
                    if mine:
                        await self._project(conn, [projector], mine, no_fault)
                        positions[projector.name] = mine[-1][0].seq
            position = records[-1].seq
            if progress is not None:
                progress(position, total)

    async def rebuild_projections(self, progress: Progress | None = None) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            for projector in self.projectors:
                for sql in projector.reset():
                    await conn.execute(sql)
                await conn.execute("UPDATE projection_positions SET position = 0 WHERE name = $1", projector.name)
        await self._catch_up(progress)

    # -- reading ---------------------------------------------------------------------------

    async def read_after(self, seq: int, limit: int = 1000) -> list[StoredRecord]:
        rows = await self.pool.fetch(f"SELECT {_COLUMNS} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2", seq, limit)
        return [_record(r) for r in rows]

    async def read_stream(self, stream: str) -> list[StoredRecord]:
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM events WHERE stream = $1 AND stream_version IS NOT NULL ORDER BY stream_version",
            stream,
        )
        return [_record(r) for r in rows]

    async def read_org(self, org: str, after_org_seq: int = 0, limit: int = 1000) -> list[StoredRecord]:
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM events WHERE org = $1 AND org_seq > $2 ORDER BY org_seq LIMIT $3",
            org, after_org_seq, limit,
        )
        return [_record(r) for r in rows]

    async def orgs(self) -> list[str]:
        found: list[str] = []
        while True:  # one index seek per org
            org = await self.pool.fetchval(
                "SELECT org FROM events WHERE org > $1 ORDER BY org LIMIT 1", found[-1] if found else ""
            )
            if org is None:
                return found
            found.append(str(org))

    async def max_seq(self) -> int:
        return int(await self.pool.fetchval("SELECT COALESCE(MAX(seq), 0) FROM events"))

    async def schema_version(self) -> int:
        return int(await self.pool.fetchval("SELECT value FROM meta WHERE key = 'schema_version'") or 0)

    async def changed_streams(self, after: int, upto: int | None = None) -> tuple[int, set[str]]:
        if upto is None and self._listener is not None and self._heard <= after:
            return after, set()  # no process announced anything newer
        head = await self.max_seq() if upto is None else upto
        if after >= head:
            return head, set()
        rows = await self.pool.fetch(
            "SELECT DISTINCT stream FROM events WHERE seq > $1 AND seq <= $2 AND stream_version IS NOT NULL",
            after, head,
        )
        return head, {str(r[0]) for r in rows}

    async def org_head(self, org: str) -> tuple[int, bytes]:
        row = await self.pool.fetchrow(
            "SELECT org_seq, hash FROM events WHERE org = $1 ORDER BY org_seq DESC LIMIT 1", org
        )
        return (0, GENESIS_HASH) if row is None else (int(row[0]), bytes(row[1]))

    async def get_data_key(self, data_key_id: str) -> DataKeyRow | None:
        row = await self.pool.fetchrow("SELECT id, kek_id, wrapped FROM data_keys WHERE id = $1", data_key_id)
        return None if row is None else DataKeyRow(id=row[0], kek_id=row[1], wrapped=row[2])

    async def get_idempotency(self, scope: str, key: str, not_before: int) -> IdempotencyRow | None:
        r = await self.pool.fetchrow(
            "SELECT scope, key, fingerprint, kek_id, sealed, created_at FROM idempotency "
            "WHERE scope = $1 AND key = $2 AND created_at >= $3", scope, key, not_before,
        )
        if r is None:
            return None
        return IdempotencyRow(scope=r[0], key=r[1], fingerprint=r[2], kek_id=r[3], sealed=r[4], created_at=r[5])

    async def data_keys_after(self, data_key_id: str, limit: int = 1000) -> list[DataKeyRow]:
        rows = await self.pool.fetch(
            "SELECT id, kek_id, wrapped FROM data_keys WHERE id > $1 ORDER BY id LIMIT $2", data_key_id, limit
        )
        return [DataKeyRow(id=r[0], kek_id=r[1], wrapped=r[2]) for r in rows]

    async def data_keys_by_kek(self) -> dict[str, int]:
        rows = await self.pool.fetch("SELECT kek_id, COUNT(*) FROM data_keys GROUP BY kek_id")
        return {str(r[0]): int(r[1]) for r in rows}

    # -- migration -------------------------------------------------------------------------

    async def import_records(self, records: Sequence[StoredRecord], events: Sequence[Event]) -> None:
        if len(records) != len(events):
            raise ValueError("records and events must pair up")
        if not records:
            return
        rows = [(r.seq, r.org, r.org_seq, r.stream, r.stream_version, r.type, r.at, r.body, r.sealed, r.prev_hash,
                 r.hash) for r in records]
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                # As in append: no other appender moves the heads read below until COMMIT.
                await conn.execute("LOCK TABLE events IN EXCLUSIVE MODE")
                seq = int(await conn.fetchval("SELECT COALESCE(MAX(seq), 0) FROM events"))
                heads: dict[str, tuple[int, bytes]] = {}
                for org in dict.fromkeys(r.org for r in records):
                    row = await conn.fetchrow(
                        "SELECT org_seq, hash FROM events WHERE org = $1 ORDER BY org_seq DESC LIMIT 1", org
                    )
                    heads[org] = (0, GENESIS_HASH) if row is None else (int(row[0]), bytes(row[1]))
                check_continuation(seq, heads, records)
                await conn.executemany(_INSERT_EVENT, rows)
                await self._project(conn, self.projectors, list(zip(records, events, strict=True)), no_fault,
                                    notify=True)
        except asyncpg.UniqueViolationError as exc:
            raise IntegrityError(f"import refused by the database: {exc}") from None
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailableError(f"the ledger could not commit: {type(exc).__name__}: {exc}") from None

    async def import_data_keys(self, rows: Sequence[DataKeyRow]) -> None:
        if not rows:
            return
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.executemany(
                    "INSERT INTO data_keys(id, kek_id, wrapped) VALUES ($1,$2,$3) ON CONFLICT (id) DO NOTHING",
                    [(r.id, r.kek_id, r.wrapped) for r in rows],
                )
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailableError(f"could not import data keys: {exc}") from None
