"""Signed checkpoints of an org's head, in a small text form meant to be kept outside the database.

    keyledger-checkpoint/v1
    org acme
    org_seq 1234
    head 3q2+7w...base64 of the head hash...=
    time 2026-11-28T18:00:00.000000Z
    signature ed25519 <base64 public key> <base64 signature>

The signature covers the first five lines, each ending in a newline. A verifier given a checkpoint
checks its signature, then that the ledger holds event `org_seq` of `org` with exactly that hash:
a truncated tail, a chain rewritten without the signing key, or an older copy of the database put
back all fail that check, which a chain alone cannot see.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import re
from datetime import UTC, datetime

import msgspec

from ledger.crypto import SigningKey, verify_signature
from ledger.errors import LedgerError
from ledger.timefmt import rfc3339

HEADER = "keyledger-checkpoint/v1"
MAX_TEXT = 4096
_ORG = re.compile(r"^[a-z0-9_][a-z0-9_-]{0,62}$")
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


class CheckpointError(LedgerError):
    """A checkpoint is malformed, badly signed, or does not match the ledger."""


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    org_seq: int
    head: bytes
    at: int  # nanoseconds, UTC
    public_key: str
    signature: str

    def body(self) -> bytes:
        return _body(self.org, self.org_seq, self.head, self.at)

    def text(self) -> str:
        return self.body().decode() + f"signature ed25519 {self.public_key} {self.signature}\n"


def _body(org: str, org_seq: int, head: bytes, at: int) -> bytes:
    return (
        f"{HEADER}\norg {org}\norg_seq {org_seq}\nhead {base64.b64encode(head).decode()}\ntime {rfc3339(at)}\n"
    ).encode()


def sign_checkpoint(key: SigningKey, org: str, org_seq: int, head: bytes, at: int) -> Checkpoint:
    # The time is kept to the microsecond, as written, so that text and struct always agree.
    at = at - at % 1000
    return Checkpoint(org=org, org_seq=org_seq, head=head, at=at, public_key=key.public_key,
                      signature=key.sign(_body(org, org_seq, head, at)))


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse strictly; anything else is a CheckpointError with the reason (never another exception)."""
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise CheckpointError("checkpoint: not a checkpoint text (too long or not text)")
    lines = text.split("\n")
    if len(lines) != 7 or lines[6] != "":
        raise CheckpointError("checkpoint: expected six lines, each ending in a newline")
    if lines[0] != HEADER:
        raise CheckpointError(f"checkpoint: first line must be {HEADER!r}")
    fields = {}
    for line, name in zip(lines[1:5], ("org", "org_seq", "head", "time"), strict=True):
        label, _, value = line.partition(" ")
        if label != name or not value:
            raise CheckpointError(f"checkpoint: expected a line {name!r}")
        fields[name] = value
    if not _ORG.match(fields["org"]):
        raise CheckpointError("checkpoint: malformed org")
    if not re.fullmatch(r"[1-9][0-9]{0,17}", fields["org_seq"]):
        raise CheckpointError("checkpoint: org_seq must be a positive integer")
    try:
        head = base64.b64decode(fields["head"], validate=True)
    except (binascii.Error, ValueError):
        raise CheckpointError("checkpoint: head is not base64") from None
    if len(head) != 32 or base64.b64encode(head).decode() != fields["head"]:
        raise CheckpointError("checkpoint: head must be 32 bytes in canonical base64")
    if not _TIME.match(fields["time"]):
        raise CheckpointError("checkpoint: time must be RFC 3339 UTC with microseconds")
    try:
        moment = datetime.strptime(fields["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        raise CheckpointError("checkpoint: time is not a valid date") from None
    at = calendar.timegm(moment.utctimetuple()) * 1_000_000_000 + moment.microsecond * 1000  # no floats
    parts = lines[5].split(" ")
    if len(parts) != 4 or parts[0] != "signature" or parts[1] != "ed25519":
        raise CheckpointError("checkpoint: last line must be 'signature ed25519 <public key> <signature>'")
    checkpoint = Checkpoint(org=fields["org"], org_seq=int(fields["org_seq"]), head=head, at=at,
                            public_key=parts[2], signature=parts[3])
    if checkpoint.body() != "\n".join(lines[:5]).encode() + b"\n":
        raise CheckpointError("checkpoint: not in canonical form")
    return checkpoint


def check_signature(checkpoint: Checkpoint, trusted_keys: set[str] | None = None) -> None:
    """Raise unless the signature is valid (and, when given, by one of the trusted public keys)."""
    if trusted_keys is not None and checkpoint.public_key not in trusted_keys:
        raise CheckpointError("checkpoint: signed by a key that is not trusted")
    if not verify_signature(checkpoint.public_key, checkpoint.body(), checkpoint.signature):
        raise CheckpointError("checkpoint: bad signature")
