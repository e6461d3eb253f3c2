"""A secret's lifecycle over HTTP, on both backends: rollback, the recovery window (delete, restore,
destruction when it ends, across a restart, with the clock in the test's hands), purge, the org's
window setting and expiry."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, get_args

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from api.app import create_app
from api.params import parse_time
from api.routes.audit import Action
from api.settings import Settings
from ledger.crypto import Keyring
from ledger.errors import CryptoError
from ledger.events import EVENT_TYPES
from ledger.timefmt import rfc3339
from tests.api.conftest import (
    Clock,
    Key,
    assert_problem,
    audit_after,
    create_key,
    create_org,
    make_client,
    max_seq,
    query,
    secret_path,
    upsert,
    verify_database,
)
from tests.pg import PgDsn

DAY = 86_400 * 1_000_000_000


def restarted(settings: Settings, clock: Clock) -> TestClient[Litestar]:
    """A new server on the same database (enter it with `with`)."""
    return make_client(create_app(settings, clock=clock))


def reveal(client: TestClient[Litestar], key: Key, name: str, **body: Any) -> Any:
    return client.post(secret_path(name, "/reveal"), json=body or None, headers=key.headers)


def versions(client: TestClient[Litestar], key: Key, name: str) -> list[dict[str, Any]]:
    response = client.get(secret_path(name, "/versions"), headers=key.headers)
    assert response.status_code == 200, response.text
    return list(response.json()["versions"])


def deleted_names(client: TestClient[Litestar], key: Key) -> dict[str, dict[str, Any]]:
    response = client.get("/v1/secrets", params={"deleted": "true"}, headers=key.headers)
    assert response.status_code == 200, response.text
    return {s["name"]: s for s in response.json()["secrets"]}


def data_key_exists(db: Path | PgDsn, data_key_id: str) -> bool:
    return bool(query(db, "SELECT 1 FROM data_keys WHERE id = ?", (data_key_id,)))


def value_records(db: Path | PgDsn, org: str, name: str) -> list[tuple[int, str, str]]:
    """(version, data key id, sealed value) of every version of the name, read from the events."""
    rows = query(db, "SELECT body, sealed FROM events WHERE stream = ? AND sealed IS NOT NULL ORDER BY seq",
                 (f"secret:{org}/{name}",))
    out = []
    for body, sealed in rows:
        event = json.loads(bytes(body))
        out.append((event["version"], event["data_key_id"], sealed))
    return out


# -- rollback ----------------------------------------------------------------------------------


def test_rollback_makes_a_new_version_with_the_old_value_and_never_sends_it(
    client: TestClient[Litestar], acme: Key, db_file: Path | PgDsn
) -> None:
    upsert(client, acme, "db", "first-canary-value", expect=201)
    upsert(client, acme, "db", "second-canary-value", expect=200)
    before = max_seq(db_file)
    response = client.post(secret_path("db", "/rollback"), json={"version": 1}, headers=acme.headers)
    assert response.status_code == 200, response.text
    assert "canary" not in response.text
    assert response.json()["version"] == 3 and response.headers["ETag"] == '"3"'
    assert reveal(client, acme, "db").json() == {"name": "db", "value": "first-canary-value", "version": 3}
    assert [(v["version"], v["how"], v["from_version"]) for v in versions(client, acme, "db")] == [
        (1, "create", None), (2, "update", None), (3, "rollback", 1)]
    rows = audit_after(db_file, before)
    assert [(r["action"], r["version"], r["detail"]) for r in rows][:1] == [
        ("secret.rolled_back", 3, "from version 1")]
    # A new data key: destroying version 1 later does not take version 3 with it.
    records = value_records(db_file, "acme", "db")
    assert len({data_key for _, data_key, _ in records}) == 3


def test_rollback_refuses_a_stale_if_match_an_unknown_version_and_a_bad_body(
    client: TestClient[Litestar], acme: Key, db_file: Path | PgDsn
) -> None:
    upsert(client, acme, "db", "one", expect=201)
    upsert(client, acme, "db", "two", expect=200)
    before = max_seq(db_file)
    stale = client.post(secret_path("db", "/rollback"), json={"version": 1},
                        headers={**acme.headers, "If-Match": '"1"'})
    assert_problem(stale, 412)
    assert_problem(client.post(secret_path("db", "/rollback"), json={"version": 9}, headers=acme.headers), 404)
    assert_problem(client.post(secret_path("nope", "/rollback"), json={"version": 1}, headers=acme.headers), 404)
    for body in ({}, {"version": 0}, {"version": "one"}, {"version": 1, "extra": 1}):
        assert_problem(client.post(secret_path("db", "/rollback"), json=body, headers=acme.headers), 422)
    assert max_seq(db_file) == before  # nothing was written by any of them
    ok = client.post(secret_path("db", "/rollback"), json={"version": 1}, headers={**acme.headers, "If-Match": '"2"'})
    assert ok.status_code == 200 and ok.json()["version"] == 3


# -- recovery window ---------------------------------------------------------------------------


def test_a_deleted_secret_is_listed_with_its_destruction_time_and_restores_as_it_was(
    client: TestClient[Litestar], acme: Key, db_file: Path | PgDsn
) -> None:
    upsert(client, acme, "db", "one", expect=201, scope="agents", category="provider", description="the db")
    upsert(client, acme, "db", "two", expect=200)
    assert client.delete(secret_path("db"), headers=acme.headers).status_code == 204
    assert_problem(client.get(secret_path("db"), headers=acme.headers), 404)
    assert_problem(client.get(secret_path("db", "/versions"), headers=acme.headers), 404)
    assert "db" not in [s["name"] for s in client.get("/v1/secrets", headers=acme.headers).json()["secrets"]]
    listed = deleted_names(client, acme)["db"]
    deleted_at, destroy_at = listed["deleted_at"], listed["destroy_at"]
    assert parse_time(destroy_at, "t") - parse_time(deleted_at, "t") == 30 * DAY  # type: ignore[operator]
    restored = client.post(secret_path("db", "/restore"), headers=acme.headers)
    assert restored.status_code == 200, restored.text
    body = restored.json()
    assert (body["version"], body["scope"], body["category"], body["description"]) == (3, "agents", "provider",
                                                                                      "the db")
    assert reveal(client, acme, "db").json()["value"] == "two"
    assert versions(client, acme, "db")[-1]["how"] == "restore"
    assert deleted_names(client, acme) == {}
    assert_problem(client.post(secret_path("db", "/restore"), headers=acme.headers), 409)
    assert_problem(client.post(secret_path("never", "/restore"), headers=acme.headers), 404)


def test_the_window_ends_across_a_restart_and_nothing_opens_the_values_afterwards(
    settings: Settings, clock: Clock, db_file: Path | PgDsn
) -> None:
    with restarted(settings, clock) as client:
        acme = create_org(client, "acme")
        upsert(client, acme, "db", "canary-one", expect=201)
        upsert(client, acme, "db", "canary-two", expect=200)
        assert client.delete(secret_path("db"), headers=acme.headers).status_code == 204
    clock.advance(29 * DAY)
    with restarted(settings, clock) as client:  # inside the window: still restorable
        assert "db" in deleted_names(client, acme)
    clock.advance(2 * DAY)
    with restarted(settings, clock) as client:  # the window ended while the server was down
        assert deleted_names(client, acme) == {}
        assert_problem(client.post(secret_path("db", "/restore"), headers=acme.headers), 404)
        rows = audit_after(db_file, 0)
        destroyed = [r for r in rows if r["action"] == "secret.destroyed"]
        assert len(destroyed) == 1 and destroyed[0]["actor_kind"] == "system"
        assert destroyed[0]["detail"] == "recovery window ended: versions 1, 2"
    assert_values_gone(db_file, settings, "acme", "db", 2)


def assert_values_gone(db: Path | PgDsn, settings: Settings, org: str, name: str, count: int) -> None:
    """Every version's data key is gone: with the master key and the whole database, no data key left
    opens any of the name's sealed values, while the record still verifies."""
    records = value_records(db, org, name)
    assert len(records) == count
    keyring = Keyring(settings.master_key, settings.previous_master_keys)
    remaining = query(db, "SELECT id, kek_id, wrapped FROM data_keys")
    for version, data_key_id, sealed in records:
        assert not data_key_exists(db, data_key_id)
        for key_id, kek_id, wrapped in remaining:
            with pytest.raises(CryptoError):
                keyring.opener(key_id, kek_id, wrapped).open(sealed, org, name, version)
    assert verify_database(db).ok


