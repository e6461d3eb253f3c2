"""Connected apps (OAuth 2.0) through the HTTP API, on both backends, against a real authorization server.

The tokens are real: an authorization request to `tests/oidc_server.py`'s server, the user's consent and
the code exchange (`ledger/oauth.py`), then `POST /v1/connected-apps` with them. The app runs on a clock
the tests move (`Clock`), so a token becomes due for its refresh (it expires within a minute) without
waiting; refreshes go to the real token endpoint, which the tests make revoke the grant, fail once, or be
unreachable (a loopback port that refuses connections).

Nothing here may put a token anywhere but the token answer and the sealed column: every token the server
issued to the test's client, and its client secret, are looked for in every other answer, every log
record and the database (every table's rows; for SQLite the files themselves, WAL included).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from api.settings import Settings
from ledger import oauth
from ledger.apps import AppPayload, app_aad_name
from ledger.crypto import Keyring
from ledger.oauth import PRESETS, TokenSet
from tests.api.conftest import (
    Clock,
    Key,
    assert_problem,
    create_key,
    events_after,
    max_seq,
    query,
    stored_bytes,
)
from tests.oidc_server import OidcServer, oidc_server
from tests.pg import PgDsn, run_sync
from tests.webhook_server import refused_port

__all__ = ["oidc_server"]  # the imported module-scoped fixture: one authorization server for the module

Client = TestClient[Litestar]
REDIRECT = "http://localhost:8765/oauth/callback"
SECOND_NS = 1_000_000_000
APPS = "/v1/connected-apps"


@pytest.fixture
def keyring(settings: Settings) -> Keyring:
    return Keyring(settings.master_key, settings.previous_master_keys)


@dataclass
class Grant:
    """A client registered at the server and the tokens a user's consent gave it."""

    sub: str
    client_id: str
    client_secret: str
    tokens: TokenSet


def grant(server: OidcServer, sub: str) -> Grant:
    """The authorization code flow against the real server: request, consent, exchange."""
    client_id, client_secret = server.register_client(REDIRECT)
    server.set_user(sub, email=f"{sub}@example.com", email_verified=True)
    request = oauth.authorization_request(server.authorization_endpoint, client_id=client_id, redirect_uri=REDIRECT,
                                          scopes=("email",), openid=False)
    location = server.authorize(request.url, sub)
    code = oauth.code_from_callback(dict(parse_qsl(urlsplit(location).query)), expected_state=request.state)
    tokens = run_sync(oauth.exchange_code(
        server.token_endpoint, client_id=client_id, client_secret=client_secret, redirect_uri=REDIRECT, code=code,
        code_verifier=request.code_verifier, now_ns=time.time_ns()))
    assert tokens.refresh_token is not None and server.access_token_active(tokens.access_token)
    return Grant(sub=sub, client_id=client_id, client_secret=client_secret, tokens=tokens)


def connect_body(server: OidcServer, name: str, found: Grant, **fields: Any) -> dict[str, Any]:
    body = {"name": name, "provider": "custom", "authorization_url": server.authorization_endpoint,
            "token_url": server.token_endpoint, "client_id": found.client_id, "client_secret": found.client_secret,
            "scopes": ["email"], "access_token": found.tokens.access_token,
            "refresh_token": found.tokens.refresh_token, "expires_in": 3600}
    body.update(fields)
    return body


