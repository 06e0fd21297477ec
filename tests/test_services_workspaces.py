"""Workspaces through the services without the embedded stack: membership, sharing, the member cap, kill."""
from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from chalicelib import limits
from chalicelib.errors import Conflict, Forbidden, NotFound, ValidationFailed
from chalicelib.wiring import Wiring
from tests.service_wiring import BUCKET, MEMBER, OWNER, STRANGER, services, snapshot, workspace  # noqa: F401


def test_membership_decides_who_sees_a_workspace(services: Wiring) -> None:  # noqa: F811
    ws = workspace(services, "ws-a", MEMBER)
    assert services.workspaces.require("ws-a", MEMBER) == ws
    with pytest.raises(NotFound):
        services.workspaces.require("ws-a", STRANGER)
    with pytest.raises(NotFound):  # a stranger cannot tell a missing workspace from someone else's
        services.workspaces.require("ws-none", STRANGER)
    assert [w["name"] for w in services.workspaces.list_for(MEMBER)] == ["ws-a"]
    with pytest.raises(Forbidden):
        services.workspaces.share("ws-a", MEMBER, STRANGER)
    with pytest.raises(Forbidden):
        services.workspaces.kill("ws-a", MEMBER)
    with pytest.raises(NotFound):
        services.workspaces.kill("ws-a", STRANGER)
    assert services.workspaces.create("ws-a", OWNER)[1] is False  # idempotent for its owner
    with pytest.raises(Conflict):
        services.workspaces.create("ws-a", MEMBER)


def test_the_member_cap(services: Wiring, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setattr(limits, "MAX_MEMBERS", 3)
    workspace(services, "ws-a", MEMBER, STRANGER)
    with pytest.raises(ValidationFailed, match="at most 3 members"):
        services.workspaces.share("ws-a", OWNER, "late")
    services.workspaces.unshare("ws-a", OWNER, STRANGER)
    assert len(services.workspaces.share("ws-a", OWNER, "late")["members"]) == 3
    with pytest.raises(ValidationFailed, match="owner cannot be removed"):
        services.workspaces.unshare("ws-a", OWNER, OWNER)


def test_kill_stops_jobs_and_grids_and_frees_the_name(services: Wiring) -> None:  # noqa: F811
    ws = workspace(services, "ws-a", MEMBER)
    code = snapshot(services, ws.name, "code", {"train.py": b"print('hi')\n"})
    data = snapshot(services, ws.name, "data", {"rows.csv": b"a,b\n1,2\n"})
    base = {"code": code, "data": {"training": data}}
    job, _ = services.training.submit(ws.name, ws.created_at, OWNER, base)
    services.grids.submit(ws.name, ws.created_at, OWNER, {**base, "params": {"lr": [0.1, 1.0]}})
    with Stubber(services.clients.sagemaker) as sagemaker:  # moto has no StopTrainingJob
        sagemaker.add_response("stop_training_job", {}, {"TrainingJobName": job["id"]})
        sagemaker.add_response("describe_training_job", {
            "TrainingJobName": job["id"], "TrainingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:training-job/x",
            "TrainingJobStatus": "Stopped", "SecondaryStatus": "Stopped",
            "AlgorithmSpecification": {"TrainingInputMode": "File"}, "ResourceConfig": {
                "InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 30},
            "StoppingCondition": {}, "CreationTime": "2026-01-01T00:00:00Z", "ModelArtifacts": {
                "S3ModelArtifacts": ""}}, {"TrainingJobName": job["id"]})
        killed = services.workspaces.kill(ws.name, OWNER)
    assert (killed["status"], killed["stopped_jobs"], killed["stopped_grids"]) == ("killed", 1, 1), killed
    assert services.repositories.workspaces.get(ws.name) is None
    assert services.repositories.workspaces.counts(ws.name) == {"snapshots": 0, "jobs": 0, "members": 0,
                                                                "models": 0}
    assert boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"ws/{ws.name}/")["KeyCount"] == 0
    with pytest.raises(NotFound):
        services.workspaces.require(ws.name, MEMBER)
    again, created = services.workspaces.create(ws.name, MEMBER)  # the name is free: a new incarnation
    assert created and again["created_at"] != ws.created_at
