"""The PostgreSQL recorder: the shared contract, plus what only a shared server has to prove."""

from __future__ import annotations

import contextlib
import types
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ledger import pg_store
from ledger.pg_store import PostgresRecorder
from ledger.recorder import Projector, Recorder
from projections.pg_tables import all_projectors
from projections.sqlite_tables import PROJECTION_TABLES
from tests.api.conftest import order_of
from tests.contracts.recorder import RecorderContract
from tests.pg import fresh_database, needs_postgres


@needs_postgres
class TestPostgresRecorder(RecorderContract):
    @pytest.fixture(autouse=True)
    async def database(self) -> AsyncIterator[None]:
        async for dsn in fresh_database():
            self.dsn = dsn
            yield

    def make_recorder(self, tmp_path: Path, projectors: list[Projector]) -> Recorder:
        return PostgresRecorder(self.dsn, projectors)

    def projectors(self) -> list[Projector]:
        return all_projectors()

    async def projection_row_count(self, recorder: Recorder) -> int:
        assert isinstance(recorder, PostgresRecorder)
        return int(await recorder.pool.fetchval("SELECT COUNT(*) FROM audit"))

    def store_module(self) -> types.ModuleType:
        return pg_store

    def fail_next_commit(self, recorder: Recorder) -> None:
        assert isinstance(recorder, PostgresRecorder)
        recorder.fail_next_commits = 1

    @contextlib.asynccontextmanager
    async def other_recorder(self, tmp_path: Path, projectors: list[Projector]) -> AsyncIterator[Recorder]:
        async for dsn in fresh_database():
            recorder = PostgresRecorder(dsn, projectors)
            await recorder.open()
            try:
                yield recorder
            finally:
                await recorder.close()

    async def projection_rows(self, recorder: Recorder) -> dict[str, list[tuple[object, ...]]]:
        assert isinstance(recorder, PostgresRecorder)
        return {table: [tuple(row) for row in
                        await recorder.pool.fetch(f"SELECT * FROM {table} ORDER BY {order_of(table)}")]
                for table in PROJECTION_TABLES}


@needs_postgres
async def test_an_own_append_is_seen_before_its_notification_comes_back() -> None:
    # The NOTIFY of a process's own append arrives whenever the server sends it; until then the
    # listener fast path must not answer "nothing changed" (this raced in CI once).
    from tests.contracts.recorder import org_event, pending

    async for dsn in fresh_database():
        recorder = PostgresRecorder(dsn, all_projectors())
        await recorder.open()
        try:
            assert recorder._listener is not None
            await recorder._listener.remove_listener(pg_store.NOTIFY_CHANNEL, recorder._on_notify)
            events = [org_event("a")]
            await recorder.append([pending(e) for e in events], events)
            assert await recorder.changed_streams(0) == (1, {"org:a"})
        finally:
            await recorder.close()
