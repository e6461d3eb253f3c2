"""Reveal policies, rotation and key pools over HTTP (api/routes/secret_access.py), and the compliance
questions about them (`/v1/compliance/rotations`, `/v1/compliance/who-could-reveal`), on both backends."""

from __future__ import annotations

import string
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from api.app import create_app
from api.settings import Settings
from ledger.timefmt import rfc3339
from tests.api.conftest import (
    Clock,
    Key,
    assert_problem,
    audit_after,
    create_key,
    create_org,
    events_after,
    make_client,
    max_seq,
    secret_path,
    upsert,
)
from tests.pg import PgDsn

Client = TestClient[Litestar]
MINUTE_NS = 60 * 1_000_000_000
GENERATOR = {"kind": "generator", "length": 24, "alphabet": "hex", "prefix": "sk_"}


def reveal(client: Client, key: Key, name: str) -> Any:
    return client.post(secret_path(name, "/reveal"), headers=key.headers)


def revealed(client: Client, key: Key, name: str) -> dict[str, Any]:
    response = reveal(client, key, name)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def put_policy(client: Client, key: Key, name: str, **lists: list[str]) -> Any:
    return client.put(secret_path(name, "/policy"), json=lists, headers=key.headers)


def put_member(client: Client, key: Key, name: str, member: str, value: str, **fields: Any) -> Any:
    route = secret_path(name, f"/members/{quote(member, safe='')}")
    return client.put(route, json={"value": value, **fields}, headers=key.headers)


def now_text() -> str:
    return rfc3339(time.time_ns())


# -- reveal policies -------------------------------------------------------------------------------


def test_policy_by_key_id_label_glob_and_role(client: Client, db_file: Path | PgDsn, acme: Key) -> None:
    bot = create_key(client, acme, label="ci-bot-1")
    deploy = create_key(client, acme, label="deploy")
    upsert(client, acme, "S", "policy-value", expect=201)

    empty = client.get(secret_path("S", "/policy"), headers=deploy.headers)  # any key of the org reads it
    assert empty.status_code == 200, empty.text
    assert empty.json() == {"key_ids": [], "labels": [], "roles": [], "restricted": False}

    by_id = put_policy(client, acme, "S", key_ids=[bot.key_id])
    assert by_id.status_code == 200, by_id.text
    assert by_id.json() == {"key_ids": [bot.key_id], "labels": [], "roles": [], "restricted": True}
    assert client.get(secret_path("S", "/policy"), headers=acme.headers).json() == by_id.json()
    assert revealed(client, bot, "S")["value"] == "policy-value"
    seq = max_seq(db_file)
    denied = reveal(client, deploy, "S")
    assert_problem(denied, 403, "reveal policy", deploy.key_id)
    assert "policy-value" not in denied.text
    rows = audit_after(db_file, seq)
    assert [(r["action"], r["outcome"], r["actor_key_id"]) for r in rows] == [
        ("secret.reveal_denied", "denied", deploy.key_id)]
    assert "reveal policy" in rows[0]["detail"]
    assert_problem(reveal(client, acme, "S"), 403, "reveal policy")  # admins too, unless the policy names them

    by_label = put_policy(client, acme, "S", labels=["ci-*"])
    assert by_label.json()["labels"] == ["ci-*"] and by_label.json()["key_ids"] == []
    assert revealed(client, bot, "S")["value"] == "policy-value"
    assert_problem(reveal(client, deploy, "S"), 403)

    by_role = put_policy(client, acme, "S", roles=["admin"])
    assert by_role.json()["roles"] == ["admin"]
    assert revealed(client, acme, "S")["value"] == "policy-value"
    assert_problem(reveal(client, bot, "S"), 403)
    assert_problem(reveal(client, deploy, "S"), 403)

    # Several entries: any of them; duplicates are kept once, sorted.
    both = put_policy(client, acme, "S", key_ids=[deploy.key_id, deploy.key_id], roles=["admin"])
    assert both.json() == {"key_ids": [deploy.key_id], "labels": [], "roles": ["admin"], "restricted": True}
    assert revealed(client, deploy, "S")["value"] == "policy-value"
    assert_problem(reveal(client, bot, "S"), 403)

    # Setting the same policy again appends nothing.
    seq = max_seq(db_file)
    assert put_policy(client, acme, "S", key_ids=[deploy.key_id], roles=["admin"]).status_code == 200
    assert max_seq(db_file) == seq

    cleared = put_policy(client, acme, "S")  # no lists: no restriction
    assert cleared.json() == {"key_ids": [], "labels": [], "roles": [], "restricted": False}
    for key in (acme, bot, deploy):
        assert revealed(client, key, "S")["value"] == "policy-value"
    changes = [e for e in events_after(db_file, 0) if e["type"] == "secret.policy_changed"]
    assert len(changes) == 5


