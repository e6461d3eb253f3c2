"""Automatic rotation: a policy per secret (an interval and a rotator), and the commands the server's
scheduler (or `POST .../rotate`) runs to rotate a due secret.

An attempt is `secret.rotation_started`, then `secret.rotated` (a new version) or
`secret.rotation_failed` (with the reason and when to try again: exponential backoff). A generator's
attempt starts and finishes in one transaction. A webhook's attempt commits its start with a lease,
calls the webhook outside the writer, then commits the outcome; a start whose lease ended without an
outcome (the server stopped mid-call) is recorded as failed ("interrupted") by the next attempt. The
value only ever changes in one event, so no secret is ever half-rotated.
"""

from __future__ import annotations

import secrets

import msgspec
from msgspec import UNSET

from ledger.commands import Context, caller_key, envelope, seal_new
from ledger.crypto import sealed_sha256
from ledger.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from ledger.events import SecretRotated, SecretRotationConfigured, SecretRotationFailed, SecretRotationStarted
from ledger.generator import GeneratorSpec, Rotator, WebhookSpec, generate
from ledger.model import SECOND_NS, SecretState, secret_stream
from ledger.records import DataKeyRow
from ledger.writer import Decision, WriteView

MIN_INTERVAL_SECONDS = 60
MAX_INTERVAL_SECONDS = 10 * 366 * 86_400
RETRY_BASE_SECONDS = 60  # the first retry after a failure; doubled for each further failure
MAX_RETRY_SECONDS = 6 * 3600
DEFAULT_LEASE_SECONDS = 60  # how long a webhook attempt may take before another one may start


def validate_interval(interval_seconds: int) -> int:
    if not MIN_INTERVAL_SECONDS <= interval_seconds <= MAX_INTERVAL_SECONDS:
        raise ValidationError("interval_seconds", f"must be {MIN_INTERVAL_SECONDS} to {MAX_INTERVAL_SECONDS}")
    return interval_seconds


def retry_delay_seconds(failures: int, interval_seconds: int) -> int:
    """Exponential backoff after `failures` failed attempts in a row, never longer than the interval."""
    return int(min(RETRY_BASE_SECONDS * 2 ** min(failures - 1, 30), MAX_RETRY_SECONDS, interval_seconds))


def rotator_kind(rotator: Rotator) -> str:
    return "generator" if isinstance(rotator, GeneratorSpec) else "webhook"


class NotDue(NotFoundError):
    """The secret is not due for rotation (rotated, reconfigured, deleted or in flight meanwhile)."""


async def _live(view: WriteView, org: str, name: str) -> SecretState:
    state = await view.secret(org, name)
    if state is None or not state.exists:
        raise NotDue(f"secret {name!r} not found")
    return state


class RotationPolicy(msgspec.Struct, frozen=True, kw_only=True):
    interval_seconds: int
    rotator: Rotator
    next_due_at: int
    failures: int  # failed attempts since the last new value (0 while one is in flight: see `in_flight`)
    in_flight: bool


def policy_of(state: SecretState) -> RotationPolicy | None:
    rotation = state.rotation
    if rotation is None:
        return None
    in_flight = rotation.lease_until is not None
    return RotationPolicy(
        interval_seconds=rotation.interval_seconds, rotator=rotation.rotator, next_due_at=rotation.next_due_at,
        failures=rotation.attempt - 1 if in_flight else rotation.attempt, in_flight=in_flight,
    )


