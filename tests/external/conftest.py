"""Fixtures of the external secret manager tests: moto for AWS, a real OpenBao for Vault."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.external.moto_server import CLEARED_ENV, MotoServer, moto_server
from tests.external.openbao import OpenBao, openbao_server


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    with moto_server() as server:
        yield server


@pytest.fixture
def aws(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """The moto server, emptied, with boto3's environment pointing at it with fake credentials."""
    moto.reset()
    for name in CLEARED_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in moto.env().items():
        monkeypatch.setenv(name, value)
    return moto


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    with openbao_server(tmp_path_factory.mktemp("openbao")) as server:
        yield server
