"""The quick start, end to end through the CLI against the embedded stack and its executing state machine."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

from .conftest import TEMPLATE, Stack


def executions(stack: Stack) -> list[dict[str, object]]:
    sfn = stack.aws("stepfunctions")
    machine = next(m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"]
                   if "TrainingTraining" in m["name"])
    return list(sfn.list_executions(stateMachineArn=machine)["executions"])


def test_quick_start(stack: Stack) -> None:
    stack.kaos("workspace", "create", "quick")
    deploy = [ "train", "deploy", "-s", str(TEMPLATE / "train"), "-d", str(TEMPLATE / "data"),
               "-h", str(TEMPLATE / "params.json")]
    job = json.loads(stack.kaos(*deploy, "--wait", "--json").stdout)
    assert job["status"] == "COMPLETED", job
    assert job["metrics"]["accuracy"] > 0.9
    assert job["cached"] is False

    assert stack.executions(job["id"]) == ["SUCCEEDED"]

    # The model object is a non-empty tar.gz holding the model and its metrics.
    bucket, key = job["model"].removeprefix("s3://").split("/", 1)
    body = stack.aws("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as archive:
        names = {m.name.lstrip("./") for m in archive.getmembers()}
    assert {"model.pkl", "metrics.json"} <= names

    info = stack.kaos("train", "info", job["id"])
    assert "metric:accuracy" in info.stdout and "COMPLETED" in info.stdout

    # Provenance both ways: model <- job <- code/data/params/environment, and data -> job -> model.
    up = stack.kaos_json("train", "provenance", f"model:{job['id']}")
    kinds = {n["id"]: n["type"] for n in up["nodes"]}
    assert kinds[f"job:{job['id']}"] == "job"
    used = {e["target"] for e in up["edges"] if e["rel"] == "used"}
    inputs = job["inputs"]
    assert {f"snapshot:{inputs['code']}", f"snapshot:{inputs['params']}",
            f"snapshot:{inputs['data']['training']}"} <= used
    assert any(t.startswith("environment:") for t in used)
    down = stack.kaos_json("train", "provenance", f"snapshot:{inputs['data']['training']}", "--down")
    assert f"model:{job['id']}" in {n["id"] for n in down["nodes"]}
    tree = stack.kaos("train", "provenance", f"model:{job['id']}").stdout
    assert "produced by" in tree and "used" in tree

    # The same inputs again: a cache hit that starts no second execution.
    before = len(executions(stack))
    again = json.loads(stack.kaos(*deploy, "--json").stdout)
    assert again["id"] == job["id"] and again["cached"] is True
    assert len(executions(stack)) == before

    logs = stack.kaos("train", "logs", job["id"]).stdout
    assert "loaded 1797 examples" in logs


def test_a_raising_training_script_fails_visibly(stack: Stack, tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text(
        "import os\nprint('starting up')\nraise RuntimeError('the learning rate exploded: ' + os.environ['SM_HP_LR'])\n"
    )
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"lr": 42}))
    stack.kaos("workspace", "create", "crash")
    result = stack.kaos("train", "deploy", "-s", str(code), "-d", str(TEMPLATE / "data"), "-h", str(params),
                        "--wait", "--json", check=False)
    assert result.returncode == 0  # --json reports the job; the job's status carries the failure
    job = json.loads(result.stdout)
    assert job["status"] == "FAILED"
    assert "the learning rate exploded: 42" in job["failure_reason"]
    assert "the learning rate exploded" in stack.kaos("train", "info", job["id"]).stdout
    logs = stack.kaos("train", "logs", job["id"]).stdout
    assert "starting up" in logs and "RuntimeError: the learning rate exploded: 42" in logs
    assert "loaded 1797 examples" not in logs  # only this job's streams, not the whole log group
    assert stack.executions(job["id"]) == ["FAILED"]


def test_cli_rejects_bad_input_before_uploading(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", "badinput")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        "does not exist": ["-s", str(tmp_path / "nope"), "-d", str(TEMPLATE / "data")],
        "has no files": ["-s", str(empty), "-d", str(TEMPLATE / "data")],
    }
    not_object = tmp_path / "list.json"
    not_object.write_text("[1, 2]")
    cases["JSON object"] = ["-s", str(TEMPLATE / "train"), "-d", str(TEMPLATE / "data"), "-h", str(not_object)]
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    linked = tmp_path / "linked"
    shutil.copytree(TEMPLATE / "train", linked)
    (linked / "leak.txt").symlink_to(outside)
    cases["symlink leaving the bundle"] = ["-s", str(linked), "-d", str(TEMPLATE / "data")]
    for message, args in cases.items():
        result = stack.kaos("train", "deploy", *args, check=False)
        assert result.returncode != 0
        assert message in " ".join(result.stderr.split()), (message, result.stderr)
    assert stack.kaos_json("workspace", "info")["snapshots"] == 0
    bad = stack.kaos("workspace", "create", "Not_Valid", check=False)
    assert bad.returncode != 0 and "lowercase letters" in " ".join(bad.stderr.split())
