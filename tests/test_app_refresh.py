"""Connected apps' token refresh through the Ledger service, against the real loopback authorization server,
on SQLite and PostgreSQL: one refresh for many concurrent callers, and, on PostgreSQL, two processes that
both find the token due (the refresh token rotates: the loser must answer the winner's token, not report
the connection broken)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from ledger import oauth
from ledger.apps import AppTokens, RecordAppRefresh, RefreshNeeded, RevealAppToken
from ledger.commands import Context, CreatedKey
from ledger.crypto import Keyring, MasterKey
from ledger.errors import AppBrokenError
from ledger.pg_store import PostgresRecorder
from ledger.recorder import Recorder
from ledger.service import Ledger
from ledger.sqlite_store import SqliteRecorder
from projections.pg_tables import all_projectors as pg_projectors
from projections.sqlite_tables import all_projectors
from tests.conftest import ADMIN, ctx_for
from tests.oidc_server import OidcServer
from tests.pg import DSN, REQUIRED, fresh_database, needs_postgres

REDIRECT = "http://localhost:8000/apps/callback"
NS = 1_000_000_000
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(
    not DSN and not REQUIRED, reason="KEYLEDGER_TEST_PG_DSN is not set (.ci/run sets it)"))]


class Clock:
    def __init__(self) -> None:
        self.now = time.time_ns()

    def __call__(self) -> int:
        return self.now


@pytest.fixture(params=BACKENDS)
async def make_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[[Clock], Ledger]]:
    """Ledgers over one store: on PostgreSQL each is a process of its own; SQLite takes one."""
    keyring = Keyring(MasterKey.generate()[0])
    started: list[Ledger] = []
    databases = fresh_database() if request.param == "postgresql" else None
    dsn = await anext(databases) if databases is not None else ""

    def recorder() -> Recorder:
        if dsn:
            return PostgresRecorder(dsn, pg_projectors())
        return SqliteRecorder(tmp_path / "keyledger.db", all_projectors())

    def make(clock: Clock) -> Ledger:
        led = Ledger(recorder(), keyring, clock)
        started.append(led)
        return led

    try:
        yield make
    finally:
        for led in started:
            await led.stop()
        if databases is not None:
            async for _ in databases:
                pass


async def connect(server: OidcServer, ledger: Ledger, admin: CreatedKey, *, ttl_s: int) -> str:
    """A real grant from the server, connected as app "crm"; returns the first access token."""
    client_id, client_secret = server.register_client(REDIRECT)
    server.set_user("ada", email="ada@example.com", email_verified=True)
    request = oauth.authorization_request(server.authorization_endpoint, client_id=client_id, redirect_uri=REDIRECT,
                                          scopes=("email",), openid=False)
    location = server.authorize(request.url, "ada")
    code = oauth.code_from_callback(dict(parse_qsl(urlsplit(location).query)), expected_state=request.state)
    tokens = await oauth.exchange_code(server.token_endpoint, client_id=client_id, client_secret=client_secret,
                                       redirect_uri=REDIRECT, code=code, code_verifier=request.code_verifier,
                                       now_ns=ledger.clock())
    assert tokens.refresh_token and tokens.expires_at is not None
    await ledger.connect_app(
        ctx_for(admin), "acme", "crm", provider="custom", authorization_url=server.authorization_endpoint,
        token_url=server.token_endpoint, client_id=client_id, client_secret=client_secret, scopes=["email"],
        tokens=AppTokens(access_token=tokens.access_token, refresh_token=tokens.refresh_token,
                         expires_at=ledger.clock() + ttl_s * NS),
    )
    return tokens.access_token


async def count(ledger: Ledger, kind: str) -> int:
    return sum(1 for r in await ledger.recorder.read_org("acme", 0, 10_000) if r.type == kind)


async def test_concurrent_callers_of_a_due_token_share_one_refresh(make_ledger: Callable[[Clock], Ledger]) -> None:
    clock = Clock()
    ledger = make_ledger(clock)
    await ledger.start()
    admin = await ledger.create_org(ADMIN, "acme")
    with OidcServer() as server:
        first = await connect(server, ledger, admin, ttl_s=3600)
        assert (await ledger.app_token(ctx_for(admin), "acme", "crm")).access_token == first
        refreshes = server.request_count("/oauth2/token")
        clock.now += 3600 * NS  # due
        answers = await asyncio.gather(*(ledger.app_token(ctx_for(admin), "acme", "crm", reason=f"job {i}")
                                         for i in range(6)))
        assert server.request_count("/oauth2/token") == refreshes + 1, "one refresh for all of them"
        assert {a.access_token for a in answers} == {answers[0].access_token} != {first}
        assert sum(a.refreshed for a in answers) == 1 and {a.token_version for a in answers} == {2}
        assert server.access_token_active(answers[0].access_token)
    assert await count(ledger, "app.token_refreshed") == 1
    assert await count(ledger, "app.token_revealed") == 7


@needs_postgres
@pytest.mark.parametrize("make_ledger", ["postgresql"], indirect=True)
async def test_two_processes_both_finding_the_token_due_answer_the_winners_token(
    make_ledger: Callable[[Clock], Ledger],
) -> None:
    """Process B asked for the refresh before A's landed; A's refresh rotated the refresh token, so B's is
    refused by the provider. B must notice the token changed and answer A's, not mark the app broken."""
    clock = Clock()
    a, b = make_ledger(clock), make_ledger(clock)
    await a.start()
    await b.start()
    admin = await a.create_org(ADMIN, "acme")
    ctx: Context = ctx_for(admin)
    with OidcServer() as server:
        await connect(server, a, admin, ttl_s=3600)
        clock.now += 3600 * NS
        b_needs = await b.submit(RevealAppToken(org="acme", ctx=ctx, name="crm"))  # B learns the old refresh token
        assert isinstance(b_needs, RefreshNeeded)
        won = await a.app_token(ctx, "acme", "crm")  # A refreshes: the refresh token rotates
        assert won.refreshed and won.token_version == 2
        assert await b._refresh(ctx, "acme", b_needs, "") is None  # refused at the provider, but stale: retry
        answer = await b.app_token(ctx, "acme", "crm")
        assert (answer.access_token, answer.token_version, answer.refreshed) == (won.access_token, 2, False)
    assert await count(a, "app.refresh_failed") == 0


