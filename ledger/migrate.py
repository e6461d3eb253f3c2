"""Copy a whole ledger from one recorder to another (SQLite to PostgreSQL, or back), every hash unchanged.

What moves:
- every record, byte for byte with its seq, org_seq, prev_hash and hash, so that each org's chain
  (and any checkpoint of it) verifies on the target exactly as on the source; the target's
  projectors fold the records as they are imported, in the same transaction (projections are
  derived, so they are rebuilt rather than copied);
- every wrapped data key, so that the same master key opens every value on the target;
- each org's latest signed checkpoint.

What does not: idempotency records. They are short-lived request bookkeeping (a retry of a request
within 24 hours gets its first answer); a client retrying across the migration has its request
decided again, as after the records' expiry.

Resumable: when the target already holds the source's first N records (its last record equals the
source's record at that seq, and each of its orgs' heads is the source's record at that org_seq),
the copy continues from N + 1; data keys and checkpoints are copied again, skipping those present.
A target holding anything else (another ledger, records the source does not have, a data key the
source no longer has) is refused with `MigrationError` before anything is written.

The source should not be written meanwhile: a SQLite source is locked by the migration itself;
stop the servers of a PostgreSQL source. A migration that raced writers can simply be run again.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from ledger.codec import decode_event
from ledger.errors import LedgerError
from ledger.recorder import Recorder
from ledger.records import DataKeyRow

CHUNK = 5000


class MigrationError(LedgerError):
    """The target holds something other than a prefix of the source; nothing was written."""


class MigrationReport(msgspec.Struct, kw_only=True):
    records: int  # copied by this run
    already_present: int  # records the target held before this run (a resumed migration)
    data_keys: int  # inserted by this run
    data_keys_replaced: int  # rewrapped on the source since an earlier run, so replaced on the target
    checkpoints: int  # copied by this run
    orgs: int  # orgs of the source

    def summary(self) -> str:
        resumed = f" (after {self.already_present} already there)" if self.already_present else ""
        replaced = f" ({self.data_keys_replaced} replaced)" if self.data_keys_replaced else ""
        return (f"copied {self.records} events{resumed}, {self.data_keys} data keys{replaced}, "
                f"{self.checkpoints} checkpoints; {self.orgs} orgs")


async def migrate(
    source: Recorder,
    target: Recorder,
    progress: Callable[[int, int], None] | None = None,
    chunk: int = CHUNK,
) -> MigrationReport:
    """Copy `source` into `target` (both open); `progress(position, total)` follows the records' seq."""
    have = await _common_prefix(source, target)
    present, stale = await _target_data_keys(source, target, chunk)

    total = await source.max_seq()
    position = have
    if progress is not None:
        progress(position, max(total, position))
    while records := await source.read_after(position, chunk):
        await target.import_records(records, [decode_event(r.body) for r in records])
        position = records[-1].seq
        if progress is not None:
            total = max(total, position)
            progress(position, total)

    inserted = replaced = 0
    after = ""
    while rows := await source.data_keys_after(after, chunk):
        new = [r for r in rows if r.id not in present]
        changed = [r for r in rows if r.id in stale]
        if new:
            await target.import_data_keys(new)
            inserted += len(new)
        if changed:
            await target.replace_data_keys(changed)
            replaced += len(changed)
        after = rows[-1].id

    orgs = await source.orgs()
    checkpoints = 0
    for org in orgs:
        checkpoint = await source.latest_checkpoint(org)
        if checkpoint is not None and await target.latest_checkpoint(org) != checkpoint:
            await target.put_checkpoint(checkpoint)
            checkpoints += 1

    return MigrationReport(records=position - have, already_present=have, data_keys=inserted,
                           data_keys_replaced=replaced, checkpoints=checkpoints, orgs=len(orgs))


async def _common_prefix(source: Recorder, target: Recorder) -> int:
    """How many of the source's first records the target holds; MigrationError if it holds anything else."""
    have = await target.max_seq()
    if have == 0:
        if await target.data_keys_after("", limit=1):
            raise MigrationError("the target holds data keys but no events: it is not empty; nothing was changed")
        return 0
    refused = (f"the target holds a different ledger (its {have} events are not the source's first {have}); "
               "migrate into an empty database; nothing was changed")
    mine = await target.read_after(have - 1, limit=1)
    theirs = await source.read_after(have - 1, limit=1)
    if not mine or not theirs or mine[0] != theirs[0]:
        raise MigrationError(refused)
    # Each org's head hash commits to its whole chain: equal heads at the same seq, equal chains.
    for org in await target.orgs():
        org_seq, head = await target.org_head(org)
        ours = await target.read_org(org, after_org_seq=org_seq - 1, limit=1)
        at = await source.read_org(org, after_org_seq=org_seq - 1, limit=1)
        if not ours or not at or ours[0] != at[0] or at[0].hash != head:
            raise MigrationError(refused)
    return have


async def _target_data_keys(source: Recorder, target: Recorder, chunk: int) -> tuple[set[str], set[str]]:
    """(ids the target holds, ids it holds wrapped differently from the source).

    A key the source changed since an earlier run was rewrapped (its event is among the records) and
    is replaced; a key the source no longer has was destroyed there (crypto-shredding), and the
    target must not keep it: MigrationError.
    """
    present: set[str] = set()
    stale: set[str] = set()
    after = ""
    while rows := await target.data_keys_after(after, chunk):
        for row in rows:
            theirs: DataKeyRow | None = await source.get_data_key(row.id)
            if theirs is None:
                raise MigrationError(
                    f"the target holds data key {row.id}, which the source no longer has (destroyed since an "
                    "earlier run?); migrate into an empty database; nothing was changed"
                )
            present.add(row.id)
            if theirs != row:
                stale.add(row.id)
        after = rows[-1].id
    return present, stale
