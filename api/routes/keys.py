"""API keys of the caller's org: list (never a key), create (the key is shown once), revoke."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from api.auth import Principal, require_api_key
from api.idempotent import json_answer, run_command
from api.routes.docs import COMMON, problems
from api.schemas import ApiKeyInfo, ApiKeyList, CreatedApiKey, CreateKeyBody, rfc3339
from ledger.commands import CreatedKey
from ledger.errors import NotFoundError
from ledger.idempotency import StoredAnswer
from ledger.service import Ledger
from projections.reader import Projections


class KeysController(Controller):
    path = "/v1/keys"
    tags = ["keys"]
    before_request = staticmethod(require_api_key)  # Litestar calls it unbound

    @get("/", operation_id="ListApiKeys", responses=problems(*COMMON), summary="List the org's active API keys")
    async def list_keys(
        self, principal: NamedDependency[Principal], projections: NamedDependency[Projections]
    ) -> ApiKeyList:
        rows = await projections.list_keys(principal.org)
        return ApiKeyList(
            keys=[
                ApiKeyInfo(
                    key_id=row.key_id,
                    label=row.label,
                    role=row.role,  # type: ignore[arg-type]
                    scope=row.scope,  # type: ignore[arg-type]
                    created_at=rfc3339(row.created_at),
                    last_used_at=rfc3339(row.last_used_at) if row.last_used_at else None,
                )
                for row in rows
                if row.revoked_at is None
            ]
        )

    @post(
        "/",
        operation_id="CreateApiKey",
        status_code=HTTP_201_CREATED,
        responses=problems(*COMMON, 403),
        summary="Create an API key (admin only); the key is in this answer only",
    )
    async def create_key(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[CreateKeyBody],
        principal: NamedDependency[Principal],
        ledger: NamedDependency[Ledger],
    ) -> Response[CreatedApiKey]:
        principal.require_admin()
        command = ledger.create_api_key_command(principal.ctx, principal.org, data.label, data.role, data.scope)

        def render(created: CreatedKey) -> StoredAnswer:
            body = CreatedApiKey(
                key_id=created.key_id,
                label=created.label,
                role=created.role,
                scope=created.scope,
                created_at=rfc3339(created.created_at),
                last_used_at=None,
                api_key=created.api_key,
            )
            return json_answer(HTTP_201_CREATED, body)

        return await run_command(request, ledger, command, f"{principal.org}/{principal.key_id}", render)

    @delete(
        "/{key_id:str}",
        operation_id="RevokeApiKey",
        status_code=HTTP_204_NO_CONTENT,
        responses=problems(*COMMON, 403, 404),
        summary="Revoke an API key (admin only); effective at once",
    )
    async def revoke_key(
        self,
        key_id: FromPath[str],
        principal: NamedDependency[Principal],
        ledger: NamedDependency[Ledger],
        projections: NamedDependency[Projections],
    ) -> None:
        principal.require_admin()
        if await projections.get_key(principal.org, key_id) is None:
            raise NotFoundError(f"API key {key_id!r} not found")
        await ledger.revoke_api_key(principal.ctx, principal.org, key_id)