def test_policy_changes_are_for_admin_keys_and_validated(client: Client, db_file: Path | PgDsn, acme: Key,
                                                         globex: Key) -> None:
    member = create_key(client, acme, label="member")
    upsert(client, acme, "S", expect=201)
    seq = max_seq(db_file)
    assert_problem(put_policy(client, member, "S", key_ids=[member.key_id]), 403, "admin")
    assert_problem(put_policy(client, acme, "S", roles=["root"]), 422, "roles")
    assert_problem(client.put(secret_path("S", "/policy"), json={"key_ids": [], "extra": 1}, headers=acme.headers),
                   422)
    assert_problem(client.put(secret_path("S", "/policy"), json={"labels": "ci-*"}, headers=acme.headers), 422)
    assert_problem(put_policy(client, acme, "S", labels=[""]), 422, "labels")
    assert max_seq(db_file) == seq
    assert_problem(put_policy(client, acme, "missing", roles=["admin"]), 404)
    assert_problem(client.get(secret_path("missing", "/policy"), headers=acme.headers), 404)
    # Another org's secret of the same name is a 404 like a missing one.
    assert_problem(client.get(secret_path("S", "/policy"), headers=globex.headers), 404)
    assert_problem(put_policy(client, globex, "S", roles=["admin"]), 404)
    assert client.get(secret_path("S", "/policy")).status_code == 401


def test_a_revoked_key_named_by_a_policy_reveals_nothing(client: Client, acme: Key) -> None:
    bot = create_key(client, acme, label="bot")
    upsert(client, acme, "S", "v", expect=201)
    assert put_policy(client, acme, "S", key_ids=[bot.key_id]).status_code == 200
    assert revealed(client, bot, "S")["value"] == "v"
    assert client.delete(f"/v1/keys/{bot.key_id}", headers=acme.headers).status_code == 204
    assert_problem(reveal(client, bot, "S"), 401)
    assert_problem(client.get(secret_path("S", "/policy"), headers=bot.headers), 401)
    # The policy still names the key; nobody else gets in.
    assert client.get(secret_path("S", "/policy"), headers=acme.headers).json()["key_ids"] == [bot.key_id]
    assert_problem(reveal(client, acme, "S"), 403)


def test_idempotent_policy_put_replays_the_first_answer(client: Client, db_file: Path | PgDsn, acme: Key) -> None:
    upsert(client, acme, "S", expect=201)
    headers = {**acme.headers, "Idempotency-Key": "pol-1"}
    first = client.put(secret_path("S", "/policy"), json={"roles": ["admin"]}, headers=headers)
    assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    seq = max_seq(db_file)
    again = client.put(secret_path("S", "/policy"), json={"roles": ["admin"]}, headers=headers)
    assert (again.status_code, again.json()) == (200, first.json())
    assert again.headers["idempotent-replayed"] == "true"
    assert max_seq(db_file) == seq
    assert_problem(client.put(secret_path("S", "/policy"), json={"roles": ["member"]}, headers=headers), 422,
                   "Idempotency-Key")


# -- rotation --------------------------------------------------------------------------------------


