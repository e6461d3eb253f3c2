"""The caller's org: its settings (the recovery window of deleted secrets)."""

from __future__ import annotations

from litestar import Controller, Request, Response, get, put
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from api.auth import Principal, require_api_key
from api.idempotent import json_answer, run_command
from api.routes.docs import COMMON, problems
from api.schemas import OrgSettingsBody, OrgSettingsInfo
from ledger.idempotency import StoredAnswer
from ledger.lifecycle import OrgSettings
from ledger.service import Ledger


class OrgController(Controller):
    path = "/v1/org"
    tags = ["org"]
    before_request = staticmethod(require_api_key)  # Litestar calls it unbound

    @get("/settings", operation_id="GetOrgSettings", responses=problems(*COMMON),
         summary="The org's settings (any key of the org)")
    async def get_settings(
        self, principal: NamedDependency[Principal], ledger: NamedDependency[Ledger]
    ) -> OrgSettingsInfo:
        found = await ledger.org_settings(principal.ctx, principal.org)
        return OrgSettingsInfo(org=principal.org, recovery_window_days=found.recovery_window_days)

    @put("/settings", operation_id="PutOrgSettings", status_code=HTTP_200_OK, responses=problems(*COMMON, 403),
         summary="Change the org's settings (admin keys only; recorded as org.settings_changed)")
    async def put_settings(
        self,
        request: Request[object, object, State],
        principal: NamedDependency[Principal],
        ledger: NamedDependency[Ledger],
        data: JSONBody[OrgSettingsBody],
    ) -> Response[OrgSettingsInfo]:
        command = ledger.org_settings_command(principal.ctx, principal.org, data.recovery_window_days)

        def render(found: OrgSettings) -> StoredAnswer:
            return json_answer(HTTP_200_OK, OrgSettingsInfo(org=principal.org,
                                                            recovery_window_days=found.recovery_window_days))

        return await run_command(request, ledger, command, f"{principal.org}/{principal.key_id}", render)