def test_the_server_destroys_due_secrets_while_it_runs(settings: Settings, clock: Clock) -> None:
    settings.destroy_sweep_seconds = 0.05
    with restarted(settings, clock) as client:
        acme = create_org(client, "acme")
        upsert(client, acme, "db", "v", expect=201)
        assert client.delete(secret_path("db"), headers=acme.headers).status_code == 204
        clock.advance(31 * DAY)
        deadline = time.monotonic() + 30
        while deleted_names(client, acme) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert deleted_names(client, acme) == {}
        assert all(not v["value_exists"] for v in _versions_after_recreate(client, acme))


def _versions_after_recreate(client: TestClient[Litestar], key: Key) -> list[dict[str, Any]]:
    upsert(client, key, "db", "new", expect=201)
    found = versions(client, key, "db")
    assert [v["version"] for v in found] == [1, 2]
    return found[:1]


def test_re_creating_a_deleted_name_keeps_its_history_and_ends_its_window(
    settings: Settings, clock: Clock
) -> None:
    with restarted(settings, clock) as client:
        acme = create_org(client, "acme")
        upsert(client, acme, "db", "old", expect=201)
        assert client.delete(secret_path("db"), headers=acme.headers).status_code == 204
        created = upsert(client, acme, "db", "new", expect=201)
        assert created.json()["version"] == 2
        assert deleted_names(client, acme) == {}
    clock.advance(40 * DAY)
    with restarted(settings, clock) as client:
        assert [(v["version"], v["value_exists"]) for v in versions(client, acme, "db")] == [(1, True), (2, True)]
        assert reveal(client, acme, "db", version=1).json()["value"] == "old"


