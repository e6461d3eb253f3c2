"""The CLI's people, single sign-on and connected apps commands end to end: a real server process, the CLI
as a subprocess, and a real authorization server (tests/oidc_server.py) for the apps' tokens and refreshes.

People join by signing in to the dashboard, which needs a browser: the module's database is made before the
server starts, by a ledger in this process on the same file and master key (an org, its SSO settings, two
people who signed in), then served. Credentials never go on a command line: the tests pass them by
environment, file and stdin, and check that no output carries them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ledger.commands import Context
from ledger.crypto import Keyring, MasterKey
from ledger.events import Actor
from ledger.service import Ledger
from ledger.sqlite_store import SqliteRecorder
from projections.sqlite_tables import all_projectors
from tests.api.test_connected_apps_api import grant
from tests.api.test_people_api import ISSUER, SIGN_IN_CONTEXT
from tests.oidc_server import OidcServer, oidc_server
from tests.test_cli_e2e import (
    ADMIN_TOKEN,
    HOST,
    Server,
    clean_env,
    cli,
    free_port,
    http,
    ok,
    one_error_line,
    start_server,
)

__all__ = ["oidc_server"]  # the imported module-scoped fixture

ORG = "people"
ADMIN = Context(actor=Actor(key_id="admin", label="admin token", kind="admin"))


@dataclass
class Seeded:
    api_key: str
    member_key: str
    ada: str  # member ids
    bob: str


async def seed(db: Path, master_key: MasterKey) -> tuple[str, str, str]:
    """An org with SSO settings and two people who signed in: (admin API key, ada's and bob's member ids)."""
    ledger = Ledger(SqliteRecorder(db, all_projectors()), Keyring(master_key))
    await ledger.start()
    try:
        created = await ledger.create_org(ADMIN, ORG)
        as_key = Context(actor=Actor(key_id=created.key_id, label=created.label, kind="api_key"))
        await ledger.upsert_secret(as_key, ORG, "sso-secret", b"the dashboard's client secret")
        await ledger.configure_sso(as_key, ORG, issuer=ISSUER, client_id="dashboard", client_secret_name="sso-secret",
                                   allowed_domains=["example.com"])
        people = [await ledger.sign_in_person(SIGN_IN_CONTEXT, ORG, issuer=ISSUER, subject=sub,
                                              email=f"{sub}@example.com", session_id=secrets.token_urlsafe(24))
                  for sub in ("ada", "bob")]
        return created.api_key, people[0].member_id, people[1].member_id
    finally:
        await ledger.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Seeded]]:
    folder = tmp_path_factory.mktemp("cli-people")
    master_key, master_key_text = MasterKey.generate()
    db = folder / "k.db"
    api_key, ada, bob = asyncio.run(seed(db, master_key))
    env = clean_env(KEYLEDGER_MASTER_KEY=master_key_text, KEYLEDGER_ADMIN_TOKEN=ADMIN_TOKEN)
    server = start_server(folder, ["--host", HOST, "--port", str(free_port()), "--db", str(db)], env)
    try:
        created = http(server, "POST", "/v1/keys", api_key, json={"label": "member", "role": "member",
                                                                  "scope": "agents"})
        assert created.status_code == 201, created.text
        yield server, Seeded(api_key=api_key, member_key=created.json()["api_key"], ada=ada, bob=bob)
    finally:
        server.stop()


def events_of(server: Server, event_type: str) -> list[dict[str, object]]:
    conn = sqlite3.connect(f"file:{server.db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT body FROM events WHERE org = ? AND type = ? ORDER BY seq",
                            (ORG, event_type)).fetchall()
    finally:
        conn.close()
    return [json.loads(body) for (body,) in rows]


def test_members_list_role_and_remove(served: tuple[Server, Seeded]) -> None:
    server, seeded = served
    listed = json.loads(ok(cli(server.url, "members", "list", "-o", "json", key=seeded.member_key)).stdout)
    assert [(p["member_id"], p["email"], p["role"], p["subject"]) for p in listed] == [
        (seeded.ada, "ada@example.com", "admin", "ada"), (seeded.bob, "bob@example.com", "member", "bob")]
    assert "(HTTP 403)" in one_error_line(cli(server.url, "members", "role", seeded.bob, "admin",
                                              key=seeded.member_key))
    changed = json.loads(ok(cli(server.url, "members", "role", seeded.bob, "admin", "-o", "json",
                                key=seeded.api_key)).stdout)
    assert (changed["member_id"], changed["role"]) == (seeded.bob, "admin")
    (event,) = events_of(server, "member.role_changed")
    assert (event["member_id"], event["role"]) == (seeded.bob, "admin")
    removed = ok(cli(server.url, "members", "remove", seeded.bob, key=seeded.api_key))
    assert seeded.bob in removed.stderr and removed.stdout == ""
    rows = ok(cli(server.url, "members", "list", "-o", "env", key=seeded.api_key)).stdout
    assert f"MEMBER_ID={seeded.ada}\nEMAIL=ada@example.com\nROLE=admin\n" in rows and "bob" not in rows


def test_sso_show_set_and_remove(served: tuple[Server, Seeded]) -> None:
    server, seeded = served
    shown = json.loads(ok(cli(server.url, "sso", "show", "-o", "json", key=seeded.member_key)).stdout)
    assert (shown["issuer"], shown["client_id"], shown["allowed_domains"]) == (ISSUER, "dashboard", ["example.com"])
    set_ = ok(cli(server.url, "sso", "set", "--issuer", "https://login.example.com/", "--client-id", "dash-2",
                  "--client-secret-name", "sso-secret", "--domain", "Example.com", "--domain", "example.org",
                  "-o", "env", key=seeded.api_key)).stdout
    assert "ISSUER=https://login.example.com/\n" in set_ and "ALLOWED_DOMAINS='example.com example.org'" in set_
    ok(cli(server.url, "sso", "remove", key=seeded.api_key))
    gone = cli(server.url, "sso", "show", key=seeded.api_key)
    assert gone.returncode == 3 and "no single sign-on" in one_error_line(gone)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# The child of `keyledger run` shows digests of the variables, never the tokens themselves.
PRINT_DIGESTS = ("import hashlib, os; print(' '.join(hashlib.sha256(os.environ.get(v, '').encode()).hexdigest() "
                 "for v in ('IDP_ACCESS_TOKEN', 'MY_TOKEN')))")


def test_apps_connect_token_run_and_disconnect(served: tuple[Server, Seeded], oidc_server: OidcServer,
                                               tmp_path: Path) -> None:
    server, seeded = served
    found = grant(oidc_server, "cli-user")
    assert found.tokens.refresh_token is not None
    planted = [found.client_secret, found.tokens.access_token, found.tokens.refresh_token]
    refresh_file = tmp_path / "refresh-token"
    refresh_file.write_text(found.tokens.refresh_token + "\n")
    connect = ["apps", "connect", "idp", "--provider", "custom", "--client-id", found.client_id,
               "--authorization-url", oidc_server.authorization_endpoint, "--token-url", oidc_server.token_endpoint,
               "--oauth-scope", "email", "--expires-in", "30", "--access-token-file", "-",
               "--refresh-token-file", str(refresh_file), "-o", "json"]
    # Without a client secret (no file, no variable, no terminal to ask on): refused before anything is sent.
    missing = cli(server.url, *connect, key=seeded.api_key, stdin=found.tokens.access_token)
    assert missing.returncode == 2 and "no client secret" in one_error_line(missing)
    secret_env = {"KEYLEDGER_CLIENT_SECRET": found.client_secret}
    connected = ok(cli(server.url, *connect, key=seeded.api_key, stdin=found.tokens.access_token + "\n",
                       env=secret_env))
    info = json.loads(connected.stdout)
    assert (info["name"], info["state"], info["token_version"], info["scopes"]) == ("idp", "connected", 1, ["email"])
    assert not [t for t in planted if t in connected.stdout + connected.stderr]

    # Due at once (30 s): refreshed at the authorization server; only the token on stdout, for $(...).
    answered = ok(cli(server.url, "apps", "token", "idp", "--reason", "deploy", key=seeded.member_key))
    fresh = answered.stdout
    assert fresh not in planted and oidc_server.access_token_active(fresh)
    assert "\n" not in fresh and "refreshed" in answered.stderr
    whole = json.loads(ok(cli(server.url, "apps", "token", "idp", "-o", "json", key=seeded.api_key)).stdout)
    assert (whole["access_token"], whole["refreshed"], whole["token_version"]) == (fresh, False, 2)
    shown = ok(cli(server.url, "apps", "show", "idp", "-o", "json", key=seeded.api_key)).stdout
    assert json.loads(shown)["token_version"] == 2 and fresh not in shown
    listed = ok(cli(server.url, "apps", "list", "-o", "json", key=seeded.api_key)).stdout
    assert [(a["name"], a["state"]) for a in json.loads(listed)] == [("idp", "connected")] and fresh not in listed
    reasons = [e["reason"] for e in events_of(server, "app.token_revealed")]
    assert reasons == ["deploy", ""]

    # `run --app`: the token in IDP_ACCESS_TOKEN and in a chosen variable, each fetch a recorded reveal.
    ran = ok(cli(server.url, "run", "--only", "sso-secret", "--app", "idp", "--app", "idp=MY_TOKEN", "--",
                 sys.executable, "-c", PRINT_DIGESTS, key=seeded.api_key))
    assert ran.stdout.split() == [sha256(fresh), sha256(fresh)]
    assert fresh not in ran.stdout + ran.stderr
    assert [e["reason"] for e in events_of(server, "app.token_revealed")][2:] == ["keyledger run"] * 2
    bad = cli(server.url, "run", "--app", "1idp", "--", "true", key=seeded.api_key)
    assert bad.returncode == 2 and "NAME=VAR" in one_error_line(bad)

    ok(cli(server.url, "apps", "disconnect", "idp", key=seeded.api_key))
    gone = cli(server.url, "apps", "token", "idp", key=seeded.api_key)
    assert gone.returncode == 3 and "not found" in one_error_line(gone)
    gone = cli(server.url, "run", "--app", "idp", "--", "true", key=seeded.api_key)
    assert gone.returncode == 3 and gone.stderr.splitlines()[-1].startswith("error: app idp: "), gone.stderr
    assert not [t for t in [*planted, fresh] if t in server.output()]
