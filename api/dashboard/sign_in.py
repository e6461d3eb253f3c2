"""Signing in with an API key, and out: each is an event under that key (`session.started`, `session.ended`).

The sign-in page also offers single sign-on (`sso.py`): an organisation's name, or `/?org=ORG` for an org
that has it, starts the flow through the org's identity provider.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.exceptions import HTTPException
from litestar.response import Redirect

from api.auth import key_for_token, limit_address, limit_key, request_context
from api.dashboard.access import from_this_site, require_session, user_of
from api.dashboard.render import PAGE_HEADERS, error_page, is_https, page, redirect, session_cookie
from api.dashboard.session import (
    CSRF_FIELD,
    SIGN_IN_COOKIE,
    csrf_matches,
    new_token,
    signed_in,
    signer_of,
)
from ledger.errors import LedgerError, UnauthenticatedError
from ledger.events import Actor
from ledger.model import ORG_PATTERN
from ledger.service import Ledger
from projections.reader import Projections

_SIGN_IN_SECONDS = 3600  # how long a sign-in form stays usable


def _sign_in_cookie(request: Request[Any, Any, Any], value: str, *, clear: bool = False) -> Cookie:
    return Cookie(key=SIGN_IN_COOKIE, value=value, path="/sign-in", httponly=True, samesite="strict",
                  secure=is_https(request), max_age=0 if clear else _SIGN_IN_SECONDS)


def sign_in_page(request: Request[Any, Any, Any], *, status: int = 200, error: str | None = None,
                 notice: str | None = None, org: str = "", sso_org: str | None = None,
                 cookies: list[Cookie] | None = None) -> Response[Any]:
    """The sign-in page: the API key form, and single sign-on (`org` fills its field; `sso_org`, an org that
    signs in with SSO, gets a button of its own)."""
    token = new_token()
    return page(request, None, "sign_in.html", status=status,
                cookies=[_sign_in_cookie(request, token), *(cookies or [])], title="Sign in", sign_in_token=token,
                error=error, notice=notice, org=org, sso_org=sso_org)


class SignInController(Controller):
    path = "/"
    include_in_schema = False
    exception_handlers = {LedgerError: error_page, HTTPException: error_page}

    @get("/")
    async def sign_in_form(self, request: Request[Any, Any, Any]) -> Response[Any]:
        user = await signed_in(request, request.app.state.projections, request.app.state.clock())
        if user is not None:
            return redirect(request, user, "/credentials")
        ended = request.query_params.get("ended") == "1"
        notice = "Your session ended. Sign in again to go on." if ended else None
        org = (request.query_params.get("org") or "").strip().lower()[:64]
        projections: Projections = request.app.state.projections
        sso_org = org if org and ORG_PATTERN.fullmatch(org) and await projections.get_sso(org) is not None else None
        return sign_in_page(request, notice=notice, org=org, sso_org=sso_org)

    @get("/sign-in")
    async def sign_in_again(self) -> Redirect:
        """The address bar shows /sign-in after a refused attempt: opening it shows the form."""
        return Redirect("/", status_code=303, headers=PAGE_HEADERS)

    @post("/sign-in")
    async def sign_in(self, request: Request[Any, Any, Any]) -> Response[Any]:
        form = await request.form()
        expected = request.cookies.get(SIGN_IN_COOKIE, "")
        given = form.get(CSRF_FIELD)
        if not from_this_site(request) or not expected or not csrf_matches(
                expected, given if isinstance(given, str) else None):
            return sign_in_page(request, status=403, error="This sign-in form is out of date or did not come from "
                                                            "keyledger. Try again.")
        limiters = limit_address(request)
        raw = form.get("api_key")
        projections: Projections = request.app.state.projections
        try:
            key = await key_for_token(projections, raw.strip() if isinstance(raw, str) else "")
        except UnauthenticatedError:
            return sign_in_page(request, status=401, error="That API key is not valid, or it was revoked.")
        limit_key(limiters, key.key_id)
        ledger: Ledger = request.app.state.ledger
        ctx = request_context(request, Actor(key_id=key.key_id, label=key.label, kind="api_key"))
        session_id = new_token()
        await ledger.start_session(ctx, key.org, session_id)
        cookie = signer_of(request).cookie(session_id, request.app.state.clock())
        return Redirect("/credentials", status_code=303, headers=PAGE_HEADERS,
                        cookies=[session_cookie(request, cookie), _sign_in_cookie(request, "", clear=True)])

    @post("/sign-out", before_request=require_session)
    async def sign_out(self, request: Request[Any, Any, Any]) -> Response[Any]:
        user = user_of(request)
        await request.app.state.ledger.end_session(user.principal.ctx, user.principal.org, user.session_id)
        return Redirect("/", status_code=303, headers=PAGE_HEADERS, cookies=[session_cookie(request, "", clear=True)])
