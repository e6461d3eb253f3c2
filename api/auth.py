"""Bearer API keys: looked up by SHA-256 in the keys projection, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import TooManyRequestsException

from api.middleware import request_id_of
from api.ratelimit import RateLimiter, RateLimiters, retry_after
from ledger.commands import Context
from ledger.errors import PermissionDeniedError, UnauthenticatedError
from ledger.events import Actor, Source
from projections.reader import Projections
from projections.views import ApiKeyRow

API_KEY_PATTERN = re.compile(r"^rt_live_[A-Za-z0-9]{32,128}$")
_MAX_USER_AGENT = 512


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """The authenticated caller: an active key of one org."""

    org: str
    key_id: str
    label: str
    role: str
    scope: str
    ctx: Context

    def require_admin(self) -> None:
        if self.role != "admin":
            raise PermissionDeniedError("this action needs an admin key")


def _raw_headers(request: Request[Any, Any, Any]) -> tuple[bytes, bytes]:
    """The raw Authorization and User-Agent values, read from the ASGI scope in one pass.

    Cheaper than `request.headers`, which builds a header mapping for every request.
    """
    authorization = user_agent = b""
    for name, value in request.scope["headers"]:
        if name == b"authorization":
            authorization = authorization or value  # the first one counts, as with request.headers
        elif name == b"user-agent":
            user_agent = user_agent or value
    return authorization, user_agent


def bearer_token(authorization: bytes) -> str:
    if not authorization:
        raise UnauthenticatedError("missing Authorization header: use 'Bearer <api key>'")
    scheme, _, token = authorization.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthenticatedError("malformed Authorization header: use 'Bearer <api key>'")
    return token.strip()


def request_context(request: Request[Any, Any, Any], actor: Actor, user_agent: bytes | None = None) -> Context:
    if user_agent is None:
        user_agent = _raw_headers(request)[1]
    client = request.scope.get("client")
    return Context(
        actor=actor,
        source=Source(
            address=client[0] if client else "",
            user_agent=user_agent[:_MAX_USER_AGENT].decode("latin-1"),
        ),
        request_id=request_id_of(request.scope),
    )


def _limit(limiter: RateLimiter | None, caller: str, per: str) -> None:
    if limiter is None:
        return
    wait = limiter.acquire(caller)
    if wait > 0:
        raise TooManyRequestsException(
            detail=f"rate limit of {limiter.limit} per {per} exceeded: retry after {retry_after(wait)} s",
            headers={"Retry-After": retry_after(wait)},
        )


def limit_address(request: Request[Any, Any, Any]) -> RateLimiters:
    """Count the request against its client address (before the token is even looked at)."""
    limiters: RateLimiters = request.app.state.rate_limiters
    client = request.scope.get("client")
    _limit(limiters.per_address, client[0] if client else "", "client address")
    return limiters


async def key_for_token(projections: Projections, token: str) -> ApiKeyRow:
    """The active key whose secret is `token` (the API's bearer token, the dashboard's sign-in)."""
    if not API_KEY_PATTERN.match(token):
        raise UnauthenticatedError("invalid API key")
    digest = hashlib.sha256(token.encode()).hexdigest()
    found = await projections.key_by_sha256(digest)
    if found is None:
        raise UnauthenticatedError("invalid API key")
    key, stored = found
    if not hmac.compare_digest(stored, digest) or key.revoked_at is not None:
        raise UnauthenticatedError("invalid API key")
    return key


def limit_key(limiters: RateLimiters, key_id: str) -> None:
    _limit(limiters.per_key, key_id, "API key")


async def authenticate(
    request: Request[Any, Any, Any], projections: Projections
) -> Principal:
    limiters = limit_address(request)
    authorization, user_agent = _raw_headers(request)
    key = await key_for_token(projections, bearer_token(authorization))
    limit_key(limiters, key.key_id)
    actor = Actor(key_id=key.key_id, label=key.label, kind="api_key")
    return Principal(
        org=key.org,
        key_id=key.key_id,
        label=key.label,
        role=key.role,
        scope=key.scope,
        ctx=request_context(request, actor, user_agent),
    )


def authenticate_admin(request: Request[Any, Any, Any], admin_token: str | None) -> Context:
    limit_address(request)
    if admin_token is None:
        raise UnauthenticatedError("admin routes are off: set KEYLEDGER_ADMIN_TOKEN to enable them")
    token = bearer_token(_raw_headers(request)[0])
    if not hmac.compare_digest(token.encode(), admin_token.encode()):
        raise UnauthenticatedError("invalid admin token")
    return request_context(request, Actor(key_id="admin", label="admin token", kind="admin"))


# -- hooks: authentication runs as a `before_request` hook, before Litestar reads the body, so a bad
# key is a 401 whatever the body. (A guard would run as early, but Litestar copies the route
# handler for every guard call: measured, a seventh of a get's CPU.)


async def require_api_key(request: Request[Any, Any, Any]) -> None:
    """Authenticate the API key and keep the caller for the handler (`principal_of`)."""
    request.scope.setdefault("state", {})["principal"] = await authenticate(request, request.app.state.projections)


async def require_admin_token(request: Request[Any, Any, Any]) -> None:
    ctx = authenticate_admin(request, request.app.state.settings.admin_token)
    request.scope.setdefault("state", {})["admin_ctx"] = ctx


def principal_of(request: Request[Any, Any, Any]) -> Principal:
    principal: Principal = request.scope["state"]["principal"]
    return principal


def admin_context_of(request: Request[Any, Any, Any]) -> Context:
    ctx: Context = request.scope["state"]["admin_ctx"]
    return ctx
