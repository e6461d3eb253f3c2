"""Generated histories for the audit tests: a real ledger on a real SQLite file, a controllable clock, and
a model of the secrets' metadata kept from the commands alone (never from the events), snapshotted after
every command so that any point of the history can be checked.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import strategies as st

from ledger.codec import decode_event
from ledger.commands import Context, CreatedKey
from ledger.crypto import Keyring, MasterKey
from ledger.errors import (
    AlreadyExistsError,
    LedgerError,
    NotFoundError,
    PermissionDeniedError,
    RevealDeniedError,
    UnauthenticatedError,
)
from ledger.events import Actor, Event, Source
from ledger.model import DAY_NS, DEFAULT_RECOVERY_WINDOW_DAYS, secret_stream
from ledger.records import StoredRecord
from ledger.service import Ledger
from ledger.sqlite_store import SqliteRecorder, iter_records
from projections.sqlite_tables import all_projectors
from projections.views import SecretMeta
from tests.conftest import ADMIN

SECOND = 1_000_000_000
DAY = 86_400 * SECOND
START = 1_780_000_000 * SECOND  # 2026-05-28, on a whole second
ORGS = ("acme", "globex")
NAMES = ("db", "OPENAI API KEY", "ключ")
SCOPES = ("all", "agents", "tools", "sandboxes")
CATEGORIES = ("provider", "tool", "custom")
REASONS = ("", "deploy", "incident 42", "=HYPERLINK(1)")
WAITS = (1, SECOND, 3_600 * SECOND, DAY - 1, DAY, DAY + 1, 3 * DAY, 10 * DAY, 40 * DAY)


class Clock:
    """Nanoseconds; each reading moves on by `step` (0 freezes it), `advance` jumps."""

    def __init__(self, start: int = START, step: int = 1_000) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> int:
        now = self.now
        self.now += self.step
        return now

    def advance(self, ns: int) -> None:
        self.now += ns


index = st.integers(min_value=0, max_value=12)  # a key of the org, as an index into its keys made so far
org = st.sampled_from(ORGS)
name = st.sampled_from(NAMES)
upsert = st.tuples(st.just("upsert"), org, index, name, st.sampled_from((None, *SCOPES, "agents", "tools")),
                   st.none() | st.sampled_from(CATEGORIES), st.none() | st.sampled_from(("", "v2", "rotated")))
# Reveals and deletes name a secret by an index into the org's live secrets (a missing one when none is live),
# so that most of them meet a secret.
reveal = st.tuples(st.just("reveal"), org, index, index, st.sampled_from(REASONS))
simple_ops = st.one_of(
    upsert, upsert, reveal, reveal, reveal,
    st.tuples(st.just("delete"), org, index, index),
    st.tuples(st.just("key"), org, st.sampled_from(("admin", "member")), st.sampled_from(SCOPES)),
    st.tuples(st.just("revoke"), org, index),
    st.tuples(st.just("revoke"), org, index),
)
waits = st.tuples(st.just("wait"), st.sampled_from(WAITS))
# The lifecycle: a rollback to an earlier version (by index), a restore of a deleted name, a purge
# (admin keys only). They never run inside a batch, where their order against a delete would matter.
lifecycle_ops = st.one_of(
    st.tuples(st.just("rollback"), org, index, index, index),
    st.tuples(st.just("restore"), org, index, index),
    st.tuples(st.just("purge"), org, index, index),
)
# a key reveals, and is revoked right after (one command each)
reveal_then_revoke = st.builds(lambda op: [op, ("revoke", op[1], op[2])], reveal)


def histories(*, batches: bool, lifecycle: bool = False, min_size: int = 10,
              max_size: int = 40) -> st.SearchStrategy[list[Any]]:
    """Lists of operations; with `batches`, some run together as one group-commit batch (one time);
    with `lifecycle`, rollbacks, restores and purges too."""
    ops = st.one_of(simple_ops, waits, waits, reveal_then_revoke)
    if lifecycle:
        ops = st.one_of(ops, lifecycle_ops)
    if batches:
        ops = st.one_of(ops, st.tuples(st.just("together"), st.lists(simple_ops, min_size=2, max_size=6)))
    return st.lists(ops, min_size=min_size, max_size=max_size)


def covers(key_scope: str, secret_scope: str) -> bool:
    """DESIGN.md: a key of scope `all` reveals everything; a key of scope X reveals `all` and X."""
    return key_scope == "all" or secret_scope in ("all", key_scope)


@dataclass
class Snapshot:
    seq: int  # the ledger's head after the command
    at: int  # the time of the head event
    secrets: dict[str, dict[str, SecretMeta]]  # org -> name -> metadata (deleted ones flagged)


@dataclass
class Run:
    """Runs operations against a real ledger and keeps the model of what the metadata must be."""

    ledger: Ledger
    clock: Clock
    keys: list[CreatedKey] = field(default_factory=list)
    revoked: set[str] = field(default_factory=set)
    admins: dict[str, CreatedKey] = field(default_factory=dict)
    model: dict[str, dict[str, SecretMeta]] = field(default_factory=lambda: {org: {} for org in ORGS})
    versions: dict[tuple[str, str], int] = field(default_factory=dict)
    # (org, name) -> every version up to this one has had its data key destroyed (a purge)
    destroyed: dict[tuple[str, str], int] = field(default_factory=dict)
    snapshots: list[Snapshot] = field(default_factory=lambda: [Snapshot(0, 0, {org: {} for org in ORGS})])
    request_ids: int = 0

    # -- setup -------------------------------------------------------------------------------

    async def setup(self) -> None:
        for org in ORGS:
            admin = await self.ledger.create_org(ADMIN, org)
            self.admins[org] = admin
            self.keys.append(admin)
        for org in ORGS:  # a few narrower keys from the start, so that reveals get denied early
            for scope in ("agents", "tools"):
                self.keys.append(await self.ledger.create_api_key(self.ctx(self.admins[org]), org,
                                                                  f"{org} {scope} bot", "member", scope))
        await self.snapshot()

    def ctx(self, key: CreatedKey) -> Context:
        self.request_ids += 1
        return Context(actor=Actor(key_id=key.key_id, label=key.label, kind="api_key"),
                       source=Source(address="10.0.0.7", user_agent="audit-tests/1"),
                       request_id=f"req-{self.request_ids}")

    def key(self, org: str, index: int) -> CreatedKey:
        mine = [key for key in self.keys if key.org == org]
        return mine[index % len(mine)]

    # -- the model: what each operation must do --------------------------------------------------

    def predict(self, op: tuple[Any, ...], ticket: int) -> tuple[type[LedgerError] | None, int | None]:
        """Apply `op` to the model: the error it must raise (or None), and the version an upsert must give.

        The writer stamps an upsert's time only when it decides it, so the model first records the
        negative `ticket` as its time, replaced by `settle` once the answer (and its time) is known.
        """
        kind = op[0]
        if kind == "key":
            return (UnauthenticatedError if self.admins[op[1]].key_id in self.revoked else None), None
        if kind == "revoke":
            target = self.key(op[1], op[2])
            if target.key_id in self.revoked:
                return NotFoundError, None
            self.revoked.add(target.key_id)
            return None, None
        key = self.key(op[1], op[2])
        if key.key_id in self.revoked:
            return UnauthenticatedError, None
        secrets = self.model[key.org]
        name = op[3]
        current = secrets.get(name)
        live = current is not None and not current.deleted
        if kind == "reveal":
            if not live:
                return NotFoundError, None
            assert current is not None
            return (None if covers(key.scope, current.scope) else RevealDeniedError), None
        if kind == "delete":
            if not live:
                return NotFoundError, None
            assert current is not None
            # The delete's time is known once it commits (`settle`); the window is the default one.
            secrets[name] = _replace(current, deleted=True, deleted_at=ticket, destroy_at=ticket)
            return None, None
        if kind in ("rollback", "restore", "purge"):
            return self.predict_lifecycle(op, key, ticket)
        *_, scope, category, description = op
        version = self.versions.get((key.org, name), 0) + 1
        self.versions[(key.org, name)] = version
        if current is None or current.deleted:
            secrets[name] = SecretMeta(
                org=key.org, name=name, scope=scope or "all", category=category or "custom",
                description=description or "", version=version, created_at=ticket, updated_at=ticket,
                created_by=key.key_id, updated_by=key.key_id,
            )
        else:
            assert current is not None
            secrets[name] = SecretMeta(
                org=key.org, name=name, scope=scope or current.scope, category=category or current.category,
                description=current.description if description is None else description, version=version,
                created_at=current.created_at, updated_at=ticket, created_by=current.created_by,
                updated_by=key.key_id,
            )
        return None, version

    def predict_lifecycle(self, op: tuple[Any, ...], key: CreatedKey,
                          ticket: int) -> tuple[type[LedgerError] | None, int | None]:
        kind, name = op[0], op[3]
        secrets = self.model[key.org]
        current = secrets.get(name)
        live = current is not None and not current.deleted
        last = self.versions.get((key.org, name), 0)
        gone = self.destroyed.get((key.org, name), 0)
        if kind == "purge":
            if key.role != "admin":
                return PermissionDeniedError, None
            if current is None or gone == last:
                return NotFoundError, None
            self.destroyed[(key.org, name)] = last
            # A live secret is deleted and destroyed at once; a deleted one keeps its delete time.
            secrets[name] = _replace(current, deleted=True, destroy_at=None,
                                     deleted_at=ticket if live else current.deleted_at)
            return None, None
        if kind == "rollback":
            if not live:
                return NotFoundError, None
            assert current is not None
            source = op[4] % last + 1
            if source <= gone:
                return NotFoundError, None
        else:  # restore
            if live:
                return AlreadyExistsError, None
            if current is None or gone == last or self.window_ended(op):
                return NotFoundError, None
        assert current is not None
        self.versions[(key.org, name)] = last + 1
        secrets[name] = _replace(current, deleted=False, deleted_at=None, destroy_at=None, version=last + 1,
                                 updated_at=ticket, updated_by=key.key_id)
        return None, last + 1

    def restore_is_ambiguous(self, op: tuple[Any, ...]) -> bool:
        """A restore decided within a moment of its window's end could go either way: not drawn."""
        meta = self.model[self.key(op[1], op[2]).org].get(op[3])
        return (meta is not None and meta.deleted and meta.destroy_at is not None
                and abs(self.clock.now - meta.destroy_at) < SECOND)

    def window_ended(self, op: tuple[Any, ...]) -> bool:
        meta = self.model[self.key(op[1], op[2]).org].get(op[3])
        return meta is not None and meta.destroy_at is not None and self.clock.now >= meta.destroy_at

    def settle(self, times: dict[int, int]) -> None:
        """Put the writer's times in place of the tickets of the upserts just answered."""
        for secrets in self.model.values():
            for name, meta in secrets.items():
                if meta.created_at < 0 or meta.updated_at < 0:
                    secrets[name] = meta = _replace(meta, created_at=times.get(meta.created_at, meta.created_at),
                                                    updated_at=times.get(meta.updated_at, meta.updated_at))
                if meta.deleted_at is not None and meta.deleted_at < 0:
                    at = times[meta.deleted_at]
                    window_end = None if meta.destroy_at is None else at + DEFAULT_RECOVERY_WINDOW_DAYS * DAY_NS
                    secrets[name] = _replace(meta, deleted_at=at, destroy_at=window_end)

    # -- running -----------------------------------------------------------------------------

    def command(self, op: tuple[Any, ...]) -> Callable[[], Awaitable[Any]] | None:
        led = self.ledger
        kind = op[0]
        if kind == "key":
            org, role, scope = op[1], op[2], op[3]
            admin = self.admins[org]
            return lambda: led.create_api_key(self.ctx(admin), org, f"{org} {role} {scope} {len(self.keys)}",
                                              role, scope)
        if kind == "revoke":
            target = self.key(op[1], op[2])
            if target.key_id == self.admins[target.org].key_id:
                return None  # an org keeps its first admin key
            admin = self.admins[target.org]
            return lambda: led.revoke_api_key(self.ctx(admin), target.org, target.key_id)
        key = self.key(op[1], op[2])
        ctx = self.ctx(key)
        name = op[3]
        if kind == "upsert":
            *_, scope, category, description = op
            value = f"{key.org}/{name}/{self.request_ids}".encode()
            return lambda: led.upsert_secret(ctx, key.org, name, value, scope=scope, category=category,
                                             description=description)
        if kind == "reveal":
            return lambda: led.reveal_secret(ctx, key.org, name, reason=op[4])
        if kind == "rollback":
            last = max(self.versions.get((key.org, name), 0), 1)
            return lambda: led.submit(led.rollback_secret_command(ctx, key.org, name, op[4] % last + 1))
        if kind == "restore":
            if self.restore_is_ambiguous(op):
                return None
            return lambda: led.submit(led.restore_secret_command(ctx, key.org, name))
        if kind == "purge":
            return lambda: led.delete_secret(ctx, key.org, name, purge=True)
        return lambda: led.delete_secret(ctx, key.org, name)

    def resolve(self, op: tuple[Any, ...]) -> tuple[Any, ...]:
        """A reveal's, a delete's or a rollback's secret: the org's live secrets by index, else a name
        that is not live; a restore's or a purge's: the org's deleted secrets, else any name."""
        if op[0] not in ("reveal", "delete", "rollback", "restore", "purge") or isinstance(op[3], str):
            return op
        wanted = op[0] in ("restore", "purge")
        found = sorted(n for n, meta in self.model[op[1]].items() if meta.deleted == wanted)
        choice = found[op[3] % len(found)] if found else NAMES[op[3] % len(NAMES)]
        return (*op[:3], choice, *op[4:])

    async def attempt(self, call: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await call()
        except LedgerError as exc:
            return exc

    def check(self, op: tuple[Any, ...], expected: type[LedgerError] | None, version: int | None,
              outcome: Any) -> None:
        if expected is None:
            assert not isinstance(outcome, LedgerError), (op, outcome)
        else:
            assert isinstance(outcome, expected), (op, expected, outcome)
        if op[0] == "key" and expected is None:
            self.keys.append(outcome)
        if op[0] in ("upsert", "rollback", "restore") and expected is None:
            assert outcome.event.version == version, (op, outcome.event.version, version)

    async def run(self, history: list[Any]) -> None:
        steps = [one for op in history for one in (op if isinstance(op, list) else [op])]
        for op in steps:
            if op[0] == "wait":
                self.clock.advance(op[1])
                continue
            group = op[1] if op[0] == "together" else [op]
            planned = []
            head = await self.ledger.recorder.max_seq()
            for drawn in group:
                one = self.resolve(drawn)
                call = self.command(one)  # resolved against the keys as they are before the batch
                if call is not None:
                    ticket = -1 - len(planned)
                    planned.append((one, *self.predict(one, ticket), ticket, call))
            outcomes = await asyncio.gather(*(self.attempt(call) for *_, call in planned))
            times: dict[int, int] = {}
            deleted_at = {(r.org, r.stream): r.at for r in await self.ledger.recorder.read_after(head, 100_000)
                          if r.type == "secret.deleted"}
            for (one, expected, version, ticket, _), outcome in zip(planned, outcomes, strict=True):
                self.check(one, expected, version, outcome)
                if version is not None:
                    times[ticket] = outcome.event.at
                elif one[0] in ("delete", "purge") and expected is None:
                    org = self.key(one[1], one[2]).org
                    stream = (org, secret_stream(org, one[3]))
                    if stream in deleted_at:  # a purge of a deleted secret deletes nothing
                        times[ticket] = deleted_at[stream]
            self.settle(times)
            await self.snapshot()

    async def snapshot(self) -> None:
        recorder = self.ledger.recorder
        head = await recorder.max_seq()
        if head == self.snapshots[-1].seq:
            return
        (last,) = await recorder.read_after(head - 1, 1)
        self.snapshots.append(Snapshot(head, last.at, {org: dict(s) for org, s in self.model.items()}))


def _replace(meta: SecretMeta, **changes: Any) -> SecretMeta:
    return msgspec.structs.replace(meta, **changes)


@contextmanager
def temp_db(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp) / "keyledger.db"


def new_ledger(path: Path, clock: Clock, keyring: Keyring | None = None) -> Ledger:
    # synchronous=OFF: durability is not under test here, and it keeps hundreds of histories fast.
    recorder = SqliteRecorder(path, all_projectors(), synchronous="OFF")
    return Ledger(recorder, keyring or Keyring(MasterKey.generate()[0]), clock)


def run_history(path: Path, history: list[Any], *, step: int = 1_000,
                after: Callable[[Run], Awaitable[None]] | None = None) -> Run:
    """Run the history on a fresh ledger at `path`, call `after` while it runs, and stop it."""
    clock = Clock(step=step)
    run = Run(ledger=new_ledger(path, clock), clock=clock)

    async def main() -> None:
        await run.ledger.start()
        try:
            await run.setup()
            await run.run(history)
            if after is not None:
                await after(run)
        finally:
            await run.ledger.stop()

    asyncio.run(main())
    return run


def raw_events(path: Path) -> list[tuple[StoredRecord, Event]]:
    """Every record of the file with its decoded event: the ground truth the brute-force answers use."""
    return [(record, decode_event(record.body)) for record in iter_records(path)]
