"""Serving through the signed HTTP API of the embedded stack: each bad input of issue 9 is a clear 4xx that leaves
nothing half-created, and a non-member can neither see, invoke nor kill an endpoint. One trained job per kind
(deployable, without model_fn, failed) is shared by the module."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from kaos.client import ApiError

from .conftest import TEMPLATE, Stack, tiny_code

WS = "serve-api"
MODEL_FN = ("import numpy as np\n\n\ndef model_fn(model_dir):\n    return open(model_dir + '/model.txt').read()\n\n\n"
            "def predict_fn(data, model):\n    return np.atleast_2d(data).sum(axis=1)\n")
# The deployment state machine polls every 2 s; a tiny model's server is up in a few seconds offline.
DEPLOY_SECONDS = 90


def _train(stack: Stack, code: Path) -> dict[str, Any]:
    result = stack.kaos("train", "deploy", "-w", WS, "-s", str(code), "-d", str(TEMPLATE / "data"), "--wait",
                        "--json", check=False)
    job: dict[str, Any] = json.loads(result.stdout)
    return job


@pytest.fixture(scope="module")
def jobs(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    stack.kaos("workspace", "create", WS)
    served = tiny_code(tmp_path_factory.mktemp("served"), "served = True")
    (served / "inference.py").write_text(MODEL_FN)
    bare = tiny_code(tmp_path_factory.mktemp("bare"), "bare = True")
    failing = tiny_code(tmp_path_factory.mktemp("failing"), "raise SystemExit(3)")
    found = {name: _train(stack, code) for name, code in (("served", served), ("bare", bare),
                                                          ("failing", failing))}
    assert [found[n]["status"] for n in ("served", "bare", "failing")] == ["COMPLETED", "COMPLETED", "FAILED"]
    return {name: str(job["id"]) for name, job in found.items()}


def _refused(call: Any, status: int, code: str, *words: str) -> None:
    with pytest.raises(ApiError) as refused:
        call()
    assert (refused.value.status, refused.value.code) == (status, code), refused.value
    for word in words:
        assert word in refused.value.message, refused.value.message


def _settled(client: Any, name: str) -> dict[str, Any]:
    """The endpoint once its deployment has ended (polled until a deadline, as `kaos serve deploy --wait`)."""
    deadline = time.monotonic() + DEPLOY_SECONDS
    while True:
        endpoint: dict[str, Any] = client.endpoint(WS, name)
        if endpoint["status"] not in ("Creating", "Updating") or time.monotonic() > deadline:
            return endpoint
        time.sleep(0.5)


def _deployments(stack: Stack) -> list[dict[str, Any]]:
    sfn = stack.aws("stepfunctions")
    machine = next(m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"]
                   if "ServingDeployment" in m["name"])
    return list(sfn.list_executions(stateMachineArn=machine)["executions"])


def test_bad_input_is_a_clear_4xx_and_creates_nothing(stack: Stack, jobs: dict[str, str]) -> None:
    dev = stack.client()
    before = len(_deployments(stack))

    def deploy(**settings: Any) -> Any:
        return lambda: dev.deploy_endpoint(WS, {"model": jobs["served"], **settings})

    _refused(lambda: dev.deploy_endpoint(WS, {"model": jobs["bare"]}), 400, "MissingModelFn", "model_fn")
    _refused(lambda: dev.deploy_endpoint(WS, {"model": jobs["failing"]}), 409, "JobNotCompleted", "FAILED")
    _refused(lambda: dev.deploy_endpoint(WS, {"model": "train-" + "0" * 24}), 404, "NotFound")
    _refused(deploy(memory_mb=1000), 400, "ValidationFailed", "memory_mb")
    _refused(deploy(memory_mb=2500), 400, "ValidationFailed", "memory_mb")
    _refused(deploy(max_concurrency=201), 400, "ValidationFailed", "max_concurrency")
    _refused(deploy(capture_percent=101), 400, "ValidationFailed", "capture_percent")
    _refused(deploy(instance_type="ml.g5.xlarge", memory_mb=2048), 400, "ValidationFailed", "GPU")
    _refused(deploy(name="Not_A.Name"), 400, "ValidationFailed", "name")

    version = dev.register_model(WS, "tiny", jobs["served"])
    assert version["version"] == 1 and version["status"] == "PendingManualApproval"
    _refused(lambda: dev.register_model(WS, "tiny", jobs["failing"]), 409, "JobNotCompleted")
    _refused(lambda: dev.approve_model(WS, "tiny", 7, "Approved"), 404, "VersionNotFound", "tiny/7")
    _refused(lambda: dev.move_alias(WS, "tiny", "champion", 1), 409, "VersionNotApproved", "Approved")
    _refused(lambda: dev.deploy_endpoint(WS, {"model": "tiny@champion"}), 404, "AliasNotFound", "champion")
    _refused(lambda: dev.deploy_endpoint(WS, {"model": "tiny/2"}), 404, "VersionNotFound")
    _refused(lambda: dev.deploy_endpoint(WS, {"model": "nogroup@champion"}), 404, "GroupNotFound")

    assert dev.endpoints(WS) == {"endpoints": [], "next": None}
    assert len(_deployments(stack)) == before


def test_name_clash_limits_non_members_and_killing_twice(stack: Stack, jobs: dict[str, str]) -> None:
    dev, guest = stack.client("dev"), stack.client("guest")
    endpoint = dev.deploy_endpoint(WS, {"model": jobs["served"], "name": "clash"})
    assert endpoint["status"] == "Creating" and endpoint["model"]["job_id"] == jobs["served"]
    _refused(lambda: dev.deploy_endpoint(WS, {"model": jobs["served"], "name": "clash"}), 409, "NameTaken")

    _refused(lambda: dev.invoke(WS, "clash", b"1," * (2 * 1024 * 1024) + b"1", "text/csv"), 413,
             "PayloadTooLarge", "4194304")
    _refused(lambda: dev.invoke(WS, "clash", b"<x/>", "application/xml"), 415, "UnsupportedMediaType")
    _refused(lambda: dev.invoke(WS, "nope", b"[1]", "application/json"), 404, "EndpointNotFound")

    for call in (lambda: guest.endpoint(WS, "clash"), lambda: guest.invoke(WS, "clash", b"[1]", "application/json"),
                 lambda: guest.kill_endpoint(WS, "clash"), lambda: guest.endpoints(WS)):
        _refused(call, 404, "NotFound")

    assert dev.kill_endpoint(WS, "clash")["status"] == "Deleting"
    _refused(lambda: dev.kill_endpoint(WS, "clash"), 409, "EndpointKilled")
    _refused(lambda: dev.kill_endpoint(WS, "never"), 404, "EndpointNotFound")
    assert dev.endpoint(WS, "clash")["status"] in ("Deleting", "Deleted")


def test_deploy_predict_and_lineage_through_the_endpoint(stack: Stack, jobs: dict[str, str]) -> None:
    dev = stack.client()
    version = dev.register_model(WS, "tiny", jobs["served"])
    endpoint = _settled(dev, dev.deploy_endpoint(WS, {"model": f"tiny/{version['version']}", "name": "live"})["name"])
    assert endpoint["status"] == "InService", endpoint
    assert endpoint["deployments"][0]["status"] == "Succeeded"
    body, content_type = dev.invoke(WS, "live", b"[[1, 2], [3, 4]]", "application/json")
    assert content_type.startswith("application/json") and json.loads(body) == [3, 7]
    body, content_type = dev.invoke(WS, "live", b"1,2\n3,4\n", "text/csv", "text/csv")
    assert content_type.startswith("text/csv") and [float(v) for v in body.split()] == [3.0, 7.0]

    up = dev.lineage(WS, "endpoint:live", "up")
    assert {"endpoint:live", "version:tiny.1", f"model:{jobs['served']}", f"job:{jobs['served']}"} <= {
        n["id"] for n in up["nodes"]}
    data = dev.job(WS, jobs["served"])["inputs"]["data"]["training"]
    assert "endpoint:live" in {e["id"] for e in dev.impact(WS, f"snapshot:{data}")["endpoints"]}
    _refused(lambda: dev.rollback(WS, "live"), 409, "NothingToRollBack")
    _refused(lambda: dev.promote(WS, "live", jobs["bare"]), 400, "MissingModelFn")
    assert dev.kill_endpoint(WS, "live")["status"] == "Deleting"
