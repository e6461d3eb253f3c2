"""Work the server does on its own while it serves: destroying deleted secrets whose recovery window
ended. Nothing is kept in memory between runs: what is due is read from the projections each time,
so a restart (or another server on the same database) simply finds it again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ledger.errors import LedgerError
from ledger.service import Ledger
from projections.reader import Projections

log = logging.getLogger("keyledger")


async def destroy_due(ledger: Ledger, projections: Projections, clock: Callable[[], int]) -> int:
    """Destroy every deleted secret whose recovery window has ended by now; returns how many."""
    total = 0
    while due := await projections.due_destructions(clock()):
        destroyed = await ledger.destroy_due(due)
        total += destroyed
        if destroyed == 0:  # each was restored or destroyed meanwhile; the projection catches up
            break
    if total:
        log.info("destroyed %d deleted secret(s) whose recovery window ended", total)
    return total


async def keep_destroying(ledger: Ledger, projections: Projections, clock: Callable[[], int],
                          interval: float) -> None:
    """Run `destroy_due` every `interval` seconds until cancelled; a failed run is retried next time."""
    while True:
        await asyncio.sleep(interval)
        try:
            await destroy_due(ledger, projections, clock)
        except LedgerError as exc:  # e.g. the database is unavailable for a moment
            log.warning("destroying due secrets failed, retrying in %.0f s: %s", interval, type(exc).__name__)
