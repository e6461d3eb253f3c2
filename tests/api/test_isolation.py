"""Invariant 9, org isolation: a name of another org answers exactly like a missing one.

Worlds are built the same way (orgs `acme` and `globex`); only in some does `acme` hold the secret
`target` (live, or deleted and still restorable) and the expired secret `lapsed`. `globex` asks every
world the same questions and must get the same answers: same status, same headers and the same body,
apart from the request id. Its attempts to change acme's names (rollback, restore, purge, reveal of a
version) are refused like those of missing names, and leave acme's secrets as they were.

The same holds for what surrounds a value: acme's `target` has a reveal policy and a rotation policy,
and its `pool` is a key pool (two members, one disabled, least-recent selection). globex reads and
changes policies, rotation and members under acme's names (and asks who could reveal them), and gets
the answers a missing name gets; acme's policies, rotation schedule and members stay as they were.

acme also holds an SSH public key: globex lists only its own, removes acme's as it would an unknown id
(404, alike), and adds the same public key as its own (no conflict: nothing tells it acme has it).

And people and connected apps (issue 10): acme has single sign-on (its client secret is `target`), a
person who joined through it, and a connected app `target` whose token was handed out once. globex lists
no people and no apps, reads no SSO settings, and its changes (a role, a removal, the SSO settings, a
disconnect, a token) of acme's person and app are refused like those of a missing one, changing nothing.
Its own SSO and app of the same names are its own: the same subject joins globex as another member.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from litestar import Litestar
from litestar.testing import TestClient

from api.app import create_app
from api.settings import Settings
from ledger.crypto import MasterKey
from tests.api.conftest import (
    ADMIN_TOKEN,
    BACKENDS,
    Key,
    assert_problem,
    create_key,
    create_org,
    make_client,
    max_seq,
    secret_path,
    upsert,
)
from tests.api.test_people_api import ISSUER, sign_in
from tests.pg import PgDsn, pg_database

Client = TestClient[Litestar]


class World:
    def __init__(self, client: Client, db: Path | PgDsn, acme: Key, globex: Key) -> None:
        self.client = client
        self.db = db
        self.acme = acme
        self.globex = globex
        self.member_id = ""  # acme's person (in the worlds where acme holds things)


# acme's `target` expires long after these tests (so /v1/compliance/expiring lists it for acme);
# its `lapsed` expired long ago (so acme's reveals of it answer 410).
FAR_EXPIRY = "2099-01-01T00:00:00.000000Z"  # as the API prints it
PAST_EXPIRY = "2001-01-01T00:00:00Z"
ROTATION = {"interval_seconds": 3600, "rotator": {"kind": "generator", "length": 24, "alphabet": "hex"}}
WEBHOOK_ROTATION = {"interval_seconds": 60, "rotator": {"kind": "webhook", "url": "http://127.0.0.1:1/rotate"}}
# acme's SSH public key (the same in every world, so that globex's answers compare).
ACME_SSH_KEY = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
    serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() + " acme-only-value-ssh"


def member_path(name: str, member: str, suffix: str = "") -> str:
    return secret_path(name, f"/members/{member}{suffix}")


def give_acme_access_rules(client: Client, acme: Key) -> None:
    """acme's `target` gets a reveal policy and a rotation policy; its `pool` two members (b disabled,
    least-recent selection), revealed once."""
    policy = {"key_ids": [acme.key_id], "labels": ["acme-*"], "roles": ["admin"]}
    assert client.put(secret_path("target", "/policy"), json=policy, headers=acme.headers).status_code == 200
    assert client.put(secret_path("target", "/rotation"), json=ROTATION, headers=acme.headers).status_code == 200
    upsert(client, acme, "pool", "acme-only-value-pool", expect=201)
    for member in ("a", "b"):
        added = client.put(member_path("pool", member), json={"value": f"acme-only-value-{member}",
                                                                "label": f"acme account {member}"},
                           headers=acme.headers)
        assert added.status_code == 201, added.text
    assert client.post(member_path("pool", "b", "/disable"), json={"reason": "acme limit"},
                       headers=acme.headers).status_code == 200
    assert client.put(secret_path("pool", "/pool"), json={"selection": "least_recent"},
                      headers=acme.headers).status_code == 200
    revealed = client.post(secret_path("pool", "/reveal"), headers=acme.headers)
    assert (revealed.status_code, revealed.json()["value"]) == (200, "acme-only-value-a"), revealed.text


ACME_APP = {"name": "target", "provider": "github", "client_id": "acme-only-value-client",
            "client_secret": "acme-only-value-client-secret", "access_token": "acme-only-value-access-token",
            "refresh_token": "acme-only-value-refresh-token", "expires_in": 86_400, "scope": "all"}
ACME_SSO = {"issuer": ISSUER, "client_id": "acme-only-value-sso", "client_secret_name": "target",
            "allowed_domains": ["example.com"]}


def give_acme_people_and_apps(client: Client, acme: Key) -> str:
    """acme's single sign-on (its client secret is `target`), a person who joined, and a connected app
    `target` whose token was handed out once; the person's member id."""
    assert client.put("/v1/sso", json=ACME_SSO, headers=acme.headers).status_code == 200
    person = sign_in(client, acme.org, "acme-subject", "ada@example.com")
    connected = client.post("/v1/connected-apps", json=ACME_APP, headers=acme.headers)
    assert connected.status_code == 201, connected.text
    answer = client.post("/v1/connected-apps/target/token", headers=acme.headers)
    assert answer.json()["access_token"] == ACME_APP["access_token"], answer.text
    return person.member_id


