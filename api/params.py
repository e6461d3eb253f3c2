"""Parsing of query parameters shared by the routes: times, `as_of`, cursors."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime

import msgspec

from ledger.errors import ValidationError

MAX_SEQ = 2**62
_DIGITS = re.compile(r"[0-9]+")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


_LAST_NS = 2**63 - 1 - 999  # the last microsecond of signed 64-bit nanoseconds (2262-04-11)


def parse_time(text: str | None, field: str, *, upper: bool = False) -> int | None:
    """An RFC 3339 time (e.g. 2026-11-28T18:00:00Z) as UTC nanoseconds.

    Times are shown to the microsecond while events are stamped in nanoseconds, so an upper bound
    (`upper=True`) covers its whole microsecond: a time this API printed includes that event.
    """
    if text is None:
        return None
    if len(text) > 64 or not _RFC3339.fullmatch(text):
        raise ValidationError(field, "must be an RFC 3339 time such as 2026-11-28T18:00:00Z")
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValidationError(field, "must be an RFC 3339 time such as 2026-11-28T18:00:00Z") from None
    if moment.tzinfo is None:
        raise ValidationError(field, "must carry a time zone (Z or an offset)")
    # Times are stored as 64-bit nanoseconds: outside that range a query could not even be asked
    # (and near year 1 or 9999, moving to UTC itself overflows).
    out_of_range = ValidationError(field, "must be between 1970-01-01T00:00:00Z and 2262-04-11T23:47:16Z")
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        raise out_of_range from None
    ns = int(moment.replace(microsecond=0).timestamp()) * 1_000_000_000 + moment.microsecond * 1000
    if not 0 <= ns <= _LAST_NS:
        raise out_of_range
    return ns + 999 if upper else ns


class AsOf(msgspec.Struct, frozen=True, kw_only=True):
    """A point of the ledger: a global `seq`, or a time (whichever was given)."""

    seq: int | None = None
    at: int | None = None

    def includes(self, seq: int, at: int) -> bool:
        return (self.seq is None or seq <= self.seq) and (self.at is None or at <= self.at)


def parse_as_of(text: str | None) -> AsOf | None:
    if text is None:
        return None
    if _DIGITS.fullmatch(text):
        if len(text) > 18:
            raise ValidationError("as_of", "seq is too large")
        return AsOf(seq=int(text))
    return AsOf(at=parse_time(text, "as_of", upper=True))


def encode_seq_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def decode_seq_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ValidationError("cursor", "is not a cursor returned by this API") from None
    kind, _, number = text.partition(":")
    if kind != "seq" or not _DIGITS.fullmatch(number) or len(number) > 18 or encode_seq_cursor(int(number)) != cursor:
        raise ValidationError("cursor", "is not a cursor returned by this API")
    return int(number)
