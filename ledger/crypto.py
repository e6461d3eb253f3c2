"""Envelope encryption: the only module that imports `cryptography`.

- The master key (KEK) is 32 bytes given as base64 or 64 hex characters.
- Each secret version is sealed with a fresh random 32-byte data key (DEK), AES-256-GCM, a random
  96-bit IV and associated data binding it to `org | name | version`.
- A DEK is wrapped by the KEK the same way, its associated data naming the KEK id and the DEK id.
- Every ciphertext is stored as `base64(iv):base64(ciphertext):base64(tag)`.

Plaintexts and keys are never put into exception messages or reprs.

It also reads SSH public keys (`parse_ssh_public_key`): the accepted kinds, their sizes and the
fingerprint that `ssh-keygen -l` prints.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import time
import unicodedata
from collections.abc import Iterable
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ledger.errors import CryptoError, IntegrityError, MasterKeyError, ValidationError

KEY_BYTES = 32
IV_BYTES = 12
TAG_BYTES = 16
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_B64 = re.compile(r"^[A-Za-z0-9+/_-]*={0,2}$")


class MasterKey:
    """A 32-byte key-encryption key and its public id (a digest that reveals nothing of the key)."""

    __slots__ = ("_aead", "_flow_seed", "_session_seed", "_signing_seed", "kek_id")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_BYTES:
            raise MasterKeyError(f"master key must be {KEY_BYTES} bytes, got {len(raw)}")
        self.kek_id = "kek_" + hashlib.sha256(b"keyledger/kek-id\0" + raw).hexdigest()[:16]
        self._aead = AESGCM(raw)
        self._signing_seed = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"keyledger/v1/checkpoint-signing-key"
        ).derive(raw)
        self._session_seed = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"keyledger/v1/dashboard-session-key"
        ).derive(raw)
        self._flow_seed = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"keyledger/v1/dashboard-flow-key"
        ).derive(raw)

    def signing_key(self) -> SigningKey:
        """The checkpoint signing key derived from this master key (HKDF-SHA256)."""
        return SigningKey(self._signing_seed)

    def session_key(self) -> bytes:
        """The key that signs the dashboard's session cookies (HKDF-SHA256): every process with this
        master key derives the same one, and it reveals nothing of the master key."""
        return self._session_seed

    def flow_key(self) -> bytes:
        """The key that seals the dashboard's short-lived sign-in and connect flows in a cookie
        (`seal_flow`; HKDF-SHA256, info `keyledger/v1/dashboard-flow-key`): every process with this master
        key opens them alike, and it reveals nothing of the master key or the session key."""
        return self._flow_seed

    def __repr__(self) -> str:
        return f"MasterKey(kek_id={self.kek_id!r})"

    @classmethod
    def generate(cls) -> tuple[MasterKey, str]:
        """A fresh key and its base64 text, for dev mode and tests."""
        raw = os.urandom(KEY_BYTES)
        return cls(raw), base64.b64encode(raw).decode()

    @classmethod
    def parse(cls, text: str | None, name: str = "KEYLEDGER_MASTER_KEY") -> MasterKey:
        """Parse base64 (standard or urlsafe) or 64 hex characters, with a clear error otherwise."""
        if text is None or not text.strip():
            raise MasterKeyError(f"{name} is missing: set it to 32 random bytes, base64 or hex encoded")
        text = text.strip()
        if _HEX64.match(text):
            return cls(bytes.fromhex(text))
        if len(text) > 40 and all(ch in "0123456789abcdefABCDEF" for ch in text):
            raise MasterKeyError(f"{name} looks like hex but has {len(text)} characters; hex keys have 64")
        if not _B64.match(text):
            raise MasterKeyError(f"{name} is neither base64 nor 64 hexadecimal characters")
        try:
            standard = text.replace("-", "+").replace("_", "/").rstrip("=")
            raw = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise MasterKeyError(f"{name} is not valid base64") from None
        if len(raw) != KEY_BYTES:
            raise MasterKeyError(f"{name} must decode to {KEY_BYTES} bytes, got {len(raw)}")
        return cls(raw)


class SigningKey:
    """An Ed25519 key that signs checkpoints; its public half is served so that others can verify."""

    __slots__ = ("_private", "public_key")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != KEY_BYTES:
            raise CryptoError(f"a signing key seed must be {KEY_BYTES} bytes, got {len(seed)}")
        self._private = Ed25519PrivateKey.from_private_bytes(seed)
        public = self._private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_key = base64.b64encode(public).decode()

    def __repr__(self) -> str:
        return f"SigningKey(public_key={self.public_key!r})"

    @classmethod
    def parse(cls, text: str, name: str = "KEYLEDGER_SIGNING_KEY") -> SigningKey:
        try:
            seed = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise CryptoError(f"{name} is not valid base64") from None
        return cls(seed)

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self._private.sign(message)).decode()


# Encodings of the Ed25519 points of small order (libsodium's list), compared with the sign bit
# cleared: a key among them lets a "signature" be made without any private key.
_SMALL_ORDER_KEYS = {
    bytes.fromhex(h)
    for h in (
        "0000000000000000000000000000000000000000000000000000000000000000",  # y = 0, order 4
        "0100000000000000000000000000000000000000000000000000000000000000",  # identity
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p - 1, order 2
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p (= 0), order 4
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p + 1 (= 1), identity
    )
}


def _small_order(raw_key: bytes) -> bool:
    return raw_key[:31] + bytes([raw_key[31] & 0x7F]) in _SMALL_ORDER_KEYS


def verify_signature(public_key: str, message: bytes, signature: str) -> bool:
    """True only for a valid Ed25519 signature; any malformed input is simply not valid."""
    try:
        raw_key = base64.b64decode(public_key, validate=True)
        raw_sig = base64.b64decode(signature, validate=True)
        if (len(raw_key) != 32 or len(raw_sig) != 64 or base64.b64encode(raw_key).decode() != public_key
                or base64.b64encode(raw_sig).decode() != signature):
            return False
        # Small-order keys (and a zero S) allow forgeries without a private key: refuse them.
        if raw_sig[32:] == bytes(32) or _small_order(raw_key):
            return False
        Ed25519PublicKey.from_public_bytes(raw_key).verify(raw_sig, message)
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True


class Keyring:
    """The current master key wraps; it and any previous keys unwrap (during a rotation)."""

    def __init__(self, current: MasterKey, previous: Iterable[MasterKey] = ()) -> None:
        self.current = current
        self.previous = [key for key in previous if key.kek_id != current.kek_id]
        self._by_id = {key.kek_id: key for key in (*self.previous, current)}

    def __repr__(self) -> str:
        return f"Keyring(current={self.current.kek_id!r}, keys={sorted(self._by_id)!r})"

    @property
    def kek_ids(self) -> list[str]:
        return sorted(self._by_id)

    @property
    def signing_public_keys(self) -> set[str]:
        """The checkpoint keys this keyring can vouch for: those of the current and previous master keys."""
        return {key.signing_key().public_key for key in self._by_id.values()}

    def wrap(self, data_key_id: str, data_key: bytes) -> tuple[str, str]:
        """Wrap a data key under the current master key: (kek_id, wrapped text)."""
        kek = self.current
        return kek.kek_id, _seal(kek._aead, data_key, _dek_aad(kek.kek_id, data_key_id))

    def unwrap(self, data_key_id: str, kek_id: str, wrapped: str) -> bytes:
        kek = self._by_id.get(kek_id)
        if kek is None:
            raise CryptoError(f"data key {data_key_id} is wrapped by {kek_id}, which is not configured")
        return _open(kek._aead, wrapped, _dek_aad(kek_id, data_key_id))

    def rewrap(self, data_key_id: str, kek_id: str, wrapped: str) -> tuple[str, str]:
        """Move a wrapped data key under the current master key without exposing it outside."""
        return self.wrap(data_key_id, self.unwrap(data_key_id, kek_id, wrapped))

    def seal_record(self, context: bytes, data: bytes) -> tuple[str, str]:
        """Seal short-lived bookkeeping (an idempotent answer) under the current master key."""
        kek = self.current
        return kek.kek_id, _seal(kek._aead, data, b"keyledger/v1/record\0" + context)

    def open_record(self, context: bytes, kek_id: str, sealed: str) -> bytes:
        kek = self._by_id.get(kek_id)
        if kek is None:
            raise CryptoError(f"record sealed by {kek_id}, which is not configured")
        return _open(kek._aead, sealed, b"keyledger/v1/record\0" + context)

    def opener(self, data_key_id: str, kek_id: str, wrapped: str) -> ValueOpener:
        """An unwrapped data key, ready to open its versions' values (cached by the writer)."""
        return ValueOpener(self.unwrap(data_key_id, kek_id, wrapped))

    def check(self, data_key_id: str, kek_id: str, wrapped: str) -> None:
        """Raise if this keyring cannot open that wrapped key (a startup check)."""
        self.unwrap(data_key_id, kek_id, wrapped)


