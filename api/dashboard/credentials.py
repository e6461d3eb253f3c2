"""The Credentials page: API keys, SSH keys, tool and provider keys (the org's secrets), connected apps.

Every action goes through the same ledger commands as the API, under the key that signed in, so
each click is in the audit like an API call.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.params import FromPath

from api.dashboard.access import query_text, require_session, text_field, user_of
from api.dashboard.render import error_message, error_page, is_htmx, page, path_part, redirect, when
from api.dashboard.session import SignedIn
from ledger.errors import AlreadyExistsError, LedgerError, NotFoundError, PreconditionFailedError, ValidationError
from ledger.events import CATEGORIES, ROLES, SCOPES
from ledger.service import Ledger
from projections.reader import Projections
from projections.views import SecretMeta

PAGE_SIZE = 100
_SCAN = 500  # secrets read per query while searching
NOTICES = {
    "secret-created": "Secret created.",
    "secret-updated": "Secret updated: a new version holds the new value.",
    "secret-deleted": "Secret deleted. It can be restored while the org's recovery window lasts.",
    "key-revoked": "API key revoked. It stopped working at once, and so did its dashboard sessions.",
    "ssh-key-added": "SSH key added.",
    "ssh-key-removed": "SSH key removed.",
    "app-connected": "App connected: tools can ask keyledger for its token now.",
    "app-disconnected": "App disconnected: its tokens and client secret were destroyed.",
}
REVEAL_SECONDS = 30
MAX_VALUE_CHARS = 65_536
SSH_KEY_CHARS = 16_384


async def find_secrets(projections: Projections, org: str, search: str, scope: str | None, category: str | None,
                       after: str | None) -> tuple[list[SecretMeta], str | None]:
    """A page of live secrets whose name or description holds `search` (any case), and where the next
    page starts (None: this was the last)."""
    needle = search.casefold()
    found: list[SecretMeta] = []
    while True:
        batch = await projections.list_secrets(org, after=after, limit=_SCAN, scope=scope, category=category)
        for meta in batch:
            after = meta.name
            if needle in meta.name.casefold() or needle in meta.description.casefold():
                found.append(meta)
                if len(found) == PAGE_SIZE:
                    more = meta is not batch[-1] or len(batch) == _SCAN
                    return found, (meta.name if more else None)
        if len(batch) < _SCAN:
            return found, None


def _choice(value: str, allowed: tuple[str, ...]) -> str | None:
    return value if value in allowed else None


class CredentialsController(Controller):
    path = "/credentials"
    include_in_schema = False
    before_request = staticmethod(require_session)
    exception_handlers = {LedgerError: error_page, HTTPException: error_page}

    async def _page(self, request: Request[Any, Any, Any], user: SignedIn, *, status: int = 200,
                    **extra: Any) -> Response[Any]:
        projections: Projections = request.app.state.projections
        org = user.principal.org
        search = query_text(request, "q")
        scope = _choice(query_text(request, "scope"), SCOPES)
        category = _choice(query_text(request, "category"), CATEGORIES)
        after = (request.query_params.get("after") or "")[:256] or None  # a name: blanks count
        secrets, next_after = await find_secrets(projections, org, search, scope, category, after)
        context: dict[str, Any] = {
            "title": "Credentials", "section": "credentials", "search": search, "scope": scope or "",
            "category": category or "", "secrets": secrets, "next_after": next_after, "after": after,
            "scopes": SCOPES, "categories": CATEGORIES, "roles": ROLES, "when": when, "part": path_part,
        }
        if request.headers.get("hx-target") == "secret-results":
            return page(request, user, "_secret_results.html", status=status, **context, **extra)
        keys = [key for key in await projections.list_keys(org) if key.revoked_at is None]
        ssh_keys = await projections.list_ssh_keys(org)
        apps = await projections.list_apps(org)
        notice = NOTICES.get(query_text(request, "notice"))
        return page(request, user, "credentials.html", status=status, keys=keys, ssh_keys=ssh_keys, apps=apps,
                    notice=notice, form={}, **{**context, **extra})

    @get("/")
    async def credentials(self, request: Request[Any, Any, Any]) -> Response[Any]:
        return await self._page(request, user_of(request))

    # -- API keys ---------------------------------------------------------------------------------

    @post("/api-keys")
    async def create_api_key(self, request: Request[Any, Any, Any]) -> Response[Any]:
        user = user_of(request)
        form = await request.form()
        ledger: Ledger = request.app.state.ledger
        try:
            user.principal.require_admin()
            label = text_field(form, "label", max_chars=128, required=True)
            created = await ledger.create_api_key(user.principal.ctx, user.principal.org, label,
                                                  text_field(form, "role", max_chars=16) or "member",
                                                  text_field(form, "scope", max_chars=16) or "all")
        except LedgerError as exc:
            status, message = error_message(exc)
            return await self._page(request, user, status=status, key_error=message)
        return await self._page(request, user, status=201, created_key=created)

    @get("/api-keys/{key_id:str}/revoke")
    async def confirm_revoke(self, request: Request[Any, Any, Any], key_id: FromPath[str]) -> Response[Any]:
        user = user_of(request)
        user.principal.require_admin()
        key = await request.app.state.projections.get_key(user.principal.org, key_id)
        if key is None or key.revoked_at is not None:
            raise NotFoundError(f"API key {key_id!r} not found")
        own = key.key_id == user.principal.key_id
        return page(request, user, "confirm.html", title="Revoke API key", section="credentials",
                    question=f"Revoke the API key “{key.label}” ({key.key_id})?",
                    consequence=("Every client using it stops working at once, and so do dashboard sessions "
                                 "signed in with it." + (" That includes this session: you will be signed out."
                                                         if own else "")),
                    action=f"/credentials/api-keys/{path_part(key.key_id)}/revoke", button="Revoke key",
                    cancel="/credentials#api-keys")

    @post("/api-keys/{key_id:str}/revoke")
    async def revoke_api_key(self, request: Request[Any, Any, Any], key_id: FromPath[str]) -> Response[Any]:
        user = user_of(request)
        user.principal.require_admin()
        projections: Projections = request.app.state.projections
        key = await projections.get_key(user.principal.org, key_id)
        if key is None or key.revoked_at is not None:
            raise NotFoundError(f"API key {key_id!r} not found")
        await request.app.state.ledger.revoke_api_key(user.principal.ctx, user.principal.org, key_id)
        if key_id == user.principal.key_id:
            return redirect(request, None, "/?ended=1")
        return redirect(request, user, "/credentials?notice=key-revoked#api-keys")

    # -- SSH keys ---------------------------------------------------------------------------------

    @post("/ssh-keys")
    async def add_ssh_key(self, request: Request[Any, Any, Any]) -> Response[Any]:
        user = user_of(request)
        form = await request.form()
        ledger: Ledger = request.app.state.ledger
        try:
            public_key = text_field(form, "public_key", max_chars=SSH_KEY_CHARS, required=True, label="public key")
            label = text_field(form, "label", max_chars=128)
            await ledger.add_ssh_key(user.principal.ctx, user.principal.org, public_key, label or None)
        except LedgerError as exc:
            status, message = error_message(exc)
            return await self._page(request, user, status=status, ssh_error=message,
                                    ssh_form={"label": text_field(form, "label", max_chars=128)})
        return redirect(request, user, "/credentials?notice=ssh-key-added#ssh-keys")

    @get("/ssh-keys/{ssh_key_id:str}/remove")
    async def confirm_remove_ssh_key(self, request: Request[Any, Any, Any],
                                     ssh_key_id: FromPath[str]) -> Response[Any]:
        user = user_of(request)
        key = await request.app.state.projections.get_ssh_key(user.principal.org, ssh_key_id)
        if key is None:
            raise NotFoundError(f"SSH key {ssh_key_id!r} not found")
        return page(request, user, "confirm.html", title="Remove SSH key", section="credentials",
                    question=f"Remove the SSH key “{key.label}” ({key.fingerprint})?",
                    consequence="Sandboxes stop accepting it for new SSH connections.",
                    action=f"/credentials/ssh-keys/{path_part(ssh_key_id)}/remove", button="Remove key",
                    cancel="/credentials#ssh-keys")

    @post("/ssh-keys/{ssh_key_id:str}/remove")
    async def remove_ssh_key(self, request: Request[Any, Any, Any], ssh_key_id: FromPath[str]) -> Response[Any]:
        user = user_of(request)
        await request.app.state.ledger.remove_ssh_key(user.principal.ctx, user.principal.org, ssh_key_id)
        return redirect(request, user, "/credentials?notice=ssh-key-removed#ssh-keys")

    # -- tool and provider keys (secrets) ---------------------------------------------------------

    @post("/secrets")
    async def create_secret(self, request: Request[Any, Any, Any]) -> Response[Any]:
        user = user_of(request)
        form = await request.form()
        ledger: Ledger = request.app.state.ledger
        projections: Projections = request.app.state.projections
        kept = {field: text_field(form, field, max_chars=1024)
                for field in ("name", "scope", "category", "description")}
        try:
            name = text_field(form, "name", max_chars=256, required=True)
            value = _value_of(form)
            if await projections.get_secret(user.principal.org, name) is not None:
                raise AlreadyExistsError(f"a secret named {name!r} exists already: open it to give it a new value")
            await ledger.upsert_secret(user.principal.ctx, user.principal.org, name, value.encode(),
                                       scope=kept["scope"] or "all", category=kept["category"] or "custom",
                                       description=kept["description"])
        except LedgerError as exc:
            status, message = error_message(exc)
            return await self._page(request, user, status=status, secret_error=message,
                                    secret_form=kept)
        return redirect(request, user, f"/credentials/secrets/{path_part(name)}?notice=secret-created")

    async def _secret_page(self, request: Request[Any, Any, Any], user: SignedIn, name: str, *, status: int = 200,
                           **extra: Any) -> Response[Any]:
        projections: Projections = request.app.state.projections
        meta = await projections.get_secret(user.principal.org, name)
        if meta is None:
            raise NotFoundError(f"secret {name!r} not found")
        versions = await projections.versions(user.principal.org, name)
        notice = NOTICES.get(query_text(request, "notice"))
        return page(request, user, "secret.html", status=status, title=name, section="credentials", secret=meta,
                    versions=list(reversed(versions)), notice=notice, scopes=SCOPES, categories=CATEGORIES,
                    when=when, part=path_part, reveal_seconds=REVEAL_SECONDS, **extra)

    @get("/secrets/{name:str}")
    async def secret(self, request: Request[Any, Any, Any], name: FromPath[str]) -> Response[Any]:
        return await self._secret_page(request, user_of(request), name)

    @post("/secrets/{name:str}")
    async def update_secret(self, request: Request[Any, Any, Any], name: FromPath[str]) -> Response[Any]:
        user = user_of(request)
        form = await request.form()
        ledger: Ledger = request.app.state.ledger
        try:
            version_text = text_field(form, "version", max_chars=18)
            if not (version_text.isascii() and version_text.isdigit()):
                raise ValidationError("version", "is missing: reload the secret's page and try again")
            if_match = int(version_text)
            await ledger.upsert_secret(user.principal.ctx, user.principal.org, name, _value_of(form).encode(),
                                       scope=text_field(form, "scope", max_chars=16) or None,
                                       category=text_field(form, "category", max_chars=16) or None,
                                       description=text_field(form, "description", max_chars=1024),
                                       if_match=if_match)
        except PreconditionFailedError:
            return await self._secret_page(request, user, name, status=412, update_error=(
                "Someone changed this secret after you opened the page. Nothing was saved: look at the new "
                "version, then make your change again."))
        except LedgerError as exc:
            status, message = error_message(exc)
            return await self._secret_page(request, user, name, status=status, update_error=message)
        return redirect(request, user, f"/credentials/secrets/{path_part(name)}?notice=secret-updated")

    @post("/secrets/{name:str}/reveal")
    async def reveal_secret(self, request: Request[Any, Any, Any], name: FromPath[str]) -> Response[Any]:
        user = user_of(request)
        form = await request.form()
        ledger: Ledger = request.app.state.ledger
        revealed = error = None
        try:
            reason = text_field(form, "reason", max_chars=512)
            revealed = await ledger.reveal_secret(user.principal.ctx, user.principal.org, name, reason=reason)
            value = revealed.value.decode("utf-8", "replace")
        except LedgerError as exc:
            status, error = error_message(exc)
        context: dict[str, Any] = {"revealed": revealed, "reveal_error": error}
        if revealed is not None:
            context["value"] = value
        if is_htmx(request):  # a fragment in place; htmx swaps only 2xx answers, so errors answer 200 too
            return page(request, user, "_reveal.html", reveal_seconds=REVEAL_SECONDS, **context)
        return await self._secret_page(request, user, name, status=200 if error is None else status, **context)

    @get("/secrets/{name:str}/delete")
    async def confirm_delete(self, request: Request[Any, Any, Any], name: FromPath[str]) -> Response[Any]:
        user = user_of(request)
        if await request.app.state.projections.get_secret(user.principal.org, name) is None:
            raise NotFoundError(f"secret {name!r} not found")
        return page(request, user, "confirm.html", title="Delete secret", section="credentials",
                    question=f"Delete the secret “{name}”?",
                    consequence=("Reveals stop at once. The secret can be restored through the API or CLI while "
                                 "the org's recovery window lasts; after that its values are destroyed."),
                    action=f"/credentials/secrets/{path_part(name)}/delete", button="Delete secret",
                    cancel=f"/credentials/secrets/{path_part(name)}")

    @post("/secrets/{name:str}/delete")
    async def delete_secret(self, request: Request[Any, Any, Any], name: FromPath[str]) -> Response[Any]:
        user = user_of(request)
        await request.app.state.ledger.delete_secret(user.principal.ctx, user.principal.org, name)
        return redirect(request, user, "/credentials?notice=secret-deleted#secrets")


def _value_of(form: Any) -> str:
    """The value exactly as typed (blanks are part of a value); never echoed back to the page."""
    raw = form.get("value")
    value = raw if isinstance(raw, str) else ""
    if not value:
        raise ValidationError("value", "is required")
    if len(value) > MAX_VALUE_CHARS:
        raise ValidationError("value", f"must be at most {MAX_VALUE_CHARS} characters")
    return value

