"""The Audit page: the org's events newest first, filtered and paginated; exports; the chain's verification.

Like the API's audit routes, it is for admin keys.
"""

from __future__ import annotations

import base64
from typing import Any, get_args
from urllib.parse import urlencode

import msgspec
from litestar import Controller, Request, Response, get
from litestar.exceptions import HTTPException
from litestar.response import Stream

from api.dashboard.access import query_text, require_session, user_of
from api.dashboard.render import error_page, is_htmx, page, session_cookie, when
from api.params import parse_time
from api.routes.audit import Action, export_stream
from api.routes.ledger_routes import verify_org
from ledger.errors import LedgerError, ValidationError
from ledger.service import Ledger
from projections.reader import AuditFilter, Projections, query_audit

PAGE_SIZE = 50
FILTERS = ("action", "secret", "actor", "since", "until")


_SECOND_NS = 1_000_000_000


def _time(text: str, field: str, *, upper: bool = False) -> int | None:
    """A time from the page's `datetime-local` fields (UTC, to the minute or second), or RFC 3339.

    An upper bound covers the whole minute or second it names: "to 07:40" includes 07:40:59.
    """
    if not text:
        return None
    widen = 0
    if len(text) == 16:  # 2026-11-29T07:40
        text, widen = text + ":00", 60 * _SECOND_NS - 1
    elif len(text) == 19:  # 2026-11-29T07:40:05
        widen = _SECOND_NS - 1
    if len(text) == 19:
        text += "Z"
    moment = parse_time(text, field, upper=upper and not widen)
    return None if moment is None else moment + widen if upper else moment


def audit_filter_of(request: Request[Any, Any, Any]) -> tuple[AuditFilter, dict[str, str]]:
    chosen = {name: query_text(request, name) for name in FILTERS}
    action = chosen["action"]
    if action and action not in get_args(Action):
        raise ValidationError("action", "is not an action the audit records")
    f = AuditFilter(action=action or None, secret=chosen["secret"] or None, actor=chosen["actor"] or None,
                    since=_time(chosen["since"], "since"), until=_time(chosen["until"], "until", upper=True))
    return f, {name: value for name, value in chosen.items() if value}


class AuditPageController(Controller):
    path = "/audit"
    include_in_schema = False
    before_request = staticmethod(require_session)
    exception_handlers = {LedgerError: error_page, HTTPException: error_page}

    @get("/")
    async def audit(self, request: Request[Any, Any, Any]) -> Response[Any]:
        user = user_of(request)
        user.principal.require_admin()
        projections: Projections = request.app.state.projections
        org = user.principal.org
        try:
            f, chosen = audit_filter_of(request)
            error = None
        except ValidationError as exc:
            f, chosen, error = AuditFilter(), {}, str(exc)
        before = query_text(request, "before", 20)
        if before.isascii() and before.isdigit() and len(before) <= 18:
            f = msgspec.structs.replace(f, before_seq=int(before))
        rows = [] if error else await query_audit(projections, org, f, limit=PAGE_SIZE + 1, newest_first=True)
        older = rows[PAGE_SIZE - 1].seq if len(rows) > PAGE_SIZE else None
        keys = await projections.list_keys(org)
        query = urlencode(chosen)
        return page(request, user, "audit.html", status=422 if error else 200, title="Audit", section="audit",
                    rows=rows[:PAGE_SIZE], chosen=chosen, error=error, actions=get_args(Action), keys=keys,
                    older=(f"/audit?{urlencode({**chosen, 'before': older})}" if older is not None else None),
                    newest=(f"/audit?{query}" if before else None), query=query, when=when,
                    verify_now=not chosen and not before)

    @get("/export")
    async def export(self, request: Request[Any, Any, Any]) -> Stream:
        user = user_of(request)
        user.principal.require_admin()
        fmt = query_text(request, "format")
        if fmt not in ("jsonl", "csv"):
            raise ValidationError("format", "must be jsonl or csv")
        f, _ = audit_filter_of(request)
        ledger: Ledger = request.app.state.ledger
        stream = export_stream(ledger, user.principal.org, f, fmt)
        stream.headers.update({"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})
        stream.set_cookie(session_cookie(request, user.cookie))
        return stream

    @get("/verification")
    async def verification(self, request: Request[Any, Any, Any]) -> Response[Any]:
        user = user_of(request)
        user.principal.require_admin()
        ledger: Ledger = request.app.state.ledger
        checkpoint = await ledger.checkpoint(user.principal.org)  # signed now if the latest is behind
        report = await verify_org(ledger, user.principal.org)
        context: dict[str, Any] = {
            "report": report, "checkpoint": checkpoint, "when": when,
            "checkpoint_head": base64.b64encode(checkpoint.head).decode() if checkpoint else None,
        }
        if is_htmx(request):
            return page(request, user, "_verification.html", **context)
        return page(request, user, "verification.html", title="Chain verification", section="audit", **context)
