"""`keyledger migrate`: a whole ledger copied to another backend with every hash unchanged.

The round trip runs through the real CLI (a subprocess): SQLite to PostgreSQL and back, and SQLite
to SQLite (which needs no server). Each side is then opened again and compared row for row (events,
data keys, checkpoints, projections), verified, and asked for every secret's value.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ledger.checkpoint import Checkpoint
from ledger.codec import decode_event
from ledger.commands import CreatedKey
from ledger.crypto import Keyring, MasterKey
from ledger.errors import NotFoundError, RevealDeniedError
from ledger.keys import destroy_version, rewrap_all
from ledger.migrate import MigrationError, migrate
from ledger.pg_store import PostgresRecorder
from ledger.recorder import Recorder
from ledger.records import DataKeyRow, StoredRecord
from ledger.service import Ledger
from ledger.sqlite_store import SqliteRecorder
from ledger.verify import verify_recorder
from projections import pg_tables, sqlite_tables
from tests.api.conftest import order_of
from tests.conftest import ADMIN, ctx_for
from tests.pg import fresh_database, needs_postgres

KEYLEDGER = str(Path(sys.executable).parent / "keyledger")
ORGS = ("acme", "globex", "initech")
TARGETS = ["sqlite", pytest.param("postgresql", marks=needs_postgres)]


# -- a ledger worth copying --------------------------------------------------------------------------


@dataclass
class World:
    location: str  # sqlite:FILE
    master: MasterKey  # the master key after the rotation: it alone opens every data key
    admins: dict[str, CreatedKey]
    values: dict[tuple[str, str], bytes]  # live secrets
    deleted: set[tuple[str, str]] = field(default_factory=set)


async def build(path: Path, *, orgs: tuple[str, ...] = ORGS, bulk: int = 12) -> World:
    """Several orgs; secrets created, updated, deleted and re-created, revealed (and a reveal denied);
    a key revoked, a version destroyed, the master key rotated; checkpoints along the way."""
    first = MasterKey.generate()[0]
    led = Ledger(SqliteRecorder(path, sqlite_tables.all_projectors()), Keyring(first), checkpoint_every=5)
    await led.start()
    try:
        admins = {org: await led.create_org(ADMIN, org) for org in orgs}
        world = World(location=f"sqlite:{path}", master=first, admins=admins, values={})

        async def put(org: str, name: str, value: bytes, *, scope: str | None = None, category: str | None = None,
                      description: str | None = None) -> None:
            await led.upsert_secret(ctx_for(admins[org]), org, name, value, scope=scope, category=category,
                                    description=description)
            world.values[(org, name)] = value
            world.deleted.discard((org, name))

        async def delete(org: str, name: str) -> None:
            await led.delete_secret(ctx_for(admins[org]), org, name)
            del world.values[(org, name)]
            world.deleted.add((org, name))

        one, two, three = orgs[0], orgs[1 % len(orgs)], orgs[-1]
        agent = await led.create_api_key(ctx_for(admins[one]), one, "agent", scope="agents")
        await put(one, "DB_URL", b"postgres://user:v1@db/app")
        await put(one, "DB_URL", b"postgres://user:v2@db/app", description="rotated")
        await put(one, "TOOL_TOKEN", b"tool-secret", scope="tools", category="tool")
        await put(one, "TEMP", b"temporary")
        await delete(one, "TEMP")
        await put(two, "G1", b"g1")
        await put(two, "G1", b"g1-new")
        await put(three, "I1", b"i1")
        await delete(three, "I1")
        await put(three, "I1", b"i1-again")
        for i in range(bulk):
            await put(two, f"BULK_{i:02}", os.urandom(16).hex().encode())
        await led.reveal_secret(ctx_for(admins[one]), one, "DB_URL", reason="before the migration")
        with pytest.raises(RevealDeniedError):
            await led.reveal_secret(ctx_for(agent), one, "TOOL_TOKEN")
        await destroy_version(led, ctx_for(admins[one]), one, "DB_URL", 1)
        await led.revoke_api_key(ctx_for(admins[one]), one, agent.key_id)
        world.master = MasterKey.generate()[0]
        await rewrap_all(led, world.master, ADMIN)  # a `_system` chain, and every data key rewrapped
        await put(one, "AFTER_ROTATION", b"after")
        for org in orgs:
            await led.checkpoint(org)
        return world
    finally:
        await led.stop()


# -- opening and reading either backend ------------------------------------------------------------


def open_recorder(location: str) -> Recorder:
    if location.startswith("postgresql://"):
        return PostgresRecorder(location, pg_tables.all_projectors())
    return SqliteRecorder(location.removeprefix("sqlite:"), sqlite_tables.all_projectors())


@contextlib.asynccontextmanager
async def new_location(kind: str, tmp_path: Path, name: str) -> AsyncIterator[str]:
    """An empty place for a ledger: a SQLite file's name, or a fresh PostgreSQL database (dropped after)."""
    if kind == "sqlite":
        yield f"sqlite:{tmp_path / name}"
        return
    async for dsn in fresh_database():
        yield dsn


