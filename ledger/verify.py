"""The offline verifier: checks a ledger's records alone, naming the first bad event and why.

Checks, in order of records: global `seq` contiguity from 1; times never decrease; per-org `org_seq` contiguity from 1;
each `prev_hash` equals the org's previous `hash` (32 zero bytes first); each `hash` recomputed
over the stored bytes; the body decodes; the columns copied out of the body match it; a sealed
value matches the digest its body commits to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import msgspec

from ledger.codec import decode_event
from ledger.errors import IntegrityError
from ledger.events import event_type
from ledger.records import GENESIS_HASH, StoredRecord, chain_hash


class VerifyReport(msgspec.Struct, kw_only=True):
    ok: bool
    checked: int
    orgs: dict[str, tuple[int, str]]  # org -> (head org_seq, head hash hex)
    first_bad_seq: int | None = None
    reason: str = ""

    def summary(self) -> str:
        if self.ok:
            return f"ok: {self.checked} events in {len(self.orgs)} orgs verified"
        return f"FAILED at seq {self.first_bad_seq}: {self.reason} ({self.checked} events checked before it)"


def verify_records(records: Iterable[StoredRecord], *, start_seq: int = 1) -> VerifyReport:
    """Verify records given in seq order. Stops at the first bad record."""
    heads: dict[str, tuple[int, bytes]] = {}
    expected_seq = start_seq
    checked = 0
    last_at = 0

    def fail(record: StoredRecord, reason: str) -> VerifyReport:
        return VerifyReport(
            ok=False, checked=checked, first_bad_seq=record.seq, reason=reason,
            orgs={org: (n, h.hex()) for org, (n, h) in heads.items()},
        )

    for record in records:
        if record.seq != expected_seq:
            reason = (
                f"seq gap: expected {expected_seq}, found {record.seq}"
                if record.seq > expected_seq
                else f"seq out of order: expected {expected_seq}, found {record.seq}"
            )
            return fail(record, reason)
        org_seq, prev = heads.get(record.org, (0, GENESIS_HASH))
        if record.org_seq != org_seq + 1:
            return fail(record, f"org_seq of org {record.org!r} is {record.org_seq}, expected {org_seq + 1}")
        if record.prev_hash != prev:
            return fail(record, "prev_hash does not link to the org's previous event")
        if chain_hash(record.org, record.org_seq, record.prev_hash, record.body) != record.hash:
            return fail(record, "hash does not match the stored bytes")
        problem = _check_body(record)
        if problem:
            return fail(record, problem)
        # The writer never lets time go backwards, so this catches reorderings across orgs, whose
        # chains (and thus hashes) are independent of each other.
        if record.at < last_at:
            return fail(record, "time goes backwards: events are out of order")
        last_at = record.at
        heads[record.org] = (record.org_seq, record.hash)
        expected_seq += 1
        checked += 1
    return VerifyReport(ok=True, checked=checked, orgs={org: (n, h.hex()) for org, (n, h) in heads.items()})


def _check_body(record: StoredRecord) -> str:
    try:
        event = decode_event(record.body)
    except IntegrityError as exc:
        return str(exc)
    mismatches = [
        name
        for name, column, inside in (
            ("org", record.org, event.org),
            ("stream", record.stream, event.stream),
            ("stream_version", record.stream_version, event.stream_version),
            ("type", record.type, event_type(event)),
            ("at", record.at, event.at),
        )
        if column != inside
    ]
    if mismatches:
        return f"columns {', '.join(mismatches)} do not match the event body"
    digest = getattr(event, "sealed_sha256", None)
    if digest is None:
        if record.sealed is not None:
            return "a sealed value is stored with an event that has none"
    elif record.sealed is None or hashlib.sha256(record.sealed.encode()).hexdigest() != digest:
        return "the sealed value does not match the digest in the event body"
    return ""
