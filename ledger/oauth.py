"""The OAuth 2.0 / OpenID Connect client protocol: discovery, the authorization request (PKCE S256, state,
nonce), the code exchange, refreshing, and verifying ID tokens.

Authlib builds the authorization URL (with the method its httpx client, AsyncOAuth2Client, inherits) and
its httpx client talks to the token endpoint (client authentication, the form); this module classifies the
answers itself. joserfc verifies ID tokens against the provider's JWKS. Authlib is held below 1.8
(pyproject): from 1.8 its httpx client warns on import that httpx is deprecated in favour of httpx2.

Nothing here stores anything: the caller keeps the `AuthorizationRequest` between the redirect and the
callback, and keeps the `TokenSet`. The only state is two process-wide caches (discovery documents and
JWKS, 5 minutes each); `clear_caches` empties them.

Errors (all `OAuthError`, a `LedgerError`) carry `permanent`: False only for `ProviderUnavailableError`,
the one worth retrying. Their messages, like every repr here, are built from our own words, field names,
HTTP statuses, exception class names and the provider's OAuth `error` code: never from a token, a client
secret, a code, a code verifier, a state, a nonce or the provider's `error_description`. Exceptions are
raised `from None`, so no chained exception can quote an answer in a logged traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, Final, Literal, NamedTuple, TypeVar, get_args
from urllib.parse import parse_qsl, urlsplit

import httpx
import msgspec
from authlib.integrations.base_client.errors import OAuthError as _AuthlibOAuthError  # type: ignore[import-untyped]
from authlib.integrations.httpx_client import AsyncOAuth2Client  # type: ignore[import-untyped]
from authlib.oauth2.client import OAuth2Client as _UrlBuilder  # type: ignore[import-untyped]
from joserfc import jws, jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import ECKey, RSAKey

from ledger.errors import LedgerError, ValidationError

__all__ = [
    "DISCOVERY_TTL_S",
    "ID_TOKEN_ALGORITHMS",
    "JWKS_TTL_S",
    "MAX_ANSWER_BYTES",
    "PRESETS",
    "AuthMethod",
    "AuthorizationRequest",
    "DiscoveryError",
    "IdTokenError",
    "IdTokenReason",
    "Identity",
    "OAuthError",
    "Preset",
    "ProviderMetadata",
    "ProviderRefusedError",
    "ProviderUnavailableError",
    "TokenSet",
    "auth_method_for",
    "authorization_request",
    "clear_caches",
    "code_from_callback",
    "discover",
    "exchange_code",
    "refresh_tokens",
    "validate_client",
    "validate_endpoint_url",
    "validate_refresh_token",
    "verify_id_token",
]

AuthMethod = Literal["client_secret_basic", "client_secret_post"]
IdTokenReason = Literal["signature", "issuer", "audience", "expired", "nonce", "malformed", "not_yet_valid"]

DISCOVERY_TTL_S: Final = 300.0
JWKS_TTL_S: Final = 300.0
JWKS_MIN_REFETCH_S: Final = 10.0  # an unknown kid refetches the JWKS at most this often per jwks_uri
MAX_ANSWER_BYTES: Final = 1 << 20  # discovery, JWKS and token answers; larger ones are refused unread
MAX_URL_CHARS: Final = 2048
MAX_ID_TOKEN_CHARS: Final = 16 * 1024
MAX_JWKS_KEYS: Final = 32
MAX_EXPIRES_IN_S: Final = 10 * 365 * 24 * 3600
ID_TOKEN_ALGORITHMS: Final = ("RS256", "ES256")
MIN_RSA_BITS: Final = 2048
LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1"})

_T = TypeVar("_T")
_V = TypeVar("_V")

# OAuth `error` codes that say "try again later" rather than "no": answered as ProviderUnavailableError.
_TRANSIENT_ERROR_CODES: Final = frozenset(
    {"temporarily_unavailable", "server_error", "slow_down", "ratelimited", "rate_limited"}
)
# Parameters authorization_request sets itself; extra_params and the endpoint's own query may not hold them.
_RESERVED_AUTHORIZE_PARAMS: Final = frozenset(
    {"response_type", "client_id", "redirect_uri", "scope", "state", "nonce", "code_challenge",
     "code_challenge_method"}
)
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,256}$")  # RFC 6749 section 3.3 scope-token
_CLIENT_ID = re.compile(r"^[\x21-\x7e]{1,512}$")  # printable ASCII, no space
_CODE = re.compile(r"^[\x20-\x7e]{1,4096}$")
_CODE_VERIFIER = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")  # RFC 7636 section 4.1
_FORM_HEADERS: Final = {
    "Accept": "application/json",  # GitHub answers form-encoded without it
    "Content-Type": "application/x-www-form-urlencoded;charset=UTF-8",
}


# -- errors ---------------------------------------------------------------------------------------------


class OAuthError(LedgerError):
    """Base of this module's errors. `permanent`: whether the same request would fail again."""

    permanent: ClassVar[bool] = True


