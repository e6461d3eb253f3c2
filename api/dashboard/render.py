"""How dashboard pages answer: templates, redirects, the session cookie, and the headers every page carries."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any
from urllib.parse import quote

from litestar import Request, Response
from litestar.datastructures import Cookie
from litestar.exceptions import HTTPException
from litestar.response import Redirect, Template
from litestar.status_codes import HTTP_303_SEE_OTHER

from api.dashboard.session import SESSION_COOKIE, SignedIn
from api.errors import status_for
from ledger.errors import LedgerError

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

# Scripts and styles only from this server (htmx is vendored), no frames, forms only to this server.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # Pages show metadata, and some a value or a new key: none is kept by the browser or a proxy.
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
}


def is_https(request: Request[Any, Any, Any]) -> bool:
    return request.scope.get("scheme") == "https"


def session_cookie(request: Request[Any, Any, Any], value: str, *, clear: bool = False) -> Cookie:
    return Cookie(key=SESSION_COOKIE, value=value, path="/", httponly=True, samesite="strict",
                  secure=is_https(request), max_age=0 if clear else None)


def is_htmx(request: Request[Any, Any, Any]) -> bool:
    return request.headers.get("hx-request") == "true"


def page(request: Request[Any, Any, Any], user: SignedIn | None, template: str, status: int = 200,
         cookies: list[Cookie] | None = None, **context: Any) -> Template:
    """A page (or an htmx fragment), with the session renewed."""
    out_cookies = list(cookies or [])
    if user is not None:
        out_cookies.append(session_cookie(request, user.cookie))
    return Template(template_name=template, context={"user": user, **context}, status_code=status,
                    headers=PAGE_HEADERS, cookies=out_cookies, media_type="text/html")


def redirect(request: Request[Any, Any, Any], user: SignedIn | None, to: str,
             cookies: list[Cookie] | None = None) -> Response[Any]:
    """After a POST: see the result with a GET (htmx follows `HX-Redirect` instead)."""
    out_cookies = list(cookies or [])
    if user is not None:
        out_cookies.append(session_cookie(request, user.cookie))
    if is_htmx(request):
        return Response(b"", status_code=200, headers={**PAGE_HEADERS, "HX-Redirect": to}, cookies=out_cookies)
    return Redirect(to, status_code=HTTP_303_SEE_OTHER, headers=PAGE_HEADERS, cookies=out_cookies)


def path_part(text: str) -> str:
    """A secret name or id as one path segment."""
    return quote(text, safe="")


def when(ns: int | None) -> str:
    """A time as people read it, in UTC (the audit's zone)."""
    if ns is None:
        return "never"
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def error_message(exc: Exception) -> tuple[int, str]:
    """The status and text of an error to show on a page: the API's map, and never a value."""
    if isinstance(exc, LedgerError):
        return status_for(exc)[0], str(exc)
    if isinstance(exc, HTTPException):
        return exc.status_code, str(exc.detail)
    return 500, "something went wrong on the server; the request id is in the logs"


def error_page(request: Request[Any, Any, Any], exc: Exception) -> Template:
    """The dashboard's answer to an error no form handled: a page that says what went wrong."""
    status, message = error_message(exc)
    user = request.scope.get("state", {}).get("dashboard_user")
    return page(request, user, "error.html", status=status, title="Something went wrong", message=message)
