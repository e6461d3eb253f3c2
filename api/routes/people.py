"""The org's people (signed in through its identity provider) and the provider's settings.

People join by signing in to the dashboard (`api/dashboard/sso.py`); here admins list them, change their
roles and remove them (their sessions end at once), and set the org's OpenID Connect provider.
"""

from __future__ import annotations

from litestar import Controller, delete, get, patch, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_204_NO_CONTENT

from api.auth import Principal, require_api_key
from api.routes.docs import COMMON, problems
from api.schemas import ChangeRoleBody, PersonInfo, PersonList, SsoBody, SsoInfo, rfc3339
from ledger.errors import NotFoundError
from ledger.service import Ledger
from projections.reader import Projections
from projections.views import PersonRow, SsoRow


def person_info(row: PersonRow) -> PersonInfo:
    return PersonInfo(
        member_id=row.member_id, email=row.email, subject=row.subject, issuer=row.issuer,
        role=row.role,  # type: ignore[arg-type]
        joined_at=rfc3339(row.joined_at),
        last_sign_in_at=rfc3339(row.last_sign_in_at) if row.last_sign_in_at else None,
    )


def sso_info(row: SsoRow) -> SsoInfo:
    return SsoInfo(issuer=row.issuer, client_id=row.client_id, client_secret_name=row.client_secret_name,
                   allowed_domains=row.allowed_domains, changed_at=rfc3339(row.changed_at))


class PeopleController(Controller):
    path = "/v1/members"
    tags = ["people"]
    before_request = staticmethod(require_api_key)

    @get("/", operation_id="ListMembers", responses=problems(*COMMON), summary="List the org's people")
    async def list_members(
        self, principal: NamedDependency[Principal], projections: NamedDependency[Projections]
    ) -> PersonList:
        rows = await projections.list_people(principal.org)
        return PersonList(members=[person_info(r) for r in rows if r.removed_at is None])

    @patch(
        "/{member_id:str}", operation_id="ChangeMemberRole", responses=problems(*COMMON, 403, 404),
        summary="Change a person's role (admin only)",
    )
    async def change_role(
        self,
        member_id: FromPath[str],
        data: JSONBody[ChangeRoleBody],
        principal: NamedDependency[Principal],
        ledger: NamedDependency[Ledger],
        projections: NamedDependency[Projections],
    ) -> PersonInfo:
        await ledger.change_person_role(principal.ctx, principal.org, member_id, data.role)
        row = await projections.get_person(principal.org, member_id)
        if row is None or row.removed_at is not None:
            raise NotFoundError(f"member {member_id!r} not found")
        return person_info(row)

    @delete(
        "/{member_id:str}", operation_id="RemoveMember", status_code=HTTP_204_NO_CONTENT,
        responses=problems(*COMMON, 403, 404),
        summary="Remove a person (admin only): their dashboard sessions end at once, and they cannot sign in again",
    )
    async def remove_member(
        self, member_id: FromPath[str], principal: NamedDependency[Principal], ledger: NamedDependency[Ledger]
    ) -> None:
        await ledger.remove_person(principal.ctx, principal.org, member_id)


class SsoController(Controller):
    path = "/v1/sso"
    tags = ["people"]
    before_request = staticmethod(require_api_key)

    @get("/", operation_id="GetSso", responses=problems(*COMMON, 404),
         summary="The org's OpenID Connect provider")
    async def get_sso(
        self, principal: NamedDependency[Principal], projections: NamedDependency[Projections]
    ) -> SsoInfo:
        row = await projections.get_sso(principal.org)
        if row is None:
            raise NotFoundError("the org has no single sign-on")
        return sso_info(row)

    @put(
        "/", operation_id="SetSso", responses=problems(*COMMON, 403, 404),
        summary="Set the org's OpenID Connect provider (admin only); the client secret is a stored secret, named",
    )
    async def set_sso(
        self,
        data: JSONBody[SsoBody],
        principal: NamedDependency[Principal],
        ledger: NamedDependency[Ledger],
        projections: NamedDependency[Projections],
    ) -> SsoInfo:
        await ledger.configure_sso(principal.ctx, principal.org, issuer=data.issuer, client_id=data.client_id,
                                   client_secret_name=data.client_secret_name, allowed_domains=data.allowed_domains)
        row = await projections.get_sso(principal.org)
        assert row is not None  # the writer answered after the projection committed
        return sso_info(row)

    @delete("/", operation_id="RemoveSso", status_code=HTTP_204_NO_CONTENT, responses=problems(*COMMON, 403, 404),
            summary="Stop single sign-on for the org (admin only); people keep their membership")
    async def remove_sso(self, principal: NamedDependency[Principal], ledger: NamedDependency[Ledger]) -> None:
        await ledger.remove_sso(principal.ctx, principal.org)
