"""People (single sign-on) through the HTTP API, on both backends: the org's OpenID Connect settings
(`/v1/sso`), the people list and role changes (`/v1/members`), what is recorded and what the audit shows.

Joining needs a browser and the provider; here a person joins as the dashboard makes them join once their
ID token is verified: `Ledger.sign_in_person`, called in-process on the app's own ledger (on its event
loop, through the test client's portal). A person acting (an admin person changing a role) goes through
the ledger too, with the person's Context, as the dashboard's pages do.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from ledger.commands import Context
from ledger.errors import GoneError, NotFoundError, PermissionDeniedError, UnauthenticatedError
from ledger.events import Actor, Source
from ledger.people import SignedInPerson
from ledger.service import Ledger
from ledger.timefmt import rfc3339
from tests.api.conftest import (
    Clock,
    Key,
    assert_problem,
    audit_after,
    create_key,
    events_after,
    max_seq,
    upsert,
)
from tests.pg import PgDsn

Client = TestClient[Litestar]
T = TypeVar("T")

ISSUER = "https://id.example.com"
SECOND_NS = 1_000_000_000
CLIENT_SECRET_NAME = "sso-client-secret"
SSO_BODY = {"issuer": ISSUER, "client_id": "keyledger-dashboard", "client_secret_name": CLIENT_SECRET_NAME,
            "allowed_domains": ["Example.com", "example.org", "example.com"]}
SSO_ANSWER = {"issuer": ISSUER, "client_id": "keyledger-dashboard", "client_secret_name": CLIENT_SECRET_NAME,
              "allowed_domains": ["example.com", "example.org"]}
# What the dashboard's sign-in callback passes: the request's source; the actor becomes the person.
SIGN_IN_CONTEXT = Context(actor=Actor(key_id="system", label="keyledger", kind="system"),
                          source=Source(address="127.0.0.1", user_agent="dashboard test"))


def in_app(client: Client, action: Callable[[Ledger], Awaitable[T]]) -> T:
    """Run `action(ledger)` on the app's own ledger, in the app's event loop."""
    ledger: Ledger = client.app.state.ledger

    async def run() -> T:
        return await action(ledger)

    return client.blocking_portal.call(run)


def sign_in(client: Client, org: str, subject: str, email: str, *, issuer: str = ISSUER) -> SignedInPerson:
    """A person whose ID token the dashboard verified signs in (joining the org the first time)."""
    return in_app(client, lambda ledger: ledger.sign_in_person(
        SIGN_IN_CONTEXT, org, issuer=issuer, subject=subject, email=email, session_id=secrets.token_urlsafe(24)))


def person_context(person: SignedInPerson, subject: str) -> Context:
    """The Context of a request a signed-in person makes (as the dashboard builds it)."""
    return Context(actor=Actor(key_id=person.member_id, label=person.email, kind="person", subject=subject),
                   source=Source(address="127.0.0.1", user_agent="dashboard test"))


def configure_sso(client: Client, admin: Key) -> dict[str, Any]:
    upsert(client, admin, CLIENT_SECRET_NAME, "sso-client-secret-value", expect=201)
    response = client.put("/v1/sso", json=SSO_BODY, headers=admin.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def members_of(client: Client, key: Key) -> list[dict[str, Any]]:
    response = client.get("/v1/members", headers=key.headers)
    assert response.status_code == 200, response.text
    listed: list[dict[str, Any]] = response.json()["members"]
    return listed


def actor_of(event: dict[str, Any]) -> dict[str, Any]:
    actor: dict[str, Any] = event["actor"]
    return actor


# -- single sign-on settings ---------------------------------------------------------------------------


def test_sso_settings_are_set_read_and_removed_by_admin_keys(client: Client, acme: Key,
                                                             db_file: Path | PgDsn) -> None:
    member = create_key(client, acme, role="member", label="a member key")
    assert_problem(client.get("/v1/sso", headers=acme.headers), 404, "no single sign-on")
    upsert(client, acme, CLIENT_SECRET_NAME, "sso-client-secret-value", expect=201)
    before = max_seq(db_file)
    # Refusals record nothing: a member key, an unknown secret name, a plain-http or other-scheme issuer, no
    # domain, a domain that is not one, an unknown field.
    assert_problem(client.put("/v1/sso", json=SSO_BODY, headers=member.headers), 403, "only admins")
    assert_problem(client.put("/v1/sso", json={**SSO_BODY, "client_secret_name": "nope"}, headers=acme.headers),
                   404, "'nope'")
    for issuer in ("http://id.example.com", "ftp://id.example.com", "https://user:pw@id.example.com", "id.example.com"):
        assert_problem(client.put("/v1/sso", json={**SSO_BODY, "issuer": issuer}, headers=acme.headers), 422,
                       "issuer")
    for domains in ([], ["not a domain"], ["example"], ["@example.com"]):
        assert_problem(client.put("/v1/sso", json={**SSO_BODY, "allowed_domains": domains}, headers=acme.headers),
                       422, "allowed_domains")
    assert_problem(client.put("/v1/sso", json={**SSO_BODY, "client_secret": "x"}, headers=acme.headers), 422)
    # The code exchange sends the client id with HTTP Basic: a ':' or a space could never sign anyone in.
    for client_id in ("urn:acme:app", "has space"):
        assert_problem(client.put("/v1/sso", json={**SSO_BODY, "client_id": client_id}, headers=acme.headers), 422,
                       "client_id")
    assert max_seq(db_file) == before, "a refused change of the SSO settings was recorded"
    assert_problem(client.get("/v1/sso", headers=acme.headers), 404)

    put = client.put("/v1/sso", json=SSO_BODY, headers=acme.headers)
    assert put.status_code == 200, put.text
    answer = put.json()
    assert {k: v for k, v in answer.items() if k != "changed_at"} == SSO_ANSWER
    assert "sso-client-secret-value" not in put.text
    (configured,) = events_after(db_file, before)
    assert configured["type"] == "sso.configured"
    assert (configured["issuer"], configured["allowed_domains"]) == (ISSUER, ["example.com", "example.org"])
    assert (actor_of(configured)["key_id"], actor_of(configured)["kind"]) == (acme.key_id, "api_key")
    # Any key of the org reads them; a loopback http issuer is allowed (a local provider).
    assert client.get("/v1/sso", headers=member.headers).json() == answer
    local = client.put("/v1/sso", json={**SSO_BODY, "issuer": "http://localhost:9999"}, headers=acme.headers)
    assert (local.status_code, local.json()["issuer"]) == (200, "http://localhost:9999"), local.text
    # The issuer is kept exactly as given: ID tokens must name it so (some providers end it with '/').
    slashed = client.put("/v1/sso", json={**SSO_BODY, "issuer": ISSUER + "/"}, headers=acme.headers)
    assert (slashed.status_code, slashed.json()["issuer"]) == (200, ISSUER + "/"), slashed.text

    before = max_seq(db_file)
    assert_problem(client.delete("/v1/sso", headers=member.headers), 403, "only admins")
    assert max_seq(db_file) == before
    assert client.delete("/v1/sso", headers=acme.headers).status_code == 204
    (removed,) = events_after(db_file, before)
    assert (removed["type"], actor_of(removed)["key_id"]) == ("sso.removed", acme.key_id)
    assert_problem(client.get("/v1/sso", headers=acme.headers), 404)
    assert_problem(client.delete("/v1/sso", headers=acme.headers), 404, "no single sign-on")
    assert max_seq(db_file) == before + 1
    # Without single sign-on nobody signs in.
    with pytest.raises(UnauthenticatedError):
        sign_in(client, acme.org, "ada-sub", "ada@example.com")


# -- people ----------------------------------------------------------------------------------------


def test_the_first_person_is_an_admin_and_later_ones_members(client: Client, acme: Key,
                                                               db_file: Path | PgDsn) -> None:
    configure_sso(client, acme)
    assert members_of(client, acme) == []
    before = max_seq(db_file)
    ada = sign_in(client, acme.org, "ada-sub", "ada@example.com")
    bob = sign_in(client, acme.org, "bob-sub", "bob@Example.org")
    assert (ada.role, ada.joined, bob.role, bob.joined) == ("admin", True, "member", True)
    assert ada.member_id.startswith("mbr_") and ada.member_id != bob.member_id
    again = sign_in(client, acme.org, "ada-sub", "ada@example.com")
    assert (again.member_id, again.role, again.joined) == (ada.member_id, "admin", False)
    # Another provider's subject of the same value, a domain not allowed: refused, nothing recorded.
    refused_at = max_seq(db_file)
    with pytest.raises(UnauthenticatedError):
        sign_in(client, acme.org, "ada-sub", "ada@example.com", issuer="https://other.example.com")
    with pytest.raises(PermissionDeniedError):
        sign_in(client, acme.org, "eve-sub", "eve@example.net")
    with pytest.raises(PermissionDeniedError):
        sign_in(client, acme.org, "eve-sub", "eve@sub.example.com")
    assert max_seq(db_file) == refused_at

    joined = [e for e in events_after(db_file, before) if e["type"] == "member.joined"]
    assert [(e["member_id"], e["role"], e["subject"], e["email"]) for e in joined] == [
        (ada.member_id, "admin", "ada-sub", "ada@example.com"), (bob.member_id, "member", "bob-sub", "bob@Example.org")]
    assert [actor_of(e) for e in joined] == [
        {"key_id": ada.member_id, "label": "ada@example.com", "kind": "person", "subject": "ada-sub"},
        {"key_id": bob.member_id, "label": "bob@Example.org", "kind": "person", "subject": "bob-sub"}]
    member_key = create_key(client, acme, role="member", scope="agents")
    listed = members_of(client, member_key)
    assert [(p["member_id"], p["email"], p["subject"], p["issuer"], p["role"]) for p in listed] == [
        (ada.member_id, "ada@example.com", "ada-sub", ISSUER, "admin"),
        (bob.member_id, "bob@Example.org", "bob-sub", ISSUER, "member")]
    assert all(p["joined_at"] and p["last_sign_in_at"] and p["last_sign_in_at"] >= p["joined_at"] for p in listed)
    assert listed[0]["last_sign_in_at"] > listed[0]["joined_at"]  # ada signed in twice


def test_roles_change_by_an_admin_key_and_by_an_admin_person(client: Client, acme: Key,
                                                           db_file: Path | PgDsn) -> None:
    configure_sso(client, acme)
    ada = sign_in(client, acme.org, "ada-sub", "ada@example.com")
    bob = sign_in(client, acme.org, "bob-sub", "bob@example.com")
    member = create_key(client, acme, role="member")
    before = max_seq(db_file)
    # Refused, nothing recorded: a member key, an unknown or malformed id, an unknown role, another org's key.
    path = f"/v1/members/{bob.member_id}"
    assert_problem(client.patch(path, json={"role": "admin"}, headers=member.headers), 403, "only admins")
    assert_problem(client.patch("/v1/members/mbr_0123456789abcdef", json={"role": "admin"}, headers=acme.headers),
                   404, "mbr_0123456789abcdef")
    assert_problem(client.patch("/v1/members/nobody", json={"role": "admin"}, headers=acme.headers), 404)
    assert_problem(client.patch(path, json={"role": "owner"}, headers=acme.headers), 422)
    assert_problem(client.patch(path, json={}, headers=acme.headers), 422)
    assert max_seq(db_file) == before

    changed = client.patch(path, json={"role": "admin"}, headers=acme.headers)
    assert changed.status_code == 200, changed.text
    assert (changed.json()["member_id"], changed.json()["role"]) == (bob.member_id, "admin")
    (event,) = events_after(db_file, before)
    assert (event["type"], event["member_id"], event["role"]) == ("member.role_changed", bob.member_id, "admin")
    assert (actor_of(event)["key_id"], actor_of(event)["kind"]) == (acme.key_id, "api_key")
    # The same role again: answered, nothing recorded.
    same = client.patch(path, json={"role": "admin"}, headers=acme.headers)
    assert (same.status_code, same.json()["role"]) == (200, "admin")
    assert max_seq(db_file) == before + 1

    # ada, an admin person, makes bob a member again through her dashboard session's Context.
    as_ada = person_context(ada, "ada-sub")
    assert in_app(client, lambda ledger: ledger.change_person_role(as_ada, acme.org, bob.member_id, "member"))
    (event,) = events_after(db_file, before + 1)
    assert (event["type"], event["role"]) == ("member.role_changed", "member")
    assert actor_of(event) == {"key_id": ada.member_id, "label": "ada@example.com", "kind": "person",
                               "subject": "ada-sub"}
    assert [p["role"] for p in members_of(client, acme)] == ["admin", "member"]
    # bob, a member person, may not change roles; nothing recorded.
    as_bob = person_context(bob, "bob-sub")
    with pytest.raises(PermissionDeniedError):
        in_app(client, lambda ledger: ledger.change_person_role(as_bob, acme.org, ada.member_id, "member"))
    assert max_seq(db_file) == before + 2


def test_a_person_is_one_member_across_an_issuers_final_slash_and_keeps_the_email_they_joined_with(
        client: Client, acme: Key, db_file: Path | PgDsn) -> None:
    configure_sso(client, acme)
    ada = sign_in(client, acme.org, "ada-sub", "ada@example.com")
    bob = sign_in(client, acme.org, "bob-sub", "bob@example.com")
    # The provider now presents another email: the sign-in records it, the member keeps the one they joined
    # with (reveal policies and who-could-reveal match that one, in the ledger and in the projection alike).
    before = max_seq(db_file)
    renamed = sign_in(client, acme.org, "ada-sub", "ada.lovelace@example.com")
    assert (renamed.member_id, renamed.joined) == (ada.member_id, False)
    (started,) = events_after(db_file, before)
    assert (started["type"], actor_of(started)["label"]) == ("session.started", "ada.lovelace@example.com")
    assert {p["member_id"]: p["email"] for p in members_of(client, acme)} == {
        ada.member_id: "ada@example.com", bob.member_id: "bob@example.com"}
    # SSO settings saved again with a final '/' (discovery treats both alike): the same people, and a removed
    # one stays out.
    assert client.delete(f"/v1/members/{bob.member_id}", headers=acme.headers).status_code == 204
    assert client.put("/v1/sso", json={**SSO_BODY, "issuer": ISSUER + "/"}, headers=acme.headers).status_code == 200
    before = max_seq(db_file)
    with pytest.raises(PermissionDeniedError, match="removed"):
        sign_in(client, acme.org, "bob-sub", "bob@example.com", issuer=ISSUER + "/")
    again = sign_in(client, acme.org, "ada-sub", "ada@example.com", issuer=ISSUER + "/")
    assert (again.member_id, again.role, again.joined) == (ada.member_id, "admin", False)
    assert [e["type"] for e in events_after(db_file, before)] == ["session.started"]


def test_an_expired_sso_client_secret_is_not_opened(client: Client, acme: Key, clock: Clock,
                                                     db_file: Path | PgDsn) -> None:
    """The code exchange's reveal of the client secret honours its expiry, like any reveal."""
    configure_sso(client, acme)
    upsert(client, acme, CLIENT_SECRET_NAME, "sso-client-secret-value", expect=200,
           expires_at=rfc3339(clock() + 3600 * SECOND_NS))
    assert in_app(client, lambda ledger: ledger.sso_client(acme.org)).client_id == SSO_BODY["client_id"]
    clock.advance(2 * 3600 * SECOND_NS)
    before = max_seq(db_file)
    with pytest.raises(GoneError, match="expired"):
        in_app(client, lambda ledger: ledger.sso_client(acme.org))
    assert max_seq(db_file) == before