class ValueOpener:
    """Opens values sealed under one data key; building AESGCM once saves most of a reveal's crypto."""

    __slots__ = ("_aead",)

    def __init__(self, data_key: bytes) -> None:
        self._aead = AESGCM(data_key)

    def __repr__(self) -> str:
        return "ValueOpener()"

    def open(self, sealed: str, org: str, name: str, version: int) -> bytes:
        return _open(self._aead, sealed, value_aad(org, name, version))

    def seal_record(self, context: bytes, data: bytes) -> str:
        """Seal bookkeeping that holds this data key's value (a reveal's idempotent answer), so that
        destroying the data key destroys it too."""
        return _seal(self._aead, data, b"keyledger/v1/record\0" + context)

    def open_record(self, context: bytes, sealed: str) -> bytes:
        return _open(self._aead, sealed, b"keyledger/v1/record\0" + context)


DATA_KEY_PREFIX = "dek_"


def new_data_key_id() -> str:
    # Time first, so that new rows land at the end of the data_keys B-tree instead of on a random
    # page (one random page per upsert is measurable write amplification); random after, for uniqueness.
    return f"{DATA_KEY_PREFIX}{time.time_ns():016x}{os.urandom(6).hex()}"


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def value_aad(org: str, name: str, version: int) -> bytes:
    # NUL cannot occur in org ids or names (control characters are rejected), so this is unambiguous.
    return b"keyledger/v1/value\0" + org.encode() + b"\0" + name.encode() + b"\0" + str(version).encode()