def open_world(db: Path | PgDsn, *, with_target: bool, deleted: bool = False) -> Generator[World, None, None]:
    app = create_app(Settings(db=db, master_key=MasterKey.generate()[0], admin_token=ADMIN_TOKEN))
    with make_client(app) as client:
        acme = create_org(client, "acme")
        globex = create_org(client, "globex")
        member_id = ""
        if with_target:
            upsert(client, acme, "target", "acme-only-value", scope="tools", category="provider",
                   expires_at=FAR_EXPIRY, expect=201)
            upsert(client, acme, "target", "acme-only-value-2", expect=200)
            assert client.post(secret_path("target", "/reveal"), headers=acme.headers).status_code == 200
            upsert(client, acme, "lapsed", "acme-only-value-lapsed", expires_at=PAST_EXPIRY, expect=201)
            give_acme_access_rules(client, acme)
            added = client.post("/v1/ssh-keys", json={"public_key": ACME_SSH_KEY, "label": "acme laptop"},
                                headers=acme.headers)
            assert added.status_code == 201, added.text
            member_id = give_acme_people_and_apps(client, acme)
            if deleted:
                assert client.delete(secret_path("target"), headers=acme.headers).status_code == 204
        world = World(client, db, acme, globex)
        world.member_id = member_id
        yield world


@pytest.fixture
def foreign(db_file: Path | PgDsn) -> Iterator[World]:
    """`acme` holds `target` (version 2)."""
    yield from open_world(db_file, with_target=True)


@pytest.fixture
def foreign_deleted(db_file: Path | PgDsn) -> Iterator[World]:
    """`acme` held `target` (version 2) and deleted it: restorable for its 30-day window."""
    yield from open_world(db_file, with_target=True, deleted=True)


@pytest.fixture(scope="module", params=BACKENDS)
def three_worlds(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, World, World]]:
    """Foreign, foreign-deleted and missing worlds, shared by the read-only questions and the refused
    changes (each asserts that it changed nothing), on each backend."""
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            folder = tmp_path_factory.mktemp("worlds")
            dbs: list[Path | PgDsn] = [folder / "foreign.db", folder / "deleted.db", folder / "missing.db"]
        else:
            dbs = [stack.enter_context(pg_database()) for _ in range(3)]
        worlds = [open_world(dbs[0], with_target=True),
                  open_world(dbs[1], with_target=True, deleted=True),
                  open_world(dbs[2], with_target=False)]
        opened = [next(world) for world in worlds]
        yield opened[0], opened[1], opened[2]
        for world in worlds:
            world.close()


@pytest.fixture
def missing(db_file: Path | PgDsn, tmp_path: Path) -> Iterator[World]:
    """Nobody holds `target` (a database of its own, on the test's backend)."""
    if isinstance(db_file, PgDsn):
        with pg_database() as other:
            yield from open_world(other, with_target=False)
    else:
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
    ("GET", secret_path("target"), None, {"as_of": "1"}),
    ("GET", secret_path("target"), None, {"as_of": "2200-01-01T00:00:00Z"}),
    ("GET", "/v1/secrets", None, {"as_of": "2200-01-01T00:00:00Z"}),
    ("GET", "/v1/audit", None, {"secret": "target"}),
    ("GET", "/v1/audit/export", None, {"secret": "target", "format": "jsonl"}),
    ("GET", "/v1/audit/export", None, {"secret": "target", "format": "csv"}),
    ("GET", "/v1/compliance/reveals", None, {"secret": "target"}),
    ("GET", "/v1/compliance/exposure", None, {"secret": "target", "version": "1"}),
    ("GET", "/v1/compliance/never-revealed", None, {}),
    ("GET", "/v1/compliance/stale-secrets", None, {"days": "0"}),
    ("GET", "/v1/compliance/reveal-counts", None, {}),
    ("GET", "/v1/compliance/denied-reveals", None, {}),
    ("GET", "/v1/compliance/revoked-key-reveals", None, {}),
    ("GET", secret_path("target", "/versions"), None, {}),
    ("GET", secret_path("lapsed"), None, {}),
    ("GET", secret_path("lapsed", "/versions"), None, {}),
    ("GET", "/v1/secrets", None, {"deleted": "true"}),
    ("GET", "/v1/secrets", None, {"deleted": "true", "limit": "1"}),
    ("GET", "/v1/secrets", None, {"deleted": "true", "cursor": base64.urlsafe_b64encode(b"a").decode().rstrip("=")}),
    ("GET", "/v1/org/settings", None, {}),
    ("GET", "/v1/compliance/expiring", None, {}),
    ("GET", "/v1/compliance/expiring", None, {"days": "36500"}),
    ("GET", "/v1/compliance/exposure", None, {"secret": "lapsed", "version": "1"}),
    # Reveal policies, rotation and pools (issue 8), and the compliance questions about them.
    ("GET", secret_path("target", "/policy"), None, {}),
    ("GET", secret_path("pool", "/policy"), None, {}),
    ("GET", secret_path("lapsed", "/policy"), None, {}),
    ("GET", secret_path("target", "/rotation"), None, {}),
    ("GET", secret_path("pool", "/rotation"), None, {}),
    ("GET", secret_path("pool", "/members"), None, {}),
    ("GET", secret_path("target", "/members"), None, {}),
    ("GET", "/v1/compliance/rotations", None, {}),
    ("GET", "/v1/compliance/rotations", None, {"all": "true"}),
    ("GET", "/v1/compliance/who-could-reveal", None, {"secret": "target"}),
    ("GET", "/v1/compliance/who-could-reveal", None, {"secret": "pool", "at": "2200-01-01T00:00:00Z"}),
    ("GET", "/v1/compliance/who-could-reveal", None, {"secret": "lapsed"}),
    ("GET", "/v1/compliance/who-could-reveal", None, {"secret": "pool", "at": PAST_EXPIRY}),
    # An upsert of a reference under acme's names, with preconditions that only acme's secret would meet.
    ("POST", "/v1/secrets", {"name": "target", "value": "vault-kv://secret/x#k", "reference": True},
     {"If-Match": '"2"'}),
    ("POST", "/v1/secrets", {"name": "pool", "value": "aws-sm://us-east-1/id", "reference": True},
     {"If-Match": "*"}),
    # SSH keys: globex lists its own (none).
    ("GET", "/v1/ssh-keys", None, {}),
]
# Parts of an answer that differ between two worlds built alike (ids, times, positions, hashes).
VOLATILE = {"seq", "time", "at", "key_id", "actor", "request_id", "prev_hash", "hash", "next_cursor", "created_at",
            "updated_at", "created_by", "updated_by", "org_seq", "client_address"}