def connect(client: Client, key: Key, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(APPS, json=body, headers=key.headers)
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


def token(client: Client, key: Key, name: str, reason: str | None = None) -> httpx.Response:
    return client.post(f"{APPS}/{name}/token", json=None if reason is None else {"reason": reason},
                       headers=key.headers)


def issued_to(server: OidcServer, client_id: str) -> list[str]:
    """Every access and refresh token the server issued to the client (read from its store)."""
    state = server._state
    with state.lock:
        return [t for t, v in state.access.items() if v.client_id == client_id] + [
            t for t, r in state.refresh.items() if r.client_id == client_id]


def data_key_ids(db: Path | PgDsn) -> set[str]:
    return {row[0] for row in query(db, "SELECT id FROM data_keys")}


def open_payload(db: Path | PgDsn, keyring: Keyring, org: str, name: str) -> AppPayload:
    """The app's current sealed payload, opened with the master key (a positive control of the scans)."""
    rows = query(db, "SELECT body, sealed FROM events WHERE stream = ? AND sealed IS NOT NULL ORDER BY seq",
                 (f"app:{org}/{name}",))
    body, sealed = rows[-1]
    event = json.loads(bytes(body))
    ((kek_id, wrapped),) = query(db, "SELECT kek_id, wrapped FROM data_keys WHERE id = ?", (event["data_key_id"],))
    opener = keyring.opener(event["data_key_id"], kek_id, wrapped)
    plain = opener.open(sealed, org, app_aad_name(name), event["token_version"])
    return msgspec.json.decode(plain, type=AppPayload)


def types_after(db: Path | PgDsn, seq: int) -> list[str]:
    return [e["type"] for e in events_after(db, seq)]


def without_changing_times(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if k not in ("last_refresh_at", "expires_at", "token_version")}


# -- tokens and their refresh --------------------------------------------------------------------


def test_a_token_is_answered_then_refreshed_when_due_and_a_revoked_grant_breaks_the_connection(
    client: Client, acme: Key, db_file: Path | PgDsn, clock: Clock, oidc_server: OidcServer, keyring: Keyring,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    found = grant(oidc_server, "ada")
    before = max_seq(db_file)
    connected = connect(client, acme, connect_body(oidc_server, "idp", found))
    assert (connected["state"], connected["token_version"], connected["provider"]) == ("connected", 1, "custom")
    assert (connected["connected_by"], connected["scopes"], connected["scope"]) == (acme.key_id, ["email"], "all")
    assert connected["expires_at"] and connected["last_refresh_at"] is None and connected["last_error"] is None
    (event,) = events_after(db_file, before)
    assert event["type"] == "app.connected"
    first_data_key = event["data_key_id"]
    assert first_data_key in data_key_ids(db_file)

    # Still good for an hour: answered as stored, not refreshed; recorded with the reason.
    token_requests = oidc_server.request_count("/oauth2/token")
    seq = max_seq(db_file)
    answer = token(client, acme, "idp", reason="deploy")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body == {"name": "idp", "access_token": found.tokens.access_token, "token_type": "Bearer",
                    "expires_at": connected["expires_at"], "token_version": 1, "refreshed": False}
    (revealed,) = events_after(db_file, seq)
    assert (revealed["type"], revealed["name"], revealed["token_version"], revealed["reason"]) == (
        "app.token_revealed", "idp", 1, "deploy")
    assert (revealed["actor"]["key_id"], revealed["actor"]["kind"]) == (acme.key_id, "api_key")
    assert oidc_server.request_count("/oauth2/token") == token_requests

    # 30 s before it expires it is due: refreshed at the real token endpoint, then answered.
    clock.advance(3570 * SECOND_NS)
    seq = max_seq(db_file)
    answer = token(client, acme, "idp")
    assert answer.status_code == 200, answer.text
    refreshed = answer.json()
    assert refreshed["refreshed"] is True and refreshed["token_version"] == 2
    assert refreshed["access_token"] != found.tokens.access_token
    assert oidc_server.access_token_active(refreshed["access_token"])
    assert refreshed["expires_at"] > connected["expires_at"]
    assert oidc_server.request_count("/oauth2/token") == token_requests + 1
    assert oidc_server.token_requests[-1]["grant_type"] == "refresh_token"
    events = events_after(db_file, seq)
    assert [e["type"] for e in events] == ["app.token_refreshed", "app.token_revealed"]
    assert (events[0]["token_version"], events[1]["token_version"]) == (2, 2)
    # The old tokens' data key is destroyed; the new payload opens and holds the new tokens.
    keys = data_key_ids(db_file)
    assert first_data_key not in keys and events[0]["data_key_id"] in keys
    payload = open_payload(db_file, keyring, acme.org, "idp")
    assert payload.access_token == refreshed["access_token"] and payload.client_secret == found.client_secret
    assert payload.refresh_token not in (None, found.tokens.refresh_token)  # the server rotates refresh tokens
    shown = client.get(f"{APPS}/idp", headers=acme.headers).json()
    assert (shown["token_version"], shown["expires_at"], shown["state"]) == (2, refreshed["expires_at"], "connected")
    assert shown["last_refresh_at"] is not None and shown["last_error"] is None
    # Good again: the same new token, not refreshed.
    again = token(client, acme, "idp").json()
    assert (again["access_token"], again["refreshed"], again["token_version"]) == (refreshed["access_token"], False, 2)

    # The user revokes the grant at the provider; once due, the refresh is refused: 409, broken.
    oidc_server.revoke_user_tokens("ada")
    clock.advance(3570 * SECOND_NS)
    seq = max_seq(db_file)
    assert_problem(token(client, acme, "idp"), 409, "connect it again")
    (failed,) = events_after(db_file, seq)
    assert (failed["type"], failed["error"], failed["broken"]) == ("app.refresh_failed", "invalid_grant", True)
    shown = client.get(f"{APPS}/idp", headers=acme.headers).json()
    assert (shown["state"], shown["last_error"]) == ("broken", "invalid_grant")
    assert [a["state"] for a in client.get(APPS, headers=acme.headers).json()["apps"]] == ["broken"]
    attention = client.get("/v1/compliance/connected-apps", headers=acme.headers)
    assert [(a["name"], a["state"]) for a in attention.json()["apps"]] == [("idp", "broken")], attention.text
    # A broken connection answers 409 without asking the provider, and records nothing more.
    requests = oidc_server.request_count("/oauth2/token")
    seq = max_seq(db_file)
    assert_problem(token(client, acme, "idp"), 409, "broken")
    assert (oidc_server.request_count("/oauth2/token"), max_seq(db_file)) == (requests, seq)

    # An admin connects it again (a new grant): usable, healthy, out of the compliance list.
    second = grant(oidc_server, "ada")
    reconnected = connect(client, acme, connect_body(oidc_server, "idp", second))
    assert (reconnected["state"], reconnected["token_version"]) == ("connected", 3)
    assert token(client, acme, "idp").json()["access_token"] == second.tokens.access_token
    assert client.get("/v1/compliance/connected-apps", headers=acme.headers).json() == {"apps": []}

    # No token, refresh token or client secret anywhere but the token answers and the sealed column.
    planted = [*issued_to(oidc_server, found.client_id), *issued_to(oidc_server, second.client_id),
               found.client_secret, second.client_secret]
    assert len(planted) >= 8
    assert_only_sealed(db_file, planted)
    ours = [r for r in caplog.records if not from_the_provider(r)]
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in ours)
    assert any(r.name.startswith("httpx") for r in ours), "the capture missed keyledger's own requests"
    assert sum(t in logged for t in planted) == 0, "a token was logged"
    for row in query(db_file, "SELECT * FROM connected_apps"):
        assert sum(t in repr(row) for t in planted) == 0, "a token in the connected_apps projection"


def from_the_provider(record: logging.LogRecord) -> bool:
    """A record of the authorization server's own threads (Authlib's grants log the tokens they issue)."""
    return record.threadName == "oidc-server" or str(record.threadName).endswith("(process_request_thread)")


def assert_only_sealed(db: Path | PgDsn, planted: list[str]) -> None:
    """None of `planted` (nor its hex or base64) in any table's rows, the events' bodies included; and for
    SQLite, nowhere in the database's files (WAL included)."""
    from tests.api.test_canary import encodings

    stored = stored_bytes(db)
    assert stored, "nothing read"
    for value in planted:
        for form in encodings(value):
            found = [name for name, data in stored.items() if form in data]
            assert not found, f"a token in {found}"
    bodies = "\n".join(str(body) for (body,) in query(db, "SELECT body FROM events"))
    assert "app.token_refreshed" in bodies
    assert sum(t in bodies for t in planted) == 0, "a token in an event's body"


def test_an_unreachable_or_failing_provider_is_a_502_and_the_connection_stays_usable(
    client: Client, acme: Key, db_file: Path | PgDsn, clock: Clock, oidc_server: OidcServer,
) -> None:
    # A token endpoint nobody answers at; the token expires within the minute, so it is due at once.
    with refused_port() as port:
        body = connect_body(oidc_server, "offline", grant(oidc_server, "bea"),
                            token_url=f"http://127.0.0.1:{port}/token", expires_in=30)
        connect(client, acme, body)
        seq = max_seq(db_file)
        assert_problem(token(client, acme, "offline"), 502, "could not be reached")
    (failed,) = events_after(db_file, seq)
    assert (failed["type"], failed["broken"]) == ("app.refresh_failed", False)
    shown = client.get(f"{APPS}/offline", headers=acme.headers).json()
    assert (shown["state"], shown["token_version"]) == ("connected", 1)
    assert shown["last_error"] == failed["error"] and shown["last_error_at"] is not None
    attention = client.get("/v1/compliance/connected-apps", headers=acme.headers).json()["apps"]
    assert [(a["name"], a["state"], a["last_error"]) for a in attention] == [("offline", "connected", failed["error"])]

    # The real server fails once (503), then answers: the second call refreshes, and the app is healthy.
    found = grant(oidc_server, "cy")
    connect(client, acme, connect_body(oidc_server, "flaky", found, expires_in=45))
    oidc_server.fail_next_token_request(503)
    seq = max_seq(db_file)
    assert_problem(token(client, acme, "flaky"), 502)
    assert types_after(db_file, seq) == ["app.refresh_failed"]
    assert client.get(f"{APPS}/flaky", headers=acme.headers).json()["state"] == "connected"
    clock.advance(SECOND_NS)  # the refresh is stamped after the failure
    answer = token(client, acme, "flaky")
    assert answer.status_code == 200, answer.text
    assert (answer.json()["refreshed"], answer.json()["token_version"]) == (True, 2)
    assert answer.json()["access_token"] != found.tokens.access_token
    attention = client.get("/v1/compliance/connected-apps", headers=acme.headers).json()["apps"]
    assert [a["name"] for a in attention] == ["offline"]
    everything = client.get("/v1/compliance/connected-apps", params={"all": "true"}, headers=acme.headers)
    assert [a["name"] for a in everything.json()["apps"]] == ["flaky", "offline"]
    # A member key may not ask the compliance question.
    member = create_key(client, acme, role="member")
    assert_problem(client.get("/v1/compliance/connected-apps", headers=member.headers), 403)


def test_an_expired_token_without_a_refresh_token_breaks_the_connection(
    client: Client, acme: Key, db_file: Path | PgDsn, clock: Clock, oidc_server: OidcServer,
) -> None:
    body = connect_body(oidc_server, "static", grant(oidc_server, "dee"), expires_in=120)
    del body["refresh_token"]
    connect(client, acme, body)
    # Within the minute but not expired: answered as it is (nothing to refresh it with).
    clock.advance(90 * SECOND_NS)
    answer = token(client, acme, "static")
    assert (answer.status_code, answer.json()["refreshed"]) == (200, False), answer.text
    clock.advance(60 * SECOND_NS)
    seq = max_seq(db_file)
    assert_problem(token(client, acme, "static"), 409, "no refresh token")
    (failed,) = events_after(db_file, seq)
    assert (failed["type"], failed["broken"], failed["error"]) == ("app.refresh_failed", True,
                                                                   "expired_without_refresh_token")
    assert client.get(f"{APPS}/static", headers=acme.headers).json()["state"] == "broken"


# -- connecting ----------------------------------------------------------------------------------


def test_a_preset_fills_the_urls(client: Client, acme: Key) -> None:
    for provider in ("github", "google", "slack"):
        body = {"name": f"my-{provider}", "provider": provider, "client_id": "cid", "client_secret": "csecret",
                "scopes": ["read"], "access_token": f"static-{provider}-token"}
        answer = connect(client, acme, body)
        preset = PRESETS[provider]
        assert (answer["authorization_url"], answer["token_url"]) == (preset.authorization_url, preset.token_url)
        assert (answer["provider"], answer["expires_at"]) == (provider, None)
        # A URL given replaces the preset's.
        own = connect(client, acme, {**body, "name": f"own-{provider}", "token_url": "https://token.example.com/t"})
        assert (own["authorization_url"], own["token_url"]) == (preset.authorization_url, "https://token.example.com/t")
        # A token that never expires is answered as it is.
        answer = token(client, acme, f"my-{provider}").json()
        assert (answer["access_token"], answer["expires_at"], answer["refreshed"]) == (
            f"static-{provider}-token", None, False)


def test_connecting_refuses_what_it_cannot_use_and_records_nothing(client: Client, acme: Key,
                                                                   db_file: Path | PgDsn) -> None:
    good = {"name": "custom", "provider": "custom", "authorization_url": "https://id.example.com/authorize",
            "token_url": "https://id.example.com/token", "client_id": "cid", "client_secret": "csecret",
            "access_token": "static-access-token"}
    before = max_seq(db_file)
    for field in ("authorization_url", "token_url"):
        assert_problem(client.post(APPS, json={k: v for k, v in good.items() if k != field}, headers=acme.headers),
                       422, field)
        assert_problem(client.post(APPS, json={**good, field: "http://id.example.com/x"}, headers=acme.headers),
                       422, field)
    for bad in ({"provider": "myspace"}, {"scopes": ["has space"]}, {"scope": "everyone"}, {"name": "a/b"},
                {"expires_in": 0}, {"access_token": ""}, {"token": "x"}):
        assert_problem(client.post(APPS, json={**good, **bad}, headers=acme.headers), 422)
    # What a refresh could never send is refused now, not at the first refresh: a ':' in the client id under
    # HTTP Basic (a custom provider's way), a client secret or refresh token that is not printable ASCII, a
    # refresh token longer than a token request takes.
    for bad in ({"client_id": "urn:acme:app"}, {"client_secret": "s\u00e9cret"}, {"client_secret": "tab\tsecret"},
                {"refresh_token": "r\u00e9fresh"}, {"refresh_token": "r" * 4097}):
        field = next(iter(bad))
        assert_problem(client.post(APPS, json={**good, **bad}, headers=acme.headers), 422, field)
    assert max_seq(db_file) == before
    # GitHub takes the client id and secret in the body: a ':' is fine there.
    assert client.post(APPS, json={**good, "name": "gh", "provider": "github", "client_id": "urn:acme:app"},
                       headers=acme.headers).status_code == 201
    before = max_seq(db_file)
    connect(client, acme, good)
    # Connected and healthy: a second connect of the name is a conflict.
    assert_problem(client.post(APPS, json=good, headers=acme.headers), 409, "disconnect it first")
    assert max_seq(db_file) == before + 1


def test_member_keys_get_tokens_within_their_scope_but_only_admins_connect_and_disconnect(
    client: Client, acme: Key, db_file: Path | PgDsn,
) -> None:
    body = {"name": "tooling", "provider": "github", "client_id": "cid", "client_secret": "csecret",
            "access_token": "tools-access-token", "scope": "tools"}
    member_all = create_key(client, acme, role="member", scope="all")
    member_tools = create_key(client, acme, role="member", scope="tools")
    member_agents = create_key(client, acme, role="member", scope="agents")
    admin_sandboxes = create_key(client, acme, role="admin", scope="sandboxes")
    before = max_seq(db_file)
    assert_problem(client.post(APPS, json=body, headers=member_all.headers), 403, "only admins")
    assert max_seq(db_file) == before
    assert connect(client, acme, body)["scope"] == "tools"
    connect(client, acme, {**body, "name": "everyone", "scope": "all", "access_token": "shared-access-token"})
    # Reads: any key of the org.
    listed = client.get(APPS, headers=member_agents.headers).json()["apps"]
    assert [(a["name"], a["scope"]) for a in listed] == [("everyone", "all"), ("tooling", "tools")]
    assert "access-token" not in json.dumps(listed)
    seq = max_seq(db_file)
    for key in (member_all, member_tools):
        assert token(client, key, "tooling").json()["access_token"] == "tools-access-token"
    for key in (member_agents, admin_sandboxes):
        assert_problem(token(client, key, "tooling"), 403, "scope")
        assert token(client, key, "everyone").json()["access_token"] == "shared-access-token"
    revealed = events_after(db_file, seq)
    # A refusal by scope is recorded, like a denied reveal.
    assert [(e["type"], e["name"], e["actor"]["key_id"]) for e in revealed] == [
        ("app.token_revealed", "tooling", member_all.key_id), ("app.token_revealed", "tooling", member_tools.key_id),
        ("app.token_denied", "tooling", member_agents.key_id), ("app.token_revealed", "everyone", member_agents.key_id),
        ("app.token_denied", "tooling", admin_sandboxes.key_id),
        ("app.token_revealed", "everyone", admin_sandboxes.key_id)]
    assert revealed[2]["reason"] == "key scope agents does not cover app scope tools"
    seq = max_seq(db_file)
    assert_problem(client.delete(f"{APPS}/tooling", headers=member_tools.headers), 403, "only admins")
    assert_problem(token(client, acme, "nothing-here"), 404, "not found")
    assert max_seq(db_file) == seq


def test_a_disconnected_app_is_gone_and_its_tokens_destroyed(client: Client, acme: Key, globex: Key,
                                                              db_file: Path | PgDsn) -> None:
    body = {"name": "chat", "provider": "slack", "client_id": "cid", "client_secret": "csecret",
            "access_token": "slack-access-token", "refresh_token": "slack-refresh-token", "expires_in": 86_400}
    connect(client, acme, body)
    data_key = events_after(db_file, 0)[-1]["data_key_id"]
    assert_problem(client.delete(f"{APPS}/chat", headers=globex.headers), 404)  # another org: like unknown
    seq = max_seq(db_file)
    assert client.delete(f"{APPS}/chat", headers=acme.headers).status_code == 204
    (gone,) = events_after(db_file, seq)
    assert (gone["type"], gone["name"], gone["actor"]["key_id"]) == ("app.disconnected", "chat", acme.key_id)
    assert data_key not in data_key_ids(db_file)
    assert_problem(client.get(f"{APPS}/chat", headers=acme.headers), 404)
    assert client.get(APPS, headers=acme.headers).json() == {"apps": []}
    assert_problem(token(client, acme, "chat"), 404)
    assert_problem(client.delete(f"{APPS}/chat", headers=acme.headers), 404)
    assert max_seq(db_file) == seq + 1
    # Connected again under the same name: a new token version, the new token.
    again = connect(client, acme, {**body, "access_token": "second-access-token"})
    assert (again["state"], again["token_version"]) == ("connected", 2)
    assert token(client, acme, "chat").json()["access_token"] == "second-access-token"


@pytest.fixture(autouse=True)
def fresh_oauth_caches() -> Iterator[None]:
    oauth.clear_caches()
    yield
    oauth.clear_caches()