def test_purge_is_for_admin_keys_and_destroys_every_version_now(
    client: TestClient[Litestar], acme: Key, db_file: Path | PgDsn, settings: Settings
) -> None:
    member = create_key(client, acme)
    upsert(client, acme, "db", "canary-a", expect=201)
    upsert(client, acme, "db", "canary-b", expect=200)
    before = max_seq(db_file)
    assert_problem(client.delete(secret_path("db"), params={"purge": "true"}, headers=member.headers), 403)
    assert max_seq(db_file) == before
    assert client.delete(secret_path("db"), params={"purge": "true"}, headers=acme.headers).status_code == 204
    assert [r["action"] for r in audit_after(db_file, before)] == ["secret.deleted", "secret.destroyed"]
    assert deleted_names(client, acme) == {}
    assert_problem(client.post(secret_path("db", "/restore"), headers=acme.headers), 404)
    assert_values_gone(db_file, settings, "acme", "db", 2)
    # The name can be used again; the old versions are listed as destroyed and never revealed.
    upsert(client, acme, "db", "fresh", expect=201)
    assert [(v["version"], v["value_exists"]) for v in versions(client, acme, "db")] == [
        (1, False), (2, False), (3, True)]
    assert_problem(reveal(client, acme, "db", version=1), 404)
    assert_problem(client.post(secret_path("db", "/rollback"), json={"version": 2}, headers=acme.headers), 404)


