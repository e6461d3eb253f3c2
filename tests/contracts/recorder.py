"""The recorder contract, written once and subclassed per storage backend.

A backend's test module subclasses `RecorderContract`, implements `make_recorder`, and deletes
nothing: every test here must pass on every backend.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ledger.codec import encode_event
from ledger.errors import ConcurrencyError, StoreUnavailableError
from ledger.events import Actor, Event, OrgCreated, SecretRevealed
from ledger.recorder import Projector, Recorder
from ledger.records import GENESIS_HASH, DataKeyRow, PendingRecord, chain_hash

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
        await self.append(recorder, [org_event("c"), reveal_event("a", "y")])
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
