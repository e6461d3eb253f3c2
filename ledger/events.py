"""The ledger's events: frozen, tagged msgspec Structs, one union decoded by its `type` tag.

Evolution rules: a new field gets a default; a tag is never renamed or reused; bytes stored by
an older version decode forever (frozen fixtures under tests/fixtures/events_v1).

Every event carries its envelope (org, stream, stream version, time, actor, source, request id)
so that the stored body is the whole event and the hash chain covers all of it. Secret values
never appear here: a value event carries only the SHA-256 of its sealed ciphertext, which is
stored beside the body (see `records.py`), so that exports can omit the ciphertext and still verify.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import UNSET, UnsetType

from ledger.generator import Rotator

ActorKind = Literal["api_key", "admin", "system", "person"]
Role = Literal["admin", "member"]
Scope = Literal["all", "agents", "tools", "sandboxes"]
Category = Literal["provider", "tool", "custom"]

SCOPES: tuple[str, ...] = ("all", "agents", "tools", "sandboxes")
CATEGORIES: tuple[str, ...] = ("provider", "tool", "custom")
ROLES: tuple[str, ...] = ("admin", "member")
MemberState = Literal["active", "disabled"]
Selection = Literal["round_robin", "least_recent"]
SELECTIONS: tuple[str, ...] = ("round_robin", "least_recent")
SessionEndReason = Literal["signed_out"]
AppProvider = Literal["github", "google", "slack", "custom"]
APP_PROVIDERS: tuple[str, ...] = ("github", "google", "slack", "custom")


class Actor(msgspec.Struct, frozen=True, kw_only=True):
    """Who did it: an API key (id and label), the admin token, the system itself, or a person signed in
    through the org's single sign-on (`key_id` the member id, `label` the email, `subject` the provider's)."""

    key_id: str
    label: str = ""
    kind: ActorKind = "api_key"
    subject: str | UnsetType = UNSET  # a person's subject at the identity provider; never encoded when unset


class Source(msgspec.Struct, frozen=True, kw_only=True):
    """Where the request came from."""

    address: str = ""
    user_agent: str = ""


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Envelope shared by every event. `stream_version` is None for events that change no state."""

    org: str
    stream: str
    stream_version: int | None
    at: int  # UTC, integer nanoseconds since the epoch
    actor: Actor
    source: Source = Source()
    request_id: str = ""


class OrgCreated(Event, frozen=True, kw_only=True, tag="org.created"):
    pass


class ApiKeyCreated(Event, frozen=True, kw_only=True, tag="api_key.created"):
    key_id: str
    label: str
    role: Role
    scope: Scope
    key_sha256: str  # hex SHA-256 of the key: the key itself is never stored


class ApiKeyRevoked(Event, frozen=True, kw_only=True, tag="api_key.revoked"):
    key_id: str


class SecretCreated(Event, frozen=True, kw_only=True, tag="secret.created"):
    name: str
    version: int
    scope: Scope
    category: Category
    description: str = ""
    data_key_id: str
    sealed_sha256: str  # hex SHA-256 of the stored `iv:ciphertext:tag` string
    # Fields added after release default to UNSET, which msgspec never encodes: the bytes of events
    # written before they existed stay exactly as they were.
    expires_at: int | UnsetType = UNSET  # after it, reveals are refused (410)
    # The scheme ("aws-sm", "vault-kv") when the sealed value is a reference to an external manager.
    external: str | UnsetType = UNSET


class SecretUpdated(Event, frozen=True, kw_only=True, tag="secret.updated"):
    """A new value (and version); carries the whole metadata as it is after the update."""

    name: str
    version: int
    scope: Scope
    category: Category
    description: str = ""
    data_key_id: str
    sealed_sha256: str
    expires_at: int | UnsetType = UNSET
    external: str | UnsetType = UNSET


class SecretRotated(SecretUpdated, frozen=True, kw_only=True, tag="secret.rotated"):
    """A new value made by the secret's rotator (in every other respect, an update)."""

    rotator: str  # "generator" or "webhook"
    attempt: int  # 1 for the first try of this rotation, more after failures


class SecretDeleted(Event, frozen=True, kw_only=True, tag="secret.deleted"):
    name: str
    version: int  # the version that was current when deleted
    # When its versions are destroyed unless restored first (the org's recovery window after the
    # delete). UNSET: deleted before recovery windows existed; kept until purged.
    destroy_at: int | UnsetType = UNSET