@dataclass
class Snapshot:
    records: list[StoredRecord]
    data_keys: list[DataKeyRow]
    checkpoints: dict[str, Checkpoint | None]
    projections: dict[str, list[tuple[object, ...]]]
    positions: dict[str, int]


async def projection_rows(recorder: Recorder) -> dict[str, list[tuple[object, ...]]]:
    rows: dict[str, list[tuple[object, ...]]] = {}
    for table in sqlite_tables.PROJECTION_TABLES:
        sql = f"SELECT * FROM {table} ORDER BY {order_of(table)}"
        if isinstance(recorder, PostgresRecorder):
            rows[table] = [tuple(r) for r in await recorder.pool.fetch(sql)]
        else:
            assert isinstance(recorder, SqliteRecorder)
            rows[table] = [tuple(r) for r in await recorder.read_connection.execute_fetchall(sql)]
    return rows


async def snapshot(location: str) -> Snapshot:
    recorder = open_recorder(location)
    await recorder.open()
    try:
        orgs = await recorder.orgs()
        return Snapshot(
            records=await recorder.read_after(0, 1_000_000),
            data_keys=await recorder.data_keys_after("", 1_000_000),
            checkpoints={org: await recorder.latest_checkpoint(org) for org in orgs},
            projections=await projection_rows(recorder),
            positions=await recorder.projection_positions(),
        )
    finally:
        await recorder.close()


