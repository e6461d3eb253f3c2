"""The write model: per-stream state folded from events (`evolve`) and the rules (`validate_*`).

Streams: `org:ORG`, `key:KEY_ID`, `secret:ORG/NAME` (names cannot contain '/'), `ssh_keys:ORG` (every
SSH key of the org, so that a fingerprint is added once per org), `session:SESSION_ID` (a dashboard session),
`members:ORG` (every person of the org, so that a subject joins once and the first is an admin),
`sso:ORG` (the org's identity provider) and `app:ORG/NAME` (a connected app).
"""

from __future__ import annotations

import re
import unicodedata
from fnmatch import fnmatchcase

import msgspec
from msgspec import UnsetType

from ledger.errors import ValidationError, ValueTooLargeError
from ledger.events import (
    CATEGORIES,
    ROLES,
    SCOPES,
    ApiKeyCreated,
    ApiKeyRevoked,
    AppConnected,
    AppDisconnected,
    AppProvider,
    AppRefreshFailed,
    AppTokenRefreshed,
    Category,
    Event,
    MemberJoined,
    MemberRemoved,
    MemberRoleChanged,
    MemberState,
    OrgCreated,
    OrgSettingsChanged,
    Role,
    Scope,
    SecretCreated,
    SecretDeleted,
    SecretDestroyed,
    SecretMemberAdded,
    SecretMemberRemoved,
    SecretMemberStateChanged,
    SecretMemberUpdated,
    SecretPolicyChanged,
    SecretPoolConfigured,
    SecretRestored,
    SecretRevealed,
    SecretRolledBack,
    SecretRotationConfigured,
    SecretRotationFailed,
    SecretRotationStarted,
    SecretUpdated,
    SecretVersionDestroyed,
    Selection,
    SessionEnded,
    SessionStarted,
    SshKeyAdded,
    SshKeyRemoved,
    SsoConfigured,
    SsoRemoved,
    when,
)
from ledger.generator import Rotator

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


def ssh_keys_stream(org: str) -> str:
    return f"ssh_keys:{org}"


def session_stream(session_id: str) -> str:
    return f"session:{session_id}"


def members_stream(org: str) -> str:
    return f"members:{org}"


def sso_stream(org: str) -> str:
    return f"sso:{org}"


def app_stream(org: str, name: str) -> str:
    return f"app:{org}/{name}"


# The write side keeps one state per stream in memory. They hold only strings, numbers and sets of
# numbers, so they cannot be part of a reference cycle: `gc=False` keeps the cyclic collector from
# walking thousands of them on every full collection (a full collection is a pause for every request).


DEFAULT_RECOVERY_WINDOW_DAYS = 30
MAX_RECOVERY_WINDOW_DAYS = 365
SECOND_NS = 1_000_000_000
DAY_NS = 86_400 * SECOND_NS


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


