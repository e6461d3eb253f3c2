"""The ledger's stateful model test (tests/test_ledger_stateful.py) on PostgreSQL: the same rules and
invariants, with the recorder, the projections and the checks on a fresh database per run."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from typing import Any

import asyncpg
from hypothesis import settings

from ledger.pg_store import PostgresRecorder
from ledger.recorder import Recorder
from ledger.records import StoredRecord
from projections.pg_reader import PostgresProjections
from projections.pg_tables import all_projectors
from tests.pg import DSN, needs_postgres
from tests.test_ledger_stateful import LedgerMachine


class PostgresLedgerMachine(LedgerMachine):
    def __init__(self) -> None:
        self.database = "kl_" + uuid.uuid4().hex[:16]
        asyncio.run(self._admin(f'CREATE DATABASE "{self.database}"'))
        self.dsn = DSN.rpartition("/")[0] + "/" + self.database
        super().__init__()

    @staticmethod
    async def _admin(sql: str) -> None:
        conn = await asyncpg.connect(DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def _make_recorder(self) -> Recorder:
        return PostgresRecorder(self.dsn, all_projectors())

    def _open_projections(self) -> Any:
        projections = PostgresProjections(self.dsn)
        self.run(projections.open())
        return projections

    def _close_projections(self) -> None:
        self.run(self.projections.close())

    def count_events(self, kind: str | None = None) -> int:
        recorder = self.ledger.recorder
        assert isinstance(recorder, PostgresRecorder)
        if kind is None:
            return int(self.run(recorder.pool.fetchval("SELECT COUNT(*) FROM events")))
        return int(self.run(recorder.pool.fetchval("SELECT COUNT(*) FROM events WHERE type = $1", kind)))

    def all_records(self) -> Iterable[StoredRecord]:
        return self.run(self.ledger.recorder.read_after(0, 1_000_000))  # type: ignore[no-any-return]

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))


# Half the SQLite run's examples (each example here creates and drops a database).
PostgresLedgerMachine.TestCase.settings = settings(stateful_step_count=30,
                                                   max_examples=max(1, settings.default.max_examples // 2))
TestPostgresLedgerStateful = needs_postgres(PostgresLedgerMachine.TestCase)
