"""Wire shapes of the HTTP API (v1). Request bodies refuse unknown fields; responses never carry a
value except the reveal response."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from ledger.events import Category, Role, Scope
from ledger.timefmt import rfc3339 as _rfc3339

SecretName = Annotated[str, msgspec.Meta(min_length=1, max_length=256, description="1-256 characters, no '/'")]


class Problem(msgspec.Struct, kw_only=True):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    request_id: str = ""


class UpsertSecretBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: SecretName
    value: Annotated[str, msgspec.Meta(description="At most 65,536 bytes of UTF-8")]
    # True: `value` is a reference to a value kept in an external manager (aws-sm://REGION/ID[#KEY] or
    # vault-kv://MOUNT/PATH[#KEY]), stored sealed like a value and fetched at each reveal.
    reference: bool = False
    scope: Scope | None = None
    category: Category | None = None
    description: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    # RFC 3339; after it reveals answer 410. Omitted: kept as it is; null: no expiry.
    expires_at: Annotated[str, msgspec.Meta(max_length=64)] | msgspec.UnsetType | None = msgspec.UNSET

    def __repr__(self) -> str:
        return f"UpsertSecretBody(name={self.name!r})"


class RollbackBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # The version whose value becomes the new current version (see GET /v1/secrets/{name}/versions).
    version: Annotated[int, msgspec.Meta(ge=1, le=2**53)]


class OrgSettingsBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # How long a deleted secret stays restorable before its values are destroyed; 0: destroyed at once.
    recovery_window_days: Annotated[int, msgspec.Meta(ge=0, le=365)]


class OrgSettingsInfo(msgspec.Struct, kw_only=True):
    org: str
    recovery_window_days: int


class RevealBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=1024)] = ""
    # An earlier version of the secret (see GET /v1/secrets/{name}/versions); omitted: the current one.
    version: Annotated[int, msgspec.Meta(ge=1, le=2**53)] | None = None


class SecretMetadata(msgspec.Struct, kw_only=True):
    name: str
    scope: Scope
    category: Category
    description: str
    version: int
    created_at: str
    updated_at: str
    created_by: str
    updated_by: str
    expires_at: str | msgspec.UnsetType = msgspec.UNSET  # present only when the secret has an expiry
    external: str | msgspec.UnsetType = msgspec.UNSET  # present only for a reference: its manager's scheme
    # Only in `GET /v1/secrets?deleted=true`: when it was deleted, and when it will be destroyed
    # unless restored first (null: kept until purged).
    deleted_at: str | msgspec.UnsetType = msgspec.UNSET
    destroy_at: str | msgspec.UnsetType | None = msgspec.UNSET


class SecretList(msgspec.Struct, kw_only=True):
    secrets: list[SecretMetadata]
    next_cursor: str | None


class SecretVersion(msgspec.Struct, kw_only=True):
    version: int
    created_at: str
    created_by: str
    how: str  # create, update, rollback or restore
    value_exists: bool  # False once the version's data key was destroyed
    destroyed_at: str | None = None
    from_version: int | None = None  # the version a rollback or restore copied


class SecretVersions(msgspec.Struct, kw_only=True):
    name: str
    versions: list[SecretVersion]


class RevealedSecret(msgspec.Struct, kw_only=True):
    name: str
    value: str
    version: int
    member: str | msgspec.UnsetType = msgspec.UNSET  # a pool's member whose value this is
    external: str | msgspec.UnsetType = msgspec.UNSET  # the external manager the value was fetched from

    def __repr__(self) -> str:
        return f"RevealedSecret(name={self.name!r}, version={self.version})"


class CreateOrgBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    org: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")] | None = None
    name: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")] | None = None


class RotateMasterKeyBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    new_master_key: Annotated[str, msgspec.Meta(max_length=200, description="32 bytes, base64 or 64 hex")]

    def __repr__(self) -> str:
        return "RotateMasterKeyBody(new_master_key=<hidden>)"


class CreatedOrg(msgspec.Struct, kw_only=True):
    org: str
    key_id: str
    api_key: str

    def __repr__(self) -> str:
        return f"CreatedOrg(org={self.org!r}, key_id={self.key_id!r})"


class CreateKeyBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    label: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    scope: Scope = "all"
    role: Role = "member"


class ApiKeyInfo(msgspec.Struct, kw_only=True):
    key_id: str
    label: str
    role: Role
    scope: Scope
    created_at: str
    last_used_at: str | None


class CreatedApiKey(msgspec.Struct, kw_only=True):
    key_id: str
    label: str
    role: Role
    scope: Scope
    created_at: str
    last_used_at: str | None
    api_key: str

    def __repr__(self) -> str:
        return f"CreatedApiKey(key_id={self.key_id!r})"


class ApiKeyList(msgspec.Struct, kw_only=True):
    keys: list[ApiKeyInfo]


class AddSshKeyBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    public_key: Annotated[str, msgspec.Meta(
        min_length=1, max_length=16_384,
        description="One OpenSSH public key line (the .pub file): ssh-ed25519, ecdsa-sha2-nistp256/384/521, "
                    "or ssh-rsa of at least 2048 bits; type, base64 data and an optional comment",
    )]
    # Omitted: the key's comment, else its type.
    label: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None

    def __repr__(self) -> str:  # the text may be anything, a private key sent by mistake included
        return "AddSshKeyBody(public_key=<not shown>)"


class SshKeyInfo(msgspec.Struct, kw_only=True):
    ssh_key_id: str
    label: str
    algorithm: str
    bits: int
    fingerprint: str  # "SHA256:..." as `ssh-keygen -l` prints it
    comment: str
    public_key: str  # the normalized OpenSSH line: "type base64 [comment]"
    added_at: str
    added_by: str


class SshKeyList(msgspec.Struct, kw_only=True):
    ssh_keys: list[SshKeyInfo]


class PersonInfo(msgspec.Struct, kw_only=True):
    member_id: str
    email: str
    subject: str
    issuer: str
    role: Role
    joined_at: str
    last_sign_in_at: str | None


class PersonList(msgspec.Struct, kw_only=True):
    members: list[PersonInfo]


class ChangeRoleBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    role: Role


# What a token request can carry (ledger/oauth.py checks the same before anything is stored).
PRINTABLE_ASCII = "^[ -~]+$"
CLIENT_ID = "^[!-~]+$"
SSO_CLIENT_ID = "^[!-9;-~]+$"


class SsoBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    issuer: Annotated[str, msgspec.Meta(min_length=1, max_length=2048,
                                        description="The OpenID Connect issuer URL (https)")]
    client_id: Annotated[str, msgspec.Meta(
        min_length=1, max_length=255, pattern=SSO_CLIENT_ID,
        description="Printable ASCII without spaces or ':' (the code exchange sends it with HTTP Basic)")]
    client_secret_name: Annotated[str, msgspec.Meta(
        min_length=1, max_length=256, description="The name of the keyledger secret that holds the client secret")]
    allowed_domains: Annotated[list[str], msgspec.Meta(
        min_length=1, max_length=50, description="Email domains whose people may sign in, e.g. example.com")]


class SsoInfo(msgspec.Struct, kw_only=True):
    issuer: str
    client_id: str
    client_secret_name: str
    allowed_domains: list[str]
    changed_at: str


class ConnectAppBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A connection with tokens obtained elsewhere (the dashboard's Connect button obtains them itself)."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    provider: Literal["github", "google", "slack", "custom"] = "custom"
    # Omitted for a preset provider: the preset's.
    authorization_url: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    token_url: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    client_id: Annotated[str, msgspec.Meta(
        min_length=1, max_length=255, pattern=CLIENT_ID,
        description="Printable ASCII without spaces; no ':' for a custom provider (sent with HTTP Basic)")]
    client_secret: Annotated[str, msgspec.Meta(min_length=1, max_length=4096, pattern=PRINTABLE_ASCII)]
    scopes: Annotated[list[str], msgspec.Meta(max_length=50)] = msgspec.field(default_factory=list)
    scope: Scope = "all"
    access_token: Annotated[str, msgspec.Meta(min_length=1, max_length=16_384)]
    refresh_token: Annotated[str, msgspec.Meta(min_length=1, max_length=4096, pattern=PRINTABLE_ASCII)] | None = None
    expires_in: Annotated[int, msgspec.Meta(ge=1, le=10 * 365 * 86_400,
                                            description="Seconds until the access token expires")] | None = None

    def __repr__(self) -> str:
        return f"ConnectAppBody(name={self.name!r})"


class AppInfo(msgspec.Struct, kw_only=True):
    name: str
    provider: str
    state: Literal["connected", "broken"]
    authorization_url: str
    token_url: str
    client_id: str
    scopes: list[str]
    scope: Scope
    token_version: int
    expires_at: str | None
    connected_at: str
    connected_by: str
    last_refresh_at: str | None
    last_error: str | None
    last_error_at: str | None


class AppList(msgspec.Struct, kw_only=True):
    apps: list[AppInfo]


class AppTokenBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=1024)] = ""


class AppTokenAnswer(msgspec.Struct, kw_only=True):
    name: str
    access_token: str
    token_type: str
    expires_at: str | None
    token_version: int
    refreshed: bool

    def __repr__(self) -> str:
        return f"AppTokenAnswer(name={self.name!r})"


class Health(msgspec.Struct, kw_only=True):
    status: str
    position: int | None = None


def rfc3339(ns: int) -> str:
    """UTC time with microseconds, e.g. 2026-11-28T17:38:12.123456Z (one formatter for the whole API)."""
    return _rfc3339(ns)
