"""The dashboard over HTTP, in process, on both backends: sessions, cross-site request forgery,
and that every click goes through the ledger like an API call (the browser tests drive the pages)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from tests.api.conftest import (
    Clock,
    Key,
    create_key,
    create_org,
    events_after,
    max_seq,
    upsert,
)
from tests.pg import PgDsn

CANARY = "canary-dashboard-value-7f3a9c"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
MINUTE = 60 * 1_000_000_000


@pytest.fixture
def browser(client: TestClient[Litestar]) -> TestClient[Litestar]:
    """The person at the dashboard: the API client's cookie jar holds their session (API calls send
    an Authorization header and no cookie counts for them)."""
    return client


@contextmanager
def another_browser(client: TestClient[Litestar]) -> Iterator[None]:
    """The same client with an empty cookie jar for a while: another person's browser."""
    saved = client.cookies
    client.cookies = httpx.Cookies()
    try:
        yield
    finally:
        client.cookies = saved


def csrf_of(page: httpx.Response) -> str:
    found = _CSRF.search(page.text)
    assert found is not None, page.text[:2000]
    return found.group(1)


def sign_in(browser: TestClient[Litestar], key: Key) -> str:
    """Sign in as `key`; the session's form token."""
    form = browser.get("/")
    assert form.status_code == 200
    answer = browser.post("/sign-in", data={"api_key": key.api_key, "csrf_token": csrf_of(form)},
                          follow_redirects=False)
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/credentials"
    page = browser.get("/credentials")
    assert page.status_code == 200
    return csrf_of(page)


def set_cookie_headers(answer: httpx.Response) -> list[str]:
    return [value for name, value in answer.headers.multi_items() if name.lower() == "set-cookie"]


def test_sign_in_starts_a_recorded_session_with_a_strict_http_only_cookie(
        client: TestClient[Litestar], browser: TestClient[Litestar], db_file: Path | PgDsn) -> None:
    acme = create_org(client, "acme")
    before = max_seq(db_file)
    form = browser.get("/")
    answer = browser.post("/sign-in", data={"api_key": acme.api_key, "csrf_token": csrf_of(form)},
                          follow_redirects=False)
    assert answer.status_code == 303
    cookie = next(c for c in set_cookie_headers(answer) if c.startswith("keyledger_session="))
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert "httponly" in flags
    assert "samesite=strict" in flags
    assert "secure" not in flags  # plain HTTP here; see the HTTPS test
    assert acme.api_key not in cookie
    started = events_after(db_file, before)
    assert [e["type"] for e in started] == ["session.started"]
    assert started[0]["actor"]["key_id"] == acme.key_id
    assert acme.api_key not in str(started)


def test_cookies_are_secure_over_https(client: TestClient[Litestar]) -> None:
    acme = create_org(client, "acme")
    client.base_url = httpx.URL("https://dashboard.example")
    form = client.get("/")
    sign_in_cookie = next(c for c in set_cookie_headers(form) if c.startswith("keyledger_sign_in="))
    assert "secure" in {p.strip().lower() for p in sign_in_cookie.split(";")}
    answer = client.post("/sign-in", data={"api_key": acme.api_key, "csrf_token": csrf_of(form)},
                         follow_redirects=False)
    session = next(c for c in set_cookie_headers(answer) if c.startswith("keyledger_session="))
    assert "secure" in {p.strip().lower() for p in session.split(";")}


def test_a_wrong_key_is_refused_and_nothing_is_recorded(
        client: TestClient[Litestar], browser: TestClient[Litestar], db_file: Path | PgDsn) -> None:
    acme = create_org(client, "acme")
    before = max_seq(db_file)
    last = "Y" if acme.api_key.endswith("Z") else "Z"  # one character off, never the key itself
    for wrong in ("", "not a key", "rt_live_" + "x" * 40, acme.api_key[:-1] + last):
        form = browser.get("/")
        answer = browser.post("/sign-in", data={"api_key": wrong, "csrf_token": csrf_of(form)},
                              follow_redirects=False)
        assert answer.status_code == 401
        assert "not valid" in answer.text
        assert "keyledger_session" not in browser.cookies
    assert max_seq(db_file) == before
    # The address bar then shows /sign-in: opening it again shows the form, not an error.
    assert browser.get("/sign-in", follow_redirects=False).headers["location"] == "/"