def test_rotation_configure_get_rotate_and_remove(client: Client, db_file: Path | PgDsn, acme: Key) -> None:
    upsert(client, acme, "TOKEN", "the-first-value", expect=201)
    assert_problem(client.get(secret_path("TOKEN", "/rotation"), headers=acme.headers), 404, "no rotation policy")
    before = time.time_ns()
    configured = client.put(secret_path("TOKEN", "/rotation"), json={"interval_seconds": 3600, "rotator": GENERATOR},
                            headers=acme.headers)
    assert configured.status_code == 200, configured.text
    body = configured.json()
    assert body["interval_seconds"] == 3600 and body["rotator"] == GENERATOR
    assert body["failures"] == 0 and body["in_flight"] is False
    assert rfc3339(before + 3600 * 10**9)[:16] <= body["next_due_at"] <= rfc3339(time.time_ns() + 3600 * 10**9)
    got = client.get(secret_path("TOKEN", "/rotation"), headers=acme.headers)
    assert got.status_code == 200 and got.json() == body

    # Defaults of a generator are filled in.
    defaults = client.put(secret_path("TOKEN", "/rotation"),
                          json={"interval_seconds": 86400, "rotator": {"kind": "generator"}}, headers=acme.headers)
    assert defaults.json()["rotator"] == {"kind": "generator", "length": 40, "alphabet": "alphanumeric", "prefix": ""}
    assert client.put(secret_path("TOKEN", "/rotation"), json={"interval_seconds": 3600, "rotator": GENERATOR},
                      headers=acme.headers).status_code == 200

    seq = max_seq(db_file)
    rotated = client.post(secret_path("TOKEN", "/rotate"), headers=acme.headers)
    assert rotated.status_code == 200, rotated.text
    meta = rotated.json()
    assert meta["name"] == "TOKEN" and meta["version"] == 2 and rotated.headers["etag"] == '"2"'
    assert meta["created_by"] == acme.key_id and meta["updated_by"] == acme.key_id
    assert "value" not in meta
    assert client.get(secret_path("TOKEN"), headers=acme.headers).json()["version"] == 2
    value = revealed(client, acme, "TOKEN")["value"]
    assert value != "the-first-value" and value not in rotated.text
    assert value.startswith("sk_") and len(value) == 3 + 24
    assert set(value[3:]) <= set(string.hexdigits.lower())
    actions = [(r["action"], r["outcome"]) for r in audit_after(db_file, seq)]
    assert actions[:2] == [("secret.rotation_started", "ok"), ("secret.rotated", "ok")], actions
    assert all(value not in str(e) for e in events_after(db_file, 0))

    # Rotating again makes another new value.
    again = client.post(secret_path("TOKEN", "/rotate"), headers=acme.headers)
    assert again.status_code == 200 and again.json()["version"] == 3
    assert revealed(client, acme, "TOKEN")["value"] != value
    versions = client.get(secret_path("TOKEN", "/versions"), headers=acme.headers).json()["versions"]
    assert [v["how"] for v in versions] == ["create", "rotate", "rotate"]

    removed = client.delete(secret_path("TOKEN", "/rotation"), headers=acme.headers)
    assert removed.status_code == 204 and removed.content == b""
    assert_problem(client.get(secret_path("TOKEN", "/rotation"), headers=acme.headers), 404, "no rotation policy")
    seq = max_seq(db_file)
    assert client.delete(secret_path("TOKEN", "/rotation"), headers=acme.headers).status_code == 204  # no-op
    assert_problem(client.post(secret_path("TOKEN", "/rotate"), headers=acme.headers), 409, "no rotation policy")
    assert max_seq(db_file) == seq