def test_a_removed_person_is_gone_and_cannot_sign_in_again(client: Client, acme: Key, globex: Key,
                                                           db_file: Path | PgDsn) -> None:
    configure_sso(client, acme)
    ada = sign_in(client, acme.org, "ada-sub", "ada@example.com")
    bob = sign_in(client, acme.org, "bob-sub", "bob@example.com")
    member = create_key(client, acme, role="member")
    path = f"/v1/members/{bob.member_id}"
    before = max_seq(db_file)
    assert_problem(client.delete(path, headers=member.headers), 403, "only admins")
    assert_problem(client.delete(path, headers=globex.headers), 404)  # another org's key: like an unknown id
    assert max_seq(db_file) == before

    assert client.delete(path, headers=acme.headers).status_code == 204
    (event,) = events_after(db_file, before)
    assert (event["type"], event["member_id"]) == ("member.removed", bob.member_id)
    assert (actor_of(event)["key_id"], actor_of(event)["kind"]) == (acme.key_id, "api_key")
    assert [p["member_id"] for p in members_of(client, acme)] == [ada.member_id]
    assert_problem(client.delete(path, headers=acme.headers), 404)
    assert_problem(client.patch(path, json={"role": "admin"}, headers=acme.headers), 404)
    # bob cannot sign in again, nor act with a session he had.
    with pytest.raises(PermissionDeniedError, match="removed"):
        sign_in(client, acme.org, "bob-sub", "bob@example.com")
    with pytest.raises(UnauthenticatedError):
        in_app(client, lambda ledger: ledger.change_person_role(person_context(bob, "bob-sub"), acme.org,
                                                                ada.member_id, "member"))
    assert max_seq(db_file) == before + 1
    # Removing bob again, as ada (an admin person) through the ledger: not found.
    with pytest.raises(NotFoundError):
        in_app(client, lambda ledger: ledger.remove_person(person_context(ada, "ada-sub"), acme.org, bob.member_id))


