"""Master key rotation through the admin route, on both backends: the server rewraps in the background
while it serves, reports progress, and a restart with the new key (old one previous) finishes a
rotation that was cut short."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from api.app import create_app
from api.settings import Settings
from ledger import keys
from ledger.crypto import MasterKey
from ledger.errors import MasterKeyError
from tests.api.conftest import (
    ADMIN_HEADERS,
    ADMIN_TOKEN,
    Key,
    assert_problem,
    create_org,
    make_client,
    max_seq,
    secret_path,
    upsert,
)
from tests.pg import PgDsn


def wait_for_rotation(client: TestClient[Litestar], *, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = client.get("/v1/admin/master-key/rotation", headers=ADMIN_HEADERS).json()
        if status["state"] in ("done", "failed") or time.monotonic() > deadline:
            return status
        time.sleep(0.02)


def reveal_value(client: TestClient[Litestar], key: Key, name: str) -> str:
    response = client.post(secret_path(name, "/reveal"), headers=key.headers)
    assert response.status_code == 200, response.text
    return str(response.json()["value"])


def server(db: Path | PgDsn, master: MasterKey, *previous: MasterKey) -> TestClient[Litestar]:
    return make_client(create_app(Settings(db=db, master_key=master, previous_master_keys=list(previous),
                                           admin_token=ADMIN_TOKEN)))


def test_rotation_through_the_admin_route_keeps_serving_and_records_key_ids(
    db_file: Path | PgDsn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys, "REWRAP_CHUNK", 3)
    (old, _), (new, new_text) = MasterKey.generate(), MasterKey.generate()
    with server(db_file, old) as client:
        assert client.get("/v1/admin/master-key/rotation", headers=ADMIN_HEADERS).json()["state"] == "idle"
        acme = create_org(client, "acme")
        for i in range(10):
            upsert(client, acme, f"S{i}", f"value-{i}", expect=201)
        before = max_seq(db_file)
        started = client.post("/v1/admin/master-key/rotate", json={"new_master_key": new_text}, headers=ADMIN_HEADERS)
        assert started.status_code == 202, started.text
        assert new_text not in started.text
        assert started.json()["old_kek_id"] == old.kek_id and started.json()["new_kek_id"] == new.kek_id
        upsert(client, acme, "DURING", "during", expect=201)
        status = wait_for_rotation(client)
        assert status["state"] == "done", status
        assert status["done"] >= 10 and status["done"] <= status["total"] + 1
        assert [reveal_value(client, acme, f"S{i}") for i in range(10)] == [f"value-{i}" for i in range(10)]
        assert reveal_value(client, acme, "DURING") == "during"
        from tests.api.conftest import events_after

        rotated = [e for e in events_after(db_file, before) if e["type"] == "master_key.rotated"]
        assert len(rotated) == 1 and rotated[0]["old_kek_id"] == old.kek_id
    with server(db_file, new) as client:  # the new key alone opens everything
        assert reveal_value(client, acme, "S3") == "value-3"
    with pytest.raises(BaseException) as refused, server(db_file, old):  # the old key alone: refused at start
        pass
    assert refused.group_contains(MasterKeyError, match="not configured") if isinstance(
        refused.value, BaseExceptionGroup) else isinstance(refused.value, MasterKeyError)


def test_the_rotate_route_refuses_bad_keys_and_callers(db_file: Path | PgDsn) -> None:
    (old, old_text) = MasterKey.generate()
    with server(db_file, old) as client:
        acme = create_org(client, "acme")
        route = "/v1/admin/master-key/rotate"
        for bad in ({"new_master_key": "short"}, {"new_master_key": old_text}, {}, {"new_master_key": 1}):
            answer = client.post(route, json=bad, headers=ADMIN_HEADERS)
            assert_problem(answer, 422)
            assert old_text not in answer.text
        assert client.post(route, json={"new_master_key": MasterKey.generate()[1]},
                           headers=acme.headers).status_code in (401, 403)
        assert client.post(route, json={"new_master_key": MasterKey.generate()[1]}).status_code == 401
        assert client.get("/v1/admin/master-key/rotation", headers=acme.headers).status_code in (401, 403)
        assert client.get("/v1/admin/master-key/rotation", headers=ADMIN_HEADERS).json()["state"] == "idle"


def test_a_restart_finishes_a_rotation_that_was_cut_short(
    db_file: Path | PgDsn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys, "REWRAP_CHUNK", 2)
    (old, _), (new, new_text) = MasterKey.generate(), MasterKey.generate()
    real_replace = None

    with server(db_file, old) as client:
        acme = create_org(client, "acme")
        for i in range(8):
            upsert(client, acme, f"S{i}", f"value-{i}", expect=201)
        recorder = client.app.state.ledger.recorder
        real_replace = recorder.replace_data_keys
        calls = 0

        async def dies_after_two_chunks(rows: Any) -> None:
            nonlocal calls
            calls += 1
            if calls > 2:
                raise OSError("the process was killed")
            await real_replace(rows)

        recorder.replace_data_keys = dies_after_two_chunks
        client.post("/v1/admin/master-key/rotate", json={"new_master_key": new_text}, headers=ADMIN_HEADERS)
        status = wait_for_rotation(client)
        assert status["state"] == "failed" and "killed" in status["error"]
    # The operator restarts with the new key and the old one previous: the server finishes the job.
    with server(db_file, new, old) as client:
        status = wait_for_rotation(client)
        assert status["state"] == "done" and status["new_kek_id"] == new.kek_id, status
        assert [reveal_value(client, acme, f"S{i}") for i in range(8)] == [f"value-{i}" for i in range(8)]
    with server(db_file, new) as client:
        assert reveal_value(client, acme, "S7") == "value-7"