class ReadRotation(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    ctx: Context
    name: str

    async def decide(self, view: WriteView) -> Decision[RotationPolicy | None]:
        await caller_key(view, self.org, self.ctx)
        state = await view.secret(self.org, self.name)
        if state is None or not state.exists:
            raise NotFoundError(f"secret {self.name!r} not found")
        return Decision(events=[], result=policy_of(state))


class ConfigureRotation(msgspec.Struct, frozen=True, kw_only=True):
    """Set (or with `rotator` None, remove) a secret's rotation policy; the first rotation is due one
    interval from now."""

    org: str
    ctx: Context
    name: str
    interval_seconds: int = 0
    rotator: Rotator | None = None

    async def decide(self, view: WriteView) -> Decision[RotationPolicy | None]:
        caller = await caller_key(view, self.org, self.ctx)
        # Admin keys only: a webhook makes the server call a URL and keep its answer as the value.
        if caller is None or caller.role != "admin":
            raise PermissionDeniedError("only admin keys change rotation policies")
        state = await view.secret(self.org, self.name)
        if state is None or not state.exists:
            raise NotFoundError(f"secret {self.name!r} not found")
        if self.rotator is not None and state.external is not None:
            raise ConflictError(f"secret {self.name!r} is a reference: rotate it in its external manager")
        if self.rotator is not None and state.members:
            raise ConflictError(f"secret {self.name!r} is a pool: update its members instead")
        if self.rotator is None and state.rotation is None:
            return Decision(events=[], result=None)
        next_due_at = None if self.rotator is None else view.at + self.interval_seconds * SECOND_NS
        event = SecretRotationConfigured(
            **envelope(view, self.org, secret_stream(self.org, self.name), state.stream_version + 1, self.ctx),  # type: ignore[arg-type]
            name=self.name, interval_seconds=self.interval_seconds if self.rotator else 0, rotator=self.rotator,
            next_due_at=next_due_at,
        )
        result = None if self.rotator is None or next_due_at is None else RotationPolicy(
            interval_seconds=self.interval_seconds, rotator=self.rotator, next_due_at=next_due_at,
            failures=0, in_flight=state.rotation is not None and state.rotation.lease_until is not None,
        )
        return Decision(events=[event], result=result)


class RotationStarted(msgspec.Struct, frozen=True, kw_only=True):
    """A started attempt: finished already (a generator's), or waiting on the webhook call."""

    name: str
    attempt: int
    finished: SecretRotated | None = None
    webhook: WebhookSpec | None = None
    call_id: str = ""  # the fresh request id the webhook is sent


class StartRotation(msgspec.Struct, frozen=True, kw_only=True):
    """Start an attempt if the secret is due (or `force`, for a rotation asked for by a caller)."""

    org: str
    ctx: Context
    name: str
    force: bool = False
    lease_seconds: int = DEFAULT_LEASE_SECONDS

    async def decide(self, view: WriteView) -> Decision[RotationStarted]:
        if self.force:
            await caller_key(view, self.org, self.ctx)
        state = await _live(view, self.org, self.name)
        rotation = state.rotation
        if rotation is None:
            if self.force:
                raise ConflictError(f"secret {self.name!r} has no rotation policy")
            raise NotDue(f"secret {self.name!r} has no rotation policy")
        stream = secret_stream(self.org, self.name)
        stream_version = state.stream_version
        events: list[SecretRotationFailed | SecretRotationStarted | SecretRotated] = []
        if rotation.lease_until is not None:
            if rotation.lease_until > view.at:
                if self.force:
                    raise ConflictError(f"a rotation of secret {self.name!r} is in progress")
                raise NotDue(f"a rotation of secret {self.name!r} is in progress")
            stream_version += 1
            events.append(SecretRotationFailed(
                **envelope(view, self.org, stream, stream_version, self.ctx),  # type: ignore[arg-type]
                name=self.name, attempt=rotation.attempt, next_attempt_at=view.at,
                reason="interrupted: no outcome before the attempt's lease ended",
            ))
        elif not self.force and view.at < rotation.next_due_at:
            raise NotDue(f"secret {self.name!r} is not due for rotation")
        attempt = rotation.attempt + 1
        call_id = "rot_" + secrets.token_hex(12)
        stream_version += 1
        events.append(SecretRotationStarted(
            **envelope(view, self.org, stream, stream_version, self.ctx),  # type: ignore[arg-type]
            name=self.name, attempt=attempt, rotator=rotator_kind(rotation.rotator),
            lease_until=view.at + self.lease_seconds * SECOND_NS, call_id=call_id,
        ))
        if isinstance(rotation.rotator, WebhookSpec):
            return Decision(events=list(events), result=RotationStarted(
                name=self.name, attempt=attempt, webhook=rotation.rotator, call_id=call_id))
        rotated, sealed, row = _rotated(view, state, stream_version + 1, generate(rotation.rotator), attempt,
                                        "generator", self.ctx)
        events.append(rotated)
        return Decision(events=list(events), sealed=[None] * (len(events) - 1) + [sealed], data_keys=[row],
                        result=RotationStarted(name=self.name, attempt=attempt, finished=rotated))


def _rotated(view: WriteView, state: SecretState, stream_version: int, value: bytes, attempt: int, rotator: str,
             ctx: Context) -> tuple[SecretRotated, str, DataKeyRow]:
    version = state.version + 1
    data_key_id, sealed, row = seal_new(view, value, state.org, state.name, version)
    event = SecretRotated(
        **envelope(view, state.org, secret_stream(state.org, state.name), stream_version, ctx),  # type: ignore[arg-type]
        name=state.name, version=version, scope=state.scope, category=state.category,
        description=state.description, data_key_id=data_key_id, sealed_sha256=sealed_sha256(sealed),
        expires_at=UNSET if state.expires_at is None else state.expires_at, rotator=rotator, attempt=attempt,
    )
    return event, sealed, row


async def _in_flight(view: WriteView, org: str, name: str, attempt: int, call_id: str) -> SecretState:
    """The secret while this very attempt is in flight (a new value, a new policy or a later attempt
    cancels it: its outcome is then refused)."""
    state = await _live(view, org, name)
    rotation = state.rotation
    if rotation is None or rotation.lease_until is None or rotation.call_id != call_id:
        raise ConflictError(f"rotation attempt {attempt} of secret {name!r} is no longer in progress")
    return state


class FinishRotation(msgspec.Struct, frozen=True, kw_only=True):
    """The webhook answered: its value becomes the next version."""

    org: str
    ctx: Context
    name: str
    attempt: int
    call_id: str
    value: bytes

    def __repr__(self) -> str:
        return f"FinishRotation(org={self.org!r}, name={self.name!r}, attempt={self.attempt})"

    async def decide(self, view: WriteView) -> Decision[SecretRotated]:
        state = await _in_flight(view, self.org, self.name, self.attempt, self.call_id)
        rotated, sealed, row = _rotated(view, state, state.stream_version + 1, self.value, self.attempt, "webhook",
                                        self.ctx)
        return Decision(events=[rotated], sealed=[sealed], data_keys=[row], result=rotated)


class FailRotation(msgspec.Struct, frozen=True, kw_only=True):
    """The webhook failed: record why (never a value) and when to try again."""

    org: str
    ctx: Context
    name: str
    attempt: int
    call_id: str
    reason: str

    async def decide(self, view: WriteView) -> Decision[SecretRotationFailed]:
        state = await _in_flight(view, self.org, self.name, self.attempt, self.call_id)
        assert state.rotation is not None
        delay = retry_delay_seconds(self.attempt, state.rotation.interval_seconds)
        failed = SecretRotationFailed(
            **envelope(view, self.org, secret_stream(self.org, self.name), state.stream_version + 1, self.ctx),  # type: ignore[arg-type]
            name=self.name, attempt=self.attempt, reason=self.reason[:1024],
            next_attempt_at=view.at + delay * SECOND_NS,
        )
        return Decision(events=[failed], result=failed)
