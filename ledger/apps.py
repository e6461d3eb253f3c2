"""Connected apps: OAuth 2.0 connections whose access tokens keyledger hands out, refreshing them first.

A connection is the stream `app:ORG/NAME`. Its client secret and tokens are one sealed payload under a
fresh data key per token version (associated data names `/app/NAME`, which no secret name can be), stored
beside the event like a secret's value and committed to by `sealed_sha256`: no token is ever in an event
body. A token reveal is decided in the writer: a token that is still good is answered with an
`app.token_revealed` event; one that expires within the margin comes back as `RefreshNeeded` (nothing
recorded), the service calls the provider outside the writer, and `RecordAppRefresh` commits the new
tokens and the reveal together, unless another caller refreshed first (then it answers None and the
service asks again). A refusal by the provider is `app.refresh_failed` with `broken`; the connection then
answers 409 until an admin connects it again.
"""

from __future__ import annotations

import msgspec

from ledger import oauth
from ledger.commands import Context, caller_key, envelope, require_admin, seal_new
from ledger.crypto import sealed_sha256
from ledger.errors import AlreadyExistsError, AppBrokenError, NotFoundError, RevealDeniedError
from ledger.events import (
    AppConnected,
    AppDisconnected,
    AppProvider,
    AppRefreshFailed,
    AppTokenDenied,
    AppTokenRefreshed,
    AppTokenRevealed,
    Scope,
)
from ledger.model import AppState, app_stream, scope_covers
from ledger.writer import Decision, WriteView

REFRESH_MARGIN_NS = 60 * 1_000_000_000  # a token expiring within this is refreshed before it is handed out
MAX_ERROR_CHARS = 64


def app_aad_name(name: str) -> str:
    """The name an app's payload is sealed under: a secret name cannot contain '/', so no secret has it."""
    return f"/app/{name}"


