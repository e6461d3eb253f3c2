"""Huge and slow requests against the real server process: a 100 MiB body (announced, and chunked
without a length) is refused with 413 without the server holding it in memory, and trickled bodies
(many at once) neither grow the server's memory nor stop it from answering others."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.test_cli_e2e import ADMIN_TOKEN, HOST, Server, served

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with served(tmp_path_factory.mktemp("abuse")) as srv:
        yield srv


@pytest.fixture(scope="module")
def api_key(server: Server) -> str:
    created = httpx.post(f"{server.url}/v1/admin/orgs", json={"org": "acme"},
                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    assert created.status_code == 201, created.text
    return str(created.json()["api_key"])


def rss_mib(server: Server) -> float:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def connect(server: Server) -> socket.socket:
    port = int(server.url.rsplit(":", 1)[1])
    sock = socket.create_connection((HOST, port), timeout=30)
    return sock


def read_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0


def send_body(sock: socket.socket, total: int, chunked: bool) -> None:
    """Send up to `total` bytes of body; the server may answer and close before it is all sent."""
    piece = b"a" * MIB
    sent = 0
    try:
        while sent < total:
            if chunked:
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            else:
                sock.sendall(piece)
            sent += len(piece)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
    except OSError:
        pass  # the server answered 413 and closed the connection: what we want


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_100_mib_body_is_refused_without_being_held(server: Server, api_key: str, chunked: bool) -> None:
    before = rss_mib(server)
    sock = connect(server)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {100 * MIB}"
    sock.sendall(
        f"POST /v1/secrets HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {api_key}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n".encode()
    )
    sender = threading.Thread(target=send_body, args=(sock, 100 * MIB, chunked))
    sender.start()
    status = read_status(sock)
    sender.join(timeout=60)
    sock.close()
    assert status == 413
    assert rss_mib(server) - before < 30, (before, rss_mib(server))
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200


def test_trickled_bodies_hold_no_memory_and_block_no_one(server: Server, api_key: str) -> None:
    body = b'{"name": "TRICKLED", "value": "' + b"t" * 2000 + b'"}'
    before = rss_mib(server)
    socks = []
    for _ in range(100):
        sock = connect(server)
        sock.sendall(
            f"POST /v1/secrets HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {api_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:10]
        )
        socks.append(sock)
    # 100 clients trickle a byte each in turn while others are served as usual.
    started = time.monotonic()
    position = 10
    while time.monotonic() - started < 2.0:
        for sock in socks:
            sock.sendall(body[position:position + 1])
        position += 1
        answered = httpx.get(f"{server.url}/healthz", timeout=2)
        assert answered.status_code == 200
        reveal = httpx.get(f"{server.url}/v1/secrets", headers={"Authorization": f"Bearer {api_key}"}, timeout=2)
        assert reveal.status_code == 200
        time.sleep(0.05)
    assert rss_mib(server) - before < 30, (before, rss_mib(server))
    # Each trickled request completes normally once its body has arrived.
    statuses = []
    for sock in socks:
        sock.sendall(body[position:])
        statuses.append(read_status(sock))
        sock.close()
    assert set(statuses) <= {200, 201} and statuses.count(201) == 1, statuses
