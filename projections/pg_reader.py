"""The projections on PostgreSQL, read through a pool: the queries of projections/reader.py with
`$n` placeholders.

Every process's appends update these tables in their transaction, and reads go to the tables (no
cache follows the writer here): a client that wrote through one process reads its write through
any other.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import asyncpg

from projections.reader import Projections, Row


@lru_cache(maxsize=512)
def numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1, $2, ...` (the queries have no `?` in literals)."""
    counter = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


class PostgresReadDatabase:
    def __init__(self, dsn: str, *, pool_size: int = 4) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self.pool_size)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("projections are not open")
        return self._pool

    async def one(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        row = await self.pool.fetchrow(numbered(sql), *without_nul(params))
        return None if row is None else tuple(row)

    async def all(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        return [tuple(r) for r in await self.pool.fetch(numbered(sql), *without_nul(params))]


def without_nul(params: Sequence[object]) -> list[object]:
    """PostgreSQL text cannot hold NUL, which a query string can (`?secret=a%00`); SQLite compares it.

    Stored names, ids and actions never contain a control character (the commands refuse them), so
    U+0001 in place of NUL matches, and sorts against, every stored value exactly as NUL does: the
    same answers as on SQLite (nothing equal; cursors ordered the same), not a 500."""
    return [p.replace("\x00", "\x01") if isinstance(p, str) and "\x00" in p else p for p in params]


class PostgresProjections(Projections):
    """The projections of the PostgreSQL database at `dsn`."""

    def __init__(self, dsn: str, *, pool_size: int = 4) -> None:
        super().__init__(PostgresReadDatabase(dsn, pool_size=pool_size))
