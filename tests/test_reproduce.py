"""`kaos train reproduce`: a new job with exactly a completed job's recorded inputs, linked to it in provenance,
whose model is compared with the original's by archive sha256 and content sha256; byte-stable model archives
from the local SageMaker runner make the archive hashes comparable."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from chalicelib.domain import JobSpec, Resources
from kaos.client import ApiError
from kaos.local.sagemaker_runner import _tar_dir

from .conftest import REPO, Stack, tiny_code

REGRESSOR = REPO / "kaos" / "templates" / "sklearn-regressor"
UNKNOWN_JOB = "train-" + "0" * 24


# --- byte-stable archives (no stack) ----------------------------------------------------------------------
def _model_dir(root: Path, mtime: float, file_mode: int) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "model.pkl").write_bytes(b"\x80\x04weights" * 100)
    (root / "metrics.json").write_text('{"rmse": 1.5}')
    (root / "sub" / "notes.txt").write_text("nested")
    (root / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "run.sh", 0o700)
    os.chmod(root / "model.pkl", file_mode)
    for path in [*root.rglob("*"), root]:
        os.utime(path, (mtime, mtime))
    return root


def test_archives_of_identical_files_are_byte_identical(tmp_path: Path) -> None:
    first = _model_dir(tmp_path / "one", 1_000_000, 0o600)
    second = _model_dir(tmp_path / "two", 2_000_000, 0o664)
    _tar_dir(first, tmp_path / "one.tar.gz")
    time.sleep(1.1)  # a gzip header with the current time would now differ
    _tar_dir(second, tmp_path / "two.tar.gz")
    one, two = (tmp_path / "one.tar.gz").read_bytes(), (tmp_path / "two.tar.gz").read_bytes()
    assert hashlib.sha256(one).hexdigest() == hashlib.sha256(two).hexdigest()
    assert one[4:8] == b"\0\0\0\0", "gzip header mtime is 0"
    assert gzip.decompress(one)  # an ordinary gzip stream
    with tarfile.open(tmp_path / "one.tar.gz", "r:gz") as archive:
        members = archive.getmembers()
        assert [m.name for m in members] == ["metrics.json", "model.pkl", "run.sh", "sub", "sub/notes.txt"]
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
        modes = {m.name: m.mode for m in members}
        assert modes == {"metrics.json": 0o644, "model.pkl": 0o644, "run.sh": 0o755, "sub": 0o755,
                         "sub/notes.txt": 0o644}
        handle = archive.extractfile("model.pkl")
        assert handle is not None and handle.read() == (first / "model.pkl").read_bytes()


def test_other_file_bytes_give_another_archive(tmp_path: Path) -> None:
    first = _model_dir(tmp_path / "one", 1_000_000, 0o644)
    second = _model_dir(tmp_path / "two", 1_000_000, 0o644)
    (second / "model.pkl").write_bytes(b"other")
    os.utime(second / "model.pkl", (1_000_000, 1_000_000))
    _tar_dir(first, tmp_path / "one.tar.gz")
    _tar_dir(second, tmp_path / "two.tar.gz")
    assert (tmp_path / "one.tar.gz").read_bytes() != (tmp_path / "two.tar.gz").read_bytes()


def test_reproduction_of_changes_only_reproductions_fingerprints() -> None:
    spec = JobSpec("ws", "2024-01-01T00:00:00Z", "train", "c" * 64, (("training", "d" * 64),), "p" * 64, "image",
                   Resources("ml.m5.large", 1, 30, 3600))
    assert "reproduction_of" not in spec.document()
    assert spec.fingerprint == JobSpec(*[getattr(spec, f) for f in (
        "workspace", "incarnation", "kind", "code", "data", "params", "environment", "resources")]).fingerprint
    reproduction = JobSpec(**{**spec.__dict__, "reproduces": spec.job_id})
    assert reproduction.document() == {**spec.document(), "reproduction_of": spec.job_id}
    assert reproduction.job_id != spec.job_id


# --- on the embedded stack -----------------------------------------------------------------------------
def _deploy(stack: Stack, ws: str, code: Path, data: Path, params: Path | None = None) -> dict[str, Any]:
    args = ["train", "deploy", "-w", ws, "-s", str(code), "-d", str(data), "--wait", "--json"]
    job: dict[str, Any] = json.loads(stack.kaos(*args, *(["-h", str(params)] if params else [])).stdout)
    assert job["status"] == "COMPLETED", job
    return job


def _model_node(stack: Stack, ws: str, job_id: str) -> dict[str, Any]:
    graph = stack.client().lineage(ws, f"model:{job_id}", "up", 1)
    node: dict[str, Any] = next(n for n in graph["nodes"] if n["id"] == f"model:{job_id}")
    return node["attrs"]


def _executions_named(stack: Stack, execution_arn: str, name: str) -> list[str]:
    """Executions of the job's state machine whose name is `name` or an attempt of it (`name-<n>`)."""
    parts = execution_arn.split(":")
    machine = ":".join([*parts[:5], "stateMachine", parts[6]])
    sfn = stack.aws("stepfunctions")
    names = [e["name"] for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=machine)
             for e in page["executions"]]
    return [n for n in names if n == name or n.startswith(name + "-")]