def test_rotation_requests_are_validated(client: Client, db_file: Path | PgDsn, acme: Key) -> None:
    upsert(client, acme, "S", expect=201)
    seq = max_seq(db_file)
    route = secret_path("S", "/rotation")
    for bad in (
        {"interval_seconds": 10, "rotator": GENERATOR},
        {"interval_seconds": 3600, "rotator": {**GENERATOR, "alphabet": "klingon"}},
        {"interval_seconds": 3600, "rotator": {**GENERATOR, "length": 16, "alphabet": "numeric"}},  # too weak
        {"interval_seconds": 3600, "rotator": {"kind": "generator", "colour": "red"}},
        {"interval_seconds": 3600, "rotator": {"kind": "sms"}},
        {"interval_seconds": 3600, "rotator": {"kind": "webhook", "url": "ftp://example.com/x"}},
        {"interval_seconds": 3600, "rotator": {"kind": "webhook", "url": "https://user:pw@example.com/x"}},
        {"interval_seconds": 3600},
        {"interval_seconds": 3600, "rotator": GENERATOR, "extra": True},
    ):
        answer = client.put(route, json=bad, headers=acme.headers)
        assert_problem(answer, 422)
        assert "pw@" not in answer.text
    assert max_seq(db_file) == seq
    assert_problem(client.put(secret_path("missing", "/rotation"),
                              json={"interval_seconds": 3600, "rotator": GENERATOR}, headers=acme.headers), 404)
    assert_problem(client.delete(secret_path("missing", "/rotation"), headers=acme.headers), 404)
    assert_problem(client.post(secret_path("missing", "/rotate"), headers=acme.headers), 404)


def test_a_failing_webhook_answers_502_and_is_recorded(client: Client, db_file: Path | PgDsn, acme: Key) -> None:
    upsert(client, acme, "HOOKED", "original", expect=201)
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    webhook = {"kind": "webhook", "url": "http://127.0.0.1:1/rotate"}
    configured = client.put(secret_path("HOOKED", "/rotation"), json={"interval_seconds": 3600, "rotator": webhook},
                            headers=acme.headers)
    assert configured.status_code == 200, configured.text
    assert configured.json()["rotator"] == webhook
    seq = max_seq(db_file)
    failed = client.post(secret_path("HOOKED", "/rotate"), headers=acme.headers)
    body = assert_problem(failed, 502, "cannot connect to webhook")
    rows = audit_after(db_file, seq)
    assert [r["action"] for r in rows] == ["secret.rotation_started", "secret.rotation_failed"]
    assert rows[1]["outcome"] == "failed" and rows[1]["detail"] in body["detail"]
    policy = client.get(secret_path("HOOKED", "/rotation"), headers=acme.headers).json()
    assert policy["failures"] == 1 and policy["in_flight"] is False
    assert revealed(client, acme, "HOOKED")["value"] == "original"

    listed = client.get("/v1/compliance/rotations", headers=acme.headers)
    assert listed.status_code == 200, listed.text
    [row] = listed.json()["rotations"]
    assert row["name"] == "HOOKED" and row["status"] == "failing" and row["rotator"] == "webhook"
    assert row["failures"] == 1 and row["in_flight"] is False and row["last_rotated_at"] is None
    assert "cannot connect" in row["last_error"] and row["last_error_at"] is not None
    # A new policy starts afresh, in the policy's answer and in compliance alike.
    assert client.put(secret_path("HOOKED", "/rotation"), json={"interval_seconds": 7200, "rotator": GENERATOR},
                      headers=acme.headers).json()["failures"] == 0
    assert client.get("/v1/compliance/rotations", headers=acme.headers).json()["rotations"] == []


def test_rotation_of_a_pool_is_a_conflict(client: Client, acme: Key) -> None:
    upsert(client, acme, "POOL", expect=201)
    assert put_member(client, acme, "POOL", "a", "va").status_code == 201
    assert_problem(client.put(secret_path("POOL", "/rotation"), json={"interval_seconds": 3600, "rotator": GENERATOR},
                              headers=acme.headers), 409, "pool")


def test_a_replayed_reveal_is_checked_against_the_policy_of_now(client: Client, db_file: Path | PgDsn,
                                                                 acme: Key) -> None:
    member = create_key(client, acme, role="member")
    upsert(client, acme, "P", "the value", expect=201)
    headers = {**member.headers, "Idempotency-Key": "k2"}
    assert client.post(secret_path("P", "/reveal"), headers=headers).status_code == 200
    assert put_policy(client, acme, "P", roles=["admin"]).status_code == 200
    before = max_seq(db_file)
    assert_problem(client.post(secret_path("P", "/reveal"), headers=headers), 403, "policy")
    assert max_seq(db_file) == before  # a refused replay records nothing and answers no value


