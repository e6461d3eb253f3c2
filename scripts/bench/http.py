#!/usr/bin/env python3
"""HTTP benchmark of the keyledger server, as deployed: one worker, SQLite WAL + synchronous=FULL.

For each server (``--servers uvicorn,granian``) it starts a fresh server exactly as production does

    .venv/bin/keyledger serve --host 127.0.0.1 --port P --db TMP/bench.db --server S

with a throwaway KEYLEDGER_MASTER_KEY and KEYLEDGER_ADMIN_TOKEN in the environment (and rate limits
that the loads never reach, so the limiters' cost is in the figures), seeds it over HTTP
(an org through POST /v1/admin/orgs, a member key through POST /v1/keys, then ``--secrets`` secrets
through POST /v1/secrets from ``--seed-concurrency`` concurrent clients), and loads it with wrk from a
separate process on loopback (``wrk -t1 -cN -dD``, after a ``--warmup`` second run that is discarded,
script ``http.lua`` beside this file) for each of these routes:

  healthz  GET /healthz: a small JSON body from the same server stack and middleware (the baseline)
  get      GET /v1/secrets/{name}, a random name among the seeded ones
  upsert   POST /v1/secrets, a random seeded name and a small new value (a new version, a durable event)
  reveal   POST /v1/secrets/{name}/reveal, a random name (decrypt + a durable audit event before the 200)
  list     GET /v1/secrets?limit=100, a random page of 100 (the cursors are collected from the server)

The servers run side by side (each its own database and port, all started from the same code) so
that they can be interleaved too. Every route is measured ``--runs`` times (default 3), each time right
after a baseline run on the same server (A B A B ...; routes and servers interleaved within a run, the
server order reversed every other run), at every concurrency of ``--connections`` (default 32,128). The table
shows medians of req/s, p50 and p99 (wrk's latency, µs resolution), and the ratio to the baseline as the
median of the paired ratios (route run / the baseline run just before it). Beside them: the server's CPU
per request (user+sys of the server's processes and threads), and the CPU that neither the server nor
wrk used during the run (``other``: in cores, from /proc/stat; other jobs on the box, i.e. noise).

Targets (issue 3): reveal >= 0.25x the baseline, get >= 0.5x, upsert >= 0.2x, p99 < 50 ms at 32
connections. ``--check`` exits 1 if one is missed. ``--profile ROUTE,...`` (or ``missed``) runs py-spy
(``pip install py-spy``) on the server while wrk loads that route at the first concurrency and prints
where the time goes, plus the CPU of each server thread.

On PostgreSQL (issue 6): ``--db postgresql://user@host:port/postgres`` gives each configuration a
fresh database on that server (dropped at the end), and ``--workers 1,2`` runs each server with 1 and
with 2 processes (``keyledger serve --workers N``); ratios are still to the same configuration's
baseline in the same run. The ``db cores`` column is the CPU of every PostgreSQL process on the
machine during the run (the database's share; it is left out of ``other``).

    .venv/bin/python scripts/bench/http.py --db "$KEYLEDGER_TEST_PG_DSN" --workers 1,2 --servers uvicorn

Loopback only; every load is bounded in time; the servers are always killed at the end (process groups).
The JSON (``--out``) also records the git commit the servers ran, and says if the sources changed mid-run.

    .venv/bin/python scripts/bench/http.py                                   # full run (~25 min)
    .venv/bin/python scripts/bench/http.py --out /tmp/http-bench.json --profile missed
    .venv/bin/python scripts/bench/http.py --servers granian --connections 32 --runs 1 \\
        --duration 3 --warmup 1 --secrets 1000                               # quick check
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if __name__ == "__main__" and not __package__:
    # Run as a file, sys.path[0] is this folder, where this very file would shadow the stdlib `http`.
    sys.path[0] = str(ROOT)

# ruff: noqa: E402 -- imports must follow the sys.path fix just above.
import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import linecache
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
LUA = HERE / "http.lua"
BASELINE = "healthz"
ROUTES = ("get", "upsert", "reveal", "list")
TARGETS = {"reveal": 0.25, "get": 0.5, "upsert": 0.2}  # minimum ratio to the baseline, same run
P99_LIMIT_MS = 50.0
P99_AT_CONNECTIONS = 32
PREFIX = "bench-"
ORG = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class BenchError(Exception):
    """A setup or measurement failure, printed as one clear line."""


# -- CPU accounting --------------------------------------------------------------------------------


def _proc_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def descendants(pid: int) -> list[int]:
    """`pid` and all its live descendants (from /proc/<pid>/task/<tid>/children)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
            except OSError:
                continue
    return out


def thread_ticks(pid: int) -> dict[str, int]:
    """CPU ticks per thread of the server's processes, keyed 'pid/tid name'."""
    out: dict[str, int] = {}
    for proc in descendants(pid):
        try:
            tids = os.listdir(f"/proc/{proc}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{proc}/task/{tid}/stat") as f:
                    text = f.read()
            except OSError:
                continue
            name = text[text.index("(") + 1 : text.rindex(")")]
            fields = text.rsplit(")", 1)[1].split()
            out[f"{proc}/{tid} {name}"] = int(fields[11]) + int(fields[12])
    return out


