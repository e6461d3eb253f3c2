"""The audit faces of the HTTP API (issue 4): audit query, point in time (`as_of`), exports, signed
checkpoints, chain verification and compliance queries, through Litestar's sync TestClient on a real
SQLite file. Expected answers are computed from the raw `events` table (read-only), never from the
projections the routes themselves read.

One module-wide history (two orgs, every kind of event) serves the read-only tests; the tests that
tamper with the file or restart the app build their own.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from api.app import create_app
from api.settings import Settings
from ledger.checkpoint import CheckpointError, check_signature, parse_checkpoint
from ledger.crypto import MasterKey
from ledger.export import CSV_COLUMNS, verify_export
from tests.api.conftest import BACKENDS
from tests.api.conftest import query as query_database
from tests.pg import PgDsn, pg_database

pytestmark = [
    # Building the app under Litestar 2.x warns (pinned elsewhere); pyproject turns warnings into errors.
    pytest.mark.filterwarnings("ignore::litestar.exceptions.LitestarDeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Deprecated '(header|query)' parameter:DeprecationWarning"),
]

Client = TestClient[Litestar]
ADMIN_TOKEN = "t"
OPERATOR = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FORMULA_LABEL = '=HYPERLINK("http://evil.example/","x")'
FORMULA_SECRET = "=cmd|' -C calc'!A0"
FORMULA_AGENT = "@SUM(1+1)"
ACTIONS = ("org.created", "api_key.created", "api_key.revoked", "secret.created", "secret.updated",
           "secret.deleted", "secret.revealed", "secret.reveal_denied")
COMPLIANCE = {
    "stale-secrets": {"days": 0},
    "reveals": {"secret": "db-password"},
    "exposure": {"secret": "db-password", "version": 1},
    "never-revealed": {},
    "revoked-key-reveals": {},
    "denied-reveals": {},
    "reveal-counts": {},
}


# -- fixtures and helpers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    org: str
    key_id: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


@dataclass
class World:
    """The module's history: what was done, the answers given, and the global seq after each step."""

    client: Client
    db: Path | PgDsn
    acme: Key
    globex: Key
    member: Key  # acme, role member, scope agents
    doomed: Key  # acme, role member, scope all; revoked after one reveal
    values: list[str]
    answers: dict[str, dict[str, Any]]  # "name@version" -> the upsert's answer (metadata)
    points: dict[str, int]  # step -> max seq right after it
    denied_seq: int = 0
    doomed_reveal_seq: int = 0
    member_reveal_seq: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def make_settings(db: Path | PgDsn, master_key: MasterKey | None = None) -> Settings:
    return Settings(db=db, master_key=master_key or MasterKey.generate()[0], admin_token=ADMIN_TOKEN)


def create_org(client: Client, org: str) -> Key:
    response = client.post("/v1/admin/orgs", json={"org": org}, headers=OPERATOR)
    assert response.status_code == 201, response.text
    body = response.json()
    return Key(org=org, key_id=body["key_id"], api_key=body["api_key"])


def create_key(client: Client, admin: Key, *, role: str, scope: str, label: str) -> Key:
    response = client.post("/v1/keys", json={"label": label, "role": role, "scope": scope}, headers=admin.headers)
    assert response.status_code == 201, response.text
    return Key(org=admin.org, key_id=response.json()["key_id"], api_key=response.json()["api_key"])


