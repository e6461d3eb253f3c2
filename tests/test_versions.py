"""Versions on both backends: the versions projection follows destroys, and a destroyed version is
never revealed (the ledger itself, below the HTTP API)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ledger.crypto import Keyring, MasterKey
from ledger.errors import NotFoundError
from ledger.keys import destroy_version
from ledger.pg_store import PostgresRecorder
from ledger.recorder import Recorder
from ledger.service import Ledger
from ledger.sqlite_store import SqliteRecorder
from projections import pg_tables, sqlite_tables
from projections.pg_reader import PostgresProjections
from projections.reader import Projections
from projections.sqlite_reader import SqliteProjections
from tests.api.conftest import BACKENDS
from tests.conftest import ADMIN, ctx_for
from tests.pg import fresh_database


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Ledger, Projections]]:
    async with contextlib.AsyncExitStack() as stack:
        recorder: Recorder
        projections: Projections
        if request.param == "sqlite":
            recorder = SqliteRecorder(tmp_path / "k.db", sqlite_tables.all_projectors())
            projections = SqliteProjections(tmp_path / "k.db")
        else:
            databases = fresh_database()
            dsn = await anext(databases)
            stack.push_async_callback(lambda: anext(databases, None))
            recorder = PostgresRecorder(dsn, pg_tables.all_projectors())
            projections = PostgresProjections(dsn)
        ledger = Ledger(recorder, Keyring(MasterKey.generate()[0]))
        await ledger.start()
        stack.push_async_callback(ledger.stop)
        await projections.open()
        stack.push_async_callback(projections.close)
        yield ledger, projections


async def test_a_destroyed_version_is_flagged_and_never_revealed(store: tuple[Ledger, Projections]) -> None:
    ledger, projections = store
    ctx = ctx_for(await ledger.create_org(ADMIN, "acme"))
    for value in (b"one", b"two", b"three"):
        await ledger.upsert_secret(ctx, "acme", "db", value)
    assert (await ledger.reveal_secret(ctx, "acme", "db", version=2)).value == b"two"
    await destroy_version(ledger, ctx, "acme", "db", 2)
    versions = await projections.versions("acme", "db")
    assert [(v.version, v.how, v.destroyed_at is not None) for v in versions] == [
        (1, "create", False), (2, "update", True), (3, "update", False)]
    with pytest.raises(NotFoundError, match="destroyed"):
        await ledger.reveal_secret(ctx, "acme", "db", version=2)
    assert (await ledger.reveal_secret(ctx, "acme", "db", version=1)).value == b"one"
    assert (await ledger.reveal_secret(ctx, "acme", "db")).value == b"three"
    assert await projections.versions("acme", "nothing") == []


async def test_a_version_made_by_a_rollback_or_a_restore_can_be_destroyed(store: tuple[Ledger, Projections]) -> None:
    ledger, projections = store
    ctx = ctx_for(await ledger.create_org(ADMIN, "acme"))
    await ledger.upsert_secret(ctx, "acme", "db", b"one")
    await ledger.upsert_secret(ctx, "acme", "db", b"two")
    await ledger.submit(ledger.rollback_secret_command(ctx, "acme", "db", 1))  # version 3
    await ledger.delete_secret(ctx, "acme", "db")
    await ledger.submit(ledger.restore_secret_command(ctx, "acme", "db"))  # version 4
    await destroy_version(ledger, ctx, "acme", "db", 3)
    assert [(v.version, v.how, v.destroyed_at is not None) for v in await projections.versions("acme", "db")] == [
        (1, "create", False), (2, "update", False), (3, "rollback", True), (4, "restore", False)]
    with pytest.raises(NotFoundError, match="destroyed"):
        await ledger.reveal_secret(ctx, "acme", "db", version=3)
    # Each copy has its own data key: version 4 (a copy of 3) and version 1 (3's source) still open.
    assert (await ledger.reveal_secret(ctx, "acme", "db")).value == b"one"
    assert (await ledger.reveal_secret(ctx, "acme", "db", version=1)).value == b"one"