def test_sign_out_ends_the_session_everywhere(client: TestClient[Litestar], browser: TestClient[Litestar],
                                              db_file: Path | PgDsn) -> None:
    acme = create_org(client, "acme")
    token = sign_in(browser, acme)
    stolen = browser.cookies["keyledger_session"]
    before = max_seq(db_file)
    answer = browser.post("/sign-out", data={"csrf_token": token}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    ended = events_after(db_file, before)
    assert [(e["type"], e["reason"]) for e in ended] == [("session.ended", "signed_out")]
    # A copy of the cookie taken before signing out no longer opens anything.
    browser.cookies.set("keyledger_session", stolen)
    assert browser.get("/credentials", follow_redirects=False).headers["location"].startswith("/")


def test_an_idle_session_expires_and_activity_renews_it(
        client: TestClient[Litestar], browser: TestClient[Litestar], clock: Clock) -> None:
    acme = create_org(client, "acme")
    sign_in(browser, acme)
    for _ in range(3):  # 25 minutes apart: each request renews the 30-minute idle timeout
        clock.advance(25 * MINUTE)
        assert browser.get("/credentials", follow_redirects=False).status_code == 200
    clock.advance(31 * MINUTE)
    answer = browser.get("/credentials", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/?ended=1"


def test_a_revoked_key_s_session_stops_at_once(client: TestClient[Litestar], browser: TestClient[Litestar]) -> None:
    acme = create_org(client, "acme")
    member = create_key(client, acme, role="member")
    sign_in(browser, member)
    assert browser.get("/credentials", follow_redirects=False).status_code == 200
    assert client.delete(f"/v1/keys/{member.key_id}", headers=acme.headers).status_code == 204
    answer = browser.get("/credentials", follow_redirects=False)
    assert answer.status_code == 303


def test_a_tampered_or_foreign_cookie_opens_nothing(client: TestClient[Litestar], browser: TestClient[Litestar],
                                                    app: Litestar, db_file: Path | PgDsn) -> None:
    acme = create_org(client, "acme")
    sign_in(browser, acme)
    cookie = browser.cookies["keyledger_session"]
    session_id, seen, mac = cookie.split(".")
    for forged in (f"{session_id}.{int(seen) + 10**12}.{mac}", f"{session_id}.{seen}.{mac[:-2]}AA", "x.y.z",
                   session_id, f"{session_id}.{seen}"):
        browser.cookies.set("keyledger_session", forged)
        assert browser.get("/credentials", follow_redirects=False).status_code == 303
    browser.cookies.set("keyledger_session", cookie)
    assert browser.get("/credentials", follow_redirects=False).status_code == 200


def test_forms_without_the_session_token_are_refused_and_change_nothing(
        client: TestClient[Litestar], browser: TestClient[Litestar], db_file: Path | PgDsn) -> None:
    acme = create_org(client, "acme")
    upsert(client, acme, "OPENAI_API_KEY", CANARY)
    token = sign_in(browser, acme)
    with another_browser(browser):
        other_token = sign_in(browser, acme)  # a token that is valid, but for another session
    before = max_seq(db_file)
    forms: list[tuple[str, dict[str, Any]]] = [
        ("/credentials/secrets", {"name": "NEW", "value": "v", "scope": "all", "category": "custom"}),
        ("/credentials/secrets/OPENAI_API_KEY", {"value": "v2"}),
        ("/credentials/secrets/OPENAI_API_KEY/reveal", {"reason": "x"}),
        ("/credentials/secrets/OPENAI_API_KEY/delete", {}),
        ("/credentials/api-keys", {"label": "k", "role": "admin", "scope": "all"}),
        (f"/credentials/api-keys/{acme.key_id}/revoke", {}),
        ("/credentials/ssh-keys", {"public_key": "ssh-ed25519 AAAA"}),
        ("/sign-out", {}),
    ]
    for path, data in forms:
        for forged in ({}, {"csrf_token": ""}, {"csrf_token": "x" * 43}, {"csrf_token": other_token}):
            answer = browser.post(path, data={**data, **forged}, follow_redirects=False)
            assert answer.status_code == 403, (path, forged, answer.status_code)
            assert CANARY not in answer.text
    # A cross-site page cannot read the token, and a header it cannot set either: the same holds for htmx.
    answer = browser.post("/credentials/secrets/OPENAI_API_KEY/reveal", data={"reason": "x"},
                          headers={"HX-Request": "true", "X-CSRF-Token": other_token})
    assert answer.status_code == 403
    assert max_seq(db_file) == before
    # The real token works.
    assert browser.post("/credentials/secrets/OPENAI_API_KEY/reveal", data={"csrf_token": token}).status_code == 200
    assert max_seq(db_file) == before + 1


def test_a_post_the_browser_marks_as_from_another_site_is_refused(
        client: TestClient[Litestar], browser: TestClient[Litestar], db_file: Path | PgDsn) -> None:
    """Even with the right token (a sibling subdomain can plant cookies, which SameSite does not stop)."""
    acme = create_org(client, "acme")
    token = sign_in(browser, acme)
    before = max_seq(db_file)
    for site in ("same-site", "cross-site"):
        answer = browser.post("/credentials/api-keys", data={"csrf_token": token, "label": "x"},
                              headers={"Sec-Fetch-Site": site})
        assert answer.status_code == 403
        form = browser.get("/")
        answer = browser.post("/sign-in", data={"api_key": acme.api_key, "csrf_token": csrf_of(form)},
                              headers={"Sec-Fetch-Site": site}, follow_redirects=False)
        assert answer.status_code == 403
    assert max_seq(db_file) == before
    # A stale token in an htmx request asks the page to reload (htmx shows no 403 by itself).
    answer = browser.post("/credentials/secrets/X/reveal", data={"csrf_token": "stale"},
                          headers={"HX-Request": "true"})
    assert answer.status_code == 403 and answer.headers["hx-refresh"] == "true"
    assert browser.post("/credentials/api-keys", data={"csrf_token": token, "label": "ok"},
                        headers={"Sec-Fetch-Site": "same-origin"}).status_code == 201


def test_a_session_ends_twelve_hours_after_sign_in_however_active(
        client: TestClient[Litestar], browser: TestClient[Litestar], clock: Clock) -> None:
    acme = create_org(client, "acme")
    sign_in(browser, acme)
    for _ in range(28):  # every 25 minutes, for 11 h 40 min
        clock.advance(25 * MINUTE)
        assert browser.get("/credentials", follow_redirects=False).status_code == 200
    clock.advance(25 * MINUTE)
    assert browser.get("/credentials", follow_redirects=False).status_code == 303


def test_the_sign_in_form_needs_its_own_token(client: TestClient[Litestar], browser: TestClient[Litestar],
                                              db_file: Path | PgDsn) -> None:
    acme = create_org(client, "acme")
    browser.get("/")
    before = max_seq(db_file)
    for forged in ({}, {"csrf_token": "forged-token-that-is-long-enough"}):
        answer = browser.post("/sign-in", data={"api_key": acme.api_key, **forged}, follow_redirects=False)
        assert answer.status_code == 403
    assert max_seq(db_file) == before
    assert "keyledger_session" not in browser.cookies


def test_a_reveal_is_recorded_like_the_api_s_and_never_cached(
        client: TestClient[Litestar], browser: TestClient[Litestar], db_file: Path | PgDsn) -> None:
    acme = create_org(client, "acme")
    upsert(client, acme, "OPENAI_API_KEY", CANARY)
    token = sign_in(browser, acme)
    before = max_seq(db_file)
    answer = browser.post("/credentials/secrets/OPENAI_API_KEY/reveal",
                          data={"csrf_token": token, "reason": "rotating the deploy key"},
                          headers={"HX-Request": "true"})
    assert answer.status_code == 200
    assert CANARY in answer.text
    assert 'data-hide-after="30"' in answer.text
    assert answer.headers["cache-control"] == "no-store"
    revealed = events_after(db_file, before)
    assert [e["type"] for e in revealed] == ["secret.revealed"]
    assert revealed[0]["actor"]["key_id"] == acme.key_id
    assert revealed[0]["reason"] == "rotating the deploy key"
    # Without htmx the same POST answers the whole page with the value, also never cached.
    page = browser.post("/credentials/secrets/OPENAI_API_KEY/reveal", data={"csrf_token": token})
    assert CANARY in page.text and page.headers["cache-control"] == "no-store"
    # Pages that do not reveal never hold the value.
    for path in ("/credentials", "/credentials/secrets/OPENAI_API_KEY", "/audit"):
        shown = browser.get(path)
        assert shown.status_code == 200
        assert CANARY not in shown.text


def test_create_update_and_delete_go_through_the_ledger_and_never_echo_the_value(
        client: TestClient[Litestar], browser: TestClient[Litestar], db_file: Path | PgDsn) -> None:
    acme = create_org(client, "acme")
    token = sign_in(browser, acme)
    before = max_seq(db_file)
    created = browser.post("/credentials/secrets", data={
        "csrf_token": token, "name": "GITHUB_TOKEN", "value": CANARY, "scope": "tools", "category": "tool",
        "description": "CI pushes"}, follow_redirects=False)
    assert created.status_code == 303
    assert created.headers["location"] == "/credentials/secrets/GITHUB_TOKEN?notice=secret-created"
    meta = client.get("/v1/secrets/GITHUB_TOKEN", headers=acme.headers).json()
    assert (meta["scope"], meta["category"], meta["description"], meta["version"]) == ("tools", "tool", "CI pushes", 1)
    # Refusals re-show the form without the value.
    for bad in ({"name": "GITHUB_TOKEN"}, {"name": "bad/name"}, {"name": "OK", "scope": "everywhere"}):
        answer = browser.post("/credentials/secrets", data={
            "csrf_token": token, "value": CANARY, "category": "tool", **bad})
        assert answer.status_code in (409, 422), answer.status_code
        assert CANARY not in answer.text
        assert 'class="error"' in answer.text
    updated = browser.post("/credentials/secrets/GITHUB_TOKEN", data={
        "csrf_token": token, "value": CANARY + "-2", "version": "1", "scope": "tools", "category": "tool",
        "description": "CI pushes"}, follow_redirects=False)
    assert updated.status_code == 303
    stale = browser.post("/credentials/secrets/GITHUB_TOKEN", data={
        "csrf_token": token, "value": CANARY + "-3", "version": "1", "scope": "tools", "category": "tool"})
    assert stale.status_code == 412 and CANARY not in stale.text
    unversioned = browser.post("/credentials/secrets/GITHUB_TOKEN", data={"csrf_token": token, "value": CANARY})
    assert unversioned.status_code == 422 and CANARY not in unversioned.text
    history = browser.get("/credentials/secrets/GITHUB_TOKEN")
    assert "2 <span class=\"muted\">(current)</span>" in history.text
    deleted = browser.post("/credentials/secrets/GITHUB_TOKEN/delete", data={"csrf_token": token},
                           follow_redirects=False)
    assert deleted.status_code == 303
    assert client.get("/v1/secrets/GITHUB_TOKEN", headers=acme.headers).status_code == 404
    kinds = [e["type"] for e in events_after(db_file, before)]
    assert kinds == ["secret.created", "secret.updated", "secret.deleted"]
    assert all(e["actor"]["key_id"] == acme.key_id for e in events_after(db_file, before))


def test_api_keys_are_shown_once_and_revoked_after_a_confirmation(
        client: TestClient[Litestar], browser: TestClient[Litestar], db_file: Path | PgDsn) -> None:
    acme = create_org(client, "acme")
    token = sign_in(browser, acme)
    created = browser.post("/credentials/api-keys", data={"csrf_token": token, "label": "deploy bot",
                                                          "role": "member", "scope": "tools"})
    assert created.status_code == 201
    assert created.headers["cache-control"] == "no-store"
    new_key = re.search(r'id="new-api-key" class="mono" readonly value="(rt_live_[A-Za-z0-9]+)"', created.text)
    assert new_key is not None
    listed = client.get("/v1/keys", headers=acme.headers).json()["keys"]
    bot = next(k for k in listed if k["label"] == "deploy bot")
    assert (bot["role"], bot["scope"]) == ("member", "tools")
    assert new_key.group(1) not in browser.get("/credentials").text  # shown once
    confirm = browser.get(f"/credentials/api-keys/{bot['key_id']}/revoke")
    assert "Revoke the API key" in confirm.text
    revoked = browser.post(f"/credentials/api-keys/{bot['key_id']}/revoke", data={"csrf_token": token},
                           follow_redirects=False)
    assert revoked.status_code == 303
    answer = client.get("/v1/secrets", headers={"Authorization": f"Bearer {new_key.group(1)}"})
    assert answer.status_code == 401


def test_member_keys_see_their_org_but_not_the_admin_actions(
        client: TestClient[Litestar], browser: TestClient[Litestar], db_file: Path | PgDsn) -> None:
    acme = create_org(client, "acme")
    member = create_key(client, acme, role="member")
    token = sign_in(browser, member)
    page = browser.get("/credentials")
    assert "Only admin keys create and revoke API keys." in page.text
    assert 'href="/audit"' not in page.text  # the audit is for admin keys
    before = max_seq(db_file)
    answer = browser.post("/credentials/api-keys", data={"csrf_token": token, "label": "x", "role": "admin"})
    assert answer.status_code == 403
    assert browser.get("/audit").status_code == 403
    assert browser.get("/audit/export?format=jsonl").status_code == 403
    assert max_seq(db_file) == before


def test_one_org_s_session_sees_nothing_of_another_org(
        client: TestClient[Litestar], browser: TestClient[Litestar], db_file: Path | PgDsn) -> None:
    acme, globex = create_org(client, "acme"), create_org(client, "globex")
    upsert(client, globex, "GLOBEX_ONLY", CANARY)
    token = sign_in(browser, acme)
    assert "GLOBEX_ONLY" not in browser.get("/credentials").text
    assert browser.get("/credentials/secrets/GLOBEX_ONLY").status_code == 404
    before = max_seq(db_file)
    answer = browser.post("/credentials/secrets/GLOBEX_ONLY/reveal", data={"csrf_token": token})
    assert answer.status_code == 404 and CANARY not in answer.text
    assert browser.post(f"/credentials/api-keys/{globex.key_id}/revoke",
                        data={"csrf_token": token}).status_code == 404
    assert browser.post("/credentials/secrets/GLOBEX_ONLY/delete", data={"csrf_token": token}).status_code == 404
    audit = browser.get("/audit")
    assert "GLOBEX_ONLY" not in audit.text and globex.key_id not in audit.text
    export = browser.get("/audit/export?format=jsonl")
    assert export.status_code == 200 and "globex" not in export.text
    assert all(e["org"] == "acme" for e in events_after(db_file, before))
    globex_ssh = client.post("/v1/ssh-keys", headers=globex.headers, json={
        "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDxDxh3aF2tV0QyG2mC2WJq2cK2d3zM0pZ6mP6uYb9cN globex"})
    assert globex_ssh.status_code == 201, globex_ssh.text
    assert browser.get(f"/credentials/ssh-keys/{globex_ssh.json()['ssh_key_id']}/remove").status_code == 404


def test_the_audit_page_filters_paginates_and_exports(
        client: TestClient[Litestar], browser: TestClient[Litestar]) -> None:
    acme = create_org(client, "acme")
    for i in range(60):
        upsert(client, acme, f"S{i:02d}", "v")
    sign_in(browser, acme)
    first = browser.get("/audit")
    assert first.status_code == 200
    assert first.text.count("<tr>") == 51  # a header row and 50 events
    assert "<code>session.started</code>" in first.text
    older = re.search(r'href="(/audit\?before=\d+)">Older events', first.text)
    assert older is not None
    second = browser.get(older.group(1).replace("&amp;", "&"))
    assert "<code>org.created</code>" in second.text and "<code>session.started</code>" not in second.text
    only = browser.get("/audit?action=secret.created&secret=S07")
    assert only.text.count("<tr>") == 2
    assert browser.get("/audit?since=2200-01-01T00:00").text.count("<tr>") == 0
    assert browser.get("/audit?action=nonsense").status_code == 422
    assert browser.get("/audit?before=99999999999999999999").status_code == 200  # too large: ignored
    # "To" covers the whole minute or second it names (the page shows times to the second).
    shown = re.search(r"(\d{4}-\d\d-\d\d) (\d\d:\d\d):(\d\d) UTC", first.text)
    assert shown is not None
    day, minute, second = shown.groups()
    newest_seq = re.search(r'<td data-label="Seq">(\d+)</td>', first.text)
    assert newest_seq is not None
    for until in (f"{day}T{minute}", f"{day}T{minute}:{second}"):
        page = browser.get(f"/audit?until={until}")
        assert f'<td data-label="Seq">{newest_seq.group(1)}</td>' in page.text, until
    csv = browser.get("/audit/export?format=csv&action=secret.created")
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert len(csv.text.strip().splitlines()) == 61  # a header and 60 creations
    lines = browser.get("/audit/export?format=jsonl&secret=S07").text.strip().splitlines()
    assert len(lines) == 1
    verification = browser.get("/audit/verification", headers={"HX-Request": "true"})
    assert "Verified." in verification.text and "Latest signed checkpoint" in verification.text


def test_pages_carry_a_strict_content_security_policy(client: TestClient[Litestar],
                                                      browser: TestClient[Litestar]) -> None:
    acme = create_org(client, "acme")
    sign_in(browser, acme)
    for path in ("/", "/credentials", "/audit"):
        answer = browser.get(path)
        policy = answer.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert answer.headers["x-frame-options"] == "DENY"
    htmx = browser.get("/static/htmx.min.js")
    assert htmx.status_code == 200 and "htmx" in htmx.text[:2000]