def test_reproduce_a_deterministic_training(stack: Stack) -> None:
    ws = "repro-det"
    stack.kaos("workspace", "create", ws)
    original = _deploy(stack, ws, REGRESSOR / "train", REGRESSOR / "data", REGRESSOR / "params.json")

    reproduced = stack.kaos_json("train", "reproduce", f"model:{original['id']}", "-w", ws, "--wait")
    assert reproduced["status"] == "COMPLETED", reproduced
    assert reproduced["id"] != original["id"] and reproduced["cached"] is False
    assert reproduced["reproduction_of"] == original["id"]
    for name in ("inputs", "environment", "resources"):
        assert reproduced[name] == original[name], name
    assert reproduced["metrics"] == original["metrics"]

    # Provenance: job:<new> -reproduces-> job:<original>, walked upstream and downstream.
    up = stack.client().lineage(ws, f"job:{reproduced['id']}", "up", 1)
    assert {"source": f"job:{reproduced['id']}", "rel": "reproduces", "target": f"job:{original['id']}"} \
        in up["edges"]
    down = stack.client().lineage(ws, f"job:{original['id']}", "down", 1)
    assert any(e["rel"] == "reproduces" and e["source"] == f"job:{reproduced['id']}" for e in down["edges"])

    # The same model bytes: the archive (byte-stable locally) and its contents.
    first, second = _model_node(stack, ws, original["id"]), _model_node(stack, ws, reproduced["id"])
    assert first["sha256"] == second["sha256"]
    assert first["content_sha256"] == second["content_sha256"]
    assert len(first["content_sha256"]) == 64 and first["content_sha256"] != first["sha256"]
    comparison = reproduced["comparison"]
    assert comparison["identical"] is comparison["archive_identical"] is comparison["content_identical"] is True
    assert comparison["original"]["sha256"] == first["sha256"]
    assert comparison["reproduction"]["content_sha256"] == second["content_sha256"]

    # Again (by job id, human output): the same reproduction, nothing started a second time.
    again = stack.kaos("train", "reproduce", original["id"], "-w", ws, "--wait")
    assert reproduced["id"] in again.stdout and "already reproduced" in again.stdout
    assert "model bytes identical: yes" in again.stdout
    assert stack.client().reproduce(ws, original["id"])["id"] == reproduced["id"]
    job = stack.client().job(ws, reproduced["id"])
    assert job["attempt"] == 1 and [h["status"] for h in job["history"]].count("SUBMITTED") == 1
    assert _executions_named(stack, job["execution"], reproduced["id"]) == [reproduced["id"]]

    # A reproduction is no cache hit of an ordinary submission, and does not change the workspace's latest.
    resubmitted = stack.client().submit(ws, None, None, None)
    assert resubmitted["id"] == original["id"] and resubmitted["cached"] is True


def test_reproduce_a_nondeterministic_training(stack: Stack, tmp_path: Path) -> None:
    ws = "repro-nondet"
    stack.kaos("workspace", "create", ws)
    code = tiny_code(tmp_path, "open(os.path.join(os.environ['SM_MODEL_DIR'], 'stamp.txt'), 'w')"
                               ".write(repr(time.time()))")
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.csv").write_text("1,2\n")
    original = _deploy(stack, ws, code, data)

    result = stack.kaos("train", "reproduce", f"job:{original['id']}", "-w", ws, "--wait")
    assert "model bytes identical: no" in result.stdout, result.stdout
    assert "content sha256 differs" in result.stdout
    reproduced = stack.kaos_json("train", "reproduce", original["id"], "-w", ws)
    assert reproduced["status"] == "COMPLETED" and reproduced["cached"] is True
    comparison = reproduced["comparison"]
    assert comparison["identical"] is False and comparison["content_identical"] is False
    assert comparison["archive_identical"] is False


def test_reproduce_an_unknown_job_is_404(stack: Stack) -> None:
    ws = "repro-unknown"
    stack.kaos("workspace", "create", ws)
    with pytest.raises(ApiError) as error:
        stack.client().reproduce(ws, UNKNOWN_JOB)
    assert error.value.status == 404 and "does not exist" in error.value.message
    failed = stack.kaos("train", "reproduce", f"model:{UNKNOWN_JOB}", "-w", ws, check=False)
    assert failed.returncode == 1 and "does not exist" in failed.stderr
    # Not a member: the workspace itself is not found.
    with pytest.raises(ApiError) as error:
        stack.client("guest").reproduce(ws, UNKNOWN_JOB)
    assert error.value.status == 404
    wrong = stack.kaos("train", "reproduce", f"snapshot:{'a' * 64}", "-w", ws, check=False)
    assert wrong.returncode == 1 and "model:<job id>" in wrong.stderr


def test_reproduce_a_job_that_has_not_completed_is_409(stack: Stack, tmp_path: Path) -> None:
    ws = "repro-running"
    stack.kaos("workspace", "create", ws)
    code = tiny_code(tmp_path, "time.sleep(120)")
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.csv").write_text("1,2\n")
    job = stack.kaos_json("train", "deploy", "-w", ws, "-s", str(code), "-d", str(data))
    try:
        with pytest.raises(ApiError) as error:
            stack.client().reproduce(ws, job["id"])
        assert error.value.status == 409
        assert "only a COMPLETED job can be reproduced" in error.value.message
        assert job["id"] in error.value.message
    finally:
        stack.kaos("train", "kill", job["id"], "-w", ws, "--yes")
    with pytest.raises(ApiError) as error:
        stack.client().reproduce(ws, job["id"])
    assert error.value.status == 409 and "KILLED" in error.value.message
