"""The HTTP fuzz (tests/api/test_schemathesis.py) against the API on PostgreSQL.

The same stateless fuzzing of every operation (coverage, positive and negative cases) with the same
checks: no 5xx, status codes, content types and bodies as the OpenAPI document says. A quarter of
the SQLite run's examples per operation (KEYLEDGER_PG_FUZZ_EXAMPLES), since the answers that depend
on storage are few and the SQLite run covers the document at full size. The database is created at
import (the app must exist when schemathesis parametrizes the tests) and dropped by the module's
fixture.

Like the SQLite module it cannot run under pytest-xdist: `./scripts/test` runs both beside the rest.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import settings
from schemathesis.python import asgi

from api.app import create_app
from api.settings import Settings
from ledger.crypto import MasterKey
from tests.api.conftest import ADMIN_TOKEN
from tests.api.test_schemathesis import (
    CHEAP,
    CHECKS,
    DEFAULT_FUZZ_EXAMPLES,
    OPERATIONS,
    create_fuzz_org,
    headers_for,
    operation_id,
)
from tests.pg import DSN, REQUIRED, PgDsn, fresh_database, run_sync

if not DSN and not REQUIRED:
    pytest.skip("KEYLEDGER_TEST_PG_DSN is not set (.ci/run sets it)", allow_module_level=True)

PG_FUZZ_EXAMPLES = int(os.environ.get("KEYLEDGER_PG_FUZZ_EXAMPLES", str(DEFAULT_FUZZ_EXAMPLES // 4)))
_DATABASES = fresh_database()  # fails, not skips, when PostgreSQL was asked for and is unreachable
_DSN = PgDsn(run_sync(anext(_DATABASES)))
APP = create_app(Settings(db=_DSN, master_key=MasterKey.generate()[0], admin_token=ADMIN_TOKEN,
                          rate_limit_per_key=None, rate_limit_per_address=None))
ASGI_APP: Any = APP
schema = schemathesis.openapi.from_asgi("/schema/openapi.json", APP)
SEEN: dict[str, set[int]] = {}
FUZZED: set[str] = set()


async def _drop() -> None:
    async for _ in _DATABASES:
        pass


@pytest.fixture(scope="module")
def org_headers() -> Iterator[dict[str, str]]:
    try:
        with asgi.get_client(ASGI_APP) as session:
            yield create_fuzz_org(session)
    finally:
        asgi.shutdown_lifespans()
        run_sync(_drop())


@schema.parametrize()
@settings(CHEAP, max_examples=PG_FUZZ_EXAMPLES)
def test_api_on_postgresql_conforms_to_its_openapi(case: Any, org_headers: dict[str, str]) -> None:
    headers = headers_for(case, org_headers)
    response = case.call(headers=headers)
    FUZZED.add(case.operation.label)
    if case.method.lower() == case.operation.method.lower():
        SEEN.setdefault(operation_id(case), set()).add(response.status_code)
    case.validate_response(response, checks=CHECKS, headers=headers)


def test_the_postgresql_fuzzing_reached_every_operations_success_answer() -> None:
    if not SEEN:
        pytest.skip("runs after test_api_on_postgresql_conforms_to_its_openapi, in the same session")
    reached = {op for op, statuses in SEEN.items() if any(200 <= status < 300 for status in statuses)}
    assert reached >= set(OPERATIONS) - {"RevokeApiKey"}, SEEN
