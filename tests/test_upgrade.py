"""A database written by the issue-6 release (tests/fixtures/issue6_db: an org `acme`, a secret `db`
with two versions, a deleted secret `gone`) opens with this one: the projection tables whose shape
changed are rebuilt from the events, and everything the older release recorded still works."""

from __future__ import annotations

import shutil
from pathlib import Path

from ledger.commands import Context
from ledger.crypto import Keyring, MasterKey
from ledger.events import Actor
from ledger.service import Ledger
from ledger.sqlite_store import SqliteRecorder
from ledger.verify import verify_recorder
from projections.sqlite_reader import SqliteProjections
from projections.sqlite_tables import all_projectors

FIXTURE = Path(__file__).parent / "fixtures" / "issue6_db"


async def test_an_issue_6_database_opens_and_its_projections_are_rebuilt(tmp_path: Path) -> None:
    db = tmp_path / "keyledger.db"
    shutil.copy(FIXTURE / "keyledger.db", db)
    ledger = Ledger(SqliteRecorder(db, all_projectors()),
                    Keyring(MasterKey.parse((FIXTURE / "master.key").read_text().strip())))
    await ledger.start()
    projections = SqliteProjections(db)
    await projections.open()
    try:
        (key_row,) = await projections.list_keys("acme")
        ctx = Context(actor=Actor(key_id=key_row.key_id, label=key_row.label))
        meta = await projections.get_secret("acme", "db")
        assert meta is not None and meta.version == 2 and meta.expires_at is None
        assert [(v.version, v.how, v.from_version) for v in await projections.versions("acme", "db")] == [
            (1, "create", None), (2, "update", None)]
        # Deleted before recovery windows existed: restorable, and kept until purged.
        (gone,) = await projections.deleted_secrets("acme")
        assert (gone.name, gone.destroy_at) == ("gone", None)
        assert (await ledger.reveal_secret(ctx, "acme", "db", version=1)).value == b"one"
        restored = await ledger.submit(ledger.restore_secret_command(ctx, "acme", "gone"))
        assert restored.event.version == 2
        assert (await ledger.reveal_secret(ctx, "acme", "gone")).value == b"x"
        rolled = await ledger.submit(ledger.rollback_secret_command(ctx, "acme", "db", 1))
        assert (await ledger.reveal_secret(ctx, "acme", "db")).value == b"one" and rolled.event.version == 3
        assert (await verify_recorder(ledger.recorder)).ok
    finally:
        await projections.close()
        await ledger.stop()
