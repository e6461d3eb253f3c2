"""Stored records and the per-org hash chain.

hash = SHA-256("keyledger/v1\\0" || org || "\\0" || org_seq (8 bytes, big-endian) || prev_hash || body)

The global `seq` is not hashed: it depends on other orgs' traffic, and each org's chain must verify
alone. An org's first event links to 32 zero bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import msgspec

from ledger.errors import IntegrityError

GENESIS_HASH = bytes(32)
_DOMAIN = b"keyledger/v1\0"


def chain_hash(org: str, org_seq: int, prev_hash: bytes, body: bytes) -> bytes:
    return hashlib.sha256(
        _DOMAIN + org.encode() + b"\0" + org_seq.to_bytes(8, "big") + prev_hash + body
    ).digest()


class PendingRecord(msgspec.Struct, frozen=True, kw_only=True):
    """An event ready to append: the recorder assigns seq, org_seq and the chain."""

    org: str
    stream: str
    stream_version: int | None
    type: str
    at: int
    body: bytes
    sealed: str | None = None  # the sealed value, for value events; committed to by the body's digest


class StoredRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A committed event as stored."""

    seq: int
    org: str
    org_seq: int
    stream: str
    stream_version: int | None
    type: str
    at: int
    body: bytes
    sealed: str | None
    prev_hash: bytes
    hash: bytes


class IdempotencyRow(msgspec.Struct, frozen=True, kw_only=True):
    """A first answer kept for retries with the same idempotency key (sealed: it may carry a value)."""

    scope: str  # the org, or "admin" for the admin token
    key: str
    fingerprint: str
    kek_id: str
    sealed: str
    created_at: int


class DataKeyRow(msgspec.Struct, frozen=True, kw_only=True, gc=False):  # cached by the writer: no GC walk
    """A wrapped data key: the only mutable state of the ledger."""

    id: str
    kek_id: str
    wrapped: str


def check_continuation(
    seq: int, heads: Mapping[str, tuple[int, bytes]], records: Sequence[StoredRecord]
) -> dict[str, tuple[int, bytes]]:
    """Check that already-hashed `records` continue a log whose last seq is `seq` and whose orgs' heads
    are `heads` (org -> (org_seq, hash); an org missing from it starts at the genesis).

    Returns the heads after the records (of the orgs they touch); raises IntegrityError naming the
    first record that does not continue: a seq that is not the next one, an org_seq or prev_hash that
    does not follow its org's head, or a hash that is not the chain hash of its stored bytes.
    """
    after: dict[str, tuple[int, bytes]] = {}
    for record in records:
        seq += 1
        if record.seq != seq:
            raise IntegrityError(f"record seq {record.seq} does not continue the log: expected seq {seq}")
        org_seq, prev = after.get(record.org) or heads.get(record.org) or (0, GENESIS_HASH)
        if record.org_seq != org_seq + 1:
            raise IntegrityError(
                f"record seq {record.seq}: org_seq of org {record.org!r} is {record.org_seq}, expected {org_seq + 1}"
            )
        if record.prev_hash != prev:
            raise IntegrityError(f"record seq {record.seq}: prev_hash does not link to the org's previous event")
        if chain_hash(record.org, record.org_seq, record.prev_hash, record.body) != record.hash:
            raise IntegrityError(f"record seq {record.seq}: hash does not match the stored bytes")
        after[record.org] = (record.org_seq, record.hash)
    return after
