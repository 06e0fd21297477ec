"""S3-triggered incremental retraining on the embedded stack: S3 → EventBridge rule → OnUpload → retrain state
machine (Wait window → ProcessBatch) → one derived data snapshot and one training job per upload window."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import hashlib
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest

from chalicelib.triggers import WINDOW_SECONDS
from kaos.local.loader import physical_name
from tests.conftest import TEMPLATE, Stack, tiny_code, until

WS = "retrain"
# Generous: under a full parallel test run the two cores are shared with other trainings.
DEADLINE = WINDOW_SECONDS + 170


@pytest.fixture(scope="module")
def ws(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A workspace with auto-retrain on and one completed deploy (tiny code + the template's data)."""
    tmp = tmp_path_factory.mktemp("triggers")
    stack.kaos("workspace", "create", WS)
    stack.kaos("workspace", "auto-retrain", WS, "on")
    job = stack.kaos_json("train", "deploy", "-s", str(tiny_code(tmp)), "-d", str(TEMPLATE / "data"), "-w", WS,
                          "--wait")
    assert job["status"] == "COMPLETED", job
    return WS


def bucket(stack: Stack) -> str:
    names = [b["Name"] for b in stack.aws("s3").list_buckets()["Buckets"]]
    return next(n for n in names if n.startswith("kaos-storagedata"))


def function_name(stack: Stack, suffix: str) -> str:
    template = json.loads((stack.state_dir / "template.json").read_text())
    logical = next(k for k, v in template["Resources"].items()
                   if v["Type"] == "AWS::Lambda::Function" and k.startswith(suffix))
    return physical_name(logical, "AWS::Lambda::Function")


def batches(stack: Stack, ws: str) -> list[dict[str, Any]]:
    return list(stack.client().auto_retrain(ws)["batches"])


def jobs(stack: Stack, ws: str) -> list[dict[str, Any]]:
    return list(stack.client().jobs(ws, 200)["jobs"])


def wait_batch(stack: Stack, ws: str, known: set[str]) -> dict[str, Any]:
    """The first batch not in `known` once it is DONE (or FAILED)."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        new = [b for b in batches(stack, ws) if b["id"] not in known]
        if new and all(b["status"] in ("DONE", "FAILED") for b in new):
            assert len(new) == 1, new
            return new[0]
        time.sleep(0.5)
    raise AssertionError(f"no new batch finished in {DEADLINE} s: {batches(stack, ws)}")


def wait_job(stack: Stack, ws: str, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        job = stack.client().job(ws, job_id)
        if job["status"] in ("COMPLETED", "FAILED", "KILLED"):
            return dict(job)
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish")


def wait_logged(stack: Stack, line: str) -> None:
    """Until the stack's log (where every function's log lines go, as CloudWatch Logs would hold them) has `line`:
    the upload function has decided on an event, so what it did not do will not happen later either."""
    until(lambda: line in (stack.state_dir / "stack.log").read_text(errors="replace"), f"log line {line!r}",
          DEADLINE, every=0.2)


def manifest_files(stack: Stack, ws: str, snapshot: str) -> dict[str, str]:
    """path -> sha256 of the snapshot's files."""
    body = stack.aws("s3").get_object(Bucket=bucket(stack), Key=f"ws/{ws}/manifests/{snapshot}.json")["Body"]
    return {f["path"]: f["sha256"] for f in json.loads(body.read())["files"]}


def manifest_paths(stack: Stack, ws: str, snapshot: str) -> set[str]:
    return set(manifest_files(stack, ws, snapshot))


def s3_event(bucket_name: str, key: str, version: str | None, etag: str) -> dict[str, Any]:
    """An S3 "Object Created" event as EventBridge delivers it (the key URL-encoded, as S3 does)."""
    return {"Source": "aws.s3", "DetailType": "Object Created", "Resources": [f"arn:aws:s3:::{bucket_name}"],
            "Detail": json.dumps({"version": "0", "bucket": {"name": bucket_name},
                                  "object": {"key": quote_plus(key, safe="/"), "size": 1, "eTag": etag.strip('"'),
                                             "version-id": version, "sequencer": "0062E99A88DC407460"},
                                  "reason": "PutObject"})}


