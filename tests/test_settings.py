"""Where the ledger lives: KEYLEDGER_DB's forms, and a PostgreSQL password kept out of messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.settings import Database, Settings
from ledger.crypto import MasterKey


@pytest.mark.parametrize(("text", "path", "dsn"), [
    ("keyledger.db", Path("keyledger.db"), None),
    ("sqlite:data/k.db", Path("data/k.db"), None),
    ("sqlite:///var/lib/k.db", Path("/var/lib/k.db"), None),
    ("postgresql://kl:pw@db:5432/kl", Path("keyledger.db"), "postgresql://kl:pw@db:5432/kl"),
    ("postgres://db/kl", Path("keyledger.db"), "postgres://db/kl"),
])
def test_keyledger_db_forms(text: str, path: Path, dsn: str | None) -> None:
    database = Database.parse(text)
    assert (database.path, database.dsn, database.is_postgres) == (path, dsn, dsn is not None)
    assert database.url() == (dsn or str(path))


@pytest.mark.parametrize("text", ["", "sqlite:", "mysql://db/kl", "sqlite:http://x"])
def test_other_locations_are_refused_with_the_option_named(text: str) -> None:
    with pytest.raises(ValueError, match="KEYLEDGER_DB"):
        Database.parse(text)


def test_a_postgresql_password_never_reaches_a_message() -> None:
    database = Database.parse("postgresql://keyledger:s3cret-pw@db.internal:5432/kl")
    assert str(database) == "postgresql://keyledger:***@db.internal:5432/kl"
    settings = Settings(db=database, master_key=MasterKey.generate()[0])
    assert "s3cret-pw" not in repr(settings) and "s3cret-pw" not in str(settings)
    assert Settings.from_env({"KEYLEDGER_DB": "postgresql://u:pw@h/d", "KEYLEDGER_MASTER_KEY":
                              MasterKey.generate()[1]}).db.dsn == "postgresql://u:pw@h/d"


def test_rotation_timings_come_from_the_environment_and_are_checked() -> None:
    key = MasterKey.generate()[0]
    env = {"KEYLEDGER_ROTATION_SWEEP_SECONDS": "5", "KEYLEDGER_WEBHOOK_TIMEOUT_SECONDS": "2.5"}
    settings = Settings.from_env(env, master_key=key)
    assert (settings.rotation_sweep_seconds, settings.webhook_timeout_seconds) == (5.0, 2.5)
    assert Settings.from_env({}, master_key=key).webhook_timeout_seconds == 10.0
    for variable, text in (("KEYLEDGER_ROTATION_SWEEP_SECONDS", "0"), ("KEYLEDGER_WEBHOOK_TIMEOUT_SECONDS", "ten"),
                           ("KEYLEDGER_WEBHOOK_TIMEOUT_SECONDS", "301")):
        with pytest.raises(ValueError, match=variable):
            Settings.from_env({variable: text}, master_key=key)


def test_the_dashboard_s_idle_timeout_comes_from_the_environment_in_minutes() -> None:
    key = MasterKey.generate()[0]
    assert Settings.from_env({}, master_key=key).session_idle_minutes == 30.0
    assert Settings.from_env({"KEYLEDGER_SESSION_IDLE_MINUTES": "5"}, master_key=key).session_idle_minutes == 5.0
    for text, message in (("0.5", "must be 1 to 10080 minutes"), ("nan", "must be 1 to 10080 minutes"),
                          ("soon", "expected a number of minutes")):
        with pytest.raises(ValueError, match=message):
            Settings.from_env({"KEYLEDGER_SESSION_IDLE_MINUTES": text}, master_key=key)
