"""Secrets: list and get metadata from the projections; upsert, delete and reveal through the ledger."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated
from urllib.parse import quote

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, HeaderParameter, JSONBody, Parameter, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT
from msgspec import UNSET, UnsetType

from api.auth import Principal, principal_of, require_api_key
from api.idempotent import IDEMPOTENCY_HEADER, json_answer, run_command, to_response
from api.params import parse_as_of, parse_time
from api.routes.docs import COMMON, problems
from api.schemas import (
    RevealBody,
    RevealedSecret,
    RollbackBody,
    SecretList,
    SecretMetadata,
    SecretVersion,
    SecretVersions,
    UpsertSecretBody,
    rfc3339,
)
from ledger.commands import IsReference, Revealed, UpsertOutcome
from ledger.errors import NotFoundError, PreconditionFailedError, ValidationError
from ledger.events import Category, Scope
from ledger.idempotency import StoredAnswer
from ledger.service import Ledger
from projections.point_in_time import live, secrets_as_of
from projections.reader import Projections
from projections.views import SecretMeta

AsOfParam = Annotated[
    str | None,
    Parameter(max_length=64, description="A past point: a ledger seq, or an RFC 3339 time (2026-11-28T18:00:00Z)"),
]


def metadata_of(meta: SecretMeta) -> SecretMetadata:
    return SecretMetadata(
        expires_at=UNSET if meta.expires_at is None else rfc3339(meta.expires_at),
        external=UNSET if meta.external is None else meta.external,
        name=meta.name,
        scope=meta.scope,  # type: ignore[arg-type]
        category=meta.category,  # type: ignore[arg-type]
        description=meta.description,
        version=meta.version,
        created_at=rfc3339(meta.created_at),
        updated_at=rfc3339(meta.updated_at),
        created_by=meta.created_by,
        updated_by=meta.updated_by,
    )


def etag(version: int) -> str:
    return f'"{version}"'


def parse_if_match(header: str | None) -> int | str | None:
    """None when absent, '*' for any, else the version; anything else can never match."""
    if header is None:
        return None
    text = header.strip()
    if text == "*":
        return "*"
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    if text.isascii() and text.isdigit() and len(text) < 19:  # "²".isdigit() is True, int("²") fails
        return int(text)
    return -1


def encode_cursor(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        name = raw.decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ValidationError("cursor", "is not a cursor returned by this API") from None
    if not name or encode_cursor(name) != cursor:
        raise ValidationError("cursor", "is not a cursor returned by this API")
    return name


async def _expected_version(
    projections: Projections, principal: Principal, name: str, if_match: str | None
) -> int | None:
    wanted = parse_if_match(if_match)
    if wanted is None:
        return None
    current = await projections.get_secret(principal.org, name)
    if wanted == "*":
        if current is None:
            raise PreconditionFailedError(-1, None)
        return current.version
    assert isinstance(wanted, int)
    return wanted


def _services(request: Request[object, object, State]) -> tuple[Ledger, Principal]:
    """The ledger and the authenticated caller, for the hottest routes (get, upsert, reveal).

    They skip dependency injection: measured, it is a fifth of a get's CPU; the other routes keep it.
    The caller was authenticated by the controller's `before_request` hook.
    """
    ledger: Ledger = request.app.state.ledger
    return ledger, principal_of(request)


class SecretsController(Controller):
    path = "/v1/secrets"
    tags = ["secrets"]
    before_request = staticmethod(require_api_key)  # Litestar calls it unbound

    @get("/", operation_id="ListSecrets", responses=problems(*COMMON), summary="List secrets (metadata only)")
    async def list_secrets(
        self,
        principal: NamedDependency[Principal],
        projections: NamedDependency[Projections],
        ledger: NamedDependency[Ledger],
        limit: Annotated[int, QueryParameter(ge=1, le=1000, description="Page size")] = 100,
        cursor: Annotated[
            str | None, QueryParameter(max_length=1400, description="next_cursor of the previous page")
        ] = None,
        # `scope` is a reserved parameter name in Litestar (the ASGI scope), hence the alias.
        scope_filter: Annotated[Scope | None, QueryParameter(name="scope", description="Only this scope")] = None,
        category: Annotated[Category | None, QueryParameter(description="Only this category")] = None,
        as_of: AsOfParam = None,
        deleted: Annotated[bool, QueryParameter(
            description="List deleted secrets that can still be restored, with when each will be destroyed")] = False,
    ) -> SecretList:
        after = decode_cursor(cursor) if cursor else None
        point = parse_as_of(as_of)
        if deleted:
            if point is not None or scope_filter is not None or category is not None:
                raise ValidationError("deleted", "cannot be combined with as_of, scope or category")
            found = await projections.deleted_secrets(principal.org, after=after, limit=limit + 1)
            page = found[:limit]
            return SecretList(
                secrets=[deleted_metadata_of(row) for row in page],
                next_cursor=encode_cursor(page[-1].name) if len(found) > limit and page else None,
            )
        if point is not None:
            state = await secrets_as_of(ledger.recorder, principal.org, point.includes)
            rows = [
                m
                for m in live(state)
                if (after is None or m.name.encode() > after.encode())
                and (scope_filter is None or m.scope == scope_filter)
                and (category is None or m.category == category)
            ][: limit + 1]
        else:
            rows = await projections.list_secrets(
                principal.org, after=after, limit=limit + 1, scope=scope_filter, category=category
            )
        more = len(rows) > limit
        page = rows[:limit]
        return SecretList(
            secrets=[metadata_of(row) for row in page],
            next_cursor=encode_cursor(page[-1].name) if more and page else None,
        )

    @post(
        "/",
        operation_id="UpsertSecret",
        status_code=HTTP_200_OK,
        responses={
            201: ResponseSpec(data_container=SecretMetadata, description="Created"),
            **problems(*COMMON, 403, 412),
        },
        summary="Create a secret, or give it a new value (200 when updated, 201 when created)",
    )
    async def upsert_secret(
        self,
        request: Request[object, object, State],
        data: JSONBody[UpsertSecretBody],
        if_match: Annotated[str | None, HeaderParameter(name="If-Match", required=False)] = None,
    ) -> Response[SecretMetadata]:
        ledger, principal = _services(request)
        projections: Projections = request.app.state.projections
        expected = await _expected_version(projections, principal, data.name, if_match)
        command = ledger.upsert_secret_command(
            principal.ctx,
            principal.org,
            data.name,
            data.value.encode(),
            reference=data.reference,
            scope=data.scope,
            category=data.category,
            description=data.description,
            if_match=expected,
            expires_at=(data.expires_at if isinstance(data.expires_at, UnsetType)
                        else parse_time(data.expires_at, "expires_at")),
        )

        def render(outcome: UpsertOutcome) -> StoredAnswer:
            event = outcome.event
            headers = {"ETag": etag(event.version)}
            if outcome.created:
                headers["Location"] = f"/v1/secrets/{quote(event.name, safe='')}"
            status = HTTP_201_CREATED if outcome.created else HTTP_200_OK
            return json_answer(status, _metadata_from_outcome(outcome), headers)

        return await run_command(request, ledger, command, f"{principal.org}/{principal.key_id}", render)

    @get("/{name:str}", operation_id="GetSecret", responses=problems(*COMMON, 404), summary="Get a secret's metadata")
    async def get_secret(
        self,
        request: Request[object, object, State],
        name: FromPath[str],
        as_of: AsOfParam = None,
    ) -> Response[SecretMetadata]:
        ledger, principal = _services(request)
        projections: Projections = request.app.state.projections
        point = parse_as_of(as_of)
        if point is not None:
            found = (await secrets_as_of(ledger.recorder, principal.org, point.includes)).get(name)
            if found is None or found.deleted:
                raise NotFoundError(f"secret {name!r} not found")
            return Response(metadata_of(found))
        meta = await projections.get_secret(principal.org, name)
        if meta is None:
            raise NotFoundError(f"secret {name!r} not found")
        return Response(metadata_of(meta), headers={"ETag": etag(meta.version)})

    @get("/{name:str}/versions", operation_id="ListSecretVersions", responses=problems(*COMMON, 404),
         summary="A secret's versions: who made each, when, how, and whether its value still exists")
    async def list_versions(
        self, name: FromPath[str], principal: NamedDependency[Principal], projections: NamedDependency[Projections]
    ) -> SecretVersions:
        # Like get: a deleted (or foreign, or never made) name is a 404.
        if await projections.get_secret(principal.org, name) is None:
            raise NotFoundError(f"secret {name!r} not found")
        rows = await projections.versions(principal.org, name)
        return SecretVersions(name=name, versions=[
            SecretVersion(version=r.version, created_at=rfc3339(r.made_at), created_by=r.made_by, how=r.how,
                          value_exists=r.destroyed_at is None, from_version=r.from_version,
                          destroyed_at=None if r.destroyed_at is None else rfc3339(r.destroyed_at))
            for r in rows
        ])

    @delete(
        "/{name:str}",
        operation_id="DeleteSecret",
        status_code=HTTP_204_NO_CONTENT,
        responses=problems(*COMMON, 403, 404, 412),
        summary="Delete a secret (restorable for the org's recovery window; purge=true destroys it now)",
    )
    async def delete_secret(
        self,
        name: FromPath[str],
        principal: NamedDependency[Principal],
        ledger: NamedDependency[Ledger],
        projections: NamedDependency[Projections],
        if_match: Annotated[str | None, HeaderParameter(name="If-Match", required=False)] = None,
        purge: Annotated[bool, QueryParameter(
            description="Admin keys only: destroy every version's value now (also of a deleted secret)")] = False,
    ) -> None:
        if purge:
            principal.require_admin()  # a refusal of the caller comes before any precondition (RFC 9110 13.2.1)
        expected = await _expected_version(projections, principal, name, if_match)
        await ledger.delete_secret(principal.ctx, principal.org, name, if_match=expected, purge=purge)

    @post(
        "/{name:str}/rollback",
        operation_id="RollbackSecret",
        status_code=HTTP_200_OK,
        responses=problems(*COMMON, 404, 412),
        summary="Make a new version holding an earlier version's value (the value is never sent)",
    )
    async def rollback_secret(
        self,
        request: Request[object, object, State],
        name: FromPath[str],
        data: JSONBody[RollbackBody],
        if_match: Annotated[str | None, HeaderParameter(name="If-Match", required=False)] = None,
    ) -> Response[SecretMetadata]:
        ledger, principal = _services(request)
        expected = await _expected_version(request.app.state.projections, principal, name, if_match)
        command = ledger.rollback_secret_command(principal.ctx, principal.org, name, data.version, if_match=expected)
        return await run_command(request, ledger, command, f"{principal.org}/{principal.key_id}", _render_version)

    @post(
        "/{name:str}/restore",
        operation_id="RestoreSecret",
        status_code=HTTP_200_OK,
        responses=problems(*COMMON, 404, 409),
        summary="Bring a deleted secret back as it was (while its recovery window lasts)",
    )
    async def restore_secret(
        self, request: Request[object, object, State], name: FromPath[str]
    ) -> Response[SecretMetadata]:
        ledger, principal = _services(request)
        command = ledger.restore_secret_command(principal.ctx, principal.org, name)
        return await run_command(request, ledger, command, f"{principal.org}/{principal.key_id}", _render_version)

    @post(
        "/{name:str}/reveal",
        operation_id="RevealSecret",
        status_code=HTTP_200_OK,
        responses=problems(*COMMON, 403, 404, 409, 410, 502),
        summary="Reveal a secret's value (recorded before it is sent; 410 once it expired; a pool answers one "
                "active member, 409 when none is; a reference is fetched, 502 when its manager fails)",
    )
    async def reveal_secret(
        self,
        request: Request[object, object, State],
        name: FromPath[str],
        data: JSONBody[RevealBody | None] = None,
    ) -> Response[RevealedSecret]:
        ledger, principal = _services(request)
        reason = data.reason if data is not None else ""
        version = data.version if data is not None else None
        command = ledger.reveal_secret_command(principal.ctx, principal.org, name, reason=reason, version=version)
        if IDEMPOTENCY_HEADER in request.headers:
            try:
                stored = msgspec.structs.replace(command, refuse_external=True)
                return await run_command(request, ledger, stored, f"{principal.org}/{principal.key_id}",
                                         _render_revealed)
            except IsReference:
                pass  # the version asked for is a reference: fetched, never stored (a retry fetches again)
        revealed = await ledger.resolve(principal.ctx, principal.org, await ledger.submit(command))
        return to_response(_render_revealed(revealed))


def _render_revealed(revealed: Revealed) -> StoredAnswer:
    body = RevealedSecret(name=revealed.name, value=revealed.value.decode(), version=revealed.version,
                          member=UNSET if revealed.member is None else revealed.member,
                          external=UNSET if revealed.external is None else revealed.external)
    return json_answer(HTTP_200_OK, body, {"Cache-Control": "no-store", "Pragma": "no-cache"})


def deleted_metadata_of(meta: SecretMeta) -> SecretMetadata:
    shown = metadata_of(meta)
    shown.deleted_at = rfc3339(meta.deleted_at or 0)
    shown.destroy_at = None if meta.destroy_at is None else rfc3339(meta.destroy_at)
    return shown


def _render_version(outcome: UpsertOutcome) -> StoredAnswer:
    """The answer to a rollback or restore: the new current version's metadata."""
    return json_answer(HTTP_200_OK, _metadata_from_outcome(outcome), {"ETag": etag(outcome.event.version)})


def _metadata_from_outcome(outcome: UpsertOutcome) -> SecretMetadata:
    """The answer to an upsert, from the decided event: the same fields the projection will hold."""
    event = outcome.event
    return SecretMetadata(
        name=event.name,
        scope=event.scope,
        category=event.category,
        description=event.description,
        version=event.version,
        created_at=rfc3339(outcome.created_at),
        updated_at=rfc3339(event.at),
        created_by=outcome.created_by,
        updated_by=event.actor.key_id,
        expires_at=UNSET if isinstance(event.expires_at, UnsetType) else rfc3339(event.expires_at),
        external=event.external,
    )
