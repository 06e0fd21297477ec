"""Snapshot rows, the workspace's latest pointers and the records of derived objects.

- A snapshot row (`SNAP#<id>`) is written once: its id is the hash of its manifest, so a second `create` of the same
  id finds the stored row (`created` False) and never overwrites who made it or when.
- `LATEST#<kind>` and `LATEST#inputs` are mutable pointers (last writer wins: they name what the newest submission
  used, and two concurrent submissions have no order to keep).
- `DERIVED#<name>` records the SHA-256 and size of an object kaos derived (`name` is its key below `ws/<ws>/`);
  lookups are BatchGetItem (100 keys per request; pynamodb splits larger lookups), strongly consistent.
- `BLOB#<sha256>` is the blob index: the workspace holds that blob, its bytes verified to hash to its name, with that
  size, loose or at an offset of a kept pack (`BlobPlace`). Written (BatchWriteItem, 25 per request) only after the
  verification; read like the derived records.
"""
from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pynamodb.exceptions import DoesNotExist, PutError

from chalicelib.blobs import BlobPlace
from chalicelib.repositories.workspaces import MemoryWorkspaces
from chalicelib.tables import BlobItem, DerivedItem, LatestInputsItem, LatestItem, SnapshotItem, ws_key


@dataclass(frozen=True)
class Snapshot:
    workspace: str
    snapshot_id: str
    kind: str
    file_count: int
    total_bytes: int
    manifest_key: str
    created_at: str
    created_by: str


@dataclass(frozen=True)
class LatestInputs:
    """The inputs of the workspace's latest submission: what a deploy that omits an input reuses."""

    code: str
    data: dict[str, str]
    params: dict[str, Any]
    updated_at: str


@dataclass(frozen=True)
class Derived:
    sha256: str
    size: int
    written_at: str


class SnapshotRepository(Protocol):
    def create(self, snapshot: Snapshot) -> tuple[Snapshot, bool]:
        """Stores the row unless its id exists: (the stored row, whether this call created it)."""

    def get(self, workspace: str, snapshot_id: str) -> Snapshot | None: ...

    def of_kind(self, workspace: str, kind: str) -> list[Snapshot]:
        """Every snapshot of that kind in the workspace (one Query over its partition)."""

    def set_latest(self, workspace: str, kind: str, snapshot_id: str, at: str) -> None: ...

    def latest(self, workspace: str, kind: str) -> str | None: ...

    def set_latest_inputs(self, workspace: str, inputs: LatestInputs) -> None: ...

    def latest_inputs(self, workspace: str) -> LatestInputs | None:
        """Read consistently: a deploy right after another reuses what it stored."""

    def put_derived(self, workspace: str, name: str, derived: Derived) -> None: ...

    def derived(self, workspace: str, names: Iterable[str]) -> dict[str, Derived]:
        """The records of those names that have one."""

    def forget_derived(self, workspace: str, name: str) -> None: ...

    def put_blobs(self, workspace: str, blobs: Mapping[str, BlobPlace], at: str) -> None:
        """Indexes these verified blobs (sha256 -> where it is); indexing one again places it where it was last
        verified (every place indexed holds its bytes: neither blobs nor packs are deleted but with the workspace)."""

    def blobs(self, workspace: str, digests: Iterable[str]) -> dict[str, BlobPlace]:
        """The place of each of those blobs the index holds (strongly consistent)."""


# DynamoDB's limits per request (BatchWriteItem: 25 items, BatchGetItem: 100 keys). The index of a new bundle of n
# files is n rows: its requests go INDEX_CONCURRENCY at a time rather than one after another (41 in a row for 1,001
# files), within the connection pool botocore gives pynamodb (10).
BATCH_WRITE_ITEMS, BATCH_GET_KEYS, INDEX_CONCURRENCY = 25, 100, 8
T = TypeVar("T")
R = TypeVar("R")


