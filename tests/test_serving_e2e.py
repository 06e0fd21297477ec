"""Serving end to end through the CLI, as users run it, on the embedded stack: train two versions of the digits
template -> register -> approve -> alias -> deploy -> predict in CSV, JSON and NPY (the framework's default
handlers, Accept negotiation) -> the limits (413, 415, 406, a model error) -> logs -> provenance through the
endpoint -> a non-member sees and invokes nothing -> promote the second version (champion moved) -> rollback ->
kill, twice.

One test function: the steps build on each other, and one worker runs them all on its one stack (pytest -n 2
would otherwise train the two versions on each worker's stack)."""
from __future__ import annotations

import io
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from . import cli_process
from .conftest import TEMPLATE, Stack

WS = "serving"
ROWS = TEMPLATE / "requests" / "digits-0-1-2"
SERVERLESS_MAX_PAYLOAD = 4 * 1024 * 1024


def train_two_versions(stack: Stack, tmp: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The template's params and a more regularized variant, trained at the same time."""
    stronger = tmp / "params-c0.05.json"
    stronger.write_text(json.dumps({**json.loads((TEMPLATE / "params.json").read_text()), "C": 0.05}))
    inputs = ["-w", WS, "-s", str(TEMPLATE / "train"), "-d", str(TEMPLATE / "data")]
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(stack.kaos_json, "train", "deploy", *inputs, "-h", str(params), "--wait")
                for params in (TEMPLATE / "params.json", stronger)]
        first, second = (run.result() for run in runs)
    assert first["status"] == second["status"] == "COMPLETED", (first, second)
    return first, second


