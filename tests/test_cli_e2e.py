"""The `keyledger` CLI end to end: a real server process on a free loopback port, driven by the CLI as a
subprocess, with the database checked directly (read-only) for the reveals the CLI caused.

One server serves the module; each test makes its own org so that counts and listings are its own.
Servers started here are always stopped (SIGTERM, then SIGKILL) in the fixture's teardown.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

BIN = Path(sys.executable).parent
KEYLEDGER = str(BIN / "keyledger")
HOST = "127.0.0.1"
ADMIN_TOKEN = "adm_e2e_" + "t" * 32
START_TIMEOUT = 20.0
CLI_TIMEOUT = 30.0
API_KEY = re.compile(r"rt_live_[A-Za-z0-9]{32,}")
_orgs = itertools.count(1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any KEYLEDGER_* variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYLEDGER_")}
    env.update(extra)
    return env


def new_master_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    db: Path
    stdout: Path
    stderr: Path
    env: dict[str, str]

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_server(folder: Path, args: list[str], env: dict[str, str]) -> Server:
    """Start `keyledger serve ARGS` (which must include --port) and wait, bounded, until /healthz answers."""
    port = args[args.index("--port") + 1]
    folder.mkdir(parents=True, exist_ok=True)
    stdout, stderr = folder / f"serve-{port}.out", folder / f"serve-{port}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen([KEYLEDGER, "serve", *args], cwd=folder, env=env, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL)
    db = Path(args[args.index("--db") + 1])
    server = Server(proc=proc, url=f"http://{HOST}:{port}", db=db, stdout=stdout, stderr=stderr, env=env)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {server.output()}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=1.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise AssertionError(f"server did not answer /healthz within {START_TIMEOUT} s: {server.output()}")
        time.sleep(0.1)


@contextmanager
def served(folder: Path) -> Iterator[Server]:
    """A server on a fresh SQLite file in `folder`, with a new master key and the test admin token."""
    env = clean_env(KEYLEDGER_MASTER_KEY=new_master_key(), KEYLEDGER_ADMIN_TOKEN=ADMIN_TOKEN)
    srv = start_server(folder, ["--host", HOST, "--port", str(free_port()), "--db", str(folder / "k.db")], env)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with served(tmp_path_factory.mktemp("e2e")) as srv:
        yield srv


def cli(url: str, *args: str, key: str | None = None, stdin: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the client CLI against `url` as `key` (via KEYLEDGER_URL / KEYLEDGER_API_KEY)."""
    full = clean_env(KEYLEDGER_URL=url, **(env or {}))
    if key is not None:
        full["KEYLEDGER_API_KEY"] = key
    if stdin is None:
        return subprocess.run([KEYLEDGER, *args], env=full, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=CLI_TIMEOUT)
    return subprocess.run([KEYLEDGER, *args], env=full, input=stdin, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """A client failure: non-zero exit, exactly one line on stderr, starting with `error:`, nothing on stdout."""
    assert result.returncode != 0, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), result.stderr
    assert result.stdout == ""
    return lines[0]


