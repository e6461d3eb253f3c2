"""The aws-sm adapter through real boto3 against moto's server mode on a loopback port."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import boto3
import pytest

from ledger.aws_sm import AwsSecretsManager
from ledger.errors import ExternalSecretError
from ledger.external import ExternalStores, parse_reference
from tests.external.moto_server import MotoServer

CANARY = "sk-canary-7f3a9c"


def fetch(adapter: AwsSecretsManager, text: str) -> bytes:
    return adapter.fetch(parse_reference(text))


def failure(adapter: AwsSecretsManager, text: str) -> ExternalSecretError:
    with pytest.raises(ExternalSecretError) as raised:
        fetch(adapter, text)
    assert CANARY not in str(raised.value)
    return raised.value


@pytest.fixture
def adapter(aws: MotoServer) -> AwsSecretsManager:
    """An adapter with an explicit endpoint, as tests register them (the environment points there too)."""
    return AwsSecretsManager(endpoint_url=aws.endpoint, max_attempts=1)


def test_values_come_back_as_bytes(aws: MotoServer, adapter: AwsSecretsManager) -> None:
    sm = aws.client()
    sm.create_secret(Name="plain", SecretString=f"{CANARY}-\u00e9")
    sm.create_secret(Name="prod/openai", SecretString=json.dumps({"api_key": CANARY, "org": 7, "tags": ["a"]}))
    sm.create_secret(Name="blob", SecretBinary=b"\x00\xff" + CANARY.encode())
    sm.create_secret(Name="blob-json", SecretBinary=json.dumps({"k": CANARY}).encode())
    assert fetch(adapter, "aws-sm://us-east-1/plain") == f"{CANARY}-\u00e9".encode()
    assert fetch(adapter, "aws-sm://us-east-1/prod/openai#api_key") == CANARY.encode()
    assert fetch(adapter, "aws-sm://us-east-1/prod/openai#org") == b"7"
    assert fetch(adapter, "aws-sm://us-east-1/prod/openai#tags") == b'["a"]'
    assert fetch(adapter, "aws-sm://us-east-1/blob") == b"\x00\xff" + CANARY.encode()
    assert fetch(adapter, "aws-sm://us-east-1/blob-json#k") == CANARY.encode()
    arn = sm.describe_secret(SecretId="prod/openai")["ARN"]
    assert fetch(adapter, f"aws-sm://{arn}#api_key") == CANARY.encode()
    sm.put_secret_value(SecretId="plain", SecretString="second")
    assert fetch(adapter, "aws-sm://us-east-1/plain") == b"second"


def test_missing_things_are_not_found(aws: MotoServer, adapter: AwsSecretsManager) -> None:
    sm = aws.client()
    sm.create_secret(Name="doc", SecretString=json.dumps({"a": CANARY}))
    sm.create_secret(Name="gone", SecretString=CANARY)
    sm.delete_secret(SecretId="gone")  # scheduled for deletion: AWS answers InvalidRequestException
    missing = failure(adapter, "aws-sm://us-east-1/nope")
    assert missing.reason == "not_found"
    assert "aws-sm://us-east-1/nope" in str(missing)
    assert "ResourceNotFoundException" in str(missing)
    assert failure(adapter, "aws-sm://us-east-1/doc#b").reason == "not_found"
    assert failure(adapter, "aws-sm://us-east-1/gone").reason == "not_found"
    assert failure(adapter, "aws-sm://eu-west-1/doc").reason == "not_found"  # another region, another store


def test_a_key_of_something_not_a_json_object_is_invalid(aws: MotoServer, adapter: AwsSecretsManager) -> None:
    sm = aws.client()
    sm.create_secret(Name="text", SecretString=CANARY)
    sm.create_secret(Name="list", SecretString=json.dumps([CANARY]))
    for text in ("aws-sm://us-east-1/text#k", "aws-sm://us-east-1/list#k"):
        error = failure(adapter, text)
        assert error.reason == "invalid"
        assert "'k'" in str(error)


def test_an_explicit_iam_deny_is_access_denied(aws: MotoServer, adapter: AwsSecretsManager) -> None:
    aws.client().create_secret(Name="guarded", SecretString=CANARY)
    denied = boto3.session.Session(**aws.user_denied_secrets())
    as_denied_user = AwsSecretsManager(endpoint_url=aws.endpoint, max_attempts=1, session=denied)
    with aws.enforce_iam():
        error = failure(as_denied_user, "aws-sm://us-east-1/guarded")
        assert error.reason == "access_denied"
        assert "HTTP 403" in str(error)
        # Credentials AWS does not know (the environment's fake ones, once IAM is enforced).
        assert failure(adapter, "aws-sm://us-east-1/guarded").reason == "access_denied"


def test_no_credentials_is_access_denied(aws: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    error = failure(AwsSecretsManager(max_attempts=1), "aws-sm://us-east-1/anything")
    assert error.reason == "access_denied"
    assert "NoCredentialsError" in str(error)


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A loopback port that accepts connections (the kernel's backlog does) and never answers."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def test_an_unreachable_endpoint_is_unavailable(aws: MotoServer) -> None:
    adapter = AwsSecretsManager(endpoint_url=f"http://127.0.0.1:{closed_port()}", max_attempts=1)
    error = failure(adapter, "aws-sm://us-east-1/anything")
    assert error.reason == "unavailable"
    assert "EndpointConnectionError" in str(error)


def test_a_silent_endpoint_times_out_as_unavailable(aws: MotoServer, silent_endpoint: str) -> None:
    adapter = AwsSecretsManager(endpoint_url=silent_endpoint, read_timeout=0.3, max_attempts=1)
    error = failure(adapter, "aws-sm://us-east-1/anything")
    assert error.reason == "unavailable"
    assert "ReadTimeoutError" in str(error)


async def test_the_registry_timeout_bounds_a_slow_adapter(aws: MotoServer, silent_endpoint: str) -> None:
    stores = ExternalStores([AwsSecretsManager(endpoint_url=silent_endpoint, read_timeout=0.5, max_attempts=1)])
    with pytest.raises(ExternalSecretError) as raised:
        await stores.fetch("aws-sm://us-east-1/anything", timeout=0.2)
    assert raised.value.reason == "unavailable"
    assert "no answer within 0.2 s" in str(raised.value)


async def test_default_stores_follow_the_standard_aws_environment(aws: MotoServer) -> None:
    aws.client().create_secret(Name="prod/openai", SecretString=json.dumps({"api_key": CANARY}))
    stores = ExternalStores.default()  # no endpoint given: AWS_ENDPOINT_URL from the environment
    assert await stores.fetch("aws-sm://us-east-1/prod/openai#api_key") == CANARY.encode()


def test_one_client_per_region_even_under_concurrency(aws: MotoServer) -> None:
    adapter = AwsSecretsManager(endpoint_url=aws.endpoint)
    clients: list[object] = []
    start = threading.Barrier(8)

    def make(region: str) -> None:
        start.wait()
        clients.append(adapter.client(region))

    threads = [threading.Thread(target=make, args=("us-east-1" if i % 2 else "eu-west-1",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(client) for client in clients}) == 2


def test_the_value_never_reaches_repr_or_botocore_debug_logs(aws: MotoServer) -> None:
    """Run in a fresh process whose root logger is at DEBUG, as a careless operator might configure it."""
    probe = f"""
import logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
from ledger.aws_sm import AwsSecretsManager
adapter = AwsSecretsManager()
adapter.create_secret("us-east-1", "logged", "{CANARY}")
value = adapter.get_value("us-east-1", "logged")
assert value.text == "{CANARY}"
print(repr(value))
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "AwsSecretValue(name='logged'" in result.stdout
    assert CANARY not in result.stdout + result.stderr
