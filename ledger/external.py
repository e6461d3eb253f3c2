"""References to values kept in an external secret manager, and the registry of the adapters that fetch them.

A reference is text such as `aws-sm://us-east-1/prod/openai#api_key` or `vault-kv://secret/app/db#password`.
Keyledger stores that text (encrypted like any value) and resolves it when the secret is revealed. This
module is adapter-neutral: it parses references, picks the adapter by scheme, and runs the adapter's
blocking fetch in a thread under a timeout. The adapters (`ledger.aws_sm`, `ledger.vault_kv`) are imported
on first use only, so that boto3 and hvac stay out of start-up.

Formats:
  aws-sm://REGION/SECRET-ID[#JSON-KEY]      SECRET-ID: a name (may contain '/') or a full ARN
  aws-sm://ARN[#JSON-KEY]                   the region is the ARN's
  vault-kv://MOUNT/PATH[#KEY]               KV version 2; MOUNT is the first segment (nested mounts are
                                            not supported); VAULT_ADDR and VAULT_TOKEN as hvac reads them
"""

from __future__ import annotations

import asyncio
import re
import threading
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import msgspec

from ledger.errors import ExternalSecretError, LedgerError, ValidationError

SCHEMES = ("aws-sm", "vault-kv")
MAX_REFERENCE_CHARS = 2048
FIELD = "reference"

# Region codes as AWS spells them: us-east-1, eu-central-2, us-gov-west-1, cn-northwest-1, us-isob-east-1.
AWS_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
# The characters Secrets Manager allows in a secret's name.
AWS_SECRET_NAME = re.compile(r"^[A-Za-z0-9/_+=.@-]{1,512}$")
AWS_ARN = re.compile(
    r"^arn:(?P<partition>aws[a-z-]*):secretsmanager:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):secret:"
    r"(?P<name>[A-Za-z0-9/_+=.@-]{1,512})$"
)
VAULT_MOUNT = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
# Control, format (zero-width, bidi overrides), surrogate, and line/paragraph separator characters.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


