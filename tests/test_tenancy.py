"""No role that runs user work can reach another workspace's prefix: the synthesized template (every role trusted by
SageMaker or ECS tasks, the workspace boundary) and the per-workspace policy the API writes, evaluated with the
emulator's IAM decision function against every key kind of another workspace."""
from __future__ import annotations

from typing import Any

import pytest

from chalicelib.registry import hosted_name
from chalicelib.tenancy import TRUST, job_definition_name, policy_document, role_name
from kaos.local.iam import decide
from kaos.local.loader import Resolver

from .conftest import stack_template

BUCKET = "kaos-data"
LOG_GROUP = "arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/TrainingJobs"
INCARNATION = "2026-12-01T17:00:00.000000+00:00"
KINDS = ["blobs/ab", "manifests/s.json", "proposals/s.json", "packs/p", "snapshots/s/train.csv",
         "sourcedirs/s/sourcedir.tar.gz",
         "jobs/train-1/output/train-1/output/model.tar.gz", "jobs/train-1/log.txt", "incoming/new.csv",
         "grids/g/points.json"]
USER_WORK_SERVICES = {"sagemaker.amazonaws.com", "ecs-tasks.amazonaws.com"}


def obj(workspace: str, kind: str) -> str:
    return f"arn:aws:s3:::{BUCKET}/ws/{workspace}/{kind}"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return stack_template()


def test_workspace_policy_reaches_only_its_own_prefix() -> None:
    policy = policy_document(BUCKET, "dev", INCARNATION, LOG_GROUP)
    for kind in KINDS:
        for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
            assert decide([policy], action, obj("guest", kind), {}) != "allow", (action, kind)
            assert decide([policy], action, obj("dev2", kind), {}) != "allow", (action, kind)  # no prefix overlap
        assert decide([policy], "s3:GetObject", obj("dev", kind), {}) == "allow", kind
    writable = [kind for kind in KINDS if decide([policy], "s3:PutObject", obj("dev", kind), {}) == "allow"]
    # The archived log (provenance) is written by RecordOutcome, never by the job.
    assert writable == ["jobs/train-1/output/train-1/output/model.tar.gz"]
    listing = {"s3:prefix": ["ws/guest/"]}
    assert decide([policy], "s3:ListBucket", f"arn:aws:s3:::{BUCKET}", listing) != "allow"
    assert decide([policy], "s3:ListBucket", f"arn:aws:s3:::{BUCKET}", {"s3:prefix": ["ws/dev/x"]}) == "allow"


def test_workspace_role_writes_only_its_own_endpoints_logs() -> None:
    """SageMaker writes a served model's log as the model's execution role, into a group named after the endpoint:
    the grant must not reach the endpoints of a workspace whose name extends this one's (`dev` and `dev-b`)."""
    policy = policy_document(BUCKET, "dev", INCARNATION, LOG_GROUP)
    groups = LOG_GROUP.rsplit(":log-group:", 1)[0] + ":log-group:/aws/sagemaker/Endpoints/"
    own = hosted_name("dev", INCARNATION, "digits", ["x"])
    others = [hosted_name("dev-b", INCARNATION, "digits", ["x"]), hosted_name("dev", "another", "digits", ["x"])]
    assert decide([policy], "logs:PutLogEvents", f"{groups}{own}:log-stream:AllTraffic/i-1", {}) == "allow"
    for other in others:
        assert decide([policy], "logs:PutLogEvents", f"{groups}{other}:log-stream:AllTraffic/i-1", {}) != "allow"


def test_roles_of_user_work_in_the_template_reach_no_workspace_data(template: dict[str, Any]) -> None:
    """Roles CDK creates that SageMaker or ECS tasks may assume (the Batch task execution role) get no S3 or
    DynamoDB access at all: user code only ever runs as a workspace role."""
    resources = template["Resources"]
    resolver = Resolver(resources)
    trusted = set()
    for logical_id, resource in resources.items():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        statements = resource["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        services = {s for st in statements for s in (lambda v: [v] if isinstance(v, str) else v)(
            st.get("Principal", {}).get("Service", []))}
        if services & USER_WORK_SERVICES:
            trusted.add(logical_id)
    assert trusted, "the Batch task execution role should be found"
    for logical_id, resource in resources.items():
        if resource["Type"] != "AWS::IAM::Policy":
            continue
        roles = {r["Ref"] for r in resource["Properties"].get("Roles", []) if isinstance(r, dict)}
        if not roles & trusted:
            continue
        document = resolver.resolve(resource["Properties"]["PolicyDocument"])
        for kind in KINDS:
            for action in ("s3:GetObject", "s3:PutObject"):
                arn = f"arn:aws:s3:::{resolver.names['StorageData6BB23F4E']}/ws/dev/{kind}"
                assert decide([document], action, arn, {}) != "allow", (logical_id, action, kind)


def test_the_boundary_caps_any_workspace_role(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    boundaries = [r for r in resources.values() if r["Type"] == "AWS::IAM::ManagedPolicy"
                  and r["Properties"].get("Path") == "/kaos/"]
    assert len(boundaries) == 1
    document = Resolver(resources).resolve(boundaries[0]["Properties"]["PolicyDocument"])
    bucket = Resolver(resources).names["StorageData6BB23F4E"]
    assert decide([document], "s3:GetObject", f"arn:aws:s3:::{bucket}/other/x", {}) != "allow"
    assert decide([document], "s3:PutObject", f"arn:aws:s3:::{bucket}/ws/dev/sourcedirs/s/x", {}) != "allow"
    assert decide([document], "s3:PutObject", f"arn:aws:s3:::{bucket}/ws/dev/incoming/x", {}) != "allow"
    assert decide([document], "dynamodb:PutItem", "arn:aws:dynamodb:us-east-1:123456789012:table/t", {}) != "allow"
    assert decide([document], "iam:CreateRole", "*", {}) != "allow"
    assert decide([document], "s3:PutObject", f"arn:aws:s3:::{bucket}/ws/dev/jobs/j/output/x", {}) == "allow"


def test_names_carry_the_incarnation() -> None:
    first = role_name("mnist", "2026-12-01T10:00:00.000+00:00")
    second = role_name("mnist", "2026-12-01T11:00:00.000+00:00")
    assert first != second and first.startswith("kaos-ws-mnist-") and len(first) <= 64
    assert len(role_name("w" * 63, "x")) <= 64
    assert job_definition_name("mnist", "x") == role_name("mnist", "x")
    services = TRUST["Statement"][0]["Principal"]["Service"]  # type: ignore[index]
    assert set(services) == USER_WORK_SERVICES
