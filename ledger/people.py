"""People of an org, signed in through the org's OpenID Connect provider, and that provider's settings.

An org names one provider (`sso:ORG`: issuer, client id, the name of the keyledger secret holding the
client secret, the email domains allowed). The dashboard runs the sign-in (`ledger/oauth.py` speaks the
protocol) and, once the ID token is verified, calls `SignInPerson`: a person's first sign-in appends
`member.joined` (the org's first person an admin, later ones members) and every sign-in a
`session.started` whose actor is the person. People are one stream per org (`members:ORG`), so a subject
joins once and "the first person" is decided in the writer. A removed person stays removed: signing in
again is refused, and `caller_key` refuses their sessions at once.
"""

from __future__ import annotations

import re
import secrets

import msgspec

from ledger.commands import SYSTEM, Context, envelope, open_version, require_admin
from ledger.errors import GoneError, NotFoundError, PermissionDeniedError, UnauthenticatedError, ValidationError
from ledger.events import (
    Actor,
    MemberJoined,
    MemberRemoved,
    MemberRoleChanged,
    Role,
    SecretRevealed,
    SessionStarted,
    SsoConfigured,
    SsoRemoved,
)
from ledger.model import members_stream, secret_stream, session_stream, sso_stream
from ledger.writer import Decision, WriteView

MEMBER_ID = re.compile(r"^mbr_[0-9a-f]{16}$")
DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
MAX_DOMAINS = 50
MAX_CLAIM_CHARS = 255
MAX_PEOPLE_PER_ORG = 10_000


def new_member_id() -> str:
    return "mbr_" + secrets.token_hex(8)


def validate_domains(domains: list[str]) -> list[str]:
    """Lower-case DNS names, at least one (an org never lets in the whole world by leaving it empty)."""
    if not isinstance(domains, list) or not domains:
        raise ValidationError("allowed_domains", "must list at least one email domain, e.g. example.com")
    if len(domains) > MAX_DOMAINS:
        raise ValidationError("allowed_domains", f"must list at most {MAX_DOMAINS} domains")
    cleaned = []
    for domain in domains:
        if not isinstance(domain, str) or not DOMAIN.fullmatch(domain.strip().lower()):
            raise ValidationError("allowed_domains", "each must be a domain name such as example.com")
        cleaned.append(domain.strip().lower())
    return sorted(set(cleaned))


def email_domain_allowed(email: str, domains: tuple[str, ...]) -> bool:
    """The part after the last '@' is one of the domains, exactly (no subdomains by accident)."""
    local, at, domain = email.rpartition("@")
    return bool(local and at) and domain.lower() in domains


def not_found(member_id: str) -> NotFoundError:
    shown = f" {member_id!r}" if MEMBER_ID.fullmatch(member_id) else ""
    return NotFoundError(f"member{shown} not found")


def person_actor(member_id: str, email: str, subject: str) -> Actor:
    return Actor(key_id=member_id, label=email, kind="person", subject=subject)


