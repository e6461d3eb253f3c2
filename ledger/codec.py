"""One codec for events: deterministic JSON bytes in, typed events out.

The bytes are hashed as stored; nothing is ever re-encoded to check a hash.
"""

from __future__ import annotations

import re

import msgspec

from ledger.errors import IntegrityError
from ledger.events import AnyEvent, Event

_encoder = msgspec.json.Encoder(order="deterministic")
_decoder = msgspec.json.Decoder(AnyEvent)


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(body: bytes) -> AnyEvent:
    """Decode stored bytes; undecodable bytes are an IntegrityError that names no content."""
    try:
        event: AnyEvent = _decoder.decode(body)
        return event
    except (msgspec.DecodeError, ValueError) as exc:  # ValueError: bytes that are not UTF-8
        raise IntegrityError(f"undecodable event body{_where(exc)}") from None


_PATH = re.compile(r"at `(\$[^`]{0,200})`")


def _where(exc: Exception) -> str:
    """The JSON path of a decoding error, never the stored content msgspec may quote."""
    found = _PATH.search(str(exc))
    return f" at {found.group(1)}" if found else ""
