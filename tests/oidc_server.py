"""A real OpenID Connect / OAuth 2.0 authorization server on a free loopback port, for tests.

It is Authlib's Flask authorization server (the authorization code grant with its OpenID Connect and PKCE
extensions, and the refresh token grant) over an in-memory store, served by Werkzeug on a thread:

- the authorization endpoint is non-interactive: POST the form `sub=<user>` to an authorization URL
  (`authorize`) and the answer is the redirect, with a code and the state (`deny` answers access_denied);
  for a browser, a GET of an authorization URL answers a login page whose form (a labelled "User" field,
  "Sign in" and "Deny") posts that same form to the same URL;
- PKCE is enforced: an authorization request without an S256 `code_challenge` is refused, and the token
  endpoint refuses a code without its verifier (invalid_request) or with another one (invalid_grant);
- a nonce is required for the openid scope, and a nonce the client used before is refused (replay);
- clients authenticate as registered: client_secret_basic (default) or client_secret_post, not both;
- ID tokens are RS256, signed with the key published at /jwks (kid set); `rotate_signing_key`,
  `publish_ec_key`, `foreign_key` and `sign_id_token` make tokens for the verification tests;
- refresh tokens rotate by default (`rotate_refresh_tokens = False`: the answer carries none);
- `fail_next_token_request` / `stall_next_token_request` script the token endpoint's next answer.

    with OidcServer() as server:
        client_id, client_secret = server.register_client("http://localhost:8000/cb")
        server.set_user("ada", email="ada@example.com", email_verified=True)
        location = server.authorize(request.url, "ada")

Why not the `oidc-provider-mock` package: its last release installable here (0.3.4) signs ID tokens through
Authlib's `get_jwt_config`, which warns (DeprecationWarning) on every token and is gone from Authlib 1.8,
and it cannot require PKCE; the test run turns warnings into errors.

The issuer is `http://localhost:PORT` (the server listens on 127.0.0.1). Starting a server empties
`ledger.oauth`'s discovery and JWKS caches: a new server may reuse the port of an old one, with other keys.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import flask
import httpx
import pytest
import werkzeug.serving
from authlib.integrations.flask_oauth2 import AuthorizationServer  # type: ignore[import-untyped]
from authlib.oauth2 import OAuth2Error  # type: ignore[import-untyped]
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants  # type: ignore[import-untyped]
from authlib.oauth2.rfc6749.errors import InvalidRequestError  # type: ignore[import-untyped]
from authlib.oauth2.rfc6750 import BearerTokenGenerator  # type: ignore[import-untyped]
from authlib.oauth2.rfc7636 import CodeChallenge  # type: ignore[import-untyped]
from authlib.oidc.core import AuthorizationCodeMixin  # type: ignore[import-untyped]
from authlib.oidc.core.grants import OpenIDCode  # type: ignore[import-untyped]
from joserfc import jwt
from joserfc.jwk import ECKey, Key, OctKey, RSAKey

from ledger import oauth

SCOPES = ("openid", "email", "profile")
_EMAIL_CLAIMS = ("email", "email_verified")
_PROFILE_CLAIMS = ("name", "given_name", "family_name", "preferred_username", "picture", "locale")


# -- the store ------------------------------------------------------------------------------------------


@dataclass
class _User:
    sub: str
    claims: dict[str, Any]


class _Client(ClientMixin):  # type: ignore[misc]
    def __init__(self, client_id: str, client_secret: str, redirect_uris: list[str], auth_method: str) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uris = redirect_uris
        self.auth_method = auth_method

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str | None) -> str:
        return " ".join(s for s in (scope or "").split() if s in SCOPES)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(client_secret.encode(), self.client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint != "token" or method == self.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in ("authorization_code", "refresh_token")


class _Code(AuthorizationCodeMixin):  # type: ignore[misc]
    def __init__(self, **fields: Any) -> None:
        self.code: str = fields["code"]
        self.client_id: str = fields["client_id"]
        self.redirect_uri: str = fields["redirect_uri"]
        self.scope: str = fields["scope"]
        self.sub: str = fields["sub"]
        self.nonce: str | None = fields["nonce"]
        self.code_challenge: str | None = fields["code_challenge"]
        self.code_challenge_method: str | None = fields["code_challenge_method"]
        self.auth_time = int(time.time())

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


@dataclass
class _AccessToken:
    client_id: str
    sub: str
    scope: str
    expires_at: float
    revoked: bool = False


class _RefreshToken(TokenMixin):  # type: ignore[misc]
    def __init__(self, token: str, client_id: str, sub: str, scope: str) -> None:
        self.token = token
        self.client_id = client_id
        self.sub = sub
        self.scope = scope
        self.revoked = False

    def check_client(self, client: _Client) -> bool:
        return client.client_id == self.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return 0

    def is_expired(self) -> bool:
        return False

    def is_revoked(self) -> bool:
        return self.revoked


@dataclass(frozen=True)
class _Fault:
    status: int
    body: bytes
    headers: dict[str, str]
    stall_s: float = 0.0
    chunked: bool = False


@dataclass
class _State:
    issuer: str = ""
    signing_key: RSAKey = field(default_factory=lambda: _rsa_key("key-1"))
    published: list[Key] = field(default_factory=list)
    access_token_ttl_s: int = 3600
    id_token_ttl_s: int = 300
    rotate_refresh_tokens: bool = True
    lock: threading.RLock = field(default_factory=threading.RLock)
    stopping: threading.Event = field(default_factory=threading.Event)
    clients: dict[str, _Client] = field(default_factory=dict)
    users: dict[str, _User] = field(default_factory=dict)
    codes: dict[str, _Code] = field(default_factory=dict)
    access: dict[str, _AccessToken] = field(default_factory=dict)
    refresh: dict[str, _RefreshToken] = field(default_factory=dict)
    nonces: set[tuple[str, str]] = field(default_factory=set)
    faults: list[_Fault] = field(default_factory=list)
    hits: Counter[str] = field(default_factory=Counter)
    token_requests: list[dict[str, str]] = field(default_factory=list)

    def user(self, sub: str) -> _User | None:
        with self.lock:
            return self.users.get(sub)


def _rsa_key(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"}, private=True)


def _claims_for_scope(user: _User, scope: str) -> dict[str, Any]:
    scopes = scope.split()
    allowed = (_EMAIL_CLAIMS if "email" in scopes else ()) + (_PROFILE_CLAIMS if "profile" in scopes else ())
    return {**{k: v for k, v in user.claims.items() if k in allowed}, "sub": user.sub}


# -- Authlib's grants and extensions, bound to the store ------------------------------------------------


class _Server(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, state: _State) -> None:
        super().__init__()
        self.state = state


class _CodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def save_authorization_code(self, code: str, request: Any) -> None:
        state: _State = self.server.state
        data = request.payload.data
        client_id = request.client.client_id
        with state.lock:
            state.codes[code] = _Code(
                code=code, client_id=client_id, redirect_uri=request.payload.redirect_uri or "",
                scope=request.scope or "", sub=request.user.sub, nonce=data.get("nonce"),
                code_challenge=data.get("code_challenge"), code_challenge_method=data.get("code_challenge_method"),
            )
            if data.get("nonce"):
                state.nonces.add((client_id, data["nonce"]))

    def query_authorization_code(self, code: str, client: _Client) -> _Code | None:
        state: _State = self.server.state
        with state.lock:
            item = state.codes.get(code)
        return item if item is not None and item.client_id == client.client_id else None

    def delete_authorization_code(self, authorization_code: _Code) -> None:
        state: _State = self.server.state
        with state.lock:
            state.codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code: _Code) -> _User | None:
        state: _State = self.server.state
        return state.user(authorization_code.sub)


class _RefreshGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    @property
    def INCLUDE_NEW_REFRESH_TOKEN(self) -> bool:  # Authlib reads this class constant; here, per server
        state: _State = self.server.state
        return state.rotate_refresh_tokens

    def authenticate_refresh_token(self, refresh_token: str) -> _RefreshToken | None:
        state: _State = self.server.state
        with state.lock:
            item = state.refresh.get(refresh_token)
        return item if item is not None and not item.revoked else None

    def authenticate_user(self, refresh_token: _RefreshToken) -> _User | None:
        state: _State = self.server.state
        return state.user(refresh_token.sub)

    def revoke_old_credential(self, refresh_token: _RefreshToken) -> None:
        state: _State = self.server.state
        if state.rotate_refresh_tokens:
            with state.lock:
                refresh_token.revoked = True


class _StrictPkce(CodeChallenge):  # type: ignore[misc]
    """PKCE required of every client, S256 only. Authlib's CodeChallenge(required=True) requires it of public
    clients only: a confidential client that sent no challenge would be let through."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("Missing 'code_challenge': PKCE is required.", redirect_uri=redirect_uri)
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("'code_challenge_method' must be S256.", redirect_uri=redirect_uri)
        super().validate_code_challenge(grant, redirect_uri)


