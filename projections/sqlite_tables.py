"""The projections' tables on SQLite and the statements that fold events into them.

Each projector is a pure function of the events: rebuilding from the first event gives exactly the
rows that incremental updates gave (invariant 6). The store runs these statements inside the
append's transaction and writes each projector's position with them (invariant 7).
"""

from __future__ import annotations

from collections.abc import Sequence

from msgspec import UnsetType

from ledger.events import (
    VALUE_EVENTS,
    ApiKeyCreated,
    ApiKeyRevoked,
    AppConnected,
    AppDisconnected,
    AppRefreshFailed,
    AppTokenRefreshed,
    Event,
    MemberJoined,
    MemberRemoved,
    MemberRoleChanged,
    SecretCreated,
    SecretDeleted,
    SecretDestroyed,
    SecretRestored,
    SecretRolledBack,
    SecretRotated,
    SecretRotationConfigured,
    SecretRotationFailed,
    SecretRotationStarted,
    SecretUpdated,
    SecretVersionDestroyed,
    SessionEnded,
    SessionStarted,
    SshKeyAdded,
    SshKeyRemoved,
    SsoConfigured,
    SsoRemoved,
    event_type,
    external_of,
    outcome_of,
    secret_name,
    secret_version,
    when,
)
from ledger.generator import GeneratorSpec
from ledger.recorder import Projector, Statement
from ledger.records import StoredRecord

Batch = Sequence[tuple[StoredRecord, Event]]


def _coalesce(statements: list[tuple[str, tuple[object, ...]]]) -> list[Statement]:
    """Group consecutive rows of the same SQL into one executemany, keeping their order."""
    out: list[Statement] = []
    for sql, row in statements:
        if out and out[-1].sql == sql:
            out[-1].rows.append(row)
        else:
            out.append(Statement(sql, [row]))
    return out


_SECRET_CREATED = """INSERT INTO secrets (org, name, scope, category, description, version, created_at,
    updated_at, created_by, updated_by, deleted, deleted_at, expires_at, destroy_at, destroyed_at, external)
    VALUES (?,?,?,?,?,?,?,?,?,?,0,NULL,?,NULL,NULL,?)
    ON CONFLICT(org, name) DO UPDATE SET scope=excluded.scope, category=excluded.category,
    description=excluded.description, version=excluded.version, created_at=excluded.created_at,
    updated_at=excluded.updated_at, created_by=excluded.created_by, updated_by=excluded.updated_by,
    deleted=0, deleted_at=NULL, expires_at=excluded.expires_at, destroy_at=NULL, destroyed_at=NULL,
    external=excluded.external"""
# An update, a rollback and a restore all make the new version current (a restore also undeletes).
_SECRET_UPDATED = """UPDATE secrets SET scope=?, category=?, description=?, version=?, updated_at=?,
    updated_by=?, expires_at=?, external=?, deleted=0, deleted_at=NULL, destroy_at=NULL WHERE org=? AND name=?"""
_SECRET_DELETED = "UPDATE secrets SET deleted=1, deleted_at=?, destroy_at=? WHERE org=? AND name=?"
_SECRET_DESTROYED = "UPDATE secrets SET destroyed_at=?, destroy_at=NULL WHERE org=? AND name=?"


class SecretsProjector:
    """Current metadata of every secret per org (deleted ones kept, flagged, with their destruction time)."""

    name = "secrets"

    def schema(self) -> list[str]:
        return [
            """CREATE TABLE IF NOT EXISTS secrets (
                org TEXT NOT NULL, name TEXT NOT NULL, scope TEXT NOT NULL, category TEXT NOT NULL,
                description TEXT NOT NULL, version INTEGER NOT NULL, created_at INTEGER NOT NULL,
                updated_at INTEGER NOT NULL, created_by TEXT NOT NULL, updated_by TEXT NOT NULL,
                deleted INTEGER NOT NULL, deleted_at INTEGER, expires_at INTEGER, destroy_at INTEGER,
                destroyed_at INTEGER, external TEXT,
                PRIMARY KEY (org, name)) WITHOUT ROWID""",
            # The sweeper's question: which deleted secrets are due for destruction.
            "CREATE INDEX IF NOT EXISTS secrets_destroy_at ON secrets(destroy_at) WHERE destroy_at IS NOT NULL",
        ]

    def reset(self) -> list[str]:
        return ["DELETE FROM secrets"]

    def drop(self) -> list[str]:
        return ["DROP TABLE IF EXISTS secrets"]

    def project(self, batch: Batch) -> list[Statement]:
        rows: list[tuple[str, tuple[object, ...]]] = []
        for _, event in batch:
            who = event.actor.key_id
            if isinstance(event, SecretCreated):
                rows.append((_SECRET_CREATED, (
                    event.org, event.name, event.scope, event.category, event.description, event.version,
                    event.at, event.at, who, who, when(event.expires_at), external_of(event),
                )))
            elif isinstance(event, SecretUpdated | SecretRolledBack | SecretRestored):
                rows.append((_SECRET_UPDATED, (
                    event.scope, event.category, event.description, event.version, event.at, who,
                    when(event.expires_at), external_of(event), event.org, event.name,
                )))
            elif isinstance(event, SecretDeleted):
                rows.append((_SECRET_DELETED, (event.at, when(event.destroy_at), event.org, event.name)))
            elif isinstance(event, SecretDestroyed):
                rows.append((_SECRET_DESTROYED, (event.at, event.org, event.name)))
        return _coalesce(rows)


