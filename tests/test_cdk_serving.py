"""Intent of the deployment pipeline in the synthesized template (cdk/serving.py): its states, and that every grant
serving adds is limited to kaos-* hosting resources and the workspace roles."""
from __future__ import annotations

import json
from typing import Any

import pytest

from cdk.check import resolve
from cdk.serving import MAX_POLLS
from tests.test_cdk import _as_list, _of_type, _statements, dev, resources  # noqa: F401  (fixtures)

SAGEMAKER = "arn:aws:sagemaker:us-east-1:"


@pytest.fixture(scope="module")
def states(resources: dict[str, Any]) -> dict[str, Any]:  # noqa: F811
    machines = _of_type(resources, "AWS::StepFunctions::StateMachine")
    (machine,) = [m for logical_id, m in machines.items() if logical_id.startswith("ServingDeployment")]
    parsed: dict[str, Any] = json.loads(resolve(machine["Properties"]["DefinitionString"], resources))
    assert parsed["StartAt"] == "Prepare"
    return dict(parsed["States"])


def _next_of_choice(state: dict[str, Any]) -> list[str]:
    return [c["Next"] for c in state["Choices"]] + [state.get("Default", "")]


def test_create_steps_are_request_response_and_skipped_when_they_exist(states: dict[str, Any]) -> None:
    assert states["Prepare"]["Next"] == "ModelExists?"
    assert _next_of_choice(states["ModelExists?"]) == ["ConfigExists?", "CreateModel"]
    integrations = {name: states[name]["Resource"] for name in (
        "CreateModel", "CreateEndpointConfig", "CreateEndpointConfigWithCapture", "CreateEndpoint",
        "UpdateEndpoint", "UpdateEndpointWithGuardrails", "DescribeEndpoint")}
    assert integrations == {
        "CreateModel": "arn:aws:states:::sagemaker:createModel",
        "CreateEndpointConfig": "arn:aws:states:::sagemaker:createEndpointConfig",
        "CreateEndpointConfigWithCapture": "arn:aws:states:::sagemaker:createEndpointConfig",
        "CreateEndpoint": "arn:aws:states:::sagemaker:createEndpoint",
        "UpdateEndpoint": "arn:aws:states:::sagemaker:updateEndpoint",
        "UpdateEndpointWithGuardrails": "arn:aws:states:::sagemaker:updateEndpoint",
        "DescribeEndpoint": "arn:aws:states:::aws-sdk:sagemaker:describeEndpoint",
    }
    assert _next_of_choice(states["ConfigExists?"]) == ["CreateOrUpdate?", "CreateEndpointConfigWithCapture",
                                                        "CreateEndpointConfig"]
    assert _next_of_choice(states["CreateOrUpdate?"]) == ["CreateEndpoint", "UpdateEndpointWithGuardrails",
                                                          "UpdateEndpoint"]
    # Each step's answer goes beside the state input, never over it (the next steps read $.prepared).
    for name in integrations:
        assert states[name]["ResultPath"].startswith(("$.created.", "$.described")), name
    assert "DeploymentConfig.$" in states["UpdateEndpointWithGuardrails"]["Parameters"]
    assert "DeploymentConfig.$" not in states["UpdateEndpoint"]["Parameters"]
    for name in ("CreateModel", "CreateEndpointConfig", "CreateEndpoint", "UpdateEndpoint", "DescribeEndpoint",
                 "Prepare"):
        assert states[name]["Retry"], name
        assert states[name]["Catch"][-1] == {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error",
                                             "Next": "RecordFailure"}, name


