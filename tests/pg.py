"""Where the tests find PostgreSQL: KEYLEDGER_TEST_PG_DSN (`.ci/run` starts a throwaway cluster and
sets it). Unset: the PostgreSQL tests are skipped, and say so. Set but unreachable: they fail.
Each test gets a database of its own, created from the server's template and dropped afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import asyncpg
import pytest

from projections.pg_reader import numbered

T = TypeVar("T")

DSN = os.environ.get("KEYLEDGER_TEST_PG_DSN", "")
# CI (.ci/run) sets KEYLEDGER_REQUIRE_PG: there a missing DSN fails every PostgreSQL test instead.
REQUIRED = bool(os.environ.get("KEYLEDGER_REQUIRE_PG"))
needs_postgres = pytest.mark.skipif(not DSN and not REQUIRED,
                                    reason="KEYLEDGER_TEST_PG_DSN is not set (.ci/run sets it)")


def _with_database(dsn: str, database: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{database}"


async def fresh_database() -> AsyncIterator[str]:
    """A new empty database on the test server, dropped afterwards; its DSN."""
    if not DSN:
        raise RuntimeError("KEYLEDGER_REQUIRE_PG is set but KEYLEDGER_TEST_PG_DSN is not: no PostgreSQL to test on")
    name = "kl_" + uuid.uuid4().hex[:16]
    admin = await asyncpg.connect(DSN)  # unreachable when asked for: fail, not skip
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield _with_database(DSN, name)
    finally:
        admin = await asyncpg.connect(DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


class PgDsn(str):
    """A test database's DSN, where a test takes a SQLite file path (Settings accepts either)."""

    __slots__ = ()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even while an event loop runs in this thread."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


@contextlib.contextmanager
def pg_database() -> Iterator[PgDsn]:
    """A fresh database for a sync fixture."""
    databases = fresh_database()
    dsn = run_sync(anext(databases))
    try:
        yield PgDsn(dsn)
    finally:
        run_sync(_finish(databases))


async def _finish(databases: AsyncIterator[str]) -> None:
    async for _ in databases:
        pass


async def _fetch(dsn: str, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(row) for row in await conn.fetch(numbered(sql), *params)]
    finally:
        await conn.close()


def pg_query(dsn: str, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
    """A query in the SQLite dialect of the tests (`?` placeholders), run on PostgreSQL."""
    return run_sync(_fetch(dsn, sql, params))
