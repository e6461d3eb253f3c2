"""The ledger's commands, each deciding events against the write view.

A command checks its caller (an active key of the org, with the right role), validates against the
current state, and returns the events to append plus what to answer after they commit.
"""

from __future__ import annotations

import hashlib
import secrets
import string

import msgspec
from msgspec import UNSET, UnsetType

from ledger.codec import decode_event
from ledger.crypto import new_data_key, new_data_key_id, seal_value, sealed_sha256
from ledger.errors import (
    AlreadyExistsError,
    ConflictError,
    GoneError,
    LedgerError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionFailedError,
    RevealDeniedError,
    UnauthenticatedError,
)
from ledger.events import (
    VALUE_EVENTS,
    Actor,
    ApiKeyCreated,
    ApiKeyRevoked,
    Category,
    Event,
    OrgCreated,
    Role,
    Scope,
    SecretCreated,
    SecretDeleted,
    SecretDestroyed,
    SecretRevealDenied,
    SecretRevealed,
    SecretRevealFailed,
    SecretUpdated,
    Source,
    ValueEvent,
)
from ledger.model import (
    DAY_NS,
    KeyState,
    SecretState,
    key_stream,
    member_aad_name,
    org_stream,
    pick_member,
    scope_covers,
    secret_stream,
)
from ledger.records import DataKeyRow
from ledger.writer import Decision, WriteView

API_KEY_PREFIX = "rt_live_"
_ALPHANUMERIC = string.ascii_letters + string.digits


