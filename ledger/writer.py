"""Group commit: one writer task decides queued commands in order and commits each batch once.

Concurrent commands wait in a queue. The writer takes everything queued (up to a cap), decides each
command against the current state plus the effects of the commands before it in the batch, appends
the batch (records, data keys, projection rows) in one transaction, and only after COMMIT answers
every caller. A command that fails its rules fails alone; if the commit itself fails, no command of
the batch committed and each caller gets the error. Batch size follows load: no timer is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from ledger.checkpoint import sign_checkpoint
from ledger.codec import decode_event, encode_event
from ledger.crypto import Keyring, SigningKey, ValueOpener
from ledger.errors import ConcurrencyError, LedgerError, StaleReadError, StoreUnavailableError
from ledger.events import Event, event_type
from ledger.model import (
    AppState,
    KeyState,
    MembersState,
    OrgState,
    SecretState,
    SessionState,
    SshKeysState,
    SsoState,
    app_stream,
    evolve_app,
    evolve_key,
    evolve_members,
    evolve_org,
    evolve_secret,
    evolve_session,
    evolve_ssh_keys,
    evolve_sso,
    key_stream,
    members_stream,
    org_stream,
    secret_stream,
    session_stream,
    ssh_keys_stream,
    sso_stream,
)
from ledger.recorder import ReadSet, Recorder
from ledger.records import DataKeyRow, IdempotencyRow, PendingRecord, StoredRecord

T = TypeVar("T")
log = logging.getLogger("keyledger.writer")
MAX_BATCH = 512
MAX_OPENERS = 10_000
MAX_STALE_RETRIES = 8  # decisions made again after another process changed what they read


class Decision(msgspec.Struct, Generic[T], kw_only=True):
    """What a command decided: events to append, and what to answer once they are committed."""

    events: list[Event]
    sealed: list[str | None] | None = None  # sealed value per event (value events only)
    data_keys: list[DataKeyRow] = msgspec.field(default_factory=list)
    drop_data_keys: list[str] = msgspec.field(default_factory=list)
    idempotency: list[IdempotencyRow] = msgspec.field(default_factory=list)
    result: T | None = None
    error: LedgerError | None = None  # raised to the caller after the events commit (a denied reveal)


class Command(Protocol[T]):
    async def decide(self, view: WriteView) -> Decision[T]: ...


class WriteView:
    """The state commands are decided against: committed caches plus the current batch's overlay."""

    def __init__(self, recorder: Recorder, keyring: Keyring, at: int) -> None:
        self.recorder = recorder
        self.keyring = keyring
        self.at = at
        self.orgs: dict[str, OrgState | None] = {}
        self.keys: dict[str, KeyState | None] = {}
        self.secrets: dict[str, SecretState | None] = {}
        self.ssh_keys: dict[str, SshKeysState | None] = {}
        self.sessions: dict[str, SessionState | None] = {}
        self.members: dict[str, MembersState | None] = {}
        self.sso: dict[str, SsoState | None] = {}
        self.apps: dict[str, AppState | None] = {}
        self.data_keys: dict[str, DataKeyRow | None] = {}
        self.idempotency: dict[tuple[str, str], IdempotencyRow] = {}
        # Events with a sealed value decided earlier in this batch, per stream: not in the store yet, but
        # a later command of the batch (a purge, a rollback) must see them as the store will.
        self.batch_values: dict[str, list[tuple[Event, str]]] = {}
        self._committed: WriteCache | None = None

    async def org(self, org: str) -> OrgState | None:
        stream = org_stream(org)
        if stream not in self.orgs:
            self.orgs[stream] = await self._committed_state(stream, "orgs")  # type: ignore[assignment]
        return self.orgs[stream]

    async def key(self, key_id: str) -> KeyState | None:
        stream = key_stream(key_id)
        if stream not in self.keys:
            self.keys[stream] = await self._committed_state(stream, "keys")  # type: ignore[assignment]
        return self.keys[stream]

    async def secret(self, org: str, name: str) -> SecretState | None:
        stream = secret_stream(org, name)
        if stream not in self.secrets:
            self.secrets[stream] = await self._committed_state(stream, "secrets")  # type: ignore[assignment]
        return self.secrets[stream]

    async def org_ssh_keys(self, org: str) -> SshKeysState | None:
        """The org's SSH keys (None: it never had one)."""
        stream = ssh_keys_stream(org)
        if stream not in self.ssh_keys:
            self.ssh_keys[stream] = await self._committed_state(stream, "ssh_keys")  # type: ignore[assignment]
        return self.ssh_keys[stream]

    async def session(self, session_id: str) -> SessionState | None:
        stream = session_stream(session_id)
        if stream not in self.sessions:
            self.sessions[stream] = await self._committed_state(stream, "sessions")  # type: ignore[assignment]
        return self.sessions[stream]

    async def org_members(self, org: str) -> MembersState | None:
        """Every person who joined the org (None: nobody yet)."""
        stream = members_stream(org)
        if stream not in self.members:
            self.members[stream] = await self._committed_state(stream, "members")  # type: ignore[assignment]
        return self.members[stream]

    async def org_sso(self, org: str) -> SsoState | None:
        stream = sso_stream(org)
        if stream not in self.sso:
            self.sso[stream] = await self._committed_state(stream, "sso")  # type: ignore[assignment]
        return self.sso[stream]

    async def app(self, org: str, name: str) -> AppState | None:
        stream = app_stream(org, name)
        if stream not in self.apps:
            self.apps[stream] = await self._committed_state(stream, "apps")  # type: ignore[assignment]
        return self.apps[stream]

    async def data_key(self, data_key_id: str) -> DataKeyRow | None:
        if data_key_id not in self.data_keys:
            assert self._committed is not None
            self.data_keys[data_key_id] = await self._committed.data_key(data_key_id)
        return self.data_keys[data_key_id]

    def opener(self, row: DataKeyRow) -> ValueOpener:
        """The data key of `row`, unwrapped once and kept while it is in use."""
        assert self._committed is not None
        return self._committed.opener(row, self.keyring)

    async def _committed_state(self, stream: str, kind: str) -> object:
        assert self._committed is not None
        return await self._committed.state(stream, kind)

    def apply(self, decision: Decision[Any]) -> None:
        """Fold a decision's events into the overlay so later commands in the batch see them."""
        sealed = decision.sealed or [None] * len(decision.events)
        for event, value in zip(decision.events, sealed, strict=True):
            stream = event.stream
            if value is not None:
                self.batch_values.setdefault(stream, []).append((event, value))
            if event.stream_version is None and not (stream.startswith("secret:") and stream in self.secrets):
                continue  # reveals of pool members steer the selection: fold them into a loaded secret
            if stream.startswith("org:"):
                self.orgs[stream] = evolve_org(self.orgs.get(stream), event)
            elif stream.startswith("key:"):
                self.keys[stream] = evolve_key(self.keys.get(stream), event)
            elif stream.startswith("secret:"):
                self.secrets[stream] = evolve_secret(self.secrets.get(stream), event, value)
            elif stream.startswith("ssh_keys:"):
                self.ssh_keys[stream] = evolve_ssh_keys(self.ssh_keys.get(stream), event)
            elif stream.startswith("session:"):
                self.sessions[stream] = evolve_session(self.sessions.get(stream), event)
            elif stream.startswith("members:"):
                self.members[stream] = evolve_members(self.members.get(stream), event)
            elif stream.startswith("sso:"):
                self.sso[stream] = evolve_sso(self.sso.get(stream), event)
            elif stream.startswith("app:"):
                self.apps[stream] = evolve_app(self.apps.get(stream), event, value)
        for row in decision.data_keys:
            self.data_keys[row.id] = row
        for data_key_id in decision.drop_data_keys:
            self.data_keys[data_key_id] = None
        for record in decision.idempotency:
            self.idempotency[(record.scope, record.key)] = record


