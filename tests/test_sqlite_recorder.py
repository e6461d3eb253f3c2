"""The SQLite recorder: the shared contract, plus what only SQLite has to prove."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
import types
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ledger import sqlite_store
from ledger.errors import StoreLockedError
from ledger.recorder import Projector, Recorder
from ledger.sqlite_store import SqliteRecorder
from projections.sqlite_tables import PROJECTION_TABLES, all_projectors
from tests.api.conftest import order_of
from tests.contracts.recorder import RecorderContract, org_event


class TestSqliteRecorder(RecorderContract):
    def make_recorder(self, tmp_path: Path, projectors: list[Projector]) -> Recorder:
        return SqliteRecorder(tmp_path / "contract.db", projectors)

    def projectors(self) -> list[Projector]:
        return all_projectors()

    async def projection_row_count(self, recorder: Recorder) -> int:
        assert isinstance(recorder, SqliteRecorder)
        rows = await recorder.read_connection.execute_fetchall("SELECT COUNT(*) FROM audit")
        return int(next(iter(rows))[0])

    def store_module(self) -> types.ModuleType:
        return sqlite_store

    def fail_next_commit(self, recorder: Recorder) -> None:
        assert isinstance(recorder, SqliteRecorder)
        recorder.fail_next_commits = 1

    @contextlib.asynccontextmanager
    async def other_recorder(self, tmp_path: Path, projectors: list[Projector]) -> AsyncIterator[Recorder]:
        recorder = SqliteRecorder(tmp_path / "other.db", projectors)
        await recorder.open()
        try:
            yield recorder
        finally:
            await recorder.close()

    async def projection_rows(self, recorder: Recorder) -> dict[str, list[tuple[object, ...]]]:
        assert isinstance(recorder, SqliteRecorder)
        conn = recorder.read_connection
        return {table: [tuple(row) for row in
                        await conn.execute_fetchall(f"SELECT * FROM {table} ORDER BY {order_of(table)}")]
                for table in PROJECTION_TABLES}


async def test_wal_and_full_synchronous(tmp_path: Path) -> None:
    recorder = SqliteRecorder(tmp_path / "k.db")
    await recorder.open()
    try:
        conn = recorder.write_connection
        mode = await asyncio.to_thread(lambda: conn.execute("PRAGMA journal_mode").fetchone())
        sync = await asyncio.to_thread(lambda: conn.execute("PRAGMA synchronous").fetchone())
        assert mode is not None and mode[0] == "wal"
        assert sync is not None and sync[0] == 2  # FULL
    finally:
        await recorder.close()


async def test_second_process_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    recorder = SqliteRecorder(path)
    await recorder.open()
    try:
        code = (
            "import asyncio, sys\n"
            "from ledger.sqlite_store import SqliteRecorder\n"
            "from ledger.errors import StoreLockedError\n"
            "try:\n"
            f"    asyncio.run(SqliteRecorder({str(path)!r}).open())\n"
            "except StoreLockedError as exc:\n"
            "    print(exc); sys.exit(3)\n"
        )
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 3, done.stderr
        assert "already open for writing by another process" in done.stdout
        # The same process opening it twice is refused too.
        with pytest.raises(StoreLockedError):
            await SqliteRecorder(path).open()
    finally:
        await recorder.close()
    # Once released, it opens again.
    again = SqliteRecorder(path)
    await again.open()
    await again.close()


async def test_the_database_refuses_updates_and_deletes_of_events(tmp_path: Path) -> None:
    recorder = SqliteRecorder(tmp_path / "k.db", all_projectors())
    await recorder.open()
    event = org_event("a")
    from tests.contracts.recorder import pending

    await recorder.append([pending(event)], [event])
    await recorder.close()
    conn = sqlite3.connect(tmp_path / "k.db")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE events SET type = 'x'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM events")
    conn.close()
