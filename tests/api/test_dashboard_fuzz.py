"""The dashboard's forms and queries under generated input, on both backends: never a server error,
and a planted value never comes back in any answer but a reveal's, nor in any log line.

The pages are not in the OpenAPI document (schemathesis cannot reach them), so this is their fuzz.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import TestClient

from tests.api.conftest import Key, create_org, upsert
from tests.api.test_dashboard import sign_in
from tests.pg import PgDsn

CANARY = "CANARY-dashboard-0d6c1f2e9b8a4d7c"
EXAMPLES = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Text a person (or a hostile page) could type: any characters, some very long, some near the limits.
texts = st.one_of(st.text(max_size=40), st.text(alphabet="abcXYZ_-./ %?#&<>\"'", max_size=300),
                  st.sampled_from(["", " ", "all", "tools", "provider", "admin", "member", "1", "-1",
                                   "9" * 25, "2026-11-29T07:40", "x" * 5000]))
names = st.one_of(st.sampled_from(["OPENAI_API_KEY", "MISSING"]), st.text(min_size=1, max_size=30))
urls = st.sampled_from(["https://provider.example/oauth/authorize", "http://localhost:1/token", "https://x.example",
                        "https://user:pw@x.example/", "javascript:alert(1)", "https://x.example/#frag"])


def _forms() -> st.SearchStrategy[tuple[str, dict[str, str]]]:
    secret_fields = st.fixed_dictionaries({}, optional={
        "name": names, "value": st.sampled_from([CANARY, CANARY + " ", ""]), "scope": texts, "category": texts,
        "description": texts, "version": texts, "reason": texts})
    return st.one_of(
        st.tuples(st.just("/credentials/secrets"), secret_fields),
        st.tuples(names.map(lambda n: f"/credentials/secrets/{quote(n, safe='')}"), secret_fields),
        st.tuples(names.map(lambda n: f"/credentials/secrets/{quote(n, safe='')}/reveal"), secret_fields),
        st.tuples(names.map(lambda n: f"/credentials/secrets/{quote(n, safe='')}/delete"), secret_fields),
        st.tuples(st.just("/credentials/api-keys"),
                  st.fixed_dictionaries({}, optional={"label": texts, "role": texts, "scope": texts})),
        st.tuples(texts.map(lambda k: f"/credentials/api-keys/{quote(k or 'x', safe='')}/revoke"), st.just({})),
        st.tuples(st.just("/credentials/ssh-keys"),
                  st.fixed_dictionaries({}, optional={"public_key": texts.map(lambda t: t + CANARY),
                                                      "label": texts})),
        st.tuples(texts.map(lambda k: f"/credentials/ssh-keys/{quote(k or 'x', safe='')}/remove"), st.just({})),
        # People (single sign-on) and connected apps: a planted client secret is never echoed either.
        st.tuples(texts.map(lambda k: f"/people/{quote(k or 'x', safe='')}/role"),
                  st.fixed_dictionaries({}, optional={"role": texts})),
        st.tuples(texts.map(lambda k: f"/people/{quote(k or 'x', safe='')}/remove"), st.just({})),
        st.tuples(st.just("/apps/connect"), st.fixed_dictionaries({}, optional={
            "name": names, "provider": st.one_of(texts, st.sampled_from(["github", "google", "slack", "custom"])),
            "authorization_url": st.one_of(texts, urls), "token_url": st.one_of(texts, urls), "client_id": texts,
            "client_secret": st.sampled_from([CANARY, " " + CANARY, "", CANARY * 200]), "scopes": texts,
            "scope": texts})),
        st.tuples(names.map(lambda n: f"/apps/{quote(n, safe='')}/disconnect"), st.just({})),
    )


def _pages() -> st.SearchStrategy[tuple[str, dict[str, str]]]:
    return st.one_of(
        st.tuples(st.just("/credentials"), st.fixed_dictionaries({}, optional={
            "q": texts, "scope": texts, "category": texts, "after": texts, "notice": texts})),
        st.tuples(st.just("/audit"), st.fixed_dictionaries({}, optional={
            "action": texts, "secret": texts, "actor": texts, "since": texts, "until": texts, "before": texts})),
        st.tuples(st.just("/audit/export"), st.fixed_dictionaries({"format": st.sampled_from(["jsonl", "csv", "x"])},
                                                                  optional={"since": texts, "secret": texts})),
        st.tuples(names.map(lambda n: f"/credentials/secrets/{quote(n, safe='')}"), st.just({})),
        st.tuples(names.map(lambda n: f"/credentials/secrets/{quote(n, safe='')}/delete"), st.just({})),
        st.tuples(st.just("/people"), st.fixed_dictionaries({}, optional={"notice": texts})),
        st.tuples(texts.map(lambda k: f"/people/{quote(k or 'x', safe='')}/remove"), st.just({})),
        st.tuples(st.just("/apps/connect"), st.fixed_dictionaries({}, optional={"name": names, "provider": texts})),
        st.tuples(names.map(lambda n: f"/apps/{quote(n, safe='')}/disconnect"), st.just({})),
        st.tuples(st.sampled_from(["/apps/finish", "/apps/callback", "/sso/callback"]),
                  st.fixed_dictionaries({}, optional={"code": texts, "state": texts, "error": texts})),
        st.tuples(st.sampled_from(["/sso/start", "/"]), st.fixed_dictionaries({}, optional={"org": texts})),
    )


@pytest.fixture
def session(client: TestClient[Litestar]) -> tuple[Key, str]:
    client.base_url = httpx.URL("http://127.0.0.1:8000")  # loopback: "Connect an app" may use its plain-http URLs
    acme = create_org(client, "acme")
    upsert(client, acme, "OPENAI_API_KEY", CANARY)
    return acme, sign_in(client, acme)


def _no_canary_logged(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        assert CANARY not in record.getMessage()
        assert CANARY not in str(record.exc_text or "")


@EXAMPLES
@given(form=_forms())
def test_forms_never_fail_and_never_echo_a_value(client: TestClient[Litestar], session: tuple[Key, str],
                                                 db_file: Path | PgDsn, caplog: pytest.LogCaptureFixture,
                                                 form: tuple[str, dict[str, str]]) -> None:
    caplog.set_level(logging.DEBUG)
    path, fields = form
    answer = client.post(path, data={**fields, "csrf_token": session[1]}, follow_redirects=False)
    assert answer.status_code < 500, (path, answer.status_code, answer.text[:500])
    revealed = re.search(r'<textarea id="revealed-value"', answer.text)
    if revealed is None:
        assert CANARY not in answer.text, path
    assert CANARY not in str(answer.headers.multi_items()), path  # a cookie carries it sealed, if at all
    _no_canary_logged(caplog)
    # The session still works (no form signs anyone out or breaks the page).
    assert client.get("/credentials", follow_redirects=False).status_code == 200


@EXAMPLES
@given(query=_pages())
def test_queries_never_fail_and_never_show_a_value(client: TestClient[Litestar], session: tuple[Key, str],
                                                   caplog: pytest.LogCaptureFixture,
                                                   query: tuple[str, dict[str, str]]) -> None:
    caplog.set_level(logging.DEBUG)
    path, params = query
    answer = client.get(path, params=params, follow_redirects=False)
    assert answer.status_code < 500, (path, params, answer.status_code, answer.text[:500])
    assert CANARY not in answer.text
    _no_canary_logged(caplog)
