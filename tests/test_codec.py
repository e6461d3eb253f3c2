"""The event codec: frozen v1 bytes decode forever and re-encode to the very same bytes.

The fixtures in tests/fixtures/events_v1 were written once by tests/fixtures/make_event_fixtures.py
and are never regenerated: they stand for bytes an older version stored and hashed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.codec import decode_event, encode_event
from ledger.errors import IntegrityError
from ledger.events import (
    EVENT_TYPES,
    Actor,
    ApiKeyCreated,
    ApiKeyRevoked,
    AppConnected,
    AppDisconnected,
    AppRefreshFailed,
    AppTokenDenied,
    AppTokenRefreshed,
    AppTokenRevealed,
    Event,
    MasterKeyRotated,
    MemberJoined,
    MemberRemoved,
    MemberRoleChanged,
    OrgCreated,
    OrgSettingsChanged,
    SecretCreated,
    SecretDeleted,
    SecretDestroyed,
    SecretMemberAdded,
    SecretMemberRemoved,
    SecretMemberStateChanged,
    SecretMemberUpdated,
    SecretPolicyChanged,
    SecretPoolConfigured,
    SecretRestored,
    SecretRevealDenied,
    SecretRevealed,
    SecretRevealFailed,
    SecretRolledBack,
    SecretRotated,
    SecretRotationConfigured,
    SecretRotationFailed,
    SecretRotationStarted,
    SecretUpdated,
    SecretVersionDestroyed,
    SessionEnded,
    SessionStarted,
    Source,
    SshKeyAdded,
    SshKeyRemoved,
    SsoConfigured,
    SsoRemoved,
    event_type,
)
from ledger.generator import GeneratorSpec

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "events_v1"
AT = 1_767_225_600_123_456_789
SECOND = 1_000_000_000
SYSTEM = Actor(key_id="system", label="keyledger", kind="system")

ALL_TAGS = sorted(str(cls.__struct_config__.tag) for cls in EVENT_TYPES)

# What each frozen fixture holds: its class and a few fields, written out here independently of the
# script that produced the bytes, so a change to either side is caught.
EXPECTED: dict[str, tuple[type[Event], dict[str, Any]]] = {
    "org.created": (OrgCreated, {"org": "acme", "stream": "org:acme", "stream_version": 1, "at": AT,
                                 "actor": Actor(key_id="admin", label="admin token", kind="admin"),
                                 "request_id": "req-1", "source": Source()}),
    "api_key.created": (ApiKeyCreated, {"stream": "key:key_0123456789abcdef", "key_id": "key_0123456789abcdef",
                                        "label": "deploy bot", "role": "member", "scope": "agents",
                                        "key_sha256": "a" * 64, "at": AT + 1,
                                        "source": Source(address="203.0.113.7", user_agent="keyledger-cli/0.1")}),
    "api_key.revoked": (ApiKeyRevoked, {"key_id": "key_0123456789abcdef", "stream_version": 2, "at": AT + 2}),
    "secret.created": (SecretCreated, {"name": "OPENAI_API_KEY", "version": 1, "scope": "agents",
                                       "category": "provider", "description": "OpenAI key for the agents",
                                       "data_key_id": "dek_00112233445566778899aabb", "sealed_sha256": "a" * 64,
                                       "stream": "secret:acme/OPENAI_API_KEY", "stream_version": 1,
                                       "actor": Actor(key_id="key_0123456789abcdef", label="deploy bot")}),
    "secret.updated": (SecretUpdated, {"name": "OPENAI_API_KEY", "version": 2, "scope": "all",
                                       "description": "rotated", "data_key_id": "dek_ffeeddccbbaa998877665544",
                                       "sealed_sha256": "0123456789abcdef" * 4, "stream_version": 2}),
    "secret.deleted": (SecretDeleted, {"name": "OPENAI_API_KEY", "version": 2, "stream_version": 3,
                                       "at": AT + 7}),
    "secret.revealed": (SecretRevealed, {"name": "OPENAI_API_KEY", "version": 2, "stream_version": None,
                                         "key_scope": "agents", "reason": "nightly job"}),
    "secret.reveal_denied": (SecretRevealDenied, {"version": 2, "stream_version": None, "key_scope": "tools",
                                                  "secret_scope": "agents", "request_reason": "debugging"}),
    "master_key.rotated": (MasterKeyRotated, {"old_kek_id": "kek_0011223344556677",
                                              "new_kek_id": "kek_8899aabbccddeeff", "data_keys": 2,
                                              "actor": Actor(key_id="system", label="keyledger", kind="system")}),
    "secret.version_destroyed": (SecretVersionDestroyed, {"name": "OPENAI_API_KEY", "version": 1,
                                                          "data_key_id": "dek_00112233445566778899aabb",
                                                          "stream_version": 4}),
    "secret.rolled_back": (SecretRolledBack, {"version": 3, "from_version": 2, "expires_at": AT + 100,
                                              "data_key_id": "dek_0123456789abcdef01234567"}),
    "secret.restored": (SecretRestored, {"version": 4, "from_version": 3, "expires_at": msgspec.UNSET,
                                         "stream_version": 7}),
    "secret.destroyed": (SecretDestroyed, {"versions": [2, 3, 4], "reason": "recovery window ended",
                                           "actor": Actor(key_id="system", label="keyledger", kind="system")}),
    "org.settings_changed": (OrgSettingsChanged, {"recovery_window_days": 7, "stream": "org:acme"}),
    # Added with rotation, reveal policies, external references and pools.
    "secret.rotation_configured": (SecretRotationConfigured, {
        "name": "STRIPE_SECRET_KEY", "stream": "secret:acme/STRIPE_SECRET_KEY", "stream_version": 2,
        "interval_seconds": 30 * 86_400,
        "rotator": GeneratorSpec(length=48, alphabet="alphanumeric", prefix="sk_live_"),
        "next_due_at": AT + 16 + 30 * 86_400 * SECOND}),
    "secret.rotation_started": (SecretRotationStarted, {
        "name": "GITHUB_APP_TOKEN", "stream_version": 3, "attempt": 1, "rotator": "webhook",
        "lease_until": AT + 17 + 300 * SECOND, "call_id": "rot_8d3f4c37dca554f9801bdce5", "actor": SYSTEM}),
    "secret.rotation_failed": (SecretRotationFailed, {
        "name": "GITHUB_APP_TOKEN", "stream_version": 4, "attempt": 1, "reason": "webhook answered HTTP 503",
        "next_attempt_at": AT + 18 + 60 * SECOND}),
    "secret.rotated": (SecretRotated, {
        "name": "GITHUB_APP_TOKEN", "version": 2, "stream_version": 6, "scope": "tools", "category": "tool",
        "data_key_id": "dek_c021b527c5d116f7f46f8ef6",
        "sealed_sha256": "f42546d5ecdd452509808b2d6d0413b5a738c70a793b99ccf8ed6f423aac83d3",
        "rotator": "webhook", "attempt": 2, "expires_at": msgspec.UNSET, "external": msgspec.UNSET}),
    "secret.reveal_failed": (SecretRevealFailed, {
        "name": "DB_PASSWORD", "version": 1, "stream_version": None,
        "reason": "aws-sm: AccessDeniedException (HTTP 400)"}),
    "secret.policy_changed": (SecretPolicyChanged, {
        "name": "OPENAI_API_KEY", "stream_version": 10, "key_ids": ["key_0123456789abcdef"],
        "labels": ["deploy-*"], "roles": ["admin"], "actor": Actor(key_id="admin", label="admin token", kind="admin")}),
    "secret.member_added": (SecretMemberAdded, {
        "name": "ANTHROPIC_API_KEY", "member": "k2", "label": "team b", "member_version": 1,
        "data_key_id": "dek_e4e2bf0db38b634ca3675433",
        "sealed_sha256": "976b6ff921d41625662a66166afa8c2ad2489dd146b7f4f036d91efb85b6ca71", "stream_version": 2}),
    "secret.member_updated": (SecretMemberUpdated, {
        "member": "k2", "member_version": 2, "data_key_id": "dek_3b677f10efe155276d111394",
        "sealed_sha256": "6fc00dff6b5b447ed24323665c0c900f23237b324bc8b7c190faabadac39c771",
        "dropped_data_key_id": "dek_e4e2bf0db38b634ca3675433", "stream_version": 3}),
    "secret.member_state_changed": (SecretMemberStateChanged, {
        "member": "k2", "state": "disabled", "reason": "rate limited (HTTP 429)", "stream_version": 4}),
    "secret.member_removed": (SecretMemberRemoved, {
        "name": "ANTHROPIC_API_KEY", "member": "k1", "data_key_id": "dek_eb1e7f2f984d36535f10aa67",
        "stream_version": 5}),
    "secret.pool_configured": (SecretPoolConfigured, {
        "name": "ANTHROPIC_API_KEY", "selection": "least_recent", "stream_version": 6, "at": AT + 27}),
    # Added with SSH keys and dashboard sessions.
    "ssh_key.added": (SshKeyAdded, {
        "stream": "ssh_keys:acme", "stream_version": 1, "ssh_key_id": "ssh_5f0c1e2d3b4a6978", "label": "dev laptop",
        "algorithm": "ssh-ed25519", "bits": 256, "fingerprint": "SHA256:rS931cVjE9X4xlDiT0DGptW4x3cBJxzUsB1X30fvYo8",
        "comment": "dev@laptop",
        "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBqFGgdkUyyrWLm8iR7InEnhioKizdhaFkZm6wNgNXy5 dev@laptop",
        "actor": Actor(key_id="key_0123456789abcdef", label="deploy bot"), "at": AT + 28}),
    "ssh_key.removed": (SshKeyRemoved, {
        "stream": "ssh_keys:acme", "stream_version": 2, "ssh_key_id": "ssh_5f0c1e2d3b4a6978",
        "actor": Actor(key_id="admin", label="admin token", kind="admin")}),
    "session.started": (SessionStarted, {
        "stream": "session:q8Xz3LhT0vR5bN2mK7yW1cJ4", "stream_version": 1, "session_id": "q8Xz3LhT0vR5bN2mK7yW1cJ4",
        "actor": Actor(key_id="key_0123456789abcdef", label="deploy bot"), "request_id": "req-31"}),
    "session.ended": (SessionEnded, {
        "stream": "session:q8Xz3LhT0vR5bN2mK7yW1cJ4", "stream_version": 2, "session_id": "q8Xz3LhT0vR5bN2mK7yW1cJ4",
        "reason": "signed_out", "at": AT + 31}),
    # Added with single sign-on for people and connected apps.
    "sso.configured": (SsoConfigured, {
        "stream": "sso:acme", "issuer": "https://login.example.com", "client_id": "keyledger-acme",
        "client_secret_name": "SSO_CLIENT_SECRET", "allowed_domains": ["acme.example"]}),
    "sso.removed": (SsoRemoved, {"stream": "sso:acme", "stream_version": 2}),
    "member.joined": (MemberJoined, {
        "stream": "members:acme", "member_id": "mbr_6a1f0e9d2c3b4a58", "subject": "248289761001",
        "email": "ada@acme.example", "role": "admin",
        "actor": Actor(key_id="mbr_6a1f0e9d2c3b4a58", label="ada@acme.example", kind="person",
                       subject="248289761001")}),
    "member.role_changed": (MemberRoleChanged, {"member_id": "mbr_6a1f0e9d2c3b4a58", "role": "member"}),
    "member.removed": (MemberRemoved, {"member_id": "mbr_6a1f0e9d2c3b4a58", "stream_version": 3}),
    "app.connected": (AppConnected, {
        "stream": "app:acme/github", "name": "github", "provider": "github", "scopes": ["repo", "read:org"],
        "scope": "tools", "token_version": 1, "refreshable": True, "client_id": "Iv1.8a61f9b3a7aba766"}),
    "app.token_refreshed": (AppTokenRefreshed, {"token_version": 2, "data_key_id": "dek_0f1e2d3c4b5a69788796a5b4"}),
    "app.token_revealed": (AppTokenRevealed, {"stream_version": None, "token_version": 2,
                                              "reason": "nightly sync"}),
    "app.refresh_failed": (AppRefreshFailed, {"error": "invalid_grant", "broken": True}),
    "app.disconnected": (AppDisconnected, {"name": "github", "stream_version": 4}),
    "app.token_denied": (AppTokenDenied, {"stream_version": None,
                                          "reason": "key scope agents does not cover app scope tools"}),
}


def fixture_bytes(tag: str) -> bytes:
    return (FIXTURES / f"{tag}.json").read_bytes()


def test_every_event_type_has_a_frozen_fixture() -> None:
    """A new event type must come with a fixture (run make_event_fixtures.py), and no fixture is orphaned."""
    on_disk = sorted(path.name.removesuffix(".json") for path in FIXTURES.glob("*.json"))
    assert on_disk == ALL_TAGS
    assert sorted(EXPECTED) == ALL_TAGS


def test_event_tags_are_unique_and_dotted() -> None:
    assert len(set(ALL_TAGS)) == len(EVENT_TYPES)
    for tag in ALL_TAGS:
        assert tag.count(".") == 1 and tag == tag.lower(), tag


@pytest.mark.parametrize("tag", ALL_TAGS)
def test_frozen_fixture_decodes_and_reencodes_to_the_same_bytes(tag: str) -> None:
    stored = fixture_bytes(tag)
    event = decode_event(stored)
    cls, fields = EXPECTED[tag]
    assert type(event) is cls
    assert event_type(event) == tag
    assert json.loads(stored)["type"] == tag
    assert event.org == "acme"
    for name, value in fields.items():
        assert getattr(event, name) == value, name
    # The hash chain covers stored bytes; deterministic encoding keeps old bytes reproducible.
    assert encode_event(event) == stored


# Fields added after these events were first stored: absent from the frozen bytes, so they must decode
# as UNSET and never be encoded, or the old bytes (and the hash chain over them) would change.
_ADDED_LATER: dict[str, tuple[str, ...]] = {
    "secret.created": ("external",),
    "secret.updated": ("external",),
    "secret.rolled_back": ("external",),
    "secret.restored": ("external",),
    "secret.revealed": ("member", "external"),
}


@pytest.mark.parametrize("tag", sorted(_ADDED_LATER))
def test_old_fixture_decodes_added_fields_as_unset_and_reencodes_the_same(tag: str) -> None:
    stored = fixture_bytes(tag)
    event = decode_event(stored)
    for name in _ADDED_LATER[tag]:
        assert f'"{name}"'.encode() not in stored, name
        assert getattr(event, name) is msgspec.UNSET, name
    assert encode_event(event) == stored


def test_revealed_with_member_round_trips_and_encodes_the_member() -> None:
    old = decode_event(fixture_bytes("secret.revealed"))
    assert isinstance(old, SecretRevealed)
    event = msgspec.structs.replace(old, member="k2")
    body = encode_event(event)
    assert b'"member":"k2"' in body
    assert b'"external"' not in body  # still UNSET: not encoded
    decoded = decode_event(body)
    assert type(decoded) is SecretRevealed
    assert decoded == event and decoded.member == "k2"
    assert encode_event(decoded) == body
    assert body != fixture_bytes("secret.revealed")


def test_external_on_a_value_event_round_trips() -> None:
    event = msgspec.structs.replace(decode_event(fixture_bytes("secret.created")), external="aws-sm")
    body = encode_event(event)
    assert b'"external":"aws-sm"' in body
    assert decode_event(body) == event and encode_event(decode_event(body)) == body


def test_unknown_tag_is_an_integrity_error() -> None:
    body = json.loads(fixture_bytes("org.created"))
    body["type"] = "org.renamed"
    with pytest.raises(IntegrityError, match="undecodable event body"):
        decode_event(json.dumps(body).encode())


_CREATED = "secret.created"
_UNDECODABLE: dict[str, Any] = {
    "empty": lambda _: b"",
    "not json": lambda _: b"not json",
    "a list": lambda _: b"[]",
    "no fields": lambda _: b"{}",
    "envelope missing": lambda _: b'{"type": "org.created"}',
    "no tag": lambda _: b'{"org":"acme","stream":"org:acme","stream_version":1,"at":1,"actor":{"key_id":"k"}}',
    "truncated": lambda good: good[:-1],
    "wrong field type": lambda good: good.replace(b'"version":1', b'"version":"1"'),
    "bad literal": lambda good: good.replace(b'"scope":"agents"', b'"scope":"everyone"'),
}


@pytest.mark.parametrize("case", sorted(_UNDECODABLE))
def test_undecodable_bodies_are_integrity_errors(case: str) -> None:
    good = fixture_bytes(_CREATED)
    body = _UNDECODABLE[case](good)
    assert body != good
    with pytest.raises(IntegrityError, match="undecodable event body"):
        decode_event(body)


def test_bug_invalid_utf8_body_is_an_integrity_error() -> None:
    body = fixture_bytes(_CREATED).replace(b"OpenAI", b"Open\xff")
    with pytest.raises(IntegrityError, match="undecodable event body"):
        decode_event(body)


def test_bug_decode_error_message_names_no_content() -> None:
    """codec.decode_event promises 'an IntegrityError that names no content'; msgspec's text quotes values."""
    marker = "zz-stored-content-zz"
    body = fixture_bytes("secret.created").replace(b'"scope":"agents"', f'"scope":"{marker}"'.encode())
    with pytest.raises(IntegrityError) as info:
        decode_event(body)
    assert marker not in str(info.value)


