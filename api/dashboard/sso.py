"""Signing in through the org's OpenID Connect provider (single sign-on), and the sealed cookies that carry
a flow through a provider's pages (this sign-in, and connecting an app in `apps.py`).

`GET /sso/start?org=ORG` discovers the org's provider, makes an authorization request (PKCE S256, state,
nonce; `ledger/oauth.py`) and keeps what the callback needs in a sealed cookie; `GET /sso/callback` checks
that cookie and the state, trades the code for tokens (the client secret is revealed by the ledger, recorded),
verifies the ID token, and signs the person in (`Ledger.sign_in_person`: `member.joined` the first time,
`session.started` by the person). Every failure shows the sign-in page with what kind of failure it was,
never a token, and signs nobody in.

Cookies and SameSite. The provider sends the browser back with a cross-site navigation, on which browsers do
not send SameSite=Strict cookies. So the flow cookie is SameSite=Lax (sent on a cross-site top-level GET),
HttpOnly, Secure over HTTPS, scoped to `/sso`, sealed (AES-GCM under a key derived from the master key, so
every process opens it, and nobody can read or forge it) and good for 10 minutes. The callback's answer sets
the session cookie (Strict: browsers accept it on that answer, they only withhold it on such requests), then
goes on to /credentials through a same-site hop (a page that refreshes itself): a redirect would continue the
cross-site navigation, and the Strict cookie just set would not be sent with it.

Forms may only submit to this server (CSP `form-action 'self'`), and browsers apply that to the redirects
that follow a form too: pages that send the browser to a provider answer the same kind of hop page instead
of a redirect.
"""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec
from litestar import Controller, Request, Response, get
from litestar.datastructures import Cookie
from litestar.exceptions import HTTPException, TooManyRequestsException

from api.auth import limit_address, request_context
from api.dashboard.render import error_page, is_https, page, session_cookie
from api.dashboard.session import SignedIn, new_token, signer_of
from api.dashboard.sign_in import sign_in_page
from api.errors import status_for
from api.middleware import request_id_of
from ledger import oauth
from ledger.commands import SYSTEM
from ledger.crypto import open_flow, seal_flow
from ledger.errors import (
    LedgerError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
    ValidationError,
)
from ledger.model import validate_org
from ledger.service import Ledger
from projections.reader import Projections

SSO_FLOW_COOKIE = "keyledger_sso_flow"
FLOW_SECONDS = 600  # a flow through the provider's pages must finish within 10 minutes
FLOW_NS = FLOW_SECONDS * 1_000_000_000
_CLOCK_SKEW_NS = 5 * 1_000_000_000
MAX_FLOW_COOKIE_CHARS = 3800  # browsers keep cookies of up to 4096 bytes, name and attributes included
SSO_SCOPES = ("openid", "email", "profile")
_SSO_PURPOSE = "sso"
F = TypeVar("F", bound=msgspec.Struct)


# -- sealed flow cookies (shared with apps.py) ------------------------------------------------------------


def flow_key(request: Request[Any, Any, Any]) -> bytes:
    key: bytes = request.app.state.settings.master_key.flow_key()
    return key


def flow_cookie(request: Request[Any, Any, Any], name: str, path: str, value: str, *,
                clear: bool = False) -> Cookie:
    """A flow's cookie: SameSite=Lax, since the provider's redirect back is a cross-site navigation on which
    Strict cookies are not sent; HttpOnly, Secure over HTTPS, only for `path`, and short-lived."""
    return Cookie(key=name, value=value, path=path, httponly=True, samesite="lax", secure=is_https(request),
                  max_age=0 if clear else FLOW_SECONDS)


def seal_flow_cookie(request: Request[Any, Any, Any], purpose: str, flow: msgspec.Struct) -> str:
    sealed = seal_flow(flow_key(request), purpose, msgspec.json.encode(flow))
    if len(sealed) > MAX_FLOW_COOKIE_CHARS:
        raise ValidationError("the settings", "are too long to carry through the provider's pages: shorten the "
                                              "URLs, the scopes or the client secret")
    return sealed


