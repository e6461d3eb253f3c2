"""Metadata as it was at a moment: a fold of one org's events up to a point (never the whole ledger).

The same rules as the `secrets` projection, as a pure function of events, so that a test can check
that folding up to the head gives exactly the projection's rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ledger.codec import decode_event
from ledger.events import Event, SecretCreated, SecretDeleted, SecretUpdated
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
                created_by=who, updated_by=who,
            )
        elif isinstance(event, SecretUpdated) and event.name in state:
            old = state[event.name]
            state[event.name] = SecretMeta(
                org=event.org, name=event.name, scope=event.scope, category=event.category,
                description=event.description, version=event.version, created_at=old.created_at,
                updated_at=event.at, created_by=old.created_by, updated_by=who,
            )
        elif isinstance(event, SecretDeleted) and event.name in state:
            old = state[event.name]
            state[event.name] = SecretMeta(
                org=old.org, name=old.name, scope=old.scope, category=old.category, description=old.description,
                version=old.version, created_at=old.created_at, updated_at=old.updated_at,
                created_by=old.created_by, updated_by=old.updated_by, deleted=True,
            )
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