_VERSION_MADE = """INSERT INTO secret_versions (org, name, version, made_at, made_by, how, from_version,
    destroyed_at) VALUES (?,?,?,?,?,?,?,NULL)"""
_VERSION_DESTROYED = "UPDATE secret_versions SET destroyed_at=? WHERE org=? AND name=? AND version=?"
_HOW = {SecretCreated: "create", SecretUpdated: "update", SecretRolledBack: "rollback", SecretRestored: "restore",
        SecretRotated: "rotate"}


class SecretVersionsProjector:
    """Every version of every secret name: who made it, when, how, and whether its value still exists.

    Version numbers only grow for a name, across deletes and re-creates, so a name's history is one
    sequence of versions."""

    name = "secret_versions"

    def schema(self) -> list[str]:
        return [
            """CREATE TABLE IF NOT EXISTS secret_versions (
                org TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, made_at INTEGER NOT NULL,
                made_by TEXT NOT NULL, how TEXT NOT NULL, from_version INTEGER, destroyed_at INTEGER,
                PRIMARY KEY (org, name, version)) WITHOUT ROWID""",
        ]

    def reset(self) -> list[str]:
        return ["DELETE FROM secret_versions"]

    def drop(self) -> list[str]:
        return ["DROP TABLE IF EXISTS secret_versions"]

    def project(self, batch: Batch) -> list[Statement]:
        rows: list[tuple[str, tuple[object, ...]]] = []
        for _, event in batch:
            if isinstance(event, SecretCreated | SecretUpdated | SecretRolledBack | SecretRestored):
                source = event.from_version if isinstance(event, SecretRolledBack | SecretRestored) else None
                rows.append((_VERSION_MADE, (event.org, event.name, event.version, event.at, event.actor.key_id,
                                             _HOW[type(event)], source)))
            elif isinstance(event, SecretVersionDestroyed):
                rows.append((_VERSION_DESTROYED, (event.at, event.org, event.name, event.version)))
            elif isinstance(event, SecretDestroyed):
                rows.extend((_VERSION_DESTROYED, (event.at, event.org, event.name, v)) for v in event.versions)
        return _coalesce(rows)


_KEY_CREATED = """INSERT INTO api_keys (key_id, org, label, role, scope, key_sha256, created_at, created_by,
    revoked_at, last_used_at) VALUES (?,?,?,?,?,?,?,?,NULL,NULL)"""
_KEY_REVOKED = "UPDATE api_keys SET revoked_at=? WHERE key_id=?"
_KEY_USED = "UPDATE api_keys SET last_used_at=MAX(COALESCE(last_used_at, 0), ?) WHERE key_id=?"


