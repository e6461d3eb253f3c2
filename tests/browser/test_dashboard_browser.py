"""The dashboard in a real headless browser: Playwright driving Debian's Chromium (never a downloaded
one) against a real `keyledger serve` process on a loopback port, on SQLite and on PostgreSQL.

Where Chromium is missing the tests skip, except in CI (KEYLEDGER_REQUIRE_BROWSER, set by .ci/run,
which installs Chromium first): there they fail. KEYLEDGER_SCREENSHOTS=docs/screenshots refreshes
the README's screenshots; otherwise they go to a temporary folder (and are still taken).
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.pg import DSN, REQUIRED, pg_database
from tests.test_cli_e2e import (
    ADMIN_TOKEN,
    HOST,
    Server,
    clean_env,
    free_port,
    new_master_key,
    start_server,
)

CHROMIUM = os.environ.get("KEYLEDGER_CHROMIUM", "/usr/bin/chromium")
BROWSER_REQUIRED = bool(os.environ.get("KEYLEDGER_REQUIRE_BROWSER"))
# As the machine's own probe starts it: no sandbox (root), and none of Chromium's calls home, which
# this machine's closed network would refuse.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps",
]
WIDE = {"width": 1280, "height": 900}
NARROW = {"width": 375, "height": 812}
VALUE = "sk-browser-test-4b1d8e"


# What the pages look like and how they are driven does not depend on the storage: those tests take
# the SQLite server only; the flows that write run on both.
sqlite_only = pytest.mark.parametrize("server", ["sqlite"], indirect=True)


def _backends() -> list[object]:
    postgres = pytest.param("postgresql", marks=pytest.mark.skipif(not DSN and not REQUIRED,
                                                                   reason="no PostgreSQL to test on"))
    return ["sqlite", postgres]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        message = f"Chromium is not at {CHROMIUM} (Debian: apt-get install chromium)"
        if BROWSER_REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module", params=_backends())
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("browser")
    env = clean_env(KEYLEDGER_MASTER_KEY=new_master_key(), KEYLEDGER_ADMIN_TOKEN=ADMIN_TOKEN)
    if request.param == "sqlite":
        srv = start_server(folder, ["--host", HOST, "--port", str(free_port()), "--db", str(folder / "k.db")], env)
        try:
            yield srv
        finally:
            srv.stop()
        return
    with pg_database() as dsn:
        srv = start_server(folder, ["--host", HOST, "--port", str(free_port()), "--db", dsn], env)
        try:
            yield srv
        finally:
            srv.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get("KEYLEDGER_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


_org_numbers = iter(range(1, 10_000))


def new_org(server: Server) -> dict[str, str]:
    org = f"browser{next(_org_numbers)}"
    answer = httpx.post(f"{server.url}/v1/admin/orgs", json={"org": org},
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    assert answer.status_code == 201, answer.text
    body: dict[str, str] = answer.json()
    return body


def api(server: Server, method: str, path: str, key: str, **kwargs: object) -> httpx.Response:
    return httpx.request(method, f"{server.url}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=10,
                         **kwargs)


def audit_actions(server: Server, admin_key: str, **filters: str) -> list[dict[str, object]]:
    answer = api(server, "GET", "/v1/audit", admin_key, params={"limit": "1000", **filters})
    assert answer.status_code == 200, answer.text
    events: list[dict[str, object]] = answer.json()["events"]
    return events


@pytest.fixture
def page(chromium: Browser, server: Server) -> Iterator[Page]:
    context = chromium.new_context(viewport=WIDE, base_url=server.url)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    tab = context.new_page()
    tab.set_default_timeout(10_000)
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    try:
        yield tab
    finally:
        context.close()
    assert errors == [], errors  # no script error, no resource refused by the Content-Security-Policy


def sign_in_with_keyboard(page: Page, key: str) -> None:
    """As a keyboard user: the key field has the focus when the page opens; Enter submits."""
    page.goto("/")
    expect(page.get_by_label("API key")).to_be_focused()
    page.keyboard.type(key)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url.endswith("/credentials"), page.locator("main").inner_text()


def ssh_key_pair(folder: Path) -> tuple[str, str]:
    """A fresh ed25519 public key line, and how `ssh-keygen -l` shows its fingerprint."""
    keygen = shutil.which("ssh-keygen")
    assert keygen is not None, "ssh-keygen (Debian: openssh-client) is needed to make test keys"
    path = folder / "id_ed25519"
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "dev@laptop", "-f", str(path)], check=True)
    listed = subprocess.run([keygen, "-l", "-f", str(path) + ".pub"], check=True, capture_output=True, text=True)
    return (path.with_suffix(".pub")).read_text().strip(), listed.stdout.split()[1]


def test_a_new_user_manages_credentials_end_to_end(page: Page, server: Server, shots: Path,
                                                   tmp_path: Path) -> None:
    p = page
    admin = new_org(server)
    p.clock.install()  # the 30 s reveal runs on the page's clock, moved by the test
    p.goto("/")
    p.screenshot(path=str(shots / "sign-in.png"))
    sign_in_with_keyboard(p, admin["api_key"])
    locate = p.locator
    role = p.get_by_role
    label = p.get_by_label

    # A secret: create it, reveal it (shown, copied, then hidden), see the reveal in the audit.
    label("Name", exact=True).fill("OPENAI_API_KEY")
    locate("#secret-value").fill(VALUE)
    locate("#secret-category").select_option("provider")
    locate("#secret-scope").select_option("agents")
    locate("#secret-description").fill("LLM calls from the agents")
    role("button", name="Add secret").click()
    p.wait_for_url("**/credentials/secrets/OPENAI_API_KEY?notice=secret-created")
    assert VALUE not in p.content()
    label("Reason (optional)").fill("checking the new key")
    role("button", name="Reveal value").click()
    shown = locate("#revealed-value")
    shown.wait_for()
    assert shown.input_value() == VALUE
    role("button", name="Copy").click()
    assert p.evaluate("navigator.clipboard.readText()") == VALUE
    p.screenshot(path=str(shots / "secret.png"), full_page=True)
    p.clock.run_for(29_000)
    assert shown.count() == 1
    p.clock.run_for(2_000)
    assert shown.count() == 0
    assert VALUE not in p.content()  # removed from the page, not only hidden
    assert "hidden again" in locate("#reveal-result").inner_text()
    # Another look: given 30 s more (it outlasts the first 30 s), then hidden at once.
    label("Reason (optional)").fill("second look")
    role("button", name="Reveal value").click()
    shown.wait_for()
    role("button", name="Show 30 s more").click()
    p.clock.run_for(45_000)
    assert shown.input_value() == VALUE
    role("button", name="Hide now").click()
    assert shown.count() == 0 and VALUE not in p.content()
    reveals = audit_actions(server, admin["api_key"], action="secret.revealed")
    assert [(e["secret"], e["actor"]["key_id"], e["detail"]) for e in reversed(reveals)] == [
        ("OPENAI_API_KEY", admin["key_id"], "checking the new key"), ("OPENAI_API_KEY", admin["key_id"], "second look")]
    role("link", name="Audit").click()
    locate("#chain-status").wait_for()
    assert "Verified" in locate("#chain-status").inner_text()
    rows = locate("#audit-events tbody tr")
    assert "secret.revealed" in rows.first.inner_text()
    label("Action").select_option("secret.created")
    role("button", name="Apply filters").click()
    p.wait_for_url("**/audit?action=secret.created*")
    assert locate("#audit-events tbody tr").count() == 1
    with p.expect_download() as download:
        role("link", name="Export JSON Lines").click()
    exported = Path(download.value.path()).read_text().strip().splitlines()
    assert len(exported) == 1 and '"secret.created"' in exported[0]
    role("link", name="Clear").click()
    locate("#chain-status").wait_for()
    p.screenshot(path=str(shots / "audit.png"), full_page=True)

    # Update it: a new version, in the history; the value never comes back to the page.
    role("link", name="Credentials").click()
    role("link", name="OPENAI_API_KEY").click()
    label("New value").fill(VALUE + "-v2")
    role("button", name="Save new version").click()
    p.wait_for_url("**?notice=secret-updated")
    assert "(current)" in locate("table tbody tr").first.inner_text()
    assert locate("table tbody tr").first.inner_text().startswith("2")
    assert VALUE not in p.content()
    assert api(server, "GET", "/v1/secrets/OPENAI_API_KEY", admin["api_key"]).json()["version"] == 2

    # Search and filters narrow the list as one types (htmx), and work without it too.
    role("link", name="Tool & Provider Keys").first.click()
    label("Name", exact=True).fill("GITHUB_TOKEN")
    locate("#secret-value").fill("ghp-x")
    locate("#secret-category").select_option("tool")
    role("button", name="Add secret").click()
    p.wait_for_url("**/credentials/secrets/GITHUB_TOKEN*")
    p.goto("/credentials")
    results = locate("#secret-results")
    assert "GITHUB_TOKEN" in results.inner_text() and "OPENAI_API_KEY" in results.inner_text()
    label("Search").fill("github")
    p.clock.run_for(500)  # the search waits 300 ms after the last key
    expect(results).not_to_contain_text("OPENAI")
    assert "GITHUB_TOKEN" in results.inner_text()
    label("Category").first.select_option("provider")
    expect(results).not_to_contain_text("GITHUB")
    assert "No secret matches" in results.inner_text()
    p.goto("/credentials?category=provider")
    assert "OPENAI_API_KEY" in locate("#secret-results").inner_text()
    assert "GITHUB_TOKEN" not in locate("#secret-results").inner_text()

    # An API key: created (shown once, copyable), then revoked after a confirmation.
    p.goto("/credentials")
    label("Label", exact=True).fill("deploy bot")
    locate("#key-scope").select_option("tools")
    role("button", name="Create key").click()
    new_key = locate("#new-api-key").input_value()
    assert re.fullmatch(r"rt_live_[A-Za-z0-9]{32,}", new_key)
    locate("#created-key").get_by_role("button", name="Copy").click()
    assert p.evaluate("navigator.clipboard.readText()") == new_key
    assert api(server, "GET", "/v1/secrets", new_key).status_code == 200
    p.goto("/credentials")
    assert new_key not in p.content()
    role("link", name="Revoke deploy bot").click()
    assert "Revoke the API key “deploy bot”" in p.content()
    role("button", name="Revoke key").click()
    p.wait_for_url("**notice=key-revoked*")
    assert api(server, "GET", "/v1/secrets", new_key).status_code == 401

    # An SSH key: added (fingerprint as ssh-keygen -l shows it), then removed.
    public_key, fingerprint = ssh_key_pair(tmp_path)
    label("Public key").fill(public_key)
    locate("#ssh-label").fill("laptop")
    role("button", name="Add SSH key").click()
    p.wait_for_url("**notice=ssh-key-added*")
    assert fingerprint in locate("#ssh-keys").inner_text()
    p.screenshot(path=str(shots / "credentials.png"), full_page=True)
    role("link", name="Remove laptop").click()
    role("button", name="Remove key").click()
    p.wait_for_url("**notice=ssh-key-removed*")
    assert fingerprint not in locate("#ssh-keys").inner_text()

    # Delete the secret, after a confirmation.
    role("link", name="GITHUB_TOKEN").click()
    role("link", name="Delete this secret…").click()
    role("button", name="Delete secret").click()
    p.wait_for_url("**notice=secret-deleted*")
    assert api(server, "GET", "/v1/secrets/GITHUB_TOKEN", admin["api_key"]).status_code == 404

    # Sign out: the pages ask for a key again.
    role("button", name="Sign out").click()
    p.wait_for_url(f"{server.url}/")
    p.goto("/credentials")
    assert p.url == f"{server.url}/"

    # Every click above is in the ledger under the admin's key.
    actions = [e["action"] for e in reversed(audit_actions(server, admin["api_key"]))
               if e["actor"]["key_id"] == admin["key_id"]]
    for expected in ("session.started", "secret.created", "secret.revealed", "secret.updated", "api_key.created",
                     "api_key.revoked", "ssh_key.added", "ssh_key.removed", "secret.deleted", "session.ended"):
        assert expected in actions, (expected, actions)


def test_a_revoked_key_s_session_stops_working(page: Page, server: Server) -> None:
    admin = new_org(server)
    member = api(server, "POST", "/v1/keys", admin["api_key"], json={"label": "contractor", "role": "member"}).json()
    sign_in_with_keyboard(page, member["api_key"])
    assert "contractor" in page.locator("header").inner_text()
    assert api(server, "DELETE", f"/v1/keys/{member['key_id']}", admin["api_key"]).status_code == 204
    page.reload()
    assert page.url.startswith(f"{server.url}/?ended=1")
    assert "Your session ended" in page.content()


class _ForgeryPage(http.server.BaseHTTPRequestHandler):
    """Another site's page with a form that posts to keyledger (it cannot read the page's token)."""

    target = ""

    def do_GET(self) -> None:
        body = (f'<!doctype html><form method="post" action="{self.target}/credentials/secrets">'
                '<input name="name" value="PLANTED"><input name="value" value="attacker">'
                '<input name="scope" value="all"><input name="category" value="custom">'
                '<button id="go">Win a prize</button></form>').encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@sqlite_only
def test_a_forged_form_from_another_site_is_refused_and_nothing_is_recorded(
        chromium: Browser, server: Server) -> None:
    admin = new_org(server)
    handler = type("Forgery", (_ForgeryPage,), {"target": server.url})
    # "localhost" is another site than 127.0.0.1 for the browser; the attacker serves from it.
    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    context = chromium.new_context(base_url=server.url)
    try:
        tab = context.new_page()
        sign_in_with_keyboard(tab, admin["api_key"])
        before = audit_actions(server, admin["api_key"])
        for origin in (f"http://localhost:{evil.server_address[1]}", f"http://127.0.0.1:{evil.server_address[1]}"):
            tab.goto(origin + "/")
            with tab.expect_navigation():
                tab.click("#go")
            assert "PLANTED" not in tab.content()
        assert api(server, "GET", "/v1/secrets/PLANTED", admin["api_key"]).status_code == 404
        assert audit_actions(server, admin["api_key"]) == before
    finally:
        context.close()
        evil.shutdown()


def _check_labels_and_width(tab: Page) -> None:
    unlabelled = tab.evaluate("""() => [...document.querySelectorAll('input, select, textarea')]
        .filter(el => el.type !== 'hidden' && el.labels.length === 0 && !el.getAttribute('aria-label'))
        .map(el => el.outerHTML)""")
    assert unlabelled == []
    nameless = tab.evaluate("""() => [...document.querySelectorAll('button, a')]
        .filter(el => !el.innerText.trim() && !el.getAttribute('aria-label')).map(el => el.outerHTML)""")
    assert nameless == []
    overflow = tab.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{tab.url} is {overflow}px wider than the screen"


@sqlite_only
def test_every_page_labels_its_controls_and_fits_a_narrow_screen(chromium: Browser, server: Server,
                                                                 shots: Path) -> None:
    admin = new_org(server)
    api(server, "POST", "/v1/secrets", admin["api_key"], json={
        "name": "ANTHROPIC_API_KEY", "value": "v", "category": "provider",
        "description": "a long description that has to wrap on a phone's narrow screen without overflowing"})
    for viewport in (WIDE, NARROW):
        context = chromium.new_context(viewport=viewport, base_url=server.url)
        try:
            tab = context.new_page()
            tab.goto("/")
            _check_labels_and_width(tab)
            sign_in_with_keyboard(tab, admin["api_key"])
            for path in ("/credentials", "/credentials/secrets/ANTHROPIC_API_KEY", "/audit",
                         f"/credentials/api-keys/{admin['key_id']}/revoke"):
                tab.goto(path)
                _check_labels_and_width(tab)
            if viewport is NARROW:
                tab.goto("/credentials")
                tab.screenshot(path=str(shots / "credentials-narrow.png"), full_page=False)
        finally:
            context.close()


def _tab_to(tab: Page, text: str, limit: int = 60) -> None:
    """Press Tab until the focused control reads `text` (as a keyboard user finds it)."""
    for _ in range(limit):
        tab.keyboard.press("Tab")
        focused = tab.evaluate("(document.activeElement.textContent || document.activeElement.value || '')")
        if " ".join(focused.split()) == text:
            return
    raise AssertionError(f"Tab never reached {text!r}")


@sqlite_only
def test_a_keyboard_alone_reveals_a_secret_and_revokes_a_key(page: Page, server: Server) -> None:
    admin = new_org(server)
    multi_line = "-----BEGIN KEY-----\nline one\nline two\n-----END KEY-----\n"
    api(server, "POST", "/v1/secrets", admin["api_key"], json={"name": "STRIPE_KEY", "value": multi_line})
    api(server, "POST", "/v1/keys", admin["api_key"], json={"label": "old laptop", "role": "member"})
    sign_in_with_keyboard(page, admin["api_key"])
    page.goto("/credentials/secrets/STRIPE_KEY")
    _tab_to(page, "Reveal value")
    page.keyboard.press("Enter")
    expect(page.locator("#revealed-value")).to_have_value(multi_line)  # every line, as stored
    page.goto("/credentials")
    _tab_to(page, "Revoke old laptop")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    _tab_to(page, "Revoke key")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "old laptop" not in page.locator("#api-keys table").inner_text()
