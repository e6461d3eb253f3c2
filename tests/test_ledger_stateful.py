"""The Ledger service against a plain in-memory model, as a hypothesis state machine.

A real SQLite file in a temporary folder; the async Ledger runs on an event loop the machine owns.
Rules issue commands (alone, or several at once so that they share a group-commit batch) and compare
each answer with the model's; invariants compare the projections, the event counts and the hash
chain with the model after every step. A restart rule reopens the ledger from the file.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ledger.apps import AppTokens
from ledger.commands import Context, CreatedKey, Revealed, UpsertOutcome
from ledger.crypto import Keyring, MasterKey, open_value
from ledger.errors import (
    AlreadyExistsError,
    LedgerError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionFailedError,
    RevealDeniedError,
    UnauthenticatedError,
)
from ledger.events import CATEGORIES, ROLES, SCOPES, Actor
from ledger.model import KeyState, SecretState, key_stream, scope_covers, secret_stream
from ledger.recorder import Recorder
from ledger.records import StoredRecord
from ledger.service import Ledger
from ledger.sqlite_store import SqliteRecorder, iter_records
from ledger.verify import verify_records
from ledger.writer import WriteCache
from projections.sqlite_reader import SqliteProjections
from projections.sqlite_tables import all_projectors
from tests.conftest import ADMIN, ctx_for

ORGS = ("acme", "globex", "initech")
ISSUER = "https://login.example.com"
SUBJECTS = ("ada", "grace", "linus", "barbara")
APP_NAMES = ("github", "slack")
NAMES = ("db-password", "OPENAI_API_KEY", "tool config", "ключ", "x")
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=12)
values = st.binary(max_size=48)
# Restricted scopes first: hypothesis favours early choices, and they are what makes reveals get denied.
maybe_scope = st.sampled_from(("agents", "tools", "sandboxes", "all")) | st.none()
maybe_category = st.none() | st.sampled_from(CATEGORIES)
maybe_description = st.none() | text
# How an If-Match is sent: not at all, the current version, or a stale one (current + offset).
if_match_modes = st.sampled_from(("none", "current", "none", "stale", "current", "none"))
offsets = st.integers(min_value=1, max_value=3)


@dataclass
class KeyModel:
    key_id: str
    org: str
    label: str
    role: str
    scope: str
    ctx: Context
    revoked: bool = False  # for a person: removed
    used: bool = False  # acted at least once with a command that recorded an event
    person: bool = False  # a person signed in through single sign-on (key_id is the member id)


@dataclass
class AppModel:
    connected: bool = False
    scope: str = "all"
    token_version: int = 0
    access_token: str = ""


@dataclass
class SecretModel:
    version: int = 0  # only grows, across deletes and re-creates
    exists: bool = False
    scope: str = "all"
    category: str = "custom"
    description: str = ""
    value: bytes = b""
    created_by: str = ""
    updated_by: str = ""


Expected = tuple[str, Any]  # ("ok", payload) or ("err", exception type)


@dataclass
class Op:
    """One command: what to call, and (after `model_*`) what the model expects it to answer."""

    kind: str
    key_id: str
    org: str
    args: dict[str, Any] = field(default_factory=dict)


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="keyledger-stateful-"))
        self.path = self.tmp / "keyledger.db"
        self.loop = asyncio.new_event_loop()
        self.keyring = Keyring(MasterKey.generate()[0])
        self.ledger = self._open_ledger()
        self.projections = self._open_projections()
        self.orgs: set[str] = set()
        self.model_keys: dict[str, KeyModel] = {}
        self.secrets: dict[tuple[str, str], SecretModel] = {}
        self.events = 0
        self.granted = 0
        self.denied = 0
        self.restarts = 0
        self.events_at_restart = 0
        self.first_admins: set[str] = set()
        self.sso_orgs: set[str] = set()
        self.people: dict[tuple[str, str], str] = {}  # (org, subject) -> member id
        self.apps: dict[tuple[str, str], AppModel] = {}
        self.token_reveals = 0
        self.token_denials = 0

    # -- plumbing --------------------------------------------------------------------------

    # The storage backend: SQLite here; the PostgreSQL machine (tests/test_pg_ledger_stateful.py)
    # overrides these five.
    def _make_recorder(self) -> Recorder:
        return SqliteRecorder(self.path, all_projectors())

    def _open_projections(self) -> Any:
        projections = SqliteProjections(self.path)
        projections.open_now()
        return projections

    def _close_projections(self) -> None:
        self.projections.close_now()

    def count_events(self, kind: str | None = None) -> int:
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            if kind is None:
                row = conn.execute("SELECT COUNT(*) FROM events").fetchone()
            else:
                row = conn.execute("SELECT COUNT(*) FROM events WHERE type = ?", (kind,)).fetchone()
            return int(row[0])
        finally:
            conn.close()

    def all_records(self) -> Iterable[StoredRecord]:
        return iter_records(self.path)

    def _open_ledger(self) -> Ledger:
        ledger = Ledger(self._make_recorder(), self.keyring)
        self.loop.run_until_complete(ledger.start())
        return ledger

    def run(self, awaitable: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(awaitable)

    async def _outcome(self, awaitable: Awaitable[Any]) -> Expected:
        try:
            return ("ok", await awaitable)
        except LedgerError as exc:
            return ("err", exc)

    def teardown(self) -> None:
        try:
            self._close_projections()
            self.run(self.ledger.stop())
        finally:
            self.loop.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def secret(self, org: str, name: str) -> SecretModel:
        return self.secrets.setdefault((org, name), SecretModel())

    def _add_key(self, created: CreatedKey) -> str:
        self.model_keys[created.key_id] = KeyModel(
            key_id=created.key_id, org=created.org, label=created.label, role=created.role,
            scope=created.scope, ctx=ctx_for(created),
        )
        return created.key_id

    def _acted(self, key_id: str | None) -> None:
        """A command recorded one event, acted by `key_id` (None: the admin token)."""
        self.events += 1
        if key_id is not None:
            self.model_keys[key_id].used = True

    def _caller_error(self, key: KeyModel, org: str) -> type[LedgerError] | None:
        if key.revoked or key.org != org:
            return UnauthenticatedError
        return None

    def _admin_error(self, key: KeyModel, org: str) -> type[LedgerError] | None:
        return self._caller_error(key, org) or (PermissionDeniedError if key.role != "admin" else None)

    @staticmethod
    def _refused(outcome: Expected, expected: type[LedgerError] | None) -> bool:
        """Whether the command had to be refused; if so, asserts that it was, with `expected`."""
        if expected is None:
            return False
        assert outcome[0] == "err" and type(outcome[1]) is expected, outcome
        return True

    # -- the model: what each command must answer -----------------------------------------

    def model_upsert(self, op: Op) -> Expected:
        key = self.model_keys[op.key_id]
        if (error := self._caller_error(key, op.org)) is not None:
            return ("err", error)
        s = self.secret(op.org, op.args["name"])
        if_match = op.args["if_match"]
        if if_match is not None and (not s.exists or s.version != if_match):
            return ("err", PreconditionFailedError)
        created = not s.exists
        s.version += 1
        if created:
            s.scope = op.args["scope"] or "all"
            s.category = op.args["category"] or "custom"
            s.description = op.args["description"] or ""
            s.created_by = key.key_id
        else:
            s.scope = op.args["scope"] or s.scope
            s.category = op.args["category"] or s.category
            if op.args["description"] is not None:
                s.description = op.args["description"]
        s.exists = True
        s.value = op.args["value"]
        s.updated_by = key.key_id
        self._acted(key.key_id)
        return ("ok", (created, s.version, s.scope, s.category, s.description, s.created_by))

    def model_delete(self, op: Op) -> Expected:
        key = self.model_keys[op.key_id]
        if (error := self._caller_error(key, op.org)) is not None:
            return ("err", error)
        s = self.secret(op.org, op.args["name"])
        if not s.exists:
            return ("err", NotFoundError)
        if op.args["if_match"] is not None and op.args["if_match"] != s.version:
            return ("err", PreconditionFailedError)
        s.exists = False
        self._acted(key.key_id)
        return ("ok", None)

    def model_reveal(self, op: Op) -> Expected:
        key = self.model_keys[op.key_id]
        if (error := self._caller_error(key, op.org)) is not None:
            return ("err", error)
        s = self.secret(op.org, op.args["name"])
        if not s.exists:
            return ("err", NotFoundError)
        self._acted(key.key_id)
        if not scope_covers(key.scope, s.scope):
            self.denied += 1
            return ("err", RevealDeniedError)
        self.granted += 1
        return ("ok", (s.version, s.value))

    def model_revoke(self, op: Op) -> Expected:
        key = self.model_keys[op.key_id]
        if (error := self._caller_error(key, op.org)) is not None:
            return ("err", error)
        if key.role != "admin":
            return ("err", PermissionDeniedError)
        target = self.model_keys.get(op.args["target"])
        if target is None or target.org != op.org or target.revoked or target.person:
            return ("err", NotFoundError)
        target.revoked = True
        self._acted(key.key_id)
        return ("ok", None)

    def model(self, op: Op) -> Expected:
        return getattr(self, f"model_{op.kind}")(op)  # type: ignore[no-any-return]

    # -- running commands ------------------------------------------------------------------

    def call(self, op: Op) -> Awaitable[Any]:
        ctx = self.model_keys[op.key_id].ctx
        a = op.args
        if op.kind == "upsert":
            return self.ledger.upsert_secret(
                ctx, op.org, a["name"], a["value"], scope=a["scope"], category=a["category"],
                description=a["description"], if_match=a["if_match"],
            )
        if op.kind == "delete":
            return self.ledger.delete_secret(ctx, op.org, a["name"], if_match=a["if_match"])
        if op.kind == "reveal":
            return self.ledger.reveal_secret(ctx, op.org, a["name"], reason="stateful")
        assert op.kind == "revoke"
        return self.ledger.revoke_api_key(ctx, op.org, a["target"])

    def check(self, op: Op, expected: Expected, actual: Expected) -> None:
        if expected[0] == "err":
            assert actual[0] == "err", f"{op}: expected {expected[1].__name__}, got {actual[1]!r}"
            assert type(actual[1]) is expected[1], f"{op}: expected {expected[1].__name__}, got {actual[1]!r}"
            return
        assert actual[0] == "ok", f"{op}: expected success, got {actual[1]!r}"
        result = actual[1]
        if op.kind == "upsert":
            assert isinstance(result, UpsertOutcome)
            e = result.event
            assert (result.created, e.version, e.scope, e.category, e.description, result.created_by) == expected[1], op
            assert e.name == op.args["name"] and e.org == op.org
        elif op.kind == "reveal":
            assert isinstance(result, Revealed)
            assert (result.version, result.value) == expected[1], op
            assert result.name == op.args["name"]
        else:
            assert result is None

    def if_match_for(self, org: str, name: str, mode: str, offset: int) -> int | None:
        s = self.secrets.get((org, name), SecretModel())
        if mode == "none":
            return None
        if mode == "current":
            return s.version if s.version > 0 else offset  # a never-created name has no current version
        return s.version + offset

    def one(self, op: Op) -> None:
        actual = self.run(self._outcome(self.call(op)))
        self.check(op, self.model(op), actual)

    # -- drawing arguments from the model's state ------------------------------------------

    def draw_actor(self, data: st.DataObject) -> str:
        """Mostly an active key (so that commands get past authentication), sometimes any key."""
        ids = list(self.model_keys)  # creation order: key ids are random, their sort order is not stable
        active = [k for k in ids if not self.model_keys[k].revoked]
        if active and data.draw(st.integers(min_value=0, max_value=7), label="active actor") < 7:
            return data.draw(st.sampled_from(active), label="actor")
        return data.draw(st.sampled_from(ids), label="actor")

    def draw_name(self, data: st.DataObject, org: str) -> str:
        """Mostly a live name of the org (so that reveals and deletes find something), else any name."""
        live = [n for n in NAMES if self.secrets.get((org, n), SecretModel()).exists]
        if live and data.draw(st.integers(min_value=0, max_value=3), label="live name") < 3:
            return data.draw(st.sampled_from(live), label="name")
        return data.draw(st.sampled_from(NAMES), label="name")

    def draw_victim(self, data: st.DataObject) -> str | None:
        """A key to revoke: never an org's first admin key, so that orgs stay manageable."""
        victims = [k for k in self.model_keys if k not in self.first_admins]
        return data.draw(st.sampled_from(victims), label="victim") if victims else None

    def draw_op(self, data: st.DataObject, kinds: tuple[str, ...]) -> Op | None:
        actor = self.draw_actor(data)
        org = self.model_keys[actor].org
        kind = data.draw(st.sampled_from(kinds), label="kind")
        if kind == "revoke":
            victim = self.draw_victim(data)
            return None if victim is None else Op(kind, actor, org, {"target": victim})
        name = self.draw_name(data, org)
        if kind == "reveal":
            return Op(kind, actor, org, {"name": name})
        if_match = self.if_match_for(
            org, name, data.draw(if_match_modes, label="if_match"), data.draw(offsets, label="offset")
        )
        if kind == "delete":
            return Op(kind, actor, org, {"name": name, "if_match": if_match})
        return Op(kind, actor, org, {
            "name": name, "value": data.draw(values, label="value"), "scope": data.draw(maybe_scope, label="scope"),
            "category": data.draw(maybe_category, label="category"),
            "description": data.draw(maybe_description, label="description"), "if_match": if_match,
        })

    # -- rules -----------------------------------------------------------------------------

    @initialize()
    def create_orgs(self) -> None:
        """Two orgs, each with its first admin key and a key of every other scope and role."""
        for org in ORGS[:2]:
            created = self.run(self.ledger.create_org(ADMIN, org))
            assert created.role == "admin" and created.scope == "all" and created.org == org
            self.orgs.add(org)
            self.events += 2
            self.first_admins.add(self._add_key(created))
            for role, scope in (("member", "all"), ("member", "agents"), ("admin", "tools"), ("member", "sandboxes")):
                key = self.run(self.ledger.create_api_key(ctx_for(created), org, f"{role}-{scope}", role, scope))
                self._add_key(key)
                self._acted(created.key_id)

    @rule(org=st.sampled_from(ORGS))
    def create_org(self, org: str) -> None:
        outcome = self.run(self._outcome(self.ledger.create_org(ADMIN, org)))
        if org in self.orgs:
            assert outcome[0] == "err" and type(outcome[1]) is AlreadyExistsError, outcome
            return
        assert outcome[0] == "ok", outcome
        self.orgs.add(org)
        self.events += 2
        self.first_admins.add(self._add_key(outcome[1]))

    @rule(
        data=st.data(), by_admin_token=st.booleans(), org=st.sampled_from(ORGS),
        role=st.sampled_from(ROLES), scope=st.sampled_from(SCOPES), label=text,
    )
    def create_key(self, *, data: st.DataObject, by_admin_token: bool, org: str, role: str, scope: str,
                   label: str) -> None:
        if by_admin_token:
            actor = None
            ctx, expected_error = ADMIN, (None if org in self.orgs else NotFoundError)
        else:
            actor = self.draw_actor(data)
            key = self.model_keys[actor]
            org, ctx = key.org, key.ctx
            expected_error = self._admin_error(key, org)
        outcome = self.run(self._outcome(self.ledger.create_api_key(ctx, org, label, role=role, scope=scope)))
        if expected_error is not None:
            assert outcome[0] == "err" and type(outcome[1]) is expected_error, outcome
            return
        assert outcome[0] == "ok", outcome
        created: CreatedKey = outcome[1]
        assert (created.org, created.label, created.role, created.scope) == (org, label, role, scope)
        assert created.api_key.startswith("rt_live_") and len(created.api_key) >= 40
        self._acted(actor)
        self._add_key(created)

    @rule(data=st.data(), by_admin_token=st.booleans())
    def revoke_key(self, data: st.DataObject, by_admin_token: bool) -> None:
        victim = self.draw_victim(data)
        if victim is None:
            return
        if by_admin_token:
            v = self.model_keys[victim]
            outcome = self.run(self._outcome(self.ledger.revoke_api_key(ADMIN, v.org, victim)))
            if v.revoked or v.person:  # a person is not a key: removing one is another command
                assert outcome[0] == "err" and type(outcome[1]) is NotFoundError, outcome
            else:
                assert outcome == ("ok", None), outcome
                v.revoked = True
                self._acted(None)
        else:
            actor = self.draw_actor(data)
            self.one(Op("revoke", actor, self.model_keys[actor].org, {"target": victim}))
        v = self.model_keys[victim]
        if v.revoked:  # a revoked key's commands are refused, whatever they are
            self.one(Op("reveal", victim, v.org, {"name": self.draw_name(data, v.org)}))
            self.one(Op("upsert", victim, v.org, {
                "name": NAMES[0], "value": b"x", "scope": None, "category": None, "description": None, "if_match": None,
            }))

    @rule(data=st.data())
    def upsert(self, data: st.DataObject) -> None:
        op = self.draw_op(data, ("upsert",))
        assert op is not None
        self.one(op)

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        op = self.draw_op(data, ("delete",))
        assert op is not None
        self.one(op)

    @rule(data=st.data())
    def reveal(self, data: st.DataObject) -> None:
        op = self.draw_op(data, ("reveal",))
        assert op is not None
        self.one(op)

    @rule(data=st.data())
    def foreign_name_is_missing(self, data: st.DataObject) -> None:
        """A name that lives only in another org answers like a missing one in the caller's org."""
        actor = self.draw_actor(data)
        org = self.model_keys[actor].org
        foreign = sorted({
            name for (o, name), s in self.secrets.items()
            if o != org and s.exists and not self.secrets.get((org, name), SecretModel()).exists
        })
        if not foreign:
            return
        name = data.draw(st.sampled_from(foreign), label="foreign name")
        version = max(s.version for (o, n), s in self.secrets.items() if n == name and o != org)
        self.one(Op("reveal", actor, org, {"name": name}))
        self.one(Op("delete", actor, org, {"name": name, "if_match": None}))
        self.one(Op("delete", actor, org, {"name": name, "if_match": version}))
        self.one(Op("upsert", actor, org, {
            "name": name, "value": b"x", "scope": None, "category": None, "description": None, "if_match": version,
        }))

    @rule(data=st.data(), org=st.sampled_from(ORGS), name=st.sampled_from(NAMES))
    def other_orgs_are_closed(self, data: st.DataObject, org: str, name: str) -> None:
        """A key acting on another org is not a credential there; the admin token never touches secrets."""
        key = self.model_keys[self.draw_actor(data)]
        before = self.count_events()
        if org != key.org:
            for call in (
                lambda: self.ledger.reveal_secret(key.ctx, org, name),
                lambda: self.ledger.upsert_secret(key.ctx, org, name, b"x"),
                lambda: self.ledger.delete_secret(key.ctx, org, name),
                lambda: self.ledger.create_api_key(key.ctx, org, "intruder", role="admin"),
            ):
                outcome = self.run(self._outcome(call()))
                assert outcome[0] == "err" and type(outcome[1]) is UnauthenticatedError, outcome
        for call in (
            lambda: self.ledger.reveal_secret(ADMIN, org, name),
            lambda: self.ledger.upsert_secret(ADMIN, org, name, b"x"),
        ):
            outcome = self.run(self._outcome(call()))
            assert outcome[0] == "err" and type(outcome[1]) is PermissionDeniedError, outcome
        assert self.count_events() == before

    @rule(data=st.data(), size=st.integers(min_value=2, max_value=8))
    def concurrent_batch(self, data: st.DataObject, size: int) -> None:
        """Commands submitted together share a batch; each is decided after the ones before it."""
        ops = [
            op for _ in range(size)
            if (op := self.draw_op(data, ("upsert", "upsert", "reveal", "reveal", "delete", "revoke"))) is not None
        ]

        async def together() -> list[Expected]:
            return list(await asyncio.gather(*(self._outcome(self.call(op)) for op in ops)))

        batches = self.ledger.writer.batches
        actual = self.run(together())
        if any(outcome[0] == "ok" for outcome in actual):
            assert self.ledger.writer.batches == batches + 1, "commands submitted together share one commit"
        for op, outcome in zip(ops, actual, strict=True):
            self.check(op, self.model(op), outcome)

    @precondition(lambda self: self.events >= self.events_at_restart + 12)
    @rule()
    def restart(self) -> None:
        """Stop the ledger, reopen it from the file: the write side comes back as the model says."""
        self.run(self.ledger.stop())
        self.ledger = self._open_ledger()
        self.restarts += 1
        self.events_at_restart = self.events
        cache = WriteCache(self.ledger.recorder)

        async def check_write_state() -> None:
            for (org, name), s in self.secrets.items():
                state = await cache.state(secret_stream(org, name), "secrets")
                if s.version == 0:
                    assert state is None
                    continue
                assert isinstance(state, SecretState)
                assert (state.version, state.exists, state.scope, state.category, state.description) == (
                    s.version, s.exists, s.scope, s.category, s.description,
                ), (org, name)
                row = await self.ledger.recorder.get_data_key(state.data_key_id)
                assert row is not None
                dek = self.keyring.unwrap(row.id, row.kek_id, row.wrapped)
                assert open_value(dek, state.sealed, org, name, state.version) == s.value
            for key_id, k in self.model_keys.items():
                if k.person:
                    continue  # people are folded from their org's members stream (checked by the invariant)
                key = await cache.state(key_stream(key_id), "keys")
                assert isinstance(key, KeyState)
                assert (key.org, key.role, key.scope, key.revoked) == (k.org, k.role, k.scope, k.revoked)

        self.run(check_write_state())

    # -- people (single sign-on) and connected apps ------------------------------------------

    def first_admin_of(self, org: str) -> KeyModel:
        return next(self.model_keys[k] for k in self.first_admins if self.model_keys[k].org == org)

    @rule(org=st.sampled_from(ORGS[:2]))
    def configure_sso(self, org: str) -> None:
        """The client secret is stored as a secret first (an upsert the model follows), then named."""
        admin = self.first_admin_of(org)
        self.one(Op("upsert", admin.key_id, org, {
            "name": "sso client secret", "value": b"s3cret", "scope": None, "category": None,
            "description": None, "if_match": None,
        }))
        outcome = self.run(self._outcome(self.ledger.configure_sso(
            admin.ctx, org, issuer=ISSUER, client_id=f"keyledger-{org}",
            client_secret_name="sso client secret", allowed_domains=[f"{org}.example"])))
        assert outcome == ("ok", None), outcome
        self._acted(admin.key_id)
        self.sso_orgs.add(org)

    @rule(org=st.sampled_from(ORGS[:2]), subject=st.sampled_from(SUBJECTS), own_domain=st.booleans())
    def person_signs_in(self, org: str, subject: str, own_domain: bool) -> None:
        """First sign-in joins (the org's first person an admin); a removed person stays out."""
        email = f"{subject}@{org if own_domain else 'elsewhere'}.example"
        outcome = self.run(self._outcome(self.ledger.sign_in_person(
            Context(actor=ADMIN.actor), org, issuer=ISSUER, subject=subject, email=email,
            session_id=f"stateful-session-{self.events:08d}-{subject}")))
        member_id = self.people.get((org, subject))
        if org not in self.sso_orgs:
            expected: type[LedgerError] | None = UnauthenticatedError
        elif not own_domain or (member_id is not None and self.model_keys[member_id].revoked):
            expected = PermissionDeniedError
        else:
            expected = None
        if self._refused(outcome, expected):
            return
        assert outcome[0] == "ok", outcome
        signed_in = outcome[1]
        if member_id is None:
            first = not any(o == org for (o, _) in self.people)
            assert signed_in.joined and signed_in.role == ("admin" if first else "member")
            self.people[(org, subject)] = signed_in.member_id
            self.model_keys[signed_in.member_id] = KeyModel(
                key_id=signed_in.member_id, org=org, label=email, role=signed_in.role, scope="all", person=True,
                ctx=Context(actor=Actor(key_id=signed_in.member_id, label=email, kind="person", subject=subject)),
            )
            self.events += 2
        else:
            assert not signed_in.joined and signed_in.member_id == member_id
            assert signed_in.role == self.model_keys[member_id].role
            self.events += 1

    def draw_person(self, data: st.DataObject) -> str | None:
        ids = [k for k, m in self.model_keys.items() if m.person]
        return data.draw(st.sampled_from(ids), label="person") if ids else None

    @rule(data=st.data(), role=st.sampled_from(ROLES))
    def change_person_role(self, data: st.DataObject, role: str) -> None:
        target_id = self.draw_person(data)
        if target_id is None:
            return
        actor = self.model_keys[self.draw_actor(data)]
        target = self.model_keys[target_id]
        outcome = self.run(self._outcome(self.ledger.change_person_role(actor.ctx, actor.org, target_id, role)))
        expected = self._admin_error(actor, actor.org)
        if expected is None and (target.org != actor.org or target.revoked):
            expected = NotFoundError
        if self._refused(outcome, expected):
            return
        assert outcome == ("ok", target.role != role), outcome
        if target.role != role:
            target.role = role
            self._acted(actor.key_id)

    @rule(data=st.data())
    def remove_person(self, data: st.DataObject) -> None:
        target_id = self.draw_person(data)
        if target_id is None:
            return
        actor = self.model_keys[self.draw_actor(data)]
        target = self.model_keys[target_id]
        outcome = self.run(self._outcome(self.ledger.remove_person(actor.ctx, actor.org, target_id)))
        expected = self._admin_error(actor, actor.org)
        if expected is None and (target.org != actor.org or target.revoked):
            expected = NotFoundError
        if self._refused(outcome, expected):
            return
        assert outcome == ("ok", None), outcome
        target.revoked = True
        self._acted(actor.key_id)

    @rule(data=st.data(), name=st.sampled_from(APP_NAMES), scope=st.sampled_from(SCOPES),
          token=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=8, max_size=16))
    def connect_app(self, data: st.DataObject, name: str, scope: str, token: str) -> None:
        actor = self.model_keys[self.draw_actor(data)]
        outcome = self.run(self._outcome(self.ledger.connect_app(
            actor.ctx, actor.org, name, provider="custom", authorization_url="https://auth.example.com/authorize",
            token_url="https://auth.example.com/token", client_id="client", client_secret="client-secret",
            scopes=["read"], scope=scope, tokens=AppTokens(access_token=token, refresh_token=None, expires_at=None))))
        app = self.apps.setdefault((actor.org, name), AppModel())
        expected = self._admin_error(actor, actor.org)
        if expected is None and app.connected:
            expected = AlreadyExistsError
        if self._refused(outcome, expected):
            return
        assert outcome[0] == "ok", outcome
        app.connected, app.scope, app.access_token = True, scope, token
        app.token_version += 1
        assert outcome[1].token_version == app.token_version
        self._acted(actor.key_id)

    @rule(data=st.data(), name=st.sampled_from(APP_NAMES))
    def app_token(self, data: st.DataObject, name: str) -> None:
        actor = self.model_keys[self.draw_actor(data)]
        outcome = self.run(self._outcome(self.ledger.app_token(actor.ctx, actor.org, name, reason="stateful")))
        app = self.apps.get((actor.org, name), AppModel())
        expected = self._caller_error(actor, actor.org)
        if expected is None and not app.connected:
            expected = NotFoundError
        if expected is None and not scope_covers(actor.scope, app.scope):
            assert outcome[0] == "err" and type(outcome[1]) is RevealDeniedError, outcome
            self.token_denials += 1  # recorded, like a denied reveal
            self._acted(actor.key_id)
            return
        if self._refused(outcome, expected):
            return
        assert outcome[0] == "ok", outcome
        assert (outcome[1].access_token, outcome[1].token_version) == (app.access_token, app.token_version)
        self.token_reveals += 1
        self._acted(actor.key_id)

    @rule(data=st.data(), name=st.sampled_from(APP_NAMES))
    def disconnect_app(self, data: st.DataObject, name: str) -> None:
        actor = self.model_keys[self.draw_actor(data)]
        outcome = self.run(self._outcome(self.ledger.disconnect_app(actor.ctx, actor.org, name)))
        app = self.apps.get((actor.org, name), AppModel())
        expected = self._admin_error(actor, actor.org)
        if expected is None and not app.connected:
            expected = NotFoundError
        if self._refused(outcome, expected):
            return
        assert outcome == ("ok", None), outcome
        app.connected = False
        self._acted(actor.key_id)

    @invariant()
    def people_and_apps_equal_the_model(self) -> None:
        async def check() -> None:
            for org in ORGS:
                people = await self.projections.list_people(org)
                assert {p.member_id: (p.subject, p.role, p.removed_at is not None) for p in people} == {
                    member_id: (subject, self.model_keys[member_id].role, self.model_keys[member_id].revoked)
                    for (o, subject), member_id in self.people.items() if o == org
                }, org
                apps = await self.projections.list_apps(org)
                assert {a.name: (a.scope, a.token_version, a.state) for a in apps} == {
                    name: (m.scope, m.token_version, "connected")
                    for (o, name), m in self.apps.items() if o == org and m.connected
                }, org

        self.run(check())

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def projections_equal_the_model(self) -> None:
        async def check() -> None:
            for org in ORGS:
                live = {
                    name: (s.scope, s.category, s.description, s.version, s.created_by, s.updated_by)
                    for (o, name), s in self.secrets.items() if o == org and s.exists
                }
                listed = await self.projections.list_secrets(org, limit=1000)
                assert [m.name for m in listed] == sorted(live, key=lambda n: n.encode()), org
                for meta in listed:
                    assert meta.org == org and not meta.deleted
                    assert meta.created_at <= meta.updated_at
                    assert (meta.scope, meta.category, meta.description, meta.version, meta.created_by,
                            meta.updated_by) == live[meta.name], (org, meta.name)
                for name in NAMES:
                    got = await self.projections.get_secret(org, name)
                    if name in live:
                        assert got is not None and got == next(m for m in listed if m.name == name)
                    else:
                        assert got is None, (org, name)
                keys = await self.projections.list_keys(org)
                assert [(k.created_at, k.key_id) for k in keys] == sorted((k.created_at, k.key_id) for k in keys)
                expected = {
                    k.key_id: (k.label, k.role, k.scope, k.revoked, k.used)
                    for k in self.model_keys.values() if k.org == org and not k.person
                }
                assert {
                    k.key_id: (k.label, k.role, k.scope, k.revoked_at is not None, k.last_used_at is not None)
                    for k in keys
                } == expected, org

        self.run(check())

    @invariant()
    def events_match_the_model(self) -> None:
        assert self.count_events() == self.events
        assert self.count_events("secret.revealed") == self.granted
        assert self.count_events("secret.reveal_denied") == self.denied
        assert self.count_events("app.token_revealed") == self.token_reveals
        assert self.count_events("app.token_denied") == self.token_denials

    @invariant()
    def ledger_verifies(self) -> None:
        report = verify_records(self.all_records())
        assert report.ok, report.summary()
        assert report.checked == self.events
        assert set(report.orgs) == self.orgs


LedgerMachine.TestCase.settings = settings(stateful_step_count=30)
TestLedgerStateful = LedgerMachine.TestCase