class ProviderRefusedError(OAuthError):
    """The provider answered with an OAuth error (invalid_grant, invalid_client, access_denied, ...).

    `error_code` is the provider's `error` value, lower-cased, with anything but [a-z_] made "_", cut to 64
    characters ("unknown_error" when it gave none); `status` the HTTP status, when there was one."""

    permanent = True

    def __init__(self, error_code: object, *, status: int | None = None) -> None:
        code = _clean_error_code(error_code)
        where = f" (HTTP {status})" if status is not None else ""
        super().__init__(f"the provider refused the request: {code}{where}")
        self.error_code = code
        self.status = status


class ProviderUnavailableError(OAuthError):
    """The provider could not be asked or gave no usable answer: a network error, a timeout, HTTP 429 or
    5xx, an answer that is not JSON, too large, or a transient OAuth error (temporarily_unavailable,
    server_error, slow_down). `reason` says which, in our words. Worth retrying later."""

    permanent = False

    def __init__(self, reason: str) -> None:
        super().__init__(f"the provider is unavailable: {reason}")
        self.reason = reason


class DiscoveryError(OAuthError):
    """The discovery document cannot be used: `reason` "issuer" (it names another issuer than the one
    asked), "invalid" (not an object, or a required endpoint missing or not a usable URL) or "http" (a 4xx
    answer: most likely a wrong issuer URL). Permanent: a configuration to fix, not a retry."""

    permanent = True

    def __init__(self, reason: Literal["issuer", "invalid", "http"], detail: str) -> None:
        super().__init__(f"OpenID discovery failed ({reason}): {detail}")
        self.reason = reason


class IdTokenError(OAuthError):
    """The ID token failed verification; `reason` is one of `IdTokenReason`."""

    permanent = True

    def __init__(self, reason: IdTokenReason, detail: str = "") -> None:
        assert reason in get_args(IdTokenReason)
        super().__init__(f"ID token refused ({reason})" + (f": {detail}" if detail else ""))
        self.reason: IdTokenReason = reason


def _clean_error_code(value: object) -> str:
    if not isinstance(value, str) or not value:
        return "unknown_error"
    return re.sub(r"[^a-z_]", "_", value.lower())[:64]


# -- values ---------------------------------------------------------------------------------------------


class ProviderMetadata(msgspec.Struct, frozen=True):
    """What discovery found: `issuer` exactly as the provider writes it (so as ID tokens carry it)."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


class AuthorizationRequest(msgspec.Struct, frozen=True):
    """Where to send the user's browser (`url`), and what to keep until the callback: `state` (compare with
    `code_from_callback`), `nonce` (None unless openid; give it to `verify_id_token`) and `code_verifier`
    (give it to `exchange_code`). The repr shows the endpoint only: the URL's query holds state and nonce."""

    url: str
    state: str
    nonce: str | None
    code_verifier: str

    def __repr__(self) -> str:
        return f"AuthorizationRequest(endpoint={_without_query(self.url)!r})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return [("endpoint", _without_query(self.url))]


class TokenSet(msgspec.Struct, frozen=True):
    """The token endpoint's answer. `expires_at`: UTC nanoseconds since the epoch (from `expires_in` and the
    caller's `now_ns`), None when the provider gave no lifetime. `scope`: as granted, as the provider wrote
    it (GitHub separates with commas), else as requested. The repr never shows a token."""

    access_token: str
    token_type: str
    refresh_token: str | None
    expires_at: int | None
    scope: str
    id_token: str | None

    def __repr__(self) -> str:
        return (
            f"TokenSet(token_type={self.token_type!r}, expires_at={self.expires_at!r}, scope={self.scope!r}, "
            f"refresh_token={'<set>' if self.refresh_token else None}, "
            f"id_token={'<set>' if self.id_token else None})"
        )

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return [("token_type", self.token_type), ("expires_at", self.expires_at), ("scope", self.scope)]


class Identity(msgspec.Struct, frozen=True):
    """Who a verified ID token names. `email` is "" (and `email_verified` False) when the token has none:
    the email claim needs the `email` scope."""

    issuer: str
    subject: str
    email: str
    email_verified: bool


class Preset(msgspec.Struct, frozen=True):
    """A known provider's endpoints and defaults. `scopes`: a default set, the caller passes its own when it
    needs others; `scope_separator`: how the provider joins scopes in the authorization URL; `issuer`: for
    `discover` when the provider speaks OpenID Connect (`openid`); `extra_params`: added to the
    authorization URL."""

    authorization_url: str
    token_url: str
    scopes: tuple[str, ...]
    scope_separator: str = " "
    auth_method: AuthMethod = "client_secret_basic"
    openid: bool = False
    issuer: str | None = None
    extra_params: tuple[tuple[str, str], ...] = ()