def test_the_audit_shows_a_persons_actions_with_email_and_subject(client: Client, acme: Key,
                                                                  db_file: Path | PgDsn) -> None:
    configure_sso(client, acme)
    start = max_seq(db_file)
    ada = sign_in(client, acme.org, "ada-sub", "ada@example.com")
    bob = sign_in(client, acme.org, "bob-sub", "bob@example.com")
    as_ada = person_context(ada, "ada-sub")
    assert in_app(client, lambda ledger: ledger.change_person_role(as_ada, acme.org, bob.member_id, "admin"))
    in_app(client, lambda ledger: ledger.remove_person(as_ada, acme.org, bob.member_id))
    response = client.get("/v1/audit", params={"order": "oldest"}, headers=acme.headers)
    assert response.status_code == 200, response.text
    by_action = {}
    for event in response.json()["events"]:
        if event["seq"] > start:
            by_action.setdefault(event["action"], []).append(event)
    ada_actor = {"key_id": ada.member_id, "label": "ada@example.com", "kind": "person", "subject": "ada-sub"}
    for action in ("member.role_changed", "member.removed"):
        (event,) = by_action[action]
        assert event["actor"] == ada_actor, event
    joined = by_action["member.joined"]
    assert [e["actor"]["subject"] for e in joined] == ["ada-sub", "bob-sub"]
    assert all(e["actor"]["kind"] == "person" for e in joined)
    # An API key's events carry no subject.
    key_events = [e for e in response.json()["events"] if e["actor"]["kind"] == "api_key"]
    assert key_events and all("subject" not in e["actor"] for e in key_events)
    # The audit projection itself: the person's rows.
    rows = [r for r in audit_after(db_file, start) if r["action"] in ("member.role_changed", "member.removed")]
    assert [(r["actor_key_id"], r["actor_kind"]) for r in rows] == [(ada.member_id, "person")] * 2
    # The exports: JSON Lines carries the actor whole; CSV has the subject in its last column.
    lines = [json.loads(line) for line in client.get("/v1/audit/export", params={"format": "jsonl"},
                                                      headers=acme.headers).text.splitlines()]
    assert [line["actor"] for line in lines if line["type"] == "member.removed"] == [ada_actor]
    table = list(csv.reader(io.StringIO(client.get("/v1/audit/export", params={"format": "csv"},
                                                   headers=acme.headers).text)))
    assert table[0][-1] == "actor_subject"
    assert [(r[5], r[-1]) for r in table[1:] if r[4] == "member.removed"] == [(ada.member_id, "ada-sub")]
    assert {r[-1] for r in table[1:] if r[7] == "api_key"} == {""}
