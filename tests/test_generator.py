"""Rotator specs: the random generator's output and limits, webhook URL rules, and the tagged union."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import model
from ledger.errors import ValidationError
from ledger.generator import (
    ALPHABETS,
    MAX_LENGTH,
    MAX_PREFIX_CHARS,
    MAX_VALUE_BYTES,
    MIN_ENTROPY_BITS,
    MIN_LENGTH,
    PRINTABLE,
    GeneratorSpec,
    Rotator,
    WebhookSpec,
    alphabet_chars,
    entropy_bits,
    generate,
    validate_generator,
    validate_rotator,
    validate_webhook,
)


def test_presets() -> None:
    assert len(ALPHABETS["alphanumeric"]) == 62
    assert ALPHABETS["hex"] == "0123456789abcdef"
    assert set(ALPHABETS["base64url"]) == set(ALPHABETS["alphanumeric"]) | {"-", "_"}
    assert ALPHABETS["numeric"] == "0123456789"
    assert len(ALPHABETS["ascii-printable"]) == 94
    assert " " not in ALPHABETS["ascii-printable"]
    for chars in ALPHABETS.values():
        assert len(set(chars)) == len(chars)


def test_max_value_bytes_matches_the_model() -> None:
    assert MAX_VALUE_BYTES == model.MAX_VALUE_BYTES


def test_default_spec() -> None:
    value = generate(GeneratorSpec())
    assert len(value) == 40
    assert set(value.decode()) <= set(ALPHABETS["alphanumeric"])


@pytest.mark.parametrize("alphabet", list(ALPHABETS))
def test_every_preset(alphabet: str) -> None:
    length = max(MIN_LENGTH, math.ceil(MIN_ENTROPY_BITS / math.log2(len(ALPHABETS[alphabet]))))
    value = generate(GeneratorSpec(length=length, alphabet=alphabet)).decode()
    assert len(value) == length
    assert set(value) <= set(ALPHABETS[alphabet])


def test_prefix_is_kept_and_not_counted() -> None:
    value = generate(GeneratorSpec(length=32, prefix="sk_live_")).decode()
    assert value.startswith("sk_live_")
    assert len(value) == len("sk_live_") + 32


def test_every_character_is_drawn() -> None:
    # Missing one of 2 characters in 1000 draws: probability 2**-999. Missing one of 16 in 4096: < 2**-380.
    assert set(generate(GeneratorSpec(length=1000, alphabet="chars:ab")).decode()) == {"a", "b"}
    assert set(generate(GeneratorSpec(length=4096, alphabet="hex")).decode()) == set(ALPHABETS["hex"])


def test_values_differ() -> None:
    assert len({generate(GeneratorSpec()) for _ in range(50)}) == 50


def test_entropy_floor() -> None:
    validate_generator(GeneratorSpec(length=16, alphabet="hex"))  # exactly 64 bits
    validate_generator(GeneratorSpec(length=64, alphabet="chars:01"))
    validate_generator(GeneratorSpec(length=20, alphabet="numeric"))  # 66.4 bits
    for spec in (GeneratorSpec(length=19, alphabet="numeric"), GeneratorSpec(length=63, alphabet="chars:01")):
        with pytest.raises(ValidationError, match="bits of entropy") as caught:
            validate_generator(spec)
        assert caught.value.field == "rotator.length"
        assert "64" in caught.value.message


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (GeneratorSpec(length=MIN_LENGTH - 1), "rotator.length"),
        (GeneratorSpec(length=MAX_LENGTH + 1), "rotator.length"),
        (GeneratorSpec(length=0), "rotator.length"),
        (GeneratorSpec(length=True), "rotator.length"),
        (GeneratorSpec(length="40"), "rotator.length"),  # type: ignore[arg-type]
        (GeneratorSpec(alphabet="base32"), "rotator.alphabet"),
        (GeneratorSpec(alphabet=""), "rotator.alphabet"),
        (GeneratorSpec(alphabet="chars:"), "rotator.alphabet"),
        (GeneratorSpec(alphabet="chars:a"), "rotator.alphabet"),
        (GeneratorSpec(length=100, alphabet="chars:aab"), "rotator.alphabet"),
        (GeneratorSpec(alphabet="chars:a b"), "rotator.alphabet"),
        (GeneratorSpec(alphabet="chars:abcé"), "rotator.alphabet"),
        (GeneratorSpec(alphabet="chars:ab\n"), "rotator.alphabet"),
        (GeneratorSpec(prefix="p" * (MAX_PREFIX_CHARS + 1)), "rotator.prefix"),
        (GeneratorSpec(prefix="sk live"), "rotator.prefix"),
        (GeneratorSpec(prefix="sk\n"), "rotator.prefix"),
        (GeneratorSpec(prefix="clé_"), "rotator.prefix"),
    ],
)
def test_invalid_generator_specs(spec: GeneratorSpec, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_generator(spec)
    assert caught.value.field == field
    with pytest.raises(ValidationError):
        generate(spec)  # generate validates too: never a weak token from an unchecked spec


@st.composite
def valid_specs(draw: st.DrawFn) -> GeneratorSpec:
    if draw(st.booleans()):
        alphabet = draw(st.sampled_from(list(ALPHABETS)))
    else:
        alphabet = "chars:" + "".join(draw(st.lists(st.sampled_from(PRINTABLE), min_size=2, max_size=94, unique=True)))
    floor = max(MIN_LENGTH, math.ceil(MIN_ENTROPY_BITS / math.log2(len(alphabet_chars(alphabet)))))
    length = draw(st.integers(floor, MAX_LENGTH))
    prefix = draw(st.text(st.sampled_from(PRINTABLE), max_size=MAX_PREFIX_CHARS))
    return GeneratorSpec(length=length, alphabet=alphabet, prefix=prefix)


@given(valid_specs())
def test_valid_specs_generate_what_they_say(spec: GeneratorSpec) -> None:
    assert validate_generator(spec) is spec
    assert entropy_bits(spec) >= MIN_ENTROPY_BITS
    value = generate(spec).decode("ascii")
    assert value.startswith(spec.prefix)
    token = value[len(spec.prefix):]
    assert len(token) == spec.length
    assert set(token) <= set(alphabet_chars(spec.alphabet))
    assert msgspec.json.decode(msgspec.json.encode(spec), type=Rotator) == spec


@given(st.sampled_from(list(ALPHABETS)), st.integers(MIN_LENGTH, 64))
def test_weak_specs_are_rejected(alphabet: str, length: int) -> None:
    spec = GeneratorSpec(length=length, alphabet=alphabet)
    if entropy_bits(spec) >= MIN_ENTROPY_BITS:
        validate_generator(spec)
    else:
        with pytest.raises(ValidationError, match="entropy"):
            validate_generator(spec)


@pytest.mark.parametrize(
    "url",
    ["http://rotator.internal/rotate", "https://example.com", "https://example.com:8443/a/b?x=1", "http://127.0.0.1:9/",
     "HTTPS://EXAMPLE.COM/x", "http://[::1]:8080/hook"],
)
def test_valid_webhook_urls(url: str) -> None:
    assert validate_webhook(WebhookSpec(url=url)).url == url


@pytest.mark.parametrize(
    "url",
    [
        "",
        "example.com/rotate",
        "ftp://example.com/rotate",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "http://",
        "http:///path",
        "http://user:hunter2@example.com/",
        "https://token@example.com/",
        "http://example.com:99999/",
        "http://example.com:port/",
        "http://exa mple.com/",
        "http://example.com/\nX-Injected: 1",
        "https://example.com/" + "a" * 2048,
    ],
)
def test_invalid_webhook_urls(url: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_webhook(WebhookSpec(url=url))
    assert caught.value.field == "rotator.url"
    assert "hunter2" not in str(caught.value)


def test_rotator_union_is_tagged_by_kind() -> None:
    assert msgspec.json.decode(b'{"kind": "generator"}', type=Rotator) == GeneratorSpec()
    hook = msgspec.json.decode(b'{"kind": "webhook", "url": "https://x.test/r"}', type=Rotator)
    assert hook == WebhookSpec(url="https://x.test/r")
    assert msgspec.json.decode(msgspec.json.encode(GeneratorSpec(prefix="p_")))["kind"] == "generator"
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"kind": "script", "url": "x"}', type=Rotator)


def test_validate_rotator_dispatches() -> None:
    assert validate_rotator(GeneratorSpec()) == GeneratorSpec()
    with pytest.raises(ValidationError) as caught:
        validate_rotator(WebhookSpec(url="ftp://x"))
    assert caught.value.field == "rotator.url"
    with pytest.raises(ValidationError) as caught:
        validate_rotator(GeneratorSpec(length=1))
    assert caught.value.field == "rotator.length"
