"""Import from and export to AWS Secrets Manager, end to end: a real keyledger server process on a loopback port
(the helpers of tests/test_cli_e2e.py), moto for AWS, and the click commands of api/cli_external.py run with
CliRunner on a group built here with `register` (as api/cli.py does for `main`), and once through the installed
`keyledger` command."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from api.cli_external import register
from api.client import KeyledgerClient
from api.external_sync import SyncResult, aws_name_for, export_to_aws, import_from_aws, keyledger_name_for
from ledger.aws_sm import AwsSecretsManager, AwsSecretValue
from tests.external.moto_server import MotoServer
from tests.test_cli_e2e import (
    ADMIN_TOKEN,
    Org,
    Server,
    http,
    reveal_over_http,
    served,
)
from tests.test_cli_e2e import cli as keyledger_command

CANARY = "sk-canary-0b5e77"
_orgs = itertools.count(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with served(tmp_path_factory.mktemp("sync")) as srv:
        yield srv


@pytest.fixture
def org(server: Server) -> Org:
    name = f"sync-{next(_orgs)}"
    response = http(server, "POST", "/v1/admin/orgs", ADMIN_TOKEN, json={"org": name})
    assert response.status_code == 201, response.text
    created = response.json()
    return Org(name=name, key_id=created["key_id"], api_key=created["api_key"])


@click.group()
@click.option("--url", envvar="KEYLEDGER_URL")
@click.option("--api-key", envvar="KEYLEDGER_API_KEY")
@click.pass_context
def root(ctx: click.Context, url: str, api_key: str) -> None:
    ctx.obj = {"url": url, "api_key": api_key}


register(root)


def cli(server: Server, org: Org, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(root, ["--url", server.url, "--api-key", org.api_key, *args], input=stdin)


def rows(result: Result) -> dict[str, dict[str, str]]:
    """The JSON output by source name; and no value anywhere in what the command printed."""
    assert CANARY not in result.stdout + result.stderr
    return {row["source"]: row for row in json.loads(result.stdout)}


def put(server: Server, org: Org, name: str, value: str, **fields: str) -> None:
    response = http(server, "POST", "/v1/secrets", org.api_key, json={"name": name, "value": value, **fields})
    assert response.status_code in (200, 201), response.text


def names_in_keyledger(server: Server, org: Org) -> list[str]:
    return [row["name"] for row in http(server, "GET", "/v1/secrets", org.api_key).json()["secrets"]]


def aws_value(aws: MotoServer, name: str, region: str = "us-east-1") -> str:
    return str(aws.client(region=region).get_secret_value(SecretId=name)["SecretString"])


def test_the_keyledger_command_has_the_import_and_export_groups() -> None:
    from api.cli import main

    assert {"import", "export"} <= set(main.commands)
    assert "aws-sm" in main.commands["import"].commands  # type: ignore[attr-defined]


# -- names -----------------------------------------------------------------------------------------


def test_the_name_mapping_is_one_to_one() -> None:
    assert keyledger_name_for("prod/openai/key") == "prod:openai:key"
    assert aws_name_for("prod:openai:key") == "prod/openai/key"
    assert keyledger_name_for("a" * 257) is None
    for unfit in ("has space", "caf\u00e9", "a|b", "a" * 513):
        assert aws_name_for(unfit) is None
    for aws_name in ("x", "a/b/c", "a_b+c=d.e@f-g", "p" * 256):
        assert aws_name_for(keyledger_name_for(aws_name) or "") == aws_name


# -- import ----------------------------------------------------------------------------------------


def test_import_dry_run_reads_no_value_and_writes_nothing(aws: MotoServer, server: Server, org: Org) -> None:
    sm = aws.client()
    sm.create_secret(Name="prod/openai", SecretString=CANARY)
    sm.create_secret(Name="plain", SecretString=CANARY)
    put(server, org, "plain", "kept")
    result = cli(server, org, "import", "aws-sm", "--region", "us-east-1", "--dry-run", "-o", "json")
    assert result.exit_code == 0, result.output
    assert {name: row["outcome"] for name, row in rows(result).items()} == {
        "prod/openai": "would_create", "plain": "would_update"}
    assert "dry run" in result.stderr
    assert names_in_keyledger(server, org) == ["plain"]
    assert reveal_over_http(server, org.api_key, "plain") == "kept"

    class Spy(AwsSecretsManager):
        reads = 0

        def get_value(self, region: str, secret_id: str, *, label: str | None = None) -> AwsSecretValue:
            Spy.reads += 1
            return super().get_value(region, secret_id, label=label)

    keyledger = KeyledgerClient(server.url, org.api_key)
    try:
        planned = import_from_aws(keyledger, Spy(), region="us-east-1", dry_run=True)
    finally:
        keyledger.close()
    assert len(planned) == 2
    assert Spy.reads == 0


def test_import_copies_values_under_mapped_names(aws: MotoServer, server: Server, org: Org) -> None:
    sm = aws.client()
    sm.create_secret(Name="prod/openai", SecretString=json.dumps({"api_key": CANARY}), Description="OpenAI key")
    sm.create_secret(Name="plain", SecretString=f"{CANARY}-plain")
    sm.create_secret(Name="blob", SecretBinary=CANARY.encode())
    sm.create_secret(Name="l" * 300, SecretString=CANARY)
    sm.create_secret(Name="other/x", SecretString=CANARY)
    put(server, org, "plain", "old")

    result = cli(server, org, "import", "aws-sm", "--region", "us-east-1", "--yes", "--category", "provider",
                 "-o", "json")
    assert result.exit_code == 0, result.output
    found = rows(result)
    assert {name: (row["target"], row["outcome"]) for name, row in found.items()} == {
        "prod/openai": ("prod:openai", "created"),
        "plain": ("plain", "updated"),
        "blob": ("blob", "skipped"),
        "l" * 300: ("", "skipped"),
        "other/x": ("other:x", "created"),
    }
    assert "binary" in found["blob"]["reason"]
    assert "256" in found["l" * 300]["reason"]
    assert "2 created, 1 updated, 2 skipped" in result.stderr
    assert reveal_over_http(server, org.api_key, "prod:openai") == json.dumps({"api_key": CANARY})
    assert reveal_over_http(server, org.api_key, "plain") == f"{CANARY}-plain"
    meta = http(server, "GET", "/v1/secrets/prod:openai", org.api_key).json()
    assert (meta["description"], meta["category"]) == ("OpenAI key", "provider")

    again = cli(server, org, "import", "aws-sm", "--region", "us-east-1", "--prefix", "prod:", "--skip-existing",
                "--yes", "-o", "json")
    assert again.exit_code == 0, again.output
    assert {name: row["outcome"] for name, row in rows(again).items()} == {"prod/openai": "skipped"}


def test_import_reports_failures_per_secret_and_exits_non_zero(aws: MotoServer, server: Server, org: Org) -> None:
    sm = aws.client()
    sm.create_secret(Name="good", SecretString=CANARY)
    sm.create_secret(Name="empty")  # a secret with no value yet: GetSecretValue fails
    result = cli(server, org, "import", "aws-sm", "--region", "us-east-1", "--yes", "-o", "json")
    assert result.exit_code == 1, result.output
    found = rows(result)
    assert found["good"]["outcome"] == "created"
    assert found["empty"]["outcome"] == "failed"
    assert "not_found" in found["empty"]["reason"]
    assert "1 failed" in result.stderr


def test_import_asks_before_writing(aws: MotoServer, server: Server, org: Org) -> None:
    aws.client().create_secret(Name="asked", SecretString=CANARY)
    declined = cli(server, org, "import", "aws-sm", "--region", "us-east-1", stdin="n\n")
    assert declined.exit_code == 1
    assert "Import 1 secrets" in declined.stderr
    assert names_in_keyledger(server, org) == []


def test_a_whole_run_failure_is_one_error_line(aws: MotoServer, server: Server, org: Org) -> None:
    with aws.enforce_iam():  # the fake credentials are unknown to IAM: ListSecrets is refused
        result = cli(server, org, "import", "aws-sm", "--region", "us-east-1", "--yes")
    assert result.exit_code == 5
    assert result.stderr.startswith("error: aws-sm://us-east-1 (ListSecrets): access denied")
    bad_key = CliRunner().invoke(root, ["--url", server.url, "--api-key", "rt_live_nope", "import", "aws-sm",
                                        "--region", "us-east-1", "--yes"])
    assert bad_key.exit_code == 5
    assert bad_key.stderr.startswith("error:")
    bad_region = cli(server, org, "import", "aws-sm", "--region", "Mars")
    assert bad_region.exit_code == 2


# -- export ----------------------------------------------------------------------------------------


def test_export_creates_updates_and_leaves_unchanged(aws: MotoServer, server: Server, org: Org) -> None:
    sm = aws.client()
    sm.create_secret(Name="db", SecretString="old")
    put(server, org, "db", f"{CANARY}-db")
    put(server, org, "team:api", f"{CANARY}-api", description="the team's API key")
    put(server, org, "has space", CANARY)

    dry = cli(server, org, "export", "aws-sm", "--region", "us-east-1", "--dry-run", "-o", "json")
    assert dry.exit_code == 0, dry.output
    assert {name: row["outcome"] for name, row in rows(dry).items()} == {
        "db": "would_update", "team:api": "would_create", "has space": "skipped"}
    assert aws_value(aws, "db") == "old"

    result = cli(server, org, "export", "aws-sm", "--region", "us-east-1", "--yes", "-o", "json")
    assert result.exit_code == 0, result.output
    assert {name: (row["target"], row["outcome"]) for name, row in rows(result).items()} == {
        "db": ("db", "updated"), "team:api": ("team/api", "created"), "has space": ("", "skipped")}
    assert aws_value(aws, "db") == f"{CANARY}-db"
    assert aws_value(aws, "team/api") == f"{CANARY}-api"
    assert sm.describe_secret(SecretId="team/api")["Description"] == "the team's API key"

    again = cli(server, org, "export", "aws-sm", "--region", "us-east-1", "--prefix", "team/", "--yes", "-o", "json")
    assert {name: row["outcome"] for name, row in rows(again).items()} == {"team:api": "unchanged"}
    audit = http(server, "GET", "/v1/audit", org.api_key, params={"action": "secret.revealed"}).text
    assert audit.count("export to aws-sm") == 3  # db, team:api, then team:api again


def test_export_reports_failures_per_secret(aws: MotoServer, server: Server, org: Org) -> None:
    sm = aws.client()
    sm.create_secret(Name="doomed", SecretString="x")
    sm.delete_secret(SecretId="doomed")  # scheduled for deletion: not listed, and its name cannot be reused
    put(server, org, "doomed", CANARY)
    put(server, org, "fine", CANARY)
    result = cli(server, org, "export", "aws-sm", "--region", "us-east-1", "--yes", "-o", "json")
    assert result.exit_code == 1, result.output
    found = rows(result)
    assert (found["fine"]["outcome"], found["doomed"]["outcome"]) == ("created", "failed")
    assert "aws-sm://us-east-1/doomed" in found["doomed"]["reason"]


class ReferenceLedger:
    """A keyledger client double listing one reference (the `external` metadata the lead's side will add) and
    one plain secret; it records the reveals asked of it."""

    def __init__(self) -> None:
        self.revealed: list[str] = []

    def request(self, method: str, path: str, **_: Any) -> Any:
        if method == "GET":
            return {"secrets": [{"name": "ref", "external": "aws-sm", "description": ""},
                                {"name": "plain", "description": ""}], "next_cursor": None}
        self.revealed.append(path)
        return {"name": "plain", "value": CANARY, "version": 1}


def test_export_skips_references_without_revealing_them(aws: MotoServer) -> None:
    ledger = ReferenceLedger()
    progress: list[tuple[int, int]] = []
    results = export_to_aws(ledger, AwsSecretsManager(), region="us-east-1",  # type: ignore[arg-type]
                            progress=lambda done, total: progress.append((done, total)))
    assert results == [
        SyncResult(source="ref", target="", outcome="skipped", reason="a reference to aws-sm: its value lives there"),
        SyncResult(source="plain", target="plain", outcome="created"),
    ]
    assert ledger.revealed == ["/v1/secrets/plain/reveal"]
    assert progress == [(1, 2), (2, 2)]


def test_import_then_export_round_trips_names_and_values(aws: MotoServer, server: Server, org: Org) -> None:
    source = {"app/db/password": f"{CANARY}-1", "app/api": f"{CANARY}-2", "top": f"{CANARY}-3"}
    for name, value in source.items():
        aws.client().create_secret(Name=name, SecretString=value)
    assert cli(server, org, "import", "aws-sm", "--region", "us-east-1", "--yes").exit_code == 0
    exported = cli(server, org, "export", "aws-sm", "--region", "eu-west-1", "--yes", "-o", "json")
    assert exported.exit_code == 0, exported.output
    assert {row["target"] for row in rows(exported).values()} == set(source)
    assert {name: aws_value(aws, name, "eu-west-1") for name in source} == source


def test_no_value_in_any_output_even_as_a_table(aws: MotoServer, server: Server, org: Org, tmp_path: Path) -> None:
    aws.client().create_secret(Name="canary/in", SecretString=CANARY)
    put(server, org, "canary:out", CANARY)
    outputs = []
    for args in (["import", "aws-sm", "--yes"], ["export", "aws-sm", "--yes"],
                 ["import", "aws-sm", "--yes", "-o", "table"], ["export", "aws-sm", "--dry-run"]):
        result = cli(server, org, *args, "--region", "us-east-1")
        assert result.exit_code == 0, result.output
        outputs.append(result.stdout + result.stderr)
    # With a terminal, a progress bar is drawn on stderr.
    terminal = CliRunner().invoke(root, ["--url", server.url, "--api-key", org.api_key, "export", "aws-sm", "--yes",
                                         "--region", "us-east-1", "-o", "json"],
                                  env={"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"})
    assert terminal.exit_code == 0, terminal.output
    assert "exporting" in terminal.stderr
    outputs.append(terminal.stdout + terminal.stderr)
    assert all(CANARY not in output for output in outputs)
    assert "canary:in" in outputs[2]


def test_the_installed_keyledger_command_exports_and_prints_no_value(aws: MotoServer, server: Server,
                                                                       org: Org) -> None:
    put(server, org, "via:binary", CANARY)
    result = keyledger_command(server.url, "export", "aws-sm", "--yes", "-o", "json", key=org.api_key, env=aws.env())
    assert result.returncode == 0, result.stderr
    assert CANARY not in result.stdout + result.stderr
    assert [row["outcome"] for row in json.loads(result.stdout)] == ["created"]
    assert aws_value(aws, "via/binary") == CANARY
