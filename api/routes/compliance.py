"""Compliance questions over HTTP (admin keys only); each is defined once in projections.compliance."""

from __future__ import annotations

import time
from typing import Annotated

import msgspec
from litestar import Controller, Request, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from api.auth import Principal, require_api_key
from api.params import parse_as_of, parse_time
from api.routes.audit import AuditEvent, TimeParam, audit_event
from api.routes.connected_apps import app_info
from api.routes.docs import COMMON, problems
from api.routes.secret_access import PolicyInfo, policy_info
from api.routes.secrets import metadata_of
from api.schemas import AppList, SecretMetadata, rfc3339
from ledger.errors import ValidationError
from ledger.model import Policy
from ledger.service import Ledger
from projections import compliance
from projections.access import who_could_reveal
from projections.reader import Projections

SecretParam = Annotated[str, QueryParameter(min_length=1, max_length=256)]


class SecretsAnswer(msgspec.Struct, kw_only=True):
    secrets: list[SecretMetadata]


class EventsAnswer(msgspec.Struct, kw_only=True):
    events: list[AuditEvent]


class ExposureAnswer(msgspec.Struct, kw_only=True):
    secret: str
    version: int
    created_at: str | None
    replaced_at: str | None
    reveals: list[AuditEvent]


class ActorCountOut(msgspec.Struct, kw_only=True):
    actor_key_id: str
    actor_label: str
    reveals: int


class CountsAnswer(msgspec.Struct, kw_only=True):
    actors: list[ActorCountOut]


class RotationOut(msgspec.Struct, kw_only=True):
    name: str
    interval_seconds: int
    rotator: str  # "generator" or "webhook"
    next_due_at: str
    failures: int  # failed attempts in a row since the last new value
    in_flight: bool
    last_rotated_at: str | None
    last_error: str | None  # never a value: our own words, statuses and limits
    last_error_at: str | None
    status: str  # "failing", "overdue", "in_flight" or "ok"


class RotationsAnswer(msgspec.Struct, kw_only=True):
    rotations: list[RotationOut]


def _time_or_none(ns: int | None) -> str | None:
    return None if ns is None else rfc3339(ns)


class KeyAccessOut(msgspec.Struct, kw_only=True):
    key_id: str
    label: str
    role: str
    scope: str


class WhoCouldRevealAnswer(msgspec.Struct, kw_only=True):
    secret: str
    at: str
    exists: bool  # the secret existed (not deleted) then
    expired: bool
    policy: PolicyInfo  # the secret's reveal policy then
    keys: list[KeyAccessOut]  # every active key that could have revealed it then


