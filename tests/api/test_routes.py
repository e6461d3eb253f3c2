"""Every route and every error code of the HTTP API v1 (DESIGN.md), through Litestar's TestClient."""

from __future__ import annotations

import re
import secrets
import warnings
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from api.app import create_app
from api.client import KeyledgerClient
from api.settings import Settings
from ledger.crypto import MasterKey
from tests.api.conftest import (
    ADMIN_HEADERS,
    Key,
    assert_problem,
    audit_after,
    create_key,
    events_after,
    make_client,
    max_seq,
    query,
    secret_path,
    stored_bytes,
    upsert,
)

Client = TestClient[Litestar]

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
METADATA_FIELDS = {
    "name",
    "scope",
    "category",
    "description",
    "version",
    "created_at",
    "updated_at",
    "created_by",
    "updated_by",
}
KEY_INFO_FIELDS = {"key_id", "label", "role", "scope", "created_at", "last_used_at"}
API_KEY = re.compile(r"^rt_live_[A-Za-z0-9]{32,}$")
MIB = 1024 * 1024


def names_of(response: Any) -> list[str]:
    return [item["name"] for item in response.json()["secrets"]]


def assert_metadata(body: dict[str, Any], **expected: Any) -> None:
    assert set(body) == METADATA_FIELDS, body
    assert RFC3339.match(body["created_at"]), body
    assert RFC3339.match(body["updated_at"]), body
    for field, value in expected.items():
        assert body[field] == value, (field, body)


# -- upsert, get -------------------------------------------------------------------------------


def test_upsert_creates_with_201_then_updates_with_200(client: Client, acme: Key) -> None:
    created = upsert(client, acme, "db-password", "s3cret", expect=201)
    assert created.headers["etag"] == '"1"'
    assert created.headers["location"] == "/v1/secrets/db-password"
    assert_metadata(
        created.json(),
        name="db-password",
        scope="all",
        category="custom",
        description="",
        version=1,
        created_by=acme.key_id,
        updated_by=acme.key_id,
    )

    other = create_key(client, acme, role="member")
    updated = upsert(client, other, "db-password", "n3w", expect=200)
    assert updated.headers["etag"] == '"2"'
    assert "location" not in updated.headers
    body = updated.json()
    assert_metadata(
        body,
        name="db-password",
        version=2,
        created_by=acme.key_id,
        updated_by=other.key_id,
        created_at=created.json()["created_at"],
    )
    assert body["updated_at"] >= created.json()["updated_at"]


def test_get_answers_the_same_metadata_as_the_upsert_with_its_etag(client: Client, acme: Key) -> None:
    upsert(client, acme, "api-token", "one", scope="agents", category="provider", description="for agents")
    answer = upsert(client, acme, "api-token", "two", expect=200)
    got = client.get(secret_path("api-token"), headers=acme.headers)
    assert got.status_code == 200
    assert got.json() == answer.json()
    assert got.headers["etag"] == '"2"'
    assert "value" not in got.json() and "two" not in got.text


def test_upsert_defaults_are_scope_all_and_category_custom(client: Client, acme: Key) -> None:
    body = upsert(client, acme, "plain", expect=201).json()
    assert (body["scope"], body["category"], body["description"]) == ("all", "custom", "")


def test_update_keeps_every_omitted_field(client: Client, acme: Key) -> None:
    upsert(client, acme, "k", "1", scope="agents", category="provider", description="first", expect=201)
    kept = upsert(client, acme, "k", "2", expect=200).json()
    assert (kept["scope"], kept["category"], kept["description"]) == ("agents", "provider", "first")
    # Explicit nulls are "omitted" too.
    nulls = upsert(client, acme, "k", "3", scope=None, category=None, description=None, expect=200).json()
    assert (nulls["scope"], nulls["category"], nulls["description"]) == ("agents", "provider", "first")
    scope_only = upsert(client, acme, "k", "4", scope="tools", expect=200).json()
    assert (scope_only["scope"], scope_only["category"], scope_only["description"]) == ("tools", "provider", "first")
    cleared = upsert(client, acme, "k", "5", description="", expect=200).json()
    assert (cleared["scope"], cleared["category"], cleared["description"]) == ("tools", "provider", "")
    assert cleared["version"] == 5
    # ...and the value is the last one given.
    revealed = client.post(secret_path("k", "/reveal"), headers=acme.headers).json()
    assert revealed == {"name": "k", "value": "5", "version": 5}


def test_value_round_trips_exactly(client: Client, acme: Key) -> None:
    value = 'päss wörd 🔑\n\t"quoted" \\ end\u00a0'
    upsert(client, acme, "exotic", value, expect=201)
    assert client.post(secret_path("exotic", "/reveal"), headers=acme.headers).json()["value"] == value


# -- list ----------------------------------------------------------------------------------------


def test_list_is_ordered_by_name_and_holds_metadata_only(client: Client, acme: Key) -> None:
    names = ["zeta", "Alpha", "alpha", "beta.2", "beta 1", "ünï", "名前", "0-first", "~tilde"]
    for name in names:
        upsert(client, acme, name, "value-of-" + name, expect=201)
    listed = client.get("/v1/secrets", headers=acme.headers)
    assert listed.status_code == 200
    body = listed.json()
    assert set(body) == {"secrets", "next_cursor"}
    assert body["next_cursor"] is None
    assert names_of(listed) == sorted(names)  # code point order == SQLite's binary order of UTF-8
    for item in body["secrets"]:
        assert_metadata(item, version=1)
    assert "value-of-" not in listed.text


def test_empty_list(client: Client, acme: Key) -> None:
    listed = client.get("/v1/secrets", headers=acme.headers)
    assert listed.status_code == 200
    assert listed.json() == {"secrets": [], "next_cursor": None}


def test_list_leaves_out_deleted_secrets(client: Client, acme: Key) -> None:
    for name in ("a", "b", "c"):
        upsert(client, acme, name, expect=201)
    assert client.delete(secret_path("b"), headers=acme.headers).status_code == 204
    assert names_of(client.get("/v1/secrets", headers=acme.headers)) == ["a", "c"]


def test_page_walk_over_250_secrets_returns_every_name_once_in_order(client: Client, acme: Key) -> None:
    names = [f"secret-{i:04d}-{secrets.token_hex(2)}" for i in range(250)]
    for name in reversed(names):
        upsert(client, acme, name, expect=201)
    seen: list[str] = []
    pages = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 100}
        if cursor is not None:
            params["cursor"] = cursor
        page = client.get("/v1/secrets", params=params, headers=acme.headers)
        assert page.status_code == 200, page.text
        pages.append(len(page.json()["secrets"]))
        seen.extend(names_of(page))
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
        assert len(pages) < 10, "the walk does not end"
    assert pages == [100, 100, 50]
    assert seen == sorted(names)


