"""Connected apps: OAuth 2.0 connections whose access tokens keyledger hands out, refreshed when due.

The dashboard's Connect button runs the authorization code flow; `POST /v1/connected-apps` connects with
tokens obtained elsewhere. `POST .../token` answers a valid access token (refreshing it first when it
expires within a minute) and records the reveal; a refresh the provider refuses marks the connection broken.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from api.auth import Principal, require_api_key
from api.routes.docs import COMMON, problems
from api.schemas import AppInfo, AppList, AppTokenAnswer, AppTokenBody, ConnectAppBody, rfc3339
from ledger.apps import AppTokens
from ledger.errors import NotFoundError, ValidationError
from ledger.oauth import PRESETS
from ledger.service import Ledger
from projections.reader import Projections
from projections.views import AppRow

SECOND_NS = 1_000_000_000


def _time(ns: int | None) -> str | None:
    return rfc3339(ns) if ns is not None else None


def app_info(row: AppRow) -> AppInfo:
    return AppInfo(
        name=row.name, provider=row.provider, state=row.state,  # type: ignore[arg-type]
        authorization_url=row.authorization_url, token_url=row.token_url, client_id=row.client_id,
        scopes=row.scopes, scope=row.scope,  # type: ignore[arg-type]
        token_version=row.token_version, expires_at=_time(row.expires_at), connected_at=rfc3339(row.connected_at),
        connected_by=row.connected_by, last_refresh_at=_time(row.last_refresh_at), last_error=row.last_error,
        last_error_at=_time(row.last_error_at),
    )


def endpoints(provider: str, authorization_url: str | None, token_url: str | None) -> tuple[str, str]:
    """The URLs given, else the preset's; a custom provider must give both."""
    preset = PRESETS.get(provider)
    authorization = authorization_url or (preset.authorization_url if preset else None)
    token = token_url or (preset.token_url if preset else None)
    if not authorization:
        raise ValidationError("authorization_url", "is required for a custom provider")
    if not token:
        raise ValidationError("token_url", "is required for a custom provider")
    return authorization, token


class ConnectedAppsController(Controller):
    path = "/v1/connected-apps"
    tags = ["connected-apps"]
    before_request = staticmethod(require_api_key)

    @get("/", operation_id="ListConnectedApps", responses=problems(*COMMON),
         summary="List the org's connected apps and their state (never a token)")
    async def list_apps(self, principal: NamedDependency[Principal],
                        projections: NamedDependency[Projections]) -> AppList:
        return AppList(apps=[app_info(r) for r in await projections.list_apps(principal.org)])

    @get("/{name:str}", operation_id="GetConnectedApp", responses=problems(*COMMON, 404),
         summary="One connected app's state")
    async def get_app(self, name: FromPath[str], principal: NamedDependency[Principal],
                      projections: NamedDependency[Projections]) -> AppInfo:
        row = await projections.get_app(principal.org, name)
        if row is None:
            raise NotFoundError(f"connected app {name!r} not found")
        return app_info(row)

    @post(
        "/", operation_id="ConnectApp", status_code=HTTP_201_CREATED, responses=problems(*COMMON, 403, 409),
        summary="Connect an app with tokens obtained elsewhere (admin only); 409 when connected and healthy",
    )
    async def connect_app(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[ConnectAppBody],
        principal: NamedDependency[Principal],
        ledger: NamedDependency[Ledger],
        projections: NamedDependency[Projections],
    ) -> Response[AppInfo]:
        authorization_url, token_url = endpoints(data.provider, data.authorization_url, data.token_url)
        now = ledger.clock()
        tokens = AppTokens(access_token=data.access_token, refresh_token=data.refresh_token,
                           expires_at=None if data.expires_in is None else now + data.expires_in * SECOND_NS)
        await ledger.connect_app(
            principal.ctx, principal.org, data.name, provider=data.provider, authorization_url=authorization_url,
            token_url=token_url, client_id=data.client_id, client_secret=data.client_secret, scopes=data.scopes,
            scope=data.scope, tokens=tokens,
        )
        row = await projections.get_app(principal.org, data.name)
        assert row is not None
        return Response(app_info(row), status_code=HTTP_201_CREATED)

    @post(
        "/{name:str}/token", operation_id="ConnectedAppToken", status_code=HTTP_200_OK,
        responses=problems(*COMMON, 403, 404, 409, 502),
        summary="A valid access token, refreshed first when due; recorded. 409: the connection is broken",
    )
    async def token(
        self,
        name: FromPath[str],
        principal: NamedDependency[Principal],
        ledger: NamedDependency[Ledger],
        data: JSONBody[AppTokenBody | None] = None,
    ) -> AppTokenAnswer:
        answer = await ledger.app_token(principal.ctx, principal.org, name, reason=data.reason if data else "")
        return AppTokenAnswer(name=answer.name, access_token=answer.access_token, token_type=answer.token_type,
                              expires_at=_time(answer.expires_at), token_version=answer.token_version,
                              refreshed=answer.refreshed)

    @delete("/{name:str}", operation_id="DisconnectApp", status_code=HTTP_204_NO_CONTENT,
            responses=problems(*COMMON, 403, 404),
            summary="Disconnect an app (admin only): its stored tokens are destroyed")
    async def disconnect(self, name: FromPath[str], principal: NamedDependency[Principal],
                         ledger: NamedDependency[Ledger]) -> None:
        await ledger.disconnect_app(principal.ctx, principal.org, name)
