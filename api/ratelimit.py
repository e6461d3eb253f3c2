"""Rate limits per API key and per client address: 429 with `Retry-After` when one is exceeded.

GCRA (the generic cell rate algorithm, a token bucket kept as one number per caller): each caller
has a theoretical arrival time `tat`; a request is allowed while `tat` is at most one period ahead
of now, and each allowed request moves `tat` one interval (period / requests) further. A rested
caller may burst a whole period's requests at once, then gets one request per interval.

Hand-written, on purpose: Litestar's RateLimitMiddleware keys on one identifier, keeps a list of
timestamps per caller in a store and encodes it as JSON on every request (thousands of entries at
generous limits), under one lock. This costs one dict lookup and a few float operations.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable

import msgspec

from ledger.errors import ValidationError

_PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}
_SPEC = re.compile(r"^\s*([1-9][0-9]{0,9})\s*/\s*(second|minute|hour)\s*$")
MAX_CALLERS = 100_000  # callers remembered per limiter; rested ones are forgotten first


class RateLimit(msgspec.Struct, frozen=True):
    requests: int
    period: float  # seconds

    @classmethod
    def parse(cls, text: str, name: str) -> RateLimit | None:
        """`600/minute`, `20/second`, `10000/hour`, or `off` (None)."""
        if text.strip().lower() == "off":
            return None
        match = _SPEC.match(text)
        if match is None:
            raise ValidationError(name, "must look like '600/minute' (per second, minute or hour) or 'off'")
        return cls(requests=int(match.group(1)), period=_PERIODS[match.group(2)])

    def __str__(self) -> str:
        unit = {v: k for k, v in _PERIODS.items()}[self.period]
        return f"{self.requests}/{unit}"


class RateLimiter:
    """One limit over many callers (keys or addresses), in memory, for one process."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.interval = limit.period / limit.requests
        self.clock = clock
        self._tat: dict[str, float] = {}

    def acquire(self, caller: str) -> float:
        """0.0 when the request may go ahead (and it is counted), else the seconds to wait."""
        now = self.clock()
        tat = self._tat.get(caller, now)
        tat = max(tat, now)
        wait = tat + self.interval - self.limit.period - now
        if wait > 1e-9:  # not a rounding error of the float sums
            return wait
        if len(self._tat) >= MAX_CALLERS and caller not in self._tat:
            self._forget_rested(now)
        self._tat[caller] = tat + self.interval
        return 0.0

    def _forget_rested(self, now: float) -> None:
        # A caller whose tat has passed has its whole burst back: forgetting it changes nothing.
        self._tat = {caller: tat for caller, tat in self._tat.items() if tat > now}
        if len(self._tat) >= MAX_CALLERS:  # all busy (a flood of addresses): start again empty
            self._tat.clear()


class RateLimiters(msgspec.Struct, kw_only=True):
    per_key: RateLimiter | None
    per_address: RateLimiter | None

    @classmethod
    def of(cls, per_key: RateLimit | None, per_address: RateLimit | None) -> RateLimiters:
        return cls(per_key=RateLimiter(per_key) if per_key else None,
                   per_address=RateLimiter(per_address) if per_address else None)


def retry_after(wait: float) -> str:
    """`Retry-After` in whole seconds, never 0."""
    return str(max(1, math.ceil(wait)))