def open_flow_cookie(request: Request[Any, Any, Any], name: str, purpose: str, kind: type[F]) -> F | None:
    """The flow the cookie holds, when it was sealed here for `purpose` less than 10 minutes ago."""
    text = request.cookies.get(name)
    if not text:
        return None
    plain = open_flow(flow_key(request), purpose, text)
    if plain is None:
        return None
    try:
        flow = msgspec.json.decode(plain, type=kind)
    except msgspec.DecodeError:
        return None
    started_at = getattr(flow, "started_at", None)
    now = request.app.state.clock()
    if not isinstance(started_at, int) or now - started_at > FLOW_NS or started_at > now + _CLOCK_SKEW_NS:
        return None
    return flow


def redirect_uri(request: Request[Any, Any, Any], path: str) -> str:
    """`{scheme}://{host}{path}` of this request: what the provider must have registered."""
    base = urlsplit(str(request.base_url))
    return f"{base.scheme}://{base.netloc}{path}"


def hop(request: Request[Any, Any, Any], to: str, *, title: str, message: str, link: str,
        cookies: list[Cookie] | None = None, user: SignedIn | None = None) -> Response[Any]:
    """A page that sends the browser on to `to` by itself (`<meta http-equiv="refresh">`, no script), with
    a link for browsers that do not. Used where a redirect would not do: after a form (CSP form-action also
    covers a form's redirects) and after a provider's redirect (a cross-site navigation, whose redirects stay
    cross-site, so Strict cookies would not be sent)."""
    return page(request, user, "hop.html", cookies=cookies, title=title, message=message, to=to, link=link)


def callback_params(request: Request[Any, Any, Any]) -> dict[str, str]:
    """The callback's query (first values only), for `oauth.code_from_callback`."""
    return {name: request.query_params.get(name) or "" for name in ("state", "code", "error")
            if name in request.query_params}


# -- what went wrong, in words (never a token, a code or a state) -----------------------------------------


def oauth_failure(exc: LedgerError, who: str = "The identity provider", *,
                  refused_status: int = 401) -> tuple[int, str]:
    """The status and message for a failed flow: the kind of failure, in words. `refused_status`: the status
    of a refusal by the provider (401 for a sign-in; a signed-in page answers 400)."""
    if isinstance(exc, oauth.IdTokenError):
        return 401, f"{who}'s ID token was refused ({exc.reason}): nobody was signed in. Try again; if it " \
                    "happens again, tell an admin."
    if isinstance(exc, oauth.ProviderRefusedError):
        return refused_status, f"{who} refused ({exc.error_code})."
    if isinstance(exc, oauth.ProviderUnavailableError):
        return 502, f"{who} could not be reached or gave no usable answer ({exc.reason}). Try again later."
    if isinstance(exc, oauth.DiscoveryError):
        return 502, f"{who}'s settings cannot be used (discovery failed: {exc.reason}). An admin must check them."
    if isinstance(exc, ValidationError) and exc.field == "state":
        return 400, ("The answer from the provider does not belong to this attempt (state mismatch): it may "
                     "have been started in another tab or forged. Start again.")
    if isinstance(exc, ValidationError) and exc.field == "code":
        return 400, "The provider sent the browser back without a usable authorization code. Start again."
    if isinstance(exc, oauth.OAuthError):
        return 502, f"{who} failed ({type(exc).__name__})."
    if isinstance(exc, PermissionDeniedError):
        return 403, f"Refused: {exc}."
    if isinstance(exc, UnauthenticatedError):
        return 401, f"Refused: {exc}. Start again."
    if isinstance(exc, NotFoundError):
        return 404, f"Single sign-on is not set up right: {exc}."
    return status_for(exc)[0], str(exc)  # the API's one map, for the rest


class SsoFlow(msgspec.Struct, frozen=True, kw_only=True):
    """What the callback needs from the start, sealed in the flow cookie."""

    org: str
    issuer: str
    client_id: str
    redirect_uri: str
    state: str
    nonce: str
    code_verifier: str
    started_at: int

    def __repr__(self) -> str:
        return f"SsoFlow(org={self.org!r})"


_NO_SSO = ("The organisation “{org}” does not sign in with single sign-on, or there is no such organisation. "
           "Sign in with an API key, or ask an admin to set up single sign-on.")
_STALE = ("This sign-in is out of date: it took more than 10 minutes, or it was started in another browser. "
          "Start again.")