def test_members_of_a_rotating_secret_are_a_conflict(client: Client, db_file: Path | PgDsn, acme: Key) -> None:
    upsert(client, acme, "ROTATING", expect=201)
    assert client.put(secret_path("ROTATING", "/rotation"), json={"interval_seconds": 3600, "rotator": GENERATOR},
                      headers=acme.headers).status_code == 200
    before = max_seq(db_file)
    assert_problem(put_member(client, acme, "ROTATING", "a", "va"), 409, "rotation policy")
    assert max_seq(db_file) == before
    # Found by the HTTP fuzz's stateful run: the OpenAPI document did not list this 409.
    documented = client.get("/schema/openapi.json").json()["paths"]["/v1/secrets/{name}/members/{member}"]["put"]
    assert "409" in documented["responses"]


def test_rotation_policies_are_for_admin_keys(client: Client, db_file: Path | PgDsn, acme: Key) -> None:
    """A webhook makes the server call a URL and keep its answer as the value: members may not set one."""
    member = create_key(client, acme, role="member")
    upsert(client, acme, "K", expect=201)
    before = max_seq(db_file)
    webhook = {"kind": "webhook", "url": "http://169.254.169.254/latest/meta-data"}
    for rotator in (webhook, GENERATOR):
        assert_problem(client.put(secret_path("K", "/rotation"), json={"interval_seconds": 3600, "rotator": rotator},
                                  headers=member.headers), 403, "admin")
    assert client.put(secret_path("K", "/rotation"), json={"interval_seconds": 3600, "rotator": GENERATOR},
                      headers=acme.headers).status_code == 200
    after_admin = max_seq(db_file)
    assert after_admin == before + 1
    assert_problem(client.delete(secret_path("K", "/rotation"), headers=member.headers), 403, "admin")
    assert max_seq(db_file) == after_admin
    # Rotating now with the policy an admin set is any key's right, like an upsert.
    assert client.post(secret_path("K", "/rotate"), headers=member.headers).status_code == 200


def test_a_purge_ends_the_policy_and_the_rotation_with_the_secret(client: Client, acme: Key) -> None:
    """A soft delete keeps both for a restore or a re-creation; a destroyed secret's name starts afresh."""
    member = create_key(client, acme, role="member")
    for purge in (False, True):
        upsert(client, acme, "P", "v1")
        assert put_policy(client, acme, "P", roles=["admin"]).status_code == 200
        assert client.put(secret_path("P", "/rotation"), json={"interval_seconds": 3600, "rotator": GENERATOR},
                          headers=acme.headers).status_code == 200
        assert client.delete(secret_path("P"), params={"purge": "true"} if purge else None,
                             headers=acme.headers).status_code == 204
        upsert(client, acme, "P", "v2", expect=201)
        policy = client.get(secret_path("P", "/policy"), headers=acme.headers).json()
        rotation = client.get(secret_path("P", "/rotation"), headers=acme.headers)
        if purge:
            assert policy["restricted"] is False and rotation.status_code == 404
            assert revealed(client, member, "P")["value"] == "v2"
        else:
            assert policy["roles"] == ["admin"] and rotation.status_code == 200
            assert_problem(reveal(client, member, "P"), 403, "policy")
        assert client.delete(secret_path("P"), params={"purge": "true"}, headers=acme.headers).status_code == 204


# -- pools ---------------------------------------------------------------------------------------


