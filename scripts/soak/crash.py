#!/usr/bin/env python3
"""Crash soak: SIGKILL the real keyledger server under concurrent load, again and again (issue 5, item 1).

The same driver as `tests/test_crash.py` (`tests/crash_driver.py`), at soak size: by default 1,000 kills.
Each kill comes at a random moment 0.1-1.0 s into a burst of concurrent upserts and reveals from
``--clients`` clients; after each one, with the server dead, the database file is checked (every request
answered 2xx is in exactly one event, nothing torn, duplicated or from nowhere, the chains verify, the
projections equal a rebuild, successful reveal answers = recorded reveals), then the server is
restarted on the same file, reveals values written before the crash and answers the idempotent
retries of what the kill left unanswered. Every check covers every earlier kill on the same file.

The checks read the whole file, so their cost grows with it: a fresh database (and org, and server)
is started every ``--kills-per-db`` kills (default 100, about 35,000 events) to keep a 1,000-kill run
near 40 minutes on 2 cores. ``keyledger verify --db`` (the CLI) runs on each database when it is done.

Loopback only. Bounded in time: ``--max-minutes`` stops early, and says so, before a kill would start
after the limit. Stops at the first finding and keeps the work folder (the database and the server's
log) for a post-mortem; exits 1 on any failure.

    .venv/bin/python scripts/soak/crash.py                        # 1,000 kills
    .venv/bin/python scripts/soak/crash.py --kills 50 --seed 7    # a quick check
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if __name__ == "__main__" and not __package__:
    # Run as a file, sys.path[0] is this folder; the driver is imported from the repository root.
    sys.path[0] = str(ROOT)

# ruff: noqa: E402 -- imports must follow the sys.path fix just above.
import argparse
import random
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field

from tests.crash_driver import CrashRun, Findings, ServerError, Stats, percentile

PROGRESS_EVERY = 50


@dataclass
class Totals:
    """Figures summed over every database of the run."""

    kills: int = 0
    databases: int = 0
    upserts: int = 0
    reveals: int = 0
    in_flight: int = 0
    committed_unanswered: int = 0
    retried: int = 0
    replayed: int = 0
    restarts: list[float] = field(default_factory=list)
    checks: list[float] = field(default_factory=list)
    findings: Findings = field(default_factory=Findings)
    restart_failures: list[str] = field(default_factory=list)

    def add(self, stats: Stats) -> None:
        """Fold in one database's figures (its Stats are cumulative, so add each database once)."""
        self.kills += stats.kills
        self.upserts += stats.upserts
        self.reveals += stats.reveals
        self.in_flight += stats.in_flight
        self.committed_unanswered += stats.committed_unanswered
        self.retried += stats.retried
        self.replayed += stats.replayed
        self.restarts.extend(stats.restarts)
        self.checks.extend(stats.checks)

    @property
    def ok(self) -> bool:
        return self.findings.ok and not self.restart_failures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kills", type=int, default=1000, help="SIGKILLs to deliver (default 1000)")
    parser.add_argument("--max-minutes", type=float, default=90.0, help="stop early after this long (default 90)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--seed", type=int, default=None, help="seed of every random choice (default: random)")
    parser.add_argument("--kills-per-db", type=int, default=100, help="kills before a fresh database (default 100)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the databases go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder even when everything passed")
    args = parser.parse_args(argv)
    if args.kills < 1 or args.clients < 1 or args.kills_per_db < 1 or args.max_minutes <= 0:
        parser.error("--kills, --clients, --kills-per-db and --max-minutes must be positive")
    return args


def log(message: str) -> None:
    print(message, flush=True)


