"""Automatic rotation by the server's scheduler, on both backends, with the clock in the test's hands:
due secrets rotate exactly once each; a failing webhook (a real HTTP server on a loopback port that
errors, stalls or answers too much) is retried with backoff and reported; a server stopped in the
middle of a webhook call leaves no secret half-rotated, and the next server finishes the job."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from api.app import create_app
from api.settings import Settings
from ledger.crypto import MasterKey
from tests.api.conftest import (
    ADMIN_TOKEN,
    Clock,
    Key,
    create_org,
    events_after,
    make_client,
    max_seq,
    secret_path,
    upsert,
)
from tests.pg import PgDsn
from tests.webhook_server import WebhookServer

SECOND = 1_000_000_000
HOUR = 3600 * SECOND
SWEEP = 0.05  # seconds between the scheduler's sweeps in these tests
GENERATOR = {"kind": "generator", "length": 32, "alphabet": "hex", "prefix": "tok_"}


@pytest.fixture
def settings(db_file: Path | PgDsn) -> Settings:
    return Settings(db=db_file, master_key=MasterKey.generate()[0], admin_token=ADMIN_TOKEN,
                    rotation_sweep_seconds=SWEEP, webhook_timeout_seconds=1.0, destroy_sweep_seconds=3600)


@pytest.fixture
def webhook() -> Iterator[WebhookServer]:
    with WebhookServer() as server:
        yield server


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll until `check()` is truthy (the scheduler runs on its own); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(SWEEP)


def let_sweeps_run(n: int = 10) -> None:
    """Give the scheduler several sweeps: what it does in them is asserted afterwards, not their speed."""
    time.sleep(SWEEP * n)


def configure(client: TestClient[Litestar], key: Key, name: str, rotator: dict[str, Any],
              interval: int = 3600) -> None:
    response = client.put(secret_path(name, "/rotation"), json={"interval_seconds": interval, "rotator": rotator},
                          headers=key.headers)
    assert response.status_code == 200, response.text


def version(client: TestClient[Litestar], key: Key, name: str) -> int:
    response = client.get(secret_path(name), headers=key.headers)
    assert response.status_code == 200, response.text
    return int(response.json()["version"])


def reveal(client: TestClient[Litestar], key: Key, name: str) -> str:
    response = client.post(secret_path(name, "/reveal"), headers=key.headers)
    assert response.status_code == 200, response.text
    return str(response.json()["value"])


def rotation_events(db_file: Path | PgDsn, after: int = 0) -> list[dict[str, Any]]:
    return [e for e in events_after(db_file, after) if e["type"].startswith("secret.rotat")]


def test_due_secrets_rotate_exactly_once_each(client: TestClient[Litestar], clock: Clock,
                                              db_file: Path | PgDsn) -> None:
    acme = create_org(client, "acme")
    names = ["A", "B", "C"]
    for name in [*names, "MANUAL"]:
        upsert(client, acme, name, f"initial-{name}", expect=201)
    for name in names:
        configure(client, acme, name, GENERATOR)
    configure(client, acme, "C", GENERATOR, interval=7200)
    start = max_seq(db_file)
    let_sweeps_run()
    assert rotation_events(db_file, start) == []  # nothing is due before its interval

    clock.advance(HOUR + SECOND)
    wait_for(lambda: all(version(client, acme, n) == 2 for n in ("A", "B")), "A and B to rotate")
    let_sweeps_run()
    assert [version(client, acme, n) for n in [*names, "MANUAL"]] == [2, 2, 1, 1]
    for name in ("A", "B"):
        value = reveal(client, acme, name)
        assert value.startswith("tok_") and len(value) == 36 and value != f"initial-{name}"
        assert set(value[4:]) <= set("0123456789abcdef")
    rotated = rotation_events(db_file, start)
    assert Counter((e["type"], e["name"]) for e in rotated) == {
        ("secret.rotation_started", "A"): 1, ("secret.rotated", "A"): 1,
        ("secret.rotation_started", "B"): 1, ("secret.rotated", "B"): 1,
    }
    assert all(e["actor"]["kind"] == "system" for e in rotated)

    clock.advance(HOUR)  # C's interval ends now; A and B are due again
    wait_for(lambda: [version(client, acme, n) for n in names] == [3, 3, 2], "the second round")
    let_sweeps_run()
    assert [version(client, acme, n) for n in [*names, "MANUAL"]] == [3, 3, 2, 1]


def test_a_manual_update_restarts_the_interval(client: TestClient[Litestar], clock: Clock) -> None:
    acme = create_org(client, "acme")
    upsert(client, acme, "K", "v1", expect=201)
    configure(client, acme, "K", GENERATOR)
    clock.advance(HOUR // 2)
    upsert(client, acme, "K", "v2", expect=200)
    clock.advance(HOUR // 2 + SECOND)  # an hour after the policy, half an hour after the update
    let_sweeps_run()
    assert version(client, acme, "K") == 2
    clock.advance(HOUR // 2)
    wait_for(lambda: version(client, acme, "K") == 3, "the rotation an interval after the update")


def test_a_failing_webhook_is_retried_with_backoff_and_reported(
    client: TestClient[Litestar], clock: Clock, db_file: Path | PgDsn, webhook: WebhookServer
) -> None:
    acme = create_org(client, "acme")
    upsert(client, acme, "HOOKED", "initial", expect=201)
    configure(client, acme, "HOOKED", {"kind": "webhook", "url": webhook.url})
    webhook.fail(500).stall(5.0).oversize(200_000).answer("from-the-webhook")
    start = max_seq(db_file)

    def failures() -> list[dict[str, Any]]:
        return [e for e in rotation_events(db_file, start) if e["type"] == "secret.rotation_failed"]

    clock.advance(HOUR + SECOND)
    first = wait_for(failures, "the first failure")
    assert first[0]["reason"] == "webhook answered HTTP 500" and first[0]["attempt"] == 1
    report = client.get("/v1/compliance/rotations", headers=acme.headers)
    assert report.status_code == 200, report.text
    rows = report.json()["rotations"]
    assert [(r["name"], r["status"], r["failures"], r["last_error"]) for r in rows] == [
        ("HOOKED", "failing", 1, "webhook answered HTTP 500")]
    let_sweeps_run()
    assert len(failures()) == 1 and len(webhook.calls) == 1  # no retry before the backoff's end

    # Backoff: 60 s after the first failure, 120 s after the second, ...
    assert first[0]["next_attempt_at"] - first[0]["at"] == 60 * SECOND
    clock.advance(60 * SECOND)
    second = wait_for(lambda: failures()[1:], "the stalled call to time out")
    assert "timed out" in second[0]["reason"] and second[0]["attempt"] == 2
    assert second[0]["next_attempt_at"] - second[0]["at"] == 120 * SECOND
    clock.advance(120 * SECOND)
    third = wait_for(lambda: failures()[2:], "the oversized answer to be refused")
    assert "larger than" in third[0]["reason"] and third[0]["attempt"] == 3
    assert version(client, acme, "HOOKED") == 1 and reveal(client, acme, "HOOKED") == "initial"

    clock.advance(240 * SECOND)
    wait_for(lambda: version(client, acme, "HOOKED") == 2, "the fourth attempt to succeed")
    assert reveal(client, acme, "HOOKED") == "from-the-webhook"
    done = [e for e in rotation_events(db_file, start) if e["type"] == "secret.rotated"]
    assert [(e["rotator"], e["attempt"]) for e in done] == [("webhook", 4)]
    # The webhook got the secret's name and a fresh request id each time.
    calls = webhook.calls
    assert [c.json["name"] for c in calls] == ["HOOKED"] * 4
    assert len({c.json["request_id"] for c in calls}) == 4
    report = client.get("/v1/compliance/rotations", headers=acme.headers)
    assert report.json()["rotations"] == []
    # Nothing of the values in the failure reasons.
    assert all("from-the-webhook" not in msgspec.json.encode(e).decode() for e in failures())


def test_a_restart_mid_rotation_leaves_no_secret_half_rotated(
    settings: Settings, clock: Clock, db_file: Path | PgDsn, webhook: WebhookServer
) -> None:
    webhook.stall(60.0, value="never-delivered").answer("after-the-restart")  # the first call stalls
    with make_client(create_app(settings, clock=clock)) as first:
        acme = create_org(first, "acme")
        upsert(first, acme, "HOOKED", "initial", expect=201)
        configure(first, acme, "HOOKED", {"kind": "webhook", "url": webhook.url})
        start = max_seq(db_file)
        clock.advance(HOUR + SECOND)
        wait_for(lambda: webhook.calls, "the webhook to be called")
        started = rotation_events(db_file, start)
        assert [e["type"] for e in started] == ["secret.rotation_started"]
    # The server stopped mid-call: no outcome recorded, the value untouched.
    assert [e["type"] for e in rotation_events(db_file, start)] == ["secret.rotation_started"]
    with make_client(create_app(settings, clock=clock)) as second:
        let_sweeps_run()
        assert version(second, acme, "HOOKED") == 1  # the lease still holds: no second call yet
        assert reveal(second, acme, "HOOKED") == "initial"
        clock.advance((started[0]["lease_until"] - started[0]["at"]) + SECOND)
        wait_for(lambda: version(second, acme, "HOOKED") == 2, "the next server to finish the rotation")
        assert reveal(second, acme, "HOOKED") == "after-the-restart"
    kinds = [(e["type"], e.get("attempt")) for e in rotation_events(db_file, start)]
    assert kinds == [("secret.rotation_started", 1), ("secret.rotation_failed", 1),
                     ("secret.rotation_started", 2), ("secret.rotated", 2)]
    interrupted = rotation_events(db_file, start)[1]
    assert interrupted["reason"].startswith("interrupted")