def test_default_page_size_is_100(client: Client, acme: Key) -> None:
    for i in range(101):
        upsert(client, acme, f"s{i:03d}", expect=201)
    page = client.get("/v1/secrets", headers=acme.headers).json()
    assert len(page["secrets"]) == 100
    assert page["next_cursor"] is not None
    rest = client.get("/v1/secrets", params={"cursor": page["next_cursor"]}, headers=acme.headers).json()
    assert [s["name"] for s in rest["secrets"]] == ["s100"]
    assert rest["next_cursor"] is None


@pytest.mark.parametrize("limit", [1, 1000])
def test_limit_bounds_are_accepted(client: Client, acme: Key, limit: int) -> None:
    for name in ("a", "b"):
        upsert(client, acme, name, expect=201)
    page = client.get("/v1/secrets", params={"limit": limit}, headers=acme.headers)
    assert page.status_code == 200
    assert len(page.json()["secrets"]) == min(limit, 2)
    assert (page.json()["next_cursor"] is None) == (limit >= 2)


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "abc", "1.5"])
def test_limit_out_of_range_is_422(client: Client, acme: Key, limit: str) -> None:
    assert_problem(client.get("/v1/secrets", params={"limit": limit}, headers=acme.headers), 422, "limit")


@pytest.mark.parametrize("cursor", ["@@@", "not a cursor", "Zm9v=", "_w"])
def test_bad_cursor_is_422(client: Client, acme: Key, cursor: str) -> None:
    assert_problem(client.get("/v1/secrets", params={"cursor": cursor}, headers=acme.headers), 422, "cursor")


def test_scope_and_category_filters(client: Client, acme: Key) -> None:
    upsert(client, acme, "p-agents", scope="agents", category="provider", expect=201)
    upsert(client, acme, "t-agents", scope="agents", category="tool", expect=201)
    upsert(client, acme, "p-tools", scope="tools", category="provider", expect=201)
    upsert(client, acme, "c-all", expect=201)

    def listed(**params: str) -> list[str]:
        response = client.get("/v1/secrets", params=params, headers=acme.headers)
        assert response.status_code == 200, response.text
        return names_of(response)

    assert listed(scope="agents") == ["p-agents", "t-agents"]
    assert listed(scope="all") == ["c-all"]
    assert listed(scope="sandboxes") == []
    assert listed(category="provider") == ["p-agents", "p-tools"]
    assert listed(category="custom") == ["c-all"]
    assert listed(scope="agents", category="provider") == ["p-agents"]
    # Filters and pagination together.
    first = client.get("/v1/secrets", params={"scope": "agents", "limit": 1}, headers=acme.headers).json()
    assert [s["name"] for s in first["secrets"]] == ["p-agents"]
    second = client.get(
        "/v1/secrets", params={"scope": "agents", "limit": 1, "cursor": first["next_cursor"]}, headers=acme.headers
    ).json()
    assert [s["name"] for s in second["secrets"]] == ["t-agents"]
    assert second["next_cursor"] is None


@pytest.mark.parametrize(("param", "value"), [("scope", "everything"), ("category", "secret"), ("scope", "")])
def test_invalid_filter_value_is_422(client: Client, acme: Key, param: str, value: str) -> None:
    assert_problem(client.get("/v1/secrets", params={param: value}, headers=acme.headers), 422)


def test_invalid_category_filter_names_the_field(client: Client, acme: Key) -> None:
    body = assert_problem(client.get("/v1/secrets", params={"category": "x"}, headers=acme.headers), 422)
    assert body["detail"].startswith("category")


def test_bug_invalid_scope_filter_detail_names_scope_filter(client: Client, acme: Key) -> None:
    body = assert_problem(client.get("/v1/secrets", params={"scope": "bad"}, headers=acme.headers), 422)
    assert "scope_filter" not in body["detail"]
    assert body["detail"].startswith("scope")


# -- get, delete, names ----------------------------------------------------------------------------


def test_get_missing_is_404(client: Client, acme: Key) -> None:
    assert_problem(client.get(secret_path("nope"), headers=acme.headers), 404, "nope")


def test_delete_is_204_then_404_and_versions_keep_growing(client: Client, db_file: Path, acme: Key) -> None:
    upsert(client, acme, "gone", expect=201)
    upsert(client, acme, "gone", expect=200)
    before = max_seq(db_file)
    deleted = client.delete(secret_path("gone"), headers=acme.headers)
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert [e["type"] for e in events_after(db_file, before)] == ["secret.deleted"]
    assert_problem(client.get(secret_path("gone"), headers=acme.headers), 404)
    assert_problem(client.post(secret_path("gone", "/reveal"), headers=acme.headers), 404)
    seq = max_seq(db_file)
    assert_problem(client.delete(secret_path("gone"), headers=acme.headers), 404)
    assert max_seq(db_file) == seq
    # Re-created: 201 again, and the version continues after the deleted one.
    again = upsert(client, acme, "gone", "back", expect=201)
    assert again.json()["version"] == 3
    assert again.headers["etag"] == '"3"'


NAMES = [
    "with space",
    "dots.in.name",
    "...",
    "ünïcødé-名前-🔑",
    "100%",
    "a%41",
    "a%2Fb",
    "q?x=1&y=2#frag",
    "plus+and;semi,colon:@",
    "tab\u00a0nbsp",
    "x" * 256,
]


@pytest.mark.parametrize("name", NAMES)
def test_names_round_trip_through_percent_encoded_paths(client: Client, db_file: Path, acme: Key, name: str) -> None:
    created = upsert(client, acme, name, "value:" + name, expect=201)
    assert created.json()["name"] == name
    got = client.get(secret_path(name), headers=acme.headers)
    assert got.status_code == 200, got.text
    assert got.json()["name"] == name
    assert names_of(client.get("/v1/secrets", headers=acme.headers)) == [name]
    revealed = client.post(secret_path(name, "/reveal"), headers=acme.headers)
    assert revealed.json() == {"name": name, "value": "value:" + name, "version": 1}
    assert client.delete(secret_path(name), headers=acme.headers).status_code == 204
    assert query(db_file, "SELECT name, deleted FROM secrets") == [(name, 1)]


