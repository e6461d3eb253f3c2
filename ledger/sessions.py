"""Dashboard sessions: signing in (an API key starts a session) and signing out, as events.

The dashboard makes the session id (url-safe random text) and calls `Ledger.start_session` and
`Ledger.end_session`; there is no HTTP route of their own. A session's stream is `session:ID`, so an id
is started once, whatever the org. Ending needs no active key (a key revoked since must still sign
out); it needs the session's org, and ends a session once.
"""

from __future__ import annotations

import re

import msgspec

from ledger.commands import Context, caller_key, envelope
from ledger.errors import AlreadyExistsError, ValidationError
from ledger.events import SessionEnded, SessionStarted
from ledger.model import session_stream
from ledger.writer import Decision, WriteView

SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{20,64}$")


def validate_session_id(session_id: str) -> str:
    if not isinstance(session_id, str) or not SESSION_ID.fullmatch(session_id):  # fullmatch: no final "\n"
        raise ValidationError("session_id", "must be 20-64 characters of A-Z, a-z, 0-9, '-' and '_'")
    return session_id


class StartSession(msgspec.Struct, frozen=True, kw_only=True):
    """Record a sign-in: the caller (an active API key of the org) starts the session."""

    org: str
    ctx: Context
    session_id: str

    def __repr__(self) -> str:
        return f"StartSession(org={self.org!r})"

    async def decide(self, view: WriteView) -> Decision[None]:
        await caller_key(view, self.org, self.ctx)
        if await view.session(self.session_id) is not None:
            raise AlreadyExistsError("a session with this id exists already: make a new id")
        event = SessionStarted(
            **envelope(view, self.org, session_stream(self.session_id), 1, self.ctx),  # type: ignore[arg-type]
            session_id=self.session_id,
        )
        return Decision(events=[event])


class EndSession(msgspec.Struct, frozen=True, kw_only=True):
    """Record a sign-out; False (and nothing recorded) when the org has no such session, or it ended."""

    org: str
    ctx: Context
    session_id: str

    def __repr__(self) -> str:
        return f"EndSession(org={self.org!r})"

    async def decide(self, view: WriteView) -> Decision[bool]:
        state = await view.session(self.session_id)
        if state is None or state.org != self.org or state.ended:
            return Decision(events=[], result=False)
        event = SessionEnded(
            **envelope(  # type: ignore[arg-type]
                view, self.org, session_stream(self.session_id), state.stream_version + 1, self.ctx
            ),
            session_id=self.session_id, reason="signed_out",
        )
        return Decision(events=[event], result=True)
