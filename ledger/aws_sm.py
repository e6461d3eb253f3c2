"""AWS Secrets Manager through boto3: the `aws-sm://` adapter, and the calls that import and export use.

Credentials, profile and endpoint come from boto3's standard settings (AWS_ACCESS_KEY_ID, AWS_PROFILE,
AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_SECRETSMANAGER, ...). Every failure becomes an ExternalSecretError whose
message names the secret and AWS's error code, never AWS's message or any part of a response body.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions
import msgspec

from ledger.errors import ExternalSecretError
from ledger.external import Reference, select_json_key

T = TypeVar("T")

NOT_FOUND_CODES = frozenset({"ResourceNotFoundException"})
DENIED_CODES = frozenset({
    "AccessDeniedException", "AccessDenied", "UnrecognizedClientException", "InvalidClientTokenId",
    "ExpiredTokenException", "ExpiredToken", "InvalidSignatureException", "SignatureDoesNotMatch",
    "IncompleteSignature", "MissingAuthenticationToken", "MissingAuthenticationTokenException", "AuthFailure",
    "NotAuthorized",
})
# DecryptionFailure: KMS would not decrypt (no kms:Decrypt, or the key is disabled): the value exists, but
# cannot be had now.
UNAVAILABLE_CODES = frozenset({
    "InternalServiceError", "InternalFailure", "ServiceUnavailable", "ServiceUnavailableException",
    "ThrottlingException", "Throttling", "TooManyRequestsException", "RequestTimeout", "RequestTimeoutException",
    "DecryptionFailure", "EncryptionFailure", "LimitExceededException",
})
CREDENTIAL_ERRORS = (
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.CredentialRetrievalError,
    botocore.exceptions.TokenRetrievalError,
    botocore.exceptions.ProfileNotFound,
)
NETWORK_ERRORS = (botocore.exceptions.HTTPClientError, botocore.exceptions.ConnectionError)


class AwsSecretInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A secret as ListSecrets describes it: no value."""

    name: str
    arn: str
    description: str = ""


class AwsSecretValue(msgspec.Struct, frozen=True, kw_only=True):
    """A secret's current value: `text` (SecretString) or `binary` (SecretBinary)."""

    name: str
    arn: str
    version_id: str
    text: str | None = None
    binary: bytes | None = None

    def __repr__(self) -> str:
        kind = "text" if self.text is not None else "binary"
        return f"AwsSecretValue(name={self.name!r}, version_id={self.version_id!r}, {kind}=<hidden>)"