class WriteCache:
    """Committed write-side state, loaded per stream on first use and updated after each commit."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.streams: dict[str, object] = {}
        self.wrapped: dict[str, DataKeyRow | None] = {}
        self.openers: dict[str, tuple[DataKeyRow, ValueOpener]] = {}

    def opener(self, row: DataKeyRow, keyring: Keyring) -> ValueOpener:
        cached = self.openers.get(row.id)
        if cached is not None and cached[0] == row:
            return cached[1]
        opener = keyring.opener(row.id, row.kek_id, row.wrapped)
        if len(self.openers) >= MAX_OPENERS:
            self.openers.pop(next(iter(self.openers)))
        self.openers[row.id] = (row, opener)
        return opener

    async def state(self, stream: str, kind: str) -> object:
        if stream not in self.streams:
            state: object = None
            for record in await self.recorder.read_stream(stream):
                event = decode_event(record.body)
                if kind == "orgs":
                    state = evolve_org(state, event)  # type: ignore[arg-type]
                elif kind == "keys":
                    state = evolve_key(state, event)  # type: ignore[arg-type]
                elif kind == "ssh_keys":
                    state = evolve_ssh_keys(state, event)  # type: ignore[arg-type]
                elif kind == "sessions":
                    state = evolve_session(state, event)  # type: ignore[arg-type]
                elif kind == "members":
                    state = evolve_members(state, event)  # type: ignore[arg-type]
                elif kind == "sso":
                    state = evolve_sso(state, event)  # type: ignore[arg-type]
                elif kind == "apps":
                    state = evolve_app(state, event, record.sealed)  # type: ignore[arg-type]
                else:
                    state = evolve_secret(state, event, record.sealed)  # type: ignore[arg-type]
            self.streams[stream] = state
        return self.streams[stream]

    async def data_key(self, data_key_id: str) -> DataKeyRow | None:
        if data_key_id not in self.wrapped:
            self.wrapped[data_key_id] = await self.recorder.get_data_key(data_key_id)
        return self.wrapped[data_key_id]

    def merge(self, view: WriteView) -> None:
        for table in (view.orgs, view.keys, view.secrets, view.ssh_keys, view.sessions, view.members, view.sso,
                      view.apps):
            self.streams.update(table)
        self.wrapped.update(view.data_keys)
        for data_key_id, row in view.data_keys.items():
            if row is None:
                self.openers.pop(data_key_id, None)  # destroyed: forget the key at once

    def forget_streams(self, streams: set[str]) -> None:
        """After another process changed these streams."""
        for stream in streams:
            self.streams.pop(stream, None)

    def forget_data_keys(self) -> None:
        """After data keys were rewrapped or removed outside the writer."""
        self.wrapped.clear()
        self.openers.clear()

    def clear(self) -> None:
        self.streams.clear()
        self.forget_data_keys()


class _Job:
    __slots__ = ("command", "future")

    def __init__(self, command: Command[Any], future: asyncio.Future[Any]) -> None:
        self.command = command
        self.future = future


class Writer:
    """The single writer task. `submit` returns the command's result after its events commit."""

    def __init__(self, recorder: Recorder, keyring: Keyring, clock: Callable[[], int] = time.time_ns) -> None:
        self.recorder = recorder
        self.keyring = keyring
        self.clock = clock
        self.cache = WriteCache(recorder)
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._last_at = 0
        self.batches = 0
        self.committed_commands = 0
        self.before_commit: Callable[[], Awaitable[None]] | None = None  # test hook
        self.signing_key: SigningKey | None = None
        # Called on the event loop after every append attempt, before any caller is answered, with
        # the batch's events (committed, or maybe not when the append failed): readers' caches
        # forget what those events touch, so no one reads a stale answer after a write returns.
        self.commit_listeners: list[Callable[[Sequence[Event]], None]] = []
        self.checkpoint_every = 1000  # events per org between automatic checkpoints
        # The cache holds every state change up to this seq. Other processes sharing the store move
        # the head past it: before each batch the writer forgets the streams they changed, and the
        # store refuses a batch whose read streams changed after it anyway (a ReadSet).
        self.known_seq = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="keyledger-writer")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(StoreUnavailableError("the ledger is shutting down"))

    async def submit(self, command: Command[T]) -> T:
        if self._task is None:
            raise StoreUnavailableError("the ledger is not running")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(command, future))
        return await future

    def _now(self) -> int:
        # Times never go backwards in the ledger, even if the wall clock does.
        self._last_at = max(self.clock(), self._last_at)
        return self._last_at

    async def _run(self) -> None:
        self.known_seq = await self.recorder.max_seq()  # the cache starts empty: current at any seq
        while True:
            jobs = [await self._queue.get()]
            while len(jobs) < MAX_BATCH and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            try:
                await self._commit_fresh(jobs)
            except ConcurrencyError:
                # Another writer took a stream version (cannot happen with one writer per store):
                # forget cached state and decide each command again, alone.
                self.cache.clear()
                for job in jobs:
                    if not job.future.done():
                        try:
                            await self._commit_fresh([job])
                        except LedgerError as exc:
                            _fail(job, exc)
            except LedgerError as exc:
                for job in jobs:
                    _fail(job, exc)
            except asyncio.CancelledError:
                for job in jobs:
                    _fail(job, StoreUnavailableError("the ledger is shutting down"))
                raise
            except Exception as exc:  # a bug must not kill the writer or leave callers waiting
                self.cache.clear()
                for job in jobs:
                    _fail(job, StoreUnavailableError(f"internal error while committing: {type(exc).__name__}"))

    async def _commit_fresh(self, jobs: list[_Job]) -> None:
        """Commit a batch decided on current state, deciding again while another process races it."""
        for _ in range(MAX_STALE_RETRIES):
            try:
                await self._commit_batch(jobs)
                return
            except StaleReadError as exc:
                self.cache.forget_streams(exc.streams)
                self._last_at = max(self._last_at, exc.not_before)
                await self._catch_up(await self.recorder.max_seq())
        raise StoreUnavailableError("the ledger is too busy: other writers kept changing the same secrets")

    async def _catch_up(self, upto: int | None = None) -> None:
        """Forget what other processes changed since `known_seq` (a no-op for a store of its own)."""
        head, changed = await self.recorder.changed_streams(self.known_seq, upto)
        if changed:
            self.cache.forget_streams(changed)
        self.known_seq = max(self.known_seq, head)

    async def _commit_batch(self, jobs: list[_Job]) -> None:
        await self._catch_up()
        view = WriteView(self.recorder, self.keyring, self._now())
        view._committed = self.cache
        decided: list[tuple[_Job, Decision[Any]]] = []
        for job in jobs:
            if job.future.done():  # the caller went away (cancelled): do nothing on its behalf
                continue
            try:
                decision = await job.command.decide(view)
            except LedgerError as exc:
                _fail(job, exc)
                continue
            view.apply(decision)
            decided.append((job, decision))
        if not decided:
            return
        events: list[Event] = []
        pending: list[PendingRecord] = []
        data_keys: list[DataKeyRow] = []
        drop_data_keys: list[str] = []
        idempotency: list[IdempotencyRow] = []
        for _, decision in decided:
            sealed = decision.sealed or [None] * len(decision.events)
            for event, value in zip(decision.events, sealed, strict=True):
                events.append(event)
                pending.append(
                    PendingRecord(
                        org=event.org, stream=event.stream, stream_version=event.stream_version,
                        type=event_type(event), at=event.at, body=encode_event(event), sealed=value,
                    )
                )
            data_keys.extend(decision.data_keys)
            drop_data_keys.extend(decision.drop_data_keys)
            idempotency.extend(decision.idempotency)
        if not (pending or data_keys or drop_data_keys or idempotency):
            self._answer(decided)  # nothing to write: replays of idempotent requests
            return
        if self.before_commit is not None:
            await self.before_commit()
        try:
            read_set = ReadSet(self.known_seq, frozenset((*view.orgs, *view.keys, *view.secrets, *view.ssh_keys,
                                                          *view.sessions, *view.members, *view.sso, *view.apps)))
            stored = await self.recorder.append(
                pending, events, data_keys=data_keys, drop_data_keys=drop_data_keys, idempotency=idempotency,
                read_set=read_set,
            )
        finally:
            # On failure nothing committed (the batch's overlay is discarded; cached org heads stay
            # valid), but readers forget these streams anyway: that costs one query each.
            for listener in self.commit_listeners:
                listener(events)
        self.cache.merge(view)
        self.batches += 1
        self.committed_commands += len(decided)
        self._answer(decided)
        if stored:
            # Others may have appended just before this batch: none changed what it read (the store
            # checked), but the store says what else they changed.
            self.cache.forget_streams(read_set.changed_by_others)
            self.known_seq = stored[-1].seq
        await self._checkpoint_if_due(stored)

    async def _checkpoint_if_due(self, stored: list[StoredRecord]) -> None:
        """Sign each org's head every `checkpoint_every` events (after the callers were answered)."""
        if self.signing_key is None or self.checkpoint_every <= 0:
            return
        first: dict[str, int] = {}
        last: dict[str, StoredRecord] = {}
        for record in stored:
            first.setdefault(record.org, record.org_seq)
            last[record.org] = record
        every = self.checkpoint_every
        for org, record in last.items():
            if record.org_seq // every > (first[org] - 1) // every:
                checkpoint = sign_checkpoint(self.signing_key, org, record.org_seq, record.hash, record.at)
                try:
                    await self.recorder.put_checkpoint(checkpoint)
                except LedgerError as exc:  # the ledger is intact; the next checkpoint will cover it
                    log.warning("could not keep a checkpoint of org %s: %s", org, exc)

    @staticmethod
    def _answer(decided: list[tuple[_Job, Decision[Any]]]) -> None:
        for job, decision in decided:
            if job.future.done():
                continue
            if decision.error is not None:
                job.future.set_exception(decision.error)
            else:
                job.future.set_result(decision.result)


def _fail(job: _Job, exc: LedgerError) -> None:
    if not job.future.done():
        job.future.set_exception(exc)