def test_purge_of_a_deleted_secret_destroys_it_inside_its_window(
    client: TestClient[Litestar], acme: Key, db_file: Path | PgDsn
) -> None:
    upsert(client, acme, "db", "v", expect=201)
    assert client.delete(secret_path("db"), headers=acme.headers).status_code == 204
    assert client.delete(secret_path("db"), params={"purge": "true"}, headers=acme.headers).status_code == 204
    assert deleted_names(client, acme) == {}
    # Once destroyed, there is nothing left to purge.
    assert_problem(client.delete(secret_path("db"), params={"purge": "true"}, headers=acme.headers), 404)


# -- the org's window ----------------------------------------------------------------------------


def test_the_recovery_window_is_an_org_setting(client: TestClient[Litestar], acme: Key, db_file: Path | PgDsn) -> None:
    member = create_key(client, acme)
    assert client.get("/v1/org/settings", headers=member.headers).json() == {
        "org": "acme", "recovery_window_days": 30}
    before = max_seq(db_file)
    assert_problem(client.put("/v1/org/settings", json={"recovery_window_days": 7}, headers=member.headers), 403)
    for bad in ({"recovery_window_days": -1}, {"recovery_window_days": 366}, {}, {"recovery_window_days": 1, "x": 1}):
        assert_problem(client.put("/v1/org/settings", json=bad, headers=acme.headers), 422)
    assert max_seq(db_file) == before
    changed = client.put("/v1/org/settings", json={"recovery_window_days": 0}, headers=acme.headers)
    assert changed.json() == {"org": "acme", "recovery_window_days": 0}
    assert [r["action"] for r in audit_after(db_file, before)] == ["org.settings_changed"]
    # Setting the same value again records nothing.
    client.put("/v1/org/settings", json={"recovery_window_days": 0}, headers=acme.headers)
    assert max_seq(db_file) == before + 1
    # A zero-day window: a delete destroys at once, and there is nothing to restore.
    upsert(client, acme, "db", "v", expect=201)
    assert client.delete(secret_path("db"), headers=acme.headers).status_code == 204
    assert deleted_names(client, acme) == {}
    assert [v["value_exists"] for v in versions_after(client, acme)] == [False]


def versions_after(client: TestClient[Litestar], key: Key) -> list[dict[str, Any]]:
    upsert(client, key, "db", "again", expect=201)
    return versions(client, key, "db")[:-1]


def test_another_orgs_settings_and_deleted_secrets_stay_apart(client: TestClient[Litestar], acme: Key,
                                                              globex: Key) -> None:
    upsert(client, acme, "db", "v", expect=201)
    assert client.delete(secret_path("db"), headers=acme.headers).status_code == 204
    assert deleted_names(client, globex) == {}
    assert_problem(client.post(secret_path("db", "/restore"), headers=globex.headers), 404)
    assert_problem(client.delete(secret_path("db"), params={"purge": "true"}, headers=globex.headers), 404)
    client.put("/v1/org/settings", json={"recovery_window_days": 1}, headers=globex.headers)
    assert client.get("/v1/org/settings", headers=acme.headers).json()["recovery_window_days"] == 30


# -- expiry --------------------------------------------------------------------------------------