def _in_parallel(work: Callable[[list[T]], R], items: list[T], per_request: int) -> list[R]:
    """`work` on each chunk of `per_request` items, INDEX_CONCURRENCY chunks at a time (one chunk: on this thread);
    the first failure is raised once every chunk ended."""
    chunks = [items[i:i + per_request] for i in range(0, len(items), per_request)]
    if len(chunks) <= 1:
        return [work(chunk) for chunk in chunks]
    with ThreadPoolExecutor(max_workers=min(INDEX_CONCURRENCY, len(chunks))) as pool:
        return list(pool.map(work, chunks))


def _snapshot(item: SnapshotItem) -> Snapshot:
    return Snapshot(item.pk.removeprefix("WS#"), item.snapshot_id, item.kind, int(item.file_count),
                    int(item.total_bytes), item.manifest_key, item.created_at, item.created_by)


def _derived_sk(name: str) -> str:
    return f"DERIVED#{name}"


class DynamoSnapshots:
    def create(self, snapshot: Snapshot) -> tuple[Snapshot, bool]:
        item = SnapshotItem(
            ws_key(snapshot.workspace), f"SNAP#{snapshot.snapshot_id}", snapshot_id=snapshot.snapshot_id,
            kind=snapshot.kind, file_count=snapshot.file_count, total_bytes=snapshot.total_bytes,
            manifest_key=snapshot.manifest_key, created_at=snapshot.created_at, created_by=snapshot.created_by,
        )
        try:
            item.save(condition=SnapshotItem.pk.does_not_exist())
        except PutError as exc:
            if exc.cause_response_code != "ConditionalCheckFailedException":
                raise
            stored = self.get(snapshot.workspace, snapshot.snapshot_id)
            assert stored is not None  # rows are never deleted but with the whole workspace
            return stored, False
        return snapshot, True

    def get(self, workspace: str, snapshot_id: str) -> Snapshot | None:
        try:
            return _snapshot(SnapshotItem.get(ws_key(workspace), f"SNAP#{snapshot_id}", consistent_read=True))
        except DoesNotExist:
            return None

    def of_kind(self, workspace: str, kind: str) -> list[Snapshot]:
        rows = SnapshotItem.query(ws_key(workspace), SnapshotItem.sk.startswith("SNAP#"),
                                  filter_condition=SnapshotItem.kind == kind)
        return [_snapshot(row) for row in rows]

    def set_latest(self, workspace: str, kind: str, snapshot_id: str, at: str) -> None:
        LatestItem(ws_key(workspace), f"LATEST#{kind}", snapshot_id=snapshot_id, updated_at=at).save()

    def latest(self, workspace: str, kind: str) -> str | None:
        try:
            return str(LatestItem.get(ws_key(workspace), f"LATEST#{kind}").snapshot_id)
        except DoesNotExist:
            return None

    def set_latest_inputs(self, workspace: str, inputs: LatestInputs) -> None:
        LatestInputsItem(ws_key(workspace), "LATEST#inputs", code=inputs.code, data=inputs.data,
                         params=inputs.params, updated_at=inputs.updated_at).save()

    def latest_inputs(self, workspace: str) -> LatestInputs | None:
        try:
            item = LatestInputsItem.get(ws_key(workspace), "LATEST#inputs", consistent_read=True)
        except DoesNotExist:
            return None
        return LatestInputs(item.code, dict(item.data), dict(item.params), item.updated_at)

    def put_derived(self, workspace: str, name: str, derived: Derived) -> None:
        DerivedItem(ws_key(workspace), _derived_sk(name), sha256=derived.sha256, size=derived.size,
                    written_at=derived.written_at).save()

    def derived(self, workspace: str, names: Iterable[str]) -> dict[str, Derived]:
        keys = [(ws_key(workspace), _derived_sk(name)) for name in dict.fromkeys(names)]
        return {item.sk.removeprefix("DERIVED#"): Derived(item.sha256, int(item.size), item.written_at)
                for item in DerivedItem.batch_get(keys, consistent_read=True)}

    def forget_derived(self, workspace: str, name: str) -> None:
        DerivedItem(ws_key(workspace), _derived_sk(name)).delete()

    def put_blobs(self, workspace: str, blobs: Mapping[str, BlobPlace], at: str) -> None:
        items = [BlobItem(ws_key(workspace), f"BLOB#{digest}", size=place.size, verified_at=at, pack=place.pack,
                          offset=None if place.pack is None else place.offset) for digest, place in blobs.items()]

        def write(chunk: list[BlobItem]) -> None:
            with BlobItem.batch_write() as batch:
                for item in chunk:
                    batch.save(item)

        _in_parallel(write, items, BATCH_WRITE_ITEMS)

    def blobs(self, workspace: str, digests: Iterable[str]) -> dict[str, BlobPlace]:
        keys = [(ws_key(workspace), f"BLOB#{digest}") for digest in dict.fromkeys(digests)]

        def read(chunk: list[tuple[str, str]]) -> list[BlobItem]:
            return list(BlobItem.batch_get(chunk, consistent_read=True))

        return {item.sk.removeprefix("BLOB#"): BlobPlace(int(item.size), item.pack, int(item.offset or 0))
                for items in _in_parallel(read, keys, BATCH_GET_KEYS) for item in items}


