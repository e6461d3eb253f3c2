"""Master key rotation on both backends: values written before, during and after the rewrap all open;
a rewrap that dies halfway is finished by the next start; afterwards the old key alone opens nothing."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from api.app import check_master_key
from ledger import keys
from ledger.crypto import Keyring, MasterKey
from ledger.errors import CryptoError, MasterKeyError
from ledger.keys import resume_rewrap, rewrap_all
from ledger.pg_store import PostgresRecorder
from ledger.recorder import Recorder
from ledger.records import DataKeyRow
from ledger.service import Ledger
from ledger.sqlite_store import SqliteRecorder
from ledger.verify import verify_since_checkpoints
from projections import pg_tables, sqlite_tables
from tests.api.conftest import BACKENDS
from tests.conftest import ADMIN, ctx_for
from tests.pg import fresh_database

Opener = Callable[[Keyring], Ledger]


@pytest.fixture(params=BACKENDS)
async def make_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Ledgers on one database (a SQLite file or a fresh PostgreSQL database), each with its keyring."""
    async with contextlib.AsyncExitStack() as stack:
        dsn = None
        if request.param == "postgresql":
            databases = fresh_database()
            dsn = await anext(databases)
            stack.push_async_callback(lambda: anext(databases, None))

        def opener(keyring: Keyring) -> Ledger:
            recorder: Recorder
            if dsn is None:
                recorder = SqliteRecorder(tmp_path / "k.db", sqlite_tables.all_projectors())
            else:
                recorder = PostgresRecorder(dsn, pg_tables.all_projectors())
            return Ledger(recorder, keyring)

        yield opener


class Crash(Exception):
    """The process dies here (each chunk of the rewrap has committed on its own before it)."""


def intercept_chunks(recorder: Recorder, after_chunk: Callable[[int], Any]) -> None:
    """Call `after_chunk(n)` (awaited if it returns an awaitable) after the rewrap's n-th chunk commits."""
    replace = recorder.replace_data_keys
    count = 0

    async def replace_and_then(rows: Sequence[DataKeyRow]) -> None:
        nonlocal count
        await replace(rows)
        count += 1
        outcome = after_chunk(count)
        if hasattr(outcome, "__await__"):
            await outcome

    recorder.replace_data_keys = replace_and_then  # type: ignore[method-assign]


async def fill(ledger: Ledger, ctx: Any, prefix: str, count: int) -> dict[str, bytes]:
    values = {}
    for i in range(count):
        name, value = f"{prefix}_{i}", f"{prefix}-value-{i}".encode()
        await ledger.upsert_secret(ctx, "acme", name, value)
        values[name] = value
    return values


async def reveal_all(ledger: Ledger, ctx: Any, values: dict[str, bytes]) -> None:
    for name, value in values.items():
        assert (await ledger.reveal_secret(ctx, "acme", name)).value == value, name


async def test_values_written_before_during_and_after_the_rewrap_all_open(
    make_ledger: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys, "REWRAP_CHUNK", 4)
    (old, old_text), (new, new_text) = MasterKey.generate(), MasterKey.generate()
    ledger = make_ledger(Keyring(old))
    await ledger.start()
    try:
        ctx = ctx_for(await ledger.create_org(ADMIN, "acme"))
        values = await fill(ledger, ctx, "BEFORE", 12)
        during: dict[str, bytes] = {}

        async def write_during(chunk: int) -> None:
            during.update(await fill(ledger, ctx, f"DURING{chunk}", 2))
            await reveal_all(ledger, ctx, values)  # still serving, both keys open data

        intercept_chunks(ledger.recorder, write_during)
        seen: list[tuple[int, int]] = []
        moved = await rewrap_all(ledger, new, ADMIN, progress=lambda done, total: seen.append((done, total)))
        assert moved == 12 and seen[0] == (0, 12) and seen[-1][0] == 12
        assert [done for done, _ in seen] == sorted(done for done, _ in seen)
        after = await fill(ledger, ctx, "AFTER", 2)
        values |= during | after
        await reveal_all(ledger, ctx, values)
        assert {row.kek_id for row in await ledger.recorder.data_keys_after("", 10_000)} == {new.kek_id}
    finally:
        await ledger.stop()
    # The old key alone opens nothing, and a server with it refuses to start; the new key alone opens all.
    stale = make_ledger(Keyring(old))
    await stale.start()
    try:
        with pytest.raises(MasterKeyError, match="not configured"):
            await check_master_key(stale)
        for row in await stale.recorder.data_keys_after("", 10_000):
            with pytest.raises(CryptoError):
                stale.keyring.unwrap(row.id, row.kek_id, row.wrapped)
    finally:
        await stale.stop()
    rotated = make_ledger(Keyring(new))
    await rotated.start()
    try:
        assert await check_master_key(rotated) is False
        await reveal_all(rotated, ctx, values)
        events = [r for r in await rotated.recorder.read_after(0, 10_000) if r.type == "master_key.rotated"]
        assert len(events) == 1 and old.kek_id.encode() in events[0].body and new.kek_id.encode() in events[0].body
        everything = b"".join(r.body for r in await rotated.recorder.read_after(0, 10_000))
        assert old_text.encode() not in everything and new_text.encode() not in everything  # ids, never keys
    finally:
        await rotated.stop()


async def test_a_rewrap_killed_halfway_is_finished_by_the_next_start(
    make_ledger: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys, "REWRAP_CHUNK", 3)
    old, new = MasterKey.generate()[0], MasterKey.generate()[0]
    ledger = make_ledger(Keyring(old))
    await ledger.start()
    ctx = ctx_for(await ledger.create_org(ADMIN, "acme"))
    values = await fill(ledger, ctx, "S", 10)
    await ledger.checkpoint("acme")  # an idle org's checkpoint, signed by the old key

    def crash(chunk: int) -> None:
        if chunk == 2:
            raise Crash

    intercept_chunks(ledger.recorder, crash)
    with pytest.raises(Crash):
        await rewrap_all(ledger, new, ADMIN)
    await ledger.stop()
    kek_ids = [row.kek_id for row in await data_keys(make_ledger, Keyring(new, previous=[old]))]
    assert kek_ids.count(new.kek_id) == 6 and kek_ids.count(old.kek_id) == 4  # two chunks committed

    # Restarted with the new key current and the old one previous, as the operator is told to.
    resumed = make_ledger(Keyring(new, previous=[old]))
    await resumed.start()
    try:
        assert await check_master_key(resumed) is True
        assert await resume_rewrap(resumed) == 4
        assert await resume_rewrap(resumed) == 0  # nothing left: a second start does nothing
        await reveal_all(resumed, ctx, values)
    finally:
        await resumed.stop()
    alone = make_ledger(Keyring(new))
    await alone.start()
    try:
        await reveal_all(alone, ctx, values)
        # Every org's checkpoint was signed again by the new key, the idle org's included.
        assert (await verify_since_checkpoints(alone.recorder, Keyring(new).signing_public_keys)).ok
        checkpoint = await alone.recorder.latest_checkpoint("acme")
        assert checkpoint is not None and checkpoint.public_key == new.signing_key().public_key
    finally:
        await alone.stop()


async def data_keys(make_ledger: Opener, keyring: Keyring) -> list[DataKeyRow]:
    ledger = make_ledger(keyring)
    await ledger.recorder.open()
    try:
        return await ledger.recorder.data_keys_after("", 10_000)
    finally:
        await ledger.recorder.close()
