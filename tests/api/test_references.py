"""Secrets that are references to an external manager, over HTTP on both backends: AWS Secrets Manager
through real boto3 against moto's server mode on a loopback port, and Vault KV v2 through real hvac
against a real OpenBao dev server. A reveal fetches the value at that moment (never stored), is
recorded like any reveal, and a manager's error becomes a clear 502 recorded as `secret.reveal_failed`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from api.app import create_app
from api.settings import Settings
from ledger.aws_sm import AwsSecretsManager
from ledger.crypto import MasterKey
from ledger.external import ExternalStores
from ledger.vault_kv import VaultKv
from tests.api.conftest import (
    ADMIN_TOKEN,
    assert_problem,
    create_org,
    events_after,
    make_client,
    max_seq,
    query,
    secret_path,
)
from tests.external.moto_server import CLEARED_ENV, MotoServer, moto_server
from tests.external.openbao import OpenBao, openbao_server
from tests.pg import PgDsn

REGION = "us-east-1"
CANARY = "aws-canary-9d1f3b7e"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_server() as server:
        yield server


@pytest.fixture(scope="module")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    with openbao_server(tmp_path_factory.mktemp("openbao")) as server:
        yield server


@pytest.fixture
def aws(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    moto.reset()
    for name in CLEARED_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in moto.env().items():
        monkeypatch.setenv(name, value)
    return moto


@pytest.fixture
def client(db_file: Path | PgDsn, aws: MotoServer, openbao: OpenBao) -> Iterator[TestClient[Litestar]]:
    stores = ExternalStores([AwsSecretsManager(endpoint_url=aws.endpoint),
                             VaultKv(url=openbao.url, token=openbao.root_token)])
    settings = Settings(db=db_file, master_key=MasterKey.generate()[0], admin_token=ADMIN_TOKEN)
    with make_client(create_app(settings, external=stores)) as test_client:
        yield test_client


def reference(client: TestClient[Litestar], headers: dict[str, str], name: str, ref: str, expect: int = 201) -> dict:
    response = client.post("/v1/secrets", json={"name": name, "value": ref, "reference": True, "category": "provider"},
                           headers=headers)
    assert response.status_code == expect, response.text
    return dict(response.json())


def test_a_reference_reveals_the_current_external_value_and_stores_none_of_it(
    client: TestClient[Litestar], aws: MotoServer, db_file: Path | PgDsn
) -> None:
    acme = create_org(client, "acme")
    sm = aws.client()
    sm.create_secret(Name="prod/openai", SecretString=json.dumps({"api_key": CANARY + "-1", "org": "o"}))
    meta = reference(client, acme.headers, "OPENAI", f"aws-sm://{REGION}/prod/openai#api_key")
    assert meta["external"] == "aws-sm" and meta["version"] == 1
    assert client.get(secret_path("OPENAI"), headers=acme.headers).json()["external"] == "aws-sm"
    start = max_seq(db_file)
    response = client.post(secret_path("OPENAI", "/reveal"), json={"reason": "nightly"}, headers=acme.headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"name": "OPENAI", "value": CANARY + "-1", "version": 1, "external": "aws-sm"}
    assert response.headers["cache-control"] == "no-store"
    sm.put_secret_value(SecretId="prod/openai", SecretString=json.dumps({"api_key": CANARY + "-2"}))
    again = client.post(secret_path("OPENAI", "/reveal"), headers={**acme.headers, "Idempotency-Key": "k1"})
    assert again.json()["value"] == CANARY + "-2"  # fetched at each reveal
    retried = client.post(secret_path("OPENAI", "/reveal"), headers={**acme.headers, "Idempotency-Key": "k1"})
    assert retried.json()["value"] == CANARY + "-2" and "idempotent-replayed" not in retried.headers
    reveals = [e for e in events_after(db_file, start) if e["type"] == "secret.revealed"]
    assert [(e["name"], e["version"], e["external"]) for e in reveals] == [("OPENAI", 1, "aws-sm")] * 3
    # Nothing of the fetched values is anywhere in the database.
    for table in ("events", "idempotency", "audit", "secrets"):
        for row in query(db_file, f"SELECT * FROM {table}"):
            assert CANARY not in repr(row), table
    if isinstance(db_file, Path):
        assert CANARY.encode() not in db_file.read_bytes()


def test_errors_from_aws_are_clear_answers_recorded_as_failed_reveals(
    client: TestClient[Litestar], aws: MotoServer, db_file: Path | PgDsn
) -> None:
    acme = create_org(client, "acme")
    sm = aws.client()
    sm.create_secret(Name="plain", SecretString="not json " + CANARY)
    reference(client, acme.headers, "MISSING", f"aws-sm://{REGION}/prod/nothing-here")
    reference(client, acme.headers, "NOKEY", f"aws-sm://{REGION}/plain#api_key")
    start = max_seq(db_file)
    missing = client.post(secret_path("MISSING", "/reveal"), headers=acme.headers)
    assert_problem(missing, 502, "not found")
    wrong_shape = client.post(secret_path("NOKEY", "/reveal"), headers=acme.headers)
    body = assert_problem(wrong_shape, 502)
    assert CANARY not in json.dumps(body)
    kinds = [(e["type"], e["name"]) for e in events_after(db_file, start)]
    assert kinds == [("secret.revealed", "MISSING"), ("secret.reveal_failed", "MISSING"),
                     ("secret.revealed", "NOKEY"), ("secret.reveal_failed", "NOKEY")]
    failed = [e for e in events_after(db_file, start) if e["type"] == "secret.reveal_failed"]
    assert all(CANARY not in e["reason"] for e in failed)
    audit = client.get("/v1/audit", params={"action": "secret.reveal_failed"}, headers=acme.headers)
    assert audit.status_code == 200, audit.text
    assert [(e["secret"], e["outcome"]) for e in audit.json()["events"]] == [("NOKEY", "failed"),
                                                                            ("MISSING", "failed")]


def test_access_denied_by_aws_is_a_clear_answer(client: TestClient[Litestar], aws: MotoServer,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    acme = create_org(client, "acme")
    aws.client().create_secret(Name="guarded", SecretString=CANARY)
    denied = aws.user_denied_secrets()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", denied["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", denied["aws_secret_access_key"])
    reference(client, acme.headers, "GUARDED", f"aws-sm://{REGION}/guarded")
    with aws.enforce_iam():
        response = client.post(secret_path("GUARDED", "/reveal"), headers=acme.headers)
    body = assert_problem(response, 502, "denied")
    assert CANARY not in json.dumps(body)


def test_a_vault_kv_reference_reveals_through_a_real_server(client: TestClient[Litestar], openbao: OpenBao) -> None:
    acme = create_org(client, "acme")
    openbao.client().secrets.kv.v2.create_or_update_secret(path="app/db", secret={"password": CANARY},
                                                           mount_point="secret")
    reference(client, acme.headers, "DB_PASSWORD", "vault-kv://secret/app/db#password")
    response = client.post(secret_path("DB_PASSWORD", "/reveal"), headers=acme.headers)
    assert response.status_code == 200, response.text
    assert response.json()["value"] == CANARY and response.json()["external"] == "vault-kv"
    missing = reference(client, acme.headers, "GONE", "vault-kv://secret/app/nothing#password")
    assert missing["external"] == "vault-kv"
    assert_problem(client.post(secret_path("GONE", "/reveal"), headers=acme.headers), 502, "not found")


def test_bad_references_and_bodies_are_refused_and_record_nothing(client: TestClient[Litestar],
                                                                  db_file: Path | PgDsn) -> None:
    acme = create_org(client, "acme")
    start = max_seq(db_file)
    for body in ({"name": "X", "value": "aws-sm://not a region/x", "reference": True},
                 {"name": "X", "value": "ftp://x/y", "reference": True}, {"name": "X", "value": "v", "reference": True},
                 {"name": "X", "value": "aws-sm://us-east-1/a", "reference": "yes"}, {"name": "X", "reference": True}):
        assert_problem(client.post("/v1/secrets", json=body, headers=acme.headers), 422)
    assert max_seq(db_file) == start


def test_versions_of_a_reference_stay_references(client: TestClient[Litestar], aws: MotoServer) -> None:
    acme = create_org(client, "acme")
    aws.client().create_secret(Name="k", SecretString=CANARY)
    reference(client, acme.headers, "K", f"aws-sm://{REGION}/k")
    assert client.post("/v1/secrets", json={"name": "K", "value": "a plain value"},
                       headers=acme.headers).status_code == 200
    plain = client.get(secret_path("K"), headers=acme.headers).json()
    assert "external" not in plain
    assert client.post(secret_path("K", "/reveal"), headers=acme.headers).json()["value"] == "a plain value"
    rolled = client.post(secret_path("K", "/rollback"), json={"version": 1}, headers=acme.headers)
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["external"] == "aws-sm"
    assert client.post(secret_path("K", "/reveal"), headers=acme.headers).json()["value"] == CANARY


def test_a_failed_fetch_names_the_manager_not_the_reference_and_the_secret_stays_usable(
    client: TestClient[Litestar], aws: MotoServer, db_file: Path | PgDsn
) -> None:
    acme = create_org(client, "acme")
    secret_id = "internal/layout-7c1e0b"  # the reference is configuration, sealed like a value
    reference(client, acme.headers, "S", f"aws-sm://{REGION}/{secret_id}")
    start = max_seq(db_file)
    body = assert_problem(client.post(secret_path("S", "/reveal"), headers=acme.headers), 502, "aws-sm", "not found")
    assert secret_id not in json.dumps(body)
    (failed,) = [e for e in events_after(db_file, start) if e["type"] == "secret.reveal_failed"]
    assert secret_id not in failed["reason"] and failed["reason"].startswith("aws-sm: not found")
    for table in ("events", "audit"):
        assert all(secret_id not in repr(row) for row in query(db_file, f"SELECT * FROM {table}"))
    # The secret is as usable as before the failure.
    aws.client().create_secret(Name=secret_id, SecretString=CANARY)
    assert client.post(secret_path("S", "/reveal"), headers=acme.headers).json()["value"] == CANARY
    assert client.get(secret_path("S", "/policy"), headers=acme.headers).status_code == 200
    assert client.delete(secret_path("S"), headers=acme.headers).status_code == 204


def test_an_idempotent_reveal_of_an_earlier_reference_version_fetches_and_stores_nothing(
    client: TestClient[Litestar], aws: MotoServer, db_file: Path | PgDsn
) -> None:
    acme = create_org(client, "acme")
    aws.client().create_secret(Name="old", SecretString=CANARY)
    reference(client, acme.headers, "V", f"aws-sm://{REGION}/old")
    assert client.post("/v1/secrets", json={"name": "V", "value": "plain now"}, headers=acme.headers).status_code == 200
    headers = {**acme.headers, "Idempotency-Key": "old-version"}
    for _ in range(2):
        response = client.post(secret_path("V", "/reveal"), json={"version": 1}, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["value"] == CANARY and "idempotent-replayed" not in response.headers
    assert all(CANARY not in repr(row) for row in query(db_file, "SELECT * FROM idempotency"))