async def keyledger(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYLEDGER_")}
    return await asyncio.to_thread(subprocess.run, [KEYLEDGER, *args], env=env, stdin=subprocess.DEVNULL,
                                   capture_output=True, text=True, timeout=120, check=False)


async def cli_migrate(source: str, target: str) -> subprocess.CompletedProcess[str]:
    done = await keyledger("migrate", "--from", source, "--to", target)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return done


def refused(done: subprocess.CompletedProcess[str], words: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], done.stderr


async def reveal_all(location: str, world: World) -> dict[tuple[str, str], bytes]:
    """Every live secret's value, revealed through a Ledger (each reveal recorded); deleted ones are 404."""
    led = Ledger(open_recorder(location), Keyring(world.master))
    await led.start()
    try:
        values = {}
        for org, name in sorted(world.values):
            values[(org, name)] = (await led.reveal_secret(ctx_for(world.admins[org]), org, name)).value
        for org, name in sorted(world.deleted):
            with pytest.raises(NotFoundError):
                await led.reveal_secret(ctx_for(world.admins[org]), org, name)
        return values
    finally:
        await led.stop()


async def verified(location: str) -> int:
    recorder = open_recorder(location)
    await recorder.open()
    try:
        report = await verify_recorder(recorder)
        assert report.ok, report.summary()
        return report.checked
    finally:
        await recorder.close()


# -- the round trip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TARGETS)
async def test_migrate_copies_every_record_key_checkpoint_and_value_with_hashes_unchanged(
    tmp_path: Path, kind: str
) -> None:
    world = await build(tmp_path / "source.db")
    source = await snapshot(world.location)
    total = len(source.records)
    assert {r.org for r in source.records} == {*ORGS, "_system"}
    assert any(r.sealed is not None for r in source.records) and len(source.data_keys) > 10
    assert all(source.checkpoints[org] is not None for org in ORGS)

    async with new_location(kind, tmp_path, "target.db") as target:
        done = await cli_migrate(world.location, target)
        assert done.stdout.splitlines() == [
            f"source: ok, {total} events in 4 orgs verified",
            f"target: ok, {total} events in 4 orgs verified",
        ]
        assert f"copied {total} events, {len(source.data_keys)} data keys, 4 checkpoints; 4 orgs" in done.stderr
        assert "migrating" in done.stderr  # the progress bar (its label only, off a terminal)

        copy = await snapshot(target)
        assert copy.records == source.records  # seq, org_seq, prev_hash, hash, body, sealed: all of it
        assert copy.data_keys == source.data_keys
        assert copy.checkpoints == source.checkpoints
        assert copy.projections == source.projections
        assert copy.positions == source.positions
        assert await verified(target) == await verified(world.location) == total

        if kind == "postgresql":  # and back again, PostgreSQL to SQLite
            back = f"sqlite:{tmp_path / 'back.db'}"
            await cli_migrate(target, back)
            again = await snapshot(back)
            assert (again.records, again.data_keys, again.checkpoints, again.projections) == (
                source.records, source.data_keys, source.checkpoints, source.projections)
            assert await reveal_all(back, world) == world.values

        assert await reveal_all(target, world) == world.values
        assert await reveal_all(world.location, world) == world.values


@pytest.mark.parametrize("kind", TARGETS)
async def test_migrating_again_resumes_and_never_duplicates(tmp_path: Path, kind: str) -> None:
    world = await build(tmp_path / "source.db")
    async with new_location(kind, tmp_path, "target.db") as target:
        await cli_migrate(world.location, target)
        before = await snapshot(target)

        # Nothing new: a no-op.
        done = await cli_migrate(world.location, target)
        total = len(before.records)
        assert f"copied 0 events (after {total} already there), 0 data keys, 0 checkpoints" in done.stderr
        assert await snapshot(target) == before

        # The source went on (a new value, a reveal, another master key rotation): only that is copied,
        # and the rewrapped data keys replace their old wrapping on the target.
        led = Ledger(open_recorder(world.location), Keyring(world.master))
        await led.start()
        try:
            acme = world.admins["acme"]
            await led.upsert_secret(ctx_for(acme), "acme", "LATER", b"later")
            world.values[("acme", "LATER")] = b"later"
            await led.reveal_secret(ctx_for(acme), "acme", "LATER")
            world.master = MasterKey.generate()[0]
            await rewrap_all(led, world.master, ADMIN)
        finally:
            await led.stop()
        source = await snapshot(world.location)
        done = await cli_migrate(world.location, target)
        added = len(source.records) - total
        assert added == 3  # the upsert, the reveal, the rotation
        assert f"copied {added} events (after {total} already there), 1 data keys ({len(before.data_keys)} replaced)" \
            in done.stderr
        after = await snapshot(target)
        assert after == source
        assert await reveal_all(target, world) == world.values

    # An interrupted migration (its first records committed, nothing else) goes on where it stopped.
    async with new_location(kind, tmp_path, "interrupted.db") as target:
        partial = open_recorder(target)
        await partial.open()
        try:
            first = source.records[:10]
            await partial.import_records(first, [decode_event(r.body) for r in first])
        finally:
            await partial.close()
        done = await cli_migrate(world.location, target)
        assert f"copied {len(source.records) - 10} events (after 10 already there)" in done.stderr
        assert await snapshot(target) == source


@pytest.mark.parametrize("kind", TARGETS)
async def test_a_target_holding_anything_else_is_refused_and_left_untouched(tmp_path: Path, kind: str) -> None:
    world = await build(tmp_path / "source.db", bulk=2)
    other = await build(tmp_path / "other.db", bulk=2)  # the same shape, another ledger
    async with new_location(kind, tmp_path, "target.db") as target:
        await cli_migrate(other.location, target)
        held = await snapshot(target)
        refused(await keyledger("migrate", "--from", world.location, "--to", target), "different ledger")
        assert await snapshot(target) == held

    # A target that went on after a copy holds records the source does not have.
    async with new_location(kind, tmp_path, "ahead.db") as target:
        await cli_migrate(world.location, target)
        led = Ledger(open_recorder(target), Keyring(world.master))
        await led.start()
        try:
            await led.upsert_secret(ctx_for(world.admins["acme"]), "acme", "ONLY_ON_TARGET", b"x")
        finally:
            await led.stop()
        held = await snapshot(target)
        refused(await keyledger("migrate", "--from", world.location, "--to", target), "different ledger")
        assert await snapshot(target) == held

    # A version destroyed on the source after a copy: the target must not keep its data key.
    async with new_location(kind, tmp_path, "shredded.db") as target:
        await cli_migrate(world.location, target)
        led = Ledger(open_recorder(world.location), Keyring(world.master))
        await led.start()
        try:
            await destroy_version(led, ctx_for(world.admins["globex"]), "globex", "G1", 2)
        finally:
            await led.stop()
        held = await snapshot(target)
        refused(await keyledger("migrate", "--from", world.location, "--to", target), "no longer has")
        assert await snapshot(target) == held


async def test_the_library_refuses_a_different_ledger_before_writing(tmp_path: Path) -> None:
    world = await build(tmp_path / "source.db", orgs=("acme",), bulk=0)
    other = await build(tmp_path / "other.db", orgs=("acme",), bulk=0)
    source, target = open_recorder(world.location), open_recorder(other.location)
    await source.open()
    await target.open()
    try:
        held = await target.read_after(0, 1_000_000)
        with pytest.raises(MigrationError, match="different ledger"):
            await migrate(source, target)
        assert await target.read_after(0, 1_000_000) == held
    finally:
        await source.close()
        await target.close()


async def test_progress_reaches_the_total(tmp_path: Path) -> None:
    world = await build(tmp_path / "source.db")
    source = open_recorder(world.location)
    target = open_recorder(f"sqlite:{tmp_path / 'target.db'}")
    await source.open()
    await target.open()
    try:
        total = await source.max_seq()
        calls: list[tuple[int, int]] = []
        report = await migrate(source, target, lambda position, of: calls.append((position, of)), chunk=7)
        assert report.records == total and report.already_present == 0
        assert calls[0] == (0, total) and calls[-1] == (total, total)
        assert [p for p, _ in calls] == sorted({p for p, _ in calls})  # only forward
        assert len(calls) == 1 + -(-total // 7)
        again: list[tuple[int, int]] = []
        assert (await migrate(source, target, lambda position, of: again.append((position, of)))).records == 0
        assert again == [(total, total)]
    finally:
        await source.close()
        await target.close()


async def test_a_side_failing_verification_exits_1_naming_the_event(tmp_path: Path) -> None:
    """A ciphertext swapped in the source (its body's digest no longer matches; the chain itself is intact,
    so the copy goes through): the full verification of both sides catches it, where checking chains alone
    would not."""
    world = await build(tmp_path / "source.db", orgs=("acme",), bulk=0)
    path = world.location.removeprefix("sqlite:")
    conn = sqlite3.connect(path)
    seq, sealed = conn.execute("SELECT seq, sealed FROM events WHERE sealed IS NOT NULL ORDER BY seq").fetchone()
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("UPDATE events SET sealed = ? WHERE seq = ?", (sealed[::-1], seq))
    conn.commit()
    conn.close()
    done = await keyledger("migrate", "--from", world.location, "--to", str(tmp_path / "target.db"))
    assert done.returncode == 1, (done.stdout, done.stderr)
    reason = f"FAILED at seq {seq}: the sealed value does not match the digest in the event body"
    assert [line.split(" (")[0] for line in done.stdout.splitlines()] == [f"source: {reason}", f"target: {reason}"]


# -- usage and storage errors -----------------------------------------------------------------------


async def test_usage_and_storage_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    world = await build(tmp_path / "source.db", orgs=("acme",), bulk=0)
    path = world.location.removeprefix("sqlite:")
    refused(await keyledger("migrate", "--from", world.location, "--to", path), "same ledger")
    refused(await keyledger("migrate", "--from", str(tmp_path / "missing.db"), "--to", str(tmp_path / "t.db")),
            "no such SQLite file")
    refused(await keyledger("migrate", "--from", path, "--to", "mysql://db/x"), "postgresql://")
    refused(await keyledger("migrate", "--from", path, "--to", str(tmp_path / "nowhere" / "t.db")), "no such folder")
    assert not (tmp_path / "missing.db").exists()
    # A server (here: an open recorder) holding the source file: the store's own message.
    holder = SqliteRecorder(path)
    await holder.open()
    try:
        refused(await keyledger("migrate", "--from", path, "--to", str(tmp_path / "t.db")),
                "already open for writing by another process")
    finally:
        await holder.close()