PRESETS: Final[dict[str, Preset]] = {
    # GitHub documents the client credentials as form parameters; its token endpoint answers form-encoded
    # unless asked for JSON (every token request here sends Accept: application/json).
    "github": Preset(
        authorization_url="https://github.com/login/oauth/authorize",
        token_url="https://github.com/login/oauth/access_token",  # noqa: S106 - a URL, not a password
        scopes=("read:user", "user:email"),
        auth_method="client_secret_post",
    ),
    # access_type=offline asks for a refresh token, prompt=consent has it issued again on a new consent.
    "google": Preset(
        authorization_url="https://accounts.google.com/o/oauth2/v2/auth",
        token_url="https://oauth2.googleapis.com/token",  # noqa: S106 - a URL, not a password
        scopes=("openid", "email"),
        openid=True,
        issuer="https://accounts.google.com",
        extra_params=(("access_type", "offline"), ("prompt", "consent")),
    ),
    # Slack joins scopes with commas; the top-level access_token of oauth.v2.access is the bot token.
    "slack": Preset(
        authorization_url="https://slack.com/oauth/v2/authorize",
        token_url="https://slack.com/api/oauth.v2.access",  # noqa: S106 - a URL, not a password
        scopes=("users:read",),
        scope_separator=",",
        auth_method="client_secret_post",
    ),
}


def auth_method_for(provider: str) -> AuthMethod:
    """How a token request to this provider authenticates (a preset's way; else HTTP Basic)."""
    preset = PRESETS.get(provider)
    return preset.auth_method if preset is not None else "client_secret_basic"


# -- validation -----------------------------------------------------------------------------------------