def test_pool_members_round_robin_disable_update_and_remove(client: Client, db_file: Path | PgDsn,
                                                            acme: Key) -> None:
    upsert(client, acme, "LLM_KEY", "the-plain-value", expect=201)
    empty = client.get(secret_path("LLM_KEY", "/members"), headers=acme.headers)
    assert empty.status_code == 200 and empty.json() == {"selection": "round_robin", "members": []}
    values = {"a": "value-of-a", "b": "value-of-b", "c": "value-of-c"}
    for member, value in values.items():
        added = put_member(client, acme, "LLM_KEY", member, value, label=f"account {member}")
        assert added.status_code == 201, added.text
        assert value not in added.text
        assert added.json() == {"member": member, "label": f"account {member}", "state": "active",
                                "member_version": 1, "added_at": added.json()["added_at"],
                                "last_revealed_at": None, "reveals": 0}
    listed = client.get(secret_path("LLM_KEY", "/members"), headers=acme.headers)
    assert [m["member"] for m in listed.json()["members"]] == ["a", "b", "c"]
    assert not any(v in listed.text for v in [*values.values(), "the-plain-value"])

    seq = max_seq(db_file)
    answers = [revealed(client, acme, "LLM_KEY") for _ in range(4)]
    picked = [a.get("member") for a in answers]
    details = [r["detail"] for r in audit_after(db_file, seq) if r["action"] == "secret.revealed"]
    assert details == ["member a", "member b", "member c", "member a"]
    if "member" in answers[0]:  # the reveal names the member
        assert picked == ["a", "b", "c", "a"]
    assert [a["value"] for a in answers] == ["value-of-a", "value-of-b", "value-of-c", "value-of-a"]
    members = {m["member"]: m for m in client.get(secret_path("LLM_KEY", "/members"),
                                                  headers=acme.headers).json()["members"]}
    assert members["a"]["reveals"] == 2 and members["b"]["reveals"] == 1
    assert members["a"]["last_revealed_at"] is not None

    # A disabled member is never answered.
    disabled = client.post(secret_path("LLM_KEY", "/members/b/disable"), json={"reason": "rate limited"},
                           headers=acme.headers)
    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["state"] == "disabled" and disabled.json()["member"] == "b"
    assert any(r["detail"] == "b disabled: rate limited" for r in audit_after(db_file, seq))
    assert [revealed(client, acme, "LLM_KEY")["value"] for _ in range(4)] == [
        "value-of-c", "value-of-a", "value-of-c", "value-of-a"]

    # Every member disabled: a conflict, recorded as a denied reveal.
    for member in ("a", "c"):
        assert client.post(secret_path("LLM_KEY", f"/members/{member}/disable"),
                           headers=acme.headers).status_code == 200
    seq = max_seq(db_file)
    assert_problem(reveal(client, acme, "LLM_KEY"), 409, "no active member")
    rows = audit_after(db_file, seq)
    assert [(r["action"], r["outcome"]) for r in rows] == [("secret.reveal_denied", "denied")]
    assert "no active member" in rows[0]["detail"]
    enabled = client.post(secret_path("LLM_KEY", "/members/b/enable"), headers=acme.headers)
    assert enabled.status_code == 200 and enabled.json()["state"] == "active"
    assert revealed(client, acme, "LLM_KEY")["value"] == "value-of-b"

    # An update replaces the value (and keeps the label unless given).
    updated = put_member(client, acme, "LLM_KEY", "b", "new-value-of-b")
    assert updated.status_code == 200, updated.text
    assert updated.json()["member_version"] == 2 and updated.json()["label"] == "account b"
    assert updated.json()["state"] == "active" and "new-value-of-b" not in updated.text
    assert revealed(client, acme, "LLM_KEY")["value"] == "new-value-of-b"

    removed = client.delete(secret_path("LLM_KEY", "/members/b"), headers=acme.headers)
    assert removed.status_code == 204 and removed.content == b""
    assert_problem(client.delete(secret_path("LLM_KEY", "/members/b"), headers=acme.headers), 404, "no member")
    assert_problem(client.post(secret_path("LLM_KEY", "/members/b/enable"), headers=acme.headers), 404)
    assert [m["member"] for m in client.get(secret_path("LLM_KEY", "/members"),
                                            headers=acme.headers).json()["members"]] == ["a", "c"]
    assert_problem(reveal(client, acme, "LLM_KEY"), 409)  # a and c are still disabled
    types = [e["type"] for e in events_after(db_file, 0)]
    assert types.count("secret.member_added") == 3 and types.count("secret.member_updated") == 1
    assert types.count("secret.member_removed") == 1


