"""Parsing references, the JSON-key rules, and the adapter registry (with a stub adapter: no network here)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import ExternalSecretError, ValidationError
from ledger.external import (
    MAX_REFERENCE_CHARS,
    SCHEMES,
    ExternalStores,
    Reference,
    format_reference,
    parse_reference,
    select_field,
    select_json_key,
)

ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/openai-AbCdEf"


@pytest.mark.parametrize(
    ("text", "location", "path", "key"),
    [
        ("aws-sm://us-east-1/prod/openai#api_key", "us-east-1", "prod/openai", "api_key"),
        ("aws-sm://us-east-1/plain", "us-east-1", "plain", None),
        ("aws-sm://us-gov-west-1/a+b=c.d@e_f-g", "us-gov-west-1", "a+b=c.d@e_f-g", None),
        (f"aws-sm://{ARN}", "eu-west-1", ARN, None),
        (f"aws-sm://{ARN}#k#with#hashes", "eu-west-1", ARN, "k#with#hashes"),
        (f"aws-sm://eu-west-1/{ARN}#k", "eu-west-1", ARN, "k"),
        ("aws-sm://us-east-1/x#key with spaces", "us-east-1", "x", "key with spaces"),
        ("vault-kv://secret/app/db#password", "secret", "app/db", "password"),
        ("vault-kv://kv-2/team one/app", "kv-2", "team one/app", None),
    ],
)
def test_good_references(text: str, location: str, path: str, key: str | None) -> None:
    ref = parse_reference(text)
    scheme = text.split("://", maxsplit=1)[0]
    assert ref == Reference(scheme=scheme, text=text, location=location, path=path, json_key=key)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "empty"),
        ("x" * (MAX_REFERENCE_CHARS + 1), "at most"),
        ("aws-sm://us-east-1/a\nb", "control"),
        ("aws-sm://us-east-1/a\u200bb", "control"),
        (" aws-sm://us-east-1/a", "whitespace"),
        ("aws-sm://us-east-1/a ", "whitespace"),
        ("s3://bucket/key", "must start with"),
        ("AWS-SM://us-east-1/a", "must start with"),
        ("aws-sm:/us-east-1/a", "must start with"),
        ("aws-sm://us-east-1/a#", "empty key"),
        ("aws-sm://us-east-1", "missing"),
        ("aws-sm://us-east-1/", "missing"),
        ("aws-sm://US-EAST-1/a", "region"),
        ("aws-sm://nowhere/a", "region"),
        ("aws-sm://us-east-1/a b", "letters, digits"),
        ("aws-sm://us-east-1/a:b", "letters, digits"),
        ("aws-sm://us-east-1/" + "a" * 513, "letters, digits"),
        ("aws-sm://arn:aws:s3:::bucket", "ARN"),
        (f"aws-sm://us-east-1/{ARN}", "region differs"),
        ("vault-kv://secret", "missing"),
        ("vault-kv://secret/", "missing"),
        ("vault-kv:///path", "mount"),
        ("vault-kv://../sys/policy", "mount"),
        ("vault-kv://secret/../../sys/policy", "segment"),
        ("vault-kv://secret/a//b", "segment"),
        ("vault-kv://secret/a/./b", "segment"),
        ("vault-kv://secret/a/", "segment"),
        ("vault-kv://secret/a /b", "whitespace"),
    ],
)
def test_bad_references(text: str, complaint: str) -> None:
    with pytest.raises(ValidationError) as raised:
        parse_reference(text)
    assert raised.value.field == "reference"
    assert complaint in raised.value.message


def test_a_validation_message_never_echoes_the_reference() -> None:
    with pytest.raises(ValidationError) as raised:
        parse_reference("aws-sm://us-east-1/sk-live-canary value")
    assert "canary" not in str(raised.value)


# -- properties ------------------------------------------------------------------------------------

near_misses = st.builds(
    lambda scheme, body, key: f"{scheme}{body}{key}",
    st.sampled_from(["aws-sm://", "vault-kv://", "aws-sm:/", "", "vault-kv://secret/", "aws-sm://us-east-1/"]),
    st.text(alphabet=st.sampled_from("ab/-_.:#@ \t\n\x00\u200b\u00e9arn123"), max_size=40),
    st.sampled_from(["", "#", "#k", "#a#b"]),
)


@given(st.one_of(st.text(max_size=200), near_misses))
def test_parsing_raises_only_validation_errors_and_keeps_the_text(text: str) -> None:
    try:
        ref = parse_reference(text)
    except ValidationError as exc:
        assert exc.field == "reference"
        return
    assert ref.text == text
    assert ref.scheme in SCHEMES
    assert parse_reference(ref.text) == ref


aws_names = st.from_regex(r"[A-Za-z0-9_+=.@-][A-Za-z0-9/_+=.@-]{0,40}", fullmatch=True).filter(
    lambda name: not name.startswith("arn:"))
vault_segments = st.from_regex(r"[A-Za-z0-9_@=+-][A-Za-z0-9 _.@=+-]{0,10}[A-Za-z0-9_@=+-]", fullmatch=True)
keys = st.none() | st.text(min_size=1, max_size=20).filter(
    lambda key: key == key.strip() and all((ch.isprintable() and not ch.isspace()) or ch == " " for ch in key))


@given(
    st.one_of(
        st.tuples(st.just("aws-sm"), st.sampled_from(["us-east-1", "eu-central-2", "ap-southeast-1"]), aws_names),
        st.tuples(st.just("vault-kv"), st.sampled_from(["secret", "kv", "team_kv.2"]),
                  st.lists(vault_segments, min_size=1, max_size=4).map("/".join)),
    ),
    keys,
)
def test_references_round_trip_through_their_parts(parts: tuple[str, str, str], key: str | None) -> None:
    scheme, location, path = parts
    text = format_reference(scheme, location, path, key)
    assert parse_reference(text) == Reference(scheme=scheme, text=text, location=location, path=path, json_key=key)


# -- JSON keys -------------------------------------------------------------------------------------


def ref(key: str | None) -> Reference:
    return Reference(scheme="aws-sm", text="aws-sm://us-east-1/x" + (f"#{key}" if key else ""),
                     location="us-east-1", path="x", json_key=key)


def test_json_key_selection() -> None:
    document = b'{"s": "t\\u00e9xt", "n": 42, "o": {"a": [1, null]}, "b": true}'
    assert select_json_key(document, ref(None)) == document
    assert select_json_key(document, ref("s")) == "t\u00e9xt".encode()
    assert select_json_key(document, ref("n")) == b"42"
    assert select_json_key(document, ref("o")) == b'{"a":[1,null]}'
    assert select_json_key(document, ref("b")) == b"true"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"other": "sk-canary"}', "not_found"),
        (b"sk-canary-not-json", "invalid"),
        (b'["sk-canary"]', "invalid"),
        (b'"sk-canary"', "invalid"),
        (b"\xff\xfesk-canary", "invalid"),
    ],
)
def test_json_key_failures_name_the_key_never_the_value(raw: bytes, reason: str) -> None:
    with pytest.raises(ExternalSecretError) as raised:
        select_json_key(raw, ref("api_key"))
    assert raised.value.reason == reason
    assert "api_key" in str(raised.value)
    assert "canary" not in str(raised.value)


def test_fields_without_a_key_need_exactly_one() -> None:
    assert select_field({"only": "v"}, ref(None)) == b"v"
    for fields in ({}, {"a": "1", "b": "2"}):
        with pytest.raises(ExternalSecretError) as raised:
            select_field(fields, ref(None))
        assert raised.value.reason == "invalid"
        assert "#KEY" in str(raised.value)


# -- the registry ----------------------------------------------------------------------------------


class StubStore:
    """An adapter that answers from a dict, or blocks until released, or fails in an unplanned way."""

    scheme = "vault-kv"

    def __init__(self, values: dict[str, bytes] | None = None, *, block: threading.Event | None = None,
                 explode: bool = False) -> None:
        self.values = values or {}
        self.block = block
        self.explode = explode

    def fetch(self, reference: Reference) -> bytes:
        if self.block is not None:
            self.block.wait(10)
        if self.explode:
            raise KeyError("sk-canary-in-an-unplanned-error")
        if reference.path not in self.values:
            raise ExternalSecretError("not_found", f"{reference.text}: not found")
        return self.values[reference.path]


async def test_stores_pick_the_adapter_by_scheme() -> None:
    stores = ExternalStores([StubStore({"app": b"v"})])
    assert await stores.fetch("vault-kv://secret/app") == b"v"
    with pytest.raises(ExternalSecretError) as raised:
        await stores.fetch("vault-kv://secret/missing")
    assert raised.value.reason == "not_found"
    with pytest.raises(ValidationError, match="no adapter"):
        await stores.fetch("aws-sm://us-east-1/x")
    with pytest.raises(ValidationError):
        await stores.fetch("nope://x")


async def test_a_slow_adapter_times_out_as_unavailable() -> None:
    release = threading.Event()
    stores = ExternalStores([StubStore({"app": b"v"}, block=release)])
    try:
        with pytest.raises(ExternalSecretError) as raised:
            await stores.fetch("vault-kv://secret/app", timeout=0.2)
    finally:
        release.set()
    assert raised.value.reason == "unavailable"
    assert "0.2 s" in str(raised.value)


async def test_an_unplanned_adapter_error_keeps_only_its_type() -> None:
    stores = ExternalStores([StubStore(explode=True)])
    with pytest.raises(ExternalSecretError) as raised:
        await stores.fetch("vault-kv://secret/app")
    assert raised.value.reason == "unavailable"
    assert "KeyError" in str(raised.value)
    assert "canary" not in str(raised.value)


async def test_factories_build_an_adapter_once() -> None:
    built: list[StubStore] = []

    def factory() -> StubStore:
        built.append(StubStore({"app": b"v"}))
        return built[-1]

    stores = ExternalStores(factories={"vault-kv": factory})
    results = await asyncio.gather(*(stores.fetch("vault-kv://secret/app") for _ in range(8)))
    assert results == [b"v"] * 8
    assert len(built) == 1


def test_default_stores_import_no_sdk_until_used() -> None:
    probe = ("import sys\nfrom ledger.external import ExternalStores\nExternalStores.default()\n"
             "loaded = [m for m in ('boto3', 'botocore', 'hvac') if m in sys.modules]\n"
             "assert not loaded, loaded\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
