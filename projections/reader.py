"""Queries on the projections, written once for both backends.

The SQL is SQLite's, with `?` placeholders; a `ReadDatabase` runs it (projections/sqlite_reader.py
as it is, projections/pg_reader.py with `$n` placeholders). The tables are the same on both
(projections/sqlite_tables.py, said in PostgreSQL's dialect by projections/pg_tables.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from ledger.events import ApiKeyRevoked, Event
from ledger.writer import Writer
from projections.views import (
    ApiKeyRow,
    AppRow,
    AuditRow,
    PersonRow,
    RotationRow,
    SecretMeta,
    SessionRow,
    SshKeyRow,
    SsoRow,
    VersionRow,
)

Row = Sequence[Any]
_CACHE_LIMIT = 100_000  # entries per cache; a full cache starts again empty

SECRET_COLUMNS = (
    "org, name, scope, category, description, version, created_at, updated_at, created_by, updated_by, deleted, "
    "expires_at, deleted_at, destroy_at, external"
)
KEY_COLUMNS = "key_id, org, label, role, scope, created_at, revoked_at, last_used_at"
SSH_KEY_COLUMNS = "org, ssh_key_id, label, algorithm, bits, fingerprint, comment, public_key, added_at, added_by"
PERSON_COLUMNS = "org, member_id, issuer, subject, email, role, joined_at, removed_at, last_sign_in_at"
APP_COLUMNS = ("org, name, provider, authorization_url, token_url, client_id, scopes, scope, state, token_version, "
               "expires_at, connected_at, connected_by, last_refresh_at, last_error, last_error_at")
_AUDIT_COLUMNS = (
    "seq, org, at, action, actor_key_id, actor_label, actor_kind, secret, version, request_id, "
    "client_address, user_agent, outcome, detail, actor_subject"
)


def secret_of_row(row: Row) -> SecretMeta:
    return SecretMeta(
        org=str(row[0]), name=str(row[1]), scope=str(row[2]), category=str(row[3]), description=str(row[4]),
        version=int(row[5]), created_at=int(row[6]), updated_at=int(row[7]),
        created_by=str(row[8]), updated_by=str(row[9]), deleted=bool(row[10]),
        expires_at=_int_or_none(row[11]), deleted_at=_int_or_none(row[12]), destroy_at=_int_or_none(row[13]),
        external=None if row[14] is None else str(row[14]),
    )


def _int_or_none(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def key_of_row(row: Row) -> ApiKeyRow:
    return ApiKeyRow(
        key_id=str(row[0]), org=str(row[1]), label=str(row[2]), role=str(row[3]), scope=str(row[4]),
        created_at=int(row[5]),
        revoked_at=None if row[6] is None else int(row[6]),
        last_used_at=None if row[7] is None else int(row[7]),
    )


def person_of_row(r: Row) -> PersonRow:
    return PersonRow(org=str(r[0]), member_id=str(r[1]), issuer=str(r[2]), subject=str(r[3]), email=str(r[4]),
                     role=str(r[5]), joined_at=int(r[6]), removed_at=_int_or_none(r[7]),
                     last_sign_in_at=_int_or_none(r[8]))


def app_of_row(r: Row) -> AppRow:
    return AppRow(
        org=str(r[0]), name=str(r[1]), provider=str(r[2]), authorization_url=str(r[3]), token_url=str(r[4]),
        client_id=str(r[5]), scopes=str(r[6]).split(), scope=str(r[7]), state=str(r[8]), token_version=int(r[9]),
        expires_at=_int_or_none(r[10]), connected_at=int(r[11]), connected_by=str(r[12]),
        last_refresh_at=_int_or_none(r[13]), last_error=None if r[14] is None else str(r[14]),
        last_error_at=_int_or_none(r[15]),
    )


def ssh_key_of_row(row: Row) -> SshKeyRow:
    return SshKeyRow(
        org=str(row[0]), ssh_key_id=str(row[1]), label=str(row[2]), algorithm=str(row[3]), bits=int(row[4]),
        fingerprint=str(row[5]), comment=str(row[6]), public_key=str(row[7]), added_at=int(row[8]),
        added_by=str(row[9]),
    )


class ReadDatabase(Protocol):
    """Read-only access to one database's projection tables."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def one(self, sql: str, params: Sequence[object] = ()) -> Row | None: ...

    async def all(self, sql: str, params: Sequence[object] = ()) -> list[Row]: ...


