"""Who may see a dashboard page: the `before_request` hook, and the form fields it hands over."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.datastructures import FormMultiDict
from litestar.response import Redirect

from api.auth import limit_address, limit_key
from api.dashboard.render import PAGE_HEADERS, is_htmx, page, session_cookie
from api.dashboard.session import CSRF_FIELD, CSRF_HEADER, SESSION_COOKIE, SignedIn, csrf_matches, signed_in
from ledger.errors import ValidationError

_SAFE_METHODS = frozenset({"GET", "HEAD"})


async def require_session(request: Request[Any, Any, Any]) -> Response[Any] | None:
    """Let the request through only with a live session; a form also needs the session's token.

    Without a session the answer is the sign-in page (htmx: `HX-Redirect`). A form without the
    token is refused here, before its handler runs, so nothing it asked for happens.
    """
    limiters = limit_address(request)  # the API's limits apply to people too
    now = request.app.state.clock()
    user = await signed_in(request, request.app.state.projections, now)
    if user is None:
        expired = SESSION_COOKIE in request.cookies
        to = "/?ended=1" if expired else "/"
        cookies = [session_cookie(request, "", clear=True)] if expired else []
        if is_htmx(request):
            return Response(b"", status_code=200, headers={**PAGE_HEADERS, "HX-Redirect": to}, cookies=cookies)
        return Redirect(to, status_code=303, headers=PAGE_HEADERS, cookies=cookies)
    limit_key(limiters, user.principal.key_id)
    if request.method not in _SAFE_METHODS:
        form = await request.form()
        given = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
        if not from_this_site(request) or not csrf_matches(user.csrf_token, given if isinstance(given, str) else None):
            refused = page(request, user, "error.html", status=403, title="Form refused",
                           message="This form did not come from this page of keyledger, or it is out of date. "
                                   "Reload the page and try again. Nothing was changed.")
            if is_htmx(request):  # htmx swaps no 403: reload the page, which brings a fresh token
                refused.headers["HX-Refresh"] = "true"
            return refused
    request.scope.setdefault("state", {})["dashboard_user"] = user
    return None


def from_this_site(request: Request[Any, Any, Any]) -> bool:
    """False when the browser says the request came from another origin (`Sec-Fetch-Site`), even a
    sibling subdomain, which SameSite cookies do not stop. Browsers without the header rely on the token."""
    return request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")


def user_of(request: Request[Any, Any, Any]) -> SignedIn:
    user: SignedIn = request.scope["state"]["dashboard_user"]
    return user


def text_field(form: FormMultiDict, name: str, *, max_chars: int, required: bool = False,
               label: str | None = None) -> str:
    """A form field's text (stripped of surrounding blanks), checked for presence and length."""
    raw = form.get(name)
    text = raw.strip() if isinstance(raw, str) else ""
    label = label or name.replace("_", " ")
    if required and not text:
        raise ValidationError(label, "is required")
    if len(text) > max_chars:
        raise ValidationError(label, f"must be at most {max_chars} characters")
    return text


def query_text(request: Request[Any, Any, Any], name: str, max_chars: int = 256) -> str:
    value = request.query_params.get(name) or ""
    return value.strip()[:max_chars]
