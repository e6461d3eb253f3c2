"""Invariant 4 through HTTP: a planted value appears only in reveal responses.

Canary values ("CANARY-" + 32 hex digits) go in through every write path (upsert, rollback,
restore, reveal of an earlier version, expiry, purge, the org's recovery window) and through
requests that are refused. Every response is recorded; only a 200 from `/reveal` may carry a canary,
and once a value is destroyed (a purge, a zero-day window) not even that. Logs (every logger at
DEBUG), error texts and the database files (main file, -wal, -shm; plaintext, base64 and hex) must
never carry one, and what the master key still opens in the database never holds a destroyed one.
Positive controls show that each place looked at would have shown a canary: the reveal responses,
the stored reveal reason, a logged error and the values the master key opens.

Issue 8's write paths carry values too: pool members (added, replaced, removed; a replaced or removed
member's value is destroyed at once, also for an idempotent reveal's stored answer), values made by a
generator rotation (unknown until revealed once, then canaries like the others), and references to an
external manager. A reference's text is configuration kept sealed: it appears in no response, log or
file, and the master key opens it. The value fetched through it (from an in-memory Vault KV registered
in the app) is the secret: it appears in reveal answers only, and never in the database.

SSH public keys hold nothing secret, so nothing is planted through them; but what is sent to their
routes and refused (a DSA or short RSA key, a certificate, a private key sent by mistake, garbage, a
label too long, a duplicate, another key's removal, an unknown id) carries a canary that must appear in
no answer, log or file either.

Issue 10's connected apps carry a client secret, an access token and a refresh token: planted as
canaries (static tokens; a refresh at a token endpoint that refuses connections), and real ones from the
authorization server of tests/oidc_server.py (refreshed once: new tokens replace the old, whose data key
is destroyed). An access token may appear in a `POST .../token` answer only; a client secret or refresh
token in none; a disconnected app's tokens, or replaced ones, never again. The org's single sign-on names
its client secret (a secret, a canary like the others) and a person joins. The authorization server's own
log records (Authlib logs the tokens it issues, in the server's threads) are the provider's, not ours.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from litestar import Litestar
from litestar.testing import TestClient

from api.app import create_app
from api.settings import Settings
from ledger.apps import app_aad_name
from ledger.crypto import Keyring, MasterKey
from ledger.errors import ExternalSecretError
from ledger.external import ExternalStores, Reference
from ledger.idempotency import StoredAnswer
from ledger.model import member_aad_name
from ledger.timefmt import rfc3339
from tests.api.conftest import (
    ADMIN_HEADERS,
    ADMIN_TOKEN,
    Clock,
    Key,
    assert_problem,
    create_key,
    create_org,
    make_client,
    query,
    secret_path,
    stored_bytes,
)
from tests.api.test_connected_apps_api import from_the_provider, grant, issued_to
from tests.api.test_people_api import CLIENT_SECRET_NAME, ISSUER, sign_in
from tests.oidc_server import OidcServer, oidc_server
from tests.pg import PgDsn
from tests.webhook_server import refused_port

__all__ = ["oidc_server"]  # the imported module-scoped fixture

Client = TestClient[Litestar]
MIB = 1024 * 1024
HOUR = 3600 * 1_000_000_000


def canary() -> str:
    return "CANARY-" + uuid.uuid4().hex


def encodings(text: str) -> list[bytes]:
    """The forms in which `text` could sit in a file: itself, hex, and base64 at each alignment."""
    raw = text.encode()
    forms = [raw, raw.hex().encode(), raw.hex().upper().encode()]
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * pad + raw)
            # Drop the characters that mix in the padding bytes or the bytes that follow.
            start = (pad * 4 + 2) // 3
            forms.append(encoded[start : start + (len(raw) * 4) // 3 - 4])
    return forms


def database_bytes(db: Path | PgDsn) -> dict[str, bytes]:
    return stored_bytes(db)


def openable_values(db: Path | PgDsn, keyring: Keyring) -> list[bytes]:
    """Everything the master key still opens in the database: each sealed version whose data key is
    left, and each stored idempotent answer (a reveal's answer holds its value)."""
    rows = query(db, "SELECT id, kek_id, wrapped FROM data_keys")
    keys = {key_id: (kek_id, wrapped) for key_id, kek_id, wrapped in rows}
    opened = []
    for stream, body, sealed in query(db, "SELECT stream, body, sealed FROM events WHERE sealed IS NOT NULL"):
        event = json.loads(bytes(body))
        if event["data_key_id"] in keys:
            org = stream.split(":", 1)[1].split("/", 1)[0]
            opener = keyring.opener(event["data_key_id"], *keys[event["data_key_id"]])
            if stream.startswith("app:"):  # a connected app's client secret and tokens
                opened.append(opener.open(sealed, org, app_aad_name(event["name"]), event["token_version"]))
            elif "member" in event:  # a pool member's value, bound to name/member and the member's version
                opened.append(opener.open(sealed, org, member_aad_name(event["name"], event["member"]),
                                          event["member_version"]))
            else:
                opened.append(opener.open(sealed, org, event["name"], event["version"]))
    for scope, key, kek_id, sealed in query(db, "SELECT scope, key, kek_id, sealed FROM idempotency"):
        context = f"{scope}\0{key}".encode()
        if kek_id.startswith("dek_"):  # a reveal's answer, sealed by the revealed version's data key
            if kek_id not in keys:
                continue  # destroyed with the value: nothing can open it
            raw = keyring.opener(kek_id, *keys[kek_id]).open_record(context, sealed)
        else:
            raw = keyring.open_record(context, kek_id, sealed)
        opened.append(msgspec.msgpack.decode(raw, type=StoredAnswer).body)
    return opened


def assert_nowhere_in_files(db: Path | PgDsn, values: list[str]) -> None:
    files = database_bytes(db)
    assert "events" in files if isinstance(db, PgDsn) else db.name in files
    for value in values:
        for form in encodings(value):
            for name, data in files.items():
                assert form not in data, f"{value} found in {name} as {form[:20]!r}"


@contextmanager
def every_logger_at_debug(handler: logging.Handler) -> Iterator[None]:
    """Route every logger (also those that do not propagate, like Litestar's) to `handler` at DEBUG."""
    root = logging.getLogger()
    loggers = [root, *(lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    saved = [(lg, lg.level, lg.disabled) for lg in loggers]
    attached = [lg for lg in loggers if lg is root or not lg.propagate]
    handler.setLevel(logging.DEBUG)
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
        lg.disabled = False
    for lg in attached:
        if handler not in lg.handlers:
            lg.addHandler(handler)
    try:
        yield
    finally:
        for lg in attached:
            if lg is not root:
                lg.removeHandler(handler)
        for lg, level, disabled in saved:
            lg.setLevel(level)
            lg.disabled = disabled


class MemoryVault:
    """A Vault KV in memory: `vault-kv://MOUNT/PATH#KEY` answers the value set for (PATH, KEY)."""

    scheme = "vault-kv"

    def __init__(self) -> None:
        self.values: dict[tuple[str, str | None], str] = {}
        self.fetches = 0

    def fetch(self, ref: Reference) -> bytes:
        self.fetches += 1
        found = self.values.get((ref.path, ref.json_key))
        if found is None:
            raise ExternalSecretError("not_found", f"{ref.text}: no such secret")
        return found.encode()


class Recorded:
    """Every response the client got, with what it was asked."""

    def __init__(self, client: Client) -> None:
        self.responses: list[httpx.Response] = []
        client.event_hooks["response"].append(self._hook)

    def _hook(self, response: httpx.Response) -> None:
        response.read()
        self.responses.append(response)

    @staticmethod
    def is_reveal_answer(response: httpx.Response) -> bool:
        """A secret's reveal, or a connected app's token answer."""
        path = response.request.url.path
        app_token = path.startswith("/v1/connected-apps/") and path.endswith("/token")
        return (path.endswith("/reveal") or app_token) and response.status_code == 200

    def text_of(self, response: httpx.Response) -> str:
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        return f"{response.status_code}\n{headers}\n{response.content.decode('utf-8', 'replace')}"


class Scenario:
    def __init__(self, client: Client, db: Path | PgDsn, clock: Clock, keyring: Keyring, vault: MemoryVault) -> None:
        self.client = client
        self.db = db
        self.clock = clock
        self.keyring = keyring
        self.vault = vault
        self.recorded = Recorded(client)
        self.accepted: dict[str, str] = {}  # name -> canary value stored under it (last one), revealable
        self.stored: list[str] = []  # every canary that was accepted into the ledger
        self.refused: list[str] = []  # every canary sent in a refused request
        self.destroyed: dict[str, int] = {}  # canary -> index of the first response after it was destroyed
        self.expired: list[str] = []  # names whose reveals answer 410 (still read as metadata)
        self.reason = "REASON-" + uuid.uuid4().hex  # stored on purpose, in plaintext: the positive control
        self.api_keys: list[str] = []  # shown once in their creation answer, stored only as SHA-256
        self.members: dict[tuple[str, str], str] = {}  # (pool, member) -> its current value
        self.external: dict[str, str] = {}  # name -> the value its reference fetches now (stored nowhere)
        self.references: list[str] = []  # reference texts: sealed configuration, in no response at all
        self.rotating: set[str] = set()  # names with a rotation policy (others answer 404 on /rotation)
        self.apps: dict[str, str] = {}  # connected app -> its current access token (answered by POST .../token)
        self.oidc: OidcServer | None = None  # the authorization server, for a real refresh

    def upsert(
        self, key: Key, name: str, *, expect: int, headers: dict[str, str] | None = None, **fields: Any
    ) -> httpx.Response:
        value = canary()
        response = self.client.post(
            "/v1/secrets", json={"name": name, "value": value, **fields}, headers={**key.headers, **(headers or {})}
        )
        assert response.status_code == expect, response.text
        if expect < 300:
            self.accepted[name] = value
            self.stored.append(value)
        return response

    def put_member(self, key: Key, name: str, member: str, *, expect: int, **fields: Any) -> str:
        """A new canary value for the member; its previous value (if any) is destroyed with the change."""
        value = canary()
        response = self.client.put(secret_path(name, f"/members/{quote(member, safe='')}"),
                                   json={"value": value, **fields}, headers=key.headers)
        assert response.status_code == expect, response.text
        assert response.json()["member"] == member
        previous = self.members.get((name, member))
        if previous is not None:
            self.destroy([previous])
        self.members[(name, member)] = value
        self.stored.append(value)
        return value

    def reference(self, key: Key, name: str, *, expect: int) -> tuple[str, str]:
        """A reference to a fresh path of the in-memory Vault, which holds a canary there: (path, value)."""
        path, value = f"canary/{uuid.uuid4().hex}", canary()
        text = f"vault-kv://secret/{path}#api_key"
        self.vault.values[(path, "api_key")] = value
        response = self.client.post("/v1/secrets", json={"name": name, "value": text, "reference": True},
                                    headers=key.headers)
        assert response.status_code == expect, response.text
        assert response.json()["external"] == "vault-kv"
        self.references.append(text)
        self.external[name] = value
        self.stored.append(value)
        self.accepted.pop(name, None)
        return path, value

    def destroy(self, values: list[str]) -> None:
        """The values were destroyed (a member replaced or removed): no response may carry them from now on."""
        for value in values:
            self.destroyed[value] = len(self.recorded.responses)

    def refuse(
        self,
        status: int,
        method: str,
        path: str,
        *,
        key: Key | None,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        value: str,
    ) -> None:
        self.refused.append(value)
        all_headers = {**(key.headers if key else {}), **(headers or {})}
        if content is not None:
            all_headers["content-type"] = "application/json"
        response = self.client.request(method, path, json=json, content=content, headers=all_headers)
        body = assert_problem(response, status)
        assert value not in body["detail"]

    def reveal(self, key: Key, name: str, body: dict[str, Any] | None = None,
               headers: dict[str, str] | None = None) -> httpx.Response:
        return self.client.post(secret_path(name, "/reveal"), json=body, headers={**key.headers, **(headers or {})})

    def forget(self, name: str, values: list[str]) -> None:
        """The name's values were destroyed: from now on no response at all may carry them."""
        self.accepted.pop(name, None)
        self.destroy(values)

    def run_lifecycle_writes(self, admin: Key, member: Key) -> None:
        client = self.client
        # Rollback: version 1's value is the current one again, as version 3 (If-Match, and an
        # idempotency key replayed); then the member rolls back to 2 and the admin to 3 (version 1's
        # value once more). No rollback answer carries a value; reveals of each version do.
        self.upsert(admin, "rolled-back", expect=201)
        first = self.accepted["rolled-back"]
        self.upsert(admin, "rolled-back", expect=200)
        second = self.accepted["rolled-back"]
        for _ in range(2):
            rolled = client.post(secret_path("rolled-back", "/rollback"), json={"version": 1},
                                 headers={**admin.headers, "If-Match": '"2"', "Idempotency-Key": "idem-rollback"})
            assert (rolled.status_code, rolled.json()["version"]) == (200, 3), rolled.text
        rolled = client.post(secret_path("rolled-back", "/rollback"), json={"version": 2}, headers=member.headers)
        assert (rolled.status_code, rolled.json()["version"]) == (200, 4), rolled.text
        rolled = client.post(secret_path("rolled-back", "/rollback"), json={"version": 3}, headers=admin.headers)
        assert (rolled.status_code, rolled.json()["version"]) == (200, 5), rolled.text
        self.accepted["rolled-back"] = first
        for version, value in ((1, first), (2, second), (3, first), (4, second)):
            assert self.reveal(admin, "rolled-back", {"version": version}).json()["value"] == value
        assert self.reveal(member, "rolled-back", {"version": 2, "reason": self.reason},
                           {"Idempotency-Key": "idem-reveal-version"}).json()["value"] == second
        # Restore: deleted (listed with ?deleted=true) and restored as it was, with an idempotency key
        # replayed; then deleted and restored again by the member.
        self.upsert(admin, "restored", expect=201, scope="agents")
        self.upsert(admin, "restored", expect=200)
        assert client.delete(secret_path("restored"), headers=admin.headers).status_code == 204
        listed = client.get("/v1/secrets", params={"deleted": "true"}, headers=admin.headers)
        assert "restored" in [s["name"] for s in listed.json()["secrets"]]
        for _ in range(2):
            restored = client.post(secret_path("restored", "/restore"),
                                   headers={**admin.headers, "Idempotency-Key": "idem-restore"})
            assert (restored.status_code, restored.json()["version"]) == (200, 3), restored.text
        assert client.delete(secret_path("restored"), headers=member.headers).status_code == 204
        assert client.post(secret_path("restored", "/restore"), headers=member.headers).status_code == 200
        assert self.reveal(member, "restored").json()["value"] == self.accepted["restored"]
        # Expiry: revealed before it expires; afterwards every reveal is a 410 without the value,
        # also of version 1 and after a rollback (which keeps the expiry).
        self.upsert(admin, "expiring", expect=201, expires_at=rfc3339(self.clock() + HOUR))
        value = self.accepted.pop("expiring")
        self.expired.append("expiring")
        assert self.reveal(admin, "expiring").json()["value"] == value
        self.clock.advance(2 * HOUR)
        for body in (None, {"version": 1}, {"reason": self.reason}):
            gone = self.reveal(admin, "expiring", body)
            assert_problem(gone, 410, "expired")
            assert value not in gone.text
        rolled = client.post(secret_path("expiring", "/rollback"), json={"version": 1}, headers=admin.headers)
        assert rolled.status_code in (200, 410), rolled.text
        assert_problem(self.reveal(member, "expiring"), 410)
        # Purge of a live secret (revealed first: the value was there), and of a deleted one.
        self.upsert(admin, "purged", expect=201)
        purged = [self.accepted["purged"]]
        self.upsert(admin, "purged", expect=200)
        purged.append(self.accepted["purged"])
        assert self.reveal(admin, "purged").json()["value"] == purged[-1]
        assert client.delete(secret_path("purged"), params={"purge": "true"}, headers=admin.headers).status_code == 204
        self.forget("purged", purged)
        self.upsert(admin, "deleted-then-purged", expect=201)
        assert client.delete(secret_path("deleted-then-purged"), headers=admin.headers).status_code == 204
        assert client.delete(secret_path("deleted-then-purged"), params={"purge": "true"},
                             headers=admin.headers).status_code == 204
        self.forget("deleted-then-purged", [self.stored[-1]])
        # The org's recovery window: zero days (an idempotent change, replayed), so a delete destroys
        # at once; then back to 30 days.
        for _ in range(2):
            changed = client.put("/v1/org/settings", json={"recovery_window_days": 0},
                                 headers={**admin.headers, "Idempotency-Key": "idem-settings"})
            assert changed.json() == {"org": admin.org, "recovery_window_days": 0}
        self.upsert(admin, "zero-window", expect=201)
        assert client.delete(secret_path("zero-window"), headers=admin.headers).status_code == 204
        self.forget("zero-window", [self.stored[-1]])
        changed = client.put("/v1/org/settings", json={"recovery_window_days": 30}, headers=admin.headers)
        assert changed.json() == {"org": admin.org, "recovery_window_days": 30}
        # Nothing brings a destroyed value back: reveals (also of a version), restore, a second purge,
        # and a rollback or reveal of the old versions once the name holds a new value.
        for name in ("purged", "deleted-then-purged", "zero-window"):
            for response in (
                self.reveal(admin, name),
                self.reveal(admin, name, {"version": 1}),
                client.post(secret_path(name, "/restore"), headers=admin.headers),
                client.delete(secret_path(name), params={"purge": "true"}, headers=admin.headers),
            ):
                assert_problem(response, 404)
        self.upsert(admin, "purged", expect=201)
        assert_problem(client.post(secret_path("purged", "/rollback"), json={"version": 1}, headers=admin.headers), 404)
        assert_problem(self.reveal(admin, "purged", {"version": 2}), 404)
        found = client.get(secret_path("purged", "/versions"), headers=admin.headers).json()["versions"]
        assert [(v["version"], v["value_exists"]) for v in found] == [(1, False), (2, False), (3, True)]

    def run_write_paths(self, admin: Key) -> None:
        client = self.client
        member = create_key(client, admin, role="member", scope="agents")
        self.api_keys += [admin.api_key, member.api_key]
        # Create, update (also with a matching If-Match), and a second key's update.
        self.upsert(admin, "created", expect=201)
        self.upsert(admin, "updated", expect=201)
        self.upsert(admin, "updated", expect=200, description="second value")
        self.upsert(admin, "updated", expect=200, headers={"If-Match": '"2"'})
        self.upsert(member, "updated", expect=200)
        # Idempotent upsert, and its replay (the same value and body again).
        value = canary()
        for _ in range(2):
            response = client.post(
                "/v1/secrets",
                json={"name": "idempotent", "value": value},
                headers={**admin.headers, "Idempotency-Key": "idem-upsert"},
            )
            assert response.status_code == 201
        self.accepted["idempotent"] = value
        self.stored.append(value)
        # Reveal with an idempotency key, and its replay; a reveal by the member; a reason.
        self.upsert(admin, "revealed", expect=201, scope="agents")
        for _ in range(2):
            response = client.post(
                secret_path("revealed", "/reveal"),
                json={"reason": self.reason},
                headers={**admin.headers, "Idempotency-Key": "idem-reveal"},
            )
            assert response.json()["value"] == self.accepted["revealed"]
        assert client.post(secret_path("revealed", "/reveal"), headers=member.headers).status_code == 200
        # A denied reveal, a deleted secret, a secret deleted and re-created.
        self.upsert(admin, "tools-only", expect=201, scope="tools")
        assert client.post(secret_path("tools-only", "/reveal"), headers=member.headers).status_code == 403
        self.upsert(admin, "deleted", expect=201)
        assert client.delete(secret_path("deleted"), headers=admin.headers).status_code == 204
        self.upsert(admin, "recreated", expect=201)
        assert client.delete(secret_path("recreated"), headers=admin.headers).status_code == 204
        self.upsert(admin, "recreated", expect=201)
        # Rollback, restore, expiry, purge and the org's recovery window.
        self.run_lifecycle_writes(admin, member)
        # Pools, rotation and references.
        self.run_access_writes(admin, member)
        # Single sign-on, a person, connected apps and their tokens.
        self.run_people_and_app_writes(admin, member)
        # Every read path afterwards: every GET of the OpenAPI document (itself included), each
        # export format, point-in-time reads, the deleted list, the audit, compliance and ledger routes.
        client.get("/v1/secrets", params={"limit": 1}, headers=member.headers)
        pools = sorted({name for name, _ in self.members})
        self.read_everything(admin, [name for name in self.accepted if name != "deleted"] + self.expired
                             + pools + list(self.external))
        # Every value that was stored last can be revealed: the positive control of the responses.
        for name, value in self.accepted.items():
            if name not in ("deleted", *pools):
                revealed = client.post(secret_path(name, "/reveal"), headers=admin.headers)
                assert revealed.json()["value"] == value
        for name, value in self.external.items():
            assert self.reveal(admin, name).json()["value"] == value
        for pool in pools:
            current = {member: value for (name, member), value in self.members.items() if name == pool}
            answered = [self.reveal(admin, pool).json() for _ in range(len(current))]
            assert {a["member"]: a["value"] for a in answered} == current

    def run_access_writes(self, admin: Key, member: Key) -> None:
        client = self.client
        # A pool: members added by the admin, by the member key (with a label), and with an
        # idempotency key (replayed); each revealed in turn, once with an idempotency key (replayed).
        self.upsert(admin, "pool", expect=201, scope="agents")
        self.put_member(admin, "pool", "a", expect=201)
        self.put_member(member, "pool", "b", expect=201, label="account b")
        value = canary()
        for _ in range(2):
            added = client.put(secret_path("pool", "/members/c"), json={"value": value},
                               headers={**admin.headers, "Idempotency-Key": "idem-member"})
            assert added.status_code == 201, added.text
        self.members[("pool", "c")] = value
        self.stored.append(value)
        answered = {}
        for _ in range(3):
            body = self.reveal(admin, "pool").json()
            answered[body["member"]] = body["value"]
        assert answered == {m: v for (_, m), v in self.members.items()}
        for _ in range(2):
            body = self.reveal(member, "pool", {"reason": self.reason}, {"Idempotency-Key": "idem-reveal-pool"}).json()
            assert body["value"] == self.members[("pool", body["member"])]
        # A member disabled and enabled, replaced (by the member key, keeping its label), and removed:
        # the old values are destroyed at once; then the least recently revealed member answers.
        for action in ("disable", "enable"):
            changed = client.post(secret_path("pool", f"/members/b/{action}"), json={"reason": "rate limited"},
                                  headers=admin.headers)
            assert changed.status_code == 200, changed.text
        self.put_member(member, "pool", "b", expect=200)
        self.put_member(admin, "pool", "a", expect=200, label="account a")
        assert client.delete(secret_path("pool", "/members/c"), headers=admin.headers).status_code == 204
        self.destroy([self.members.pop(("pool", "c"))])
        chosen = client.put(secret_path("pool", "/pool"), json={"selection": "least_recent"}, headers=admin.headers)
        assert chosen.status_code == 200, chosen.text
        answered = {}
        for _ in range(2):
            body = self.reveal(admin, "pool").json()
            answered[body["member"]] = body["value"]
        assert answered == {m: v for (_, m), v in self.members.items()}
        # A value made by a generator rotation: unknown until revealed once, a canary from then on. A
        # second rotation by the member key; the rotation answers and the compliance list carry none.
        self.upsert(admin, "rotated", expect=201)
        rotation = {"interval_seconds": 3600, "rotator": {"kind": "generator", "length": 32, "alphabet": "hex"}}
        assert client.put(secret_path("rotated", "/rotation"), json=rotation, headers=admin.headers).status_code == 200
        self.rotating.add("rotated")
        for key, version in ((admin, 2), (member, 3)):
            rotated = client.post(secret_path("rotated", "/rotate"), headers=key.headers)
            assert (rotated.status_code, rotated.json()["version"]) == (200, version), rotated.text
            value = self.reveal(admin, "rotated").json()["value"]
            assert len(value) == 32 and value not in self.stored
            self.accepted["rotated"] = value
            self.stored.append(value)
        assert self.reveal(admin, "rotated", {"version": 2}).json()["value"] == self.stored[-2]
        # A reference: each reveal fetches the manager's current value (also with an idempotency key,
        # whose answer is never stored); the manager's value changes; the reference itself changes.
        path, _ = self.reference(admin, "referenced", expect=201)
        fetched = self.vault.fetches
        for _ in range(2):
            body = self.reveal(member, "referenced", {"reason": self.reason}, {"Idempotency-Key": "idem-reveal-ref"})
            assert body.json() == {"name": "referenced", "value": self.external["referenced"], "version": 1,
                                   "external": "vault-kv"}, body.text
        assert self.vault.fetches == fetched + 2
        self.vault.values[(path, "api_key")] = self.external["referenced"] = canary()
        self.stored.append(self.external["referenced"])
        assert self.reveal(admin, "referenced").json()["value"] == self.external["referenced"]
        self.reference(admin, "referenced", expect=200)
        assert self.reveal(admin, "referenced").json()["value"] == self.external["referenced"]

    def connect_app(self, key: Key, name: str, *, expect: int = 201, **fields: Any) -> dict[str, str]:
        """A connection whose client secret and tokens are canaries (unless given): what was planted."""
        planted = {"client_secret": canary(), "access_token": canary(), "refresh_token": canary()}
        body = {"name": name, "provider": "github", "client_id": "canary-client", **planted, "scopes": ["repo"],
                **fields}
        response = self.client.post("/v1/connected-apps", json=body, headers=key.headers)
        assert response.status_code == expect, response.text
        values = [v for k, v in body.items() if k in planted and isinstance(v, str)]
        if expect < 300:
            self.stored += values
            self.apps[name] = str(body["access_token"])
        else:
            self.refused += values
        return {k: str(v) for k, v in body.items() if k in planted}

    def app_token(self, key: Key, name: str, *, reason: str | None = None) -> httpx.Response:
        return self.client.post(f"/v1/connected-apps/{quote(name, safe='')}/token",
                                json=None if reason is None else {"reason": reason}, headers=key.headers)

    def run_people_and_app_writes(self, admin: Key, member: Key) -> None:
        client = self.client
        # Single sign-on: its client secret is a secret (a canary), named by the settings; a person joins.
        self.upsert(admin, CLIENT_SECRET_NAME, expect=201)
        sso = {"issuer": ISSUER, "client_id": "canary-sso-client", "client_secret_name": CLIENT_SECRET_NAME,
               "allowed_domains": ["example.com"]}
        assert client.put("/v1/sso", json=sso, headers=admin.headers).status_code == 200
        person = sign_in(client, admin.org, "canary-subject", "ada@example.com")
        assert client.patch(f"/v1/members/{person.member_id}", json={"role": "member"},
                            headers=admin.headers).status_code == 200
        # A static connection: its token answered to the admin (with a reason) and to a member key.
        static = self.connect_app(admin, "static")
        for key in (admin, member):
            assert self.app_token(key, "static", reason=self.reason).json()["access_token"] == static["access_token"]
        # A connection whose token is due at once, at a token endpoint that refuses connections: a 502, and the
        # tokens stay (stored, never answered: the refresh failed).
        with refused_port() as port:
            self.connect_app(admin, "unreachable", provider="custom", authorization_url="https://id.example.com/a",
                             token_url=f"http://127.0.0.1:{port}/token", expires_in=30)
            assert_problem(self.app_token(admin, "unreachable"), 502)
        # Connected, disconnected (its tokens destroyed), connected again with new ones.
        replaced = self.connect_app(admin, "replaced", scope="agents")
        assert self.app_token(member, "replaced").json()["access_token"] == replaced["access_token"]
        assert client.delete("/v1/connected-apps/replaced", headers=admin.headers).status_code == 204
        self.apps.pop("replaced")
        self.destroy(list(replaced.values()))
        again = self.connect_app(admin, "replaced")
        assert self.app_token(admin, "replaced").json()["access_token"] == again["access_token"]
        # Real tokens from the authorization server, due at once: refreshed there (the old ones destroyed).
        assert self.oidc is not None
        found = grant(self.oidc, "canary-user")
        assert found.tokens.refresh_token is not None
        first = [found.client_secret, found.tokens.access_token, found.tokens.refresh_token]
        self.connect_app(admin, "idp", provider="custom", authorization_url=self.oidc.authorization_endpoint,
                         token_url=self.oidc.token_endpoint, client_id=found.client_id,
                         client_secret=found.client_secret, access_token=found.tokens.access_token,
                         refresh_token=found.tokens.refresh_token, scopes=["email"], expires_in=30)
        issued = set(issued_to(self.oidc, found.client_id))
        refreshed = self.app_token(admin, "idp").json()
        assert refreshed["refreshed"] is True and refreshed["access_token"] not in first
        new_tokens = set(issued_to(self.oidc, found.client_id)) - issued
        assert refreshed["access_token"] in new_tokens and len(new_tokens) == 2  # an access and a refresh token
        self.stored += sorted(new_tokens)
        self.apps["idp"] = refreshed["access_token"]
        self.destroy(first[1:])

    def read_everything(self, admin: Key, names: list[str]) -> None:
        document = self.client.get("/schema/openapi.json").json()
        now = "2200-01-01T00:00:00Z"
        for path, operations in document["paths"].items():
            if "get" not in operations:
                continue
            queries: list[dict[str, Any]] = [{}]
            names_in_query = {p["name"] for p in operations["get"].get("parameters", []) if p["in"] == "query"}
            if "format" in names_in_query:
                queries = [{"format": f} for f in ("jsonl", "csv", "ocsf")]
            if "as_of" in names_in_query:
                queries.append({"as_of": now})
            if "deleted" in names_in_query:
                queries.append({"deleted": "true"})
            if "all" in names_in_query:
                queries.append({"all": "true"})
            for asked in queries:
                asked_names = list(self.apps) if path.startswith("/v1/connected-apps/") else names
                for name in asked_names if "{name}" in path else [""]:
                    extra = {"secret": name or names[0], "version": 1, "days": 0} if "/compliance/" in path else {}
                    params = {k: v for k, v in {**asked, **extra}.items() if k in names_in_query}
                    url = path.replace("{name}", quote(name, safe="")).replace("{key_id}", admin.key_id)
                    # The server's own routes (master key rotation) take the admin token, not an org's key.
                    headers = ADMIN_HEADERS if path.startswith("/v1/admin/") else admin.headers
                    response = self.client.get(url, params=params, headers=headers)
                    if "{name}" in path and path.endswith("/rotation") and name not in self.rotating:
                        assert_problem(response, 404, "no rotation policy")
                        continue
                    assert response.status_code == 200, (url, params, response.text)

    def run_refusals(self, admin: Key) -> None:
        client = self.client
        member = create_key(client, admin, role="member", scope="agents")
        self.api_keys += [admin.api_key, member.api_key]
        self.upsert(admin, "existing", expect=201)
        # 412: stale If-Match, and If-Match on a missing name.
        value = canary()
        self.refuse(
            412,
            "POST",
            "/v1/secrets",
            key=admin,
            json={"name": "existing", "value": value},
            headers={"If-Match": '"7"'},
            value=value,
        )
        value = canary()
        self.refuse(
            412,
            "POST",
            "/v1/secrets",
            key=admin,
            json={"name": "absent", "value": value},
            headers={"If-Match": "*"},
            value=value,
        )
        # 413: a 70,000-byte value that starts with the canary; a body over 1 MiB.
        value = canary()
        self.refuse(
            413, "POST", "/v1/secrets", key=admin, json={"name": "big", "value": value + "x" * 70_000}, value=value
        )
        value = canary()
        self.refuse(
            413,
            "POST",
            "/v1/secrets",
            key=admin,
            content=b'{"name": "huge", "value": "' + value.encode() + b"y" * MIB + b'"}',
            value=value,
        )
        # 422: an unknown field next to the value, a bad scope, a bad name, a value of the wrong type,
        # an unknown field in a reveal body, a reused idempotency key.
        for extra in (
            {"owner": "me"},
            {"scope": "everyone"},
            {"category": "nope"},
            {"name": "a/b"},
            {"description": "d" * 5000},
        ):
            value = canary()
            self.refuse(422, "POST", "/v1/secrets", key=admin, json={"name": "n", "value": value, **extra}, value=value)
        value = canary()
        self.refuse(422, "POST", "/v1/secrets", key=admin, json={"name": "n", "value": [value]}, value=value)
        value = canary()
        self.refuse(
            422,
            "POST",
            secret_path("existing", "/reveal"),
            key=admin,
            json={"reason": "r", "value": value},
            value=value,
        )
        first = client.post(
            "/v1/secrets",
            json={"name": "idem", "value": (stored := canary())},
            headers={**admin.headers, "Idempotency-Key": "reused"},
        )
        assert first.status_code == 201
        self.accepted["idem"] = stored
        self.stored.append(stored)
        value = canary()
        self.refuse(
            422,
            "POST",
            "/v1/secrets",
            key=admin,
            json={"name": "idem", "value": value},
            headers={"Idempotency-Key": "reused"},
            value=value,
        )
        # 422: malformed JSON that contains the canary.
        value = canary()
        self.refuse(
            422,
            "POST",
            "/v1/secrets",
            key=admin,
            content=b'{"name": "broken", "value": "' + value.encode() + b'", }',
            value=value,
        )
        # 401 and 403 and 404 with canary-bearing bodies.
        value = canary()
        self.refuse(
            401,
            "POST",
            "/v1/secrets",
            key=None,
            json={"name": "n", "value": value},
            headers={"Authorization": "Bearer rt_live_" + "Q" * 40},
            value=value,
        )
        value = canary()
        self.refuse(
            401,
            "POST",
            "/v1/admin/orgs",
            key=None,
            json={"org": "x"},
            headers={"Authorization": "Bearer " + value},
            value=value,
        )
        value = canary()
        self.refuse(403, "POST", "/v1/keys", key=member, json={"label": value}, value=value)
        value = canary()
        self.refuse(404, "POST", "/v1/secretz", key=admin, json={"name": "n", "value": value}, value=value)
        value = canary()
        self.refuse(
            404,
            "POST",
            secret_path("missing", "/reveal"),
            key=admin,
            content=b'{"reason": "' + value.encode() + b'"}',
            value=value,
        )
        # The new routes: a value next to a rollback's version, or as it; a stale If-Match that carries
        # the canary; a body sent to restore (which takes none) and to a purge by a member key; a
        # reveal of an unknown version; expiry times that are not times; bodies of the org's settings.
        value = canary()
        self.refuse(422, "POST", secret_path("existing", "/rollback"), key=admin, json={"version": 1, "value": value},
                    value=value)
        value = canary()
        self.refuse(422, "POST", secret_path("existing", "/rollback"), key=admin, json={"version": value}, value=value)
        value = canary()
        self.refuse(422, "POST", secret_path("existing", "/rollback"), key=admin,
                    content=b'{"version": 1, "value": "' + value.encode() + b'",}', value=value)
        value = canary()
        self.refuse(412, "POST", secret_path("existing", "/rollback"), key=admin, json={"version": 1},
                    headers={"If-Match": f'"{value}"'}, value=value)
        value = canary()
        self.refuse(409, "POST", secret_path("existing", "/restore"), key=admin, json={"value": value}, value=value)
        value = canary()
        self.refuse(404, "POST", secret_path("absent", "/restore"), key=admin, json={"value": value}, value=value)
        value = canary()
        self.refuse(403, "DELETE", secret_path("existing") + "?purge=true", key=member,
                    headers={"If-Match": f'"{value}"'}, value=value)
        value = canary()
        self.refuse(422, "POST", secret_path("existing", "/reveal"), key=admin, json={"version": value}, value=value)
        value = canary()
        self.refuse(404, "POST", secret_path("existing", "/reveal"), key=admin, json={"version": 99}, value=value,
                    headers={"X-Note": value})
        for expires_at in ("tomorrow", "2026-13-45T00:00:00Z", 12345, "1969-12-31T23:59:59Z", "2300-01-01T00:00:00Z"):
            value = canary()
            self.refuse(422, "POST", "/v1/secrets", key=admin,
                        json={"name": "n", "value": value, "expires_at": expires_at}, value=value)
        value = canary()
        self.refuse(422, "PUT", "/v1/org/settings", key=admin, json={"recovery_window_days": 7, "value": value},
                    value=value)
        value = canary()
        self.refuse(422, "PUT", "/v1/org/settings", key=admin, json={"recovery_window_days": value}, value=value)
        value = canary()
        self.refuse(422, "PUT", "/v1/org/settings", key=admin,
                    content=b'{"recovery_window_days": "' + value.encode() + b'"', value=value)
        value = canary()
        self.refuse(403, "PUT", "/v1/org/settings", key=member, json={"recovery_window_days": 1},
                    headers={"X-Note": value}, value=value)
        self.run_access_refusals(admin, member)
        self.run_ssh_key_refusals(admin, member)
        self.run_people_and_app_refusals(admin, member)
        # 503: the append fails; the value was sealed but never committed.
        value = canary()
        client.app.state.ledger.recorder.fail_next_commits = 1
        self.refuse(503, "POST", "/v1/secrets", key=admin, json={"name": "unlucky", "value": value}, value=value)
        client.app.state.ledger.recorder.fail_next_commits = 1
        failed = client.post(secret_path("existing", "/reveal"), headers=admin.headers)
        assert_problem(failed, 503)
        assert self.accepted["existing"] not in failed.text
        # The value is still there, and revealed once the store works again.
        again = client.post(secret_path("existing", "/reveal"), headers=admin.headers)
        assert again.json()["value"] == self.accepted["existing"]
        # A rollback and a restore whose append fails: the value was opened and sealed again, but the
        # answer carries none, and nothing changed.
        client.app.state.ledger.recorder.fail_next_commits = 1
        failed = client.post(secret_path("existing", "/rollback"), json={"version": 1}, headers=admin.headers)
        assert_problem(failed, 503)
        self.upsert(admin, "to-restore", expect=201)
        assert client.delete(secret_path("to-restore"), headers=admin.headers).status_code == 204
        client.app.state.ledger.recorder.fail_next_commits = 1
        assert_problem(client.post(secret_path("to-restore", "/restore"), headers=admin.headers), 503)
        assert client.get(secret_path("existing"), headers=admin.headers).json()["version"] == 1
        assert client.post(secret_path("to-restore", "/restore"), headers=admin.headers).status_code == 200
        again = client.post(secret_path("to-restore", "/reveal"), headers=admin.headers)
        assert again.json()["value"] == self.accepted["to-restore"]

    def run_access_refusals(self, admin: Key, member: Key) -> None:
        """Canaries sent to the routes of policies, rotation and pools, and as references, all refused."""
        client = self.client
        self.upsert(admin, "pool", expect=201)
        self.put_member(admin, "pool", "a", expect=201)
        self.reference(admin, "referenced", expect=201)
        members = secret_path("pool", "/members/a")

        def refuse_each(status: int, method: str, path: str, bodies: list[Any], key: Key = admin,
                        headers: dict[str, str] | None = None) -> None:
            for make in bodies:
                value = canary()
                self.refuse(status, method, path, key=key, json=make(value), headers=headers, value=value)

        # A member's value with a label too long, an unknown field, the wrong type, a bad member name; a
        # member of a missing secret, of another org's name, of a reference; a value over 64 KiB.
        refuse_each(422, "PUT", members, [
            lambda v: {"value": v, "label": "l" * 201},
            lambda v: {"value": v, "note": "x"},
            lambda v: {"value": [v]},
            lambda v: {"label": v},
        ])
        refuse_each(422, "PUT", secret_path("pool", "/members/" + quote("a\x01", safe="")), [lambda v: {"value": v}])
        refuse_each(404, "PUT", secret_path("absent", "/members/a"), [lambda v: {"value": v, "label": "l"}])
        other = create_org(client, "other-org")
        self.api_keys.append(other.api_key)
        self.upsert(other, "theirs", expect=201)
        refuse_each(404, "PUT", secret_path("theirs", "/members/a"), [lambda v: {"value": v}])
        refuse_each(404, "PUT", secret_path("theirs", "/policy"), [lambda v: {"labels": [v]}])
        refuse_each(422, "PUT", secret_path("referenced", "/members/a"), [lambda v: {"value": v}])
        refuse_each(413, "PUT", members, [lambda v: {"value": v + "x" * 70_000}])
        value = canary()
        self.refuse(422, "PUT", members, key=admin, content=b'{"value": "' + value.encode() + b'",}', value=value)
        value = canary()
        self.refuse(413, "PUT", members, key=admin, content=b'{"value": "' + value.encode() + b"y" * MIB + b'"}',
                    value=value)
        # An idempotency key reused with another value; the first request stored its value.
        self.put_member(admin, "pool", "b", expect=201)
        value = canary()
        first = client.put(secret_path("pool", "/members/c"), json={"value": value},
                           headers={**admin.headers, "Idempotency-Key": "reused-member"})
        assert first.status_code == 201, first.text
        self.members[("pool", "c")] = value
        self.stored.append(value)
        refuse_each(422, "PUT", secret_path("pool", "/members/c"), [lambda v: {"value": v}],
                    headers={"Idempotency-Key": "reused-member"})
        # Member states: reasons too long, or for a member or secret that does not exist.
        refuse_each(422, "POST", secret_path("pool", "/members/a/disable"), [lambda v: {"reason": v + "r" * 1024},
                                                                            lambda v: {"reason": "r", "value": v}])
        refuse_each(404, "POST", secret_path("pool", "/members/nobody/disable"), [lambda v: {"reason": v}])
        refuse_each(404, "POST", secret_path("absent", "/members/a/enable"), [lambda v: {"reason": v}])
        # A policy by a member key, with entries too long or of an unknown role; of a missing secret.
        refuse_each(403, "PUT", secret_path("pool", "/policy"), [lambda v: {"labels": [v]}], key=member)
        refuse_each(422, "PUT", secret_path("pool", "/policy"), [lambda v: {"labels": [v + "l" * 200]},
                                                                 lambda v: {"roles": ["root"], "labels": [v]},
                                                                 lambda v: {"key_ids": [v], "value": v}])
        refuse_each(404, "PUT", secret_path("absent", "/policy"), [lambda v: {"labels": [v]}])
        # Rotation: a webhook whose URL carries the canary as a password, or is not http(s); a canary as
        # the rotator's kind or alphabet; a rotation of a pool or a reference; a rotator in a pool body.
        refuse_each(422, "PUT", secret_path("existing", "/rotation"), [
            lambda v: {"interval_seconds": 3600, "rotator": {"kind": "webhook", "url": f"https://u:{v}@example.com/"}},
            lambda v: {"interval_seconds": 3600, "rotator": {"kind": "webhook", "url": f"ftp://example.com/{v}"}},
            lambda v: {"interval_seconds": 3600, "rotator": {"kind": "sms", "url": v}},
            lambda v: {"interval_seconds": 3600, "rotator": {"kind": "generator", "alphabet": v}},
            lambda v: {"interval_seconds": 3600, "rotator": {"kind": "generator"}, "value": v},
        ])
        generator = {"kind": "generator", "prefix": "p"}
        refuse_each(409, "PUT", secret_path("pool", "/rotation"), [lambda v: {"interval_seconds": 3600, "rotator": {
            **generator, "prefix": v[:64]}}])
        refuse_each(409, "PUT", secret_path("referenced", "/rotation"), [
            lambda v: {"interval_seconds": 3600, "rotator": {**generator, "prefix": v[:64]}}])
        refuse_each(404, "PUT", secret_path("absent", "/rotation"), [
            lambda v: {"interval_seconds": 3600, "rotator": {**generator, "prefix": v[:64]}}])
        refuse_each(409, "POST", secret_path("existing", "/rotate"), [lambda v: {"value": v}])
        refuse_each(422, "PUT", secret_path("pool", "/pool"), [lambda v: {"selection": "random", "note": v},
                                                               lambda v: {"selection": "round_robin", "value": v}])
        # References: malformed, of an unknown scheme, given with a value, too long; an update of a
        # reference with a stale If-Match.
        refuse_each(422, "POST", "/v1/secrets", [
            lambda v: {"name": "r", "value": f"vault-kv://secret/../{v}", "reference": True},
            lambda v: {"name": "r", "value": f"vault-kv://secret/{v}#", "reference": True},
            lambda v: {"name": "r", "value": f"ftp://secret/{v}", "reference": True},
            lambda v: {"name": "r", "value": f" vault-kv://secret/{v}", "reference": True},
            lambda v: {"name": "r", "value": f"aws-sm://mars/{v}", "reference": True},
            lambda v: {"name": "r", "value": f"vault-kv://secret/{v}", "reference": "yes"},
            lambda v: {"name": "r", "value": v, "reference": True},
            lambda v: {"name": "r", "value": f"vault-kv://secret/{v}" + "x" * 2048, "reference": True},
        ])
        refuse_each(412, "POST", "/v1/secrets",
                    [lambda v: {"name": "referenced", "value": f"vault-kv://s/{v}", "reference": True}],
                    headers={"If-Match": '"7"'})

    def run_ssh_key_refusals(self, admin: Key, member: Key) -> None:
        """Canaries sent to the SSH key routes, all refused: never quoted back (these routes take any text)."""
        client = self.client

        def line(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> str:
            return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                 serialization.PublicFormat.OpenSSH).decode()

        good, other = line(ed25519.Ed25519PrivateKey.generate()), line(ed25519.Ed25519PrivateKey.generate())
        short_rsa = line(rsa.generate_private_key(public_exponent=65537, key_size=1024))
        data = good.split(" ")[1]
        for make in (
            lambda v: {"public_key": v},
            lambda v: {"public_key": f"ssh-dss {data} {v}"},
            lambda v: {"public_key": f"{short_rsa} {v}"},
            lambda v: {"public_key": f"ssh-ed25519-cert-v01@openssh.com {data} {v}"},
            lambda v: {"public_key": f"{v} {data}"},
            lambda v: {"public_key": f"ssh-ed25519 {v}"},
            lambda v: {"public_key": f"{good} {v}\x07"},
            lambda v: {"public_key": f"{good}\n{other} {v}"},
            lambda v: {"public_key": f"-----BEGIN OPENSSH PRIVATE KEY-----\n{v}\n-----END OPENSSH PRIVATE KEY-----\n"},
            lambda v: {"public_key": f"PuTTY-User-Key-File-3: ssh-ed25519\nPrivate-Lines: 1\n{v}\n"},
            lambda v: {"public_key": f"{good} {v}" + "c" * 1100},
            lambda v: {"public_key": good, "label": v + "l" * 200},
            lambda v: {"public_key": good, "note": v},
            lambda v: {"public_key": [v]},
        ):
            value = canary()
            self.refuse(422, "POST", "/v1/ssh-keys", key=admin, json=make(value), value=value)
        value = canary()
        self.refuse(422, "POST", "/v1/ssh-keys", key=admin,
                    content=b'{"public_key": "' + good.encode() + b" " + value.encode() + b'",}', value=value)
        # A duplicate (its label a canary), another key's removal, an unknown id, a reused idempotency key.
        added = client.post("/v1/ssh-keys", json={"public_key": good, "label": "laptop"}, headers=admin.headers)
        assert added.status_code == 201, added.text
        value = canary()
        self.refuse(409, "POST", "/v1/ssh-keys", key=member, json={"public_key": good + " " + value, "label": value},
                    value=value)
        value = canary()
        self.refuse(403, "DELETE", f"/v1/ssh-keys/{added.json()['ssh_key_id']}", key=member,
                    headers={"X-Note": value}, value=value)
        value = canary()  # (not in the path: the test client itself logs every URL)
        self.refuse(404, "DELETE", "/v1/ssh-keys/ssh_0000000000000000", key=admin, headers={"X-Note": value},
                    value=value)
        first = client.post("/v1/ssh-keys", json={"public_key": other}, headers={**admin.headers,
                                                                                 "Idempotency-Key": "reused-ssh"})
        assert first.status_code == 201, first.text
        value = canary()
        self.refuse(422, "POST", "/v1/ssh-keys", key=admin, json={"public_key": other, "label": value},
                    headers={"Idempotency-Key": "reused-ssh"}, value=value)
        value = canary()
        self.refuse(401, "POST", "/v1/ssh-keys", key=None, json={"public_key": f"{good} {value}"},
                    headers={"Authorization": "Bearer rt_live_" + "Q" * 40}, value=value)

    def run_people_and_app_refusals(self, admin: Key, member: Key) -> None:
        """Canaries as client secrets and tokens of refused connections, and in refused SSO settings."""
        self.connect_app(admin, "existing")
        for key, expect, fields in (
            (member, 403, {}),  # a member key may not connect
            (admin, 409, {"name": "existing"}),  # connected and healthy
            (admin, 422, {"provider": "custom"}),  # no URLs
            (admin, 422, {"token_url": "http://example.com/token"}),  # plain http, not loopback
            (admin, 422, {"scopes": ["two words"]}),
            (admin, 422, {"expires_in": 0}),
            (admin, 422, {"note": "unknown field"}),
        ):
            self.connect_app(key, fields.pop("name", "refused"), expect=expect, **fields)
        for make in (
            lambda v: {"name": "n", "client_id": "c", "client_secret": v, "access_token": [v]},
            lambda v: {"name": "n", "client_id": "c", "client_secret": v, "access_token": v, "token_url": f"ftp://{v}"},
            lambda v: {"name": "n", "client_id": "c", "client_secret": v, "access_token": v,
                       "token_url": f"https://user:{v}@example.com/t"},
            lambda v: {"name": "n", "client_id": "c", "client_secret": v + "s" * 4096, "access_token": v},
        ):
            value = canary()
            self.refuse(422, "POST", "/v1/connected-apps", key=admin, json=make(value), value=value)
        value = canary()
        body = b'{"name": "n", "client_id": "c", "client_secret": "' + value.encode() + b'",}'
        self.refuse(422, "POST", "/v1/connected-apps", key=admin, content=body, value=value)
        value = canary()
        self.refuse(401, "POST", "/v1/connected-apps", key=None,
                    json={"name": "n", "client_id": "c", "client_secret": value, "access_token": value},
                    headers={"Authorization": "Bearer rt_live_" + "Q" * 40}, value=value)
        for status, name, body in ((422, "existing", lambda v: {"reason": v + "r" * 1024}),
                                   (422, "existing", lambda v: {"reason": "r", "access_token": v}),
                                   (404, "absent", lambda v: {"reason": v})):
            value = canary()
            self.refuse(status, "POST", f"/v1/connected-apps/{name}/token", key=admin, json=body(value), value=value)
        value = canary()
        self.refuse(403, "DELETE", "/v1/connected-apps/existing", key=member, headers={"X-Note": value}, value=value)
        # SSO settings: a client secret sent where only its name goes, an issuer carrying one, domains.
        sso = {"issuer": ISSUER, "client_id": "c", "client_secret_name": "existing", "allowed_domains": ["example.com"]}
        for make in (
            lambda v: {**sso, "client_secret": v},
            lambda v: {**sso, "issuer": f"https://user:{v}@id.example.com"},
            lambda v: {**sso, "issuer": f"http://{v}.example.com"},
            lambda v: {**sso, "allowed_domains": [v]},
            lambda v: {**sso, "client_id": v + "c" * 300},
        ):
            value = canary()
            self.refuse(422, "PUT", "/v1/sso", key=admin, json=make(value), value=value)
        value = canary()
        self.refuse(403, "PUT", "/v1/sso", key=member, json={**sso, "client_id": value}, value=value)

    def check_responses(self) -> None:
        every = self.stored + self.refused
        reveal_answers = 0
        for index, response in enumerate(self.recorded.responses):
            text = self.recorded.text_of(response)
            back = [value for value, since in self.destroyed.items() if index >= since and value in text]
            assert not back, f"a destroyed value came back: {response.request.url.path} -> {text[:300]}"
            shown = [reference for reference in self.references if reference in text]
            assert not shown, f"a reference's text was shown: {response.request.url.path} -> {text[:300]}"
            if self.recorded.is_reveal_answer(response):
                reveal_answers += 1
                assert any(value in text for value in self.stored), "a reveal answer without its value"
                assert not any(value in text for value in self.refused), text
                continue
            leaked = [value for value in every if value in text]
            assert not leaked, f"{response.request.method} {response.request.url.path} -> {text[:300]}"
        assert reveal_answers > 0

    def check_logs(self, caplog: pytest.LogCaptureFixture) -> None:
        assert caplog.records, "nothing was logged: the capture is broken"
        # The authorization server's records (in its own threads) are the provider's logs, not keyledger's.
        records = [record for record in caplog.records if not from_the_provider(record)]
        logged = "\n".join(
            f"{caplog.handler.format(record)} {record.name} {record.getMessage()} {record.exc_text or ''} "
            f"{record.args!r}" for record in records
        )
        for value in self.stored + self.refused + self.api_keys + self.references:
            assert value not in logged


@pytest.mark.parametrize("offset", range(6))
def test_the_file_scan_finds_every_encoding_at_every_offset(offset: int) -> None:
    value = canary()
    blob = uuid.uuid4().bytes[:offset] + value.encode() + uuid.uuid4().bytes
    forms = encodings(value)
    for encoded in (
        blob,
        blob.hex().encode(),
        blob.hex().upper().encode(),
        base64.b64encode(blob),
        base64.urlsafe_b64encode(blob),
    ):
        assert any(form in encoded for form in forms), encoded
    assert not any(form in base64.b64encode(canary().encode()) for form in forms)


@pytest.fixture
def vault() -> MemoryVault:
    return MemoryVault()


@pytest.fixture
def app(settings: Settings, clock: Clock, vault: MemoryVault) -> Litestar:
    """The app on the test's clock (expiry is reached by moving it forward), with the in-memory Vault
    as the adapter for vault-kv:// references."""
    return create_app(settings, clock=clock, external=ExternalStores([vault]))


@pytest.fixture
def scenario(
    client: Client,
    db_file: Path | PgDsn,
    clock: Clock,
    settings: Settings,
    vault: MemoryVault,
    caplog: pytest.LogCaptureFixture,
) -> Iterator[Scenario]:
    with every_logger_at_debug(caplog.handler):
        yield Scenario(client, db_file, clock, Keyring(settings.master_key, settings.previous_master_keys), vault)


def test_canaries_from_every_write_path_appear_only_in_reveal_answers(
    scenario: Scenario, caplog: pytest.LogCaptureFixture, oidc_server: OidcServer
) -> None:
    admin = create_org(scenario.client, "canary-org")
    scenario.oidc = oidc_server
    scenario.run_write_paths(admin)
    assert len(scenario.stored) >= 10 and len(scenario.destroyed) >= 4
    assert scenario.members and scenario.external and scenario.rotating and scenario.references
    scenario.check_responses()
    scenario.check_logs(caplog)
    assert_nowhere_in_files(scenario.db, scenario.stored + scenario.api_keys + scenario.references)
    # Positive control: the files are read as they are, WAL included; the reason is stored in plaintext.
    files = b"".join(database_bytes(scenario.db).values())
    assert scenario.reason.encode() in files
    # With the master key and the whole database, no destroyed value opens any more; every current
    # value does (positive control), as does an idempotent reveal's stored answer.
    opened = b"\n".join(openable_values(scenario.db, scenario.keyring))
    assert [value for value in scenario.destroyed if value.encode() in opened] == []
    assert all(value.encode() in opened for value in scenario.accepted.values())
    assert all(value.encode() in opened for value in scenario.members.values())
    assert set(scenario.apps) == {"static", "unreachable", "replaced", "idp"}
    assert all(value.encode() in opened for value in scenario.apps.values())  # each app's current token
    # The idempotent reveals' answers (the pool's went with its member's value, replaced or removed since).
    assert opened.count(b'"value":"CANARY-') >= 2
    # A reference's text is sealed like a value; what it fetched is not in the database at all.
    assert all(reference.encode() in opened for reference in scenario.references)
    assert not [value for value in scenario.external.values() if value.encode() in opened]


def test_canaries_in_refused_requests_appear_nowhere(scenario: Scenario, caplog: pytest.LogCaptureFixture) -> None:
    admin = create_org(scenario.client, "canary-org")
    scenario.run_refusals(admin)
    assert len(scenario.refused) >= 30
    scenario.check_responses()
    scenario.check_logs(caplog)
    # Positive control: the failed commits were logged, so errors do reach the capture.
    assert any(record.name.startswith("keyledger") and record.levelno >= logging.ERROR for record in caplog.records)
    assert_nowhere_in_files(scenario.db, scenario.stored + scenario.refused + scenario.api_keys + scenario.references)


# Found by this suite: an idempotent reveal's stored answer (the value itself) once outlived the
# destruction of its value, sealed under the master key. It is now sealed by the version's data key.
@pytest.mark.parametrize("how", ["purge", "zero-day window"])
def test_a_destroyed_value_is_not_replayed_from_an_idempotent_reveal(scenario: Scenario, how: str) -> None:
    client = scenario.client
    admin = create_org(client, "canary-org")
    if how == "zero-day window":
        changed = client.put("/v1/org/settings", json={"recovery_window_days": 0}, headers=admin.headers)
        assert changed.status_code == 200
    scenario.upsert(admin, "destroyed", expect=201)
    value = scenario.accepted["destroyed"]
    retry = {"Idempotency-Key": "reveal-before-destruction"}
    assert scenario.reveal(admin, "destroyed", headers=retry).json()["value"] == value
    params = {"purge": "true"} if how == "purge" else {}
    assert client.delete(secret_path("destroyed"), params=params, headers=admin.headers).status_code == 204
    scenario.forget("destroyed", [value])
    assert_problem(scenario.reveal(admin, "destroyed"), 404)
    replayed = scenario.reveal(admin, "destroyed", headers=retry)
    assert value not in replayed.text, (replayed.status_code, dict(replayed.headers), replayed.text)
    assert_problem(replayed, 404, "destroyed")
    assert value.encode() not in b"\n".join(openable_values(scenario.db, scenario.keyring))
    scenario.check_responses()


def test_a_pool_members_old_value_is_not_replayed_from_an_idempotent_reveal(scenario: Scenario) -> None:
    """The stored answer of an idempotent pool reveal is sealed by the member's data key: removing the
    member, giving it a new value or purging the pool destroys the stored answer with the value."""
    client = scenario.client
    admin = create_org(client, "canary-org")
    revealed: dict[str, tuple[str, dict[str, str]]] = {}
    for how in ("removed", "updated", "purged"):
        scenario.upsert(admin, how, expect=201)
        value = scenario.put_member(admin, how, "only", expect=201)
        retry = {"Idempotency-Key": f"reveal-before-{how}"}
        first = scenario.reveal(admin, how, headers=retry)
        assert (first.json()["value"], first.json()["member"]) == (value, "only"), first.text
        revealed[how] = value, retry
    assert client.delete(secret_path("removed", "/members/only"), headers=admin.headers).status_code == 204
    scenario.destroy([scenario.members.pop(("removed", "only"))])
    scenario.put_member(admin, "updated", "only", expect=200)  # destroys the first value
    assert scenario.reveal(admin, "updated").json()["value"] == scenario.members[("updated", "only")]
    assert client.delete(secret_path("purged"), params={"purge": "true"}, headers=admin.headers).status_code == 204
    scenario.forget("purged", [scenario.accepted["purged"], scenario.members.pop(("purged", "only"))])
    for how, (value, retry) in revealed.items():
        replayed = scenario.reveal(admin, how, headers=retry)
        assert value not in replayed.text, (how, replayed.status_code, dict(replayed.headers), replayed.text)
        assert_problem(replayed, 404, "destroyed")
    opened = b"\n".join(openable_values(scenario.db, scenario.keyring))
    assert [how for how, (value, _) in revealed.items() if value.encode() in opened] == []
    assert scenario.members[("updated", "only")].encode() in opened  # positive control
    assert_nowhere_in_files(scenario.db, [value for value, _ in revealed.values()])
    scenario.check_responses()


def test_no_canary_in_the_database_files_after_shutdown(tmp_path: Path) -> None:
    db = tmp_path / "closed.db"
    app = create_app(Settings(db=db, master_key=MasterKey.generate()[0], admin_token=ADMIN_TOKEN))
    values = [canary() for _ in range(20)]
    with make_client(app) as client:
        admin = create_org(client, "closing")
        for i, value in enumerate(values):
            headers = {**admin.headers, "Idempotency-Key": f"k{i}"} if i % 2 else admin.headers
            assert client.post(
                "/v1/secrets", json={"name": f"s{i % 5}", "value": value}, headers=headers
            ).status_code in (200, 201)
        for i in range(5):
            revealed = client.post(
                secret_path(f"s{i}", "/reveal"), headers={**admin.headers, "Idempotency-Key": f"r{i}"}
            )
            assert revealed.json()["value"] == values[15 + i]
        # A rollback, a delete and restore, and a purge write values (sealed again) and destroy them.
        rolled = client.post(secret_path("s0", "/rollback"), json={"version": 1}, headers=admin.headers)
        assert rolled.status_code == 200
        assert client.delete(secret_path("s1"), headers=admin.headers).status_code == 204
        assert client.post(secret_path("s1", "/restore"), headers=admin.headers).status_code == 200
        assert client.delete(secret_path("s2"), params={"purge": "true"}, headers=admin.headers).status_code == 204
        assert client.post("/v1/admin/orgs", json={"org": "other"}, headers=ADMIN_HEADERS).status_code == 201
    assert_nowhere_in_files(db, values)
