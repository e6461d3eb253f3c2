"""Idempotency keys: the same key with the same request returns the first answer and appends nothing.

The first answer is stored in the same transaction as the command's events, so a retry after a
crash either finds both or neither. Answers may carry a value (a reveal) or a new API key, so they
are sealed: a reveal's under the revealed version's data key (destroyed with it), others under the
master key. Records live for `TTL_NS`; the same key with another request is
an `IdempotencyConflictError`. Commands that fail without appending anything store nothing: a retry
simply runs again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from ledger.commands import Revealed
from ledger.crypto import DATA_KEY_PREFIX
from ledger.errors import IdempotencyConflictError, LedgerError, NotFoundError, ValidationError
from ledger.records import IdempotencyRow
from ledger.writer import Command, Decision, WriteView

TTL_NS = 24 * 3600 * 1_000_000_000
MAX_KEY_CHARS = 255


class StoredAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """An answer as the face rendered it: status, headers and body bytes."""

    status: int
    headers: dict[str, str] = {}
    body: bytes = b""

    def __repr__(self) -> str:
        return f"StoredAnswer(status={self.status})"


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """What an idempotent command returns: the answer, and whether it is a replay."""

    answer: StoredAnswer
    replayed: bool


Render = Callable[[Any, LedgerError | None], StoredAnswer]


def validate_idempotency_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_CHARS or not key.isascii() or not key.isprintable():
        raise ValidationError("Idempotency-Key", f"must be 1-{MAX_KEY_CHARS} printable ASCII characters")
    return key


class Idempotent(msgspec.Struct, frozen=True, kw_only=True):
    """Wraps a command: replay a stored answer, refuse a reused key, or run and store the answer."""

    inner: Command[Any]
    scope: str
    key: str
    fingerprint: str
    render: Render

    async def decide(self, view: WriteView) -> Decision[Answer]:
        existing = view.idempotency.get((self.scope, self.key))
        if existing is None:
            existing = await view.recorder.get_idempotency(self.scope, self.key, view.at - TTL_NS)
        context = f"{self.scope}\0{self.key}".encode()
        if existing is not None:
            if existing.fingerprint != self.fingerprint:
                raise IdempotencyConflictError(
                    "this Idempotency-Key was used with a different request; use a new key"
                )
            raw = await _open_answer(view, context, existing)
            stored = msgspec.msgpack.decode(raw, type=StoredAnswer)
            recheck = getattr(self.inner, "recheck", None)
            if recheck is not None and stored.status < 300:
                await recheck(view)  # a value is replayed only to a caller a fresh reveal would answer
            return Decision(events=[], result=Answer(answer=stored, replayed=True))
        decision = await self.inner.decide(view)
        answer = self.render(decision.result, decision.error)
        kek_id, sealed = await _seal_answer(view, context, decision.result, msgspec.msgpack.encode(answer))
        row = IdempotencyRow(scope=self.scope, key=self.key, fingerprint=self.fingerprint, kek_id=kek_id,
                             sealed=sealed, created_at=view.at)
        return Decision(
            events=decision.events, sealed=decision.sealed, data_keys=decision.data_keys,
            drop_data_keys=decision.drop_data_keys, idempotency=[*decision.idempotency, row],
            result=Answer(answer=answer, replayed=False),
        )


async def _seal_answer(view: WriteView, context: bytes, result: object, data: bytes) -> tuple[str, str]:
    """A reveal's answer holds the value: it is sealed by the version's data key (its id stands in
    the `kek_id` column), so that destroying the value destroys the stored answer too. Any other
    answer is sealed by the master key."""
    if isinstance(result, Revealed) and result.data_key_id:
        row = await view.data_key(result.data_key_id)
        if row is not None:
            return row.id, view.opener(row).seal_record(context, data)
    return view.keyring.seal_record(context, data)


async def _open_answer(view: WriteView, context: bytes, row: IdempotencyRow) -> bytes:
    if row.kek_id.startswith(DATA_KEY_PREFIX):
        # From the store, not the writer's cache: another process may have destroyed the key.
        data_key = await view.recorder.get_data_key(row.kek_id)
        if data_key is None:
            raise NotFoundError("the revealed value was destroyed since: this reveal cannot be answered again")
        return view.opener(data_key).open_record(context, row.sealed)
    return view.keyring.open_record(context, row.kek_id, row.sealed)