class AwsSecretsManager:
    """The `aws-sm` adapter; thread-safe. One boto3 client per region, made on first use.

    `endpoint_url` overrides boto3's own endpoint settings (tests point it at an emulator); `session`, a
    boto3 Session, other credentials than the standard ones. Timeouts and retries are short: a reveal waits
    on this."""

    scheme = "aws-sm"

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        connect_timeout: float = 3.0,
        read_timeout: float = 5.0,
        max_attempts: int = 2,
        session: Any = None,
    ) -> None:
        self.endpoint_url = endpoint_url
        self._config = botocore.config.Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            user_agent_extra="keyledger",
        )
        self._clients: dict[str, Any] = {}
        self._session: Any = session
        self._lock = threading.Lock()

    def client(self, region: str) -> Any:
        """The boto3 Secrets Manager client for `region` (boto3's sessions are not thread-safe, its clients are)."""
        with self._lock:
            found = self._clients.get(region)
            if found is None:
                _cap_botocore_logging()
                if self._session is None:
                    self._session = boto3.session.Session()
                found = self._session.client(
                    "secretsmanager", region_name=region, endpoint_url=self.endpoint_url, config=self._config
                )
                self._clients[region] = found
            return found

    # -- the adapter -------------------------------------------------------------------------------

    def fetch(self, ref: Reference) -> bytes:
        """The value `ref` names: SecretString as UTF-8, or SecretBinary's bytes; then its #json-key, if any."""
        value = self.get_value(ref.location, ref.path, label=ref.text)
        raw = value.text.encode() if value.text is not None else value.binary
        assert raw is not None
        return select_json_key(raw, ref)

    # -- the calls of import and export ------------------------------------------------------------

    def get_value(self, region: str, secret_id: str, *, label: str | None = None) -> AwsSecretValue:
        """The current (AWSCURRENT) value of a secret, by name or ARN."""
        answer = self._call(region, label or _label(region, secret_id),
                            lambda sm: sm.get_secret_value(SecretId=secret_id))
        text, binary = answer.get("SecretString"), answer.get("SecretBinary")
        if text is None and binary is None:
            raise ExternalSecretError("invalid", f"{label or _label(region, secret_id)}: the answer has neither "
                                                 "SecretString nor SecretBinary")
        return AwsSecretValue(
            name=str(answer.get("Name", "")),
            arn=str(answer.get("ARN", "")),
            version_id=str(answer.get("VersionId", "")),
            text=None if text is None else str(text),
            binary=None if binary is None else bytes(binary),
        )

    def list_secrets(self, region: str, prefix: str = "") -> list[AwsSecretInfo]:
        """Every secret of the region whose name starts with `prefix` (case-sensitive), without values; secrets
        scheduled for deletion are left out."""

        def every_page(sm: Any) -> list[AwsSecretInfo]:
            request: dict[str, Any] = {"MaxResults": 100}
            if prefix:
                request["Filters"] = [{"Key": "name", "Values": [prefix]}]
            found: list[AwsSecretInfo] = []
            for page in sm.get_paginator("list_secrets").paginate(**request):
                for entry in page.get("SecretList", []):
                    name = str(entry.get("Name", ""))
                    # AWS's name filter ignores case; the prefix here is exact.
                    if name.startswith(prefix):
                        found.append(AwsSecretInfo(name=name, arn=str(entry.get("ARN", "")),
                                                   description=str(entry.get("Description") or "")))
            return found

        return self._call(region, f"aws-sm://{region} (ListSecrets)", every_page)

    def create_secret(self, region: str, name: str, value: str, description: str = "") -> None:
        """Create the secret `name` holding `value` (AWS's default KMS key)."""
        request: dict[str, Any] = {"Name": name, "SecretString": value}
        if description:
            request["Description"] = description
        self._call(region, _label(region, name), lambda sm: sm.create_secret(**request))

    def put_value(self, region: str, secret_id: str, value: str) -> None:
        """Give an existing secret a new current version holding `value`."""
        self._call(region, _label(region, secret_id),
                   lambda sm: sm.put_secret_value(SecretId=secret_id, SecretString=value))

    def _call(self, region: str, label: str, operation: Callable[[Any], T]) -> T:
        try:
            return operation(self.client(region))
        except botocore.exceptions.ClientError as exc:
            raise aws_error(label, exc) from None
        except CREDENTIAL_ERRORS as exc:
            raise ExternalSecretError(
                "access_denied", f"{label}: no usable AWS credentials ({type(exc).__name__}); set AWS_PROFILE or "
                                 "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from None
        except NETWORK_ERRORS as exc:
            raise ExternalSecretError("unavailable", f"{label}: AWS did not answer ({type(exc).__name__})") from None
        except botocore.exceptions.BotoCoreError as exc:
            # ParamValidationError and its kin: their messages may quote the parameters, so only the type is kept.
            raise ExternalSecretError("invalid", f"{label}: {type(exc).__name__}") from None


def aws_error(label: str, exc: Any) -> ExternalSecretError:
    """The ExternalSecretError for a botocore ClientError: by AWS's error code, else by HTTP status.

    An emulator may answer an IAM denial with an XML body that botocore reads as the code "403": the status
    decides then."""
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", "") or "")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    message = str(response.get("Error", {}).get("Message", "") or "").lower()
    shown = f"{code}, HTTP {status}" if code and not code.isdigit() else f"HTTP {status or code or '?'}"
    if code in NOT_FOUND_CODES:
        return ExternalSecretError("not_found", f"{label}: not found ({shown})")
    if code == "InvalidRequestException" and ("deleted" in message or "deletion" in message):
        # AWS's own message is read to tell this case, never repeated.
        return ExternalSecretError("not_found", f"{label}: scheduled for deletion ({shown})")
    if code in DENIED_CODES or status in (401, 403):
        return ExternalSecretError("access_denied", f"{label}: access denied ({shown})")
    if code in UNAVAILABLE_CODES or (isinstance(status, int) and (status >= 500 or status == 429)):
        return ExternalSecretError("unavailable", f"{label}: AWS could not answer ({shown})")
    if status == 404:
        return ExternalSecretError("not_found", f"{label}: not found ({shown})")
    return ExternalSecretError("invalid", f"{label}: refused ({shown})")


def _label(region: str, secret_id: str) -> str:
    return f"aws-sm://{region}/{secret_id}"


def _cap_botocore_logging() -> None:
    """botocore's DEBUG log carries request and response bodies, values included: never below INFO here."""
    for name in ("botocore", "boto3"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)
