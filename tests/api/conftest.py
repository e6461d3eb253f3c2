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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
from litestar import Litestar
from litestar.testing import TestClient
from litestar.testing.transport import TestClientTransport

from api.app import create_app
from api.settings import Settings
from ledger.crypto import MasterKey

ADMIN_TOKEN = "test-admin-token"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PROBLEM_JSON = "application/problem+json"


class SingleDecodeTransport(TestClientTransport):  # type: ignore[type-arg]
    """Litestar's transport, but the ASGI `path` is the raw path decoded once (as servers do)."""

    def parse_request(self, request: httpx.Request) -> dict[str, Any]:
        scope: dict[str, Any] = super().parse_request(request)
        scope["path"] = unquote(request.url.raw_path.split(b"?", 1)[0].decode("ascii"))
        return scope


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


@pytest.fixture
def db_file(tmp_path: Path) -> Path:
    return tmp_path / "keyledger.db"


@pytest.fixture
def settings(db_file: Path) -> Settings:
    return Settings(db=db_file, master_key=MasterKey.generate()[0], admin_token=ADMIN_TOKEN)


@pytest.fixture
def app(settings: Settings) -> Litestar:
    return create_app(settings)


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


def query(db_file: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the database file directly, on a connection of its own (WAL lets it read while the app runs)."""
    conn = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def max_seq(db_file: Path) -> int:
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


def events_after(db_file: Path, seq: int) -> list[dict[str, Any]]:
    """The decoded bodies of the events after `seq`, in order (each has its `type` tag)."""
    return [
        json.loads(body) for (body,) in query(db_file, "SELECT body FROM events WHERE seq > ? ORDER BY seq", (seq,))
    ]


def audit_after(db_file: Path, seq: int) -> list[dict[str, Any]]:
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