def test_percent_sequences_in_names_are_not_decoded_twice(client: Client, acme: Key) -> None:
    upsert(client, acme, "a%41", "percent", expect=201)
    upsert(client, acme, "aA", "plain", expect=201)
    assert client.post(secret_path("a%41", "/reveal"), headers=acme.headers).json()["value"] == "percent"
    assert client.post(secret_path("aA", "/reveal"), headers=acme.headers).json()["value"] == "plain"


@pytest.mark.parametrize("name", [".", ".."])
def test_dot_names_round_trip_when_the_dots_are_encoded(client: Client, acme: Key, name: str) -> None:
    # A literal "/v1/secrets/.." is a dot segment that clients normalise away; "%2E%2E" is not.
    path = "/v1/secrets/" + name.replace(".", "%2E")
    upsert(client, acme, name, "dots", expect=201)
    assert client.get(path, headers=acme.headers).json()["name"] == name
    assert client.post(path + "/reveal", headers=acme.headers).json()["value"] == "dots"
    assert client.delete(path, headers=acme.headers).status_code == 204


def test_cli_client_paths_reach_dot_names(client: Client, acme: Key) -> None:
    # api/client.py must encode the dots: httpx (like browsers and proxies) removes '.' and '..' segments.
    for name in (".", ".."):
        upsert(client, acme, name, "dots", expect=201)
        got = client.get(KeyledgerClient.secret_path(name), headers=acme.headers)
        assert got.status_code == 200, got.text
        assert got.json()["name"] == name
        revealed = client.post(KeyledgerClient.secret_path(name, "/reveal"), headers=acme.headers)
        assert revealed.json() == {"name": name, "value": "dots", "version": 1}


# -- reveal ---------------------------------------------------------------------------------------------


def test_reveal_answers_the_value_with_no_store_and_records_the_event(client: Client, db_file: Path, acme: Key) -> None:
    upsert(client, acme, "token", "v1", expect=201)
    upsert(client, acme, "token", "v2", expect=200)
    before = max_seq(db_file)
    revealed = client.post(secret_path("token", "/reveal"), headers=acme.headers)
    assert revealed.status_code == 200
    assert revealed.json() == {"name": "token", "value": "v2", "version": 2}
    assert revealed.headers["cache-control"] == "no-store"
    events = events_after(db_file, before)
    assert [e["type"] for e in events] == ["secret.revealed"]
    assert events[0]["name"] == "token"
    assert events[0]["version"] == 2
    assert events[0]["actor"]["key_id"] == acme.key_id
    assert events[0]["stream_version"] is None  # a reveal changes no state
    [row] = audit_after(db_file, before)
    assert (row["action"], row["outcome"], row["secret"], row["version"]) == ("secret.revealed", "granted", "token", 2)


def test_reveal_records_the_reason(client: Client, db_file: Path, acme: Key) -> None:
    upsert(client, acme, "token", "v", expect=201)
    before = max_seq(db_file)
    revealed = client.post(secret_path("token", "/reveal"), json={"reason": "incident INC-42"}, headers=acme.headers)
    assert revealed.status_code == 200
    [event] = events_after(db_file, before)
    assert event["reason"] == "incident INC-42"
    [row] = audit_after(db_file, before)
    assert row["detail"] == "incident INC-42"


@pytest.mark.parametrize("body", [None, b"", b"{}", b"null"])
def test_reveal_body_is_optional(client: Client, acme: Key, body: bytes | None) -> None:
    upsert(client, acme, "token", "v", expect=201)
    headers = dict(acme.headers)
    if body:
        headers["content-type"] = "application/json"
    revealed = client.post(secret_path("token", "/reveal"), content=body, headers=headers)
    assert revealed.status_code == 200, revealed.text
    assert revealed.json()["value"] == "v"


@pytest.mark.parametrize(
    ("body", "field"), [({"reason": "r" * 1025}, "reason"), ({"why": "x"}, "why"), ({"reason": 5}, "reason")]
)
def test_reveal_body_is_validated(client: Client, db_file: Path, acme: Key, body: dict[str, Any], field: str) -> None:
    upsert(client, acme, "token", "v", expect=201)
    before = max_seq(db_file)
    assert_problem(client.post(secret_path("token", "/reveal"), json=body, headers=acme.headers), 422, field)
    assert max_seq(db_file) == before


def test_reveal_missing_is_404_and_appends_nothing(client: Client, db_file: Path, acme: Key) -> None:
    before = max_seq(db_file)
    assert_problem(client.post(secret_path("nope", "/reveal"), headers=acme.headers), 404, "nope")
    assert max_seq(db_file) == before


@pytest.mark.parametrize(
    ("key_scope", "secret_scope", "allowed"),
    [
        ("all", "tools", True),
        ("all", "sandboxes", True),
        ("agents", "all", True),
        ("agents", "agents", True),
        ("agents", "tools", False),
        ("tools", "agents", False),
        ("sandboxes", "tools", False),
    ],
)
def test_key_scope_limits_reveal(
    client: Client, db_file: Path, acme: Key, key_scope: str, secret_scope: str, allowed: bool
) -> None:
    upsert(client, acme, "s", "the value", scope=secret_scope, expect=201)
    key = create_key(client, acme, role="member", scope=key_scope)
    before = max_seq(db_file)
    revealed = client.post(secret_path("s", "/reveal"), json={"reason": "asking"}, headers=key.headers)
    [event] = events_after(db_file, before)
    [row] = audit_after(db_file, before)
    if allowed:
        assert revealed.status_code == 200
        assert revealed.json()["value"] == "the value"
        assert event["type"] == "secret.revealed"
        assert row["outcome"] == "granted"
    else:
        assert_problem(revealed, 403, key_scope, secret_scope)
        assert "the value" not in revealed.text
        assert event["type"] == "secret.reveal_denied"
        assert (event["key_scope"], event["secret_scope"], event["request_reason"]) == (
            key_scope,
            secret_scope,
            "asking",
        )
        assert event["actor"]["key_id"] == key.key_id
        assert (row["action"], row["outcome"]) == ("secret.reveal_denied", "denied")


def test_reveal_fails_closed_with_503_when_the_event_cannot_be_committed(
    client: Client, db_file: Path, acme: Key
) -> None:
    upsert(client, acme, "token", "never-sent", expect=201)
    before = max_seq(db_file)
    client.app.state.ledger.recorder.fail_next_commits = 1
    failed = client.post(secret_path("token", "/reveal"), headers=acme.headers)
    assert_problem(failed, 503)
    assert "never-sent" not in failed.text
    assert max_seq(db_file) == before
    assert client.post(secret_path("token", "/reveal"), headers=acme.headers).json()["value"] == "never-sent"


