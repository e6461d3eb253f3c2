"""Signing in to the dashboard through the org's OpenID Connect provider, in process, on both backends, against
a real authorization server (`tests/oidc_server.py`: Authlib's, PKCE enforced, nonces required).

The browser here is the test client's cookie jar. It does not apply SameSite, so what the tests check about it
is what the server says (the flow cookie Lax and scoped to /sso, the session cookie Strict); the headless
browser test (`tests/browser/test_sso_browser.py`) checks that a real browser gets through.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from tests.api.conftest import Clock, Key, create_key, create_org, events_after, max_seq, upsert
from tests.api.test_dashboard import csrf_of, set_cookie_headers, sign_in
from tests.oidc_server import OidcServer
from tests.pg import PgDsn

Client = TestClient[Litestar]
BASE = "http://127.0.0.1:8000"  # a loopback origin: plain http is allowed for its redirect URIs
CALLBACK = f"{BASE}/sso/callback"
SECRET_NAME = "SSO_CLIENT_SECRET"
MINUTE = 60 * 1_000_000_000
_CONTINUE = re.compile(r'id="continue" href="([^"]+)"')


@pytest.fixture(scope="module")
def oidc() -> Iterator[OidcServer]:
    with OidcServer() as server:
        yield server


@pytest.fixture
def browser(client: Client) -> Client:
    client.base_url = httpx.URL(BASE)
    return client


@pytest.fixture
def acme(browser: Client) -> Key:
    return create_org(browser, "acme")


class Sso:
    """The org's single sign-on, set up at the provider and in keyledger."""

    def __init__(self, client: Client, admin: Key, server: OidcServer, domains: list[str] | None = None) -> None:
        self.server = server
        self.client_id, self.client_secret = server.register_client(CALLBACK)
        upsert(client, admin, SECRET_NAME, self.client_secret, expect=201)
        answer = client.put("/v1/sso", headers=admin.headers, json={
            "issuer": server.issuer, "client_id": self.client_id, "client_secret_name": SECRET_NAME,
            "allowed_domains": domains or ["example.com"]})
        assert answer.status_code == 200, answer.text


@pytest.fixture
def sso(browser: Client, acme: Key, oidc: OidcServer) -> Sso:
    oidc.set_user("ada", email="ada@example.com", email_verified=True, name="Ada")
    oidc.set_user("bob", email="bob@example.com", email_verified=True)
    return Sso(browser, acme, oidc)


@contextmanager
def jar(client: Client, cookies: httpx.Cookies) -> Iterator[httpx.Cookies]:
    """Use `cookies` as the browser's jar for a while (another person's browser); what it gains is kept in it
    (the client copies a jar it is given)."""
    saved = client.cookies
    client.cookies = cookies
    try:
        yield cookies
    finally:
        cookies.clear()
        for cookie in client.cookies.jar:
            cookies.jar.set_cookie(cookie)
        client.cookies = saved


def continue_link(page: httpx.Response) -> str:
    """Where a hop page sends the browser (its refresh and its link)."""
    found = _CONTINUE.search(page.text)
    assert found is not None, page.text[:2000]
    to = html.unescape(found.group(1))
    assert f'<meta http-equiv="refresh" content="0; url={found.group(1)}">' in page.text
    return to


def start(browser: Client, org: str = "acme") -> str:
    """Press "Sign in with SSO": the provider's authorization URL the browser is sent to."""
    page = browser.get("/sso/start", params={"org": org})
    assert page.status_code == 200, page.text
    url = continue_link(page)
    assert url.startswith(f"http://localhost:{urlsplit(url).port}/oauth2/authorize?")
    return url


def come_back(browser: Client, location: str) -> httpx.Response:
    """The provider's redirect back to keyledger."""
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == CALLBACK, location
    return browser.get(f"{parts.path}?{parts.query}", follow_redirects=False)


def sso_sign_in(browser: Client, server: OidcServer, sub: str, org: str = "acme") -> httpx.Response:
    return come_back(browser, server.authorize(start(browser, org), sub))


def signed_in_as(browser: Client) -> str | None:
    """The email the header shows, or None when the browser is not signed in."""
    page = browser.get("/credentials", follow_redirects=False)
    if page.status_code != 200:
        return None
    found = re.search(r'<strong id="who-email">([^<]+)</strong>', page.text)
    return found.group(1) if found else None


def types_after(db_file: Path | PgDsn, seq: int) -> list[str]:
    return [e["type"] for e in events_after(db_file, seq)]


def nonce_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["nonce"][0]


