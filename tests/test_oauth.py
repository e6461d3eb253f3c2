"""ledger/oauth.py against a real authorization server on a loopback port (tests/oidc_server.py)."""

from __future__ import annotations

import base64
import hashlib
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import pytest

from ledger import oauth
from ledger.errors import LedgerError, ValidationError
from ledger.oauth import (
    AuthorizationRequest,
    DiscoveryError,
    IdTokenError,
    ProviderRefusedError,
    ProviderUnavailableError,
    TokenSet,
)
from tests.oidc_server import OidcServer, hmac_key, oidc_server, unsigned_token
from tests.webhook_server import refused_port

__all__ = ["oidc_server"]  # the imported fixture: listing it tells ruff (F401, F811) it is meant

REDIRECT = "http://localhost:8765/oauth/callback"
NS = 1_000_000_000


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    oauth.clear_caches()  # a test's JWKS refetch must not be throttled by another test's
    yield
    oauth.clear_caches()


@dataclass
class Login:
    client_id: str
    client_secret: str
    request: AuthorizationRequest
    code: str


def start_login(
    server: OidcServer, *, sub: str = "ada", scopes: tuple[str, ...] = ("email",), openid: bool = True,
    auth_method: str = "client_secret_basic",
) -> Login:
    client_id, client_secret = server.register_client(REDIRECT, auth_method=auth_method)
    if server._state.user(sub) is None:
        server.set_user(sub, email=f"{sub}@example.com", email_verified=True)
    request = oauth.authorization_request(
        server.authorization_endpoint, client_id=client_id, redirect_uri=REDIRECT, scopes=scopes, openid=openid
    )
    location = server.authorize(request.url, sub)
    code = oauth.code_from_callback(dict(parse_qsl(urlsplit(location).query)), expected_state=request.state)
    return Login(client_id, client_secret, request, code)


async def exchange(server: OidcServer, login: Login, *, now_ns: int | None = None, **options: Any) -> TokenSet:
    return await oauth.exchange_code(
        server.token_endpoint, client_id=login.client_id, client_secret=login.client_secret, redirect_uri=REDIRECT,
        code=login.code, code_verifier=login.request.code_verifier, now_ns=now_ns or time.time_ns(), **options,
    )


async def logged_in(server: OidcServer, **options: Any) -> tuple[Login, TokenSet]:
    login = start_login(server, **options)
    return login, await exchange(server, login)


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


# -- discovery ------------------------------------------------------------------------------------------


async def test_discovery_finds_the_endpoints_and_caches_them(oidc_server: OidcServer) -> None:
    before = oidc_server.request_count("/.well-known/openid-configuration")
    metadata = await oauth.discover(oidc_server.issuer)
    assert metadata == oidc_server.metadata
    assert await oauth.discover(oidc_server.issuer) == metadata
    assert oidc_server.request_count("/.well-known/openid-configuration") == before + 1


async def test_discovery_refuses_a_document_naming_another_issuer(oidc_server: OidcServer) -> None:
    other_name = oidc_server.issuer.replace("localhost", "127.0.0.1")  # the same server, asked under another name
    with pytest.raises(DiscoveryError) as caught:
        await oauth.discover(other_name)
    assert caught.value.reason == "issuer"
    assert caught.value.permanent


async def test_discovery_of_a_wrong_issuer_url(oidc_server: OidcServer) -> None:
    with pytest.raises(DiscoveryError) as caught:
        await oauth.discover(oidc_server.issuer + "/no-such-tenant")
    assert caught.value.reason == "http"
    assert "404" in str(caught.value)


async def test_discovery_of_an_unreachable_issuer() -> None:
    with refused_port() as port, pytest.raises(ProviderUnavailableError) as caught:
        await oauth.discover(f"http://127.0.0.1:{port}", timeout=2)
    assert not caught.value.permanent


async def test_discovery_refuses_a_plain_http_issuer() -> None:
    with pytest.raises(ValidationError) as caught:
        await oauth.discover("http://accounts.example.com")
    assert caught.value.field == "issuer"


# -- the authorization request --------------------------------------------------------------------------


