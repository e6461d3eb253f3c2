"""Moto's server mode on a loopback port inside the test process: a real emulator of the AWS API, driven by
real boto3 clients over HTTP. Importable as a plain helper (the HTTP-level reveal tests reuse it):

    with moto_server() as aws:
        env = aws.env()                      # fake credentials + AWS_ENDPOINT_URL, for os.environ or a subprocess
        aws.client().create_secret(Name="prod/openai", SecretString="...")

Moto keeps its state per process, not per server: `reset()` empties it (every service, IAM included).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
import requests
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
FAKE_KEY_ID = "testing"
FAKE_SECRET_KEY = "testing"
# Settings that would make boto3 look elsewhere than the emulator, or for other credentials.
CLEARED_ENV = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_REGION",
    "AWS_ENDPOINT_URL_SECRETSMANAGER", "AWS_ENDPOINT_URL_IAM", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


@dataclass
class MotoServer:
    endpoint: str

    def env(self, region: str = REGION) -> dict[str, str]:
        """The environment that points boto3 at this server with fake credentials (no profile files, no IMDS)."""
        return {
            "AWS_ACCESS_KEY_ID": FAKE_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_KEY,
            "AWS_DEFAULT_REGION": region,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_CONFIG_FILE": "/nonexistent/aws-config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self, service: str = "secretsmanager", region: str = REGION, **credentials: str) -> Any:
        """A boto3 client of this server (the fake root credentials unless others are given)."""
        return boto3.session.Session().client(
            service,
            region_name=region,
            endpoint_url=self.endpoint,
            aws_access_key_id=credentials.get("aws_access_key_id", FAKE_KEY_ID),
            aws_secret_access_key=credentials.get("aws_secret_access_key", FAKE_SECRET_KEY),
        )

    def reset(self) -> None:
        """Forget every secret, user and policy."""
        requests.post(f"{self.endpoint}/moto-api/reset", timeout=10).raise_for_status()

    @contextmanager
    def enforce_iam(self) -> Iterator[None]:
        """While inside, every request is authenticated and authorized against moto's IAM (by default moto
        allows everything). Process-wide, like the rest of moto's state."""
        requests.post(f"{self.endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
        try:
            yield
        finally:
            requests.post(f"{self.endpoint}/moto-api/reset-auth", data=b"inf", timeout=10).raise_for_status()

    def user_denied_secrets(self) -> dict[str, str]:
        """Credentials of a new IAM user whose policy explicitly denies every Secrets Manager action (create it
        before `enforce_iam`), as boto3 keyword arguments."""
        iam = self.client("iam")
        iam.create_user(UserName="denied")
        key = iam.create_access_key(UserName="denied")["AccessKey"]
        iam.put_user_policy(UserName="denied", PolicyName="no-secrets", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Deny", "Action": "secretsmanager:*", "Resource": "*"}],
        }))
        return {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}


@contextmanager
def moto_server() -> Iterator[MotoServer]:
    """Start moto on a free loopback port (chosen by the OS), and stop it afterwards."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield MotoServer(endpoint=f"http://{host}:{port}")
    finally:
        server.stop()
