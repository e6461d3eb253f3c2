"""The ledger's public face: open a store, run the writer, and call commands.

Each operation has a `*_command` builder (which validates its input) and a method that submits it.
The HTTP API and the CLI only call this; it never imports them.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import TypeVar

import msgspec
from msgspec import UNSET, UnsetType

from ledger import oauth
from ledger.apps import (
    AppToken,
    AppTokens,
    ConnectApp,
    DisconnectApp,
    RecordAppRefresh,
    RecordAppRefreshFailed,
    RefreshNeeded,
    RevealAppToken,
)
from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.commands import (
    SYSTEM,
    Context,
    CreateApiKey,
    CreatedKey,
    CreateOrg,
    DeleteSecret,
    RecordRevealFailed,
    Revealed,
    RevealSecret,
    RevokeApiKey,
    UpsertOutcome,
    UpsertSecret,
    new_api_key,
    new_key_id,
)
from ledger.crypto import Keyring, SigningKey, parse_ssh_public_key
from ledger.errors import AppBrokenError, AppRefreshFailedError, ExternalSecretError, LedgerError, ValidationError
from ledger.events import APP_PROVIDERS, SELECTIONS, AppConnected, AppProvider, Category, Scope, SshKeyAdded
from ledger.external import ExternalStores, parse_reference
from ledger.generator import Rotator, validate_rotator
from ledger.idempotency import Answer, Idempotent, Render, validate_idempotency_key
from ledger.lifecycle import (
    ChangeOrgSettings,
    DestroyDue,
    NothingDue,
    OrgSettings,
    ReadOrgSettings,
    RestoreSecret,
    RollbackSecret,
)
from ledger.model import (
    MAX_DESCRIPTION_CHARS,
    MAX_LABEL_CHARS,
    MAX_REASON_CHARS,
    MAX_RECOVERY_WINDOW_DAYS,
    validate_category,
    validate_name,
    validate_org,
    validate_role,
    validate_scope,
    validate_text,
    validate_value,
)
from ledger.people import (
    ChangePersonRole,
    ConfigureSso,
    RemovePerson,
    RemoveSso,
    RevealSsoClient,
    SignedInPerson,
    SignInPerson,
    SsoClient,
    new_member_id,
    validate_claim,
    validate_domains,
)
from ledger.policy import SetPolicy, validate_policy
from ledger.pools import ChangeMemberState, ConfigurePool, PutMember, RemoveMember, validate_member_name
from ledger.recorder import Recorder
from ledger.rotation import ConfigureRotation, NotDue, RotationStarted, StartRotation, validate_interval
from ledger.sessions import SESSION_ID, EndSession, StartSession, validate_session_id
from ledger.ssh_keys import AddSshKey, RemoveSshKey, new_ssh_key_id, ssh_key_label
from ledger.writer import Command, Writer

T = TypeVar("T")


_FAILURES = {"not_found": "not found", "access_denied": "access denied", "unavailable": "unavailable",
             "invalid": "the value is not in the form the reference expects"}
# An error code at the end of an adapter's message, e.g. "(ResourceNotFoundException, HTTP 400)".
_ERROR_CODE = re.compile(r"\(((?:[A-Za-z]+, )?HTTP \d{3}|[A-Za-z]+Error|[A-Za-z]+Exception)\)$")


def failure_text(exc: LedgerError) -> str:
    """What went wrong fetching a reference, built from the error's kind and code only: an adapter's
    message may hold parts of the reference (a path, a JSON key), which is never shown or recorded."""
    if not isinstance(exc, ExternalSecretError):
        return type(exc).__name__
    code = _ERROR_CODE.search(str(exc))
    return _FAILURES.get(exc.reason, exc.reason) + (f" ({code.group(1)})" if code else "")


class Ledger:
    """Commands over one recorder; start() before use, stop() after."""

    def __init__(
        self,
        recorder: Recorder,
        keyring: Keyring,
        clock: Callable[[], int] = time.time_ns,
        *,
        signing_key: SigningKey | None = None,
        checkpoint_every: int = 1000,
        external: ExternalStores | None = None,
    ) -> None:
        self.recorder = recorder
        self.keyring = keyring
        self.clock = clock
        self.signing_key = signing_key or keyring.current.signing_key()
        self.writer = Writer(recorder, keyring, clock)
        self.writer.signing_key = self.signing_key
        self.writer.checkpoint_every = checkpoint_every
        self.external = external or ExternalStores.default()  # adapters for references (AWS, Vault)
        self._refreshing: dict[tuple[str, str], asyncio.Lock] = {}  # one refresh per app at a time (per process)

    async def start(self) -> None:
        await self.recorder.open()
        self.writer.start()

    async def stop(self) -> None:
        await self.writer.stop()
        await self.recorder.close()

    async def checkpoint(self, org: str) -> Checkpoint | None:
        """Sign and keep a checkpoint of the org's head now; None for an org with no events."""
        org_seq, head = await self.recorder.org_head(org)
        if org_seq == 0:
            return None
        latest = await self.recorder.latest_checkpoint(org)
        if latest is not None and latest.org_seq == org_seq and latest.public_key == self.signing_key.public_key:
            return latest
        checkpoint = sign_checkpoint(self.signing_key, org, org_seq, head, self.clock())
        await self.recorder.put_checkpoint(checkpoint)
        return checkpoint

    async def submit(self, command: Command[T]) -> T:
        return await self.writer.submit(command)

    async def submit_idempotent(
        self, command: Command[object], scope: str, key: str, fingerprint: str, render: Render
    ) -> Answer:
        """Run `command` once per (scope, key); retries with the same fingerprint get the first answer."""
        wrapped = Idempotent(inner=command, scope=scope, key=validate_idempotency_key(key),
                             fingerprint=fingerprint, render=render)
        return await self.writer.submit(wrapped)

    # -- builders (validate input) ---------------------------------------------------------------

    def create_org_command(self, ctx: Context, org: str, label: str = "admin") -> CreateOrg:
        return CreateOrg(org=validate_org(org), ctx=ctx, key_id=new_key_id(), api_key=new_api_key(),
                         label=validate_text(label, "label", MAX_LABEL_CHARS))

    def create_api_key_command(
        self, ctx: Context, org: str, label: str, role: str = "member", scope: str = "all"
    ) -> CreateApiKey:
        return CreateApiKey(
            org=org, ctx=ctx, key_id=new_key_id(), api_key=new_api_key(),
            label=validate_text(label, "label", MAX_LABEL_CHARS), role=validate_role(role),
            scope=validate_scope(scope),
        )

    def upsert_secret_command(
        self,
        ctx: Context,
        org: str,
        name: str,
        value: bytes,
        *,
        scope: str | None = None,
        category: str | None = None,
        description: str | None = None,
        if_match: int | None = None,
        expires_at: int | UnsetType | None = UNSET,
        reference: bool = False,
    ) -> UpsertSecret:
        """With `reference`, `value` is a reference to an external manager (`aws-sm://...`), checked here."""
        external = parse_reference(value.decode("utf-8", "replace")).scheme if reference else None
        checked_scope: Scope | None = validate_scope(scope) if scope is not None else None
        checked_category: Category | None = validate_category(category) if category is not None else None
        if description is not None:
            validate_text(description, "description", MAX_DESCRIPTION_CHARS)
        return UpsertSecret(
            org=org, ctx=ctx, name=validate_name(name), value=validate_value(value),
            scope=checked_scope, category=checked_category, description=description, if_match=if_match,
            expires_at=expires_at, external=external,
        )

    def rollback_secret_command(self, ctx: Context, org: str, name: str, version: int, *,
                                if_match: int | None = None) -> RollbackSecret:
        if version < 1:
            raise ValidationError("version", "must be 1 or more")
        return RollbackSecret(org=org, ctx=ctx, name=validate_name(name), version=version, if_match=if_match)

    def restore_secret_command(self, ctx: Context, org: str, name: str) -> RestoreSecret:
        return RestoreSecret(org=org, ctx=ctx, name=validate_name(name))

    def org_settings_command(self, ctx: Context, org: str, recovery_window_days: int) -> ChangeOrgSettings:
        if not 0 <= recovery_window_days <= MAX_RECOVERY_WINDOW_DAYS:
            raise ValidationError("recovery_window_days", f"must be 0 to {MAX_RECOVERY_WINDOW_DAYS}")
        return ChangeOrgSettings(org=org, ctx=ctx, recovery_window_days=recovery_window_days)

    def reveal_secret_command(self, ctx: Context, org: str, name: str, *, reason: str = "",
                              version: int | None = None) -> RevealSecret:
        if version is not None and version < 1:
            raise ValidationError("version", "must be 1 or more")
        return RevealSecret(org=org, ctx=ctx, name=validate_name(name),
                            reason=validate_text(reason, "reason", MAX_REASON_CHARS), version=version)

    def set_policy_command(self, ctx: Context, org: str, name: str, *, key_ids: list[str], labels: list[str],
                           roles: list[str]) -> SetPolicy:
        return SetPolicy(org=org, ctx=ctx, name=validate_name(name), policy=validate_policy(key_ids, labels, roles))

    def configure_rotation_command(self, ctx: Context, org: str, name: str, *, interval_seconds: int = 0,
                                   rotator: Rotator | None = None) -> ConfigureRotation:
        if rotator is not None:
            validate_interval(interval_seconds)
            rotator = validate_rotator(rotator)
        return ConfigureRotation(org=org, ctx=ctx, name=validate_name(name), interval_seconds=interval_seconds,
                                 rotator=rotator)

    def put_member_command(self, ctx: Context, org: str, name: str, member: str, value: bytes, *,
                           label: str | None = None) -> PutMember:
        if label is not None:
            validate_text(label, "label", MAX_LABEL_CHARS)
        return PutMember(org=org, ctx=ctx, name=validate_name(name), member=validate_member_name(member),
                         value=validate_value(value), label=label)

    def member_state_command(self, ctx: Context, org: str, name: str, member: str, state: str, *,
                             reason: str = "") -> ChangeMemberState:
        if state not in ("active", "disabled"):
            raise ValidationError("state", "must be active or disabled")
        return ChangeMemberState(org=org, ctx=ctx, name=validate_name(name), member=validate_member_name(member),
                                 state=state,  # type: ignore[arg-type]
                                 reason=validate_text(reason, "reason", MAX_REASON_CHARS))

    def remove_member_command(self, ctx: Context, org: str, name: str, member: str) -> RemoveMember:
        return RemoveMember(org=org, ctx=ctx, name=validate_name(name), member=validate_member_name(member))

    def pool_command(self, ctx: Context, org: str, name: str, selection: str) -> ConfigurePool:
        if selection not in SELECTIONS:
            raise ValidationError("selection", f"must be one of {', '.join(SELECTIONS)}")
        return ConfigurePool(org=org, ctx=ctx, name=validate_name(name), selection=selection)  # type: ignore[arg-type]

    def add_ssh_key_command(self, ctx: Context, org: str, public_key: str, label: str | None = None) -> AddSshKey:
        """`public_key` is one OpenSSH public key line (checked here); `label` defaults to its comment,
        else its type."""
        key = parse_ssh_public_key(public_key)
        return AddSshKey(org=org, ctx=ctx, ssh_key_id=new_ssh_key_id(), label=ssh_key_label(key, label), key=key)

    # -- operations ----------------------------------------------------------------------------

    async def create_org(self, ctx: Context, org: str, label: str = "admin") -> CreatedKey:
        return await self.submit(self.create_org_command(ctx, org, label))

    async def create_api_key(
        self, ctx: Context, org: str, label: str, role: str = "member", scope: str = "all"
    ) -> CreatedKey:
        return await self.submit(self.create_api_key_command(ctx, org, label, role, scope))

    async def revoke_api_key(self, ctx: Context, org: str, key_id: str) -> None:
        await self.submit(RevokeApiKey(org=org, ctx=ctx, key_id=key_id))

    async def upsert_secret(
        self,
        ctx: Context,
        org: str,
        name: str,
        value: bytes,
        *,
        scope: str | None = None,
        category: str | None = None,
        description: str | None = None,
        if_match: int | None = None,
    ) -> UpsertOutcome:
        return await self.submit(
            self.upsert_secret_command(ctx, org, name, value, scope=scope, category=category,
                                       description=description, if_match=if_match)
        )

    async def delete_secret(self, ctx: Context, org: str, name: str, *, if_match: int | None = None,
                            purge: bool = False) -> None:
        await self.submit(DeleteSecret(org=org, ctx=ctx, name=validate_name(name), if_match=if_match, purge=purge))

    async def add_ssh_key(self, ctx: Context, org: str, public_key: str, label: str | None = None) -> SshKeyAdded:
        return await self.submit(self.add_ssh_key_command(ctx, org, public_key, label))

    async def remove_ssh_key(self, ctx: Context, org: str, ssh_key_id: str) -> None:
        await self.submit(RemoveSshKey(org=org, ctx=ctx, ssh_key_id=ssh_key_id))

    async def start_session(self, ctx: Context, org: str, session_id: str) -> None:
        """A dashboard sign-in: `ctx` is the API key that signed in (an active key of `org`); `session_id`
        (20-64 characters of [A-Za-z0-9_-], random, made by the caller) must be new."""
        await self.submit(StartSession(org=org, ctx=ctx, session_id=validate_session_id(session_id)))

    async def end_session(self, ctx: Context, org: str, session_id: str) -> bool:
        """A dashboard sign-out; False, and nothing recorded, when `org` has no such session or it ended."""
        if not isinstance(session_id, str) or not SESSION_ID.fullmatch(session_id):
            return False  # no such session can exist
        return await self.submit(EndSession(org=org, ctx=ctx, session_id=session_id))

    # -- people and single sign-on ----------------------------------------------------------------

    async def configure_sso(self, ctx: Context, org: str, *, issuer: str, client_id: str, client_secret_name: str,
                            allowed_domains: list[str]) -> None:
        await self.submit(ConfigureSso(
            org=org, ctx=ctx, issuer=oauth.validate_endpoint_url(issuer, "issuer"),  # exactly as the provider says it
            client_id=_sso_client_id(client_id),
            client_secret_name=validate_name(client_secret_name), allowed_domains=validate_domains(allowed_domains),
        ))

    async def remove_sso(self, ctx: Context, org: str) -> None:
        await self.submit(RemoveSso(org=org, ctx=ctx))

    async def sso_client(self, org: str, request_id: str = "") -> SsoClient:
        """The org's provider and client secret (a recorded reveal of that secret, by the system)."""
        return await self.submit(RevealSsoClient(org=org, request_id=request_id))

    async def sign_in_person(self, ctx: Context, org: str, *, issuer: str, subject: str, email: str,
                             session_id: str) -> SignedInPerson:
        """A person whose ID token was verified: joins the org the first time, and starts a session."""
        return await self.submit(SignInPerson(
            org=org, ctx=ctx, issuer=issuer, subject=validate_claim(subject, "sub"),
            email=validate_claim(email, "email"), session_id=validate_session_id(session_id),
            new_member_id=new_member_id(),
        ))

    async def change_person_role(self, ctx: Context, org: str, member_id: str, role: str) -> bool:
        return await self.submit(ChangePersonRole(org=org, ctx=ctx, member_id=member_id, role=validate_role(role)))

    async def remove_person(self, ctx: Context, org: str, member_id: str) -> None:
        await self.submit(RemovePerson(org=org, ctx=ctx, member_id=member_id))

    # -- connected apps --------------------------------------------------------------------------

    async def connect_app(self, ctx: Context, org: str, name: str, *, provider: str, authorization_url: str,
                          token_url: str, client_id: str, client_secret: str, scopes: list[str], scope: str = "all",
                          tokens: AppTokens) -> AppConnected:
        if provider not in APP_PROVIDERS:
            raise ValidationError("provider", f"must be one of {', '.join(APP_PROVIDERS)}")
        # What every refresh will send, checked now: else the first refresh would fail for good.
        oauth.validate_client(validate_claim(client_id, "client_id"), client_secret, oauth.auth_method_for(provider))
        if not isinstance(tokens.access_token, str) or not 1 <= len(tokens.access_token) <= 16_384:
            raise ValidationError("access_token", "must be 1-16384 characters")
        if tokens.refresh_token is not None:
            oauth.validate_refresh_token(tokens.refresh_token)
        provider_name: AppProvider = provider  # type: ignore[assignment]
        return await self.submit(ConnectApp(
            org=org, ctx=ctx, name=validate_name(name), provider=provider_name,
            authorization_url=oauth.validate_endpoint_url(authorization_url, "authorization_url"),
            token_url=oauth.validate_endpoint_url(token_url, "token_url"),
            client_id=client_id, client_secret=client_secret,
            scopes=validate_scopes(scopes), scope=validate_scope(scope), tokens=tokens,
        ))

    async def disconnect_app(self, ctx: Context, org: str, name: str) -> None:
        await self.submit(DisconnectApp(org=org, ctx=ctx, name=validate_name(name)))

    async def app_token(self, ctx: Context, org: str, name: str, *, reason: str = "") -> AppToken:
        """A valid access token of the app, refreshed first when it expires within a minute; recorded as
        `app.token_revealed`. A refusal by the provider marks the connection broken (409); a provider that
        cannot be reached is a 502 and leaves the connection as it was."""
        reveal = RevealAppToken(org=org, ctx=ctx, name=validate_name(name),
                                reason=validate_text(reason, "reason", MAX_REASON_CHARS))
        for _ in range(4):  # another caller's refresh may land between our reveal and our refresh
            answer = await self.submit(reveal)
            if isinstance(answer, AppToken):
                return answer
            async with self._refreshing.setdefault((org, name), asyncio.Lock()):
                again = await self.submit(reveal)  # refreshed by the caller we waited for?
                if isinstance(again, AppToken):
                    return again
                token = await self._refresh(ctx, org, again, reason)
                if token is not None:
                    return token
        raise AppRefreshFailedError(f"connected app {name!r}: the token kept changing while refreshing; try again")

    async def _refresh(self, ctx: Context, org: str, needed: RefreshNeeded, reason: str) -> AppToken | None:
        try:
            # No scope: a refresh asks for what was granted (RFC 6749 6), which a provider may have narrowed.
            fresh = await oauth.refresh_tokens(
                needed.token_url, client_id=needed.client_id, client_secret=needed.client_secret,
                refresh_token=needed.refresh_token, now_ns=self.clock(), scope="",
                auth_method=oauth.auth_method_for(needed.provider),
            )
        except oauth.OAuthError as exc:
            broken = isinstance(exc, oauth.ProviderRefusedError)
            code = exc.error_code if isinstance(exc, oauth.ProviderRefusedError) else type(exc).__name__
            recorded = await self.submit(RecordAppRefreshFailed(
                org=org, ctx=ctx, name=needed.name, token_version=needed.token_version, error=code, broken=broken))
            if not recorded:
                # Another process refreshed meanwhile (a rotated refresh token is refused once spent): its new
                # token is there to be answered, so ask again rather than report a failure.
                return None
            if broken:
                raise AppBrokenError(f"connected app {needed.name!r}: the provider refused the refresh ({code}); "
                                     f"an admin must connect it again") from None
            raise AppRefreshFailedError(f"connected app {needed.name!r}: the provider could not be reached "
                                        f"({code}); try again") from None
        return await self.submit(RecordAppRefresh(
            org=org, ctx=ctx, name=needed.name, token_version=needed.token_version,
            tokens=AppTokens.from_provider(fresh), reason=reason))

    async def org_settings(self, ctx: Context, org: str) -> OrgSettings:
        return await self.submit(ReadOrgSettings(org=org, ctx=ctx))

    async def destroy_due(self, due: list[tuple[str, str]]) -> int:
        """Destroy deleted secrets whose recovery window ended; returns how many were destroyed."""
        destroyed = 0
        for org, name in due:
            try:
                await self.submit(DestroyDue(org=org, ctx=SYSTEM, name=name))
                destroyed += 1
            except NothingDue:
                pass  # restored, re-created or destroyed since the projection was read
        return destroyed

    async def reveal_secret(self, ctx: Context, org: str, name: str, *, reason: str = "",
                            version: int | None = None) -> Revealed:
        return await self.resolve(ctx, org, await self.submit(
            self.reveal_secret_command(ctx, org, name, reason=reason, version=version)))

    async def resolve(self, ctx: Context, org: str, revealed: Revealed) -> Revealed:
        """A revealed reference fetched from its external manager; a failure is recorded
        (`secret.reveal_failed`) and raised. Other reveals pass through."""
        if revealed.external is None:
            return revealed
        try:
            value = await self.external.fetch(revealed.value.decode("utf-8", "replace"))
            try:
                value.decode("utf-8")  # values travel as JSON strings
            except UnicodeDecodeError:
                raise ExternalSecretError("invalid", "the external value is binary, not UTF-8 text") from None
        except LedgerError as exc:
            # The reference itself is sealed configuration: the recorded reason and the answer name the
            # manager, the kind of failure and the manager's error code, never any part of the reference.
            reason = f"{revealed.external}: {failure_text(exc)}"[:MAX_REASON_CHARS]
            await self.submit(RecordRevealFailed(org=org, ctx=ctx, name=revealed.name, version=revealed.version,
                                                 reason=reason))
            if isinstance(exc, ExternalSecretError):
                raise ExternalSecretError(exc.reason, f"secret {revealed.name!r}: {reason}") from None
            raise
        return msgspec.structs.replace(revealed, value=value)

    async def due_rotation_attempts(self, due: list[tuple[str, str]], *,
                                    lease_seconds: int) -> list[tuple[str, RotationStarted]]:
        """(org, attempt) for each due secret it started (generators finish at once; webhooks remain to call)."""
        started = []
        for org, name in due:
            try:
                started.append((org, await self.submit(StartRotation(org=org, ctx=SYSTEM, name=name,
                                                                     lease_seconds=lease_seconds))))
            except NotDue:
                pass  # rotated, reconfigured, deleted or started elsewhere since the projection was read
        return started


MAX_SCOPES = 50
SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,200}$")  # RFC 6749 scope-token characters


def validate_scopes(scopes: list[str]) -> tuple[str, ...]:
    if not isinstance(scopes, list) or len(scopes) > MAX_SCOPES:
        raise ValidationError("scopes", f"must be a list of at most {MAX_SCOPES} scopes")
    for scope in scopes:
        if not isinstance(scope, str) or not SCOPE_TOKEN.fullmatch(scope):
            raise ValidationError("scopes", "each must be 1-200 printable characters without spaces, '\"' or '\\'")
    return tuple(dict.fromkeys(scopes))


__all__ = ("Context", "CreatedKey", "Ledger", "Revealed", "UpsertOutcome")


def _sso_client_id(client_id: str) -> str:
    """A client id the code exchange can send (HTTP Basic: no ':')."""
    oauth.validate_client(validate_claim(client_id, "client_id"), auth_method="client_secret_basic")
    return client_id