# -- admin: orgs --------------------------------------------------------------------------------------


def test_create_org_answers_its_first_key_an_admin(client: Client, db_file: Path) -> None:
    created = client.post("/v1/admin/orgs", json={"org": "initech"}, headers=ADMIN_HEADERS)
    assert created.status_code == 201
    body = created.json()
    assert set(body) == {"org", "key_id", "api_key"}
    assert body["org"] == "initech"
    assert API_KEY.match(body["api_key"])
    assert [e["type"] for e in events_after(db_file, 0)] == ["org.created", "api_key.created"]
    keys = client.get("/v1/keys", headers={"Authorization": f"Bearer {body['api_key']}"})
    assert keys.status_code == 200
    [info] = keys.json()["keys"]
    assert (info["key_id"], info["role"], info["scope"]) == (body["key_id"], "admin", "all")
    # The key itself is stored only as its SHA-256.
    assert body["api_key"].encode() not in b"".join(stored_bytes(db_file).values())


def test_create_existing_org_is_409_and_appends_nothing(client: Client, db_file: Path, acme: Key) -> None:
    before = max_seq(db_file)
    assert_problem(client.post("/v1/admin/orgs", json={"org": "acme"}, headers=ADMIN_HEADERS), 409, "acme")
    assert max_seq(db_file) == before


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "test-admin-token"},
        {"Authorization": "Basic dGVzdC1hZG1pbi10b2tlbg=="},
        {"Authorization": "Bearer test-admin-token-and-more"},
    ],
)
def test_create_org_without_the_admin_token_is_401(client: Client, db_file: Path, headers: dict[str, str]) -> None:
    response = client.post("/v1/admin/orgs", json={"org": "mallory"}, headers=headers)
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert max_seq(db_file) == 0


def test_an_org_api_key_is_not_the_admin_token(client: Client, db_file: Path, acme: Key) -> None:
    before = max_seq(db_file)
    assert_problem(client.post("/v1/admin/orgs", json={"org": "other"}, headers=acme.headers), 401)
    assert max_seq(db_file) == before


def test_admin_token_is_not_an_api_key(client: Client, acme: Key) -> None:
    upsert(client, acme, "s", expect=201)
    assert_problem(client.get("/v1/secrets", headers=ADMIN_HEADERS), 401)
    assert_problem(client.post(secret_path("s", "/reveal"), headers=ADMIN_HEADERS), 401)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"org": "Bad Org!"}, "org"),
        ({"org": "x", "plan": "gold"}, "plan"),
        ({"org": "-dash"}, "org"),
        ({"org": "a" * 64}, "org"),
    ],
)
def test_create_org_validates_its_body(client: Client, db_file: Path, body: dict[str, Any], field: str) -> None:
    assert_problem(client.post("/v1/admin/orgs", json=body, headers=ADMIN_HEADERS), 422, field)
    assert max_seq(db_file) == 0


def test_admin_routes_are_off_without_an_admin_token(tmp_path: Path) -> None:
    settings = Settings(db=tmp_path / "off.db", master_key=MasterKey.generate()[0], admin_token=None)
    with make_client(create_app(settings)) as off:
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer None"}):
            assert_problem(off.post("/v1/admin/orgs", json={"org": "x"}, headers=headers), 401)
    assert max_seq(tmp_path / "off.db") == 0


# -- keys --------------------------------------------------------------------------------------------


def test_create_key_defaults_and_answers_the_key_once(client: Client, db_file: Path, acme: Key) -> None:
    created = client.post("/v1/keys", json={"label": "ci runner"}, headers=acme.headers)
    assert created.status_code == 201
    body = created.json()
    assert set(body) == KEY_INFO_FIELDS | {"api_key"}
    assert (body["label"], body["role"], body["scope"], body["last_used_at"]) == ("ci runner", "member", "all", None)
    assert RFC3339.match(body["created_at"])
    assert API_KEY.match(body["api_key"])
    new = Key(org="acme", key_id=body["key_id"], api_key=body["api_key"])
    assert client.get("/v1/secrets", headers=new.headers).status_code == 200
    # Members manage secrets but not keys.
    assert upsert(client, new, "by-member").status_code == 201
    assert body["api_key"].encode() not in b"".join(stored_bytes(db_file).values())


def test_create_key_with_role_and_scope(client: Client, acme: Key) -> None:
    body = client.post(
        "/v1/keys", json={"label": "agent", "role": "admin", "scope": "agents"}, headers=acme.headers
    ).json()
    assert (body["role"], body["scope"]) == ("admin", "agents")
    admin2 = Key(org="acme", key_id=body["key_id"], api_key=body["api_key"])
    assert client.post("/v1/keys", json={"label": "third"}, headers=admin2.headers).status_code == 201


def test_list_keys_never_contains_a_key(client: Client, acme: Key) -> None:
    member = create_key(client, acme, role="member", scope="tools", label="tools bot")
    upsert(client, member, "used", expect=201)
    listed = client.get("/v1/keys", headers=member.headers)
    assert listed.status_code == 200
    keys = listed.json()["keys"]
    assert {k["key_id"] for k in keys} == {acme.key_id, member.key_id}
    for info in keys:
        assert set(info) == KEY_INFO_FIELDS
    by_id = {k["key_id"]: k for k in keys}
    assert (by_id[member.key_id]["label"], by_id[member.key_id]["role"], by_id[member.key_id]["scope"]) == (
        "tools bot",
        "member",
        "tools",
    )
    assert RFC3339.match(by_id[member.key_id]["last_used_at"])
    assert "rt_live_" not in listed.text
    assert acme.api_key not in listed.text and member.api_key not in listed.text


def test_members_cannot_create_or_revoke_keys(client: Client, db_file: Path, acme: Key) -> None:
    member = create_key(client, acme, role="member")
    before = max_seq(db_file)
    assert_problem(client.post("/v1/keys", json={"label": "x"}, headers=member.headers), 403, "admin")
    assert_problem(client.delete(f"/v1/keys/{acme.key_id}", headers=member.headers), 403, "admin")
    assert_problem(client.delete(f"/v1/keys/{member.key_id}", headers=member.headers), 403, "admin")
    assert max_seq(db_file) == before
    assert client.get("/v1/secrets", headers=acme.headers).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "label"),
        ({"label": ""}, "label"),
        ({"label": "x", "role": "owner"}, "role"),
        ({"label": "x", "scope": "everything"}, "scope"),
        ({"label": "x", "api_key": "rt_live_" + "a" * 40}, "api_key"),
    ],
)
def test_create_key_validates_its_body(
    client: Client, db_file: Path, acme: Key, body: dict[str, Any], field: str
) -> None:
    before = max_seq(db_file)
    assert_problem(client.post("/v1/keys", json=body, headers=acme.headers), 422, field)
    assert max_seq(db_file) == before