class Policy(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Who may reveal a secret besides the scope rule: a key matching any entry."""

    key_ids: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()  # `*` globs
    roles: tuple[str, ...] = ()

    @property
    def restricts(self) -> bool:
        return bool(self.key_ids or self.labels or self.roles)

    def allows(self, key: KeyState) -> bool:
        return (
            not self.restricts
            or key.key_id in self.key_ids
            or key.role in self.roles
            or any(fnmatchcase(key.label, pattern) for pattern in self.labels)
        )


class RotationState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    interval_seconds: int
    rotator: Rotator
    next_due_at: int  # the next attempt: interval after the last new value, or a failure's backoff
    attempt: int = 0  # the attempt in flight, or the failures since the last new value
    lease_until: int | None = None  # while an attempt is in flight
    call_id: str = ""  # the attempt in flight: only its outcome is accepted


class Member(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A pool member: its own value (sealed under its own data key), label and state."""

    name: str
    label: str
    state: MemberState
    member_version: int
    data_key_id: str
    sealed: str
    added_at: int
    last_revealed_at: int = 0
    reveals: int = 0


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
    external: str | None = None  # the scheme when the value is a reference to an external manager
    policy: Policy = Policy()
    rotation: RotationState | None = None
    members: tuple[Member, ...] = ()  # in the order they were added
    selection: Selection = "round_robin"
    last_member: str = ""  # the member the last reveal answered


class SshKeyEntry(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One SSH key of an org, as the rules need it: its fingerprint (unique per org) and who added it."""

    ssh_key_id: str
    fingerprint: str
    added_by: str


class SshKeysState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The org's current SSH keys, in the order they were added."""

    org: str
    stream_version: int
    keys: tuple[SshKeyEntry, ...] = ()

    def by_id(self, ssh_key_id: str) -> SshKeyEntry | None:
        return next((k for k in self.keys if k.ssh_key_id == ssh_key_id), None)

    def by_fingerprint(self, fingerprint: str) -> SshKeyEntry | None:
        return next((k for k in self.keys if k.fingerprint == fingerprint), None)


class SessionState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A dashboard session: the org and the API key that started it, and whether it ended."""

    session_id: str
    org: str
    key_id: str
    ended: bool
    stream_version: int


class PersonEntry(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A person of the org: who they are at the identity provider, their role, and whether removed."""

    member_id: str
    issuer: str
    subject: str
    email: str
    role: Role
    removed: bool = False

    def as_key(self, org: str) -> KeyState:
        """A person acts like a key of scope `all` with their role: the member id stands in for a key id
        (a reveal policy may name it), the email for a label."""
        return KeyState(key_id=self.member_id, org=org, label=self.email, role=self.role, scope="all",
                        key_sha256="", revoked=self.removed, stream_version=0)


class MembersState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Every person who ever joined the org, in the order they joined (removed ones stay, marked)."""

    org: str
    stream_version: int
    people: tuple[PersonEntry, ...] = ()

    def by_id(self, member_id: str) -> PersonEntry | None:
        return next((p for p in self.people if p.member_id == member_id), None)

    def by_subject(self, issuer: str, subject: str) -> PersonEntry | None:
        """The person of this identity. Issuers compare as discovery does, a final '/' aside: SSO settings
        saved again with or without it must not make a removed person a new member."""
        issuer = issuer.rstrip("/")
        return next((p for p in self.people if p.issuer.rstrip("/") == issuer and p.subject == subject), None)


class SsoState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The org's OpenID Connect provider (`configured` False after a removal)."""

    org: str
    stream_version: int
    configured: bool
    issuer: str = ""
    client_id: str = ""
    client_secret_name: str = ""
    allowed_domains: tuple[str, ...] = ()


class AppState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A connected app: its endpoints, its sealed client secret and tokens, and its health."""

    org: str
    name: str
    stream_version: int
    connected: bool
    broken: bool
    provider: AppProvider
    authorization_url: str
    token_url: str
    client_id: str
    scopes: tuple[str, ...]
    scope: Scope
    token_version: int
    data_key_id: str
    sealed: str
    expires_at: int | None
    refreshable: bool


def evolve_members(state: MembersState | None, event: Event) -> MembersState | None:
    if isinstance(event, MemberJoined):
        joined = PersonEntry(member_id=event.member_id, issuer=event.issuer, subject=event.subject,
                             email=event.email, role=event.role)
        return MembersState(org=event.org, stream_version=event.stream_version or 0,
                            people=(*(state.people if state is not None else ()), joined))
    if isinstance(event, MemberRoleChanged | MemberRemoved) and state is not None:
        return msgspec.structs.replace(state, stream_version=event.stream_version or 0, people=tuple(
            (msgspec.structs.replace(p, role=event.role) if isinstance(event, MemberRoleChanged)
             else msgspec.structs.replace(p, removed=True)) if p.member_id == event.member_id else p
            for p in state.people
        ))
    return state


def evolve_sso(state: SsoState | None, event: Event) -> SsoState | None:
    if isinstance(event, SsoConfigured):
        return SsoState(org=event.org, stream_version=event.stream_version or 0, configured=True,
                        issuer=event.issuer, client_id=event.client_id, client_secret_name=event.client_secret_name,
                        allowed_domains=tuple(event.allowed_domains))
    if isinstance(event, SsoRemoved):
        return SsoState(org=event.org, stream_version=event.stream_version or 0, configured=False)
    return state


def evolve_app(state: AppState | None, event: Event, sealed: str | None) -> AppState | None:
    if isinstance(event, AppConnected):
        return AppState(
            org=event.org, name=event.name, stream_version=event.stream_version or 0, connected=True, broken=False,
            provider=event.provider, authorization_url=event.authorization_url, token_url=event.token_url,
            client_id=event.client_id, scopes=tuple(event.scopes), scope=event.scope,
            token_version=event.token_version, data_key_id=event.data_key_id, sealed=sealed or "",
            expires_at=event.expires_at, refreshable=event.refreshable,
        )
    if state is None or event.stream_version is None:
        return state
    if isinstance(event, AppTokenRefreshed):
        return msgspec.structs.replace(
            state, stream_version=event.stream_version, broken=False, token_version=event.token_version,
            data_key_id=event.data_key_id, sealed=sealed or "", expires_at=event.expires_at,
            refreshable=event.refreshable,
        )
    if isinstance(event, AppRefreshFailed):
        return msgspec.structs.replace(state, stream_version=event.stream_version,
                                       broken=state.broken or event.broken)
    if isinstance(event, AppDisconnected):
        return msgspec.structs.replace(state, stream_version=event.stream_version, connected=False, broken=False,
                                       data_key_id="", sealed="")
    return state


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


def evolve_ssh_keys(state: SshKeysState | None, event: Event) -> SshKeysState | None:
    if isinstance(event, SshKeyAdded):
        added = SshKeyEntry(ssh_key_id=event.ssh_key_id, fingerprint=event.fingerprint, added_by=event.actor.key_id)
        return SshKeysState(org=event.org, stream_version=event.stream_version or 0,
                            keys=(*(state.keys if state is not None else ()), added))
    if isinstance(event, SshKeyRemoved) and state is not None:
        return msgspec.structs.replace(state, stream_version=event.stream_version or 0,
                                       keys=tuple(k for k in state.keys if k.ssh_key_id != event.ssh_key_id))
    return state


def evolve_session(state: SessionState | None, event: Event) -> SessionState | None:
    if isinstance(event, SessionStarted):
        return SessionState(session_id=event.session_id, org=event.org, key_id=event.actor.key_id, ended=False,
                            stream_version=event.stream_version or 1)
    if isinstance(event, SessionEnded) and state is not None:
        return msgspec.structs.replace(state, ended=True, stream_version=event.stream_version or 0)
    return state


def evolve_secret(state: SecretState | None, event: Event, sealed: str | None) -> SecretState | None:
    """Fold one secret event; `sealed` is the record's sealed value, if any. Reveals of pool members
    are folded too (they steer the member selection); other reveals change nothing."""
    if isinstance(event, SecretCreated | SecretUpdated | SecretRolledBack | SecretRestored):
        kept = state if state is not None else None
        rotation = kept.rotation if kept else None
        if rotation is not None:  # a new value restarts the interval, and ends (or cancels) any attempt
            rotation = msgspec.structs.replace(
                rotation, next_due_at=event.at + rotation.interval_seconds * SECOND_NS, attempt=0,
                lease_until=None, call_id="",
            )
        return SecretState(
            org=event.org, name=event.name, version=event.version, exists=True, scope=event.scope,
            category=event.category, description=event.description, data_key_id=event.data_key_id,
            sealed=sealed or "", stream_version=event.stream_version or 0,
            destroyed_versions=kept.destroyed_versions if kept else frozenset(),
            created_at=event.at if isinstance(event, SecretCreated) or kept is None else kept.created_at,
            created_by=(
                event.actor.key_id if isinstance(event, SecretCreated) or kept is None else kept.created_by
            ),
            expires_at=when(event.expires_at),
            external=None if isinstance(event.external, UnsetType) else event.external,
            policy=kept.policy if kept else Policy(),
            rotation=rotation,
            members=kept.members if kept else (),
            selection=kept.selection if kept else "round_robin",
            last_member=kept.last_member if kept else "",
        )
    if state is None:
        return None
    if isinstance(event, SecretRevealed):
        if isinstance(event.member, UnsetType):
            return state
        member = event.member
        return msgspec.structs.replace(state, last_member=member, members=tuple(
            msgspec.structs.replace(m, last_revealed_at=event.at, reveals=m.reveals + 1) if m.name == member else m
            for m in state.members
        ))
    stream_version = event.stream_version or state.stream_version
    if isinstance(event, SecretDeleted):
        return msgspec.structs.replace(state, exists=False, stream_version=stream_version,
                                       destroy_at=when(event.destroy_at))
    if isinstance(event, SecretDestroyed):
        return msgspec.structs.replace(
            state,
            destroyed_versions=state.destroyed_versions | set(event.versions),
            stream_version=stream_version,
            destroy_at=None,
            # Gone for good: a re-created name starts afresh (members' data keys went with the versions').
            members=(),
            last_member="",
            selection="round_robin",
            policy=Policy(),
            rotation=None,
        )
    if isinstance(event, SecretVersionDestroyed):
        return msgspec.structs.replace(
            state,
            destroyed_versions=state.destroyed_versions | {event.version},
            stream_version=stream_version,
        )
    if isinstance(event, SecretPolicyChanged):
        policy = Policy(key_ids=tuple(event.key_ids), labels=tuple(event.labels), roles=tuple(event.roles))
        return msgspec.structs.replace(state, policy=policy, stream_version=stream_version)
    if isinstance(event, SecretRotationConfigured):
        # A new policy starts afresh: an attempt in flight under the old one is cancelled.
        rotation = None if event.rotator is None or event.next_due_at is None else RotationState(
            interval_seconds=event.interval_seconds, rotator=event.rotator, next_due_at=event.next_due_at,
        )
        return msgspec.structs.replace(state, rotation=rotation, stream_version=stream_version)
    if isinstance(event, SecretRotationStarted) and state.rotation is not None:
        return msgspec.structs.replace(state, stream_version=stream_version, rotation=msgspec.structs.replace(
            state.rotation, attempt=event.attempt, lease_until=event.lease_until, call_id=event.call_id))
    if isinstance(event, SecretRotationFailed) and state.rotation is not None:
        return msgspec.structs.replace(state, stream_version=stream_version, rotation=msgspec.structs.replace(
            state.rotation, attempt=event.attempt, lease_until=None, call_id="", next_due_at=event.next_attempt_at))
    if isinstance(event, SecretMemberAdded):
        added = Member(name=event.member, label=event.label, state="active", member_version=event.member_version,
                       data_key_id=event.data_key_id, sealed=sealed or "", added_at=event.at)
        return msgspec.structs.replace(state, members=(*state.members, added), stream_version=stream_version)
    if isinstance(event, SecretMemberUpdated):
        return msgspec.structs.replace(state, stream_version=stream_version, members=tuple(
            msgspec.structs.replace(m, label=event.label, member_version=event.member_version,
                                    data_key_id=event.data_key_id, sealed=sealed or "")
            if m.name == event.member else m
            for m in state.members
        ))
    if isinstance(event, SecretMemberStateChanged):
        return msgspec.structs.replace(state, stream_version=stream_version, members=tuple(
            msgspec.structs.replace(m, state=event.state) if m.name == event.member else m for m in state.members
        ))
    if isinstance(event, SecretMemberRemoved):
        return msgspec.structs.replace(state, stream_version=stream_version,
                                       members=tuple(m for m in state.members if m.name != event.member))
    if isinstance(event, SecretPoolConfigured):
        return msgspec.structs.replace(state, selection=event.selection, stream_version=stream_version)
    return state


def member_aad_name(name: str, member: str) -> str:
    """The name a member's value is sealed under: unambiguous, since neither part may contain '/'."""
    return f"{name}/{member}"


def pick_member(state: SecretState) -> Member | None:
    """The active member the next reveal answers: round robin after the last one answered, or the
    least recently revealed (ties: the earliest added). None when no member is active."""
    active = [m for m in state.members if m.state == "active"]
    if not active:
        return None
    if state.selection == "least_recent":
        return min(active, key=lambda m: m.last_revealed_at)  # min keeps the first of equals
    names = [m.name for m in state.members]
    start = names.index(state.last_member) + 1 if state.last_member in names else 0
    for offset in range(len(names)):
        candidate = state.members[(start + offset) % len(names)]
        if candidate.state == "active":
            return candidate
    return None


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
