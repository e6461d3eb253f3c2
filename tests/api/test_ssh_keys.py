"""SSH public keys of an org: `GET/POST /v1/ssh-keys`, `DELETE /v1/ssh-keys/{ssh_key_id}`, on both backends.

Keys are made by the real `ssh-keygen` (once per module: RSA-4096 takes a moment) and by `cryptography`;
what the API answers for each (bits, fingerprint) must be what `ssh-keygen -l -f` prints. Refused keys
(DSA, RSA under 2048 bits, certificates, private keys, several lines, garbage) are 422s that never quote
what was sent, and leave no event.
"""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import TestClient

from ledger import ssh_keys
from ledger.crypto import SshPublicKey, parse_ssh_public_key
from ledger.errors import ValidationError
from tests.api.conftest import (
    Key,
    assert_problem,
    audit_after,
    create_key,
    events_after,
    max_seq,
    sqlite_only,
    stored_bytes,
)
from tests.pg import PgDsn

Client = TestClient[Litestar]
SSH_KEYGEN = "/usr/bin/ssh-keygen"
INFO_FIELDS = {"ssh_key_id", "label", "algorithm", "bits", "fingerprint", "comment", "public_key", "added_at",
               "added_by"}
SSH_KEY_ID = re.compile(r"^ssh_[0-9a-f]{16}$")
# (name, ssh-keygen arguments, algorithm)
KINDS = (
    ("ed25519", ["-t", "ed25519"], "ssh-ed25519"),
    ("ecdsa-256", ["-t", "ecdsa", "-b", "256"], "ecdsa-sha2-nistp256"),
    ("ecdsa-384", ["-t", "ecdsa", "-b", "384"], "ecdsa-sha2-nistp384"),
    ("ecdsa-521", ["-t", "ecdsa", "-b", "521"], "ecdsa-sha2-nistp521"),
    ("rsa-2048", ["-t", "rsa", "-b", "2048"], "ssh-rsa"),
    ("rsa-4096", ["-t", "rsa", "-b", "4096"], "ssh-rsa"),
)
KEYGEN_LINE = re.compile(r"^(\d+) (SHA256:[A-Za-z0-9+/]{43}) (.*) \((ED25519|ECDSA|RSA|DSA)\)$")


@dataclass(frozen=True)
class Made:
    """A key pair made by ssh-keygen: the .pub text, the private key's text, and what `ssh-keygen -l` printed."""

    public: str
    private: str
    bits: int
    fingerprint: str
    comment: str
    kind: str


def keygen(folder: Path, name: str, args: list[str], comment: str) -> Made:
    path = folder / name
    subprocess.run([SSH_KEYGEN, "-q", *args, "-N", "", "-C", comment, "-f", str(path)], check=True,
                   capture_output=True, timeout=60)
    listed = subprocess.run([SSH_KEYGEN, "-l", "-f", f"{path}.pub"], check=True, capture_output=True, text=True,
                            timeout=60).stdout.strip()
    found = KEYGEN_LINE.match(listed)
    assert found, listed
    return Made(public=(folder / f"{name}.pub").read_text(), private=path.read_text(), bits=int(found[1]),
                fingerprint=found[2], comment=found[3], kind=found[4])


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Made]:
    """One key of each accepted kind, and the refused ones ssh-keygen makes (DSA, RSA-1024, a certificate)."""
    folder = tmp_path_factory.mktemp("ssh-keygen")
    keys = {name: keygen(folder, name, args, f"{name}@keyledger test") for name, args, _ in KINDS}
    keys["no-comment"] = keygen(folder, "no-comment", ["-t", "ed25519"], "")
    keys["dsa"] = keygen(folder, "dsa", ["-t", "dsa"], "old@host")
    keys["rsa-1024"] = keygen(folder, "rsa-1024", ["-t", "rsa", "-b", "1024"], "short@host")
    keygen(folder, "ca", ["-t", "ed25519"], "ca")
    subprocess.run([SSH_KEYGEN, "-q", "-s", str(folder / "ca"), "-I", "someone", "-n", "someone",
                    str(folder / "ed25519.pub")], check=True, capture_output=True, timeout=60)
    keys["certificate"] = Made(public=(folder / "ed25519-cert.pub").read_text(), private="", bits=0, fingerprint="",
                               comment="", kind="")
    return keys