def test_authorization_request_carries_pkce_state_and_nonce() -> None:
    request = oauth.authorization_request(
        "https://idp.example.com/authorize", client_id="my-client", redirect_uri=REDIRECT,
        scopes=["email", "profile"], openid=True,
    )
    query = query_of(request.url)
    assert request.url.startswith("https://idp.example.com/authorize?")
    assert query["response_type"] == ["code"]
    assert query["client_id"] == ["my-client"]
    assert query["redirect_uri"] == [REDIRECT]
    assert query["scope"] == ["openid email profile"]
    assert query["state"] == [request.state]
    assert query["nonce"] == [request.nonce]
    assert query["code_challenge_method"] == ["S256"]
    assert query["code_challenge"] == [s256(request.code_verifier)]
    assert 43 <= len(request.code_verifier) <= 128
    assert len(request.state) >= 32 and request.nonce is not None and len(request.nonce) >= 32

    again = oauth.authorization_request(
        "https://idp.example.com/authorize", client_id="my-client", redirect_uri=REDIRECT,
        scopes=["email", "profile"], openid=True,
    )
    assert {again.state, again.nonce, again.code_verifier}.isdisjoint(
        {request.state, request.nonce, request.code_verifier}
    )


def test_authorization_request_without_openid_has_no_nonce() -> None:
    request = oauth.authorization_request(
        oauth.PRESETS["github"].authorization_url, client_id="gh", redirect_uri=REDIRECT,
        scopes=oauth.PRESETS["github"].scopes, openid=False,
    )
    query = query_of(request.url)
    assert request.nonce is None
    assert "nonce" not in query
    assert query["scope"] == ["read:user user:email"]
    assert query["code_challenge"] == [s256(request.code_verifier)]


def test_presets_scope_separator_and_extra_params() -> None:
    slack = oauth.PRESETS["slack"]
    request = oauth.authorization_request(
        slack.authorization_url, client_id="s", redirect_uri=REDIRECT, scopes=["users:read", "chat:write"],
        openid=slack.openid, scope_separator=slack.scope_separator,
    )
    assert query_of(request.url)["scope"] == ["users:read,chat:write"]

    google = oauth.PRESETS["google"]
    request = oauth.authorization_request(
        google.authorization_url, client_id="g", redirect_uri=REDIRECT, scopes=google.scopes,
        openid=google.openid, extra_params=dict(google.extra_params),
    )
    query = query_of(request.url)
    assert query["access_type"] == ["offline"] and query["prompt"] == ["consent"]
    assert query["scope"] == ["openid email"]
    for preset in oauth.PRESETS.values():
        assert oauth.validate_endpoint_url(preset.authorization_url, "a").startswith("https://")
        assert oauth.validate_endpoint_url(preset.token_url, "t").startswith("https://")


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"extra_params": {"state": "mine"}}, "extra_params"),
        ({"extra_params": {"code_challenge_method": "plain"}}, "extra_params"),
        ({"scopes": ["two words"]}, "scopes"),
        ({"scopes": "email"}, "scopes"),
        ({"client_id": ""}, "client_id"),
        ({"redirect_uri": "http://evil.example/cb"}, "redirect_uri"),
    ],
)
def test_authorization_request_refuses(options: dict[str, Any], field: str) -> None:
    arguments: dict[str, Any] = {"client_id": "c", "redirect_uri": REDIRECT, "scopes": ["email"], "openid": True}
    with pytest.raises(ValidationError) as caught:
        oauth.authorization_request("https://idp.example.com/authorize", **{**arguments, **options})
    assert caught.value.field == field


def test_callback_state_is_checked(oidc_server: OidcServer) -> None:
    login = start_login(oidc_server)
    params = {"code": login.code, "state": login.request.state}
    assert oauth.code_from_callback(params, expected_state=login.request.state) == login.code
    for forged in ({"code": login.code, "state": "other"}, {"code": login.code}):
        with pytest.raises(ValidationError) as caught:
            oauth.code_from_callback(forged, expected_state=login.request.state)
        assert caught.value.field == "state"
    with pytest.raises(ValidationError):
        oauth.code_from_callback(params, expected_state="")


def test_callback_of_a_declined_consent(oidc_server: OidcServer) -> None:
    client_id, _ = oidc_server.register_client(REDIRECT)
    request = oauth.authorization_request(
        oidc_server.authorization_endpoint, client_id=client_id, redirect_uri=REDIRECT, scopes=[], openid=True
    )
    location = oidc_server.deny(request.url)
    with pytest.raises(ProviderRefusedError) as caught:
        oauth.code_from_callback(dict(parse_qsl(urlsplit(location).query)), expected_state=request.state)
    assert caught.value.error_code == "access_denied"


