"""Several writers on one PostgreSQL database: what only a shared server has to prove.

- Two ledgers (each with its own writer and write cache, as two processes have) on one database:
  no lost update, no decision made on state the other changed (a secret it deleted, a key it
  revoked), gapless `seq`, and the chains verify.
- A reader tailing the log while many writers in other threads commit slowly and concurrently
  never sees `seq` N+1 before N, so it never skips an event.
- Two real server processes on different ports under concurrent clients: no lost update, each
  process's reads current after the write its client saw, gapless `seq`, verify ok; and
  `serve --workers 2`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ledger.commands import Context
from ledger.crypto import Keyring, MasterKey
from ledger.errors import NotFoundError, PermissionDeniedError, StaleReadError, UnauthenticatedError
from ledger.events import Actor
from ledger.pg_store import PostgresRecorder
from ledger.service import Ledger
from ledger.verify import verify_recorder
from projections.pg_tables import all_projectors
from tests.contracts.recorder import org_event, pending, reveal_event
from tests.pg import fresh_database, needs_postgres, pg_database, pg_query
from tests.test_cli_e2e import HOST, KEYLEDGER, Server, clean_env, free_port, new_master_key, start_server

ADMIN = Context(actor=Actor(key_id="admin", label="admin token", kind="admin"))


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    async for database in fresh_database():
        yield database


def ledger_on(dsn: str, keyring: Keyring) -> Ledger:
    return Ledger(PostgresRecorder(dsn, all_projectors(), pool_size=4), keyring)


def as_key(key_id: str) -> Context:
    return Context(actor=Actor(key_id=key_id, label="k", kind="api_key"))


# -- two writers in one test process -------------------------------------------------------------


@needs_postgres
async def test_two_writers_lose_no_update_and_never_decide_on_stale_state(dsn: str) -> None:
    keyring = Keyring(MasterKey.generate()[0])
    one, two = ledger_on(dsn, keyring), ledger_on(dsn, keyring)
    await one.start()
    await two.start()
    try:
        created = await one.create_org(ADMIN, "acme")
        ctx = as_key(created.key_id)
        names = [f"S{i}" for i in range(4)]
        # Concurrent upserts of the same secrets through both writers.
        results = await asyncio.gather(*(
            (one if n % 2 else two).upsert_secret(ctx, "acme", names[n % len(names)], f"value-{n}".encode())
            for n in range(200)
        ))
        versions: dict[str, list[int]] = defaultdict(list)
        for n, outcome in enumerate(results):
            versions[names[n % len(names)]].append(outcome.event.version)
        for name in names:
            assert sorted(versions[name]) == list(range(1, 51)), name  # every upsert got its own version
            # Both writers agree on the last value: neither overwrote a version it had not seen.
            a, b = await one.reveal_secret(ctx, "acme", name), await two.reveal_secret(ctx, "acme", name)
            assert a.version == b.version == 50 and a.value == b.value

        # Writer one has the secret and the key cached; writer two deletes one and revokes the other.
        await one.reveal_secret(ctx, "acme", "S0")
        await two.delete_secret(ctx, "acme", "S0")
        with pytest.raises(NotFoundError):
            await one.reveal_secret(ctx, "acme", "S0")
        member = await one.create_api_key(ctx, "acme", "member", role="member", scope="all")
        await one.reveal_secret(as_key(member.key_id), "acme", "S1")
        await two.revoke_api_key(ctx, "acme", member.key_id)
        with pytest.raises((PermissionDeniedError, UnauthenticatedError)):
            await one.reveal_secret(as_key(member.key_id), "acme", "S1")

        seqs = [r.seq for r in await one.recorder.read_after(0, 100_000)]
        assert seqs == list(range(1, len(seqs) + 1))
        report = await verify_recorder(one.recorder)
        assert report.ok, report.summary()
    finally:
        await one.stop()
        await two.stop()


@needs_postgres
async def test_a_purge_by_one_writer_ends_what_the_other_can_reveal_or_replay(dsn: str) -> None:
    from ledger.idempotency import StoredAnswer

    keyring = Keyring(MasterKey.generate()[0])
    one, two = ledger_on(dsn, keyring), ledger_on(dsn, keyring)
    await one.start()
    await two.start()
    try:
        ctx = as_key((await one.create_org(ADMIN, "acme")).key_id)
        await one.upsert_secret(ctx, "acme", "db", b"v1")
        await one.upsert_secret(ctx, "acme", "db", b"v2")

        def render(revealed: object, error: object) -> StoredAnswer:
            return StoredAnswer(status=200, body=getattr(revealed, "value", b""))

        def idempotent_reveal() -> object:
            command = one.reveal_secret_command(ctx, "acme", "db", version=1)
            return one.submit_idempotent(command, "acme/k", "retry-1", "fp", render)

        first = await idempotent_reveal()
        assert first.answer.body == b"v1"  # type: ignore[attr-defined]
        assert (await one.reveal_secret(ctx, "acme", "db", version=1)).value == b"v1"  # both keys cached by one
        await two.delete_secret(ctx, "acme", "db", purge=True)
        for version in (1, 2):
            with pytest.raises(NotFoundError):
                await one.reveal_secret(ctx, "acme", "db", version=version)
        with pytest.raises(NotFoundError, match="destroyed"):
            await idempotent_reveal()  # its stored answer died with the data key
    finally:
        await one.stop()
        await two.stop()


# -- a tailing reader ---------------------------------------------------------------------------


WRITERS = 6
APPENDS_PER_WRITER = 40


def _write_slowly(dsn: str, writer: int, stop: threading.Event) -> int:
    """One "process": its own event loop and pool, appending small batches that commit slowly."""
    rng = random.Random(writer)

    async def run() -> int:
        recorder = PostgresRecorder(dsn, all_projectors(), pool_size=2)
        await recorder.open()

        def dawdle(step: str) -> None:
            if step in ("begin", "events"):  # holding the transaction open, sometimes before the lock
                time.sleep(rng.random() * 0.004)

        recorder.inject_fault = dawdle
        written = 0
        try:
            for _ in range(APPENDS_PER_WRITER):
                size = rng.randint(1, 3)
                while True:  # as the writer does: stamped again when another thread committed later
                    batch = [reveal_event(f"org{writer}", "x", at=time.time_ns()) for _ in range(size)]
                    try:
                        await recorder.append([pending(e) for e in batch], batch)
                        break
                    except StaleReadError:
                        continue
                written += size
        finally:
            await recorder.close()
        return written

    try:
        return asyncio.run(run())
    finally:
        stop.set()


@needs_postgres
async def test_a_tailing_reader_never_misses_an_event_while_writers_commit_concurrently(dsn: str) -> None:
    tailer = PostgresRecorder(dsn, all_projectors())
    await tailer.open()
    try:
        orgs = [org_event(f"org{w}") for w in range(WRITERS)]
        await tailer.append([pending(e) for e in orgs], orgs)
        seen: list[int] = []
        position = await tailer.max_seq()
        stops = [threading.Event() for _ in range(WRITERS)]
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=WRITERS) as pool:
            futures = [loop.run_in_executor(pool, _write_slowly, dsn, w, stops[w]) for w in range(WRITERS)]
            while True:
                done = all(s.is_set() for s in stops)  # read once more after the last writer finished
                for record in await tailer.read_after(position, 50):
                    # Each read continues exactly where the last one ended: never a gap that a late
                    # commit could fill after the tailer moved past it.
                    assert record.seq == position + 1, (position, record.seq)
                    position = record.seq
                    seen.append(record.seq)
                if done:
                    break
                await asyncio.sleep(0)
            written = sum(await asyncio.gather(*futures))
        assert len(seen) == written
        assert position == await tailer.max_seq() == WRITERS + written
    finally:
        await tailer.close()


# -- two server processes -----------------------------------------------------------------------


@pytest.fixture
def database() -> Iterator[str]:
    with pg_database() as database_dsn:
        yield database_dsn


ADMIN_TOKEN = "adm_scale_" + "t" * 24


@contextlib.contextmanager
def servers_on(dsn: str, folder: Path, *extra_args: str, count: int = 2) -> Iterator[tuple[list[Server], str]]:
    """`count` real servers on one database (rate limits off), an org made through the first, and its
    admin API key; every server is stopped afterwards."""
    env = clean_env(KEYLEDGER_MASTER_KEY=new_master_key(), KEYLEDGER_ADMIN_TOKEN=ADMIN_TOKEN, KEYLEDGER_DB=dsn,
                    KEYLEDGER_RATE_LIMIT_PER_KEY="off", KEYLEDGER_RATE_LIMIT_PER_ADDRESS="off")
    servers: list[Server] = []
    try:
        for i in range(count):
            servers.append(start_server(folder / f"s{i}", ["--host", HOST, "--port", str(free_port()),
                                                            "--db", dsn, *extra_args], env))
        created = httpx.post(f"{servers[0].url}/v1/admin/orgs", json={"org": "acme"},
                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert created.status_code == 201, created.text
        yield servers, created.json()["api_key"]
    finally:
        for server in servers:
            server.stop()


CLIENTS = 8
ROUNDS = 25


@needs_postgres
def test_two_server_processes_on_one_database(database: str, tmp_path: Path) -> None:
    with servers_on(database, tmp_path) as (servers, api_key):
        headers = {"Authorization": f"Bearer {api_key}"}
        names = ["A", "B", "C"]
        lost: list[str] = []
        versions: dict[str, list[int]] = defaultdict(list)
        lock = threading.Lock()

        def client(worker: int) -> None:
            rng = random.Random(worker)
            with httpx.Client(timeout=30) as http:
                for n in range(ROUNDS):
                    name = rng.choice(names)
                    write_to, read_from = rng.sample(servers, 2)
                    value = f"w{worker}-{n}-{os.urandom(4).hex()}"
                    written = http.post(f"{write_to.url}/v1/secrets", json={"name": name, "value": value},
                                        headers=headers)
                    assert written.status_code in (200, 201), written.text
                    version = written.json()["version"]
                    with lock:
                        versions[name].append(version)
                    # The other process reads at least what this client saw committed.
                    got = http.get(f"{read_from.url}/v1/secrets/{name}", headers=headers)
                    assert got.status_code == 200 and got.json()["version"] >= version, got.text
                    revealed = http.post(f"{read_from.url}/v1/secrets/{name}/reveal", headers=headers).json()
                    if revealed["version"] == version and revealed["value"] != value:
                        lost.append(name)

        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            for future in [pool.submit(client, w) for w in range(CLIENTS)]:
                future.result()

        assert not lost
        for name in names:  # no lost update: every write got its own version, none skipped
            assert sorted(versions[name]) == list(range(1, len(versions[name]) + 1)), name
        seqs = [seq for (seq,) in pg_query(database, "SELECT seq FROM events ORDER BY seq")]
        assert seqs == list(range(1, len(seqs) + 1))
        reveals = pg_query(database, "SELECT COUNT(*) FROM events WHERE type = 'secret.revealed'")[0][0]
        assert reveals == CLIENTS * ROUNDS
        for server in servers:
            verified = httpx.get(f"{server.url}/v1/ledger/verify", headers=headers)
            assert verified.status_code == 200 and verified.json()["ok"] is True, verified.text
    # And offline, every org from the first event, as `keyledger verify` does for a SQLite file.
    offline = subprocess.run([KEYLEDGER, "verify", "--db", database], env=clean_env(), capture_output=True,
                             text=True, timeout=60, check=False)
    assert offline.returncode == 0 and offline.stdout.startswith("ok"), offline.stdout + offline.stderr


@needs_postgres
def test_one_idempotency_key_sent_to_two_processes_at_once_runs_once(database: str, tmp_path: Path) -> None:
    with servers_on(database, tmp_path) as (servers, api_key):
        keys = [f"retry-{n}" for n in range(30)]

        def send(server_and_key: tuple[int, str]) -> tuple[str, int, dict[str, object]]:
            # A new API key: its stream is new each time, so only the idempotency record can tell
            # the second process that the first one already ran this request.
            server, key = server_and_key
            answer = httpx.post(f"{servers[server].url}/v1/keys", json={"label": key}, timeout=30,
                                headers={"Authorization": f"Bearer {api_key}", "Idempotency-Key": key})
            body = answer.json()
            body.pop("request_id", None)
            return key, answer.status_code, body

        with ThreadPoolExecutor(max_workers=8) as pool:  # each key to both processes at the same moment
            answers = list(pool.map(send, [(server, key) for key in keys for server in (0, 1)]))
        by_key: dict[str, list[tuple[int, dict[str, object]]]] = defaultdict(list)
        for key, status, body in answers:
            by_key[key].append((status, body))
        for key in keys:
            (first, first_body), (second, second_body) = by_key[key]
            assert first == second == 201 and first_body == second_body, by_key[key]  # one answer, replayed
        created_events = pg_query(database, "SELECT COUNT(*) FROM events WHERE type = 'api_key.created'")[0][0]
        assert created_events == 1 + len(keys)  # the org's first key, then each request once


@needs_postgres
def test_serve_workers_runs_several_processes_on_postgresql(database: str, tmp_path: Path) -> None:
    with servers_on(database, tmp_path, "--workers", "2", count=1) as ([server], api_key):
        headers = {"Authorization": f"Bearer {api_key}"}
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(
                lambda n: httpx.post(f"{server.url}/v1/secrets", json={"name": "N", "value": f"v{n}"},
                                     headers=headers).status_code, range(40)))
        assert set(answers) <= {200, 201} and answers.count(201) == 1
        got = httpx.get(f"{server.url}/v1/secrets/N", headers=headers).json()
        assert got["version"] == 40
        # Two worker processes, each with its own connections to the database.
        backends = pg_query(database, "SELECT COUNT(DISTINCT pid) FROM pg_stat_activity "
                                      "WHERE datname = current_database() AND pid <> pg_backend_pid()")[0][0]
        assert backends >= 2 * 3  # per worker: the writer's pool, the readers' pool, the listener


def test_serve_workers_on_sqlite_is_refused_with_one_clear_line(tmp_path: Path) -> None:
    env = clean_env(KEYLEDGER_MASTER_KEY=new_master_key())
    result = subprocess.run([KEYLEDGER, "serve", "--db", str(tmp_path / "k.db"), "--workers", "2",
                             "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "PostgreSQL" in result.stderr, result.stderr