class _VersionCopied(Event, frozen=True, kw_only=True):
    """A new version holding an earlier version's value, sealed again under a new data key."""

    name: str
    version: int
    from_version: int
    scope: Scope
    category: Category
    description: str = ""
    data_key_id: str
    sealed_sha256: str
    expires_at: int | UnsetType = UNSET
    external: str | UnsetType = UNSET


class SecretRolledBack(_VersionCopied, frozen=True, kw_only=True, tag="secret.rolled_back"):
    """A rollback: the value of `from_version`, as the next version."""


class SecretRestored(_VersionCopied, frozen=True, kw_only=True, tag="secret.restored"):
    """A deleted secret back as it was: the value current at the delete, as the next version."""


class SecretDestroyed(Event, frozen=True, kw_only=True, tag="secret.destroyed"):
    """Every remaining version's data key was deleted: those values can never be opened again."""

    name: str
    versions: list[int]
    data_key_ids: list[str]
    reason: str  # "purge" or "recovery window ended"


class OrgSettingsChanged(Event, frozen=True, kw_only=True, tag="org.settings_changed"):
    recovery_window_days: int


class SecretRevealed(Event, frozen=True, kw_only=True, tag="secret.revealed"):
    name: str
    version: int
    key_scope: Scope = "all"
    reason: str = ""
    member: str | UnsetType = UNSET  # the pool member whose value was answered
    external: str | UnsetType = UNSET  # the scheme, when the value was fetched from an external manager


class SecretRevealDenied(Event, frozen=True, kw_only=True, tag="secret.reveal_denied"):
    name: str
    version: int
    key_scope: Scope = "all"
    secret_scope: Scope = "all"
    reason: str = ""  # why it was denied
    request_reason: str = ""  # the reason the caller gave


class SecretRevealFailed(Event, frozen=True, kw_only=True, tag="secret.reveal_failed"):
    """A granted reveal whose external value could not be fetched: no value was answered."""

    name: str
    version: int
    reason: str


class SecretPolicyChanged(Event, frozen=True, kw_only=True, tag="secret.policy_changed"):
    """Who may reveal the secret, on top of the scope rule; all three empty: no restriction."""

    name: str
    key_ids: list[str]
    labels: list[str]  # `*` globs over key labels
    roles: list[Role]


class SecretRotationConfigured(Event, frozen=True, kw_only=True, tag="secret.rotation_configured"):
    """The secret's rotation policy; `rotator` None removes it."""

    name: str
    interval_seconds: int
    rotator: Rotator | None
    next_due_at: int | None


class SecretRotationStarted(Event, frozen=True, kw_only=True, tag="secret.rotation_started"):
    """An attempt began; until `lease_until` no other attempt starts (a webhook call is in flight)."""

    name: str
    attempt: int
    rotator: str
    lease_until: int
    call_id: str = ""  # the fresh request id a webhook is called with


class SecretRotationFailed(Event, frozen=True, kw_only=True, tag="secret.rotation_failed"):
    name: str
    attempt: int
    reason: str  # never a value
    next_attempt_at: int


class SecretMemberAdded(Event, frozen=True, kw_only=True, tag="secret.member_added"):
    """A pool member with its own value (sealed under its own data key, bound to `name/member`)."""

    name: str
    member: str
    label: str = ""
    member_version: int
    data_key_id: str
    sealed_sha256: str


class SecretMemberUpdated(Event, frozen=True, kw_only=True, tag="secret.member_updated"):
    """A member's new value (and label); the previous value's data key is deleted."""

    name: str
    member: str
    label: str = ""
    member_version: int
    data_key_id: str
    sealed_sha256: str
    dropped_data_key_id: str


class SecretMemberStateChanged(Event, frozen=True, kw_only=True, tag="secret.member_state_changed"):
    name: str
    member: str
    state: MemberState
    reason: str = ""


class SecretMemberRemoved(Event, frozen=True, kw_only=True, tag="secret.member_removed"):
    """The member is gone; its value's data key was deleted with this event."""

    name: str
    member: str
    data_key_id: str


class SecretPoolConfigured(Event, frozen=True, kw_only=True, tag="secret.pool_configured"):
    name: str
    selection: Selection


class MasterKeyRotated(Event, frozen=True, kw_only=True, tag="master_key.rotated"):
    """Every data key was rewrapped: key ids only, never keys."""

    old_kek_id: str
    new_kek_id: str
    data_keys: int


class SecretVersionDestroyed(Event, frozen=True, kw_only=True, tag="secret.version_destroyed"):
    """One version's data key was deleted: its value can never be opened again."""

    name: str
    version: int
    data_key_id: str


