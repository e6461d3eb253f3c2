#!/usr/bin/env python3
"""Soak: the reliability suites of `./scripts/test` at a larger size, each bounded in time.

    .venv/bin/python scripts/soak/suites.py                 # every suite, default sizes (~1 h)
    .venv/bin/python scripts/soak/suites.py --only faults   # one suite
    .venv/bin/python scripts/soak/suites.py --scale 0.1     # a quick check

Each suite is one pytest run with its size raised through environment variables (hypothesis'
"soak" profile and KEYLEDGER_HYPOTHESIS_EXAMPLES, KEYLEDGER_FUZZ_EXAMPLES for schemathesis,
KEYLEDGER_FAULT_REVEALS for the fail-closed run). A run that exceeds its time bound is stopped and
reported as such. Loopback only (the suites run in-process or against servers on 127.0.0.1).
The crash soak is separate: scripts/soak/crash.py.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTEST = ROOT / ".venv" / "bin" / "pytest"


@dataclass(frozen=True)
class Suite:
    name: str
    what: str
    tests: list[str]
    env: dict[str, str] = field(default_factory=dict)
    scaled: dict[str, int] = field(default_factory=dict)  # env var -> size at scale 1
    minutes: float = 10.0


SUITES = [
    Suite("faults", "a fault at every append step, for every write; fail closed with 20% of appends failing",
          ["tests/api/test_faults.py", "tests/api/test_disk_full.py"], scaled={"KEYLEDGER_FAULT_REVEALS": 100_000}),
    Suite("fuzz-http", "schemathesis over the whole OpenAPI document, with stateful links",
          ["tests/api/test_schemathesis.py"], scaled={"KEYLEDGER_FUZZ_EXAMPLES": 2_000}, minutes=30),
    Suite("fuzz-parsers", "hypothesis fuzz of every parser and of the verifier",
          ["tests/test_parser_fuzz.py", "tests/test_verifier_fuzz.py", "tests/test_structural_attacks.py"],
          env={"KEYLEDGER_HYPOTHESIS_PROFILE": "soak"}, scaled={"KEYLEDGER_HYPOTHESIS_EXAMPLES": 5_000}),
    Suite("stateful", "stateful model tests of the ledger and of the HTTP API; caches against fresh reads",
          ["tests/test_ledger_stateful.py", "tests/test_http_stateful.py", "tests/test_read_cache.py",
           "tests/test_projections.py"],
          env={"KEYLEDGER_HYPOTHESIS_PROFILE": "soak"}, scaled={"KEYLEDGER_HYPOTHESIS_EXAMPLES": 1_000}, minutes=20),
    Suite("isolation-hygiene", "org isolation, 401s, canaries, rate limits, huge and slow requests",
          ["tests/api/test_isolation.py", "tests/api/test_canary.py", "tests/api/test_rate_limits.py",
           "tests/test_request_abuse.py", "tests/test_startup_refusals.py"],
          env={"KEYLEDGER_HYPOTHESIS_PROFILE": "soak"}, scaled={"KEYLEDGER_HYPOTHESIS_EXAMPLES": 5_000}),
]


def run(suite: Suite, scale: float) -> tuple[str, float, str]:
    env = {**os.environ, **suite.env}
    sizes = {name: max(1, int(size * scale)) for name, size in suite.scaled.items()}
    env.update({name: str(size) for name, size in sizes.items()})
    started = time.monotonic()
    try:
        done = subprocess.run([str(PYTEST), "-p", "no:cacheprovider", *suite.tests], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=suite.minutes * 60, check=False)
    except subprocess.TimeoutExpired:
        return "STOPPED at the time bound", time.monotonic() - started, ""
    elapsed = time.monotonic() - started
    summary = next((line for line in reversed(done.stdout.splitlines()) if re.search(r"passed|failed|error", line)), "")
    status = "ok" if done.returncode == 0 else "FAILED"
    if done.returncode != 0:
        sys.stdout.write(done.stdout[-4000:] + done.stderr[-2000:])
    return status, elapsed, f"{summary.strip()}  sizes: {sizes or 'hypothesis soak profile'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated suite names: " + ", ".join(s.name for s in SUITES))
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every size (and nothing else)")
    args = parser.parse_args()
    chosen = [s for s in SUITES if not args.only or s.name in args.only.split(",")]
    failures = 0
    print(f"soak of {len(chosen)} suites at scale {args.scale}", flush=True)
    for suite in chosen:
        status, elapsed, detail = run(suite, args.scale)
        failures += status != "ok"
        print(f"{suite.name:18} {status:10} {elapsed / 60:6.1f} min  {suite.what}\n{'':18} {detail}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
