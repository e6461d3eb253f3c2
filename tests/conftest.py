"""Shared fixtures: real SQLite files in a temporary folder, never mocks of the database."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from ledger.commands import Context, CreatedKey
from ledger.crypto import Keyring, MasterKey
from ledger.events import Actor
from ledger.service import Ledger
from ledger.sqlite_store import SqliteRecorder
from projections.sqlite_tables import all_projectors

# CI size by default; KEYLEDGER_HYPOTHESIS_PROFILE=soak for a long run (2,000 examples a test, or
# KEYLEDGER_HYPOTHESIS_EXAMPLES; scripts/soak/suites.py sets both).
settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile(
    "soak", max_examples=int(os.environ.get("KEYLEDGER_HYPOTHESIS_EXAMPLES", "2000")), deadline=None,
    suppress_health_check=list(HealthCheck),
)
settings.load_profile(os.environ.get("KEYLEDGER_HYPOTHESIS_PROFILE", "ci"))

ADMIN = Context(actor=Actor(key_id="admin", label="admin token", kind="admin"))


def ctx_for(key: CreatedKey) -> Context:
    """A command context acting as the given API key."""
    return Context(actor=Actor(key_id=key.key_id, label=key.label, kind="api_key"))


@pytest.fixture
def master_key() -> MasterKey:
    return MasterKey.generate()[0]


@pytest.fixture
def keyring(master_key: MasterKey) -> Keyring:
    return Keyring(master_key)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "keyledger.db"


@pytest.fixture
async def ledger(db_path: Path, keyring: Keyring) -> AsyncIterator[Ledger]:
    led = Ledger(SqliteRecorder(db_path, all_projectors()), keyring)
    await led.start()
    try:
        yield led
    finally:
        await led.stop()