def test_the_wait_for_in_service_is_bounded(states: dict[str, Any]) -> None:
    for name in ("CreateEndpoint", "UpdateEndpoint", "UpdateEndpointWithGuardrails"):
        assert states[name]["Next"] == "StartPolling"
    assert states["StartPolling"]["Next"] == "WaitForEndpoint"
    assert states["WaitForEndpoint"] == {"Type": "Wait", "SecondsPath": "$.prepared.poll_seconds",
                                         "Next": "DescribeEndpoint"}
    choice = states["EndpointStatus?"]
    targets = {json.dumps({k: v for k, v in c.items() if k != "Next"}, sort_keys=True): c["Next"]
               for c in choice["Choices"]}
    assert targets == {
        json.dumps({"StringEquals": "InService", "Variable": "$.described.EndpointStatus"}): "RecordSuccess",
        json.dumps({"StringEquals": "Failed", "Variable": "$.described.EndpointStatus"}): "EndpointFailed",
        json.dumps({"NumericGreaterThanEquals": MAX_POLLS, "Variable": "$.polls.count"}): "DeploymentTimedOut",
    }
    assert choice["Default"] == "CountPoll" and states["CountPoll"]["Next"] == "WaitForEndpoint"
    assert states["EndpointFailed"]["Next"] == states["DeploymentTimedOut"]["Next"] == "RecordFailure"


def _grants(resources: dict[str, Any], prefix: str) -> list[tuple[str, str, Any]]:  # noqa: F811
    return [(action, resolve(resource, resources), statement.get("Condition"))
            for statement in _statements(resources)
            for action in _as_list(statement["Action"]) if action.startswith(prefix)
            for resource in _as_list(statement["Resource"])]


def test_hosting_grants_are_on_kaos_resources_only(resources: dict[str, Any]) -> None:  # noqa: F811
    hosting = [(a, r) for a, r, _ in _grants(resources, "sagemaker:") if ":training-job/" not in r]
    assert {a for a, _ in hosting} >= {"sagemaker:CreateModel", "sagemaker:CreateEndpointConfig",
                                       "sagemaker:CreateEndpoint", "sagemaker:UpdateEndpoint",
                                       "sagemaker:DescribeEndpoint", "sagemaker:DeleteEndpoint",
                                       "sagemaker:InvokeEndpoint"}
    assert {a for a, _ in hosting} >= {"sagemaker:CreateModelPackageGroup", "sagemaker:CreateModelPackage",
                                       "sagemaker:UpdateModelPackage"}
    for action, resource in hosting:
        kind, _, name = resource.removeprefix(SAGEMAKER).split(":", 1)[1].partition("/")
        assert (kind, name) in {("endpoint", "kaos-*"), ("endpoint-config", "kaos-*"), ("model", "kaos-*"),
                                ("model-package-group", "kaos-*"), ("model-package", "kaos-*/*")}, (action, resource)
    alarms = [r for a, r, _ in _grants(resources, "cloudwatch:") if "Alarm" in a]
    assert alarms and all(r.endswith(":alarm:kaos-*") for r in alarms)


def test_models_run_as_workspace_roles_passed_to_sagemaker_only(resources: dict[str, Any]) -> None:  # noqa: F811
    passes = _grants(resources, "iam:PassRole")
    assert passes
    for _, resource, condition in passes:
        assert ":role/kaos/workspaces/kaos-ws-*" in resource or "Batch" in json.dumps(resource), resource
        assert list(condition["StringEquals"]) == ["iam:PassedToService"]


def test_workspace_roles_may_write_only_outputs_and_capture(resources: dict[str, Any]) -> None:  # noqa: F811
    (boundary,) = [res for res in _of_type(resources, "AWS::IAM::ManagedPolicy").values()
                   if res["Properties"].get("Path") == "/kaos/"]
    writes = [resolve(r, resources) for st in boundary["Properties"]["PolicyDocument"]["Statement"]
              if "s3:PutObject" in _as_list(st["Action"]) for r in _as_list(st["Resource"])]
    assert [w.split(":::", 1)[1].split("/", 1)[1] for w in writes] == ["ws/*/jobs/*/output/*",
                                                                       "ws/*/endpoints/*/capture/*"]
