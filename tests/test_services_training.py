"""Training submission, grids and reproduce-free job lifecycle through the services, without the embedded stack
(in-memory repositories, moto in process)."""
from __future__ import annotations

import copy

import pytest

from chalicelib.errors import ConcurrentUpdate, Conflict, ValidationFailed
from chalicelib.wiring import Wiring
from tests.service_wiring import OWNER, component, executions, services, snapshot, workspace  # noqa: F401


def _inputs(wiring: Wiring, ws: str) -> dict[str, str]:
    code = snapshot(wiring, ws, "code", {"train.py": b"print('hi')\n"})
    data = snapshot(wiring, ws, "data", {"rows.csv": b"a,b\n1,2\n"})
    return {"code": code, "data": data}


def test_submit_is_exactly_once_per_inputs(services: Wiring) -> None:  # noqa: F811
    ws = workspace(services)
    inputs = _inputs(services, ws.name)
    request = {"code": inputs["code"], "data": {"training": inputs["data"]}, "params": {"lr": 0.1}}
    job, created = services.training.submit(ws.name, ws.created_at, OWNER, request)
    again, created_again = services.training.submit(ws.name, ws.created_at, OWNER, request)
    assert created and not created_again and again["id"] == job["id"]
    assert job["status"] == "SUBMITTED" and job["environment"] == "kaos/train:1"
    assert executions(services, services.settings.training_state_machine_arn) == [job["id"]]
    # A deploy that omits inputs reuses the latest; the same inputs are the same job.
    assert services.training.submit(ws.name, ws.created_at, OWNER, {})[0]["id"] == job["id"]


def test_a_grid_point_is_the_same_job_as_the_same_single_submission(services: Wiring) -> None:  # noqa: F811
    """Bug 1: the point's job was fingerprinted with the point Lambda's own settings (on AWS an empty training
    image), so a grid point never matched the single job with the same params."""
    ws = workspace(services)
    inputs = _inputs(services, ws.name)
    base = {"code": inputs["code"], "data": {"training": inputs["data"]}}
    grid, _ = services.grids.submit(ws.name, ws.created_at, OWNER, {**base, "params": {"lr": [0.1, 1.0]}})
    # The CreatePoint Lambda has settings of its own; here they disagree with the API's on purpose.
    point_lambda = component(services, "create_point", KAOS_TRAINING_IMAGE="another/image:2",
                             KAOS_TRAINING_INSTANCE_TYPE="ml.p3.2xlarge")
    point = point_lambda.grids.create_point({"workspace": ws.name, "grid_id": grid["id"], "incarnation": ws.created_at,
                                             "user": OWNER, "point": {"index": 0, "params": {"lr": 0.1}}})
    single, created = services.training.submit(ws.name, ws.created_at, OWNER, {**base, "params": {"lr": 0.1}})
    assert not created and single["id"] == point["job_id"]


def test_a_grid_does_not_make_its_lists_the_latest_params(services: Wiring) -> None:  # noqa: F811
    """Bug 2: after a grid, a deploy without params was refused (list values make a grid) and auto-retrain ran
    jobs with '[0.1, 1.0]' as a hyperparameter."""
    ws = workspace(services)
    inputs = _inputs(services, ws.name)
    base = {"code": inputs["code"], "data": {"training": inputs["data"]}}
    first, _ = services.training.submit(ws.name, ws.created_at, OWNER, {**base, "params": {"lr": 0.5}})
    services.grids.submit(ws.name, ws.created_at, OWNER, {**base, "params": {"lr": [0.1, 1.0]}})
    latest = services.repositories.snapshots.latest_inputs(ws.name)
    assert latest is not None and latest.params == {"lr": 0.5}
    again, created = services.training.submit(ws.name, ws.created_at, OWNER, {})
    assert not created and again["id"] == first["id"]


def test_a_grid_is_refused_by_the_jobs_route(services: Wiring) -> None:  # noqa: F811
    ws = workspace(services)
    inputs = _inputs(services, ws.name)
    with pytest.raises(ValidationFailed, match="grid"):
        services.training.submit(ws.name, ws.created_at, OWNER, {"code": inputs["code"],
                                                                 "data": {"training": inputs["data"]},
                                                                 "params": {"lr": [1, 2]}})


def test_kill_then_resume_and_a_second_resume_is_a_409(services: Wiring) -> None:  # noqa: F811
    from botocore.stub import Stubber

    ws = workspace(services)
    inputs = _inputs(services, ws.name)
    job, _ = services.training.submit(ws.name, ws.created_at, OWNER,
                                      {"code": inputs["code"], "data": {"training": inputs["data"]}})
    with Stubber(services.clients.sagemaker) as sagemaker:  # moto has no StopTrainingJob
        sagemaker.add_response("stop_training_job", {}, {"TrainingJobName": job["id"]})
        killed = services.jobs.kill(ws.name, job["id"], OWNER)
    assert killed["status"] == "KILLED" and killed["failure_reason"] == f"killed by {OWNER}"
    with pytest.raises(Conflict, match="already ended"):
        services.jobs.kill(ws.name, job["id"], OWNER)
    resumed = services.jobs.resume(ws.name, job["id"], OWNER)
    assert (resumed["status"], resumed["attempt"], resumed["attempts"][0]["attempt"]) == ("SUBMITTED", 2, 1)
    assert f"{job['id']}-2" in executions(services, services.settings.training_state_machine_arn)
    with pytest.raises(Conflict, match="only FAILED or KILLED"):
        services.jobs.resume(ws.name, job["id"], OWNER)


def test_a_resume_racing_another_is_a_409(services: Wiring, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The kill/resume race reached users as a 500 (pynamodb UpdateError); the versioned write makes it a 409."""
    from botocore.stub import Stubber

    ws = workspace(services)
    inputs = _inputs(services, ws.name)
    job, _ = services.training.submit(ws.name, ws.created_at, OWNER,
                                      {"code": inputs["code"], "data": {"training": inputs["data"]}})
    with Stubber(services.clients.sagemaker) as sagemaker:
        sagemaker.add_response("stop_training_job", {}, {"TrainingJobName": job["id"]})
        services.jobs.kill(ws.name, job["id"], OWNER)
    repository = services.repositories.jobs
    read_before_the_other_resume = repository.get(ws.name, job["id"])
    services.jobs.resume(ws.name, job["id"], OWNER)
    monkeypatch.setattr(repository, "get", lambda workspace, job_id: copy.deepcopy(read_before_the_other_resume))
    with pytest.raises(ConcurrentUpdate) as raced:
        services.jobs.resume(ws.name, job["id"], OWNER)
    assert raced.value.status == 409 and isinstance(raced.value, Conflict)
