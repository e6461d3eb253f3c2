"""Who could reveal a secret at a moment: keys, scopes, the secret and its reveal policy as they were then.

A fold of the org's events up to the moment through the write model's own rules (`evolve_key`,
`evolve_secret`, `scope_covers`, `Policy.allows`), so the answer is what the reveal command would have
decided then, never today's state. It answers permission: a key listed here would have been granted a
reveal at that moment (a pool with no active member would still have refused it as a conflict).
"""

from __future__ import annotations

import msgspec

from ledger.codec import decode_event
from ledger.events import ApiKeyCreated, ApiKeyRevoked
from ledger.model import (
    KeyState,
    MembersState,
    SecretState,
    evolve_key,
    evolve_members,
    evolve_secret,
    members_stream,
    scope_covers,
    secret_stream,
)
from ledger.recorder import Recorder


class KeyAccess(msgspec.Struct, frozen=True, kw_only=True):
    key_id: str
    label: str
    role: str
    scope: str


class RevealAccess(msgspec.Struct, frozen=True, kw_only=True):
    secret: str
    at: int
    exists: bool  # the secret existed (not deleted) at `at`
    expired: bool
    policy_key_ids: list[str]
    policy_labels: list[str]
    policy_roles: list[str]
    keys: list[KeyAccess]  # every active key (and person: role and scope `all`) that could have revealed it, by id


async def who_could_reveal(recorder: Recorder, org: str, name: str, at: int, chunk: int = 5000) -> RevealAccess:
    stream = secret_stream(org, name)
    keys: dict[str, KeyState] = {}
    secret: SecretState | None = None
    people: MembersState | None = None
    people_stream = members_stream(org)
    after = 0
    done = False
    while not done and (records := await recorder.read_org(org, after, chunk)):
        for record in records:
            if record.at > at:
                done = True
                break
            if record.stream == stream and record.stream_version is not None:
                secret = evolve_secret(secret, decode_event(record.body), None)
            elif record.stream == people_stream and record.stream_version is not None:
                people = evolve_members(people, decode_event(record.body))
            elif record.type in ("api_key.created", "api_key.revoked"):
                event = decode_event(record.body)
                assert isinstance(event, ApiKeyCreated | ApiKeyRevoked)
                state = evolve_key(keys.get(event.key_id), event)
                if state is not None:
                    keys[event.key_id] = state
        after = records[-1].org_seq
    exists = secret is not None and secret.exists
    expired = secret is not None and secret.expires_at is not None and at >= secret.expires_at
    # People act like keys of scope `all` with their role (ledger.commands.person_as_key).
    for person in people.people if people is not None else ():
        keys[person.member_id] = person.as_key(org)
    allowed: list[KeyAccess] = []
    if secret is not None and exists and not expired:
        for key in sorted(keys.values(), key=lambda k: k.key_id):
            if not key.revoked and scope_covers(key.scope, secret.scope) and secret.policy.allows(key):
                allowed.append(KeyAccess(key_id=key.key_id, label=key.label, role=key.role, scope=key.scope))
    policy = secret.policy if secret is not None else None
    return RevealAccess(
        secret=name, at=at, exists=exists, expired=expired,
        policy_key_ids=list(policy.key_ids) if policy else [], policy_labels=list(policy.labels) if policy else [],
        policy_roles=list(policy.roles) if policy else [], keys=allowed,
    )
