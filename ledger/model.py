"""The write model: per-stream state folded from events (`evolve`) and the rules (`validate_*`).

Streams: `org:ORG`, `key:KEY_ID`, `secret:ORG/NAME` (names cannot contain '/').
"""

from __future__ import annotations

import re
import unicodedata

import msgspec

from ledger.errors import ValidationError, ValueTooLargeError
from ledger.events import (
    CATEGORIES,
    ROLES,
    SCOPES,
    ApiKeyCreated,
    ApiKeyRevoked,
    Category,
    Event,
    OrgCreated,
    OrgSettingsChanged,
    Role,
    Scope,
    SecretCreated,
    SecretDeleted,
    SecretDestroyed,
    SecretRestored,
    SecretRolledBack,
    SecretUpdated,
    SecretVersionDestroyed,
    when,
)

MAX_NAME_CHARS = 256
MAX_VALUE_BYTES = 65_536
MAX_DESCRIPTION_CHARS = 4096
MAX_LABEL_CHARS = 200
MAX_REASON_CHARS = 1024
ORG_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def org_stream(org: str) -> str:
    return f"org:{org}"


def key_stream(key_id: str) -> str:
    return f"key:{key_id}"


def secret_stream(org: str, name: str) -> str:
    return f"secret:{org}/{name}"


# The write side keeps one state per stream in memory. They hold only strings, numbers and sets of
# numbers, so they cannot be part of a reference cycle: `gc=False` keeps the cyclic collector from
# walking thousands of them on every full collection (a full collection is a pause for every request).


DEFAULT_RECOVERY_WINDOW_DAYS = 30
MAX_RECOVERY_WINDOW_DAYS = 365
DAY_NS = 86_400 * 1_000_000_000


class OrgState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    org: str
    stream_version: int
    recovery_window_days: int = DEFAULT_RECOVERY_WINDOW_DAYS


class KeyState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    key_id: str
    org: str
    label: str
    role: Role
    scope: Scope
    key_sha256: str
    revoked: bool
    stream_version: int


class SecretState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A secret's write-side state: `version` only grows, across deletes and re-creates."""

    org: str
    name: str
    version: int
    exists: bool
    scope: Scope
    category: Category
    description: str
    data_key_id: str
    sealed: str
    destroyed_versions: frozenset[int] = frozenset()
    stream_version: int
    created_at: int = 0
    created_by: str = ""
    expires_at: int | None = None
    destroy_at: int | None = None  # while deleted: when the recovery window ends (None: never)


def evolve_org(state: OrgState | None, event: Event) -> OrgState | None:
    if isinstance(event, OrgCreated):
        return OrgState(org=event.org, stream_version=event.stream_version or 1)
    if isinstance(event, OrgSettingsChanged) and state is not None:
        return msgspec.structs.replace(state, recovery_window_days=event.recovery_window_days,
                                       stream_version=event.stream_version or 0)
    return state


def evolve_key(state: KeyState | None, event: Event) -> KeyState | None:
    if isinstance(event, ApiKeyCreated):
        return KeyState(
            key_id=event.key_id, org=event.org, label=event.label, role=event.role, scope=event.scope,
            key_sha256=event.key_sha256, revoked=False, stream_version=event.stream_version or 1,
        )
    if isinstance(event, ApiKeyRevoked) and state is not None:
        return msgspec.structs.replace(state, revoked=True, stream_version=event.stream_version or 0)
    return state


def evolve_secret(state: SecretState | None, event: Event, sealed: str | None) -> SecretState | None:
    """Fold one state-changing secret event; `sealed` is the record's sealed value, if any."""
    if isinstance(event, SecretCreated | SecretUpdated | SecretRolledBack | SecretRestored):
        return SecretState(
            org=event.org, name=event.name, version=event.version, exists=True, scope=event.scope,
            category=event.category, description=event.description, data_key_id=event.data_key_id,
            sealed=sealed or "", stream_version=event.stream_version or 0,
            destroyed_versions=state.destroyed_versions if state else frozenset(),
            created_at=event.at if isinstance(event, SecretCreated) or state is None else state.created_at,
            created_by=(
                event.actor.key_id if isinstance(event, SecretCreated) or state is None else state.created_by
            ),
            expires_at=when(event.expires_at),
        )
    if isinstance(event, SecretDeleted) and state is not None:
        return msgspec.structs.replace(state, exists=False, stream_version=event.stream_version or 0,
                                       destroy_at=when(event.destroy_at))
    if isinstance(event, SecretDestroyed) and state is not None:
        return msgspec.structs.replace(
            state,
            destroyed_versions=state.destroyed_versions | set(event.versions),
            stream_version=event.stream_version or 0,
            destroy_at=None,
        )
    if isinstance(event, SecretVersionDestroyed) and state is not None:
        return msgspec.structs.replace(
            state,
            destroyed_versions=state.destroyed_versions | {event.version},
            stream_version=event.stream_version or 0,
        )
    return state


def scope_covers(key_scope: str, secret_scope: str) -> bool:
    """A key of scope `all` reveals everything; a key of scope X reveals secrets of scope `all` or X."""
    return key_scope == "all" or secret_scope in ("all", key_scope)


# -- validation -------------------------------------------------------------------------------


def validate_org(org: str) -> str:
    if not isinstance(org, str) or not ORG_PATTERN.fullmatch(org):  # match() lets `$` pass a final "\n"
        raise ValidationError(
            "org", "must be 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
        )
    return org


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValidationError("name", "must not be empty")
    if len(name) > MAX_NAME_CHARS:
        raise ValidationError("name", f"must be at most {MAX_NAME_CHARS} characters")
    if "/" in name:
        raise ValidationError("name", "must not contain '/'")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name):
        raise ValidationError("name", "must not contain control characters")
    return name


def validate_value(value: bytes) -> bytes:
    if len(value) > MAX_VALUE_BYTES:
        raise ValueTooLargeError("value", f"must be at most {MAX_VALUE_BYTES} bytes of UTF-8, got {len(value)}")
    return value


def validate_scope(scope: str, field: str = "scope") -> Scope:
    if scope not in SCOPES:
        raise ValidationError(field, f"must be one of {', '.join(SCOPES)}")
    return scope  # type: ignore[return-value]


def validate_category(category: str) -> Category:
    if category not in CATEGORIES:
        raise ValidationError("category", f"must be one of {', '.join(CATEGORIES)}")
    return category  # type: ignore[return-value]


def validate_role(role: str) -> Role:
    if role not in ROLES:
        raise ValidationError("role", f"must be one of {', '.join(ROLES)}")
    return role  # type: ignore[return-value]


def validate_text(text: str, field: str, limit: int) -> str:
    if len(text) > limit:
        raise ValidationError(field, f"must be at most {limit} characters")
    if any(unicodedata.category(ch) == "Cs" for ch in text) or "\0" in text:
        raise ValidationError(field, "must not contain NUL or unpaired surrogates")
    return text
