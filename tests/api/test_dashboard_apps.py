"""Connecting apps through OAuth 2.0 from the dashboard's Credentials page, in process, on both backends, against
a real authorization server in plain OAuth mode (`tests/oidc_server.py`, no openid scope: no ID token).

The provider sends the browser back with a cross-site navigation, which carries no SameSite=Strict session
cookie; the callback therefore works without any session (here: with an empty cookie jar) and hands over, through
a same-site hop, to /apps/finish, which runs under the session. The client secret is carried in a sealed
cookie meanwhile: it must never be readable anywhere but at the provider.
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from tests.api.conftest import (
    TABLES,
    Key,
    create_key,
    create_org,
    events_after,
    max_seq,
    stored_bytes,
    table_dump,
)
from tests.api.test_dashboard import set_cookie_headers, sign_in
from tests.api.test_dashboard_sso import BASE, continue_link, jar
from tests.oidc_server import OidcServer
from tests.pg import PgDsn

Client = TestClient[Litestar]
CALLBACK = f"{BASE}/apps/callback"


@pytest.fixture(scope="module")
def oidc() -> Iterator[OidcServer]:
    with OidcServer() as server:
        server.set_user("ada", email="ada@example.com", email_verified=True)
        yield server


@pytest.fixture
def browser(client: Client) -> Client:
    client.base_url = httpx.URL(BASE)
    return client


@pytest.fixture
def acme(browser: Client) -> Key:
    return create_org(browser, "acme")


class Seen:
    """Every answer the browser got (bodies and headers), to search for what must never show."""

    def __init__(self) -> None:
        self.answers: list[str] = []

    def __call__(self, response: httpx.Response) -> None:
        response.read()
        self.answers.append("\n".join(f"{k}: {v}" for k, v in response.headers.multi_items()) + "\n" + response.text)


@pytest.fixture
def seen(browser: Client) -> Iterator[Seen]:
    record = Seen()
    browser.event_hooks["response"].append(record)
    yield record
    browser.event_hooks["response"].remove(record)


def connect_form(oidc: OidcServer, client_id: str, client_secret: str, name: str = "ci-app") -> dict[str, str]:
    return {"name": name, "provider": "custom", "authorization_url": oidc.authorization_endpoint,
            "token_url": oidc.token_endpoint, "client_id": client_id, "client_secret": client_secret,
            "scopes": "email profile", "scope": "tools"}


def to_provider(browser: Client, csrf: str, form: dict[str, str]) -> httpx.Response:
    """Submit "Connect an app": the hop page that sends the browser to the provider."""
    answer = browser.post("/apps/connect", data={**form, "csrf_token": csrf}, follow_redirects=False)
    assert answer.status_code == 200, answer.text
    return answer


def back_from_provider(browser: Client, location: str) -> httpx.Response:
    """The provider's redirect back, which carries no session cookie (a cross-site navigation: the flow cookie,
    Lax, would come with it, but the callback needs nothing), then the same-site hop to the finish."""
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == CALLBACK, location
    with jar(browser, httpx.Cookies()):
        hop = browser.get(f"{parts.path}?{parts.query}", follow_redirects=False)
    assert hop.status_code == 200, hop.text
    finish = continue_link(hop)
    assert finish.startswith("/apps/finish?")
    return browser.get(finish, follow_redirects=False)


def connect(browser: Client, oidc: OidcServer, csrf: str, form: dict[str, str]) -> httpx.Response:
    url = continue_link(to_provider(browser, csrf, form))
    return back_from_provider(browser, oidc.authorize(url, "ada"))


def apps_section(browser: Client) -> str:
    page = browser.get("/credentials")
    assert page.status_code == 200
    text = page.text
    return html.unescape(text[text.index('id="connected-apps"'):])


def test_an_admin_connects_and_disconnects_an_app_and_the_secret_never_shows(
        browser: Client, acme: Key, oidc: OidcServer, seen: Seen, db_file: Path | PgDsn,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client_id, client_secret = oidc.register_client(CALLBACK)
    csrf = sign_in(browser, acme)
    assert "No apps are connected." in apps_section(browser)
    form_page = browser.get("/apps/connect")
    assert form_page.status_code == 200 and 'name="client_secret" type="password"' in form_page.text
    assert CALLBACK in form_page.text  # the redirect URI to register at the provider

    before = max_seq(db_file)
    hop = to_provider(browser, csrf, connect_form(oidc, client_id, client_secret))
    assert max_seq(db_file) == before  # nothing is recorded until the app is connected
    flow = next(c for c in set_cookie_headers(hop) if c.startswith("keyledger_app_flow="))
    flags = {part.strip().lower() for part in flow.split(";")[1:]}
    assert {"httponly", "samesite=lax", "path=/apps", "max-age=600"} <= flags
    sealed = flow.split(";")[0].split("=", 1)[1]
    assert client_secret.encode() not in base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
    url = continue_link(hop)
    query = parse_qs(urlsplit(url).query)
    assert (query["client_id"], query["redirect_uri"], query["scope"], query["code_challenge_method"]) == (
        [client_id], [CALLBACK], ["email profile"], ["S256"])

    done = back_from_provider(browser, oidc.authorize(url, "ada"))
    assert (done.status_code, done.headers["location"]) == (303, "/credentials?notice=app-connected#connected-apps")
    assert "max-age=0" in next(c for c in set_cookie_headers(done) if c.startswith("keyledger_app_flow=")).lower()
    (connected,) = events_after(db_file, before)
    assert (connected["type"], connected["name"], connected["provider"], connected["scopes"], connected["scope"],
            connected["actor"]["key_id"]) == ("app.connected", "ci-app", "custom", ["email", "profile"], "tools",
                                              acme.key_id)
    section = apps_section(browser)
    assert "ci-app" in section and "Connected" in section and "email profile" in section
    assert "Broken" not in section

    # Tools get a working token; the provider honours it.
    token = browser.post("/v1/connected-apps/ci-app/token", headers=acme.headers, json={"reason": "ci"})
    assert token.status_code == 200, token.text
    assert oidc.access_token_active(token.json()["access_token"])

    # Disconnect, after a confirmation.
    confirm = browser.get("/apps/ci-app/disconnect")
    assert confirm.status_code == 200 and "Disconnect the app “ci-app”?" in confirm.text
    before = max_seq(db_file)
    answer = browser.post("/apps/ci-app/disconnect", data={"csrf_token": csrf}, follow_redirects=False)
    assert answer.headers["location"] == "/credentials?notice=app-disconnected#connected-apps"
    assert [e["type"] for e in events_after(db_file, before)] == ["app.disconnected"]
    assert "No apps are connected." in apps_section(browser)
    assert browser.get("/v1/connected-apps/ci-app", headers=acme.headers).status_code == 404

    # The client secret was never in an answer, a cookie in clear, an event, a projection, the database or a log.
    assert len(seen.answers) >= 12 and any("keyledger_app_flow=" in text for text in seen.answers)
    for answer_text in seen.answers:
        assert client_secret not in answer_text
    assert client_secret not in str(table_dump(db_file, TABLES))
    for name, data in stored_bytes(db_file).items():
        assert client_secret.encode() not in data, name
    for record in caplog.records:
        assert client_secret not in record.getMessage()


def test_a_broken_connection_shows_and_reconnects(browser: Client, acme: Key, oidc: OidcServer,
                                                  db_file: Path | PgDsn) -> None:
    client_id, client_secret = oidc.register_client(CALLBACK)
    csrf = sign_in(browser, acme)
    oidc.access_token_ttl_s = 30  # every token handed out is due for a refresh (a minute's margin)
    try:
        done = connect(browser, oidc, csrf, connect_form(oidc, client_id, client_secret, "flaky"))
        assert done.status_code == 303, done.text
        # The person revokes keyledger's access at the provider: the next refresh is refused.
        oidc.revoke_user_tokens("ada")
        refused = browser.post("/v1/connected-apps/flaky/token", headers=acme.headers)
        assert refused.status_code == 409, refused.text
        section = apps_section(browser)
        assert "Broken" in section and "invalid_grant" in section
        assert 'href="/apps/connect?name=flaky">Reconnect' in section

        # Reconnect: the form is filled in from the connection, but for the client secret.
        form_page = browser.get("/apps/connect", params={"name": "flaky"})
        assert form_page.status_code == 200
        text = html.unescape(form_page.text)
        assert "Reconnect “flaky”" in text and client_id in text and oidc.token_endpoint in text
        assert client_secret not in text
        before = max_seq(db_file)
        done = connect(browser, oidc, csrf, connect_form(oidc, client_id, client_secret, "flaky"))
        assert done.status_code == 303, done.text
        (connected,) = events_after(db_file, before)
        assert (connected["type"], connected["token_version"]) == ("app.connected", 2)
        section = apps_section(browser)
        assert "Broken" not in section and "Connected" in section
    finally:
        oidc.access_token_ttl_s = 3600
    assert browser.post("/v1/connected-apps/flaky/token", headers=acme.headers).status_code == 200


def test_connecting_is_refused_without_admin_a_matching_flow_or_consent(
        browser: Client, acme: Key, oidc: OidcServer, db_file: Path | PgDsn) -> None:
    client_id, client_secret = oidc.register_client(CALLBACK)
    form = connect_form(oidc, client_id, client_secret)

    # A member key: no form, no flow, no disconnecting.
    member = create_key(browser, acme, role="member", label="reader")
    with jar(browser, httpx.Cookies()):
        csrf = sign_in(browser, member)
        before = max_seq(db_file)
        assert browser.get("/apps/connect").status_code == 403
        refused = browser.post("/apps/connect", data={**form, "csrf_token": csrf}, follow_redirects=False)
        assert refused.status_code == 403 and "keyledger_app_flow" not in str(set_cookie_headers(refused))
        assert "Connect an app</a>" not in apps_section(browser)
        assert max_seq(db_file) == before

    csrf = sign_in(browser, acme)
    before = max_seq(db_file)
    # Bad input is refused before the provider is involved, and the secret is never echoed.
    for changes, words in (({"provider": "custom", "token_url": ""}, "token_url: is required"),
                           ({"authorization_url": "http://example.com/authorize"}, "must use https"),
                           ({"name": "a/b"}, "must not contain '/'"),
                           ({"client_secret": ""}, "client secret: is required"),
                           ({"scope": "everything"}, "scope: must be one of"),
                           # HTTP Basic (a custom provider's way) cannot carry a ':' in the client id.
                           ({"provider": "custom", "client_id": "urn:acme:app"}, "client_id: must not contain ':'"),
                           ({"client_secret": "s\u00e9cret"}, "client secret: must be at most")):
        answer = browser.post("/apps/connect", data={**form, **changes, "csrf_token": csrf}, follow_redirects=False)
        assert answer.status_code == 422, (changes, answer.text)
        assert words in html.unescape(answer.text), (changes, answer.text)
        assert client_secret not in answer.text and "keyledger_app_flow" not in str(set_cookie_headers(answer))

    # The person declines at the provider.
    url = continue_link(to_provider(browser, csrf, form))
    answer = back_from_provider(browser, oidc.deny(url))
    assert answer.status_code == 400 and "refused (access_denied)" in answer.text
    assert client_secret not in answer.text
    # An answer for another flow (a second tab started since), or with no flow at all.
    first = continue_link(to_provider(browser, csrf, form))
    to_provider(browser, csrf, form)
    answer = back_from_provider(browser, oidc.authorize(first, "ada"))
    assert answer.status_code == 400 and "state mismatch" in html.unescape(answer.text)
    answer = back_from_provider(browser, oidc.authorize(first, "ada"))
    assert answer.status_code == 400 and "out of date" in answer.text  # the flow cookie was cleared
    # A flow started by another session (signed out and in again since) is not finished by this one.
    url = continue_link(to_provider(browser, csrf, form))
    flow_cookie = browser.cookies.get("keyledger_app_flow", path="/apps")
    browser.post("/sign-out", data={"csrf_token": csrf})
    csrf = sign_in(browser, acme)
    browser.cookies.set("keyledger_app_flow", flow_cookie or "", domain="127.0.0.1", path="/apps")
    answer = back_from_provider(browser, oidc.authorize(url, "ada"))
    assert answer.status_code == 400 and "out of date" in answer.text
    events = [e["type"] for e in events_after(db_file, before)]
    assert events == ["session.ended", "session.started"], events  # nothing connected, nothing else recorded

    # Already connected under that name.
    assert connect(browser, oidc, csrf, form).status_code == 303
    answer = browser.post("/apps/connect", data={**form, "csrf_token": csrf}, follow_redirects=False)
    assert answer.status_code == 409 and "disconnect it first" in answer.text
    # Without a session, the finish is the sign-in page.
    with jar(browser, httpx.Cookies()):
        assert browser.get("/apps/finish?code=x&state=y", follow_redirects=False).headers["location"] == "/"
    assert "ci-app" in apps_section(browser)