def _dek_aad(kek_id: str, data_key_id: str) -> bytes:
    return b"keyledger/v1/data-key\0" + kek_id.encode() + b"\0" + data_key_id.encode()


def seal_value(data_key: bytes, plaintext: bytes, org: str, name: str, version: int) -> str:
    return _seal(AESGCM(data_key), plaintext, value_aad(org, name, version))


def open_value(data_key: bytes, sealed: str, org: str, name: str, version: int) -> bytes:
    return _open(AESGCM(data_key), sealed, value_aad(org, name, version))


def sealed_sha256(sealed: str) -> str:
    return hashlib.sha256(sealed.encode()).hexdigest()


def _seal(aead: AESGCM, plaintext: bytes, aad: bytes) -> str:
    iv = os.urandom(IV_BYTES)
    out = aead.encrypt(iv, plaintext, aad)
    body, tag = out[:-TAG_BYTES], out[-TAG_BYTES:]
    return ":".join(base64.b64encode(part).decode() for part in (iv, body, tag))


def parse_sealed(text: str) -> tuple[bytes, bytes, bytes]:
    """Split `base64(iv):base64(ciphertext):base64(tag)`, strictly (canonical base64, exact sizes)."""
    parts = text.split(":")
    if len(parts) != 3:
        raise CryptoError("malformed ciphertext: expected three base64 parts separated by ':'")
    decoded = []
    for label, part in zip(("iv", "ciphertext", "tag"), parts, strict=True):
        try:
            raw = base64.b64decode(part, validate=True)
        except (binascii.Error, ValueError):
            raise CryptoError(f"malformed ciphertext: {label} is not valid base64") from None
        if base64.b64encode(raw).decode() != part:
            raise CryptoError(f"malformed ciphertext: {label} is not canonical base64")
        decoded.append(raw)
    iv, body, tag = decoded
    if len(iv) != IV_BYTES:
        raise CryptoError(f"malformed ciphertext: iv must be {IV_BYTES} bytes, got {len(iv)}")
    if len(tag) != TAG_BYTES:
        raise CryptoError(f"malformed ciphertext: tag must be {TAG_BYTES} bytes, got {len(tag)}")
    return iv, body, tag