def machine_ticks() -> tuple[int, int, int]:
    """(busy, total, steal) ticks of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (parts + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait, steal


def rusage_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU used during an interval by the server, by wrk (our children), by us, and by everything else."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.wall = time.perf_counter()
        self.server = sum(_proc_ticks(p) for p in descendants(server_pid))
        self.database = postgres_ticks()
        self.machine = machine_ticks()
        self.children = rusage_seconds(resource.RUSAGE_CHILDREN)
        self.me = rusage_seconds(resource.RUSAGE_SELF)

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self.wall
        server = (sum(_proc_ticks(p) for p in descendants(self.server_pid)) - self.server) / CLK_TCK
        database = (postgres_ticks() - self.database) / CLK_TCK
        busy, _total, steal = machine_ticks()
        busy_s = (busy - self.machine[0]) / CLK_TCK
        steal_s = (steal - self.machine[2]) / CLK_TCK
        wrk = rusage_seconds(resource.RUSAGE_CHILDREN) - self.children
        me = rusage_seconds(resource.RUSAGE_SELF) - self.me
        other = max(0.0, busy_s - steal_s - server - database - wrk - me)
        return {
            "wall_s": wall,
            "server_cores": server / wall,
            "wrk_cores": wrk / wall,
            "other_cores": other / wall,
            "steal_cores": steal_s / wall,
            "server_cpu_s": server,
            "database_cores": database / wall,
        }


# -- the server ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """`keyledger serve` in its own process group, killed (the whole group) on stop()."""

    def __init__(self, kind: str, keyledger: Path, workdir: Path, port: int, *, workers: int = 1,
                 db: str | None = None) -> None:
        self.kind = kind if workers == 1 else f"{kind}-w{workers}"  # the configuration's name
        self.server = kind
        self.workers = workers
        self.keyledger = keyledger
        self.workdir = workdir
        self.port = port
        self.db = db or str(workdir / "bench.db")  # a SQLite file, or a PostgreSQL database's URL
        self.log_path = workdir / f"server-{self.kind}.log"
        self.admin_token = "adm_" + secrets.token_urlsafe(24)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 60.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYLEDGER_")}
        env["KEYLEDGER_MASTER_KEY"] = base64.b64encode(os.urandom(32)).decode()
        env["KEYLEDGER_ADMIN_TOKEN"] = self.admin_token
        # One key from one address drives thousands of requests a second: the limiters run (their
        # cost is measured) but with limits no load here reaches.
        env["KEYLEDGER_RATE_LIMIT_PER_KEY"] = env["KEYLEDGER_RATE_LIMIT_PER_ADDRESS"] = "1000000000/second"
        command = [str(self.keyledger), "serve", "--host", "127.0.0.1", "--port", str(self.port),
                   "--db", self.db, "--server", self.server, "--workers", str(self.workers)]
        log(f"[{self.kind}] starting: {' '.join(command).replace(self.db, redact(self.db))}")
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         env=env, cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.kind} exited with {self.proc.returncode} at start:\n{self.log_tail()}")
            try:
                answer = httpx.get(self.url + "/readyz", timeout=2.0)
                if answer.status_code == 200:
                    log(f"[{self.kind}] ready on {self.url} (pid {self.proc.pid}, "
                        f"processes {descendants(self.proc.pid)})")
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise BenchError(f"{self.kind} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 10 s; safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the server leads its own group
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)  # stragglers of the group (granian's worker)
        log(f"[{self.kind}] stopped (exit {proc.returncode})")


def redact(url: str) -> str:
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def database_url(server_url: str, name: str) -> str:
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{name}"


async def _admin(server_url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def create_database(server_url: str, name: str) -> str:
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    return database_url(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def postgres_ticks() -> int:
    """CPU ticks of every PostgreSQL process on the machine (the database server's share of a run)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        if text[text.index("(") + 1 : text.rindex(")")].startswith("postgres"):
            fields = text.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total


# -- seeding ---------------------------------------------------------------------------------------


def secret_name(index: int, width: int) -> str:
    return f"{PREFIX}{index:0{width}d}"


async def seed(server: Server, count: int, width: int, concurrency: int) -> dict[str, Any]:
    """An org, a member key, `count` secrets; returns the key and the list cursors."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.url, timeout=60.0, limits=limits) as client:
        answer = await client.post("/v1/admin/orgs", json={"org": ORG},
                                   headers={"Authorization": f"Bearer {server.admin_token}"})
        if answer.status_code != 201:
            raise BenchError(f"POST /v1/admin/orgs: {answer.status_code} {answer.text[:300]}")
        admin_key = answer.json()["api_key"]
        answer = await client.post("/v1/keys", json={"label": "bench member", "role": "member", "scope": "all"},
                                   headers={"Authorization": f"Bearer {admin_key}"})
        if answer.status_code != 201:
            raise BenchError(f"POST /v1/keys: {answer.status_code} {answer.text[:300]}")
        api_key = answer.json()["api_key"]
        auth = {"Authorization": f"Bearer {api_key}"}

        next_index = 0
        failures: list[str] = []

        async def worker() -> None:
            nonlocal next_index
            while next_index < count and not failures:
                index, next_index = next_index, next_index + 1
                body = {"name": secret_name(index, width), "value": "seed-" + secrets.token_hex(16),
                        "description": "benchmark secret"}
                for attempt in range(3):  # a dropped keep-alive connection is retried; an upsert is safe to repeat
                    try:
                        reply = await client.post("/v1/secrets", json=body, headers=auth)
                        break
                    except httpx.TransportError:
                        if attempt == 2:
                            raise
                if reply.status_code not in (200, 201):
                    failures.append(f"POST /v1/secrets {body['name']}: {reply.status_code} {reply.text[:300]}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        if failures:
            raise BenchError(failures[0])

        # Every page of the listing: checks the count and collects real cursors for the list route.
        cursors: list[str] = ["*"]  # '*' = the first page (no cursor)
        seen = 0
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 100}
            if cursor:
                params["cursor"] = cursor
            reply = await client.get("/v1/secrets", params=params, headers=auth)
            if reply.status_code != 200:
                raise BenchError(f"GET /v1/secrets: {reply.status_code} {reply.text[:300]}")
            page = reply.json()
            seen += len(page["secrets"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
            cursors.append(cursor)
        if seen != count:
            raise BenchError(f"the listing shows {seen} secrets, {count} were seeded")
        # Keep only cursors whose page is full (all but possibly the last one).
        full_pages = count // 100
        cursors = cursors[:full_pages] or ["*"]

        # One request of every route, checked, before wrk hammers them.
        name = secret_name(count // 2, width)
        checks = [
            ("GET", "/healthz", None, 200),
            ("GET", f"/v1/secrets/{name}", None, 200),
            ("POST", "/v1/secrets", {"name": name, "value": "check"}, 200),
            ("POST", f"/v1/secrets/{name}/reveal", None, 200),
            ("GET", "/v1/secrets?limit=100", None, 200),
        ]
        for method, path, body, status in checks:
            reply = await client.request(method, path, json=body, headers=auth)
            if reply.status_code != status:
                raise BenchError(f"{method} {path}: {reply.status_code} (expected {status}) {reply.text[:300]}")
        reveal = await client.post(f"/v1/secrets/{name}/reveal", headers=auth)
        if reveal.json().get("value") != "check":
            raise BenchError("reveal did not return the value just written")
    return {"api_key": api_key, "cursors": cursors, "seconds": seconds, "rate": count / seconds}


# -- wrk -------------------------------------------------------------------------------------------


def wrk_env(route: str, api_key: str, count: int, width: int, cursors_file: Path, seed_value: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "BENCH_ROUTE": route, "BENCH_TOKEN": api_key, "BENCH_SECRETS": str(count), "BENCH_WIDTH": str(width),
        "BENCH_PREFIX": PREFIX, "BENCH_CURSORS": str(cursors_file), "BENCH_SEED": str(seed_value),
    })
    return env


def wrk_command(wrk: str, url: str, connections: int, seconds: float) -> list[str]:
    return [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(LUA), url]


def parse_wrk(stdout: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            result: dict[str, Any] = json.loads(line[len("BENCH_JSON "):])
            return result
    raise BenchError(f"no BENCH_JSON line in wrk's output:\n{stdout[-2000:]}")


def run_wrk(wrk: str, url: str, connections: int, seconds: float, env: dict[str, str]) -> dict[str, Any]:
    command = wrk_command(wrk, url, connections, seconds)
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 30, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish within {seconds + 30:.0f} s") from None
    if done.returncode != 0:
        raise BenchError(f"wrk exited with {done.returncode}: {done.stderr.strip()[-1000:]}")
    return parse_wrk(done.stdout)


class Bench:
    """The measurements of one server: warm-up + measured wrk run per route, with CPU accounting."""

    def __init__(self, args: argparse.Namespace, wrk: str, server: Server, seeded: dict[str, Any],
                 cursors_file: Path) -> None:
        self.args = args
        self.wrk = wrk
        self.server = server
        self.api_key: str = seeded["api_key"]
        self.cursors_file = cursors_file
        self.width = len(str(args.secrets - 1))
        self.counter = 0

    def env(self, route: str) -> dict[str, str]:
        self.counter += 1
        return wrk_env(route, self.api_key, self.args.secrets, self.width, self.cursors_file, self.counter)

    def measure(self, route: str, connections: int) -> dict[str, Any]:
        if not self.server.alive():
            raise BenchError(f"{self.server.kind} died:\n{self.server.log_tail()}")
        if self.args.warmup > 0:
            run_wrk(self.wrk, self.server.url, connections, self.args.warmup, self.env(route))
        meter = CpuMeter(self.server.pid)
        raw = run_wrk(self.wrk, self.server.url, connections, self.args.duration, self.env(route))
        cpu = meter.stop()
        seconds = raw["duration_us"] / 1e6
        requests = raw["requests"]
        lat = raw["latency_us"]
        errors = sum(raw["errors"].values())
        sample = {
            "route": route, "connections": connections, "requests": requests, "seconds": seconds,
            "rps": requests / seconds if seconds else 0.0,
            "p50_ms": lat["p50"] / 1000, "p90_ms": lat["p90"] / 1000, "p99_ms": lat["p99"] / 1000,
            "p999_ms": lat["p999"] / 1000, "max_ms": lat["max"] / 1000, "mean_ms": lat["mean"] / 1000,
            "errors": raw["errors"], "error_count": errors,
            "server_us_per_req": cpu["server_cpu_s"] / requests * 1e6 if requests else None,
            "server_cores": cpu["server_cores"], "wrk_cores": cpu["wrk_cores"],
            "other_cores": cpu["other_cores"], "steal_cores": cpu["steal_cores"],
            "database_cores": cpu["database_cores"],
        }
        log(f"  [{self.server.kind} c{connections}] {route:8s} {sample['rps']:9.0f} req/s  "
            f"p50 {sample['p50_ms']:6.2f} ms  p99 {sample['p99_ms']:6.2f} ms  "
            f"server {sample['server_us_per_req'] or 0:5.0f} µs/req  database {cpu['database_cores']:.2f} "
            f"cores  other {cpu['other_cores']:.2f} cores"
            + (f"  ERRORS {raw['errors']}" if errors else ""))
        return sample


# -- summaries -------------------------------------------------------------------------------------


def median_of(samples: list[dict[str, Any]], key: str) -> float | None:
    values = [s[key] for s in samples if s.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        key: median_of(samples, key)
        for key in ("rps", "p50_ms", "p90_ms", "p99_ms", "server_us_per_req", "server_cores", "other_cores",
                    "steal_cores", "wrk_cores", "database_cores")
    }
    rps = [s["rps"] for s in samples]
    out["rps_min"] = min(rps)
    out["rps_max"] = max(rps)
    out["errors"] = sum(s["error_count"] for s in samples)
    return out


def evaluate(route: str, connections: int, ratio: float, p99_ms: float | None) -> dict[str, Any]:
    target = TARGETS.get(route)
    verdict: dict[str, Any] = {"target_ratio": target, "meets_ratio": None if target is None else ratio >= target}
    if connections == P99_AT_CONNECTIONS and p99_ms is not None:
        verdict["p99_limit_ms"] = P99_LIMIT_MS
        verdict["meets_p99"] = p99_ms < P99_LIMIT_MS
    return verdict


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def print_tables(results: dict[str, Any], args: argparse.Namespace) -> None:
    for kind, per_server in results["servers"].items():
        for conns, block in per_server["connections"].items():
            print(f"\n{kind}, {conns} connections (wrk -t1 -c{conns} -d{args.duration:g}s after a "
                  f"{args.warmup:g} s warm-up; medians of {args.runs} runs)")
            header = (f"{'route':8s} {'req/s':>9s} {'(min-max)':>17s} {'p50 ms':>7s} {'p99 ms':>7s} "
                      f"{'ratio':>6s} {'target':>7s} {'p99<50':>6s} {'µs/req':>7s} {'srv cores':>9s} "
                      f"{'db cores':>8s} {'other':>6s} {'err':>4s}  paired ratios")
            print(header)
            print("-" * len(header))
            rows = [(BASELINE, block["baseline"], None)]
            rows += [(route, entry["median"], entry) for route, entry in block["routes"].items()]
            for route, med, entry in rows:
                ratio = entry["ratio"] if entry else 1.0
                target = "—"
                p99_ok = "—"
                if entry:
                    verdict = entry["verdict"]
                    if verdict["target_ratio"] is not None:
                        mark = "ok" if verdict["meets_ratio"] else "MISS"
                        target = f"{verdict['target_ratio']:.2f} {mark}"
                    if "meets_p99" in verdict:
                        p99_ok = "ok" if verdict["meets_p99"] else "MISS"
                spread = f"({med['rps_min']:.0f}-{med['rps_max']:.0f})"
                print(f"{route:8s} {med['rps']:9.0f} {spread:>17s} {fmt(med['p50_ms'], '.2f'):>7s} "
                      f"{fmt(med['p99_ms'], '.2f'):>7s} {ratio:6.3f} {target:>7s} {p99_ok:>6s} "
                      f"{fmt(med['server_us_per_req'], '.0f'):>7s} {fmt(med['server_cores'], '.2f'):>9s} "
                      f"{fmt(med.get('database_cores'), '.2f'):>8s} {fmt(med['other_cores'], '.2f'):>6s} "
                      f"{med['errors']:4d}  "
                      + ("/".join(f"{r:.2f}" for r in entry["paired_ratios"]) if entry else ""))
    winners = results.get("reveal_winner") or {}
    if winners:
        print("\nreveal, faster server (median req/s):")
        for conns, line in winners.items():
            print(f"  c{conns}: {line['text']}")
    print(f"\nwall time {results['wall_seconds']:.0f} s; load average at start {results['loadavg_start']}, "
          f"at end {results['loadavg_end']}; code {results['code']['head']}"
          + (" (sources CHANGED during the run)" if results.get("code_changed") else ""))


def reveal_winner(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    servers = results["servers"]
    if len(servers) < 2:
        return out
    all_conns = sorted({int(c) for s in servers.values() for c in s["connections"]})
    for conns in all_conns:
        figures = {}
        for kind, per_server in servers.items():
            entry = per_server["connections"].get(str(conns), {}).get("routes", {}).get("reveal")
            if entry:
                figures[kind] = (entry["median"]["rps"], entry["ratio"], entry["median"]["p99_ms"])
        if len(figures) < 2:
            continue
        best = max(figures, key=lambda k: figures[k][0])
        others = [k for k in figures if k != best]
        text = f"{best} " + ", ".join(
            f"{figures[best][0]:.0f} vs {k} {figures[k][0]:.0f} req/s ({figures[best][0] / figures[k][0]:.2f}x; "
            f"ratio to own baseline {figures[best][1]:.3f} vs {figures[k][1]:.3f}; "
            f"p99 {figures[best][2]:.1f} vs {figures[k][2]:.1f} ms)"
            for k in others
        )
        out[str(conns)] = {"winner": best, "figures": {k: {"rps": v[0], "ratio": v[1], "p99_ms": v[2]}
                                                      for k, v in figures.items()}, "text": text}
    return out


# -- profiling -------------------------------------------------------------------------------------


def find_py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    if local.exists():
        return str(local)
    return shutil.which("py-spy")


BUCKETS = (
    ("sqlite (aiosqlite, recorder, projection reads)", ("aiosqlite", "sqlite3", "sqlite_store.py",
                                                        "sqlite_reader.py")),
    ("crypto", ("crypto.py", "cryptography")),
    ("msgspec / codec", ("msgspec", "codec.py")),
    ("ledger writer / commands", ("ledger/writer.py", "ledger/commands.py", "ledger/model.py",
                                  "ledger/records.py", "ledger/service.py", "ledger/idempotency.py")),
    ("projection statements", ("projections/sqlite_tables.py",)),
    ("api (routes, auth, middleware)", ("(api/",)),
    ("anyio task groups (litestar runs a batch of 2+ dependencies in one)", ("anyio",)),
    ("litestar", ("litestar",)),
    ("server (uvicorn / granian / httptools)", ("uvicorn", "granian", "httptools", "h11")),
    ("asyncio / uvloop", ("asyncio", "uvloop")),
)


def bucket_of(frame: str) -> str | None:
    for label, needles in BUCKETS:
        if any(n in frame for n in needles):
            return label
    return None


_FRAME = re.compile(r"^(?P<func>.*) \((?P<path>[^()]*):(?P<line>\d+)\)$")


def _short_frame(frame: str, sources: dict[str, str]) -> str:
    """`func (/abs/path/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py:12)`, remembering the source line."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    full = match["path"]
    short = full
    if "site-packages/" in full:
        short = full.rsplit("site-packages/", 1)[1]
    elif full.startswith(str(ROOT) + "/"):
        short = full[len(str(ROOT)) + 1 :]
    elif "/lib/python3" in full:
        short = full.rsplit("/lib/python3", 1)[1].split("/", 1)[-1]
    result = f"{match['func']} ({short}:{match['line']})"
    if result not in sources:
        sources[result] = SOURCES.line(full, int(match["line"]))
    return result


class SourceLines:
    """Source lines for profile frames. The project's files are read from the commit the servers were
    started from (when the tree was clean then), since other work may change them during a run."""

    def __init__(self) -> None:
        self.commit: str | None = None
        self._files: dict[str, list[str]] = {}

    def line(self, path: str, number: int) -> str:
        if "\0" in path:
            return ""
        relative = path[len(str(ROOT)) + 1 :] if path.startswith(str(ROOT) + "/") else ""
        if self.commit and relative.split("/", 1)[0] in ("api", "ledger", "projections"):
            if relative not in self._files:
                try:
                    done = subprocess.run(["git", "show", f"{self.commit}:{relative}"], cwd=ROOT,
                                          capture_output=True, text=True, timeout=10, check=False)
                    self._files[relative] = done.stdout.splitlines() if done.returncode == 0 else []
                except (OSError, subprocess.TimeoutExpired):
                    self._files[relative] = []
            lines = self._files[relative]
            return lines[number - 1].strip() if 0 < number <= len(lines) else ""
        try:
            return linecache.getline(path, number).strip()
        except (OSError, ValueError):
            return ""


SOURCES = SourceLines()


def _is_project(frame: str) -> bool:
    """A frame of the project's request path (not the CLI and server start frames below every stack)."""
    if "(api/cli.py" in frame or "(api/server.py" in frame:
        return False
    return any(f"({part}/" in frame for part in ("api", "ledger", "projections"))


def analyse_stacks(path: Path, top: int) -> dict[str, Any]:
    """Per thread: samples, self counts per function, inclusive counts of project functions, and areas.

    Input is py-spy's raw (collapsed) output with --threads: `process ...;thread (tid): name;f1;f2 count`.
    Areas: each sample is charged to the innermost frame of a known area (so litestar calling the
    ledger counts as the ledger, not both); a thread with no Python frames is native (granian's Rust).
    """
    threads: dict[str, dict[str, Counter[str]]] = {}
    sources: dict[str, str] = {}  # short frame -> its source line
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short_frame(f, sources) for f in stack.split(";")]
        thread_frame = next((f for f in frames if f.startswith("thread (")), "thread (?)")
        thread = thread_frame.split(": ", 1)[1] if ": " in thread_frame else f"{thread_frame} native"
        py_frames = [f for f in frames if not f.startswith(("process ", "thread ("))]
        stats = threads.setdefault(thread, {"samples": Counter(), "self": Counter(), "inclusive": Counter(),
                                            "areas": Counter()})
        total += count
        stats["samples"]["all"] += count
        if not py_frames:
            stats["self"]["(native code, no Python frame)"] += count
            stats["areas"]["native (no Python frame)"] += count
            continue
        stats["self"][py_frames[-1]] += count
        for frame in set(py_frames):
            if _is_project(frame):
                stats["inclusive"][frame] += count
        for frame in reversed(py_frames):
            label = bucket_of(frame)
            if label:
                stats["areas"][label] += count
                break
        else:
            stats["areas"]["other"] += count

    def table(counter: Counter[str], of: int, limit: int) -> list[dict[str, Any]]:
        return [{"frame": k, "samples": v, "share": v / of if of else 0.0, "source": sources.get(k, "")}
                for k, v in counter.most_common(limit)]

    out: dict[str, Any] = {"samples": total, "threads": {}}
    for name, stats in sorted(threads.items(), key=lambda kv: -kv[1]["samples"]["all"]):
        n = stats["samples"]["all"]
        out["threads"][name] = {
            "samples": n, "share": n / total if total else 0.0,
            "areas": table(stats["areas"], n, 12), "self": table(stats["self"], n, top),
            "project_inclusive": table(stats["inclusive"], n, top),
        }
    return out


