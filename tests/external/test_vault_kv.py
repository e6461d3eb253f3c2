"""The vault-kv adapter through real hvac against a real OpenBao server (Vault's KV v2 API) on a loopback port."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

import pytest

from ledger.errors import ExternalSecretError
from ledger.external import ExternalStores, parse_reference
from ledger.vault_kv import VaultKv
from tests.external.openbao import OpenBao

CANARY = "sk-canary-51d0e2"


@pytest.fixture
def path() -> str:
    """A fresh path under secret/ (one OpenBao serves the session)."""
    return f"t/{secrets.token_hex(6)}"


@pytest.fixture
def adapter(openbao: OpenBao) -> VaultKv:
    return VaultKv(url=openbao.url, token=openbao.root_token, timeout=2)


def write(openbao: OpenBao, path: str, fields: dict[str, object]) -> None:
    openbao.client().secrets.kv.v2.create_or_update_secret(path=path, secret=fields, mount_point="secret")


def fetch(adapter: VaultKv, text: str) -> bytes:
    return adapter.fetch(parse_reference(text))


def failure(adapter: VaultKv, text: str) -> ExternalSecretError:
    with pytest.raises(ExternalSecretError) as raised:
        fetch(adapter, text)
    assert CANARY not in str(raised.value)
    return raised.value


def test_fields_come_back_as_bytes(openbao: OpenBao, adapter: VaultKv, path: str) -> None:
    write(openbao, f"{path}/one", {"password": f"{CANARY}-\u00e9"})
    write(openbao, f"{path}/many", {"user": "app", "password": CANARY, "port": 5432, "opts": {"ssl": True}})
    assert fetch(adapter, f"vault-kv://secret/{path}/one") == f"{CANARY}-\u00e9".encode()
    assert fetch(adapter, f"vault-kv://secret/{path}/one#password") == f"{CANARY}-\u00e9".encode()
    assert fetch(adapter, f"vault-kv://secret/{path}/many#password") == CANARY.encode()
    assert fetch(adapter, f"vault-kv://secret/{path}/many#port") == b"5432"
    assert fetch(adapter, f"vault-kv://secret/{path}/many#opts") == b'{"ssl":true}'
    write(openbao, f"{path}/one", {"password": "second"})
    assert fetch(adapter, f"vault-kv://secret/{path}/one") == b"second"


def test_several_fields_without_a_key_ask_for_one(openbao: OpenBao, adapter: VaultKv, path: str) -> None:
    write(openbao, path, {"user": "app", "password": CANARY})
    error = failure(adapter, f"vault-kv://secret/{path}")
    assert error.reason == "invalid"
    assert "#KEY" in str(error)


def test_missing_things_are_not_found(openbao: OpenBao, adapter: VaultKv, path: str) -> None:
    write(openbao, path, {"password": CANARY})
    assert failure(adapter, f"vault-kv://secret/{path}-nope").reason == "not_found"
    missing_key = failure(adapter, f"vault-kv://secret/{path}#user")
    assert missing_key.reason == "not_found"
    assert "'user'" in str(missing_key)
    assert failure(adapter, f"vault-kv://nomount/{path}").reason == "not_found"


def test_a_deleted_latest_version_is_not_found(openbao: OpenBao, adapter: VaultKv, path: str) -> None:
    kv = openbao.client().secrets.kv.v2
    write(openbao, path, {"password": "v1"})
    write(openbao, path, {"password": CANARY})
    kv.delete_latest_version_of_secret(path=path, mount_point="secret")
    error = failure(adapter, f"vault-kv://secret/{path}")
    assert (error.reason, "HTTP 404" in str(error)) == ("not_found", True)
    kv.undelete_secret_versions(path=path, versions=[2], mount_point="secret")
    assert fetch(adapter, f"vault-kv://secret/{path}") == CANARY.encode()
    kv.destroy_secret_versions(path=path, versions=[2], mount_point="secret")
    assert failure(adapter, f"vault-kv://secret/{path}").reason == "not_found"


def test_tokens_vault_refuses_are_access_denied(openbao: OpenBao, path: str) -> None:
    write(openbao, path, {"password": CANARY})
    root = openbao.client()
    policy = 'path "secret/data/elsewhere/*" { capabilities = ["read"] }'
    root.sys.create_or_update_policy(name="elsewhere", policy=policy)
    limited = root.auth.token.create(policies=["elsewhere"], ttl="10m")["auth"]["client_token"]
    for token in (limited, "not-a-token"):
        error = failure(VaultKv(url=openbao.url, token=token), f"vault-kv://secret/{path}")
        assert error.reason == "access_denied"
        assert "HTTP 403" in str(error)


def test_no_token_is_access_denied_with_a_hint(openbao: OpenBao, path: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.vault-token either
    error = failure(VaultKv(url=openbao.url), f"vault-kv://secret/{path}")
    assert error.reason == "access_denied"
    assert "VAULT_TOKEN is not set" in str(error)


def test_an_unreachable_vault_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = failure(VaultKv(url=f"http://127.0.0.1:{port}", token="t", timeout=1), "vault-kv://secret/app")
    assert error.reason == "unavailable"
    assert f"127.0.0.1:{port}" in str(error)


async def test_default_stores_follow_vault_addr_and_vault_token(openbao: OpenBao, path: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    write(openbao, path, {"api_key": CANARY, "org": "o"})
    monkeypatch.setenv("VAULT_ADDR", openbao.url)
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    stores = ExternalStores.default()
    assert await stores.fetch(f"vault-kv://secret/{path}#api_key") == CANARY.encode()
