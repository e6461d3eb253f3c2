"""The `keyledger` command: the server, the client commands, and offline tools.

Values never come from an argument (they would land in shell history and `ps`): they come from a
hidden prompt, standard input, or --value-file. Data goes to stdout, messages to stderr.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import click
import msgspec
from rich.console import Console
from rich.table import Table

from api.client import ClientError, KeyledgerClient

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_URL = "http://127.0.0.1:8000"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
err = Console(stderr=True)


def output_option(func: F) -> F:
    return click.option(
        "-o",
        "--output",
        type=click.Choice(["table", "json", "env"]),
        default=None,
        help="Output format (default: table on a terminal, json otherwise).",
    )(func)


def fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(code)


def client(ctx: click.Context) -> KeyledgerClient:
    obj = ctx.find_root().obj or {}
    return KeyledgerClient(obj.get("url") or DEFAULT_URL, obj.get("api_key"))


def call(ctx: click.Context, method: str, path: str, **kwargs: Any) -> Any:
    api = client(ctx)
    try:
        return api.request(method, path, **kwargs)
    except ClientError as exc:
        fail(str(exc), exc.exit_code)
    finally:
        api.close()


def emit(rows: list[dict[str, Any]] | dict[str, Any], output: str | None, columns: list[str]) -> None:
    fmt = output or ("table" if sys.stdout.isatty() else "json")
    if fmt == "json":
        click.echo(msgspec.json.encode(rows).decode())
        return
    items = rows if isinstance(rows, list) else [rows]
    if fmt == "env":
        for item in items:
            for column in columns:
                click.echo(f"{column.upper()}={shlex.quote(str(item.get(column, '')))}")
        return
    table = Table(*columns)
    for item in items:
        table.add_row(*("" if item.get(c) is None else str(item.get(c)) for c in columns))
    Console().print(table)


@click.group()
@click.option("--url", envvar="KEYLEDGER_URL", default=DEFAULT_URL, show_default=True, help="Server URL.")
@click.option("--api-key", envvar="KEYLEDGER_API_KEY", default=None, help="API key (prefer the env variable).")
@click.pass_context
def main(ctx: click.Context, url: str, api_key: str | None) -> None:
    """keyledger: secrets with a provable record of every action."""
    ctx.obj = {"url": url, "api_key": api_key}


# -- server ----------------------------------------------------------------------------------------


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--db", default=None, metavar="FILE|postgresql://...",
              help="A SQLite file, or a PostgreSQL URL [env KEYLEDGER_DB; default keyledger.db].")
@click.option("--dev", is_flag=True, help="Generate and keep a master key and a dev org's key beside the database.")
@click.option("--server", type=click.Choice(["uvicorn", "granian"]), default="uvicorn", show_default=True)
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Server processes (more than one needs PostgreSQL).")
def serve(host: str, port: int, db: str | None, dev: bool, server: str, workers: int) -> None:
    """Run the API server."""
    from api.server import dev_settings
    from api.server import serve as run_server
    from api.settings import Database, Settings
    from ledger.errors import LedgerError

    try:
        database = Database.parse(db or os.environ.get("KEYLEDGER_DB") or "keyledger.db", "--db")
    except ValueError as exc:
        fail(str(exc), 2)
        return
    try:
        settings = dev_settings(database) if dev else Settings.from_env(db=database)
    except LedgerError as exc:
        fail(f"{exc} (or run with --dev for a local trial)", 2)
        return
    try:
        run_server(settings, host, port, server, workers)
    except LedgerError as exc:
        fail(str(exc), 2)


# -- admin -----------------------------------------------------------------------------------------


@main.group()
def admin() -> None:
    """Operator commands (KEYLEDGER_ADMIN_TOKEN)."""


@admin.command("create-org")
@click.argument("org")
@click.option("--admin-token", envvar="KEYLEDGER_ADMIN_TOKEN", required=True, help="[env KEYLEDGER_ADMIN_TOKEN]")
@output_option
@click.pass_context
def create_org(ctx: click.Context, org: str, admin_token: str, output: str | None) -> None:
    """Create an org; prints its first (admin) API key, once."""
    api = KeyledgerClient(ctx.find_root().obj["url"], admin_token)
    try:
        created = api.request("POST", "/v1/admin/orgs", json={"org": org})
    except ClientError as exc:
        fail(str(exc), exc.exit_code)
    finally:
        api.close()
    emit(created, output, ["org", "key_id", "api_key"])


ROTATION = "/v1/admin/master-key/rotation"


@admin.command("rotate-master-key")
@click.option("--admin-token", envvar="KEYLEDGER_ADMIN_TOKEN", required=True, help="[env KEYLEDGER_ADMIN_TOKEN]")
@output_option
@click.pass_context
def rotate_master_key(ctx: click.Context, admin_token: str, output: str | None) -> None:
    """Re-wrap every data key under a new master key, read from KEYLEDGER_NEW_MASTER_KEY (never from argv).

    Shows the progress until the rotation is done, then what to set before restarting the servers."""
    new_key = os.environ.get("KEYLEDGER_NEW_MASTER_KEY")
    if not new_key:
        fail("set KEYLEDGER_NEW_MASTER_KEY to the new master key (it is never read from the command line)", 2)
    api = KeyledgerClient(ctx.find_root().obj["url"], admin_token)
    try:
        api.request("POST", "/v1/admin/master-key/rotate", json={"new_master_key": new_key})
        status = api.request("GET", ROTATION)
        idle_since = time.monotonic()
        with click.progressbar(length=max(int(status["total"]), 1), label="re-wrapping data keys",
                               file=sys.stderr) as bar:
            while True:
                bar.length = max(int(status["total"]), 1)
                bar.update(int(status["done"]) - bar.pos)
                if status["state"] in ("done", "failed"):
                    break
                if status["state"] != "running" and time.monotonic() - idle_since > 10:
                    fail(f"the rotation did not start (state: {status['state']})")
                time.sleep(0.2)
                status = api.request("GET", ROTATION)
    except ClientError as exc:
        fail(str(exc), exc.exit_code)
    finally:
        api.close()
    if status["state"] == "failed":
        fail(f"the rotation failed: {status['error']}")
    emit(status, output, ["state", "old_kek_id", "new_kek_id", "done", "total"])
    click.echo(
        f"rotated to master key {status['new_kek_id']}. Now set KEYLEDGER_MASTER_KEY to the new key and put the old "
        "one in KEYLEDGER_PREVIOUS_MASTER_KEYS, until every server has restarted with the new key.",
        err=True,
    )


# -- keys ------------------------------------------------------------------------------------------


@main.group()
def keys() -> None:
    """API keys of your org."""


@keys.command("create")
@click.option("--label", required=True)
@click.option("--role", type=click.Choice(["member", "admin"]), default="member", show_default=True)
@click.option("--scope", type=click.Choice(["all", "agents", "tools", "sandboxes"]), default="all", show_default=True)
@output_option
@click.pass_context
def keys_create(ctx: click.Context, label: str, role: str, scope: str, output: str | None) -> None:
    """Create a key (admin only); the key is printed this once."""
    created = call(ctx, "POST", "/v1/keys", json={"label": label, "role": role, "scope": scope})
    emit(created, output, ["key_id", "label", "role", "scope", "api_key"])


@keys.command("list")
@output_option
@click.pass_context
def keys_list(ctx: click.Context, output: str | None) -> None:
    """List active keys (never the keys themselves)."""
    listed = call(ctx, "GET", "/v1/keys")
    emit(listed["keys"], output, ["key_id", "label", "role", "scope", "created_at", "last_used_at"])


@keys.command("revoke")
@click.argument("key_id")
@click.pass_context
def keys_revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke a key; it stops working at once."""
    call(ctx, "DELETE", f"/v1/keys/{key_id}")
    click.echo(f"revoked {key_id}", err=True)


