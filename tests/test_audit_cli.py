"""The audit faces of the `keyledger` CLI (issue 4), end to end: a real `keyledger serve` process on a
free loopback port, driven by the CLI as subprocesses; offline commands read the server's database
file while it runs. Expected answers come from the raw `events` table or from the HTTP API itself.

Servers started here are always stopped (SIGTERM, then SIGKILL) in the fixtures' teardown.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from ledger.checkpoint import parse_checkpoint
from ledger.export import CSV_COLUMNS

KEYLEDGER = str(Path(sys.executable).parent / "keyledger")
HOST = "127.0.0.1"
ADMIN_TOKEN = "adm_audit_cli_" + "x" * 24
START_TIMEOUT = 20.0
CLI_TIMEOUT = 60.0
MULTILINE_REASON = "rotate the replica\nticket OPS-12"  # a CSV cell over two lines
PROJECTIONS = {
    "secrets": "SELECT * FROM secrets ORDER BY org, name",
    "api_keys": "SELECT * FROM api_keys ORDER BY org, key_id",
    "audit": "SELECT * FROM audit ORDER BY org, seq",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYLEDGER_")}
    env.update(extra)
    return env


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    db: Path
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_server(folder: Path) -> Server:
    """`keyledger serve` on a free loopback port and a new database in `folder`, once /healthz answers."""
    port = free_port()
    db = folder / "k.db"
    log = folder / f"serve-{port}.log"
    env = clean_env(KEYLEDGER_MASTER_KEY=base64.b64encode(os.urandom(32)).decode(), KEYLEDGER_ADMIN_TOKEN=ADMIN_TOKEN)
    with log.open("wb") as out:
        proc = subprocess.Popen([KEYLEDGER, "serve", "--host", HOST, "--port", str(port), "--db", str(db)],
                                cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Server(proc=proc, url=f"http://{HOST}:{port}", db=db, log=log)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {log.read_text(errors='replace')}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=1.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise AssertionError(f"no /healthz within {START_TIMEOUT} s: {log.read_text(errors='replace')}")
        time.sleep(0.1)


def cli(*args: str, url: str | None = None, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = clean_env(**({"KEYLEDGER_URL": url} if url else {}), **({"KEYLEDGER_API_KEY": key} if key else {}))
    return subprocess.run([KEYLEDGER, *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result


def failed(result: subprocess.CompletedProcess[str]) -> str:
    """A refusal: non-zero exit; returns stdout and stderr together."""
    assert result.returncode != 0, (result.stdout, result.stderr)
    return result.stdout + result.stderr


class Api:
    """Direct HTTP calls (to build histories and to get the answers the CLI must match)."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30.0)

    def call(self, method: str, path: str, token: str, expect: int, **kwargs: Any) -> Any:
        response = self.http.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)
        assert response.status_code == expect, (method, path, response.status_code, response.text)
        return response.json() if response.content and "json" in response.headers.get("content-type", "") else None

    def org(self, org: str) -> str:
        return str(self.call("POST", "/v1/admin/orgs", ADMIN_TOKEN, 201, json={"org": org})["api_key"])

    def key(self, admin: str, role: str, scope: str, label: str) -> dict[str, Any]:
        body: dict[str, Any] = self.call("POST", "/v1/keys", admin, 201,
                                         json={"label": label, "role": role, "scope": scope})
        return body

    def upsert(self, token: str, name: str, value: str, **fields: Any) -> None:
        response = self.http.post("/v1/secrets", json={"name": name, "value": value, **fields},
                                  headers={"Authorization": f"Bearer {token}"})
        assert response.status_code in (200, 201), response.text

    def reveal(self, token: str, name: str, expect: int = 200, reason: str | None = None) -> None:
        body = {"reason": reason} if reason is not None else None
        self.call("POST", f"/v1/secrets/{quote(name, safe='')}/reveal", token, expect, json=body)


@dataclass
class World:
    server: Server
    api: Api
    acme: str  # admin API keys
    globex: str
    member: str  # acme, role member, scope agents
    doomed_id: str
    folder: Path