def _open(aead: AESGCM, text: str, aad: bytes) -> bytes:
    iv, body, tag = parse_sealed(text)
    try:
        return aead.decrypt(iv, body + tag, aad)
    except InvalidTag:
        raise IntegrityError("ciphertext failed authentication (tampered, moved, or wrong key)") from None


# -- sealed flows (the dashboard's cookies that carry a flow through a provider's sign-in) -------------

_FLOW_AAD = b"keyledger/v1/flow\0"
MAX_FLOW_CHARS = 16_384  # larger texts are refused unread


def seal_flow(key: bytes, purpose: str, data: bytes) -> str:
    """`data` sealed under `key` (AES-256-GCM, a random 96-bit IV, associated data naming `purpose`), as
    url-safe base64 without padding: a cookie value. Only `open_flow` with the same key and purpose opens it."""
    iv = os.urandom(IV_BYTES)
    out = AESGCM(key).encrypt(iv, data, _FLOW_AAD + purpose.encode())
    return base64.urlsafe_b64encode(iv + out).decode().rstrip("=")


def open_flow(key: bytes, purpose: str, text: str) -> bytes | None:
    """What `seal_flow` sealed, or None when `text` is not a flow of `purpose` sealed under `key`: tampered,
    sealed for another purpose or under another key (a master key rotated since), or not base64 at all."""
    if not isinstance(text, str) or not 0 < len(text) <= MAX_FLOW_CHARS or not text.isascii():
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(raw) < IV_BYTES + TAG_BYTES:
        return None
    try:
        return AESGCM(key).decrypt(raw[:IV_BYTES], raw[IV_BYTES:], _FLOW_AAD + purpose.encode())
    except InvalidTag:
        return None


# -- SSH public keys -------------------------------------------------------------------------------

SSH_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 16_384  # OpenSSH's own limit
MAX_SSH_PUBLIC_KEY_CHARS = 16_384  # a 16,384-bit RSA key with a long comment fits
MAX_SSH_COMMENT_CHARS = 1024
_SSH_FIELD = "public_key"
_SSH_SEPARATOR = re.compile(r"[ \t]+")
# What private keys look like: PEM and OpenSSH ("-----BEGIN ... PRIVATE KEY-----") and PuTTY's files.
_PRIVATE_KEY_MARKERS = ("PRIVATE KEY", "PuTTY-User-Key-File", "Private-Lines:")


class SshPublicKey(NamedTuple):
    """A checked SSH public key: what `ssh-keygen -l` prints of it, and its normalized OpenSSH line."""

    algorithm: str  # the key type, e.g. "ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"
    bits: int  # 256 for ed25519, the curve's size for ECDSA, the modulus's for RSA
    fingerprint: str  # "SHA256:" and the unpadded base64 of the SHA-256 of the key blob
    comment: str
    public_key: str  # "type base64" and " comment" when there is one