class _OpenIDCode(OpenIDCode):  # type: ignore[misc]
    def __init__(self, state: _State) -> None:
        super().__init__(require_nonce=True)
        self._state = state

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        with self._state.lock:
            return (request.payload.client_id, nonce) in self._state.nonces

    def resolve_client_private_key(self, client: _Client) -> RSAKey:
        return self._state.signing_key

    def get_client_algorithm(self, client: _Client) -> str:
        return "RS256"

    def get_client_claims(self, client: _Client) -> dict[str, Any]:
        now = int(time.time())
        exp = now + self._state.id_token_ttl_s
        return {"iss": self._state.issuer, "aud": [client.client_id], "iat": now, "exp": exp}

    def get_encode_header(self, client: _Client) -> dict[str, Any]:
        return {"alg": "RS256", "kid": self._state.signing_key.kid}

    def generate_user_info(self, user: _User, scope: str) -> dict[str, Any]:
        return _claims_for_scope(user, scope)


# -- the Flask app --------------------------------------------------------------------------------------

# What a browser sees at the authorization endpoint: the form posts `sub` (or `action=deny`) to the same URL.
_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>Test identity provider</title></head>
<body><h1>Test identity provider</h1>
<form method="post">
<label for="sub">User</label> <input id="sub" name="sub" required autofocus autocomplete="off">
<button type="submit">Sign in</button>
<button type="submit" name="action" value="deny" formnovalidate>Deny</button>
</form></body></html>"""


def _make_app(state: _State) -> flask.Flask:
    app = flask.Flask(__name__)
    server = _Server(state)

    def query_client(client_id: str) -> _Client | None:
        with state.lock:
            return state.clients.get(client_id)

    def save_token(token: dict[str, Any], request: Any) -> None:
        with state.lock:
            client_id, sub, scope = request.client.client_id, request.user.sub, token.get("scope", "")
            state.access[token["access_token"]] = _AccessToken(
                client_id=client_id, sub=sub, scope=scope, expires_at=time.time() + token.get("expires_in", 0)
            )
            if "refresh_token" in token:
                state.refresh[token["refresh_token"]] = _RefreshToken(token["refresh_token"], client_id, sub, scope)

    app.config["OAUTH2_SCOPES_SUPPORTED"] = list(SCOPES)
    server.init_app(app, query_client=query_client, save_token=save_token)
    server.register_token_generator(
        "default",
        BearerTokenGenerator(
            access_token_generator=lambda **_: secrets.token_urlsafe(32),
            refresh_token_generator=lambda **_: secrets.token_urlsafe(48),
            expires_generator=lambda client, grant_type: state.access_token_ttl_s,
        ),
    )
    server.register_grant(_CodeGrant, [_StrictPkce(required=True), _OpenIDCode(state)])
    server.register_grant(_RefreshGrant)

    @app.before_request
    def count() -> None:
        with state.lock:
            state.hits[flask.request.path] += 1

    @app.get("/.well-known/openid-configuration")
    def discovery() -> flask.typing.ResponseReturnValue:
        base = state.issuer
        return flask.jsonify({
            "issuer": base,
            "authorization_endpoint": f"{base}/oauth2/authorize",
            "token_endpoint": f"{base}/oauth2/token",
            "jwks_uri": f"{base}/jwks",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": list(SCOPES),
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
        })

    @app.get("/jwks")
    def jwks() -> flask.typing.ResponseReturnValue:
        with state.lock:
            keys = [key.as_dict(private=False) for key in state.published]
        return flask.jsonify({"keys": keys})

    @app.route("/oauth2/authorize", methods=["GET", "POST"])
    def authorize() -> flask.typing.ResponseReturnValue:
        user = None
        if flask.request.method == "POST" and flask.request.form.get("action") != "deny":
            sub = flask.request.form.get("sub", "")
            if not sub:
                return flask.jsonify({"error": "invalid_request", "error_description": "no sub"}), 400
            with state.lock:
                user = state.users.setdefault(sub, _User(sub, {}))
        try:
            grant = server.get_consent_grant(end_user=user)
        except OAuth2Error as error:
            return server.handle_error_response(None, error)  # type: ignore[no-any-return]
        if flask.request.method == "GET":
            return _LOGIN_PAGE
        return server.create_authorization_response(grant_user=user, grant=grant)  # type: ignore[no-any-return]

    @app.post("/oauth2/token")
    def token() -> flask.typing.ResponseReturnValue:
        with state.lock:
            state.token_requests.append(dict(flask.request.form))
            fault = state.faults.pop(0) if state.faults else None
        if fault is not None:
            if fault.stall_s and state.stopping.wait(fault.stall_s):
                return "", 503
            chunks = [fault.body[i : i + 65536] for i in range(0, len(fault.body), 65536)]
            body = iter(chunks) if fault.chunked else fault.body  # an iterator: no Content-Length, chunked
            return flask.Response(body, status=fault.status, headers=fault.headers)
        return server.create_token_response()  # type: ignore[no-any-return]

    return app


class _QuietHandler(werkzeug.serving.WSGIRequestHandler):
    def log(self, type: str, message: str, *args: Any) -> None:
        pass


# -- the test API ---------------------------------------------------------------------------------------


class OidcServer:
    """The server; `start()`/`stop()` or a `with` block. See the module's docstring."""

    def __init__(self, *, access_token_ttl_s: int = 3600, id_token_ttl_s: int = 300) -> None:
        self._state = _State(access_token_ttl_s=access_token_ttl_s, id_token_ttl_s=id_token_ttl_s)
        self._state.published.append(self._state.signing_key)
        self._httpd = werkzeug.serving.make_server(
            "127.0.0.1", 0, _make_app(self._state), threaded=True, request_handler=_QuietHandler
        )
        self.port = int(self._httpd.server_port)
        self.issuer = f"http://localhost:{self.port}"
        self._state.issuer = self.issuer
        self._thread: threading.Thread | None = None
        self._foreign_key: RSAKey | None = None
        self._http = httpx.Client(follow_redirects=False, timeout=10)

    # lifecycle

    def start(self) -> OidcServer:
        if self._thread is None:
            oauth.clear_caches()
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="oidc-server", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._state.stopping.set()  # wakes a stalled token request first
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()
        self._http.close()

    def __enter__(self) -> OidcServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # endpoints and settings

    @property
    def authorization_endpoint(self) -> str:
        return f"{self.issuer}/oauth2/authorize"

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/oauth2/token"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/jwks"

    @property
    def metadata(self) -> oauth.ProviderMetadata:
        """What `oauth.discover(self.issuer)` finds, without asking."""
        return oauth.ProviderMetadata(
            issuer=self.issuer, authorization_endpoint=self.authorization_endpoint,
            token_endpoint=self.token_endpoint, jwks_uri=self.jwks_uri,
        )

    @property
    def access_token_ttl_s(self) -> int:
        return self._state.access_token_ttl_s

    @access_token_ttl_s.setter
    def access_token_ttl_s(self, seconds: int) -> None:
        self._state.access_token_ttl_s = seconds

    @property
    def rotate_refresh_tokens(self) -> bool:
        return self._state.rotate_refresh_tokens

    @rotate_refresh_tokens.setter
    def rotate_refresh_tokens(self, rotate: bool) -> None:
        self._state.rotate_refresh_tokens = rotate

    def request_count(self, path: str) -> int:
        """How many requests `path` (such as "/jwks") has had."""
        with self._state.lock:
            return self._state.hits[path]

    @property
    def token_requests(self) -> list[dict[str, str]]:
        """The form of every token request, in order (client_secret_post puts the secret in it)."""
        with self._state.lock:
            return list(self._state.token_requests)

    # clients, users, consent

    def register_client(self, redirect_uri: str, *, auth_method: str = "client_secret_basic") -> tuple[str, str]:
        """A new confidential client: (client_id, client_secret)."""
        client = _Client(f"client-{secrets.token_hex(8)}", secrets.token_urlsafe(24), [redirect_uri], auth_method)
        with self._state.lock:
            self._state.clients[client.client_id] = client
        return client.client_id, client.client_secret

    def set_user(self, sub: str, **claims: Any) -> None:
        """Create or replace a user: claims such as email="ada@example.com", email_verified=True, name=..."""
        with self._state.lock:
            self._state.users[sub] = _User(sub, dict(claims))

    def authorize(self, authorization_url: str, sub: str) -> str:
        """`sub` consents at `authorization_url`: the redirect's Location (with code and state, or an error)."""
        response = self._http.post(authorization_url, data={"sub": sub})
        if response.status_code != 302:
            raise AssertionError(f"authorization answered HTTP {response.status_code}: {response.text[:300]}")
        return response.headers["location"]

    def deny(self, authorization_url: str) -> str:
        response = self._http.post(authorization_url, data={"action": "deny"})
        if response.status_code != 302:
            raise AssertionError(f"authorization answered HTTP {response.status_code}: {response.text[:300]}")
        return response.headers["location"]

    def authorize_code(self, authorization_url: str, sub: str) -> str:
        """The code of `authorize`'s redirect."""
        query = parse_qs(urlsplit(self.authorize(authorization_url, sub)).query)
        if "code" not in query:
            raise AssertionError(f"no code in the redirect: {sorted(query)}")
        return query["code"][0]

    # tokens

    def revoke_user_tokens(self, sub: str) -> None:
        with self._state.lock:
            for token in self._state.access.values():
                if token.sub == sub:
                    token.revoked = True
            for refresh in self._state.refresh.values():
                if refresh.sub == sub:
                    refresh.revoked = True

    def access_token_active(self, access_token: str) -> bool:
        """Whether the server would honour `access_token` now: issued by it, not revoked, not expired."""
        with self._state.lock:
            token = self._state.access.get(access_token)
            return token is not None and not token.revoked and token.expires_at > time.time()

    def fail_next_token_request(
        self, status: int = 503, body: bytes | dict[str, Any] = b"<html>unavailable</html>",
        headers: dict[str, str] | None = None, *, chunked: bool = False,
    ) -> None:
        """The token endpoint's next answer is this one (then it answers normally again); a dict `body` is
        sent as JSON; `chunked`: without Content-Length."""
        if isinstance(body, dict):
            body, headers = json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
        with self._state.lock:
            self._state.faults.append(_Fault(status, body, headers or {"Content-Type": "text/html"}, chunked=chunked))

    def stall_next_token_request(self, seconds: float) -> None:
        """The token endpoint's next answer comes after `seconds` (or when the server stops)."""
        with self._state.lock:
            self._state.faults.append(_Fault(200, b"{}", {"Content-Type": "application/json"}, stall_s=seconds))

    # keys and ID tokens

    @property
    def signing_key(self) -> RSAKey:
        return self._state.signing_key

    def foreign_key(self) -> RSAKey:
        """An RSA key the server never published (kid "foreign-key")."""
        if self._foreign_key is None:
            self._foreign_key = _rsa_key("foreign-key")
        return self._foreign_key

    def rotate_signing_key(self, *, keep_old: bool = True) -> RSAKey:
        """Sign from now on with a new key, published beside the old one (or instead of it)."""
        key = _rsa_key(f"key-{secrets.token_hex(4)}")
        with self._state.lock:
            if not keep_old:
                self._state.published.clear()
            self._state.published.append(key)
            self._state.signing_key = key
        return key

    def publish_ec_key(self) -> ECKey:
        """A new P-256 key, published (the server itself keeps signing with RSA)."""
        key = ECKey.generate_key("P-256", parameters={"kid": f"ec-{secrets.token_hex(4)}", "use": "sig"}, private=True)
        with self._state.lock:
            self._state.published.append(key)
        return key

    def id_token_claims(self, *, client_id: str, nonce: str, sub: str = "ada", **overrides: Any) -> dict[str, Any]:
        """The claims of a valid ID token for `client_id`, then `overrides` (a None value removes the claim)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer, "aud": [client_id], "sub": sub, "iat": now, "exp": now + 300, "auth_time": now,
            "nonce": nonce, "email": f"{sub}@example.com", "email_verified": True,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def sign_id_token(
        self, claims: dict[str, Any], *, key: Key | None = None, alg: str | None = None, kid: str | None = None
    ) -> str:
        """A compact JWS of `claims`, signed with `key` (the server's signing key by default) and `alg` (RS256
        for RSA, ES256 for EC, HS256 for an oct key); `kid` defaults to the key's."""
        key = key or self._state.signing_key
        if alg is None:
            alg = {"RSA": "RS256", "EC": "ES256", "oct": "HS256"}[key.key_type]
        header = {"alg": alg, "kid": kid or key.kid}
        return jwt.encode({k: v for k, v in header.items() if v}, claims, key, algorithms=[alg])


def unsigned_token(claims: dict[str, Any], *, alg: str = "none") -> str:
    """A JWT with `alg` in its header and no signature at all."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': alg, 'typ': 'JWT'})}.{part(claims)}."


def hmac_key() -> OctKey:
    return OctKey.import_key(secrets.token_bytes(32))


@pytest.fixture(scope="module")
def oidc_server() -> Iterator[OidcServer]:
    with OidcServer() as server:
        yield server