SECRET_ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/secrets", None),
    ("POST", "/v1/secrets", {"name": "s", "value": "v2"}),
    ("GET", "/v1/secrets/s", None),
    ("POST", "/v1/secrets/s/reveal", None),
    ("DELETE", "/v1/secrets/s", None),
    ("GET", "/v1/keys", None),
    ("POST", "/v1/keys", {"label": "x"}),
]


def test_revoked_key_gets_401_at_once_everywhere(client: Client, db_file: Path, acme: Key) -> None:
    victim = create_key(client, acme, role="admin", label="leaked")
    upsert(client, victim, "s", expect=201)
    assert client.get("/v1/secrets", headers=victim.headers).status_code == 200
    revoked = client.delete(f"/v1/keys/{victim.key_id}", headers=acme.headers)
    assert revoked.status_code == 204
    assert revoked.content == b""
    before = max_seq(db_file)
    for method, path, body in [*SECRET_ROUTES, ("DELETE", f"/v1/keys/{acme.key_id}", None)]:
        response = client.request(method, path, json=body, headers=victim.headers)
        assert_problem(response, 401)
    assert max_seq(db_file) == before
    listed = client.get("/v1/keys", headers=acme.headers).json()["keys"]
    assert victim.key_id not in {k["key_id"] for k in listed}
    assert client.get(secret_path("s"), headers=acme.headers).status_code == 200
    # Revoking it again, or an unknown key, is a 404.
    assert_problem(client.delete(f"/v1/keys/{victim.key_id}", headers=acme.headers), 404)
    assert_problem(client.delete("/v1/keys/key_0000000000000000", headers=acme.headers), 404)
    assert max_seq(db_file) == before


# -- authentication ------------------------------------------------------------------------------------


BAD_AUTHORIZATIONS = [
    None,
    "",
    "Bearer",
    "Bearer ",
    "Basic dXNlcjpwYXNz",
    "Bearer not-a-key",
    "Bearer rt_live_short",
    "Bearer rt_live_" + "A" * 40,  # well formed, unknown
    "Bearer rt_test_" + "A" * 40,
    f"Bearer {'x' * 5000}",
]


@pytest.mark.parametrize("authorization", BAD_AUTHORIZATIONS)
def test_missing_malformed_or_unknown_credentials_are_401_everywhere(
    client: Client, db_file: Path, acme: Key, authorization: str | None
) -> None:
    upsert(client, acme, "s", expect=201)
    headers = {} if authorization is None else {"Authorization": authorization}
    before = max_seq(db_file)
    for method, path, body in [*SECRET_ROUTES, ("DELETE", f"/v1/keys/{acme.key_id}", None)]:
        response = client.request(method, path, json=body, headers=headers)
        assert_problem(response, 401)
        assert response.headers["www-authenticate"] == 'Bearer realm="keyledger"'
    assert max_seq(db_file) == before


def test_a_valid_key_under_another_scheme_is_401(client: Client, acme: Key) -> None:
    assert_problem(client.get("/v1/secrets", headers={"Authorization": f"Token {acme.api_key}"}), 401)
    assert_problem(client.get("/v1/secrets", headers={"Authorization": acme.api_key}), 401)
    # The scheme is case-insensitive (RFC 9110).
    assert client.get("/v1/secrets", headers={"Authorization": f"bearer {acme.api_key}"}).status_code == 200


# -- If-Match ---------------------------------------------------------------------------------------------


def test_stale_if_match_on_upsert_is_412_and_the_current_one_works(client: Client, db_file: Path, acme: Key) -> None:
    upsert(client, acme, "s", "1", expect=201)
    upsert(client, acme, "s", "2", expect=200)
    before = max_seq(db_file)
    for stale in ('"1"', '"3"', "1", "garbage", '"99999999999999999999"'):
        response = client.post(
            "/v1/secrets", json={"name": "s", "value": "x"}, headers={**acme.headers, "If-Match": stale}
        )
        assert_problem(response, 412)
    assert max_seq(db_file) == before
    current = client.post("/v1/secrets", json={"name": "s", "value": "3"}, headers={**acme.headers, "If-Match": '"2"'})
    assert current.status_code == 200
    assert current.headers["etag"] == '"3"'
    weak = client.post("/v1/secrets", json={"name": "s", "value": "4"}, headers={**acme.headers, "If-Match": 'W/"3"'})
    assert weak.status_code == 200
    star = client.post("/v1/secrets", json={"name": "s", "value": "5"}, headers={**acme.headers, "If-Match": "*"})
    assert star.status_code == 200
    assert star.json()["version"] == 5


def test_if_match_on_a_missing_secret_is_412(client: Client, db_file: Path, acme: Key) -> None:
    for value in ('"1"', "*"):
        response = client.post(
            "/v1/secrets", json={"name": "new", "value": "x"}, headers={**acme.headers, "If-Match": value}
        )
        assert_problem(response, 412)
    assert max_seq(db_file) == 2  # org.created, api_key.created
    assert_problem(client.get(secret_path("new"), headers=acme.headers), 404)


def test_stale_if_match_on_delete_is_412_and_the_current_one_works(client: Client, db_file: Path, acme: Key) -> None:
    upsert(client, acme, "s", "1", expect=201)
    upsert(client, acme, "s", "2", expect=200)
    before = max_seq(db_file)
    assert_problem(client.delete(secret_path("s"), headers={**acme.headers, "If-Match": '"1"'}), 412)
    assert max_seq(db_file) == before
    assert client.get(secret_path("s"), headers=acme.headers).status_code == 200
    etag = client.get(secret_path("s"), headers=acme.headers).headers["etag"]
    assert client.delete(secret_path("s"), headers={**acme.headers, "If-Match": etag}).status_code == 204