class ApiKeysProjector:
    """API keys per org by the SHA-256 of the key (never the key), with last use from the events."""

    name = "api_keys"

    def schema(self) -> list[str]:
        return [
            """CREATE TABLE IF NOT EXISTS api_keys (
                key_id TEXT PRIMARY KEY, org TEXT NOT NULL, label TEXT NOT NULL, role TEXT NOT NULL,
                scope TEXT NOT NULL, key_sha256 TEXT NOT NULL UNIQUE, created_at INTEGER NOT NULL,
                created_by TEXT NOT NULL, revoked_at INTEGER, last_used_at INTEGER)""",
            "CREATE INDEX IF NOT EXISTS api_keys_org ON api_keys(org, created_at)",
        ]

    def reset(self) -> list[str]:
        return ["DELETE FROM api_keys"]

    def drop(self) -> list[str]:
        return ["DROP TABLE IF EXISTS api_keys"]

    def project(self, batch: Batch) -> list[Statement]:
        rows: list[tuple[str, tuple[object, ...]]] = []
        last_used: dict[str, int] = {}
        for _, event in batch:
            if isinstance(event, ApiKeyCreated):
                rows.append((_KEY_CREATED, (
                    event.key_id, event.org, event.label, event.role, event.scope, event.key_sha256,
                    event.at, event.actor.key_id,
                )))
            elif isinstance(event, ApiKeyRevoked):
                rows.append((_KEY_REVOKED, (event.at, event.key_id)))
            if event.actor.kind == "api_key":
                last_used[event.actor.key_id] = max(event.at, last_used.get(event.actor.key_id, 0))
        # Last use goes after the batch's inserts; MAX makes the order of these updates irrelevant.
        rows.extend((_KEY_USED, (at, key_id)) for key_id, at in sorted(last_used.items()))
        return _coalesce(rows)


_AUDIT_INSERT = """INSERT INTO audit (seq, org, at, action, actor_key_id, actor_label, actor_kind, secret,
    version, request_id, client_address, user_agent, outcome, detail, actor_subject)
    VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"""


class AuditProjector:
    """A flat row per event: who did what to which secret, when, from where, and how it ended."""

    name = "audit"

    def schema(self) -> list[str]:
        return [
            """CREATE TABLE IF NOT EXISTS audit (
                seq INTEGER PRIMARY KEY, org TEXT NOT NULL, at INTEGER NOT NULL, action TEXT NOT NULL,
                actor_key_id TEXT NOT NULL, actor_label TEXT NOT NULL, actor_kind TEXT NOT NULL,
                secret TEXT, version INTEGER, request_id TEXT NOT NULL, client_address TEXT NOT NULL,
                user_agent TEXT NOT NULL, outcome TEXT NOT NULL, detail TEXT NOT NULL,
                actor_subject TEXT NOT NULL)""",
            # Per org in seq order: appended at each org's end, so it costs little on the hot path.
            "CREATE INDEX IF NOT EXISTS audit_org_seq ON audit(org, seq)",
        ]

    def reset(self) -> list[str]:
        return ["DELETE FROM audit"]

    def drop(self) -> list[str]:
        return ["DROP TABLE IF EXISTS audit"]

    def project(self, batch: Batch) -> list[Statement]:
        rows: list[tuple[object, ...]] = []
        for record, event in batch:
            outcome, detail = outcome_of(event)
            rows.append((
                record.seq, event.org, event.at, event_type(event), event.actor.key_id, event.actor.label,
                event.actor.kind, secret_name(event), secret_version(event), event.request_id,
                event.source.address, event.source.user_agent, outcome, detail,
                "" if isinstance(event.actor.subject, UnsetType) else event.actor.subject,
            ))
        return [Statement(_AUDIT_INSERT, rows)]


_ROTATION_SET = """INSERT INTO secret_rotation (org, name, interval_seconds, rotator, next_due_at, failures,
    lease_until, last_rotated_at, last_error, last_error_at) VALUES (?,?,?,?,?,0,NULL,NULL,NULL,NULL)
    ON CONFLICT(org, name) DO UPDATE SET interval_seconds=excluded.interval_seconds, rotator=excluded.rotator,
    next_due_at=excluded.next_due_at, failures=0, lease_until=NULL"""
_ROTATION_REMOVED = "DELETE FROM secret_rotation WHERE org=? AND name=?"
_ROTATION_STARTED = "UPDATE secret_rotation SET lease_until=? WHERE org=? AND name=?"
_ROTATION_FAILED = """UPDATE secret_rotation SET failures=?, lease_until=NULL, next_due_at=?, last_error=?,
    last_error_at=? WHERE org=? AND name=?"""
# Any new value restarts the interval and ends (or cancels) an attempt in flight, as in the write model.
_ROTATION_NEW_VALUE = """UPDATE secret_rotation SET next_due_at=? + interval_seconds * 1000000000, failures=0,
    lease_until=NULL, last_rotated_at=CASE WHEN ? THEN ? ELSE last_rotated_at END WHERE org=? AND name=?"""