# -- ssh keys --------------------------------------------------------------------------------------

SSH_KEY_COLUMNS = ["ssh_key_id", "label", "algorithm", "bits", "fingerprint", "comment", "added_at", "added_by"]
MAX_PUBLIC_KEY_FILE = 65_536
# What a private key file looks like (OpenSSH, PEM, PuTTY): refused here, before anything is sent.
PRIVATE_KEY_MARKERS = ("PRIVATE KEY", "PuTTY-User-Key-File", "Private-Lines:")


def keygen_line(key: dict[str, Any]) -> str:
    """The key as `ssh-keygen -l` prints it: `256 SHA256:... comment (ED25519)`."""
    algorithm = str(key["algorithm"])
    kind = "ED25519" if algorithm == "ssh-ed25519" else "ECDSA" if algorithm.startswith("ecdsa-") else "RSA"
    return f"{key['bits']} {key['fingerprint']} {key['comment'] or 'no comment'} ({kind})"


@main.group("ssh-keys")
def ssh_keys() -> None:
    """SSH public keys of your org (for SSH access to its sandboxes)."""


@ssh_keys.command("list")
@output_option
@click.pass_context
def ssh_keys_list(ctx: click.Context, output: str | None) -> None:
    """List the org's SSH public keys."""
    listed = call(ctx, "GET", "/v1/ssh-keys")
    emit(listed["ssh_keys"], output, SSH_KEY_COLUMNS)


@ssh_keys.command("add")
@click.argument("public_key_file", metavar="[FILE|-]", required=False, type=click.File("rb"))
@click.option("--label", default=None, help="A label (default: the key's comment, else its type).")
@output_option
@click.pass_context
def ssh_keys_add(ctx: click.Context, public_key_file: click.File | None, label: str | None, output: str | None) -> None:
    """Add a public key from FILE (a .pub file) or stdin; prints it as `ssh-keygen -l` does."""
    if public_key_file is None:
        if sys.stdin.isatty():
            fail("give the public key file (e.g. ~/.ssh/id_ed25519.pub), or '-' and the key on stdin", 2)
        data: bytes = sys.stdin.buffer.read(MAX_PUBLIC_KEY_FILE + 1)
    else:
        data = public_key_file.read(MAX_PUBLIC_KEY_FILE + 1)  # type: ignore[attr-defined]
    text = data.decode("utf-8", "replace")
    if any(marker in text for marker in PRIVATE_KEY_MARKERS):
        fail("that is a private key: give the public key (the .pub file); nothing was sent", 2)
    if len(data) > MAX_PUBLIC_KEY_FILE:
        fail(f"the public key file is larger than {MAX_PUBLIC_KEY_FILE} bytes: it is not one public key", 2)
    body: dict[str, Any] = {"public_key": text}
    if label is not None:
        body["label"] = label
    added = call(ctx, "POST", "/v1/ssh-keys", json=body)
    if output in ("json", "env"):
        emit(added, output, ["ssh_key_id", *SSH_KEY_COLUMNS[1:]])
    else:
        click.echo(keygen_line(added))
    click.echo(f"added {added['ssh_key_id']}", err=True)


@ssh_keys.command("remove")
@click.argument("ssh_key_id")
@click.pass_context
def ssh_keys_remove(ctx: click.Context, ssh_key_id: str) -> None:
    """Remove an SSH key (admin keys, or the key that added it)."""
    call(ctx, "DELETE", f"/v1/ssh-keys/{quote(ssh_key_id, safe='')}")
    click.echo(f"removed {ssh_key_id}", err=True)


# -- secrets ---------------------------------------------------------------------------------------

METADATA = ["name", "scope", "category", "version", "description", "updated_at", "updated_by"]
DETAIL = [*METADATA, "created_at", "created_by"]


@main.group()
def secrets() -> None:
    """Secrets of your org."""


def read_value(value_file: click.File | None) -> str:
    if value_file is not None:
        data = value_file.read()  # type: ignore[attr-defined]
        text = data.decode() if isinstance(data, bytes) else str(data)
    elif not sys.stdin.isatty():
        text = sys.stdin.read()
    else:
        text = click.prompt("Value", hide_input=True, confirmation_prompt=True, err=True)
    return text[:-1] if text.endswith("\n") and value_file is None and not sys.stdin.isatty() else text


@secrets.command("set")
@click.argument("name")
@click.option("--value-file", type=click.File("rb"), default=None, help="Read the value from a file ('-': stdin).")
@click.option("--scope", type=click.Choice(["all", "agents", "tools", "sandboxes"]), default=None)
@click.option("--category", type=click.Choice(["provider", "tool", "custom"]), default=None)
@click.option("--description", default=None)
@click.option("--expires-at", default=None, metavar="TIME",
              help="When the value expires (RFC 3339); reveals fail after it. Default: keep the current expiry.")
@click.option("--no-expiry", is_flag=True, help="Remove the expiry.")
@click.option("--reference", is_flag=True,
              help="The value is a reference to an external manager (aws-sm://REGION/ID[#KEY], "
                   "vault-kv://MOUNT/PATH[#KEY]), fetched at each reveal.")
@output_option
@click.pass_context
def secrets_set(
    ctx: click.Context,
    name: str,
    value_file: click.File | None,
    scope: str | None,
    category: str | None,
    description: str | None,
    expires_at: str | None,
    no_expiry: bool,
    reference: bool,
    output: str | None,
) -> None:
    """Create a secret or give it a new value (from a hidden prompt, stdin, or --value-file)."""
    if expires_at is not None and no_expiry:
        fail("--expires-at and --no-expiry cannot be used together", 2)
    body: dict[str, Any] = {"name": name, "value": read_value(value_file)}
    if reference:
        body["reference"] = True
    for field, given in (("scope", scope), ("category", category), ("description", description)):
        if given is not None:
            body[field] = given
    if expires_at is not None or no_expiry:
        body["expires_at"] = expires_at
    meta = call(ctx, "POST", "/v1/secrets", json=body)
    emit(meta, output, METADATA)


