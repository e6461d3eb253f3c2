"""Request ids and response headers for every request, as a plain ASGI wrapper (cheapest)."""

from __future__ import annotations

import re
import uuid
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


def request_id_of(scope: Scope) -> str:
    """The request's id: the client's sane `X-Request-ID`, else a new one (made once per request)."""
    state: dict[str, Any] = scope.setdefault("state", {})
    request_id = state.get("request_id")
    if not request_id:
        request_id = ""
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _VALID_REQUEST_ID.match(candidate):
                    request_id = candidate
                break
        state["request_id"] = request_id = request_id or uuid.uuid4().hex
    return str(request_id)


async def before_send(message: Message, scope: Scope) -> None:
    """Every answer, routed or not (404, 405 from the router), carries its request id."""
    if message["type"] == "http.response.start":
        headers = list(message.get("headers", []))
        if not any(k.lower() == b"x-request-id" for k, _ in headers):
            headers.append((b"x-request-id", request_id_of(scope).encode()))
            message["headers"] = headers


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    """Take `X-Request-ID` when it is sane, else make one; echo it; mark API answers `no-store`."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        is_api = scope["path"].startswith("/v1/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                if is_api and not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await app(scope, receive, send_with_headers)

    return middleware