class SshKeyAdded(Event, frozen=True, kw_only=True, tag="ssh_key.added"):
    """An SSH public key for access to the org's sandboxes (public: nothing here is secret)."""

    ssh_key_id: str
    label: str
    algorithm: str  # the key type: "ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa", ...
    bits: int
    fingerprint: str  # "SHA256:..." as `ssh-keygen -l` prints it
    comment: str
    public_key: str  # the normalized OpenSSH line: "type base64 [comment]"


class SshKeyRemoved(Event, frozen=True, kw_only=True, tag="ssh_key.removed"):
    ssh_key_id: str


class SessionStarted(Event, frozen=True, kw_only=True, tag="session.started"):
    """A dashboard session signed in with an API key (the actor)."""

    session_id: str


class SessionEnded(Event, frozen=True, kw_only=True, tag="session.ended"):
    session_id: str
    reason: SessionEndReason


class MemberJoined(Event, frozen=True, kw_only=True, tag="member.joined"):
    """A person's first single sign-on into the org (the first person of an org is an admin)."""

    member_id: str
    issuer: str
    subject: str
    email: str
    role: Role


class MemberRoleChanged(Event, frozen=True, kw_only=True, tag="member.role_changed"):
    member_id: str
    role: Role


class MemberRemoved(Event, frozen=True, kw_only=True, tag="member.removed"):
    member_id: str


class SsoConfigured(Event, frozen=True, kw_only=True, tag="sso.configured"):
    """The org's OpenID Connect provider. The client secret is a keyledger secret, named here."""

    issuer: str
    client_id: str
    client_secret_name: str
    allowed_domains: list[str]


class SsoRemoved(Event, frozen=True, kw_only=True, tag="sso.removed"):
    pass


class AppConnected(Event, frozen=True, kw_only=True, tag="app.connected"):
    """An OAuth 2.0 connection. Its client secret and tokens are sealed together (stored beside the body,
    committed to by `sealed_sha256`), never in the body."""

    name: str
    provider: AppProvider
    authorization_url: str
    token_url: str
    client_id: str
    scopes: list[str]
    scope: Scope
    token_version: int
    data_key_id: str
    sealed_sha256: str
    expires_at: int | None  # the access token's expiry (UTC ns); None: the provider set none
    refreshable: bool  # a refresh token was issued


class AppTokenRefreshed(Event, frozen=True, kw_only=True, tag="app.token_refreshed"):
    name: str
    token_version: int
    data_key_id: str
    sealed_sha256: str
    expires_at: int | None
    refreshable: bool


class AppRefreshFailed(Event, frozen=True, kw_only=True, tag="app.refresh_failed"):
    """A refresh that failed: `error` is the provider's OAuth error code or the kind of failure (never a
    token); `broken` when the grant is gone (the connection must be made again)."""

    name: str
    error: str
    broken: bool


class AppDisconnected(Event, frozen=True, kw_only=True, tag="app.disconnected"):
    name: str


class AppTokenRevealed(Event, frozen=True, kw_only=True, tag="app.token_revealed"):
    """An access token handed out (changes no state, like a secret reveal)."""

    name: str
    token_version: int
    reason: str = ""


class AppTokenDenied(Event, frozen=True, kw_only=True, tag="app.token_denied"):
    """A token refused by the key's scope (changes no state, like `secret.reveal_denied`)."""

    name: str
    reason: str


AnyEvent = (
    OrgCreated
    | ApiKeyCreated
    | ApiKeyRevoked
    | SecretCreated
    | SecretUpdated
    | SecretDeleted
    | SecretRevealed
    | SecretRevealDenied
    | MasterKeyRotated
    | SecretVersionDestroyed
    | SecretRolledBack
    | SecretRestored
    | SecretDestroyed
    | OrgSettingsChanged
    | SecretRotated
    | SecretRevealFailed
    | SecretPolicyChanged
    | SecretRotationConfigured
    | SecretRotationStarted
    | SecretRotationFailed
    | SecretMemberAdded
    | SecretMemberUpdated
    | SecretMemberStateChanged
    | SecretMemberRemoved
    | SecretPoolConfigured
    | SshKeyAdded
    | SshKeyRemoved
    | SessionStarted
    | SessionEnded
    | MemberJoined
    | MemberRoleChanged
    | MemberRemoved
    | SsoConfigured
    | SsoRemoved
    | AppConnected
    | AppTokenRefreshed
    | AppRefreshFailed
    | AppDisconnected
    | AppTokenRevealed
    | AppTokenDenied
)

