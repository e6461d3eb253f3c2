"""A secret's life after its first value: rollback to an earlier version, restore after a delete,
destruction when the recovery window ends, and the org setting that sets the window.

Rollback and restore never show the caller the value: the server opens the source version and seals
it again under a new data key as the next version (the AAD binds a sealed value to its version), so
destroying an old version later never takes the current one with it.
"""

from __future__ import annotations

import msgspec
from msgspec import UNSET

from ledger.commands import (
    Context,
    UpsertOutcome,
    caller_key,
    destroy_remaining,
    earlier_version,
    envelope,
    open_version,
    refuse_reference,
    seal_new,
)
from ledger.crypto import sealed_sha256
from ledger.errors import AlreadyExistsError, NotFoundError, PermissionDeniedError, PreconditionFailedError
from ledger.events import OrgSettingsChanged, SecretRestored, SecretRolledBack
from ledger.model import SecretState, org_stream, secret_stream
from ledger.writer import Decision, WriteView


async def _copy_version(
    view: WriteView, state: SecretState, source: int, ctx: Context, kind: type[SecretRolledBack | SecretRestored]
) -> Decision[UpsertOutcome]:
    """A new version (state.version + 1) holding version `source`'s value, with the state's metadata."""
    earlier = await earlier_version(view, state, source)
    if earlier.external is not None:
        refuse_reference(state)
    value = await open_version(view, earlier)  # 404 when destroyed
    version = state.version + 1
    data_key_id, resealed, data_key_row = seal_new(view, value, state.org, state.name, version)
    made = kind(
        **envelope(view, state.org, secret_stream(state.org, state.name), state.stream_version + 1, ctx),  # type: ignore[arg-type]
        name=state.name, version=version, from_version=source, scope=state.scope, category=state.category,
        description=state.description, data_key_id=data_key_id, sealed_sha256=sealed_sha256(resealed),
        expires_at=UNSET if state.expires_at is None else state.expires_at,
        external=UNSET if earlier.external is None else earlier.external,
    )
    return Decision(
        events=[made], sealed=[resealed], data_keys=[data_key_row],
        result=UpsertOutcome(created=False, event=made, created_at=state.created_at, created_by=state.created_by),
    )


class RollbackSecret(msgspec.Struct, frozen=True, kw_only=True):
    """Make a new version with an earlier version's value; the caller never sees the value."""

    org: str
    ctx: Context
    name: str
    version: int
    if_match: int | None = None

    async def decide(self, view: WriteView) -> Decision[UpsertOutcome]:
        await caller_key(view, self.org, self.ctx)
        state = await view.secret(self.org, self.name)
        if state is None or not state.exists:
            raise NotFoundError(f"secret {self.name!r} not found")
        if self.if_match is not None and state.version != self.if_match:
            raise PreconditionFailedError(self.if_match, state.version)
        if not 1 <= self.version <= state.version:
            raise NotFoundError(f"secret {self.name!r} has no version {self.version}")
        return await _copy_version(view, state, self.version, self.ctx, SecretRolledBack)


class RestoreSecret(msgspec.Struct, frozen=True, kw_only=True):
    """Bring a deleted secret back as it was, while its recovery window lasts."""

    org: str
    ctx: Context
    name: str

    async def decide(self, view: WriteView) -> Decision[UpsertOutcome]:
        await caller_key(view, self.org, self.ctx)
        state = await view.secret(self.org, self.name)
        if state is not None and state.exists:
            raise AlreadyExistsError(f"secret {self.name!r} is not deleted")
        recoverable = (
            state is not None and state.version not in state.destroyed_versions
            and (state.destroy_at is None or view.at < state.destroy_at)
        )
        if state is None or not recoverable:
            raise NotFoundError(f"deleted secret {self.name!r} not found (or no longer recoverable)")
        return await _copy_version(view, state, state.version, self.ctx, SecretRestored)


class NothingDue(NotFoundError):
    """The deleted secret is not due for destruction (restored, re-created or destroyed meanwhile)."""


class DestroyDue(msgspec.Struct, frozen=True, kw_only=True):
    """Destroy a deleted secret whose recovery window has ended (run by the server's sweeper)."""

    org: str
    ctx: Context
    name: str

    async def decide(self, view: WriteView) -> Decision[None]:
        state = await view.secret(self.org, self.name)
        if state is None or state.exists or state.destroy_at is None or state.destroy_at > view.at:
            raise NothingDue(f"secret {self.name!r} is not due for destruction")
        destroyed = await destroy_remaining(view, state, self.ctx, state.stream_version + 1, "recovery window ended")
        if destroyed is None:
            raise NothingDue(f"secret {self.name!r} has nothing left to destroy")
        return Decision(events=[destroyed], drop_data_keys=destroyed.data_key_ids)


class OrgSettings(msgspec.Struct, frozen=True, kw_only=True):
    recovery_window_days: int


class ReadOrgSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The org's settings as the write side holds them (defaults until changed); appends nothing."""

    org: str
    ctx: Context

    async def decide(self, view: WriteView) -> Decision[OrgSettings]:
        await caller_key(view, self.org, self.ctx)
        org = await view.org(self.org)
        if org is None:
            raise NotFoundError(f"org {self.org!r} does not exist")
        return Decision(events=[], result=OrgSettings(recovery_window_days=org.recovery_window_days))


class ChangeOrgSettings(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    ctx: Context
    recovery_window_days: int

    async def decide(self, view: WriteView) -> Decision[OrgSettings]:
        caller = await caller_key(view, self.org, self.ctx)
        if caller is None or caller.role != "admin":
            raise PermissionDeniedError("only admin keys change org settings")
        org = await view.org(self.org)
        if org is None:
            raise NotFoundError(f"org {self.org!r} does not exist")
        settings = OrgSettings(recovery_window_days=self.recovery_window_days)
        if org.recovery_window_days == self.recovery_window_days:
            return Decision(events=[], result=settings)
        event = OrgSettingsChanged(
            **envelope(view, self.org, org_stream(self.org), org.stream_version + 1, self.ctx),  # type: ignore[arg-type]
            recovery_window_days=self.recovery_window_days,
        )
        return Decision(events=[event], result=settings)
