"""Import from and export to AWS Secrets Manager, for the CLI: keyledger through its HTTP API, AWS through boto3.

Values travel only inside this process, from one client to the other: they are never logged, printed, or put
in a result or an exception. A run's results say, per secret, what happened or would happen, and why.

Names: keyledger names cannot contain '/', which AWS names often do, while AWS names cannot contain ':'.
So '/' in an AWS name becomes ':' in keyledger, and ':' in a keyledger name becomes '/' in AWS: the mapping
is one-to-one, and an imported secret exports back under its AWS name (prod/openai <-> prod:openai).
A name prefix may be written either way (prod/ or prod:) for both directions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any, Literal

import msgspec

from api.client import ClientError, KeyledgerClient
from ledger.aws_sm import AwsSecretsManager
from ledger.errors import ExternalSecretError

Outcome = Literal["created", "updated", "unchanged", "skipped", "failed", "would_create", "would_update"]
Progress = Callable[[int, int], None]

MAX_KEYLEDGER_NAME_CHARS = 256
MAX_AWS_DESCRIPTION_CHARS = 2048
AWS_NAME = re.compile(r"^[A-Za-z0-9/_+=.@-]{1,512}$")
KEYLEDGER_PAGE = 1000
EXPORT_REASON = "export to aws-sm"


class SyncResult(msgspec.Struct, frozen=True, kw_only=True):
    """What happened to one secret. `source` is its name where it was read, `target` its name where it was
    (or would be) written, `reason` why it was skipped or failed. Never a value."""

    source: str
    target: str
    outcome: Outcome
    reason: str = ""


def keyledger_name_for(aws_name: str) -> str | None:
    """The keyledger name of an AWS secret ('/' becomes ':'), or None if keyledger cannot hold it (too long)."""
    name = aws_name.replace("/", ":")
    return name if 0 < len(name) <= MAX_KEYLEDGER_NAME_CHARS else None


def aws_name_for(keyledger_name: str) -> str | None:
    """The AWS name of a keyledger secret (':' becomes '/'), or None if it has characters AWS does not allow."""
    name = keyledger_name.replace(":", "/")
    return name if AWS_NAME.match(name) else None


def keyledger_secrets(keyledger: KeyledgerClient) -> Iterator[dict[str, Any]]:
    """The metadata of every live keyledger secret, page by page."""
    params: dict[str, Any] = {"limit": KEYLEDGER_PAGE}
    while True:
        page = keyledger.request("GET", "/v1/secrets", params=params)
        yield from page["secrets"]
        if not page.get("next_cursor"):
            return
        params["cursor"] = page["next_cursor"]


def import_from_aws(
    keyledger: KeyledgerClient,
    aws: AwsSecretsManager,
    *,
    region: str,
    prefix: str = "",
    dry_run: bool = False,
    skip_existing: bool = False,
    category: str | None = None,
    scope: str | None = None,
    progress: Progress | None = None,
) -> list[SyncResult]:
    """Copy the current value of every AWS secret whose name starts with `prefix` into keyledger.

    - The keyledger name is the AWS name with '/' as ':' (see the module); a name longer than keyledger allows
      is skipped.
    - A secret that exists in keyledger gets a new version ("updated"): telling an unchanged value would take a
      recorded reveal of every keyledger value. With `skip_existing` it is left alone, its AWS value unread.
    - A keyledger secret that is a reference to an external manager is never overwritten.
    - Binary values (SecretBinary) are skipped: keyledger values are text, and base64 would silently change
      what every consumer reads.
    - The AWS description becomes the keyledger description; `category` and `scope` apply to every imported
      secret (None: the server's defaults for a new secret, the current ones for an existing secret).
    - `dry_run` reads no value and writes nothing: the results say "would_create" or "would_update".

    Failing to list either side raises (ExternalSecretError or ClientError); a failure of one secret is
    reported in its result and the run goes on.
    """
    sources = aws.list_secrets(region, prefix.replace(":", "/"))
    existing = {row["name"]: row for row in keyledger_secrets(keyledger)}
    results: list[SyncResult] = []
    for done, source in enumerate(sources, start=1):
        results.append(_import_one(keyledger, aws, region, source.name, source.description, existing,
                                   dry_run=dry_run, skip_existing=skip_existing, category=category, scope=scope))
        if progress is not None:
            progress(done, len(sources))
    return results


def _import_one(
    keyledger: KeyledgerClient,
    aws: AwsSecretsManager,
    region: str,
    aws_name: str,
    description: str,
    existing: dict[str, dict[str, Any]],
    *,
    dry_run: bool,
    skip_existing: bool,
    category: str | None,
    scope: str | None,
) -> SyncResult:
    target = keyledger_name_for(aws_name)
    if target is None:
        return SyncResult(source=aws_name, target="", outcome="skipped",
                          reason=f"the name is longer than keyledger's {MAX_KEYLEDGER_NAME_CHARS} characters")
    current = existing.get(target)
    if current is not None and current.get("external"):
        return SyncResult(source=aws_name, target=target, outcome="skipped",
                          reason=f"in keyledger it is a reference to {current['external']}: not overwritten")
    if current is not None and skip_existing:
        return SyncResult(source=aws_name, target=target, outcome="skipped", reason="exists in keyledger")
    if dry_run:
        return SyncResult(source=aws_name, target=target,
                          outcome="would_update" if current is not None else "would_create")
    try:
        value = aws.get_value(region, aws_name)
    except ExternalSecretError as exc:
        return SyncResult(source=aws_name, target=target, outcome="failed", reason=f"{exc.reason}: {exc}")
    if value.text is None:
        return SyncResult(source=aws_name, target=target, outcome="skipped",
                          reason="a binary value (SecretBinary): keyledger values are text")
    body: dict[str, Any] = {"name": target, "value": value.text}
    for field, given in (("description", description or None), ("category", category), ("scope", scope)):
        if given is not None:
            body[field] = given
    try:
        keyledger.request("POST", "/v1/secrets", json=body)
    except ClientError as exc:
        return SyncResult(source=aws_name, target=target, outcome="failed", reason=f"keyledger: {exc}")
    return SyncResult(source=aws_name, target=target, outcome="updated" if current is not None else "created")


def export_to_aws(
    keyledger: KeyledgerClient,
    aws: AwsSecretsManager,
    *,
    region: str,
    prefix: str = "",
    dry_run: bool = False,
    progress: Progress | None = None,
) -> list[SyncResult]:
    """Copy the current value of every keyledger secret whose name starts with `prefix` to AWS.

    - The AWS name is the keyledger name with ':' as '/' (see the module); a name with characters AWS does not
      allow is skipped.
    - Each value is revealed with the reason "export to aws-sm", so keyledger's audit records every export.
    - A new AWS secret is created (with the keyledger description); an existing one gets a new version, unless
      it already holds the value ("unchanged", nothing written).
    - Keyledger secrets that are references to an external manager are skipped: their value lives there.
    - `dry_run` reveals nothing and writes nothing: the results say "would_create" or "would_update".

    Failing to list either side raises (ExternalSecretError or ClientError); a failure of one secret is
    reported in its result and the run goes on.
    """
    prefix = prefix.replace("/", ":")
    sources = [row for row in keyledger_secrets(keyledger) if str(row["name"]).startswith(prefix)]
    in_aws = {info.name for info in aws.list_secrets(region, prefix.replace(":", "/"))} if sources else set()
    results: list[SyncResult] = []
    for done, row in enumerate(sources, start=1):
        results.append(_export_one(keyledger, aws, region, row, in_aws, dry_run=dry_run))
        if progress is not None:
            progress(done, len(sources))
    return results


def _export_one(
    keyledger: KeyledgerClient,
    aws: AwsSecretsManager,
    region: str,
    row: dict[str, Any],
    in_aws: set[str],
    *,
    dry_run: bool,
) -> SyncResult:
    name = str(row["name"])
    if row.get("external"):
        return SyncResult(source=name, target="", outcome="skipped",
                          reason=f"a reference to {row['external']}: its value lives there")
    target = aws_name_for(name)
    if target is None:
        return SyncResult(source=name, target="", outcome="skipped",
                          reason="AWS names allow only letters, digits and /_+=.@- (at most 512)")
    exists = target in in_aws
    if dry_run:
        return SyncResult(source=name, target=target, outcome="would_update" if exists else "would_create")
    try:
        revealed = keyledger.request("POST", KeyledgerClient.secret_path(name, "/reveal"),
                                     json={"reason": EXPORT_REASON})
    except ClientError as exc:
        return SyncResult(source=name, target=target, outcome="failed", reason=f"keyledger: {exc}")
    value = str(revealed["value"])
    try:
        if not exists:
            aws.create_secret(region, target, value, str(row.get("description") or "")[:MAX_AWS_DESCRIPTION_CHARS])
            return SyncResult(source=name, target=target, outcome="created")
        if _aws_holds(aws, region, target, value):
            return SyncResult(source=name, target=target, outcome="unchanged")
        aws.put_value(region, target, value)
    except ExternalSecretError as exc:
        return SyncResult(source=name, target=target, outcome="failed", reason=f"{exc.reason}: {exc}")
    return SyncResult(source=name, target=target, outcome="updated")


def _aws_holds(aws: AwsSecretsManager, region: str, name: str, value: str) -> bool:
    """Whether AWS's current value is `value` already; when it cannot be read (say, no GetSecretValue
    permission), it is taken as different and written."""
    try:
        current = aws.get_value(region, name)
    except ExternalSecretError:
        return False
    return current.text == value