# -- limits ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/secrets"), ("POST", "/v1/secrets/s/reveal"), ("POST", "/v1/keys"), ("POST", "/v1/admin/orgs")],
)
def test_body_over_1_mib_is_413(client: Client, db_file: Path, acme: Key, method: str, path: str) -> None:
    upsert(client, acme, "s", expect=201)
    headers = ADMIN_HEADERS if path.startswith("/v1/admin") else acme.headers
    payload = b'{"name": "s", "value": "' + b"v" * MIB + b'"}'
    before = max_seq(db_file)
    assert_problem(
        client.request(method, path, content=payload, headers={**headers, "content-type": "application/json"}), 413
    )
    assert max_seq(db_file) == before


def test_value_over_65536_bytes_is_413_with_a_clear_detail(client: Client, db_file: Path, acme: Key) -> None:
    before = max_seq(db_file)
    # 32,769 two-byte characters: under the limit in characters, over it in bytes.
    for value in ("v" * 65_537, "é" * 32_769):
        body = assert_problem(upsert(client, acme, "big", value), 413, "value", "65536", "bytes")
        assert value[:100] not in body["detail"]
    assert max_seq(db_file) == before
    assert_problem(client.get(secret_path("big"), headers=acme.headers), 404)


def test_value_of_exactly_65536_bytes_is_accepted(client: Client, acme: Key) -> None:
    value = "é" * 32_768
    upsert(client, acme, "edge", value, expect=201)
    assert client.post(secret_path("edge", "/reveal"), headers=acme.headers).json()["value"] == value


INVALID_NAMES = ["", "a/b", "/", "a\x00b", "a\x01", "line\nbreak", "tab\there", "del\x7f", "c1\x85", "x" * 257]


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_names_are_422_naming_the_field(client: Client, db_file: Path, acme: Key, name: str) -> None:
    before = max_seq(db_file)
    body = assert_problem(upsert(client, acme, name), 422, "name")
    assert body["detail"].startswith("name")
    assert max_seq(db_file) == before


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"scope": "everyone"}, "scope"),
        ({"scope": "ALL"}, "scope"),
        ({"category": "password"}, "category"),
        ({"description": "d" * 4097}, "description"),
        ({"owner": "me"}, "owner"),
        ({"value": 42}, "value"),
        ({"Name": "dup"}, "Name"),
    ],
)
def test_invalid_fields_are_422_naming_the_field(
    client: Client, db_file: Path, acme: Key, extra: dict[str, Any], field: str
) -> None:
    before = max_seq(db_file)
    response = client.post("/v1/secrets", json={"name": "s", "value": "v", **extra}, headers=acme.headers)
    assert_problem(response, 422, field)
    assert max_seq(db_file) == before


@pytest.mark.parametrize(("body", "field"), [({"value": "v"}, "name"), ({"name": "s"}, "value")])
def test_missing_required_fields_are_422(client: Client, acme: Key, body: dict[str, Any], field: str) -> None:
    assert_problem(client.post("/v1/secrets", json=body, headers=acme.headers), 422, field)


@pytest.mark.parametrize("body", [b"{not json", b"[", b'{"name": "s", "value": "v",}', b"\xff\xfe"])
def test_a_body_that_is_not_json_is_a_problem(client: Client, db_file: Path, acme: Key, body: bytes) -> None:
    before = max_seq(db_file)
    response = client.post("/v1/secrets", content=body, headers={**acme.headers, "content-type": "application/json"})
    assert response.status_code in (400, 422)
    assert_problem(response, response.status_code)
    assert max_seq(db_file) == before


def test_unrouted_paths_and_methods_answer_problems(client: Client, acme: Key) -> None:
    assert_problem(client.get("/v1/nothing-here", headers=acme.headers), 404)
    assert_problem(client.put("/v1/secrets", headers=acme.headers), 405)


def test_bug_unrouted_answers_carry_no_request_id(client: Client) -> None:
    response = client.get("/v1/nothing-here", headers={"X-Request-ID": "trace-404"})
    assert response.status_code == 404
    assert response.headers.get("x-request-id") == "trace-404"
    assert response.json()["request_id"] == "trace-404"


# -- request id, client address, user agent -----------------------------------------------------------------


def test_request_id_is_echoed_and_recorded_with_address_and_user_agent(
    client: Client, db_file: Path, acme: Key
) -> None:
    member = create_key(client, acme, role="member", scope="agents")
    upsert(client, acme, "tools-secret", scope="tools", expect=201)
    calls = [
        ("POST", "/v1/secrets", {"name": "s", "value": "v"}, acme, ["secret.created"]),
        ("POST", "/v1/secrets", {"name": "s", "value": "w"}, acme, ["secret.updated"]),
        ("POST", "/v1/secrets/s/reveal", {"reason": "r"}, acme, ["secret.revealed"]),
        ("POST", "/v1/secrets/tools-secret/reveal", None, member, ["secret.reveal_denied"]),
        ("DELETE", "/v1/secrets/s", None, acme, ["secret.deleted"]),
        ("POST", "/v1/keys", {"label": "k"}, acme, ["api_key.created"]),
        ("DELETE", f"/v1/keys/{member.key_id}", None, acme, ["api_key.revoked"]),
        ("POST", "/v1/admin/orgs", {"org": "neworg"}, None, ["org.created", "api_key.created"]),
    ]
    for i, (method, path, body, key, types) in enumerate(calls):
        request_id = f"req-{i}.trace:{secrets.token_hex(4)}"
        agent = f"keyledger-tests/{i} (+probe)"
        headers = {**(key.headers if key else ADMIN_HEADERS), "X-Request-ID": request_id, "User-Agent": agent}
        before = max_seq(db_file)
        response = client.request(method, path, json=body, headers=headers)
        assert response.status_code < 500, response.text
        assert response.headers["x-request-id"] == request_id
        if response.content and response.headers["content-type"].startswith("application/problem+json"):
            assert response.json()["request_id"] == request_id
        events = events_after(db_file, before)
        assert [e["type"] for e in events] == types, path
        for event in events:
            assert event["request_id"] == request_id
            assert event["source"] == {"address": "testclient", "user_agent": agent}
        rows = audit_after(db_file, before)
        assert [(r["request_id"], r["client_address"], r["user_agent"]) for r in rows] == [
            (request_id, "testclient", agent)
        ] * len(types)


def test_request_id_is_generated_when_absent_or_unusable(client: Client, db_file: Path, acme: Key) -> None:
    seen = set()
    for given in (None, "has spaces", "x" * 129, "semi;colon", ""):
        headers = dict(acme.headers)
        if given is not None:
            headers["X-Request-ID"] = given
        before = max_seq(db_file)
        response = client.post("/v1/secrets", json={"name": "s", "value": "v"}, headers=headers)
        generated = response.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated), generated
        assert generated != given
        [row] = audit_after(db_file, before)
        assert row["request_id"] == generated
        seen.add(generated)
    assert len(seen) == 5
    # Errors carry it too, in the header and in the problem.
    missing = client.get(secret_path("nope"), headers=acme.headers)
    assert missing.json()["request_id"] == missing.headers["x-request-id"]


