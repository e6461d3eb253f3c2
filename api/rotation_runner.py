"""Running rotation attempts: the scheduler's sweep over due secrets, and a caller's rotate-now.

A generator's attempt is finished by the writer when it starts. A webhook's attempt is started (and
leased) in the ledger, the webhook is called here, outside the writer, and the outcome is committed:
the new value as the next version, or the failure's reason with its retry time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import httpx

from api.webhook import WebhookError, call_webhook
from ledger.commands import SYSTEM, Context
from ledger.errors import ConflictError, LedgerError, NotFoundError, RotationFailedError
from ledger.events import SecretRotated
from ledger.rotation import FailRotation, FinishRotation, RotationStarted, StartRotation
from ledger.service import Ledger
from projections.reader import Projections

log = logging.getLogger("keyledger")


class RotationSettings:
    def __init__(self, *, webhook_timeout: float = 10.0, max_answer_bytes: int = 6 * 65_536 + 1024) -> None:
        self.webhook_timeout = webhook_timeout
        self.max_answer_bytes = max_answer_bytes

    @property
    def lease_seconds(self) -> int:
        # Long enough for the call and its commit; after it another server may take the attempt over.
        return int(self.webhook_timeout * 3) + 30


async def finish_attempt(ledger: Ledger, client: httpx.AsyncClient, settings: RotationSettings, org: str,
                         started: RotationStarted, ctx: Context = SYSTEM) -> SecretRotated:
    """The attempt's new version; RotationFailedError (recorded as `secret.rotation_failed`) otherwise."""
    if started.finished is not None:
        return started.finished
    assert started.webhook is not None
    try:
        value = await call_webhook(client, started.webhook, org=org, name=started.name, request_id=started.call_id,
                                   timeout=settings.webhook_timeout, max_bytes=settings.max_answer_bytes)
    except WebhookError as exc:
        try:
            await ledger.submit(FailRotation(org=org, ctx=ctx, name=started.name, attempt=started.attempt,
                                             call_id=started.call_id, reason=exc.reason))
        except (ConflictError, NotFoundError):
            pass  # cancelled (a new value or policy, a later attempt) or the secret deleted: nothing to record
        raise RotationFailedError(f"rotation of secret {started.name!r} failed: {exc.reason}") from None
    return await ledger.submit(FinishRotation(org=org, ctx=ctx, name=started.name, attempt=started.attempt,
                                              call_id=started.call_id, value=value))


async def rotate_now(ledger: Ledger, client: httpx.AsyncClient, settings: RotationSettings, ctx: Context,
                     org: str, name: str) -> SecretRotated:
    """A rotation asked for by a caller (`POST /v1/secrets/{name}/rotate`), due or not."""
    started = await ledger.submit(StartRotation(org=org, ctx=ctx, name=name, force=True,
                                                lease_seconds=settings.lease_seconds))
    return await finish_attempt(ledger, client, settings, org, started, ctx)


async def rotate_due(ledger: Ledger, projections: Projections, clock: Callable[[], int], client: httpx.AsyncClient,
                     settings: RotationSettings, limit: int = 100) -> tuple[int, int]:
    """Attempt every secret due now; returns (rotated, failed). Webhooks are called concurrently."""
    due = await projections.due_rotations(clock(), limit)
    if not due:
        return 0, 0
    started = await ledger.due_rotation_attempts(due, lease_seconds=settings.lease_seconds)
    outcomes = await asyncio.gather(
        *(finish_attempt(ledger, client, settings, org, attempt) for org, attempt in started), return_exceptions=True
    )
    failed = sum(isinstance(o, BaseException) for o in outcomes)
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, LedgerError):
            log.warning("rotation attempt failed unexpectedly: %s", type(outcome).__name__)
    if started:
        log.info("rotation sweep: %d rotated, %d failed", len(started) - failed, failed)
    return len(started) - failed, failed


async def keep_rotating(ledger: Ledger, projections: Projections, clock: Callable[[], int],
                        settings: RotationSettings, interval: float) -> None:
    """Run `rotate_due` every `interval` seconds until cancelled; a failed sweep is retried next time."""
    async with httpx.AsyncClient(follow_redirects=False) as client:
        while True:
            try:
                await rotate_due(ledger, projections, clock, client, settings)
            except Exception as exc:  # the database may be unavailable for a moment: the task must live on
                log.warning("the rotation sweep failed, retrying in %.0f s: %s", interval, type(exc).__name__)
            await asyncio.sleep(interval)