class SsoController(Controller):
    path = "/sso"
    include_in_schema = False
    exception_handlers = {LedgerError: error_page, HTTPException: error_page}

    @get("/start")
    async def start(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """Send the browser to the org's provider, with a fresh authorization request."""
        try:
            limit_address(request)
        except TooManyRequestsException as exc:
            return sign_in_page(request, status=429, error=f"Too many sign-in attempts: {exc.detail}.")
        org = (request.query_params.get("org") or "").strip().lower()[:64]
        try:
            validate_org(org)
        except ValidationError:
            return sign_in_page(request, status=422, org=org,
                                error="Enter your organisation's name (as in keyledger: a-z, 0-9, '-' and '_').")
        projections: Projections = request.app.state.projections
        sso = await projections.get_sso(org)
        if sso is None:
            return sign_in_page(request, status=404, org=org, error=_NO_SSO.format(org=org))
        try:
            metadata = await oauth.discover(sso.issuer)
            callback = redirect_uri(request, "/sso/callback")
            auth = oauth.authorization_request(
                metadata.authorization_endpoint, client_id=sso.client_id, redirect_uri=callback, scopes=SSO_SCOPES,
                openid=True)
            assert auth.nonce is not None  # openid
            flow = SsoFlow(org=org, issuer=sso.issuer, client_id=sso.client_id, redirect_uri=callback,
                           state=auth.state, nonce=auth.nonce, code_verifier=auth.code_verifier,
                           started_at=request.app.state.clock())
            sealed = seal_flow_cookie(request, _SSO_PURPOSE, flow)
        except LedgerError as exc:
            status, message = oauth_failure(exc, "The organisation's identity provider")
            return sign_in_page(request, status=status, org=org, error=message)
        return hop(request, auth.url, title="Signing in", link="Continue to your organisation's sign-in",
                   message="Taking you to your organisation's identity provider…",
                   cookies=[flow_cookie(request, SSO_FLOW_COOKIE, "/sso", sealed)])

    @get("/callback")
    async def callback(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """The provider sent the browser back: check, trade the code, verify the ID token, sign in."""
        clear = flow_cookie(request, SSO_FLOW_COOKIE, "/sso", "", clear=True)
        try:
            limit_address(request)
        except TooManyRequestsException as exc:
            return sign_in_page(request, status=429, error=f"Too many sign-in attempts: {exc.detail}.",
                                cookies=[clear])
        flow = open_flow_cookie(request, SSO_FLOW_COOKIE, _SSO_PURPOSE, SsoFlow)
        if flow is None:
            return sign_in_page(request, status=400, error=_STALE, cookies=[clear])
        ledger: Ledger = request.app.state.ledger
        clock = request.app.state.clock
        try:
            code = oauth.code_from_callback(callback_params(request), expected_state=flow.state)
            client = await ledger.sso_client(flow.org, request_id_of(request.scope))  # a recorded reveal
            if client.issuer != flow.issuer or client.client_id != flow.client_id:
                raise UnauthenticatedError("the organisation's single sign-on settings changed during this sign-in")
            metadata = await oauth.discover(client.issuer)
            tokens = await oauth.exchange_code(
                metadata.token_endpoint, client_id=client.client_id, client_secret=client.client_secret,
                redirect_uri=flow.redirect_uri, code=code, code_verifier=flow.code_verifier, now_ns=clock())
            if tokens.id_token is None:
                raise oauth.IdTokenError("malformed", "the provider sent no ID token")
            identity = await oauth.verify_id_token(tokens.id_token, metadata=metadata, client_id=client.client_id,
                                                   nonce=flow.nonce, now_s=clock() // 1_000_000_000)
            if not identity.email or not identity.email_verified:
                return sign_in_page(request, status=403, org=flow.org, cookies=[clear], error=(
                    "Refused: the identity provider does not say that your email address is verified, so "
                    "keyledger cannot tell who you are. Verify it at the provider, then sign in again."))
            session_id = new_token()
            # The discovery document named the configured issuer (a trailing "/" aside) and the token's `iss`
            # is the document's: the person is recorded under the issuer as configured.
            person = await ledger.sign_in_person(
                request_context(request, SYSTEM.actor), flow.org, issuer=client.issuer, subject=identity.subject,
                email=identity.email, session_id=session_id)
        except LedgerError as exc:
            status, message = oauth_failure(exc)
            return sign_in_page(request, status=status, org=flow.org, error=message, cookies=[clear])
        cookie = signer_of(request).cookie(session_id, clock())
        return hop(request, "/credentials", title="Signed in", link="Continue to keyledger",
                   message=f"Signed in to {flow.org} as {person.email}.",
                   cookies=[session_cookie(request, cookie), clear])