def test_a_person_signs_in_joins_once_and_acts_as_themself(browser: Client, acme: Key, sso: Sso, oidc: OidcServer,
                                                           db_file: Path | PgDsn) -> None:
    # The sign-in page offers single sign-on to an org that has it.
    assert 'id="sso-start" href="/sso/start?org=acme"' in browser.get("/?org=acme").text
    assert 'id="sso-start"' not in browser.get("/?org=nosuchorg").text

    before = max_seq(db_file)
    started = browser.get("/sso/start", params={"org": "acme"})
    flow = next(c for c in set_cookie_headers(started) if c.startswith("keyledger_sso_flow="))
    flags = {part.strip().lower() for part in flow.split(";")[1:]}
    assert {"httponly", "samesite=lax", "path=/sso", "max-age=600"} <= flags
    assert "secure" not in flags  # plain http here
    url = continue_link(started)
    query = parse_qs(urlsplit(url).query)
    assert (query["scope"], query["code_challenge_method"], query["redirect_uri"]) == (
        ["openid email profile"], ["S256"], [CALLBACK])
    for value in (query["state"][0], query["nonce"][0]):
        assert value not in flow  # sealed, not in clear
    assert max_seq(db_file) == before  # starting records nothing

    landed = come_back(browser, oidc.authorize(url, "ada"))
    assert landed.status_code == 200, landed.text
    assert continue_link(landed) == "/credentials"  # a same-site hop: the Strict cookie goes with it
    cookies = set_cookie_headers(landed)
    session = next(c for c in cookies if c.startswith("keyledger_session="))
    assert "samesite=strict" in session.lower() and "httponly" in session.lower()
    cleared = next(c for c in cookies if c.startswith("keyledger_sso_flow="))
    assert "max-age=0" in cleared.lower()
    assert signed_in_as(browser) == "ada@example.com"

    revealed, joined, session_started = events_after(db_file, before)
    assert (revealed["type"], revealed["name"], revealed["actor"]["kind"]) == (
        "secret.revealed", SECRET_NAME, "system")
    assert (joined["type"], joined["role"], joined["email"], joined["subject"]) == (
        "member.joined", "admin", "ada@example.com", "ada")
    person = {"key_id": joined["member_id"], "label": "ada@example.com", "kind": "person", "subject": "ada"}
    assert joined["actor"] == person
    assert (session_started["type"], session_started["actor"]) == ("session.started", person)
    assert sso.client_secret not in str(events_after(db_file, before))

    # What a person does is recorded under them, like an API call.
    assert browser.get("/audit").status_code == 200  # the org's first person is an admin
    csrf = csrf_of(browser.get("/credentials"))
    before = max_seq(db_file)
    browser.post("/credentials/secrets", data={"name": "ADA_TOKEN", "value": "v", "csrf_token": csrf})
    (created,) = events_after(db_file, before)
    assert (created["type"], created["actor"]) == ("secret.created", person)

    # Signing out and in again: a new session, no second joining.
    browser.post("/sign-out", data={"csrf_token": csrf})
    assert signed_in_as(browser) is None
    before = max_seq(db_file)
    assert sso_sign_in(browser, oidc, "ada").status_code == 200
    assert types_after(db_file, before) == ["secret.revealed", "session.started"]
    assert signed_in_as(browser) == "ada@example.com"

    # The second person is a member, who sees the people read-only.
    with jar(browser, httpx.Cookies()):
        before = max_seq(db_file)
        assert sso_sign_in(browser, oidc, "bob").status_code == 200
        assert types_after(db_file, before) == ["secret.revealed", "member.joined", "session.started"]
        assert events_after(db_file, before)[1]["role"] == "member"
        people = browser.get("/people")
        assert people.status_code == 200
        assert "ada@example.com" in people.text and "bob@example.com" in people.text
        assert "Change role" not in people.text and "/remove" not in people.text
        assert browser.get("/audit", follow_redirects=False).status_code == 403