def history(api: Api) -> tuple[str, str, str, str]:
    """Two orgs, every kind of event: keys created and revoked, upserts, a delete, granted and denied reveals."""
    acme, globex = api.org("acme"), api.org("globex")
    member = api.key(acme, "member", "agents", "agent key")
    doomed = api.key(acme, "member", "all", "doomed key")
    api.upsert(acme, "db-password", "pw-one")
    api.upsert(acme, "tool-token", "tok", scope="tools")
    api.upsert(globex, "db-password", "globex-pw")
    api.upsert(acme, "old-key", "old")
    api.upsert(member["api_key"], "db-password", "pw-two")
    api.reveal(member["api_key"], "db-password", reason=MULTILINE_REASON)
    api.reveal(member["api_key"], "tool-token", expect=403)
    api.reveal(doomed["api_key"], "db-password")
    api.reveal(globex, "db-password")
    api.call("DELETE", "/v1/secrets/old-key", acme, 204)
    api.call("DELETE", f"/v1/keys/{doomed['key_id']}", acme, 204)
    return acme, globex, member["api_key"], doomed["key_id"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("audit-cli")
    server = start_server(folder)
    api = Api(server.url)
    try:
        acme, globex, member, doomed_id = history(api)
        yield World(server=server, api=api, acme=acme, globex=globex, member=member, doomed_id=doomed_id,
                    folder=folder)
    finally:
        api.http.close()
        server.stop()


def db_rows(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def org_events(db: Path, org: str) -> list[tuple[int, int, str, bytes]]:
    """(seq, org_seq, type, hash) of the org's events, in order."""
    return [(s, n, t, bytes(h)) for s, n, t, h in
            db_rows(db, "SELECT seq, org_seq, type, hash FROM events WHERE org = ? ORDER BY seq", (org,))]


def export_file(world: World, fmt: str, out: Path, key: str | None = None) -> subprocess.CompletedProcess[str]:
    return cli("audit", "export", "--format", fmt, "-f", str(out), url=world.server.url, key=key or world.acme)


# -- audit list, export, verify ------------------------------------------------------------------------


def test_audit_list_json_shows_every_event_newest_first(world: World) -> None:
    events = org_events(world.server.db, "acme")
    listed = json.loads(ok(cli("audit", "list", "-o", "json", url=world.server.url, key=world.acme)).stdout)
    assert [e["seq"] for e in listed] == [s for s, *_ in events][::-1]
    assert [e["action"] for e in listed] == [t for *_, t, _ in events][::-1]
    assert {e["actor"] for e in listed} >= {"admin token", "agent key", "doomed key"}  # labels
    oldest = json.loads(ok(cli("audit", "list", "-o", "json", "--order", "oldest", "--outcome", "denied",
                               url=world.server.url, key=world.acme)).stdout)
    assert [(e["action"], e["secret"]) for e in oldest] == [("secret.reveal_denied", "tool-token")]
    reveals = json.loads(ok(cli("audit", "list", "-o", "json", "--action", "secret.revealed", "--secret",
                                "db-password", url=world.server.url, key=world.acme)).stdout)
    assert [e["seq"] for e in reveals] == [s for s, _, t, _ in events if t == "secret.revealed"][::-1]
    assert len(reveals) == 2
    refused = failed(cli("audit", "list", "-o", "json", url=world.server.url, key=world.member))
    assert "admin" in refused


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "ocsf"])
def test_audit_export_writes_every_event_of_the_org(world: World, fmt: str, tmp_path: Path) -> None:
    events = org_events(world.server.db, "acme")
    out = tmp_path / f"acme.{fmt}"
    result = ok(export_file(world, fmt, out))
    if fmt != "csv":  # see test_bug_online_csv_export_counts_lines_not_events
        assert f"wrote {len(events)} events to {out}" in result.stderr
    data = out.read_bytes()
    online = world.api.http.get("/v1/audit/export", params={"format": fmt},
                                headers={"Authorization": f"Bearer {world.acme}"})
    assert online.status_code == 200 and data == online.content
    if fmt == "csv":
        table = list(csv.reader(io.StringIO(data.decode(), newline="")))
        assert tuple(table[0]) == CSV_COLUMNS
        assert [int(r[0]) for r in table[1:]] == [s for s, *_ in events]
        assert MULTILINE_REASON in {row[CSV_COLUMNS.index("detail")] for row in table[1:]}
    else:
        lines = [json.loads(line) for line in data.splitlines()]
        found = [line["unmapped"]["seq"] if fmt == "ocsf" else line["seq"] for line in lines]
        assert found == [s for s, *_ in events]
    if fmt == "jsonl":
        verified = ok(cli("audit", "verify", str(out)))
        assert verified.stdout.strip() == f"ok: {len(events)} events in 1 orgs verified"


