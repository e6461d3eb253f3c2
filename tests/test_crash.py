"""Crash safety (issue 5): the real server, SIGKILLed again and again under concurrent upserts and reveals.

After every kill: every request answered 2xx is in the ledger exactly once, nothing is torn or duplicated,
the chains verify, the projections equal a rebuild, and the successful reveal answers equal the recorded
reveals; the restarted server reveals what was written before the crash. See `tests/crash_driver.py`.

CI size: 8 kills. `KEYLEDGER_CRASH_SEED` replays a seed's choices (names, values, load lengths; the kill
moments still depend on timing), `KEYLEDGER_CRASH_KILLS` changes the size; `scripts/soak/crash.py` runs 1,000.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from tests.crash_driver import CrashRun, percentile

KILLS = int(os.environ.get("KEYLEDGER_CRASH_KILLS", "8"))


def test_sigkill_under_load_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("KEYLEDGER_CRASH_SEED") or random.SystemRandom().randrange(1, 2**32))
    began = time.monotonic()
    print(f"crash test: seed {seed} (KEYLEDGER_CRASH_SEED={seed} to replay), workdir {tmp_path}")
    with CrashRun(tmp_path, seed=seed) as run:
        for _ in range(KILLS):
            findings = run.crash_once()
            where = f"seed {seed}, kill {run.stats.kills}, database {run.db}"
            assert findings.ok, f"{where}:\n{findings.describe()}\nserver log:\n{run.server.log_tail()}"
        final = run.finish()
        assert final.ok, f"seed {seed}, after the last restart:\n{final.describe()}"
    stats = run.stats
    print(f"{stats.kills} kills in {time.monotonic() - began:.1f} s: {stats.upserts} upserts and {stats.reveals} "
          f"reveals answered, {stats.in_flight} in flight at a kill ({stats.committed_unanswered} committed), "
          f"{stats.retried} retried ({stats.replayed} replayed), {stats.events} events, restart p50 "
          f"{percentile(stats.restarts, 50):.2f} s p99 {percentile(stats.restarts, 99):.2f} s")
    # The test means something only if the kills hit a busy server, and both kinds of request were answered.
    assert stats.kills == KILLS
    assert stats.upserts > KILLS and stats.reveals > KILLS
    assert stats.in_flight >= KILLS, "most kills should leave requests in flight"