def events_by_name(db: Path, org: str, event_type: str) -> Counter[str]:
    """Events of one type per secret name in one org, read-only (the server keeps running)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT stream FROM events WHERE org = ? AND type = ?", (org, event_type)).fetchall()
    finally:
        conn.close()
    prefix = f"secret:{org}/"
    assert all(stream.startswith(prefix) for (stream,) in rows)
    return Counter(stream[len(prefix):] for (stream,) in rows)


@dataclass
class Org:
    name: str
    key_id: str
    api_key: str


def http(server: Server, method: str, path: str, key: str, **kwargs: object) -> httpx.Response:
    """Setup and cross-checks straight over HTTP: the CLI is what the tests exercise, not their scaffolding."""
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.request(method, f"{server.url}{path}", headers=headers, timeout=10.0, **kwargs)  # type: ignore[arg-type]


def put_secret(server: Server, key: str, name: str, value: str, scope: str = "all") -> None:
    response = http(server, "POST", "/v1/secrets", key, json={"name": name, "value": value, "scope": scope})
    assert response.status_code in (200, 201), response.text


def reveal_over_http(server: Server, key: str, name: str) -> str:
    response = http(server, "POST", f"/v1/secrets/{quote(name, safe='')}/reveal", key)
    assert response.status_code == 200, response.text
    value: str = response.json()["value"]
    return value


@pytest.fixture
def org(server: Server) -> Org:
    name = f"e2e-{next(_orgs)}"
    response = http(server, "POST", "/v1/admin/orgs", ADMIN_TOKEN, json={"org": name})
    assert response.status_code == 201, response.text
    created = response.json()
    return Org(name=name, key_id=created["key_id"], api_key=created["api_key"])


def set_secret(server: Server, key: str, name: str, value: str, *options: str) -> dict[str, object]:
    """`secrets set NAME` with the value on stdin; nothing of the value in the output."""
    result = ok(cli(server.url, "secrets", "set", name, *options, "-o", "json", key=key, stdin=value))
    assert value.strip() not in result.stdout + result.stderr
    meta: dict[str, object] = json.loads(result.stdout)
    return meta


# -- admin and keys --------------------------------------------------------------------------------


def test_admin_create_org_prints_the_first_key_once(server: Server) -> None:
    name = f"e2e-{next(_orgs)}"
    admin_env = {"KEYLEDGER_ADMIN_TOKEN": ADMIN_TOKEN}
    created = json.loads(ok(cli(server.url, "admin", "create-org", name, "-o", "json", env=admin_env)).stdout)
    assert created["org"] == name
    assert API_KEY.fullmatch(created["api_key"])
    listed = http(server, "GET", "/v1/keys", created["api_key"]).json()["keys"]
    assert [(row["key_id"], row["role"], row["scope"]) for row in listed] == [(created["key_id"], "admin", "all")]
    assert "409" in one_error_line(cli(server.url, "admin", "create-org", name, env=admin_env))
    assert "401" in one_error_line(cli(server.url, "admin", "create-org", "e2e-x",
                                       env={"KEYLEDGER_ADMIN_TOKEN": "adm_wrong"}))


def test_keys_create_and_list_without_key_material(server: Server, org: Org) -> None:
    created = json.loads(ok(cli(server.url, "keys", "create", "--label", "bot", "--scope", "tools", "-o", "json",
                                key=org.api_key)).stdout)
    assert (created["label"], created["scope"], created["role"]) == ("bot", "tools", "member")
    assert API_KEY.fullmatch(created["api_key"])
    listed = ok(cli(server.url, "keys", "list", "-o", "json", key=org.api_key)).stdout
    assert "rt_live_" not in listed
    rows = {row["key_id"]: row for row in json.loads(listed)}
    assert set(rows) == {org.key_id, created["key_id"]}
    assert all("api_key" not in row for row in rows.values())
    assert (rows[created["key_id"]]["label"], rows[created["key_id"]]["scope"]) == ("bot", "tools")
    assert rows[org.key_id]["role"] == "admin"
    # A member key manages no keys: one clear line, non-zero.
    assert "403" in one_error_line(cli(server.url, "keys", "create", "--label", "x", key=created["api_key"]))


def test_key_created_used_and_revoked(server: Server, org: Org) -> None:
    created = json.loads(ok(cli(server.url, "keys", "create", "--label", "temp", "-o", "json",
                                key=org.api_key)).stdout)
    temp = created["api_key"]
    set_secret(server, temp, "TEMP_TOKEN", "temp-value")
    revoked = ok(cli(server.url, "keys", "revoke", created["key_id"], key=org.api_key))
    assert created["key_id"] in revoked.stderr
    for args in (("secrets", "list"), ("secrets", "reveal", "TEMP_TOKEN")):
        line = one_error_line(cli(server.url, *args, key=temp))
        assert "401" in line
        assert temp not in line
    listed = http(server, "GET", "/v1/keys", org.api_key).json()["keys"]
    assert created["key_id"] not in {row["key_id"] for row in listed}
    # What it wrote stays, for the keys that remain.
    assert reveal_over_http(server, org.api_key, "TEMP_TOKEN") == "temp-value"


# -- secrets ---------------------------------------------------------------------------------------


def test_secrets_set_from_stdin_and_value_file(server: Server, org: Org, tmp_path: Path) -> None:
    meta = set_secret(server, org.api_key, "FROM_STDIN", "stdin value\n", "--scope", "tools", "--category", "tool",
                      "--description", "piped")
    assert (meta["name"], meta["version"], meta["scope"], meta["category"]) == ("FROM_STDIN", 1, "tools", "tool")
    assert reveal_over_http(server, org.api_key, "FROM_STDIN") == "stdin value"
    pem = "-----BEGIN KEY-----\nAAAA\nBBBB\n-----END KEY-----"
    value_file = tmp_path / "value.pem"
    value_file.write_text(pem)
    result = ok(cli(server.url, "secrets", "set", "FROM_FILE", "--value-file", str(value_file), "-o", "json",
                    key=org.api_key))
    assert "AAAA" not in result.stdout + result.stderr
    assert reveal_over_http(server, org.api_key, "FROM_FILE") == pem
    # An update from stdin keeps the fields it does not name, and the version grows.
    meta = set_secret(server, org.api_key, "FROM_STDIN", "second\n")
    assert (meta["version"], meta["scope"], meta["category"], meta["description"]) == (2, "tools", "tool", "piped")
    assert reveal_over_http(server, org.api_key, "FROM_STDIN") == "second"


def test_secrets_set_refuses_a_value_argument(server: Server, org: Org) -> None:
    result = cli(server.url, "secrets", "set", "ARGV_SECRET", "value-in-argv", key=org.api_key, stdin="")
    assert result.returncode != 0
    assert http(server, "GET", "/v1/secrets/ARGV_SECRET", org.api_key).status_code == 404


def test_secrets_list_get_reveal_env_and_delete(server: Server, org: Org) -> None:
    value = "it's a $ecret \"quoted\" value"
    put_secret(server, org.api_key, "DB_PASSWORD", value)
    put_secret(server, org.api_key, "API_TOKEN", "tok-123")
    listed = ok(cli(server.url, "secrets", "list", "-o", "json", key=org.api_key)).stdout
    assert value not in listed and "tok-123" not in listed
    assert [row["name"] for row in json.loads(listed)] == ["API_TOKEN", "DB_PASSWORD"]
    got = ok(cli(server.url, "secrets", "get", "DB_PASSWORD", "-o", "json", key=org.api_key)).stdout
    assert value not in got
    meta = json.loads(got)
    assert (meta["name"], meta["version"], meta["created_by"]) == ("DB_PASSWORD", 1, org.key_id)
    meta_env = ok(cli(server.url, "secrets", "get", "API_TOKEN", "-o", "env", key=org.api_key)).stdout.splitlines()
    assert "NAME=API_TOKEN" in meta_env and "VERSION=1" in meta_env
    before = events_by_name(server.db, org.name, "secret.revealed")
    assert ok(cli(server.url, "secrets", "reveal", "DB_PASSWORD", key=org.api_key)).stdout == value
    as_json = json.loads(ok(cli(server.url, "secrets", "reveal", "DB_PASSWORD", "-o", "json", key=org.api_key)).stdout)
    assert as_json == {"name": "DB_PASSWORD", "value": value, "version": 1}
    as_env = ok(cli(server.url, "secrets", "reveal", "DB_PASSWORD", "-o", "env", key=org.api_key)).stdout
    assert as_env.startswith("DB_PASSWORD=")
    # The env line is valid shell: evaluating it gives back the value exactly.
    evaluated = subprocess.run(["sh", "-c", 'eval "$(cat)"; printf %s "$DB_PASSWORD"'], input=as_env,
                               capture_output=True, text=True, timeout=CLI_TIMEOUT, check=True)
    assert evaluated.stdout == value
    assert events_by_name(server.db, org.name, "secret.revealed") - before == Counter({"DB_PASSWORD": 3})
    deleted = ok(cli(server.url, "secrets", "delete", "DB_PASSWORD", key=org.api_key))
    assert "DB_PASSWORD" in deleted.stderr
    assert "404" in one_error_line(cli(server.url, "secrets", "get", "DB_PASSWORD", key=org.api_key))
    remaining = http(server, "GET", "/v1/secrets", org.api_key).json()["secrets"]
    assert [row["name"] for row in remaining] == ["API_TOKEN"]


def test_names_with_spaces_unicode_and_percent_round_trip(server: Server, org: Org) -> None:
    """Against a real server: Litestar's TestClient decodes paths twice, so only this covers `%XX` in names."""
    for name in ("tool config", "ключ", "a%41b", "x%2Fy"):
        put_secret(server, org.api_key, name, f"value of {name}")
        revealed = json.loads(ok(cli(server.url, "secrets", "reveal", name, "-o", "json", key=org.api_key)).stdout)
        assert revealed == {"name": name, "value": f"value of {name}", "version": 1}
    ok(cli(server.url, "secrets", "delete", "a%41b", key=org.api_key))
    remaining = http(server, "GET", "/v1/secrets", org.api_key).json()["secrets"]
    assert sorted(row["name"] for row in remaining) == sorted(["tool config", "ключ", "x%2Fy"])


