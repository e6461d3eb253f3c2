"""Rotators: how an automatic rotation makes a secret's new value, as specs stored in ledger events.

Two kinds, one msgspec union tagged by `kind`:
- `GeneratorSpec` ("generator"): a random token made here, `prefix` + `length` characters drawn
  uniformly from an alphabet with `secrets.choice`.
- `WebhookSpec` ("webhook"): an HTTP endpoint that answers with the new value (the call itself is
  `api.webhook.call_webhook`; only the spec lives in the ledger, which must not depend on the api).

`GeneratorSpec.alphabet` is either a preset name from `ALPHABETS` or "chars:" followed by the exact
characters to draw from (printable ASCII without space, each at most once, at least 2). Preset names
never start with "chars:", so the two cannot be confused.

This module imports nothing from the ledger but its errors: `ledger.model` and `ledger.events` import it.
"""

from __future__ import annotations

import math
import secrets
import string
from urllib.parse import urlsplit

import msgspec

from ledger.errors import ValidationError

# Equal to ledger.model.MAX_VALUE_BYTES (a test checks it); model imports this module via events, so
# importing it from there would be a cycle.
MAX_VALUE_BYTES = 65_536

PRINTABLE = "".join(chr(code) for code in range(0x21, 0x7F))  # printable ASCII without space
ALPHABETS: dict[str, str] = {
    "alphanumeric": string.ascii_letters + string.digits,
    "hex": "0123456789abcdef",
    "base64url": string.ascii_letters + string.digits + "-_",
    "numeric": string.digits,
    "ascii-printable": PRINTABLE,
}
CUSTOM_ALPHABET_PREFIX = "chars:"
MIN_LENGTH = 16
MAX_LENGTH = 4096
MIN_ENTROPY_BITS = 64  # below this a token can be guessed offline; 16 hex characters is the floor
MAX_PREFIX_CHARS = 64
MAX_URL_CHARS = 2048


class GeneratorSpec(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="generator"):
    """A random token: `prefix` followed by `length` characters (the prefix is not counted) from `alphabet`."""

    length: int = 40
    alphabet: str = "alphanumeric"
    prefix: str = ""


class WebhookSpec(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="webhook"):
    """An http(s) endpoint POSTed {"org", "name", "request_id"} that answers {"value": "..."}."""

    url: str


Rotator = GeneratorSpec | WebhookSpec


def alphabet_chars(alphabet: str) -> str:
    """The characters an `alphabet` setting draws from (unvalidated: see `validate_generator`)."""
    if alphabet.startswith(CUSTOM_ALPHABET_PREFIX):
        return alphabet[len(CUSTOM_ALPHABET_PREFIX):]
    return ALPHABETS.get(alphabet, "")


def entropy_bits(spec: GeneratorSpec) -> float:
    """Bits of entropy of the random part (the prefix is public and adds none)."""
    return spec.length * math.log2(len(alphabet_chars(spec.alphabet)))


def validate_generator(spec: GeneratorSpec) -> GeneratorSpec:
    length, alphabet, prefix = spec.length, spec.alphabet, spec.prefix
    if not isinstance(length, int) or isinstance(length, bool) or not MIN_LENGTH <= length <= MAX_LENGTH:
        raise ValidationError("rotator.length", f"must be an integer from {MIN_LENGTH} to {MAX_LENGTH}")
    if not isinstance(alphabet, str):
        raise ValidationError("rotator.alphabet", "must be a string")
    if alphabet.startswith(CUSTOM_ALPHABET_PREFIX):
        chars = alphabet_chars(alphabet)
        if any(ch not in PRINTABLE for ch in chars):
            raise ValidationError("rotator.alphabet", "custom characters must be printable ASCII without space")
        if len(set(chars)) != len(chars):
            # A repeated character would be drawn more often than the others: a biased token.
            raise ValidationError("rotator.alphabet", "custom characters must not repeat")
        if len(chars) < 2:
            raise ValidationError("rotator.alphabet", "custom alphabet needs at least 2 distinct characters")
    elif alphabet not in ALPHABETS:
        raise ValidationError(
            "rotator.alphabet",
            f"must be one of {', '.join(ALPHABETS)}, or '{CUSTOM_ALPHABET_PREFIX}' followed by the characters",
        )
    bits = entropy_bits(spec)
    if bits < MIN_ENTROPY_BITS:
        raise ValidationError(
            "rotator.length",
            f"gives {math.floor(bits)} bits of entropy with this alphabet; at least {MIN_ENTROPY_BITS} are "
            f"required (use a longer length or a larger alphabet)",
        )
    if not isinstance(prefix, str) or len(prefix) > MAX_PREFIX_CHARS:
        raise ValidationError("rotator.prefix", f"must be a string of at most {MAX_PREFIX_CHARS} characters")
    if any(ch not in PRINTABLE for ch in prefix):
        raise ValidationError("rotator.prefix", "must be printable ASCII without space")
    if len(prefix) + length > MAX_VALUE_BYTES:  # all ASCII: characters are bytes
        raise ValidationError("rotator.length", f"prefix and token must fit in {MAX_VALUE_BYTES} bytes")
    return spec


def validate_webhook(spec: WebhookSpec) -> WebhookSpec:
    """An absolute http(s) URL with a host and no credentials (a URL ends up in logs and events)."""
    url = spec.url
    if not isinstance(url, str) or not url:
        raise ValidationError("rotator.url", "must not be empty")
    if len(url) > MAX_URL_CHARS:
        raise ValidationError("rotator.url", f"must be at most {MAX_URL_CHARS} characters")
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise ValidationError("rotator.url", "must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number from 0 to 65535
    except ValueError:
        raise ValidationError("rotator.url", "is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise ValidationError("rotator.url", "must be an http or https URL")
    if "@" in parts.netloc:
        raise ValidationError("rotator.url", "must not contain credentials (user:password@); they would be logged")
    if not parts.hostname:
        raise ValidationError("rotator.url", "must have a host")
    return spec


def validate_rotator(spec: Rotator) -> Rotator:
    if isinstance(spec, GeneratorSpec):
        return validate_generator(spec)
    if isinstance(spec, WebhookSpec):
        return validate_webhook(spec)
    raise ValidationError("rotator.kind", "must be 'generator' or 'webhook'")


def generate(spec: GeneratorSpec) -> bytes:
    """A fresh value: the prefix, then `length` characters each drawn with `secrets.choice`."""
    chars = alphabet_chars(validate_generator(spec).alphabet)  # never draw from a weak or malformed spec
    token = "".join(secrets.choice(chars) for _ in range(spec.length))
    return (spec.prefix + token).encode("ascii")
