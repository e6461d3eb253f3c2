"""The recorder interface every storage backend implements, and the projector hook it calls.

Contract (tested once in tests/contracts/recorder.py, subclassed per backend):

1. `append` is atomic: all of a batch's records, its data keys and its projection rows commit
   together, or nothing does (and the error is `ConcurrencyError` or `StoreUnavailableError`).
2. `seq` is global and gapless from 1, in commit order; `org_seq` is gapless per org from 1.
3. Each record's `prev_hash` is the hash of its org's previous record (32 zero bytes first).
4. A (stream, stream_version) pair is taken at most once; records without a stream version
   (reveals) never conflict.
5. A projector's rows and its position are written in the same transaction as the records.
6. Nothing is returned before COMMIT has returned.
7. An append given a `ReadSet` commits only if no stream in it changed after `read_set.as_of`
   (checked under the append's lock); otherwise it raises `StaleReadError` and commits nothing.
   On success it reports in `read_set.changed_by_others` what other writers changed meanwhile.
8. Times never go backwards: a batch with a record stamped earlier than the last record is refused
   with `StaleReadError(not_before=that time)` (a writer of another process may be ahead).
   This is what keeps several processes' writers honest: each decides against its own cache,
   and the store refuses a batch decided on state another process has since changed.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from ledger.checkpoint import Checkpoint
from ledger.errors import SchemaVersionError
from ledger.events import Event
from ledger.records import DataKeyRow, IdempotencyRow, PendingRecord, StoredRecord


class ReadSet:
    """The streams a batch was decided on, as they stood at seq `as_of`; after a successful append,
    `changed_by_others` holds the streams other writers changed between `as_of` and the batch (none
    of them in `streams`), so that the writer can forget them without asking again."""

    __slots__ = ("as_of", "changed_by_others", "streams")

    def __init__(self, as_of: int, streams: frozenset[str]) -> None:
        self.as_of = as_of
        self.streams = streams
        self.changed_by_others: set[str] = set()


class Statement(NamedTuple):
    """One parameterised statement run with executemany over `rows`."""

    sql: str
    rows: list[tuple[object, ...]]


class Projector(Protocol):
    """A read model updated inside the append transaction (defined by projections/, run by the store)."""

    name: str

    def schema(self) -> list[str]:
        """DDL creating the projection's tables if missing."""
        ...

    def reset(self) -> list[str]:
        """Statements emptying the projection's tables before a rebuild."""
        ...

    def drop(self) -> list[str]:
        """Statements removing the projection's tables, when its schema changed (then it is rebuilt)."""
        ...

    def project(self, batch: Sequence[tuple[StoredRecord, Event]]) -> list[Statement]:
        """Statements applying a batch of committed-to-be records, in order."""
        ...


Progress = Callable[[int, int], None]


def schema_fingerprint(projector: Projector) -> str:
    """Names the shape of a projector's tables. A store that finds another fingerprint recorded for
    a projector (or none, for a database from before fingerprints) drops its tables, creates them
    anew and rebuilds them from the events: projections are derived data, the ledger is the truth."""
    return hashlib.sha256("\n".join(projector.schema()).encode()).hexdigest()[:16]


def pending_migrations(migrations: dict[int, list[str]], current: int, where: str) -> list[int]:
    """The schema versions still to apply to a database at `current` (0: a new one), in order.

    Each backend keeps its DDL by version (`MIGRATIONS` in its store module); a store opens by
    applying the pending ones in one transaction and recording the last. A database newer than the
    program is refused rather than used: its data may mean what this code cannot know."""
    latest = max(migrations)
    if current > latest:
        raise SchemaVersionError(
            f"{where}: schema version {current} is newer than this keyledger's ({latest}); "
            "upgrade keyledger before opening it"
        )
    return [version for version in sorted(migrations) if version > current]

# The steps of an append's transaction, in order, as a recorder's `inject_fault` test hook sees them
# (projection steps are `projection:<name>` then `position:<name>` for each projector, between
# "idempotency" and "commit").
APPEND_STEPS = ("begin", "events", "data_keys", "drop_data_keys", "idempotency", "commit")


