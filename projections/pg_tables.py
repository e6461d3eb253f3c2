"""The projections' tables on PostgreSQL: the SQLite projectors, their SQL said in PostgreSQL's dialect.

What each projector folds is defined once (projections/sqlite_tables.py); only the words differ:
`$n` placeholders, BIGINT for SQLite's 64-bit INTEGER, BYTEA for BLOB, GREATEST for the scalar MAX,
and binary ("C") collation for text, so that names sort as on SQLite.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from ledger.events import Event
from ledger.recorder import Projector, Statement
from ledger.records import StoredRecord
from projections.pg_reader import numbered
from projections.sqlite_tables import all_projectors as sqlite_projectors


@lru_cache(maxsize=256)
def to_postgres(sql: str) -> str:
    """One SQLite statement of the projectors in PostgreSQL's dialect."""
    sql = numbered(sql)
    sql = re.sub(r"\bINTEGER\b", "BIGINT", sql)
    sql = re.sub(r"\bBLOB\b", "BYTEA", sql)
    sql = re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', sql)
    sql = sql.replace("WITHOUT ROWID", "")
    return re.sub(r"\bMAX\(COALESCE\(", "GREATEST(COALESCE(", sql)


class PostgresProjector:
    """A projector of projections/sqlite_tables.py, speaking PostgreSQL."""

    def __init__(self, inner: Projector) -> None:
        self.inner = inner
        self.name = inner.name

    def schema(self) -> list[str]:
        return [to_postgres(sql) for sql in self.inner.schema()]

    def reset(self) -> list[str]:
        return [to_postgres(sql) for sql in self.inner.reset()]

    def drop(self) -> list[str]:
        return [to_postgres(sql) for sql in self.inner.drop()]

    def project(self, batch: Sequence[tuple[StoredRecord, Event]]) -> list[Statement]:
        return [Statement(to_postgres(s.sql), s.rows) for s in self.inner.project(batch)]


def all_projectors() -> list[Projector]:
    return [PostgresProjector(p) for p in sqlite_projectors()]