class Soak:
    def __init__(self, args: argparse.Namespace, seed: int, workdir: Path) -> None:
        self.args = args
        self.seed = seed
        self.workdir = workdir
        self.seeds = random.Random(seed)  # one seed per database, all from --seed
        self.totals = Totals()
        self.began = time.monotonic()
        self.deadline = self.began + args.max_minutes * 60
        self.stopped_early = False
        self.longest_kill = 0.0  # seconds: no kill starts that could not end before the deadline

    def minutes(self) -> float:
        return (time.monotonic() - self.began) / 60

    def run(self) -> None:
        while self.totals.kills < self.args.kills and self.totals.ok and not self.stopped_early:
            self.one_database()

    def one_database(self) -> None:
        number = self.totals.databases + 1
        db_seed = self.seeds.getrandbits(63)
        folder = self.workdir / f"db{number:03d}"
        folder.mkdir(parents=True)
        self.totals.databases = number
        kills = min(self.args.kills_per_db, self.args.kills - self.totals.kills)
        try:
            with CrashRun(folder, seed=db_seed, clients=self.args.clients) as crash:
                try:
                    self.crash_database(crash, kills, f"database {number} (seed {db_seed}, {folder})")
                finally:
                    self.totals.add(crash.stats)
        except ServerError as exc:  # a start or restart refused: the file may be damaged
            self.totals.restart_failures.append(f"database {number} (seed {db_seed}, {folder}): {exc}")

    def crash_database(self, crash: CrashRun, kills: int, where: str) -> None:
        while crash.stats.kills < kills:
            if time.monotonic() + self.longest_kill > self.deadline:
                self.stopped_early = True
                break
            began = time.monotonic()
            findings = crash.crash_once()
            self.longest_kill = max(self.longest_kill, time.monotonic() - began)
            if not findings.ok:
                self.fail(findings, f"{where}, kill {crash.stats.kills}", crash.server.log_tail())
                return
            if (self.totals.kills + crash.stats.kills) % PROGRESS_EVERY == 0:
                self.progress(crash)
        findings = crash.finish()  # every check once more, and `keyledger verify --db`
        if not findings.ok:
            self.fail(findings, f"{where}, after its last restart", crash.server.log_tail())

    def fail(self, findings: Findings, where: str, log_tail: str) -> None:
        self.totals.findings.merge(findings)
        log(f"FAILED at {where}:\n{findings.describe()}\nserver log (tail):\n{log_tail}")

    def progress(self, crash: CrashRun) -> None:
        t, s = self.totals, crash.stats
        restarts = t.restarts + s.restarts
        log(f"[{t.kills + s.kills:5d}/{self.args.kills}] {self.minutes():5.1f} min  answered 2xx: "
            f"{t.upserts + s.upserts} upserts, {t.reveals + s.reveals} reveals  in flight at a kill: "
            f"{t.in_flight + s.in_flight}  database {t.databases}: {s.events} events, check "
            f"{s.checks[-1]:.2f} s  restart p50 {percentile(restarts, 50):.2f} s")

    def summary(self) -> None:
        t, f = self.totals, self.totals.findings
        status = "ok" if t.ok else "FAILED"
        if self.stopped_early and t.ok:
            status = f"ok, but INCOMPLETE: stopped early after {self.args.max_minutes:g} minutes"
        rows = [
            ("kills done", f"{t.kills} of {self.args.kills} ({t.databases} databases, seed {self.seed})"),
            ("requests answered 2xx", f"{t.upserts + t.reveals} ({t.upserts} upserts, {t.reveals} reveals)"),
            ("in flight at a kill", f"{t.in_flight} ({t.committed_unanswered} of them committed)"),
            ("idempotent retries", f"{t.retried} ({t.replayed} replayed a committed first attempt)"),
            ("requests lost", len(f.lost)),
            ("duplicates", len(f.duplicated)),
            ("events from nowhere", len(f.foreign)),
            ("torn streams", len(f.torn)),
            ("wrong answers", len(f.wrong_answers)),
            ("verify failures", len(f.verify_failures)),
            ("projection mismatches", len(f.projection_mismatches)),
            ("reveal count mismatches", len(f.reveal_count_mismatches)),
            ("unexpected answers/errors", len(f.unexpected)),
            ("restart failures", len(t.restart_failures)),
            ("restart time", f"p50 {percentile(t.restarts, 50):.2f} s, p99 {percentile(t.restarts, 99):.2f} s"),
            ("check time", f"p50 {percentile(t.checks, 50):.2f} s, p99 {percentile(t.checks, 99):.2f} s"),
            ("elapsed", f"{self.minutes():.1f} min"),
            ("result", status),
        ]
        log("\ncrash soak summary")
        for label, value in rows:
            log(f"  {label:<27} {value}")
        for failure in t.restart_failures:
            log(f"restart failure: {failure}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**32)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="keyledger-crash-soak-"))
    # SIGTERM unwinds like Ctrl-C, so that the server (its own process group) is killed on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    log(f"crash soak: {args.kills} kills, {args.clients} clients, seed {seed}, at most {args.max_minutes:g} min, "
        f"work folder {workdir}")
    soak = Soak(args, seed, workdir)
    try:
        soak.run()
    finally:
        soak.summary()
    if soak.totals.ok and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not soak.totals.ok:
        log(f"kept for a post-mortem: {workdir}")
    return 0 if soak.totals.ok else 1


if __name__ == "__main__":
    sys.exit(main())
