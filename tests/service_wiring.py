"""A `Wiring` for service tests without the embedded stack: the in-memory repositories (the one fake boundary) and
moto's in-process AWS (`mock_aws`) for S3, Step Functions, IAM and Batch."""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from chalicelib import config
from chalicelib.adapters import AwsClients
from chalicelib.config import Settings
from chalicelib.repositories.workspaces import Workspace
from chalicelib.wiring import Repositories, Wiring

ACCOUNT = "123456789012"
OWNER = f"arn:aws:iam::{ACCOUNT}:user/dev"
MEMBER = f"arn:aws:iam::{ACCOUNT}:user/member"
STRANGER = f"arn:aws:iam::{ACCOUNT}:user/stranger"
BUCKET = "kaos-services"
JOB_DEFINITION = "kaos-batch"


# Whether moto runs a definition depends on its settings; either way an execution of HOLD is RUNNING until stopped,
# so a test that stops one (a workspace kill halting a deployment) never races its end.
DONE = {"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}
HOLD = {"StartAt": "Hold", "States": {"Hold": {"Type": "Wait", "Seconds": 3600, "End": True}}}


def _state_machine(sfn: Any, name: str, states: dict[str, Any] = DONE) -> str:
    definition = json.dumps(states)
    return str(sfn.create_state_machine(name=name, definition=definition,
                                        roleArn=f"arn:aws:iam::{ACCOUNT}:role/sfn")["stateMachineArn"])


def environment(**overrides: str) -> dict[str, str]:
    """Every variable any component reads, as CDK would set them (state machines created in moto)."""
    sfn = boto3.client("stepfunctions")
    env = {
        config.BUCKET: BUCKET, config.TABLE: "unused-the-repositories-are-in-memory",
        config.TRAINING_STATE_MACHINE_ARN: _state_machine(sfn, "training"),
        config.GRID_STATE_MACHINE_ARN: _state_machine(sfn, "grid"),
        config.BATCH_STATE_MACHINE_ARN: _state_machine(sfn, "batch"),
        config.RETRAIN_STATE_MACHINE_ARN: _state_machine(sfn, "retrain"),
        config.DEPLOYMENT_STATE_MACHINE_ARN: _state_machine(sfn, "deployment", HOLD), config.ENDPOINT_POLL_SECONDS: "2",
        config.TRAINING_IMAGE: "kaos/train:1", config.TRAINING_INSTANCE_TYPE: "ml.m5.large",
        config.TRAINING_MAX_RUNTIME_SECONDS: "3600", config.TRAINING_LOG_GROUP: "/aws/sagemaker/TrainingJobs",
        config.TRAINING_LOG_GROUP_ARN: f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:/aws/sagemaker/TrainingJobs",
        config.BATCH_IMAGE: "kaos/batch:1", config.BATCH_MAX_RUNTIME_SECONDS: "3600",
        config.BATCH_JOB_DEFINITION: JOB_DEFINITION, config.BATCH_JOB_QUEUE: "kaos-queue",
        config.BATCH_LOG_GROUP: "/aws/batch/job", config.PLATFORM_BUCKETS: "",
        config.WORKSPACE_ROLE_PREFIX: f"arn:aws:iam::{ACCOUNT}:role/kaos/ws-",
        config.WORKSPACE_ROLE_BOUNDARY: f"arn:aws:iam::{ACCOUNT}:policy/kaos-boundary",
        config.OPENLINEAGE_URL: "", config.OPENLINEAGE_FILE: "",
    }
    return {**env, **overrides}


def component(wiring: Wiring, name: str, **overrides: str) -> Wiring:
    """Another component's wiring over the same repositories and clients (as another Lambda of the stack)."""
    settings = Settings(name, environment(**overrides))
    settings.check()
    return Wiring(settings, clients=wiring.clients, repositories=wiring.repositories)


@pytest.fixture
def services(monkeypatch: pytest.MonkeyPatch) -> Iterator[Wiring]:
    """The API's wiring (component "api") with in-memory repositories, over moto."""
    from moto import mock_aws

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    # The emulator's fixes of moto's StopExecution (a kill right after a submit; ABORTED when the stop answers), as the
    # embedded stack runs them.
    from kaos.local.patches import stop_execution_fixes

    for owner, name, replacement in stop_execution_fixes():
        monkeypatch.setattr(owner, name, replacement)
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        boto3.client("batch").register_job_definition(
            jobDefinitionName=JOB_DEFINITION, type="container",
            containerProperties={"image": "kaos/batch:1", "vcpus": 1, "memory": 2048})
        settings = Settings("api", environment())
        settings.check()
        yield Wiring(settings, clients=AwsClients(), repositories=Repositories.memory())


def workspace(wiring: Wiring, name: str = "ws-a", *members: str) -> Workspace:
    """A workspace owned by OWNER (created through the service: its role exists), with `members` added."""
    wiring.workspaces.create(name, OWNER)
    for member in members:
        wiring.workspaces.share(name, OWNER, member)
    return wiring.workspaces.require(name, OWNER)


def snapshot(wiring: Wiring, ws: str, kind: str, files: dict[str, bytes]) -> str:
    """A committed snapshot of `files` (blobs uploaded as the client would)."""
    from chalicelib.blobs import blob_key
    from chalicelib.domain import sha256_hex

    entries = [{"path": path, "sha256": sha256_hex(body), "size": len(body)} for path, body in files.items()]
    for body in files.values():
        boto3.client("s3").put_object(Bucket=BUCKET, Key=blob_key(ws, sha256_hex(body)), Body=body)
    result, _ = wiring.snapshots.commit(ws, kind, entries, OWNER)
    assert result.get("status") != "pending", result
    return str(result["id"])


def executions(wiring: Wiring, machine_arn: str) -> list[str]:
    return [e["name"] for e in boto3.client("stepfunctions").list_executions(
        stateMachineArn=machine_arn)["executions"]]