# -- the code exchange ----------------------------------------------------------------------------------


async def test_code_exchange_and_id_token_give_the_identity(oidc_server: OidcServer) -> None:
    oidc_server.set_user("grace", email="grace@example.com", email_verified=True, name="Grace")
    login = start_login(oidc_server, sub="grace")
    now_ns = time.time_ns()
    tokens = await exchange(oidc_server, login, now_ns=now_ns)

    assert tokens.token_type == "Bearer"
    assert tokens.scope == "openid email"
    assert tokens.expires_at == now_ns + oidc_server.access_token_ttl_s * NS
    assert tokens.refresh_token and tokens.id_token
    assert oidc_server.access_token_active(tokens.access_token)

    assert login.request.nonce is not None
    identity = await oauth.verify_id_token(
        tokens.id_token, metadata=await oauth.discover(oidc_server.issuer), client_id=login.client_id,
        nonce=login.request.nonce,
    )
    assert identity == oauth.Identity(
        issuer=oidc_server.issuer, subject="grace", email="grace@example.com", email_verified=True
    )


async def test_without_the_email_scope_the_identity_has_no_email(oidc_server: OidcServer) -> None:
    login, tokens = await logged_in(oidc_server, scopes=())
    assert tokens.scope == "openid" and tokens.id_token and login.request.nonce
    identity = await oauth.verify_id_token(
        tokens.id_token, metadata=oidc_server.metadata, client_id=login.client_id, nonce=login.request.nonce
    )
    assert (identity.subject, identity.email, identity.email_verified) == ("ada", "", False)


async def test_a_wrong_pkce_verifier_is_refused(oidc_server: OidcServer) -> None:
    login = start_login(oidc_server)
    other_verifier = "v" * 64
    with pytest.raises(ProviderRefusedError) as caught:
        await oauth.exchange_code(
            oidc_server.token_endpoint, client_id=login.client_id, client_secret=login.client_secret,
            redirect_uri=REDIRECT, code=login.code, code_verifier=other_verifier, now_ns=time.time_ns(),
        )
    assert caught.value.error_code == "invalid_grant"
    assert caught.value.permanent
    assert oidc_server.token_requests[-1]["code_verifier"] == other_verifier  # it was sent, and refused


def test_the_server_refuses_an_authorization_request_without_pkce(oidc_server: OidcServer) -> None:
    client_id, _ = oidc_server.register_client(REDIRECT)
    request = oauth.authorization_request(
        oidc_server.authorization_endpoint, client_id=client_id, redirect_uri=REDIRECT, scopes=[], openid=True
    )
    without_pkce = "&".join(
        part for part in request.url.split("&") if not part.startswith(("code_challenge=", "code_challenge_method="))
    )
    answer = query_of(oidc_server.authorize(without_pkce, "ada"))
    assert answer["error"] == ["invalid_request"] and "code" not in answer
    plain = request.url.replace("code_challenge_method=S256", "code_challenge_method=plain")
    assert query_of(oidc_server.authorize(plain, "ada"))["error"] == ["invalid_request"]


async def test_a_code_is_good_once(oidc_server: OidcServer) -> None:
    login = start_login(oidc_server)
    await exchange(oidc_server, login)
    with pytest.raises(ProviderRefusedError) as caught:
        await exchange(oidc_server, login)
    assert caught.value.error_code == "invalid_grant"


async def test_a_wrong_client_secret_is_refused(oidc_server: OidcServer) -> None:
    login = start_login(oidc_server)
    login.client_secret = "not-the-secret"
    with pytest.raises(ProviderRefusedError) as caught:
        await exchange(oidc_server, login)
    assert caught.value.error_code == "invalid_client"


async def test_client_secret_post(oidc_server: OidcServer) -> None:
    login = start_login(oidc_server, auth_method="client_secret_post")
    tokens = await exchange(oidc_server, login, auth_method="client_secret_post")
    assert oidc_server.access_token_active(tokens.access_token)
    assert oidc_server.token_requests[-1]["client_secret"] == login.client_secret

    second = start_login(oidc_server, auth_method="client_secret_post")
    with pytest.raises(ProviderRefusedError) as caught:  # basic (the default) for a client registered for post
        await exchange(oidc_server, second)
    assert caught.value.error_code == "invalid_client"
    assert "client_secret" not in oidc_server.token_requests[-1]