def test_encoder_is_deterministic_for_equal_events() -> None:
    actor = Actor(key_id="key_1", label="ci")
    first = SecretRevealed(
        org="acme", stream="secret:acme/DB", stream_version=None, at=AT, actor=actor,
        name="DB", version=3, reason="deploy",
    )
    # The same event built with its keyword arguments in another order, and from copies of the parts.
    second = SecretRevealed(
        reason="deploy", version=3, name="DB", actor=Actor(label="ci", key_id="key_1"), at=AT,
        stream_version=None, stream="secret:acme/DB", org="acme",
    )
    assert first == second and first is not second
    assert encode_event(first) == encode_event(second) == encode_event(first)
    assert encode_event(msgspec.structs.replace(first, reason="other")) != encode_event(first)


_text = st.text(max_size=40)
_maybe_text = st.one_of(st.just(msgspec.UNSET), _text)  # an optional field added later: absent or set


@st.composite
def secret_events(draw: st.DrawFn) -> Event:
    envelope: dict[str, Any] = {
        "org": draw(st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)),
        "stream": "secret:" + draw(_text),
        "at": draw(st.integers(0, 2**63 - 1)),
        "actor": Actor(key_id=draw(_text), label=draw(_text),
                       kind=draw(st.sampled_from(["api_key", "admin", "system"]))),
        "source": Source(address=draw(_text), user_agent=draw(_text)),
        "request_id": draw(_text),
    }
    name, version = draw(_text), draw(st.integers(1, 2**40))
    scope: Any = draw(st.sampled_from(["all", "agents", "tools", "sandboxes"]))
    kind: Any = draw(st.sampled_from(["created", "revealed", "denied"]))
    if kind == "created":
        return SecretCreated(
            **envelope, stream_version=draw(st.integers(1, 2**40)), name=name, version=version, scope=scope,
            category=draw(st.sampled_from(["provider", "tool", "custom"])), description=draw(_text),
            data_key_id=draw(_text), sealed_sha256=draw(_text), external=draw(_maybe_text),
        )
    if kind == "revealed":
        return SecretRevealed(**envelope, stream_version=None, name=name, version=version, key_scope=scope,
                              reason=draw(_text), member=draw(_maybe_text), external=draw(_maybe_text))
    return SecretRevealDenied(**envelope, stream_version=None, name=name, version=version, key_scope=scope,
                              secret_scope=scope, reason=draw(_text), request_reason=draw(_text))


@given(secret_events())
def test_encode_decode_round_trip_is_exact(event: Event) -> None:
    body = encode_event(event)
    decoded = decode_event(body)
    assert decoded == event
    assert type(decoded) is type(event)
    assert encode_event(decoded) == body
