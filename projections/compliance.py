"""Compliance questions, each defined once here and served by the API and the CLI alike."""

from __future__ import annotations

import msgspec

from ledger.model import DAY_NS
from projections.reader import (
    AuditFilter,
    Projections,
    expiring_secrets,
    never_revealed,
    query_audit,
    reveal_counts,
    reveals_by_revoked_keys,
    stale_secrets,
)
from projections.views import AuditRow, RotationRow, SecretMeta

MAX_ROWS = 100_000

QUERIES = ("stale-secrets", "reveals", "exposure", "never-revealed", "revoked-key-reveals", "denied-reveals",
           "reveal-counts", "expiring", "rotations", "who-could-reveal")
OVERDUE_GRACE_NS = 5 * 60 * 1_000_000_000  # the scheduler sweeps every minute: later than this is overdue
VERSION_MADE = ("secret.created", "secret.updated", "secret.rolled_back", "secret.restored", "secret.rotated")


class ActorCount(msgspec.Struct, frozen=True, kw_only=True):
    actor_key_id: str
    actor_label: str
    reveals: int


class VersionExposure(msgspec.Struct, frozen=True, kw_only=True):
    secret: str
    version: int
    created_at: int | None
    replaced_at: int | None  # when a newer version or a delete ended it; None while current
    reveals: list[AuditRow]


async def secrets_not_updated(reader: Projections, org: str, days: int, now: int) -> list[SecretMeta]:
    """Live secrets whose value has not changed for `days` days (as of `now`)."""
    return await stale_secrets(reader, org, now - days * DAY_NS)


async def secrets_expiring(reader: Projections, org: str, days: int, now: int) -> list[SecretMeta]:
    """Live secrets that expire within `days` days of `now`, or have expired already; soonest first."""
    return await expiring_secrets(reader, org, now + days * DAY_NS)


async def who_revealed(reader: Projections, org: str, secret: str, since: int | None,
                       until: int | None) -> list[AuditRow]:
    """Every granted reveal of `secret` in the window, with the version each caller saw."""
    return await query_audit(reader, org, AuditFilter(action="secret.revealed", secret=secret, since=since,
                                                       until=until), limit=MAX_ROWS, newest_first=False)


async def version_exposure(reader: Projections, org: str, secret: str, version: int) -> VersionExposure:
    """Every reveal of one version, between its creation and its replacement or deletion."""
    history = await query_audit(reader, org, AuditFilter(secret=secret), limit=MAX_ROWS, newest_first=False)
    created_at = replaced_at = None
    reveals = []
    for row in history:
        ended = created_at is not None and replaced_at is None
        if row.action in VERSION_MADE:
            if row.version == version:
                created_at = row.at
            elif ended and row.version is not None and row.version > version:
                replaced_at = row.at
        elif row.action == "secret.deleted" and row.version == version and ended:
            replaced_at = row.at
        elif row.action == "secret.revealed" and row.version == version:
            reveals.append(row)
    return VersionExposure(secret=secret, version=version, created_at=created_at, replaced_at=replaced_at,
                           reveals=reveals)


async def secrets_never_revealed(reader: Projections, org: str) -> list[SecretMeta]:
    """Live secrets no one has revealed since they were (re-)created."""
    return await never_revealed(reader, org)


async def reveals_with_revoked_keys(reader: Projections, org: str) -> list[AuditRow]:
    """Reveals made with keys that have since been revoked."""
    return await reveals_by_revoked_keys(reader, org)


async def denied_reveals(reader: Projections, org: str, since: int | None, until: int | None) -> list[AuditRow]:
    return await query_audit(reader, org, AuditFilter(action="secret.reveal_denied", since=since, until=until),
                             limit=MAX_ROWS, newest_first=False)


async def reveals_per_actor(reader: Projections, org: str, since: int | None,
                            until: int | None) -> list[ActorCount]:
    return [ActorCount(actor_key_id=key_id, actor_label=label, reveals=count)
            for key_id, label, count in await reveal_counts(reader, org, since, until)]


class RotationStatus(msgspec.Struct, frozen=True, kw_only=True):
    row: RotationRow
    status: str  # "failing", "overdue", "in_flight" or "ok"


def rotation_status(row: RotationRow, now: int) -> str:
    if row.lease_until is not None and row.lease_until > now:
        return "in_flight"
    if row.failures > 0:
        return "failing"
    if now - row.next_due_at > OVERDUE_GRACE_NS:
        return "overdue"
    return "ok"


async def rotations_needing_attention(reader: Projections, org: str, now: int, *,
                                      everything: bool = False) -> list[RotationStatus]:
    """Rotations that are failing (the last attempt failed) or overdue (due for more than five
    minutes, and not in flight); with `everything`, every rotation and its status."""
    found = [RotationStatus(row=row, status=rotation_status(row, now)) for row in await reader.rotations(org)]
    return found if everything else [r for r in found if r.status in ("failing", "overdue")]