def test_refused_flows_sign_nobody_in_and_record_nothing(browser: Client, sso: Sso, oidc: OidcServer,
                                                         clock: Clock, db_file: Path | PgDsn) -> None:
    def refused(answer: httpx.Response, status: int, words: str) -> None:
        assert answer.status_code == status, answer.text
        assert words in html.unescape(answer.text), answer.text
        assert 'id="api_key"' in answer.text  # the sign-in page
        assert not any(c.startswith("keyledger_session=") for c in set_cookie_headers(answer))
        assert signed_in_as(browser) is None

    create_org(browser, "globex")  # an org without single sign-on
    before = max_seq(db_file)
    # No such org, or no single sign-on: the same answer.
    refused(browser.get("/sso/start", params={"org": "nosuchorg"}), 404, "does not sign in with single sign-on")
    refused(browser.get("/sso/start", params={"org": "globex"}), 404, "does not sign in with single sign-on")
    refused(browser.get("/sso/start", params={"org": "Not An Org!"}), 422, "organisation's name")

    # The flow cookie missing (another browser), or tampered with.
    location = oidc.authorize(start(browser), "ada")
    browser.cookies.delete("keyledger_sso_flow", domain="127.0.0.1", path="/sso")
    refused(come_back(browser, location), 400, "out of date")
    location = oidc.authorize(start(browser), "ada")
    sealed = browser.cookies.get("keyledger_sso_flow", path="/sso")
    assert sealed is not None
    flipped = sealed[:40] + ("A" if sealed[40] != "A" else "B") + sealed[41:]
    browser.cookies.set("keyledger_sso_flow", flipped, domain="127.0.0.1", path="/sso")
    refused(come_back(browser, location), 400, "out of date")

    # A state that is not this flow's: a sign-in started in another tab since, or a forged callback.
    first = start(browser)
    start(browser)  # another tab: its cookie replaces the first's
    refused(come_back(browser, oidc.authorize(first, "ada")), 400, "state mismatch")
    start(browser)
    refused(browser.get("/sso/callback", params={"code": "forged"}), 400, "state mismatch")

    # The person says no at the provider.
    refused(come_back(browser, oidc.deny(start(browser))), 401, "refused (access_denied)")
    assert max_seq(db_file) == before, "a refusal before the code exchange recorded something"

    # The provider's answer replayed (its code used already): refused by the provider, after the recorded
    # reveal of the client secret that the exchange needs.
    location = oidc.authorize(start(browser), "ada")
    cookie = browser.cookies.get("keyledger_sso_flow", path="/sso")
    assert come_back(browser, location).status_code == 200
    assert types_after(db_file, before) == ["secret.revealed", "member.joined", "session.started"]
    browser.cookies.clear()
    browser.cookies.set("keyledger_sso_flow", cookie or "", domain="127.0.0.1", path="/sso")
    before = max_seq(db_file)
    refused(come_back(browser, location), 401, "refused (invalid_grant)")
    assert types_after(db_file, before) == ["secret.revealed"]

    # A flow older than 10 minutes (last: the server's clock stays ahead of the provider's from here on).
    before = max_seq(db_file)
    location = oidc.authorize(start(browser), "ada")
    clock.advance(11 * MINUTE)
    refused(come_back(browser, location), 400, "out of date")
    assert max_seq(db_file) == before


def test_a_tampered_id_token_is_refused(browser: Client, sso: Sso, oidc: OidcServer, db_file: Path | PgDsn) -> None:
    """What the token endpoint answers is what the browser cannot touch, but a provider (or whoever answers for
    it) may send a bad ID token: each kind is named, and only the recorded reveal of the client secret remains.
    The checks are ledger/oauth.py's (tests/test_oauth.py covers them one by one); here, that the dashboard
    applies them all."""
    now = int(time.time())
    cases: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("signature", {}, {"key": oidc.foreign_key()}),
        ("issuer", {"iss": "http://localhost:1"}, {}),
        ("audience", {"aud": ["another-client"]}, {}),
        ("expired", {"iat": now - 4000, "exp": now - 3600}, {}),
        ("nonce", {}, {}),  # the nonce of an earlier sign-in: a replayed token
    ]
    earlier = nonce_of(start(browser))
    for reason, claims, signing in cases:
        url = start(browser)
        location = oidc.authorize(url, "ada")
        nonce = earlier if reason == "nonce" else nonce_of(url)
        claims = {**claims, "nonce": nonce}
        token = oidc.sign_id_token(oidc.id_token_claims(client_id=sso.client_id, sub="ada", **claims), **signing)
        oidc.fail_next_token_request(200, {"access_token": "at", "token_type": "Bearer", "id_token": token})
        before = max_seq(db_file)
        answer = come_back(browser, location)
        assert answer.status_code == 401, answer.text
        assert f"ID token was refused ({reason})" in html.unescape(answer.text)
        assert token not in answer.text and "keyledger_session=" not in str(set_cookie_headers(answer))
        assert types_after(db_file, before) == ["secret.revealed"], reason
    # No ID token at all.
    location = oidc.authorize(start(browser), "ada")
    oidc.fail_next_token_request(200, {"access_token": "at", "token_type": "Bearer"})
    answer = come_back(browser, location)
    assert answer.status_code == 401 and "ID token was refused (malformed)" in answer.text
    assert signed_in_as(browser) is None


