"""The rotation webhook call: POST the secret's identity, get its new value back.

Every failure is a `WebhookError` whose `reason` is recorded in the ledger as is, so it is built only
from our own words, statuses, limits and exception class names: never from the answer's body, its
headers or the value.
"""

from __future__ import annotations

import asyncio

import httpx
import msgspec

from ledger.generator import WebhookSpec
from ledger.model import MAX_VALUE_BYTES

MAX_ANSWER_BYTES = MAX_VALUE_BYTES + 1024  # the value plus room for JSON quoting and framing


class WebhookError(Exception):
    """A failed webhook call; `reason` (also the message) is safe to record and log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Answer(msgspec.Struct):
    value: str


async def call_webhook(
    client: httpx.AsyncClient,
    spec: WebhookSpec,
    *,
    org: str,
    name: str,
    request_id: str,
    timeout: float = 10.0,  # noqa: ASYNC109 - a policy value, applied below with asyncio.timeout
    max_bytes: int = MAX_ANSWER_BYTES,
) -> bytes:
    """The new value's UTF-8 bytes, from a validated `spec`; raises `WebhookError`.

    `timeout` bounds the whole exchange, so a server trickling its answer is cut off too. The
    `Idempotency-Key` is the request id: a retry of the same attempt lets the receiver answer the same.
    """
    body = msgspec.json.encode({"org": org, "name": name, "request_id": request_id})
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        # Raw bytes are counted against max_bytes: a compressed answer could inflate far past it.
        "Accept-Encoding": "identity",
        "X-Keyledger-Request-Id": request_id,
        "Idempotency-Key": request_id,
    }
    try:
        async with asyncio.timeout(timeout):
            # httpx's own per-operation timeouts follow too, so a client's shorter default cannot fire first.
            raw = await _exchange(client, spec.url, body, headers, httpx.Timeout(timeout), max_bytes)
    except (TimeoutError, httpx.TimeoutException):
        raise WebhookError(f"webhook timed out after {timeout:g} s") from None
    except httpx.ConnectError as exc:
        raise WebhookError(f"cannot connect to webhook: {type(exc).__name__}") from None
    except httpx.TransportError as exc:
        raise WebhookError(f"webhook call failed: {type(exc).__name__}") from None
    except httpx.InvalidURL:
        raise WebhookError("webhook URL is invalid") from None

    # `from None` everywhere: a chained decode error could quote the body in a logged traceback.
    try:
        answer = msgspec.json.decode(raw, type=_Answer)
    except msgspec.DecodeError:
        raise WebhookError("webhook answer is not JSON with a string 'value'") from None
    try:
        value = answer.value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escaped in the JSON
        raise WebhookError("webhook answer's 'value' is not valid UTF-8") from None
    if not value:
        raise WebhookError("webhook answer's 'value' is empty")
    if len(value) > MAX_VALUE_BYTES:
        raise WebhookError(f"webhook answer's 'value' is larger than {MAX_VALUE_BYTES} bytes")
    return value


async def _exchange(
    client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str], limit: httpx.Timeout, max_bytes: int
) -> bytes:
    too_large = WebhookError(f"webhook answer larger than {max_bytes} bytes")
    async with client.stream(
        "POST", url, content=body, headers=headers, timeout=limit, follow_redirects=False
    ) as response:
        status = response.status_code
        if 300 <= status < 400:
            raise WebhookError(f"webhook redirected (HTTP {status}); redirects are not followed")
        if status != 200:
            raise WebhookError(f"webhook answered HTTP {status}")
        if response.headers.get("content-encoding", "").strip().lower() not in ("", "identity"):
            raise WebhookError("webhook answer is compressed; only Content-Encoding identity is accepted")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > max_bytes:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)
