"""The projections of one SQLite file, read through their own read-only connection.

Point lookups and pages are a few microseconds of SQLite work, cheaper than a hop to a worker
thread, so they run on the event loop's thread; WAL lets them proceed while the writer commits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from projections.reader import Projections, Row


class SqliteReadDatabase:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None

    def connect(self) -> None:
        self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
        self._conn.execute("PRAGMA query_only = ON")

    def disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def open(self) -> None:
        self.connect()

    async def close(self) -> None:
        self.disconnect()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("projections are not open")
        return self._conn

    async def one(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        row: Row | None = self.conn.execute(sql, params).fetchone()
        return row

    async def all(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        return self.conn.execute(sql, params).fetchall()


class SqliteProjections(Projections):
    """The projections of the SQLite file at `path`."""

    def __init__(self, path: str | Path) -> None:
        self.file = SqliteReadDatabase(path)
        super().__init__(self.file)

    def open_now(self) -> SqliteProjections:
        """Open without an event loop (opening a file needs none)."""
        self.file.connect()
        return self

    def close_now(self) -> None:
        self.file.disconnect()