def test_bug_online_csv_export_counts_lines_not_events(world: World, tmp_path: Path) -> None:
    events = org_events(world.server.db, "acme")
    out = tmp_path / "acme.csv"
    result = ok(export_file(world, "csv", out))
    assert f"wrote {len(events)} events to {out}" in result.stderr


def test_export_verifies_against_a_checkpoint_and_a_truncated_one_does_not(world: World, tmp_path: Path) -> None:
    out, cp = tmp_path / "acme.jsonl", tmp_path / "acme.checkpoint"
    ok(export_file(world, "jsonl", out))
    wrote = ok(cli("ledger", "checkpoint", "-f", str(cp), url=world.server.url, key=world.acme))
    events = org_events(world.server.db, "acme")
    checkpoint = parse_checkpoint(cp.read_text())
    assert (checkpoint.org, checkpoint.org_seq, checkpoint.head) == ("acme", events[-1][1], events[-1][3])
    assert f"org_seq {checkpoint.org_seq}" in wrote.stderr
    ok(cli("audit", "verify", str(out), "--checkpoint", str(cp)))
    # The tail removed: the chain alone still links, the checkpoint shows events are missing.
    short = tmp_path / "short.jsonl"
    short.write_bytes(b"".join(out.read_bytes().splitlines(keepends=True)[:-1]))
    ok(cli("audit", "verify", str(short)))
    assert "missing" in failed(cli("audit", "verify", str(short), "--checkpoint", str(cp)))
    # Another org's checkpoint does not vouch for this export.
    other = tmp_path / "globex.checkpoint"
    ok(cli("ledger", "checkpoint", "-f", str(other), url=world.server.url, key=world.globex))
    failed(cli("audit", "verify", str(out), "--checkpoint", str(other)))
    # A checkpoint whose text was changed is refused for its signature.
    forged = tmp_path / "forged.checkpoint"
    forged.write_text(cp.read_text().replace("org_seq ", "org_seq 1", 1))
    assert "signature" in failed(cli("audit", "verify", str(out), "--checkpoint", str(forged)))


def test_a_tampered_export_fails_naming_the_line(world: World, tmp_path: Path) -> None:
    out = tmp_path / "acme.jsonl"
    ok(export_file(world, "jsonl", out))
    lines = out.read_bytes().splitlines(keepends=True)
    # The fourth event created the doomed key: its label is in the stored body only.
    assert lines[3].count(b"doomed key") == 1 and b'"api_key.created"' in lines[3]
    edited = lines[3].replace(b"doomed key", b"benign key")
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_bytes(b"".join([*lines[:3], edited, *lines[4:]]))
    result = cli("audit", "verify", str(tampered))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "line 4" in result.stdout and "FAILED" in result.stdout
    # Two lines swapped: named too.
    swapped = tmp_path / "swapped.jsonl"
    swapped.write_bytes(b"".join([*lines[:5], lines[6], lines[5], *lines[7:]]))
    result = cli("audit", "verify", str(swapped))
    assert result.returncode == 1 and "line 6" in result.stdout, result.stdout


def test_bug_a_checkpoint_with_a_unicode_digit_is_refused_with_one_error_line(world: World, tmp_path: Path) -> None:
    out, cp = tmp_path / "acme.jsonl", tmp_path / "acme.checkpoint"
    ok(export_file(world, "jsonl", out))
    ok(cli("ledger", "checkpoint", "-f", str(cp), url=world.server.url, key=world.acme))
    text = cp.read_text()
    org_seq = parse_checkpoint(text).org_seq
    cp.write_text(text.replace(f"org_seq {org_seq}\n", "org_seq \u00b2\n"))
    result = cli("audit", "verify", str(out), "--checkpoint", str(cp))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error:"), result.stderr


