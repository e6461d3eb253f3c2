"""Connecting apps through OAuth 2.0 from the dashboard, and disconnecting them (admins).

`POST /apps/connect` checks the form and sends the browser to the provider with an authorization request
(PKCE S256 and state, `ledger/oauth.py`); what the end needs, the client secret included, waits in a SEALED
cookie (AES-GCM under a key derived from the master key: the browser holds it but cannot read it), SameSite=Lax,
HttpOnly, Secure over HTTPS, scoped to `/apps`, for 10 minutes. The provider sends the browser back to
`GET /apps/callback`, which trades the code for tokens and records `app.connected` under the admin's session
(`Ledger.connect_app`, which seals the tokens and the client secret).

Why a hop. The provider's redirect back is a cross-site navigation: the Lax flow cookie comes with it, but the
session cookie (SameSite=Strict) does not, so the callback cannot know who is signed in. Rather than let the
flow cookie stand in for the session, the callback answers a tiny page that sends the browser on by itself
(`<meta http-equiv="refresh">`, no script) to `GET /apps/finish` with the code and state: a navigation this site
starts, so the browser sends the session cookie, and the finish runs under the full session check like every
page. The finish then also requires that the flow was started by this very session (its id is sealed in the
cookie) and that the state matches (a link to the callback that someone else made cannot match the state sealed
in this browser's cookie).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import FormMultiDict
from litestar.exceptions import HTTPException
from litestar.params import FromPath

from api.auth import limit_address
from api.dashboard.access import from_this_site, query_text, require_session, text_field, user_of
from api.dashboard.render import error_page, page, path_part, redirect
from api.dashboard.session import SignedIn
from api.dashboard.sso import (
    callback_params,
    flow_cookie,
    hop,
    oauth_failure,
    open_flow_cookie,
    redirect_uri,
    seal_flow_cookie,
)
from api.routes.connected_apps import endpoints
from ledger import oauth
from ledger.apps import AppTokens
from ledger.errors import AlreadyExistsError, LedgerError, NotFoundError, ValidationError
from ledger.events import APP_PROVIDERS, SCOPES
from ledger.model import validate_name, validate_scope
from ledger.people import validate_claim
from ledger.service import Ledger, validate_scopes
from projections.reader import Projections

APP_FLOW_COOKIE = "keyledger_app_flow"
_APP_PURPOSE = "app"
_SCOPE_SPLIT = re.compile(r"[\s,]+")
MAX_CLIENT_SECRET_CHARS = 4096
_FORM_FIELDS = ("name", "provider", "authorization_url", "token_url", "client_id", "scopes", "scope")
_STALE = ("This connection attempt is out of date: it took more than 10 minutes, or it was started in another "
          "browser or session. Nothing was connected: start again.")


class AppFlow(msgspec.Struct, frozen=True, kw_only=True):
    """The connection waiting for the provider's answer (sealed in the flow cookie, client secret included)."""

    org: str
    session_id: str
    name: str
    provider: str
    authorization_url: str
    token_url: str
    client_id: str
    client_secret: str
    scopes: list[str]
    scope: str
    auth_method: oauth.AuthMethod
    redirect_uri: str
    state: str
    code_verifier: str
    started_at: int

    def __repr__(self) -> str:
        return f"AppFlow(org={self.org!r}, name={self.name!r})"

    def form(self) -> dict[str, str]:
        """The form's fields as the admin filled them in (never the client secret)."""
        return {"name": self.name, "provider": self.provider, "authorization_url": self.authorization_url,
                "token_url": self.token_url, "client_id": self.client_id, "scopes": " ".join(self.scopes),
                "scope": self.scope}


def _client_secret(form: FormMultiDict) -> str:
    raw = form.get("client_secret")
    secret = raw.strip() if isinstance(raw, str) else ""
    if not secret:
        raise ValidationError("client secret", "is required (keyledger never shows it back: type it again)")
    if len(secret) > MAX_CLIENT_SECRET_CHARS or not secret.isascii() or not secret.isprintable():
        raise ValidationError("client secret", f"must be at most {MAX_CLIENT_SECRET_CHARS} printable ASCII "
                                               "characters")
    return secret


def _scopes(text: str, provider: str) -> list[str]:
    scopes = [s for s in _SCOPE_SPLIT.split(text) if s]
    preset = oauth.PRESETS.get(provider)
    if not scopes and preset is not None:
        scopes = list(preset.scopes)
    return list(validate_scopes(scopes))