class MemorySnapshots:
    """The in-memory twin; rows live in the workspace twin's partitions, so a workspace kill sweeps them."""

    def __init__(self, workspaces: MemoryWorkspaces) -> None:
        self._workspaces = workspaces
        self._lock: threading.RLock = workspaces.lock

    def _rows(self, workspace: str, kind: str) -> dict[Any, Any]:
        return self._workspaces.table(workspace, kind)

    def create(self, snapshot: Snapshot) -> tuple[Snapshot, bool]:
        with self._lock:
            rows = self._rows(snapshot.workspace, "snapshots")
            if snapshot.snapshot_id in rows:
                return rows[snapshot.snapshot_id], False
            rows[snapshot.snapshot_id] = snapshot
            return snapshot, True

    def get(self, workspace: str, snapshot_id: str) -> Snapshot | None:
        with self._lock:
            found: Snapshot | None = self._rows(workspace, "snapshots").get(snapshot_id)
            return found

    def of_kind(self, workspace: str, kind: str) -> list[Snapshot]:
        with self._lock:
            return [s for _, s in sorted(self._rows(workspace, "snapshots").items()) if s.kind == kind]

    def set_latest(self, workspace: str, kind: str, snapshot_id: str, at: str) -> None:
        with self._lock:
            self._rows(workspace, "latest")[kind] = snapshot_id

    def latest(self, workspace: str, kind: str) -> str | None:
        with self._lock:
            found: str | None = self._rows(workspace, "latest").get(kind)
            return found

    def set_latest_inputs(self, workspace: str, inputs: LatestInputs) -> None:
        with self._lock:
            self._rows(workspace, "latest")["inputs"] = copy.deepcopy(inputs)

    def latest_inputs(self, workspace: str) -> LatestInputs | None:
        with self._lock:
            found: LatestInputs | None = copy.deepcopy(self._rows(workspace, "latest").get("inputs"))
            return found

    def put_derived(self, workspace: str, name: str, derived: Derived) -> None:
        with self._lock:
            self._rows(workspace, "derived")[name] = derived

    def derived(self, workspace: str, names: Iterable[str]) -> dict[str, Derived]:
        with self._lock:
            rows = self._rows(workspace, "derived")
            return {name: rows[name] for name in names if name in rows}

    def forget_derived(self, workspace: str, name: str) -> None:
        with self._lock:
            self._rows(workspace, "derived").pop(name, None)

    def put_blobs(self, workspace: str, blobs: Mapping[str, BlobPlace], at: str) -> None:
        with self._lock:
            self._rows(workspace, "blobs").update(blobs)

    def blobs(self, workspace: str, digests: Iterable[str]) -> dict[str, BlobPlace]:
        with self._lock:
            rows = self._rows(workspace, "blobs")
            return {digest: rows[digest] for digest in digests if digest in rows}
