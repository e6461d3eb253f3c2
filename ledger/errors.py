"""Domain errors, defined once here and mapped to HTTP statuses in exactly one place in the api.

Messages never contain a secret value: they name fields, limits and identifiers only.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every error the ledger raises on purpose."""


class ValidationError(LedgerError):
    """A command's input is malformed; `field` names the offending input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ValueTooLargeError(ValidationError):
    """A secret value exceeds the size limit."""


class NotFoundError(LedgerError):
    """The thing does not exist in the caller's org (or belongs to another org: same answer)."""


class AlreadyExistsError(LedgerError):
    """Creating something that exists already (an org, for instance)."""


class PermissionDeniedError(LedgerError):
    """The caller is known but may not do this (role or scope)."""


class RevealDeniedError(PermissionDeniedError):
    """A reveal refused by the key's scope; a `secret.reveal_denied` event was recorded."""


class GoneError(LedgerError):
    """The secret exists but its value may no longer be revealed: it expired (a denied reveal was recorded)."""


class UnauthenticatedError(LedgerError):
    """No valid credential: missing, malformed, unknown or revoked."""


class PreconditionFailedError(LedgerError):
    """A client's expected version (If-Match) is stale."""

    def __init__(self, expected: int, actual: int | None) -> None:
        super().__init__(f"expected version {expected}, current version is {actual}")
        self.expected = expected
        self.actual = actual


class ConcurrencyError(LedgerError):
    """An append's expected stream version was taken by another append."""

    def __init__(self, stream: str, stream_version: int) -> None:
        super().__init__(f"stream {stream!r} already has version {stream_version}")
        self.stream = stream
        self.stream_version = stream_version


class StaleReadError(LedgerError):
    """Another process changed a stream a batch was decided on, or appended an event stamped later
    than the batch (times never go backwards in the ledger): decide again, on fresh state and no
    earlier than `not_before`."""

    def __init__(self, streams: set[str], not_before: int = 0) -> None:
        super().__init__(f"{len(streams)} stream(s) changed by another writer" if streams
                         else "another writer appended a later event")
        self.streams = streams
        self.not_before = not_before


class StoreUnavailableError(LedgerError):
    """The store could not commit (disk full, I/O error, closed); nothing was committed."""


class SchemaVersionError(LedgerError):
    """The database's schema is newer than this program knows: it was written by a later keyledger."""


class StoreLockedError(LedgerError):
    """Another process holds the database open for writing."""


class IntegrityError(LedgerError):
    """Stored data failed authentication or verification."""


class CryptoError(LedgerError):
    """A key or ciphertext is malformed or does not open."""


class MasterKeyError(CryptoError):
    """The master key is missing or malformed."""


class IdempotencyConflictError(LedgerError):
    """An idempotency key was reused with a different request."""


class ExternalSecretError(LedgerError):
    """An external secret manager could not give a referenced value. `reason` is one of
    "not_found", "access_denied", "unavailable" or "invalid"; the message names the reference's
    location and the manager's error code, never a value."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ConflictError(LedgerError):
    """The request cannot apply to the thing's current state (for example: a pool with no active member,
    rotating a secret without a rotation policy)."""


class RotationFailedError(LedgerError):
    """A rotation attempt failed (a `secret.rotation_failed` event was recorded); the reason never holds a value."""


class AppBrokenError(ConflictError):
    """A connected app's grant is gone (a refresh was refused, or the token expired with no way to refresh):
    an admin must connect it again. A `app.refresh_failed` event with `broken` was recorded."""


class AppRefreshFailedError(LedgerError):
    """A connected app's token could not be refreshed now (the provider was unreachable or failed); the
    connection is not broken and a later call retries. The message names the kind of failure only."""
