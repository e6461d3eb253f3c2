"""The CLI's reveal policy, rotation, pool and compliance commands, end to end: one real server process for
the module (stopped in the fixture's teardown), the CLI as a subprocess, setup over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_cli_e2e import (
    ADMIN_TOKEN,
    Server,
    cli,
    http,
    ok,
    one_error_line,
    put_secret,
    reveal_over_http,
    served,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with served(tmp_path_factory.mktemp("access")) as srv:
        yield srv


@pytest.fixture(scope="module")
def admin_key(server: Server) -> str:
    response = http(server, "POST", "/v1/admin/orgs", ADMIN_TOKEN, json={"org": "access"})
    assert response.status_code == 201, response.text
    key: str = response.json()["api_key"]
    return key


def run_json(server: Server, key: str, *args: str, stdin: str | None = None) -> object:
    return json.loads(ok(cli(server.url, *args, "-o", "json", key=key, stdin=stdin)).stdout)


def test_policy_and_who_could_reveal(server: Server, admin_key: str) -> None:
    member = http(server, "POST", "/v1/keys", admin_key, json={"label": "ci-bot", "role": "member"}).json()
    put_secret(server, admin_key, "GUARDED", "guarded-value")
    assert run_json(server, admin_key, "secrets", "policy", "get", "GUARDED") == {
        "key_ids": [], "labels": [], "roles": [], "restricted": False}
    set_to = run_json(server, admin_key, "secrets", "policy", "set", "GUARDED", "--label", "ci-*", "--role", "admin")
    assert set_to == {"key_ids": [], "labels": ["ci-*"], "roles": ["admin"], "restricted": True}
    # A member key may not change a policy: one error line, exit 5.
    refused = cli(server.url, "secrets", "policy", "set", "GUARDED", key=member["api_key"])
    assert refused.returncode == 5 and "403" in one_error_line(refused)
    who = run_json(server, admin_key, "compliance", "who-could-reveal", "GUARDED")
    assert isinstance(who, dict)
    assert sorted(k["label"] for k in who["keys"]) == ["admin", "ci-bot"]
    cleared = run_json(server, admin_key, "secrets", "policy", "set", "GUARDED")
    assert cleared == {"key_ids": [], "labels": [], "roles": [], "restricted": False}
    table = ok(cli(server.url, "compliance", "who-could-reveal", "GUARDED", "-o", "table", key=admin_key))
    assert "reveal policy: none" in table.stderr and "guarded-value" not in table.stdout + table.stderr


def test_rotation_commands(server: Server, admin_key: str) -> None:
    put_secret(server, admin_key, "ROTATED", "before-rotation")
    configured = run_json(server, admin_key, "secrets", "rotation", "set", "ROTATED", "--every", "30d", "--generator",
                          "--length", "32", "--alphabet", "hex", "--prefix", "tok_")
    assert isinstance(configured, dict)
    assert configured["interval_seconds"] == 30 * 86400
    assert configured["rotator"] == {"kind": "generator", "length": 32, "alphabet": "hex", "prefix": "tok_"}
    assert run_json(server, admin_key, "secrets", "rotation", "get", "ROTATED") == configured
    rotated = run_json(server, admin_key, "secrets", "rotate", "ROTATED")
    assert isinstance(rotated, dict) and rotated["version"] == 2
    value = reveal_over_http(server, admin_key, "ROTATED")
    assert value.startswith("tok_") and len(value) == 36
    listed = run_json(server, admin_key, "compliance", "rotations", "--all")
    assert isinstance(listed, list) and [(r["name"], r["status"]) for r in listed] == [("ROTATED", "ok")]
    assert run_json(server, admin_key, "compliance", "rotations") == []
    ok(cli(server.url, "secrets", "rotation", "remove", "ROTATED", key=admin_key))
    conflict = cli(server.url, "secrets", "rotate", "ROTATED", key=admin_key)
    assert conflict.returncode == 4 and "no rotation policy" in one_error_line(conflict)
    both = cli(server.url, "secrets", "rotation", "set", "ROTATED", "--every", "1d", key=admin_key)
    assert both.returncode == 2 and "exactly one" in one_error_line(both)
    bad = cli(server.url, "secrets", "rotation", "set", "ROTATED", "--every", "soon", "--generator", key=admin_key)
    assert bad.returncode == 2 and "--every" in one_error_line(bad)


def test_pool_commands(server: Server, admin_key: str, tmp_path: Path) -> None:
    put_secret(server, admin_key, "POOLED", "plain")
    added = run_json(server, admin_key, "secrets", "members", "set", "POOLED", "one", "--label", "first",
                     stdin="value-one\n")
    assert isinstance(added, dict) and added["member"] == "one" and added["label"] == "first"
    value_file = tmp_path / "two"
    value_file.write_text("value-two")
    result = ok(cli(server.url, "secrets", "members", "set", "POOLED", "two", "--value-file", str(value_file),
                    "-o", "json", key=admin_key))
    assert "value-two" not in result.stdout + result.stderr
    listed = ok(cli(server.url, "secrets", "members", "list", "POOLED", "-o", "json", key=admin_key)).stdout
    assert "value-one" not in listed and [m["member"] for m in json.loads(listed)["members"]] == ["one", "two"]
    assert [reveal_over_http(server, admin_key, "POOLED") for _ in range(3)] == ["value-one", "value-two", "value-one"]
    disabled = run_json(server, admin_key, "secrets", "members", "disable", "POOLED", "two", "--reason", "429s")
    assert isinstance(disabled, dict) and disabled["state"] == "disabled"
    assert reveal_over_http(server, admin_key, "POOLED") == "value-one"
    enabled = run_json(server, admin_key, "secrets", "members", "enable", "POOLED", "two")
    assert isinstance(enabled, dict) and enabled["state"] == "active"
    assert run_json(server, admin_key, "secrets", "pool", "POOLED", "--selection", "least_recent") == {
        "selection": "least_recent"}
    ok(cli(server.url, "secrets", "members", "remove", "POOLED", "two", key=admin_key))
    gone = cli(server.url, "secrets", "members", "remove", "POOLED", "two", key=admin_key)
    assert gone.returncode == 3 and "404" in one_error_line(gone)


def test_a_reference_is_set_with_the_reference_flag(server: Server, admin_key: str) -> None:
    meta = run_json(server, admin_key, "secrets", "set", "REF", "--reference", stdin="vault-kv://secret/app/db#password")
    assert isinstance(meta, dict) and meta["version"] == 1
    shown = run_json(server, admin_key, "secrets", "get", "REF")
    assert isinstance(shown, dict) and shown["external"] == "vault-kv"
