"""Configuration from the environment (and the CLI), checked once at start."""

from __future__ import annotations

import os
import re
from pathlib import Path

import msgspec

from api.ratelimit import RateLimit
from ledger.crypto import MasterKey

MAX_BODY_BYTES = 1024 * 1024
# Generous defaults: far above what an agent or a person needs, low enough to stop a runaway loop
# or a key-guessing flood. A rested caller may burst the whole minute's requests at once.
RATE_LIMIT_PER_KEY = RateLimit(requests=6000, period=60.0)
RATE_LIMIT_PER_ADDRESS = RateLimit(requests=12000, period=60.0)


class Database(msgspec.Struct, frozen=True):
    """Where the ledger lives: a SQLite file (the default) or a PostgreSQL database."""

    path: Path = Path("keyledger.db")
    dsn: str | None = None  # postgresql://...: several processes may share it

    @classmethod
    def parse(cls, text: str, option: str = "KEYLEDGER_DB") -> Database:
        """`postgresql://...` (or `postgres://...`), `sqlite:FILE`, `sqlite:///abs/FILE`, or a file path."""
        if text.startswith(("postgresql://", "postgres://")):
            return cls(dsn=text)
        path = text.removeprefix("sqlite:")
        if path.startswith("//"):
            path = path[2:]
        if not path.strip() or "://" in path:
            raise ValueError(f"{option}: expected a SQLite file path, sqlite:FILE, or a postgresql:// URL")
        return cls(path=Path(path))

    @property
    def is_postgres(self) -> bool:
        return self.dsn is not None

    def __str__(self) -> str:
        """For messages: the file, or the URL without its password."""
        if self.dsn is None:
            return str(self.path)
        return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", self.dsn)

    def url(self) -> str:
        """The full location (with a PostgreSQL password: pass it to child processes only)."""
        return self.dsn if self.dsn is not None else str(self.path)


class Settings(msgspec.Struct, kw_only=True):
    """Everything the app needs; `master_key` is parsed already so a bad key fails before serving."""

    db: Database = Database()
    master_key: MasterKey
    previous_master_keys: list[MasterKey] = msgspec.field(default_factory=list)
    admin_token: str | None = None
    dev: bool = False
    synchronous: str = "FULL"  # SQLite
    pool_size: int = 8  # PostgreSQL connections per pool (the writer's, and the readers')
    max_body_bytes: int = MAX_BODY_BYTES
    dev_api_key: str | None = None  # printed at start in dev mode
    # After start, move everything built so far (the app, its OpenAPI models, the caches) out of the
    # cyclic collector's reach: full collections then take under a millisecond instead of ~30 ms,
    # which was the whole p99 of writes. The server sets it; tests, which build hundreds of apps in
    # one process, leave it off (frozen garbage is never freed).
    freeze_gc_after_start: bool = False
    rate_limit_per_key: RateLimit | None = RATE_LIMIT_PER_KEY  # None: off
    rate_limit_per_address: RateLimit | None = RATE_LIMIT_PER_ADDRESS
    destroy_sweep_seconds: float = 60.0  # how often deleted secrets past their recovery window are destroyed
    rotation_sweep_seconds: float = 60.0  # how often secrets due for rotation are rotated
    webhook_timeout_seconds: float = 10.0  # a rotation webhook's whole exchange
    webhook_max_answer_bytes: int = 6 * 65_536 + 1024  # an answer, at most (JSON escapes a byte in up to 6)
    session_idle_minutes: float = 30.0  # a dashboard session ends after this long without a request

    def __post_init__(self) -> None:
        if not isinstance(self.db, Database):  # a bare path, as tests and scripts pass it
            self.db = Database.parse(str(self.db))

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
            "db": Database.parse(env.get("KEYLEDGER_DB") or "keyledger.db"),
            "admin_token": env.get("KEYLEDGER_ADMIN_TOKEN") or None,
            "previous_master_keys": previous,
        }
        for field, variable in (("rate_limit_per_key", "KEYLEDGER_RATE_LIMIT_PER_KEY"),
                                ("rate_limit_per_address", "KEYLEDGER_RATE_LIMIT_PER_ADDRESS")):
            if env.get(variable):
                values[field] = RateLimit.parse(env[variable], variable)
        for field, variable, low, high, unit in (
            ("rotation_sweep_seconds", "KEYLEDGER_ROTATION_SWEEP_SECONDS", 1.0, 86_400.0, "seconds"),
            ("webhook_timeout_seconds", "KEYLEDGER_WEBHOOK_TIMEOUT_SECONDS", 0.1, 300.0, "seconds"),
            ("session_idle_minutes", "KEYLEDGER_SESSION_IDLE_MINUTES", 1.0, 7 * 24 * 60.0, "minutes"),
        ):
            if env.get(variable):
                values[field] = _number(env[variable], variable, low, high, unit)
        values.update(overrides)
        if "master_key" not in values:
            values["master_key"] = MasterKey.parse(env.get("KEYLEDGER_MASTER_KEY"))
        return cls(**values)  # type: ignore[arg-type]


def _number(text: str, variable: str, low: float, high: float, unit: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{variable}: expected a number of {unit}, got {text[:40]!r}") from None
    if not low <= number <= high:  # NaN fails this too
        raise ValueError(f"{variable}: must be {low:g} to {high:g} {unit}")
    return number
