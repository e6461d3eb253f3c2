"""schemathesis against the app's own OpenAPI document: no server errors, and every response
conforms to the document (status code, content type, body schema).

- Stateless: every operation, KEYLEDGER_FUZZ_EXAMPLES generated cases each (positive and negative,
  default 200), after the cases of schemathesis' coverage phase. With the stateful steps (2,000), the
  module's last test counts the cases actually sent and asserts >= 10,000.
- Stateful: schemathesis' state machine follows the document's OpenAPI links (`api/openapi_links.py`):
  upsert -> get / reveal / update / delete (with the ETag as If-Match) -> get again (404), create a
  key -> revoke it -> revoke it again (404), create an org -> create it again (409), list -> next page,
  add an SSH key -> remove it -> remove it again (404), list apps -> connect one -> get it / a token /
  disconnect it -> get it again (404), list people -> set the org's SSO settings -> get / remove them.
  It asserts that the links were followed and reached the answers they lead to.
- No call leaves the machine: a connected app's token endpoint is always a loopback port that refuses
  connections (a global hook, so the PostgreSQL module's fuzzing too), so a token that is due for its
  refresh answers 502 at once instead of asking github.com or a generated host.

Bigger runs: `KEYLEDGER_FUZZ_EXAMPLES=2000 .venv/bin/pytest tests/api/test_schemathesis.py` (the stateful
budget grows with it). What a case costs, profiled on 2 cores: ~10 ms, of which ~2.5 ms in the app
(the call through schemathesis' ASGI transport, and the checks) and the rest generating it (Hypothesis
drawing from schemathesis' strategies: ~2.5 ms for a positive case, ~6 ms for a negative one, plus the
engine's mutations and ~20% of draws it rejects). So the count is reached with cheap settings rather
than fewer cases: no example database, no `reuse`/`target`/`explain` phases (shrinking only ever runs
on a failure, and never in the stateful test, where a replay meets a service that moved on). The
whole module takes ~2 minutes on a loaded 2-core machine (~11,000 cases).

`from_asgi` starts the app's lifespan itself (once per app, in schemathesis' own event-loop
thread), so the schema is read from the running app and every case goes to it. The schema is
loaded at import time because schemathesis 4.32's lazy `schemathesis.pytest.from_fixture` does not
work under pytest 9 (it sets `request.node._nodeid`, which pytest 9 no longer has). The module
fixture shuts the lifespan down and removes the database. Rate limits are off in this app: 10,000
requests in two minutes from one key are the point here, not a runaway client.

Checks are chosen explicitly (so Litestar's OPTIONS/Allow behaviour, litestar#4169/#4277, is not
among them). Every answer gets all four checks. Two former mismatches keep their own tests:
a body that is not JSON is a documented 422 problem, and `GET /v1/audit/export` documents the
media types it streams (`application/x-ndjson`, `text/csv`).
"""

from __future__ import annotations

import atexit
import itertools
import os
import socket
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import schemathesis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import FlakyStrategyDefinition
from schemathesis.checks import not_a_server_error
from schemathesis.engine.errors import is_inconsistent_replay
from schemathesis.generation.stateful.state_machine import StepInput, StepOutput
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from api.openapi_links import LINKS
from api.settings import Settings
from ledger.crypto import MasterKey
from tests.api.conftest import ADMIN_HEADERS, ADMIN_TOKEN, PROBLEM_JSON

DEFAULT_FUZZ_EXAMPLES = 200
FUZZ_EXAMPLES = int(os.environ.get("KEYLEDGER_FUZZ_EXAMPLES", str(DEFAULT_FUZZ_EXAMPLES)))
MIN_CASES = 10_000  # in the default (CI) run: stateless, coverage and stateful cases together
STATEFUL_SCENARIOS = 25  # per run of the state machine: runs follow one another up to the step budget
STATEFUL_STEPS = 12
# What the link assertions usually need (run_the_state_machine goes on while one of the answers is missing).
STATEFUL_STEP_BUDGET = 2000 * max(FUZZ_EXAMPLES, DEFAULT_FUZZ_EXAMPLES) // DEFAULT_FUZZ_EXAMPLES
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Names the generators tend to produce, so that get, reveal and delete also reach their 2xx answers.
SEEDED_NAMES = ("0", "00", "000", "a", "A", "aa", "fuzz secret")
SEEN: dict[str, set[int]] = {}  # operationId -> statuses answered during the stateless fuzzing
SENT: Counter[str] = Counter()  # phase (coverage, fuzzing, stateful) -> cases sent to the app
FUZZED: set[str] = set()  # operations whose stateless test ran
FAILED: list[Exception] = []  # check failures of the stateful test
LINKED: Counter[tuple[str, str, int]] = Counter()  # (link, operationId it leads to, status) -> steps
# Cheap cases: nothing to reuse from an example database (every run explores anew), and no `target` or
# `explain` phase; shrinking only ever runs on a failure.
CHEAP = settings(
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)

