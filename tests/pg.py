"""Where the tests find PostgreSQL: KEYLEDGER_TEST_PG_DSN (`.ci/run` starts a throwaway cluster and
sets it). Unset: the PostgreSQL tests are skipped, and say so. Set but unreachable: they fail.
Each test gets a database of its own, created from the server's template and dropped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

DSN = os.environ.get("KEYLEDGER_TEST_PG_DSN", "")
needs_postgres = pytest.mark.skipif(not DSN, reason="KEYLEDGER_TEST_PG_DSN is not set (.ci/run sets it)")


def _with_database(dsn: str, database: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{database}"


async def fresh_database() -> AsyncIterator[str]:
    """A new empty database on the test server, dropped afterwards; its DSN."""
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
