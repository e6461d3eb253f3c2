"""The People page: the org's people (who signed in through its identity provider) and its single sign-on.

Everyone sees the list; admins change roles and remove people (after a confirmation), through the same
ledger commands as `/v1/members`, so each is in the audit like the API call. A role change or a removal
takes effect at the person's next request in every process (the session check reads the `members`
projection). The SSO settings are shown read-only: they are set through the API (`PUT /v1/sso`).
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.params import FromPath

from api.dashboard.access import query_text, require_session, text_field, user_of
from api.dashboard.render import error_page, page, path_part, redirect, when
from api.dashboard.sso import redirect_uri
from ledger.errors import LedgerError, NotFoundError, ValidationError
from ledger.events import ROLES
from ledger.service import Ledger
from projections.reader import Projections
from projections.views import PersonRow

NOTICES = {
    "role-changed": "Role changed. It applies from the person's next click.",
    "role-unchanged": "The person has that role already: nothing was changed.",
    "person-removed": "Person removed. Their sessions stopped at once, and they cannot sign in again.",
}


class PeopleController(Controller):
    path = "/people"
    include_in_schema = False
    before_request = staticmethod(require_session)
    exception_handlers = {LedgerError: error_page, HTTPException: error_page}

    async def _person(self, request: Request[Any, Any, Any], member_id: str) -> PersonRow:
        user = user_of(request)
        projections: Projections = request.app.state.projections
        person = await projections.get_person(user.principal.org, member_id)
        if person is None or person.removed_at is not None:
            raise NotFoundError("no such person in the org")
        return person

    @get("/")
    async def people(self, request: Request[Any, Any, Any]) -> Response[Any]:
        user = user_of(request)
        projections: Projections = request.app.state.projections
        org = user.principal.org
        people = [p for p in await projections.list_people(org) if p.removed_at is None]
        return page(request, user, "people.html", title="People", section="people", people=people,
                    sso=await projections.get_sso(org), roles=ROLES, when=when, part=path_part,
                    notice=NOTICES.get(query_text(request, "notice")),
                    callback_url=redirect_uri(request, "/sso/callback"), sign_in_url=redirect_uri(request, "/"))

    @post("/{member_id:str}/role")
    async def change_role(self, request: Request[Any, Any, Any], member_id: FromPath[str]) -> Response[Any]:
        user = user_of(request)
        user.principal.require_admin()
        form = await request.form()
        role = text_field(form, "role", max_chars=16)
        if role not in ROLES:
            raise ValidationError("role", f"must be one of {', '.join(ROLES)}")
        await self._person(request, member_id)
        ledger: Ledger = request.app.state.ledger
        changed = await ledger.change_person_role(user.principal.ctx, user.principal.org, member_id, role)
        return redirect(request, user, f"/people?notice={'role-changed' if changed else 'role-unchanged'}")

    @get("/{member_id:str}/remove")
    async def confirm_remove(self, request: Request[Any, Any, Any], member_id: FromPath[str]) -> Response[Any]:
        user = user_of(request)
        user.principal.require_admin()
        person = await self._person(request, member_id)
        own = person.member_id == user.principal.key_id
        return page(request, user, "confirm.html", title="Remove person", section="people",
                    question=f"Remove {person.email} from {user.principal.org}?",
                    consequence=("Their dashboard sessions stop at once, and they cannot sign in again (their past "
                                 "actions stay in the audit)." + (" That includes you: you will be signed out."
                                                                  if own else "")),
                    action=f"/people/{path_part(person.member_id)}/remove", button="Remove person",
                    cancel="/people")

    @post("/{member_id:str}/remove")
    async def remove(self, request: Request[Any, Any, Any], member_id: FromPath[str]) -> Response[Any]:
        user = user_of(request)
        user.principal.require_admin()
        await self._person(request, member_id)
        ledger: Ledger = request.app.state.ledger
        await ledger.remove_person(user.principal.ctx, user.principal.org, member_id)
        if member_id == user.principal.key_id:
            return redirect(request, None, "/?ended=1")
        return redirect(request, user, "/people?notice=person-removed")
