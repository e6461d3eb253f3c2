"""Invariant 4 through HTTP: a planted value appears only in reveal responses.

Canary values ("CANARY-" + 32 hex digits) go in through every write path and through requests
that are refused. Every response is recorded; only a 200 from `/reveal` may carry a canary. Logs
(every logger at DEBUG), error texts and the database files (main file, -wal, -shm; plaintext,
base64 and hex) must never carry one. Positive controls show that each place looked at would
have shown a canary: the reveal responses, the stored reveal reason and a logged error.
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from api.app import create_app
from api.settings import Settings
from ledger.crypto import MasterKey
from tests.api.conftest import (
    ADMIN_HEADERS,
    ADMIN_TOKEN,
    Key,
    assert_problem,
    create_key,
    create_org,
    make_client,
    secret_path,
    stored_bytes,
)
from tests.pg import PgDsn

Client = TestClient[Litestar]
MIB = 1024 * 1024


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
        return response.request.url.path.endswith("/reveal") and response.status_code == 200

    def text_of(self, response: httpx.Response) -> str:
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        return f"{response.status_code}\n{headers}\n{response.content.decode('utf-8', 'replace')}"


class Scenario:
    def __init__(self, client: Client, db: Path | PgDsn) -> None:
        self.client = client
        self.db = db
        self.recorded = Recorded(client)
        self.accepted: dict[str, str] = {}  # name -> canary value stored under it (last one)
        self.stored: list[str] = []  # every canary that was accepted into the ledger
        self.refused: list[str] = []  # every canary sent in a refused request
        self.reason = "REASON-" + uuid.uuid4().hex  # stored on purpose, in plaintext: the positive control
        self.api_keys: list[str] = []  # shown once in their creation answer, stored only as SHA-256

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
        # Every read path afterwards: every GET of the OpenAPI document (itself included), each
        # export format, point-in-time reads, the audit, compliance and ledger routes.
        client.get("/v1/secrets", params={"limit": 1}, headers=member.headers)
        self.read_everything(admin, [name for name in self.accepted if name != "deleted"])
        # Every value that was stored last can be revealed: the positive control of the responses.
        for name, value in self.accepted.items():
            if name not in ("deleted",):
                revealed = client.post(secret_path(name, "/reveal"), headers=admin.headers)
                assert revealed.json()["value"] == value

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
            for query in queries:
                for name in names if "{name}" in path else [""]:
                    extra = {"secret": name or names[0], "version": 1, "days": 0} if "/compliance/" in path else {}
                    params = {k: v for k, v in {**query, **extra}.items() if k in names_in_query}
                    url = path.replace("{name}", quote(name, safe="")).replace("{key_id}", admin.key_id)
                    response = self.client.get(url, params=params, headers=admin.headers)
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

    def check_responses(self) -> None:
        every = self.stored + self.refused
        reveal_answers = 0
        for response in self.recorded.responses:
            text = self.recorded.text_of(response)
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
        logged = caplog.text + "\n".join(
            f"{record.name} {record.getMessage()} {record.exc_text or ''} {record.args!r}" for record in caplog.records
        )
        for value in self.stored + self.refused + self.api_keys:
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
def scenario(client: Client, db_file: Path | PgDsn, caplog: pytest.LogCaptureFixture) -> Iterator[Scenario]:
    with every_logger_at_debug(caplog.handler):
        yield Scenario(client, db_file)


def test_canaries_from_every_write_path_appear_only_in_reveal_answers(
    scenario: Scenario, caplog: pytest.LogCaptureFixture
) -> None:
    admin = create_org(scenario.client, "canary-org")
    scenario.run_write_paths(admin)
    assert len(scenario.stored) >= 10
    scenario.check_responses()
    scenario.check_logs(caplog)
    assert_nowhere_in_files(scenario.db, scenario.stored + scenario.api_keys)
    # Positive control: the files are read as they are, WAL included; the reason is stored in plaintext.
    files = b"".join(database_bytes(scenario.db).values())
    assert scenario.reason.encode() in files


def test_canaries_in_refused_requests_appear_nowhere(scenario: Scenario, caplog: pytest.LogCaptureFixture) -> None:
    admin = create_org(scenario.client, "canary-org")
    scenario.run_refusals(admin)
    assert len(scenario.refused) >= 15
    scenario.check_responses()
    scenario.check_logs(caplog)
    # Positive control: the failed commits were logged, so errors do reach the capture.
    assert any(record.name.startswith("keyledger") and record.levelno >= logging.ERROR for record in caplog.records)
    assert_nowhere_in_files(scenario.db, scenario.stored + scenario.refused + scenario.api_keys)


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
        assert client.post("/v1/admin/orgs", json={"org": "other"}, headers=ADMIN_HEADERS).status_code == 201
    assert_nowhere_in_files(db, values)
