#!/usr/bin/env python3
"""Storage benchmark of the ledger: appends, group commit, raw scans, verify, exports, rebuild and as_of.

Measured as events per second on a database of at least ``--events`` events (default 1,000,000):

  single-reveal  sequential ``await ledger.reveal_secret(...)``: one caller, one event per commit (FULL)
  single-upsert  the same with ``upsert_secret`` (new version: data key, stream version, projection rows)
  group-reveal   64 coroutines, each doing sequential reveals: the writer's group commit batches them
  group-upsert   64 coroutines, each doing sequential upserts
  raw-scan       ``iter_raw_bodies`` + SHA-256 of every body, no decoding: the ceiling of the steps below
  raw-scan-rows  ``iter_rows`` (every column of every row, as the verifier reads them) + SHA-256 of every body
  verify         ``verify_rows(iter_rows(path))``: the offline verifier of ``keyledger verify --db``
  export-jsonl   every org exported as ``keyledger audit export --db`` does: ``iter_org_records`` per org,
  export-csv     ``decode_event`` and ``ledger.export.render`` into /dev/null; shown also in MB/s (bytes
  export-ocsf    rendered), and for the raw scans MB/s of event bodies hashed
  rebuild        ``await SqliteRecorder(path, all_projectors()).rebuild_projections()``

and the ratios the design holds: group-reveal / single-reveal >= 5x, verify / raw-scan >= 0.5x,
export-jsonl / raw-scan >= 0.3x, rebuild / raw-scan >= 0.2x (group-upsert / single-upsert is shown
against 5x too; verify and every export are shown against both raw scans).

Besides rates, ``as_of`` is timed: ``projections.point_in_time.secrets_as_of`` (what ``GET /v1/secrets?as_of=``
runs) for the one small org of ``--small-org-events`` events (default 10,000) among all the others, at
the seq of its middle event, at that event's time, and at its head; each the median of ``--as-of-runs``
calls on the Ledger's own recorder (target: the middle under 0.1 s). The fold at the head is checked
against the ``secrets`` projection's rows for that org.

The big database is built once through the Ledger itself, so its bytes are exactly what the service
writes: ``--orgs`` orgs with their admin key, ``--secrets`` secrets created by upserts, then reveals of
random secrets from 512 concurrent callers until it holds exactly ``--events`` events. Spread evenly
among those reveals (so that its rows are scattered over the whole file, as a real tenant's are),
the small org ``small`` gets exactly ``--small-org-events`` events of its own, in order: its creation,
500 secrets created, then updates, deletes, re-creations and reveals of its live secrets. It is cached as
``<cache-dir>/keyledger-bench-<events>.db`` plus a ``.json`` sidecar (the benchmark's throwaway master
key, the callers' key ids and a digest of the table schemas and event types) and reused while the sizes
and that digest match (``--fresh`` forces a rebuild). Each invocation copies it to a work file so
the cache keeps its event count: the read measurements run first on the copy (exactly ``--events``
events, warm page cache), then the write measurements (which append a few tens of thousands of events
after a warm-up that reveals every secret once, as a running server's cache would hold them). Every
measurement is repeated ``--runs`` times, interleaved (A B C A B C ...), and reported as median, min
and max; ratios are ratios of medians. Timing is ``time.perf_counter``. Beside each rate the table shows
the mean writer batch, the process's CPU seconds per wall second (all threads; on a shared machine a
low figure for a CPU-bound step means other processes took the cores) and the bytes written per event
(``wchar`` of /proc/self/io: WAL frames and checkpoints). The load average is printed at start and end.

Run from the repository root. The first full-size run builds the cache (about 80 s for 1M events on
2 idle vCPUs, 0.8 GB; 177 s with the load average at 5); after that a full run of 3 runs takes about
7 minutes on the same loaded machine (the three exports of 1M events dominate).

    .venv/bin/python scripts/bench/ledger.py                             # 1M events, 3 runs
    .venv/bin/python scripts/bench/ledger.py --events 50000 --runs 1     # quick check
    .venv/bin/python scripts/bench/ledger.py --out /tmp/ledger-bench.json
    .venv/bin/python scripts/bench/ledger.py --profile verify            # + cProfile of one verify pass
    .venv/bin/python scripts/bench/ledger.py --profile export-jsonl      # + cProfile of one JSON Lines export
    .venv/bin/python scripts/bench/ledger.py --check                     # exit 1 if a ratio misses its target
"""

from __future__ import annotations