class Reference(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed reference. `location` is the AWS region or the Vault mount; `path` the secret id (a name or
    an ARN) or the Vault path; `json_key` the key after '#', if any. `text` is the reference as written."""

    scheme: str
    text: str
    location: str
    path: str
    json_key: str | None = None


class ExternalStore(Protocol):
    """An adapter to one secret manager. `fetch` blocks; it raises ExternalSecretError (never with a value in
    its message) when the manager cannot give the value."""

    scheme: str

    def fetch(self, ref: Reference) -> bytes: ...


def parse_reference(text: str) -> Reference:
    """The reference `text` names, or ValidationError("reference", ...) saying what is wrong with it.

    Messages describe the problem without echoing the text: a reference is stored as a secret value."""
    if not isinstance(text, str):
        raise ValidationError(FIELD, "must be a string")
    if not text:
        raise ValidationError(FIELD, "must not be empty")
    if len(text) > MAX_REFERENCE_CHARS:
        raise ValidationError(FIELD, f"must be at most {MAX_REFERENCE_CHARS} characters")
    if any(unicodedata.category(ch) in _FORBIDDEN_CATEGORIES for ch in text):
        raise ValidationError(FIELD, "must not contain control or invisible formatting characters")
    if text != text.strip():
        raise ValidationError(FIELD, "must not start or end with whitespace")
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValidationError(FIELD, f"must start with one of {', '.join(s + '://' for s in SCHEMES)}")
    body, sep, key = rest.partition("#")
    if sep and not key:
        raise ValidationError(FIELD, "has an empty key after '#'")
    json_key = key if sep else None
    if scheme == "aws-sm":
        region, secret_id = _parse_aws(body)
        return Reference(scheme=scheme, text=text, location=region, path=secret_id, json_key=json_key)
    mount, path = _parse_vault(body)
    return Reference(scheme=scheme, text=text, location=mount, path=path, json_key=json_key)


def format_reference(scheme: str, location: str, path: str, json_key: str | None = None) -> str:
    """The text of a reference from its parts (the inverse of `parse_reference` for the REGION/ID form)."""
    return f"{scheme}://{location}/{path}" + ("" if json_key is None else f"#{json_key}")


def _parse_aws(body: str) -> tuple[str, str]:
    if body.startswith("arn:"):
        return _arn_region(body), body
    region, sep, secret_id = body.partition("/")
    if not AWS_REGION.match(region):
        raise ValidationError(FIELD, "aws-sm: expected aws-sm://REGION/SECRET-ID with a region such as us-east-1")
    if not sep or not secret_id:
        raise ValidationError(FIELD, "aws-sm: the secret id after the region is missing")
    if secret_id.startswith("arn:"):
        if _arn_region(secret_id) != region:
            raise ValidationError(FIELD, "aws-sm: the ARN's region differs from the reference's region")
        return region, secret_id
    if not AWS_SECRET_NAME.match(secret_id):
        raise ValidationError(
            FIELD, "aws-sm: a secret name has 1 to 512 letters, digits or /_+=.@- (or give the full ARN)"
        )
    return region, secret_id


def _arn_region(arn: str) -> str:
    matched = AWS_ARN.match(arn)
    if matched is None:
        raise ValidationError(FIELD, "aws-sm: not a Secrets Manager ARN (arn:aws:secretsmanager:REGION:ACCOUNT:"
                                     "secret:NAME)")
    region = matched["region"]
    if not AWS_REGION.match(region):
        raise ValidationError(FIELD, "aws-sm: the ARN's region is not a region code such as us-east-1")
    return region


def _parse_vault(body: str) -> tuple[str, str]:
    mount, sep, path = body.partition("/")
    if not VAULT_MOUNT.match(mount) or mount in (".", ".."):
        raise ValidationError(FIELD, "vault-kv: expected vault-kv://MOUNT/PATH with a mount of letters, digits "
                                     "or _.- (such as secret)")
    if not sep or not path:
        raise ValidationError(FIELD, "vault-kv: the path after the mount is missing")
    segments = path.split("/")
    # Vault's API puts the path in the URL: empty, '.' and '..' segments would address other endpoints.
    if any(segment in ("", ".", "..") for segment in segments):
        raise ValidationError(FIELD, "vault-kv: the path has an empty, '.' or '..' segment")
    if any(segment != segment.strip() for segment in segments):
        raise ValidationError(FIELD, "vault-kv: a path segment starts or ends with whitespace")
    return mount, path


# -- JSON keys -------------------------------------------------------------------------------------


def select_json_key(raw: bytes, ref: Reference) -> bytes:
    """`raw` itself without a key; with one, that key of the JSON object `raw` holds."""
    if ref.json_key is None:
        return raw
    try:
        document = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        # The decoder's message is not used: it could quote the value.
        raise ExternalSecretError("invalid", f"{ref.text}: the value is not JSON, so it has no key "
                                             f"{ref.json_key!r}") from None
    if not isinstance(document, dict):
        raise ExternalSecretError("invalid", f"{ref.text}: the value is JSON but not an object, so it has no "
                                             f"key {ref.json_key!r}")
    return select_field(document, ref)


def select_field(data: Mapping[str, Any], ref: Reference) -> bytes:
    """The field `ref.json_key` of `data`; without a key, its only field. A string comes as its UTF-8 bytes,
    anything else as compact JSON."""
    if ref.json_key is None:
        if len(data) != 1:
            raise ExternalSecretError("invalid", f"{ref.text}: the secret has {len(data)} fields; add #KEY to the "
                                                 "reference to choose one")
        (found,) = data.values()
    elif ref.json_key in data:
        found = data[ref.json_key]
    else:
        raise ExternalSecretError("not_found", f"{ref.text}: the secret has no key {ref.json_key!r}")
    if isinstance(found, str):
        return found.encode()
    return msgspec.json.encode(found)


# -- the registry ----------------------------------------------------------------------------------


def _aws_store() -> ExternalStore:
    from ledger.aws_sm import AwsSecretsManager  # noqa: PLC0415  (boto3 loads on first use only)

    return AwsSecretsManager()


def _vault_store() -> ExternalStore:
    from ledger.vault_kv import VaultKv  # noqa: PLC0415  (hvac loads on first use only)

    return VaultKv()


class ExternalStores:
    """The adapters by scheme. Factories build an adapter on its first use; instances can be registered
    directly (tests register adapters built with an explicit endpoint)."""

    def __init__(
        self,
        stores: Iterable[ExternalStore] = (),
        factories: Mapping[str, Callable[[], ExternalStore]] | None = None,
    ) -> None:
        self._stores: dict[str, ExternalStore] = {}
        self._factories = dict(factories or {})
        self._lock = threading.Lock()
        for store in stores:
            self.register(store)

    @classmethod
    def default(cls) -> ExternalStores:
        """AWS Secrets Manager and Vault KV v2, configured from the standard environment of each SDK."""
        return cls(factories={"aws-sm": _aws_store, "vault-kv": _vault_store})

    def register(self, store: ExternalStore) -> None:
        """Use `store` for its scheme, in place of any adapter or factory registered before."""
        if store.scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {store.scheme!r}")
        with self._lock:
            self._stores[store.scheme] = store

    def store(self, scheme: str) -> ExternalStore:
        with self._lock:
            found = self._stores.get(scheme)
            if found is None:
                factory = self._factories.get(scheme)
                if factory is None:
                    raise ValidationError(FIELD, f"no adapter is configured for {scheme}://")
                found = self._stores[scheme] = factory()
            return found

    async def fetch(self, text: str, timeout: float = 10.0) -> bytes:  # noqa: ASYNC109  (a timeout is its own error)
        """The value `text` refers to. ValidationError for a malformed reference or an unknown scheme;
        ExternalSecretError when the manager does not give the value within `timeout` seconds."""
        ref = parse_reference(text)
        store = await asyncio.to_thread(self.store, ref.scheme)  # a first use imports an SDK: not on the loop
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.to_thread(store.fetch, ref)
        except TimeoutError:
            # The thread finishes on its own, bounded by the adapter's own network timeouts.
            raise ExternalSecretError("unavailable", f"{ref.text}: no answer within {timeout:g} s") from None
        except LedgerError:
            raise
        except Exception as exc:
            # An adapter's unexpected error: its message could quote a response, so only its type is kept.
            raise ExternalSecretError("unavailable", f"{ref.text}: {type(exc).__name__}") from None