class RotationsProjector:
    """Each secret's rotation policy and schedule: when it is due, failures in a row, the last error."""

    name = "secret_rotation"

    def schema(self) -> list[str]:
        return [
            """CREATE TABLE IF NOT EXISTS secret_rotation (
                org TEXT NOT NULL, name TEXT NOT NULL, interval_seconds INTEGER NOT NULL, rotator TEXT NOT NULL,
                next_due_at INTEGER NOT NULL, failures INTEGER NOT NULL, lease_until INTEGER,
                last_rotated_at INTEGER, last_error TEXT, last_error_at INTEGER,
                PRIMARY KEY (org, name)) WITHOUT ROWID""",
            # The scheduler's question: which secrets are due.
            "CREATE INDEX IF NOT EXISTS secret_rotation_due ON secret_rotation(next_due_at)",
        ]

    def reset(self) -> list[str]:
        return ["DELETE FROM secret_rotation"]

    def drop(self) -> list[str]:
        return ["DROP TABLE IF EXISTS secret_rotation"]

    def project(self, batch: Batch) -> list[Statement]:
        rows: list[tuple[str, tuple[object, ...]]] = []
        for _, event in batch:
            if isinstance(event, SecretRotationConfigured):
                if event.rotator is None or event.next_due_at is None:
                    rows.append((_ROTATION_REMOVED, (event.org, event.name)))
                else:
                    kind = "generator" if isinstance(event.rotator, GeneratorSpec) else "webhook"
                    rows.append((_ROTATION_SET, (event.org, event.name, event.interval_seconds, kind,
                                                 event.next_due_at)))
            elif isinstance(event, SecretRotationStarted):
                rows.append((_ROTATION_STARTED, (event.lease_until, event.org, event.name)))
            elif isinstance(event, SecretRotationFailed):
                rows.append((_ROTATION_FAILED, (event.attempt, event.next_attempt_at, event.reason, event.at,
                                                event.org, event.name)))
            elif isinstance(event, SecretDestroyed):  # gone for good: its rotation policy with it
                rows.append((_ROTATION_REMOVED, (event.org, event.name)))
            elif isinstance(event, VALUE_EVENTS):
                rotated = isinstance(event, SecretRotated)
                rows.append((_ROTATION_NEW_VALUE, (event.at, rotated, event.at, event.org, event.name)))
        return _coalesce(rows)


_SSH_KEY_ADDED = """INSERT INTO ssh_keys (ssh_key_id, org, label, algorithm, bits, fingerprint, comment, public_key,
    added_at, added_by) VALUES (?,?,?,?,?,?,?,?,?,?)"""
_SSH_KEY_REMOVED = "DELETE FROM ssh_keys WHERE ssh_key_id=?"


class SshKeysProjector:
    """The org's current SSH public keys (a removed key's row goes)."""

    name = "ssh_keys"

    def schema(self) -> list[str]:
        return [
            """CREATE TABLE IF NOT EXISTS ssh_keys (
                ssh_key_id TEXT PRIMARY KEY, org TEXT NOT NULL, label TEXT NOT NULL, algorithm TEXT NOT NULL,
                bits INTEGER NOT NULL, fingerprint TEXT NOT NULL, comment TEXT NOT NULL, public_key TEXT NOT NULL,
                added_at INTEGER NOT NULL, added_by TEXT NOT NULL)""",
            "CREATE INDEX IF NOT EXISTS ssh_keys_org ON ssh_keys(org, added_at)",
        ]

    def reset(self) -> list[str]:
        return ["DELETE FROM ssh_keys"]

    def drop(self) -> list[str]:
        return ["DROP TABLE IF EXISTS ssh_keys"]

    def project(self, batch: Batch) -> list[Statement]:
        rows: list[tuple[str, tuple[object, ...]]] = []
        for _, event in batch:
            if isinstance(event, SshKeyAdded):
                rows.append((_SSH_KEY_ADDED, (
                    event.ssh_key_id, event.org, event.label, event.algorithm, event.bits, event.fingerprint,
                    event.comment, event.public_key, event.at, event.actor.key_id,
                )))
            elif isinstance(event, SshKeyRemoved):
                rows.append((_SSH_KEY_REMOVED, (event.ssh_key_id,)))
        return _coalesce(rows)


_SESSION_STARTED = """INSERT INTO dashboard_sessions (session_id, org, key_id, started_at, ended_at)
    VALUES (?,?,?,?,NULL)"""
_SESSION_ENDED = "UPDATE dashboard_sessions SET ended_at=? WHERE session_id=?"


