"""`keyledger import aws-sm` and `keyledger export aws-sm`: copy secrets between keyledger and AWS Secrets Manager.

AWS credentials, profile and endpoint come from the standard AWS settings; keyledger's from --url / --api-key
as for every client command. No value is ever printed: the output says, per secret, what happened.
boto3 is imported only when one of these commands runs, so that `keyledger --help` stays light.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click
import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from api.client import ClientError, KeyledgerClient
from ledger.errors import ExternalSecretError
from ledger.external import AWS_REGION

if TYPE_CHECKING:
    from api.external_sync import SyncResult
    from ledger.aws_sm import AwsSecretsManager

F = TypeVar("F", bound=Callable[..., Any])
COLUMNS = ["source", "target", "outcome", "reason"]
EXIT_BY_REASON = {"access_denied": 5, "not_found": 3}
ORDER = ["created", "updated", "unchanged", "would_create", "would_update", "skipped", "failed"]


def register(main: click.Group) -> None:
    """Add the `import` and `export` groups to the `keyledger` command."""
    main.add_command(import_group)
    main.add_command(export_group)


def aws_options(func: F) -> F:
    for option in reversed([
        click.option("--region", envvar=["AWS_REGION", "AWS_DEFAULT_REGION"], required=True, callback=_check_region,
                     help="The AWS region [env AWS_REGION or AWS_DEFAULT_REGION]."),
        click.option("--prefix", default="",
                     help="Only secrets whose name starts with this (case-sensitive; prod/ and prod: are the same)."),
        click.option("--dry-run", is_flag=True, help="Show what would happen: read no value, write nothing."),
        click.option("--yes", is_flag=True, help="Do not ask for confirmation."),
        click.option("-o", "--output", type=click.Choice(["table", "json"]), default=None,
                     help="Output format (default: table on a terminal, json otherwise)."),
    ]):
        func = option(func)
    return func


def _check_region(_ctx: click.Context, _param: click.Parameter, region: str) -> str:
    if not AWS_REGION.match(region):
        raise click.BadParameter("expected a region code such as us-east-1")
    return region


@click.group("import")
def import_group() -> None:
    """Copy secrets into keyledger from an external secret manager."""


@click.group("export")
def export_group() -> None:
    """Copy secrets from keyledger to an external secret manager."""


@import_group.command("aws-sm")
@aws_options
@click.option("--skip-existing", is_flag=True, help="Leave secrets that exist in keyledger as they are.")
@click.option("--category", type=click.Choice(["provider", "tool", "custom"]), default=None,
              help="The category of every imported secret (default: the server's, or the current one).")
@click.option("--scope", type=click.Choice(["all", "agents", "tools", "sandboxes"]), default=None,
              help="The scope of every imported secret (default: the server's, or the current one).")
@click.pass_context
def import_aws(ctx: click.Context, region: str, prefix: str, dry_run: bool, yes: bool, output: str | None,
               skip_existing: bool, category: str | None, scope: str | None) -> None:
    """Import AWS Secrets Manager secrets: each current value becomes a keyledger secret or a new version of one.

    An AWS name's '/' becomes ':' in keyledger (prod/openai -> prod:openai). Binary values are skipped."""
    from api.external_sync import import_from_aws  # noqa: PLC0415  (boto3 loads only for this command)

    def run(dry: bool, progress: Callable[[int, int], None] | None) -> list[SyncResult]:
        return import_from_aws(keyledger, aws, region=region, prefix=prefix, dry_run=dry, skip_existing=skip_existing,
                               category=category, scope=scope, progress=progress)

    with _clients(ctx) as (keyledger, aws):
        results = _run(run, dry_run=dry_run, yes=yes, label="importing",
                       question=f"Import {{count}} secrets from AWS Secrets Manager ({region}) into keyledger?")
    _report(results, output, f"import aws-sm ({region})", dry_run)


@export_group.command("aws-sm")
@aws_options
@click.pass_context
def export_aws(ctx: click.Context, region: str, prefix: str, dry_run: bool, yes: bool, output: str | None) -> None:
    """Export keyledger secrets to AWS Secrets Manager: each is revealed (recorded, reason "export to aws-sm"),
    then created in AWS or given a new version there.

    A keyledger name's ':' becomes '/' in AWS (prod:openai -> prod/openai). References are skipped."""
    from api.external_sync import export_to_aws  # noqa: PLC0415  (boto3 loads only for this command)

    def run(dry: bool, progress: Callable[[int, int], None] | None) -> list[SyncResult]:
        return export_to_aws(keyledger, aws, region=region, prefix=prefix, dry_run=dry, progress=progress)

    with _clients(ctx) as (keyledger, aws):
        results = _run(run, dry_run=dry_run, yes=yes, label="exporting",
                       question=f"Reveal {{count}} keyledger secrets and write them to AWS Secrets Manager ({region})?")
    _report(results, output, f"export aws-sm ({region})", dry_run)


@contextmanager
def _clients(ctx: click.Context) -> Iterator[tuple[KeyledgerClient, AwsSecretsManager]]:
    """The keyledger client and the AWS adapter; whole-run failures become one `error:` line."""
    from api import cli as base  # noqa: PLC0415  (api.cli imports this module to register its commands)
    from ledger.aws_sm import AwsSecretsManager  # noqa: PLC0415  (boto3 loads only for these commands)

    keyledger = base.client(ctx)
    try:
        yield keyledger, AwsSecretsManager(read_timeout=30.0, max_attempts=3)
    except ClientError as exc:
        base.fail(str(exc), exc.exit_code)
    except ExternalSecretError as exc:
        base.fail(str(exc), EXIT_BY_REASON.get(exc.reason, 1))
    finally:
        keyledger.close()


def _run(
    run: Callable[[bool, Callable[[int, int], None] | None], list[SyncResult]],
    *,
    dry_run: bool,
    yes: bool,
    label: str,
    question: str,
) -> list[SyncResult]:
    """A dry run as asked; else, unless --yes, a dry run first to ask about its count; then the run, with a
    progress bar on a terminal."""
    if not dry_run and not yes:
        planned = run(True, None)
        count = sum(1 for result in planned if result.outcome in ("would_create", "would_update"))
        if count == 0:
            return planned
        click.confirm(question.format(count=count), abort=True, err=True)
    console = Console(stderr=True)
    if not console.is_terminal:  # a bar in a log or a pipe is noise
        return run(dry_run, None)
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return run(dry_run, progress)


def _report(results: list[SyncResult], output: str | None, what: str, dry_run: bool) -> None:
    from api import cli as base  # noqa: PLC0415  (api.cli imports this module to register its commands)

    base.emit([msgspec.to_builtins(result) for result in results], output, COLUMNS)
    counts: Counter[str] = Counter(result.outcome for result in results)
    summary = ", ".join(f"{counts[outcome]} {outcome.replace('_', ' ')}" for outcome in ORDER if counts[outcome])
    click.echo(f"{what}: {summary or 'no secrets'}{' (dry run: nothing read or written)' if dry_run else ''}",
               err=True)
    if counts["failed"]:
        raise SystemExit(1)