# -- idempotency ---------------------------------------------------------------------------------------------


def idem(key: Key | None, idempotency_key: str) -> dict[str, str]:
    return {**(key.headers if key else ADMIN_HEADERS), "Idempotency-Key": idempotency_key}


def test_idempotent_upsert_replays_the_first_answer_and_appends_nothing(
    client: Client, db_file: Path, acme: Key
) -> None:
    body = {"name": "s", "value": "v", "category": "provider"}
    first = client.post("/v1/secrets", json=body, headers=idem(acme, "op-1"))
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    seq = max_seq(db_file)
    again = client.post("/v1/secrets", json=body, headers=idem(acme, "op-1"))
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["etag"] == first.headers["etag"] == '"1"'
    assert again.headers["location"] == first.headers["location"]
    assert max_seq(db_file) == seq
    # Still the first answer after the secret moved on.
    upsert(client, acme, "s", "w", expect=200)
    seq = max_seq(db_file)
    late = client.post("/v1/secrets", json=body, headers=idem(acme, "op-1"))
    assert (late.status_code, late.json()) == (201, first.json())
    assert max_seq(db_file) == seq
    assert client.get(secret_path("s"), headers=acme.headers).json()["version"] == 2


def test_same_idempotency_key_with_another_body_is_422(client: Client, db_file: Path, acme: Key) -> None:
    assert client.post("/v1/secrets", json={"name": "s", "value": "v"}, headers=idem(acme, "op")).status_code == 201
    seq = max_seq(db_file)
    other = client.post("/v1/secrets", json={"name": "s", "value": "different"}, headers=idem(acme, "op"))
    assert_problem(other, 422, "Idempotency-Key")
    other_route = client.post("/v1/keys", json={"label": "x"}, headers=idem(acme, "op"))
    assert_problem(other_route, 422, "Idempotency-Key")
    assert max_seq(db_file) == seq


def test_idempotent_reveal_replays_without_a_second_event(client: Client, db_file: Path, acme: Key) -> None:
    upsert(client, acme, "s", "revealed-once", expect=201)
    seq = max_seq(db_file)
    first = client.post(secret_path("s", "/reveal"), json={"reason": "deploy"}, headers=idem(acme, "r-1"))
    assert first.status_code == 200
    assert [e["type"] for e in events_after(db_file, seq)] == ["secret.revealed"]
    seq = max_seq(db_file)
    again = client.post(secret_path("s", "/reveal"), json={"reason": "deploy"}, headers=idem(acme, "r-1"))
    assert (again.status_code, again.json()) == (200, first.json())
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["cache-control"] == "no-store"
    assert max_seq(db_file) == seq


def test_idempotent_denied_reveal_replays_the_403(client: Client, db_file: Path, acme: Key) -> None:
    upsert(client, acme, "s", scope="tools", expect=201)
    member = create_key(client, acme, role="member", scope="agents")
    seq = max_seq(db_file)
    first = client.post(secret_path("s", "/reveal"), headers=idem(member, "d-1"))
    assert_problem(first, 403)
    again = client.post(secret_path("s", "/reveal"), headers=idem(member, "d-1"))
    assert_problem(again, 403)
    assert again.json() == first.json()
    assert [e["type"] for e in events_after(db_file, seq)] == ["secret.reveal_denied"]


def test_a_failed_command_stores_no_answer_so_a_retry_runs_again(client: Client, db_file: Path, acme: Key) -> None:
    assert_problem(client.post(secret_path("later", "/reveal"), headers=idem(acme, "retry")), 404)
    upsert(client, acme, "later", "now here", expect=201)
    retried = client.post(secret_path("later", "/reveal"), headers=idem(acme, "retry"))
    assert retried.status_code == 200
    assert retried.json()["value"] == "now here"
    assert "idempotent-replayed" not in retried.headers


def test_idempotent_key_creation_returns_the_same_key(client: Client, db_file: Path, acme: Key) -> None:
    first = client.post("/v1/keys", json={"label": "ci"}, headers=idem(acme, "k-1"))
    assert first.status_code == 201
    seq = max_seq(db_file)
    again = client.post("/v1/keys", json={"label": "ci"}, headers=idem(acme, "k-1"))
    assert (again.status_code, again.json()) == (201, first.json())
    assert again.headers["idempotent-replayed"] == "true"
    assert max_seq(db_file) == seq
    labels = [k["label"] for k in client.get("/v1/keys", headers=acme.headers).json()["keys"]]
    assert labels.count("ci") == 1


def test_idempotent_org_creation_replays_instead_of_409(client: Client, db_file: Path) -> None:
    first = client.post("/v1/admin/orgs", json={"org": "replayed"}, headers=idem(None, "o-1"))
    assert first.status_code == 201
    seq = max_seq(db_file)
    again = client.post("/v1/admin/orgs", json={"org": "replayed"}, headers=idem(None, "o-1"))
    assert (again.status_code, again.json()) == (201, first.json())
    assert again.headers["idempotent-replayed"] == "true"
    assert max_seq(db_file) == seq
    assert_problem(client.post("/v1/admin/orgs", json={"org": "replayed"}, headers=ADMIN_HEADERS), 409)


def test_idempotency_keys_are_scoped_per_org(client: Client, db_file: Path, acme: Key, globex: Key) -> None:
    body = {"name": "shared-name", "value": "v"}
    a = client.post("/v1/secrets", json=body, headers=idem(acme, "same-key"))
    seq = max_seq(db_file)
    b = client.post("/v1/secrets", json=body, headers=idem(globex, "same-key"))
    assert a.status_code == b.status_code == 201
    assert "idempotent-replayed" not in b.headers
    assert b.json()["created_by"] == globex.key_id
    assert [e["org"] for e in events_after(db_file, seq)] == ["globex"]
    assert client.get(secret_path("shared-name"), headers=globex.headers).status_code == 200
    # A different body under the same key in the other org is no conflict either.
    c = client.post("/v1/secrets", json={"name": "other", "value": "x"}, headers=idem(globex, "k2"))
    d = client.post("/v1/secrets", json={"name": "third", "value": "y"}, headers=idem(acme, "k2"))
    assert c.status_code == d.status_code == 201