# -- refreshing -----------------------------------------------------------------------------------------


async def test_refresh_after_the_access_token_expired() -> None:
    with OidcServer(access_token_ttl_s=2) as server:
        login, tokens = await logged_in(server)
        assert tokens.expires_at is not None and tokens.refresh_token
        later_ns = tokens.expires_at + 1  # the caller's clock says the access token has expired: no sleeping
        fresh = await oauth.refresh_tokens(
            server.token_endpoint, client_id=login.client_id, client_secret=login.client_secret,
            refresh_token=tokens.refresh_token, scope="", now_ns=later_ns,
        )
        assert fresh.access_token != tokens.access_token
        assert server.access_token_active(fresh.access_token)
        assert fresh.expires_at == later_ns + 2 * NS
        assert fresh.refresh_token and fresh.refresh_token != tokens.refresh_token  # this server rotates them
        assert fresh.scope == "openid email"
        with pytest.raises(ProviderRefusedError) as caught:  # the rotated-out refresh token is spent
            await oauth.refresh_tokens(
                server.token_endpoint, client_id=login.client_id, client_secret=login.client_secret,
                refresh_token=tokens.refresh_token, scope="", now_ns=later_ns,
            )
        assert caught.value.error_code == "invalid_grant"


async def test_a_refresh_without_a_new_refresh_token_keeps_the_old_one() -> None:
    with OidcServer() as server:
        server.rotate_refresh_tokens = False
        login, tokens = await logged_in(server)
        assert tokens.refresh_token
        for _ in range(2):
            fresh = await oauth.refresh_tokens(
                server.token_endpoint, client_id=login.client_id, client_secret=login.client_secret,
                refresh_token=tokens.refresh_token, scope="openid", now_ns=time.time_ns(),
            )
            assert fresh.refresh_token == tokens.refresh_token
            assert fresh.scope == "openid"
            assert server.access_token_active(fresh.access_token)


async def test_refresh_for_a_scope_never_granted_is_refused(oidc_server: OidcServer) -> None:
    login, tokens = await logged_in(oidc_server)
    assert tokens.refresh_token
    with pytest.raises(ProviderRefusedError) as caught:
        await oauth.refresh_tokens(
            oidc_server.token_endpoint, client_id=login.client_id, client_secret=login.client_secret,
            refresh_token=tokens.refresh_token, scope="openid profile", now_ns=time.time_ns(),
        )
    assert caught.value.error_code == "invalid_scope"


async def test_refresh_after_the_user_revoked_is_refused_for_good(oidc_server: OidcServer) -> None:
    oidc_server.set_user("revoker", email="r@example.com")
    login, tokens = await logged_in(oidc_server, sub="revoker")
    assert tokens.refresh_token
    oidc_server.revoke_user_tokens("revoker")
    assert not oidc_server.access_token_active(tokens.access_token)
    with pytest.raises(ProviderRefusedError) as caught:
        await oauth.refresh_tokens(
            oidc_server.token_endpoint, client_id=login.client_id, client_secret=login.client_secret,
            refresh_token=tokens.refresh_token, scope="", now_ns=time.time_ns(),
        )
    assert caught.value.error_code == "invalid_grant"
    assert caught.value.permanent
    assert isinstance(caught.value, LedgerError)


# -- an unavailable or odd provider ---------------------------------------------------------------------


async def test_an_unreachable_token_endpoint() -> None:
    with refused_port() as port, pytest.raises(ProviderUnavailableError) as caught:
        await oauth.refresh_tokens(
            f"http://127.0.0.1:{port}/token", client_id="c", client_secret="s", refresh_token="r", scope="",
            now_ns=time.time_ns(), timeout=2,
        )
    assert not caught.value.permanent
    assert "connection failed" in caught.value.reason


async def test_a_stalled_token_endpoint_times_out(oidc_server: OidcServer) -> None:
    login = start_login(oidc_server)
    oidc_server.stall_next_token_request(5)
    started = time.monotonic()
    with pytest.raises(ProviderUnavailableError) as caught:
        await exchange(oidc_server, login, timeout=0.3)
    assert time.monotonic() - started < 2
    assert "timed out" in caught.value.reason


