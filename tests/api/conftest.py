"""Fixtures for the HTTP API tests: a real app on a temporary SQLite file, driven through Litestar's
sync TestClient (its lifespan starts the ledger), plus helpers to make orgs, keys and secrets.

Litestar's TestClientTransport percent-decodes the request path twice (httpx's `URL.path` is
decoded already and the transport unquotes it again), unlike uvicorn, granian or httpx's own
ASGI transport (the same bug as starlette#2587). A secret named `a%41`, requested as
`/v1/secrets/a%2541`, would reach the app as `aA`. The client here decodes the raw path exactly
once, as a real server does.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import asyncpg
import httpx
import pytest
from litestar import Litestar
from litestar.testing import TestClient
from litestar.testing.transport import TestClientTransport

from api.app import create_app
from api.settings import Settings
from ledger.crypto import MasterKey
from ledger.pg_store import PostgresRecorder
from ledger.recorder import Recorder
from ledger.sqlite_store import SqliteRecorder, iter_rows
from ledger.verify import VerifyReport, verify_recorder, verify_rows
from projections import pg_tables, sqlite_tables
from tests.pg import PgDsn, needs_postgres, pg_database, pg_query, run_sync

ADMIN_TOKEN = "test-admin-token"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PROBLEM_JSON = "application/problem+json"


class SingleDecodeTransport(TestClientTransport):  # type: ignore[type-arg]
    """Litestar's transport, but the ASGI `path` is the raw path decoded once (as servers do)."""

    def parse_request(self, request: httpx.Request) -> dict[str, Any]:
        scope: dict[str, Any] = super().parse_request(request)
        scope["path"] = unquote(request.url.raw_path.split(b"?", 1)[0].decode("ascii"))
        return scope


class Clock:
    """The server's clock: real time plus an offset the test moves forward (never back)."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self) -> int:
        return time.time_ns() + self.offset

    def advance(self, ns: int) -> None:
        self.offset += ns


def make_client(app: Litestar) -> TestClient[Litestar]:
    client: TestClient[Litestar] = TestClient(app)
    client._transport = SingleDecodeTransport(client=client, raise_server_exceptions=True)  # type: ignore[assignment]
    return client


def secret_path(name: str, suffix: str = "") -> str:
    """`/v1/secrets/<name>` with every reserved character of the name percent-encoded."""
    return f"/v1/secrets/{quote(name, safe='')}{suffix}"


@dataclass(frozen=True)
class Key:
    org: str
    key_id: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


# Every API test runs on both storage backends (PostgreSQL when KEYLEDGER_TEST_PG_DSN is set).
BACKENDS = ["sqlite", pytest.param("postgresql", marks=needs_postgres)]
sqlite_only = pytest.mark.parametrize("db_file", ["sqlite"], indirect=True)


@pytest.fixture(params=BACKENDS)
def db_file(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path | PgDsn]:
    """The test's database: a SQLite file, or a fresh PostgreSQL database (its DSN)."""
    if request.param == "sqlite":
        yield tmp_path / "keyledger.db"
        return
    with pg_database() as dsn:
        yield dsn


@pytest.fixture
def settings(db_file: Path | PgDsn) -> Settings:
    return Settings(db=db_file, master_key=MasterKey.generate()[0], admin_token=ADMIN_TOKEN)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(settings: Settings, clock: Clock) -> Litestar:
    """The app on the test's clock: real time until the test moves it forward (expiry, refresh, rotation)."""
    return create_app(settings, clock=clock)


@pytest.fixture
def client(app: Litestar) -> Iterator[TestClient[Litestar]]:
    with make_client(app) as test_client:
        yield test_client


def create_org(client: TestClient[Litestar], org: str) -> Key:
    response = client.post("/v1/admin/orgs", json={"org": org}, headers=ADMIN_HEADERS)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["org"] == org
    return Key(org=org, key_id=body["key_id"], api_key=body["api_key"])


def create_key(
    client: TestClient[Litestar], admin: Key, *, role: str = "member", scope: str = "all", label: str = "test key"
) -> Key:
    response = client.post("/v1/keys", json={"label": label, "role": role, "scope": scope}, headers=admin.headers)
    assert response.status_code == 201, response.text
    body = response.json()
    return Key(org=admin.org, key_id=body["key_id"], api_key=body["api_key"])


def upsert(
    client: TestClient[Litestar], key: Key, name: str, value: str = "v", *, expect: int | None = None, **fields: Any
) -> httpx.Response:
    response = client.post("/v1/secrets", json={"name": name, "value": value, **fields}, headers=key.headers)
    if expect is not None:
        assert response.status_code == expect, response.text
    return response


@pytest.fixture
def acme(client: TestClient[Litestar]) -> Key:
    """The admin key of org `acme`, the org's first key."""
    return create_org(client, "acme")


@pytest.fixture
def globex(client: TestClient[Litestar]) -> Key:
    """The admin key of a second org."""
    return create_org(client, "globex")


