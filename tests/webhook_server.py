"""A real rotation webhook on a free loopback port, scripted per call by the test.

Each scripting method queues one answer; each call takes the next, and the last one queued keeps
answering once the queue is down to it (so `server.fail(500).answer("v")` fails once, then answers).
Unscripted calls get HTTP 500. Every call is recorded (headers lower-cased, raw and parsed body).

    with WebhookServer() as server:
        server.answer("new-value")
        ... call server.url ...
        assert server.calls[0].json["name"] == "db-password"

Answers are HTTP/1.0 (one call per connection). `stop()` wakes stalled and trickling handlers, so it never hangs.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any

import pytest

from ledger.generator import WebhookSpec


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


@dataclass(frozen=True)
class _Step:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    declare_length: bool = True  # False: no Content-Length, the body ends when the connection closes
    stall: float = 0.0  # seconds before answering
    trickle: float = 0.0  # seconds between single bytes of the body


def _json_answer(value: str) -> bytes:
    return json.dumps({"value": value}, ensure_ascii=False).encode()  # UTF-8, as most servers answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: WebhookServer

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (socket.getfqdn), which can be slow: skip it.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]  # type: ignore[assignment]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: clients hanging up on a stalled or oversized answer is what the tests provoke."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # an idle connection does not hold a thread forever

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        owner = self.server.owner
        try:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            step = owner._record(Call(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, raw))
            if step.stall and owner._stopping.wait(step.stall):
                return
            self.send_response(step.status)
            for name, value in step.headers.items():
                self.send_header(name, value)
            if step.declare_length:
                self.send_header("Content-Length", str(len(step.body)))
            self.end_headers()
            if not step.trickle:
                self.wfile.write(step.body)
                return
            for i in range(len(step.body)):
                self.wfile.write(step.body[i : i + 1])
                self.wfile.flush()
                if owner._stopping.wait(step.trickle):
                    return
        except OSError:
            pass  # the client hung up: expected after a timeout or a size limit

    do_GET = do_PUT = do_POST


class WebhookServer:
    def __init__(self, path: str = "/rotate") -> None:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._path = path
        self._lock = threading.Lock()
        self._steps: list[_Step] = []
        self._calls: list[Call] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self._path}"

    @property
    def spec(self) -> WebhookSpec:
        return WebhookSpec(url=self.url)

    def start(self) -> WebhookServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="webhook-server", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes stalled and trickling handlers first
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> WebhookServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- recording --------------------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def _record(self, call: Call) -> _Step:
        with self._lock:
            self._calls.append(call)
            if not self._steps:
                return _Step(status=500, body=b"unscripted call")
            return self._steps.pop(0) if len(self._steps) > 1 else self._steps[0]

    # -- scripting: each queues the answer to one call (the last one queued repeats) --------------

    def _queue(self, step: _Step) -> WebhookServer:
        with self._lock:
            self._steps.append(step)
        return self

    def raw(
        self, body: bytes, *, status: int = 200, content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> WebhookServer:
        """Any answer: `body` as is, with a status, content type and extra headers."""
        return self._queue(_Step(status=status, body=body, headers={"Content-Type": content_type, **(headers or {})}))

    def answer(self, value: str) -> WebhookServer:
        return self.raw(_json_answer(value))

    def fail(self, status: int = 500, body: bytes = b"") -> WebhookServer:
        return self.raw(body, status=status, content_type="text/plain")

    def stall(self, seconds: float, value: str = "too-late") -> WebhookServer:
        """Say nothing for `seconds`, then answer `value` (if the server is still running)."""
        return self._queue(_Step(body=_json_answer(value), headers={"Content-Type": "application/json"}, stall=seconds))

    def oversize(self, n_bytes: int, declare_length: bool = False) -> WebhookServer:
        """A valid JSON answer of exactly `n_bytes`; without Content-Length unless `declare_length`."""
        filler = "a" * max(0, n_bytes - len(_json_answer("")))
        body = _json_answer(filler)
        assert len(body) == n_bytes, "n_bytes too small for a JSON answer"
        return self._queue(
            _Step(body=body, headers={"Content-Type": "application/json"}, declare_length=declare_length)
        )

    def trickle(self, value: str = "trickled", interval: float = 0.1) -> WebhookServer:
        """Answer 200 at once, then the body one byte every `interval` seconds."""
        return self._queue(
            _Step(body=_json_answer(value), headers={"Content-Type": "application/json"}, trickle=interval)
        )

    def not_json(self) -> WebhookServer:
        return self.raw(b"<html>this is not JSON</html>", content_type="text/html")

    def redirect(self, location: str = "/moved", status: int = 302) -> WebhookServer:
        return self.raw(b"", status=status, content_type="text/plain", headers={"Location": location})


@pytest.fixture
def webhook_server() -> Iterator[WebhookServer]:
    with WebhookServer() as server:
        yield server


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port held bound but not listening: connecting to it is refused, and nothing can take it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