@pytest.mark.parametrize(
    ("status", "body", "headers", "reason"),
    [
        (503, b"<html>down</html>", {"Content-Type": "text/html"}, "HTTP 503"),
        (429, {"error": "slow down"}, None, "HTTP 429"),
        (200, b"<html>a captive portal</html>", {"Content-Type": "text/html"}, "not JSON"),
        (200, b"[1, 2]", {"Content-Type": "application/json"}, "not a JSON object"),
        (400, {"error": "temporarily_unavailable"}, None, "temporarily_unavailable"),
        (200, {"token_type": "Bearer"}, None, "no access_token"),
        # A refresh token no token request could send back (too long, not ASCII): kept, it would break the
        # connection at its first refresh.
        (200, {"access_token": "a", "refresh_token": "r" * 4097}, None, "refresh_token"),
        (200, {"access_token": "a", "refresh_token": "r\u00e9fresh"}, None, "refresh_token"),
        (302, b"", {"Location": "https://elsewhere.example/"}, "redirect"),
        (200, b"\x1f\x8b compressed", {"Content-Type": "application/json", "Content-Encoding": "gzip"}, "compressed"),
    ],
)
async def test_answers_that_are_no_token_are_transient(
    oidc_server: OidcServer, status: int, body: bytes | dict[str, Any], headers: dict[str, str] | None, reason: str
) -> None:
    login = start_login(oidc_server)
    oidc_server.fail_next_token_request(status, body, headers)
    with pytest.raises(ProviderUnavailableError) as caught:
        await exchange(oidc_server, login)
    assert reason in caught.value.reason
    assert not caught.value.permanent


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (200, {"error": "bad_verification_code"}, "bad_verification_code"),  # GitHub: HTTP 200
        (200, {"ok": False, "error": "invalid_code"}, "invalid_code"),  # Slack: HTTP 200
        (400, {"error": "Invalid-Grant ☃"}, "invalid_grant__"),
        (400, {"error": "x" * 100}, "x" * 64),
        (400, {"error": 42}, "unknown_error"),
        (401, {"message": "no"}, "unknown_error"),
    ],
)
async def test_oauth_errors_are_refusals(
    oidc_server: OidcServer, status: int, body: dict[str, Any], code: str
) -> None:
    login = start_login(oidc_server)
    oidc_server.fail_next_token_request(status, body)
    with pytest.raises(ProviderRefusedError) as caught:
        await exchange(oidc_server, login)
    assert caught.value.error_code == code
    assert caught.value.status == status


@pytest.mark.parametrize("chunked", [False, True])
async def test_an_oversized_answer_is_not_read_whole(oidc_server: OidcServer, chunked: bool) -> None:
    login = start_login(oidc_server)
    body = b'{"access_token": "' + b"a" * (oauth.MAX_ANSWER_BYTES + 10) + b'"}'
    oidc_server.fail_next_token_request(200, body, {"Content-Type": "application/json"}, chunked=chunked)
    with pytest.raises(ProviderUnavailableError) as caught:
        await exchange(oidc_server, login)
    assert "larger than" in caught.value.reason


async def test_an_expires_in_authlib_cannot_read_is_dropped(oidc_server: OidcServer) -> None:
    login = start_login(oidc_server)
    oidc_server.fail_next_token_request(200, {"access_token": "at", "token_type": "bearer", "expires_in": "soon"})
    tokens = await exchange(oidc_server, login)
    assert (tokens.access_token, tokens.token_type) == ("at", "bearer")
    assert (tokens.expires_at, tokens.refresh_token) == (None, None)


# -- ID token verification ------------------------------------------------------------------------------


@dataclass
class Verifier:
    server: OidcServer
    client_id: str
    nonce: str

    def claims(self, **overrides: Any) -> dict[str, Any]:
        return self.server.id_token_claims(client_id=self.client_id, **{"nonce": self.nonce, **overrides})

    async def verify(self, token: str, **options: Any) -> oauth.Identity:
        return await oauth.verify_id_token(
            token, metadata=self.server.metadata, client_id=self.client_id, nonce=options.pop("nonce", self.nonce),
            **options,
        )

    async def refused(self, token: str, **options: Any) -> str:
        with pytest.raises(IdTokenError) as caught:
            await self.verify(token, **options)
        return caught.value.reason


