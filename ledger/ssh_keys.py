"""SSH public keys of an org, for SSH access to its sandboxes: add, and remove.

Public keys are not secret, so the events carry them whole. Any active API key of the org adds one;
an admin key, or the key that added it, removes it. A fingerprint is added once per org: the org's
keys are one stream (`ssh_keys:ORG`), so the rule is decided in the writer like any other.
The key text is checked in `ledger/crypto.py` (`parse_ssh_public_key`), which never quotes it.
"""

from __future__ import annotations

import re
import secrets

import msgspec

from ledger.commands import Context, caller_key, envelope
from ledger.crypto import SshPublicKey
from ledger.errors import AlreadyExistsError, ConflictError, NotFoundError, PermissionDeniedError
from ledger.events import SshKeyAdded, SshKeyRemoved
from ledger.model import MAX_LABEL_CHARS, ssh_keys_stream, validate_text
from ledger.writer import Decision, WriteView

MAX_SSH_KEYS_PER_ORG = 1000
SSH_KEY_ID = re.compile(r"^ssh_[0-9a-f]{16}$")


def new_ssh_key_id() -> str:
    return "ssh_" + secrets.token_hex(8)


def ssh_key_label(parsed: SshPublicKey, label: str | None) -> str:
    """The label given (checked like an API key's), else the key's comment (cut to the label limit),
    else its type."""
    if label:
        return validate_text(label, "label", MAX_LABEL_CHARS)
    return parsed.comment[:MAX_LABEL_CHARS] or parsed.algorithm


def not_found(ssh_key_id: str) -> NotFoundError:
    """The same answer for an unknown, removed or foreign key; only a well-formed id is named."""
    shown = f" {ssh_key_id!r}" if SSH_KEY_ID.fullmatch(ssh_key_id) else ""
    return NotFoundError(f"SSH key{shown} not found")


class AddSshKey(msgspec.Struct, frozen=True, kw_only=True):
    """Add a checked public key to the org; the same fingerprint twice is a conflict."""

    org: str
    ctx: Context
    ssh_key_id: str
    label: str
    key: SshPublicKey

    async def decide(self, view: WriteView) -> Decision[SshKeyAdded]:
        await caller_key(view, self.org, self.ctx)  # an active key of the org (the admin token is refused)
        state = await view.org_ssh_keys(self.org)
        if state is not None:
            same = state.by_fingerprint(self.key.fingerprint)
            if same is not None:
                raise AlreadyExistsError(f"an SSH key with fingerprint {self.key.fingerprint} is already added "
                                         f"({same.ssh_key_id})")
            if len(state.keys) >= MAX_SSH_KEYS_PER_ORG:
                raise ConflictError(f"the org holds {MAX_SSH_KEYS_PER_ORG} SSH keys, the most it may: remove one first")
        event = SshKeyAdded(
            **envelope(  # type: ignore[arg-type]
                view, self.org, ssh_keys_stream(self.org), (state.stream_version if state else 0) + 1, self.ctx
            ),
            ssh_key_id=self.ssh_key_id, label=self.label, algorithm=self.key.algorithm, bits=self.key.bits,
            fingerprint=self.key.fingerprint, comment=self.key.comment, public_key=self.key.public_key,
        )
        return Decision(events=[event], result=event)


class RemoveSshKey(msgspec.Struct, frozen=True, kw_only=True):
    """Remove one of the org's SSH keys: admin keys, or the key that added it."""

    org: str
    ctx: Context
    ssh_key_id: str

    async def decide(self, view: WriteView) -> Decision[None]:
        caller = await caller_key(view, self.org, self.ctx)
        assert caller is not None  # caller_key refuses the admin token here
        state = await view.org_ssh_keys(self.org)
        entry = state.by_id(self.ssh_key_id) if state is not None else None
        if state is None or entry is None:
            raise not_found(self.ssh_key_id)
        if caller.role != "admin" and entry.added_by != caller.key_id:
            raise PermissionDeniedError("only admin keys and the key that added an SSH key remove it")
        event = SshKeyRemoved(
            **envelope(view, self.org, ssh_keys_stream(self.org), state.stream_version + 1, self.ctx),  # type: ignore[arg-type]
            ssh_key_id=self.ssh_key_id,
        )
        return Decision(events=[event])
