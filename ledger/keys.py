"""Key management over a running ledger: rewrap every data key under a new master key, and destroy
one version's data key (crypto-shredding). Both are recorded as events (invariant 2).

System-wide events (a master key rotation) belong to the `_system` chain: `_` cannot start an
org id, so it never collides with an org.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from ledger.commands import SYSTEM, Context, value_events
from ledger.crypto import Keyring, MasterKey
from ledger.errors import NotFoundError
from ledger.events import MasterKeyRotated, SecretVersionDestroyed
from ledger.model import secret_stream
from ledger.recorder import Recorder
from ledger.records import DataKeyRow
from ledger.service import Ledger
from ledger.writer import Decision, WriteView

SYSTEM_ORG = "_system"
REWRAP_CHUNK = 500


class RecordRotation(msgspec.Struct, frozen=True, kw_only=True):
    ctx: Context
    old_kek_id: str
    new_kek_id: str
    data_keys: int

    async def decide(self, view: WriteView) -> Decision[None]:
        event = MasterKeyRotated(
            org=SYSTEM_ORG, stream="master_key", stream_version=None, at=view.at, actor=self.ctx.actor,
            source=self.ctx.source, request_id=self.ctx.request_id, old_kek_id=self.old_kek_id,
            new_kek_id=self.new_kek_id, data_keys=self.data_keys,
        )
        return Decision(events=[event])


Progress = Callable[[int, int], None]  # (data keys moved so far, data keys to move)


async def stale_data_keys(recorder: Recorder, kek_id: str) -> dict[str, int]:
    """How many data keys each master key other than `kek_id` still wraps."""
    return {kek: count for kek, count in (await recorder.data_keys_by_kek()).items() if kek != kek_id}


async def rewrap_all(
    ledger: Ledger,
    new_key: MasterKey,
    ctx: Context,
    progress: Progress | None = None,
) -> int:
    """Move every data key under `new_key` while the ledger keeps serving; returns how many moved.

    Both keys open data until the rewrap finishes. A crash halfway is safe: each chunk commits on its
    own, and a run with `new_key` current and the old key among the previous ones (see
    `resume_rewrap`) continues with the keys still under an old master key.
    """
    old = ledger.keyring
    keyring = Keyring(new_key, previous=[old.current, *(k for k in old.previous if k.kek_id != new_key.kek_id)])
    ledger.keyring = keyring
    ledger.writer.keyring = keyring  # new data keys are wrapped by the new master key from now on
    stale = await stale_data_keys(ledger.recorder, new_key.kek_id)
    total = sum(stale.values())
    old_ids = sorted(stale) if old.current.kek_id == new_key.kek_id else [old.current.kek_id]
    if progress is not None:
        progress(0, total)
    moved = 0
    after = ""
    while rows := await ledger.recorder.data_keys_after(after, limit=REWRAP_CHUNK):
        rewrapped = []
        for row in rows:
            if row.kek_id != new_key.kek_id:
                kek_id, wrapped = keyring.rewrap(row.id, row.kek_id, row.wrapped)
                rewrapped.append(DataKeyRow(id=row.id, kek_id=kek_id, wrapped=wrapped))
        if rewrapped:
            await ledger.recorder.replace_data_keys(rewrapped)
            moved += len(rewrapped)
            ledger.writer.cache.forget_data_keys()
            if progress is not None:
                progress(moved, max(total, moved))  # keys written meanwhile are wrapped by the new key
        after = rows[-1].id
    if old_ids:
        await ledger.writer.submit(
            RecordRotation(ctx=ctx, old_kek_id=",".join(old_ids), new_kek_id=new_key.kek_id, data_keys=moved)
        )
    # Checkpoints are signed by a key derived from the master key: re-sign every org's head under
    # the new one, so that a server started without the old master key still trusts its checkpoints.
    ledger.signing_key = ledger.writer.signing_key = new_key.signing_key()
    for org in await ledger.recorder.orgs():
        await ledger.checkpoint(org)
    return moved


async def resume_rewrap(ledger: Ledger, progress: Progress | None = None) -> int:
    """Finish a rotation a crash interrupted: move data keys still under a previous master key to the
    current one (the configuration names the new key current and the old one previous). 0: none."""
    if not await stale_data_keys(ledger.recorder, ledger.keyring.current.kek_id):
        return 0
    return await rewrap_all(ledger, ledger.keyring.current, SYSTEM, progress)


class DestroySecretVersion(msgspec.Struct, frozen=True, kw_only=True):
    org: str
    ctx: Context
    name: str
    version: int

    async def decide(self, view: WriteView) -> Decision[None]:
        state = await view.secret(self.org, self.name)
        if state is None:
            raise NotFoundError(f"secret {self.name!r} not found")
        if self.version in state.destroyed_versions:
            raise NotFoundError(f"secret {self.name!r} version {self.version} is already destroyed")
        found = (await value_events(view, state)).get(self.version)
        if found is None:
            raise NotFoundError(f"secret {self.name!r} has no version {self.version}")
        data_key_id = found[0].data_key_id
        event = SecretVersionDestroyed(
            org=self.org, stream=secret_stream(self.org, self.name), stream_version=state.stream_version + 1,
            at=view.at, actor=self.ctx.actor, source=self.ctx.source, request_id=self.ctx.request_id,
            name=self.name, version=self.version, data_key_id=data_key_id,
        )
        return Decision(events=[event], drop_data_keys=[data_key_id])


async def destroy_version(ledger: Ledger, ctx: Context, org: str, name: str, version: int) -> None:
    """Delete one version's data key: its value can never be opened again; the events stay intact."""
    await ledger.writer.submit(DestroySecretVersion(org=org, ctx=ctx, name=name, version=version))
