"""call_webhook against a real HTTP server on loopback: answers, every failure's reason, and no leaks."""

from __future__ import annotations

import traceback
from collections.abc import AsyncIterator

import httpx
import pytest

from api.webhook import MAX_ANSWER_BYTES, WebhookError, call_webhook
from ledger.generator import WebhookSpec
from ledger.model import MAX_VALUE_BYTES
from tests.webhook_server import WebhookServer, refused_port, webhook_server

__all__ = ["webhook_server"]  # the imported fixture: listing it tells ruff (F401, F811) it is meant

CANARY = "CANARY-7f3a9c-do-not-leak"
SHORT = 0.5  # seconds: the deadline for the slow-server tests


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as http:  # no proxy from the environment for loopback
        yield http


async def call(client: httpx.AsyncClient, spec: WebhookSpec, deadline: float = 10.0) -> bytes:
    return await call_webhook(client, spec, org="acme", name="db-password", request_id="req-1", timeout=deadline)


async def reason(client: httpx.AsyncClient, server: WebhookServer, deadline: float = 10.0) -> str:
    with pytest.raises(WebhookError) as caught:
        await call(client, server.spec, deadline)
    return caught.value.reason


async def test_success_sends_the_specified_request(client: httpx.AsyncClient, webhook_server: WebhookServer) -> None:
    webhook_server.answer("s3cr3t-ünïcode")
    value = await call_webhook(client, webhook_server.spec, org="acme", name="db-password", request_id="req-42")
    assert value == "s3cr3t-ünïcode".encode()
    [sent] = webhook_server.calls
    assert sent.method == "POST"
    assert sent.path == "/rotate"
    assert sent.json == {"org": "acme", "name": "db-password", "request_id": "req-42"}
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["x-keyledger-request-id"] == "req-42"
    assert sent.headers["idempotency-key"] == "req-42"


async def test_a_value_of_the_maximum_size_is_accepted(
    client: httpx.AsyncClient, webhook_server: WebhookServer
) -> None:
    webhook_server.answer("v" * MAX_VALUE_BYTES)
    assert len(await call(client, webhook_server.spec)) == MAX_VALUE_BYTES


async def test_scripted_answers_follow_in_order(client: httpx.AsyncClient, webhook_server: WebhookServer) -> None:
    webhook_server.fail(503).answer("second")
    assert await reason(client, webhook_server) == "webhook answered HTTP 503"
    assert await call(client, webhook_server.spec) == b"second"
    assert await call(client, webhook_server.spec) == b"second"  # the last answer repeats
    assert len(webhook_server.calls) == 3


@pytest.mark.parametrize("status", [201, 204, 400, 404, 500])
async def test_any_status_but_200_fails(status: int, client: httpx.AsyncClient, webhook_server: WebhookServer) -> None:
    webhook_server.fail(status)
    assert await reason(client, webhook_server) == f"webhook answered HTTP {status}"


async def test_stall_past_the_deadline(client: httpx.AsyncClient, webhook_server: WebhookServer) -> None:
    webhook_server.stall(30)
    assert await reason(client, webhook_server, deadline=SHORT) == "webhook timed out after 0.5 s"


async def test_trickle_past_the_deadline(client: httpx.AsyncClient, webhook_server: WebhookServer) -> None:
    # Each byte arrives well within any per-read timeout; only the overall deadline stops it (~4 s of bytes).
    webhook_server.trickle("x" * 20, interval=0.1)
    assert await reason(client, webhook_server, deadline=SHORT) == "webhook timed out after 0.5 s"


async def test_a_slow_but_timely_trickle_succeeds(client: httpx.AsyncClient, webhook_server: WebhookServer) -> None:
    webhook_server.trickle("ok", interval=0.001)
    assert await call(client, webhook_server.spec) == b"ok"


@pytest.mark.parametrize("declare_length", [False, True])
async def test_oversize_answer(declare_length: bool, client: httpx.AsyncClient, webhook_server: WebhookServer) -> None:
    webhook_server.oversize(MAX_ANSWER_BYTES + 1, declare_length=declare_length)
    assert await reason(client, webhook_server) == "webhook answer larger than 66560 bytes"


async def test_oversize_stops_reading_early(client: httpx.AsyncClient, webhook_server: WebhookServer) -> None:
    webhook_server.oversize(50_000_000)  # 50 MB without Content-Length: cut off after max_bytes, not buffered
    with pytest.raises(WebhookError, match="larger than 1000 bytes"):
        await call_webhook(client, webhook_server.spec, org="o", name="n", request_id="r", max_bytes=1000)


async def test_answer_of_exactly_max_bytes_is_read(client: httpx.AsyncClient, webhook_server: WebhookServer) -> None:
    webhook_server.oversize(1000)
    value = await call_webhook(client, webhook_server.spec, org="o", name="n", request_id="r", max_bytes=1000)
    assert set(value) == {ord("a")}