@pytest.fixture
def verifier(oidc_server: OidcServer) -> Verifier:
    return Verifier(oidc_server, "client-under-test", "nonce-of-this-login-0123456789")


async def test_a_well_made_token_verifies(verifier: Verifier) -> None:
    identity = await verifier.verify(verifier.server.sign_id_token(verifier.claims(sub="lin")))
    assert identity == oauth.Identity(
        issuer=verifier.server.issuer, subject="lin", email="lin@example.com", email_verified=True
    )


async def test_a_token_from_the_server_has_expired_later(oidc_server: OidcServer) -> None:
    login, tokens = await logged_in(oidc_server)
    assert tokens.id_token and login.request.nonce
    metadata, nonce = oidc_server.metadata, login.request.nonce
    await oauth.verify_id_token(tokens.id_token, metadata=metadata, client_id=login.client_id, nonce=nonce)
    with pytest.raises(IdTokenError) as caught:
        await oauth.verify_id_token(
            tokens.id_token, metadata=metadata, client_id=login.client_id, nonce=nonce, now_s=int(time.time()) + 3600
        )
    assert caught.value.reason == "expired"


async def test_a_token_of_another_login_is_refused(oidc_server: OidcServer) -> None:
    """A replayed ID token: the nonce is the one of an earlier login, not of the one being finished."""
    first, tokens = await logged_in(oidc_server)
    second = start_login(oidc_server)
    assert tokens.id_token and second.request.nonce and first.request.nonce != second.request.nonce
    with pytest.raises(IdTokenError) as caught:
        await oauth.verify_id_token(
            tokens.id_token, metadata=oidc_server.metadata, client_id=first.client_id, nonce=second.request.nonce
        )
    assert caught.value.reason == "nonce"


async def test_an_empty_expected_nonce_is_refused(verifier: Verifier) -> None:
    before = verifier.server.request_count("/jwks")
    for token_nonce in ("", "anything"):
        token = verifier.server.sign_id_token(verifier.claims(nonce=token_nonce or None))
        assert await verifier.refused(token, nonce="") == "nonce"
    assert verifier.server.request_count("/jwks") == before  # refused before any work


async def test_a_foreign_key_is_refused(verifier: Verifier) -> None:
    server = verifier.server
    claims = verifier.claims()
    before = server.request_count("/jwks")
    # claiming the server's own kid
    forged = server.sign_id_token(claims, key=server.foreign_key(), kid=server.signing_key.kid)
    assert await verifier.refused(forged) == "signature"
    # under its own kid: unknown, so the JWKS is fetched again once (a rotation?), and still refused
    assert await verifier.refused(server.sign_id_token(claims, key=server.foreign_key())) == "signature"
    assert server.request_count("/jwks") == before + 2
    assert await verifier.refused(server.sign_id_token(claims, key=server.foreign_key())) == "signature"
    assert server.request_count("/jwks") == before + 2  # the refetch is throttled


def flip(token: str, part: int) -> str:
    parts = token.split(".")
    middle = len(parts[part]) // 2
    char = parts[part][middle]
    parts[part] = parts[part][:middle] + ("A" if char != "A" else "B") + parts[part][middle + 1 :]
    return ".".join(parts)


async def test_a_flipped_byte_is_refused(verifier: Verifier) -> None:
    token = verifier.server.sign_id_token(verifier.claims())
    await verifier.verify(token)
    assert await verifier.refused(flip(token, 2)) == "signature"  # in the signature
    assert await verifier.refused(flip(token, 1)) in ("signature", "malformed")  # in the claims


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"iss": "https://evil.example"}, "issuer"),
        ({"iss": None}, "issuer"),
        ({"aud": ["someone-else"]}, "audience"),
        ({"aud": "someone-else"}, "audience"),
        ({"aud": None}, "audience"),
        ({"aud": ["client-under-test", "someone-else"]}, "audience"),  # several audiences and no azp
        ({"aud": ["client-under-test", "someone-else"], "azp": "someone-else"}, "audience"),
        ({"azp": "someone-else"}, "audience"),
        ({"exp": -120}, "expired"),  # ints for exp, iat and nbf: seconds from now, taken when the test runs
        ({"exp": None}, "malformed"),
        ({"exp": "tomorrow"}, "malformed"),
        ({"iat": None}, "malformed"),
        ({"iat": +600}, "not_yet_valid"),
        ({"nbf": +600}, "not_yet_valid"),
        ({"nonce": "nonce-of-another-login"}, "nonce"),
        ({"nonce": None}, "nonce"),
        ({"sub": None}, "malformed"),
        ({"sub": ""}, "malformed"),
    ],
)
async def test_claims_are_checked(verifier: Verifier, overrides: dict[str, Any], reason: str) -> None:
    assert await verifier.refused(verifier.server.sign_id_token(verifier.claims(**from_now(overrides)))) == reason


