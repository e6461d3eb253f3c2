"""Per-secret reveal policies: which keys (by id, label glob or role) may reveal a secret, on top of scope.

Only admin keys change a policy (a member must not be able to grant itself access). The reveal
command enforces it (`SecretState.policy.allows`); compliance answers "who could reveal at time T"
by folding the same events (projections/access.py).
"""

from __future__ import annotations

import msgspec

from ledger.commands import Context, caller_key, envelope
from ledger.errors import NotFoundError, PermissionDeniedError, ValidationError
from ledger.events import ROLES, Role, SecretPolicyChanged
from ledger.model import MAX_LABEL_CHARS, Policy, secret_stream, validate_text
from ledger.writer import Decision, WriteView

MAX_POLICY_ENTRIES = 100


def validate_policy(key_ids: list[str], labels: list[str], roles: list[str]) -> Policy:
    for field, entries in (("key_ids", key_ids), ("labels", labels), ("roles", roles)):
        if len(entries) > MAX_POLICY_ENTRIES:
            raise ValidationError(field, f"must have at most {MAX_POLICY_ENTRIES} entries")
        for entry in entries:
            validate_text(entry, field, MAX_LABEL_CHARS)
            if not entry:
                raise ValidationError(field, "entries must not be empty")
    for role in roles:
        if role not in ROLES:
            raise ValidationError("roles", f"entries must be one of {', '.join(ROLES)}")
    # Sorted and without duplicates: the same policy is always the same event body.
    return Policy(key_ids=tuple(sorted(set(key_ids))), labels=tuple(sorted(set(labels))),
                  roles=tuple(sorted(set(roles))))


class ReadPolicy(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    ctx: Context
    name: str

    async def decide(self, view: WriteView) -> Decision[Policy]:
        await caller_key(view, self.org, self.ctx)
        state = await view.secret(self.org, self.name)
        if state is None or not state.exists:
            raise NotFoundError(f"secret {self.name!r} not found")
        return Decision(events=[], result=state.policy)


class SetPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Replace a secret's reveal policy; an empty policy lifts the restriction. Admin keys only."""

    org: str
    ctx: Context
    name: str
    policy: Policy

    async def decide(self, view: WriteView) -> Decision[Policy]:
        caller = await caller_key(view, self.org, self.ctx)
        if caller is None or caller.role != "admin":
            raise PermissionDeniedError("only admin keys change reveal policies")
        state = await view.secret(self.org, self.name)
        if state is None or not state.exists:
            raise NotFoundError(f"secret {self.name!r} not found")
        if state.policy == self.policy:
            return Decision(events=[], result=self.policy)
        roles: list[Role] = list(self.policy.roles)  # type: ignore[arg-type]
        event = SecretPolicyChanged(
            **envelope(view, self.org, secret_stream(self.org, self.name), state.stream_version + 1, self.ctx),  # type: ignore[arg-type]
            name=self.name, key_ids=list(self.policy.key_ids), labels=list(self.policy.labels), roles=roles,
        )
        return Decision(events=[event], result=self.policy)
