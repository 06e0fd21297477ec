"""Serverless inference is metered end to end on the embedded stack: the emulator publishes SageMaker's invocation
metrics (AWS/SageMaker Invocations, ModelLatency, ...) into CloudWatch as it serves each request, and the API reads
them back (GetMetricData, with the API role's grant, decided by the emulator's IAM evaluator) into the endpoint's
cost: `kaos serve info`, `kaos cost WORKSPACE` and the endpoint's lineage show the measured GB-seconds."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import Stack
from .test_batch import wait
from .test_cost_e2e import snapshot_of

WS = "endpoint-cost"
TRAIN = """\
import os, pathlib
(pathlib.Path(os.environ["SM_MODEL_DIR"]) / "threshold.txt").write_text("0.5")
"""
# Each prediction takes at least 50 ms in the model, so the metered time has a floor the test can check.
INFERENCE = """\
import time
import numpy as np

class Threshold:
    def __init__(self, value):
        self.value = value

    def predict(self, rows):
        time.sleep(0.05)
        return (np.atleast_2d(rows)[:, 0] > self.value).astype(np.int64)

def model_fn(model_dir):
    return Threshold(float(open(model_dir + "/threshold.txt").read()))
"""
REQUESTS = 3


def settled(client: Any, name: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        endpoint: dict[str, Any] = client.endpoint(WS, name)
        if endpoint["status"] not in ("Creating", "Updating"):
            return endpoint
        time.sleep(0.2)
    raise AssertionError(f"endpoint {name} did not settle within {timeout} s")


def test_serverless_invocations_show_up_as_metered_cost(stack: Stack, tmp_path: Path) -> None:
    client = stack.client()
    client.create_workspace(WS)
    code_id = snapshot_of(client, WS, tmp_path, "code", {"train.py": TRAIN, "inference.py": INFERENCE})
    data_id = snapshot_of(client, WS, tmp_path, "data", {"rows.csv": "x\n1\n"})
    job = wait(client, WS, client.submit(WS, code_id, {"training": data_id}, {})["id"])
    assert job["status"] == "COMPLETED", job
    client.deploy_endpoint(WS, {"model": job["id"], "name": "meter", "memory_mb": 2048})
    before = settled(client, "meter")
    assert before["status"] == "InService", before
    assert before["cost"]["basis"] == "measured" and before["cost"]["usd"] == 0

    for _ in range(REQUESTS):
        assert client.invoke(WS, "meter", b"0.9,0\n0.1,0", "text/csv", "text/csv")[0] == b"1\n0\n"

    cost = client.endpoint(WS, "meter")["cost"]
    lines = {line["item"]: line for line in cost["lines"]}
    # 2 GB for each request's time in the model: at least the 50 ms it sleeps, and not more than a second.
    seconds = lines["SageMaker serverless inference"]["quantity"] / 2
    assert REQUESTS * 0.05 <= seconds <= REQUESTS * 1.0, lines
    assert lines["API Gateway requests"]["quantity"] == REQUESTS
    assert cost["usd"] == pytest.approx(sum(line["usd"] for line in cost["lines"]), abs=1e-9)
    assert cost["unmetered"] == ["serverless data processed"]

    summed = client.cost(WS)
    (endpoint,) = summed["endpoints"]
    assert (endpoint["name"], endpoint["basis"], endpoint["usd"]) == ("meter", "measured", cost["usd"])
    assert summed["total_usd"] == pytest.approx(sum(j["usd"] for j in summed["jobs"]) + cost["usd"], abs=1e-9)
    walk = client.lineage(WS, "endpoint:meter", "up")
    assert {n["id"]: n["cost"]["usd"] for n in walk["nodes"] if n["type"] == "endpoint"} == {
        "endpoint:meter": cost["usd"]}
    assert "endpoints" in stack.kaos("cost", WS).stdout
