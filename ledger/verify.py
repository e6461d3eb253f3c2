"""The offline verifier: checks a ledger's records alone, naming the first bad event and why.

Checks, in order of records: global `seq` contiguity from 1; per-org `org_seq` contiguity from 1;
each `prev_hash` equals the org's previous `hash` (32 zero bytes first); each `hash` recomputed
over the stored bytes; the body decodes; the columns copied out of the body match it; a sealed
value matches the digest its body commits to; times never decrease.

The loop works on plain row tuples (the storage order of `records.StoredRecord`) because it is the
hot path of every audit: a verify should cost little more than reading the rows and hashing them.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Iterable, Iterator

import msgspec

from ledger.codec import decode_event
from ledger.errors import IntegrityError
from ledger.events import EVENT_TYPES
from ledger.records import GENESIS_HASH, StoredRecord

# (seq, org, org_seq, stream, stream_version, type, at, body, sealed, prev_hash, hash)
Row = tuple[int, str, int, str, int | None, str, int, bytes, str | None, bytes, bytes]

_TAGS: dict[type, str] = {cls: str(cls.__struct_config__.tag) for cls in EVENT_TYPES}
_DOMAIN = b"keyledger/v1\0"


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


def record_rows(records: Iterable[StoredRecord]) -> Iterator[Row]:
    for r in records:
        yield (r.seq, r.org, r.org_seq, r.stream, r.stream_version, r.type, r.at, r.body, r.sealed,
               r.prev_hash, r.hash)


def verify_records(records: Iterable[StoredRecord], *, start_seq: int = 1) -> VerifyReport:
    """Verify records given in seq order. Stops at the first bad record."""
    return verify_rows(record_rows(records), start_seq=start_seq)


def verify_rows(rows: Iterable[Row], *, start_seq: int = 1) -> VerifyReport:
    """Verify row tuples given in seq order. Stops at the first bad one."""
    heads: dict[str, tuple[int, bytes]] = {}
    prefixes: dict[str, bytes] = {}
    expected_seq = start_seq
    checked = 0
    last_at = 0
    sha256 = hashlib.sha256
    tags = _TAGS

    def fail(seq: int, reason: str) -> VerifyReport:
        return VerifyReport(
            ok=False, checked=checked, first_bad_seq=seq, reason=reason,
            orgs={org: (n, h.hex()) for org, (n, h) in heads.items()},
        )

    gc_was_enabled = gc.isenabled()
    gc.disable()  # one short-lived event per row, no cycles: collection would only cost time
    try:
        for seq, org, org_seq, stream, stream_version, type_, at, body, sealed, prev_hash, digest in rows:
            if seq != expected_seq:
                if seq > expected_seq:
                    return fail(seq, f"seq gap: expected {expected_seq}, found {seq}")
                return fail(seq, f"seq out of order: expected {expected_seq}, found {seq}")
            head = heads.get(org)
            last_org_seq, prev = head if head is not None else (0, GENESIS_HASH)
            if org_seq != last_org_seq + 1:
                return fail(seq, f"org_seq of org {org!r} is {org_seq}, expected {last_org_seq + 1}")
            if prev_hash != prev:
                return fail(seq, "prev_hash does not link to the org's previous event")
            prefix = prefixes.get(org)
            if prefix is None:
                prefix = prefixes[org] = _DOMAIN + org.encode() + b"\0"
            if sha256(prefix + org_seq.to_bytes(8, "big") + prev_hash + body).digest() != digest:
                return fail(seq, "hash does not match the stored bytes")
            try:
                event = decode_event(body)
            except IntegrityError as exc:
                return fail(seq, str(exc))
            if (event.org != org or event.stream != stream or event.stream_version != stream_version
                    or event.at != at or tags[type(event)] != type_):
                return fail(seq, _column_mismatch(event, org, stream, stream_version, type_, at))
            committed = getattr(event, "sealed_sha256", None)
            if committed is None:
                if sealed is not None:
                    return fail(seq, "a sealed value is stored with an event that has none")
            elif sealed is None or sha256(sealed.encode()).hexdigest() != committed:
                return fail(seq, "the sealed value does not match the digest in the event body")
            # The writer never lets time go backwards, so this catches reorderings across orgs, whose
            # chains (and thus hashes) are independent of each other.
            if at < last_at:
                return fail(seq, "time goes backwards: events are out of order")
            last_at = at
            heads[org] = (org_seq, digest)
            expected_seq += 1
            checked += 1
    finally:
        if gc_was_enabled:
            gc.enable()
    return VerifyReport(ok=True, checked=checked, orgs={org: (n, h.hex()) for org, (n, h) in heads.items()})


def _column_mismatch(event: object, org: str, stream: str, stream_version: int | None, type_: str, at: int) -> str:
    mismatches = [
        name
        for name, column, inside in (
            ("org", org, getattr(event, "org", None)),
            ("stream", stream, getattr(event, "stream", None)),
            ("stream_version", stream_version, getattr(event, "stream_version", None)),
            ("type", type_, _TAGS.get(type(event))),
            ("at", at, getattr(event, "at", None)),
        )
        if column != inside
    ]
    return f"columns {', '.join(mismatches)} do not match the event body"