def upsert(client: Client, key: Key, name: str, value: str, **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/secrets", json={"name": name, "value": value, **fields}, headers=key.headers)
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


def secret_path(name: str) -> str:
    return f"/v1/secrets/{quote(name, safe='')}"


def rows(db: Path | PgDsn, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    return query_database(db, sql, params)


def max_seq(db: Path | PgDsn) -> int:
    return int(rows(db, "SELECT COALESCE(MAX(seq), 0) FROM events")[0][0])


@dataclass(frozen=True)
class Raw:
    """One event as stored, with what the filters look at, decoded by hand from the body."""

    seq: int
    org_seq: int
    type: str
    at: int
    actor: str
    secret: str | None
    outcome: str
    body: bytes
    hash: bytes


def raw_events(db: Path | PgDsn, org: str) -> list[Raw]:
    found = []
    for seq, org_seq, type_, at, body, digest in rows(
        db, "SELECT seq, org_seq, type, at, body, hash FROM events WHERE org = ? ORDER BY seq", (org,)
    ):
        event = json.loads(body)
        outcome = {"secret.revealed": "granted", "secret.reveal_denied": "denied"}.get(type_, "ok")
        secret = event.get("name") if type_.startswith("secret.") else None
        found.append(Raw(seq=seq, org_seq=org_seq, type=type_, at=at, actor=event["actor"]["key_id"],
                         secret=secret, outcome=outcome, body=bytes(body), hash=bytes(digest)))
    return found


def rfc3339_us(ns: int) -> str:
    """A time at microsecond precision (floored), as the API prints them."""
    moment = datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC).replace(microsecond=(ns % 1_000_000_000) // 1000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ns_of(text: str) -> int:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    return int(moment.replace(microsecond=0).timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def time_between(earlier: Raw, later: Raw) -> str:
    """A time (µs precision) strictly after `earlier` and strictly before `later`."""
    text = rfc3339_us((earlier.at + later.at) // 2)
    assert earlier.at < ns_of(text) < later.at, "events too close together for a time between them"
    return text


def all_pages(client: Client, key: Key, **params: Any) -> tuple[list[dict[str, Any]], int]:
    """Every event of /v1/audit by following next_cursor; also the number of pages."""
    events: list[dict[str, Any]] = []
    pages = 0
    cursor = None
    while True:
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        response = client.get("/v1/audit", params=query, headers=key.headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"events", "next_cursor"}
        events.extend(body["events"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return events, pages
        assert pages < 1000, "pagination does not end"


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [e["seq"] for e in events]


def export(client: Client, key: Key, fmt: str, **params: Any) -> tuple[str, bytes]:
    response = client.get("/v1/audit/export", params={"format": fmt, **params}, headers=key.headers)
    assert response.status_code == 200, response.text
    return response.headers["content-type"], response.content


def export_seqs(fmt: str, data: bytes) -> list[int]:
    if fmt == "csv":
        table = list(csv.reader(io.StringIO(data.decode())))
        assert tuple(table[0]) == CSV_COLUMNS
        return [int(r[0]) for r in table[1:]]
    lines = [json.loads(line) for line in data.splitlines()]
    if fmt == "ocsf":
        return [line["unmapped"]["seq"] for line in lines]
    return [line["seq"] for line in lines]


@pytest.fixture(scope="module", params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with contextlib.ExitStack() as stack:
        db: Path | PgDsn = (tmp_path_factory.mktemp("audit-api") / "k.db" if request.param == "sqlite"
                            else stack.enter_context(pg_database()))
        yield from _build_world(db)


def _build_world(db: Path | PgDsn) -> Iterator[World]:
    with TestClient(create_app(make_settings(db))) as client:
        points: dict[str, int] = {}
        acme = create_org(client, "acme")
        globex = create_org(client, "globex")
        member = create_key(client, acme, role="member", scope="agents", label="agent key")
        doomed = create_key(client, acme, role="member", scope="all", label=FORMULA_LABEL)
        values = ["pw-one-6c1f0e", "tool-tok-93ab", "globex-pw-77d2", "old-key-1e5a", "pw-two-0f9d", "calc-55aa"]
        answers: dict[str, dict[str, Any]] = {}
        answers["db-password@1"] = upsert(client, acme, "db-password", values[0], description="primary db")
        points["db-password@1"] = max_seq(db)
        answers["tool-token@1"] = upsert(client, acme, "tool-token", values[1], scope="tools", category="tool")
        upsert(client, globex, "db-password", values[2])
        answers["old-api-key@1"] = upsert(client, acme, "old-api-key", values[3], category="provider")
        points["old-api-key@1"] = max_seq(db)
        answers["db-password@2"] = upsert(client, member, "db-password", values[4])
        points["db-password@2"] = max_seq(db)
        response = client.post(secret_path("db-password") + "/reveal", json={"reason": "deploy"},
                               headers=member.headers)
        assert response.status_code == 200 and response.json()["value"] == values[4], response.text
        member_reveal_seq = max_seq(db)
        response = client.post(secret_path("tool-token") + "/reveal", headers=member.headers)
        assert response.status_code == 403, response.text
        denied_seq = max_seq(db)
        response = client.post(secret_path("db-password") + "/reveal",
                               headers={**doomed.headers, "User-Agent": FORMULA_AGENT})
        assert response.status_code == 200, response.text
        doomed_reveal_seq = max_seq(db)
        assert client.delete(secret_path("old-api-key"), headers=acme.headers).status_code == 204
        points["deleted"] = max_seq(db)
        assert client.delete(f"/v1/keys/{doomed.key_id}", headers=acme.headers).status_code == 204
        points["revoked"] = max_seq(db)
        answers[f"{FORMULA_SECRET}@1"] = upsert(client, acme, FORMULA_SECRET, values[5])
        points["formula"] = max_seq(db)
        assert client.post(secret_path("db-password") + "/reveal", headers=globex.headers).status_code == 200
        yield World(client=client, db=db, acme=acme, globex=globex, member=member, doomed=doomed, values=values,
                    answers=answers, points=points, denied_seq=denied_seq, doomed_reveal_seq=doomed_reveal_seq,
                    member_reveal_seq=member_reveal_seq)


# -- GET /v1/audit -----------------------------------------------------------------------------------


def test_every_event_of_the_org_appears_with_its_fields(world: World) -> None:
    raw = raw_events(world.db, "acme")
    events, _ = all_pages(world.client, world.acme, limit=1000, order="oldest")
    assert seqs(events) == [r.seq for r in raw]
    assert {e["action"] for e in events} == set(ACTIONS)
    for event, r in zip(events, raw, strict=True):
        body = json.loads(r.body)
        assert event["action"] == r.type
        assert event["actor"]["key_id"] == r.actor
        assert event["actor"]["label"] == body["actor"]["label"]
        assert event["request_id"] == body["request_id"]
        assert event["secret"] == r.secret
        assert event["outcome"] == r.outcome
        assert event["time"] == rfc3339_us(r.at)
    by_seq = {e["seq"]: e for e in events}
    denied = by_seq[world.denied_seq]
    assert (denied["action"], denied["outcome"], denied["secret"]) == ("secret.reveal_denied", "denied", "tool-token")
    assert "scope" in denied["detail"]
    granted = by_seq[world.member_reveal_seq]
    assert (granted["outcome"], granted["detail"], granted["version"]) == ("granted", "deploy", 2)
    assert by_seq[world.doomed_reveal_seq]["source"]["user_agent"] == FORMULA_AGENT
    assert by_seq[world.points["revoked"]]["action"] == "api_key.revoked"
    created_keys = [e for e in events if e["action"] == "api_key.created"]
    assert len(created_keys) == 3  # the org's first key, the member's, the doomed one


def test_audit_is_for_admin_keys_only(world: World) -> None:
    assert world.client.get("/v1/audit", headers=world.member.headers).status_code == 403
    assert world.client.get("/v1/audit", headers=world.doomed.headers).status_code == 401  # revoked
    assert world.client.get("/v1/audit").status_code == 401
    assert world.client.get("/v1/audit", headers=world.acme.headers).status_code == 200


def filter_cases(world: World) -> list[tuple[dict[str, Any], list[int]]]:
    """(query, expected seqs oldest first), computed from the raw events."""
    raw = raw_events(world.db, "acme")
    index = {r.seq: i for i, r in enumerate(raw)}
    before_update = raw[index[world.points["db-password@2"]] - 1]
    update = raw[index[world.points["db-password@2"]]]
    cut = time_between(before_update, update)
    deleted = raw[index[world.points["deleted"]]]
    revoke = raw[index[world.points["revoked"]]]
    cut2 = time_between(deleted, revoke)
    cut_offset = datetime.fromisoformat(cut.replace("Z", "+00:00")).astimezone(timezone(timedelta(hours=2))).isoformat()
    assert cut_offset.endswith("+02:00")
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"action": "secret.revealed"}, lambda r: r.type == "secret.revealed"),
        ({"action": "api_key.created"}, lambda r: r.type == "api_key.created"),
        ({"action": "org.created"}, lambda r: r.type == "org.created"),
        ({"secret": "db-password"}, lambda r: r.secret == "db-password"),
        ({"secret": FORMULA_SECRET}, lambda r: r.secret == FORMULA_SECRET),
        ({"actor": world.member.key_id}, lambda r: r.actor == world.member.key_id),
        ({"actor": "admin"}, lambda r: r.actor == "admin"),
        ({"outcome": "denied"}, lambda r: r.outcome == "denied"),
        ({"outcome": "granted"}, lambda r: r.outcome == "granted"),
        ({"outcome": "ok"}, lambda r: r.outcome == "ok"),
        ({"since": cut}, lambda r: r.at >= ns_of(cut)),
        ({"since": cut_offset}, lambda r: r.at >= ns_of(cut)),
        ({"until": cut}, lambda r: r.at <= ns_of(cut)),
        ({"since": cut, "until": cut2}, lambda r: ns_of(cut) <= r.at <= ns_of(cut2)),
        ({"after_seq": world.points["old-api-key@1"]}, lambda r: r.seq > world.points["old-api-key@1"]),
        ({"action": "secret.revealed", "secret": "db-password", "actor": world.doomed.key_id},
         lambda r: r.type == "secret.revealed" and r.secret == "db-password" and r.actor == world.doomed.key_id),
        ({"secret": "nothing-by-this-name"}, lambda r: False),
    ]
    return [(query, [r.seq for r in raw if keep(r)]) for query, keep in cases]


def test_each_filter_returns_exactly_the_matching_events(world: World) -> None:
    total = len(raw_events(world.db, "acme"))
    for query, expected in filter_cases(world):
        assert len(expected) < total, query  # every filter really filters
        newest, _ = all_pages(world.client, world.acme, limit=1000, **query)
        assert seqs(newest) == expected[::-1], query
        oldest, _ = all_pages(world.client, world.acme, limit=1000, order="oldest", **query)
        assert seqs(oldest) == expected, query
    assert any(expected for _, expected in filter_cases(world))


def test_export_applies_the_same_filters_in_every_format(world: World) -> None:
    for query, expected in filter_cases(world):
        for fmt in ("jsonl", "csv", "ocsf"):
            _, data = export(world.client, world.acme, fmt, **query)
            assert export_seqs(fmt, data) == expected, (fmt, query)


@pytest.mark.parametrize("order", ["newest", "oldest"])
@pytest.mark.parametrize("limit", [1, 3, 4])
def test_cursor_pagination_returns_every_event_once_in_order(world: World, order: str, limit: int) -> None:
    expected = [r.seq for r in raw_events(world.db, "acme")]
    if order == "newest":
        expected.reverse()
    events, pages = all_pages(world.client, world.acme, order=order, limit=limit)
    assert seqs(events) == expected
    assert pages == -(-len(expected) // limit)


def test_cursor_pagination_keeps_the_filters(world: World) -> None:
    expected = [r.seq for r in raw_events(world.db, "acme") if r.secret == "db-password"]
    assert len(expected) >= 4
    events, pages = all_pages(world.client, world.acme, secret="db-password", limit=2)
    assert seqs(events) == expected[::-1] and pages == -(-len(expected) // 2)
    events, _ = all_pages(world.client, world.acme, secret="db-password", limit=2, order="oldest",
                          after_seq=expected[0])
    assert seqs(events) == expected[1:]


def cursor_for(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize("query", [
    {"since": "yesterday"},
    {"since": "2026-11-28T18:00:00"},  # no time zone
    {"until": "2026-13-01T00:00:00Z"},
    {"until": "x" * 65},
    {"action": "secret.peeked"},
    {"outcome": "maybe"},
    {"after_seq": "-1"},
    {"after_seq": "three"},
    {"cursor": "zzz"},
    {"cursor": cursor_for("key:5")},
    {"cursor": cursor_for("seq:5") + "A"},
    {"limit": "0"},
    {"order": "sideways"},
])
def test_invalid_filter_values_are_422(world: World, query: dict[str, str]) -> None:
    response = world.client.get("/v1/audit", params=query, headers=world.acme.headers)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    field_name = next(iter(query))
    assert field_name in response.json()["detail"]


@pytest.mark.parametrize("query", [{"since": "yesterday"}, {"format": "xml"}, {"action": "nope"}])
def test_invalid_export_values_are_422(world: World, query: dict[str, str]) -> None:
    response = world.client.get("/v1/audit/export", params=query, headers=world.acme.headers)
    assert response.status_code == 422, response.text


def test_bug_cursor_with_a_unicode_digit_is_422_not_500(world: World) -> None:
    response = world.client.get("/v1/audit", params={"cursor": cursor_for("seq:²")}, headers=world.acme.headers)
    assert response.status_code == 422, response.text


def test_bug_until_the_printed_time_of_an_event_includes_it(world: World) -> None:
    events, _ = all_pages(world.client, world.acme, limit=1000, order="oldest")
    raw = {r.seq: r for r in raw_events(world.db, "acme")}
    # An event whose stored time has nanoseconds beyond the printed microseconds (nearly all of them).
    target = next((e for e in events if raw[e["seq"]].at % 1000 and e["action"] == "secret.created"), None)
    if target is None:
        pytest.skip("every event landed on a whole microsecond")
    found, _ = all_pages(world.client, world.acme, limit=1000, order="oldest", until=target["time"],
                         action="secret.created")
    assert target["seq"] in seqs(found)


def test_orgs_see_none_of_each_others_events(world: World) -> None:
    acme_seqs = {r.seq for r in raw_events(world.db, "acme")}
    globex_raw = raw_events(world.db, "globex")
    events, _ = all_pages(world.client, world.globex, limit=1000)
    assert seqs(events) == [r.seq for r in globex_raw][::-1]
    assert not acme_seqs & set(seqs(events))
    # A filter on acme's own key, or acme's secret name, finds nothing of acme's from globex.
    assert all_pages(world.client, world.globex, actor=world.member.key_id)[0] == []
    found, _ = all_pages(world.client, world.globex, secret="db-password")
    assert found and not acme_seqs & set(seqs(found))
    for fmt in ("jsonl", "csv", "ocsf"):
        _, data = export(world.client, world.globex, fmt)
        assert export_seqs(fmt, data) == [r.seq for r in globex_raw]
        assert b"acme" not in data
    _, data = export(world.client, world.globex, "jsonl")
    report = verify_export(data.splitlines())
    assert report.ok and report.checked == len(globex_raw), report.summary()


# -- as_of -------------------------------------------------------------------------------------------


def listing(world: World, key: Key | None = None, **params: Any) -> list[dict[str, Any]]:
    response = world.client.get("/v1/secrets", params=params, headers=(key or world.acme).headers)
    assert response.status_code == 200, response.text
    assert response.json()["next_cursor"] is None
    items: list[dict[str, Any]] = response.json()["secrets"]
    return items


def test_as_of_a_seq_lists_the_metadata_as_it_was(world: World) -> None:
    a, p = world.answers, world.points
    assert listing(world, as_of=str(p["db-password@1"])) == [a["db-password@1"]]
    assert listing(world, as_of=str(p["old-api-key@1"])) == [a["db-password@1"], a["old-api-key@1"],
                                                              a["tool-token@1"]]
    assert listing(world, as_of=str(p["db-password@2"])) == [a["db-password@2"], a["old-api-key@1"],
                                                              a["tool-token@1"]]
    # Deleted now, but back in place just before its deletion; later secrets absent.
    assert listing(world, as_of=str(p["deleted"] - 1)) == [a["db-password@2"], a["old-api-key@1"],
                                                            a["tool-token@1"]]
    assert listing(world, as_of=str(p["deleted"])) == [a["db-password@2"], a["tool-token@1"]]
    now = listing(world)
    assert [s["name"] for s in now] == [FORMULA_SECRET, "db-password", "tool-token"]
    assert listing(world, as_of=str(max_seq(world.db))) == now
    assert listing(world, as_of="0") == []
    assert listing(world, as_of="1") == []  # acme's org.created only


def test_as_of_a_seq_gets_one_secret_as_it_was(world: World) -> None:
    a, p, client, headers = world.answers, world.points, world.client, world.acme.headers

    def get(name: str, as_of: int) -> Any:
        return client.get(secret_path(name), params={"as_of": str(as_of)}, headers=headers)

    assert get("db-password", p["db-password@1"]).json() == a["db-password@1"]
    assert get("db-password", p["db-password@2"] - 1).json() == a["db-password@1"]
    assert get("db-password", p["db-password@2"]).json() == a["db-password@2"]
    assert client.get(secret_path("old-api-key"), headers=headers).status_code == 404
    assert get("old-api-key", p["deleted"] - 1).json() == a["old-api-key@1"]
    assert get("old-api-key", p["deleted"]).status_code == 404
    assert get(FORMULA_SECRET, p["formula"] - 1).status_code == 404
    assert get(FORMULA_SECRET, p["formula"]).json() == a[f"{FORMULA_SECRET}@1"]
    assert get("db-password", p["db-password@1"] - 1).status_code == 404


def test_as_of_a_time_answers_as_at_that_moment(world: World) -> None:
    raw = raw_events(world.db, "acme")
    index = {r.seq: i for i, r in enumerate(raw)}
    update = index[world.points["db-password@2"]]
    before = time_between(raw[update - 1], raw[update])
    after = time_between(raw[update], raw[update + 1])
    a = world.answers
    assert listing(world, as_of=before) == [a["db-password@1"], a["old-api-key@1"], a["tool-token@1"]]
    assert listing(world, as_of=after) == [a["db-password@2"], a["old-api-key@1"], a["tool-token@1"]]
    got = world.client.get(secret_path("db-password"), params={"as_of": before}, headers=world.acme.headers)
    assert got.json() == a["db-password@1"]
    assert listing(world, as_of="2000-01-01T00:00:00Z") == []
    deleted = index[world.points["deleted"]]
    just_before_delete = time_between(raw[deleted - 1], raw[deleted])
    names = [s["name"] for s in listing(world, as_of=just_before_delete)]
    assert names == ["db-password", "old-api-key", "tool-token"]


def test_as_of_keeps_paging_and_filters(world: World) -> None:
    point = str(world.points["deleted"] - 1)
    names, cursor = [], None
    while True:
        params = {"as_of": point, "limit": 1, **({"cursor": cursor} if cursor else {})}
        body = world.client.get("/v1/secrets", params=params, headers=world.acme.headers).json()
        names.extend(s["name"] for s in body["secrets"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert names == ["db-password", "old-api-key", "tool-token"]
    only = listing(world, as_of=point, category="provider")
    assert only == [world.answers["old-api-key@1"]]
    assert listing(world, as_of=point, scope="tools") == [world.answers["tool-token@1"]]


def test_as_of_sees_only_the_callers_org(world: World) -> None:
    head = str(max_seq(world.db))
    found = listing(world, world.globex, as_of=head)
    assert [s["name"] for s in found] == ["db-password"]
    assert found[0]["created_by"] == world.globex.key_id
    response = world.client.get(secret_path("tool-token"), params={"as_of": head}, headers=world.globex.headers)
    assert response.status_code == 404


@pytest.mark.parametrize("as_of", ["yesterday", "2026-11-28T18:00:00", "", "-5", "1" * 19, "12abc", "x" * 65])
def test_bad_as_of_is_422(world: World, as_of: str) -> None:
    for path in ("/v1/secrets", secret_path("db-password")):
        response = world.client.get(path, params={"as_of": as_of}, headers=world.acme.headers)
        assert response.status_code == 422, (path, as_of, response.text)
        assert "as_of" in response.json()["detail"]


@pytest.mark.parametrize("moment", ["2999-01-01T00:00:00Z", "2262-04-12T00:00:00Z", "1969-12-31T23:59:59Z"])
def test_bug_times_beyond_64_bit_nanoseconds_are_422_not_500(world: World, moment: str) -> None:
    # Found by the canary suite: a year-2999 `as_of` reached SQLite as an integer it cannot hold.
    for path, params in (
        ("/v1/compliance/stale-secrets", {"as_of": moment}), ("/v1/secrets", {"as_of": moment}),
        ("/v1/audit", {"until": moment}), ("/v1/audit", {"since": moment}),
        ("/v1/compliance/reveal-counts", {"until": moment}),
    ):
        response = world.client.get(path, params=params, headers=world.acme.headers)
        assert response.status_code == 422, (path, params, response.text)
        assert "2262-04-11" in response.json()["detail"]


def test_bug_as_of_with_a_unicode_digit_is_422_not_500(world: World) -> None:
    response = world.client.get("/v1/secrets", params={"as_of": "²"}, headers=world.acme.headers)
    assert response.status_code == 422, response.text


def test_bug_as_of_the_printed_updated_at_shows_that_update(world: World) -> None:
    raw = {r.seq: r for r in raw_events(world.db, "acme")}
    update = raw[world.points["db-password@2"]]
    if update.at % 1000 == 0:
        pytest.skip("the update landed on a whole microsecond")
    answer = world.answers["db-password@2"]
    assert answer["updated_at"] == rfc3339_us(update.at)
    got = world.client.get(secret_path("db-password"), params={"as_of": answer["updated_at"]},
                           headers=world.acme.headers)
    assert got.status_code == 200 and got.json()["version"] == 2, got.text


# -- export ------------------------------------------------------------------------------------------


def test_jsonl_export_is_the_whole_chain_and_verifies(world: World) -> None:
    raw = raw_events(world.db, "acme")
    response = world.client.get("/v1/audit/export", params={"format": "jsonl"}, headers=world.acme.headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert "acme-audit.jsonl" in response.headers["content-disposition"]
    lines = response.content.splitlines()
    assert len(lines) == len(raw)
    for line, r in zip(lines, raw, strict=True):
        item = json.loads(line)
        assert (item["seq"], item["org"], item["org_seq"], item["type"], item["at"]) == (
            r.seq, "acme", r.org_seq, r.type, r.at)
        assert item["body"] == json.loads(r.body) and item["hash"] == r.hash.hex()
        assert {"prev_hash", "time", "actor", "source", "request_id", "secret", "version", "outcome"} <= set(item)
    report = verify_export(lines)
    assert report.ok, report.summary()
    assert report.checked == len(raw)
    assert report.orgs == {"acme": (raw[-1].org_seq, raw[-1].hash.hex())}
    # Never a value, nor a ciphertext.
    for value in world.values:
        assert value.encode() not in response.content
    for (sealed,) in rows(world.db, "SELECT sealed FROM events WHERE org = 'acme' AND sealed IS NOT NULL"):
        assert sealed.encode() not in response.content
        assert sealed.split(":")[1].encode() not in response.content
    # The verifier checks what it is given: one changed line is caught, with its line number.
    tampered = list(lines)
    tampered[4] = tampered[4].replace(b'"secret.created"', b'"secret.updated"', 1)
    bad = verify_export(tampered)
    assert not bad.ok and "line 5" in bad.reason


def test_csv_export_has_a_header_and_one_row_per_event_with_formulas_escaped(world: World) -> None:
    raw = raw_events(world.db, "acme")
    content_type, data = export(world.client, world.acme, "csv")
    assert content_type.startswith("text/csv")
    table = list(csv.reader(io.StringIO(data.decode())))
    assert tuple(table[0]) == CSV_COLUMNS
    assert [int(r[0]) for r in table[1:]] == [r.seq for r in raw]
    column = {name: i for i, name in enumerate(CSV_COLUMNS)}
    for row, r in zip(table[1:], raw, strict=True):
        assert row[column["type"]] == r.type and row[column["hash"]] == r.hash.hex()
        assert row[column["org"]] == "acme" and int(row[column["org_seq"]]) == r.org_seq
    cells = {cell for row in table[1:] for cell in row}
    assert "'" + FORMULA_SECRET in cells and FORMULA_SECRET not in cells
    assert "'" + FORMULA_LABEL in cells and FORMULA_LABEL not in cells
    assert "'" + FORMULA_AGENT in cells and FORMULA_AGENT not in cells
    for cell in cells:
        assert not cell.startswith(("=", "+", "-", "@")), cell


def test_bug_csv_export_content_type_names_its_charset_once(world: World) -> None:
    content_type, _ = export(world.client, world.acme, "csv")
    assert content_type == "text/csv; charset=utf-8"


def test_ocsf_export_maps_reveals_and_key_changes(world: World) -> None:
    raw = raw_events(world.db, "acme")
    content_type, data = export(world.client, world.acme, "ocsf")
    assert content_type.startswith("application/x-ndjson")
    lines = [json.loads(line) for line in data.splitlines()]
    assert len(lines) == len(raw)
    for item, r in zip(lines, raw, strict=True):
        assert item["unmapped"] == {"keyledger_type": r.type, "seq": r.seq, "hash": r.hash.hex()}
        assert item["metadata"]["uid"] == f"acme:{r.org_seq}" and item["metadata"]["tenant_uid"] == "acme"
        assert item["time"] == r.at // 1_000_000
        assert item["actor"]["user"]["uid"] == r.actor
        if r.type.startswith("api_key."):
            assert (item["class_uid"], item["category_uid"]) == (3004, 3)
            assert item["activity_id"] == (1 if r.type == "api_key.created" else 4)
            assert item["type_uid"] == 300400 + item["activity_id"]
        elif r.type in ("secret.revealed", "secret.reveal_denied"):
            assert (item["class_uid"], item["category_uid"]) == (6003, 6)
            assert item["type_uid"] == 600300 + item["activity_id"]
            assert item["status_id"] == (2 if r.type == "secret.reveal_denied" else 1)
            assert item["resources"][0]["name"] == r.secret
    assert sum(item["class_uid"] == 3004 for item in lines) == sum(r.type.startswith("api_key.") for r in raw)


def test_export_pages_through_the_ledger_in_chunks(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = {fmt: export(world.client, world.acme, fmt)[1] for fmt in ("jsonl", "csv", "ocsf")}
    for chunk in (1, 2, 3):
        monkeypatch.setattr("api.routes.audit.EXPORT_CHUNK", chunk)
        for fmt, data in whole.items():
            assert export(world.client, world.acme, fmt)[1] == data, (fmt, chunk)
        _, csv_data = export(world.client, world.acme, "csv", secret="db-password")
        assert csv_data.count(b"seq,org,org_seq,") == 1
    assert verify_export(whole["jsonl"].splitlines()).ok


def test_export_is_for_admin_keys_only(world: World) -> None:
    for fmt in ("jsonl", "csv", "ocsf"):
        response = world.client.get("/v1/audit/export", params={"format": fmt}, headers=world.member.headers)
        assert response.status_code == 403, response.text
    assert world.client.get("/v1/audit/export").status_code == 401


# -- checkpoints and verification ----------------------------------------------------------------------


def test_checkpoint_is_signed_and_matches_the_head_and_the_public_key(world: World) -> None:
    client, raw = world.client, raw_events(world.db, "acme")
    response = client.get("/v1/ledger/checkpoint", headers=world.acme.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    checkpoint = parse_checkpoint(body["text"])
    public = client.get("/v1/ledger/public-key", headers=world.acme.headers).json()
    assert public["algorithm"] == "ed25519"
    assert checkpoint.public_key == body["public_key"] == public["public_key"]
    check_signature(checkpoint)
    check_signature(checkpoint, {public["public_key"]})
    assert (checkpoint.org, checkpoint.org_seq, checkpoint.head) == ("acme", raw[-1].org_seq, raw[-1].hash)
    assert (body["org"], body["org_seq"], base64.b64decode(body["head"]), body["signature"]) == (
        "acme", raw[-1].org_seq, raw[-1].hash, checkpoint.signature)
    assert body["time"] == rfc3339_us(checkpoint.at)
    stored = rows(world.db, "SELECT org_seq, head, public_key, signature FROM checkpoints WHERE org = 'acme'")
    assert (checkpoint.org_seq, checkpoint.head, checkpoint.public_key, checkpoint.signature) in [
        (n, bytes(h), k, s) for n, h, k, s in stored]
    # The signature covers the fields: change one and it no longer checks.
    forged = body["text"].replace(f"org_seq {checkpoint.org_seq}\n", f"org_seq {checkpoint.org_seq + 1}\n")
    with pytest.raises(CheckpointError):
        check_signature(parse_checkpoint(forged))
    with pytest.raises(CheckpointError):
        check_signature(checkpoint, {"AAAA"})
    # Each org gets its own; an export verifies against its own org's checkpoint and not another's.
    other = parse_checkpoint(client.get("/v1/ledger/checkpoint", headers=world.globex.headers).json()["text"])
    assert other.org == "globex" and other.head == raw_events(world.db, "globex")[-1].hash
    _, data = export(world.client, world.acme, "jsonl")
    assert verify_export(data.splitlines(), checkpoint=checkpoint).ok
    assert not verify_export(data.splitlines(), checkpoint=other).ok
    assert not verify_export(data.splitlines()[:-1], checkpoint=checkpoint).ok  # truncated tail


def test_signing_key_is_derived_from_the_master_key(tmp_path: Path) -> None:
    master = MasterKey.generate()[0]
    found = []
    for db, key in ((tmp_path / "a.db", master), (tmp_path / "b.db", master), (tmp_path / "c.db", None)):
        with TestClient(create_app(make_settings(db, key))) as client:
            found.append(client.get("/v1/ledger/public-key").json()["public_key"])
    assert found[0] == found[1] != found[2]


def verify_answer(client: Client, key: Key) -> dict[str, Any]:
    response = client.get("/v1/ledger/verify", headers=key.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_verify_is_ok_on_the_untampered_ledger(world: World) -> None:
    for key in (world.acme, world.globex):
        raw = raw_events(world.db, key.org)
        answer = verify_answer(world.client, key)
        assert answer["ok"] is True and answer["first_bad_seq"] is None and answer["reason"] == ""
        assert (answer["checked"], answer["org_seq"], answer["head"]) == (len(raw), raw[-1].org_seq,
                                                                           raw[-1].hash.hex())


def small_history(client: Client) -> tuple[Key, Key]:
    acme, globex = create_org(client, "acme"), create_org(client, "globex")
    for i in range(3):
        upsert(client, acme, f"s{i}", f"value-{i}")
        upsert(client, globex, f"g{i}", f"value-{i}")
    assert client.post(secret_path("s1") + "/reveal", headers=acme.headers).status_code == 200
    return acme, globex


def test_verify_fails_after_one_byte_of_the_file_is_changed(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "k.db")
    with TestClient(create_app(settings)) as client:
        acme, globex = small_history(client)
        assert verify_answer(client, acme)["ok"] is True
    target = next(r for r in raw_events(settings.db.path, "acme") if r.type == "secret.created" and r.secret == "s1")
    conn = sqlite3.connect(settings.db.path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE events SET body = ? WHERE seq = ?", (target.body, target.seq))
        conn.execute("DROP TRIGGER events_no_update")
        changed = target.body.replace(b'"s1"', b'"s7"', 1)
        assert changed != target.body
        conn.execute("UPDATE events SET body = ? WHERE seq = ?", (changed, target.seq))
        conn.commit()
    finally:
        conn.close()
    with TestClient(create_app(settings)) as client:
        answer = verify_answer(client, acme)
        assert answer["ok"] is False
        assert answer["first_bad_seq"] == target.seq
        assert "hash" in answer["reason"]
        assert answer["checked"] == target.org_seq - 1
        assert verify_answer(client, globex)["ok"] is True  # the other org's chain is untouched


def test_verify_catches_a_truncated_tail_with_the_stored_checkpoint(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "k.db")
    with TestClient(create_app(settings)) as client:
        acme, _ = small_history(client)
        checkpoint = client.get("/v1/ledger/checkpoint", headers=acme.headers).json()
        answer = verify_answer(client, acme)
        assert answer["ok"] is True and answer["checkpoint_org_seq"] == checkpoint["org_seq"]
    last = raw_events(settings.db.path, "acme")[-1]
    conn = sqlite3.connect(settings.db.path)
    try:
        conn.execute("DROP TRIGGER events_no_delete")
        conn.execute("DELETE FROM events WHERE seq = ?", (last.seq,))
        conn.commit()
    finally:
        conn.close()
    with TestClient(create_app(settings)) as client:
        answer = verify_answer(client, acme)
        assert answer["ok"] is False
        assert answer["checkpoint_org_seq"] == last.org_seq
        assert answer["org_seq"] == last.org_seq - 1
        assert "checkpoint" in answer["reason"]


# -- compliance --------------------------------------------------------------------------------------


def compliance(world: World, name: str, key: Key | None = None, **params: Any) -> Any:
    response = world.client.get(f"/v1/compliance/{name}", params=params, headers=(key or world.acme).headers)
    assert response.status_code == 200, (name, response.text)
    return response.json()


@pytest.mark.parametrize("name", sorted(COMPLIANCE))
def test_compliance_is_for_admin_keys_only(world: World, name: str) -> None:
    response = world.client.get(f"/v1/compliance/{name}", params=COMPLIANCE[name], headers=world.member.headers)
    assert response.status_code == 403, response.text
    assert world.client.get(f"/v1/compliance/{name}", params=COMPLIANCE[name]).status_code == 401
    body = compliance(world, name, **COMPLIANCE[name])
    shapes = {"stale-secrets": {"secrets"}, "never-revealed": {"secrets"}, "reveals": {"events"},
              "revoked-key-reveals": {"events"}, "denied-reveals": {"events"}, "reveal-counts": {"actors"},
              "exposure": {"secret", "version", "created_at", "replaced_at", "reveals"}}
    assert set(body) == shapes[name]


def test_compliance_answers_match_the_history(world: World) -> None:
    a, member, doomed = world.answers, world.member.key_id, world.doomed.key_id
    live = [a[f"{FORMULA_SECRET}@1"], a["db-password@2"], a["tool-token@1"]]
    assert compliance(world, "stale-secrets", days=0)["secrets"] == live
    assert compliance(world, "stale-secrets", days=1)["secrets"] == []
    assert compliance(world, "stale-secrets", days=0, as_of="2000-01-01T00:00:00Z")["secrets"] == []

    reveals = compliance(world, "reveals", secret="db-password")["events"]
    assert [(e["seq"], e["actor"]["key_id"], e["version"], e["action"]) for e in reveals] == [
        (world.member_reveal_seq, member, 2, "secret.revealed"),
        (world.doomed_reveal_seq, doomed, 2, "secret.revealed"),
    ]
    window = compliance(world, "reveals", secret="db-password", since=reveals[1]["time"])["events"]
    assert [e["seq"] for e in window] == [world.doomed_reveal_seq]

    first = compliance(world, "exposure", secret="db-password", version=1)
    assert first["created_at"] == a["db-password@1"]["created_at"]
    assert first["replaced_at"] == a["db-password@2"]["updated_at"]
    assert first["reveals"] == []
    second = compliance(world, "exposure", secret="db-password", version=2)
    assert second["replaced_at"] is None
    assert [e["seq"] for e in second["reveals"]] == [world.member_reveal_seq, world.doomed_reveal_seq]

    never = compliance(world, "never-revealed")["secrets"]
    assert [s["name"] for s in never] == [FORMULA_SECRET, "tool-token"]  # denied reveals do not count
    revoked = compliance(world, "revoked-key-reveals")["events"]
    assert [(e["seq"], e["actor"]["key_id"]) for e in revoked] == [(world.doomed_reveal_seq, doomed)]
    denied = compliance(world, "denied-reveals")["events"]
    assert [(e["seq"], e["secret"], e["outcome"]) for e in denied] == [(world.denied_seq, "tool-token", "denied")]
    counts = compliance(world, "reveal-counts")["actors"]
    assert sorted((c["actor_key_id"], c["reveals"]) for c in counts) == sorted([(member, 1), (doomed, 1)])
    assert {c["actor_label"] for c in counts} == {"agent key", FORMULA_LABEL}

    # The other org sees its own answers only.
    assert [(c["actor_key_id"], c["reveals"]) for c in compliance(world, "reveal-counts", world.globex)["actors"]] \
        == [(world.globex.key_id, 1)]
    assert compliance(world, "denied-reveals", world.globex)["events"] == []
    assert compliance(world, "revoked-key-reveals", world.globex)["events"] == []


def test_compliance_stale_secrets_refuses_a_seq_as_of(world: World) -> None:
    response = world.client.get("/v1/compliance/stale-secrets", params={"as_of": "5"}, headers=world.acme.headers)
    assert response.status_code == 422
    assert "as_of" in response.json()["detail"]
