"""Batch (processing) jobs end to end through the CLI on the embedded stack: the batch state machine runs
`batch:submitJob.sync`, the local Batch runner runs the job definition's container command (the same bootstrap
as on Fargate), and the output becomes a data snapshot that a training job can use."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kaos.bundle import hash_files, scan
from kaos.client import Client

from .conftest import TEMPLATE, Stack, inject

TERMINAL = ("COMPLETED", "FAILED", "KILLED")

# Reads every CSV of the input snapshot, scales the pixel columns to [0, 1] and writes one CSV of the same shape.
SCALE = """\
import csv, os, pathlib
source, target = pathlib.Path(os.environ["KAOS_INPUT_DIR"]), pathlib.Path(os.environ["KAOS_OUTPUT_DIR"])
rows = 0
with open(target / "digits_scaled.csv", "w", newline="") as out:
    writer = csv.writer(out)
    for path in sorted(source.glob("*.csv")):
        with open(path, newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            if rows == 0:
                writer.writerow(header)
            for row in reader:
                writer.writerow([f"{float(v) / 16:.4f}" for v in row[:-1]] + [row[-1]])
                rows += 1
print(f"scaled {rows} rows")
"""


def upload(client: Client, workspace: str, kind: str, directory: Path) -> str:
    files = hash_files(scan(directory, kind), lambda _: None)
    return str(client.upload_snapshot(workspace, kind, files, lambda _: None)["id"])


def wait(client: Client, workspace: str, job_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.job(workspace, job_id)
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.5)
    raise AssertionError(f"{job_id} did not end within {timeout} s")


def test_batch_output_is_a_data_snapshot_training_can_use(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", "batch")
    code = tmp_path / "scale"
    code.mkdir()
    (code / "scale.py").write_text(SCALE)
    deploy = ["batch", "deploy", "-s", str(code), "-d", str(TEMPLATE / "data"), "--command", "python scale.py"]
    job = json.loads(stack.kaos(*deploy, "--wait", "--json").stdout)
    assert job["status"] == "COMPLETED", job
    assert job["kind"] == "batch" and job["id"].startswith("batch-") and job["cached"] is False
    assert job["model"].startswith("snapshot:")
    output = job["model"].removeprefix("snapshot:")
    assert stack.executions(job["id"]) == ["SUCCEEDED"]

    # The output snapshot holds exactly the file the command wrote, content-addressed like any upload.
    s3 = stack.aws("s3")
    bucket = next(b["Name"] for b in s3.list_buckets()["Buckets"] if b["Name"].startswith("kaos-storagedata"))
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"ws/batch/manifests/{output}.json")["Body"].read())
    assert manifest["kind"] == "data"
    assert [f["path"] for f in manifest["files"]] == ["digits_scaled.csv"]
    blob = s3.get_object(Bucket=bucket, Key=f"ws/batch/blobs/{manifest['files'][0]['sha256']}")["Body"].read()
    lines = blob.decode().splitlines()
    assert len(lines) == 1798 and lines[1].split(",")[-1] == "0" and lines[1].startswith("0.0000,0.0000,0.3125")
    # The job's stdout reached CloudWatch Logs (the awslogs group of the job definition) and its S3 archive.
    log = s3.get_object(Bucket=bucket, Key=f"ws/batch/jobs/{job['id']}/log.txt")["Body"].read().decode()
    assert "scaled 1797 rows" in log
    info = stack.kaos("train", "info", job["id"]).stdout
    assert "COMPLETED" in info and output in info

    # Identical inputs and command: a cache hit, no second execution.
    again = json.loads(stack.kaos(*deploy, "--json").stdout)
    assert again["id"] == job["id"] and again["cached"] is True
    assert len(stack.executions(job["id"])) == 1

    # `kaos train deploy -d` takes directories, so the output snapshot is used through the API client.
    client = stack.client()
    train_code = upload(client, "batch", "code", TEMPLATE / "train")
    params = json.loads((TEMPLATE / "params.json").read_text())
    training = client.submit("batch", train_code, {"training": output}, params)
    trained = wait(client, "batch", training["id"])
    assert trained["status"] == "COMPLETED", trained
    assert trained["metrics"]["accuracy"] > 0.9

    # Provenance: training -used-> output snapshot <-produced- batch job -used-> its code and data.
    up = client.lineage("batch", f"job:{trained['id']}", "up")
    edges = {(e["source"], e["rel"], e["target"]) for e in up["edges"]}
    out_node, batch_node = f"snapshot:{output}", f"job:{job['id']}"
    assert (f"job:{trained['id']}", "used", out_node) in edges
    assert (batch_node, "produced", out_node) in edges
    assert (batch_node, "used", f"snapshot:{job['inputs']['code']}") in edges
    assert (batch_node, "used", f"snapshot:{job['inputs']['data']['input']}") in edges
    down = client.lineage("batch", f"snapshot:{job['inputs']['data']['input']}", "down")
    assert f"job:{trained['id']}" in {n["id"] for n in down["nodes"]}


def test_a_failing_batch_command_fails_visibly(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", "batchfail")
    code = tmp_path / "broken"
    code.mkdir()
    # No --command: main.py is the default entry point.
    (code / "main.py").write_text(
        "import sys\nprint('starting up')\nsys.stderr.write('the disk is on fire\\n')\nsys.exit(3)\n"
    )
    result = stack.kaos("batch", "deploy", "-s", str(code), "-d", str(TEMPLATE / "data"), "--wait", "--json",
                        check=False)
    assert result.returncode == 0, result.stderr  # --json reports the job; its status carries the failure
    job = json.loads(result.stdout)
    assert job["status"] == "FAILED", job
    assert "the disk is on fire" in job["failure_reason"]
    assert "the disk is on fire" in stack.kaos("train", "info", job["id"]).stdout
    assert job["model"] is None
    assert stack.executions(job["id"]) == ["FAILED"]
    # Without --wait --json the CLI exits non-zero on a failed job.
    plain = stack.kaos("batch", "deploy", "-s", str(code), "-d", str(TEMPLATE / "data"), "--wait", check=False)
    assert plain.returncode == 1 and "the disk is on fire" in plain.stdout


def test_a_job_that_writes_nothing_fails_with_the_reason(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", "batchempty")
    code = tmp_path / "quiet"
    code.mkdir()
    (code / "process.py").write_text("print('nothing to say')\n")
    job = json.loads(stack.kaos("batch", "deploy", "-s", str(code), "-d", str(TEMPLATE / "data"), "--wait",
                                "--json").stdout)
    assert job["status"] == "FAILED"
    assert "wrote no files to KAOS_OUTPUT_DIR" in job["failure_reason"]


def test_batch_throttling_on_submit_is_retried(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", "batchthrottle")
    code = tmp_path / "copy"
    code.mkdir()
    (code / "process.py").write_text(
        "import os, shutil\nshutil.copytree(os.environ['KAOS_INPUT_DIR'], os.environ['KAOS_OUTPUT_DIR'], "
        "dirs_exist_ok=True)\n"
    )
    inject(stack, {"service": "batch", "action": "SubmitJob", "code": "ThrottlingException", "times": 1})
    job = json.loads(stack.kaos("batch", "deploy", "-s", str(code), "-d", str(TEMPLATE / "data"), "--wait",
                                "--json").stdout)
    assert job["status"] == "COMPLETED", job
    history = stack.aws("stepfunctions").get_execution_history(executionArn=job["execution"], maxResults=1000)
    failed = [e for e in history["events"] if e["type"] == "TaskFailed"]
    assert len(failed) == 1 and failed[0]["taskFailedEventDetails"]["error"] == "Batch.ThrottlingException"
    # Copying the input unchanged yields a snapshot with the input's content: the same snapshot id.
    assert job["model"] == f"snapshot:{job['inputs']['data']['input']}"
