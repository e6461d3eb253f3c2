"""Operator routes, behind KEYLEDGER_ADMIN_TOKEN (off when it is not set)."""

from __future__ import annotations

import secrets

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_201_CREATED, HTTP_202_ACCEPTED

from api.auth import admin_context_of, require_admin_token
from api.background import Rotation, RotationJob
from api.idempotent import json_answer, run_command
from api.routes.docs import problems
from api.schemas import CreatedOrg, CreateOrgBody, RotateMasterKeyBody
from api.settings import Settings
from ledger.commands import CreatedKey
from ledger.crypto import MasterKey
from ledger.errors import CryptoError, ValidationError
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

    @post(
        "/master-key/rotate",
        operation_id="RotateMasterKey",
        status_code=HTTP_202_ACCEPTED,
        responses=problems(401, 403, 409, 413, 422, 429),
        summary="Rewrap every data key under a new master key, in the background (admin token only)",
    )
    async def rotate_master_key(self, request: Request[object, object, State],
                                data: JSONBody[RotateMasterKeyBody]) -> Rotation:
        try:
            new_key = MasterKey.parse(data.new_master_key, "new_master_key")
        except CryptoError:
            raise ValidationError("new_master_key", "must be 32 bytes, as base64 or 64 hex characters") from None
        job: RotationJob = request.app.state.rotation
        if new_key.kek_id == job.ledger.keyring.current.kek_id:
            raise ValidationError("new_master_key", "is the current master key")
        return job.start(new_key)

    @get("/master-key/rotation", operation_id="MasterKeyRotation", responses=problems(401, 403, 429),
         summary="Progress of this server's master key rotation (admin token only)")
    async def rotation(self, request: Request[object, object, State]) -> Rotation:
        job: RotationJob = request.app.state.rotation
        return job.status
