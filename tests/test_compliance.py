"""Each compliance query of projections/compliance.py against a brute-force answer computed from the raw
events of the database file (every record decoded with ledger.codec.decode_event, no projection used),
over generated histories: several keys of different scopes, upserts, deletes, re-creates, reveals granted
and denied, revocations, group-commit batches, and a controllable clock that jumps hours and days.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.events import (
    VALUE_EVENTS,
    ApiKeyRevoked,
    Event,
    SecretCreated,
    SecretDeleted,
    SecretRestored,
    SecretRevealDenied,
    SecretRevealed,
    SecretRolledBack,
    SecretUpdated,
)
from ledger.records import StoredRecord
from projections import compliance
from projections.sqlite_reader import SqliteProjections
from tests.audit_history import DAY, NAMES, ORGS, Run, histories, raw_events, run_history, temp_db

# Each property folds whole histories twice (the projection and a brute force): half the profile's
# examples keep CI short; the soak profile still runs hundreds.
HALF_SIZE = settings(max_examples=max(20, (settings.default.max_examples or 60) // 2))

Events = list[tuple[StoredRecord, Event]]
Window = tuple[int | None, int | None]


# -- brute force, from the raw events ----------------------------------------------------------------------


def of_org(events: Events, org: str) -> Events:
    return [(record, event) for record, event in events if record.org == org]


def live_secrets(events: Events, org: str) -> dict[str, dict[str, int]]:
    """name -> {created_seq, version, updated_at} of every secret that exists at the end."""
    state: dict[str, dict[str, int]] = {}
    deleted: dict[str, dict[str, int]] = {}
    for record, event in of_org(events, org):
        if isinstance(event, SecretCreated):
            state[event.name] = {"created_seq": record.seq, "version": event.version, "updated_at": event.at}
        elif isinstance(event, SecretUpdated | SecretRolledBack):
            state[event.name].update(version=event.version, updated_at=event.at)
        elif isinstance(event, SecretRestored):  # back as it was: the same creation
            state[event.name] = {**deleted.pop(event.name), "version": event.version, "updated_at": event.at}
        elif isinstance(event, SecretDeleted):
            deleted[event.name] = state.pop(event.name)
    return state


def in_window(at: int, window: Window) -> bool:
    since, until = window
    return (since is None or at >= since) and (until is None or at <= until)


def bf_not_updated(events: Events, org: str, days: int, now: int) -> list[tuple[str, int, int]]:
    """Live secrets with no new value in the `days` days up to `now` (an update exactly then counts)."""
    return sorted((name, s["version"], s["updated_at"]) for name, s in live_secrets(events, org).items()
                  if now - s["updated_at"] > days * DAY)


def bf_reveals(events: Events, org: str, kind: type[Event], window: Window,
               secret: str | None = None) -> list[tuple[Any, ...]]:
    return [
        (record.seq, event.at, event.actor.key_id, event.actor.label, event.name, event.version,  # type: ignore[attr-defined]
         event.reason, event.request_id)  # type: ignore[attr-defined]
        for record, event in of_org(events, org)
        if isinstance(event, kind) and in_window(event.at, window)
        and (secret is None or event.name == secret)  # type: ignore[attr-defined]
    ]


def bf_exposure(events: Events, org: str, secret: str, version: int) -> tuple[Any, ...]:
    """When the version was written, when a newer version or a delete ended it, and its reveals."""
    created_at = replaced_at = None
    reveals = []
    for record, event in of_org(events, org):
        if getattr(event, "name", None) != secret:
            continue
        if isinstance(event, VALUE_EVENTS) and event.version == version:
            created_at = event.at
        elif (isinstance(event, (*VALUE_EVENTS, SecretDeleted)) and created_at is not None
              and replaced_at is None and (event.version > version or isinstance(event, SecretDeleted))):
            replaced_at = event.at
        elif isinstance(event, SecretRevealed) and event.version == version:
            reveals.append((record.seq, event.actor.key_id, event.version))
    return created_at, replaced_at, reveals


def bf_never_revealed(events: Events, org: str) -> list[str]:
    """Live secrets with no granted reveal after the event that (re-)created them."""
    state = live_secrets(events, org)
    revealed = {name for name, s in state.items() for record, event in of_org(events, org)
                if isinstance(event, SecretRevealed) and event.name == name and record.seq > s["created_seq"]}
    return sorted(set(state) - revealed)


def bf_revoked_key_reveals(events: Events, org: str) -> list[tuple[Any, ...]]:
    """Granted reveals whose key was revoked by a later event."""
    revoked_at = {event.key_id: record.seq for record, event in events if isinstance(event, ApiKeyRevoked)}
    return [
        (record.seq, event.actor.key_id, event.name, event.version)
        for record, event in of_org(events, org)
        if isinstance(event, SecretRevealed) and revoked_at.get(event.actor.key_id, 0) > record.seq
    ]


def bf_per_actor(events: Events, org: str, window: Window) -> list[tuple[str, str, int]]:
    counts = Counter(
        (event.actor.key_id, event.actor.label)
        for record, event in of_org(events, org)
        if isinstance(event, SecretRevealed) and in_window(event.at, window)
    )
    assert len({key_id for key_id, _ in counts}) == len(counts)  # one label per key
    return sorted(((key_id, label, n) for (key_id, label), n in counts.items()), key=lambda r: (-r[2], r[0]))


# -- running the queries -------------------------------------------------------------------------------------


@contextmanager
def projections(path: Path) -> Iterator[SqliteProjections]:
    """The projections of the file, opened after the history (the ledger is stopped)."""
    reader = SqliteProjections(path)
    reader.open_now()
    try:
        yield reader
    finally:
        reader.close_now()


def history_and_events(history: list[Any], path: Path, **kwargs: Any) -> tuple[Run, Events]:
    run = run_history(path, history, **kwargs)
    events = raw_events(path)
    assert {record.org for record, _ in events} == set(ORGS)
    return run, events


def times_of(events: Events) -> list[int]:
    return sorted({record.at for record, _ in events})


def windows(times: list[int]) -> st.SearchStrategy[list[Window]]:
    bound = st.none() | st.builds(lambda t, d: t + d, st.sampled_from(times), st.sampled_from((-1, 0, 1)))
    return st.lists(st.tuples(bound, bound), min_size=1, max_size=8)


def edges(events: Events, kind: type[Event]) -> list[Window]:
    """Windows that begin or end exactly at each such event, or a nanosecond beside it."""
    out: list[Window] = [(None, None)]
    for at in sorted({record.at for record, event in events if isinstance(event, kind)}):
        out += [(at, at), (None, at), (at, None), (None, at - 1), (at + 1, None), (at - 1, at + 1)]
    return out


def reveal_rows(rows: list[Any]) -> list[tuple[Any, ...]]:
    return [(r.seq, r.at, r.actor_key_id, r.actor_label, r.secret, r.version, r.detail, r.request_id)
            for r in rows]


def check_queries(path: Path, check: Callable[[SqliteProjections], Awaitable[None]]) -> None:
    with projections(path) as reader:
        asyncio.run(check(reader))


many = histories(batches=True, lifecycle=True)


# -- the properties ---------------------------------------------------------------------------------------------


@HALF_SIZE
@given(history=many)
def test_secrets_not_updated_matches_brute_force(history: list[Any]) -> None:
    async def check(reader: SqliteProjections) -> None:
        for org in ORGS:
            updates = sorted({s["updated_at"] for s in live_secrets(events, org).values()})
            for days in (0, 1, 3, 10, 40):
                # `now` exactly N days after each update, and a nanosecond either side of it
                nows = {run.clock.now, *(at + days * DAY + d for at in updates for d in (-1, 0, 1))}
                for now in sorted(nows):
                    got = await compliance.secrets_not_updated(reader, org, days, now)
                    assert all(m.org == org and not m.deleted for m in got)
                    assert [(m.name, m.version, m.updated_at) for m in got] == bf_not_updated(
                        events, org, days, now), (org, days, now)

    with temp_db("keyledger-compliance-") as path:
        run, events = history_and_events(history, path)
        check_queries(path, check)


@HALF_SIZE
@given(history=many, data=st.data())
def test_who_revealed_matches_brute_force(history: list[Any], data: st.DataObject) -> None:
    async def check(reader: SqliteProjections) -> None:
        for org in ORGS:
            for name in (*NAMES, "never-existed"):
                for window in chosen:
                    got = await compliance.who_revealed(reader, org, name, *window)
                    assert all(r.org == org and r.action == "secret.revealed" for r in got)
                    assert reveal_rows(got) == bf_reveals(events, org, SecretRevealed, window, name), (
                        org, name, window)

    with temp_db("keyledger-compliance-") as path:
        _, events = history_and_events(history, path)
        chosen = edges(events, SecretRevealed) + data.draw(windows(times_of(events)), label="windows")
        check_queries(path, check)


@HALF_SIZE
@given(history=many)
def test_version_exposure_matches_brute_force(history: list[Any]) -> None:
    async def check(reader: SqliteProjections) -> None:
        for org in ORGS:
            for name in (*NAMES, "never-existed"):
                top = max((e.version for _, e in of_org(events, org) if getattr(e, "name", None) == name
                           and isinstance(e, VALUE_EVENTS)), default=0)
                for version in range(1, top + 2):
                    got = await compliance.version_exposure(reader, org, name, version)
                    assert (got.secret, got.version) == (name, version)
                    answer = (got.created_at, got.replaced_at,
                              [(r.seq, r.actor_key_id, r.version) for r in got.reveals])
                    assert answer == bf_exposure(events, org, name, version), (org, name, version)

    with temp_db("keyledger-compliance-") as path:
        _, events = history_and_events(history, path)
        check_queries(path, check)


@HALF_SIZE
@given(history=histories(batches=False, lifecycle=True))
def test_secrets_never_revealed_matches_brute_force(history: list[Any]) -> None:
    """Sequential commands on a clock that always moves: see the test_bug_ below for equal times."""
    async def check(reader: SqliteProjections) -> None:
        for org in ORGS:
            got = await compliance.secrets_never_revealed(reader, org)
            assert all(m.org == org and not m.deleted for m in got)
            assert [m.name for m in got] == bf_never_revealed(events, org), org

    with temp_db("keyledger-compliance-") as path:
        _, events = history_and_events(history, path)
        check_queries(path, check)


@HALF_SIZE
@given(history=many)
def test_reveals_with_revoked_keys_matches_brute_force(history: list[Any]) -> None:
    async def check(reader: SqliteProjections) -> None:
        for org in ORGS:
            got = await compliance.reveals_with_revoked_keys(reader, org)
            assert [(r.seq, r.actor_key_id, r.secret, r.version) for r in got] == bf_revoked_key_reveals(
                events, org), org

    with temp_db("keyledger-compliance-") as path:
        _, events = history_and_events(history, path)
        check_queries(path, check)


@HALF_SIZE
@given(history=many, data=st.data())
def test_denied_reveals_matches_brute_force(history: list[Any], data: st.DataObject) -> None:
    async def check(reader: SqliteProjections) -> None:
        for org in ORGS:
            for window in chosen:
                got = await compliance.denied_reveals(reader, org, *window)
                assert all(r.outcome == "denied" for r in got)
                assert reveal_rows(got) == bf_reveals(events, org, SecretRevealDenied, window), (org, window)

    with temp_db("keyledger-compliance-") as path:
        _, events = history_and_events(history, path)
        chosen = edges(events, SecretRevealDenied) + data.draw(windows(times_of(events)), label="windows")
        check_queries(path, check)


@HALF_SIZE
@given(history=many, data=st.data())
def test_reveals_per_actor_matches_brute_force(history: list[Any], data: st.DataObject) -> None:
    async def check(reader: SqliteProjections) -> None:
        for org in ORGS:
            for window in chosen:
                got = await compliance.reveals_per_actor(reader, org, *window)
                assert [(c.actor_key_id, c.actor_label, c.reveals) for c in got] == bf_per_actor(
                    events, org, window), (org, window)

    with temp_db("keyledger-compliance-") as path:
        _, events = history_and_events(history, path)
        chosen = edges(events, SecretRevealed) + data.draw(windows(times_of(events)), label="windows")
        check_queries(path, check)


# -- a known history: the brute force itself answers what a person would ------------------------------------------


KNOWN = [  # each org starts with keys: 0 its admin (scope all), 1 an agents bot, 2 a tools bot
    ("upsert", "acme", 0, "db", "tools", None, None),
    ("wait", 10 * DAY),
    ("reveal", "acme", 0, "db", "deploy"),
    ("reveal", "acme", 2, "db", "tools"),
    ("reveal", "acme", 1, "db", "agents"),  # denied: scope agents does not cover tools
    ("upsert", "acme", 0, "OPENAI API KEY", None, None, None),
    ("upsert", "acme", 0, "db", None, None, None),  # version 2
    ("reveal", "acme", 2, "db", "tools"),
    ("revoke", "acme", 2),
    ("wait", 2 * DAY),
    ("delete", "acme", 0, "db"),
    ("upsert", "globex", 0, "db", None, None, None),
]


def test_the_brute_force_answers_a_known_history() -> None:
    with temp_db("keyledger-compliance-") as path:
        run, events = history_and_events(KNOWN, path)
        acme = "acme"
        admin, tools_bot, agents_bot = run.key("acme", 0), run.key("acme", 2), run.key("acme", 1)
        assert (tools_bot.org, tools_bot.scope, agents_bot.org, agents_bot.scope) == (acme, "tools", acme, "agents")
        now = run.clock.now
        assert [(name, version) for name, version, _ in bf_not_updated(events, acme, 1, now)] == [
            ("OPENAI API KEY", 1)]
        assert bf_not_updated(events, acme, 3, now) == []
        granted = bf_reveals(events, acme, SecretRevealed, (None, None), "db")
        assert [(r[2], r[5]) for r in granted] == [(admin.key_id, 1), (tools_bot.key_id, 1), (tools_bot.key_id, 2)]
        denied = bf_reveals(events, acme, SecretRevealDenied, (None, None))
        assert [(r[2], r[4]) for r in denied] == [(agents_bot.key_id, "db")]
        created_at, replaced_at, reveals = bf_exposure(events, acme, "db", 1)
        assert created_at is not None and replaced_at is not None and replaced_at - created_at >= 10 * DAY
        assert [r[1] for r in reveals] == [admin.key_id, tools_bot.key_id]
        assert bf_exposure(events, acme, "db", 2)[1] is not None  # ended by the delete
        assert bf_exposure(events, acme, "db", 3) == (None, None, [])
        assert bf_never_revealed(events, acme) == ["OPENAI API KEY"]
        assert bf_never_revealed(events, "globex") == ["db"]
        assert [r[1] for r in bf_revoked_key_reveals(events, acme)] == [tools_bot.key_id, tools_bot.key_id]
        assert bf_per_actor(events, acme, (None, None)) == [
            (tools_bot.key_id, tools_bot.label, 2), (admin.key_id, admin.label, 1)]
        with projections(path) as reader:
            assert [m.name for m in asyncio.run(compliance.secrets_never_revealed(reader, acme))] == [
                "OPENAI API KEY"]
            assert len(asyncio.run(compliance.reveals_with_revoked_keys(reader, acme))) == 2


# -- equal times ----------------------------------------------------------------------------------------------------


REVEAL_DELETE_RECREATE = [
    ("upsert", "acme", 0, "db", None, None, None),
    ("reveal", "acme", 0, "db", ""),
    ("delete", "acme", 0, "db"),
    ("upsert", "acme", 0, "db", None, None, None),  # a new incarnation, which no one has revealed
]


@pytest.mark.parametrize("how", ["frozen clock", "one group-commit batch"])
def test_bug_never_revealed_counts_a_reveal_of_the_previous_incarnation_made_at_the_same_time(how: str) -> None:
    """Times only never go backwards (max(now, last)), and a group-commit batch shares one time, so a reveal,
    a delete and a re-create can carry the same `at`; the re-created secret was still never revealed."""
    if how == "frozen clock":
        history, step = REVEAL_DELETE_RECREATE, 0
    else:
        history, step = [REVEAL_DELETE_RECREATE[0], ("together", REVEAL_DELETE_RECREATE[1:])], 1_000
    with temp_db("keyledger-compliance-") as path:
        _, events = history_and_events(history, path, step=step)
        assert bf_never_revealed(events, "acme") == ["db"]
        with projections(path) as reader:
            got = asyncio.run(compliance.secrets_never_revealed(reader, "acme"))
        assert [m.name for m in got] == ["db"]