def from_now(overrides: dict[str, Any]) -> dict[str, Any]:
    """Integer exp, iat and nbf are seconds from now: parameters are made at collection, which may be minutes
    before the test runs in a long parallel session."""
    now = int(time.time())
    return {k: now + v if k in ("exp", "iat", "nbf") and isinstance(v, int) else v for k, v in overrides.items()}


@pytest.mark.parametrize(
    "overrides",
    [
        {"aud": "client-under-test"},
        {"aud": ["client-under-test", "someone-else"], "azp": "client-under-test"},
        {"exp": -30},  # within the leeway (times are seconds from now, taken when the test runs)
        {"iat": +30},
        {"email_verified": "true"},
    ],
)
async def test_claims_within_the_rules_verify(verifier: Verifier, overrides: dict[str, Any]) -> None:
    identity = await verifier.verify(verifier.server.sign_id_token(verifier.claims(**from_now(overrides))))
    assert identity.email_verified


async def test_the_leeway_is_the_callers(verifier: Verifier) -> None:
    token = verifier.server.sign_id_token(verifier.claims(exp=int(time.time()) - 30))
    assert await verifier.refused(token, leeway_s=0) == "expired"


async def test_unsigned_and_symmetric_tokens_are_refused(verifier: Verifier) -> None:
    claims = verifier.claims()
    assert await verifier.refused(unsigned_token(claims)) == "signature"
    assert await verifier.refused(unsigned_token(claims, alg="None")) == "signature"
    assert await verifier.refused(verifier.server.sign_id_token(claims, key=hmac_key())) == "signature"
    assert await verifier.refused(verifier.server.sign_id_token(claims, key=hmac_key(), alg="HS512")) == "signature"


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "x" * (oauth.MAX_ID_TOKEN_CHARS + 1), "é.é.é"])
async def test_garbage_is_malformed(verifier: Verifier, token: str) -> None:
    assert await verifier.refused(token) == "malformed"


async def test_the_jwks_is_cached_and_refetched_after_a_key_rotation() -> None:
    with OidcServer() as server:
        verifier = Verifier(server, "client-under-test", "nonce-of-this-login-0123456789")
        await verifier.verify(server.sign_id_token(verifier.claims()))
        await verifier.verify(server.sign_id_token(verifier.claims()))
        assert server.request_count("/jwks") == 1

        server.rotate_signing_key(keep_old=False)
        identity = await verifier.verify(server.sign_id_token(verifier.claims(sub="after-rotation")))
        assert identity.subject == "after-rotation"
        assert server.request_count("/jwks") == 2


async def test_es256_with_a_published_ec_key(verifier: Verifier) -> None:
    key = verifier.server.publish_ec_key()
    identity = await verifier.verify(verifier.server.sign_id_token(verifier.claims(sub="ec-user"), key=key))
    assert identity.subject == "ec-user"


async def test_an_unreachable_jwks() -> None:
    with refused_port() as port:
        metadata = oauth.ProviderMetadata(
            issuer="https://idp.example", authorization_endpoint="https://idp.example/a",
            token_endpoint="https://idp.example/t", jwks_uri=f"http://127.0.0.1:{port}/jwks",
        )
        token = unsigned_token({"iss": "https://idp.example"}, alg="RS256") + "c2lnbmF0dXJl"  # the JWKS is asked first
        with pytest.raises(ProviderUnavailableError):
            await oauth.verify_id_token(token, metadata=metadata, client_id="c", nonce="n", timeout=2)