@pytest.mark.parametrize("bad", [b"k" * 256, "ключ".encode(), b"tab\tkey", b""])
def test_unusable_idempotency_key_is_422(client: Client, db_file: Path, acme: Key, bad: bytes) -> None:
    seq = max_seq(db_file)
    headers = {b"authorization": acme.headers["Authorization"].encode(), b"idempotency-key": bad}
    response = client.post("/v1/secrets", json={"name": "s", "value": "v"}, headers=headers)
    assert_problem(response, 422, "Idempotency-Key")
    assert max_seq(db_file) == seq


def test_bug_idempotent_replay_bypasses_the_reveal_scope_check(client: Client, db_file: Path, acme: Key) -> None:
    upsert(client, acme, "tools-only", "tools-value", scope="tools", expect=201)
    agents = create_key(client, acme, role="member", scope="agents")
    first = client.post(secret_path("tools-only", "/reveal"), headers=idem(acme, "deploy-7"))
    assert first.json()["value"] == "tools-value"
    seq = max_seq(db_file)
    replay = client.post(secret_path("tools-only", "/reveal"), headers=idem(agents, "deploy-7"))
    assert "tools-value" not in replay.text
    assert replay.status_code in (403, 422)
    assert max_seq(db_file) > seq  # a denied reveal is recorded


# -- health -----------------------------------------------------------------------------------------------------


def test_healthz_and_readyz(client: Client, db_file: Path, acme: Key) -> None:
    health = client.get("/healthz")
    assert (health.status_code, health.json()["status"]) == (200, "ok")
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "position": max_seq(db_file)}
    upsert(client, acme, "s", expect=201)
    assert client.get("/readyz").json()["position"] == max_seq(db_file) == 3


# -- the app factory --------------------------------------------------------------------------------------------


def test_app_factory_emits_no_deprecation_warnings(tmp_path: Path) -> None:
    # Litestar 2.25 deprecates inferred dependencies, Parameter(header=/query=), path parameters and
    # `data` without markers; pyproject turns warnings into errors, so each would break the suite.
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        app = create_app(Settings(db=tmp_path / "w.db", master_key=MasterKey.generate()[0]))
        with make_client(app) as started:
            assert started.get("/schema/openapi.json").status_code == 200


def test_bug_a_nul_in_a_name_or_a_filter_answers_like_any_missing_name(client: Client, acme: Key) -> None:
    # PostgreSQL text cannot hold NUL: the fuzz found a 500 there (SQLite compared it and found nothing).
    upsert(client, acme, "a", "v", expect=201)
    assert client.post(secret_path("a", "/reveal"), headers=acme.headers).status_code == 200
    assert client.get(secret_path("a\x00"), headers=acme.headers).status_code == 404
    reveals = client.get("/v1/compliance/reveals", params={"secret": "a\x00"}, headers=acme.headers)
    assert reveals.status_code == 200, reveals.text
    assert reveals.json() == client.get("/v1/compliance/reveals", params={"secret": "nobody"},
                                        headers=acme.headers).json()
    audit = client.get("/v1/audit", params={"secret": "a\x00", "actor": "k\x00"}, headers=acme.headers)
    assert audit.status_code == 200 and audit.json()["events"] == [], audit.text
    assert client.get("/v1/audit", params={"secret": "a"}, headers=acme.headers).json()["events"]  # control
    # The write side: refused or missing as on SQLite, never a 5xx.
    assert client.post(secret_path("a\x00", "/reveal"), headers=acme.headers).status_code in (404, 422)
    assert client.delete(secret_path("a\x00"), headers=acme.headers).status_code in (404, 422)
    assert client.delete("/v1/keys/key_%00", headers=acme.headers).status_code in (404, 422)
    assert client.get("/v1/compliance/exposure", params={"secret": "a\x00", "version": 1},
                      headers=acme.headers).status_code in (200, 404, 422)


# -- versions -------------------------------------------------------------------------------------


def test_versions_list_every_version_and_reveal_takes_an_earlier_one(
    client: Client, db_file: Path, acme: Key
) -> None:
    for value in ("one", "two", "three"):
        upsert(client, acme, "db", value)
    listed = client.get(secret_path("db", "/versions"), headers=acme.headers)
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert body["name"] == "db"
    assert [(v["version"], v["how"], v["created_by"], v["value_exists"]) for v in body["versions"]] == [
        (1, "create", acme.key_id, True), (2, "update", acme.key_id, True), (3, "update", acme.key_id, True)]
    assert all(RFC3339.match(v["created_at"]) for v in body["versions"])
    assert "one" not in listed.text and "two" not in listed.text  # metadata only
    before = max_seq(db_file)
    old = client.post(secret_path("db", "/reveal"), json={"version": 1}, headers=acme.headers)
    assert old.status_code == 200 and old.json() == {"name": "db", "value": "one", "version": 1}, old.text
    current = client.post(secret_path("db", "/reveal"), headers=acme.headers)
    assert current.json()["value"] == "three" and current.json()["version"] == 3
    assert [(e["type"], e["version"]) for e in events_after(db_file, before)] == [
        ("secret.revealed", 1), ("secret.revealed", 3)]  # the event records the version revealed
    for missing in (4, 99):
        assert_problem(client.post(secret_path("db", "/reveal"), json={"version": missing}, headers=acme.headers),
                       404)
    assert_problem(client.post(secret_path("db", "/reveal"), json={"version": 0}, headers=acme.headers), 422)


def test_versions_of_a_deleted_or_foreign_name_are_not_found(client: Client, acme: Key, globex: Key) -> None:
    upsert(client, acme, "gone", "v", expect=201)
    assert client.delete(secret_path("gone"), headers=acme.headers).status_code == 204
    assert_problem(client.get(secret_path("gone", "/versions"), headers=acme.headers), 404)
    upsert(client, acme, "mine", "v", expect=201)
    foreign = client.get(secret_path("mine", "/versions"), headers=globex.headers)
    missing = client.get(secret_path("never", "/versions"), headers=globex.headers)
    assert (foreign.status_code, foreign.json()["detail"].replace("mine", "X")) == (
        missing.status_code, missing.json()["detail"].replace("never", "X"))
    # Re-created: the name's history goes on (versions only grow), the old incarnation's included.
    upsert(client, acme, "gone", "again", expect=201)
    versions = client.get(secret_path("gone", "/versions"), headers=acme.headers).json()["versions"]
    assert [(v["version"], v["how"]) for v in versions] == [(1, "create"), (2, "create")]
