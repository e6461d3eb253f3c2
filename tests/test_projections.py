"""Projections are pure (invariant 6): rebuilding them from the first event gives exactly the rows that
incremental updates gave, whatever the history, however it was batched, and however the rebuild is chunked.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import sqlite_store
from ledger.commands import Context, CreatedKey
from ledger.crypto import Keyring, MasterKey
from ledger.errors import LedgerError, StoreUnavailableError
from ledger.events import CATEGORIES, ROLES, SCOPES
from ledger.service import Ledger
from ledger.sqlite_store import SqliteRecorder
from projections.sqlite_tables import PROJECTION_TABLES, PROJECTOR_NAMES, all_projectors
from tests.conftest import ADMIN, ctx_for

ORGS = ("acme", "globex")
NAMES = ("db", "OPENAI_API_KEY", "tool config", "ключ")
DUMPS = {
    "secrets": "SELECT * FROM secrets ORDER BY org, name",
    "api_keys": "SELECT * FROM api_keys ORDER BY key_id",
    "audit": "SELECT * FROM audit ORDER BY seq",
    "secret_versions": "SELECT * FROM secret_versions ORDER BY org, name, version",
    "secret_rotation": "SELECT * FROM secret_rotation ORDER BY org, name",
    "ssh_keys": "SELECT * FROM ssh_keys ORDER BY ssh_key_id",
    "dashboard_sessions": "SELECT * FROM dashboard_sessions ORDER BY session_id",
    "members": "SELECT * FROM members ORDER BY member_id",
    "sso_settings": "SELECT * FROM sso_settings ORDER BY org",
    "connected_apps": "SELECT * FROM connected_apps ORDER BY org, name",
}


def _public_line(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey, comment: str) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{raw.decode()} {comment}".strip()


# SSH public keys to add (a few, so that the same one is added twice, in one org or two) and session ids.
SSH_KEYS = (*(_public_line(ed25519.Ed25519PrivateKey.generate(), f"dev{i}@laptop") for i in range(3)),
            _public_line(ec.generate_private_key(ec.SECP256R1()), ""))
SESSION_IDS = tuple(f"session-{i}-" + "x" * 20 for i in range(3))

index = st.integers(min_value=0, max_value=20)  # an actor or a target, as an index into the keys made so far
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=8)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


simple_ops = st.one_of(
    st.tuples(st.just("upsert"), index, st.sampled_from(NAMES), st.binary(max_size=16), maybe(st.sampled_from(SCOPES)),
              maybe(st.sampled_from(CATEGORIES)), maybe(text), maybe(st.integers(min_value=1, max_value=4))),
    st.tuples(st.just("reveal"), index, st.sampled_from(NAMES)),
    st.tuples(st.just("delete"), index, st.sampled_from(NAMES), maybe(st.integers(min_value=1, max_value=4))),
    st.tuples(st.just("key"), index, st.sampled_from(ROLES), st.sampled_from(SCOPES)),
    st.tuples(st.just("revoke"), index, index),
    st.tuples(st.just("ssh_add"), index, st.sampled_from(SSH_KEYS)),
    st.tuples(st.just("ssh_remove"), index, index),
    st.tuples(st.just("session_start"), index, st.sampled_from(SESSION_IDS)),
    st.tuples(st.just("session_end"), index, st.sampled_from(SESSION_IDS)),
)
ops = st.one_of(
    simple_ops,
    st.tuples(st.just("org"), st.sampled_from(ORGS)),
    st.tuples(st.just("together"), st.lists(simple_ops, min_size=2, max_size=8)),  # one group-commit batch
    st.tuples(st.just("failing_commit"), simple_ops),  # the op's commit fails like a full disk
    st.just(("restart",)),
)
histories = st.lists(ops, min_size=1, max_size=30)


class Scenario:
    """Runs a generated history against a real ledger; commands that the rules refuse are fine."""

    def __init__(self, path: Path, keyring: Keyring) -> None:
        self.path = path
        self.keyring = keyring
        self.ledger = Ledger(SqliteRecorder(path, all_projectors()), keyring)
        self.keys: list[CreatedKey] = []
        self.ssh_key_ids: list[str] = []

    async def start(self) -> None:
        await self.ledger.start()
        self.keys.append(await self.ledger.create_org(ADMIN, "acme"))

    def actor(self, i: int) -> tuple[Context, str]:
        key = self.keys[i % len(self.keys)]
        return ctx_for(key), key.org

    async def simple(self, op: tuple[Any, ...]) -> None:
        kind = op[0]
        ctx, org = self.actor(op[1])
        if kind == "upsert":
            _, _, name, value, scope, category, description, if_match = op
            await self.ledger.upsert_secret(ctx, org, name, value, scope=scope, category=category,
                                            description=description, if_match=if_match)
        elif kind == "reveal":
            await self.ledger.reveal_secret(ctx, org, op[2], reason="rebuild test")
        elif kind == "delete":
            await self.ledger.delete_secret(ctx, org, op[2], if_match=op[3])
        elif kind == "key":
            self.keys.append(await self.ledger.create_api_key(ctx, org, f"{op[2]}-{op[3]}", op[2], op[3]))
        elif kind == "ssh_add":
            self.ssh_key_ids.append((await self.ledger.add_ssh_key(ctx, org, op[2])).ssh_key_id)
        elif kind == "ssh_remove":
            if self.ssh_key_ids:
                await self.ledger.remove_ssh_key(ctx, org, self.ssh_key_ids[op[2] % len(self.ssh_key_ids)])
        elif kind == "session_start":
            await self.ledger.start_session(ctx, org, op[2])
        elif kind == "session_end":
            await self.ledger.end_session(ctx, org, op[2])
        else:
            await self.ledger.revoke_api_key(ctx, org, self.keys[op[2] % len(self.keys)].key_id)

    async def attempt(self, op: tuple[Any, ...]) -> Any:
        try:
            return await self.simple(op)
        except LedgerError as exc:
            return exc

    async def run(self, history: list[tuple[Any, ...]]) -> None:
        for op in history:
            kind = op[0]
            if kind == "org":
                try:
                    self.keys.append(await self.ledger.create_org(ADMIN, op[1]))
                except LedgerError:
                    pass
            elif kind == "together":
                await asyncio.gather(*(self.attempt(o) for o in op[1]))
            elif kind == "failing_commit":
                before = await self.ledger.recorder.max_seq()
                self.ledger.recorder.fail_next_commits = 1  # type: ignore[attr-defined]
                outcome = await self.attempt(op[1])
                if self.ledger.recorder.fail_next_commits == 0:  # type: ignore[attr-defined]
                    assert isinstance(outcome, StoreUnavailableError)  # the commit was tried, and failed
                self.ledger.recorder.fail_next_commits = 0  # type: ignore[attr-defined]
                assert await self.ledger.recorder.max_seq() == before
            elif kind == "restart":
                await self.ledger.stop()
                self.ledger = Ledger(SqliteRecorder(self.path, all_projectors()), self.keyring)
                await self.ledger.start()
            else:
                await self.attempt(op)


@contextmanager
def connect(path: Path, *, read_only: bool = True) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{path}?mode={'ro' if read_only else 'rw'}", uri=True, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with connect(path) as conn:
        return {table: conn.execute(sql).fetchall() for table, sql in DUMPS.items()}


def head_and_positions(path: Path) -> tuple[int, dict[str, int]]:
    with connect(path) as conn:
        head = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
        positions = dict(conn.execute("SELECT name, position FROM projection_positions").fetchall())
    return head, positions


def scribble(path: Path) -> None:
    """Damage every projection table (they are derived data): a rebuild must not depend on them."""
    with connect(path, read_only=False) as conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE secrets SET version = version + 100, description = 'scribbled', deleted = 1 - deleted")
        conn.execute(
            "INSERT INTO secrets VALUES ('acme', 'ghost', 'all', 'custom', '', 1, 1, 1, 'x', 'x', 0, NULL, NULL, "
            "NULL, NULL, NULL)"
            " ON CONFLICT DO NOTHING"
        )
        conn.execute("INSERT INTO secret_rotation VALUES ('acme', 'ghost', 60, 'generator', 1, 3, NULL, NULL, "
                     "'scribbled', 1) ON CONFLICT DO NOTHING")
        conn.execute("UPDATE secret_rotation SET failures = failures + 7")
        conn.execute("UPDATE api_keys SET last_used_at = NULL, revoked_at = 42, label = 'scribbled'")
        conn.execute("UPDATE ssh_keys SET label = 'scribbled', bits = bits + 1")
        conn.execute("INSERT INTO ssh_keys VALUES ('ssh_ghost', 'acme', 'l', 'ssh-ed25519', 256, 'SHA256:x', '', "
                     "'ssh-ed25519 AAAA', 1, 'x') ON CONFLICT DO NOTHING")
        conn.execute("UPDATE dashboard_sessions SET ended_at = 42")
        conn.execute("INSERT INTO dashboard_sessions VALUES ('ghost-session-xxxxxxxxxxx', 'acme', 'x', 1, NULL) "
                     "ON CONFLICT DO NOTHING")
        conn.execute("INSERT INTO members VALUES ('mbr_ghost', 'acme', 'i', 's', 'e', 'admin', 1, NULL, NULL) "
                     "ON CONFLICT DO NOTHING")
        conn.execute("UPDATE members SET role = 'scribbled'")
        conn.execute("INSERT INTO sso_settings VALUES ('ghost', 'i', 'c', 's', 'd', 1) ON CONFLICT DO NOTHING")
        conn.execute("UPDATE connected_apps SET state = 'scribbled', token_version = token_version + 9")
        conn.execute("DELETE FROM audit WHERE seq % 2 = 0")
        conn.execute("UPDATE audit SET outcome = 'scribbled'")
        conn.execute("COMMIT")


def run_scenario(history: list[tuple[Any, ...]], check: Any) -> None:
    with tempfile.TemporaryDirectory(prefix="keyledger-projections-") as tmp:
        path = Path(tmp) / "keyledger.db"
        scenario = Scenario(path, Keyring(MasterKey.generate()[0]))

        async def main() -> None:
            await scenario.start()
            try:
                await scenario.run(history)
                await check(scenario)
            finally:
                await scenario.ledger.stop()

        asyncio.run(main())


@given(history=histories, chunk=st.sampled_from((20_000, 1, 2, 7)))
def test_rebuild_equals_incremental(history: list[tuple[Any, ...]], chunk: int) -> None:
    async def check(scenario: Scenario) -> None:
        path = scenario.path
        head, positions = head_and_positions(path)
        assert positions == dict.fromkeys(PROJECTOR_NAMES, head)
        incremental = dump(path)
        assert len(incremental["audit"]) == head  # one audit row per event: the dump is not trivially empty
        assert len(incremental["api_keys"]) == len(scenario.keys)
        scribble(path)
        assert dump(path) != incremental
        original_chunk = sqlite_store._REBUILD_CHUNK
        sqlite_store._REBUILD_CHUNK = chunk  # rebuild in one transaction, or in many small ones
        try:
            await scenario.ledger.recorder.rebuild_projections()
        finally:
            sqlite_store._REBUILD_CHUNK = original_chunk
        assert dump(path) == incremental
        assert head_and_positions(path) == (head, dict.fromkeys(PROJECTOR_NAMES, head))
        assert await scenario.ledger.recorder.projection_positions() == dict.fromkeys(PROJECTOR_NAMES, head)

    run_scenario(history, check)


@settings(max_examples=25)
@given(history=histories)
def test_reopening_catches_up_projections_that_lost_their_rows(history: list[tuple[Any, ...]]) -> None:
    """A store whose projections were emptied (a new projector, an interrupted rebuild) catches up on open."""

    async def check(scenario: Scenario) -> None:
        path = scenario.path
        incremental = dump(path)
        head, _ = head_and_positions(path)
        await scenario.ledger.stop()
        with connect(path, read_only=False) as conn:
            for table in PROJECTION_TABLES:
                conn.execute(f"DELETE FROM {table}")
            conn.execute("UPDATE projection_positions SET position = 0")
        scenario.ledger = Ledger(SqliteRecorder(path, all_projectors()), scenario.keyring)
        await scenario.ledger.start()
        assert dump(path) == incremental
        assert head_and_positions(path) == (head, dict.fromkeys(PROJECTOR_NAMES, head))

    run_scenario(history, check)


async def test_progress_is_reported_up_to_the_head(ledger: Ledger) -> None:
    admin = await ledger.create_org(ADMIN, "acme")
    for i in range(5):
        await ledger.upsert_secret(ctx_for(admin), "acme", f"s{i}", b"v")
    head = await ledger.recorder.max_seq()
    seen: list[tuple[int, int]] = []
    await ledger.recorder.rebuild_projections(lambda done, total: seen.append((done, total)))
    assert seen and seen[-1] == (head, head)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_the_rotation_projection_rebuilds_to_the_same_rows(tmp_path: Path) -> None:
    """Every rotation event (configured, started, failed, rotated, removed, and a destroy) folds the same
    incrementally and in a rebuild."""
    from ledger.generator import GeneratorSpec, WebhookSpec
    from ledger.rotation import FailRotation, StartRotation
    from tests.audit_history import Clock, new_ledger

    path = tmp_path / "keyledger.db"
    clock = Clock()

    async def main() -> None:
        ledger = new_ledger(path, clock)
        await ledger.start()
        try:
            admin = await ledger.create_org(ADMIN, "acme")
            ctx = ctx_for(admin)
            for name in ("gen", "hook", "gone", "removed"):
                await ledger.upsert_secret(ctx, "acme", name, b"v")
            for name in ("gen", "gone", "removed"):
                await ledger.submit(ledger.configure_rotation_command(
                    ctx, "acme", name, interval_seconds=3600, rotator=GeneratorSpec(length=20, alphabet="hex")))
            await ledger.submit(ledger.configure_rotation_command(
                ctx, "acme", "hook", interval_seconds=600, rotator=WebhookSpec(url="http://127.0.0.1:9/rotate")))
            await ledger.submit(StartRotation(org="acme", ctx=ctx, name="gen", force=True))
            started = await ledger.submit(StartRotation(org="acme", ctx=ctx, name="hook", force=True))
            await ledger.submit(FailRotation(org="acme", ctx=ctx, name="hook", attempt=started.attempt,
                                             call_id=started.call_id, reason="webhook answered HTTP 500"))
            await ledger.submit(StartRotation(org="acme", ctx=ctx, name="hook", force=True))  # left in flight
            await ledger.submit(ledger.configure_rotation_command(ctx, "acme", "removed"))
            await ledger.delete_secret(ctx, "acme", "gone", purge=True)
            await ledger.upsert_secret(ctx, "acme", "gen", b"manual")
            incremental = dump(path)
            assert [row[1] for row in incremental["secret_rotation"]] == ["gen", "hook"]
            await ledger.recorder.rebuild_projections()
            assert dump(path) == incremental
        finally:
            await ledger.stop()

    asyncio.run(main())