def parse_ssh_public_key(text: str) -> SshPublicKey:
    """One OpenSSH public key line (a `.pub` file): ed25519, ECDSA (nistp256/384/521) or RSA of at least
    2048 bits. Refuses DSA, certificates, security-key (sk-) keys, anything else, several lines, and
    private keys, with a `ValidationError` that never quotes the text (it may hold anything, a private key
    included): only the accepted types, sizes and limits are named."""
    if any(marker in text for marker in _PRIVATE_KEY_MARKERS):
        raise ValidationError(_SSH_FIELD, "this looks like a private key, which is refused and not kept: send the "
                                          "public key only (the .pub file), and keep the private key where it is")
    if len(text) > MAX_SSH_PUBLIC_KEY_CHARS:
        raise ValidationError(_SSH_FIELD, f"must be at most {MAX_SSH_PUBLIC_KEY_CHARS} characters")
    line = text.strip()
    if not line:
        raise ValidationError(_SSH_FIELD, "must not be empty")
    if len(line.splitlines()) > 1:
        raise ValidationError(_SSH_FIELD, "must be one line: a single OpenSSH public key (type, base64 data and an "
                                          "optional comment)")
    parts = _SSH_SEPARATOR.split(line, maxsplit=2)
    kind = parts[0]
    if kind == "ssh-dss":
        raise ValidationError(_SSH_FIELD, "DSA keys are refused (insecure, and OpenSSH no longer accepts them): "
                                          "use an ed25519 key")
    if "-cert-" in kind:
        raise ValidationError(_SSH_FIELD, "SSH certificates are refused: send the public key itself")
    if kind not in SSH_KEY_TYPES:
        raise ValidationError(_SSH_FIELD, f"must be an OpenSSH public key of type {', '.join(SSH_KEY_TYPES)} "
                                          "(nothing before the type, such as authorized_keys options)")
    if len(parts) < 2:
        raise ValidationError(_SSH_FIELD, f"has no key data after the type {kind}")
    data = parts[1]
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError(_SSH_FIELD, "the key data is not valid base64") from None
    if base64.b64encode(blob).decode() != data:
        raise ValidationError(_SSH_FIELD, "the key data is not canonical base64")
    try:
        key = serialization.load_ssh_public_key(f"{kind} {data}".encode())
    except (ValueError, UnsupportedAlgorithm):
        raise ValidationError(_SSH_FIELD, f"the key data is not a valid {kind} public key") from None
    if isinstance(key, Ed25519PublicKey):
        bits = 256
    elif isinstance(key, EllipticCurvePublicKey):
        bits = key.curve.key_size
    elif isinstance(key, RSAPublicKey):
        bits = key.key_size
        if bits < MIN_RSA_BITS:
            raise ValidationError(_SSH_FIELD, f"RSA keys must have at least {MIN_RSA_BITS} bits, this one has {bits}: "
                                              "use an ed25519 key, or RSA of 3072 or 4096 bits")
        if bits > MAX_RSA_BITS:
            raise ValidationError(_SSH_FIELD, f"RSA keys may have at most {MAX_RSA_BITS} bits")
    else:  # pragma: no cover - the type allowlist above admits no other kind
        raise ValidationError(_SSH_FIELD, f"must be an OpenSSH public key of type {', '.join(SSH_KEY_TYPES)}")
    comment = parts[2].strip() if len(parts) > 2 else ""
    if len(comment) > MAX_SSH_COMMENT_CHARS:
        raise ValidationError(_SSH_FIELD, f"the comment must be at most {MAX_SSH_COMMENT_CHARS} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in comment):
        raise ValidationError(_SSH_FIELD, "the comment must not contain control characters")
    # The key as OpenSSH serializes it (which `ssh-keygen -l` fingerprints), whatever the encoding sent.
    canonical = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    digest = hashlib.sha256(base64.b64decode(canonical.split(" ", 1)[1])).digest()
    return SshPublicKey(
        algorithm=kind, bits=bits, fingerprint="SHA256:" + base64.b64encode(digest).decode().rstrip("="),
        comment=comment, public_key=f"{canonical} {comment}" if comment else canonical,
    )
