"""OpenLineage run events (chalicelib/lineage_events.py), end to end: a stack of its own, started with
KAOS_OPENLINEAGE_URL pointing at a receiver in this process and KAOS_OPENLINEAGE_FILE at a file, runs a training
that completes, one that fails and a batch job whose output a training reads; every event received is checked
against the OpenLineage RunEvent schema.

The official schema (https://openlineage.io/spec/2-0-2/OpenLineage.json) is not shipped by openlineage-python (its
wheel holds only the generated attrs classes) nor by any other installed package, and tests cannot fetch it, so
RUN_EVENT_SCHEMA below writes out what that spec requires of a RunEvent and of the facets kaos emits.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import pytest

from chalicelib import config, lineage_events
from chalicelib.snapshots import manifest_key
from kaos.bundle import hash_files, scan

from .conftest import TEMPLATE, Stack, stack_environment, tiny_code

WS = "lineage"
LINEAGE_PATH = "/api/v1/lineage"

_FACET = {
    "type": "object",
    "required": ["_producer", "_schemaURL"],
    "properties": {"_producer": {"type": "string"}, "_schemaURL": {"type": "string"}},
}
_FACETS = {"type": "object", "additionalProperties": _FACET}


def _facets(**required: list[str]) -> dict[str, Any]:
    """Facets of one level, with the fields the spec requires of the named standard facets."""
    return {**_FACETS, "properties": {name: {"allOf": [_FACET, {"required": fields}]}
                                      for name, fields in required.items()}}


_DATASET = {
    "type": "object",
    "required": ["namespace", "name"],
    "properties": {"namespace": {"type": "string", "minLength": 1}, "name": {"type": "string", "minLength": 1},
                   "facets": _facets(version=["datasetVersion"])},
}
# RunEvent of OpenLineage spec 2-0-2: BaseEvent (eventTime, producer, schemaURL) + run, job, inputs, outputs;
# ErrorMessageRunFacet 1-0-1, JobTypeJobFacet 2-0-4 and DatasetVersionDatasetFacet 1-0-1 required fields.
RUN_EVENT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["eventTime", "producer", "schemaURL", "run", "job"],
    "properties": {
        "eventType": {"enum": ["START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER"]},
        "eventTime": {"type": "string", "format": "date-time"},
        "producer": {"type": "string"},
        "schemaURL": {"type": "string", "pattern": r"^https://openlineage\.io/spec/2-0-2/OpenLineage\.json#"},
        "run": {
            "type": "object",
            "required": ["runId"],
            "properties": {"runId": {"type": "string", "format": "uuid"},
                           "facets": _facets(errorMessage=["message", "programmingLanguage"])},
        },
        "job": {
            "type": "object",
            "required": ["namespace", "name"],
            "properties": {"namespace": {"type": "string", "minLength": 1}, "name": {"type": "string", "minLength": 1},
                           "facets": _facets(jobType=["processingType", "integration"])},
        },
        "inputs": {"type": "array", "items": {"allOf": [_DATASET, {"properties": {"inputFacets": _FACETS}}]}},
        "outputs": {"type": "array", "items": {"allOf": [_DATASET, {"properties": {"outputFacets": _FACETS}}]}},
    },
}


def validate(event: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(RUN_EVENT_SCHEMA,
                                                format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(event), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    # `format: uri` has no checker in jsonschema without extra packages: the spec's URIs, checked here.
    uris = [event["producer"], event["schemaURL"]] + [facet[key] for facet in _all_facets(event)
                                                      for key in ("_producer", "_schemaURL")]
    assert all(urlparse(u).scheme for u in uris), uris
    assert event["eventTime"].endswith(("Z", "+00:00")), event["eventTime"]


def _all_facets(event: dict[str, Any]) -> list[dict[str, Any]]:
    found = list(event["run"].get("facets", {}).values()) + list(event["job"].get("facets", {}).values())
    for dataset in event.get("inputs", []) + event.get("outputs", []):
        for key in ("facets", "inputFacets", "outputFacets"):
            found += list(dataset.get(key, {}).values())
    return found


# --- the receiver and the stack -----------------------------------------------------------------------------
class Receiver:
    """An OpenLineage HTTP endpoint: records each POST's path and JSON body."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.posts.append((self.path, json.loads(body)))
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self, job_id: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        """The job's events once `count` arrived (the record task emits after the status the CLI waits for)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = [body for _, body in self.posts if body["job"]["name"] == job_id]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(scope="module")
def lineage_stack(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Stack]:
    """A stack of its own: the shared one runs without the lineage variables."""
    home = tmp_path_factory.mktemp("kaos-lineage-home")
    env = {**stack_environment(home), config.OPENLINEAGE_URL: receiver.url,
           config.OPENLINEAGE_FILE: str(home / "lineage.jsonl")}
    command = [sys.executable, "-m", "kaos.cli", "local"]
    started = subprocess.run([*command, "up", "--detach", "--state-dir", str(home / "local")], env=env,
                             capture_output=True, text=True, timeout=600)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        stack = Stack(home)
        stack.kaos("workspace", "create", WS)
        yield stack
    finally:
        subprocess.run([*command, "down", "--state-dir", str(home / "local")], env=env, capture_output=True,
                       text=True, timeout=120)


def bucket_of(job: dict[str, Any]) -> str:
    return str(urlparse(job["model"]).netloc) if str(job["model"]).startswith("s3://") else ""


def deploy(stack: Stack, code: Path, data: Path, params: Path) -> dict[str, Any]:
    result = stack.kaos("train", "deploy", "-w", WS, "-s", str(code), "-d", str(data), "-h", str(params), "--wait",
                        "--json", check=False)
    assert result.returncode == 0, result.stderr
    job: dict[str, Any] = json.loads(result.stdout)
    return job


def check_inputs(event: dict[str, Any], job: dict[str, Any], bucket: str) -> None:
    inputs = job["inputs"]
    expected = [("code", inputs["code"], None), ("params", inputs["params"], None)] + [
        ("data", sid, channel) for channel, sid in sorted(inputs["data"].items())]
    assert [(d["namespace"], d["name"]) for d in event["inputs"]] == [
        (f"s3://{bucket}", manifest_key(WS, sid)) for _, sid, _ in expected]
    for dataset, (kind, sid, channel) in zip(event["inputs"], expected, strict=True):
        assert dataset["facets"]["kaos_snapshot"]["snapshotId"] == sid
        assert dataset["facets"]["kaos_snapshot"]["kind"] == kind
        assert dataset["facets"]["version"]["datasetVersion"] == sid
        assert dataset.get("inputFacets", {}).get("kaos_channel", {}).get("name") == channel


def check_run(events: list[dict[str, Any]], job: dict[str, Any], types_: list[str]) -> None:
    assert [e["eventType"] for e in events] == types_, events
    for event in events:
        validate(event)
        assert event["job"]["namespace"] == f"kaos://{WS}" and event["job"]["name"] == job["id"]
        assert event["run"]["runId"] == lineage_events.run_id(WS, job["id"], 1)
        assert event["job"]["facets"]["jobType"]["jobType"] == ("TRAINING" if job["kind"] == "train" else "BATCH")
    assert events[0]["eventTime"] == job["started_at"] and events[-1]["eventTime"] == job["ended_at"]


# --- end to end ---------------------------------------------------------------------------------------------
def test_a_completed_training_emits_start_and_complete(lineage_stack: Stack, receiver: Receiver,
                                                       tmp_path: Path) -> None:
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"lr": 0.5}))
    job = deploy(lineage_stack, tiny_code(tmp_path), TEMPLATE / "data", params)
    assert job["status"] == "COMPLETED", job
    events = receiver.events(job["id"], 2)
    check_run(events, job, ["START", "COMPLETE"])
    bucket = bucket_of(job)
    for event in events:
        check_inputs(event, job, bucket)
    assert events[0].get("outputs", []) == []
    (model,) = events[1]["outputs"]
    assert f"{model['namespace']}/{model['name']}" == job["model"]
    assert all(path == LINEAGE_PATH for path, _ in receiver.posts)
    # The file transport got the same events, one JSON document a line (written after the HTTP post: read once
    # both are there).
    def in_file() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in (lineage_stack.home / "lineage.jsonl").read_text().splitlines()]
        return [e for e in lines if e["job"]["name"] == job["id"]]

    deadline = time.monotonic() + 30
    while len(in_file()) < len(events) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert in_file() == events


def test_a_failed_training_emits_start_and_fail_with_the_error(lineage_stack: Stack, receiver: Receiver,
                                                               tmp_path: Path) -> None:
    params = tmp_path / "params.json"
    params.write_text("{}")
    code = tiny_code(tmp_path, "raise RuntimeError('the lineage test exploded')")
    job = deploy(lineage_stack, code, TEMPLATE / "data", params)
    assert job["status"] == "FAILED", job
    events = receiver.events(job["id"], 2)
    check_run(events, job, ["START", "FAIL"])
    check_inputs(events[1], job, events[1]["inputs"][0]["namespace"].removeprefix("s3://"))
    assert events[1].get("outputs", []) == []
    error = events[1]["run"]["facets"]["errorMessage"]
    assert "the lineage test exploded" in error["message"] and error["message"] == job["failure_reason"]


def test_a_batch_output_is_the_dataset_a_later_training_reads(lineage_stack: Stack, receiver: Receiver,
                                                              tmp_path: Path) -> None:
    code = tmp_path / "batch"
    code.mkdir()
    (code / "process.py").write_text(
        "import os, shutil\nshutil.copy(os.path.join(os.environ['KAOS_INPUT_DIR'], 'digits.csv'), "
        "os.path.join(os.environ['KAOS_OUTPUT_DIR'], 'digits.csv'))\n")
    result = lineage_stack.kaos("batch", "deploy", "-w", WS, "-s", str(code), "-d", str(TEMPLATE / "data"),
                                "--wait", "--json")
    batch = json.loads(result.stdout)
    assert batch["status"] == "COMPLETED", batch
    events = receiver.events(batch["id"], 2)
    check_run(events, batch, ["START", "COMPLETE"])
    output_id = batch["model"].removeprefix("snapshot:")
    (output,) = events[1]["outputs"]
    assert output["name"] == manifest_key(WS, output_id)
    assert output["facets"]["kaos_snapshot"] == {**output["facets"]["kaos_snapshot"], "snapshotId": output_id,
                                                 "kind": "data"}

    client = lineage_stack.client()
    files = hash_files(scan(tiny_code(tmp_path), "code"), lambda _: None)
    code_id = client.upload_snapshot(WS, "code", files, lambda _: None)["id"]
    training = client.submit(WS, code_id, {"training": output_id}, {})
    start, complete = receiver.events(training["id"], 2)
    assert complete["eventType"] == "COMPLETE", complete
    read = {(d["namespace"], d["name"]) for d in start["inputs"]}
    assert (output["namespace"], output["name"]) in read  # one dataset: the lineage graph is connected


# --- without a stack ----------------------------------------------------------------------------------------
def test_off_by_default_the_client_is_never_imported() -> None:
    env = {k: v for k, v in os.environ.items() if k not in (config.OPENLINEAGE_URL, config.OPENLINEAGE_FILE)}
    probe = ("import sys, types\nfrom chalicelib import batch, config, lineage_events, training\n"
             "settings = config.Settings('record_outcome', {'KAOS_OPENLINEAGE_URL': '', 'KAOS_OPENLINEAGE_FILE': ''})\n"
             "lineage_events.started(types.SimpleNamespace(job_id='j'), settings)\n"
             "assert not [m for m in sys.modules if m.startswith('openlineage')]\n")
    subprocess.run([sys.executable, "-c", probe], env=env, check=True, timeout=60)


def _item(**fields: Any) -> Any:
    spec = {"workspace": "w", "code": "c" * 64, "params": "p" * 64, "data": {"training": "d" * 64}}
    return types.SimpleNamespace(**{"job_id": "train-x", "attempt": 1, "kind": "train", "status": "FAILED",
                                    "spec": spec, "started_at": None, "ended_at": None, "model_uri": None,
                                    "failure_reason": "boom", **fields})


def test_emission_never_fails_the_pipeline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(config.BUCKET, "b")
    monkeypatch.setenv(config.OPENLINEAGE_URL, "http://127.0.0.1:9")  # nothing listens (discard port)
    monkeypatch.setenv(config.OPENLINEAGE_FILE, str(tmp_path / "missing-dir" / "events.jsonl"))
    settings = config.Settings("record_outcome", os.environ)
    started = time.monotonic()
    lineage_events.started(_item(), settings)
    lineage_events.ended(_item(), settings)
    lineage_events.ended(_item(spec=None), settings)  # an event that cannot even be built
    assert time.monotonic() - started < 10


def test_the_run_id_is_the_attempt_s() -> None:
    first = lineage_events.run_id("w", "train-x", 1)
    assert first == lineage_events.run_id("w", "train-x", 1)  # a retried task re-emits the same run
    assert first != lineage_events.run_id("w", "train-x", 2)  # a resume is a new run of the same job
    assert first != lineage_events.run_id("v", "train-x", 1)
