"""Rate limits per API key and per client address: 429 problems with `Retry-After`, configurable,
on by default with generous limits; the limiter itself is checked against a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import TestClient

from api import ratelimit
from api.app import create_app
from api.ratelimit import RateLimit, RateLimiter
from api.settings import RATE_LIMIT_PER_ADDRESS, RATE_LIMIT_PER_KEY, Settings
from ledger.crypto import MasterKey
from ledger.errors import ValidationError
from tests.api.conftest import ADMIN_HEADERS, ADMIN_TOKEN, assert_problem, create_key, create_org, make_client


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_rested_caller_bursts_a_period_then_gets_one_request_per_interval() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(requests=10, period=60.0), clock)
    assert [limiter.acquire("k") for _ in range(10)] == [0.0] * 10
    wait = limiter.acquire("k")
    assert wait == pytest.approx(6.0)
    assert limiter.acquire("other") == 0.0  # callers are independent
    clock.now += wait
    assert limiter.acquire("k") == 0.0
    assert limiter.acquire("k") == pytest.approx(6.0)
    clock.now += 60.0  # fully rested again
    assert [limiter.acquire("k") for _ in range(10)] == [0.0] * 10


@given(st.lists(st.floats(min_value=0.0, max_value=5.0, allow_nan=False), min_size=1, max_size=300),
       st.integers(min_value=1, max_value=20))
def test_no_window_ever_admits_more_than_a_burst_plus_its_length_in_intervals(gaps: list[float], requests: int) -> None:
    clock = Clock()
    limit = RateLimit(requests=requests, period=10.0)
    limiter = RateLimiter(limit, clock)
    allowed: list[float] = []
    for gap in gaps:
        clock.now += gap
        wait = limiter.acquire("k")
        if wait == 0.0:
            allowed.append(clock.now)
        else:
            assert wait > 0
    interval = limit.period / limit.requests
    for i, start in enumerate(allowed):
        for j in range(i, len(allowed)):
            assert j - i + 1 <= limit.requests + (allowed[j] - start) / interval + 1e-6


def test_a_denied_caller_is_allowed_exactly_after_the_wait_it_was_told() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(requests=3, period=1.0), clock)
    for _ in range(3):
        limiter.acquire("k")
    wait = limiter.acquire("k")
    clock.now += wait * 0.99
    assert limiter.acquire("k") > 0
    clock.now += wait * 0.02
    assert limiter.acquire("k") == 0.0


def test_memory_is_bounded_by_forgetting_rested_callers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratelimit, "MAX_CALLERS", 100)
    clock = Clock()
    limiter = RateLimiter(RateLimit(requests=5, period=1.0), clock)
    for i in range(1000):
        clock.now += 0.01
        assert limiter.acquire(f"address-{i}") == 0.0
        assert len(limiter._tat) <= 100


@pytest.mark.parametrize(("text", "expected"), [
    ("600/minute", RateLimit(600, 60.0)), (" 20 / second ", RateLimit(20, 1.0)),
    ("10000/hour", RateLimit(10000, 3600.0)), ("off", None), ("OFF", None),
])
def test_limits_parse(text: str, expected: RateLimit | None) -> None:
    assert RateLimit.parse(text, "X") == expected


@pytest.mark.parametrize("text", [" ", "0/minute", "-1/second", "10/day", "ten/minute", "10", "10/minute/2", "1e3/s"])
def test_bad_limits_are_refused_naming_the_variable(text: str) -> None:
    env = {"KEYLEDGER_MASTER_KEY": MasterKey.generate()[1], "KEYLEDGER_RATE_LIMIT_PER_KEY": text}
    with pytest.raises(ValidationError, match="KEYLEDGER_RATE_LIMIT_PER_KEY"):
        Settings.from_env(env)


def test_limits_are_on_by_default_and_set_from_the_environment() -> None:
    key = MasterKey.generate()[1]
    defaults = Settings.from_env({"KEYLEDGER_MASTER_KEY": key})
    assert defaults.rate_limit_per_key == RATE_LIMIT_PER_KEY
    assert defaults.rate_limit_per_address == RATE_LIMIT_PER_ADDRESS
    assert RATE_LIMIT_PER_KEY.requests >= 1000 and RATE_LIMIT_PER_ADDRESS.requests >= RATE_LIMIT_PER_KEY.requests
    configured = Settings.from_env({"KEYLEDGER_MASTER_KEY": key, "KEYLEDGER_RATE_LIMIT_PER_KEY": "5/second",
                                    "KEYLEDGER_RATE_LIMIT_PER_ADDRESS": "off"})
    assert configured.rate_limit_per_key == RateLimit(5, 1.0) and configured.rate_limit_per_address is None


def limited_app(tmp_path: Path, per_key: RateLimit | None, per_address: RateLimit | None) -> Litestar:
    return create_app(Settings(db=tmp_path / "k.db", master_key=MasterKey.generate()[0], admin_token=ADMIN_TOKEN,
                               rate_limit_per_key=per_key, rate_limit_per_address=per_address))


def test_each_key_has_its_own_budget_and_a_429_says_when_to_retry(tmp_path: Path) -> None:
    app = limited_app(tmp_path, RateLimit(5, 60.0), None)
    with make_client(app) as client:
        admin = create_org(client, "acme")  # not a keyed request: the admin token
        member = create_key(client, admin)  # the admin key's first request
        for _ in range(4):
            assert client.get("/v1/secrets", headers=admin.headers).status_code == 200
        limited = client.get("/v1/secrets", headers=admin.headers)
        body = assert_problem(limited, 429, "per API key")
        assert body["title"] == "Too many requests"
        assert 1 <= int(limited.headers["retry-after"]) <= 12
        # Writes are refused before they reach the ledger; other keys are untouched.
        assert client.post("/v1/secrets", json={"name": "X", "value": "v"}, headers=admin.headers).status_code == 429
        assert client.get("/v1/secrets/X", headers=member.headers).status_code == 404
        assert client.post("/v1/secrets", json={"name": "X", "value": "v"}, headers=member.headers).status_code == 201


def test_each_address_has_a_budget_that_bad_keys_spend_too(tmp_path: Path) -> None:
    app = limited_app(tmp_path, None, RateLimit(8, 60.0))
    with make_client(app) as client:
        admin = create_org(client, "acme")
        statuses = [client.get("/v1/secrets", headers={"Authorization": f"Bearer rt_live_{'x' * 32}{i:04}"}).status_code
                    for i in range(7)]
        assert statuses == [401] * 7  # key guessing...
        limited = client.get("/v1/secrets", headers=admin.headers)  # ...has used up this address's budget
        assert_problem(limited, 429, "per client address")
        assert client.post("/v1/admin/orgs", json={"org": "other"}, headers=ADMIN_HEADERS).status_code == 429
        # Unauthenticated liveness probes are never limited.
        assert client.get("/healthz").status_code == 200


def test_limits_off_let_everything_through(tmp_path: Path) -> None:
    app = limited_app(tmp_path, None, None)
    client: TestClient[Litestar]
    with make_client(app) as client:
        admin = create_org(client, "acme")
        assert all(client.get("/v1/secrets", headers=admin.headers).status_code == 200 for _ in range(300))
