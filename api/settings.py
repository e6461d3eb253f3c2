"""Configuration from the environment (and the CLI), checked once at start."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from api.ratelimit import RateLimit
from ledger.crypto import MasterKey

MAX_BODY_BYTES = 1024 * 1024
# Generous defaults: far above what an agent or a person needs, low enough to stop a runaway loop
# or a key-guessing flood. A rested caller may burst the whole minute's requests at once.
RATE_LIMIT_PER_KEY = RateLimit(requests=6000, period=60.0)
RATE_LIMIT_PER_ADDRESS = RateLimit(requests=12000, period=60.0)


class Settings(msgspec.Struct, kw_only=True):
    """Everything the app needs; `master_key` is parsed already so a bad key fails before serving."""

    db: Path = Path("keyledger.db")
    master_key: MasterKey
    previous_master_keys: list[MasterKey] = msgspec.field(default_factory=list)
    admin_token: str | None = None
    dev: bool = False
    synchronous: str = "FULL"
    max_body_bytes: int = MAX_BODY_BYTES
    dev_api_key: str | None = None  # printed at start in dev mode
    # After start, move everything built so far (the app, its OpenAPI models, the caches) out of the
    # cyclic collector's reach: full collections then take under a millisecond instead of ~30 ms,
    # which was the whole p99 of writes. The server sets it; tests, which build hundreds of apps in
    # one process, leave it off (frozen garbage is never freed).
    freeze_gc_after_start: bool = False
    rate_limit_per_key: RateLimit | None = RATE_LIMIT_PER_KEY  # None: off
    rate_limit_per_address: RateLimit | None = RATE_LIMIT_PER_ADDRESS

    def __repr__(self) -> str:
        return f"Settings(db={str(self.db)!r}, dev={self.dev}, master_key={self.master_key!r})"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Settings:
        env = dict(os.environ) if env is None else env
        previous = [
            MasterKey.parse(text, "KEYLEDGER_PREVIOUS_MASTER_KEYS")
            for text in env.get("KEYLEDGER_PREVIOUS_MASTER_KEYS", "").split(",")
            if text.strip()
        ]
        values: dict[str, object] = {
            "db": Path(env.get("KEYLEDGER_DB", "keyledger.db")),
            "admin_token": env.get("KEYLEDGER_ADMIN_TOKEN") or None,
            "previous_master_keys": previous,
        }
        for field, variable in (("rate_limit_per_key", "KEYLEDGER_RATE_LIMIT_PER_KEY"),
                                ("rate_limit_per_address", "KEYLEDGER_RATE_LIMIT_PER_ADDRESS")):
            if env.get(variable):
                values[field] = RateLimit.parse(env[variable], variable)
        values.update(overrides)
        if "master_key" not in values:
            values["master_key"] = MasterKey.parse(env.get("KEYLEDGER_MASTER_KEY"))
        return cls(**values)  # type: ignore[arg-type]