# ruff: noqa: E402 -- the project imports must follow the sys.path fix just below.
import argparse
import asyncio
import cProfile
import hashlib
import io
import json
import os
import platform
import pstats
import random
import resource
import shutil
import sqlite3
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if __name__ == "__main__" and not __package__:
    # Run as a file, sys.path[0] is this folder, where this very file would shadow the `ledger` package.
    sys.path[0] = str(ROOT)

import msgspec

from api.params import AsOf
from ledger.codec import decode_event
from ledger.commands import Context
from ledger.crypto import Keyring, MasterKey
from ledger.events import Actor, AnyEvent, Source
from ledger.export import FORMATS, render
from ledger.recorder import Recorder
from ledger.service import Ledger
from ledger.sqlite_store import (
    LEDGER_SCHEMA,
    SCHEMA_VERSION,
    SqliteRecorder,
    iter_org_records,
    iter_raw_bodies,
    iter_rows,
)
from ledger.verify import verify_rows
from projections.point_in_time import live, secrets_as_of
from projections.sqlite_tables import all_projectors

FORMAT = 2  # bump when the way the cached database is built changes (2: the small org)
ADMIN = Context(actor=Actor(key_id="admin", label="admin token", kind="admin"))
SOURCE = Source(address="203.0.113.7", user_agent="keyledger-bench/1 (python-httpx)")
KEY_LABEL = "bench admin"
BUILD_CONCURRENCY = 512
VALUE_BYTES = 48  # a typical API token
SMALL_ORG = "small"
SMALL_SECRETS = 500
AS_OF_TARGET = 0.1  # seconds, for the small org's middle point

RAW_SCANS = ("raw-scan", "raw-scan-rows")
EXPORTS = tuple(f"export-{fmt}" for fmt in FORMATS)
READS = (*RAW_SCANS, "verify", *EXPORTS, "rebuild")
WRITES = ("single-reveal", "single-upsert", "group-reveal", "group-upsert")
RATIOS: tuple[tuple[str, str, float | None], ...] = (
    ("group-reveal", "single-reveal", 5.0),
    ("group-upsert", "single-upsert", 5.0),
    *((top, scan, 0.5) for top in ("verify",) for scan in RAW_SCANS),
    *((top, scan, 0.3 if top == "export-jsonl" else None) for top in EXPORTS for scan in RAW_SCANS),
    ("rebuild", "raw-scan", 0.2),
)


def storage_fingerprint() -> str:
    """Digest of what shapes the stored bytes (schemas, event types): a change invalidates the cache."""
    parts = [SCHEMA_VERSION, *LEDGER_SCHEMA, *(ddl for p in all_projectors() for ddl in p.schema())]
    parts.append(msgspec.json.encode(msgspec.json.schema(AnyEvent), order="sorted").decode())
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


class Fixture(msgspec.Struct, kw_only=True):
    """What the cached database holds, written beside it once it is complete."""

    format: int
    storage: str  # storage_fingerprint() of the code that built it
    events: int
    orgs: list[str]  # the big orgs (every measurement but as_of works on these)
    secrets: int
    small_org: str  # the org of exactly `small_events` events, scattered among the others
    small_events: int
    keys: dict[str, str]  # org -> id of its admin API key (the caller of every command)
    master_key: str  # base64 of this benchmark's throwaway master key
    build_seconds: float

    def all_orgs(self) -> list[str]:
        return [*self.orgs, self.small_org]

    def secret(self, index: int) -> tuple[str, str]:
        """(org, name) of secret number `index`; secrets are spread round-robin over the orgs."""
        return self.orgs[index % len(self.orgs)], f"secret-{index:05d}"

    def ctx(self, org: str) -> Context:
        """A caller context as the HTTP layer would build it: the org's key, a source, a request id."""
        actor = Actor(key_id=self.keys[org], label=KEY_LABEL, kind="api_key")
        return Context(actor=actor, source=SOURCE, request_id="req_" + os.urandom(8).hex())


