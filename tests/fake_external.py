"""An in-memory external secret manager for the `vault-kv` scheme, for tests that reveal references.

`FakeStore(values)` answers a reference `vault-kv://MOUNT/PATH[#KEY]` with `values[PATH]` (the mount
and the key are ignored), or fails as a manager does when the secret is missing. `values` is kept by
reference: a test changes the external value by changing that dict.
"""

from __future__ import annotations

from ledger.errors import ExternalSecretError
from ledger.external import Reference


class FakeStore:
    """A `ledger.external.ExternalStore` over a dict of path -> value."""

    scheme = "vault-kv"

    def __init__(self, values: dict[str, str] | None = None) -> None:
        self.values: dict[str, str] = {} if values is None else values

    def fetch(self, ref: Reference) -> bytes:
        found = self.values.get(ref.path)
        if found is None:
            raise ExternalSecretError("not_found", f"{ref.scheme}://{ref.location}/{ref.path}: no such secret")
        return found.encode()
