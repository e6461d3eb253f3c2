"""The ledger's public face: open a store, run the writer, and call commands.

The HTTP API and the CLI only call this; it never imports them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ledger.commands import (
    Context,
    CreateApiKey,
    CreatedKey,
    CreateOrg,
    DeleteSecret,
    Revealed,
    RevealSecret,
    RevokeApiKey,
    UpsertOutcome,
    UpsertSecret,
    new_api_key,
    new_key_id,
)
from ledger.crypto import Keyring
from ledger.events import Category, Role, Scope
from ledger.model import (
    MAX_DESCRIPTION_CHARS,
    MAX_LABEL_CHARS,
    MAX_REASON_CHARS,
    validate_category,
    validate_name,
    validate_org,
    validate_role,
    validate_scope,
    validate_text,
    validate_value,
)
from ledger.recorder import Recorder
from ledger.writer import Writer


class Ledger:
    """Commands over one recorder; start() before use, stop() after."""

    def __init__(self, recorder: Recorder, keyring: Keyring, clock: Callable[[], int] = time.time_ns) -> None:
        self.recorder = recorder
        self.keyring = keyring
        self.writer = Writer(recorder, keyring, clock)

    async def start(self) -> None:
        await self.recorder.open()
        self.writer.start()

    async def stop(self) -> None:
        await self.writer.stop()
        await self.recorder.close()

    async def create_org(self, ctx: Context, org: str, label: str = "admin") -> CreatedKey:
        validate_org(org)
        return await self.writer.submit(
            CreateOrg(org=org, ctx=ctx, key_id=new_key_id(), api_key=new_api_key(),
                      label=validate_text(label, "label", MAX_LABEL_CHARS))
        )

    async def create_api_key(
        self, ctx: Context, org: str, label: str, role: str = "member", scope: str = "all"
    ) -> CreatedKey:
        return await self.writer.submit(
            CreateApiKey(
                org=org, ctx=ctx, key_id=new_key_id(), api_key=new_api_key(),
                label=validate_text(label, "label", MAX_LABEL_CHARS), role=validate_role(role),
                scope=validate_scope(scope),
            )
        )

    async def revoke_api_key(self, ctx: Context, org: str, key_id: str) -> None:
        await self.writer.submit(RevokeApiKey(org=org, ctx=ctx, key_id=key_id))

    async def upsert_secret(
        self,
        ctx: Context,
        org: str,
        name: str,
        value: bytes,
        *,
        scope: str | None = None,
        category: str | None = None,
        description: str | None = None,
        if_match: int | None = None,
    ) -> UpsertOutcome:
        checked_scope: Scope | None = validate_scope(scope) if scope is not None else None
        checked_category: Category | None = validate_category(category) if category is not None else None
        if description is not None:
            validate_text(description, "description", MAX_DESCRIPTION_CHARS)
        return await self.writer.submit(
            UpsertSecret(
                org=org, ctx=ctx, name=validate_name(name), value=validate_value(value),
                scope=checked_scope, category=checked_category, description=description, if_match=if_match,
            )
        )

    async def delete_secret(self, ctx: Context, org: str, name: str, *, if_match: int | None = None) -> None:
        await self.writer.submit(DeleteSecret(org=org, ctx=ctx, name=validate_name(name), if_match=if_match))

    async def reveal_secret(self, ctx: Context, org: str, name: str, *, reason: str = "") -> Revealed:
        validate_text(reason, "reason", MAX_REASON_CHARS)
        return await self.writer.submit(RevealSecret(org=org, ctx=ctx, name=validate_name(name), reason=reason))


__all__ = ("Context", "CreatedKey", "Ledger", "Revealed", "Role", "UpsertOutcome")
