"""S3-triggered retraining through the services, without the embedded stack (in-memory repositories, moto in
process): what a batch takes when S3's events arrive late, twice, or never."""
from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from chalicelib import triggers
from chalicelib.domain import sha256_hex
from chalicelib.triggers import incoming_prefix
from chalicelib.wiring import Wiring
from tests.service_wiring import BUCKET, OWNER, component, services, snapshot, workspace  # noqa: F401

_SEQUENCER = itertools.count()


def _put(ws: str, path: str, body: bytes) -> dict[str, Any]:
    """Uploads a file under the workspace's incoming/ (the versioned bucket); the S3 event it makes, with a
    sequencer as S3 gives one (growing hex)."""
    key = incoming_prefix(ws) + path
    put = boto3.client("s3").put_object(Bucket=BUCKET, Key=key, Body=body)
    return {"detail-type": "Object Created", "source": "aws.s3",
            "detail": {"bucket": {"name": BUCKET},
                       "object": {"key": key, "version-id": put["VersionId"], "eTag": put["ETag"].strip('"'),
                                  "sequencer": f"0062E99A88DC4074{next(_SEQUENCER):04X}"}}}


@pytest.fixture
def ws(services: Wiring) -> str:  # noqa: F811
    boto3.client("s3").put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    ws = workspace(services)
    code = snapshot(services, ws.name, "code", {"train.py": b"print('hi')\n"})
    data = snapshot(services, ws.name, "data", {"base.csv": b"a\n0\n"})
    services.training.submit(ws.name, ws.created_at, OWNER, {"code": code, "data": {"training": data}})
    services.triggers.set_enabled(ws.name, OWNER, True)
    return ws.name


def _deliver(wiring: Wiring, event: dict[str, Any]) -> dict[str, Any]:
    return component(wiring, "on_upload").triggers.on_event(event)[0]


def _contents(wiring: Wiring, ws: str, snapshot_id: str) -> dict[str, str]:
    return {f.path: f.sha256 for f in wiring.snapshots.manifest(ws, snapshot_id).files}


def test_files_whose_events_have_not_arrived_join_the_closing_batch(services: Wiring, ws: str,  # noqa: F811
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triggers, "WINDOW_SECONDS", 0)  # the quiet window has passed
    events = [_put(ws, f"burst/f{i}.csv", f"v\n{i}\n".encode()) for i in range(5)]
    joined = [_deliver(services, event) for event in events[:2]]  # three deliveries are still on their way
    batch_id = joined[0]["batch"]
    assert joined[1]["batch"] == batch_id
    processed = component(services, "process_batch").triggers.process(ws, batch_id)
    assert processed["status"] == "DONE" and processed["files"] == 5, processed
    paths = _contents(services, ws, processed["snapshot"])
    assert set(paths) == {"base.csv", *(f"burst/f{i}.csv" for i in range(5))}
    # The late deliveries find their files taken: no second batch, no second job.
    for event in events[2:]:
        assert _deliver(services, event) == {"duplicate": event["detail"]["object"]["key"], "batch": batch_id}
    assert [b["id"] for b in services.triggers.status(ws)["batches"]] == [batch_id]


def test_a_batch_sweeps_only_what_arrived_since_the_batch_ahead_opened(services: Wiring, ws: str,  # noqa: F811
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triggers, "WINDOW_SECONDS", 0)
    process = component(services, "process_batch").triggers
    first = _deliver(services, _put(ws, "one.csv", b"1\n"))["batch"]
    assert process.process(ws, first)["files"] == 1
    # Two uploads whose events were dropped, an unreadable key OnUpload ignores, then one that is delivered.
    _put(ws, "lost-a.csv", b"a\n")
    _put(ws, "lost-b.csv", b"b\n")
    _put(ws, "bad//path.csv", b"x\n")
    second = _deliver(services, _put(ws, "two.csv", b"2\n"))["batch"]
    assert second != first
    done = process.process(ws, second)
    assert done["status"] == "DONE" and done["files"] == 3, done
    assert {"lost-a.csv", "lost-b.csv", "two.csv", "one.csv"} <= set(_contents(services, ws, done["snapshot"]))
    assert "bad//path.csv" not in _contents(services, ws, done["snapshot"])


def test_files_uploaded_while_auto_retrain_was_off_are_not_swept(services: Wiring, ws: str,  # noqa: F811
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triggers, "WINDOW_SECONDS", 0)
    monkeypatch.setattr(triggers, "CLOCK_SLACK_SECONDS", 0)
    services.triggers.set_enabled(ws, OWNER, False)
    assert "ignored" in _deliver(services, _put(ws, "while-off.csv", b"off\n"))
    services.triggers.set_enabled(ws, OWNER, True)
    batch = _deliver(services, _put(ws, "after.csv", b"on\n"))["batch"]
    done = component(services, "process_batch").triggers.process(ws, batch)
    assert done["files"] == 1 and "while-off.csv" not in _contents(services, ws, done["snapshot"])


def test_the_newest_version_of_a_path_wins_whether_swept_or_delivered(services: Wiring, ws: str,  # noqa: F811
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A swept file has no event sequencer: S3's order of the key's versions decides, whichever row came first."""
    monkeypatch.setattr(triggers, "WINDOW_SECONDS", 0)
    older = _put(ws, "same.csv", b"old\n")
    _put(ws, "same.csv", b"new\n")  # its event has not arrived when the batch closes
    batch = _deliver(services, older)["batch"]
    done = component(services, "process_batch").triggers.process(ws, batch)
    assert done["status"] == "DONE", done
    assert _contents(services, ws, done["snapshot"])["same.csv"] == sha256_hex(b"new\n")


def test_a_batch_stays_open_while_the_sweep_finds_recent_uploads(services: Wiring, ws: str,  # noqa: F811
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Quiet by its events (the last joined 20 s ago), but S3 holds a file uploaded just now whose event is late:
    the burst is still arriving, so the batch takes it and waits another window."""
    earlier = (datetime.now(UTC) - timedelta(seconds=20)).isoformat(timespec="milliseconds")
    with monkeypatch.context() as then:
        then.setattr(triggers, "now", lambda: earlier)
        batch = _deliver(services, _put(ws, "first.csv", b"1\n"))["batch"]
    late = _put(ws, "late.csv", b"2\n")
    process = component(services, "process_batch").triggers
    with pytest.raises(triggers.BatchStillFilling, match="still on its way was uploaded"):
        process.process(ws, batch)
    assert _deliver(services, late)["duplicate"] == late["detail"]["object"]["key"]
    monkeypatch.setattr(triggers, "WINDOW_SECONDS", 0)  # a window later
    done = process.process(ws, batch)
    assert done["status"] == "DONE" and done["files"] == 2, done