def test_bug_cli_reaches_dot_names(server: Server, org: Org) -> None:
    for name in (".", ".."):
        put_secret(server, org.api_key, name, f"dot value {len(name)}")
        revealed = cli(server.url, "secrets", "reveal", name, "-o", "json", key=org.api_key)
        assert json.loads(ok(revealed).stdout) == {"name": name, "value": f"dot value {len(name)}", "version": 1}


# -- run -------------------------------------------------------------------------------------------

PRINT_RUN_VARS = "import json, os; print(json.dumps({k: v for k, v in os.environ.items() if k.startswith('RUN_')}))"


def test_run_puts_revealed_values_in_the_child_environment(server: Server, org: Org) -> None:
    put_secret(server, org.api_key, "RUN_A", "alpha value")
    put_secret(server, org.api_key, "RUN_B", "beta=b 'q'", scope="tools")
    put_secret(server, org.api_key, "RUN_S", "sandboxed", scope="agents")
    put_secret(server, org.api_key, "not an env name", "skipped")
    before = events_by_name(server.db, org.name, "secret.revealed")
    result = ok(cli(server.url, "run", "--", "env", key=org.api_key, env={"RUN_PASSTHROUGH": "kept"}))
    env_lines = set(result.stdout.splitlines())
    assert {"RUN_A=alpha value", "RUN_B=beta=b 'q'", "RUN_S=sandboxed", "RUN_PASSTHROUGH=kept"} <= env_lines
    assert "skipped" not in result.stdout
    assert "not an env name" in result.stderr
    after = events_by_name(server.db, org.name, "secret.revealed")
    assert after - before == Counter({"RUN_A": 1, "RUN_B": 1, "RUN_S": 1})

    only = ok(cli(server.url, "run", "--only", "RUN_B", "--", "sh", "-c", 'printf %s "$RUN_B|${RUN_A-unset}"',
                  key=org.api_key))
    assert only.stdout == "beta=b 'q'|unset"
    assert events_by_name(server.db, org.name, "secret.revealed") - after == Counter({"RUN_B": 1})


def test_run_with_a_scoped_key_skips_what_it_may_not_reveal(server: Server, org: Org) -> None:
    put_secret(server, org.api_key, "RUN_A", "alpha")
    put_secret(server, org.api_key, "RUN_T", "tools only", scope="tools")
    put_secret(server, org.api_key, "RUN_S", "agents only", scope="agents")
    made = http(server, "POST", "/v1/keys", org.api_key, json={"label": "tools-bot", "scope": "tools"})
    tools = made.json()["api_key"]
    revealed_before = events_by_name(server.db, org.name, "secret.revealed")
    denied_before = events_by_name(server.db, org.name, "secret.reveal_denied")
    result = ok(cli(server.url, "run", "--", sys.executable, "-c", PRINT_RUN_VARS, key=tools))
    assert json.loads(result.stdout) == {"RUN_A": "alpha", "RUN_T": "tools only"}
    assert "RUN_S" in result.stderr
    assert events_by_name(server.db, org.name, "secret.revealed") - revealed_before == Counter({"RUN_A": 1, "RUN_T": 1})
    assert events_by_name(server.db, org.name, "secret.reveal_denied") - denied_before == Counter({"RUN_S": 1})
    # Asked for by name, a secret it may not reveal is an error, and the command does not run.
    refused = cli(server.url, "run", "--only", "RUN_S", "--", "sh", "-c", "echo ran", key=tools)
    assert "RUN_S" in one_error_line(refused)
    missing = cli(server.url, "run", "--only", "RUN_MISSING", "--", "sh", "-c", "echo ran", key=tools)
    assert "404" in one_error_line(missing)