async def test_a_refresh_that_lands_after_a_racing_refusal_mends_the_app(
    make_ledger: Callable[[Clock], Ledger],
) -> None:
    """The other order of the race above: A has the provider's new tokens but has not committed them; B's
    refresh, refused because A spent the rotating refresh token, records the app broken first. A's commit
    must still land and mend the app, else the only valid refresh token is thrown away."""
    clock = Clock()
    ledger = make_ledger(clock)
    await ledger.start()
    admin = await ledger.create_org(ADMIN, "acme")
    ctx: Context = ctx_for(admin)
    with OidcServer() as server:
        await connect(server, ledger, admin, ttl_s=3600)
        clock.now += 3600 * NS
        needed = await ledger.submit(RevealAppToken(org="acme", ctx=ctx, name="crm"))
        assert isinstance(needed, RefreshNeeded)
        fresh = await oauth.refresh_tokens(  # A at the provider: the refresh token rotates
            needed.token_url, client_id=needed.client_id, client_secret=needed.client_secret,
            refresh_token=needed.refresh_token, scope="", now_ns=clock())
        with pytest.raises(AppBrokenError, match="invalid_grant"):  # B: refused, and recorded first
            await ledger._refresh(ctx, "acme", needed, "")
        won = await ledger.submit(RecordAppRefresh(org="acme", ctx=ctx, name="crm", token_version=needed.token_version,
                                                   tokens=AppTokens.from_provider(fresh)))
        assert won is not None and won.access_token == fresh.access_token and won.token_version == 2
        answer = await ledger.app_token(ctx, "acme", "crm")
        assert (answer.access_token, answer.refreshed) == (fresh.access_token, False)
        clock.now += 3600 * NS  # and A's new refresh token works
        assert (await ledger.app_token(ctx, "acme", "crm")).token_version == 3
    assert (await count(ledger, "app.refresh_failed"), await count(ledger, "app.token_refreshed")) == (1, 2)


async def test_a_revoked_grant_breaks_the_connection_once(make_ledger: Callable[[Clock], Ledger]) -> None:
    clock = Clock()
    ledger = make_ledger(clock)
    await ledger.start()
    admin = await ledger.create_org(ADMIN, "acme")
    with OidcServer() as server:
        await connect(server, ledger, admin, ttl_s=30)  # due at once (within the minute's margin)
        server.revoke_user_tokens("ada")
        with pytest.raises(AppBrokenError, match="invalid_grant"):
            await ledger.app_token(ctx_for(admin), "acme", "crm")
        calls = server.request_count("/oauth2/token")
        with pytest.raises(AppBrokenError):  # broken: no more calls to the provider
            await ledger.app_token(ctx_for(admin), "acme", "crm")
        assert server.request_count("/oauth2/token") == calls
    assert await count(ledger, "app.refresh_failed") == 1