def new_api_key() -> str:
    """`rt_live_` and 40 random characters of [A-Za-z0-9] (about 238 bits)."""
    return API_KEY_PREFIX + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(40))


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def api_key_sha256(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


class Context(msgspec.Struct, frozen=True, kw_only=True):
    """Who asks, from where, under which request id. `actor.kind == "admin"` is the admin token."""

    actor: Actor
    source: Source = Source()
    request_id: str = ""


# The server acting on its own (destroying secrets whose window ended, finishing a rotation).
SYSTEM = Context(actor=Actor(key_id="system", label="keyledger", kind="system"))


class CreatedKey(msgspec.Struct, frozen=True, kw_only=True):
    key_id: str
    org: str
    label: str
    role: Role
    scope: Scope
    created_at: int
    api_key: str  # shown once; never stored

    def __repr__(self) -> str:
        return f"CreatedKey(key_id={self.key_id!r}, org={self.org!r}, role={self.role!r})"


class Revealed(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: int
    value: bytes  # for an external reference: the reference, which the caller resolves after the commit
    data_key_id: str = ""  # the version's data key: a stored answer holding the value is sealed by it
    member: str | None = None  # the pool member answered
    external: str | None = None  # the reference's scheme when `value` is a reference

    def __repr__(self) -> str:
        return f"Revealed(name={self.name!r}, version={self.version})"


async def caller_key(view: WriteView, org: str, ctx: Context, *, admin_token: bool = False) -> KeyState | None:
    """The caller's key, checked active and of this org; None for the admin token where it may act."""
    if ctx.actor.kind == "admin":
        if admin_token:
            return None
        raise PermissionDeniedError("the admin token manages orgs only; use an API key of the org")
    if ctx.actor.kind == "person":
        return await person_as_key(view, org, ctx.actor.key_id)
    key = await view.key(ctx.actor.key_id)
    if key is None or key.revoked or key.org != org:
        raise UnauthenticatedError("the API key is unknown or revoked")
    return key


async def require_admin(view: WriteView, org: str, ctx: Context, what: str) -> KeyState:
    """The caller, an active admin key (or admin person) of the org; `what` completes "only admins ..."."""
    caller = await caller_key(view, org, ctx)
    assert caller is not None  # caller_key refuses the admin token unless told otherwise
    if caller.role != "admin":
        raise PermissionDeniedError(f"only admins {what}")
    return caller


async def person_as_key(view: WriteView, org: str, member_id: str) -> KeyState:
    """A person signed in through single sign-on, as the key they act like (`PersonEntry.as_key`)."""
    members = await view.org_members(org)
    person = members.by_id(member_id) if members is not None else None
    if person is None or person.removed:
        raise UnauthenticatedError("this person is not a member of the org, or was removed")
    return person.as_key(org)


def refuse_reference(state: SecretState) -> None:
    """A reference's value lives in its manager: it cannot be rotated here, nor hold pool members."""
    if state.rotation is not None:
        raise ConflictError(f"secret {state.name!r} has a rotation policy: remove it before making it a reference")
    if state.members:
        raise ConflictError(f"secret {state.name!r} is a pool: remove its members before making it a reference")


def seal_new(view: WriteView, value: bytes, org: str, aad_name: str, version: int) -> tuple[str, str, DataKeyRow]:
    """A value sealed under a fresh data key: (data key id, sealed value, the wrapped data key's row)."""
    data_key_id = new_data_key_id()
    data_key = new_data_key()
    kek_id, wrapped = view.keyring.wrap(data_key_id, data_key)
    sealed = seal_value(data_key, value, org, aad_name, version)
    return data_key_id, sealed, DataKeyRow(id=data_key_id, kek_id=kek_id, wrapped=wrapped)


def envelope(view: WriteView, org: str, stream: str, version: int | None, ctx: Context) -> dict[str, object]:
    return {
        "org": org, "stream": stream, "stream_version": version, "at": view.at,
        "actor": ctx.actor, "source": ctx.source, "request_id": ctx.request_id,
    }


class CreateOrg(msgspec.Struct, frozen=True, kw_only=True):
    """Create an org and its first key, an admin of scope `all` (admin token only)."""

    org: str
    ctx: Context
    key_id: str
    api_key: str
    label: str = "admin"

    def __repr__(self) -> str:
        return f"CreateOrg(org={self.org!r}, key_id={self.key_id!r})"

    async def decide(self, view: WriteView) -> Decision[CreatedKey]:
        if self.ctx.actor.kind != "admin":
            raise PermissionDeniedError("only the admin token creates orgs")
        if await view.org(self.org) is not None:
            raise AlreadyExistsError(f"org {self.org!r} exists")
        created = OrgCreated(**envelope(view, self.org, org_stream(self.org), 1, self.ctx))  # type: ignore[arg-type]
        key = ApiKeyCreated(
            **envelope(view, self.org, key_stream(self.key_id), 1, self.ctx),  # type: ignore[arg-type]
            key_id=self.key_id, label=self.label, role="admin", scope="all",
            key_sha256=api_key_sha256(self.api_key),
        )
        result = CreatedKey(
            key_id=self.key_id, org=self.org, label=self.label, role="admin", scope="all",
            created_at=view.at, api_key=self.api_key,
        )
        return Decision(events=[created, key], result=result)


class CreateApiKey(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    ctx: Context
    key_id: str
    api_key: str
    label: str
    role: Role
    scope: Scope

    def __repr__(self) -> str:
        return f"CreateApiKey(org={self.org!r}, key_id={self.key_id!r})"

    async def decide(self, view: WriteView) -> Decision[CreatedKey]:
        caller = await caller_key(view, self.org, self.ctx, admin_token=True)
        if caller is not None and caller.role != "admin":
            raise PermissionDeniedError("only admin keys manage API keys")
        if await view.org(self.org) is None:
            raise NotFoundError(f"org {self.org!r} does not exist")
        event = ApiKeyCreated(
            **envelope(view, self.org, key_stream(self.key_id), 1, self.ctx),  # type: ignore[arg-type]
            key_id=self.key_id, label=self.label, role=self.role, scope=self.scope,
            key_sha256=api_key_sha256(self.api_key),
        )
        result = CreatedKey(
            key_id=self.key_id, org=self.org, label=self.label, role=self.role, scope=self.scope,
            created_at=view.at, api_key=self.api_key,
        )
        return Decision(events=[event], result=result)


class RevokeApiKey(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    ctx: Context
    key_id: str

    async def decide(self, view: WriteView) -> Decision[None]:
        caller = await caller_key(view, self.org, self.ctx, admin_token=True)
        if caller is not None and caller.role != "admin":
            raise PermissionDeniedError("only admin keys manage API keys")
        key = await view.key(self.key_id)
        if key is None or key.org != self.org or key.revoked:
            raise NotFoundError(f"API key {self.key_id!r} not found")
        event = ApiKeyRevoked(
            **envelope(view, self.org, key_stream(self.key_id), key.stream_version + 1, self.ctx),  # type: ignore[arg-type]
            key_id=self.key_id,
        )
        return Decision(events=[event])


class UpsertOutcome(msgspec.Struct, frozen=True, kw_only=True):
    created: bool
    event: ValueEvent
    created_at: int  # when this incarnation of the secret was created
    created_by: str


class UpsertSecret(msgspec.Struct, frozen=True, kw_only=True):
    """Create a secret, or give it a new value (and version); omitted fields keep their value."""

    org: str
    ctx: Context
    name: str
    value: bytes
    scope: Scope | None = None
    category: Category | None = None
    description: str | None = None
    if_match: int | None = None
    expires_at: int | UnsetType | None = UNSET  # UNSET keeps the current expiry; None removes it
    external: str | None = None  # the scheme when `value` is a reference to an external manager

    def __repr__(self) -> str:
        return f"UpsertSecret(org={self.org!r}, name={self.name!r})"

    async def decide(self, view: WriteView) -> Decision[UpsertOutcome]:
        await caller_key(view, self.org, self.ctx)
        state = await view.secret(self.org, self.name)
        current = state if state is not None and state.exists else None
        if self.if_match is not None and (current is None or current.version != self.if_match):
            raise PreconditionFailedError(self.if_match, current.version if current else None)
        if self.external is not None and state is not None:
            refuse_reference(state)
        version = (state.version if state else 0) + 1
        stream_version = (state.stream_version if state else 0) + 1
        data_key_id, sealed, data_key_row = seal_new(view, self.value, self.org, self.name, version)
        common = envelope(view, self.org, secret_stream(self.org, self.name), stream_version, self.ctx)
        fields = {
            "name": self.name, "version": version, "data_key_id": data_key_id,
            "sealed_sha256": sealed_sha256(sealed),
        }
        kept = current.expires_at if current is not None else None
        expires_at = kept if isinstance(self.expires_at, UnsetType) else self.expires_at
        fields["expires_at"] = UNSET if expires_at is None else expires_at
        fields["external"] = UNSET if self.external is None else self.external
        event: SecretCreated | SecretUpdated
        if current is None:
            event = SecretCreated(
                **common, **fields,  # type: ignore[arg-type]
                scope=self.scope or "all", category=self.category or "custom",
                description=self.description or "",
            )
        else:
            event = SecretUpdated(
                **common, **fields,  # type: ignore[arg-type]
                scope=self.scope or current.scope, category=self.category or current.category,
                description=current.description if self.description is None else self.description,
            )
        return Decision(
            events=[event], sealed=[sealed],
            data_keys=[data_key_row],
            result=UpsertOutcome(
                created=current is None, event=event,
                created_at=view.at if current is None else current.created_at,
                created_by=self.ctx.actor.key_id if current is None else current.created_by,
            ),
        )


class DeleteSecret(msgspec.Struct, frozen=True, kw_only=True):
    """Delete a secret: it leaves list and get at once, and its versions stay recoverable for the org's
    recovery window. `purge` (admin keys only) destroys every version now, deleted already or not."""

    org: str
    ctx: Context
    name: str
    if_match: int | None = None
    purge: bool = False

    async def decide(self, view: WriteView) -> Decision[None]:
        caller = await caller_key(view, self.org, self.ctx)
        if self.purge and (caller is None or caller.role != "admin"):
            raise PermissionDeniedError("only admin keys purge secrets")
        state = await view.secret(self.org, self.name)
        if state is None or (not state.exists and not self.purge):
            raise NotFoundError(f"secret {self.name!r} not found")
        if self.if_match is not None and (not state.exists or state.version != self.if_match):
            raise PreconditionFailedError(self.if_match, state.version if state.exists else None)
        org = await view.org(self.org)
        window = org.recovery_window_days if org is not None else 0
        stream = secret_stream(self.org, self.name)
        events: list[Event] = []
        stream_version = state.stream_version
        if state.exists:
            stream_version += 1
            events.append(SecretDeleted(
                **envelope(view, self.org, stream, stream_version, self.ctx),  # type: ignore[arg-type]
                name=self.name, version=state.version,
                destroy_at=view.at if self.purge else view.at + window * DAY_NS,
            ))
        if not (self.purge or window == 0):
            return Decision(events=events)
        destroyed = await destroy_remaining(view, state, self.ctx, stream_version + 1,
                                            "purge" if self.purge else "recovery window ended")
        if destroyed is None:
            if not events:  # a purge of a deleted secret whose versions are all gone already
                raise NotFoundError(f"secret {self.name!r} not found")
            return Decision(events=events)
        return Decision(events=[*events, destroyed], drop_data_keys=destroyed.data_key_ids)


async def value_events(view: WriteView, state: SecretState) -> dict[int, tuple[ValueEvent, str]]:
    """Every version of the name: its value event and sealed value, from the stream's records."""
    found: dict[int, tuple[ValueEvent, str]] = {}
    stream = secret_stream(state.org, state.name)
    for record in await view.recorder.read_stream(stream):
        event = decode_event(record.body)
        if isinstance(event, VALUE_EVENTS):
            found[event.version] = (event, record.sealed or "")
    for pending, sealed in view.batch_values.get(stream, []):  # decided earlier in this batch
        if isinstance(pending, VALUE_EVENTS):
            found[pending.version] = (pending, sealed)
    return found


async def destroy_remaining(
    view: WriteView, state: SecretState, ctx: Context, stream_version: int, reason: str
) -> SecretDestroyed | None:
    """The event destroying every version whose data key still exists; None when none is left."""
    versions = await value_events(view, state)
    alive = sorted(v for v in versions if v not in state.destroyed_versions)
    if not alive and not state.members and not (state.policy.restricts or state.rotation is not None
                                                 or state.selection != "round_robin"):
        return None
    # Pool members' values go too: their data keys follow the versions' in the list.
    data_key_ids = [versions[v][0].data_key_id for v in alive] + [m.data_key_id for m in state.members]
    return SecretDestroyed(
        **envelope(  # type: ignore[arg-type]
            view, state.org, secret_stream(state.org, state.name), stream_version, ctx
        ),
        name=state.name, versions=alive, data_key_ids=data_key_ids, reason=reason,
    )


class RevealSecret(msgspec.Struct, frozen=True, kw_only=True):
    """Record a reveal, or a denied one; the value is answered only after the event commits.

    Checks in order: expiry (410), the key's scope, the secret's reveal policy (403). A pool answers
    one active member; a reference answers the reference, which the caller resolves after the commit."""

    org: str
    ctx: Context
    name: str
    reason: str = ""
    version: int | None = None  # an earlier version of the live secret; None: the current one
    # Set when the answer will be stored for replay: a reference's fetched value must never be, so such
    # a reveal is refused before anything is recorded (the caller reveals it without storing instead).
    refuse_external: bool = False

    async def decide(self, view: WriteView) -> Decision[Revealed]:
        caller = await caller_key(view, self.org, self.ctx)
        state = await view.secret(self.org, self.name)
        if state is None or not state.exists:
            raise NotFoundError(f"secret {self.name!r} not found")
        expired = state.expires_at is not None and view.at >= state.expires_at
        pool = bool(state.members)
        if pool and self.version is not None:
            raise ConflictError(f"secret {self.name!r} is a pool: its members have no versions; omit the version")
        if self.version is not None and self.version != state.version:
            state = await earlier_version(view, state, self.version)
        if self.refuse_external and state.external is not None and not pool:
            raise IsReference(f"secret {self.name!r} version {state.version} is a reference")
        key_scope: Scope = caller.scope if caller is not None else "all"
        common = envelope(view, self.org, secret_stream(self.org, self.name), None, self.ctx)

        def deny(why: str, error: LedgerError) -> Decision[Revealed]:
            denied = SecretRevealDenied(
                **common,  # type: ignore[arg-type]
                name=self.name, version=state.version, key_scope=key_scope, secret_scope=state.scope,
                reason=why, request_reason=self.reason,
            )
            return Decision(events=[denied], error=error)

        if expired:
            return deny("the secret expired", GoneError(f"secret {self.name!r} expired"))
        if not scope_covers(key_scope, state.scope):
            why = f"key scope {key_scope!r} does not cover secret scope {state.scope!r}"
            return deny(why, RevealDeniedError(why))
        if caller is not None and not state.policy.allows(caller):
            why = f"the secret's reveal policy does not allow key {caller.key_id!r}"
            return deny(why, RevealDeniedError(why))
        if pool:
            member = pick_member(state)
            if member is None:
                why = "the pool has no active member"
                return deny(why, ConflictError(f"secret {self.name!r}: {why}"))
            row = await view.data_key(member.data_key_id)
            if row is None:
                raise NotFoundError(f"secret {self.name!r} member {member.name!r} was destroyed")
            value = view.opener(row).open(member.sealed, self.org, member_aad_name(self.name, member.name),
                                          member.member_version)
            event = SecretRevealed(
                **common,  # type: ignore[arg-type]
                name=self.name, version=state.version, key_scope=key_scope, reason=self.reason, member=member.name,
            )
            return Decision(events=[event], result=Revealed(
                name=self.name, version=state.version, value=value, data_key_id=member.data_key_id,
                member=member.name,
            ))
        value = await open_version(view, state)
        event = SecretRevealed(
            **common,  # type: ignore[arg-type]
            name=self.name, version=state.version, key_scope=key_scope, reason=self.reason,
            external=UNSET if state.external is None else state.external,
        )
        return Decision(events=[event], result=Revealed(name=self.name, version=state.version, value=value,
                                                        data_key_id=state.data_key_id, external=state.external))

    async def recheck(self, view: WriteView) -> None:
        await recheck_reveal(view, self.org, self.ctx, self.name)


class IsReference(ConflictError):
    """A reveal whose answer would be stored met a reference (see `RevealSecret.refuse_external`)."""


async def recheck_reveal(view: WriteView, org: str, ctx: Context, name: str) -> None:
    """Before a stored reveal answer is replayed: the caller may still reveal the secret now (its key,
    the secret's expiry, scope and reveal policy), else the error a fresh reveal would get."""
    caller = await caller_key(view, org, ctx)
    state = await view.secret(org, name)
    if state is None or not state.exists:
        raise NotFoundError(f"secret {name!r} not found")
    if state.expires_at is not None and view.at >= state.expires_at:
        raise GoneError(f"secret {name!r} expired")
    key_scope: Scope = caller.scope if caller is not None else "all"
    if not scope_covers(key_scope, state.scope):
        raise RevealDeniedError(f"key scope {key_scope!r} does not cover secret scope {state.scope!r}")
    if caller is not None and not state.policy.allows(caller):
        raise RevealDeniedError(f"the secret's reveal policy does not allow key {caller.key_id!r}")


class RecordRevealFailed(msgspec.Struct, frozen=True, kw_only=True):
    """After a granted reveal of a reference whose value could not be fetched: the record says so."""

    org: str
    ctx: Context
    name: str
    version: int
    reason: str

    async def decide(self, view: WriteView) -> Decision[None]:
        # The server's own record of what happened to a granted reveal: the caller is not checked again
        # (a key revoked since must not hide the failure).
        await view.secret(self.org, self.name)  # loaded: the writer folds every event of a loaded secret
        event = SecretRevealFailed(
            **envelope(view, self.org, secret_stream(self.org, self.name), None, self.ctx),  # type: ignore[arg-type]
            name=self.name, version=self.version, reason=self.reason,
        )
        return Decision(events=[event])


async def earlier_version(view: WriteView, state: SecretState, version: int) -> SecretState:
    """The state as of an earlier version of the name (its value and data key), from the stream's records."""
    if version > state.version or version < 1:
        raise NotFoundError(f"secret {state.name!r} has no version {version}")
    found = (await value_events(view, state)).get(version)
    if found is None:
        raise NotFoundError(f"secret {state.name!r} has no version {version}")
    event, sealed = found
    return msgspec.structs.replace(state, version=version, data_key_id=event.data_key_id, sealed=sealed,
                                   external=None if isinstance(event.external, UnsetType) else event.external)


async def open_version(view: WriteView, state: SecretState) -> bytes:
    # Decrypted before the append so that a value that cannot be opened is never recorded as revealed;
    # it is answered only after the event commits.
    row = await view.data_key(state.data_key_id)
    if row is None or state.version in state.destroyed_versions:
        raise NotFoundError(f"secret {state.name!r} version {state.version} was destroyed")
    return view.opener(row).open(state.sealed, state.org, state.name, state.version)
