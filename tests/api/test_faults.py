"""Storage faults: every write request is all or nothing, and a reveal never answers a value whose
event did not commit (invariant 3, fail closed).

- A fault injected at each step of the append's transaction, for each kind of write request:
  503 with a problem body, not one row changed anywhere, reads keep working, and the same request
  succeeds once the fault is gone (the ledger still verifies, projections equal a rebuild).
- 20% of appends failing at random steps, over 10,000 concurrent reveals: every 200 carries the
  value and its committed `secret.revealed` event; no other answer carries a value or has an event.

The full disk itself (a real tmpfs, and SQLite's `max_page_count`) is tests/api/test_disk_full.py.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from api.app import create_app
from api.settings import Settings
from ledger.crypto import MasterKey
from ledger.recorder import APPEND_STEPS, Recorder
from projections.sqlite_tables import all_projectors
from tests.api.conftest import (
    ADMIN_HEADERS,
    ADMIN_TOKEN,
    PROJECTION_TABLES,
    Key,
    assert_problem,
    create_key,
    query,
    rebuilt_projections,
    storage_fault,
    table_dump,
    upsert,
    verify_database,
)

STEPS = [
    *APPEND_STEPS[:-1],
    *(f"{kind}:{projector.name}" for projector in all_projectors() for kind in ("projection", "position")),
    APPEND_STEPS[-1],
]
VALUE = "fault-test-value-7f3a"  # the value of EXISTING, looked for in every failed answer


def recorder_of(app: Litestar) -> Recorder:
    recorder: Recorder = app.state.ledger.recorder
    return recorder


class Fault:
    """Raise a storage error (the backend driver's own) once, at one step of the next append."""

    def __init__(self, step: str, app: Litestar) -> None:
        self.step = step
        self.recorder = recorder_of(app)
        self.armed = True
        self.fired = 0

    def __call__(self, step: str) -> None:
        if self.armed and step == self.step:
            self.armed = False
            self.fired += 1
            raise storage_fault(self.recorder, f"disk I/O error (injected at {step})")


Write = Callable[[TestClient[Litestar], Key, Key], httpx.Response]
WRITES: dict[str, Write] = {
    "create-org": lambda c, admin, member: c.post("/v1/admin/orgs", json={"org": "initech"}, headers=ADMIN_HEADERS),
    "create-key": lambda c, admin, member: c.post("/v1/keys", json={"label": "new"}, headers=admin.headers),
    "revoke-key": lambda c, admin, member: c.delete(f"/v1/keys/{member.key_id}", headers=admin.headers),
    "create-secret": lambda c, admin, member: c.post(
        "/v1/secrets", json={"name": "NEW", "value": "new value"},
        headers={**admin.headers, "Idempotency-Key": "create-new-1"},
    ),
    "update-secret": lambda c, admin, member: upsert(c, admin, "EXISTING", "second value"),
    "delete-secret": lambda c, admin, member: c.delete("/v1/secrets/EXISTING", headers=admin.headers),
    "reveal": lambda c, admin, member: c.post("/v1/secrets/EXISTING/reveal", headers=member.headers),
}


def fault_cases() -> list[tuple[str, str]]:
    """Every write faulted at every step of the append itself, and at both steps (rows, position) of two
    projectors, taken in turn so that the writes between them cover every projector. A projector's steps
    run the same code for every projector; the rebuild test below faults every step of every projector for
    three writes (`test_projections_equal_a_rebuild_after_faults_at_every_step`)."""
    projectors = [p.name for p in all_projectors()]
    own = [step for step in STEPS if ":" not in step]
    cases = []
    for i, write in enumerate(WRITES):
        chosen = {projectors[(2 * i) % len(projectors)], projectors[(2 * i + 1) % len(projectors)]}
        cases += [(write, step) for step in own]
        cases += [(write, f"{kind}:{name}") for name in sorted(chosen) for kind in ("projection", "position")]
    return cases


@pytest.mark.parametrize(("write", "step"), fault_cases())
def test_a_fault_at_any_step_leaves_nothing_and_the_retry_succeeds(
    client: TestClient[Litestar], app: Litestar, db_file: Path, acme: Key, write: str, step: str
) -> None:
    member = create_key(client, acme)
    upsert(client, acme, "EXISTING", VALUE, expect=201)
    before = table_dump(db_file)
    fault = Fault(step, app)
    recorder_of(app).inject_fault = fault  # type: ignore[attr-defined]

    failed = WRITES[write](client, acme, member)
    assert fault.fired == 1
    body = assert_problem(failed, 503)
    assert VALUE not in failed.text and "value" not in body
    assert table_dump(db_file) == before
    # Reads keep working, and see the state from before the failed request.
    assert client.get("/v1/secrets/EXISTING", headers=acme.headers).json()["version"] == 1
    assert [k["key_id"] for k in client.get("/v1/keys", headers=acme.headers).json()["keys"]].count(member.key_id) == 1

    retried = WRITES[write](client, acme, member)
    assert retried.status_code in (200, 201, 204), retried.text
    assert table_dump(db_file) != before
    if write == "reveal":
        assert retried.json()["value"] == VALUE
    report = verify_database(db_file)
    assert report.ok, report.summary()


def test_projections_equal_a_rebuild_after_faults_at_every_step(
    client: TestClient[Litestar], app: Litestar, db_file: Path, acme: Key, tmp_path: Path
) -> None:
    member = create_key(client, acme)
    upsert(client, acme, "EXISTING", VALUE, expect=201)
    for step in STEPS:
        for write in ("update-secret", "reveal", "create-key"):
            recorder_of(app).inject_fault = Fault(step, app)  # type: ignore[attr-defined]
            assert WRITES[write](client, acme, member).status_code == 503
            assert WRITES[write](client, acme, member).status_code in (200, 201)
    incremental = table_dump(db_file, PROJECTION_TABLES)
    assert rebuilt_projections(db_file, tmp_path) == incremental


# -- fail closed under random faults -----------------------------------------------------------------

REVEALS = int(os.environ.get("KEYLEDGER_FAULT_REVEALS", "4000"))
CONCURRENCY = 32


@asynccontextmanager
async def running(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan started, behind an in-process async HTTP client."""
    to_app: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await to_app.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},  # type: ignore[arg-type]
                                       to_app.get, from_app.put))  # type: ignore[arg-type]
    started = await from_app.get()
    assert started["type"] == "lifespan.startup.complete", started
    try:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://keyledger.test") as http:
            yield http
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        await lifespan


def test_no_value_is_ever_sent_for_a_reveal_whose_event_did_not_commit(db_file: Path) -> None:
    db = db_file
    # Rate limits off: 10,000 reveals in seconds from one key is the point here, not abuse.
    app = create_app(Settings(db=db, master_key=MasterKey.generate()[0], admin_token=ADMIN_TOKEN,
                              rate_limit_per_key=None, rate_limit_per_address=None))
    values = {f"S{i}": f"fail-closed-canary-{i}-{os.urandom(6).hex()}" for i in range(20)}
    rng = random.Random(20261128)
    answers: dict[str, tuple[int, str, dict[str, Any]]] = {}

    async def run() -> None:
        async with running(app) as http:
            created = await http.post("/v1/admin/orgs", json={"org": "acme"}, headers=ADMIN_HEADERS)
            headers = {"Authorization": f"Bearer {created.json()['api_key']}"}
            for name, value in values.items():
                assert (await http.post("/v1/secrets", json={"name": name, "value": value},
                                        headers=headers)).status_code == 201

            def fault(step: str) -> None:
                if step == "begin" and rng.random() < 0.2:  # this append fails, at a random later step
                    target = rng.choice(STEPS)
                    recorder_of(app).inject_fault = lambda s: _fail_at(s, target, fault, app)
                    _fail_at(step, target, fault, app)

            recorder_of(app).inject_fault = fault
            queue = list(range(REVEALS))

            async def client(worker: int) -> None:
                while queue:
                    n = queue.pop()
                    name = f"S{n % len(values)}"
                    request_id = f"reveal-{n}"
                    response = await http.post(f"/v1/secrets/{name}/reveal",
                                                headers={**headers, "X-Request-ID": request_id})
                    answers[request_id] = (response.status_code, name, response.json())

            await asyncio.gather(*(client(w) for w in range(CONCURRENCY)))
            recorder_of(app).inject_fault = None

    asyncio.run(run())
    committed = {
        event["request_id"]: event
        for (body,) in query(db, "SELECT body FROM events WHERE type = 'secret.revealed'")
        for event in [msgspec.json.decode(body)]
    }
    ok = {rid for rid, (status, _, _) in answers.items() if status == 200}
    failed = {rid for rid, (status, _, _) in answers.items() if status != 200}
    assert len(answers) == REVEALS
    assert ok == set(committed), "a 200 without its event, or an event without its 200"
    for rid in ok:
        status, name, body = answers[rid]
        assert body["value"] == values[name] and committed[rid]["version"] == body["version"]
    for rid in failed:
        status, name, body = answers[rid]
        assert status == 503 and "value" not in body and values[name] not in str(body), (status, body)
    # Batches fail as a whole, so the share of failed requests is near, not exactly, 20%.
    assert 0.08 * REVEALS < len(failed) < 0.4 * REVEALS, len(failed)
    report = verify_database(db)
    assert report.ok, report.summary()


def _fail_at(step: str, target: str, rearm: Callable[[str], None], app: Litestar) -> None:
    """Raise at `target` (this append only), then put the random fault back for the next append."""
    if step == target:
        recorder_of(app).inject_fault = rearm
        raise storage_fault(recorder_of(app), f"database or disk is full (injected at {step})")