def test_push_retrains_with_a_derived_snapshot(stack: Stack, ws: str, tmp_path: Path) -> None:
    known, before = {b["id"] for b in batches(stack, ws)}, jobs(stack, ws)
    previous = before[0]["inputs"]["data"]["training"]
    new = tmp_path / "new.csv"
    new.write_text("a,b\n1,2\n")
    pushed = stack.kaos_json("data", "push", str(new), "-w", ws)
    assert pushed["auto_retrain"] is True and pushed["files"][0]["key"] == f"ws/{ws}/incoming/new.csv"
    batch = wait_batch(stack, ws, known)
    assert batch["status"] == "DONE" and batch["files"] == 1 and batch["previous_snapshot"] == previous, batch
    job = wait_job(stack, ws, batch["job"])
    assert job["status"] == "COMPLETED", job
    assert len(jobs(stack, ws)) == len(before) + 1
    snapshot = job["inputs"]["data"]["training"]
    assert snapshot == batch["snapshot"] != previous
    assert manifest_paths(stack, ws, snapshot) == manifest_paths(stack, ws, previous) | {"new.csv"}
    # Code and params are the latest deploy's.
    assert job["inputs"]["code"] == before[0]["inputs"]["code"]
    assert job["inputs"]["params"] == before[0]["inputs"]["params"]
    lineage = stack.client().lineage(ws, f"model:{job['id']}", "up")
    edges = {(e["source"], e["rel"], e["target"]) for e in lineage["edges"]}
    assert (f"job:{job['id']}", "produced", f"model:{job['id']}") in edges
    assert (f"job:{job['id']}", "used", f"snapshot:{snapshot}") in edges
    assert (f"snapshot:{snapshot}", "derived", f"snapshot:{previous}") in edges


def test_duplicate_deliveries_make_one_snapshot_and_one_job(stack: Stack, ws: str) -> None:
    known, before = {b["id"] for b in batches(stack, ws)}, len(jobs(stack, ws))
    snapshots = stack.client().workspace(ws)["snapshots"]
    name = bucket(stack)
    key = f"ws/{ws}/incoming/dup.csv"
    put = stack.aws("s3").put_object(Bucket=name, Key=key, Body=b"x,y\n3,4\n")  # one real delivery
    event = s3_event(name, key, put.get("VersionId"), put["ETag"])
    events = stack.aws("events")
    for _ in range(10):  # 100 more deliveries of the same event
        assert events.put_events(Entries=[event] * 10)["FailedEntryCount"] == 0
    batch = wait_batch(stack, ws, known)
    assert batch["status"] == "DONE" and batch["files"] == 1, batch
    assert wait_job(stack, ws, batch["job"])["status"] == "COMPLETED"
    time.sleep(2)  # stragglers of the 100 deliveries would show up as another batch or job
    assert len(jobs(stack, ws)) == before + 1
    assert stack.client().workspace(ws)["snapshots"] == snapshots + 1
    assert [b for b in batches(stack, ws) if b["id"] not in known] == [batch]


def test_a_burst_of_100_files_is_one_retraining(stack: Stack, ws: str) -> None:
    known, before = {b["id"] for b in batches(stack, ws)}, len(jobs(stack, ws))
    s3, name = stack.aws("s3"), bucket(stack)
    started = time.monotonic()
    # Concurrent puts, as a real burst arrives: one by one on a loaded 2-core machine they can outlast the window.
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda i: s3.put_object(Bucket=name, Key=f"ws/{ws}/incoming/burst/f{i:03d}.csv",
                                              Body=f"v\n{i}\n".encode()), range(100)))
    # One file written again within the burst: the batch has both versions, and the newest is decided by S3's
    # order of the key's versions (a ListObjectVersions the ProcessBatch role may make under incoming/ only).
    s3.put_object(Bucket=name, Key=f"ws/{ws}/incoming/burst/f000.csv", Body=b"v\nlast\n")
    burst = time.monotonic() - started
    assert burst < WINDOW_SECONDS, f"the burst took {burst:.1f} s, longer than the {WINDOW_SECONDS} s window"
    batch = wait_batch(stack, ws, known)
    assert batch["status"] == "DONE" and batch["files"] == 100, batch
    assert wait_job(stack, ws, batch["job"])["status"] == "COMPLETED"
    files = manifest_files(stack, ws, batch["snapshot"])
    paths = set(files)
    assert files["burst/f000.csv"] == hashlib.sha256(b"v\nlast\n").hexdigest()
    assert {f"burst/f{i:03d}.csv" for i in range(100)} <= paths
    assert manifest_paths(stack, ws, batch["previous_snapshot"]) <= paths
    assert len(jobs(stack, ws)) == before + 1


