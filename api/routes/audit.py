"""The audit faces: query the org's events, and export them (JSON Lines, CSV, OCSF), admin keys only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter
from litestar.response import Stream

from api.auth import Principal, require_api_key
from api.params import decode_seq_cursor, encode_seq_cursor, parse_time
from api.routes.docs import COMMON, problems
from api.schemas import rfc3339
from ledger.codec import decode_event
from ledger.events import Event, outcome_of, secret_name
from ledger.export import render
from ledger.service import Ledger
from projections.reader import AuditFilter, Projections, query_audit
from projections.views import AuditRow

Action = Literal[
    "org.created",
    "api_key.created",
    "api_key.revoked",
    "secret.created",
    "secret.updated",
    "secret.deleted",
    "secret.revealed",
    "secret.reveal_denied",
    "master_key.rotated",
    "secret.version_destroyed",
    "secret.rolled_back",
    "secret.restored",
    "secret.destroyed",
    "org.settings_changed",
    "secret.rotated",
    "secret.reveal_failed",
    "secret.policy_changed",
    "secret.rotation_configured",
    "secret.rotation_started",
    "secret.rotation_failed",
    "secret.member_added",
    "secret.member_updated",
    "secret.member_state_changed",
    "secret.member_removed",
    "secret.pool_configured",
    "ssh_key.added",
    "ssh_key.removed",
    "session.started",
    "session.ended",
    "member.joined",
    "member.role_changed",
    "member.removed",
    "sso.configured",
    "sso.removed",
    "app.connected",
    "app.token_refreshed",
    "app.refresh_failed",
    "app.disconnected",
    "app.token_revealed",
    "app.token_denied",
]
Outcome = Literal["ok", "granted", "denied", "failed"]
MEDIA = {"jsonl": "application/x-ndjson", "csv": "text/csv", "ocsf": "application/x-ndjson"}
EXPORT_CHUNK = 2000


class AuditActor(msgspec.Struct, kw_only=True, omit_defaults=True):
    key_id: str
    label: str
    kind: str
    subject: str | None = None  # a person's subject at the identity provider (kind "person")


class AuditSource(msgspec.Struct, kw_only=True):
    address: str
    user_agent: str


class AuditEvent(msgspec.Struct, kw_only=True):
    seq: int
    time: str
    action: str
    actor: AuditActor
    source: AuditSource
    request_id: str
    secret: str | None
    version: int | None
    outcome: str
    detail: str


class AuditPage(msgspec.Struct, kw_only=True):
    events: list[AuditEvent]
    next_cursor: str | None


def audit_event(row: AuditRow) -> AuditEvent:
    return AuditEvent(
        seq=row.seq,
        time=rfc3339(row.at),
        action=row.action,
        actor=AuditActor(key_id=row.actor_key_id, label=row.actor_label, kind=row.actor_kind,
                         subject=row.actor_subject or None),
        source=AuditSource(address=row.client_address, user_agent=row.user_agent),
        request_id=row.request_id,
        secret=row.secret,
        version=row.version,
        outcome=row.outcome,
        detail=row.detail,
    )


def audit_filter(
    action: str | None,
    secret: str | None,
    actor: str | None,
    outcome: str | None,
    since: str | None,
    until: str | None,
    after_seq: int | None,
) -> AuditFilter:
    return AuditFilter(
        action=action,
        secret=secret,
        actor=actor,
        outcome=outcome,
        since=parse_time(since, "since"),
        until=parse_time(until, "until", upper=True),
        after_seq=after_seq,
    )


TimeParam = Annotated[str | None, QueryParameter(max_length=64, description="RFC 3339 time, e.g. 2026-11-28T18:00:00Z")]


class AuditController(Controller):
    path = "/v1/audit"
    tags = ["audit"]
    before_request = staticmethod(require_api_key)  # Litestar calls it unbound

    @get(
        "/",
        operation_id="QueryAudit",
        responses=problems(*COMMON, 403),
        summary="The org's events, newest or oldest first (admin keys only)",
    )
    async def query(
        self,
        principal: NamedDependency[Principal],
        projections: NamedDependency[Projections],
        action: FromQuery[Action | None] = None,
        secret: Annotated[str | None, QueryParameter(max_length=256)] = None,
        actor: Annotated[str | None, QueryParameter(max_length=64, description="key id")] = None,
        outcome: FromQuery[Outcome | None] = None,
        since: TimeParam = None,
        until: TimeParam = None,
        after_seq: Annotated[int | None, QueryParameter(ge=0, le=2**62)] = None,
        order: FromQuery[Literal["newest", "oldest"]] = "newest",
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, QueryParameter(max_length=64)] = None,
    ) -> AuditPage:
        principal.require_admin()
        f = audit_filter(action, secret, actor, outcome, since, until, after_seq)
        if cursor:
            position = decode_seq_cursor(cursor)
            f = (
                msgspec.structs.replace(f, before_seq=position)
                if order == "newest"
                else msgspec.structs.replace(f, after_seq=max(position, f.after_seq or 0))
            )
        rows = await query_audit(projections, principal.org, f, limit=limit + 1, newest_first=order == "newest")
        page = rows[:limit]
        more = len(rows) > limit
        return AuditPage(
            events=[audit_event(r) for r in page],
            next_cursor=encode_seq_cursor(page[-1].seq) if more and page else None,
        )

    @get(
        "/export",
        operation_id="ExportAudit",
        responses=problems(*COMMON, 403),
        summary="Stream the org's events as JSON Lines (verifiable), CSV or OCSF (admin keys only)",
    )
    async def export(
        self,
        principal: NamedDependency[Principal],
        ledger: NamedDependency[Ledger],
        format: FromQuery[Literal["jsonl", "csv", "ocsf"]] = "jsonl",
        action: FromQuery[Action | None] = None,
        secret: Annotated[str | None, QueryParameter(max_length=256)] = None,
        actor: Annotated[str | None, QueryParameter(max_length=64)] = None,
        outcome: FromQuery[Outcome | None] = None,
        since: TimeParam = None,
        until: TimeParam = None,
        after_seq: Annotated[int | None, QueryParameter(ge=0, le=2**62)] = None,
    ) -> Stream:
        principal.require_admin()
        f = audit_filter(action, secret, actor, outcome, since, until, after_seq)
        return export_stream(ledger, principal.org, f, format)


def export_stream(ledger: Ledger, org: str, f: AuditFilter, format: str) -> Stream:
    """The org's events that `f` selects, read from the ledger itself (so a JSON Lines export verifies),
    streamed in `format` as a download."""

    async def records() -> AsyncIterator[bytes]:
        after = 0
        while True:
            chunk = await ledger.recorder.read_org(org, after, EXPORT_CHUNK)
            if not chunk:
                return
            after = chunk[-1].org_seq
            selected = []
            for record in chunk:
                event = decode_event(record.body)
                if _matches(f, record.seq, record.type, record.at, event):
                    selected.append((record, event))
            for data in render(format, selected):
                yield data

    return Stream(
        _with_csv_header(format, records()),
        media_type=MEDIA[format],
        headers={"Content-Disposition": f'attachment; filename="{org}-audit.{_suffix(format)}"'},
    )


def _suffix(fmt: str) -> str:
    return {"jsonl": "jsonl", "csv": "csv", "ocsf": "ocsf.jsonl"}[fmt]


async def _with_csv_header(fmt: str, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """CSV renders its header with every chunk: keep the first one only."""
    header_seen = False
    async for data in chunks:
        if fmt == "csv" and data.startswith(b"seq,org,org_seq,"):
            if header_seen:
                continue
            header_seen = True
        yield data


def _matches(f: AuditFilter, seq: int, type_: str, at: int, event: Event) -> bool:
    if f.action is not None and type_ != f.action:
        return False
    if f.secret is not None and secret_name(event) != f.secret:
        return False
    if f.actor is not None and event.actor.key_id != f.actor:
        return False
    if f.outcome is not None and outcome_of(event)[0] != f.outcome:
        return False
    if f.since is not None and at < f.since:
        return False
    if f.until is not None and at > f.until:
        return False
    return not (f.after_seq is not None and seq <= f.after_seq)