class ComplianceController(Controller):
    path = "/v1/compliance"
    tags = ["compliance"]
    before_request = staticmethod(require_api_key)  # Litestar calls it unbound

    @get(
        "/stale-secrets",
        operation_id="StaleSecrets",
        responses=problems(*COMMON, 403),
        summary="Live secrets not updated in `days` days (as of a time, default now)",
    )
    async def stale(
        self,
        principal: NamedDependency[Principal],
        projections: NamedDependency[Projections],
        days: Annotated[int, QueryParameter(ge=0, le=36500)] = 90,
        as_of: TimeParam = None,
    ) -> SecretsAnswer:
        principal.require_admin()
        point = parse_as_of(as_of)
        if point is not None and point.at is None:
            raise ValidationError("as_of", "must be an RFC 3339 time here")
        now = point.at if point is not None and point.at is not None else time.time_ns()
        rows = await compliance.secrets_not_updated(projections, principal.org, days, now)
        return SecretsAnswer(secrets=[metadata_of(r) for r in rows])

    @get(
        "/expiring",
        operation_id="ExpiringSecrets",
        responses=problems(*COMMON, 403),
        summary="Live secrets expiring within `days` days, and those expired already (soonest first)",
    )
    async def expiring(
        self,
        request: Request[object, object, State],
        principal: NamedDependency[Principal],
        projections: NamedDependency[Projections],
        days: Annotated[int, QueryParameter(ge=0, le=36500)] = 30,
    ) -> SecretsAnswer:
        principal.require_admin()
        rows = await compliance.secrets_expiring(projections, principal.org, days, request.app.state.clock())
        return SecretsAnswer(secrets=[metadata_of(r) for r in rows])

    @get(
        "/reveals",
        operation_id="SecretReveals",
        responses=problems(*COMMON, 403),
        summary="Who revealed a secret in a window, with the version each saw",
    )
    async def reveals(
        self,
        principal: NamedDependency[Principal],
        projections: NamedDependency[Projections],
        secret: SecretParam,
        since: TimeParam = None,
        until: TimeParam = None,
    ) -> EventsAnswer:
        principal.require_admin()
        rows = await compliance.who_revealed(
            projections, principal.org, secret, parse_time(since, "since"), parse_time(until, "until", upper=True)
        )
        return EventsAnswer(events=[audit_event(r) for r in rows])

    @get(
        "/exposure",
        operation_id="VersionExposure",
        responses=problems(*COMMON, 403),
        summary="Every reveal of one version, between its creation and its replacement or deletion",
    )
    async def exposure(
        self,
        principal: NamedDependency[Principal],
        projections: NamedDependency[Projections],
        secret: SecretParam,
        version: Annotated[int, QueryParameter(ge=1, le=2**62)],
    ) -> ExposureAnswer:
        principal.require_admin()
        found = await compliance.version_exposure(projections, principal.org, secret, version)
        return ExposureAnswer(
            secret=found.secret,
            version=found.version,
            created_at=rfc3339(found.created_at) if found.created_at is not None else None,
            replaced_at=rfc3339(found.replaced_at) if found.replaced_at is not None else None,
            reveals=[audit_event(r) for r in found.reveals],
        )

    @get(
        "/never-revealed",
        operation_id="NeverRevealed",
        responses=problems(*COMMON, 403),
        summary="Live secrets no one has revealed since they were created",
    )
    async def never_revealed(
        self, principal: NamedDependency[Principal], projections: NamedDependency[Projections]
    ) -> SecretsAnswer:
        principal.require_admin()
        rows = await compliance.secrets_never_revealed(projections, principal.org)
        return SecretsAnswer(secrets=[metadata_of(r) for r in rows])

    @get(
        "/revoked-key-reveals",
        operation_id="RevokedKeyReveals",
        responses=problems(*COMMON, 403),
        summary="Reveals made with keys that were later revoked",
    )
    async def revoked_key_reveals(
        self, principal: NamedDependency[Principal], projections: NamedDependency[Projections]
    ) -> EventsAnswer:
        principal.require_admin()
        rows = await compliance.reveals_with_revoked_keys(projections, principal.org)
        return EventsAnswer(events=[audit_event(r) for r in rows])

    @get(
        "/denied-reveals",
        operation_id="DeniedReveals",
        responses=problems(*COMMON, 403),
        summary="Denied reveal attempts in a window",
    )
    async def denied(
        self,
        principal: NamedDependency[Principal],
        projections: NamedDependency[Projections],
        since: TimeParam = None,
        until: TimeParam = None,
    ) -> EventsAnswer:
        principal.require_admin()
        rows = await compliance.denied_reveals(
            projections, principal.org, parse_time(since, "since"), parse_time(until, "until", upper=True)
        )
        return EventsAnswer(events=[audit_event(r) for r in rows])

    @get(
        "/reveal-counts",
        operation_id="RevealCounts",
        responses=problems(*COMMON, 403),
        summary="Reveal counts per actor in a window",
    )
    async def counts(
        self,
        principal: NamedDependency[Principal],
        projections: NamedDependency[Projections],
        since: TimeParam = None,
        until: TimeParam = None,
    ) -> CountsAnswer:
        principal.require_admin()
        rows = await compliance.reveals_per_actor(
            projections, principal.org, parse_time(since, "since"), parse_time(until, "until", upper=True)
        )
        return CountsAnswer(
            actors=[
                ActorCountOut(actor_key_id=r.actor_key_id, actor_label=r.actor_label, reveals=r.reveals) for r in rows
            ]
        )

    @get(
        "/rotations",
        operation_id="RotationsNeedingAttention",
        responses=problems(*COMMON, 403),
        summary="Rotations failing or overdue (all=true: every rotation policy, with its status)",
    )
    async def rotations(
        self,
        request: Request[object, object, State],
        principal: NamedDependency[Principal],
        projections: NamedDependency[Projections],
        everything: Annotated[bool, QueryParameter(
            name="all", description="Every secret with a rotation policy, not only those needing attention")] = False,
    ) -> RotationsAnswer:
        principal.require_admin()
        now = request.app.state.clock()
        found = await compliance.rotations_needing_attention(projections, principal.org, now, everything=everything)
        return RotationsAnswer(rotations=[
            RotationOut(
                name=r.row.name, interval_seconds=r.row.interval_seconds, rotator=r.row.rotator,
                next_due_at=rfc3339(r.row.next_due_at), failures=r.row.failures, in_flight=r.status == "in_flight",
                last_rotated_at=_time_or_none(r.row.last_rotated_at), last_error=r.row.last_error,
                last_error_at=_time_or_none(r.row.last_error_at), status=r.status,
            )
            for r in found
        ])

    @get(
        "/who-could-reveal",
        operation_id="WhoCouldReveal",
        responses=problems(*COMMON, 403),
        summary="Every key that could have revealed a secret at a time (default now): keys, scopes and policy then",
    )
    async def who_could_reveal(
        self,
        request: Request[object, object, State],
        principal: NamedDependency[Principal],
        ledger: NamedDependency[Ledger],
        secret: SecretParam,
        at: TimeParam = None,
    ) -> WhoCouldRevealAnswer:
        principal.require_admin()
        # A time this API printed covers its whole microsecond (the events stamped in it).
        moment = parse_time(at, "at", upper=True)
        found = await who_could_reveal(ledger.recorder, principal.org, secret,
                                       request.app.state.clock() if moment is None else moment)
        policy = Policy(key_ids=tuple(found.policy_key_ids), labels=tuple(found.policy_labels),
                        roles=tuple(found.policy_roles))
        return WhoCouldRevealAnswer(
            secret=found.secret, at=rfc3339(found.at), exists=found.exists, expired=found.expired,
            policy=policy_info(policy),
            keys=[KeyAccessOut(key_id=k.key_id, label=k.label, role=k.role, scope=k.scope) for k in found.keys],
        )

    @get(
        "/connected-apps",
        operation_id="ConnectedAppsNeedingAttention",
        responses=problems(*COMMON, 403),
        summary="Connected apps that are broken or whose last refresh failed (all=true: every connected app)",
    )
    async def connected_apps(
        self,
        principal: NamedDependency[Principal],
        projections: NamedDependency[Projections],
        everything: Annotated[bool, QueryParameter(
            name="all", description="Every connected app, not only those needing attention")] = False,
    ) -> AppList:
        principal.require_admin()
        rows = await projections.list_apps(principal.org)
        return AppList(apps=[
            app_info(r) for r in rows
            if everything or r.state == "broken" or (r.last_error_at or 0) > (r.last_refresh_at or r.connected_at)
        ])