def all_pages(ctx: click.Context, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every page of GET /v1/secrets with these parameters."""
    rows: list[dict[str, Any]] = []
    params = {"limit": 1000, **params}
    while True:
        page = call(ctx, "GET", "/v1/secrets", params=params)
        rows.extend(page["secrets"])
        if not page.get("next_cursor"):
            return rows
        params["cursor"] = page["next_cursor"]


@secrets.command("list")
@click.option("--scope", default=None)
@click.option("--category", default=None)
@output_option
@click.pass_context
def secrets_list(ctx: click.Context, scope: str | None, category: str | None, output: str | None) -> None:
    """List secrets (metadata only), every page."""
    params = {k: v for k, v in (("scope", scope), ("category", category)) if v}
    emit(all_pages(ctx, params), output, METADATA)


@secrets.command("deleted")
@output_option
@click.pass_context
def secrets_deleted(ctx: click.Context, output: str | None) -> None:
    """List deleted secrets that can still be restored, and when each will be destroyed (empty: kept until purged)."""
    emit(all_pages(ctx, {"deleted": "true"}), output, ["name", "version", "deleted_at", "destroy_at"])


@secrets.command("get")
@click.argument("name")
@output_option
@click.pass_context
def secrets_get(ctx: click.Context, name: str, output: str | None) -> None:
    """Show a secret's metadata."""
    emit(call(ctx, "GET", KeyledgerClient.secret_path(name)), output, DETAIL)


@secrets.command("versions")
@click.argument("name")
@output_option
@click.pass_context
def secrets_versions(ctx: click.Context, name: str, output: str | None) -> None:
    """List a secret's versions: who made each, when, how, and whether its value still exists."""
    answer = call(ctx, "GET", KeyledgerClient.secret_path(name, "/versions"))
    emit(answer["versions"], output, ["version", "how", "created_at", "created_by", "value_exists"])


@secrets.command("reveal")
@click.argument("name")
@click.option("--reason", default="", help="Recorded with the reveal.")
@click.option("--version", "version", type=click.IntRange(min=1), default=None,
              help="An earlier version (see `secrets versions`); default: the current one.")
@output_option
@click.pass_context
def secrets_reveal(ctx: click.Context, name: str, reason: str, version: int | None, output: str | None) -> None:
    """Print a secret's value (the reveal is recorded). Plain value by default."""
    body: dict[str, object] | None = {"reason": reason} if reason else None
    if version is not None:
        body = {**(body or {}), "version": version}
    revealed = call(ctx, "POST", KeyledgerClient.secret_path(name, "/reveal"), json=body)
    if output == "json":
        click.echo(msgspec.json.encode(revealed).decode())
    elif output == "env":
        click.echo(f"{revealed['name']}={shlex.quote(revealed['value'])}")
    else:
        click.echo(revealed["value"], nl=sys.stdout.isatty())


@secrets.command("rollback")
@click.argument("name")
@click.option("--version", "version", type=click.IntRange(min=1), required=True,
              help="The version whose value becomes current again (see `secrets versions`).")
@click.option("--if-match", type=click.IntRange(min=1), default=None, metavar="VERSION",
              help="Refuse unless the current version is this one.")
@output_option
@click.pass_context
def secrets_rollback(ctx: click.Context, name: str, version: int, if_match: int | None, output: str | None) -> None:
    """Make a new version holding an earlier version's value (the value is never sent)."""
    headers = None if if_match is None else {"If-Match": f'"{if_match}"'}
    meta = call(ctx, "POST", KeyledgerClient.secret_path(name, "/rollback"), json={"version": version}, headers=headers)
    emit(meta, output, DETAIL)
    click.echo(f"{name}: version {meta['version']} now holds the value of version {version}", err=True)


@secrets.command("delete")
@click.argument("name")
@click.option("--purge", is_flag=True,
              help="Destroy every version's value now, also of a deleted secret (admin keys; irreversible).")
@click.option("--yes", is_flag=True, help="Purge without asking for confirmation.")
@click.pass_context
def secrets_delete(ctx: click.Context, name: str, purge: bool, yes: bool) -> None:
    """Delete a secret; it can be restored until the org's recovery window ends (unless --purge)."""
    if purge and not yes:
        click.confirm(f"Destroy every version of {name!r} now? This cannot be undone", abort=True, err=True)
    call(ctx, "DELETE", KeyledgerClient.secret_path(name), params={"purge": "true"} if purge else None)
    if purge:
        click.echo(f"purged {name}: every version's value is destroyed", err=True)
    else:
        click.echo(f"deleted {name}; restore it with `keyledger secrets restore {shlex.quote(name)}` until the org's "
                   "recovery window ends", err=True)


@secrets.command("restore")
@click.argument("name")
@output_option
@click.pass_context
def secrets_restore(ctx: click.Context, name: str, output: str | None) -> None:
    """Bring back a deleted secret as it was, while the org's recovery window lasts (see `secrets deleted`)."""
    meta = call(ctx, "POST", KeyledgerClient.secret_path(name, "/restore"))
    emit(meta, output, DETAIL)
    click.echo(f"restored {name} as version {meta['version']}", err=True)


# -- reveal policies, rotation and pools ----------------------------------------------------------

POLICY = ["key_ids", "labels", "roles", "restricted"]
ROTATION_COLUMNS = ["interval_seconds", "rotator", "next_due_at", "failures", "in_flight"]
MEMBER_COLUMNS = ["member", "label", "state", "member_version", "added_at", "last_revealed_at", "reveals"]
_EVERY = re.compile(r"^([0-9]{1,9})([smhd]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _fmt(output: str | None) -> str:
    return output or ("table" if sys.stdout.isatty() else "json")


def _emit_answer(answer: dict[str, Any], shown: dict[str, Any], output: str | None, columns: list[str]) -> None:
    """JSON: the server's answer as it is; table and env: `shown`, its flattened form."""
    if _fmt(output) == "json":
        click.echo(msgspec.json.encode(answer).decode())
    else:
        emit(shown, output, columns)


def parse_every(text: str) -> int:
    """An interval such as 30d, 12h, 15m or 3600s (a bare number is seconds), in seconds."""
    found = _EVERY.fullmatch(text.strip())
    if found is None:
        raise click.BadParameter("use a number and a unit: 30d, 12h, 15m or 3600s", param_hint="--every")
    return int(found.group(1)) * _UNIT_SECONDS[found.group(2)]


def _rotator_text(rotator: dict[str, Any]) -> str:
    if rotator.get("kind") == "webhook":
        return f"webhook {rotator.get('url')}"
    prefix = f", prefix {rotator['prefix']!r}" if rotator.get("prefix") else ""
    return f"generator: {rotator.get('length')} {rotator.get('alphabet')}{prefix}"


def _show_policy(answer: dict[str, Any], output: str | None) -> None:
    shown = {k: ", ".join(answer[k]) if isinstance(answer[k], list) else answer[k] for k in POLICY}
    _emit_answer(answer, shown, output, POLICY)


def _show_rotation(answer: dict[str, Any], output: str | None) -> None:
    _emit_answer(answer, {**answer, "rotator": _rotator_text(answer["rotator"])}, output, ROTATION_COLUMNS)


@secrets.group("policy")
def secrets_policy() -> None:
    """Which keys may reveal a secret (on top of their scope)."""


@secrets_policy.command("get")
@click.argument("name")
@output_option
@click.pass_context
def policy_get(ctx: click.Context, name: str, output: str | None) -> None:
    """Show a secret's reveal policy (empty: any key whose scope covers it)."""
    _show_policy(call(ctx, "GET", KeyledgerClient.secret_path(name, "/policy")), output)


@secrets_policy.command("set")
@click.argument("name")
@click.option("--key-id", "key_ids", multiple=True, metavar="ID", help="A key that may reveal it (repeatable).")
@click.option("--label", "labels", multiple=True, metavar="GLOB",
              help="Keys whose label matches this `*` glob may reveal it (repeatable).")
@click.option("--role", "roles", multiple=True, type=click.Choice(["admin", "member"]),
              help="Keys of this role may reveal it (repeatable).")
@output_option
@click.pass_context
def policy_set(ctx: click.Context, name: str, key_ids: tuple[str, ...], labels: tuple[str, ...],
               roles: tuple[str, ...], output: str | None) -> None:
    """Replace a secret's reveal policy (admin keys); a key matching any entry may reveal it. No options: clear it."""
    body = {"key_ids": list(key_ids), "labels": list(labels), "roles": list(roles)}
    answer = call(ctx, "PUT", KeyledgerClient.secret_path(name, "/policy"), json=body)
    _show_policy(answer, output)
    if not answer["restricted"]:
        click.echo(f"{name}: no reveal policy; any key whose scope covers it may reveal it", err=True)


@secrets.group("rotation")
def secrets_rotation() -> None:
    """Automatic rotation of a secret's value."""


@secrets_rotation.command("get")
@click.argument("name")
@output_option
@click.pass_context
def rotation_get(ctx: click.Context, name: str, output: str | None) -> None:
    """Show a secret's rotation policy and when it is next due."""
    _show_rotation(call(ctx, "GET", KeyledgerClient.secret_path(name, "/rotation")), output)


@secrets_rotation.command("set")
@click.argument("name")
@click.option("--every", required=True, metavar="INTERVAL", help="How often: 30d, 12h, 15m or 3600s (at least 60s).")
@click.option("--generator", is_flag=True, help="New values are random tokens made by the server.")
@click.option("--length", type=click.IntRange(1, 4096), default=None, help="Generator: token length [default 40].")
@click.option("--alphabet", default=None,
              help="Generator: alphanumeric, hex, base64url, numeric, ascii-printable, or chars:CHARACTERS.")
@click.option("--prefix", default=None, help="Generator: a fixed prefix (e.g. sk_), not counted in the length.")
@click.option("--webhook", default=None, metavar="URL", help="New values come from this http(s) endpoint.")
@output_option
@click.pass_context
def rotation_set(ctx: click.Context, name: str, every: str, generator: bool, length: int | None,
                 alphabet: str | None, prefix: str | None, webhook: str | None, output: str | None) -> None:
    """Rotate a secret every INTERVAL, with a generator or a webhook; the first rotation is one interval away."""
    if generator == (webhook is not None):
        fail("give exactly one of --generator and --webhook", 2)
    if webhook is not None and (length, alphabet, prefix) != (None, None, None):
        fail("--length, --alphabet and --prefix apply to --generator only", 2)
    try:
        interval = parse_every(every)
    except click.BadParameter as exc:
        fail(f"--every: {exc.message}", 2)
        return
    rotator: dict[str, Any] = {"kind": "webhook", "url": webhook} if webhook is not None else {"kind": "generator"}
    for field, given in (("length", length), ("alphabet", alphabet), ("prefix", prefix)):
        if given is not None:
            rotator[field] = given
    answer = call(ctx, "PUT", KeyledgerClient.secret_path(name, "/rotation"),
                  json={"interval_seconds": interval, "rotator": rotator})
    _show_rotation(answer, output)


@secrets_rotation.command("remove")
@click.argument("name")
@click.pass_context
def rotation_remove(ctx: click.Context, name: str) -> None:
    """Stop rotating a secret automatically."""
    call(ctx, "DELETE", KeyledgerClient.secret_path(name, "/rotation"))
    click.echo(f"{name}: no longer rotated", err=True)


@secrets.command("rotate")
@click.argument("name")
@output_option
@click.pass_context
def secrets_rotate(ctx: click.Context, name: str, output: str | None) -> None:
    """Rotate a secret now with its rotator (the new value is not shown: reveal it)."""
    meta = call(ctx, "POST", KeyledgerClient.secret_path(name, "/rotate"))
    emit(meta, output, DETAIL)
    click.echo(f"rotated {name}: version {meta['version']}", err=True)


@secrets.group("members")
def secrets_members() -> None:
    """A key pool: members with their own values, answered in turn by reveals."""


def _member_path(name: str, member: str, suffix: str = "") -> str:
    return KeyledgerClient.secret_path(name, f"/members/{quote(member, safe='').replace('.', '%2E')}{suffix}")


@secrets_members.command("list")
@click.argument("name")
@output_option
@click.pass_context
def members_list(ctx: click.Context, name: str, output: str | None) -> None:
    """List a pool's members (never a value) and how reveals choose among them."""
    answer = call(ctx, "GET", KeyledgerClient.secret_path(name, "/members"))
    if _fmt(output) == "json":
        click.echo(msgspec.json.encode(answer).decode())
        return
    click.echo(f"{name}: selection {answer['selection']}", err=True)
    emit(answer["members"], output, MEMBER_COLUMNS)


@secrets_members.command("set")
@click.argument("name")
@click.argument("member")
@click.option("--label", default=None, help="A label for the member (default: kept, or empty for a new one).")
@click.option("--value-file", type=click.File("rb"), default=None, help="Read the value from a file ('-': stdin).")
@output_option
@click.pass_context
def members_set(ctx: click.Context, name: str, member: str, label: str | None, value_file: click.File | None,
                output: str | None) -> None:
    """Add a member to a pool, or give it a new value (from a hidden prompt, stdin, or --value-file)."""
    body: dict[str, Any] = {"value": read_value(value_file)}
    if label is not None:
        body["label"] = label
    emit(call(ctx, "PUT", _member_path(name, member), json=body), output, MEMBER_COLUMNS)


def _member_state(ctx: click.Context, name: str, member: str, action: str, reason: str | None,
                  output: str | None) -> None:
    body = {"reason": reason} if reason else None
    emit(call(ctx, "POST", _member_path(name, member, f"/{action}"), json=body), output, MEMBER_COLUMNS)


@secrets_members.command("disable")
@click.argument("name")
@click.argument("member")
@click.option("--reason", default=None, help="Recorded with the change.")
@output_option
@click.pass_context
def members_disable(ctx: click.Context, name: str, member: str, reason: str | None, output: str | None) -> None:
    """Disable a member: reveals skip it until it is enabled."""
    _member_state(ctx, name, member, "disable", reason, output)


@secrets_members.command("enable")
@click.argument("name")
@click.argument("member")
@click.option("--reason", default=None, help="Recorded with the change.")
@output_option
@click.pass_context
def members_enable(ctx: click.Context, name: str, member: str, reason: str | None, output: str | None) -> None:
    """Enable a disabled member again."""
    _member_state(ctx, name, member, "enable", reason, output)


@secrets_members.command("remove")
@click.argument("name")
@click.argument("member")
@click.pass_context
def members_remove(ctx: click.Context, name: str, member: str) -> None:
    """Remove a member; its value is destroyed."""
    call(ctx, "DELETE", _member_path(name, member))
    click.echo(f"removed member {member} of {name}", err=True)


@secrets.command("pool")
@click.argument("name")
@click.option("--selection", type=click.Choice(["round_robin", "least_recent"]), required=True,
              help="How reveals choose a member: in turn, or the least recently revealed.")
@output_option
@click.pass_context
def secrets_pool(ctx: click.Context, name: str, selection: str, output: str | None) -> None:
    """Choose how reveals of a pool pick a member."""
    answer = call(ctx, "PUT", KeyledgerClient.secret_path(name, "/pool"), json={"selection": selection})
    emit(answer, output, ["selection"])


# -- org -------------------------------------------------------------------------------------------


@main.group("org")
def org_group() -> None:
    """Your org's settings."""


@org_group.command("settings")
@click.option("--recovery-window-days", type=click.IntRange(0, 365), default=None,
              help="Change how many days deleted secrets stay restorable (admin keys; 0: destroyed at once).")
@output_option
@click.pass_context
def org_settings(ctx: click.Context, recovery_window_days: int | None, output: str | None) -> None:
    """Show the org's settings, or change them."""
    if recovery_window_days is None:
        answer = call(ctx, "GET", "/v1/org/settings")
    else:
        answer = call(ctx, "PUT", "/v1/org/settings", json={"recovery_window_days": recovery_window_days})
    emit(answer, output, ["org", "recovery_window_days"])


# -- people and single sign-on ---------------------------------------------------------------------

PERSON_COLUMNS = ["member_id", "email", "role", "subject", "joined_at", "last_sign_in_at"]
SSO_COLUMNS = ["issuer", "client_id", "client_secret_name", "allowed_domains", "changed_at"]


@main.group("members")
def members_group() -> None:
    """The org's people (they join by signing in to the dashboard through single sign-on)."""


@members_group.command("list")
@output_option
@click.pass_context
def people_list(ctx: click.Context, output: str | None) -> None:
    """List the org's people and their roles."""
    emit(call(ctx, "GET", "/v1/members")["members"], output, PERSON_COLUMNS)


@members_group.command("role")
@click.argument("member_id")
@click.argument("role", type=click.Choice(["admin", "member"]))
@output_option
@click.pass_context
def people_role(ctx: click.Context, member_id: str, role: str, output: str | None) -> None:
    """Change a person's role (admin keys)."""
    emit(call(ctx, "PATCH", f"/v1/members/{quote(member_id, safe='')}", json={"role": role}), output, PERSON_COLUMNS)


@members_group.command("remove")
@click.argument("member_id")
@click.pass_context
def people_remove(ctx: click.Context, member_id: str) -> None:
    """Remove a person (admin keys): their dashboard sessions end at once and they cannot sign in again."""
    call(ctx, "DELETE", f"/v1/members/{quote(member_id, safe='')}")
    click.echo(f"removed {member_id}", err=True)


@main.group("sso")
def sso_group() -> None:
    """The org's single sign-on (an OpenID Connect provider) for the dashboard."""


def _show_sso(answer: dict[str, Any], output: str | None) -> None:
    _emit_answer(answer, {**answer, "allowed_domains": " ".join(answer["allowed_domains"])}, output, SSO_COLUMNS)


@sso_group.command("show")
@output_option
@click.pass_context
def sso_show(ctx: click.Context, output: str | None) -> None:
    """Show the org's single sign-on settings."""
    _show_sso(call(ctx, "GET", "/v1/sso"), output)


@sso_group.command("set")
@click.option("--issuer", required=True, help="The provider's issuer URL (https), e.g. https://accounts.google.com.")
@click.option("--client-id", required=True, help="The dashboard's client id at the provider.")
@click.option("--client-secret-name", required=True, metavar="SECRET",
              help="The keyledger secret that holds the client secret (store it first with `secrets set`).")
@click.option("--domain", "domains", multiple=True, required=True, metavar="DOMAIN",
              help="An email domain whose people may sign in, e.g. example.com (repeatable).")
@output_option
@click.pass_context
def sso_set(ctx: click.Context, issuer: str, client_id: str, client_secret_name: str, domains: tuple[str, ...],
            output: str | None) -> None:
    """Set the org's OpenID Connect provider (admin keys); the client secret itself is a secret, named here."""
    body = {"issuer": issuer, "client_id": client_id, "client_secret_name": client_secret_name,
            "allowed_domains": list(domains)}
    _show_sso(call(ctx, "PUT", "/v1/sso", json=body), output)


@sso_group.command("remove")
@click.pass_context
def sso_remove(ctx: click.Context) -> None:
    """Stop single sign-on (admin keys); people keep their membership."""
    call(ctx, "DELETE", "/v1/sso")
    click.echo("single sign-on removed", err=True)


# -- connected apps --------------------------------------------------------------------------------

APP_COLUMNS = ["name", "provider", "state", "scope", "token_version", "expires_at", "last_refresh_at", "last_error"]
APP_DETAIL = [*APP_COLUMNS, "client_id", "scopes", "authorization_url", "token_url", "connected_at", "connected_by",
              "last_error_at"]
MAX_TOKEN_FILE = 65_536


def app_path(name: str, suffix: str = "") -> str:
    return f"/v1/connected-apps/{quote(name, safe='').replace('.', '%2E')}{suffix}"


def app_env_name(app: str) -> str:
    """The variable `run --app NAME` sets: NAME upper-cased, other characters as `_`, and `_ACCESS_TOKEN`."""
    return re.sub(r"[^A-Za-z0-9]", "_", app).upper() + "_ACCESS_TOKEN"


def _show_app(answer: dict[str, Any], output: str | None, columns: list[str]) -> None:
    _emit_answer(answer, {**answer, "scopes": " ".join(answer.get("scopes") or [])}, output, columns)


@main.group("apps")
def apps_group() -> None:
    """Connected apps: OAuth 2.0 connections whose access tokens keyledger hands out, refreshed when due."""


@apps_group.command("list")
@output_option
@click.pass_context
def apps_list(ctx: click.Context, output: str | None) -> None:
    """List the org's connected apps and their state (never a token)."""
    emit(call(ctx, "GET", "/v1/connected-apps")["apps"], output, APP_COLUMNS)


@apps_group.command("show")
@click.argument("name")
@output_option
@click.pass_context
def apps_show(ctx: click.Context, name: str, output: str | None) -> None:
    """Show one connected app: its endpoints, scopes, token version and health."""
    _show_app(call(ctx, "GET", app_path(name)), output, APP_DETAIL)


@apps_group.command("token")
@click.argument("name")
@click.option("--reason", default="", help="Recorded with the token's reveal.")
@output_option
@click.pass_context
def apps_token(ctx: click.Context, name: str, reason: str, output: str | None) -> None:
    """Print a valid access token of the app, refreshed first when due (recorded). Only the token by default,
    for `$(keyledger apps token NAME)`; -o json: the whole answer."""
    answer = call(ctx, "POST", app_path(name, "/token"), json={"reason": reason} if reason else None)
    if output == "json":
        click.echo(msgspec.json.encode(answer).decode())
    elif output == "env":
        click.echo(f"{app_env_name(answer['name'])}={shlex.quote(answer['access_token'])}")
    else:
        click.echo(answer["access_token"], nl=sys.stdout.isatty())
    if answer.get("refreshed"):
        click.echo(f"{name}: refreshed (token version {answer['token_version']})", err=True)


def _read_credential(option: str, source: click.File | None, env_name: str, *, prompt: str | None,
                     stdin_used: list[str]) -> str | None:
    """A credential from its file ('-': stdin, once), else its environment variable, else a hidden prompt on a
    terminal (when `prompt`); never from the command line."""
    if source is not None:
        if getattr(source, "name", "") == "<stdin>":
            if stdin_used:
                fail(f"{option} and {stdin_used[0]} cannot both read stdin", 2)
            stdin_used.append(option)
        data = source.read(MAX_TOKEN_FILE + 1)  # type: ignore[attr-defined]
        if len(data) > MAX_TOKEN_FILE:
            fail(f"{option}: the file is larger than {MAX_TOKEN_FILE} bytes", 2)
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        return text.strip()
    from_env = os.environ.get(env_name)
    if from_env:
        return from_env.strip()
    if prompt is not None and sys.stdin.isatty():
        return str(click.prompt(prompt, hide_input=True, err=True)).strip()
    return None


@apps_group.command("connect")
@click.argument("name")
@click.option("--provider", type=click.Choice(["github", "google", "slack", "custom"]), required=True,
              help="A preset fills the URLs; custom needs --authorization-url and --token-url.")
@click.option("--client-id", required=True, help="The OAuth client id.")
@click.option("--authorization-url", default=None, help="Default: the preset's.")
@click.option("--token-url", default=None, help="Default: the preset's (refreshes go there).")
@click.option("--oauth-scope", "oauth_scopes", multiple=True, metavar="SCOPE",
              help="An OAuth scope the tokens were granted (repeatable); sent again on refreshes.")
@click.option("--scope", type=click.Choice(["all", "agents", "tools", "sandboxes"]), default="all", show_default=True,
              help="Which API keys may get its tokens (as a secret's scope).")
@click.option("--expires-in", type=click.IntRange(min=1), default=None, metavar="SECONDS",
              help="Seconds until the access token expires (default: it does not).")
@click.option("--client-secret-file", type=click.File("rb"), default=None,
              help="Read the client secret from a file ('-': stdin) [else env KEYLEDGER_CLIENT_SECRET, or a prompt].")
@click.option("--access-token-file", type=click.File("rb"), default=None,
              help="Read the access token from a file ('-': stdin) [else env KEYLEDGER_ACCESS_TOKEN, or a prompt].")
@click.option("--refresh-token-file", type=click.File("rb"), default=None,
              help="Read the refresh token from a file ('-': stdin) [else env KEYLEDGER_REFRESH_TOKEN; optional].")
@output_option
@click.pass_context
def apps_connect(ctx: click.Context, name: str, provider: str, client_id: str, authorization_url: str | None,
                 token_url: str | None, oauth_scopes: tuple[str, ...], scope: str, expires_in: int | None,
                 client_secret_file: click.File | None, access_token_file: click.File | None,
                 refresh_token_file: click.File | None, output: str | None) -> None:
    """Connect an app with tokens obtained elsewhere (admin keys). The client secret and the tokens never come
    from the command line: from files (or stdin), KEYLEDGER_CLIENT_SECRET / KEYLEDGER_ACCESS_TOKEN /
    KEYLEDGER_REFRESH_TOKEN, or hidden prompts."""
    stdin_used: list[str] = []
    client_secret = _read_credential("--client-secret-file", client_secret_file, "KEYLEDGER_CLIENT_SECRET",
                                     prompt="Client secret", stdin_used=stdin_used)
    access_token = _read_credential("--access-token-file", access_token_file, "KEYLEDGER_ACCESS_TOKEN",
                                    prompt="Access token", stdin_used=stdin_used)
    refresh_token = _read_credential("--refresh-token-file", refresh_token_file, "KEYLEDGER_REFRESH_TOKEN",
                                     prompt=None, stdin_used=stdin_used)
    if not client_secret:
        fail("no client secret: use --client-secret-file or KEYLEDGER_CLIENT_SECRET", 2)
    if not access_token:
        fail("no access token: use --access-token-file or KEYLEDGER_ACCESS_TOKEN", 2)
    body: dict[str, Any] = {"name": name, "provider": provider, "client_id": client_id,
                            "client_secret": client_secret, "access_token": access_token,
                            "scopes": list(oauth_scopes), "scope": scope}
    for field, given in (("authorization_url", authorization_url), ("token_url", token_url),
                         ("refresh_token", refresh_token or None), ("expires_in", expires_in)):
        if given is not None:
            body[field] = given
    _show_app(call(ctx, "POST", "/v1/connected-apps", json=body), output, APP_DETAIL)
    click.echo(f"connected {name}", err=True)


@apps_group.command("disconnect")
@click.argument("name")
@click.pass_context
def apps_disconnect(ctx: click.Context, name: str) -> None:
    """Disconnect an app (admin keys): its stored tokens are destroyed."""
    call(ctx, "DELETE", app_path(name))
    click.echo(f"disconnected {name}", err=True)


# -- run -------------------------------------------------------------------------------------------


def parse_app_option(given: str) -> tuple[str, str]:
    """`NAME` or `NAME=VAR`: the app and the environment variable its access token goes in."""
    name, eq, var = given.partition("=")
    if not name:
        fail(f"--app {given!r}: give the app's name, e.g. --app github or --app github=GH_TOKEN", 2)
    var = var if eq else app_env_name(name)
    if not ENV_NAME.match(var):
        fail(f"--app {given!r}: {var!r} is not a valid environment variable name; choose one with NAME=VAR", 2)
    return name, var


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--only", "only", multiple=True, help="Reveal only these names (repeatable).")
@click.option("--app", "apps", multiple=True, metavar="NAME[=VAR]",
              help="Put a connected app's access token in VAR (default NAME_ACCESS_TOKEN, upper-cased; repeatable).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
@click.pass_context
def run(ctx: click.Context, only: tuple[str, ...], apps: tuple[str, ...], command: tuple[str, ...]) -> None:
    """Run COMMAND with secrets (and apps' access tokens, with --app) in its environment, each one a recorded
    reveal; exits with its code."""
    wanted_apps = [parse_app_option(given) for given in apps]
    names = list(only) or [row["name"] for row in all_pages(ctx, {})]
    env = dict(os.environ)
    api = client(ctx)
    try:
        for name in names:
            if not ENV_NAME.match(name):
                click.echo(f"skipped {name!r}: not a valid environment variable name", err=True)
                continue
            try:
                revealed = api.request(
                    "POST", KeyledgerClient.secret_path(name, "/reveal"), json={"reason": "keyledger run"}
                )
            except ClientError as exc:
                if only or exc.exit_code not in (5,):  # scope-denied secrets are skipped when not asked for
                    fail(f"{name}: {exc}", exc.exit_code)
                click.echo(f"skipped {name!r}: {exc}", err=True)
                continue
            env[name] = revealed["value"]
        for app, var in wanted_apps:
            try:
                answer = api.request("POST", app_path(app, "/token"), json={"reason": "keyledger run"})
            except ClientError as exc:
                fail(f"app {app}: {exc}", exc.exit_code)
            env[var] = answer["access_token"]
    finally:
        api.close()
    try:
        os.execvpe(command[0], list(command), env)  # noqa: S606
    except FileNotFoundError:
        fail(f"command not found: {command[0]}", 127)


# -- offline ---------------------------------------------------------------------------------------


def load_checkpoint(path: Path | None) -> Any:
    if path is None:
        return None
    from ledger.checkpoint import CheckpointError, parse_checkpoint

    try:
        return parse_checkpoint(path.read_text())
    except (CheckpointError, UnicodeDecodeError) as exc:
        fail(f"{path}: {exc}", 1)


@main.command()
@click.option("--db", required=True, metavar="FILE|postgresql://...", help="A SQLite file or a PostgreSQL URL.")
@click.option(
    "--checkpoint",
    "checkpoint_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="A signed checkpoint kept outside the database (catches truncation, rollback).",
)
def verify(db: str, checkpoint_file: Path | None) -> None:
    """Verify a ledger offline: every chain, every hash; names the first bad event.

    A SQLite file is read directly (a server may be running on it); a PostgreSQL database is read
    through its tables, with each org's stored checkpoint checked too."""
    from ledger.errors import LedgerError
    from ledger.sqlite_store import iter_rows
    from ledger.verify import verify_rows

    kind, where = _storage_location(db, "--db")
    checkpoint = load_checkpoint(checkpoint_file)
    extra = [checkpoint] if checkpoint else []
    if kind == "postgresql":
        from ledger.pg_store import PostgresRecorder
        from ledger.verify import verify_recorder

        async def check() -> Any:
            recorder = PostgresRecorder(where)
            await recorder.open()
            try:
                return await verify_recorder(recorder, checkpoints=extra)
            finally:
                await recorder.close()

        try:
            report = asyncio.run(check())
        except LedgerError as exc:
            fail(str(exc), 2)
    else:
        if not Path(where).is_file():
            fail(f"--db: no such SQLite file: {where}", 2)
        report = verify_rows(iter_rows(where), checkpoints=extra)
    click.echo(report.summary())
    raise SystemExit(0 if report.ok else 1)


@main.command()
@click.option("--db", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True)
def replay(db: Path) -> None:
    """Rebuild every projection from the first event (refused while a server holds the file)."""
    from ledger.errors import LedgerError
    from ledger.sqlite_store import SqliteRecorder
    from projections.sqlite_tables import all_projectors

    async def rebuild() -> None:
        recorder = SqliteRecorder(db, all_projectors())
        await recorder.open()
        try:
            total = await recorder.max_seq()
            with click.progressbar(length=total, label="replaying", file=sys.stderr) as bar:
                done = 0

                def progress(position: int, _total: int) -> None:
                    nonlocal done
                    bar.update(position - done)
                    done = position

                await recorder.rebuild_projections(progress)
        finally:
            await recorder.close()

    try:
        asyncio.run(rebuild())
    except LedgerError as exc:
        fail(str(exc), 2)
    click.echo("projections rebuilt", err=True)


def _storage_location(location: str, option: str) -> tuple[str, str]:
    """("postgresql", DSN) or ("sqlite", path), parsed as KEYLEDGER_DB is."""
    from api.settings import Database

    try:
        database = Database.parse(location, option)
    except ValueError as exc:
        fail(str(exc), 2)
        raise
    return ("postgresql", database.dsn) if database.dsn is not None else ("sqlite", str(database.path))


@main.command()
@click.option("--from", "source", required=True, metavar="sqlite:FILE|postgresql://...", help="The ledger to copy.")
@click.option("--to", "target", required=True, metavar="sqlite:FILE|postgresql://...",
              help="Where to copy it: empty, or holding an interrupted copy of the same ledger.")
def migrate(source: str, target: str) -> None:
    """Copy a whole ledger to another storage backend, every hash unchanged, then verify both sides.

    Every event (with its seq and hashes), every wrapped data key and each org's latest checkpoint
    move; the target's projections are built as the events arrive; idempotency records stay behind.
    An interrupted migration resumes when run again. Refused while a server holds a SQLite file.
    """
    import contextlib
    import sqlite3

    from ledger.errors import LedgerError
    from ledger.migrate import MigrationReport
    from ledger.migrate import migrate as copy_ledger
    from ledger.recorder import Recorder
    from ledger.verify import VerifyReport, verify_recorder

    from_kind, from_where = _storage_location(source, "--from")
    to_kind, to_where = _storage_location(target, "--to")
    if from_kind == "sqlite" and not Path(from_where).is_file():
        fail(f"--from: no such SQLite file: {from_where}", 2)
    if to_kind == "sqlite" and not Path(to_where).resolve().parent.is_dir():
        fail(f"--to: no such folder: {Path(to_where).parent}", 2)
    if from_kind == to_kind and (
        Path(from_where).resolve() == Path(to_where).resolve() if from_kind == "sqlite"
        else from_where.split("://", 1)[1].rstrip("/") == to_where.split("://", 1)[1].rstrip("/")
    ):
        fail("--from and --to name the same ledger", 2)

    def open_recorder(kind: str, where: str) -> Recorder:
        if kind == "postgresql":
            from ledger.pg_store import PostgresRecorder
            from projections.pg_tables import all_projectors as pg_projectors

            return PostgresRecorder(where, pg_projectors())
        from ledger.sqlite_store import SqliteRecorder
        from projections.sqlite_tables import all_projectors

        return SqliteRecorder(where, all_projectors())

    async def run() -> tuple[MigrationReport, VerifyReport, VerifyReport]:
        src = open_recorder(from_kind, from_where)
        dst = open_recorder(to_kind, to_where)
        await src.open()
        try:
            await dst.open()
            try:
                # The bar starts with the copy, once the target has been accepted (a refusal prints one line).
                with contextlib.ExitStack() as stack:
                    bars: list[Any] = []
                    done = 0

                    def progress(position: int, total: int) -> None:
                        nonlocal done
                        if not bars:
                            bars.append(stack.enter_context(
                                click.progressbar(length=total, label="migrating", file=sys.stderr)))
                        bars[0].update(position - done)
                        done = position

                    report = await copy_ledger(src, dst, progress)
                return report, await verify_recorder(src), await verify_recorder(dst)
            finally:
                await dst.close()
        finally:
            await src.close()

    try:
        report, checked_source, checked_target = asyncio.run(run())
    except (LedgerError, OSError, sqlite3.Error) as exc:
        fail(str(exc), 2)
    click.echo(report.summary(), err=True)
    ok = True
    for side, checked in (("source", checked_source), ("target", checked_target)):
        if not checked.ok:
            ok = False
            click.echo(f"{side}: {checked.summary()}")
        elif side == "target" and checked.orgs != checked_source.orgs:
            ok = False
            click.echo(f"target: FAILED: its chains end elsewhere than the source's ({checked.checked} events "
                       "checked); was the source written meanwhile? run migrate again to copy the rest")
        else:
            click.echo(f"{side}: ok, {checked.checked} events in {len(checked.orgs)} orgs verified")
    raise SystemExit(0 if ok else 1)


# -- audit and compliance ------------------------------------------------------------------------


@main.group()
def audit() -> None:
    """The audit record: query, export, verify."""


AUDIT_COLUMNS = ["seq", "time", "action", "actor", "secret", "version", "outcome", "request_id"]


def _flat(event: dict[str, Any]) -> dict[str, Any]:
    return {**event, "actor": (event.get("actor") or {}).get("label") or (event.get("actor") or {}).get("key_id")}


@audit.command("list")
@click.option("--action", default=None)
@click.option("--secret", default=None)
@click.option("--actor", default=None, help="key id")
@click.option("--outcome", type=click.Choice(["ok", "granted", "denied", "failed"]), default=None)
@click.option("--since", default=None, help="RFC 3339")
@click.option("--until", default=None, help="RFC 3339")
@click.option("--order", type=click.Choice(["newest", "oldest"]), default="newest")
@click.option("--limit", type=int, default=100)
@output_option
@click.pass_context
def audit_list(ctx: click.Context, /, output: str | None, **filters: Any) -> None:
    """Show the org's events (admin keys)."""
    params = {k: v for k, v in filters.items() if v is not None}
    page = call(ctx, "GET", "/v1/audit", params=params)
    emit([_flat(e) for e in page["events"]], output, AUDIT_COLUMNS)


@audit.command("export")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "ocsf"]), default="jsonl", show_default=True)
@click.option("-f", "--file", "out", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option(
    "--db",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Export offline from a database file instead of a server.",
)
@click.option("--org", default=None, help="The org to export (with --db).")
@click.pass_context
def audit_export(ctx: click.Context, fmt: str, out: Path, db: Path | None, org: str | None) -> None:
    """Write the org's events to a file, with a progress bar (JSON Lines verifies offline)."""
    if db is not None:
        if not org:
            fail("--org is required with --db", 2)
        assert org is not None
        count = _export_offline(db, org, fmt, out)
    else:
        count = _export_online(ctx, fmt, out)
    click.echo(f"wrote {count} events to {out}", err=True)


def _export_offline(db: Path, org: str, fmt: str, out: Path) -> int:
    from ledger.codec import decode_event
    from ledger.export import render
    from ledger.sqlite_store import count_org_records, iter_org_records

    total = count_org_records(db, org)
    count = 0
    with out.open("wb") as sink, click.progressbar(length=total, label="exporting", file=sys.stderr) as bar:

        def records() -> Any:
            nonlocal count
            for record in iter_org_records(db, org):
                count += 1
                bar.update(1)
                yield record, decode_event(record.body)

        for data in render(fmt, records()):
            sink.write(data)
    return count


def _export_online(ctx: click.Context, fmt: str, out: Path) -> int:
    import httpx

    obj = ctx.find_root().obj or {}
    token = obj.get("api_key")
    if not token:
        fail("no credentials: set KEYLEDGER_API_KEY (or pass --api-key)", 5)
    lines = 0
    try:
        with (
            httpx.Client(base_url=obj.get("url") or DEFAULT_URL, timeout=httpx.Timeout(30.0, read=None)) as http,
            http.stream(
                "GET", "/v1/audit/export", params={"format": fmt}, headers={"Authorization": f"Bearer {token}"}
            ) as response,
        ):
            if response.status_code >= 400:
                response.read()
                detail = msgspec.json.decode(response.content).get("detail", response.reason_phrase)
                fail(f"{detail} (HTTP {response.status_code})", 5 if response.status_code in (401, 403) else 1)
            with (
                out.open("wb") as sink,
                click.progressbar(
                    length=0, label="exporting", file=sys.stderr, show_eta=False, show_percent=False
                ) as bar,
            ):
                for data in response.iter_bytes():
                    sink.write(data)
                    new = data.count(b"\n")
                    lines += new
                    bar.update(new)
    except httpx.HTTPError as exc:
        fail(f"cannot reach the server: {type(exc).__name__}", 1)
    if fmt == "csv":  # quoted cells may hold newlines: count records, not lines
        import csv

        with out.open(newline="", encoding="utf-8") as written:
            return sum(1 for _ in csv.reader(written)) - 1
    return lines


@audit.command("verify")
@click.argument("export", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option(
    "--checkpoint", "checkpoint_file", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None
)
def audit_verify(export: Path, checkpoint_file: Path | None) -> None:
    """Verify a JSON Lines export of one org alone (and against a signed checkpoint)."""
    from ledger.export import verify_export

    checkpoint = load_checkpoint(checkpoint_file)
    with export.open("rb") as lines:
        report = verify_export(lines, checkpoint=checkpoint)
    click.echo(report.summary())
    raise SystemExit(0 if report.ok else 1)


@main.group()
def ledger() -> None:
    """Proof of the record: checkpoints."""


@ledger.command("checkpoint")
@click.option(
    "-f",
    "--file",
    "out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the checkpoint text here (keep it outside the database).",
)
@click.pass_context
def ledger_checkpoint(ctx: click.Context, out: Path | None) -> None:
    """Fetch a signed checkpoint of the org's head."""
    checkpoint = call(ctx, "GET", "/v1/ledger/checkpoint")
    if out is None:
        click.echo(checkpoint["text"], nl=False)
    else:
        out.write_text(checkpoint["text"])
        click.echo(f"checkpoint of {checkpoint['org']} at org_seq {checkpoint['org_seq']} written to {out}", err=True)


@main.group()
def compliance() -> None:
    """Compliance questions (admin keys); the same answers as GET /v1/compliance/..."""


def _compliance(ctx: click.Context, path: str, params: dict[str, Any], output: str | None) -> None:
    answer = call(ctx, "GET", f"/v1/compliance/{path}", params={k: v for k, v in params.items() if v is not None})
    if "secrets" in answer:
        emit(answer["secrets"], output, METADATA)
    elif "actors" in answer:
        emit(answer["actors"], output, ["actor_key_id", "actor_label", "reveals"])
    elif "events" in answer:
        emit([_flat(e) for e in answer["events"]], output, AUDIT_COLUMNS)
    elif (output or ("table" if sys.stdout.isatty() else "json")) == "json":
        click.echo(msgspec.json.encode(answer).decode())
    else:
        click.echo(
            f"{answer['secret']} v{answer['version']}: from {answer['created_at']} to {answer['replaced_at'] or 'now'}",
            err=True,
        )
        emit([_flat(e) for e in answer["reveals"]], output, AUDIT_COLUMNS)


@compliance.command("stale-secrets")
@click.option("--days", type=int, default=90, show_default=True)
@click.option("--as-of", default=None)
@output_option
@click.pass_context
def c_stale(ctx: click.Context, days: int, as_of: str | None, output: str | None) -> None:
    """Secrets not updated in N days."""
    _compliance(ctx, "stale-secrets", {"days": days, "as_of": as_of}, output)


@compliance.command("reveals")
@click.argument("secret")
@click.option("--since", default=None)
@click.option("--until", default=None)
@output_option
@click.pass_context
def c_reveals(ctx: click.Context, secret: str, since: str | None, until: str | None, output: str | None) -> None:
    """Who revealed SECRET in a window, with the version each saw."""
    _compliance(ctx, "reveals", {"secret": secret, "since": since, "until": until}, output)


@compliance.command("exposure")
@click.argument("secret")
@click.argument("version", type=int)
@output_option
@click.pass_context
def c_exposure(ctx: click.Context, secret: str, version: int, output: str | None) -> None:
    """Every reveal of one version of SECRET."""
    _compliance(ctx, "exposure", {"secret": secret, "version": version}, output)


@compliance.command("never-revealed")
@output_option
@click.pass_context
def c_never(ctx: click.Context, output: str | None) -> None:
    """Secrets never revealed."""
    _compliance(ctx, "never-revealed", {}, output)


@compliance.command("revoked-key-reveals")
@output_option
@click.pass_context
def c_revoked(ctx: click.Context, output: str | None) -> None:
    """Reveals made with keys that were later revoked."""
    _compliance(ctx, "revoked-key-reveals", {}, output)


@compliance.command("denied-reveals")
@click.option("--since", default=None)
@click.option("--until", default=None)
@output_option
@click.pass_context
def c_denied(ctx: click.Context, since: str | None, until: str | None, output: str | None) -> None:
    """Denied reveal attempts."""
    _compliance(ctx, "denied-reveals", {"since": since, "until": until}, output)


@compliance.command("expiring")
@click.option("--days", type=click.IntRange(0, 36500), default=30, show_default=True)
@output_option
@click.pass_context
def compliance_expiring(ctx: click.Context, days: int, output: str | None) -> None:
    """Live secrets expiring within DAYS days, and those expired already."""
    _compliance(ctx, "expiring", {"days": days}, output)


@compliance.command("reveal-counts")
@click.option("--since", default=None)
@click.option("--until", default=None)
@output_option
@click.pass_context
def c_counts(ctx: click.Context, since: str | None, until: str | None, output: str | None) -> None:
    """Reveal counts per actor."""
    _compliance(ctx, "reveal-counts", {"since": since, "until": until}, output)


ROTATION_ROWS = ["name", "status", "rotator", "interval_seconds", "next_due_at", "failures", "last_rotated_at",
                 "last_error"]


@compliance.command("rotations")
@click.option("--all", "everything", is_flag=True, help="Every rotation policy, not only failing or overdue ones.")
@output_option
@click.pass_context
def c_rotations(ctx: click.Context, everything: bool, output: str | None) -> None:
    """Rotations failing or overdue (--all: every rotation, with its status)."""
    answer = call(ctx, "GET", "/v1/compliance/rotations", params={"all": "true"} if everything else None)
    emit(answer["rotations"], output, ROTATION_ROWS)


@compliance.command("who-could-reveal")
@click.argument("secret")
@click.option("--at", default=None, metavar="TIME", help="RFC 3339 time (default: now).")
@output_option
@click.pass_context
def c_who_could_reveal(ctx: click.Context, secret: str, at: str | None, output: str | None) -> None:
    """Every key that could have revealed SECRET at a time: keys, scopes and the reveal policy as they were."""
    answer = call(ctx, "GET", "/v1/compliance/who-could-reveal",
                  params={k: v for k, v in (("secret", secret), ("at", at)) if v is not None})
    if _fmt(output) == "json":
        click.echo(msgspec.json.encode(answer).decode())
        return
    state = "did not exist" if not answer["exists"] else "had expired" if answer["expired"] else "existed"
    policy = answer["policy"]
    rules = "; ".join(f"{k}: {', '.join(policy[k])}" for k in ("key_ids", "labels", "roles") if policy[k])
    click.echo(f"{answer['secret']} at {answer['at']}: {state}; reveal policy: {rules or 'none'}", err=True)
    emit(answer["keys"], output, ["key_id", "label", "role", "scope"])


if __name__ == "__main__":
    # `python -m api.cli`: run the module proper (api.cli_external imports it by that name, so registering
    # from this copy would be a circular import).
    from api.cli import main as cli_main

    cli_main()
else:
    # The external secret managers' import and export commands (last: they use this module's helpers).
    from api.cli_external import register

    register(main)