def normalized(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: normalized(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return value


def answer_of(response: httpx.Response) -> tuple[int, Any]:
    """Status and body without what differs between worlds (JSON Lines and CSV parsed first)."""
    kind = response.headers.get("content-type", "")
    if kind.startswith("application/x-ndjson"):
        return response.status_code, normalized([json.loads(line) for line in response.text.splitlines() if line])
    if kind.startswith("text/csv"):
        rows = list(csv.DictReader(io.StringIO(response.text)))
        return response.status_code, normalized(rows)
    return response.status_code, normalized(response.json()) if response.content else b""


@pytest.mark.parametrize(
    ("method", "path", "body", "extra"), QUESTIONS, ids=[f"{m} {p} {h}" for m, p, _, h in QUESTIONS]
)
def test_a_foreign_name_answers_exactly_like_a_missing_one(
    three_worlds: tuple[World, World, World],
    method: str, path: str, body: dict[str, Any] | None, extra: dict[str, str],
) -> None:
    foreign, foreign_deleted, missing = three_worlds
    headers = {k: v for k, v in extra.items() if k[0].isupper()}
    params = {k: v for k, v in extra.items() if not k[0].isupper()}
    answers = []
    for world in (foreign, foreign_deleted, missing):
        before = max_seq(world.db)
        response = world.client.request(method, path, json=body, params=params,
                                         headers={**world.globex.headers, **headers})
        assert response.status_code in (200, 404, 412), response.text
        assert response.status_code != 404 or "secret '" in response.json()["detail"], response.text
        assert max_seq(world.db) == before, "a refused request or a read appended an event"
        assert "acme-only-value" not in response.text and "acme" not in response.text
        answers.append(answer_of(response) if response.status_code == 200 else comparable(response))
    assert answers[0] == answers[1] == answers[2]
    # acme's secret is untouched.
    assert foreign.client.get(secret_path("target"), headers=foreign.acme.headers).json()["version"] == 2


def test_acme_itself_sees_what_globex_asks_about(three_worlds: tuple[World, World, World]) -> None:
    """Positive control of the new questions: asked with acme's key, they show acme's secrets."""
    foreign, foreign_deleted, _ = three_worlds
    client, acme = foreign.client, foreign.acme
    found = client.get(secret_path("target", "/versions"), headers=acme.headers)
    assert [(v["version"], v["how"], v["value_exists"]) for v in found.json()["versions"]] == [
        (1, "create", True), (2, "update", True)]
    expiring = client.get("/v1/compliance/expiring", params={"days": "36500"}, headers=acme.headers).json()
    assert [s["name"] for s in expiring["secrets"]] == ["lapsed", "target"]
    assert client.get("/v1/org/settings", headers=acme.headers).json() == {"org": "acme", "recovery_window_days": 30}
    deleted = foreign_deleted.client.get("/v1/secrets", params={"deleted": "true"},
                                         headers=foreign_deleted.acme.headers)
    assert [(s["name"], s["version"]) for s in deleted.json()["secrets"]] == [("target", 2)]
    # Reveal policy, rotation, pool and the compliance questions about them.
    policy = client.get(secret_path("target", "/policy"), headers=acme.headers).json()
    assert policy == {"key_ids": [acme.key_id], "labels": ["acme-*"], "roles": ["admin"], "restricted": True}
    rotation = client.get(secret_path("target", "/rotation"), headers=acme.headers).json()
    assert (rotation["interval_seconds"], rotation["rotator"]) == (3600, {**ROTATION["rotator"], "prefix": ""})
    pool = client.get(secret_path("pool", "/members"), headers=acme.headers).json()
    assert pool["selection"] == "least_recent"
    assert [(m["member"], m["label"], m["state"], m["reveals"]) for m in pool["members"]] == [
        ("a", "acme account a", "active", 1), ("b", "acme account b", "disabled", 0)]
    rotations = client.get("/v1/compliance/rotations", params={"all": "true"}, headers=acme.headers).json()
    assert [(r["name"], r["status"]) for r in rotations["rotations"]] == [("target", "ok")]
    who = client.get("/v1/compliance/who-could-reveal", params={"secret": "target"}, headers=acme.headers).json()
    # acme's admin key, and its person (an admin: the policy admits admins).
    assert (who["exists"], sorted(k["key_id"] for k in who["keys"])) == (True, [acme.key_id, foreign.member_id])
    who = foreign_deleted.client.get("/v1/compliance/who-could-reveal", params={"secret": "target"},
                                     headers=foreign_deleted.acme.headers).json()
    assert (who["exists"], who["policy"]["restricted"], who["keys"]) == (False, True, [])


# Requests that would change acme's secret if they reached it: globex's are refused (no event).
WRITES: list[tuple[str, str, dict[str, Any] | None, dict[str, str]]] = [
    ("POST", secret_path("target", "/rollback"), {"version": 1}, {}),
    ("POST", secret_path("target", "/rollback"), {"version": 3}, {}),
    ("POST", secret_path("target", "/rollback"), {"version": 1}, {"If-Match": '"2"'}),
    ("POST", secret_path("target", "/rollback"), {"version": 1}, {"If-Match": "*"}),
    ("POST", secret_path("target", "/rollback"), {"version": 1}, {"Idempotency-Key": "globex-rollback"}),
    ("POST", secret_path("target", "/restore"), None, {}),
    ("POST", secret_path("target", "/restore"), None, {"Idempotency-Key": "globex-restore"}),
    ("DELETE", secret_path("target"), None, {"purge": "true"}),
    ("DELETE", secret_path("target"), None, {"purge": "true", "If-Match": '"2"'}),
    ("POST", secret_path("target", "/reveal"), {"version": 1}, {}),
    ("POST", secret_path("target", "/reveal"), {"version": 2, "reason": "curious"}, {}),
    ("POST", secret_path("target", "/reveal"), {"version": 3}, {}),
    ("POST", secret_path("lapsed", "/reveal"), None, {}),
    ("POST", secret_path("lapsed", "/reveal"), {"version": 1}, {}),
    ("POST", secret_path("lapsed", "/rollback"), {"version": 1}, {}),
    ("POST", secret_path("lapsed", "/restore"), None, {}),
    ("DELETE", secret_path("lapsed"), None, {"purge": "true"}),
]


# Changes to acme's names on the routes of policies, rotation and pools, by family: globex's are refused
# like those to a missing name (no event after any of them), and acme's holdings are compared once per
# family and world.
ACCESS_WRITES: dict[str, list[tuple[str, str, dict[str, Any] | None, dict[str, str]]]] = {
    # Reveal policies (acme's admits acme's admin key; globex's would open it to others or close it).
    "policy": [
        ("PUT", secret_path("target", "/policy"), {"roles": ["member"]}, {}),
        ("PUT", secret_path("target", "/policy"), {}, {}),
        ("PUT", secret_path("target", "/policy"), {"labels": ["*"]}, {"Idempotency-Key": "globex-policy"}),
        ("PUT", secret_path("pool", "/policy"), {"roles": ["admin", "member"]}, {}),
        ("PUT", secret_path("lapsed", "/policy"), {"roles": ["member"]}, {}),
    ],
    # Rotation: acme's schedule must neither move nor go; a rotation would make a version 3.
    "rotation": [
        ("PUT", secret_path("target", "/rotation"), ROTATION, {}),
        ("PUT", secret_path("target", "/rotation"), WEBHOOK_ROTATION, {"Idempotency-Key": "globex-rotation"}),
        ("PUT", secret_path("pool", "/rotation"), ROTATION, {}),  # acme's own answer would be a 409 (a pool)
        ("PUT", secret_path("lapsed", "/rotation"), ROTATION, {}),
        ("DELETE", secret_path("target", "/rotation"), None, {}),
        ("POST", secret_path("target", "/rotate"), None, {}),
        ("POST", secret_path("pool", "/rotate"), None, {}),
        ("POST", secret_path("lapsed", "/rotate"), None, {}),
    ],
    # Members added, replaced, removed, disabled and enabled.
    "members": [
        ("PUT", member_path("pool", "a"), {"value": "globex-value", "label": "globex"}, {}),
        ("PUT", member_path("pool", "b"), {"value": "globex-value"}, {}),
        ("PUT", member_path("pool", "c"), {"value": "globex-value"}, {"Idempotency-Key": "globex-member"}),
        ("PUT", member_path("target", "a"), {"value": "globex-value"}, {}),
        ("DELETE", member_path("pool", "a"), None, {}),
        ("DELETE", member_path("pool", "zz"), None, {}),
        ("POST", member_path("pool", "a", "/disable"), {"reason": "globex"}, {}),
        ("POST", member_path("pool", "a", "/disable"), None, {"Idempotency-Key": "globex-disable"}),
        ("POST", member_path("pool", "b", "/enable"), None, {}),
        ("POST", member_path("pool", "zz", "/enable"), {"reason": "globex"}, {}),
    ],
    # The selection, and pool reveals (which would move acme's least-recent order).
    "pool": [
        ("PUT", secret_path("pool", "/pool"), {"selection": "round_robin"}, {}),
        ("PUT", secret_path("pool", "/pool"), {"selection": "least_recent"}, {"Idempotency-Key": "globex-pool"}),
        ("POST", secret_path("pool", "/reveal"), None, {}),
        ("POST", secret_path("pool", "/reveal"), {"reason": "curious"}, {"Idempotency-Key": "globex-reveal-pool"}),
    ],
}


def acme_holdings(world: World) -> tuple[Any, ...]:
    """What acme holds, seen by acme: its secrets' versions (whether each value exists), its deleted
    list (with the destruction time), the reveal and rotation policies (with the schedule) and the pool's
    members (label, state, member version, reveals)."""
    client, headers = world.client, world.acme.headers
    return (
        [comparable(client.get(secret_path(name, "/versions"), headers=headers))
         for name in ("target", "lapsed", "pool")],
        comparable(client.get("/v1/secrets", params={"deleted": "true"}, headers=headers)),
        [comparable(client.get(secret_path(name, suffix), headers=headers))
         for name, suffix in (("target", "/policy"), ("target", "/rotation"), ("pool", "/members"))],
        comparable(client.get("/v1/compliance/rotations", params={"all": "true"}, headers=headers)),
        comparable(client.get("/v1/ssh-keys", headers=headers)),
        [comparable(client.get(path, headers=headers)) for path in ("/v1/members", "/v1/sso", "/v1/connected-apps")],
    )


def send(world: World, key: Key, method: str, path: str, body: dict[str, Any] | None,
         extra: dict[str, str]) -> httpx.Response:
    headers = {k: v for k, v in extra.items() if k[0].isupper()}
    params = {k: v for k, v in extra.items() if not k[0].isupper()}
    return world.client.request(method, path, json=body, params=params, headers={**key.headers, **headers})


@pytest.mark.parametrize(
    ("method", "path", "body", "extra"), WRITES, ids=[f"{m} {p} {b} {h}" for m, p, b, h in WRITES]
)
def test_a_change_to_a_foreign_name_is_refused_exactly_like_one_to_a_missing_name(
    three_worlds: tuple[World, World, World],
    method: str, path: str, body: dict[str, Any] | None, extra: dict[str, str],
) -> None:
    foreign, foreign_deleted, missing = three_worlds
    answers = []
    for world in (foreign, foreign_deleted, missing):
        held = acme_holdings(world)
        before = max_seq(world.db)
        response = send(world, world.globex, method, path, body, extra)
        assert response.status_code in (404, 412), response.text
        # The route was reached (a 404 of an unknown route would be alike in every world too).
        assert response.status_code == 412 or "secret '" in response.json()["detail"], response.text
        assert max_seq(world.db) == before, "a refused change appended an event"
        assert acme_holdings(world) == held, "acme's secret changed"
        assert "acme-only-value" not in response.text and "acme" not in response.text
        answers.append(comparable(response))
    assert answers[0] == answers[1] == answers[2]
    # acme's values are untouched: both versions of target still open, and lapsed is still expired.
    client, acme = foreign.client, foreign.acme
    for version, value in ((1, "acme-only-value"), (2, "acme-only-value-2")):
        revealed = client.post(secret_path("target", "/reveal"), json={"version": version}, headers=acme.headers)
        assert revealed.json() == {"name": "target", "value": value, "version": version}
    assert client.post(secret_path("lapsed", "/reveal"), headers=acme.headers).status_code == 410


@pytest.mark.parametrize("family", list(ACCESS_WRITES))
def test_a_change_to_the_access_rules_of_a_foreign_name_is_refused_exactly_like_one_to_a_missing_name(
    three_worlds: tuple[World, World, World], family: str,
) -> None:
    changes = ACCESS_WRITES[family]
    answers: list[list[Any]] = []
    for world in three_worlds:
        held = acme_holdings(world)
        before = max_seq(world.db)
        seen = []
        for method, path, body, extra in changes:
            response = send(world, world.globex, method, path, body, extra)
            asked = (method, path, body, extra, response.text)
            assert response.status_code == 404 and "secret '" in response.json()["detail"], asked
            assert max_seq(world.db) == before, ("a refused change appended an event", asked)
            assert "acme-only-value" not in response.text and "acme" not in response.text, asked
            seen.append(comparable(response))
        assert acme_holdings(world) == held, "acme's policies, rotation or members changed"
        answers.append(seen)
    for change, foreign, deleted, missing in zip(changes, *answers, strict=True):
        assert foreign == deleted == missing, change
    # acme's pool still answers its active member, and its target still opens for acme.
    foreign = three_worlds[0]
    client, acme = foreign.client, foreign.acme
    assert client.post(secret_path("pool", "/reveal"), headers=acme.headers).json()["value"] == "acme-only-value-a"
    assert client.post(secret_path("target", "/reveal"), headers=acme.headers).json()["version"] == 2


def people_and_apps_questions(member_id: str) -> list[tuple[str, str, dict[str, Any] | None, dict[str, str]]]:
    """globex's reads and changes of acme's person (by its id), SSO settings and app `target`."""
    return [
        ("GET", "/v1/members", None, {}),
        ("PATCH", f"/v1/members/{member_id}", {"role": "member"}, {}),
        ("PATCH", f"/v1/members/{member_id}", {"role": "admin"}, {}),
        ("DELETE", f"/v1/members/{member_id}", None, {}),
        ("GET", "/v1/sso", None, {}),
        ("DELETE", "/v1/sso", None, {}),
        ("PUT", "/v1/sso", ACME_SSO, {}),  # acme's client secret name: a secret globex does not have
        ("GET", "/v1/connected-apps", None, {}),
        ("GET", "/v1/connected-apps/target", None, {}),
        ("POST", "/v1/connected-apps/target/token", None, {}),
        ("POST", "/v1/connected-apps/target/token", {"reason": "curious"}, {}),
        ("DELETE", "/v1/connected-apps/target", None, {}),
        ("GET", "/v1/compliance/connected-apps", None, {}),
        ("GET", "/v1/compliance/connected-apps", None, {"all": "true"}),
    ]


def test_another_orgs_key_sees_and_changes_nothing_of_its_people_sso_and_apps(
    three_worlds: tuple[World, World, World],
) -> None:
    """globex asks the same of each world (acme's person's id in all three): same answers, nothing recorded,
    acme's people, SSO settings and app as they were; a member key of globex too."""
    questions = people_and_apps_questions(three_worlds[0].member_id)
    answers: list[list[Any]] = []
    for world in three_worlds:
        held = acme_holdings(world)
        before = max_seq(world.db)
        member = create_key(world.client, world.globex, label="globex member")
        seen = []
        for key in (world.globex, member):
            for method, path, body, extra in questions:
                response = send(world, key, method, path, body, extra)
                asked = (method, path, body, extra, response.status_code)
                assert response.status_code in (200, 403, 404), (asked, response.text)
                assert "acme" not in response.text and "ada@" not in response.text, asked
                if response.status_code == 200:
                    assert response.json() in ({"members": []}, {"apps": []}), asked
                seen.append(comparable(response))
        assert max_seq(world.db) == before + 1, "a refused change or a read appended an event"  # the member key
        assert acme_holdings(world) == held, "acme's people, SSO settings or apps changed"
        answers.append(seen)
    assert answers[0] == answers[1] == answers[2]
    # Positive control: acme sees its own, and its app still answers its token.
    foreign = three_worlds[0]
    client, acme = foreign.client, foreign.acme
    (person,) = client.get("/v1/members", headers=acme.headers).json()["members"]
    assert (person["member_id"], person["role"], person["subject"]) == (foreign.member_id, "admin", "acme-subject")
    assert client.get("/v1/sso", headers=acme.headers).json()["client_id"] == ACME_SSO["client_id"]
    (app,) = client.get("/v1/connected-apps", headers=acme.headers).json()["apps"]
    assert (app["name"], app["state"], app["token_version"]) == ("target", "connected", 1)
    answer = client.post("/v1/connected-apps/target/token", headers=acme.headers).json()
    assert answer["access_token"] == ACME_APP["access_token"]


def test_the_orgs_own_sso_people_and_apps_of_the_same_names_are_its_own(foreign: World) -> None:
    client, acme, globex = foreign.client, foreign.acme, foreign.globex
    held = acme_holdings(foreign)
    upsert(client, globex, "target", "globex-value", expect=201)
    assert client.put("/v1/sso", json=ACME_SSO, headers=globex.headers).status_code == 200
    # The same subject at the same provider joins globex as a person of its own: globex's first, an admin.
    person = sign_in(client, globex.org, "acme-subject", "ada@example.com")
    assert (person.joined, person.role) == (True, "admin")
    assert person.member_id != foreign.member_id
    connected = client.post("/v1/connected-apps", json={**ACME_APP, "access_token": "globex-token"},
                            headers=globex.headers)
    assert (connected.status_code, connected.json()["token_version"]) == (201, 1), connected.text
    answer = client.post("/v1/connected-apps/target/token", headers=globex.headers).json()
    assert answer["access_token"] == "globex-token"
    # globex removes its person and disconnects its app: acme's are untouched.
    assert client.delete(f"/v1/members/{person.member_id}", headers=globex.headers).status_code == 204
    assert client.delete("/v1/connected-apps/target", headers=globex.headers).status_code == 204
    assert client.delete("/v1/sso", headers=globex.headers).status_code == 204
    assert acme_holdings(foreign) == held
    answer = client.post("/v1/connected-apps/target/token", headers=acme.headers).json()
    assert answer["access_token"] == ACME_APP["access_token"]
    assert sign_in(client, acme.org, "acme-subject", "ada@example.com").member_id == foreign.member_id


def test_acme_restores_its_deleted_secret_after_another_orgs_changes(foreign_deleted: World) -> None:
    client, acme, globex = foreign_deleted.client, foreign_deleted.acme, foreign_deleted.globex
    listed = client.get("/v1/secrets", params={"deleted": "true"}, headers=acme.headers).json()["secrets"]
    for method, path, body, extra in WRITES + [change for changes in ACCESS_WRITES.values() for change in changes]:
        assert send(foreign_deleted, globex, method, path, body, extra).status_code in (404, 412)
    # globex's own secrets of the same names: one purged, then a zero-day window and a delete that
    # destroys the other at once. None of it reaches acme's secrets, window or deleted list.
    upsert(client, globex, "target", "globex-value", expect=201)
    assert client.delete(secret_path("target"), params={"purge": "true"}, headers=globex.headers).status_code == 204
    changed = client.put("/v1/org/settings", json={"recovery_window_days": 0}, headers=globex.headers)
    assert changed.json() == {"org": "globex", "recovery_window_days": 0}
    upsert(client, globex, "lapsed", "globex-value", expect=201)
    assert client.delete(secret_path("lapsed"), headers=globex.headers).status_code == 204
    assert client.get("/v1/org/settings", headers=acme.headers).json() == {"org": "acme", "recovery_window_days": 30}
    assert client.get("/v1/secrets", params={"deleted": "true"}, headers=acme.headers).json()["secrets"] == listed
    restored = client.post(secret_path("target", "/restore"), headers=acme.headers)
    assert restored.status_code == 200, restored.text
    assert (restored.json()["version"], restored.json()["expires_at"]) == (3, FAR_EXPIRY)
    for version, value in ((None, "acme-only-value-2"), (1, "acme-only-value"), (2, "acme-only-value-2")):
        revealed = client.post(secret_path("target", "/reveal"), json={"version": version}, headers=acme.headers)
        assert revealed.json()["value"] == value, revealed.text
    found = client.get(secret_path("target", "/versions"), headers=acme.headers).json()["versions"]
    assert [(v["version"], v["how"], v["from_version"], v["value_exists"]) for v in found] == [
        (1, "create", None, True), (2, "update", None, True), (3, "restore", 2, True)]
    lapsed = client.get(secret_path("lapsed", "/versions"), headers=acme.headers).json()["versions"]
    assert [(v["version"], v["value_exists"]) for v in lapsed] == [(1, True)]
    assert client.post(secret_path("lapsed", "/reveal"), headers=acme.headers).status_code == 410
    # The restored secret keeps acme's reveal and rotation policies; the pool kept its members.
    policy = client.get(secret_path("target", "/policy"), headers=acme.headers).json()
    assert policy == {"key_ids": [acme.key_id], "labels": ["acme-*"], "roles": ["admin"], "restricted": True}
    rotation = client.get(secret_path("target", "/rotation"), headers=acme.headers)
    assert (rotation.status_code, rotation.json()["rotator"]["kind"]) == (200, "generator"), rotation.text
    pool = client.get(secret_path("pool", "/members"), headers=acme.headers).json()
    assert [(m["member"], m["state"], m["member_version"]) for m in pool["members"]] == [
        ("a", "active", 1), ("b", "disabled", 1)]
    assert pool["selection"] == "least_recent"


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


def test_the_orgs_own_secrets_of_the_same_names_keep_their_own_policies_rotation_and_members(
    foreign: World,
) -> None:
    """globex makes its own `target` and `pool` and gives them a policy, a rotation and members: each
    org sees and reveals only its own, and the compliance questions answer for each org alone."""
    client, acme, globex = foreign.client, foreign.acme, foreign.globex
    held = acme_holdings(foreign)
    upsert(client, globex, "target", "globex-value", expect=201)
    upsert(client, globex, "pool", "globex-value", expect=201)
    policy = {"roles": ["member"]}
    assert client.put(secret_path("target", "/policy"), json=policy, headers=globex.headers).status_code == 200
    assert client.put(secret_path("pool", "/rotation"), json=WEBHOOK_ROTATION,
                      headers=globex.headers).status_code == 200
    added = client.put(member_path("target", "a"), json={"value": "globex-member-a", "label": "globex a"},
                       headers=globex.headers)
    assert added.status_code == 201, added.text  # a first member for globex: not acme's a
    assert added.json()["member_version"] == 1
    assert client.put(secret_path("target", "/pool"), json={"selection": "round_robin"},
                      headers=globex.headers).status_code == 200
    assert acme_holdings(foreign) == held, "acme's secrets changed"

    def get(key: Key, path: str, **params: str) -> Any:
        response = client.get(path, params=params, headers=key.headers)
        assert response.status_code == 200, response.text
        return response.json()

    assert get(globex, secret_path("target", "/policy"))["roles"] == ["member"]
    assert get(acme, secret_path("target", "/policy"))["roles"] == ["admin"]
    assert get(globex, secret_path("pool", "/rotation"))["rotator"]["kind"] == "webhook"
    assert get(acme, secret_path("target", "/rotation"))["rotator"]["kind"] == "generator"
    assert_problem(client.get(secret_path("target", "/rotation"), headers=globex.headers), 404, "no rotation")
    assert [m["label"] for m in get(globex, secret_path("target", "/members"))["members"]] == ["globex a"]
    assert get(globex, secret_path("pool", "/members")) == {"selection": "round_robin", "members": []}
    assert [r["name"] for r in get(globex, "/v1/compliance/rotations", all="true")["rotations"]] == ["pool"]
    assert [r["name"] for r in get(acme, "/v1/compliance/rotations", all="true")["rotations"]] == ["target"]
    # globex's policy admits members only: its admin key is refused, acme's key is unknown to it.
    assert_problem(client.post(secret_path("target", "/reveal"), headers=globex.headers), 403, "reveal policy")
    globex_member = create_key(client, globex, label="globex-member")
    revealed = client.post(secret_path("target", "/reveal"), headers=globex_member.headers).json()
    assert (revealed["value"], revealed["member"]) == ("globex-member-a", "a")
    who = get(globex, "/v1/compliance/who-could-reveal", secret="target")
    assert [k["key_id"] for k in who["keys"]] == [globex_member.key_id]
    assert "acme" not in json.dumps(who)
    who = get(acme, "/v1/compliance/who-could-reveal", secret="target")
    assert sorted(k["key_id"] for k in who["keys"]) == [acme.key_id, foreign.member_id]
    # acme's pool still answers its own member, and its target its own value.
    assert client.post(secret_path("pool", "/reveal"), headers=acme.headers).json()["value"] == "acme-only-value-a"
    assert client.post(secret_path("target", "/reveal"), headers=acme.headers).json()["value"] == "acme-only-value-2"


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
    assert acme_names == ["a1", "a2", "lapsed", "m-acme", "pool", "target", "z-acme"]


def test_another_orgs_key_cannot_list_or_remove_its_ssh_keys(foreign: World, missing: World) -> None:
    client, acme, globex = foreign.client, foreign.acme, foreign.globex
    (acmes,) = client.get("/v1/ssh-keys", headers=acme.headers).json()["ssh_keys"]
    assert (acmes["comment"], acmes["label"]) == ("acme-only-value-ssh", "acme laptop")
    member = create_key(client, globex, label="globex member")
    answers = []
    for world, key in ((foreign, globex), (foreign, member), (missing, missing.globex)):
        before = max_seq(world.db)
        listed = world.client.get("/v1/ssh-keys", headers=key.headers)
        assert listed.json() == {"ssh_keys": []}
        removed = world.client.delete(f"/v1/ssh-keys/{acmes['ssh_key_id']}", headers=key.headers)
        assert removed.status_code == 404, removed.text
        assert "acme" not in removed.text
        assert max_seq(world.db) == before
        answers.append(comparable(removed))
    assert answers[0] == answers[1] == answers[2]
    # The same public key is globex's own to add (a conflict would tell that acme holds it), and to remove.
    for world in (foreign, missing):
        mine = world.client.post("/v1/ssh-keys", json={"public_key": ACME_SSH_KEY}, headers=world.globex.headers)
        assert mine.status_code == 201, mine.text
        assert mine.json()["fingerprint"] == acmes["fingerprint"] and mine.json()["ssh_key_id"] != acmes["ssh_key_id"]
        assert world.client.delete(f"/v1/ssh-keys/{mine.json()['ssh_key_id']}",
                                   headers=acme.headers if world is foreign else world.acme.headers).status_code == 404
    assert client.get("/v1/ssh-keys", headers=acme.headers).json()["ssh_keys"] == [acmes]


def test_another_orgs_key_never_lists_its_keys(foreign: World) -> None:
    client = foreign.client
    acme_member = create_key(client, foreign.acme, label="acme-member")
    listed = client.get("/v1/keys", headers=foreign.globex.headers)
    assert listed.status_code == 200
    ids = {k["key_id"] for k in listed.json()["keys"]}
    assert ids == {foreign.globex.key_id}
    assert foreign.acme.key_id not in listed.text and acme_member.key_id not in listed.text
    assert "acme-member" not in listed.text


MALFORMED = [
    None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token rt_live_" + "a" * 32, "bearer",
    "Bearer rt_live_short", "Bearer rt_live_" + "a" * 32 + " extra", "Bearer rt_test_" + "a" * 32,
    "Bearer " + "\u00e9" * 40, "Bearer rt_live_" + "a" * 129,
]


def every_operation(client: Client) -> list[tuple[str, str]]:
    document = client.get("/schema/openapi.json").json()
    return [(method.upper(), path) for path, operations in document["paths"].items() for method in operations
            if path.startswith("/v1/") and path != "/v1/ledger/public-key"]


# Routes the enumeration must include (it reads the OpenAPI document: a route missing from it would
# silently escape the check), and query parameters that take a route down another branch.
LIFECYCLE_OPERATIONS = {
    ("GET", "/v1/secrets/{name}/versions"), ("POST", "/v1/secrets/{name}/rollback"),
    ("POST", "/v1/secrets/{name}/restore"), ("DELETE", "/v1/secrets/{name}"), ("GET", "/v1/org/settings"),
    ("PUT", "/v1/org/settings"), ("GET", "/v1/compliance/expiring"),
}
ACCESS_OPERATIONS = {
    ("GET", "/v1/secrets/{name}/policy"), ("PUT", "/v1/secrets/{name}/policy"),
    ("GET", "/v1/secrets/{name}/rotation"), ("PUT", "/v1/secrets/{name}/rotation"),
    ("DELETE", "/v1/secrets/{name}/rotation"), ("POST", "/v1/secrets/{name}/rotate"),
    ("GET", "/v1/secrets/{name}/members"), ("PUT", "/v1/secrets/{name}/members/{member}"),
    ("DELETE", "/v1/secrets/{name}/members/{member}"), ("POST", "/v1/secrets/{name}/members/{member}/disable"),
    ("POST", "/v1/secrets/{name}/members/{member}/enable"), ("PUT", "/v1/secrets/{name}/pool"),
    ("GET", "/v1/compliance/rotations"), ("GET", "/v1/compliance/who-could-reveal"),
}
SSH_KEY_OPERATIONS = {("GET", "/v1/ssh-keys"), ("POST", "/v1/ssh-keys"), ("DELETE", "/v1/ssh-keys/{ssh_key_id}")}
PEOPLE_AND_APPS_OPERATIONS = {
    ("GET", "/v1/members"), ("PATCH", "/v1/members/{member_id}"), ("DELETE", "/v1/members/{member_id}"),
    ("GET", "/v1/sso"), ("PUT", "/v1/sso"), ("DELETE", "/v1/sso"), ("GET", "/v1/connected-apps"),
    ("POST", "/v1/connected-apps"), ("GET", "/v1/connected-apps/{name}"), ("DELETE", "/v1/connected-apps/{name}"),
    ("POST", "/v1/connected-apps/{name}/token"), ("GET", "/v1/compliance/connected-apps"),
}
QUERY_VARIANTS = {
    ("DELETE", "/v1/secrets/{name}"): {"purge": "true"},
    ("GET", "/v1/secrets"): {"deleted": "true"},
    ("GET", "/v1/compliance/expiring"): {"days": "0"},
    ("GET", "/v1/compliance/rotations"): {"all": "true"},
    ("GET", "/v1/compliance/who-could-reveal"): {"secret": "target"},
    ("GET", "/v1/compliance/connected-apps"): {"all": "true"},
}


def test_revoked_and_malformed_credentials_are_401_on_every_route_and_method(foreign: World) -> None:
    client = foreign.client
    revoked = create_key(client, foreign.acme, role="admin")
    assert client.delete(f"/v1/keys/{revoked.key_id}", headers=foreign.acme.headers).status_code == 204
    before = max_seq(foreign.db)
    operations = every_operation(client)
    assert len(operations) >= 20
    assert set(operations) >= LIFECYCLE_OPERATIONS | ACCESS_OPERATIONS | SSH_KEY_OPERATIONS | PEOPLE_AND_APPS_OPERATIONS
    credentials = [*MALFORMED, f"Bearer {revoked.api_key}", f"Bearer {foreign.acme.api_key}x"]
    bodies: list[Any] = [None, {"name": "target", "value": "v"}, {"org": "x"}, "not json", {"name": 5},
                         {"version": 1}, {"recovery_window_days": 0}, {"value": "v"}, ROTATION,
                         {"roles": ["admin"]}, {"selection": "round_robin"},
                         {"name": "target", "value": "vault-kv://secret/x#k", "reference": True},
                         {"public_key": ACME_SSH_KEY}, {"role": "member"}, ACME_SSO, ACME_APP]
    for method, path in operations:
        url = (path.replace("{name}", "target").replace("{key_id}", foreign.acme.key_id).replace("{member}", "a")
               .replace("{ssh_key_id}", "ssh_0123456789abcdef").replace("{member_id}", foreign.member_id))
        for i, credential in enumerate(credentials):
            headers = {} if credential is None else {"Authorization": credential.encode("utf-8")}
            body = bodies[i % len(bodies)] if method in ("POST", "PUT", "PATCH") else None
            params = QUERY_VARIANTS.get((method, path), {}) if i % 2 else {}
            response = client.request(method, url, headers=headers, params=params, **(
                {"content": body} if isinstance(body, str) else {"json": body}))
            assert response.status_code == 401, (method, url, params, credential, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.headers["www-authenticate"].startswith("Bearer")
    assert max_seq(foreign.db) == before