def test_run_passes_the_exit_code_through(server: Server, org: Org) -> None:
    put_secret(server, org.api_key, "RUN_A", "alpha")
    result = cli(server.url, "run", "--", "sh", "-c", 'test "$RUN_A" = alpha && exit 7', key=org.api_key)
    assert result.returncode == 7, result.stderr
    assert cli(server.url, "run", "--", "sh", "-c", 'test "$RUN_A" = alpha', key=org.api_key).returncode == 0


# -- ssh keys --------------------------------------------------------------------------------------


def ssh_keygen(folder: Path, name: str, *args: str, comment: str = "dev@laptop") -> tuple[Path, str]:
    """A key pair made by the real ssh-keygen: the .pub file, and what `ssh-keygen -l -f` prints of it."""
    path = folder / name
    subprocess.run(["/usr/bin/ssh-keygen", "-q", *args, "-N", "", "-C", comment, "-f", str(path)], check=True,
                   capture_output=True, timeout=CLI_TIMEOUT)
    printed = subprocess.run(["/usr/bin/ssh-keygen", "-l", "-f", f"{path}.pub"], check=True, capture_output=True,
                             text=True, timeout=CLI_TIMEOUT).stdout
    return path.with_suffix(".pub"), printed


def event_count(db: Path, org: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM events WHERE org = ?", (org,)).fetchone()[0])
    finally:
        conn.close()


def test_ssh_keys_add_list_and_remove(server: Server, org: Org, tmp_path: Path) -> None:
    ed25519_pub, ed25519_printed = ssh_keygen(tmp_path, "id_ed25519", "-t", "ed25519")
    ecdsa_pub, ecdsa_printed = ssh_keygen(tmp_path, "id_ecdsa", "-t", "ecdsa", "-b", "384", comment="")
    # From a file: printed as ssh-keygen -l prints it; the id on stderr.
    added = ok(cli(server.url, "ssh-keys", "add", str(ed25519_pub), key=org.api_key))
    assert added.stdout == ed25519_printed
    ssh_key_id = re.fullmatch(r"added (ssh_[0-9a-f]{16})\n", added.stderr)
    assert ssh_key_id, added.stderr
    # From stdin ('-', or no FILE at all), with a label; as JSON.
    piped = ok(cli(server.url, "ssh-keys", "add", "-", "--label", "ci box", key=org.api_key,
                   stdin=ecdsa_pub.read_text()))
    assert piped.stdout == ecdsa_printed  # "384 SHA256:... no comment (ECDSA)"
    listed = json.loads(ok(cli(server.url, "ssh-keys", "list", "-o", "json", key=org.api_key)).stdout)
    assert [(row["ssh_key_id"], row["label"], row["bits"], row["algorithm"], row["comment"]) for row in listed] == [
        (ssh_key_id[1], "dev@laptop", 256, "ssh-ed25519", "dev@laptop"),
        (listed[1]["ssh_key_id"], "ci box", 384, "ecdsa-sha2-nistp384", "")]
    assert all(row["public_key"] for row in listed)
    # The same key again: a conflict (exit 4), one line.
    again = cli(server.url, "ssh-keys", "add", key=org.api_key, stdin=ed25519_pub.read_text())
    assert again.returncode == 4 and "409" in one_error_line(again)
    # A private key is refused before anything is sent: no event, and no part of it in the output.
    before = event_count(server.db, org.name)
    private = ed25519_pub.with_suffix("")
    for args, stdin in (((str(private),), None), (("-",), private.read_text())):
        refused = cli(server.url, "ssh-keys", "add", *args, key=org.api_key, stdin=stdin)
        assert refused.returncode == 2 and "private key" in one_error_line(refused)
        assert private.read_text().splitlines()[1] not in refused.stderr
    # Refused by the server: a DSA key, in one line that quotes nothing of it (exit 1: a 422).
    dsa_pub, _ = ssh_keygen(tmp_path, "id_dsa", "-t", "dsa")
    dsa = cli(server.url, "ssh-keys", "add", str(dsa_pub), key=org.api_key)
    line = one_error_line(dsa)
    assert "DSA keys are refused" in line and "422" in line and dsa_pub.read_text().split()[1][:20] not in line
    assert event_count(server.db, org.name) == before
    # A member key removes neither the admin's key (403, exit 5) nor an unknown id (404, exit 3).
    made = http(server, "POST", "/v1/keys", org.api_key, json={"label": "member"}).json()
    forbidden = cli(server.url, "ssh-keys", "remove", ssh_key_id[1], key=made["api_key"])
    assert forbidden.returncode == 5 and "403" in one_error_line(forbidden)
    removed = ok(cli(server.url, "ssh-keys", "remove", ssh_key_id[1], key=org.api_key))
    assert removed.stderr == f"removed {ssh_key_id[1]}\n" and removed.stdout == ""
    gone = cli(server.url, "ssh-keys", "remove", ssh_key_id[1], key=org.api_key)
    assert gone.returncode == 3 and "404" in one_error_line(gone)
    listed = json.loads(ok(cli(server.url, "ssh-keys", "list", "-o", "json", key=org.api_key)).stdout)
    assert [row["label"] for row in listed] == ["ci box"]


# -- client errors ---------------------------------------------------------------------------------


def test_client_errors_are_one_line(server: Server, org: Org) -> None:
    not_found = cli(server.url, "secrets", "get", "NO_SUCH", key=org.api_key)
    assert not_found.returncode == 3
    assert "404" in one_error_line(not_found)
    bogus = "rt_live_" + "A" * 40
    unauthorized = cli(server.url, "secrets", "list", key=bogus)
    line = one_error_line(unauthorized)
    assert "401" in line and bogus not in line
    assert unauthorized.returncode == 5
    assert "KEYLEDGER_API_KEY" in one_error_line(cli(server.url, "secrets", "list"))
    unreachable = cli(f"http://{HOST}:{free_port()}", "secrets", "list", key=org.api_key)
    assert "cannot reach" in one_error_line(unreachable)


# -- serve and verify ------------------------------------------------------------------------------


def serve_refusal(tmp_path: Path, master_key: str | None) -> subprocess.CompletedProcess[str]:
    env = clean_env() if master_key is None else clean_env(KEYLEDGER_MASTER_KEY=master_key)
    return subprocess.run(
        [KEYLEDGER, "serve", "--host", HOST, "--port", str(free_port()), "--db", str(tmp_path / "k.db")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("master_key", [
    None, "", "not a key!", base64.b64encode(os.urandom(16)).decode(), "ab" * 31, base64.b64encode(b"x" * 33).decode(),
], ids=["missing", "empty", "garbage", "16-bytes", "62-hex", "33-bytes"])
def test_serve_refuses_without_a_valid_master_key(tmp_path: Path, master_key: str | None) -> None:
    result = serve_refusal(tmp_path, master_key)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "KEYLEDGER_MASTER_KEY" in lines[0]
    if master_key:
        assert master_key not in result.stderr
    assert not (tmp_path / "k.db").exists()


def second_server(server: Server, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KEYLEDGER, "serve", "--host", HOST, "--port", str(free_port()), "--db", str(server.db)],
        cwd=tmp_path, env=server.env, capture_output=True, text=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL,
    )


def test_second_server_on_the_same_db_is_refused(server: Server, tmp_path: Path) -> None:
    result = second_server(server, tmp_path)
    assert result.returncode != 0, (result.stdout, result.stderr)
    assert "one server per SQLite file" in result.stderr
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200


def test_bug_second_server_refusal_is_one_line_exit_2(server: Server, tmp_path: Path) -> None:
    result = second_server(server, tmp_path)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_verify_reads_the_running_servers_db(server: Server, org: Org) -> None:
    put_secret(server, org.api_key, "VERIFY_ME", "verify-value-1")
    assert reveal_over_http(server, org.api_key, "VERIFY_ME") == "verify-value-1"
    files = [server.db, Path(f"{server.db}-wal")]
    before = [(path.stat().st_size, path.read_bytes()) for path in files]
    result = subprocess.run([KEYLEDGER, "verify", "--db", str(server.db)], env=clean_env(), capture_output=True,
                            text=True, timeout=CLI_TIMEOUT)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stdout.startswith("ok")
    assert [(path.stat().st_size, path.read_bytes()) for path in files] == before
    # The server carries on.
    put_secret(server, org.api_key, "VERIFY_ME", "verify-value-2")
    assert reveal_over_http(server, org.api_key, "VERIFY_ME") == "verify-value-2"


# -- dev mode --------------------------------------------------------------------------------------


def dev_banner(server: Server) -> tuple[str, str]:
    """The API key and the docs URL the dev server printed at start."""
    printed = server.stdout.read_text()
    keys = API_KEY.findall(printed)
    assert len(set(keys)) == 1, printed
    assert re.search(rf"{re.escape(server.url)}/?$", printed, re.MULTILINE), printed
    docs = re.findall(rf"{re.escape(server.url)}/\S*(?:docs|schema|swagger)\S*", printed)
    assert docs, printed
    return keys[0], docs[0]


def test_dev_mode_prints_a_working_key_and_keeps_it(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    env = clean_env()
    first = start_server(tmp_path, ["--dev", "--port", str(free_port()), "--db", str(db)], env)
    try:
        api_key, docs = dev_banner(first)
        assert httpx.get(docs, timeout=5).status_code == 200
        dashboard = re.search(r"dashboard:\s+(\S+)", first.stdout.read_text())
        assert dashboard is not None and dashboard.group(1) == f"{first.url}/"
        assert "Sign in to keyledger" in httpx.get(dashboard.group(1), timeout=5).text
        folder = tmp_path / ".keyledger"
        kept = sorted(folder.iterdir())
        assert kept
        for path in kept:
            assert path.stat().st_mode & 0o777 == 0o600, path
        assert api_key in {path.read_text().strip() for path in kept}
        master = {path.name: path.read_bytes() for path in kept}
        set_secret(first, api_key, "DEV_SECRET", "kept across restarts")
    finally:
        first.stop()
    assert first.proc.returncode is not None
    second = start_server(tmp_path, ["--dev", "--port", str(free_port()), "--db", str(db)], env)
    try:
        again, _ = dev_banner(second)
        assert again == api_key
        assert {path.name: path.read_bytes() for path in sorted(folder.iterdir())} == master
        # Same master key: the value written before the restart opens.
        revealed = ok(cli(second.url, "secrets", "reveal", "DEV_SECRET", key=again))
        assert revealed.stdout == "kept across restarts"
    finally:
        second.stop()


@dataclass
class SealedDb:
    folder: Path
    db: Path
    env: dict[str, str]
    api_key: str


@pytest.fixture(scope="module")
def sealed_db(tmp_path_factory: pytest.TempPathFactory) -> SealedDb:
    """A database holding one secret, written by a server that has stopped since."""
    folder = tmp_path_factory.mktemp("sealed")
    db = folder / "k.db"
    env = clean_env(KEYLEDGER_MASTER_KEY=new_master_key(), KEYLEDGER_ADMIN_TOKEN=ADMIN_TOKEN)
    first = start_server(folder, ["--host", HOST, "--port", str(free_port()), "--db", str(db)], env)
    try:
        response = http(first, "POST", "/v1/admin/orgs", ADMIN_TOKEN, json={"org": "acme"})
        assert response.status_code == 201, response.text
        created = response.json()
        put_secret(first, created["api_key"], "SEALED", "sealed under the first key")
    finally:
        first.stop()
    return SealedDb(folder=folder, db=db, env=env, api_key=created["api_key"])


def serve_with_wrong_key(sealed: SealedDb) -> subprocess.CompletedProcess[str]:
    wrong = {**sealed.env, "KEYLEDGER_MASTER_KEY": new_master_key()}
    return subprocess.run(
        [KEYLEDGER, "serve", "--host", HOST, "--port", str(free_port()), "--db", str(sealed.db)],
        cwd=sealed.folder, env=wrong, capture_output=True, text=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL,
    )


def test_serve_refuses_a_master_key_that_does_not_open_the_db(sealed_db: SealedDb) -> None:
    result = serve_with_wrong_key(sealed_db)
    assert result.returncode != 0
    assert "KEYLEDGER_MASTER_KEY cannot open" in result.stderr
    # With the key it was written with, the same file serves and the value opens.
    right = start_server(sealed_db.folder, ["--host", HOST, "--port", str(free_port()), "--db", str(sealed_db.db)],
                         sealed_db.env)
    try:
        assert reveal_over_http(right, sealed_db.api_key, "SEALED") == "sealed under the first key"
    finally:
        right.stop()


def test_bug_wrong_master_key_refusal_is_one_line_exit_2(sealed_db: SealedDb) -> None:
    result = serve_with_wrong_key(sealed_db)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_secrets_versions_and_reveal_of_an_earlier_version(server: Server, org: Org) -> None:
    put_secret(server, org.api_key, "ROTATED", "first-value")
    put_secret(server, org.api_key, "ROTATED", "second-value")
    listed = ok(cli(server.url, "secrets", "versions", "ROTATED", "-o", "json", key=org.api_key)).stdout
    assert "first-value" not in listed and "second-value" not in listed
    assert [(v["version"], v["how"], v["value_exists"]) for v in json.loads(listed)] == [
        (1, "create", True), (2, "update", True)]
    earlier = ok(cli(server.url, "secrets", "reveal", "ROTATED", "--version", "1", key=org.api_key))
    assert earlier.stdout == "first-value"
    assert ok(cli(server.url, "secrets", "reveal", "ROTATED", key=org.api_key)).stdout == "second-value"
    assert "404" in one_error_line(cli(server.url, "secrets", "reveal", "ROTATED", "--version", "3", key=org.api_key))


# -- rollback, delete and restore, purge, expiry, org settings -------------------------------------


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def member_key(server: Server, org: Org) -> str:
    made = http(server, "POST", "/v1/keys", org.api_key, json={"label": "member", "role": "member"})
    assert made.status_code == 201, made.text
    key: str = made.json()["api_key"]
    return key


def deleted_rows(server: Server, key: str) -> dict[str, dict[str, object]]:
    listed = ok(cli(server.url, "secrets", "deleted", "-o", "json", key=key)).stdout
    return {row["name"]: row for row in json.loads(listed)}


def test_secrets_rollback_makes_a_new_version_with_an_earlier_value(server: Server, org: Org) -> None:
    put_secret(server, org.api_key, "db", "first-value")
    put_secret(server, org.api_key, "db", "second-value")
    result = ok(cli(server.url, "secrets", "rollback", "db", "--version", "1", "-o", "json", key=org.api_key))
    assert "first-value" not in result.stdout + result.stderr and "second-value" not in result.stdout + result.stderr
    meta = json.loads(result.stdout)
    assert (meta["name"], meta["version"], meta["updated_by"]) == ("db", 3, org.key_id)
    assert result.stderr.strip() == "db: version 3 now holds the value of version 1"
    assert ok(cli(server.url, "secrets", "reveal", "db", key=org.api_key)).stdout == "first-value"
    versions = http(server, "GET", "/v1/secrets/db/versions", org.api_key).json()["versions"]
    assert [(v["version"], v["how"]) for v in versions] == [(1, "create"), (2, "update"), (3, "rollback")]
    # --if-match: a stale version is refused and changes nothing; the current one is accepted.
    stale = cli(server.url, "secrets", "rollback", "db", "--version", "2", "--if-match", "2", key=org.api_key)
    assert "412" in one_error_line(stale)
    assert reveal_over_http(server, org.api_key, "db") == "first-value"
    again = ok(cli(server.url, "secrets", "rollback", "db", "--version", "2", "--if-match", "3", "-o", "json",
                   key=org.api_key))
    assert json.loads(again.stdout)["version"] == 4
    assert reveal_over_http(server, org.api_key, "db") == "second-value"
    assert "404" in one_error_line(cli(server.url, "secrets", "rollback", "db", "--version", "9", key=org.api_key))
    assert "404" in one_error_line(cli(server.url, "secrets", "rollback", "nope", "--version", "1", key=org.api_key))


def test_deleted_secret_is_listed_and_restored(server: Server, org: Org) -> None:
    put_secret(server, org.api_key, "GONE", "gone-value")
    put_secret(server, org.api_key, "GONE", "gone-value-2")
    put_secret(server, org.api_key, "KEPT", "kept-value")
    assert deleted_rows(server, org.api_key) == {}
    deleted = ok(cli(server.url, "secrets", "delete", "GONE", key=org.api_key))
    assert "keyledger secrets restore GONE" in deleted.stderr and "recovery window" in deleted.stderr
    assert "404" in one_error_line(cli(server.url, "secrets", "get", "GONE", key=org.api_key))
    listed = ok(cli(server.url, "secrets", "deleted", "-o", "json", key=org.api_key)).stdout
    assert "gone-value" not in listed
    [row] = json.loads(listed)
    assert (row["name"], row["version"]) == ("GONE", 2)
    deleted_at, destroy_at = parse_time(str(row["deleted_at"])), parse_time(str(row["destroy_at"]))
    assert abs(deleted_at - datetime.now(UTC)) < timedelta(minutes=5)
    assert destroy_at - deleted_at == timedelta(days=30)  # the default recovery window
    restored = ok(cli(server.url, "secrets", "restore", "GONE", "-o", "json", key=org.api_key))
    assert "gone-value" not in restored.stdout + restored.stderr
    assert (json.loads(restored.stdout)["name"], json.loads(restored.stdout)["version"]) == ("GONE", 3)
    assert ok(cli(server.url, "secrets", "reveal", "GONE", key=org.api_key)).stdout == "gone-value-2"
    assert deleted_rows(server, org.api_key) == {}
    assert "409" in one_error_line(cli(server.url, "secrets", "restore", "GONE", key=org.api_key))
    assert "404" in one_error_line(cli(server.url, "secrets", "restore", "NEVER_MADE", key=org.api_key))


def test_purge_asks_first_and_is_for_admin_keys(server: Server, org: Org) -> None:
    put_secret(server, org.api_key, "PURGE_ME", "purge-value")
    declined = cli(server.url, "secrets", "delete", "PURGE_ME", "--purge", key=org.api_key, stdin="n\n")
    assert declined.returncode != 0
    assert "cannot be undone" in declined.stderr
    assert reveal_over_http(server, org.api_key, "PURGE_ME") == "purge-value"
    # With no answer at all (stdin closed), nothing happens either.
    assert cli(server.url, "secrets", "delete", "PURGE_ME", "--purge", key=org.api_key).returncode != 0
    assert reveal_over_http(server, org.api_key, "PURGE_ME") == "purge-value"
    member = member_key(server, org)
    assert "403" in one_error_line(cli(server.url, "secrets", "delete", "PURGE_ME", "--purge", "--yes", key=member))
    assert reveal_over_http(server, org.api_key, "PURGE_ME") == "purge-value"
    purged = ok(cli(server.url, "secrets", "delete", "PURGE_ME", "--purge", "--yes", key=org.api_key))
    assert "PURGE_ME" in purged.stderr
    assert "404" in one_error_line(cli(server.url, "secrets", "get", "PURGE_ME", key=org.api_key))
    assert "PURGE_ME" not in deleted_rows(server, org.api_key)
    assert "404" in one_error_line(cli(server.url, "secrets", "restore", "PURGE_ME", key=org.api_key))
    # An already-deleted secret can be purged too (answering "y"), and then it is no longer restorable.
    put_secret(server, org.api_key, "DELETED_FIRST", "deleted-first-value")
    ok(cli(server.url, "secrets", "delete", "DELETED_FIRST", key=org.api_key))
    assert "DELETED_FIRST" in deleted_rows(server, org.api_key)
    ok(cli(server.url, "secrets", "delete", "DELETED_FIRST", "--purge", key=org.api_key, stdin="y\n"))
    assert deleted_rows(server, org.api_key) == {}
    assert "404" in one_error_line(cli(server.url, "secrets", "restore", "DELETED_FIRST", key=org.api_key))


def test_org_settings_round_trip_and_set_the_recovery_window(server: Server, org: Org) -> None:
    shown = json.loads(ok(cli(server.url, "org", "settings", "-o", "json", key=org.api_key)).stdout)
    assert shown == {"org": org.name, "recovery_window_days": 30}
    changed = ok(cli(server.url, "org", "settings", "--recovery-window-days", "7", "-o", "json", key=org.api_key))
    assert json.loads(changed.stdout) == {"org": org.name, "recovery_window_days": 7}
    member = member_key(server, org)
    seen = json.loads(ok(cli(server.url, "org", "settings", "-o", "json", key=member)).stdout)
    assert seen["recovery_window_days"] == 7
    assert "403" in one_error_line(cli(server.url, "org", "settings", "--recovery-window-days", "1", key=member))
    assert cli(server.url, "org", "settings", "--recovery-window-days", "366", key=org.api_key).returncode == 2
    assert http(server, "GET", "/v1/org/settings", org.api_key).json()["recovery_window_days"] == 7
    # The window applies to the next delete.
    put_secret(server, org.api_key, "WINDOWED", "windowed-value")
    ok(cli(server.url, "secrets", "delete", "WINDOWED", key=org.api_key))
    row = deleted_rows(server, org.api_key)["WINDOWED"]
    assert parse_time(str(row["destroy_at"])) - parse_time(str(row["deleted_at"])) == timedelta(days=7)
    # 0: a delete destroys at once; nothing is left to restore.
    ok(cli(server.url, "org", "settings", "--recovery-window-days", "0", key=org.api_key))
    put_secret(server, org.api_key, "NO_WINDOW", "no-window-value")
    ok(cli(server.url, "secrets", "delete", "NO_WINDOW", key=org.api_key))
    assert "NO_WINDOW" not in deleted_rows(server, org.api_key)
    assert "404" in one_error_line(cli(server.url, "secrets", "restore", "NO_WINDOW", key=org.api_key))


def test_secrets_set_expiry(server: Server, org: Org) -> None:
    soon = rfc3339(datetime.now(UTC) + timedelta(days=3))
    meta = set_secret(server, org.api_key, "EXPIRING", "expiring-value", "--expires-at", soon)
    assert parse_time(str(meta["expires_at"])) == parse_time(soon)
    # Omitted: kept as is.
    assert set_secret(server, org.api_key, "EXPIRING", "expiring-value-2")["expires_at"] == meta["expires_at"]
    assert set_secret(server, org.api_key, "EXPIRING", "expiring-value-3", "--no-expiry").get("expires_at") is None
    # In the past: the value can no longer be revealed, with one line that says why.
    past = rfc3339(datetime.now(UTC) - timedelta(hours=1))
    set_secret(server, org.api_key, "EXPIRED", "expired-value", "--expires-at", past)
    refused = cli(server.url, "secrets", "reveal", "EXPIRED", key=org.api_key)
    line = one_error_line(refused)
    assert "expired" in line.lower() and "410" in line and "expired-value" not in line
    set_secret(server, org.api_key, "EXPIRED", "renewed-value", "--no-expiry")
    assert ok(cli(server.url, "secrets", "reveal", "EXPIRED", key=org.api_key)).stdout == "renewed-value"
    # Both options at once, or a time that is not one: refused, nothing written.
    both = cli(server.url, "secrets", "set", "BOTH", "--expires-at", soon, "--no-expiry", key=org.api_key, stdin="v")
    assert "--no-expiry" in one_error_line(both)
    bad = cli(server.url, "secrets", "set", "BAD_TIME", "--expires-at", "next tuesday", key=org.api_key, stdin="v")
    assert "422" in one_error_line(bad)
    for name in ("BOTH", "BAD_TIME"):
        assert http(server, "GET", f"/v1/secrets/{name}", org.api_key).status_code == 404


def test_compliance_expiring_lists_secrets_set_with_expires_at(server: Server, org: Org) -> None:
    now = datetime.now(UTC)
    set_secret(server, org.api_key, "EXPIRES_SOON", "soon-value", "--expires-at", rfc3339(now + timedelta(days=3)))
    set_secret(server, org.api_key, "EXPIRES_LATER", "later-value", "--expires-at", rfc3339(now + timedelta(days=60)))
    set_secret(server, org.api_key, "EXPIRED_ALREADY", "past-value", "--expires-at", rfc3339(now - timedelta(days=1)))
    set_secret(server, org.api_key, "NEVER_EXPIRES", "never-value")
    listed = ok(cli(server.url, "compliance", "expiring", "--days", "7", "-o", "json", key=org.api_key)).stdout
    assert not any(value in listed for value in ("soon-value", "later-value", "past-value", "never-value"))
    assert [row["name"] for row in json.loads(listed)] == ["EXPIRED_ALREADY", "EXPIRES_SOON"]
    wider = ok(cli(server.url, "compliance", "expiring", "--days", "90", "-o", "json", key=org.api_key)).stdout
    assert [row["name"] for row in json.loads(wider)] == ["EXPIRED_ALREADY", "EXPIRES_SOON", "EXPIRES_LATER"]


def test_rotate_master_key_help_and_key_only_from_the_environment(server: Server) -> None:
    shown = ok(cli(server.url, "admin", "rotate-master-key", "--help")).stdout
    assert "KEYLEDGER_NEW_MASTER_KEY" in shown
    admin_env = {"KEYLEDGER_ADMIN_TOKEN": ADMIN_TOKEN}
    assert "KEYLEDGER_NEW_MASTER_KEY" in one_error_line(cli(server.url, "admin", "rotate-master-key", env=admin_env))
    in_argv = new_master_key()
    refused = cli(server.url, "admin", "rotate-master-key", in_argv, env=admin_env)
    assert refused.returncode == 2


def test_rotate_master_key_rewraps_a_running_server_and_the_new_key_alone_opens_everything(tmp_path: Path) -> None:
    old_key, new_key = new_master_key(), new_master_key()
    db = tmp_path / "k.db"

    def serve(master: str, previous: str = "") -> Server:
        env = clean_env(KEYLEDGER_MASTER_KEY=master, KEYLEDGER_ADMIN_TOKEN=ADMIN_TOKEN,
                        KEYLEDGER_PREVIOUS_MASTER_KEYS=previous)
        return start_server(tmp_path, ["--host", HOST, "--port", str(free_port()), "--db", str(db)], env)

    server = serve(old_key)
    try:
        created = http(server, "POST", "/v1/admin/orgs", ADMIN_TOKEN, json={"org": "acme"}).json()
        for i in range(5):
            put_secret(server, created["api_key"], f"S{i}", f"value-{i}")
        env = {"KEYLEDGER_ADMIN_TOKEN": ADMIN_TOKEN, "KEYLEDGER_NEW_MASTER_KEY": new_key}
        result = ok(cli(server.url, "admin", "rotate-master-key", "-o", "json", env=env))
        status = json.loads(result.stdout)
        assert status["state"] == "done" and status["done"] == 5
        assert status["new_kek_id"] in result.stderr and "KEYLEDGER_PREVIOUS_MASTER_KEYS" in result.stderr
        assert new_key not in result.stdout + result.stderr
        assert reveal_over_http(server, created["api_key"], "S3") == "value-3"
    finally:
        server.stop()
    server = serve(new_key)  # the new key alone
    try:
        assert [reveal_over_http(server, created["api_key"], f"S{i}") for i in range(5)] == [
            f"value-{i}" for i in range(5)]
    finally:
        server.stop()