def test_an_expired_secret_answers_410_and_records_a_denied_reveal(
    client: TestClient[Litestar], acme: Key, clock: Clock, db_file: Path | PgDsn
) -> None:
    soon = rfc3339(clock() + 2 * DAY)
    created = upsert(client, acme, "db", "canary-expiring", expect=201, expires_at=soon)
    assert created.json()["expires_at"] == soon
    assert client.get(secret_path("db"), headers=acme.headers).json()["expires_at"] == soon
    upsert(client, acme, "other", "v", expect=201)
    expiring = client.get("/v1/compliance/expiring", params={"days": 3}, headers=acme.headers)
    assert [s["name"] for s in expiring.json()["secrets"]] == ["db"]
    assert client.get("/v1/compliance/expiring", params={"days": 1}, headers=acme.headers).json()["secrets"] == []
    assert reveal(client, acme, "db").status_code == 200
    clock.advance(3 * DAY)
    before = max_seq(db_file)
    gone = reveal(client, acme, "db")
    assert_problem(gone, 410, "expired")
    assert "canary" not in gone.text
    (row,) = audit_after(db_file, before)
    assert (row["action"], row["outcome"], row["detail"]) == ("secret.reveal_denied", "denied", "the secret expired")
    assert_problem(reveal(client, acme, "db", version=1), 410)
    # An update keeps the expiry unless it says otherwise; null removes it.
    upsert(client, acme, "db", "renewed", expect=200)
    assert_problem(reveal(client, acme, "db"), 410)
    upsert(client, acme, "db", "renewed", expect=200, expires_at=None)
    assert reveal(client, acme, "db").json()["value"] == "renewed"
    assert_problem(upsert(client, acme, "db", "x", expires_at="tomorrow"), 422)


# -- the record ------------------------------------------------------------------------------------


def test_every_event_type_can_be_asked_for_in_the_audit_view() -> None:
    assert set(get_args(Action)) == {str(cls.__struct_config__.tag) for cls in EVENT_TYPES}


def test_every_lifecycle_action_is_in_the_audit_view_and_every_export(
    client: TestClient[Litestar], acme: Key, clock: Clock
) -> None:
    upsert(client, acme, "db", "one", expect=201)
    upsert(client, acme, "db", "two", expect=200, expires_at=rfc3339(clock() + DAY))
    client.post(secret_path("db", "/rollback"), json={"version": 1}, headers=acme.headers)
    client.delete(secret_path("db"), headers=acme.headers)
    client.post(secret_path("db", "/restore"), headers=acme.headers)
    client.put("/v1/org/settings", json={"recovery_window_days": 3}, headers=acme.headers)
    clock.advance(2 * DAY)
    reveal(client, acme, "db")  # expired: denied
    client.delete(secret_path("db"), params={"purge": "true"}, headers=acme.headers)
    expected = {
        "secret.rolled_back": ("db", 3, "ok"), "secret.restored": ("db", 4, "ok"),
        "org.settings_changed": (None, None, "ok"), "secret.reveal_denied": ("db", 4, "denied"),
        "secret.destroyed": ("db", None, "ok"),
    }
    for action, (secret, version, outcome) in expected.items():
        answer = client.get("/v1/audit", params={"action": action}, headers=acme.headers)
        assert answer.status_code == 200, answer.text
        (event,) = answer.json()["events"]
        assert (event["secret"], event["version"], event["outcome"]) == (secret, version, outcome), action
    destroyed = client.get("/v1/audit", params={"action": "secret.destroyed"}, headers=acme.headers).json()
    assert destroyed["events"][0]["detail"] == "purge: versions 1, 2, 3, 4"
    lines = client.get("/v1/audit/export", params={"format": "jsonl"}, headers=acme.headers).text.splitlines()
    assert {json.loads(line)["type"] for line in lines} >= set(expected)
    csv_text = client.get("/v1/audit/export", params={"format": "csv"}, headers=acme.headers).text
    assert all(action in csv_text for action in expected)
    ocsf = [json.loads(line) for line in
            client.get("/v1/audit/export", params={"format": "ocsf"}, headers=acme.headers).text.splitlines()]
    operations = {e["unmapped"]["keyledger_type"]: e.get("api", {}).get("operation") for e in ocsf}
    assert operations["secret.rolled_back"] == "RollbackSecret" and operations["secret.restored"] == "RestoreSecret"
    assert operations["secret.destroyed"] == "DestroySecret"
    assert operations["org.settings_changed"] == "ChangeOrgSettings"