def failure(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line a refused command prints (no traceback)."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return " ".join(result.stderr.split())


def predict(stack: Stack, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return stack.kaos("serve", "predict", name, "-w", WS, *args, check=check)


def as_guest(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return cli_process.run(args, {**stack.env, "KAOS_PROFILE": "kaos-local-guest"}, 60)


def test_serving_end_to_end(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", WS)
    first, second = train_two_versions(stack, tmp_path)

    # Registry: a version per job (the same job again is the same version), approval, the champion alias.
    v1 = stack.kaos_json("model", "register", first["id"][:10], "--group", "digits", "-w", WS)
    assert (v1["group"], v1["version"], v1["status"]) == ("digits", 1, "PendingManualApproval")
    assert stack.kaos_json("model", "register", first["id"], "--group", "digits", "-w", WS)["version"] == 1
    assert stack.kaos_json("model", "approve", "digits/1", "-w", WS)["status"] == "Approved"
    assert "alias digits@champion -> digits/1 (new)" in stack.kaos("model", "alias", "digits", "champion", "1",
                                                                   "-w", WS).stdout

    deployed = stack.kaos("serve", "deploy", "digits@champion", "-w", WS, "--wait")
    assert "endpoint digits InService: digits/1" in deployed.stdout, deployed.stdout
    assert deployed.stderr.startswith("endpoint digits deploying\n")  # no terminal: the name first, then changes
    endpoint = stack.kaos_json("serve", "info", "digits", "-w", WS)
    assert (endpoint["status"], endpoint["kind"], endpoint["memory_mb"]) == ("InService", "serverless", 2048)
    assert endpoint["model"]["model_sha256"] == v1["model_sha256"]
    assert "digits" in stack.kaos("serve", "list", "-w", WS).stdout

    check_predictions(stack, tmp_path)
    check_limits(stack, tmp_path)

    logs = stack.kaos("serve", "logs", "digits", "-w", WS).stdout
    assert "loaded LogisticRegression from" in logs  # the template's model_fn, in the model server's log

    check_provenance(stack, first)
    check_isolation(stack)
    check_promotion_and_rollback(stack, first, second)

    killed = stack.kaos_json("serve", "kill", "digits", "-w", WS, "--yes")
    assert killed["status"] in ("Deleting", "Deleted")
    assert "(EndpointKilled)" in failure(stack.kaos("serve", "kill", "digits", "-w", WS, "--yes", check=False))


def check_predictions(stack: Stack, tmp: Path) -> None:
    """The framework's default input and output handlers: JSON by default, Accept honoured, NPY in and out."""
    assert json.loads(predict(stack, "digits", "--data", f"{ROWS}.csv").stdout) == [0, 1, 2]
    assert json.loads(predict(stack, "digits", "--data", f"{ROWS}.json").stdout) == [0, 1, 2]
    assert predict(stack, "digits", "--data", f"{ROWS}.json", "--accept", "text/csv").stdout == "0\n1\n2\n"
    rows = np.array(json.loads(Path(f"{ROWS}.json").read_text()), dtype=np.float64)
    npy = tmp / "rows.npy"
    np.save(npy, rows[:1])
    answer = raw_predict(stack, "--data", str(npy), "--accept", "application/x-npy")
    assert np.load(io.BytesIO(answer), allow_pickle=False).tolist() == [0]  # the bytes as the model sent them
    # stdin with an explicit type; one row alone is a batch of one (the template's predict_fn)
    third_row = Path(f"{ROWS}.csv").read_bytes().splitlines()[2]
    assert json.loads(raw_predict(stack, "--data", "-", "--content-type", "text/csv", stdin=third_row)) == [2]


def raw_predict(stack: Stack, *args: str, stdin: bytes = b"") -> bytes:
    done = cli_process.run_bytes(["serve", "predict", "digits", "-w", WS, *args], stack.env, 60, input=stdin)
    assert done.returncode == 0, done.stderr
    return done.stdout


def check_limits(stack: Stack, tmp: Path) -> None:
    big = tmp / "big.csv"
    big.write_bytes(b"0," * (SERVERLESS_MAX_PAYLOAD // 2) + b"0\n")
    assert "(PayloadTooLarge)" in failure(predict(stack, "digits", "--data", str(big), check=False))
    unsupported = failure(predict(stack, "digits", "--data", f"{ROWS}.csv", "--content-type", "text/plain",
                                  check=False))
    assert "(UnsupportedMediaType)" in unsupported and "text/plain" in unsupported
    assert "(NotAcceptable)" in failure(predict(stack, "digits", "--data", f"{ROWS}.csv", "--accept",
                                                "application/xml", check=False))
    wrong_shape = tmp / "three-pixels.json"
    wrong_shape.write_text("[[1, 2, 3]]")
    assert "(ModelError)" in failure(predict(stack, "digits", "--data", str(wrong_shape), check=False))
    assert "(EndpointNotFound)" in failure(predict(stack, "nope", "--data", f"{ROWS}.csv", check=False))


def check_provenance(stack: Stack, first: dict[str, Any]) -> None:
    """endpoint -> version -> model -> job -> inputs, in the formats of `train provenance`."""
    graph = stack.kaos_json("serve", "provenance", "digits", "-w", WS)
    nodes = {n["id"] for n in graph["nodes"]}
    job = first["id"]
    assert {"endpoint:digits", "version:digits.1", f"model:{job}", f"job:{job}",
            f"snapshot:{first['inputs']['code']}", f"snapshot:{first['inputs']['data']['training']}"} <= nodes
    tree = stack.kaos("serve", "provenance", "digits", "-w", WS).stdout
    assert tree.startswith("endpoint:digits") and "produced by" in tree
    down = stack.kaos_json("train", "provenance", f"snapshot:{first['inputs']['data']['training']}", "--down",
                           "-w", WS)
    assert "endpoint:digits" in {n["id"] for n in down["nodes"]}


def check_isolation(stack: Stack) -> None:
    """A non-member can neither see the endpoint nor invoke it (the workspace does not exist for them)."""
    for args in (("serve", "info", "digits"), ("serve", "predict", "digits", "--data", f"{ROWS}.csv")):
        refused = as_guest(stack, *args, "-w", WS)
        assert refused.returncode == 1 and "not a member" in refused.stderr, (args, refused.stderr)
        assert "Traceback" not in refused.stderr


def check_promotion_and_rollback(stack: Stack, first: dict[str, Any], second: dict[str, Any]) -> None:
    v2 = stack.kaos_json("model", "register", second["id"], "--group", "digits", "-w", WS)
    assert v2["version"] == 2
    refused = failure(stack.kaos("model", "alias", "digits", "champion", "2", "-w", WS, check=False))
    assert "(VersionNotApproved)" in refused  # a champion must be approved
    stack.kaos("model", "approve", "digits/2", "-w", WS)
    moved = stack.kaos_json("model", "alias", "digits", "champion", "2", "-w", WS)
    assert (moved["version"], moved["previous"]) == (2, 1)
    group = stack.kaos_json("model", "list", "digits", "-w", WS)
    assert group["aliases"] == {"champion": 2}
    assert "champion" in stack.kaos("model", "list", "-w", WS).stdout

    promoted = stack.kaos_json("serve", "promote", "digits", "digits@champion", "-w", WS, "--wait")
    assert (promoted["status"], promoted["model"]["version"]) == ("InService", 2)
    assert promoted["model"]["job_id"] == second["id"]
    assert json.loads(predict(stack, "digits", "--data", f"{ROWS}.json").stdout) == [0, 1, 2]

    back = stack.kaos_json("serve", "rollback", "digits", "-w", WS, "--wait")
    assert (back["status"], back["model"]["version"], back["model"]["job_id"]) == ("InService", 1, first["id"])
    assert len(back["deployments"]) == 3  # newest first: the rollback, the promotion, the first deploy
    info = stack.kaos("serve", "info", "digits", "-w", WS).stdout
    assert "digits/1" in info and "digits/2" in info
