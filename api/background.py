"""Work the server does on its own while it serves: destroying deleted secrets whose recovery window
ended, and rewrapping data keys under a new master key. Neither keeps anything in memory that a
restart would need: due destructions are read from the projections each time, and a rotation a
crash interrupted is found from the data keys still under a previous master key."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Literal

import msgspec

from ledger.commands import Context
from ledger.crypto import MasterKey
from ledger.errors import AlreadyExistsError, LedgerError
from ledger.events import Actor
from ledger.keys import resume_rewrap, rewrap_all
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
        except Exception as exc:  # e.g. the database is unavailable for a moment: the task must live on
            log.warning("destroying due secrets failed, retrying in %.0f s: %s", interval, type(exc).__name__)


class Rotation(msgspec.Struct, kw_only=True):
    """The state of this server's master key rotation, as `GET /v1/admin/master-key/rotation` shows it."""

    state: Literal["idle", "running", "done", "failed"] = "idle"
    old_kek_id: str | None = None
    new_kek_id: str | None = None
    done: int = 0
    total: int = 0
    error: str | None = None


class RotationJob:
    """Rewraps every data key under a new master key in the background while the server serves."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.status = Rotation()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, new_key: MasterKey | None) -> Rotation:
        """Rotate to `new_key`; None resumes an interrupted rotation to the configured (current) key."""
        if self.running:
            raise AlreadyExistsError("a master key rotation is already running")
        current = self.ledger.keyring.current
        self.status = Rotation(state="running", old_kek_id=current.kek_id if new_key else None,
                               new_kek_id=(new_key or current).kek_id)
        self._task = asyncio.create_task(self._run(new_key))
        return self.status

    def _progress(self, done: int, total: int) -> None:
        self.status.done, self.status.total = done, total

    async def _run(self, new_key: MasterKey | None) -> None:
        try:
            if new_key is None:
                await resume_rewrap(self.ledger, self._progress)
            else:
                ctx = Context(actor=Actor(key_id="admin", label="admin token", kind="admin"))
                await rewrap_all(self.ledger, new_key, ctx, self._progress)
            self.status.state = "done"
            log.info("master key rotation to %s done: %d data key(s) rewrapped", self.status.new_kek_id,
                     self.status.done)
        except (LedgerError, OSError) as exc:
            # Safe to run again: every chunk committed so far stays rewrapped.
            self.status.state, self.status.error = "failed", f"{type(exc).__name__}: {exc}"
            log.warning("master key rotation failed: %s", self.status.error)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
