"""An importable ASGI app for servers that load apps by name (granian): settings from the environment."""

from __future__ import annotations

import os

import msgspec

from api.app import create_app
from api.server import dev_settings
from api.settings import Database, Settings


def _settings() -> Settings:
    extra = msgspec.json.decode(os.environ.get("KEYLEDGER_SETTINGS_JSON", "{}").encode(), type=dict[str, str])
    db = Database.parse(extra.get("db") or os.environ.get("KEYLEDGER_DB") or "keyledger.db")
    if extra.get("dev"):
        return dev_settings(db)
    return Settings.from_env(db=db, synchronous=extra.get("synchronous", "FULL"))


app = create_app(msgspec.structs.replace(_settings(), freeze_gc_after_start=True))
