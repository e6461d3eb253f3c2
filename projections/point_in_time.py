"""Metadata as it was at a moment: a fold of one org's events up to a point (never the whole ledger).

The same rules as the `secrets` projection, as a pure function of events, so that a test can check
that folding up to the head gives exactly the projection's rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import msgspec

from ledger.codec import decode_event
from ledger.events import (
    Event,
    SecretCreated,
    SecretDeleted,
    SecretDestroyed,
    SecretRestored,
    SecretRolledBack,
    SecretUpdated,
    external_of,
    when,
)
from ledger.recorder import Recorder
from projections.views import SecretMeta


def fold_secrets(events: Iterable[Event]) -> dict[str, SecretMeta]:
    """Every secret of the events' org by name, deleted ones flagged."""
    state: dict[str, SecretMeta] = {}
    for event in events:
        who = event.actor.key_id
        if isinstance(event, SecretCreated):
            state[event.name] = SecretMeta(
                org=event.org, name=event.name, scope=event.scope, category=event.category,
                description=event.description, version=event.version, created_at=event.at, updated_at=event.at,
                created_by=who, updated_by=who, expires_at=when(event.expires_at), external=external_of(event),
            )
        elif isinstance(event, SecretUpdated | SecretRolledBack | SecretRestored) and event.name in state:
            old = state[event.name]
            state[event.name] = SecretMeta(
                org=event.org, name=event.name, scope=event.scope, category=event.category,
                description=event.description, version=event.version, created_at=old.created_at,
                updated_at=event.at, created_by=old.created_by, updated_by=who, expires_at=when(event.expires_at),
                external=external_of(event),
            )
        elif isinstance(event, SecretDeleted) and event.name in state:
            state[event.name] = msgspec.structs.replace(
                state[event.name], deleted=True, deleted_at=event.at, destroy_at=when(event.destroy_at)
            )
        elif isinstance(event, SecretDestroyed) and event.name in state:
            state[event.name] = msgspec.structs.replace(state[event.name], destroy_at=None)
    return state


def live(state: dict[str, SecretMeta]) -> list[SecretMeta]:
    return sorted((meta for meta in state.values() if not meta.deleted), key=lambda m: m.name.encode())


async def secrets_as_of(recorder: Recorder, org: str, includes: Callable[[int, int], bool],
                        chunk: int = 5000) -> dict[str, SecretMeta]:
    """Fold the org's state-changing events while `includes(seq, at)` holds (both grow with org_seq)."""
    events: list[Event] = []
    after = 0
    while records := await recorder.read_org(org, after, chunk):
        for record in records:
            if not includes(record.seq, record.at):
                return fold_secrets(events)
            if record.stream_version is not None and record.type.startswith("secret."):
                events.append(decode_event(record.body))
        after = records[-1].org_seq
    return fold_secrets(events)