def validate_endpoint_url(url: str, field: str) -> str:
    """`url` if it is a usable endpoint: https (http only for localhost, 127.0.0.1 and [::1]), a host, at most
    2048 printable ASCII characters, no user name or password, no fragment. Else `ValidationError(field)`,
    whose message never repeats the URL."""
    if not isinstance(url, str) or not url:
        raise ValidationError(field, "must be a URL")
    if len(url) > MAX_URL_CHARS:
        raise ValidationError(field, f"must be at most {MAX_URL_CHARS} characters")
    if not url.isascii() or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise ValidationError(field, "must be printable ASCII without spaces (punycode for international names)")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ValidationError(field, "is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise ValidationError(field, "must be an https URL")
    if "@" in parts.netloc:
        raise ValidationError(field, "must not contain a user name or password")
    if "#" in url:
        raise ValidationError(field, "must not have a fragment")
    if not host:
        raise ValidationError(field, "must name a host")
    if scheme == "http" and host not in LOOPBACK_HOSTS:
        raise ValidationError(field, "must use https (http is allowed for localhost, 127.0.0.1 and [::1] only)")
    return url


def _without_query(url: str) -> str:
    return url.split("?", 1)[0].split("#", 1)[0]


def validate_client(client_id: str, client_secret: str | None = None, auth_method: str | None = None) -> None:
    """What a token request will accept: check it where the credentials are stored, not at the first refresh."""
    if not isinstance(client_id, str) or not _CLIENT_ID.fullmatch(client_id):
        raise ValidationError("client_id", "must be 1-512 printable ASCII characters without spaces")
    if client_secret is not None and (
        not isinstance(client_secret, str) or not client_secret or len(client_secret) > 4096
        or not client_secret.isprintable() or not client_secret.isascii()
    ):
        raise ValidationError("client_secret", "must be 1-4096 printable ASCII characters")
    if auth_method is not None:
        if auth_method not in get_args(AuthMethod):
            raise ValidationError("auth_method", "must be client_secret_basic or client_secret_post")
        if auth_method == "client_secret_basic" and ":" in client_id:
            raise ValidationError("client_id", "must not contain ':' with client_secret_basic")


def _check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 300:
        raise ValidationError("timeout", "must be a number of seconds above 0 and at most 300")
    return float(timeout)


# -- the authorization request and its callback ---------------------------------------------------------


def authorization_request(
    authorization_endpoint: str,
    *,
    client_id: str,
    redirect_uri: str,
    scopes: Sequence[str],
    openid: bool,
    scope_separator: str = " ",
    extra_params: Mapping[str, str] | None = None,
) -> AuthorizationRequest:
    """A fresh authorization request: random state, a nonce when `openid` (which also puts "openid" first in
    the scopes), and a PKCE verifier whose S256 challenge goes in the URL."""
    endpoint = validate_endpoint_url(authorization_endpoint, "authorization_endpoint")
    redirect_uri = validate_endpoint_url(redirect_uri, "redirect_uri")
    validate_client(client_id)
    if scope_separator not in (" ", ","):
        raise ValidationError("scope_separator", "must be ' ' or ','")
    if isinstance(scopes, str):
        raise ValidationError("scopes", "must be a sequence of scopes, not one string")
    scope_list: list[str] = []
    for scope in scopes:
        if not isinstance(scope, str) or not _SCOPE_TOKEN.fullmatch(scope) or scope_separator in scope:
            raise ValidationError("scopes", "each scope must be 1-256 printable ASCII characters, no separator")
        if scope not in scope_list:
            scope_list.append(scope)
    if openid and "openid" not in scope_list:
        scope_list.insert(0, "openid")
    extra = dict(extra_params or {})
    if any(not isinstance(k, str) or not isinstance(v, str) for k, v in extra.items()):
        raise ValidationError("extra_params", "must map strings to strings")
    if _RESERVED_AUTHORIZE_PARAMS & (extra.keys() | {k for k, _ in parse_qsl(urlsplit(endpoint).query)}):
        raise ValidationError("extra_params", "must not set a parameter the request sets itself")

    state = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(32) if openid else None
    code_verifier = secrets.token_urlsafe(64)  # 86 characters of [A-Za-z0-9_-]
    if nonce is not None:
        extra["nonce"] = nonce
    # AsyncOAuth2Client's create_authorization_url is this base class's: without its httpx client, whose
    # TLS context alone costs ~20 ms to make.
    client = _UrlBuilder(None, client_id=client_id, redirect_uri=redirect_uri, code_challenge_method="S256")
    url, _ = client.create_authorization_url(
        endpoint, state=state, code_verifier=code_verifier, scope=scope_separator.join(scope_list) or None, **extra
    )
    if not isinstance(url, str) or len(url) > 8 * MAX_URL_CHARS:
        raise ValidationError("scopes", "make an authorization URL too long")
    return AuthorizationRequest(url=url, state=state, nonce=nonce, code_verifier=code_verifier)


def code_from_callback(params: Mapping[str, str], *, expected_state: str) -> str:
    """The authorization code from the callback's query `params`, once its state is the request's.

    Raises `ValidationError("state")` on a missing or different state (a forged or stale callback),
    `ProviderRefusedError` when the provider answered an error (access_denied when the user declined),
    `ValidationError("code")` when there is no usable code."""
    if not isinstance(expected_state, str) or not expected_state:
        raise ValidationError("expected_state", "must be the state of the authorization request")
    state = params.get("state")
    if not isinstance(state, str) or not hmac.compare_digest(state.encode(), expected_state.encode()):
        raise ValidationError("state", "does not match the authorization request's")
    if "error" in params:
        raise ProviderRefusedError(params.get("error"))
    code = params.get("code")
    if not isinstance(code, str) or not _CODE.fullmatch(code):
        raise ValidationError("code", "is missing or not printable ASCII")
    return code


# -- HTTP -----------------------------------------------------------------------------------------------


class _AnswerRefused(Exception):
    """Raised inside httpx (a response hook, a body stream): refused before or while reading."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _CappedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in self._inner:
            size += len(chunk)
            if size > self._limit:
                raise _AnswerRefused(f"answer larger than {self._limit} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


async def _guard_response(response: httpx.Response) -> None:
    """A response hook, before httpx reads the body: refuse compressed answers (a small body could inflate
    past the limit) and bound the raw body, declared or not."""
    if response.headers.get("content-encoding", "").strip().lower() not in ("", "identity"):
        raise _AnswerRefused("answer is compressed; only Content-Encoding identity is accepted")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
        raise _AnswerRefused(f"answer larger than {MAX_ANSWER_BYTES} bytes")
    if isinstance(response.stream, httpx.AsyncByteStream):
        response.stream = _CappedStream(response.stream, MAX_ANSWER_BYTES)


def _client_options(timeout: float) -> dict[str, Any]:
    return {
        "timeout": httpx.Timeout(timeout),
        "follow_redirects": False,
        "headers": {"Accept-Encoding": "identity"},
        "event_hooks": {"response": [_guard_response]},
    }


async def _call(limit_s: float, action: Callable[[], Awaitable[_T]]) -> _T:
    """`action()` within `limit_s` seconds overall, its failures as ProviderUnavailableError."""
    try:
        async with asyncio.timeout(limit_s):
            return await action()
    except OAuthError:
        raise
    except (TimeoutError, httpx.TimeoutException):
        raise ProviderUnavailableError(f"timed out after {limit_s:g} s") from None
    except _AnswerRefused as exc:
        raise ProviderUnavailableError(exc.reason) from None
    except httpx.HTTPStatusError as exc:
        raise ProviderUnavailableError(f"HTTP {exc.response.status_code}") from None
    except httpx.InvalidURL:
        raise ProviderUnavailableError("the URL is not valid for HTTP") from None
    except httpx.HTTPError as exc:
        raise ProviderUnavailableError(f"connection failed ({type(exc).__name__})") from None


async def _get_json(url: str, limit_s: float, refusal: Callable[[int], OAuthError]) -> Any:
    """The decoded JSON of a GET answered 200. `refusal(status)` is raised for another 4xx; 429, 5xx, a
    redirect and an answer that is not JSON are a ProviderUnavailableError."""

    async def get() -> tuple[int, bytes]:
        async with httpx.AsyncClient(**_client_options(limit_s)) as client:
            response = await client.get(url, headers={"Accept": "application/json"})
            return response.status_code, response.content

    status, body = await _call(limit_s, get)
    if status == 429 or status >= 500:
        raise ProviderUnavailableError(f"HTTP {status}")
    if 300 <= status < 400:
        raise ProviderUnavailableError(f"redirected (HTTP {status}); redirects are not followed")
    if status != 200:
        raise refusal(status)
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise ProviderUnavailableError("answer is not JSON") from None


# -- discovery ------------------------------------------------------------------------------------------

_discovery_cache: dict[str, tuple[float, ProviderMetadata]] = {}
_jwks_cache: dict[str, tuple[float, tuple[_Jwk, ...]]] = {}
_jwks_forced_at: dict[str, float] = {}
_MAX_CACHED: Final = 256


def clear_caches() -> None:
    """Forget every cached discovery document and JWKS (tests; a provider known to have rotated keys)."""
    _discovery_cache.clear()
    _jwks_cache.clear()
    _jwks_forced_at.clear()


def _cache_put(cache: dict[str, tuple[float, _V]], key: str, value: _V) -> None:
    if len(cache) >= _MAX_CACHED and key not in cache:
        cache.pop(next(iter(cache)))  # the oldest entry
    cache[key] = (time.monotonic(), value)


async def discover(issuer: str, *, timeout: float = 10.0) -> ProviderMetadata:  # noqa: ASYNC109 - a policy value
    """The provider's metadata from `{issuer}/.well-known/openid-configuration`, cached 5 minutes per issuer.

    The document must name the issuer asked (a trailing "/" aside): else `DiscoveryError("issuer")`, since
    ID tokens from it would carry another issuer. A 4xx answer or a document without usable endpoints is a
    `DiscoveryError`; a network failure, 429, 5xx or non-JSON answer a `ProviderUnavailableError`."""
    issuer = validate_endpoint_url(issuer, "issuer")
    if urlsplit(issuer).query:
        raise ValidationError("issuer", "must not have a query")
    timeout = _check_timeout(timeout)
    cached = _discovery_cache.get(issuer)
    if cached is not None and time.monotonic() - cached[0] < DISCOVERY_TTL_S:
        return cached[1]

    document = await _get_json(
        issuer.rstrip("/") + "/.well-known/openid-configuration", timeout,
        lambda status: DiscoveryError("http", f"the discovery document answered HTTP {status}"),
    )
    if not isinstance(document, dict):
        raise DiscoveryError("invalid", "the discovery document is not a JSON object")
    named = document.get("issuer")
    if not isinstance(named, str) or named.rstrip("/") != issuer.rstrip("/"):
        raise DiscoveryError("issuer", "the discovery document names another issuer than the one asked")
    endpoints: dict[str, str] = {}
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        value = document.get(name)
        try:
            endpoints[name] = validate_endpoint_url(value if isinstance(value, str) else "", name)
        except ValidationError as exc:
            raise DiscoveryError("invalid", f"the document's {name} {exc.message}") from None
    metadata = ProviderMetadata(issuer=named, **endpoints)
    _cache_put(_discovery_cache, issuer, metadata)
    return metadata


# -- the token endpoint ---------------------------------------------------------------------------------


def _token_answer(response: httpx.Response) -> dict[str, Any]:
    """The token endpoint's answer when it is a token; every other answer classified as an error."""
    status = response.status_code
    if status == 429 or status >= 500:
        raise ProviderUnavailableError(f"HTTP {status}")
    if 300 <= status < 400:
        raise ProviderUnavailableError(f"redirected (HTTP {status}); redirects are not followed")
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        raise ProviderUnavailableError(f"answer is not JSON (HTTP {status})") from None
    if not isinstance(body, dict):
        raise ProviderUnavailableError(f"answer is not a JSON object (HTTP {status})")
    if "error" in body:  # Slack and GitHub answer errors with HTTP 200
        code = _clean_error_code(body["error"])
        if code in _TRANSIENT_ERROR_CODES:
            raise ProviderUnavailableError(f"the provider answered {code} (HTTP {status})")
        raise ProviderRefusedError(code, status=status)
    if not 200 <= status < 300:
        raise ProviderRefusedError("unknown_error", status=status)
    return body


async def _token_request(
    token_endpoint: str,
    *,
    client_id: str,
    client_secret: str,
    auth_method: AuthMethod,
    limit_s: float,
    call: Callable[[Any], Awaitable[object]],
) -> dict[str, Any]:
    """Run `call(client)` (Authlib's fetch_token or refresh_token) and return the answer as the provider
    wrote it: a compliance hook, called before Authlib parses, classifies and keeps it."""
    answers: list[dict[str, Any]] = []

    def keep(response: httpx.Response) -> httpx.Response:
        answers.append(_token_answer(response))
        return response

    async def run() -> None:
        async with AsyncOAuth2Client(
            client_id=client_id,
            client_secret=client_secret,
            token_endpoint_auth_method=auth_method,
            **_client_options(limit_s),
        ) as client:
            client.register_compliance_hook("access_token_response", keep)
            client.register_compliance_hook("refresh_token_response", keep)
            try:
                await call(client)
            except (ValueError, TypeError, KeyError, _AuthlibOAuthError):
                # Authlib's own reading of an answer `keep` accepted (an expires_in it cannot parse):
                # the answer kept is read here instead. Before any answer, it is a malformed request.
                if not answers:
                    raise

    try:
        await _call(limit_s, run)
    except (ValueError, TypeError, KeyError, _AuthlibOAuthError) as exc:
        raise ProviderUnavailableError(f"the request could not be made ({type(exc).__name__})") from None
    if not answers:
        raise ProviderUnavailableError("no answer")
    return answers[-1]


def validate_refresh_token(refresh_token: str) -> str:
    if not isinstance(refresh_token, str) or not _CODE.fullmatch(refresh_token):
        raise ValidationError("refresh_token", "must be 1-4096 printable ASCII characters")
    return refresh_token


def _expires_at(expires_in: object, now_ns: int) -> int | None:
    if isinstance(expires_in, bool):
        return None
    if isinstance(expires_in, str) and expires_in.isdigit() and len(expires_in) <= 12:
        expires_in = int(expires_in)
    if isinstance(expires_in, float) and math.isfinite(expires_in):
        expires_in = int(expires_in)
    if not isinstance(expires_in, int):
        return None
    return now_ns + min(max(expires_in, 0), MAX_EXPIRES_IN_S) * 1_000_000_000


def _token_set(answer: Mapping[str, Any], *, now_ns: int, scope: str, refresh_token: str | None) -> TokenSet:
    access_token = answer.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise ProviderUnavailableError("the answer has no access_token")
    token_type = answer.get("token_type")
    new_refresh = answer.get("refresh_token")
    if isinstance(new_refresh, str) and new_refresh and not _CODE.fullmatch(new_refresh):
        # Kept, it could never be sent back: refuse it now rather than break the connection at its refresh.
        raise ProviderUnavailableError("the answer's refresh_token is not 1-4096 printable ASCII characters")
    granted = answer.get("scope")
    id_token = answer.get("id_token")
    return TokenSet(
        access_token=access_token,
        token_type=token_type if isinstance(token_type, str) and token_type else "Bearer",
        refresh_token=new_refresh if isinstance(new_refresh, str) and new_refresh else refresh_token,
        expires_at=_expires_at(answer.get("expires_in"), now_ns),
        scope=granted if isinstance(granted, str) else scope,
        id_token=id_token if isinstance(id_token, str) and id_token else None,
    )


def _check_now_ns(now_ns: int) -> int:
    if isinstance(now_ns, bool) or not isinstance(now_ns, int) or now_ns < 0:
        raise ValidationError("now_ns", "must be UTC nanoseconds since the epoch")
    return now_ns


async def exchange_code(
    token_endpoint: str,
    *,
    client_id: str,
    client_secret: str,
    redirect_uri: str,
    code: str,
    code_verifier: str,
    now_ns: int,
    timeout: float = 10.0,  # noqa: ASYNC109 - a policy value, applied with asyncio.timeout
    auth_method: AuthMethod = "client_secret_basic",
) -> TokenSet:
    """Trade the callback's `code` (and the request's PKCE `code_verifier`) for tokens.

    `ProviderRefusedError` (permanent) when the provider says no: invalid_grant for a used, expired or
    foreign code or a wrong verifier, invalid_client for wrong credentials. `ProviderUnavailableError` when
    it cannot be asked."""
    token_endpoint = validate_endpoint_url(token_endpoint, "token_endpoint")
    redirect_uri = validate_endpoint_url(redirect_uri, "redirect_uri")
    validate_client(client_id, client_secret, auth_method)
    if not isinstance(code, str) or not _CODE.fullmatch(code):
        raise ValidationError("code", "must be 1-4096 printable ASCII characters")
    if not isinstance(code_verifier, str) or not _CODE_VERIFIER.fullmatch(code_verifier):
        raise ValidationError("code_verifier", "must be 43-128 characters of A-Z, a-z, 0-9, '-', '.', '_', '~'")
    _check_now_ns(now_ns)
    timeout = _check_timeout(timeout)

    async def call(client: Any) -> object:
        return await client.fetch_token(
            token_endpoint,
            grant_type="authorization_code",
            code=code,
            redirect_uri=redirect_uri,
            code_verifier=code_verifier,
            headers=dict(_FORM_HEADERS),
        )

    answer = await _token_request(
        token_endpoint, client_id=client_id, client_secret=client_secret, auth_method=auth_method,
        limit_s=timeout, call=call,
    )
    return _token_set(answer, now_ns=now_ns, scope="", refresh_token=None)


async def refresh_tokens(
    token_endpoint: str,
    *,
    client_id: str,
    client_secret: str,
    refresh_token: str,
    scope: str,
    now_ns: int,
    timeout: float = 10.0,  # noqa: ASYNC109 - a policy value, applied with asyncio.timeout
    auth_method: AuthMethod = "client_secret_basic",
) -> TokenSet:
    """New tokens for `refresh_token`. `scope` ("" for all that was granted) is sent when not empty; the
    answer keeps the old refresh token when it brings no new one. A revoked or expired refresh token is a
    `ProviderRefusedError` (invalid_grant): the user must authorize again."""
    token_endpoint = validate_endpoint_url(token_endpoint, "token_endpoint")
    validate_client(client_id, client_secret, auth_method)
    validate_refresh_token(refresh_token)
    if not isinstance(scope, str) or len(scope) > 4096 or not scope.isprintable():
        raise ValidationError("scope", "must be at most 4096 printable characters")
    _check_now_ns(now_ns)
    timeout = _check_timeout(timeout)
    options = {"scope": scope} if scope else {}

    async def call(client: Any) -> object:
        return await client.refresh_token(
            token_endpoint, refresh_token=refresh_token, headers=dict(_FORM_HEADERS), **options
        )

    answer = await _token_request(
        token_endpoint, client_id=client_id, client_secret=client_secret, auth_method=auth_method,
        limit_s=timeout, call=call,
    )
    return _token_set(answer, now_ns=now_ns, scope=scope, refresh_token=refresh_token)


# -- ID tokens ------------------------------------------------------------------------------------------


class _Jwk(NamedTuple):
    kid: str | None
    alg: str | None
    key: RSAKey | ECKey


def _usable_key(entry: object) -> _Jwk | None:
    """A JWKS entry as a verification key, or None: not a signing key, another type, too weak, or broken."""
    if not isinstance(entry, dict):
        return None
    use, ops, kid, alg = entry.get("use"), entry.get("key_ops"), entry.get("kid"), entry.get("alg")
    if use not in (None, "sig") or (ops is not None and (not isinstance(ops, list) or "verify" not in ops)):
        return None
    if (kid is not None and not isinstance(kid, str)) or (alg is not None and alg not in ID_TOKEN_ALGORITHMS):
        return None
    public = {k: v for k, v in entry.items() if k not in ("d", "p", "q", "dp", "dq", "qi", "oth", "key_ops")}
    try:
        if entry.get("kty") == "RSA":
            rsa = RSAKey.import_key(public)
            if rsa.raw_value.key_size < MIN_RSA_BITS:
                return None
            return _Jwk(kid=kid, alg=alg, key=rsa)
        if entry.get("kty") == "EC":
            ec = ECKey.import_key(public)
            return _Jwk(kid=kid, alg=alg, key=ec) if ec.curve_name == "P-256" else None
    except (JoseError, ValueError, TypeError, KeyError):
        return None
    return None


async def _fetch_jwks(jwks_uri: str, limit_s: float) -> tuple[_Jwk, ...]:
    document = await _get_json(
        jwks_uri, limit_s, lambda status: ProviderUnavailableError(f"the JWKS answered HTTP {status}")
    )
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ProviderUnavailableError("the JWKS is not a JSON object with keys")
    keys = tuple(key for key in map(_usable_key, document["keys"][:MAX_JWKS_KEYS]) if key is not None)
    _cache_put(_jwks_cache, jwks_uri, keys)
    return keys


def _candidates(keys: Sequence[_Jwk], kid: str | None, alg: str) -> list[_Jwk]:
    kty = "RSA" if alg == "RS256" else "EC"
    return [
        k for k in keys
        if k.key.key_type == kty and k.alg in (None, alg) and (kid is None or k.kid == kid)
    ]


async def _verification_keys(jwks_uri: str, kid: str | None, alg: str, limit_s: float) -> list[_Jwk]:
    """The provider's keys that could have signed; refetch the JWKS (at most every JWKS_MIN_REFETCH_S) when
    none does: the provider may have rotated keys since it was cached."""
    cached = _jwks_cache.get(jwks_uri)
    if cached is not None and time.monotonic() - cached[0] < JWKS_TTL_S:
        found = _candidates(cached[1], kid, alg)
        forced = _jwks_forced_at.get(jwks_uri)
        if found or (forced is not None and time.monotonic() - forced < JWKS_MIN_REFETCH_S):
            return found
        _jwks_forced_at[jwks_uri] = time.monotonic()
    return _candidates(await _fetch_jwks(jwks_uri, limit_s), kid, alg)


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise IdTokenError("malformed", f"the {name} claim is not a number")
    return float(value)


async def verify_id_token(
    id_token: str,
    *,
    metadata: ProviderMetadata,
    client_id: str,
    nonce: str,
    now_s: int | None = None,
    leeway_s: int = 60,
    timeout: float = 10.0,  # noqa: ASYNC109 - a policy value, applied with asyncio.timeout
) -> Identity:
    """The identity in `id_token`, once it is proven: signed (RS256 or ES256 only) by a key of the provider's
    JWKS, issued by `metadata.issuer` for `client_id` (and, among several audiences, authorized for it by
    azp), not expired, issued (iat) and valid (nbf) by now, within `leeway_s`, and carrying `nonce`, the one
    of this login's authorization request. An empty `nonce` is refused: it would accept any token.

    `IdTokenError` with a `reason` when it is not; `ProviderUnavailableError` when the JWKS cannot be had."""
    if not isinstance(nonce, str) or not nonce:
        raise IdTokenError("nonce", "no expected nonce was given")
    validate_client(client_id)
    if isinstance(leeway_s, bool) or not isinstance(leeway_s, int) or not 0 <= leeway_s <= 600:
        raise ValidationError("leeway_s", "must be 0-600 seconds")
    timeout = _check_timeout(timeout)
    if not isinstance(id_token, str) or not id_token or len(id_token) > MAX_ID_TOKEN_CHARS or not id_token.isascii():
        raise IdTokenError("malformed", "not a compact JWS of printable ASCII within the size limit")
    try:
        header = jws.extract_compact(id_token.encode("ascii")).headers()
    except (JoseError, ValueError, TypeError, KeyError):
        raise IdTokenError("malformed", "not a compact JWS") from None
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in ID_TOKEN_ALGORITHMS:
        raise IdTokenError("signature", "the algorithm is not RS256 or ES256")
    if kid is not None and not isinstance(kid, str):
        raise IdTokenError("malformed", "the kid header is not a string")

    keys = await _verification_keys(metadata.jwks_uri, kid, alg, timeout)
    claims: dict[str, Any] | None = None
    for candidate in keys:
        try:
            claims = jwt.decode(id_token, candidate.key, algorithms=[alg]).claims
            break
        except BadSignatureError:
            continue
        except JoseError:
            raise IdTokenError("malformed", "the token could not be decoded") from None
    if claims is None:
        raise IdTokenError("signature", "no key of the provider verifies it" if keys else "no matching key")

    if claims.get("iss") != metadata.issuer:
        raise IdTokenError("issuer", "issued by another issuer than the provider's")
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise IdTokenError("audience", "the aud claim is missing or malformed")
    if client_id not in audiences:
        raise IdTokenError("audience", "not issued for this client")
    azp = claims.get("azp")
    if (len(audiences) > 1 or azp is not None) and azp != client_id:
        raise IdTokenError("audience", "not authorized for this client (azp)")

    now = float(time.time() if now_s is None else now_s)
    expires, issued, not_before = _number(claims, "exp"), _number(claims, "iat"), _number(claims, "nbf")
    if expires is None or issued is None:
        raise IdTokenError("malformed", "the exp and iat claims are required")
    if now - leeway_s >= expires:
        raise IdTokenError("expired")
    if issued > now + leeway_s or (not_before is not None and not_before > now + leeway_s):
        raise IdTokenError("not_yet_valid")
    token_nonce = claims.get("nonce")
    if not isinstance(token_nonce, str) or not hmac.compare_digest(token_nonce.encode(), nonce.encode()):
        raise IdTokenError("nonce", "not the nonce of this login")

    subject = claims.get("sub")
    if not isinstance(subject, str) or not 0 < len(subject) <= 255:
        raise IdTokenError("malformed", "the sub claim is missing or malformed")
    email = claims.get("email")
    if not isinstance(email, str) or len(email) > 320:
        email = ""
    verified = claims.get("email_verified")
    return Identity(
        issuer=metadata.issuer,
        subject=subject,
        email=email,
        email_verified=bool(email) and (verified is True or verified == "true"),
    )
