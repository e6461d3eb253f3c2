"""Dashboard session events (`session.started`, `session.ended`) and their projection, on both backends.

The dashboard calls `Ledger.start_session` / `Ledger.end_session` and reads `Projections.get_session`;
there is no HTTP route of their own. The rows (and the SSH keys' rows) are the same after a rebuild of
every projection from the events, and the write side decides the same after a restart (its state is
folded again from the streams).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from api.app import build_ledger, build_projections
from api.settings import Settings
from ledger.commands import CreatedKey
from ledger.crypto import MasterKey
from ledger.errors import AlreadyExistsError, PermissionDeniedError, UnauthenticatedError, ValidationError
from ledger.service import Ledger
from projections.reader import Projections
from projections.views import SessionRow
from tests.api.conftest import PROJECTION_TABLES, events_after, max_seq, rebuilt_projections, table_dump
from tests.conftest import ADMIN, ctx_for
from tests.pg import PgDsn

SESSION = "s3ss10n-Id_0123456789abcdef"  # 27 characters of [A-Za-z0-9_-]
OTHER = "another-session-id-0000"


@dataclass
class Running:
    settings: Settings
    ledger: Ledger
    projections: Projections


async def start(settings: Settings) -> Running:
    ledger = build_ledger(settings)
    await ledger.start()
    projections = build_projections(settings, ledger)
    await projections.open()
    return Running(settings, ledger, projections)


async def stop(running: Running) -> None:
    await running.projections.close()
    await running.ledger.stop()


@pytest.fixture
async def running(db_file: Path | PgDsn) -> AsyncIterator[Running]:
    started = await start(Settings(db=db_file, master_key=MasterKey.generate()[0]))
    try:
        yield started
    finally:
        await stop(started)


def public_key_line(comment: str) -> str:
    raw = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{raw.decode()} {comment}"


async def test_start_end_and_get_a_session(running: Running, db_file: Path | PgDsn) -> None:
    ledger, projections = running.ledger, running.projections
    admin = await ledger.create_org(ADMIN, "acme")
    member = await ledger.create_api_key(ctx_for(admin), "acme", "dash user")
    assert await projections.get_session(SESSION) is None
    before = max_seq(db_file)
    assert await ledger.start_session(ctx_for(member), "acme", SESSION) is None
    row = await projections.get_session(SESSION)
    assert isinstance(row, SessionRow)
    assert (row.org, row.session_id, row.key_id, row.ended_at) == ("acme", SESSION, member.key_id, None)
    started, = events_after(db_file, before)
    assert (started["type"], started["stream"], started["stream_version"], started["session_id"]) == (
        "session.started", f"session:{SESSION}", 1, SESSION)
    assert started["actor"] == {"key_id": member.key_id, "label": "dash user", "kind": "api_key"}
    assert started["at"] == row.started_at

    # Another org cannot end it; then its own key signs out once.
    await ledger.create_org(ADMIN, "globex")
    assert await ledger.end_session(ctx_for(member), "globex", SESSION) is False
    assert max_seq(db_file) == before + 3  # globex's org and key only
    assert await ledger.end_session(ctx_for(member), "acme", SESSION) is True
    ended, = events_after(db_file, before + 3)
    assert (ended["type"], ended["session_id"], ended["reason"], ended["stream_version"]) == (
        "session.ended", SESSION, "signed_out", 2)
    assert ended["actor"]["key_id"] == member.key_id
    row = await projections.get_session(SESSION)
    assert row is not None and row.ended_at == ended["at"] and row.started_at == started["at"]
    # Ended, unknown or malformed: False, and nothing recorded.
    for session_id in (SESSION, OTHER, "short", "x" * 65, SESSION + "\n", "bad id with spaces!!!!"):
        assert await ledger.end_session(ctx_for(member), "acme", session_id) is False
    assert max_seq(db_file) == before + 4
    assert await projections.get_session(OTHER) is None


async def test_who_may_start_a_session(running: Running, db_file: Path | PgDsn) -> None:
    ledger = running.ledger
    admin = await ledger.create_org(ADMIN, "acme")
    globex = await ledger.create_org(ADMIN, "globex")
    revoked = await ledger.create_api_key(ctx_for(admin), "acme", "gone")
    await ledger.revoke_api_key(ctx_for(admin), "acme", revoked.key_id)
    before = max_seq(db_file)
    for session_id in ("short", "x" * 65, SESSION + "\n", "has space in it 0123456", "dot.is.not.allowed.here", ""):
        with pytest.raises(ValidationError, match="session_id"):
            await ledger.start_session(ctx_for(admin), "acme", session_id)
    with pytest.raises(PermissionDeniedError):
        await ledger.start_session(ADMIN, "acme", SESSION)  # the admin token has no session
    for key in (globex, revoked):  # another org's key; a revoked key
        with pytest.raises(UnauthenticatedError):
            await ledger.start_session(ctx_for(key), "acme", SESSION)
    assert max_seq(db_file) == before
    await ledger.start_session(ctx_for(admin), "acme", "a" * 20)
    await ledger.start_session(ctx_for(admin), "acme", "Z-_9" * 16)  # 64 characters
    # An id is started once, whatever the org.
    for key, org in ((admin, "acme"), (globex, "globex")):
        with pytest.raises(AlreadyExistsError):
            await ledger.start_session(ctx_for(key), org, "a" * 20)
    assert max_seq(db_file) == before + 2


async def test_a_revoked_key_still_signs_out(running: Running) -> None:
    ledger, projections = running.ledger, running.projections
    admin = await ledger.create_org(ADMIN, "acme")
    member = await ledger.create_api_key(ctx_for(admin), "acme", "leaving")
    await ledger.start_session(ctx_for(member), "acme", SESSION)
    await ledger.revoke_api_key(ctx_for(admin), "acme", member.key_id)
    assert await ledger.end_session(ctx_for(member), "acme", SESSION) is True
    row = await projections.get_session(SESSION)
    assert row is not None and row.ended_at is not None


async def workload(ledger: Ledger) -> tuple[CreatedKey, list[str]]:
    """Sessions started and ended, SSH keys added and removed, in two orgs."""
    admin = await ledger.create_org(ADMIN, "acme")
    globex = await ledger.create_org(ADMIN, "globex")
    member = await ledger.create_api_key(ctx_for(admin), "acme", "member")
    for i, key in enumerate((admin, member, globex)):
        await ledger.start_session(ctx_for(key), key.org, f"session-{i}-" + "q" * 20)
    await ledger.end_session(ctx_for(member), "acme", "session-1-" + "q" * 20)
    lines = [public_key_line(f"k{i}@host") for i in range(4)]
    ids = [(await ledger.add_ssh_key(ctx_for(key), key.org, line)).ssh_key_id
           for key, line in zip((admin, member, member, globex), lines, strict=True)]
    await ledger.remove_ssh_key(ctx_for(admin), "acme", ids[1])
    return member, lines


async def test_the_rows_are_the_same_after_a_rebuild(running: Running, db_file: Path | PgDsn,
                                                     tmp_path: Path) -> None:
    await workload(running.ledger)
    incremental = table_dump(db_file, PROJECTION_TABLES)
    assert len(incremental["dashboard_sessions"]) == 3 and len(incremental["ssh_keys"]) == 3
    assert [row[4] is None for row in incremental["dashboard_sessions"]] == [True, False, True]
    assert rebuilt_projections(db_file, tmp_path) == incremental


async def test_after_a_restart_the_write_side_decides_the_same(running: Running, db_file: Path | PgDsn) -> None:
    member, lines = await workload(running.ledger)
    await stop(running)
    again = await start(running.settings)
    running.ledger, running.projections = again.ledger, again.projections  # the fixture stops these
    ledger = again.ledger
    # Folded again from the streams: an ended session stays ended, an open one ends once, an id is taken,
    # a fingerprint is added once, the key that added an SSH key may still remove it.
    assert await ledger.end_session(ctx_for(member), "acme", "session-1-" + "q" * 20) is False
    assert await ledger.end_session(ctx_for(member), "acme", "session-0-" + "q" * 20) is True
    with pytest.raises(AlreadyExistsError):
        await ledger.start_session(ctx_for(member), "acme", "session-2-" + "q" * 20)
    with pytest.raises(AlreadyExistsError, match="fingerprint"):
        await ledger.add_ssh_key(ctx_for(member), "acme", lines[2])
    assert (await ledger.add_ssh_key(ctx_for(member), "acme", lines[1])).label == "k1@host"  # removed before
    listed = await again.projections.list_ssh_keys("acme")
    assert [row.comment for row in listed] == ["k0@host", "k2@host", "k1@host"]
    await ledger.remove_ssh_key(ctx_for(member), "acme", listed[1].ssh_key_id)
    with pytest.raises(PermissionDeniedError):
        await ledger.remove_ssh_key(ctx_for(member), "acme", listed[0].ssh_key_id)  # the admin's