class DashboardSessionsProjector:
    """Every dashboard session: its org, the API key that started it, when it started and ended."""

    name = "dashboard_sessions"

    def schema(self) -> list[str]:
        return [
            """CREATE TABLE IF NOT EXISTS dashboard_sessions (
                session_id TEXT PRIMARY KEY, org TEXT NOT NULL, key_id TEXT NOT NULL, started_at INTEGER NOT NULL,
                ended_at INTEGER)""",
        ]

    def reset(self) -> list[str]:
        return ["DELETE FROM dashboard_sessions"]

    def drop(self) -> list[str]:
        return ["DROP TABLE IF EXISTS dashboard_sessions"]

    def project(self, batch: Batch) -> list[Statement]:
        rows: list[tuple[str, tuple[object, ...]]] = []
        for _, event in batch:
            if isinstance(event, SessionStarted):
                rows.append((_SESSION_STARTED, (event.session_id, event.org, event.actor.key_id, event.at)))
            elif isinstance(event, SessionEnded):
                rows.append((_SESSION_ENDED, (event.at, event.session_id)))
        return _coalesce(rows)


_MEMBER_JOINED = """INSERT INTO members (member_id, org, issuer, subject, email, role, joined_at, removed_at)
    VALUES (?,?,?,?,?,?,?,NULL)"""
_MEMBER_ROLE = "UPDATE members SET role=? WHERE member_id=?"
_MEMBER_REMOVED = "UPDATE members SET removed_at=? WHERE member_id=?"
# The email stays the one recorded at joining, as the ledger's own view of the person keeps it (reveal policies
# and who-could-reveal match it); each sign-in's event records the email the provider presented then.
_MEMBER_SEEN = "UPDATE members SET last_sign_in_at=? WHERE member_id=?"
_SSO_SET = """INSERT INTO sso_settings (org, issuer, client_id, client_secret_name, allowed_domains, changed_at)
    VALUES (?,?,?,?,?,?) ON CONFLICT(org) DO UPDATE SET issuer=excluded.issuer, client_id=excluded.client_id,
    client_secret_name=excluded.client_secret_name, allowed_domains=excluded.allowed_domains,
    changed_at=excluded.changed_at"""
_SSO_REMOVED = "DELETE FROM sso_settings WHERE org=?"


class PeopleProjector:
    """The org's people (joined through single sign-on; removed ones keep their row, with `removed_at`) and its
    identity provider's settings (no secret: the client secret is a keyledger secret, named)."""

    name = "people"

    def schema(self) -> list[str]:
        return [
            """CREATE TABLE IF NOT EXISTS members (
                member_id TEXT PRIMARY KEY, org TEXT NOT NULL, issuer TEXT NOT NULL, subject TEXT NOT NULL,
                email TEXT NOT NULL, role TEXT NOT NULL, joined_at INTEGER NOT NULL, removed_at INTEGER,
                last_sign_in_at INTEGER)""",
            "CREATE INDEX IF NOT EXISTS members_org ON members(org, joined_at)",
            """CREATE TABLE IF NOT EXISTS sso_settings (
                org TEXT PRIMARY KEY, issuer TEXT NOT NULL, client_id TEXT NOT NULL,
                client_secret_name TEXT NOT NULL, allowed_domains TEXT NOT NULL, changed_at INTEGER NOT NULL)""",
        ]

    def reset(self) -> list[str]:
        return ["DELETE FROM members", "DELETE FROM sso_settings"]

    def drop(self) -> list[str]:
        return ["DROP TABLE IF EXISTS members", "DROP TABLE IF EXISTS sso_settings"]

    def project(self, batch: Batch) -> list[Statement]:
        rows: list[tuple[str, tuple[object, ...]]] = []
        for _, event in batch:
            if isinstance(event, MemberJoined):
                rows.append((_MEMBER_JOINED, (event.member_id, event.org, event.issuer, event.subject, event.email,
                                              event.role, event.at)))
            elif isinstance(event, MemberRoleChanged):
                rows.append((_MEMBER_ROLE, (event.role, event.member_id)))
            elif isinstance(event, MemberRemoved):
                rows.append((_MEMBER_REMOVED, (event.at, event.member_id)))
            elif isinstance(event, SessionStarted) and event.actor.kind == "person":
                rows.append((_MEMBER_SEEN, (event.at, event.actor.key_id)))
            elif isinstance(event, SsoConfigured):
                rows.append((_SSO_SET, (event.org, event.issuer, event.client_id, event.client_secret_name,
                                        " ".join(event.allowed_domains), event.at)))
            elif isinstance(event, SsoRemoved):
                rows.append((_SSO_REMOVED, (event.org,)))
        return _coalesce(rows)


