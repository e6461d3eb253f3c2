"""HashiCorp Vault (or OpenBao) KV version 2 through hvac: the `vault-kv://` adapter.

The server and token come from hvac's standard settings (VAULT_ADDR, VAULT_TOKEN or ~/.vault-token,
VAULT_CACERT, ...), and VAULT_NAMESPACE. Every failure becomes an ExternalSecretError whose message names the
reference and Vault's HTTP status, never Vault's error text or any part of a response body.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import hvac
import hvac.exceptions

from ledger.errors import ExternalSecretError
from ledger.external import Reference, select_field

UNAVAILABLE_ERRORS = (
    hvac.exceptions.VaultDown,
    hvac.exceptions.BadGateway,
    hvac.exceptions.InternalServerError,
    hvac.exceptions.RateLimitExceeded,
    hvac.exceptions.VaultNotInitialized,
    hvac.exceptions.UnexpectedError,
)
STATUS_OF = {
    hvac.exceptions.InvalidRequest: 400, hvac.exceptions.Unauthorized: 401, hvac.exceptions.Forbidden: 403,
    hvac.exceptions.InvalidPath: 404, hvac.exceptions.RateLimitExceeded: 429,
    hvac.exceptions.InternalServerError: 500, hvac.exceptions.VaultNotInitialized: 501,
    hvac.exceptions.BadGateway: 502, hvac.exceptions.VaultDown: 503,
}


class VaultKv:
    """The `vault-kv` adapter; thread-safe. `url` and `token` override hvac's environment settings."""

    scheme = "vault-kv"

    def __init__(
        self,
        *,
        url: str | None = None,
        token: str | None = None,
        namespace: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self._url = url
        self._token = token
        self._namespace = namespace
        self._timeout = timeout
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = hvac.Client(
                    url=self._url,
                    token=self._token,
                    namespace=self._namespace or os.environ.get("VAULT_NAMESPACE") or None,
                    timeout=self._timeout,
                )
            return self._client

    def fetch(self, ref: Reference) -> bytes:
        """The field `ref.json_key` of the secret's latest version; without a key, its only field."""
        client = self.client()
        try:
            answer = client.secrets.kv.v2.read_secret_version(
                path=ref.path, mount_point=ref.location, raise_on_deleted_version=True
            )
        except hvac.exceptions.InvalidPath:
            raise ExternalSecretError("not_found", f"{ref.text}: not found, or its latest version is deleted "
                                                   "(HTTP 404)") from None
        except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized) as exc:
            hint = "" if client.token else "; VAULT_TOKEN is not set"
            raise ExternalSecretError("access_denied",
                                      f"{ref.text}: access denied (HTTP {STATUS_OF[type(exc)]}){hint}") from None
        except UNAVAILABLE_ERRORS as exc:
            status = STATUS_OF.get(type(exc))
            code = f"HTTP {status}" if status else type(exc).__name__
            raise ExternalSecretError("unavailable", f"{ref.text}: Vault could not answer ({code})") from None
        except hvac.exceptions.VaultError as exc:
            raise ExternalSecretError("invalid", f"{ref.text}: refused ({type(exc).__name__})") from None
        except (OSError, ValueError) as exc:
            # requests' errors are OSErrors (refused, reset, timed out); ValueError: a body that is not JSON.
            raise ExternalSecretError("unavailable", f"{ref.text}: Vault at {client.url} did not answer "
                                                     f"({type(exc).__name__})") from None
        data = answer.get("data") if isinstance(answer, dict) else None
        fields = data.get("data") if isinstance(data, dict) else None
        if not isinstance(fields, dict):
            raise ExternalSecretError("invalid", f"{ref.text}: the answer is not a KV version 2 secret (is "
                                                 f"{ref.location} a KV v2 mount?)")
        return select_field(fields, ref)