EVENT_TYPES: tuple[type[Event], ...] = (
    OrgCreated,
    ApiKeyCreated,
    ApiKeyRevoked,
    SecretCreated,
    SecretUpdated,
    SecretDeleted,
    SecretRevealed,
    SecretRevealDenied,
    MasterKeyRotated,
    SecretVersionDestroyed,
    SecretRolledBack,
    SecretRestored,
    SecretDestroyed,
    OrgSettingsChanged,
    SecretRotated,
    SecretRevealFailed,
    SecretPolicyChanged,
    SecretRotationConfigured,
    SecretRotationStarted,
    SecretRotationFailed,
    SecretMemberAdded,
    SecretMemberUpdated,
    SecretMemberStateChanged,
    SecretMemberRemoved,
    SecretPoolConfigured,
    SshKeyAdded,
    SshKeyRemoved,
    SessionStarted,
    SessionEnded,
    MemberJoined,
    MemberRoleChanged,
    MemberRemoved,
    SsoConfigured,
    SsoRemoved,
    AppConnected,
    AppTokenRefreshed,
    AppRefreshFailed,
    AppDisconnected,
    AppTokenRevealed,
    AppTokenDenied,
)

# Events that make a new version with a value (each stores a sealed value beside its body).
# SecretRotated is a SecretUpdated, so it is one of them.
ValueEvent = SecretCreated | SecretUpdated | SecretRolledBack | SecretRestored
VALUE_EVENTS = (SecretCreated, SecretUpdated, SecretRolledBack, SecretRestored)


def external_of(event: ValueEvent) -> str | None:
    """The scheme of a value event whose value is a reference to an external manager."""
    return None if isinstance(event.external, UnsetType) else event.external


def when(value: int | UnsetType) -> int | None:
    """An optional time field as an int or None."""
    return None if isinstance(value, UnsetType) else value


_TAGS: dict[type, str] = {cls: str(cls.__struct_config__.tag) for cls in EVENT_TYPES}


def event_type(event: Event) -> str:
    """The stable dotted tag of an event, as stored in the `type` column."""
    return _TAGS[type(event)]


def secret_name(event: Event) -> str | None:
    """The secret an event is about, if any."""
    name = getattr(event, "name", None)
    return name if isinstance(name, str) else None


def secret_version(event: Event) -> int | None:
    version = getattr(event, "version", None)
    return version if isinstance(version, int) else None


def outcome_of(event: Event) -> tuple[str, str]:
    """(outcome, detail) of an event, as the audit view and the exports show it."""
    if isinstance(event, SecretRevealDenied):
        return "denied", event.reason
    if isinstance(event, SecretRevealed):
        return "granted", event.reason if isinstance(event.member, UnsetType) else (
            f"member {event.member}" + (f"; {event.reason}" if event.reason else ""))
    if isinstance(event, SecretRolledBack | SecretRestored):
        return "ok", f"from version {event.from_version}"
    if isinstance(event, SecretDestroyed):
        return "ok", f"{event.reason}: versions {', '.join(map(str, event.versions))}"
    if isinstance(event, SecretRevealFailed | SecretRotationFailed):
        return "failed", event.reason
    if isinstance(event, SecretRotated):
        return "ok", f"by {event.rotator}, attempt {event.attempt}"
    if isinstance(event, SecretMemberStateChanged):
        return "ok", f"{event.member} {event.state}" + (f": {event.reason}" if event.reason else "")
    if isinstance(event, SecretMemberAdded | SecretMemberUpdated | SecretMemberRemoved):
        return "ok", f"member {event.member}"
    if isinstance(event, SshKeyAdded):
        return "ok", f"{event.ssh_key_id} {event.algorithm} {event.fingerprint}"
    if isinstance(event, SshKeyRemoved):
        return "ok", event.ssh_key_id
    if isinstance(event, SessionEnded):
        return "ok", event.reason
    if isinstance(event, MemberJoined):
        return "ok", f"{event.member_id} {event.email} as {event.role}"
    if isinstance(event, MemberRoleChanged):
        return "ok", f"{event.member_id} now {event.role}"
    if isinstance(event, MemberRemoved):
        return "ok", event.member_id
    if isinstance(event, SsoConfigured):
        return "ok", f"{event.issuer} for {', '.join(event.allowed_domains)}"
    if isinstance(event, AppConnected):
        return "ok", f"{event.provider}, token {event.token_version}"
    if isinstance(event, AppTokenRefreshed):
        return "ok", f"token {event.token_version}"
    if isinstance(event, AppRefreshFailed):
        return "failed", event.error + ("; broken" if event.broken else "")
    if isinstance(event, AppTokenRevealed):
        return "granted", event.reason
    if isinstance(event, AppTokenDenied):
        return "denied", event.reason
    return "ok", ""
