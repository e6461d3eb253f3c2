"""One formatter for times as RFC 3339 UTC to the microsecond, shared by exports, checkpoints and the API."""

from __future__ import annotations

from datetime import UTC, datetime

_seconds_cache: dict[int, str] = {}


def rfc3339(ns: int) -> str:
    """e.g. 2026-11-28T17:38:12.123456Z. Events come in time order, so the formatted second is cached."""
    seconds, rest = divmod(ns, 1_000_000_000)
    prefix = _seconds_cache.get(seconds)
    if prefix is None:
        if len(_seconds_cache) > 4096:
            _seconds_cache.clear()
        prefix = _seconds_cache[seconds] = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{prefix}.{rest // 1000:06d}Z"
