"""Queries on the PostgreSQL projections (the same answers as projections/sqlite_reader.py).

Reads go straight to the tables, which every process's appends update in their transaction: a
client that wrote through one process reads its write through any other. Nothing is cached yet.
So far: the secrets and keys views that the ledger's model test reads; the audit and compliance
queries follow with the API on PostgreSQL.
"""

from __future__ import annotations

import asyncpg

from projections.sqlite_reader import KEY_COLUMNS, SECRET_COLUMNS, key_of_row, secret_of_row
from projections.views import ApiKeyRow, SecretMeta


class PostgresProjections:
    """Read access to the projection tables of one PostgreSQL database."""

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

    async def key_by_sha256(self, key_sha256: str) -> tuple[ApiKeyRow, str] | None:
        row = await self.pool.fetchrow(f"SELECT {KEY_COLUMNS}, key_sha256 FROM api_keys WHERE key_sha256 = $1",
                                       key_sha256)
        return None if row is None else (key_of_row(tuple(row)), str(row[8]))

    async def get_key(self, org: str, key_id: str) -> ApiKeyRow | None:
        row = await self.pool.fetchrow(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = $1 AND org = $2",
                                       key_id, org)
        return None if row is None else key_of_row(tuple(row))

    async def list_keys(self, org: str) -> list[ApiKeyRow]:
        rows = await self.pool.fetch(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE org = $1 ORDER BY created_at, key_id", org
        )
        return [key_of_row(tuple(r)) for r in rows]

    async def get_secret(self, org: str, name: str) -> SecretMeta | None:
        row = await self.pool.fetchrow(
            f"SELECT {SECRET_COLUMNS} FROM secrets WHERE org = $1 AND name = $2 AND deleted = 0", org, name
        )
        return None if row is None else secret_of_row(tuple(row))

    async def list_secrets(
        self,
        org: str,
        *,
        after: str | None = None,
        limit: int = 100,
        scope: str | None = None,
        category: str | None = None,
    ) -> list[SecretMeta]:
        """A page of live secrets ordered by name (binary order: the columns are COLLATE "C")."""
        where = ["org = $1", "deleted = 0"]
        params: list[object] = [org]
        for column, value in (("name >", after), ("scope =", scope), ("category =", category)):
            if value is not None:
                params.append(value)
                where.append(f"{column} ${len(params)}")
        params.append(limit)
        rows = await self.pool.fetch(
            f"SELECT {SECRET_COLUMNS} FROM secrets WHERE {' AND '.join(where)} ORDER BY name LIMIT ${len(params)}",
            *params,
        )
        return [secret_of_row(tuple(r)) for r in rows]