def openssh_line(key: Any, comment: str = "") -> str:
    """The OpenSSH public key line of a `cryptography` private key."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DSA: deprecated in cryptography, which says so
        raw = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{raw.decode()} {comment}".rstrip()


def blob_fingerprint(line: str) -> str:
    """`ssh-keygen -l`'s fingerprint, computed here independently: SHA-256 of the decoded blob, unpadded base64."""
    digest = hashlib.sha256(base64.b64decode(line.split()[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def add(client: Client, key: Key, public_key: str, *, headers: dict[str, str] | None = None, **fields: Any) -> Any:
    return client.post("/v1/ssh-keys", json={"public_key": public_key, **fields},
                       headers={**key.headers, **(headers or {})})


def listed(client: Client, key: Key) -> list[dict[str, Any]]:
    response = client.get("/v1/ssh-keys", headers=key.headers)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["ssh_keys"]
    return rows


# -- add, list, remove ----------------------------------------------------------------------------


def test_add_list_and_remove(client: Client, acme: Key, made: dict[str, Made], db_file: Path | PgDsn) -> None:
    assert listed(client, acme) == []
    before = max_seq(db_file)
    key = made["ed25519"]
    response = add(client, acme, key.public)
    assert response.status_code == 201, response.text
    info = response.json()
    assert set(info) == INFO_FIELDS
    assert SSH_KEY_ID.fullmatch(info["ssh_key_id"])
    assert (info["algorithm"], info["bits"], info["fingerprint"]) == ("ssh-ed25519", 256, key.fingerprint)
    assert (info["comment"], info["label"], info["added_by"]) == (key.comment, key.comment, acme.key_id)
    assert info["public_key"] == key.public.strip()
    assert listed(client, acme) == [info]
    # The events, with the key that acted.
    added, = events_after(db_file, before)
    assert added["type"] == "ssh_key.added"
    assert (added["stream"], added["stream_version"]) == ("ssh_keys:acme", 1)
    assert added["actor"] == {"key_id": acme.key_id, "label": "admin", "kind": "api_key"}
    assert {k: added[k] for k in INFO_FIELDS - {"added_at", "added_by"}} == {
        k: info[k] for k in INFO_FIELDS - {"added_at", "added_by"}}
    assert audit_after(db_file, before)[0]["detail"] == f"{info['ssh_key_id']} ssh-ed25519 {key.fingerprint}"
    removed = client.delete(f"/v1/ssh-keys/{info['ssh_key_id']}", headers=acme.headers)
    assert (removed.status_code, removed.content) == (204, b"")
    assert listed(client, acme) == []
    gone, = events_after(db_file, before + 1)
    assert (gone["type"], gone["ssh_key_id"], gone["actor"]["key_id"], gone["stream_version"]) == (
        "ssh_key.removed", info["ssh_key_id"], acme.key_id, 2)
    # Removed: not found again, and the same key can be added anew (a new id).
    assert_problem(client.delete(f"/v1/ssh-keys/{info['ssh_key_id']}", headers=acme.headers), 404,
                   info["ssh_key_id"])
    again = add(client, acme, key.public)
    assert again.status_code == 201 and again.json()["ssh_key_id"] != info["ssh_key_id"]
    assert max_seq(db_file) == before + 3


def test_fingerprint_and_bits_are_what_ssh_keygen_prints(client: Client, acme: Key, made: dict[str, Made]) -> None:
    for name, _, algorithm in KINDS:
        key = made[name]
        response = add(client, acme, key.public)
        assert response.status_code == 201, (name, response.text)
        info = response.json()
        assert (info["algorithm"], info["bits"], info["fingerprint"], info["comment"]) == (
            algorithm, key.bits, key.fingerprint, key.comment), name
        assert info["public_key"] == key.public.strip()  # ssh-keygen writes the normalized line already
    assert [(row["bits"], row["fingerprint"]) for row in listed(client, acme)] == [
        (made[name].bits, made[name].fingerprint) for name, _, _ in KINDS]


@pytest.mark.parametrize(("name", "algorithm"), [(name, algorithm) for name, _, algorithm in KINDS])
def test_the_parser_agrees_with_ssh_keygen(made: dict[str, Made], name: str, algorithm: str) -> None:
    key = made[name]
    parsed = parse_ssh_public_key(key.public)
    assert parsed == SshPublicKey(algorithm=algorithm, bits=key.bits, fingerprint=key.fingerprint,
                                  comment=key.comment, public_key=key.public.strip())


def test_label_defaults_to_the_comment_then_the_type(client: Client, acme: Key, made: dict[str, Made]) -> None:
    no_comment = add(client, acme, made["no-comment"].public).json()
    assert (no_comment["comment"], no_comment["label"]) == ("", "ssh-ed25519")
    assert no_comment["public_key"] == made["no-comment"].public.strip()  # no trailing space
    labelled = add(client, acme, made["ecdsa-256"].public, label="build box").json()
    assert (labelled["label"], labelled["comment"]) == ("build box", made["ecdsa-256"].comment)
    long_comment = openssh_line(ed25519.Ed25519PrivateKey.generate(), "c" * 300)
    assert add(client, acme, long_comment).json()["label"] == "c" * 200  # a label's limit
    spaced = openssh_line(ed25519.Ed25519PrivateKey.generate(), "alice  at  work")
    assert add(client, acme, "  " + spaced + "\n").json()["comment"] == "alice  at  work"
    for label in ("", "l" * 201, "nul\x00"):
        assert_problem(add(client, acme, made["rsa-2048"].public, label=label), 422, "label")


def test_the_same_fingerprint_twice_in_an_org_is_a_conflict(client: Client, acme: Key, globex: Key,
                                                            made: dict[str, Made], db_file: Path | PgDsn) -> None:
    first = add(client, acme, made["ed25519"].public).json()
    member = create_key(client, acme, label="member")
    before = max_seq(db_file)
    # The same key again, by another key of the org, or with another comment and label: the same fingerprint.
    relabelled = made["ed25519"].public.rsplit(" ", 1)[0] + " another comment"
    for key, text in ((acme, made["ed25519"].public), (member, made["ed25519"].public), (acme, relabelled)):
        conflict = add(client, key, text, label="again")
        assert_problem(conflict, 409, made["ed25519"].fingerprint, first["ssh_key_id"])
    assert max_seq(db_file) == before
    # Another org holds its own copy.
    assert add(client, globex, made["ed25519"].public).status_code == 201
    assert [row["ssh_key_id"] for row in listed(client, acme)] == [first["ssh_key_id"]]


def test_removal_is_for_admin_keys_and_the_key_that_added_it(client: Client, acme: Key, made: dict[str, Made],
                                                             db_file: Path | PgDsn) -> None:
    alice = create_key(client, acme, label="alice")
    bob = create_key(client, acme, label="bob", scope="sandboxes")
    alices = add(client, alice, made["ed25519"].public).json()
    bobs = add(client, bob, made["ecdsa-256"].public).json()
    admins = add(client, acme, made["rsa-2048"].public).json()
    assert (alices["added_by"], bobs["added_by"]) == (alice.key_id, bob.key_id)
    # Any key of the org lists them all.
    assert len(listed(client, bob)) == 3
    before = max_seq(db_file)
    for key, target in ((bob, alices), (alice, bobs), (alice, admins), (bob, admins)):
        assert_problem(client.delete(f"/v1/ssh-keys/{target['ssh_key_id']}", headers=key.headers), 403,
                       "admin keys and the key that added")
    assert max_seq(db_file) == before
    assert client.delete(f"/v1/ssh-keys/{alices['ssh_key_id']}", headers=alice.headers).status_code == 204
    assert client.delete(f"/v1/ssh-keys/{bobs['ssh_key_id']}", headers=acme.headers).status_code == 204
    removed = [e for e in events_after(db_file, before)]
    assert [(e["type"], e["ssh_key_id"], e["actor"]["key_id"]) for e in removed] == [
        ("ssh_key.removed", alices["ssh_key_id"], alice.key_id), ("ssh_key.removed", bobs["ssh_key_id"], acme.key_id)]
    assert [row["ssh_key_id"] for row in listed(client, alice)] == [admins["ssh_key_id"]]
    # A revoked key is a 401 on every route; unknown ids are 404 (named only when they look like ids).
    assert client.delete(f"/v1/keys/{bob.key_id}", headers=acme.headers).status_code == 204
    assert_problem(client.get("/v1/ssh-keys", headers=bob.headers), 401)
    assert_problem(add(client, bob, made["ecdsa-384"].public), 401)
    assert_problem(client.delete(f"/v1/ssh-keys/{admins['ssh_key_id']}", headers=bob.headers), 401)
    assert_problem(client.delete("/v1/ssh-keys/ssh_0000000000000000", headers=acme.headers), 404,
                   "'ssh_0000000000000000'")
    odd = client.delete("/v1/ssh-keys/not-an-id-1234", headers=acme.headers)
    assert "not-an-id-1234" not in assert_problem(odd, 404, "SSH key not found")["detail"]


def test_an_idempotent_add_is_answered_once(client: Client, acme: Key, made: dict[str, Made],
                                            db_file: Path | PgDsn) -> None:
    before = max_seq(db_file)
    retry = {"Idempotency-Key": "add-ssh-key-1"}
    first = add(client, acme, made["ecdsa-521"].public, headers=retry)
    second = add(client, acme, made["ecdsa-521"].public, headers=retry)
    assert (first.status_code, second.status_code) == (201, 201)
    assert second.json() == first.json() and second.headers["idempotent-replayed"] == "true"
    assert max_seq(db_file) == before + 1
    assert_problem(add(client, acme, made["ecdsa-384"].public, headers=retry), 422, "Idempotency-Key")
    # Without the key, the same request again is a conflict.
    assert_problem(add(client, acme, made["ecdsa-521"].public), 409)


@sqlite_only
def test_an_org_holds_a_bounded_number_of_ssh_keys(client: Client, acme: Key, globex: Key,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ssh_keys, "MAX_SSH_KEYS_PER_ORG", 2)  # 1,000 in earnest
    lines = [openssh_line(ed25519.Ed25519PrivateKey.generate(), f"k{i}") for i in range(3)]
    first, _ = (add(client, acme, line).json() for line in lines[:2])
    assert_problem(add(client, acme, lines[2]), 409, "holds 2 SSH keys", "remove one first")
    assert add(client, globex, lines[2]).status_code == 201  # per org
    assert client.delete(f"/v1/ssh-keys/{first['ssh_key_id']}", headers=acme.headers).status_code == 204
    assert add(client, acme, lines[2]).status_code == 201


# -- refusals -------------------------------------------------------------------------------------


def non_canonical(public: str) -> str:
    """The key's base64 data with the padding bits set: the same bytes, but not as an encoder writes them."""
    data = public.split()[1]
    assert data.endswith("=") and not data.endswith("==")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(data[-2])
    changed = data[:-2] + alphabet[last | 1] + "="  # 2 bytes in the last group: its 2 lowest bits are padding
    assert changed != data and base64.b64decode(changed) == base64.b64decode(data)
    return changed


@pytest.fixture(scope="module")
def refused(made: dict[str, Made]) -> dict[str, tuple[str, str]]:
    """case -> (text sent, a part of the detail). Each text holds a marker the answer must not carry."""
    good = made["ed25519"].public.strip()
    kind, data, _ = good.split(" ", 2)
    rsa_1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    dsa_key = dsa.generate_private_key(key_size=1024)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = ec_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption()).decode()
    openssh_private = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()).decode()
    marker = " MARKER-7d1f"
    return {
        "dsa by ssh-keygen": (made["dsa"].public.strip() + marker, "DSA keys are refused"),
        "dsa by cryptography": (openssh_line(dsa_key, "MARKER-7d1f"), "DSA keys are refused"),
        "rsa-1024 by ssh-keygen": (made["rsa-1024"].public.strip() + marker, "at least 2048 bits, this one has 1024"),
        "rsa-1024 by cryptography": (openssh_line(rsa_1024, "MARKER-7d1f"), "at least 2048 bits, this one has 1024"),
        "certificate": (made["certificate"].public.strip() + marker, "certificates are refused"),
        "private key by ssh-keygen": (made["ed25519"].private, "private key"),
        "private key, PEM": (pem, "private key"),
        "private key, OpenSSH": (openssh_private, "private key"),
        "two keys": (good + "\n" + made["ecdsa-256"].public.strip() + marker, "one line"),
        "garbage": ("MARKER-7d1f is not a key", "must be an OpenSSH public key"),
        "unknown type": ("ssh-MARKER-7d1f " + data, "must be an OpenSSH public key"),
        "security key": ("sk-ssh-ed25519@openssh.com " + data + marker, "must be an OpenSSH public key"),
        "authorized_keys options": ('command="MARKER-7d1f" ' + good, "must be an OpenSSH public key"),
        "no data": (kind, "no key data"),
        "not base64": (f"{kind} MARKER-7d1f!{marker}", "not valid base64"),
        "not canonical base64": (f"ecdsa-sha2-nistp256 {non_canonical(made['ecdsa-256'].public)}{marker}",
                                 "not canonical base64"),
        "truncated data": (f"{kind} {base64.b64encode(base64.b64decode(data)[:-4]).decode()}{marker}",
                           "not a valid ssh-ed25519 public key"),
        "type and data differ": (f"ssh-rsa {data}{marker}", "not a valid ssh-rsa public key"),
        "control character in comment": (good + " MARKER-7d1f\x07", "control characters"),
        "empty": ("   \n", "must not be empty"),
        "comment too long": (good + marker + "c" * 1100, "comment must be at most 1024"),
    }


def test_refused_keys_are_422s_that_quote_nothing(client: Client, acme: Key, made: dict[str, Made],
                                                  refused: dict[str, tuple[str, str]], db_file: Path | PgDsn) -> None:
    before = max_seq(db_file)
    for case, (text, detail) in refused.items():
        response = add(client, acme, text)
        assert_problem(response, 422, "public_key", detail)
        assert "MARKER" not in response.text, case
        for line in text.splitlines():
            if len(line) > 12:
                assert line not in response.text and line[-24:] not in response.text, case
    # Too long for the schema, an unknown field, the wrong type.
    assert_problem(add(client, acme, "ssh-ed25519 " + "A" * 16_400), 422)
    assert_problem(add(client, acme, made["ed25519"].public, owner="MARKER-7d1f"), 422)
    wrong = client.post("/v1/ssh-keys", json={"public_key": ["MARKER-7d1f"]}, headers=acme.headers)
    assert "MARKER" not in assert_problem(wrong, 422)["detail"]
    assert max_seq(db_file) == before
    assert listed(client, acme) == []
    # A private key sent by mistake is kept nowhere.
    private = made["ed25519"].private.splitlines()[2]
    assert all(private.encode() not in data for data in stored_bytes(db_file).values())


def test_the_parser_refuses_each_case_with_a_validation_error(refused: dict[str, tuple[str, str]]) -> None:
    assert len(refused) >= 20
    for name, (text, detail) in refused.items():
        with pytest.raises(ValidationError) as error:
            parse_ssh_public_key(text)
        assert error.value.field == "public_key", name
        assert detail in str(error.value), name
        assert "MARKER" not in str(error.value), name


# -- any key cryptography makes ---------------------------------------------------------------------

KEY_MAKERS = {
    "ssh-ed25519": (lambda: ed25519.Ed25519PrivateKey.generate(), 256),
    "ecdsa-sha2-nistp256": (lambda: ec.generate_private_key(ec.SECP256R1()), 256),
    "ecdsa-sha2-nistp384": (lambda: ec.generate_private_key(ec.SECP384R1()), 384),
    "ecdsa-sha2-nistp521": (lambda: ec.generate_private_key(ec.SECP521R1()), 521),
    "ssh-rsa": (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), 2048),
}
comments = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=40)


@settings(max_examples=max(10, (settings.default.max_examples or 60) // 2))  # CI: 30 (RSA keys take a moment)
@given(algorithm=st.sampled_from(sorted(KEY_MAKERS)), comment=comments)
def test_any_key_made_by_cryptography_round_trips(algorithm: str, comment: str) -> None:
    make, bits = KEY_MAKERS[algorithm]
    line = openssh_line(make(), comment)
    parsed = parse_ssh_public_key(line)
    assert (parsed.algorithm, parsed.bits, parsed.comment) == (algorithm, bits, comment.strip())
    assert parsed.fingerprint == blob_fingerprint(line)
    # The normalized line parses to the same key, and is its own normal form.
    assert parse_ssh_public_key(parsed.public_key) == parsed
    assert parsed.public_key.split(" ")[:2] == line.split(" ")[:2]
