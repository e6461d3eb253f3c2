"""Who may reveal a secret and how its value changes: reveal policies, automatic rotation and key pools.

Every PUT and POST goes through `run_command` (an `Idempotency-Key` answers a retry with the first
answer), except `POST .../rotate`, which may call a webhook between its two commits; DELETEs are
idempotent by themselves, as `DELETE /v1/secrets/{name}` is. No answer here carries a
value: a pool member's value goes in (PUT) and only ever comes out of a reveal.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from api.auth import Principal, principal_of, require_api_key
from api.idempotent import json_answer, run_command, to_response
from api.rotation_runner import rotate_now
from api.routes.docs import COMMON, problems
from api.routes.secrets import _metadata_from_outcome, etag
from api.schemas import SecretMetadata, rfc3339
from ledger.commands import UpsertOutcome
from ledger.errors import NotFoundError
from ledger.events import MemberState, Role, Selection
from ledger.generator import GeneratorSpec, Rotator, WebhookSpec
from ledger.idempotency import StoredAnswer
from ledger.model import Member, Policy, SecretState
from ledger.policy import ReadPolicy
from ledger.pools import MemberOutcome, ReadPool
from ledger.rotation import ReadRotation, RotationPolicy
from ledger.service import Ledger
from projections.reader import Projections

# -- wire shapes -------------------------------------------------------------------------------------

PolicyEntry = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
MemberName = Annotated[str, msgspec.Meta(min_length=1, max_length=128, description="1-128 characters, no '/'")]


class PolicyBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A key matching any entry may reveal the secret (its scope permitting); all empty: no restriction."""

    key_ids: Annotated[list[PolicyEntry], msgspec.Meta(max_length=100)] = []
    labels: Annotated[list[PolicyEntry], msgspec.Meta(max_length=100, description="`*` globs on key labels")] = []
    roles: Annotated[list[Role], msgspec.Meta(max_length=100)] = []


class PolicyInfo(msgspec.Struct, kw_only=True):
    key_ids: list[str]
    labels: list[str]
    roles: list[str]
    restricted: bool  # False when every list is empty: any key whose scope covers the secret may reveal it


def policy_info(policy: Policy) -> PolicyInfo:
    return PolicyInfo(key_ids=list(policy.key_ids), labels=list(policy.labels), roles=list(policy.roles),
                      restricted=policy.restricts)


class GeneratorRotator(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="kind",
                       tag="generator"):
    """A random token made by the server: `prefix`, then `length` characters drawn from `alphabet`."""

    length: Annotated[int, msgspec.Meta(ge=16, le=4096)] = 40
    alphabet: Annotated[str, msgspec.Meta(
        max_length=200,
        description="alphanumeric, hex, base64url, numeric, ascii-printable, or 'chars:' and the characters",
    )] = "alphanumeric"
    prefix: Annotated[str, msgspec.Meta(max_length=64)] = ""


class WebhookRotator(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="kind", tag="webhook"):
    """An http(s) endpoint POSTed {"org", "name", "request_id"} that answers {"value": "..."}."""

    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]


class RotationBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    interval_seconds: Annotated[int, msgspec.Meta(ge=60, le=10 * 366 * 86_400)]
    rotator: GeneratorRotator | WebhookRotator


class RotationInfo(msgspec.Struct, kw_only=True):
    interval_seconds: int
    rotator: GeneratorRotator | WebhookRotator
    next_due_at: str
    failures: int  # failed attempts since the last new value
    in_flight: bool  # a webhook attempt is running


def rotator_spec(body: GeneratorRotator | WebhookRotator) -> Rotator:
    if isinstance(body, GeneratorRotator):
        return GeneratorSpec(length=body.length, alphabet=body.alphabet, prefix=body.prefix)
    return WebhookSpec(url=body.url)


def rotator_out(spec: Rotator) -> GeneratorRotator | WebhookRotator:
    if isinstance(spec, GeneratorSpec):
        return GeneratorRotator(length=spec.length, alphabet=spec.alphabet, prefix=spec.prefix)
    return WebhookRotator(url=spec.url)


def rotation_info(policy: RotationPolicy) -> RotationInfo:
    return RotationInfo(interval_seconds=policy.interval_seconds, rotator=rotator_out(policy.rotator),
                        next_due_at=rfc3339(policy.next_due_at), failures=policy.failures,
                        in_flight=policy.in_flight)


class MemberBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    value: Annotated[str, msgspec.Meta(description="At most 65,536 bytes of UTF-8")]
    label: Annotated[str, msgspec.Meta(max_length=200)] | None = None  # omitted: kept (new members: "")

    def __repr__(self) -> str:
        return f"MemberBody(label={self.label!r})"


class MemberStateBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=1024)] = ""


class MemberInfo(msgspec.Struct, kw_only=True):
    member: str
    label: str
    state: MemberState
    member_version: int
    added_at: str
    last_revealed_at: str | None
    reveals: int