class Projections:
    """The read side: queries on the projection tables, with caches while following the writer."""

    def __init__(self, db: ReadDatabase) -> None:
        self.db = db
        # Caches of active keys (by digest) and live secrets' metadata, so that authentication and
        # get cost no query. Only while following the writer (`follow`), which tells this reader
        # what each commit touched before any caller hears of the commit.
        self._following = False
        self._keys: dict[str, tuple[ApiKeyRow, str]] = {}
        self._secrets: dict[tuple[str, str], SecretMeta] = {}

    def follow(self, writer: Writer) -> None:
        """Cache reads, forgetting what each of `writer`'s commits touches.

        Only for a store that one process writes (SQLite): another process's commits would go unseen."""
        writer.commit_listeners.append(self._forget)
        self._following = True

    def _forget(self, events: Sequence[Event]) -> None:
        for event in events:
            name = getattr(event, "name", None)
            if name is not None:
                self._secrets.pop((event.org, name), None)
            if type(event) is ApiKeyRevoked:
                self._keys.clear()

    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()

    async def key_by_sha256(self, key_sha256: str) -> tuple[ApiKeyRow, str] | None:
        """The key row with that digest, and the stored digest for a constant-time comparison.

        For authentication: from the cache, the row's `last_used_at` may be older than the table's.
        """
        cached = self._keys.get(key_sha256)
        if cached is not None:
            return cached
        row = await self.db.one(
            f"SELECT {KEY_COLUMNS}, key_sha256 FROM api_keys WHERE key_sha256 = ?", (key_sha256,)
        )
        if row is None:
            return None
        found = (key_of_row(row), str(row[8]))
        if found[0].revoked_at is None and self._following:
            if len(self._keys) >= _CACHE_LIMIT:
                self._keys.clear()
            self._keys[key_sha256] = found
        return found

    async def get_key(self, org: str, key_id: str) -> ApiKeyRow | None:
        row = await self.db.one(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = ? AND org = ?", (key_id, org)
        )
        return None if row is None else key_of_row(row)

    async def list_keys(self, org: str) -> list[ApiKeyRow]:
        rows = await self.db.all(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE org = ? ORDER BY created_at, key_id", (org,)
        )
        return [key_of_row(r) for r in rows]

    async def list_ssh_keys(self, org: str) -> list[SshKeyRow]:
        """The org's SSH keys, oldest first."""
        rows = await self.db.all(
            f"SELECT {SSH_KEY_COLUMNS} FROM ssh_keys WHERE org = ? ORDER BY added_at, ssh_key_id", (org,)
        )
        return [ssh_key_of_row(r) for r in rows]

    async def get_ssh_key(self, org: str, ssh_key_id: str) -> SshKeyRow | None:
        row = await self.db.one(
            f"SELECT {SSH_KEY_COLUMNS} FROM ssh_keys WHERE ssh_key_id = ? AND org = ?", (ssh_key_id, org)
        )
        return None if row is None else ssh_key_of_row(row)

    async def get_session(self, session_id: str) -> SessionRow | None:
        """A dashboard session by its id (ended ones too: `ended_at` is set)."""
        row = await self.db.one(
            "SELECT org, session_id, key_id, started_at, ended_at FROM dashboard_sessions WHERE session_id = ?",
            (session_id,),
        )
        if row is None:
            return None
        return SessionRow(org=str(row[0]), session_id=str(row[1]), key_id=str(row[2]), started_at=int(row[3]),
                          ended_at=_int_or_none(row[4]))

    async def list_people(self, org: str) -> list[PersonRow]:
        """The org's people, in the order they joined (removed ones too: `removed_at` is set)."""
        rows = await self.db.all(
            f"SELECT {PERSON_COLUMNS} FROM members WHERE org = ? ORDER BY joined_at, member_id", (org,)
        )
        return [person_of_row(r) for r in rows]

    async def get_person(self, org: str, member_id: str) -> PersonRow | None:
        row = await self.db.one(f"SELECT {PERSON_COLUMNS} FROM members WHERE member_id = ? AND org = ?",
                                (member_id, org))
        return None if row is None else person_of_row(row)

    async def get_sso(self, org: str) -> SsoRow | None:
        row = await self.db.one(
            "SELECT org, issuer, client_id, client_secret_name, allowed_domains, changed_at FROM sso_settings "
            "WHERE org = ?", (org,),
        )
        if row is None:
            return None
        return SsoRow(org=str(row[0]), issuer=str(row[1]), client_id=str(row[2]), client_secret_name=str(row[3]),
                      allowed_domains=str(row[4]).split(), changed_at=int(row[5]))

    async def list_apps(self, org: str, *, include_disconnected: bool = False) -> list[AppRow]:
        """The org's connected apps by name (disconnected ones only when asked)."""
        rows = await self.db.all(
            f"SELECT {APP_COLUMNS} FROM connected_apps WHERE org = ? ORDER BY name", (org,)
        )
        apps = [app_of_row(r) for r in rows]
        return apps if include_disconnected else [a for a in apps if a.state != "disconnected"]

    async def get_app(self, org: str, name: str) -> AppRow | None:
        """A connection that is not disconnected."""
        row = await self.db.one(f"SELECT {APP_COLUMNS} FROM connected_apps WHERE org = ? AND name = ?", (org, name))
        app = None if row is None else app_of_row(row)
        return app if app is not None and app.state != "disconnected" else None

    async def get_secret(self, org: str, name: str) -> SecretMeta | None:
        cached = self._secrets.get((org, name))
        if cached is not None:
            return cached
        row = await self.db.one(
            f"SELECT {SECRET_COLUMNS} FROM secrets WHERE org = ? AND name = ? AND deleted = 0", (org, name)
        )
        if row is None:
            return None
        meta = secret_of_row(row)
        if self._following:
            if len(self._secrets) >= _CACHE_LIMIT:
                self._secrets.clear()
            self._secrets[(org, name)] = meta
        return meta

    async def list_secrets(
        self,
        org: str,
        *,
        after: str | None = None,
        limit: int = 100,
        scope: str | None = None,
        category: str | None = None,
    ) -> list[SecretMeta]:
        """A page of live secrets ordered by name (binary order), strictly after `after`."""
        where = ["org = ?", "deleted = 0"]
        params: list[object] = [org]
        if after is not None:
            where.append("name > ?")
            params.append(after)
        if scope is not None:
            where.append("scope = ?")
            params.append(scope)
        if category is not None:
            where.append("category = ?")
            params.append(category)
        params.append(limit)
        rows = await self.db.all(
            f"SELECT {SECRET_COLUMNS} FROM secrets WHERE {' AND '.join(where)} ORDER BY name LIMIT ?", params
        )
        return [secret_of_row(r) for r in rows]

    async def versions(self, org: str, name: str) -> list[VersionRow]:
        """Every version the name has had in the org, oldest first (deleted incarnations included)."""
        rows = await self.db.all(
            "SELECT version, made_at, made_by, how, from_version, destroyed_at FROM secret_versions "
            "WHERE org = ? AND name = ? ORDER BY version", (org, name),
        )
        return [VersionRow(version=int(r[0]), made_at=int(r[1]), made_by=str(r[2]), how=str(r[3]),
                           from_version=_int_or_none(r[4]), destroyed_at=_int_or_none(r[5])) for r in rows]

    async def deleted_secrets(self, org: str, *, after: str | None = None, limit: int = 100) -> list[SecretMeta]:
        """Deleted secrets that can still be restored (no version destroyed by a purge or the window)."""
        rows = await self.db.all(
            f"SELECT {SECRET_COLUMNS} FROM secrets WHERE org = ? AND deleted = 1 AND destroyed_at IS NULL "
            "AND name > ? ORDER BY name LIMIT ?", (org, after or "", limit),
        )
        return [secret_of_row(r) for r in rows]

    async def due_destructions(self, now: int, limit: int = 100) -> list[tuple[str, str]]:
        """(org, name) of deleted secrets whose recovery window ended at or before `now`."""
        rows = await self.db.all(
            "SELECT org, name FROM secrets WHERE destroy_at IS NOT NULL AND destroy_at <= ? AND deleted = 1 "
            "AND destroyed_at IS NULL ORDER BY destroy_at, org, name LIMIT ?", (now, limit),
        )
        return [(str(r[0]), str(r[1])) for r in rows]

    async def due_rotations(self, now: int, limit: int = 100) -> list[tuple[str, str]]:
        """(org, name) of live secrets due for rotation at `now`, with no attempt in flight (or one
        whose lease ended: the server that started it stopped)."""
        rows = await self.db.all(
            "SELECT r.org, r.name FROM secret_rotation r JOIN secrets s ON s.org = r.org AND s.name = r.name "
            "WHERE s.deleted = 0 AND (r.next_due_at <= ? OR r.lease_until <= ?) "
            "AND (r.lease_until IS NULL OR r.lease_until <= ?) ORDER BY r.next_due_at, r.org, r.name LIMIT ?",
            (now, now, now, limit),
        )
        return [(str(r[0]), str(r[1])) for r in rows]

    async def rotations(self, org: str) -> list[RotationRow]:
        """Every live secret's rotation schedule, by name."""
        rows = await self.db.all(
            "SELECT r.name, r.interval_seconds, r.rotator, r.next_due_at, r.failures, r.lease_until, "
            "r.last_rotated_at, r.last_error, r.last_error_at FROM secret_rotation r "
            "JOIN secrets s ON s.org = r.org AND s.name = r.name WHERE r.org = ? AND s.deleted = 0 ORDER BY r.name",
            (org,),
        )
        return [RotationRow(
            name=str(r[0]), interval_seconds=int(r[1]), rotator=str(r[2]), next_due_at=int(r[3]),
            failures=int(r[4]), lease_until=_int_or_none(r[5]), last_rotated_at=_int_or_none(r[6]),
            last_error=None if r[7] is None else str(r[7]), last_error_at=_int_or_none(r[8]),
        ) for r in rows]

    async def audit(self, org: str, *, after_seq: int = 0, limit: int = 1000) -> list[AuditRow]:
        rows = await self.db.all(
            f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE org = ? AND seq > ? ORDER BY seq LIMIT ?",
            (org, after_seq, limit),
        )
        return [
            AuditRow(
                seq=r[0], org=r[1], at=r[2], action=r[3], actor_key_id=r[4], actor_label=r[5], actor_kind=r[6],
                secret=r[7], version=r[8], request_id=r[9], client_address=r[10], user_agent=r[11],
                outcome=r[12], detail=r[13], actor_subject=r[14],
            )
            for r in rows
        ]

    async def positions(self) -> dict[str, int]:
        rows = await self.db.all("SELECT name, position FROM projection_positions")
        return {str(n): int(p) for n, p in rows}

    async def ledger_head(self) -> int:
        row = await self.db.one("SELECT COALESCE(MAX(seq), 0) FROM events")
        return int(row[0]) if row else 0


class AuditFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Filters of the audit query; all optional."""

    action: str | None = None
    secret: str | None = None
    actor: str | None = None
    outcome: str | None = None
    since: int | None = None
    until: int | None = None
    after_seq: int | None = None
    before_seq: int | None = None


def _audit_where(org: str, f: AuditFilter) -> tuple[str, list[object]]:
    where = ["org = ?"]
    params: list[object] = [org]
    conditions: tuple[tuple[str, object], ...] = (
        ("action = ?", f.action), ("secret = ?", f.secret), ("actor_key_id = ?", f.actor),
        ("outcome = ?", f.outcome), ("at >= ?", f.since), ("at <= ?", f.until), ("seq > ?", f.after_seq),
        ("seq < ?", f.before_seq),
    )
    for clause, value in conditions:
        if value is not None:
            where.append(clause)
            params.append(value)
    return " AND ".join(where), params


def _audit_row(r: Row) -> AuditRow:
    return AuditRow(
        seq=r[0], org=r[1], at=r[2], action=r[3], actor_key_id=r[4], actor_label=r[5],
        actor_kind=r[6], secret=r[7], version=r[8], request_id=r[9], client_address=r[10],
        user_agent=r[11], outcome=r[12], detail=r[13], actor_subject=r[14],
    )


async def query_audit(projections: Projections, org: str, f: AuditFilter, *, limit: int,
                      newest_first: bool) -> list[AuditRow]:
    where, params = _audit_where(org, f)
    order = "DESC" if newest_first else "ASC"
    rows = await projections.db.all(
        f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE {where} ORDER BY seq {order} LIMIT ?", [*params, limit]
    )
    return [_audit_row(r) for r in rows]


async def stale_secrets(projections: Projections, org: str, updated_before: int) -> list[SecretMeta]:
    rows = await projections.db.all(
        f"SELECT {SECRET_COLUMNS} FROM secrets WHERE org = ? AND deleted = 0 AND updated_at < ? ORDER BY name",
        (org, updated_before),
    )
    return [secret_of_row(r) for r in rows]


async def expiring_secrets(projections: Projections, org: str, before: int) -> list[SecretMeta]:
    """Live secrets with an expiry at or before `before` (expired ones included), soonest first."""
    rows = await projections.db.all(
        f"SELECT {SECRET_COLUMNS} FROM secrets WHERE org = ? AND deleted = 0 AND expires_at IS NOT NULL "
        "AND expires_at <= ? ORDER BY expires_at, name", (org, before),
    )
    return [secret_of_row(r) for r in rows]


async def never_revealed(projections: Projections, org: str) -> list[SecretMeta]:
    rows = await projections.db.all(
        f"""SELECT {SECRET_COLUMNS} FROM secrets s WHERE org = ? AND deleted = 0 AND NOT EXISTS (
            SELECT 1 FROM audit a WHERE a.org = s.org AND a.secret = s.name AND a.action = 'secret.revealed'
            AND a.seq > (SELECT MAX(c.seq) FROM audit c WHERE c.org = s.org AND c.secret = s.name
                         AND c.action = 'secret.created')) ORDER BY name""",
        (org,),
    )
    return [secret_of_row(r) for r in rows]


async def reveals_by_revoked_keys(projections: Projections, org: str) -> list[AuditRow]:
    rows = await projections.db.all(
        f"""SELECT {', '.join('a.' + c.strip() for c in _AUDIT_COLUMNS.split(','))} FROM audit a
            JOIN api_keys k ON k.key_id = a.actor_key_id
            WHERE a.org = ? AND a.action = 'secret.revealed' AND k.revoked_at IS NOT NULL ORDER BY a.seq""",
        (org,),
    )
    return [_audit_row(r) for r in rows]


async def reveal_counts(projections: Projections, org: str, since: int | None,
                        until: int | None) -> list[tuple[str, str, int]]:
    where, params = _audit_where(org, AuditFilter(action="secret.revealed", since=since, until=until))
    rows = await projections.db.all(
        f"SELECT actor_key_id, MAX(actor_label), COUNT(*) FROM audit WHERE {where} "
        "GROUP BY actor_key_id ORDER BY COUNT(*) DESC, actor_key_id", params
    )
    return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]