def no_fault(step: str) -> None:
    """The fault hook of a recorder that is not under test."""
    return None


class Recorder(abc.ABC):
    """Durable, append-only storage of records, data keys and projection positions."""

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
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
        """Append records (with their decoded events, for the projectors) in one transaction,
        with the batch's new data keys, dropped data keys and idempotency records."""

    @abc.abstractmethod
    async def changed_streams(self, after: int, upto: int | None = None) -> tuple[int, set[str]]:
        """(the head seq, the streams whose state changed in (after, upto or head]).

        State changes are records with a stream version; reveals change nothing."""

    @abc.abstractmethod
    async def read_after(self, seq: int, limit: int = 1000) -> list[StoredRecord]:
        """Records with seq > `seq`, in order."""

    @abc.abstractmethod
    async def read_stream(self, stream: str) -> list[StoredRecord]:
        """The state-changing records of one stream (those with a stream version), in order."""

    @abc.abstractmethod
    async def read_org(self, org: str, after_org_seq: int = 0, limit: int = 1000) -> list[StoredRecord]:
        """One org's records with org_seq > `after_org_seq`, in order."""

    @abc.abstractmethod
    async def orgs(self) -> list[str]:
        """Every org that has at least one record, in order."""

    @abc.abstractmethod
    async def max_seq(self) -> int: ...

    @abc.abstractmethod
    async def schema_version(self) -> int:
        """The version of the ledger schema the database is at (see `pending_migrations`)."""

    @abc.abstractmethod
    async def org_head(self, org: str) -> tuple[int, bytes]:
        """(org_seq, hash) of the org's last record, or (0, 32 zero bytes)."""

    @abc.abstractmethod
    async def get_data_key(self, data_key_id: str) -> DataKeyRow | None: ...

    @abc.abstractmethod
    async def data_keys_after(self, data_key_id: str, limit: int = 1000) -> list[DataKeyRow]:
        """Wrapped data keys with id > `data_key_id`, by id (for rewrapping in chunks)."""

    @abc.abstractmethod
    async def data_keys_by_kek(self) -> dict[str, int]:
        """How many data keys each master key id wraps (one query: checked at every start)."""

    @abc.abstractmethod
    async def replace_data_keys(self, rows: Sequence[DataKeyRow]) -> None:
        """Overwrite wrapped data keys in place (rewrap); the caller records the event."""

    @abc.abstractmethod
    async def get_idempotency(self, scope: str, key: str, not_before: int) -> IdempotencyRow | None:
        """The idempotency record of (scope, key) made at or after `not_before`, if any."""

    @abc.abstractmethod
    async def put_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Keep a signed checkpoint (checkpoints are signed statements about the ledger, not events)."""

    @abc.abstractmethod
    async def latest_checkpoint(self, org: str) -> Checkpoint | None: ...

    @abc.abstractmethod
    async def projection_positions(self) -> dict[str, int]: ...

    @abc.abstractmethod
    async def rebuild_projections(self, progress: Progress | None = None) -> None:
        """Empty every projection and fold all records into it again from the first."""

    @abc.abstractmethod
    async def import_records(self, records: Sequence[StoredRecord], events: Sequence[Event]) -> None:
        """Append already-hashed records exactly as given (seq, org_seq, prev_hash, hash, body, sealed),
        with their decoded events for the projectors, in one transaction (a migration's copy).

        Raises `IntegrityError` and commits nothing unless they continue this log: the first seq is
        max_seq + 1 and seqs are gapless, each record's org_seq and prev_hash follow its org's head,
        and each hash is `chain_hash` of its stored bytes (`records.check_continuation`)."""

    @abc.abstractmethod
    async def import_data_keys(self, rows: Sequence[DataKeyRow]) -> None:
        """Insert wrapped data keys as given (a migration's copy), skipping ids already present."""
