"""Wire shapes of the HTTP API (v1). Request bodies refuse unknown fields; responses never carry a
value except the reveal response."""

from __future__ import annotations

from typing import Annotated

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
    scope: Scope | None = None
    category: Category | None = None
    description: Annotated[str, msgspec.Meta(max_length=4096)] | None = None

    def __repr__(self) -> str:
        return f"UpsertSecretBody(name={self.name!r})"


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


class SecretList(msgspec.Struct, kw_only=True):
    secrets: list[SecretMetadata]
    next_cursor: str | None


class SecretVersion(msgspec.Struct, kw_only=True):
    version: int
    created_at: str
    created_by: str
    how: str  # create or update
    value_exists: bool  # False once the version's data key was destroyed
    destroyed_at: str | None = None


class SecretVersions(msgspec.Struct, kw_only=True):
    name: str
    versions: list[SecretVersion]


class RevealedSecret(msgspec.Struct, kw_only=True):
    name: str
    value: str
    version: int

    def __repr__(self) -> str:
        return f"RevealedSecret(name={self.name!r}, version={self.version})"


class CreateOrgBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    org: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")] | None = None
    name: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")] | None = None


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


class Health(msgspec.Struct, kw_only=True):
    status: str
    position: int | None = None


def rfc3339(ns: int) -> str:
    """UTC time with microseconds, e.g. 2026-11-28T17:38:12.123456Z (one formatter for the whole API)."""
    return _rfc3339(ns)