def _preset_data() -> dict[str, dict[str, str]]:
    """For the form: each preset's URLs and default scopes (the page's script fills them in)."""
    return {name: {"authorization_url": p.authorization_url, "token_url": p.token_url, "scopes": " ".join(p.scopes)}
            for name, p in oauth.PRESETS.items()}


async def _connect_page(request: Request[Any, Any, Any], user: SignedIn, *, form: dict[str, str],
                        status: int = 200, error: str | None = None, cookies: list[Any] | None = None,
                        ) -> Response[Any]:
    projections: Projections = request.app.state.projections
    existing = await projections.get_app(user.principal.org, form["name"]) if form.get("name") else None
    return page(request, user, "connect_app.html", status=status, cookies=cookies, title="Connect an app",
                section="credentials", form=form, error=error, providers=APP_PROVIDERS, scopes=SCOPES,
                presets=_preset_data(), callback_url=redirect_uri(request, "/apps/callback"),
                reconnect=existing is not None and existing.state == "broken")


class AppsController(Controller):
    path = "/apps"
    include_in_schema = False
    before_request = staticmethod(require_session)
    exception_handlers = {LedgerError: error_page, HTTPException: error_page}

    @get("/connect")
    async def connect_form(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """The form; `?name=` fills it in from a connection (to reconnect a broken one), `?provider=` picks one."""
        user = user_of(request)
        user.principal.require_admin()
        form = {field: "" for field in _FORM_FIELDS}
        name = query_text(request, "name")
        provider = query_text(request, "provider")
        form["provider"] = provider if provider in APP_PROVIDERS else "github"
        form["scope"] = "all"
        projections: Projections = request.app.state.projections
        row = await projections.get_app(user.principal.org, name) if name else None
        if row is not None:
            form.update(name=row.name, provider=row.provider, authorization_url=row.authorization_url,
                        token_url=row.token_url, client_id=row.client_id, scopes=" ".join(row.scopes),
                        scope=row.scope)
        else:
            form["name"] = name
        preset = oauth.PRESETS.get(form["provider"])
        if preset is not None and row is None:
            form.update(authorization_url=preset.authorization_url, token_url=preset.token_url,
                        scopes=" ".join(preset.scopes))
        return await _connect_page(request, user, form=form)

    @post("/connect")
    async def connect(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """Check the form, keep it sealed in the flow cookie, and send the browser to the provider."""
        user = user_of(request)
        user.principal.require_admin()
        form = await request.form()
        kept = {field: text_field(form, field, max_chars=4096) for field in _FORM_FIELDS}
        try:
            name = validate_name(text_field(form, "name", max_chars=256, required=True))
            provider = kept["provider"] or "custom"
            if provider not in APP_PROVIDERS:
                raise ValidationError("provider", f"must be one of {', '.join(APP_PROVIDERS)}")
            authorization_url, token_url = endpoints(provider, kept["authorization_url"] or None,
                                                     kept["token_url"] or None)
            oauth.validate_endpoint_url(authorization_url, "authorization URL")
            oauth.validate_endpoint_url(token_url, "token URL")
            client_id = validate_claim(text_field(form, "client_id", max_chars=512, required=True,
                                                  label="client id"), "client id")
            client_secret = _client_secret(form)
            oauth.validate_client(client_id, client_secret, oauth.auth_method_for(provider))  # before the provider
            scopes = _scopes(kept["scopes"], provider)
            scope = validate_scope(kept["scope"] or "all")
            projections: Projections = request.app.state.projections
            existing = await projections.get_app(user.principal.org, name)
            if existing is not None and existing.state == "connected":
                raise AlreadyExistsError(f"an app named {name!r} is connected: disconnect it first, or choose "
                                         "another name")
            preset = oauth.PRESETS.get(provider)
            callback = redirect_uri(request, "/apps/callback")
            auth = oauth.authorization_request(
                authorization_url, client_id=client_id, redirect_uri=callback, scopes=scopes,
                openid=preset.openid if preset else False,
                scope_separator=preset.scope_separator if preset else " ",
                extra_params=dict(preset.extra_params) if preset else None)
            flow = AppFlow(org=user.principal.org, session_id=user.session_id, name=name, provider=provider,
                           authorization_url=authorization_url, token_url=token_url, client_id=client_id,
                           client_secret=client_secret, scopes=scopes, scope=scope,
                           auth_method=oauth.auth_method_for(provider), redirect_uri=callback, state=auth.state,
                           code_verifier=auth.code_verifier, started_at=request.app.state.clock())
            sealed = seal_flow_cookie(request, _APP_PURPOSE, flow)
        except LedgerError as exc:
            status, message = oauth_failure(exc, "The app's provider", refused_status=400)
            return await _connect_page(request, user, form=kept, status=status, error=message)
        where = provider.capitalize() if provider != "custom" else "the app's provider"
        return hop(request, auth.url, title="Connecting an app", link=f"Continue to {where}", user=user,
                   message=f"Taking you to {where} to authorize keyledger…",
                   cookies=[flow_cookie(request, APP_FLOW_COOKIE, "/apps", sealed)])

    @get("/finish")
    async def finish(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """The provider's answer, one same-site hop after the callback: trade the code, connect the app."""
        user = user_of(request)
        clear = flow_cookie(request, APP_FLOW_COOKIE, "/apps", "", clear=True)
        flow = open_flow_cookie(request, APP_FLOW_COOKIE, _APP_PURPOSE, AppFlow)
        blank = {field: "" for field in _FORM_FIELDS} | {"provider": "github", "scope": "all"}
        if flow is None or flow.session_id != user.session_id or flow.org != user.principal.org:
            return await _connect_page(request, user, form=blank, status=400, error=_STALE, cookies=[clear])
        if not from_this_site(request):
            return await _connect_page(request, user, form=flow.form(), status=403, cookies=[clear], error=(
                "This answer did not come through keyledger's own pages. Nothing was connected: start again."))
        ledger: Ledger = request.app.state.ledger
        try:
            user.principal.require_admin()
            code = oauth.code_from_callback(callback_params(request), expected_state=flow.state)
            tokens = await oauth.exchange_code(
                flow.token_url, client_id=flow.client_id, client_secret=flow.client_secret,
                redirect_uri=flow.redirect_uri, code=code, code_verifier=flow.code_verifier,
                now_ns=request.app.state.clock(), auth_method=flow.auth_method)
            await ledger.connect_app(
                user.principal.ctx, user.principal.org, flow.name, provider=flow.provider,
                authorization_url=flow.authorization_url, token_url=flow.token_url, client_id=flow.client_id,
                client_secret=flow.client_secret, scopes=flow.scopes, scope=flow.scope,
                tokens=AppTokens.from_provider(tokens))
        except LedgerError as exc:
            status, message = oauth_failure(exc, "The app's provider", refused_status=400)
            return await _connect_page(request, user, form=flow.form(), status=status, cookies=[clear],
                                       error=f"{message} Nothing was connected.")
        return redirect(request, user, "/credentials?notice=app-connected#connected-apps", cookies=[clear])

    @get("/{name:str}/disconnect")
    async def confirm_disconnect(self, request: Request[Any, Any, Any], name: FromPath[str]) -> Response[Any]:
        user = user_of(request)
        user.principal.require_admin()
        if await request.app.state.projections.get_app(user.principal.org, name) is None:
            raise NotFoundError(f"connected app {name!r} not found")
        return page(request, user, "confirm.html", title="Disconnect app", section="credentials",
                    question=f"Disconnect the app “{name}”?",
                    consequence=("Its stored tokens and client secret are destroyed: tools asking keyledger for its "
                                 "token get 404 from now on. It can be connected again later."),
                    action=f"/apps/{path_part(name)}/disconnect", button="Disconnect app",
                    cancel="/credentials#connected-apps")

    @post("/{name:str}/disconnect")
    async def disconnect(self, request: Request[Any, Any, Any], name: FromPath[str]) -> Response[Any]:
        user = user_of(request)
        user.principal.require_admin()
        await request.app.state.ledger.disconnect_app(user.principal.ctx, user.principal.org, name)
        return redirect(request, user, "/credentials?notice=app-disconnected#connected-apps")


@get("/apps/callback", include_in_schema=False,
     exception_handlers={LedgerError: error_page, HTTPException: error_page})
async def apps_callback(request: Request[Any, Any, Any]) -> Response[Any]:
    """Where the provider sends the browser back. Its session cookie (Strict) is not sent on that cross-site
    navigation, so this only passes the answer on, through a page, to `/apps/finish` (see the module's doc)."""
    limit_address(request)
    params = {name: value[:4096] for name, value in callback_params(request).items()}
    return hop(request, f"/apps/finish?{urlencode(params)}", title="Connecting an app",
               link="Finish connecting the app", message="Finishing the connection…")
