"""Point in time: `secrets_as_of` against the state a model held at that moment, for every point of a
generated history (every seq, and times at, just before, just after and between events), and folding up to
the head against the `secrets` projection.

The model (tests/audit_history.py) is kept from the commands and their answers alone, never from the events.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import sqlite3
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ledger.codec import decode_event
from ledger.sqlite_store import iter_org_records
from projections.point_in_time import fold_secrets, live, secrets_as_of
from projections.sqlite_reader import SqliteProjections
from projections.views import SecretMeta
from tests.audit_history import DAY, ORGS, Run, Snapshot, histories, run_history, temp_db


def state_at_seq(snapshots: list[Snapshot], seq: int) -> Snapshot:
    """The model after the last command whose events all have a seq at most `seq`."""
    return snapshots[bisect.bisect_right([s.seq for s in snapshots], seq) - 1]


def state_at_time(snapshots: list[Snapshot], at: int) -> Snapshot:
    """The model after the last command made at or before `at` (the clock always moves on)."""
    return snapshots[bisect.bisect_right([s.at for s in snapshots], at) - 1]


def time_points(times: list[int]) -> list[int]:
    """Before everything, every event's time and a nanosecond either side, between events, long after."""
    points = {times[0] - DAY, times[-1] + 365 * DAY}
    for at in times:
        points.update((at - 1, at, at + 1))
    for a, b in itertools.pairwise(times):
        points.add((a + b) // 2)
    return sorted(points)


@given(history=histories(batches=False, lifecycle=True), chunk=st.sampled_from((5000, 5000, 3)))
def test_as_of_every_seq_and_every_time_matches_the_model(history: list[Any], chunk: int) -> None:
    async def check(run: Run) -> None:
        recorder = run.ledger.recorder
        snapshots = run.snapshots
        assert [s.seq for s in snapshots] == sorted({s.seq for s in snapshots})
        assert [s.at for s in snapshots] == sorted({s.at for s in snapshots}), "each command has its own time"
        records = await recorder.read_after(0, 100_000)
        head = records[-1].seq
        assert snapshots[-1].seq == head
        times = sorted({r.at for r in records})
        # Between two events of one command (a purge deletes and destroys) no command has ended.
        ends = sorted({s.seq for s in snapshots})
        inside = {seq for a, b in itertools.pairwise(ends) for seq in range(a + 1, b)}
        for org in ORGS:
            for seq in range(head + 2):  # every point, and one past the head
                if seq in inside:
                    continue
                want = state_at_seq(snapshots, seq).secrets[org]
                got = await secrets_as_of(recorder, org, lambda s, _, seq=seq: s <= seq, chunk)
                assert got == want, (org, "seq", seq)
            for at in time_points(times):
                want = state_at_time(snapshots, at).secrets[org]
                got = await secrets_as_of(recorder, org, lambda _, a, at=at: a <= at, chunk)
                assert got == want, (org, "time", at)

    with temp_db("keyledger-as-of-") as path:
        run = run_history(path, history, after=check)
    # the histories are not trivial: a secret came and went in some of them
    assert run.snapshots[-1].seq > 6


def projection_rows(path: Any, org: str) -> list[SecretMeta]:
    """Every row of the `secrets` projection of one org, deleted ones included."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT org, name, scope, category, description, version, created_at, updated_at, created_by, "
            "updated_by, deleted, expires_at, deleted_at, destroy_at FROM secrets WHERE org = ? ORDER BY name",
            (org,)).fetchall()
    finally:
        conn.close()
    return [SecretMeta(org=r[0], name=r[1], scope=r[2], category=r[3], description=r[4], version=r[5],
                       created_at=r[6], updated_at=r[7], created_by=r[8], updated_by=r[9], deleted=bool(r[10]),
                       expires_at=r[11], deleted_at=r[12], destroy_at=r[13])
            for r in rows]


@given(history=histories(batches=True, lifecycle=True))
def test_folding_up_to_the_head_gives_the_secrets_projection(history: list[Any]) -> None:
    folds: dict[str, dict[str, SecretMeta]] = {}

    async def fold_heads(run: Run) -> None:
        for org in ORGS:
            folds[org] = await secrets_as_of(run.ledger.recorder, org, lambda _s, _a: True)

    with temp_db("keyledger-as-of-") as path:
        run = run_history(path, history, after=fold_heads)
        reader = SqliteProjections(path)
        reader.open_now()
        try:
            for org in ORGS:
                fold = folds[org]
                # the fold of the org's decoded records, read from the file, is the same fold
                assert fold_secrets(decode_event(r.body) for r in iter_org_records(path, org)) == fold
                # and it is the model at the head (batches included)
                assert fold == run.model[org]
                listed = async_run(reader.list_secrets(org, limit=1000))
                assert listed == live(fold), org
                paged, after = [], None
                while page := async_run(reader.list_secrets(org, after=after, limit=2)):
                    paged.extend(page)
                    after = page[-1].name
                assert paged == listed
                for meta in fold.values():
                    assert async_run(reader.get_secret(org, meta.name)) == (None if meta.deleted else meta)
                assert projection_rows(path, org) == sorted(fold.values(), key=lambda m: m.name.encode())
        finally:
            reader.close_now()


def async_run(awaitable: Any) -> Any:
    async def wrap() -> Any:
        return await awaitable

    return asyncio.run(wrap())