def query(db_file: Path | PgDsn, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the database directly, on a connection of its own (SQLite's WAL lets it read while the app
    runs); SQL in SQLite's dialect, translated for PostgreSQL."""
    if isinstance(db_file, PgDsn):
        return pg_query(db_file, sql, params)
    conn = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def max_seq(db_file: Path | PgDsn) -> int:
    return int(query(db_file, "SELECT COALESCE(MAX(seq), 0) FROM events")[0][0])


def assert_problem(response: httpx.Response, status: int, *detail_parts: str) -> dict[str, Any]:
    """An RFC 9457 problem of that status whose detail contains each of `detail_parts`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    body: dict[str, Any] = response.json()
    assert set(body) >= {"type", "title", "status", "detail"}, body
    assert body["status"] == status
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    for part in detail_parts:
        assert part in body["detail"], body["detail"]
    return body


def events_after(db_file: Path | PgDsn, seq: int) -> list[dict[str, Any]]:
    """The decoded bodies of the events after `seq`, in order (each has its `type` tag)."""
    return [
        json.loads(body) for (body,) in query(db_file, "SELECT body FROM events WHERE seq > ? ORDER BY seq", (seq,))
    ]


def audit_after(db_file: Path | PgDsn, seq: int) -> list[dict[str, Any]]:
    """The audit projection's rows after `seq`, as dicts."""
    columns = (
        "seq",
        "org",
        "action",
        "actor_key_id",
        "actor_kind",
        "secret",
        "version",
        "request_id",
        "client_address",
        "user_agent",
        "outcome",
        "detail",
    )
    rows = query(db_file, f"SELECT {', '.join(columns)} FROM audit WHERE seq > ? ORDER BY seq", (seq,))
    return [dict(zip(columns, row, strict=True)) for row in rows]


# -- the same checks on either backend -------------------------------------------------------------

TABLES = ("events", "data_keys", "checkpoints", "idempotency", "secrets", "api_keys", "audit", "secret_versions",
          "ssh_keys", "dashboard_sessions", "members", "sso_settings", "connected_apps", "projection_positions")
PROJECTION_TABLES = ("secrets", "api_keys", "audit", "secret_versions", "ssh_keys", "dashboard_sessions",
                     "members", "sso_settings", "connected_apps", "projection_positions")


def order_of(table: str) -> str:
    """A total order of a table's rows by its leading columns (its primary key)."""
    return "1, 2, 3" if table == "secret_versions" else "1, 2"


def table_dump(db: Path | PgDsn, tables: tuple[str, ...] = TABLES) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables, in a stable order."""
    return {table: query(db, f"SELECT * FROM {table} ORDER BY {order_of(table)}") for table in tables}


def stored_bytes(db: Path | PgDsn) -> dict[str, bytes]:
    """What the database keeps, as bytes to search: SQLite's files (main, -wal, -shm), or each
    PostgreSQL table's rows as text (BYTEA shows as hex, which the canary search covers)."""
    if isinstance(db, PgDsn):
        tables = [name for (name,) in query(db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        return {
            table: "\n".join(str(row[0]) for row in query(db, f"SELECT t::text FROM {table} t")).encode()
            for table in tables
        }
    return {path.name: path.read_bytes() for path in sorted(db.parent.glob(db.name + "*")) if path.is_file()}


def storage_fault(recorder: Recorder, message: str) -> Exception:
    """The error the recorder's database driver raises for a failing disk."""
    if isinstance(recorder, PostgresRecorder):
        return asyncpg.DiskFullError(message)
    return sqlite3.OperationalError(message)


def verify_database(db: Path | PgDsn) -> VerifyReport:
    """Verify the whole ledger, as `keyledger verify` does, on either backend."""
    if isinstance(db, PgDsn):
        return run_sync(_verify_postgres(db))
    return verify_rows(iter_rows(db))


async def _verify_postgres(dsn: str) -> VerifyReport:
    recorder = PostgresRecorder(dsn)
    await recorder.open()
    try:
        return await verify_recorder(recorder)
    finally:
        await recorder.close()


def rebuilt_projections(db: Path | PgDsn, scratch: Path) -> dict[str, list[tuple[Any, ...]]]:
    """The projection tables as a rebuild from the first event gives them (on a copy for SQLite;
    in place for PostgreSQL, whose tables the caller has dumped already)."""
    if isinstance(db, PgDsn):
        run_sync(_rebuild(PostgresRecorder(db, pg_tables.all_projectors())))
        return table_dump(db, PROJECTION_TABLES)
    copy = scratch / "rebuilt.db"
    source = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    target = sqlite3.connect(copy)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    run_sync(_rebuild(SqliteRecorder(copy, sqlite_tables.all_projectors())))
    return table_dump(copy, PROJECTION_TABLES)


async def _rebuild(recorder: Recorder) -> None:
    await recorder.open()
    try:
        await recorder.rebuild_projections()
    finally:
        await recorder.close()