async def test_not_json(client: httpx.AsyncClient, webhook_server: WebhookServer) -> None:
    webhook_server.not_json()
    assert await reason(client, webhook_server) == "webhook answer is not JSON with a string 'value'"


@pytest.mark.parametrize(
    "body", [b"{}", b'{"val": "x"}', b'{"value": null}', b'{"value": 12}', b'["value"]', b'"value"', b""]
)
async def test_no_string_value(body: bytes, client: httpx.AsyncClient, webhook_server: WebhookServer) -> None:
    webhook_server.raw(body)
    assert await reason(client, webhook_server) == "webhook answer is not JSON with a string 'value'"


async def test_empty_value(client: httpx.AsyncClient, webhook_server: WebhookServer) -> None:
    webhook_server.answer("")
    assert await reason(client, webhook_server) == "webhook answer's 'value' is empty"


async def test_value_too_large(client: httpx.AsyncClient, webhook_server: WebhookServer) -> None:
    webhook_server.answer("é" * (MAX_VALUE_BYTES // 2 + 1))  # fits the answer limit, not the value limit
    assert await reason(client, webhook_server) == "webhook answer's 'value' is larger than 65536 bytes"


async def test_compressed_answer_is_refused(client: httpx.AsyncClient, webhook_server: WebhookServer) -> None:
    webhook_server.raw(b"\x1f\x8b not really gzip", headers={"Content-Encoding": "gzip"})
    assert "Content-Encoding" in await reason(client, webhook_server)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_not_followed(status: int, client: httpx.AsyncClient, webhook_server: WebhookServer) -> None:
    webhook_server.redirect("/moved", status=status)
    assert await reason(client, webhook_server) == f"webhook redirected (HTTP {status}); redirects are not followed"
    assert [c.path for c in webhook_server.calls] == ["/rotate"]


async def test_redirect_not_followed_even_by_a_following_client(webhook_server: WebhookServer) -> None:
    webhook_server.redirect()
    async with httpx.AsyncClient(trust_env=False, follow_redirects=True) as following:
        assert "redirects are not followed" in await reason(following, webhook_server)
    assert len(webhook_server.calls) == 1


async def test_connection_refused(client: httpx.AsyncClient) -> None:
    with refused_port() as port, pytest.raises(WebhookError) as caught:
        await call(client, WebhookSpec(url=f"http://127.0.0.1:{port}/rotate"))
    assert caught.value.reason == "cannot connect to webhook: ConnectError"


async def test_a_shorter_client_timeout_does_not_cut_the_deadline(webhook_server: WebhookServer) -> None:
    webhook_server.stall(0.3, value="late-but-in-time")
    async with httpx.AsyncClient(trust_env=False, timeout=0.05) as impatient:
        assert await call(impatient, webhook_server.spec, deadline=10) == b"late-but-in-time"


async def test_retry_carries_the_same_idempotency_key(
    client: httpx.AsyncClient, webhook_server: WebhookServer
) -> None:
    webhook_server.fail(502).answer("v")
    for _ in range(2):
        try:
            await call(client, webhook_server.spec)
        except WebhookError:
            pass
    assert [c.headers["idempotency-key"] for c in webhook_server.calls] == ["req-1", "req-1"]


def _script_canary(server: WebhookServer, shape: str) -> None:
    canary = CANARY.encode()
    {
        "error body": lambda: server.fail(500, body=canary),
        "redirect": lambda: server.raw(canary, status=302, headers={"Location": f"/{CANARY}"}),
        "not json": lambda: server.raw(b"<" + canary, content_type="text/plain"),
        "wrong type": lambda: server.raw(b'{"value": 1, "detail": "' + canary + b'"}'),
        "oversize": lambda: server.raw(b'{"value": "' + canary * 5000 + b'"}'),
        "value too large": lambda: server.answer(CANARY * (MAX_VALUE_BYTES // len(CANARY) + 1)),
        "lone surrogate": lambda: server.raw(b'{"value": "\\ud800' + canary + b'"}'),
        "bad encoding": lambda: server.raw(canary, headers={"Content-Encoding": CANARY}),
    }[shape]()


@pytest.mark.parametrize(
    "shape",
    ["error body", "redirect", "not json", "wrong type", "oversize", "value too large", "lone surrogate",
     "bad encoding"],
)
async def test_no_part_of_the_answer_leaks(
    shape: str, client: httpx.AsyncClient, webhook_server: WebhookServer
) -> None:
    _script_canary(webhook_server, shape)
    with pytest.raises(WebhookError) as caught:
        await call(client, webhook_server.spec)
    error = caught.value
    shown = [error.reason, str(error), repr(error), "".join(traceback.format_exception(error))]
    for text in shown:
        assert "CANARY" not in text
        assert "\ud800" not in text


async def test_the_server_stops_while_a_handler_stalls(client: httpx.AsyncClient) -> None:
    with WebhookServer() as server:
        server.stall(60)
        with pytest.raises(WebhookError):
            await call(client, server.spec, deadline=0.2)
    # Reaching this line is the test: stop() woke the stalled handler instead of waiting 60 s.