_APP_CONNECTED = """INSERT INTO connected_apps (org, name, provider, authorization_url, token_url, client_id, scopes,
    scope, state, token_version, expires_at, connected_at, connected_by, last_refresh_at, last_error, last_error_at,
    disconnected_at) VALUES (?,?,?,?,?,?,?,?,'connected',?,?,?,?,NULL,NULL,NULL,NULL)
    ON CONFLICT(org, name) DO UPDATE SET provider=excluded.provider, authorization_url=excluded.authorization_url,
    token_url=excluded.token_url, client_id=excluded.client_id, scopes=excluded.scopes, scope=excluded.scope,
    state='connected', token_version=excluded.token_version, expires_at=excluded.expires_at,
    connected_at=excluded.connected_at, connected_by=excluded.connected_by, last_refresh_at=NULL, last_error=NULL,
    last_error_at=NULL, disconnected_at=NULL"""
_APP_REFRESHED = """UPDATE connected_apps SET state='connected', token_version=?, expires_at=?, last_refresh_at=?
    WHERE org=? AND name=?"""
_APP_FAILED = """UPDATE connected_apps SET state=CASE WHEN ? THEN 'broken' ELSE state END, last_error=?,
    last_error_at=? WHERE org=? AND name=?"""
_APP_DISCONNECTED = "UPDATE connected_apps SET state='disconnected', disconnected_at=? WHERE org=? AND name=?"


class ConnectedAppsProjector:
    """Each connection's endpoints and health (`connected`, `broken`, `disconnected`): never a token."""

    name = "connected_apps"

    def schema(self) -> list[str]:
        return [
            """CREATE TABLE IF NOT EXISTS connected_apps (
                org TEXT NOT NULL, name TEXT NOT NULL, provider TEXT NOT NULL, authorization_url TEXT NOT NULL,
                token_url TEXT NOT NULL, client_id TEXT NOT NULL, scopes TEXT NOT NULL, scope TEXT NOT NULL,
                state TEXT NOT NULL, token_version INTEGER NOT NULL, expires_at INTEGER,
                connected_at INTEGER NOT NULL, connected_by TEXT NOT NULL, last_refresh_at INTEGER,
                last_error TEXT, last_error_at INTEGER, disconnected_at INTEGER,
                PRIMARY KEY (org, name)) WITHOUT ROWID""",
        ]

    def reset(self) -> list[str]:
        return ["DELETE FROM connected_apps"]

    def drop(self) -> list[str]:
        return ["DROP TABLE IF EXISTS connected_apps"]

    def project(self, batch: Batch) -> list[Statement]:
        rows: list[tuple[str, tuple[object, ...]]] = []
        for _, event in batch:
            if isinstance(event, AppConnected):
                rows.append((_APP_CONNECTED, (
                    event.org, event.name, event.provider, event.authorization_url, event.token_url, event.client_id,
                    " ".join(event.scopes), event.scope, event.token_version, event.expires_at, event.at,
                    event.actor.key_id,
                )))
            elif isinstance(event, AppTokenRefreshed):
                rows.append((_APP_REFRESHED, (event.token_version, event.expires_at, event.at, event.org,
                                              event.name)))
            elif isinstance(event, AppRefreshFailed):
                rows.append((_APP_FAILED, (event.broken, event.error, event.at, event.org, event.name)))
            elif isinstance(event, AppDisconnected):
                rows.append((_APP_DISCONNECTED, (event.at, event.org, event.name)))
        return _coalesce(rows)


def all_projectors() -> list[Projector]:
    return [SecretsProjector(), ApiKeysProjector(), AuditProjector(), SecretVersionsProjector(), RotationsProjector(),
            SshKeysProjector(), DashboardSessionsProjector(), PeopleProjector(), ConnectedAppsProjector()]


PROJECTION_TABLES = ("secrets", "api_keys", "audit", "secret_versions", "secret_rotation", "ssh_keys",
                     "dashboard_sessions", "members", "sso_settings", "connected_apps")
# Each projector's position is kept under its name (a projector may own several tables).
PROJECTOR_NAMES = tuple(p.name for p in all_projectors())