class AppTokens(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens from a provider (a code exchange or a refresh)."""

    access_token: str
    token_type: str = "Bearer"
    refresh_token: str | None = None
    expires_at: int | None = None  # UTC ns

    def __repr__(self) -> str:
        return f"AppTokens(expires_at={self.expires_at!r})"

    @classmethod
    def from_provider(cls, tokens: oauth.TokenSet) -> AppTokens:
        """What a code exchange or a refresh answered, without its scope and ID token."""
        return cls(access_token=tokens.access_token, token_type=tokens.token_type,
                   refresh_token=tokens.refresh_token, expires_at=tokens.expires_at)


class AppPayload(msgspec.Struct, frozen=True, kw_only=True):
    """What is sealed: the client secret and the current tokens."""

    client_secret: str
    access_token: str
    token_type: str
    refresh_token: str | None = None

    def __repr__(self) -> str:
        return "AppPayload(...)"


class AppToken(msgspec.Struct, frozen=True, kw_only=True):
    """An access token handed out."""

    name: str
    access_token: str
    token_type: str
    expires_at: int | None
    token_version: int
    refreshed: bool = False

    def __repr__(self) -> str:
        return f"AppToken(name={self.name!r}, token_version={self.token_version})"


class RefreshNeeded(msgspec.Struct, frozen=True, kw_only=True):
    """What the service needs to refresh outside the writer."""

    name: str
    provider: AppProvider
    token_url: str
    client_id: str
    client_secret: str
    refresh_token: str
    token_version: int

    def __repr__(self) -> str:
        return f"RefreshNeeded(name={self.name!r}, token_version={self.token_version})"


async def open_payload(view: WriteView, state: AppState) -> AppPayload:
    row = await view.data_key(state.data_key_id)
    if row is None:
        raise NotFoundError(f"connected app {state.name!r} has no stored tokens")
    plain = view.opener(row).open(state.sealed, state.org, app_aad_name(state.name), state.token_version)
    return msgspec.json.decode(plain, type=AppPayload)


def connected(state: AppState | None, name: str) -> AppState:
    if state is None or not state.connected:
        raise NotFoundError(f"connected app {name!r} not found")
    return state


class ConnectApp(msgspec.Struct, frozen=True, kw_only=True):
    """Connect (or connect again, when broken or disconnected) an app with tokens already obtained."""

    org: str
    ctx: Context
    name: str
    provider: AppProvider
    authorization_url: str
    token_url: str
    client_id: str
    client_secret: str
    scopes: tuple[str, ...]
    scope: Scope
    tokens: AppTokens

    def __repr__(self) -> str:
        return f"ConnectApp(org={self.org!r}, name={self.name!r})"

    async def decide(self, view: WriteView) -> Decision[AppConnected]:
        await require_admin(view, self.org, self.ctx, "connect and disconnect apps")
        state = await view.app(self.org, self.name)
        if state is not None and state.connected and not state.broken:
            raise AlreadyExistsError(f"app {self.name!r} is connected: disconnect it first")
        version = (state.token_version if state else 0) + 1
        payload = AppPayload(client_secret=self.client_secret, access_token=self.tokens.access_token,
                             token_type=self.tokens.token_type, refresh_token=self.tokens.refresh_token)
        data_key_id, sealed, row = seal_new(view, msgspec.json.encode(payload), self.org, app_aad_name(self.name),
                                            version)
        event = AppConnected(
            **envelope(  # type: ignore[arg-type]
                view, self.org, app_stream(self.org, self.name), (state.stream_version if state else 0) + 1, self.ctx
            ),
            name=self.name, provider=self.provider, authorization_url=self.authorization_url,
            token_url=self.token_url, client_id=self.client_id, scopes=list(self.scopes), scope=self.scope,
            token_version=version, data_key_id=data_key_id, sealed_sha256=sealed_sha256(sealed),
            expires_at=self.tokens.expires_at, refreshable=self.tokens.refresh_token is not None,
        )
        dropped = [state.data_key_id] if state is not None and state.data_key_id else []
        return Decision(events=[event], sealed=[sealed], data_keys=[row], drop_data_keys=dropped, result=event)


class RevealAppToken(msgspec.Struct, frozen=True, kw_only=True):
    """Hand out the access token, or say that it must be refreshed first (recording nothing)."""

    org: str
    ctx: Context
    name: str
    reason: str = ""
    margin_ns: int = REFRESH_MARGIN_NS

    def __repr__(self) -> str:
        return f"RevealAppToken(org={self.org!r}, name={self.name!r})"

    async def decide(self, view: WriteView) -> Decision[AppToken | RefreshNeeded]:
        caller = await caller_key(view, self.org, self.ctx)
        state = connected(await view.app(self.org, self.name), self.name)
        assert caller is not None  # caller_key refuses the admin token here
        if not scope_covers(caller.scope, state.scope):
            reason = f"key scope {caller.scope} does not cover app scope {state.scope}"
            denied = AppTokenDenied(
                **envelope(view, self.org, app_stream(self.org, self.name), None, self.ctx),  # type: ignore[arg-type]
                name=self.name, reason=reason,
            )
            return Decision(events=[denied], error=RevealDeniedError(f"app {self.name!r}: {reason}"))
        if state.broken:
            raise AppBrokenError(f"connected app {self.name!r} is broken: an admin must connect it again")
        payload = await open_payload(view, state)
        if state.expires_at is not None and state.expires_at - view.at <= self.margin_ns:
            if payload.refresh_token is not None:
                return Decision(events=[], result=RefreshNeeded(
                    name=self.name, provider=state.provider, token_url=state.token_url, client_id=state.client_id,
                    client_secret=payload.client_secret, refresh_token=payload.refresh_token,
                    token_version=state.token_version,
                ))
            if state.expires_at <= view.at:
                failed = AppRefreshFailed(
                    **envelope(  # type: ignore[arg-type]
                        view, self.org, app_stream(self.org, self.name), state.stream_version + 1, self.ctx
                    ),
                    name=self.name, error="expired_without_refresh_token", broken=True,
                )
                return Decision(events=[failed], error=AppBrokenError(
                    f"connected app {self.name!r} has an expired token and no refresh token: connect it again"))
        revealed = AppTokenRevealed(
            **envelope(view, self.org, app_stream(self.org, self.name), None, self.ctx),  # type: ignore[arg-type]
            name=self.name, token_version=state.token_version, reason=self.reason,
        )
        return Decision(events=[revealed], result=AppToken(
            name=self.name, access_token=payload.access_token, token_type=payload.token_type,
            expires_at=state.expires_at, token_version=state.token_version,
        ))


class RecordAppRefresh(msgspec.Struct, frozen=True, kw_only=True):
    """Commit refreshed tokens and the reveal they serve (mending the app if a refresh at the same version was
    recorded as failed meanwhile); None when another caller refreshed first."""

    org: str
    ctx: Context
    name: str
    token_version: int  # the version the refresh started from
    tokens: AppTokens
    reason: str = ""

    def __repr__(self) -> str:
        return f"RecordAppRefresh(org={self.org!r}, name={self.name!r})"

    async def decide(self, view: WriteView) -> Decision[AppToken | None]:
        await caller_key(view, self.org, self.ctx)
        state = connected(await view.app(self.org, self.name), self.name)
        # A failure recorded at this same version does not stop it: with a provider that rotates refresh
        # tokens, another process's refresh, refused because this one spent the token first, may commit first.
        # These tokens are the provider's newest; dropping them would leave the app broken for nothing.
        if state.token_version != self.token_version:
            return Decision(events=[], result=None)
        old = await open_payload(view, state)
        refresh_token = self.tokens.refresh_token or old.refresh_token  # a provider may keep the old one
        payload = AppPayload(client_secret=old.client_secret, access_token=self.tokens.access_token,
                             token_type=self.tokens.token_type, refresh_token=refresh_token)
        version = state.token_version + 1
        data_key_id, sealed, row = seal_new(view, msgspec.json.encode(payload), self.org, app_aad_name(self.name),
                                            version)
        stream = app_stream(self.org, self.name)
        refreshed = AppTokenRefreshed(
            **envelope(view, self.org, stream, state.stream_version + 1, self.ctx),  # type: ignore[arg-type]
            name=self.name, token_version=version, data_key_id=data_key_id, sealed_sha256=sealed_sha256(sealed),
            expires_at=self.tokens.expires_at, refreshable=refresh_token is not None,
        )
        revealed = AppTokenRevealed(
            **envelope(view, self.org, stream, None, self.ctx),  # type: ignore[arg-type]
            name=self.name, token_version=version, reason=self.reason,
        )
        return Decision(
            events=[refreshed, revealed], sealed=[sealed, None], data_keys=[row], drop_data_keys=[state.data_key_id],
            result=AppToken(name=self.name, access_token=payload.access_token, token_type=payload.token_type,
                            expires_at=self.tokens.expires_at, token_version=version, refreshed=True),
        )


class RecordAppRefreshFailed(msgspec.Struct, frozen=True, kw_only=True):
    """Record a refresh that failed; False (nothing recorded) when the tokens changed meanwhile."""

    org: str
    ctx: Context
    name: str
    token_version: int
    error: str
    broken: bool

    async def decide(self, view: WriteView) -> Decision[bool]:
        await caller_key(view, self.org, self.ctx)
        state = connected(await view.app(self.org, self.name), self.name)
        if state.token_version != self.token_version:
            return Decision(events=[], result=False)
        event = AppRefreshFailed(
            **envelope(  # type: ignore[arg-type]
                view, self.org, app_stream(self.org, self.name), state.stream_version + 1, self.ctx
            ),
            name=self.name, error=self.error[:MAX_ERROR_CHARS], broken=self.broken,
        )
        return Decision(events=[event], result=True)


class DisconnectApp(msgspec.Struct, frozen=True, kw_only=True):
    """Forget a connection: its sealed tokens' data key is deleted in the same transaction."""

    org: str
    ctx: Context
    name: str

    async def decide(self, view: WriteView) -> Decision[None]:
        await require_admin(view, self.org, self.ctx, "connect and disconnect apps")
        state = connected(await view.app(self.org, self.name), self.name)
        event = AppDisconnected(
            **envelope(  # type: ignore[arg-type]
                view, self.org, app_stream(self.org, self.name), state.stream_version + 1, self.ctx
            ),
            name=self.name,
        )
        return Decision(events=[event], drop_data_keys=[state.data_key_id])
