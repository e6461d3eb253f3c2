"""The offline verifier: checks a ledger's records alone, naming the first bad event and why.

Checks, in order of records: global `seq` contiguity from 1; per-org `org_seq` contiguity from 1;
each `prev_hash` equals the org's previous `hash` (32 zero bytes first); each `hash` recomputed
over the stored bytes; the body decodes; the columns copied out of the body match it; a sealed
value matches the digest its body commits to; times never decrease.

The loop works on plain row tuples (the storage order of `records.StoredRecord`) because it is the
hot path of every audit: a verify should cost little more than reading the rows and hashing them.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
from collections.abc import Iterable, Iterator, Sequence

import msgspec

from ledger.checkpoint import Checkpoint, CheckpointError, check_signature
from ledger.codec import decode_event
from ledger.errors import IntegrityError
from ledger.events import Event, event_type
from ledger.recorder import Recorder
from ledger.records import GENESIS_HASH, StoredRecord, chain_hash

# (seq, org, org_seq, stream, stream_version, type, at, body, sealed, prev_hash, hash)
Row = tuple[int, str, int, str, int | None, str, int, bytes, str | None, bytes, bytes]

_DOMAIN = b"keyledger/v1\0"
_PAGE = 5000  # records read at a time by the start-up check


class VerifyReport(msgspec.Struct, kw_only=True):
    ok: bool
    checked: int
    orgs: dict[str, tuple[int, str]]  # org -> (head org_seq, head hash hex)
    first_bad_seq: int | None = None
    reason: str = ""

    def summary(self) -> str:
        if self.ok:
            return f"ok: {self.checked} events in {len(self.orgs)} orgs verified"
        where = f" at seq {self.first_bad_seq}" if self.first_bad_seq is not None else ""
        return f"FAILED{where}: {self.reason} ({self.checked} events checked)"


def record_rows(records: Iterable[StoredRecord]) -> Iterator[Row]:
    for r in records:
        yield (r.seq, r.org, r.org_seq, r.stream, r.stream_version, r.type, r.at, r.body, r.sealed,
               r.prev_hash, r.hash)


def verify_records(
    records: Iterable[StoredRecord], *, start_seq: int = 1, checkpoints: Iterable[Checkpoint] = (),
    trusted_keys: set[str] | None = None,
) -> VerifyReport:
    """Verify records given in seq order. Stops at the first bad record."""
    return verify_rows(record_rows(records), start_seq=start_seq, checkpoints=checkpoints, trusted_keys=trusted_keys)


def verify_rows(
    rows: Iterable[Row], *, start_seq: int = 1, checkpoints: Iterable[Checkpoint] = (),
    trusted_keys: set[str] | None = None,
) -> VerifyReport:
    """Verify row tuples given in seq order. Stops at the first bad one.

    Each checkpoint (kept outside the database) must be validly signed, and the ledger must hold
    its org's event `org_seq` with exactly its head hash.
    """
    heads: dict[str, tuple[int, bytes]] = {}
    expected_heads: dict[tuple[str, int], bytes] = {}
    for checkpoint in checkpoints:
        try:
            check_signature(checkpoint, trusted_keys)
        except CheckpointError as exc:
            return VerifyReport(ok=False, checked=0, orgs={}, reason=str(exc))
        expected_heads[(checkpoint.org, checkpoint.org_seq)] = checkpoint.head
    prefixes: dict[str, bytes] = {}
    expected_seq = start_seq
    checked = 0
    last_at = 0
    sha256 = hashlib.sha256

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
                    or event.at != at or event_type(event) != type_):
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
            if expected_heads:
                wanted = expected_heads.pop((org, org_seq), None)
                if wanted is not None and wanted != digest:
                    return fail(seq, f"org {org!r} differs from its signed checkpoint at org_seq {org_seq}")
            heads[org] = (org_seq, digest)
            expected_seq += 1
            checked += 1
    finally:
        if gc_was_enabled:
            gc.enable()
    report = VerifyReport(ok=True, checked=checked, orgs={org: (n, h.hex()) for org, (n, h) in heads.items()})
    if expected_heads:
        (org, org_seq), _ = min(expected_heads.items(), key=lambda item: item[0][1])
        have = heads.get(org, (0, b""))[0]
        report.ok = False
        report.reason = (
            f"org {org!r} ends at org_seq {have} but a signed checkpoint covers org_seq {org_seq}: "
            "events were removed (a truncated tail, or an older copy of the database)"
        )
    return report


def _column_mismatch(event: object, org: str, stream: str, stream_version: int | None, type_: str, at: int) -> str:
    mismatches = [
        name
        for name, column, inside in (
            ("org", org, getattr(event, "org", None)),
            ("stream", stream, getattr(event, "stream", None)),
            ("stream_version", stream_version, getattr(event, "stream_version", None)),
            ("type", type_, event_type(event) if isinstance(event, Event) else None),
            ("at", at, getattr(event, "at", None)),
        )
        if column != inside
    ]
    return f"columns {', '.join(mismatches)} do not match the event body"


def verify_org_records(records: Iterable[StoredRecord], org: str,
                       checkpoint: Checkpoint | None = None,
                       start: tuple[int, bytes] = (0, GENESIS_HASH)) -> VerifyReport:
    """Verify one org's chain alone (records in org_seq order), and its latest signed checkpoint.

    `start` is (org_seq, hash) of the record just before the first one given: the genesis by default.
    """
    org_seq, prev = start
    checked = 0
    last_seq = 0

    def fail(seq: int, reason: str) -> VerifyReport:
        return VerifyReport(ok=False, checked=checked, first_bad_seq=seq, reason=reason,
                            orgs={org: (org_seq, prev.hex())})

    for r in records:
        if r.org != org or r.seq <= last_seq:
            return fail(r.seq, "an event out of order or of another org")
        if r.org_seq != org_seq + 1:
            return fail(r.seq, f"org_seq is {r.org_seq}, expected {org_seq + 1}")
        if r.prev_hash != prev:
            return fail(r.seq, "prev_hash does not link to the org's previous event")
        if chain_hash(org, r.org_seq, r.prev_hash, r.body) != r.hash:
            return fail(r.seq, "hash does not match the stored bytes")
        try:
            event = decode_event(r.body)
        except IntegrityError as exc:
            return fail(r.seq, str(exc))
        if (event.org != r.org or event.stream != r.stream or event.stream_version != r.stream_version
                or event.at != r.at or event_type(event) != r.type):
            return fail(r.seq, _column_mismatch(event, r.org, r.stream, r.stream_version, r.type, r.at))
        if checkpoint is not None and checkpoint.org_seq == r.org_seq and checkpoint.head != r.hash:
            return fail(r.seq, f"differs from the signed checkpoint at org_seq {r.org_seq}")
        org_seq, prev, last_seq = r.org_seq, r.hash, r.seq
        checked += 1
    report = VerifyReport(ok=True, checked=checked, orgs={org: (org_seq, prev.hex())})
    if checkpoint is not None:
        try:
            check_signature(checkpoint)
        except CheckpointError as exc:
            report.ok, report.reason = False, str(exc)
        else:
            if checkpoint.org != org or checkpoint.org_seq > org_seq:
                report.ok = False
                report.reason = (f"the chain ends at org_seq {org_seq} but a signed checkpoint covers "
                                 f"{checkpoint.org_seq}")
    return report


async def verify_since_checkpoints(recorder: Recorder, trusted_keys: set[str]) -> VerifyReport:
    """Each org's chain from its latest signed checkpoint to its head (all of it without one).

    What a server checks before it starts: the checkpoint must be signed by a trusted key and sit
    on the chain (the stored record at its org_seq has its head hash), and every later record must
    link to it and hash to what it says. Cheap, as checkpoints come every 1000 events per org.
    """
    checked = 0
    orgs: dict[str, tuple[int, str]] = {}
    for org in await recorder.orgs():
        checkpoint = await recorder.latest_checkpoint(org)
        start: tuple[int, bytes] = (0, GENESIS_HASH)
        if checkpoint is not None:
            try:
                check_signature(checkpoint, trusted_keys)
            except CheckpointError as exc:
                return VerifyReport(ok=False, checked=checked, orgs=orgs,
                                    reason=f"the latest checkpoint of org {org!r}: {exc}")
            anchor = await recorder.read_org(org, after_org_seq=checkpoint.org_seq - 1, limit=1)
            if not anchor or anchor[0].org_seq != checkpoint.org_seq or anchor[0].hash != checkpoint.head:
                return VerifyReport(
                    ok=False, checked=checked, orgs=orgs, first_bad_seq=anchor[0].seq if anchor else None,
                    reason=f"org {org!r} differs from its signed checkpoint at org_seq {checkpoint.org_seq}",
                )
            start = (checkpoint.org_seq, checkpoint.head)
        position = start
        while True:
            page = await recorder.read_org(org, after_org_seq=position[0], limit=_PAGE)
            if not page:
                break
            report = verify_org_records(page, org, start=position)
            checked += report.checked
            if not report.ok:
                report.checked, report.orgs = checked, {**orgs, **report.orgs}
                return report
            position = (page[-1].org_seq, page[-1].hash)
        orgs[org] = (position[0], position[1].hex())
    return VerifyReport(ok=True, checked=checked, orgs=orgs)


async def verify_recorder(recorder: Recorder, trusted_keys: set[str] | None = None, *,
                          checkpoints: Sequence[Checkpoint] = (), page: int = _PAGE) -> VerifyReport:
    """Everything `keyledger verify` checks, over a recorder of any backend: every record from seq 1
    (seq contiguity, each org's chain and hashes, bodies, columns, sealed values, times), and each
    org's latest stored checkpoint (validly signed, by one of `trusted_keys` when given, and on the chain),
    plus `checkpoints` kept elsewhere.

    `verify_rows` runs on a worker thread that fetches one page at a time through the event loop, so
    the ledger is never in memory at once.
    """
    checkpoints = list(checkpoints)
    for org in await recorder.orgs():
        checkpoint = await recorder.latest_checkpoint(org)
        if checkpoint is not None:
            checkpoints.append(checkpoint)
    loop = asyncio.get_running_loop()

    def rows() -> Iterator[Row]:
        position = 0
        while chunk := asyncio.run_coroutine_threadsafe(recorder.read_after(position, page), loop).result():
            yield from record_rows(chunk)
            position = chunk[-1].seq

    return await asyncio.to_thread(verify_rows, rows(), checkpoints=checkpoints, trusted_keys=trusted_keys)