# -- validate_endpoint_url ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://idp.example.com/oauth/token",
        "https://idp.example.com:8443/authorize?tenant=x",
        "HTTPS://IDP.EXAMPLE.COM/",
        "http://localhost:8080/callback",
        "http://127.0.0.1/cb",
        "http://[::1]:5000/cb",
    ],
)
def test_endpoint_urls_accepted(url: str) -> None:
    assert oauth.validate_endpoint_url(url, "token_endpoint") == url


@pytest.mark.parametrize(
    "url",
    [
        "",
        "http://idp.example.com/token",
        "http://localhost.evil.example/cb",
        "http://127.0.0.2/cb",
        "ftp://idp.example.com/token",
        "javascript:alert(1)",
        "https://",
        "https:///path-only",
        "https://user:hunter2-pw@idp.example.com/token",
        "https://user@idp.example.com/token",
        "https://idp.example.com/token#fragment",
        "https://idp.example.com/a b",
        "https://idp.example.com/\n",
        "https://bücher.example/",
        "https://[::1/token",
        "https://idp.example.com:99999/",
        "https://idp.example.com/" + "a" * 2048,
    ],
)
def test_endpoint_urls_refused(url: str) -> None:
    with pytest.raises(ValidationError) as caught:
        oauth.validate_endpoint_url(url, "token_endpoint")
    assert caught.value.field == "token_endpoint"
    assert "hunter2" not in str(caught.value)


def test_endpoint_url_length_limit() -> None:
    base = "https://idp.example.com/"
    assert oauth.validate_endpoint_url(base + "a" * (2048 - len(base)), "f")
    with pytest.raises(ValidationError):
        oauth.validate_endpoint_url(base + "a" * (2049 - len(base)), "f")


# -- secrets never shown --------------------------------------------------------------------------------


def shown(value: object) -> str:
    text = f"{value!s} {value!r}"
    if isinstance(value, BaseException):
        text += "".join(traceback.format_exception(value))
    return text


async def test_reprs_never_show_tokens_or_request_secrets(oidc_server: OidcServer) -> None:
    login, tokens = await logged_in(oidc_server)
    assert tokens.refresh_token and tokens.id_token and login.request.nonce
    secrets_ = [tokens.access_token, tokens.refresh_token, tokens.id_token, login.request.state,
                login.request.nonce, login.request.code_verifier, s256(login.request.code_verifier)]
    text = shown(tokens) + shown(login.request) + shown([tokens, login.request])
    assert not [s for s in secrets_ if s in text]
    assert "Bearer" in shown(tokens) and "oauth2/authorize" in shown(login.request)

    from rich.pretty import pretty_repr

    rich_text = pretty_repr(tokens) + pretty_repr(login.request)
    assert not [s for s in secrets_ if s in rich_text]


async def test_errors_never_show_secrets_codes_or_the_error_description(oidc_server: OidcServer) -> None:
    login = start_login(oidc_server)
    login.client_secret = "PLANTED-client-secret-41"
    planted = [login.client_secret, login.code, login.request.code_verifier, "PLANTED-description"]
    description = f"PLANTED-description: code {login.code} secret {login.client_secret}"
    problems: list[str] = []

    async def check(status: int, body: bytes | dict[str, Any], headers: dict[str, str] | None = None) -> None:
        oidc_server.fail_next_token_request(status, body, headers)
        with pytest.raises(oauth.OAuthError) as caught:
            await exchange(oidc_server, login)
        problems.extend(s for s in planted if s in shown(caught.value))

    await check(400, {"error": "invalid_grant", "error_description": description})
    await check(200, {"error": "temporarily_unavailable", "error_description": description})
    await check(500, description.encode(), {"Content-Type": "text/plain"})
    await check(200, description.encode(), {"Content-Type": "application/json"})  # not JSON: a decode error
    with pytest.raises(ProviderRefusedError) as caught:  # the real server: a wrong secret
        await exchange(oidc_server, login)
    problems.extend(s for s in planted if s in shown(caught.value))
    assert problems == []


async def test_id_token_errors_never_show_the_token(verifier: Verifier) -> None:
    token = verifier.server.sign_id_token(verifier.claims(iss="https://evil.example", email="PLANTED@example.com"))
    with pytest.raises(IdTokenError) as caught:
        await verifier.verify(token)
    text = shown(caught.value)
    assert token not in text and token.split(".")[1] not in text and "PLANTED" not in text
    assert verifier.nonce not in text
