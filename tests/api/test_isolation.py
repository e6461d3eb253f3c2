"""Invariant 9, org isolation: a name of another org answers exactly like a missing one.

Two worlds are built the same way (orgs `acme` and `globex`); only in the first does `acme` hold
the secret `target`. `globex` asks both worlds the same questions and must get the same answers:
same status, same headers and the same body, apart from the request id.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from api.app import create_app
from api.settings import Settings
from ledger.crypto import MasterKey
from tests.api.conftest import (
    ADMIN_TOKEN,
    Key,
    create_key,
    create_org,
    make_client,
    max_seq,
    secret_path,
    upsert,
)

Client = TestClient[Litestar]


class World:
    def __init__(self, client: Client, db: Path, acme: Key, globex: Key) -> None:
        self.client = client
        self.db = db
        self.acme = acme
        self.globex = globex


def open_world(db: Path, *, with_target: bool) -> Iterator[World]:
    app = create_app(Settings(db=db, master_key=MasterKey.generate()[0], admin_token=ADMIN_TOKEN))
    with make_client(app) as client:
        acme = create_org(client, "acme")
        globex = create_org(client, "globex")
        if with_target:
            upsert(client, acme, "target", "acme-only-value", scope="tools", category="provider", expect=201)
            upsert(client, acme, "target", "acme-only-value-2", expect=200)
        yield World(client, db, acme, globex)


@pytest.fixture
def foreign(tmp_path: Path) -> Iterator[World]:
    """`acme` holds `target` (version 2)."""
    yield from open_world(tmp_path / "foreign.db", with_target=True)


@pytest.fixture
def missing(tmp_path: Path) -> Iterator[World]:
    """Nobody holds `target`."""
    yield from open_world(tmp_path / "missing.db", with_target=False)


def comparable(response: httpx.Response) -> tuple[int, dict[str, str], Any]:
    headers = {k: v for k, v in response.headers.items() if k not in ("x-request-id", "date")}
    body: Any = response.content
    if response.content:
        body = response.json()
        if isinstance(body, dict):
            body.pop("request_id", None)
    return response.status_code, headers, body


QUESTIONS: list[tuple[str, str, dict[str, Any] | None, dict[str, str]]] = [
    ("GET", secret_path("target"), None, {}),
    ("DELETE", secret_path("target"), None, {}),
    ("DELETE", secret_path("target"), None, {"If-Match": '"2"'}),
    ("POST", secret_path("target", "/reveal"), None, {}),
    ("POST", secret_path("target", "/reveal"), {"reason": "curious"}, {}),
    ("POST", "/v1/secrets", {"name": "target", "value": "globex-value"}, {"If-Match": '"2"'}),
    ("POST", "/v1/secrets", {"name": "target", "value": "globex-value"}, {"If-Match": '"1"'}),
    ("POST", "/v1/secrets", {"name": "target", "value": "globex-value"}, {"If-Match": "*"}),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "extra"), QUESTIONS, ids=[f"{m} {p} {h}" for m, p, _, h in QUESTIONS]
)
def test_a_foreign_name_answers_exactly_like_a_missing_one(
    foreign: World, missing: World, method: str, path: str, body: dict[str, Any] | None, extra: dict[str, str]
) -> None:
    answers = []
    for world in (foreign, missing):
        before = max_seq(world.db)
        response = world.client.request(method, path, json=body, headers={**world.globex.headers, **extra})
        assert response.status_code in (404, 412), response.text
        assert max_seq(world.db) == before, "a refused request appended an event"
        answers.append(comparable(response))
    assert answers[0] == answers[1]
    assert "acme-only-value" not in str(answers[0])
    # acme's secret is untouched.
    assert foreign.client.get(secret_path("target"), headers=foreign.acme.headers).json()["version"] == 2


def test_an_upsert_of_a_foreign_name_creates_the_orgs_own_secret(foreign: World, missing: World) -> None:
    answers = []
    for world in (foreign, missing):
        created = upsert(world.client, world.globex, "target", "globex-value", expect=201)
        body = created.json()
        assert (body["version"], body["scope"], body["category"], body["created_by"]) == (
            1,
            "all",
            "custom",
            world.globex.key_id,
        )
        answers.append((created.status_code, created.headers["etag"], created.headers["location"]))
        revealed = world.client.post(secret_path("target", "/reveal"), headers=world.globex.headers).json()
        assert revealed == {"name": "target", "value": "globex-value", "version": 1}
    assert answers[0] == answers[1]
    # Each org keeps its own secret under the same name.
    acme_sees = foreign.client.post(secret_path("target", "/reveal"), headers=foreign.acme.headers).json()
    assert acme_sees == {"name": "target", "value": "acme-only-value-2", "version": 2}


def test_revoking_a_foreign_key_answers_like_an_unknown_one(foreign: World, missing: World) -> None:
    victim = foreign.acme.key_id
    answers = []
    for world in (foreign, missing):
        before = max_seq(world.db)
        response = world.client.delete(f"/v1/keys/{victim}", headers=world.globex.headers)
        assert response.status_code == 404
        assert max_seq(world.db) == before
        answers.append(comparable(response))
    assert answers[0] == answers[1]
    assert foreign.client.get("/v1/secrets", headers=foreign.acme.headers).status_code == 200


def test_another_orgs_key_never_lists_its_secrets(foreign: World) -> None:
    client, acme, globex = foreign.client, foreign.acme, foreign.globex
    for name in ("a1", "a2", "m-acme", "z-acme"):
        upsert(client, acme, name, "acme:" + name, scope="agents", category="tool", expect=201)
    for name in ("b1", "m-globex"):
        upsert(client, globex, name, "globex:" + name, scope="agents", category="tool", expect=201)
    member = create_key(client, globex, role="member", scope="agents")
    for key in (globex, member):
        for params in (
            {},
            {"scope": "agents"},
            {"category": "tool"},
            {"limit": 1000},
            {"scope": "tools"},
            {"category": "provider"},
        ):
            listed = client.get("/v1/secrets", params=params, headers=key.headers)
            assert listed.status_code == 200
            names = [s["name"] for s in listed.json()["secrets"]]
            assert set(names) <= {"b1", "m-globex"}, (params, names)
            assert "acme" not in listed.text
        # Walk page by page, and from cursors made of acme's names.
        walked, cursor = [], None
        while True:
            params = {"limit": 1} if cursor is None else {"limit": 1, "cursor": cursor}
            page = client.get("/v1/secrets", params=params, headers=key.headers).json()
            walked += [s["name"] for s in page["secrets"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert walked == ["b1", "m-globex"]
        for acme_name in ("a1", "m-acme", "target"):
            crafted = base64.urlsafe_b64encode(acme_name.encode()).decode().rstrip("=")
            page = client.get("/v1/secrets", params={"cursor": crafted}, headers=key.headers)
            assert page.status_code == 200
            assert {s["name"] for s in page.json()["secrets"]} <= {"b1", "m-globex"}
    # ...and acme sees only its own.
    acme_names = [s["name"] for s in client.get("/v1/secrets", headers=acme.headers).json()["secrets"]]
    assert acme_names == ["a1", "a2", "m-acme", "target", "z-acme"]


def test_another_orgs_key_never_lists_its_keys(foreign: World) -> None:
    client = foreign.client
    acme_member = create_key(client, foreign.acme, label="acme-member")
    listed = client.get("/v1/keys", headers=foreign.globex.headers)
    assert listed.status_code == 200
    ids = {k["key_id"] for k in listed.json()["keys"]}
    assert ids == {foreign.globex.key_id}
    assert foreign.acme.key_id not in listed.text and acme_member.key_id not in listed.text
    assert "acme-member" not in listed.text
