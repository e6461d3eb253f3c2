"""A full disk: writes answer 503 with a clear problem body and commit nothing, reads keep working,
reveals fail closed, and writes work again once space returns, without a restart.

Two ways to fill the disk: a real 4 MiB tmpfs holding the database (needs the right to mount, so
root; skipped otherwise), and SQLite's `max_page_count` on the writer's connection, which runs
everywhere.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.app import create_app
from api.settings import Settings
from ledger.crypto import MasterKey
from ledger.sqlite_store import SqliteRecorder, iter_rows
from ledger.verify import verify_rows
from tests.api.conftest import ADMIN_TOKEN, Key, assert_problem, create_key, create_org, make_client, max_seq, upsert

BIG = "x" * 60_000  # near the value limit, so that each write needs new pages


@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); max_page_count covers the full disk")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Take every free byte of the filesystem with a ballast file."""
    ballast = folder / "ballast"
    fd = os.open(ballast, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1):  # big chunks, then smaller ones for the last bytes
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size) > 0:
                    pass
    finally:
        os.close(fd)
    return ballast


def write_until_full(client: object, key: Key, limit: int = 400) -> tuple[int, object]:
    """Upsert big values until one fails; returns (how many succeeded, the failing response)."""
    for i in range(limit):
        response = upsert(client, key, f"BIG_{i}", BIG)  # type: ignore[arg-type]
        if response.status_code != 201:
            return i, response
    raise AssertionError(f"{limit} writes of {len(BIG)} bytes fitted: the disk never filled")


def check_full_then_recovered(client: object, db: Path, key: Key, fill_disk: object) -> None:
    http = client  # a TestClient
    member = create_key(http, key)  # type: ignore[arg-type]
    upsert(http, key, "KEPT", "kept value", expect=201)  # type: ignore[arg-type]
    make_room = fill_disk()  # type: ignore[operator]
    written, failed = write_until_full(http, key)
    body = assert_problem(failed, 503, "could not commit")  # type: ignore[arg-type]
    assert "full" in body["detail"]
    assert failed.headers.get("retry-after")  # type: ignore[attr-defined]
    # While full: every big write fails alone and commits nothing. A reveal's event is small and
    # may still fit in a page with room; either way it is all or nothing (fail closed).
    for attempt in range(3):
        head = max_seq(db)
        assert upsert(http, key, f"MORE_{attempt}", BIG).status_code == 503  # type: ignore[arg-type]
        assert max_seq(db) == head
        revealed = http.post("/v1/secrets/KEPT/reveal", headers=member.headers)  # type: ignore[attr-defined]
        if revealed.status_code == 200:
            assert revealed.json()["value"] == "kept value" and max_seq(db) == head + 1
        else:
            assert_problem(revealed, 503)
            assert "kept value" not in revealed.text and max_seq(db) == head
    assert http.get("/v1/secrets/KEPT", headers=key.headers).status_code == 200  # type: ignore[attr-defined]
    listed = http.get("/v1/secrets", headers=key.headers, params={"limit": 500})  # type: ignore[attr-defined]
    assert listed.status_code == 200 and len(listed.json()["secrets"]) == written + 1
    assert http.get("/readyz").status_code == 200  # type: ignore[attr-defined]

    make_room()  # type: ignore[operator]
    assert upsert(http, key, "AFTER", "after the disk had room").status_code == 201  # type: ignore[arg-type]
    revealed = http.post("/v1/secrets/KEPT/reveal", headers=member.headers)  # type: ignore[attr-defined]
    assert revealed.status_code == 200 and revealed.json()["value"] == "kept value"
    report = verify_rows(iter_rows(db))
    assert report.ok, report.summary()


def test_a_full_tmpfs(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "4m") as folder:
        db = folder / "keyledger.db"
        app = create_app(Settings(db=db, master_key=MasterKey.generate()[0], admin_token=ADMIN_TOKEN))
        with make_client(app) as client:
            key = create_org(client, "acme")
            # The WAL reuses its own space first: writes go on until it must grow, then fail.
            check_full_then_recovered(client, db, key, lambda: fill(folder).unlink)
        assert os.statvfs(folder).f_bfree > 0


def test_max_page_count(tmp_path: Path) -> None:
    db = tmp_path / "keyledger.db"
    app = create_app(Settings(db=db, master_key=MasterKey.generate()[0], admin_token=ADMIN_TOKEN))
    with make_client(app) as client:
        key = create_org(client, "acme")
        recorder = app.state.ledger.recorder
        assert isinstance(recorder, SqliteRecorder)
        conn = recorder.write_connection  # no write is in flight between requests of a sync client

        def fill_disk() -> object:
            pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
            conn.execute(f"PRAGMA max_page_count = {pages + 40}")
            return lambda: conn.execute("PRAGMA max_page_count = 1073741823")

        check_full_then_recovered(client, db, key, fill_disk)