class Sample(msgspec.Struct, kw_only=True):
    events: int
    seconds: float
    cpu: float  # CPU seconds of the whole process (all threads) per wall second: 2.0 = both cores busy
    written: int | None  # bytes the process passed to write() (WAL frames, checkpoints), Linux only
    batches: int | None = None  # writer batches committed during the sample (write measurements)
    bytes: int | None = None  # bodies hashed (raw scans) or bytes rendered (exports)

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bytes_written() -> int | None:
    """`wchar` of /proc/self/io: bytes handed to write() and pwrite() by every thread of this process."""
    try:
        with open("/proc/self/io") as stats:
            for line in stats:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class Stopwatch:
    """Wall time by time.perf_counter, and the process's CPU time over the same interval."""

    def __init__(self) -> None:
        self.written = bytes_written()
        self.cpu = cpu_seconds()
        self.wall = time.perf_counter()

    def sample(self, events: int, batches: int | None = None, size: int | None = None) -> Sample:
        seconds = time.perf_counter() - self.wall
        cpu = (cpu_seconds() - self.cpu) / seconds
        after = bytes_written()
        written = None if after is None or self.written is None else after - self.written
        return Sample(events=events, seconds=seconds, cpu=cpu, written=written, batches=batches, bytes=size)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sidecar(db: Path) -> Path:
    return db.with_suffix(".json")