def test_least_recent_selection(client: Client, acme: Key) -> None:
    upsert(client, acme, "POOL", expect=201)
    for member in ("a", "b", "c"):
        assert put_member(client, acme, "POOL", member, f"v-{member}").status_code == 201
    assert [revealed(client, acme, "POOL")["value"] for _ in range(4)] == ["v-a", "v-b", "v-c", "v-a"]
    assert put_member(client, acme, "POOL", "d", "v-d").status_code == 201  # never revealed
    chosen = client.put(secret_path("POOL", "/pool"), json={"selection": "least_recent"}, headers=acme.headers)
    assert chosen.status_code == 200 and chosen.json() == {"selection": "least_recent"}
    assert client.get(secret_path("POOL", "/members"), headers=acme.headers).json()["selection"] == "least_recent"
    # Round robin would answer b, then c; least recent answers d (never revealed), then b, then c.
    assert [revealed(client, acme, "POOL")["value"] for _ in range(3)] == ["v-d", "v-b", "v-c"]
    back = client.put(secret_path("POOL", "/pool"), json={"selection": "round_robin"}, headers=acme.headers)
    assert back.json() == {"selection": "round_robin"}
    assert_problem(client.put(secret_path("POOL", "/pool"), json={"selection": "random"}, headers=acme.headers), 422)
    assert_problem(client.put(secret_path("missing", "/pool"), json={"selection": "round_robin"},
                              headers=acme.headers), 404)


def test_member_requests_are_validated_and_never_echo_values(client: Client, db_file: Path | PgDsn,
                                                             acme: Key) -> None:
    upsert(client, acme, "POOL", expect=201)
    seq = max_seq(db_file)
    for bad in ({"value": "secret-canary", "extra": 1}, {"label": "x"}, {"value": 5}):
        answer = client.put(secret_path("POOL", "/members/a"), json=bad, headers=acme.headers)
        assert_problem(answer, 422)
        assert "secret-canary" not in answer.text
    assert_problem(put_member(client, acme, "POOL", "a", "x" * 70_000), 413)
    assert_problem(put_member(client, acme, "POOL", "a\x01", "secret-canary"), 422, "member")
    assert_problem(put_member(client, acme, "POOL", "a/b", "secret-canary"), 404)  # no such route
    assert_problem(client.post(secret_path("POOL", "/members/a/disable"), json={"reason": "x", "y": 1},
                               headers=acme.headers), 422)
    assert max_seq(db_file) == seq
    assert_problem(put_member(client, acme, "missing", "a", "secret-canary"), 404)
    assert_problem(client.get(secret_path("missing", "/members"), headers=acme.headers), 404)
    assert_problem(client.post(secret_path("POOL", "/members/nobody/disable"), headers=acme.headers), 404)

    # An Idempotency-Key replays the first answer (the 201), appending nothing.
    headers = {**acme.headers, "Idempotency-Key": "member-1"}
    first = client.put(secret_path("POOL", "/members/a"), json={"value": "secret-canary"}, headers=headers)
    assert first.status_code == 201
    seq = max_seq(db_file)
    again = client.put(secret_path("POOL", "/members/a"), json={"value": "secret-canary"}, headers=headers)
    assert (again.status_code, again.json()) == (201, first.json()) and again.headers["idempotent-replayed"] == "true"
    assert max_seq(db_file) == seq
    assert client.get(secret_path("POOL", "/members"), headers=acme.headers).json()["members"][0][
        "member_version"] == 1


# -- compliance ----------------------------------------------------------------------------------