def member_info(member: Member) -> MemberInfo:
    return MemberInfo(member=member.name, label=member.label, state=member.state,
                      member_version=member.member_version, added_at=rfc3339(member.added_at),
                      last_revealed_at=rfc3339(member.last_revealed_at) if member.last_revealed_at else None,
                      reveals=member.reveals)


class PoolInfo(msgspec.Struct, kw_only=True):
    selection: Selection
    members: list[MemberInfo]  # in the order they were added; never a value


class PoolBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    selection: Selection


class PoolSelection(msgspec.Struct, kw_only=True):
    selection: Selection


# -- documentation -----------------------------------------------------------------------------------

POLICIES, ROTATION, POOLS = ["policies"], ["rotation"], ["pools"]


# -- the routes --------------------------------------------------------------------------------------


def _caller(request: Request[object, object, State]) -> tuple[Ledger, Principal, str]:
    """The ledger, the caller, and the caller's idempotency scope."""
    principal = principal_of(request)
    ledger: Ledger = request.app.state.ledger
    return ledger, principal, f"{principal.org}/{principal.key_id}"


class SecretAccessController(Controller):
    path = "/v1/secrets"
    before_request = staticmethod(require_api_key)  # Litestar calls it unbound

    # -- reveal policy -------------------------------------------------------------------------------

    @get("/{name:str}/policy", operation_id="GetPolicy", tags=POLICIES, responses=problems(*COMMON, 404),
         summary="The secret's reveal policy: which keys (by id, label glob or role) may reveal it")
    async def get_policy(
        self, name: FromPath[str], principal: NamedDependency[Principal], ledger: NamedDependency[Ledger]
    ) -> PolicyInfo:
        policy = await ledger.submit(ReadPolicy(org=principal.org, ctx=principal.ctx, name=name))
        return policy_info(policy)

    @put("/{name:str}/policy", operation_id="PutPolicy", tags=POLICIES, status_code=HTTP_200_OK,
         responses=problems(*COMMON, 403, 404),
         summary="Replace the secret's reveal policy (admin keys only; all lists empty: no restriction)")
    async def put_policy(
        self, request: Request[object, object, State], name: FromPath[str], data: JSONBody[PolicyBody]
    ) -> Response[PolicyInfo]:
        ledger, principal, scope = _caller(request)
        principal.require_admin()
        command = ledger.set_policy_command(principal.ctx, principal.org, name, key_ids=list(data.key_ids),
                                            labels=list(data.labels), roles=list(data.roles))

        def render(policy: Policy) -> StoredAnswer:
            return json_answer(HTTP_200_OK, policy_info(policy))

        return await run_command(request, ledger, command, scope, render)

    # -- rotation --------------------------------------------------------------------------------------

    @get("/{name:str}/rotation", operation_id="GetRotation", tags=ROTATION, responses=problems(*COMMON, 404),
         summary="The secret's rotation policy and schedule (404 when it has none)")
    async def get_rotation(
        self, name: FromPath[str], principal: NamedDependency[Principal], ledger: NamedDependency[Ledger]
    ) -> RotationInfo:
        policy = await ledger.submit(ReadRotation(org=principal.org, ctx=principal.ctx, name=name))
        if policy is None:
            raise NotFoundError(f"secret {name!r} has no rotation policy")
        return rotation_info(policy)

    @put("/{name:str}/rotation", operation_id="PutRotation", tags=ROTATION, status_code=HTTP_200_OK,
         responses=problems(*COMMON, 403, 404, 409),
         summary="Set the secret's rotation policy; the first rotation is due one interval from now")
    async def put_rotation(
        self, request: Request[object, object, State], name: FromPath[str], data: JSONBody[RotationBody]
    ) -> Response[RotationInfo]:
        ledger, principal, scope = _caller(request)
        command = ledger.configure_rotation_command(principal.ctx, principal.org, name,
                                                    interval_seconds=data.interval_seconds,
                                                    rotator=rotator_spec(data.rotator))

        def render(policy: RotationPolicy | None) -> StoredAnswer:
            assert policy is not None  # a rotator was given
            return json_answer(HTTP_200_OK, rotation_info(policy))

        return await run_command(request, ledger, command, scope, render)

    @delete("/{name:str}/rotation", operation_id="DeleteRotation", tags=ROTATION, status_code=HTTP_204_NO_CONTENT,
            responses=problems(*COMMON, 403, 404), summary="Remove the secret's rotation policy (admin keys)")
    async def delete_rotation(
        self, name: FromPath[str], principal: NamedDependency[Principal], ledger: NamedDependency[Ledger]
    ) -> None:
        # A delete is idempotent by itself (like DELETE /v1/secrets/{name}): no Idempotency-Key handling.
        await ledger.submit(ledger.configure_rotation_command(principal.ctx, principal.org, name, rotator=None))

    @post("/{name:str}/rotate", operation_id="RotateSecret", tags=ROTATION, status_code=HTTP_200_OK,
          responses=problems(*COMMON, 404, 409, 502),
          summary="Rotate the secret now with its rotator (409 without a policy or while an attempt runs)")
    async def rotate(self, request: Request[object, object, State], name: FromPath[str]) -> Response[SecretMetadata]:
        ledger, principal, _ = _caller(request)
        state = request.app.state
        rotated = await rotate_now(ledger, state.http, state.rotation_settings, principal.ctx, principal.org, name)
        projections: Projections = state.projections
        # Creation is unchanged by a rotation: the projection's, read after the commit (read-your-writes).
        meta = await projections.get_secret(principal.org, name)
        outcome = UpsertOutcome(created=False, event=rotated,
                                created_at=meta.created_at if meta is not None else rotated.at,
                                created_by=meta.created_by if meta is not None else rotated.actor.key_id)
        return to_response(json_answer(HTTP_200_OK, _metadata_from_outcome(outcome), {"ETag": etag(rotated.version)}))

    # -- pools ---------------------------------------------------------------------------------------

    @get("/{name:str}/members", operation_id="GetMembers", tags=POOLS, responses=problems(*COMMON, 404),
         summary="The secret's pool: its selection and members (never a value)")
    async def get_members(
        self, name: FromPath[str], principal: NamedDependency[Principal], ledger: NamedDependency[Ledger]
    ) -> PoolInfo:
        secret: SecretState = await ledger.submit(ReadPool(org=principal.org, ctx=principal.ctx, name=name))
        return PoolInfo(selection=secret.selection, members=[member_info(m) for m in secret.members])

    @put("/{name:str}/members/{member:str}", operation_id="PutMember", tags=POOLS, status_code=HTTP_200_OK,
         responses={201: ResponseSpec(data_container=MemberInfo, description="Created"),
                    **problems(*COMMON, 404, 409)},  # 409: the secret has a rotation policy
         summary="Add a pool member, or give it a new value (200 when updated, 201 when created)")
    async def put_member(
        self,
        request: Request[object, object, State],
        name: FromPath[str],
        member: FromPath[str],
        data: JSONBody[MemberBody],
    ) -> Response[MemberInfo]:
        ledger, principal, scope = _caller(request)
        command = ledger.put_member_command(principal.ctx, principal.org, name, member, data.value.encode(),
                                            label=data.label)

        def render(outcome: MemberOutcome) -> StoredAnswer:
            return json_answer(HTTP_201_CREATED if outcome.created else HTTP_200_OK, member_info(outcome.member))

        return await run_command(request, ledger, command, scope, render)

    async def _member_state(self, request: Request[object, object, State], name: str, member: str,
                            state: MemberState, data: MemberStateBody | None) -> Response[MemberInfo]:
        ledger, principal, scope = _caller(request)
        command = ledger.member_state_command(principal.ctx, principal.org, name, member, state,
                                              reason=data.reason if data is not None else "")

        def render(changed: Member) -> StoredAnswer:
            return json_answer(HTTP_200_OK, member_info(changed))

        return await run_command(request, ledger, command, scope, render)

    @post("/{name:str}/members/{member:str}/disable", operation_id="DisableMember", tags=POOLS,
          status_code=HTTP_200_OK, responses=problems(*COMMON, 404),
          summary="Disable a pool member: reveals skip it until it is enabled again")
    async def disable_member(
        self,
        request: Request[object, object, State],
        name: FromPath[str],
        member: FromPath[str],
        data: JSONBody[MemberStateBody | None] = None,
    ) -> Response[MemberInfo]:
        return await self._member_state(request, name, member, "disabled", data)

    @post("/{name:str}/members/{member:str}/enable", operation_id="EnableMember", tags=POOLS,
          status_code=HTTP_200_OK, responses=problems(*COMMON, 404),
          summary="Enable a pool member again")
    async def enable_member(
        self,
        request: Request[object, object, State],
        name: FromPath[str],
        member: FromPath[str],
        data: JSONBody[MemberStateBody | None] = None,
    ) -> Response[MemberInfo]:
        return await self._member_state(request, name, member, "active", data)

    @delete("/{name:str}/members/{member:str}", operation_id="DeleteMember", tags=POOLS,
            status_code=HTTP_204_NO_CONTENT, responses=problems(*COMMON, 404),
            summary="Remove a pool member; its value's data key is deleted")
    async def delete_member(
        self,
        name: FromPath[str],
        member: FromPath[str],
        principal: NamedDependency[Principal],
        ledger: NamedDependency[Ledger],
    ) -> None:
        await ledger.submit(ledger.remove_member_command(principal.ctx, principal.org, name, member))

    @put("/{name:str}/pool", operation_id="PutPool", tags=POOLS, status_code=HTTP_200_OK,
         responses=problems(*COMMON, 404),
         summary="Choose how reveals pick a pool member: round_robin (default) or least_recent")
    async def put_pool(
        self, request: Request[object, object, State], name: FromPath[str], data: JSONBody[PoolBody]
    ) -> Response[PoolSelection]:
        ledger, principal, scope = _caller(request)
        command = ledger.pool_command(principal.ctx, principal.org, name, data.selection)

        def render(selection: Selection) -> StoredAnswer:
            return json_answer(HTTP_200_OK, PoolSelection(selection=selection))

        return await run_command(request, ledger, command, scope, render)
