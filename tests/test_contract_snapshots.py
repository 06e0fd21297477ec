"""The snapshot repository contract, run against pynamodb (moto in process) and the in-memory twin."""
from __future__ import annotations

import pytest

from chalicelib.blobs import BlobPlace
from chalicelib.repositories.snapshots import (Derived, DynamoSnapshots, LatestInputs, MemorySnapshots, Snapshot,
                                               SnapshotRepository)
from tests.aws_fixtures import memory_twin
from tests.contract_tables import dynamo_table  # noqa: F401  (fixture)

WS = "ws-a"


@pytest.fixture(params=["dynamo", "memory"])
def snapshots(request: pytest.FixtureRequest) -> SnapshotRepository:
    workspaces = memory_twin(request)
    return DynamoSnapshots() if workspaces is None else MemorySnapshots(workspaces)


def _snapshot(snapshot_id: str = "a" * 64, kind: str = "data", by: str = "alice") -> Snapshot:
    return Snapshot(WS, snapshot_id, kind, 2, 10, f"ws/{WS}/manifests/{snapshot_id}.json", "2026-01-01T00:00:00Z", by)


def test_a_snapshot_row_is_written_once(snapshots: SnapshotRepository) -> None:
    first, created = snapshots.create(_snapshot())
    again, created_again = snapshots.create(_snapshot(by="bob"))
    assert created and not created_again
    assert again == first == snapshots.get(WS, "a" * 64) and again.created_by == "alice"
    assert snapshots.get(WS, "b" * 64) is None
    assert snapshots.get("other", "a" * 64) is None


def test_of_kind_lists_that_kind_only(snapshots: SnapshotRepository) -> None:
    snapshots.create(_snapshot("a" * 64, "data"))
    snapshots.create(_snapshot("b" * 64, "code"))
    snapshots.create(_snapshot("c" * 64, "data"))
    assert sorted(s.snapshot_id for s in snapshots.of_kind(WS, "data")) == ["a" * 64, "c" * 64]


def test_latest_pointers_are_last_writer_wins(snapshots: SnapshotRepository) -> None:
    assert snapshots.latest(WS, "code") is None and snapshots.latest_inputs(WS) is None
    snapshots.set_latest(WS, "code", "a" * 64, "t1")
    snapshots.set_latest(WS, "code", "b" * 64, "t2")
    assert snapshots.latest(WS, "code") == "b" * 64
    inputs = LatestInputs("c" * 64, {"training": "d" * 64}, {"alpha": 0.1}, "t3")
    snapshots.set_latest_inputs(WS, inputs)
    assert snapshots.latest_inputs(WS) == inputs


def test_derived_records_by_name(snapshots: SnapshotRepository) -> None:
    record = Derived("e" * 64, 123, "t1")
    snapshots.put_derived(WS, "sourcedirs/x/sourcedir.tar.gz", record)
    names = [f"datums/{i}.json" for i in range(120)]  # more than one BatchGetItem (100 keys)
    for name in names[::7]:
        snapshots.put_derived(WS, name, record)
    found = snapshots.derived(WS, ["sourcedirs/x/sourcedir.tar.gz", "nothing", *names])
    assert found == {"sourcedirs/x/sourcedir.tar.gz": record, **dict.fromkeys(names[::7], record)}
    snapshots.forget_derived(WS, "sourcedirs/x/sourcedir.tar.gz")
    snapshots.forget_derived(WS, "never recorded")
    assert snapshots.derived(WS, ["sourcedirs/x/sourcedir.tar.gz"]) == {}


def test_the_blob_index_answers_many_digests_per_workspace(snapshots: SnapshotRepository) -> None:
    digests = [f"{i:064x}" for i in range(130)]  # more than one BatchGetItem (100 keys) and BatchWriteItem (25)
    # Every other blob loose, the rest at offsets of two packs.
    places = {d: BlobPlace(i) if i % 2 else BlobPlace(i, f"{i % 4:064x}", 10 * i)
              for i, d in enumerate(digests[::2])}
    snapshots.put_blobs(WS, places, "t1")
    snapshots.put_blobs(WS, {digests[0]: places[digests[0]]}, "t2")  # indexing again is harmless
    assert snapshots.blobs(WS, [*digests, digests[0]]) == places
    assert snapshots.blobs("other", digests) == {}  # another workspace's index vouches for nothing here
    # A blob verified again elsewhere (a loose copy of a packed one) is read from where it was last verified.
    snapshots.put_blobs(WS, {digests[0]: BlobPlace(0)}, "t3")
    assert snapshots.blobs(WS, [digests[0]]) == {digests[0]: BlobPlace(0)}
    assert snapshots.blobs(WS, []) == {}