def test_who_could_reveal_at_a_time(client: Client, acme: Key) -> None:
    bot = create_key(client, acme, label="bot")
    create_key(client, acme, label="tools only", scope="tools")
    before_secret = now_text()
    upsert(client, acme, "S", scope="agents", expect=201)
    t1 = now_text()
    assert put_policy(client, acme, "S", key_ids=[bot.key_id]).status_code == 200
    t2 = now_text()
    assert client.delete(f"/v1/keys/{bot.key_id}", headers=acme.headers).status_code == 204

    def who(at: str | None) -> dict[str, Any]:
        params = {"secret": "S"} if at is None else {"secret": "S", "at": at}
        response = client.get("/v1/compliance/who-could-reveal", params=params, headers=acme.headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    at_t1 = who(t1)
    assert at_t1["secret"] == "S" and at_t1["at"] == t1 and at_t1["exists"] and not at_t1["expired"]
    assert at_t1["policy"] == {"key_ids": [], "labels": [], "roles": [], "restricted": False}
    # The tools-only key's scope does not cover an agents secret.
    assert sorted(k["key_id"] for k in at_t1["keys"]) == sorted([acme.key_id, bot.key_id])
    at_t2 = who(t2)
    assert at_t2["policy"]["key_ids"] == [bot.key_id] and at_t2["policy"]["restricted"]
    assert at_t2["keys"] == [{"key_id": bot.key_id, "label": "bot", "role": "member", "scope": "all"}]
    assert who(None)["keys"] == []  # revoked since
    assert who(before_secret) | {"at": ""} == {"secret": "S", "at": "", "exists": False, "expired": False,
                                                "policy": at_t1["policy"], "keys": []}
    assert_problem(client.get("/v1/compliance/who-could-reveal", params={"secret": "S", "at": "yesterday"},
                              headers=acme.headers), 422, "at")
    assert_problem(client.get("/v1/compliance/who-could-reveal", params={"secret": "S"},
                              headers=create_key(client, acme).headers), 403)
    assert_problem(client.get("/v1/compliance/who-could-reveal", headers=acme.headers), 422)


@pytest.fixture
def clocked(settings: Settings, clock: Clock) -> Iterator[Client]:
    with make_client(create_app(settings, clock)) as test_client:
        yield test_client


def test_compliance_rotations_lists_overdue_and_all(clocked: Client, clock: Clock) -> None:
    acme = create_org(clocked, "acme")
    for name in ("DUE", "FINE"):
        upsert(clocked, acme, name, expect=201)
    assert clocked.put(secret_path("DUE", "/rotation"), json={"interval_seconds": 60, "rotator": GENERATOR},
                       headers=acme.headers).status_code == 200
    assert clocked.put(secret_path("FINE", "/rotation"), json={"interval_seconds": 86400, "rotator": GENERATOR},
                       headers=acme.headers).status_code == 200
    assert clocked.get("/v1/compliance/rotations", headers=acme.headers).json() == {"rotations": []}
    everything = clocked.get("/v1/compliance/rotations", params={"all": "true"}, headers=acme.headers).json()
    assert [(r["name"], r["status"]) for r in everything["rotations"]] == [("DUE", "ok"), ("FINE", "ok")]
    clock.advance(10 * MINUTE_NS)  # the sweeper waits a minute of real time: DUE stays overdue meanwhile
    [row] = clocked.get("/v1/compliance/rotations", headers=acme.headers).json()["rotations"]
    assert row["name"] == "DUE" and row["status"] == "overdue" and row["failures"] == 0
    assert row["interval_seconds"] == 60 and row["rotator"] == "generator" and row["last_error"] is None
    # Rotating it puts it back on schedule.
    assert clocked.post(secret_path("DUE", "/rotate"), headers=acme.headers).status_code == 200
    assert clocked.get("/v1/compliance/rotations", headers=acme.headers).json() == {"rotations": []}
    again = clocked.get("/v1/compliance/rotations", params={"all": "true"}, headers=acme.headers).json()["rotations"]
    assert again[0]["last_rotated_at"] is not None
    member = create_key(clocked, acme)
    assert_problem(clocked.get("/v1/compliance/rotations", headers=member.headers), 403)
