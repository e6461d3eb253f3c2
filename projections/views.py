"""Rows of the read models, as the API reads them. Never a value, never a ciphertext."""

from __future__ import annotations

import msgspec

# Rows are cached by the reader; with only atomic fields they need no cyclic GC (`gc=False`).


class SecretMeta(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    org: str
    name: str
    scope: str
    category: str
    description: str
    version: int
    created_at: int
    updated_at: int
    created_by: str
    updated_by: str
    deleted: bool = False
    expires_at: int | None = None
    deleted_at: int | None = None
    destroy_at: int | None = None  # a deleted secret's end of recovery (None: kept until purged)
    external: str | None = None  # the scheme, when the value is a reference to an external manager


class ApiKeyRow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    key_id: str
    org: str
    label: str
    role: str
    scope: str
    created_at: int
    revoked_at: int | None
    last_used_at: int | None


class AuditRow(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    org: str
    at: int
    action: str
    actor_key_id: str
    actor_label: str
    actor_kind: str
    secret: str | None
    version: int | None
    request_id: str
    client_address: str
    user_agent: str
    outcome: str
    detail: str
    actor_subject: str = ""  # a person's subject at the org's identity provider


class VersionRow(msgspec.Struct, frozen=True, kw_only=True):
    """One version of a secret name (never its value)."""

    version: int
    made_at: int
    made_by: str
    how: str  # create, update, rollback, restore
    from_version: int | None  # the version a rollback or restore copied
    destroyed_at: int | None


class RotationRow(msgspec.Struct, frozen=True, kw_only=True):
    """A live secret's rotation schedule (never a value)."""

    name: str
    interval_seconds: int
    rotator: str  # "generator" or "webhook"
    next_due_at: int  # the next attempt: an interval after the last new value, or a failure's retry time
    failures: int  # failed attempts in a row since the last new value
    lease_until: int | None  # while an attempt is in flight
    last_rotated_at: int | None
    last_error: str | None
    last_error_at: int | None


class SshKeyRow(msgspec.Struct, frozen=True, kw_only=True):
    """One of an org's SSH public keys (public: nothing here is secret)."""

    org: str
    ssh_key_id: str
    label: str
    algorithm: str  # the key type: "ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa", ...
    bits: int
    fingerprint: str  # "SHA256:..." as `ssh-keygen -l` prints it
    comment: str
    public_key: str  # the normalized OpenSSH line
    added_at: int
    added_by: str  # the key id that added it


class SessionRow(msgspec.Struct, frozen=True, kw_only=True):
    """A dashboard session: who started it (an API key), when, and when it ended (None: still open)."""

    org: str
    session_id: str
    key_id: str
    started_at: int
    ended_at: int | None


class PersonRow(msgspec.Struct, frozen=True, kw_only=True):
    """A person of the org (joined through single sign-on)."""

    org: str
    member_id: str
    issuer: str
    subject: str
    email: str  # as of the last sign-in
    role: str
    joined_at: int
    removed_at: int | None
    last_sign_in_at: int | None


class SsoRow(msgspec.Struct, frozen=True, kw_only=True):
    """The org's identity provider (the client secret is the keyledger secret named here)."""

    org: str
    issuer: str
    client_id: str
    client_secret_name: str
    allowed_domains: list[str]
    changed_at: int


class AppRow(msgspec.Struct, frozen=True, kw_only=True):
    """A connected app's endpoints and health; never a token."""

    org: str
    name: str
    provider: str
    authorization_url: str
    token_url: str
    client_id: str
    scopes: list[str]
    scope: str
    state: str  # "connected", "broken" or "disconnected"
    token_version: int
    expires_at: int | None
    connected_at: int
    connected_by: str
    last_refresh_at: int | None
    last_error: str | None
    last_error_at: int | None