# A loopback port held bound but never listening: every connected app's token endpoint during the fuzzing.
_NO_PROVIDER = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
_NO_PROVIDER.bind(("127.0.0.1", 0))
atexit.register(_NO_PROVIDER.close)
NO_PROVIDER_TOKEN_URL = f"http://127.0.0.1:{_NO_PROVIDER.getsockname()[1]}/token"
SSO_CLIENT_SECRET = "fuzz-sso-client-secret"  # a secret of the links org, named by its SSO settings


@schemathesis.hook("map_body").apply_to(operation_id="ConnectApp")  # type: ignore[untyped-decorator]
def no_outside_provider(context: Any, body: Any) -> Any:
    """Every schema (both modules' too): a connected app's refresh never leaves the machine."""
    if isinstance(body, dict):
        return {**body, "token_url": NO_PROVIDER_TOKEN_URL}
    return body


_TMP = tempfile.TemporaryDirectory(prefix="keyledger-fuzz-")
APP = create_app(
    Settings(
        db=Path(_TMP.name) / "keyledger.db",
        master_key=MasterKey.generate()[0],
        admin_token=ADMIN_TOKEN,
        rate_limit_per_key=None,
        rate_limit_per_address=None,
    )
)
ASGI_APP: Any = APP  # schemathesis types its ASGI app more narrowly than Litestar declares __call__
schema = schemathesis.openapi.from_asgi("/schema/openapi.json", APP)
OPERATION_COUNT = sum(1 for _ in schema.get_all_operations())

OPERATIONS = {
    # The routes of DESIGN.md's HTTP API v1 (later routes are fuzzed too, but not listed here).
    # operationId: (method, path, statuses the document must list)
    "ListSecrets": ("get", "/v1/secrets", {200, 401, 422}),
    "UpsertSecret": ("post", "/v1/secrets", {200, 201, 401, 412, 413, 422}),
    "GetSecret": ("get", "/v1/secrets/{name}", {200, 401, 404}),
    "DeleteSecret": ("delete", "/v1/secrets/{name}", {204, 401, 404, 412}),
    "RevealSecret": ("post", "/v1/secrets/{name}/reveal", {200, 401, 403, 404, 422, 503}),
    "CreateOrg": ("post", "/v1/admin/orgs", {201, 401, 409, 413, 422}),
    "ListApiKeys": ("get", "/v1/keys", {200, 401}),
    "CreateApiKey": ("post", "/v1/keys", {201, 401, 403, 422}),
    "RevokeApiKey": ("delete", "/v1/keys/{key_id}", {204, 401, 403, 404}),
    "Health": ("get", "/healthz", {200}),
    "Ready": ("get", "/readyz", {200, 503}),
}


@dataclass(frozen=True)
class Orgs:
    fuzz: dict[str, str]  # the stateless fuzzing's org, with SEEDED_NAMES
    links: dict[str, str]  # the stateful test's own org, so that neither disturbs the other


def create_org(session: Any, org: str) -> dict[str, str]:
    created = session.post("/v1/admin/orgs", json={"org": org}, headers=ADMIN_HEADERS)
    assert created.status_code == 201, created.text
    return {"Authorization": f"Bearer {created.json()['api_key']}"}


def create_fuzz_org(session: Any) -> dict[str, str]:
    """The stateless fuzzing's org, holding SEEDED_NAMES (so that reads and reveals can succeed)."""
    headers = create_org(session, "fuzz")
    for name in SEEDED_NAMES:
        put = session.post("/v1/secrets", json={"name": name, "value": "v"}, headers=headers)
        assert put.status_code == 201, put.text
    return headers


@pytest.fixture(scope="module")
def orgs() -> Iterator[Orgs]:
    try:
        with asgi.get_client(ASGI_APP) as session:
            links = create_org(session, "fuzz-links")
            put = session.post("/v1/secrets", json={"name": SSO_CLIENT_SECRET, "value": "v"}, headers=links)
            assert put.status_code == 201, put.text
            yield Orgs(fuzz=create_fuzz_org(session), links=links)
    finally:
        asgi.shutdown_lifespans()
        _TMP.cleanup()


