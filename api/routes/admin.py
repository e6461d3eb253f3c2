"""Operator routes, behind KEYLEDGER_ADMIN_TOKEN (off when it is not set)."""

from __future__ import annotations

import secrets

from litestar import Controller, Request, Response, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_201_CREATED

from api.auth import admin_context_of, require_admin_token
from api.idempotent import json_answer, run_command
from api.routes.docs import problems
from api.schemas import CreatedOrg, CreateOrgBody
from api.settings import Settings
from ledger.commands import CreatedKey
from ledger.errors import ValidationError
from ledger.idempotency import StoredAnswer
from ledger.service import Ledger


class AdminController(Controller):
    path = "/v1/admin"
    tags = ["admin"]
    before_request = staticmethod(require_admin_token)  # Litestar calls it unbound

    @post(
        "/orgs",
        operation_id="CreateOrg",
        status_code=HTTP_201_CREATED,
        responses=problems(401, 403, 409, 413, 422, 429, 503),
        summary="Create an org and its first key, an admin (admin token only)",
    )
    async def create_org(
        self,
        request: Request[object, object, State],
        ledger: NamedDependency[Ledger],
        settings: NamedDependency[Settings],
        data: JSONBody[CreateOrgBody | None] = None,
    ) -> Response[CreatedOrg]:
        ctx = admin_context_of(request)
        org = None
        if data is not None:
            if data.org and data.name and data.org != data.name:
                raise ValidationError("org", "give the org's id as `org` (or `name`), not two different ones")
            org = data.org or data.name
        org = org or "org-" + secrets.token_hex(6)
        command = ledger.create_org_command(ctx, org)

        def render(created: CreatedKey) -> StoredAnswer:
            return json_answer(HTTP_201_CREATED, CreatedOrg(org=org, key_id=created.key_id, api_key=created.api_key))

        return await run_command(request, ledger, command, "admin", render)