class ConfigureSso(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    ctx: Context
    issuer: str
    client_id: str
    client_secret_name: str
    allowed_domains: list[str]

    async def decide(self, view: WriteView) -> Decision[None]:
        await require_admin(view, self.org, self.ctx, "configure single sign-on")
        secret = await view.secret(self.org, self.client_secret_name)
        if secret is None or not secret.exists:
            raise NotFoundError(f"secret {self.client_secret_name!r} (the client secret) not found: store it first")
        state = await view.org_sso(self.org)
        event = SsoConfigured(
            **envelope(  # type: ignore[arg-type]
                view, self.org, sso_stream(self.org), (state.stream_version if state else 0) + 1, self.ctx
            ),
            issuer=self.issuer, client_id=self.client_id, client_secret_name=self.client_secret_name,
            allowed_domains=self.allowed_domains,
        )
        return Decision(events=[event])


class RemoveSso(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    ctx: Context

    async def decide(self, view: WriteView) -> Decision[None]:
        await require_admin(view, self.org, self.ctx, "configure single sign-on")
        state = await view.org_sso(self.org)
        if state is None or not state.configured:
            raise NotFoundError("the org has no single sign-on to remove")
        event = SsoRemoved(**envelope(view, self.org, sso_stream(self.org), state.stream_version + 1, self.ctx))  # type: ignore[arg-type]
        return Decision(events=[event])


class SignedInPerson(msgspec.Struct, frozen=True, kw_only=True):
    member_id: str
    email: str
    role: Role
    joined: bool  # this sign-in was the first


class SignInPerson(msgspec.Struct, frozen=True, kw_only=True):
    """A verified identity signs in: joins on the first time, then starts a dashboard session as the person.
    `ctx` carries the request's source and id; the actor becomes the person."""

    org: str
    ctx: Context
    issuer: str
    subject: str
    email: str
    session_id: str
    new_member_id: str

    def __repr__(self) -> str:
        return f"SignInPerson(org={self.org!r})"

    async def decide(self, view: WriteView) -> Decision[SignedInPerson]:
        sso = await view.org_sso(self.org)
        if sso is None or not sso.configured or sso.issuer.rstrip("/") != self.issuer.rstrip("/"):
            raise UnauthenticatedError("the org does not sign in with this identity provider")
        if not email_domain_allowed(self.email, sso.allowed_domains):
            raise PermissionDeniedError("this email's domain may not sign in to the org")
        if await view.session(self.session_id) is not None:
            raise ValidationError("session_id", "is taken: make a new one")
        members = await view.org_members(self.org)
        person = members.by_subject(self.issuer, self.subject) if members is not None else None
        events: list[MemberJoined | SessionStarted] = []
        version = members.stream_version if members is not None else 0
        if person is None:
            if members is not None and len(members.people) >= MAX_PEOPLE_PER_ORG:
                raise PermissionDeniedError(f"the org has {MAX_PEOPLE_PER_ORG} people, the most it may")
            role: Role = "admin" if members is None or not members.people else "member"
            actor = person_actor(self.new_member_id, self.email, self.subject)
            ctx = msgspec.structs.replace(self.ctx, actor=actor)
            events.append(MemberJoined(
                **envelope(view, self.org, members_stream(self.org), version + 1, ctx),  # type: ignore[arg-type]
                member_id=self.new_member_id, issuer=self.issuer, subject=self.subject, email=self.email, role=role,
            ))
            result = SignedInPerson(member_id=self.new_member_id, email=self.email, role=role, joined=True)
        elif person.removed:
            raise PermissionDeniedError("this person was removed from the org and cannot sign in again")
        else:
            actor = person_actor(person.member_id, self.email, self.subject)
            ctx = msgspec.structs.replace(self.ctx, actor=actor)
            result = SignedInPerson(member_id=person.member_id, email=self.email, role=person.role, joined=False)
        events.append(SessionStarted(
            **envelope(view, self.org, session_stream(self.session_id), 1, ctx),  # type: ignore[arg-type]
            session_id=self.session_id,
        ))
        return Decision(events=list(events), result=result)


class ChangePersonRole(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    ctx: Context
    member_id: str
    role: Role

    async def decide(self, view: WriteView) -> Decision[bool]:
        await require_admin(view, self.org, self.ctx, "change people's roles")
        members = await view.org_members(self.org)
        person = members.by_id(self.member_id) if members is not None else None
        if members is None or person is None or person.removed:
            raise not_found(self.member_id)
        if person.role == self.role:
            return Decision(events=[], result=False)  # nothing changes, nothing recorded
        event = MemberRoleChanged(
            **envelope(view, self.org, members_stream(self.org), members.stream_version + 1, self.ctx),  # type: ignore[arg-type]
            member_id=self.member_id, role=self.role,
        )
        return Decision(events=[event], result=True)


class RemovePerson(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    ctx: Context
    member_id: str

    async def decide(self, view: WriteView) -> Decision[None]:
        await require_admin(view, self.org, self.ctx, "remove people")
        members = await view.org_members(self.org)
        person = members.by_id(self.member_id) if members is not None else None
        if members is None or person is None or person.removed:
            raise not_found(self.member_id)
        event = MemberRemoved(
            **envelope(view, self.org, members_stream(self.org), members.stream_version + 1, self.ctx),  # type: ignore[arg-type]
            member_id=self.member_id,
        )
        return Decision(events=[event])


def validate_claim(value: str, field: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_CLAIM_CHARS or "\0" in value:
        raise ValidationError(field, f"must be 1-{MAX_CLAIM_CHARS} characters")
    return value



class SsoClient(msgspec.Struct, frozen=True, kw_only=True):
    issuer: str
    client_id: str
    client_secret: str

    def __repr__(self) -> str:
        return f"SsoClient(issuer={self.issuer!r}, client_id={self.client_id!r})"


class RevealSsoClient(msgspec.Struct, frozen=True, kw_only=True):
    """The org's provider settings with its client secret, for a code exchange. Opening the secret is a
    reveal like any other: recorded as `secret.revealed` by the system, with the reason."""

    org: str
    request_id: str = ""

    async def decide(self, view: WriteView) -> Decision[SsoClient]:
        sso = await view.org_sso(self.org)
        if sso is None or not sso.configured:
            raise NotFoundError("the org has no single sign-on")
        secret = await view.secret(self.org, sso.client_secret_name)
        if secret is None or not secret.exists or secret.members or secret.external is not None:
            raise NotFoundError(f"the client secret {sso.client_secret_name!r} is gone: store it again")
        if secret.expires_at is not None and view.at >= secret.expires_at:  # as any reveal of it would be
            raise GoneError(f"the client secret {sso.client_secret_name!r} expired: store a new value")
        value = await open_version(view, secret)
        ctx = msgspec.structs.replace(SYSTEM, request_id=self.request_id)
        event = SecretRevealed(
            **envelope(view, self.org, secret_stream(self.org, secret.name), None, ctx),  # type: ignore[arg-type]
            name=secret.name, version=secret.version, reason="single sign-on: code exchange",
        )
        return Decision(events=[event], result=SsoClient(issuer=sso.issuer, client_id=sso.client_id,
                                                         client_secret=value.decode("utf-8", "replace")))