@pytest.fixture(scope="module")
def org_headers(orgs: Orgs) -> dict[str, str]:
    return orgs.fuzz


def operation_id(case: Any) -> str:
    return str(case.operation.definition.raw["operationId"])


def headers_for(case: Any, org: dict[str, str]) -> dict[str, str]:
    return dict(ADMIN_HEADERS if case.operation.path == "/v1/admin/orgs" else org)


@schema.parametrize()
@settings(CHEAP, max_examples=FUZZ_EXAMPLES)
def test_api_conforms_to_its_openapi(case: Any, org_headers: dict[str, str]) -> None:
    headers = headers_for(case, org_headers)
    response = case.call(headers=headers)
    SENT[str(case.meta.phase.name) if case.meta is not None else "unknown"] += 1
    FUZZED.add(case.operation.label)
    if case.method.lower() == case.operation.method.lower():
        SEEN.setdefault(operation_id(case), set()).add(response.status_code)
    case.validate_response(response, checks=CHECKS, headers=headers)


# The state machine has a schema object of its own: its hook shapes upsert bodies, the fuzzing's stay raw.
# It follows the document's links only: schemathesis' own link inference adds links between every pair
# of routes that share a parameter name, which spreads a run's steps so thin over the many secret routes
# that the documented links (asserted below) are followed too rarely.
LINKS_ONLY = {"phases": {"stateful": {"inference": {"algorithms": []}}}}
links_schema = schemathesis.openapi.from_asgi(
    "/schema/openapi.json", APP, config=schemathesis.config.SchemathesisConfig.from_dict(LINKS_ONLY)
)


# The request bodies the document describes loosely: msgspec refuses unknown fields, names with '/' or a
# control character and texts with NUL (422), which the document does not say. Generated bodies hold them
# so often that few creations succeed and the links from them are rarely followed: the hook below keeps
# the state machine's bodies to what the app accepts (the stateless fuzzing sends them as generated).
BODY_FIELDS = {
    "UpsertSecret": ("name", "value", "scope", "category", "description"),
    "RevealSecret": ("reason",),
    "CreateApiKey": ("label", "scope", "role"),
    "CreateOrg": ("org", "name"),
    "PutMember": ("value", "label"),
    "PutPolicy": ("key_ids", "labels", "roles"),
    "PutRotation": ("interval_seconds", "rotator"),
    "AddSshKey": ("public_key", "label"),
    "ConnectApp": ("name", "client_id", "client_secret", "scope", "access_token", "refresh_token", "expires_in"),
    "ConnectedAppToken": ("reason",),
    "SetSso": ("client_id",),
    "ChangeMemberRole": ("role",),
}


def storable(text: str) -> str:
    return "".join("_" if char == "/" or unicodedata.category(char) in ("Cc", "Cs") else char for char in text)


def fresh_public_key() -> str:
    """A new ed25519 public key line: generated text is never one, so that an added key can be removed."""
    raw = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return raw.decode() + " fuzz@keyledger"


@links_schema.hooks.hook("map_body").apply_to(operation_id=list(BODY_FIELDS))  # type: ignore[untyped-decorator]
def accepted_body(context: Any, body: Any) -> Any:
    if not isinstance(body, dict) or context.operation is None:
        return body
    operation = context.operation.definition.raw["operationId"]
    fields = BODY_FIELDS[operation]
    accepted = {
        key: storable(value) if isinstance(value, str) and key != "value" else value
        for key, value in body.items()
        if key in fields
    }
    if operation == "AddSshKey":
        accepted["public_key"] = fresh_public_key()
    if operation == "ConnectApp":  # a preset's authorization URL, the token endpoint that refuses connections
        accepted.update(provider="github", token_url=NO_PROVIDER_TOKEN_URL)
    if operation == "SetSso":  # a secret the org holds, a usable issuer and domain
        accepted.update(issuer="https://id.example.com", client_secret_name=SSO_CLIENT_SECRET,
                        allowed_domains=["example.com"])
    return accepted


class LinkedCalls(links_schema.as_state_machine()):  # type: ignore[misc]
    """The state machine of the document's links, acting as an admin key of its own org."""

    headers: ClassVar[dict[str, str]] = {}

    def step(self, input: StepInput) -> StepOutput:
        output: StepOutput = super().step(input)
        if input.transition is not None and input.is_applied:
            # The id reads "UpsertSecret's label -> [201] GetSecret -> its target's label".
            link = input.transition.id.split(" -> ")[1].partition("] ")[2]
            LINKED[(link, operation_id(input.case), output.response.status_code)] += 1
        return output

    def get_call_kwargs(self, case: Any) -> dict[str, Any]:
        return {"headers": headers_for(case, self.headers)}

    def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
        SENT["stateful"] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=kwargs.get("headers"), recorder=self.recorder)
        except Exception as exc:
            FAILED.append(exc)
            raise