def profile_route(args: argparse.Namespace, bench: Bench, route: str, connections: int, py_spy: str,
                  outdir: Path) -> dict[str, Any]:
    """py-spy on the server while wrk loads `route`; plus the CPU of each server thread."""
    seconds = args.profile_seconds
    stacks = outdir / f"keyledger-http-profile-{args.stamp}-{bench.server.kind}-{route}-c{connections}.txt"
    command = wrk_command(bench.wrk, bench.server.url, connections, seconds + 3)
    log(f"[{bench.server.kind}] profiling {route} at c{connections} for {seconds:g} s with py-spy")
    with subprocess.Popen(command, env=bench.env(route), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as load:
        try:
            time.sleep(1.0)
            before = thread_ticks(bench.server.pid)
            started = time.perf_counter()
            spy = subprocess.run(
                [py_spy, "record", "--pid", str(bench.server.pid), "--subprocesses", "--threads", "--nonblocking",
                 "--rate", str(args.profile_rate), "--full-filenames", "--duration", str(round(seconds)),
                 "--format", "raw", "--output", str(stacks)],
                capture_output=True, text=True, timeout=seconds + 60, check=False,
            )
            wall = time.perf_counter() - started
            after = thread_ticks(bench.server.pid)
            out, _err = load.communicate(timeout=seconds + 60)
        finally:
            if load.poll() is None:
                load.kill()
    if spy.returncode != 0 or not stacks.exists():
        return {"error": f"py-spy failed ({spy.returncode}): {(spy.stderr or spy.stdout).strip()[-800:]}"}
    per_thread = {
        name: (after[name] - before.get(name, 0)) / CLK_TCK / wall
        for name in after
        if after[name] - before.get(name, 0) > 0
    }
    result = analyse_stacks(stacks, args.profile_top)
    result["stacks_file"] = str(stacks)
    result["thread_cores"] = dict(sorted(per_thread.items(), key=lambda kv: -kv[1]))
    with contextlib.suppress(BenchError):
        raw = parse_wrk(out)
        result["load_rps"] = raw["requests"] / (raw["duration_us"] / 1e6)
    return result


def print_profile(kind: str, route: str, connections: int, prof: dict[str, Any]) -> None:
    print(f"\nprofile: {kind}, {route}, c{connections} (py-spy, non-idle samples)")
    if "error" in prof:
        print(f"  {prof['error']}")
        return
    if "load_rps" in prof:
        print(f"  load during the profile: {prof['load_rps']:.0f} req/s (py-spy's sampling slows the server)")
    print("  CPU per server thread, from /proc (cores):")
    for name, cores in list(prof["thread_cores"].items())[:6]:
        print(f"    {cores:5.2f}  {name}")
    for thread, stats in prof["threads"].items():
        if stats["share"] < 0.02:
            continue
        print(f"  thread {thread}: {stats['share']:.0%} of {prof['samples']} samples")
        print("    by area (innermost known frame):")
        for row in stats["areas"]:
            print(f"      {row['share']:6.1%}  {row['frame']}")
        print("    top functions, self (with the source line):")
        for row in stats["self"][:12]:
            print(f"      {row['share']:6.1%}  {row['frame']}" + (f"   `{row['source']}`" if row["source"] else ""))
        if stats["project_inclusive"]:
            print("    project functions, inclusive:")
            for row in stats["project_inclusive"]:
                print(f"      {row['share']:6.1%}  {row['frame']}")
    print(f"  stacks (collapsed, for a flame graph): {prof['stacks_file']}")


# -- main ------------------------------------------------------------------------------------------


def csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="uvicorn,granian", help="comma-separated: uvicorn, granian")
    parser.add_argument("--connections", default="32,128", help="comma-separated wrk concurrencies")
    parser.add_argument("--db", default="", help="a PostgreSQL server URL (postgresql://user@host:port/db): each "
                        "configuration gets a fresh database there, dropped at the end; default: SQLite files")
    parser.add_argument("--workers", default="1", help="comma-separated server process counts (above 1: --db)")
    parser.add_argument("--routes", default=",".join(ROUTES), help=f"comma-separated among {', '.join(ROUTES)}")
    parser.add_argument("--runs", type=int, default=3, help="repetitions of every (baseline, route) pair")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of every measured wrk run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of the discarded run before each one")
    parser.add_argument("--secrets", type=int, default=10_000, help="secrets seeded before the loads")
    parser.add_argument("--seed-concurrency", type=int, default=16, help="concurrent clients while seeding")
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (database, server logs)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--profile", default="",
                        help="routes to profile with py-spy after the measurements ('missed': those below target)")
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--profile-top", type=int, default=20, help="functions shown per profile table")
    parser.add_argument("--keyledger", type=Path, default=ROOT / ".venv" / "bin" / "keyledger",
                        help="the keyledger command")
    args = parser.parse_args(argv)
    args.server_list = csv(args.servers)
    args.worker_list = [int(w) for w in csv(args.workers)]
    args.configs = [(kind, workers) for workers in args.worker_list for kind in args.server_list]
    args.created_databases = []
    if args.db and not is_postgres(args.db):
        parser.error("--db takes a PostgreSQL server URL (postgresql://...); leave it out for SQLite")
    if not args.db and any(w > 1 for w in args.worker_list):
        parser.error("--workers above 1 needs --db postgresql://... (one SQLite file serves one process)")
    args.connection_list = [int(c) for c in csv(args.connections)]
    args.route_list = csv(args.routes)
    for kind in args.server_list:
        if kind not in ("uvicorn", "granian"):
            parser.error(f"unknown server {kind!r}")
    for route in args.route_list:
        if route not in ROUTES:
            parser.error(f"unknown route {route!r}")
    if args.runs < 1 or args.duration < 1 or args.secrets < 200:
        parser.error("--runs >= 1, --duration >= 1 and --secrets >= 200, please")
    return args


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    from importlib.metadata import PackageNotFoundError, version

    for package in ("litestar", "msgspec", "uvicorn", "uvloop", "httptools", "granian", "aiosqlite", "cryptography"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "absent"
    try:
        out["wrk"] = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=5,
                                    check=False).stdout.splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        out["wrk"] = "?"
    return out


