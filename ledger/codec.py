"""One codec for events: deterministic JSON bytes in, typed events out.

The bytes are hashed as stored; nothing is ever re-encoded to check a hash.
"""

from __future__ import annotations

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
    except msgspec.DecodeError as exc:
        raise IntegrityError(f"undecodable event body: {exc}") from None