def remove_db(db: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal", ".lock"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def checkpoint(db: Path) -> None:
    """Fold the WAL into the main file so that the file alone is the whole database."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def count_events(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        return int(row[0])
    finally:
        conn.close()


def count_org_events(db: Path, org: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT COALESCE(MAX(org_seq), 0) FROM events WHERE org = ?", (org,)).fetchone()
        return int(row[0])
    finally:
        conn.close()


# -- building the big database -------------------------------------------------------------------


async def pool(workers: int, total: int, job: Callable[[int], Awaitable[object]]) -> None:
    """Run job(0) ... job(total - 1) from `workers` concurrent callers, each one call at a time."""
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < total:
            index = next_index
            next_index += 1
            await job(index)

    await asyncio.gather(*(worker() for _ in range(min(workers, total))))


def small_plan(events: int, seed: int) -> list[tuple[str, str]]:
    """The small org's operations after its creation (2 events), in order, one event each:
    (`upsert` | `delete` | `reveal`, secret name), every one valid at its turn."""
    rng = random.Random(seed + 2)
    plan: list[tuple[str, str]] = []
    alive: list[str] = []
    gone: list[str] = []
    for i in range(events - 2):
        if i < SMALL_SECRETS:
            alive.append(f"small-{i:04d}")
            plan.append(("upsert", alive[-1]))
            continue
        roll = rng.random()
        if roll < 0.05 and len(alive) > 1:
            gone.append(alive.pop(rng.randrange(len(alive))))
            plan.append(("delete", gone[-1]))
        elif roll < 0.08 and gone:
            alive.append(gone.pop(rng.randrange(len(gone))))
            plan.append(("upsert", alive[-1]))
        elif roll < 0.35:
            plan.append(("upsert", rng.choice(alive)))
        else:
            plan.append(("reveal", rng.choice(alive)))
    return plan


async def build(db: Path, events: int, orgs: int, secrets: int, small_events: int, seed: int) -> Fixture:
    remove_db(db)
    master, master_b64 = MasterKey.generate()
    started = time.perf_counter()
    ledger = Ledger(SqliteRecorder(db, all_projectors()), Keyring(master))
    await ledger.start()
    try:
        fx = Fixture(
            format=FORMAT, storage=storage_fingerprint(), events=events, orgs=[f"bench{i}" for i in range(orgs)],
            secrets=secrets, small_org=SMALL_ORG, small_events=small_events, keys={},
            master_key=master_b64, build_seconds=0.0,
        )
        for org in fx.all_orgs():
            fx.keys[org] = (await ledger.create_org(ADMIN, org, label=KEY_LABEL)).key_id

        async def upsert(index: int) -> None:
            org, name = fx.secret(index)
            await ledger.upsert_secret(fx.ctx(org), org, name, os.urandom(VALUE_BYTES), category="provider")

        await pool(BUILD_CONCURRENCY, secrets, upsert)
        log(f"build: {2 * orgs + secrets:,} org, key and secret events in {time.perf_counter() - started:.1f} s")

        rng = random.Random(seed)
        plan = small_plan(small_events, seed)
        jobs = events - 2 * orgs - secrets - 2  # the big orgs' reveals and the small org's plan
        # Small operation j runs at job index slots[j], spread evenly, each after the one before it.
        slots = {(2 * j + 1) * jobs // (2 * len(plan)): j for j in range(len(plan))}
        done = [asyncio.Event() for _ in plan]
        step = max(jobs // 10, 1)

        async def small(j: int) -> None:
            if j:
                await done[j - 1].wait()
            kind, name = plan[j]
            ctx = fx.ctx(SMALL_ORG)
            if kind == "upsert":
                await ledger.upsert_secret(ctx, SMALL_ORG, name, os.urandom(VALUE_BYTES), category="provider")
            elif kind == "delete":
                await ledger.delete_secret(ctx, SMALL_ORG, name)
            else:
                await ledger.reveal_secret(ctx, SMALL_ORG, name)
            done[j].set()

        async def job(index: int) -> None:
            j = slots.get(index)
            if j is not None:
                await small(j)
            else:
                org, name = fx.secret(rng.randrange(secrets))
                await ledger.reveal_secret(fx.ctx(org), org, name)
            if (index + 1) % step == 0:
                elapsed = time.perf_counter() - started
                log(f"build: {index + 1:,} / {jobs:,} reveals and small-org events, {elapsed:.0f} s")

        await pool(BUILD_CONCURRENCY, jobs, job)
    finally:
        await ledger.stop()
    checkpoint(db)
    fx.build_seconds = time.perf_counter() - started
    found = count_events(db)
    if found != events:
        raise SystemExit(f"build: expected {events} events, the database holds {found}")
    found = count_org_events(db, SMALL_ORG)
    if found != small_events:
        raise SystemExit(f"build: expected {small_events} events in org {SMALL_ORG!r}, it holds {found}")
    log(f"build: {events:,} events in {fx.build_seconds:.0f} s ({events / fx.build_seconds:,.0f} events/s)")
    return fx


def cached_database(runner: asyncio.Runner, args: argparse.Namespace) -> tuple[Path, Fixture, bool]:
    """The cached database and its fixture, built first if missing or not matching; True if reused."""
    events, orgs, secrets, small_events = args.events, args.orgs, args.secrets, args.small_org_events
    db = args.cache_dir / f"keyledger-bench-{events}.db"
    meta = sidecar(db)
    if not args.fresh and db.exists() and meta.exists():
        try:
            fx = msgspec.json.decode(meta.read_bytes(), type=Fixture)
            wanted = (FORMAT, storage_fingerprint(), events, orgs, secrets, small_events)
            matches = (fx.format, fx.storage, fx.events, len(fx.orgs), fx.secrets, fx.small_events) == wanted
        except msgspec.ValidationError:
            matches = False
        if matches:
            checkpoint(db)  # in case a previous run was killed with the cache open
            if count_events(db) == events:
                log(f"cache: reusing {db} ({events:,} events, built in {fx.build_seconds:.0f} s)")
                return db, fx, True
        log(f"cache: {db} does not match the requested sizes or the current schemas, rebuilding it")
    meta.unlink(missing_ok=True)
    building = db.with_suffix(".building.db")
    fx = runner.run(build(building, events, orgs, secrets, small_events, args.seed))
    remove_db(db)
    building.rename(db)
    remove_db(building)
    meta.write_bytes(msgspec.json.encode(fx))
    meta.chmod(0o600)
    return db, fx, False


def work_copy(db: Path) -> Path:
    """Copy the cached database to a work file (on disk, so FULL syncs do not wait on its writeback)."""
    work = db.with_suffix(".work.db")
    remove_db(work)
    shutil.copyfile(db, work)
    fd = os.open(work, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return work


# -- measurements --------------------------------------------------------------------------------


Step = Callable[[Path, Fixture], tuple[int, int | None]]  # -> (events, bytes or None)


def raw_scan(db: Path, fx: Fixture) -> tuple[int, int | None]:
    sha256 = hashlib.sha256
    count = size = 0
    for _seq, body in iter_raw_bodies(db):
        sha256(body).digest()
        count += 1
        size += len(body)
    return count, size


def raw_scan_rows(db: Path, fx: Fixture) -> tuple[int, int | None]:
    """Every column of every row (what the verifier reads), and a SHA-256 of each body."""
    sha256 = hashlib.sha256
    count = size = 0
    for row in iter_rows(db):
        body = row[7]
        sha256(body).digest()
        count += 1
        size += len(body)
    return count, size


def verify(db: Path, fx: Fixture) -> tuple[int, int | None]:
    report = verify_rows(iter_rows(db))
    if not report.ok:
        raise SystemExit(f"verify failed: {report.summary()}")
    return report.checked, None


def export_step(fmt: str) -> Step:
    """Export every org, one after the other, as the offline `keyledger audit export --db` does."""

    def export(db: Path, fx: Fixture) -> tuple[int, int | None]:
        count = size = 0
        with open(os.devnull, "wb") as sink:
            for org in fx.all_orgs():
                def records(org: str = org) -> Iterator[tuple[Any, Any]]:
                    nonlocal count
                    for record in iter_org_records(db, org):
                        count += 1
                        yield record, decode_event(record.body)

                for data in render(fmt, records()):
                    sink.write(data)
                    size += len(data)
        return count, size

    return export


READ_STEPS: dict[str, Step] = {
    "raw-scan": raw_scan, "raw-scan-rows": raw_scan_rows, "verify": verify,
    **{f"export-{fmt}": export_step(fmt) for fmt in FORMATS},
}


async def rebuild(db: Path) -> Sample:
    recorder = SqliteRecorder(db, all_projectors())
    await recorder.open()
    try:
        count = await recorder.max_seq()
        watch = Stopwatch()
        await recorder.rebuild_projections()
        return watch.sample(count)
    finally:
        await recorder.close()


def timed(step: Step, db: Path, fx: Fixture) -> Sample:
    watch = Stopwatch()
    events, size = step(db, fx)
    return watch.sample(events, size=size)


class AsOfResult(msgspec.Struct, kw_only=True):
    """`secrets_as_of` timings (seconds) for the small org, at three points."""

    org: str
    org_events: int
    total_events: int
    middle_seq: int
    middle_org_seq: int
    live_at_middle: int
    live_at_head: int
    seconds: dict[str, list[float]]  # point -> one timing per run

    def median(self, point: str) -> float:
        return statistics.median(self.seconds[point])


async def measure_as_of(recorder: Recorder, db: Path, fx: Fixture, runs: int) -> AsOfResult:
    """Time what `GET /v1/secrets?as_of=` folds, for the small org, at its middle event (by seq and by
    time) and at its head; check the head's fold against the `secrets` projection."""
    org = fx.small_org
    middle = fx.small_events // 2
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        seq, at = conn.execute("SELECT seq, at FROM events WHERE org = ? AND org_seq = ?", (org, middle)).fetchone()
        projected = sorted(
            (str(name), int(version))
            for name, version in conn.execute("SELECT name, version FROM secrets WHERE org = ? AND deleted = 0",
                                              (org,))
        )
        total = int(conn.execute("SELECT MAX(seq) FROM events").fetchone()[0])
    finally:
        conn.close()
    points = {"middle by seq": AsOf(seq=seq), "middle by time": AsOf(at=at), "head": AsOf(seq=total)}
    head = await secrets_as_of(recorder, org, points["head"].includes)  # untimed warm-up, and the check
    if sorted((m.name, m.version) for m in live(head)) != projected:
        raise SystemExit(f"as_of: the fold of org {org!r} at its head differs from the secrets projection")
    at_middle = live(await secrets_as_of(recorder, org, points["middle by seq"].includes))
    if live(await secrets_as_of(recorder, org, points["middle by time"].includes)) != at_middle:
        raise SystemExit("as_of: the middle by seq and by time differ")
    seconds: dict[str, list[float]] = {name: [] for name in points}
    for _ in range(runs):
        for name, point in points.items():
            started = time.perf_counter()
            await secrets_as_of(recorder, org, point.includes)
            seconds[name].append(time.perf_counter() - started)
    return AsOfResult(org=org, org_events=fx.small_events, total_events=total, middle_seq=seq,
                      middle_org_seq=middle, live_at_middle=len(at_middle), live_at_head=len(projected),
                      seconds=seconds)


class Writes:
    """The write measurements on one open Ledger over the work copy."""

    def __init__(self, ledger: Ledger, fx: Fixture, args: argparse.Namespace) -> None:
        self.ledger = ledger
        self.fx = fx
        self.args = args
        self.rng = random.Random(args.seed + 1)
        self.upserted = 0  # rotates upserts over every secret

    async def reveal(self, index: int) -> None:
        org, name = self.fx.secret(index)
        await self.ledger.reveal_secret(self.fx.ctx(org), org, name)

    async def upsert(self, index: int) -> None:
        org, name = self.fx.secret(index)
        await self.ledger.upsert_secret(self.fx.ctx(org), org, name, os.urandom(VALUE_BYTES))

    async def warm_up(self) -> None:
        """Reveal every secret once, so the writer's cache holds them all as in a long-running server."""
        started = time.perf_counter()
        await pool(BUILD_CONCURRENCY, self.fx.secrets, self.reveal)
        log(f"write: warm-up, {self.fx.secrets:,} reveals in {time.perf_counter() - started:.1f} s")

    def _next_secrets(self, count: int) -> list[int]:
        picked = [(self.upserted + i) % self.fx.secrets for i in range(count)]
        self.upserted += count
        return picked

    async def _measure(self, count: int, run: Callable[[], Awaitable[None]]) -> Sample:
        batches = self.ledger.writer.batches
        watch = Stopwatch()
        await run()
        return watch.sample(count, self.ledger.writer.batches - batches)

    async def single(self, kind: str) -> Sample:
        count = self.args.single_reveals if kind == "reveal" else self.args.single_upserts
        if kind == "reveal":
            targets = [self.rng.randrange(self.fx.secrets) for _ in range(count)]
            step = self.reveal
        else:
            targets = self._next_secrets(count)
            step = self.upsert

        async def run() -> None:
            for index in targets:
                await step(index)

        return await self._measure(count, run)

    async def group(self, kind: str) -> Sample:
        callers = self.args.callers
        per_caller = self.args.group_reveals if kind == "reveal" else self.args.group_upserts
        if kind == "reveal":
            plans = [[self.rng.randrange(self.fx.secrets) for _ in range(per_caller)] for _ in range(callers)]
            step = self.reveal
        else:
            # Caller c upserts its own secrets, so no two in-flight upserts touch the same one.
            flat = self._next_secrets(callers * per_caller)
            plans = [flat[c::callers] for c in range(callers)]
            step = self.upsert

        async def caller(plan: list[int]) -> None:
            for index in plan:
                await step(index)

        async def run() -> None:
            await asyncio.gather(*(caller(plan) for plan in plans))

        return await self._measure(callers * per_caller, run)


# -- driver --------------------------------------------------------------------------------------


async def measure(work: Path, fx: Fixture, args: argparse.Namespace) -> tuple[dict[str, list[Sample]], AsOfResult]:
    results: dict[str, list[Sample]] = {name: [] for name in (*READS, *WRITES)}
    raw_scan(work, fx)  # untimed: the first pass after the copy must not be the only one to pay for cold pages
    for run in range(args.runs):
        for name in READS:
            if name == "rebuild":
                results[name].append(await rebuild(work))
            else:
                results[name].append(timed(READ_STEPS[name], work, fx))
        log(f"read run {run + 1}/{args.runs}: " + ", ".join(f"{n} {results[n][-1].rate:,.0f}/s" for n in READS))

    ledger = Ledger(SqliteRecorder(work, all_projectors()), Keyring(MasterKey.parse(fx.master_key)))
    await ledger.start()
    try:
        as_of = await measure_as_of(ledger.recorder, work, fx, args.as_of_runs)
        log("as_of: " + ", ".join(f"{name} {as_of.median(name) * 1000:.1f} ms" for name in as_of.seconds))
        writes = Writes(ledger, fx, args)
        await writes.warm_up()
        for run in range(args.runs):
            results["single-reveal"].append(await writes.single("reveal"))
            results["group-reveal"].append(await writes.group("reveal"))
            results["single-upsert"].append(await writes.single("upsert"))
            results["group-upsert"].append(await writes.group("upsert"))
            log(f"write run {run + 1}/{args.runs}: " + ", ".join(f"{n} {results[n][-1].rate:,.0f}/s" for n in WRITES))
        for name in args.profile:
            if name in WRITES:
                kind = name.split("-")[1]
                measure_once = writes.single if name.startswith("single") else writes.group
                await profile_async(name, measure_once(kind), args.profile_lines)
    finally:
        await ledger.stop()

    for name in args.profile:
        if name == "rebuild":
            await profile_async(name, rebuild(work), args.profile_lines)
        elif name in READS:
            profile_sync(name, READ_STEPS[name], work, fx, args.profile_lines)
    return results, as_of


def print_profile(name: str, profiler: cProfile.Profile, lines: int) -> None:
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(lines)
        log(f"\n--- cProfile of one {name} pass, by {order} ---\n{out.getvalue()}")


def profile_sync(name: str, step: Step, db: Path, fx: Fixture, lines: int) -> None:
    profiler = cProfile.Profile()
    profiler.runcall(step, db, fx)
    print_profile(name, profiler, lines)


async def profile_async(name: str, step: Awaitable[object], lines: int) -> None:
    """Profile the event loop's thread while `step` runs (SQLite's worker threads are not seen)."""
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        await step
    finally:
        profiler.disable()
    print_profile(name, profiler, lines)


def summarize(results: dict[str, list[Sample]]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for name, samples in results.items():
        rates = [s.rate for s in samples]
        entry: dict[str, object] = {
            "events": [s.events for s in samples],
            "seconds": [round(s.seconds, 4) for s in samples],
            "events_per_second": [round(r, 1) for r in rates],
            "median": round(statistics.median(rates), 1),
            "min": round(min(rates), 1),
            "max": round(max(rates), 1),
            "cpu_per_wall_second": [round(s.cpu, 2) for s in samples],
        }
        written = [s.written for s in samples if s.written is not None]
        if written:
            entry["written_bytes_per_event"] = round(sum(written) / sum(s.events for s in samples), 1)
        batches = [s.batches for s in samples if s.batches]
        if batches:
            entry["mean_batch"] = round(sum(s.events for s in samples) / sum(batches), 2)
        if samples and all(s.bytes is not None for s in samples):
            entry["bytes"] = [s.bytes for s in samples]
            entry["mb_per_second"] = round(statistics.median((s.bytes or 0) / s.seconds / 1e6 for s in samples), 1)
        out[name] = entry
    return out


def ratios(summary: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for top, bottom, target in RATIOS:
        value = float(summary[top]["median"]) / float(summary[bottom]["median"])  # type: ignore[arg-type]
        out[f"{top} / {bottom}"] = {"value": round(value, 3), "target": target,
                                    "ok": target is None or value >= target}
    return out


def as_of_summary(result: AsOfResult) -> dict[str, object]:
    return {
        "org": result.org, "org_events": result.org_events, "total_events": result.total_events,
        "middle_seq": result.middle_seq, "middle_org_seq": result.middle_org_seq,
        "live_secrets_at_middle": result.live_at_middle, "live_secrets_at_head": result.live_at_head,
        "seconds": {name: [round(s, 5) for s in values] for name, values in result.seconds.items()},
        "median_seconds": {name: round(result.median(name), 5) for name in result.seconds},
        "target_seconds": AS_OF_TARGET, "ok": result.median("middle by seq") < AS_OF_TARGET,
    }


def print_table(summary: dict[str, dict[str, object]], ratio_table: dict[str, dict[str, object]]) -> None:
    print(f"\n{'measurement':<15} {'events/run':>11} {'median ev/s':>12} {'min':>12} {'max':>12} {'MB/s':>7} "
          f"{'batch':>6} {'cpu':>5} {'KiB/ev':>7}")
    for name in (*WRITES, *READS):
        row = summary[name]
        events = row["events"]
        cpu = row["cpu_per_wall_second"]
        assert isinstance(events, list) and isinstance(cpu, list)
        batch = row.get("mean_batch")
        written = row.get("written_bytes_per_event")
        kib = f"{float(written) / 1024:.1f}" if isinstance(written, float) else ""
        mbs = row.get("mb_per_second")
        print(
            f"{name:<15} {statistics.median(events):>11,.0f} {row['median']:>12,.0f} {row['min']:>12,.0f} "
            f"{row['max']:>12,.0f} {mbs if mbs is not None else '':>7} {batch if batch is not None else '':>6} "
            f"{statistics.median(cpu):>5.2f} {kib:>7}"
        )
    print("MB/s: event bodies hashed (raw scans) or bytes rendered (exports), median of runs;")
    print("batch: events per writer commit; cpu: process CPU seconds per wall second (all threads);")
    print("KiB/ev: bytes the process wrote (WAL frames, checkpoints, projection rows) per event")
    print(f"\n{'ratio (of medians)':<32} {'value':>7} {'target':>8}")
    for name, row in ratio_table.items():
        if row["target"] is None:
            print(f"{name:<32} {row['value']:>6.2f}x {'-':>8}")
            continue
        verdict = "ok" if row["ok"] else "BELOW TARGET"
        print(f"{name:<32} {row['value']:>6.2f}x {'>= ' + str(row['target']) + 'x':>8}  {verdict}")


def print_as_of(result: AsOfResult) -> None:
    print(f"\nas_of: secrets_as_of for org {result.org!r} ({result.org_events:,} events among "
          f"{result.total_events:,}), {len(result.seconds['head'])} runs")
    print(f"{'point':<16} {'median ms':>10} {'min':>8} {'max':>8}")
    for name, values in result.seconds.items():
        print(f"{name:<16} {statistics.median(values) * 1000:>10.1f} {min(values) * 1000:>8.1f} "
              f"{max(values) * 1000:>8.1f}")
    middle = result.median("middle by seq")
    verdict = "ok" if middle < AS_OF_TARGET else "ABOVE TARGET"
    print(f"middle (org_seq {result.middle_org_seq:,}, seq {result.middle_seq:,}, {result.live_at_middle} live "
          f"secrets): {middle * 1000:.1f} ms, target < {AS_OF_TARGET * 1000:.0f} ms  {verdict}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the big database")
    parser.add_argument("--runs", type=int, default=3, help="repetitions of every measurement")
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--orgs", type=int, default=4)
    parser.add_argument("--secrets", type=int, default=10_000, help="secrets, spread over the orgs")
    parser.add_argument("--small-org-events", type=int, default=10_000,
                        help="events of the small org whose as_of is timed (scattered among the others)")
    parser.add_argument("--as-of-runs", type=int, default=9, help="timed as_of calls per point (median shown)")
    parser.add_argument("--callers", type=int, default=64, help="concurrent callers of the group measurements")
    parser.add_argument("--single-reveals", type=int, default=2_000, help="reveals per single-reveal run")
    parser.add_argument("--single-upserts", type=int, default=1_000, help="upserts per single-upsert run")
    parser.add_argument("--group-reveals", type=int, default=400, help="reveals per caller per group run")
    parser.add_argument("--group-upserts", type=int, default=200, help="upserts per caller per group run")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp"))
    parser.add_argument("--fresh", action="store_true", help="rebuild the cached database even if it matches")
    parser.add_argument("--keep-work", action="store_true", help="keep the work copy after the run")
    parser.add_argument("--seed", type=int, default=20_240_601)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="event loop (uvloop is what uvicorn[standard] and granian run)")
    parser.add_argument("--profile", choices=(*READS, *WRITES), action="append", default=[],
                        help="also cProfile one extra pass of this step (repeatable)")
    parser.add_argument("--profile-lines", type=int, default=25)
    parser.add_argument("--check", action="store_true", help="exit with status 1 if a ratio misses its target")
    args = parser.parse_args(argv)
    if args.small_org_events < SMALL_SECRETS + 3:
        parser.error(f"--small-org-events must be at least {SMALL_SECRETS + 3}")
    if args.events < 2 * args.orgs + args.secrets + args.small_org_events + 1:
        parser.error("--events must exceed 2 x --orgs + --secrets + --small-org-events (the events that create them)")
    if args.runs < 1 or args.as_of_runs < 1:
        parser.error("--runs and --as-of-runs must be at least 1")
    return args


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    load = os.getloadavg()
    log(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    with asyncio.Runner(loop_factory=lambda: new_loop(args.loop)) as runner:
        db, fx, reused = cached_database(runner, args)
        work = work_copy(db)
        size = work.stat().st_size
        log(f"work copy: {work} ({size / 1e6:,.0f} MB, {size / args.events:,.0f} B/event incl. projections)")
        try:
            results, as_of = runner.run(measure(work, fx, args))
        finally:
            if not args.keep_work:
                remove_db(work)
    wall = time.perf_counter() - started
    summary = summarize(results)
    ratio_table = ratios(summary)
    print_table(summary, ratio_table)
    print_as_of(as_of)
    as_of_table = as_of_summary(as_of)
    print(f"\nwall time {wall:,.0f} s (database {'reused' if reused else f'built in {fx.build_seconds:,.0f} s'}); "
          f"{args.events:,} events, {args.runs} runs, loop {args.loop}, SQLite {sqlite3.sqlite_version}, "
          f"load average at start {load[0]:.2f}, at end {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    if args.out is not None:
        document = {
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "machine": {
                "python": platform.python_version(), "sqlite": sqlite3.sqlite_version, "cpus": os.cpu_count(),
                "platform": platform.platform(), "loop": args.loop,
                "load_average_start": load, "load_average_end": os.getloadavg(),
            },
            "database": {"path": str(db), "events": args.events, "bytes": size, "reused": reused,
                         "build_seconds": round(fx.build_seconds, 1)},
            "results": summary,
            "ratios": ratio_table,
            "as_of": as_of_table,
            "wall_seconds": round(wall, 1),
        }
        args.out.write_text(json.dumps(document, indent=2) + "\n")
        log(f"results written to {args.out}")
    if args.check and not (all(row["ok"] for row in ratio_table.values()) and as_of_table["ok"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
