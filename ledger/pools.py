"""Key pools: one logical secret holding several members, each with its own value, label and state.

A reveal of a secret with members answers one active member (`model.pick_member`: round robin by
default, or the least recently revealed) and names it in the response and the event. A member's value
is sealed under its own data key and bound to `name/member` and the member's version; a new value or
a removal deletes the old value's data key in the same transaction.
"""

from __future__ import annotations

import unicodedata

import msgspec

from ledger.commands import Context, caller_key, envelope, seal_new
from ledger.crypto import sealed_sha256
from ledger.errors import ConflictError, NotFoundError, ValidationError
from ledger.events import (
    MemberState,
    SecretMemberAdded,
    SecretMemberRemoved,
    SecretMemberStateChanged,
    SecretMemberUpdated,
    SecretPoolConfigured,
    Selection,
)
from ledger.model import Member, SecretState, member_aad_name, secret_stream
from ledger.writer import Decision, WriteView

MAX_MEMBER_CHARS = 128
MAX_MEMBERS = 100


def validate_member_name(member: str) -> str:
    if not member:
        raise ValidationError("member", "must not be empty")
    if len(member) > MAX_MEMBER_CHARS:
        raise ValidationError("member", f"must be at most {MAX_MEMBER_CHARS} characters")
    if "/" in member or any(unicodedata.category(ch) in ("Cc", "Cs") for ch in member):
        raise ValidationError("member", "must not contain '/' or control characters")
    return member


async def _live(view: WriteView, org: str, name: str) -> SecretState:
    state = await view.secret(org, name)
    if state is None or not state.exists:
        raise NotFoundError(f"secret {name!r} not found")
    return state


def _member(state: SecretState, member: str) -> Member:
    for found in state.members:
        if found.name == member:
            return found
    raise NotFoundError(f"secret {state.name!r} has no member {member!r}")


class MemberOutcome(msgspec.Struct, frozen=True, kw_only=True):
    member: Member
    created: bool


class ReadPool(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    ctx: Context
    name: str

    async def decide(self, view: WriteView) -> Decision[SecretState]:
        await caller_key(view, self.org, self.ctx)
        return Decision(events=[], result=await _live(view, self.org, self.name))


class PutMember(msgspec.Struct, frozen=True, kw_only=True):
    """Add a member, or give it a new value (and label); the old value's data key is deleted."""

    org: str
    ctx: Context
    name: str
    member: str
    value: bytes
    label: str | None = None

    def __repr__(self) -> str:
        return f"PutMember(org={self.org!r}, name={self.name!r}, member={self.member!r})"

    async def decide(self, view: WriteView) -> Decision[MemberOutcome]:
        await caller_key(view, self.org, self.ctx)
        state = await _live(view, self.org, self.name)
        if state.external is not None:
            raise ValidationError("member", f"secret {self.name!r} is a reference to an external manager")
        if state.rotation is not None:
            raise ConflictError(f"secret {self.name!r} has a rotation policy: remove it before adding members")
        existing = next((m for m in state.members if m.name == self.member), None)
        if existing is None and len(state.members) >= MAX_MEMBERS:
            raise ValidationError("member", f"a pool holds at most {MAX_MEMBERS} members")
        member_version = existing.member_version + 1 if existing else 1
        data_key_id, sealed, row = seal_new(view, self.value, self.org, member_aad_name(self.name, self.member),
                                            member_version)
        common = envelope(view, self.org, secret_stream(self.org, self.name), state.stream_version + 1, self.ctx)
        label = self.label if self.label is not None else (existing.label if existing else "")
        event: SecretMemberAdded | SecretMemberUpdated
        if existing is None:
            event = SecretMemberAdded(
                **common,  # type: ignore[arg-type]
                name=self.name, member=self.member, label=label, member_version=member_version,
                data_key_id=data_key_id, sealed_sha256=sealed_sha256(sealed),
            )
            drop: list[str] = []
        else:
            event = SecretMemberUpdated(
                **common,  # type: ignore[arg-type]
                name=self.name, member=self.member, label=label, member_version=member_version,
                data_key_id=data_key_id, sealed_sha256=sealed_sha256(sealed),
                dropped_data_key_id=existing.data_key_id,
            )
            drop = [existing.data_key_id]
        member = Member(name=self.member, label=label, state=existing.state if existing else "active",
                        member_version=member_version, data_key_id=data_key_id, sealed="",
                        added_at=existing.added_at if existing else view.at,
                        last_revealed_at=existing.last_revealed_at if existing else 0,
                        reveals=existing.reveals if existing else 0)
        return Decision(events=[event], sealed=[sealed], data_keys=[row], drop_data_keys=drop,
                        result=MemberOutcome(member=member, created=existing is None))


class ChangeMemberState(msgspec.Struct, frozen=True, kw_only=True):
    """Disable a member (say, after its provider rate-limited it) or enable it again."""

    org: str
    ctx: Context
    name: str
    member: str
    state: MemberState
    reason: str = ""

    async def decide(self, view: WriteView) -> Decision[Member]:
        await caller_key(view, self.org, self.ctx)
        secret = await _live(view, self.org, self.name)
        member = _member(secret, self.member)
        changed = msgspec.structs.replace(member, state=self.state, sealed="")
        if member.state == self.state:
            return Decision(events=[], result=changed)
        event = SecretMemberStateChanged(
            **envelope(view, self.org, secret_stream(self.org, self.name), secret.stream_version + 1, self.ctx),  # type: ignore[arg-type]
            name=self.name, member=self.member, state=self.state, reason=self.reason,
        )
        return Decision(events=[event], result=changed)


class RemoveMember(msgspec.Struct, frozen=True, kw_only=True):
    """Remove a member; its value's data key is deleted in the same transaction."""

    org: str
    ctx: Context
    name: str
    member: str

    async def decide(self, view: WriteView) -> Decision[None]:
        await caller_key(view, self.org, self.ctx)
        secret = await _live(view, self.org, self.name)
        member = _member(secret, self.member)
        event = SecretMemberRemoved(
            **envelope(view, self.org, secret_stream(self.org, self.name), secret.stream_version + 1, self.ctx),  # type: ignore[arg-type]
            name=self.name, member=self.member, data_key_id=member.data_key_id,
        )
        return Decision(events=[event], drop_data_keys=[member.data_key_id])


class ConfigurePool(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    ctx: Context
    name: str
    selection: Selection

    async def decide(self, view: WriteView) -> Decision[Selection]:
        await caller_key(view, self.org, self.ctx)
        secret = await _live(view, self.org, self.name)
        if secret.selection == self.selection:
            return Decision(events=[], result=self.selection)
        event = SecretPoolConfigured(
            **envelope(view, self.org, secret_stream(self.org, self.name), secret.stream_version + 1, self.ctx),  # type: ignore[arg-type]
            name=self.name, selection=self.selection,
        )
        return Decision(events=[event], result=self.selection)