def test_keys_with_spaces_plus_and_unicode_are_decoded(stack: Stack, ws: str) -> None:
    known = {b["id"] for b in batches(stack, ws)}
    s3, name = stack.aws("s3"), bucket(stack)
    odd = ["with space.csv", "a+b.csv", "naïve/é ü+.csv", "100%.csv"]
    for path in odd:
        s3.put_object(Bucket=name, Key=f"ws/{ws}/incoming/{path}", Body=path.encode())
    batch = wait_batch(stack, ws, known)
    assert batch["status"] == "DONE" and batch["files"] == len(odd) and not batch["skipped"], batch
    assert set(odd) <= manifest_paths(stack, ws, batch["snapshot"])
    wait_job(stack, ws, batch["job"])


def test_unknown_workspace_other_bucket_and_other_keys_are_ignored(stack: Stack, ws: str) -> None:
    known, before = {b["id"] for b in batches(stack, ws)}, len(jobs(stack, ws))
    lam, name = stack.aws("lambda"), bucket(stack)
    cases = {
        "nosuchws": (name, "ws/nosuchws/incoming/x.csv"),
        "bucket": ("some-other-bucket", f"ws/{ws}/incoming/x.csv"),
        "outside": (name, f"ws/{ws}/blobs/{'0' * 64}"),
        "not ws": (name, f"elsewhere/{ws}/incoming/x.csv"),
    }
    for label, (bucket_name, key) in cases.items():
        detail = json.loads(s3_event(bucket_name, key, "v1", "e1")["Detail"])
        answer = lam.invoke(FunctionName=function_name(stack, "TriggersOnUploadFunction"),
                            Payload=json.dumps({"detail-type": "Object Created", "source": "aws.s3",
                                                "detail": detail}).encode())
        assert "FunctionError" not in answer, label
        result = json.loads(answer["Payload"].read())["results"][0]
        assert "ignored" in result, (label, result)
    # And through the real path: an object in a workspace that does not exist.
    stack.aws("s3").put_object(Bucket=name, Key="ws/nosuchws/incoming/y.csv", Body=b"1")
    wait_logged(stack, f"ignored s3://{name}/ws/nosuchws/incoming/y.csv: workspace 'nosuchws' does not exist")
    assert [b for b in batches(stack, ws) if b["id"] not in known] == []
    assert len(jobs(stack, ws)) == before


def test_a_key_deleted_before_processing_is_skipped(stack: Stack, ws: str) -> None:
    known, before = {b["id"] for b in batches(stack, ws)}, len(jobs(stack, ws))
    s3, name = stack.aws("s3"), bucket(stack)
    key = f"ws/{ws}/incoming/vanish.csv"
    s3.put_object(Bucket=name, Key=key, Body=b"gone soon\n")
    s3.delete_object(Bucket=name, Key=key)
    batch = wait_batch(stack, ws, known)
    assert batch["status"] == "DONE" and batch["files"] == 0 and batch["job"] is None, batch
    assert [s["path"] for s in batch["skipped"]] == ["vanish.csv"]
    assert "deleted" in batch["skipped"][0]["reason"]
    assert len(jobs(stack, ws)) == before


def test_auto_retrain_off_starts_nothing(stack: Stack, ws: str, tmp_path: Path) -> None:
    known, before = {b["id"] for b in batches(stack, ws)}, len(jobs(stack, ws))
    off = stack.kaos_json("workspace", "auto-retrain", ws, "off")
    assert off["enabled"] is False
    quiet = tmp_path / "quiet.csv"
    quiet.write_text("q\n1\n")
    assert stack.kaos_json("data", "push", str(quiet), "-w", ws)["auto_retrain"] is False
    # The upload function logs its decision (at INFO, through the Lambda runtime's root handler): what it did not
    # start then will not start later.
    wait_logged(stack, "quiet.csv starts nothing")
    assert [b for b in batches(stack, ws) if b["id"] not in known] == []
    assert len(jobs(stack, ws)) == before
