"""Snapshots, Provenance and Triggers as services, without the embedded stack: the in-memory repositories (the one
fake boundary, checked by the contract suites) and moto's in-process S3 and Step Functions. Regression tests for
bugs 5, 6 and 7 of issue 11 are marked as such."""
from __future__ import annotations

import io
import tarfile
import time
from dataclasses import dataclass
from typing import Any

import pytest

from chalicelib import triggers as triggers_module
from chalicelib.adapters import AwsClients
from chalicelib.blobs import blob_key
from chalicelib.domain import FileEntry, sha256_hex
from chalicelib.errors import IntegrityError, NotFound
from chalicelib.snapshots import sourcedir_key
from chalicelib.triggers import BatchNotReady, TRIGGER_USER
from chalicelib.wiring import Wiring
from tests.service_wiring import BUCKET, OWNER, component, services, workspace  # noqa: F401  (fixture)

WS = "ws-a"


@dataclass
class Stack:
    """The wiring of the API and of the two auto-retrain functions, sharing clients and in-memory repositories."""

    api: Wiring
    on_upload: Wiring
    process_batch: Wiring
    clients: AwsClients
    incarnation: str


@pytest.fixture
def stack(services: Wiring) -> Stack:  # noqa: F811
    # The data bucket is versioned (cdk/storage.py): an upload's event names its version.
    services.clients.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    incarnation = workspace(services, WS).created_at
    return Stack(services, component(services, "on_upload"), component(services, "process_batch"),
                 services.clients, incarnation)


def put_blobs(stack: Stack, files: dict[str, bytes]) -> list[dict[str, Any]]:
    """Stores the blobs as a client's presigned PUTs would (with their SHA-256); returns the manifest entries."""
    entries = []
    for path, body in files.items():
        digest = sha256_hex(body)
        stack.api.store.put_bytes(blob_key(WS, digest), body, sha256_hex=digest)
        entries.append({"path": path, "sha256": digest, "size": len(body)})
    return entries


# --- snapshots ----------------------------------------------------------------------------------------------
def test_commit_answers_pending_until_every_blob_is_there(stack: Stack) -> None:
    snapshots = stack.api.snapshots
    body = b"a,b\n1,2\n"
    files = [{"path": "train.csv", "sha256": sha256_hex(body), "size": len(body)}]
    pending, status = snapshots.commit(WS, "data", files, OWNER)
    assert status == 202 and pending["status"] == "pending"
    assert [m["sha256"] for m in pending["missing"]] == [sha256_hex(body)]
    put_blobs(stack, {"train.csv": body})
    committed, status = snapshots.complete(WS, pending["id"], OWNER)
    assert status == 201 and committed["status"] == "committed" and committed["files"] == 1
    again, status = snapshots.complete(WS, pending["id"], OWNER)
    assert status == 200 and again == committed
    assert stack.api.repositories.snapshots.latest(WS, "data") == pending["id"]
    assert snapshots.manifest(WS, pending["id"]).files[0].path == "train.csv"
    with pytest.raises(NotFound):
        snapshots.complete(WS, "f" * 64, OWNER)


def code_snapshot(stack: Stack, files: dict[str, bytes]) -> str:
    snapshot, status = stack.api.snapshots.commit(WS, "code", put_blobs(stack, files), OWNER)
    assert status == 201
    return str(snapshot["id"])