def test_verify_db_offline_while_the_server_runs(world: World, tmp_path: Path) -> None:
    cp = tmp_path / "acme.checkpoint"
    ok(cli("ledger", "checkpoint", "-f", str(cp), url=world.server.url, key=world.acme))
    total = int(db_rows(world.server.db, "SELECT MAX(seq) FROM events")[0][0])
    result = ok(cli("verify", "--db", str(world.server.db)))
    assert result.stdout.strip() == f"ok: {total} events in 2 orgs verified"
    ok(cli("verify", "--db", str(world.server.db), "--checkpoint", str(cp)))
    forged = tmp_path / "forged.checkpoint"
    forged.write_text(cp.read_text().replace("org acme", "org globex"))
    assert "signature" in failed(cli("verify", "--db", str(world.server.db), "--checkpoint", str(forged)))
    # Read-only: the server still writes, and the file still verifies with one more event.
    world.api.reveal(world.acme, "db-password")
    assert "ok: " in ok(cli("verify", "--db", str(world.server.db), "--checkpoint", str(cp))).stdout


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "ocsf"])
def test_offline_export_gives_the_same_lines_as_the_online_one(world: World, fmt: str, tmp_path: Path) -> None:
    online, offline = tmp_path / "online", tmp_path / "offline"
    ok(export_file(world, fmt, online))
    result = ok(cli("audit", "export", "--db", str(world.server.db), "--org", "acme", "--format", fmt,
                    "-f", str(offline)))
    assert f"wrote {len(org_events(world.server.db, 'acme'))} events" in result.stderr
    assert offline.read_bytes().splitlines() == online.read_bytes().splitlines()
    assert len(online.read_bytes().splitlines()) > 10
    if fmt == "jsonl":
        ok(cli("audit", "verify", str(offline)))
        globex = tmp_path / "globex"
        ok(cli("audit", "export", "--db", str(world.server.db), "--org", "globex", "-f", str(globex)))
        assert b'"org":"acme"' not in globex.read_bytes()
        ok(cli("audit", "verify", str(globex)))


def test_offline_export_needs_an_org(world: World, tmp_path: Path) -> None:
    assert "--org" in failed(cli("audit", "export", "--db", str(world.server.db), "-f", str(tmp_path / "x")))


# -- compliance ------------------------------------------------------------------------------------


def http_answer(world: World, path: str, **params: Any) -> Any:
    return world.api.call("GET", f"/v1/compliance/{path}", world.acme, 200, params=params)


def flat(event: dict[str, Any]) -> dict[str, Any]:
    return {**event, "actor": event["actor"]["label"] or event["actor"]["key_id"]}


def test_compliance_commands_answer_as_the_api(world: World) -> None:
    url, key = world.server.url, world.acme
    counts = json.loads(ok(cli("compliance", "reveal-counts", "-o", "json", url=url, key=key)).stdout)
    assert counts == http_answer(world, "reveal-counts")["actors"]
    assert {c["actor_label"] for c in counts} >= {"agent key", "doomed key"}
    assert all(c["reveals"] >= 1 for c in counts)

    reveals = json.loads(ok(cli("compliance", "reveals", "db-password", "-o", "json", url=url, key=key)).stdout)
    expected = [flat(e) for e in http_answer(world, "reveals", secret="db-password")["events"]]
    assert reveals == expected and len(reveals) >= 2
    assert {(e["action"], e["version"]) for e in reveals} == {("secret.revealed", 2)}

    exposure = json.loads(ok(cli("compliance", "exposure", "db-password", "1", "-o", "json", url=url,
                                 key=key)).stdout)
    assert exposure == http_answer(world, "exposure", secret="db-password", version=1)
    assert exposure["secret"] == "db-password" and exposure["version"] == 1
    assert exposure["reveals"] == [] and exposure["replaced_at"] is not None
    second = json.loads(ok(cli("compliance", "exposure", "db-password", "2", "-o", "json", url=url,
                               key=key)).stdout)
    assert second["replaced_at"] is None and len(second["reveals"]) == len(reveals)

    assert failed(cli("compliance", "reveal-counts", "-o", "json", url=url, key=world.member))


# -- replay ----------------------------------------------------------------------------------------


def snapshot(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    return {table: db_rows(db, sql) for table, sql in PROJECTIONS.items()}


def test_replay_refuses_while_the_server_runs_and_rebuilds_after(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    api = Api(server.url)
    try:
        history(api)
        before = snapshot(server.db)
        assert all(before.values()), before
        refused = cli("replay", "--db", str(server.db))
        assert refused.returncode != 0
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), refused.stderr
        assert "another process" in lines[0] and str(server.proc.pid) in lines[0]
        assert snapshot(server.db) == before
    finally:
        api.http.close()
        server.stop()
    assert server.proc.returncode is not None
    # Damage the projections, so that only a real rebuild from the events can give them back.
    conn = sqlite3.connect(server.db)
    try:
        conn.execute("DELETE FROM audit WHERE seq % 2 = 0")
        conn.execute("UPDATE secrets SET version = 99, description = 'wrong'")
        conn.execute("DELETE FROM api_keys WHERE role = 'member'")
        conn.commit()
    finally:
        conn.close()
    assert snapshot(server.db) != before
    result = ok(cli("replay", "--db", str(server.db)))
    assert "projections rebuilt" in result.stderr
    assert snapshot(server.db) == before