@contextlib.contextmanager
def terminate_on_signals() -> Iterator[None]:
    """SIGTERM/SIGHUP behave like Ctrl-C, so `finally` blocks kill the server."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def start_and_seed(args: argparse.Namespace, wrk: str, config: tuple[str, int], workdir: Path,
                   results: dict[str, Any], servers: dict[str, Server]) -> Bench:
    server_kind, workers = config
    kind = server_kind if workers == 1 else f"{server_kind}-w{workers}"
    serverdir = workdir / kind
    serverdir.mkdir()
    db = None
    if args.db:  # a fresh database on the given PostgreSQL server for each configuration
        name = f"kl_bench_{args.stamp.replace('-', '_')}_{kind.replace('-', '_')}"
        db = create_database(args.db, name)
        args.created_databases.append(name)
    server = Server(server_kind, args.keyledger, serverdir, args.port + len(servers) if args.port else free_port(),
                    workers=workers, db=db)
    servers[kind] = server
    per_server: dict[str, Any] = {"connections": {}, "log": str(server.log_path)}
    results["servers"][kind] = per_server
    server.start()
    width = len(str(args.secrets - 1))
    log(f"[{kind}] seeding {args.secrets} secrets from {args.seed_concurrency} clients")
    bound = 120 + args.secrets / 10  # seconds: generous (≥ 10 creates/s), but the seeding ends
    try:
        seeded = asyncio.run(asyncio.wait_for(seed(server, args.secrets, width, args.seed_concurrency), bound))
    except TimeoutError:
        raise BenchError(f"[{kind}] seeding took more than {bound:.0f} s") from None
    log(f"[{kind}] seeded in {seeded['seconds']:.1f} s ({seeded['rate']:.0f} creates/s through httpx)")
    per_server["seed"] = {"secrets": args.secrets, "seconds": seeded["seconds"], "rate": seeded["rate"],
                          "list_pages": len(seeded["cursors"])}
    cursors_file = serverdir / "cursors.txt"
    cursors_file.write_text("\n".join(seeded["cursors"]) + "\n")
    return Bench(args, wrk, server, seeded, cursors_file)


def measure_all(args: argparse.Namespace, benches: dict[str, Bench], results: dict[str, Any]) -> None:
    """Every (baseline, route) pair, `--runs` times; routes and servers interleaved within a run, the
    server order reversed every other run, so that drifting noise falls on every figure alike."""
    for connections in args.connection_list:
        baseline: dict[str, list[dict[str, Any]]] = {k: [] for k in benches}
        samples: dict[str, dict[str, list[dict[str, Any]]]] = {k: {r: [] for r in args.route_list} for k in benches}
        pairs: dict[str, dict[str, list[float]]] = {k: {r: [] for r in args.route_list} for k in benches}
        for run in range(args.runs):
            order = list(benches) if run % 2 == 0 else list(reversed(benches))
            log(f"[c{connections}] run {run + 1}/{args.runs}")
            for route in args.route_list:
                for kind in order:
                    base = benches[kind].measure(BASELINE, connections)
                    sample = benches[kind].measure(route, connections)
                    sample["paired_baseline_rps"] = base["rps"]
                    baseline[kind].append(base)
                    samples[kind][route].append(sample)
                    pairs[kind][route].append(sample["rps"] / base["rps"] if base["rps"] else 0.0)
        for kind in benches:
            block: dict[str, Any] = {"baseline": summarize(baseline[kind]), "baseline_runs": baseline[kind],
                                     "routes": {}}
            for route in args.route_list:
                med = summarize(samples[kind][route])
                ratio = statistics.median(pairs[kind][route])
                block["routes"][route] = {
                    "median": med, "runs": samples[kind][route], "paired_ratios": pairs[kind][route],
                    "ratio": ratio, "ratio_of_medians": med["rps"] / block["baseline"]["rps"],
                    "verdict": evaluate(route, connections, ratio, med["p99_ms"]),
                }
            results["servers"][kind]["connections"][str(connections)] = block


def run_all(args: argparse.Namespace, wrk: str, workdir: Path, results: dict[str, Any], py_spy: str | None) -> None:
    """Start and seed every server (side by side, same code), measure, profile; always stop them all."""
    servers: dict[str, Server] = {}
    try:
        benches: dict[str, Bench] = {}
        for config in args.configs:
            bench = start_and_seed(args, wrk, config, workdir, results, servers)
            benches[bench.server.kind] = bench
        measure_all(args, benches, results)
        if args.profile:
            for kind, bench in benches.items():
                profile_routes(args, bench, results["servers"][kind], py_spy)
    finally:
        for server in servers.values():
            server.stop()
        for name in args.created_databases:
            try:
                drop_database(args.db, name)
            except Exception as exc:  # report, and go on dropping the others
                log(f"could not drop database {name}: {exc}")


def code_fingerprint() -> dict[str, Any]:
    """Which code the servers run: git HEAD, uncommitted changes, and a digest of the sources' mtimes."""
    digest = hashlib.sha256()
    for folder in ("api", "ledger", "projections"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            stat = path.stat()
            digest.update(f"{path.relative_to(ROOT)}:{stat.st_mtime_ns}:{stat.st_size}\n".encode())

    def git(*argv: str) -> str:
        try:
            done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        return done.stdout.strip()

    return {"head": git("rev-parse", "--short", "HEAD"), "subject": git("log", "-1", "--format=%s"),
            "uncommitted": git("status", "--porcelain", "--", "api", "ledger", "projections").splitlines(),
            "sources_digest": digest.hexdigest()[:16]}


def profile_routes(args: argparse.Namespace, bench: Bench, per_server: dict[str, Any], py_spy: str | None) -> None:
    connections = args.connection_list[0]
    if args.profile == "missed":
        wanted = []
        for block in per_server["connections"].values():
            for route, entry in block["routes"].items():
                verdict = entry["verdict"]
                if (verdict.get("meets_ratio") is False or verdict.get("meets_p99") is False) and route not in wanted:
                    wanted.append(route)
    else:
        wanted = csv(args.profile)
    if not wanted:
        log(f"[{bench.server.kind}] no route to profile")
        return
    if py_spy is None:
        log("py-spy not found: `.venv/bin/pip install py-spy` to profile (not a project dependency)")
        per_server["profiles"] = {"error": "py-spy not found"}
        return
    outdir = args.out.parent if args.out else Path(tempfile.gettempdir())
    profiles: dict[str, Any] = {}
    per_server["profiles"] = profiles
    for route in wanted:
        try:
            profiles[route] = profile_route(args, bench, route, connections, py_spy, outdir)
        except Exception as exc:  # a failed profile must not lose the measurements
            profiles[route] = {"error": f"profiling failed: {type(exc).__name__}: {exc}"}
            log(f"[{bench.server.kind}] {profiles[route]['error']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.stamp = time.strftime("%Y%m%d-%H%M%S")
    wrk = shutil.which("wrk")
    if wrk is None:
        log("error: wrk is not installed (not on PATH). Install Debian's package: `apt-get install -y wrk`.")
        return 2
    if not args.keyledger.exists():
        log(f"error: {args.keyledger} not found: create the venv first (./scripts/run or pip install -e .)")
        return 2
    py_spy = find_py_spy() if args.profile else None
    per_pair = 2 * (args.duration + args.warmup + 0.3)
    estimate = (len(args.configs) * len(args.connection_list) * args.runs * len(args.route_list) * per_pair
                + len(args.configs) * (args.secrets / 200 + 5))
    log(f"HTTP benchmark: servers {args.server_list}, connections {args.connection_list}, routes "
        f"{args.route_list}, {args.runs} runs of {args.duration:g} s (+{args.warmup:g} s warm-up); "
        f"about {estimate / 60:.0f} min. Load average {loadavg()}, {os.cpu_count()} CPUs.")
    started = time.perf_counter()
    results: dict[str, Any] = {
        "config": {
            "servers": args.server_list, "connections": args.connection_list, "routes": args.route_list,
            "runs": args.runs, "duration_s": args.duration, "warmup_s": args.warmup, "secrets": args.secrets,
            "seed_concurrency": args.seed_concurrency, "wrk_threads": 1, "synchronous": "FULL",
            "workers": args.worker_list, "database": redact(args.db) if args.db else "sqlite",
            "targets": TARGETS, "p99_limit_ms": P99_LIMIT_MS, "p99_at_connections": P99_AT_CONNECTIONS,
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "versions": versions()},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_start": loadavg(),
        "code": code_fingerprint(),
        "servers": {},
    }
    if not results["code"]["uncommitted"] and results["code"]["head"] != "?":
        SOURCES.commit = results["code"]["head"]
    log(f"code: {results['code']['head']} {results['code']['subject']!r}"
        + (f", {len(results['code']['uncommitted'])} uncommitted files" if results["code"]["uncommitted"] else ""))
    workdir = Path(tempfile.mkdtemp(prefix="keyledger-http-bench-"))
    failed: str | None = None
    try:
        with terminate_on_signals():
            run_all(args, wrk, workdir, results, py_spy)
    except BenchError as exc:
        failed = str(exc)
    except httpx.HTTPError as exc:
        failed = f"HTTP error talking to the server: {exc!r}"
    except KeyboardInterrupt:
        failed = "interrupted"
    except Exception as exc:  # report what was measured before the failure
        traceback.print_exc()
        failed = f"{type(exc).__name__}: {exc}"
    finally:
        results["wall_seconds"] = time.perf_counter() - started
        results["loadavg_end"] = loadavg()
        results["code_at_end"] = code_fingerprint()
        results["code_changed"] = results["code_at_end"]["sources_digest"] != results["code"]["sources_digest"]
        if results["code_changed"]:
            log("warning: the sources changed during the run (the servers run the code of the start"
                + ("; profile source lines are read from that commit)" if SOURCES.commit else
                   "; profile source lines are read now and may not match)"))
        if args.keep or failed:
            log(f"temporary folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["reveal_winner"] = reveal_winner(results)
    if failed:
        results["error"] = failed
        log(f"error: {failed}")
    complete = {k: v for k, v in results["servers"].items() if v.get("connections")}
    if complete:
        print_tables({**results, "servers": complete}, args)
        for kind, per_server in complete.items():
            for route, prof in (per_server.get("profiles") or {}).items():
                if isinstance(prof, dict):
                    print_profile(kind, route, args.connection_list[0], prof)
    missed = [
        f"{kind} c{conns} {route}"
        for kind, per_server in complete.items()
        for conns, block in per_server["connections"].items()
        for route, entry in block["routes"].items()
        if entry["verdict"].get("meets_ratio") is False or entry["verdict"].get("meets_p99") is False
    ]
    results["missed"] = missed
    print("\ntargets: " + ("all met" if not missed else "MISSED: " + "; ".join(missed)))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        log(f"results written to {args.out}")
    if failed:
        return 2
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