# Each link of api/openapi_links.py that a run can follow (the source answers often enough).
EXPECTED_LINKS = {
    ("GetSecret", "GetSecret"),
    ("RevealSecret", "RevealSecret"),
    ("DeleteSecret", "DeleteSecret"),
    ("UpdateSecret", "UpsertSecret"),
    ("RevokeApiKey", "RevokeApiKey"),
    ("CreateAgain", "CreateOrg"),
    ("RemoveSshKey", "RemoveSshKey"),
    ("ConnectApp", "ConnectApp"),  # from the list of connected apps
    ("GetConnectedApp", "GetConnectedApp"),
    ("SetSso", "SetSso"),  # from the list of people
}
# Followed less often: a run reaches at least one of them.
RARER_LINKS = {("ConnectedAppToken", "ConnectedAppToken"), ("DisconnectApp", "DisconnectApp"),
               ("GetSso", "GetSso"), ("RemoveSso", "RemoveSso")}
# The answers only a followed link reaches: a real name, key id or org id taken from an answer.
EXPECTED_STATUSES = {("GetSecret", 200), ("RevealSecret", 200), ("DeleteSecret", 204), ("RevokeApiKey", 204),
                     ("RemoveSshKey", 204), ("ConnectApp", 201), ("GetConnectedApp", 200), ("SetSso", 200),
                     ("CreateOrg", 409)}


def links_reached() -> set[tuple[str, str]]:
    return {(link, target) for (link, target, status), _ in LINKED.items() if status < 500}


def coverage_missing() -> list[object]:
    """What the links have not reached yet: empty once the link assertions hold."""
    reached = links_reached()
    statuses = {(target, status) for (_, target, status) in LINKED}
    missing: list[object] = [*sorted(EXPECTED_LINKS - reached), *sorted(EXPECTED_STATUSES - statuses)]
    if not reached & RARER_LINKS:
        missing.append(("one of", sorted(RARER_LINKS)))
    return missing


def run_the_state_machine(budget: int) -> int:
    """Run scenarios until `budget` steps were sent and the links reached what they should; the runs it took.

    The budget is what a run normally needs. Which links a run follows is random, and with people, SSO and
    connected apps sharing the steps, 2,000 steps now and then miss one of the expected answers (CI failed on
    RevealSecret once): so runs go on past the budget while something is missing, up to three times the
    budget, instead of making the assertion a coin toss or the budget three times what it usually needs.

    Replaying a choice sequence against a service whose state moved on can draw differently (a link
    finds another value, or none): Hypothesis then stops the run with FlakyStrategyDefinition (or an
    assertion in its data tree). schemathesis' own runner counts that as the end of a run and starts
    another; so does this. A check that failed is never lost that way: FAILED keeps it.
    """
    runs = 0
    while (SENT["stateful"] < budget or coverage_missing()) and SENT["stateful"] < 3 * budget and runs < 150:
        runs += 1
        try:
            LinkedCalls.run(
                # No shrinking: a replay against a service whose state moved on shows nothing.
                settings=settings(
                    CHEAP, max_examples=STATEFUL_SCENARIOS, stateful_step_count=STATEFUL_STEPS, phases=[Phase.generate]
                )
            )
        except FlakyStrategyDefinition:
            continue
        except AssertionError as exc:
            if not is_inconsistent_replay(exc):
                raise
    assert not FAILED, FAILED[0]
    return runs


def test_the_stateful_calls_follow_the_documents_links(orgs: Orgs) -> None:
    LinkedCalls.headers = orgs.links
    run_the_state_machine(STATEFUL_STEP_BUDGET)
    assert links_reached() >= EXPECTED_LINKS, sorted(LINKED.items())
    assert links_reached() & RARER_LINKS, sorted(LINKED.items())
    statuses = {(target, status) for (_, target, status) in LINKED}
    assert statuses >= EXPECTED_STATUSES, sorted(LINKED.items())


