"""The recorder contract, written once and subclassed per storage backend.

A backend's test module subclasses `RecorderContract`, implements `make_recorder`, and deletes
nothing: every test here must pass on every backend.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import types
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import msgspec
import pytest

from ledger.codec import decode_event, encode_event
from ledger.errors import ConcurrencyError, IntegrityError, SchemaVersionError, StaleReadError, StoreUnavailableError
from ledger.events import Actor, Event, OrgCreated, SecretCreated, SecretRevealed
from ledger.recorder import Projector, ReadSet, Recorder, Statement
from ledger.records import GENESIS_HASH, DataKeyRow, PendingRecord, StoredRecord, chain_hash

ACTOR = Actor(key_id="key_test", label="test")


def org_event(org: str, at: int = 1) -> Event:
    return OrgCreated(org=org, stream=f"org:{org}", stream_version=1, at=at, actor=ACTOR)


def reveal_event(org: str, name: str, at: int = 2) -> Event:
    return SecretRevealed(org=org, stream=f"secret:{org}/{name}", stream_version=None, at=at, actor=ACTOR,
                          name=name, version=1)


def pending(event: Event, sealed: str | None = None) -> PendingRecord:
    return PendingRecord(org=event.org, stream=event.stream, stream_version=event.stream_version,
                         type=type(event).__struct_config__.tag,  # type: ignore[arg-type]
                         at=event.at, body=encode_event(event), sealed=sealed)


class RecorderContract(abc.ABC):
    @abc.abstractmethod
    def make_recorder(self, tmp_path: Path, projectors: list[Projector]) -> Recorder: ...

    @abc.abstractmethod
    def projectors(self) -> list[Projector]:
        """The backend's real projectors, so the contract covers their transaction too."""

    @abc.abstractmethod
    async def projection_row_count(self, recorder: Recorder) -> int:
        """Rows in the backend's audit projection (one per record)."""

    @abc.abstractmethod
    def store_module(self) -> types.ModuleType:
        """The backend's store module (its `MIGRATIONS`)."""

    @abc.abstractmethod
    def fail_next_commit(self, recorder: Recorder) -> None:
        """Make the backend's next commit fail as a full disk would."""

    @pytest.fixture
    async def recorder(self, tmp_path: Path) -> AsyncIterator[Recorder]:
        rec = self.make_recorder(tmp_path, self.projectors())
        await rec.open()
        try:
            yield rec
        finally:
            await rec.close()

    async def append(self, recorder: Recorder, events: list[Event]) -> list[object]:
        return list(await recorder.append([pending(e) for e in events], events))

    async def test_seq_is_global_and_gapless_from_one(self, recorder: Recorder) -> None:
        await self.append(recorder, [org_event("a"), org_event("b")])
        await self.append(recorder, [reveal_event("a", "x"), reveal_event("b", "y"), reveal_event("a", "x")])
        records = await recorder.read_after(0)
        assert [r.seq for r in records] == [1, 2, 3, 4, 5]
        assert await recorder.max_seq() == 5

    async def test_org_seq_is_gapless_per_org_and_chained(self, recorder: Recorder) -> None:
        await self.append(recorder, [org_event("a"), org_event("b"), reveal_event("a", "x")])
        await self.append(recorder, [reveal_event("b", "y"), reveal_event("a", "x")])
        records = await recorder.read_after(0)
        by_org: dict[str, list[object]] = {}
        for r in records:
            by_org.setdefault(r.org, []).append(r)
        for org, chain in by_org.items():
            prev = GENESIS_HASH
            for n, r in enumerate(chain, start=1):
                assert r.org_seq == n  # type: ignore[attr-defined]
                assert r.prev_hash == prev  # type: ignore[attr-defined]
                assert r.hash == chain_hash(org, n, prev, r.body)  # type: ignore[attr-defined]
                prev = r.hash  # type: ignore[attr-defined]
        head = await recorder.org_head("a")
        assert head == (3, by_org["a"][-1].hash)  # type: ignore[attr-defined]
        assert await recorder.org_head("nobody") == (0, GENESIS_HASH)

    async def test_stream_version_taken_twice_is_a_concurrency_error_and_nothing_commits(
        self, recorder: Recorder
    ) -> None:
        await self.append(recorder, [org_event("a")])
        with pytest.raises(ConcurrencyError):
            await self.append(recorder, [reveal_event("a", "x"), org_event("a")])
        assert [r.seq for r in await recorder.read_after(0)] == [1]
        # The failed batch left no trace: the next append continues the chain without a gap.
        await self.append(recorder, [reveal_event("a", "x")])
        records = await recorder.read_after(0)
        assert [(r.seq, r.org_seq) for r in records] == [(1, 1), (2, 2)]
        assert records[1].prev_hash == records[0].hash

    async def test_records_without_stream_version_never_conflict(self, recorder: Recorder) -> None:
        await self.append(recorder, [reveal_event("a", "x") for _ in range(50)])
        assert await recorder.max_seq() == 50

    async def test_a_batch_decided_on_a_stream_changed_since_is_refused_and_nothing_commits(
        self, recorder: Recorder
    ) -> None:
        await self.append(recorder, [org_event("a")])  # seq 1 changes org:a
        batch = [reveal_event("a", "x")]
        with pytest.raises(StaleReadError) as refused:
            await recorder.append([pending(e) for e in batch], batch, read_set=ReadSet(0, frozenset({"org:a"})))
        assert refused.value.streams == {"org:a"}
        assert await recorder.max_seq() == 1
        assert await self.projection_row_count(recorder) == 1

    async def test_a_batch_stamped_before_the_last_record_is_refused_and_nothing_commits(
        self, recorder: Recorder
    ) -> None:
        await self.append(recorder, [org_event("a", at=5)])
        with pytest.raises(StaleReadError) as refused:  # another process's clock was ahead
            await self.append(recorder, [reveal_event("a", "x", at=3)])
        assert refused.value.not_before == 5
        assert await recorder.max_seq() == 1
        await self.append(recorder, [reveal_event("a", "x", at=5)])  # the same time is fine
        assert [r.at for r in await recorder.read_after(0)] == [5, 5]

    async def test_a_batch_whose_streams_did_not_change_commits(self, recorder: Recorder) -> None:
        await self.append(recorder, [org_event("a"), reveal_event("b", "y")])  # reveals change no state
        batch = [reveal_event("b", "y")]
        read_set = ReadSet(0, frozenset({"org:b", "secret:b/y"}))
        await recorder.append([pending(e) for e in batch], batch, read_set=read_set)
        assert await recorder.max_seq() == 3

    async def test_changed_streams_names_the_state_changes_in_a_range(self, recorder: Recorder) -> None:
        await self.append(recorder, [org_event("a"), reveal_event("a", "x"), org_event("b")])
        assert await recorder.changed_streams(0) == (3, {"org:a", "org:b"})
        assert await recorder.changed_streams(1) == (3, {"org:b"})
        assert await recorder.changed_streams(0, 2) == (2, {"org:a"})
        assert await recorder.changed_streams(3) == (3, set())

    async def test_schema_migrations_run_once_in_order_at_start(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        migrations = self.store_module().MIGRATIONS
        first = self.make_recorder(tmp_path, self.projectors())
        await first.open()
        await self.append(first, [org_event("a")])
        assert await first.schema_version() == max(migrations)
        await first.close()
        # A newer program brings version N+1: it runs at the next start, once (a plain CREATE TABLE
        # would fail if it ran twice), and the ledger is untouched.
        newer = max(migrations) + 1
        monkeypatch.setitem(migrations, newer, ["CREATE TABLE migration_marker (note TEXT)"])
        for _ in range(2):
            again = self.make_recorder(tmp_path, self.projectors())
            await again.open()
            try:
                assert await again.schema_version() == newer
                assert [r.seq for r in await again.read_after(0)] == [1]
            finally:
                await again.close()

    async def test_a_database_newer_than_the_program_is_refused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        migrations = self.store_module().MIGRATIONS
        future = max(migrations) + 5
        with monkeypatch.context() as patch:
            patch.setitem(migrations, future, [])
            newer = self.make_recorder(tmp_path, self.projectors())
            await newer.open()
            await newer.close()
        older = self.make_recorder(tmp_path, self.projectors())
        with pytest.raises(SchemaVersionError, match=f"schema version {future} is newer"):
            await older.open()

    async def test_read_stream_returns_only_state_changes_in_order(self, recorder: Recorder) -> None:
        await self.append(recorder, [org_event("a"), reveal_event("a", "x")])
        stream = await recorder.read_stream("org:a")
        assert [(r.seq, r.stream_version) for r in stream] == [(1, 1)]
        assert await recorder.read_stream("secret:a/x") == []

    async def test_read_org_pages_by_org_seq(self, recorder: Recorder) -> None:
        await self.append(recorder, [org_event("a"), org_event("b")] + [reveal_event("a", "x") for _ in range(5)])
        page = await recorder.read_org("a", after_org_seq=2, limit=2)
        assert [r.org_seq for r in page] == [3, 4]
        assert all(r.org == "a" for r in page)

    async def test_orgs_lists_each_org_with_records_once_in_order(self, recorder: Recorder) -> None:
        assert await recorder.orgs() == []
        await self.append(recorder, [org_event("b"), org_event("a")] + [reveal_event("b", "x") for _ in range(3)])
        await self.append(recorder, [org_event("c", at=2), reveal_event("a", "y")])
        assert await recorder.orgs() == ["a", "b", "c"]

    async def test_stored_bytes_round_trip_exactly(self, recorder: Recorder) -> None:
        event = org_event("a")
        await recorder.append([pending(event, sealed=None)], [event])
        (record,) = await recorder.read_after(0)
        assert record.body == encode_event(event)
        assert record.type == "org.created"
        assert record.sealed is None

    async def test_data_keys_commit_with_the_batch(self, recorder: Recorder) -> None:
        rows = [DataKeyRow(id=f"dek_{i:03}", kek_id="kek_a", wrapped=f"w{i}") for i in range(5)]
        event = org_event("a")
        await recorder.append([pending(event)], [event], data_keys=rows)
        assert await recorder.get_data_key("dek_002") == rows[2]
        assert await recorder.get_data_key("dek_999") is None
        assert [r.id for r in await recorder.data_keys_after("dek_001", limit=2)] == ["dek_002", "dek_003"]
        await recorder.replace_data_keys([DataKeyRow(id="dek_002", kek_id="kek_b", wrapped="new")])
        assert await recorder.get_data_key("dek_002") == DataKeyRow(id="dek_002", kek_id="kek_b", wrapped="new")

    async def test_failed_commit_leaves_nothing_not_even_projection_rows(self, recorder: Recorder) -> None:
        await self.append(recorder, [org_event("a")])
        before = await recorder.projection_positions()
        self.fail_next_commit(recorder)
        event = reveal_event("a", "x")
        with pytest.raises(StoreUnavailableError):
            await recorder.append([pending(event)], [event],
                                  data_keys=[DataKeyRow(id="dek_x", kek_id="k", wrapped="w")])
        assert await recorder.max_seq() == 1
        assert await recorder.get_data_key("dek_x") is None
        assert await recorder.projection_positions() == before
        assert await self.projection_row_count(recorder) == 1
        await self.append(recorder, [event])
        assert [r.org_seq for r in await recorder.read_after(0)] == [1, 2]

    async def test_projection_positions_move_with_each_append(self, recorder: Recorder) -> None:
        await self.append(recorder, [org_event("a"), reveal_event("a", "x")])
        positions = await recorder.projection_positions()
        assert positions and set(positions.values()) == {2}
        assert await self.projection_row_count(recorder) == 2

    async def test_checkpoints_are_kept_and_the_latest_returned(self, recorder: Recorder) -> None:
        from ledger.checkpoint import sign_checkpoint
        from ledger.crypto import MasterKey

        key = MasterKey.generate()[0].signing_key()
        assert await recorder.latest_checkpoint("a") is None
        for n in (3, 7, 5):
            await recorder.put_checkpoint(sign_checkpoint(key, "a", n, bytes([n]) * 32, 1_000_000_000 * n))
        latest = await recorder.latest_checkpoint("a")
        assert latest is not None and latest.org_seq == 7 and latest.head == bytes([7]) * 32
        assert latest.at == 7_000_000_000
        assert await recorder.latest_checkpoint("b") is None

    async def test_rebuild_gives_the_same_rows(self, recorder: Recorder) -> None:
        await self.append(recorder, [org_event("a"), reveal_event("a", "x"), org_event("b")])
        await recorder.rebuild_projections()
        assert set((await recorder.projection_positions()).values()) == {3}
        assert await self.projection_row_count(recorder) == 3

    # -- import: a migration's copy of already-hashed records ------------------------------------

    @abc.abstractmethod
    def other_recorder(
        self, tmp_path: Path, projectors: list[Projector]
    ) -> contextlib.AbstractAsyncContextManager[Recorder]:
        """A second recorder of the backend, empty and opened; closed (and its storage dropped) on exit."""

    @abc.abstractmethod
    async def projection_rows(self, recorder: Recorder) -> dict[str, list[tuple[object, ...]]]:
        """Every row of every projection table, in a stable order."""

    async def history(self, recorder: Recorder) -> list[StoredRecord]:
        """Three orgs, a sealed value with its data key, reveals: every record of `recorder`."""
        await self.append(recorder, [org_event("a", at=1), org_event("b", at=1)])
        sealed = "aXZpdml2aXZpdml2:Y2lwaGVydGV4dA==:dGFndGFndGFndGFndGFn"
        created = SecretCreated(org="a", stream="secret:a/x", stream_version=1, at=2, actor=ACTOR, name="x",
                                version=1, scope="all", category="custom", data_key_id="dek_x",
                                sealed_sha256=hashlib.sha256(sealed.encode()).hexdigest())
        await recorder.append([pending(created, sealed=sealed)], [created],
                              data_keys=[DataKeyRow(id="dek_x", kek_id="kek_a", wrapped="w")])
        await self.append(recorder, [reveal_event("a", "x", at=3), reveal_event("b", "y", at=3), org_event("c", at=4)])
        await self.append(recorder, [reveal_event("c", "z", at=5), reveal_event("a", "x", at=5)])
        return await recorder.read_after(0)

    @staticmethod
    def events_of(records: list[StoredRecord]) -> list[Event]:
        return [decode_event(r.body) for r in records]

    async def snapshot(self, recorder: Recorder) -> object:
        return (await recorder.read_after(0), await self.projection_rows(recorder),
                await recorder.projection_positions(), await recorder.max_seq())

    async def test_imported_records_are_stored_exactly_and_projected_alike(
        self, recorder: Recorder, tmp_path: Path
    ) -> None:
        records = await self.history(recorder)
        assert any(r.sealed is not None for r in records)
        async with self.other_recorder(tmp_path, self.projectors()) as copy:
            for part in (records[:3], records[3:5], records[5:]):  # in pieces, as a migration does
                await copy.import_records(part, self.events_of(part))
            assert await copy.read_after(0) == records
            assert await copy.max_seq() == await recorder.max_seq()
            assert await copy.orgs() == await recorder.orgs() == ["a", "b", "c"]
            for org in ("a", "b", "c"):
                assert await copy.org_head(org) == await recorder.org_head(org)
            assert await self.projection_rows(copy) == await self.projection_rows(recorder)
            assert await copy.projection_positions() == await recorder.projection_positions()
            # The copy's chain goes on exactly where the original's does.
            more = [reveal_event("b", "y", at=6), org_event("d", at=6)]
            assert await self.append(copy, more) == await self.append(recorder, more)
            assert await self.projection_rows(copy) == await self.projection_rows(recorder)

    async def test_import_refuses_records_that_do_not_continue_the_log_and_changes_nothing(
        self, recorder: Recorder, tmp_path: Path
    ) -> None:
        records = await self.history(recorder)
        replace = msgspec.structs.replace
        third = records[2]  # seq 3: org a's org_seq 2, after records[0]
        relinked = replace(third, prev_hash=bytes([1]) * 32,
                           hash=chain_hash(third.org, third.org_seq, bytes([1]) * 32, third.body))
        renumbered = replace(third, org_seq=3, hash=chain_hash(third.org, 3, third.prev_hash, third.body))
        refused = {
            "a tampered hash": [replace(third, hash=bytes(32))],
            "a tampered body": [replace(third, body=third.body.replace(b'"x"', b'"X"'))],
            "a wrong prev_hash": [relinked],
            "a wrong org_seq": [renumbered],
            "a gap before the batch": records[3:],
            "a gap inside the batch": [records[2], records[4]],
            "a seq already taken": records[1:3],
            "a good record, then a bad one": [records[2], replace(records[3], hash=bytes(32))],
        }
        async with self.other_recorder(tmp_path, self.projectors()) as copy:
            await copy.import_records(records[:2], self.events_of(records[:2]))
            before = await self.snapshot(copy)
            for case, batch in refused.items():
                with pytest.raises(IntegrityError):
                    await copy.import_records(batch, self.events_of(batch))
                assert await self.snapshot(copy) == before, case
            # Still whole and still open for the right continuation.
            await copy.import_records(records[2:], self.events_of(records[2:]))
            assert await copy.read_after(0) == records

    async def test_import_data_keys_inserts_and_skips_ids_present(self, recorder: Recorder) -> None:
        rows = [DataKeyRow(id=f"dek_{i}", kek_id="kek_a", wrapped=f"w{i}") for i in range(3)]
        await recorder.import_data_keys(rows[:2])
        await recorder.import_data_keys([DataKeyRow(id="dek_1", kek_id="kek_b", wrapped="other"), rows[2]])
        await recorder.import_data_keys([])
        assert await recorder.data_keys_after("", limit=10) == rows
        assert await recorder.data_keys_by_kek() == {"kek_a": 3}
        await recorder.replace_data_keys([DataKeyRow(id="dek_0", kek_id="kek_b", wrapped="rewrapped")])
        assert await recorder.data_keys_by_kek() == {"kek_a": 2, "kek_b": 1}

    async def test_a_projection_whose_tables_changed_shape_is_dropped_and_rebuilt_at_open(
        self, tmp_path: Path
    ) -> None:
        first = self.make_recorder(tmp_path, self.projectors())
        await first.open()
        try:
            await self.history(first)
            before = await self.projection_rows(first)
        finally:
            await first.close()
        # A newer program whose audit projection has another table shape (here: one more index).
        reshaped = [Reshaped(p) if p.name == "audit" else p for p in self.projectors()]
        for _ in range(2):
            again = self.make_recorder(tmp_path, list(reshaped))
            await again.open()
            try:
                assert await self.projection_rows(again) == before
                assert (await again.projection_positions())["audit"] == await again.max_seq()
            finally:
                await again.close()
            # Dropped and rebuilt at the first open only: the second finds its fingerprint recorded.
            assert [p.dropped for p in reshaped if isinstance(p, Reshaped)] == [1]


class Reshaped:
    """A projector as a later release might ship it: the same rows, another table shape."""

    def __init__(self, inner: Projector) -> None:
        self.inner = inner
        self.name = inner.name
        self.dropped = 0

    def schema(self) -> list[str]:
        return [*self.inner.schema(), "CREATE INDEX IF NOT EXISTS audit_reshaped ON audit(at)"]

    def reset(self) -> list[str]:
        return self.inner.reset()

    def drop(self) -> list[str]:
        self.dropped += 1
        return self.inner.drop()

    def project(self, batch: Sequence[tuple[StoredRecord, Event]]) -> list[Statement]:
        return self.inner.project(batch)