def test_who_may_sign_in(browser: Client, acme: Key, sso: Sso, oidc: OidcServer, db_file: Path | PgDsn) -> None:
    oidc.set_user("eve", email="eve@elsewhere.example", email_verified=True)
    oidc.set_user("unverified", email="carol@example.com", email_verified=False)
    for sub, words in (("eve", "domain may not sign in"), ("unverified", "email address is verified")):
        before = max_seq(db_file)
        answer = sso_sign_in(browser, oidc, sub)
        assert answer.status_code == 403, answer.text
        assert words in html.unescape(answer.text)
        assert types_after(db_file, before) == ["secret.revealed"]  # nobody joined, no session
        assert signed_in_as(browser) is None

    # A removed person: their live session stops at once, and signing in again is refused.
    assert sso_sign_in(browser, oidc, "ada").status_code == 200
    assert signed_in_as(browser) == "ada@example.com"
    (ada,) = browser.get("/v1/members", headers=acme.headers).json()["members"]
    assert browser.delete(f"/v1/members/{ada['member_id']}", headers=acme.headers).status_code == 204
    stopped = browser.get("/credentials", follow_redirects=False)
    assert (stopped.status_code, stopped.headers["location"]) == (303, "/?ended=1")
    before = max_seq(db_file)
    answer = sso_sign_in(browser, oidc, "ada")
    assert answer.status_code == 403 and "was removed from the org" in answer.text
    assert types_after(db_file, before) == ["secret.revealed"]
    assert signed_in_as(browser) is None


def test_admins_change_roles_and_remove_people_at_once(browser: Client, acme: Key, sso: Sso, oidc: OidcServer,
                                                       db_file: Path | PgDsn) -> None:
    ada_jar, bob_jar = httpx.Cookies(), httpx.Cookies()
    with jar(browser, ada_jar):
        sso_sign_in(browser, oidc, "ada")
        ada_csrf = csrf_of(browser.get("/people"))
    with jar(browser, bob_jar):
        sso_sign_in(browser, oidc, "bob")
        listed = browser.get("/v1/members", headers=acme.headers).json()["members"]
        people = {p["email"]: p["member_id"] for p in listed}
        ada_id, bob_id = people["ada@example.com"], people["bob@example.com"]
        # A member changes no role and removes nobody: 403, nothing recorded.
        bob_csrf = csrf_of(browser.get("/people"))
        before = max_seq(db_file)
        for path, data in ((f"/people/{ada_id}/role", {"role": "member"}),
                           (f"/people/{bob_id}/role", {"role": "admin"}), (f"/people/{ada_id}/remove", {})):
            answer = browser.post(path, data={**data, "csrf_token": bob_csrf}, follow_redirects=False)
            assert answer.status_code == 403, (path, answer.text)
        assert browser.get(f"/people/{ada_id}/remove").status_code == 403
        assert max_seq(db_file) == before

    # Ada (an admin person) makes Bob an admin: it applies at his next click.
    with jar(browser, ada_jar):
        before = max_seq(db_file)
        answer = browser.post(f"/people/{bob_id}/role", data={"role": "admin", "csrf_token": ada_csrf},
                              follow_redirects=False)
        assert (answer.status_code, answer.headers["location"]) == (303, "/people?notice=role-changed")
        (changed,) = events_after(db_file, before)
        assert (changed["type"], changed["member_id"], changed["role"], changed["actor"]["key_id"]) == (
            "member.role_changed", bob_id, "admin", ada_id)
        # The same role again changes nothing, and records nothing.
        answer = browser.post(f"/people/{bob_id}/role", data={"role": "admin", "csrf_token": ada_csrf},
                              follow_redirects=False)
        assert answer.headers["location"] == "/people?notice=role-unchanged"
        assert max_seq(db_file) == before + 1
    with jar(browser, bob_jar):
        assert browser.get("/audit").status_code == 200
        assert "(admin)" in browser.get("/credentials").text

    # An API-key admin removes Bob after a confirmation: his session stops at once.
    with jar(browser, httpx.Cookies()):
        csrf = sign_in(browser, acme)
        people_page = browser.get("/people").text
        assert sso.client_id in people_page and SECRET_NAME in people_page and "example.com" in people_page
        assert sso.client_secret not in people_page
        confirm = browser.get(f"/people/{bob_id}/remove")
        assert confirm.status_code == 200 and "Remove bob@example.com from acme?" in confirm.text
        before = max_seq(db_file)
        answer = browser.post(f"/people/{bob_id}/remove", data={"csrf_token": csrf}, follow_redirects=False)
        assert answer.headers["location"] == "/people?notice=person-removed"
        (removed,) = events_after(db_file, before)
        assert (removed["type"], removed["member_id"], removed["actor"]["key_id"]) == (
            "member.removed", bob_id, acme.key_id)
        assert "bob@example.com" not in browser.get("/people").text
    with jar(browser, bob_jar):
        assert signed_in_as(browser) is None

    # A member key sees the people, and changes nothing.
    member = create_key(browser, acme, role="member", label="reader")
    with jar(browser, httpx.Cookies()):
        csrf = sign_in(browser, member)
        assert "ada@example.com" in browser.get("/people").text
        before = max_seq(db_file)
        answer = browser.post(f"/people/{ada_id}/role", data={"role": "member", "csrf_token": csrf})
        assert answer.status_code == 403
        assert max_seq(db_file) == before