def test_sourcedir_is_the_same_bytes_whenever_it_is_built_and_streams_large_files(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug 5: the code bundle was built whole in memory; it must also be byte-for-byte deterministic."""
    large = bytes(range(256)) * (40 * 1024)  # 10 MiB: past the spool, so the archive goes to a temporary file
    snapshot_id = code_snapshot(stack, {"train.py": b"print('hi')\n", "run.sh": b"echo\n", "weights.bin": large})
    snapshots, store = stack.api.snapshots, stack.api.store
    key = sourcedir_key(WS, snapshot_id)
    reads: list[int] = []
    stream = store.stream

    def recorded_stream(key: str, *args: Any, **kwargs: Any) -> Any:
        """The real body, with the size of each read of a blob kept (-1: the whole rest at once)."""
        body = stream(key, *args, **kwargs)
        read = body.read

        def sized_read(size: int = -1) -> bytes:
            if "/blobs/" in key:
                reads.append(size)
            return bytes(read(size))

        body.read = sized_read  # type: ignore[method-assign]
        return body

    monkeypatch.setattr(store, "stream", recorded_stream)
    uri, _ = snapshots.sourcedir(WS, snapshot_id)
    assert reads and all(0 < size <= 1 << 20 for size in reads), sorted(set(reads))  # no blob read whole
    monkeypatch.undo()
    first = store.get_bytes(key)
    assert uri == store.uri(key)
    assert snapshots.recorded(WS, [key])[key].sha256 == sha256_hex(first)
    store.discard(key, [None])
    snapshots.forget_derived(WS, key)
    later = time.time() + 86_400
    monkeypatch.setattr(time, "time", lambda: later)  # gzip and tar would stamp the current time
    snapshots.sourcedir(WS, snapshot_id)
    assert store.get_bytes(key) == first
    assert first[4:8] == b"\0\0\0\0"  # the gzip header's MTIME
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as archive:
        members = {m.name: m for m in archive.getmembers()}
        assert sorted(members) == ["run.sh", "train.py", "weights.bin"]
        assert {m.mtime for m in members.values()} == {0} and members["run.sh"].mode == 0o755
        extracted = archive.extractfile(members["weights.bin"])
        assert extracted is not None and extracted.read() == large


def test_a_blob_with_other_bytes_never_makes_a_code_bundle(stack: Stack) -> None:
    snapshot_id = code_snapshot(stack, {"train.py": b"print('hi')\n"})
    entry = stack.api.snapshots.manifest(WS, snapshot_id).files[0]
    stack.clients.s3.put_object(Bucket=BUCKET, Key=blob_key(WS, entry.sha256), Body=b"print('evil')\n")
    with pytest.raises(IntegrityError, match=r"train\.py"):
        stack.api.snapshots.sourcedir(WS, snapshot_id)
    assert stack.api.store.size(sourcedir_key(WS, snapshot_id)) is None


# --- provenance ---------------------------------------------------------------------------------------------
def test_lineage_pages_visit_every_node_once(stack: Stack) -> None:
    provenance = stack.api.provenance
    provenance.add_node(WS, "snapshot:s", "snapshot", {"kind": "data"}, "t")
    for i in range(5):
        provenance.add_node(WS, f"job:{i}", "job", {}, "t")
        provenance.add_edge(WS, f"job:{i}", "used", "snapshot:s", "t")
        provenance.add_edge(WS, f"job:{i}", "produced", f"model:{i}", "t")
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = provenance.lineage(WS, "snapshot:s", "down", limit=3, cursor=cursor)
        seen += [n["id"] for n in page["nodes"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(["snapshot:s", *(f"job:{i}" for i in range(5)), *(f"model:{i}" for i in range(5))])
    assert len(seen) == len(set(seen))


def test_impact_past_the_walk_limit_leaves_no_cursor_behind(stack: Stack) -> None:
    """Bug 6: `data impact` walked through `lineage`, which stored a cursor for a `next` it never handed out."""
    from chalicelib.provenance import MAX_LIMIT

    provenance, snapshot_id = stack.api.provenance, "a" * 64
    provenance.add_node(WS, f"snapshot:{snapshot_id}", "snapshot", {"kind": "data"}, "t")
    for i in range(MAX_LIMIT):  # the snapshot and MAX_LIMIT jobs: one node more than a walk takes
        provenance.add_edge(WS, f"job:{i:05d}", "used", f"snapshot:{snapshot_id}", "t")
    answer = provenance.impact(WS, f"snapshot:{snapshot_id}")
    assert answer["truncated"] and len(answer["jobs"]) == MAX_LIMIT - 1
    assert list(stack.api.store.keys(f"ws/{WS}/lineage-cursors/")) == []


def test_impact_of_a_snapshot_nobody_used_is_empty_but_an_unknown_one_is_404(stack: Stack) -> None:
    snapshot_id = code_snapshot(stack, {"train.py": b"x\n"})
    assert stack.api.provenance.impact(WS, snapshot_id)["jobs"] == []
    with pytest.raises(NotFound):
        stack.api.provenance.impact(WS, "b" * 64)


# --- triggers -----------------------------------------------------------------------------------------------
def upload(stack: Stack, path: str, body: bytes) -> dict[str, Any]:
    """An incoming file and the EventBridge event S3 sends for it."""
    key = f"ws/{WS}/incoming/{path}"
    version = stack.clients.s3.put_object(Bucket=BUCKET, Key=key, Body=body)["VersionId"]
    return {"detail-type": "Object Created", "detail": {"bucket": {"name": BUCKET},
                                                        "object": {"key": key, "version-id": version}}}


def deployed(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> str:
    """A workspace with auto-retrain on and a first deploy (so batches have inputs to derive from)."""
    monkeypatch.setattr(triggers_module, "WINDOW_SECONDS", 0)  # no debounce wait in these tests
    code = code_snapshot(stack, {"train.py": b"print('train')\n"})
    data, status = stack.api.snapshots.commit(WS, "data", put_blobs(stack, {"old.csv": b"1\n"}), OWNER)
    assert status == 201
    stack.api.training.submit(WS, stack.incarnation, OWNER, {"code": code, "data": {"training": data["id"]}})
    stack.api.triggers.set_enabled(WS, OWNER, True)
    return str(data["id"])


def test_a_burst_is_one_batch_one_snapshot_one_job(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    previous = deployed(stack, monkeypatch)
    on_upload, process = stack.on_upload.triggers, stack.process_batch.triggers
    events = [upload(stack, "a.csv", b"2\n"), upload(stack, "b.csv", b"3\n")]
    results = [on_upload.on_event(e)[0] for e in events + events[:1]]  # the first delivered twice
    batch = results[0]["batch"]
    assert [r.get("batch") for r in results] == [batch] * 3 and "duplicate" in results[2]
    done = process.process(WS, batch)
    assert (done["status"], done["files"], done["previous_snapshot"]) == ("DONE", 2, previous)
    manifest = stack.api.snapshots.manifest(WS, done["snapshot"])
    assert [f.path for f in manifest.files] == ["a.csv", "b.csv", "old.csv"]
    job = stack.api.repositories.jobs.get(WS, done["job"])
    assert job.created_by == TRIGGER_USER and job.spec["data"] == {"training": done["snapshot"]}
    derived = stack.api.provenance.lineage(WS, f"snapshot:{done['snapshot']}", "up")
    assert {"source": f"snapshot:{done['snapshot']}", "rel": "derived", "target": f"snapshot:{previous}"} \
        in derived["edges"]
    assert process.process(WS, batch) == {**done, "ended_at": done["ended_at"]}  # a retried task: the same answer


def test_a_queued_batch_whose_wait_outlasts_the_retries_is_processed_by_the_batch_ahead(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug 7: the queued batch ended FAILED after ~4 minutes of BatchNotReady retries; its files were never
    retrained."""
    deployed(stack, monkeypatch)
    on_upload, process = stack.on_upload.triggers, stack.process_batch.triggers
    ahead = on_upload.on_event(upload(stack, "a.csv", b"2\n"))[0]["batch"]
    stack.api.repositories.triggers.close(WS, ahead, "t")  # its ProcessBatch closed it and is still running
    queued = on_upload.on_event(upload(stack, "b.csv", b"3\n"))[0]["batch"]
    assert queued != ahead
    with pytest.raises(BatchNotReady):
        process.process(WS, queued)
    # The state machine's BatchNotReady retries ran out: its Catch records the failure.
    answer = process.fail(WS, queued, {"Error": BatchNotReady.__name__, "Cause": "still waiting"})
    assert answer["status"] == "CLOSED" and answer["stalled"]
    first = process.process(WS, ahead)
    assert first["status"] == "DONE"
    second = stack.api.triggers.status(WS)["batches"][0]
    assert (second["id"], second["status"], second["previous_snapshot"]) == (queued, "DONE", first["snapshot"])
    manifest = stack.api.snapshots.manifest(WS, second["snapshot"])
    assert [f.path for f in manifest.files] == ["a.csv", "b.csv", "old.csv"]


def test_a_batch_that_gives_up_after_the_one_ahead_finished_runs_at_once(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    deployed(stack, monkeypatch)
    on_upload, process = stack.on_upload.triggers, stack.process_batch.triggers
    ahead = on_upload.on_event(upload(stack, "a.csv", b"2\n"))[0]["batch"]
    stack.api.repositories.triggers.close(WS, ahead, "t")
    queued = on_upload.on_event(upload(stack, "b.csv", b"3\n"))[0]["batch"]
    with pytest.raises(BatchNotReady):
        process.process(WS, queued)
    ahead_row = stack.api.repositories.triggers.batch(WS, ahead)
    assert ahead_row is not None
    stack.api.repositories.triggers.finish(ahead_row, "FAILED", "t", reason="test")  # ended meanwhile
    assert process.fail(WS, queued, {"Error": BatchNotReady.__name__})["status"] == "DONE"


def test_other_errors_fail_the_batch(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    deployed(stack, monkeypatch)
    batch = stack.on_upload.triggers.on_event(upload(stack, "a.csv", b"2\n"))[0]["batch"]
    answer = stack.process_batch.triggers.fail(WS, batch, {"Error": "States.Timeout", "Cause": "slow"})
    assert answer["status"] == "FAILED" and answer["reason"] == "States.Timeout: slow"


def test_uploads_while_auto_retrain_is_off_start_nothing(stack: Stack) -> None:
    assert stack.on_upload.triggers.on_event(upload(stack, "a.csv", b"2\n"))[0]["ignored"] == "auto-retrain off"
    assert stack.api.triggers.status(WS)["batches"] == []


def test_manifest_entries_of_a_batch_are_its_newest_versions(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    deployed(stack, monkeypatch)
    on_upload = stack.on_upload.triggers
    first = on_upload.on_event(upload(stack, "a.csv", b"old\n"))[0]["batch"]
    second = on_upload.on_event(upload(stack, "a.csv", b"new\n"))[0]["batch"]
    assert first == second
    done = stack.process_batch.triggers.process(WS, first)
    files = {f.path: f for f in stack.api.snapshots.manifest(WS, done["snapshot"]).files}
    assert files["a.csv"] == FileEntry("a.csv", sha256_hex(b"new\n"), 4)