def test_every_link_of_the_document_names_real_operations_and_parameters() -> None:
    document = schema.raw_schema
    operations = {
        operation["operationId"]: operation
        for item in document["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict) and "operationId" in operation
    }
    count = 0
    for source, by_status in LINKS.items():
        for status, links in by_status.items():
            documented = operations[source]["responses"][status]["links"]
            assert set(documented) >= set(links), (source, status)
            for link in documented.values():
                target = operations[link["operationId"]]
                declared = {(p["in"], p["name"]) for p in target.get("parameters", [])}
                for parameter in link.get("parameters", {}):
                    location, _, name = parameter.partition(".")
                    assert (location, name) in declared, (source, status, parameter)
                assert "requestBody" not in link or "requestBody" in target, (source, status)
                count += 1
    assert count >= 25


def test_the_document_lists_the_v1_routes_and_their_error_answers() -> None:
    document = schema.raw_schema
    found = {
        operation["operationId"]: (method, path)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "operationId" in operation
    }
    for op_id, (method, path, _) in OPERATIONS.items():
        assert found.get(op_id) == (method, path), op_id
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["required"]) >= {"type", "title", "status", "detail"}
    for op_id, (method, path, statuses) in OPERATIONS.items():
        responses = document["paths"][path][method]["responses"]
        listed = {int(status) for status in responses}
        assert listed >= statuses, (op_id, sorted(statuses - listed))
        for status in listed:
            if status < 401 or (op_id == "Ready" and status == 503):
                continue
            content = responses[str(status)]["content"]
            assert list(content) == [PROBLEM_JSON], (op_id, status, content)
            assert content[PROBLEM_JSON]["schema"] == {"$ref": "#/components/schemas/Problem"}


NOT_JSON_TARGETS = [
    ("/v1/secrets", "/v1/secrets", "post"),
    ("/v1/secrets/a/reveal", "/v1/secrets/{name}/reveal", "post"),
    ("/v1/keys", "/v1/keys", "post"),
    ("/v1/admin/orgs", "/v1/admin/orgs", "post"),
]


def test_malformed_json_answers_as_the_openapi_document_says(org_headers: dict[str, str]) -> None:
    document = schema.raw_schema
    with asgi.get_client(ASGI_APP) as session:
        for (url, template, method), body in itertools.product(NOT_JSON_TARGETS, (b"{not json", b"[")):
            headers = ADMIN_HEADERS if url.startswith("/v1/admin") else org_headers
            response = session.request(method, url, data=body, headers={**headers, "content-type": "application/json"})
            assert 400 <= response.status_code < 500, response.text
            documented = document["paths"][template][method]["responses"].get(str(response.status_code))
            assert documented is not None, (url, response.status_code)
            media_type = response.headers["content-type"].split(";")[0]
            assert media_type in documented.get("content", {}), (url, media_type, list(documented["content"]))


def test_the_fuzzing_reached_every_operations_success_answer() -> None:
    if not SEEN:
        pytest.skip("runs after test_api_conforms_to_its_openapi, in the same session")
    # A fuzz run where every answer is a 401 or a 422 would conform and prove nothing. Key ids are
    # random, so RevokeApiKey is only expected to reach its 404 here (its 204 comes through a link).
    reached = {op for op, statuses in SEEN.items() if any(200 <= status < 300 for status in statuses)}
    assert reached >= set(OPERATIONS) - {"RevokeApiKey"}, SEEN
    assert 404 in SEEN["RevokeApiKey"], SEEN


def test_audit_export_media_types_are_documented(org_headers: dict[str, str]) -> None:
    documented = schema.raw_schema["paths"]["/v1/audit/export"]["get"]["responses"]["200"].get("content", {})
    with asgi.get_client(ASGI_APP) as session:
        for export_format in ("jsonl", "csv", "ocsf"):
            response = session.get("/v1/audit/export", params={"format": export_format}, headers=org_headers)
            assert response.status_code == 200, response.text
            media_type = response.headers["content-type"].split(";")[0]
            assert media_type in documented, (export_format, media_type, list(documented))


def test_the_run_sent_at_least_10000_cases() -> None:
    """Last in the module: the cases sent by the tests above (skipped when some of them did not run)."""
    if len(FUZZED) < OPERATION_COUNT or not SENT["stateful"]:
        pytest.skip("counts the cases of the whole module; some of its fuzzing tests did not run")
    if FUZZ_EXAMPLES < DEFAULT_FUZZ_EXAMPLES:
        pytest.skip(f"KEYLEDGER_FUZZ_EXAMPLES={FUZZ_EXAMPLES} is below the CI size ({DEFAULT_FUZZ_EXAMPLES})")
    print(f"schemathesis cases sent: {sum(SENT.values())} {dict(SENT)}")
    assert sum(SENT.values()) >= MIN_CASES, dict(SENT)
