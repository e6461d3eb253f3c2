"""Single sign-on and connected apps in a real headless browser: Playwright driving Debian's Chromium against a
real `keyledger serve` on 127.0.0.1 and the test authorization server (`tests/oidc_server.py`) on "localhost",
which is another site for the browser. So the provider's redirects back are cross-site navigations, on which
Chromium withholds SameSite=Strict cookies: these tests are where the flow cookies (Lax) and the same-site hops
are proven, since the in-process client applies no SameSite.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect

from tests.browser.test_dashboard_browser import (  # noqa: F401 - fixtures
    _check_labels_and_width,
    api,
    audit_actions,
    chromium,
    new_org,
    server,
    shots,
    sign_in_with_keyboard,
)
from tests.oidc_server import OidcServer
from tests.test_cli_e2e import Server

WIDE = ViewportSize(width=1280, height=900)
NARROW = ViewportSize(width=375, height=812)


@pytest.fixture(scope="module")
def oidc() -> Iterator[OidcServer]:
    with OidcServer() as provider:
        provider.set_user("grace", email="grace@example.com", email_verified=True, name="Grace")
        yield provider


@pytest.fixture
def tab(chromium: Browser, server: Server) -> Iterator[Page]:  # noqa: F811
    context = chromium.new_context(viewport=WIDE, base_url=server.url)
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    try:
        yield page
    finally:
        context.close()
    assert errors == [], errors  # no script error, nothing refused by a Content-Security-Policy


def set_up_sso(server: Server, oidc: OidcServer) -> dict[str, str]:  # noqa: F811
    """An org whose people sign in through the test provider."""
    admin = new_org(server)
    client_id, client_secret = oidc.register_client(f"{server.url}/sso/callback")
    stored = api(server, "POST", "/v1/secrets", admin["api_key"], json={"name": "SSO_SECRET", "value": client_secret})
    assert stored.status_code == 201, stored.text
    answer = api(server, "PUT", "/v1/sso", admin["api_key"], json={
        "issuer": oidc.issuer, "client_id": client_id, "client_secret_name": "SSO_SECRET",
        "allowed_domains": ["example.com"]})
    assert answer.status_code == 200, answer.text
    return admin


def test_a_person_signs_in_through_the_provider_and_out(tab: Page, server: Server, oidc: OidcServer,  # noqa: F811
                                                        shots: Path) -> None:  # noqa: F811
    admin = set_up_sso(server, oidc)
    org = admin["org"]
    tab.goto(f"/?org={org}")
    expect(tab.get_by_role("link", name=f"Sign in to {org} with single sign-on")).to_be_visible()
    tab.screenshot(path=str(shots / "sign-in-sso.png"), full_page=True)

    # The Organisation field and its button (a form: the answer is a page that moves on by itself, since
    # forms may only go to keyledger), then the provider's login page on another site.
    tab.get_by_label("Organisation").fill(org)
    tab.get_by_role("button", name="Sign in with SSO").click()
    tab.wait_for_url(f"{oidc.issuer}/oauth2/authorize?**")
    tab.get_by_label("User").fill("grace")
    tab.keyboard.press("Enter")
    # Back through /sso/callback (a cross-site navigation) and its same-site hop: the Strict session cookie
    # set by the callback goes with the next request, so the page is Credentials, not the sign-in page.
    tab.wait_for_url(f"{server.url}/credentials")
    expect(tab.locator("#who-email")).to_have_text("grace@example.com")
    assert "(admin)" in tab.locator("header").inner_text()  # the org's first person
    tab.get_by_role("link", name="People").click()
    expect(tab.locator("#people-table")).to_contain_text("grace@example.com")
    expect(tab.locator("#sso-settings")).to_contain_text(oidc.issuer)
    tab.screenshot(path=str(shots / "people.png"), full_page=True)

    tab.get_by_role("button", name="Sign out").click()
    tab.wait_for_url(f"{server.url}/")
    tab.goto("/credentials")
    assert tab.url == f"{server.url}/"

    actors = [(e["action"], e["actor"]) for e in reversed(audit_actions(server, admin["api_key"]))]
    by_person = [(action, actor["label"]) for action, actor in actors
                 if isinstance(actor, dict) and actor["kind"] == "person"]
    assert by_person == [("member.joined", "grace@example.com"), ("session.started", "grace@example.com"),
                         ("session.ended", "grace@example.com")]


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)
def test_an_admin_connects_an_app_through_the_provider(tab: Page, server: Server, oidc: OidcServer,  # noqa: F811
                                                       shots: Path) -> None:  # noqa: F811
    admin = new_org(server)
    client_id, client_secret = oidc.register_client(f"{server.url}/apps/callback")
    sign_in_with_keyboard(tab, admin["api_key"])
    tab.get_by_role("link", name="Connect an app").click()
    # Choosing a provider fills in its URLs (the page's script); "custom" empties them for one's own.
    tab.get_by_label("Provider").select_option("google")
    expect(tab.get_by_label("Token URL")).to_have_value("https://oauth2.googleapis.com/token")
    tab.get_by_label("Provider").select_option("custom")
    expect(tab.get_by_label("Token URL")).to_have_value("")
    tab.get_by_label("Name").fill("ci-app")
    tab.get_by_label("Authorization URL").fill(oidc.authorization_endpoint)
    tab.get_by_label("Token URL").fill(oidc.token_endpoint)
    tab.get_by_label("Client id").fill(client_id)
    tab.get_by_label("Client secret").fill(client_secret)
    tab.get_by_label("Scopes").fill("email profile")
    tab.get_by_role("button", name="Connect", exact=True).click()
    tab.wait_for_url(f"{oidc.issuer}/oauth2/authorize?**")
    tab.get_by_label("User").fill("grace")
    tab.get_by_role("button", name="Sign in").click()
    # The callback hops to /apps/finish, which the browser sends with the Strict session cookie.
    tab.wait_for_url("**/credentials?notice=app-connected#connected-apps")
    row = tab.locator("#apps-table tbody tr")
    expect(row).to_contain_text("ci-app")
    expect(row).to_contain_text("Connected")
    assert client_secret not in tab.content()
    tab.locator("#connected-apps").screenshot(path=str(shots / "connected-apps.png"))
    token = api(server, "POST", "/v1/connected-apps/ci-app/token", admin["api_key"])
    assert token.status_code == 200 and oidc.access_token_active(token.json()["access_token"])


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)
def test_the_new_pages_label_their_controls_and_fit_a_narrow_screen(chromium: Browser, server: Server,  # noqa: F811
                                                                    oidc: OidcServer) -> None:
    admin = set_up_sso(server, oidc)
    context = chromium.new_context(viewport=NARROW, base_url=server.url)
    try:
        page = context.new_page()
        page.goto(f"/?org={admin['org']}")
        _check_labels_and_width(page)
        sign_in_with_keyboard(page, admin["api_key"])
        for path in ("/people", "/apps/connect", "/credentials"):
            page.goto(path)
            _check_labels_and_width(page)
    finally:
        context.close()

