"""The reader's caches (live secrets' metadata, active keys) never answer what a fresh query would not.

The reader follows the writer: each commit tells it what it touched before any caller is answered.
After every step of a generated history (batches, refused commands, failing commits, restarts) the
cached answers equal those of a reader that caches nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import given, settings

from ledger.crypto import Keyring, MasterKey
from projections.sqlite_reader import SqliteProjections
from projections.views import ApiKeyRow
from tests.test_projections import NAMES, ORGS, Scenario, histories


def without_last_use(found: tuple[ApiKeyRow, str] | None) -> tuple[ApiKeyRow, str] | None:
    """Authentication's view of a key: `last_used_at` moves with every use and is not part of it."""
    return None if found is None else (msgspec.structs.replace(found[0], last_used_at=None), found[1])


async def check_history(path: Path, history: list[tuple[Any, ...]]) -> None:
    scenario = Scenario(path, Keyring(MasterKey.generate()[0]))
    await scenario.start()
    cached, fresh = SqliteProjections(path), SqliteProjections(path)
    cached.open_now()
    fresh.open_now()
    cached.follow(scenario.ledger.writer)
    try:
        for op in history:
            if op[0] == "restart":  # a new ledger (and writer): the server builds a new reader too
                await scenario.run([op])
                cached.close_now()
                cached = SqliteProjections(path)
                cached.open_now()
                cached.follow(scenario.ledger.writer)
            else:
                # Warm the cache first, so that a stale entry would survive into the comparison.
                for org in ORGS:
                    for name in NAMES:
                        await cached.get_secret(org, name)
                await scenario.run([op])
            for org in ORGS:
                for name in NAMES:
                    assert await cached.get_secret(org, name) == await fresh.get_secret(org, name), (org, name)
            for key in scenario.keys:
                digest = hashlib.sha256(key.api_key.encode()).hexdigest()
                assert without_last_use(await cached.key_by_sha256(digest)) == without_last_use(
                    await fresh.key_by_sha256(digest)
                )
    finally:
        cached.close_now()
        fresh.close_now()
        await scenario.ledger.stop()


@settings(deadline=None)
@given(histories)
def test_cached_reads_equal_fresh_reads_after_every_step(history: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(check_history(Path(tmp) / "keyledger.db", history))


def test_a_reader_that_does_not_follow_a_writer_caches_nothing(tmp_path: Path) -> None:
    async def run() -> None:
        path = tmp_path / "keyledger.db"
        scenario = Scenario(path, Keyring(MasterKey.generate()[0]))
        await scenario.start()
        reader = SqliteProjections(path)
        reader.open_now()
        try:
            ctx, org = scenario.actor(0)
            await scenario.ledger.upsert_secret(ctx, org, "db", b"one")
            assert (await reader.get_secret(org, "db")).version == 1  # type: ignore[union-attr]
            # Another writer (here: one the reader does not follow) changes the secret.
            await scenario.ledger.upsert_secret(ctx, org, "db", b"two")
            assert (await reader.get_secret(org, "db")).version == 2  # type: ignore[union-attr]
        finally:
            reader.close_now()
            await scenario.ledger.stop()

    asyncio.run(run())
