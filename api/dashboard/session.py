"""The dashboard's sessions: a signed cookie that names a session the ledger recorded.

A session starts when a person signs in with an API key (`session.started`, under that key) or through
the org's identity provider (`session.started` by the person, a member of the org) and ends when they sign
out (`session.ended`). The cookie holds the session id and the time of the last
request, signed with a key derived from the master key, so every server process checks it alike:

- signed out, or the key revoked (the person removed) since: the projections say so, and the session stops at once;
- idle for longer than `session_idle_minutes`: the signed time says so (each request renews it);
- 12 hours after sign-in, however active.

Forms carry a token bound to the session (HMAC of its id); a POST without it is refused before it
does anything. The sign-in form, which has no session yet, carries the value of a cookie of its own
instead (double submit); both cookies are SameSite=Strict.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from typing import Any

import msgspec
from litestar import Request

from api.auth import Principal, request_context
from ledger.events import Actor
from projections.reader import Projections

SESSION_COOKIE = "keyledger_session"
SIGN_IN_COOKIE = "keyledger_sign_in"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{20,64}$")
_NS_PER_MINUTE = 60 * 1_000_000_000
_CLOCK_SKEW_NS = 5 * 1_000_000_000  # processes on several hosts may disagree by this much
SESSION_MAX_NS = 12 * 60 * _NS_PER_MINUTE  # however active, a session ends 12 hours after sign-in
PERSON_ID_PREFIX = "mbr_"  # a session started by a person (single sign-on) rather than an API key


class SignedIn(msgspec.Struct, frozen=True, kw_only=True):
    """The person behind a request: the key they signed in with, and their session."""

    principal: Principal
    session_id: str
    csrf_token: str
    cookie: str  # the renewed cookie value, sent back with the answer

    @property
    def is_admin(self) -> bool:
        return self.principal.role == "admin"


class SessionSigner:
    """Makes and checks session cookies and form tokens with one derived key."""

    def __init__(self, key: bytes, idle_minutes: float) -> None:
        self._key = key
        self.idle_ns = int(idle_minutes * _NS_PER_MINUTE)

    def _mac(self, purpose: bytes, text: str) -> str:
        digest = hmac.new(self._key, purpose + b"\0" + text.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def cookie(self, session_id: str, seen_at: int) -> str:
        body = f"{session_id}.{seen_at}"
        return f"{body}.{self._mac(b'session', body)}"

    def session_id(self, cookie: str, now: int) -> str | None:
        """The session the cookie names, if its signature holds and it has not been idle too long."""
        session_id, _, rest = cookie.partition(".")
        seen_text, _, mac = rest.partition(".")
        if not _SESSION_ID.match(session_id) or not seen_text.isascii() or not seen_text.isdigit():
            return None
        if len(seen_text) > 20 or not hmac.compare_digest(mac, self._mac(b"session", f"{session_id}.{seen_text}")):
            return None
        seen_at = int(seen_text)
        if now - seen_at > self.idle_ns or seen_at > now + _CLOCK_SKEW_NS:
            return None
        return session_id

    def csrf_token(self, session_id: str) -> str:
        return self._mac(b"csrf", session_id)


def new_token() -> str:
    """A session id or a sign-in form's token: 32 url-safe characters, 192 random bits."""
    return secrets.token_urlsafe(24)


def signer_of(request: Request[Any, Any, Any]) -> SessionSigner:
    signer: SessionSigner = request.app.state.session_signer
    return signer


async def signed_in(request: Request[Any, Any, Any], projections: Projections, now: int) -> SignedIn | None:
    """The request's session and key, when the session is live and the key still active."""
    signer = signer_of(request)
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    session_id = signer.session_id(cookie, now)
    if session_id is None:
        return None
    session = await projections.get_session(session_id)
    if session is None or session.ended_at is not None or now - session.started_at > SESSION_MAX_NS:
        return None
    if session.key_id.startswith(PERSON_ID_PREFIX):
        # A person (single sign-on): removed since, and the session stops at once in every process.
        person = await projections.get_person(session.org, session.key_id)
        if person is None or person.removed_at is not None:
            return None
        actor = Actor(key_id=person.member_id, label=person.email, kind="person", subject=person.subject)
        principal = Principal(org=person.org, key_id=person.member_id, label=person.email, role=person.role,
                              scope="all", ctx=request_context(request, actor))
    else:
        key = await projections.get_key(session.org, session.key_id)
        if key is None or key.revoked_at is not None:
            return None
        actor = Actor(key_id=key.key_id, label=key.label, kind="api_key")
        principal = Principal(org=key.org, key_id=key.key_id, label=key.label, role=key.role, scope=key.scope,
                              ctx=request_context(request, actor))
    return SignedIn(principal=principal, session_id=session_id, csrf_token=signer.csrf_token(session_id),
                    cookie=signer.cookie(session_id, now))


def csrf_matches(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())
