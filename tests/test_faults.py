"""Faults end in the right state with the reason visible, nothing lost, provenance of failed attempts kept."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .conftest import TEMPLATE, Stack, inject, tiny_code


def deploy(stack: Stack, code: Path, *extra: str, params: dict[str, Any] | None = None, tmp: Path) -> Any:
    params_file = tmp / "params.json"
    params_file.write_text(json.dumps(params or {}))
    result = stack.kaos("train", "deploy", "-s", str(code), "-d", str(TEMPLATE / "data"), "-h", str(params_file),
                        "--json", *extra, check=False)
    assert result.stdout, result.stderr
    return json.loads(result.stdout)


def wait_for(stack: Stack, job_id: str, statuses: tuple[str, ...], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stack.kaos_json("train", "info", job_id)
        if job["status"] in statuses:
            return job
        time.sleep(0.5)
    raise AssertionError(f"{job_id} never reached {statuses}: {job}")


def test_sagemaker_throttling_on_create_is_retried(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", "fault-throttle")
    inject(stack, {"service": "sagemaker", "action": "CreateTrainingJob", "code": "ThrottlingException",
                   "times": 2})
    job = deploy(stack, tiny_code(tmp_path), "--wait", params={"run": "throttled"}, tmp=tmp_path)
    assert job["status"] == "COMPLETED", job
    history = stack.aws("stepfunctions").get_execution_history(executionArn=job["execution"], maxResults=1000)
    failed = [e for e in history["events"] if e["type"] == "TaskFailed"]
    assert len(failed) == 2 and "ThrottlingException" in failed[0]["taskFailedEventDetails"]["cause"]


def test_a_raising_task_lambda_fails_the_job_and_resume_completes_it(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", "fault-lambda")
    inject(stack, {"lambda": "PrepareTraining", "error": "ConnectionResetError", "times": 1})
    job = deploy(stack, tiny_code(tmp_path), "--wait", params={"run": "lambda"}, tmp=tmp_path)
    assert job["status"] == "FAILED"
    assert job["failure_reason"].startswith("ConnectionResetError: injected fault")
    info = stack.kaos("train", "info", job["id"]).stdout
    assert "ConnectionResetError" in info
    lineage = stack.kaos_json("train", "provenance", job["id"])
    assert any(n["id"].startswith("snapshot:") for n in lineage["nodes"])  # inputs of the failed attempt kept
    resumed = json.loads(stack.kaos("train", "resume", job["id"], "--wait", "--json").stdout)
    assert resumed["status"] == "COMPLETED" and resumed["attempt"] == 2
    assert resumed["attempts"][0]["failure_reason"].startswith("ConnectionResetError")
    assert resumed["training_job_name"] == f"{job['id']}-2"
    assert stack.kaos("train", "resume", job["id"], check=False).returncode != 0  # only FAILED/KILLED resume


def test_a_failure_while_recording_is_recorded_not_lost(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", "fault-record")
    inject(stack, {"lambda": "RecordOutcome", "error": "ProvisionedThroughputExceeded", "times": 1})
    job = deploy(stack, tiny_code(tmp_path), "--wait", params={"run": "record"}, tmp=tmp_path)
    assert job["status"] == "FAILED"
    assert "ProvisionedThroughputExceeded" in job["failure_reason"]


def test_a_job_over_its_stopping_condition_is_stopped(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", "fault-runtime")
    code = tiny_code(tmp_path, "time.sleep(60)")
    job = deploy(stack, code, "--wait", "--max-runtime", "2", params={"run": "slow"}, tmp=tmp_path)
    assert job["status"] == "FAILED"
    assert "training stopped (MaxRuntimeExceeded)" in job["failure_reason"], job["failure_reason"]
    assert job["resources"]["max_runtime_seconds"] == 2


def test_kill_mid_run(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", "fault-kill")
    code = tiny_code(tmp_path, "print('sleeping', flush=True)\ntime.sleep(120)")
    job = deploy(stack, code, params={"run": "kill"}, tmp=tmp_path)
    wait_for(stack, job["id"], ("TRAINING",))
    stack.kaos("train", "kill", job["id"], "--yes")
    killed = stack.kaos_json("train", "info", job["id"])
    assert killed["status"] == "KILLED"
    sagemaker = stack.aws("sagemaker")
    deadline = time.monotonic() + 30
    while sagemaker.describe_training_job(TrainingJobName=job["id"])["TrainingJobStatus"] != "Stopped":
        assert time.monotonic() < deadline, "the SageMaker job was not stopped"
        time.sleep(0.5)
    execution = stack.aws("stepfunctions").describe_execution(executionArn=killed["execution"])
    assert execution["status"] == "ABORTED"
    time.sleep(1.5)  # a late RecordFailure of the stopped execution must not overwrite KILLED
    assert stack.kaos_json("train", "info", job["id"])["status"] == "KILLED"
    assert any(n["id"] == f"job:{job['id']}" for n in stack.kaos_json("train", "provenance", job["id"])["nodes"])
    assert stack.kaos("train", "kill", job["id"], "--yes", check=False).returncode != 0
