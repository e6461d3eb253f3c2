"""`keyledger serve` refuses, with one clear line and exit status 2, a database whose chain fails
verification since its org's last signed checkpoint, and changes nothing while refusing.

(Missing, short and wrong master keys and a database held by another server are refused in
tests/test_cli_e2e.py.) The checks cover what lies after the latest checkpoint: the record the
checkpoint signs must be on the chain, and every later record must link to it. Older records are
`keyledger verify`'s job, which reads everything.
"""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ledger.checkpoint import sign_checkpoint
from ledger.crypto import Keyring, MasterKey
from ledger.service import Ledger
from ledger.sqlite_store import SqliteRecorder
from projections.sqlite_tables import all_projectors
from tests.conftest import ADMIN, ctx_for
from tests.test_cli_e2e import ADMIN_TOKEN, CLI_TIMEOUT, HOST, KEYLEDGER, clean_env, free_port, start_server

DATA_TABLES = ("events", "data_keys", "checkpoints", "secrets", "api_keys", "audit", "projection_positions")


def build_db(path: Path, master_key: MasterKey, *, checkpoint: bool) -> None:
    """An org with secrets; a signed checkpoint (optionally) after the first half of its events."""

    async def build() -> None:
        ledger = Ledger(SqliteRecorder(path, all_projectors()), Keyring(master_key))
        await ledger.start()
        try:
            key = await ledger.create_org(ADMIN, "acme")
            for i in range(5):
                await ledger.upsert_secret(ctx_for(key), "acme", f"S{i}", f"value {i}".encode())
            if checkpoint:
                assert await ledger.checkpoint("acme") is not None
            for i in range(5):
                await ledger.reveal_secret(ctx_for(key), "acme", f"S{i}")
        finally:
            await ledger.stop()

    asyncio.run(build())


def tamper(path: Path, *statements: str, params: tuple[Any, ...] = ()) -> None:
    """What an attacker with the file can do: drop the append-only triggers and rewrite rows."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for trigger in ("events_no_update", "events_no_delete", "events_no_replace"):
            conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        for statement in statements:
            conn.execute(statement, params if "?" in statement else ())
    finally:
        conn.close()


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {table: conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall() for table in DATA_TABLES}
    finally:
        conn.close()


def serve(path: Path, key_text: str) -> subprocess.CompletedProcess[str]:
    env = clean_env(KEYLEDGER_MASTER_KEY=key_text, KEYLEDGER_ADMIN_TOKEN=ADMIN_TOKEN)
    return subprocess.run(
        [KEYLEDGER, "serve", "--host", HOST, "--port", str(free_port()), "--db", str(path)],
        cwd=path.parent, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL,
    )


def last_seq(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT MAX(seq) FROM events").fetchone()[0])
    finally:
        conn.close()


def rewrite_last_body(path: Path) -> None:
    tamper(path, "UPDATE events SET body = CAST(replace(CAST(body AS TEXT), 'S4', 'S3') AS BLOB) WHERE seq = ?",
           params=(last_seq(path),))


def rewrite_checkpointed_hash(path: Path) -> None:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    org_seq = conn.execute("SELECT org_seq FROM checkpoints WHERE org = 'acme'").fetchone()[0]
    conn.close()
    tamper(path, "UPDATE events SET hash = zeroblob(32) WHERE org = 'acme' AND org_seq = ?", params=(org_seq,))


def forge_checkpoint(path: Path) -> None:
    """Re-sign the stored checkpoint with a key the server does not derive from its master key."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        org_seq, head, at = conn.execute("SELECT org_seq, hash, at FROM events WHERE seq = ?",
                                         (last_seq(path),)).fetchone()
        forged = sign_checkpoint(MasterKey.generate()[0].signing_key(), "acme", org_seq, bytes(head), at)
        columns = [row[1] for row in conn.execute("PRAGMA table_info(checkpoints)")]
        values = {"org": "acme", "org_seq": org_seq, "head": bytes(head), "at": forged.at,
                  "public_key": forged.public_key, "signature": forged.signature, "text": forged.text()}
        conn.execute("DELETE FROM checkpoints")
        conn.execute(f"INSERT INTO checkpoints({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                     [values[c] for c in columns])
    finally:
        conn.close()


CASES: dict[str, tuple[bool, Callable[[Path], None]]] = {
    "body-after-checkpoint": (True, rewrite_last_body),
    "checkpointed-record": (True, rewrite_checkpointed_hash),
    "forged-checkpoint": (True, forge_checkpoint),
    "no-checkpoint-whole-chain": (False, rewrite_last_body),
}


@pytest.mark.parametrize("case", list(CASES))
def test_serve_refuses_a_chain_that_fails_since_its_checkpoint_and_changes_nothing(tmp_path: Path, case: str) -> None:
    with_checkpoint, attack = CASES[case]
    master_key, key_text = MasterKey.generate()
    db = tmp_path / "k.db"
    build_db(db, master_key, checkpoint=with_checkpoint)
    attack(db)
    before = dump(db)
    result = serve(db, key_text)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "fails verification since its last checkpoint" in lines[0]
    assert "keyledger verify" in lines[0]
    assert dump(db) == before


def test_serve_starts_on_an_intact_chain_and_on_damage_older_than_the_checkpoint(tmp_path: Path) -> None:
    master_key, key_text = MasterKey.generate()
    db = tmp_path / "k.db"
    build_db(db, master_key, checkpoint=True)
    # Damage before the checkpoint is outside the start-up check (keyledger verify finds it).
    tamper(db, "UPDATE events SET body = CAST(replace(CAST(body AS TEXT), 'S0', 'S9') AS BLOB) WHERE seq = 3")
    env = clean_env(KEYLEDGER_MASTER_KEY=key_text, KEYLEDGER_ADMIN_TOKEN=ADMIN_TOKEN)
    server = start_server(tmp_path, ["--host", HOST, "--port", str(free_port()), "--db", str(db)], env)
    server.stop()
    verified = subprocess.run([KEYLEDGER, "verify", "--db", str(db)], capture_output=True, text=True,
                              timeout=CLI_TIMEOUT, env=env)
    assert verified.returncode == 1 and "FAILED at seq 3" in verified.stdout, verified.stdout


def test_keys_are_never_printed_by_a_refusal(tmp_path: Path) -> None:
    master_key, key_text = MasterKey.generate()
    db = tmp_path / "k.db"
    build_db(db, master_key, checkpoint=True)
    rewrite_last_body(db)
    result = serve(db, key_text)
    assert key_text not in result.stderr + result.stdout
    assert base64.b64decode(key_text).hex() not in result.stderr + result.stdout
