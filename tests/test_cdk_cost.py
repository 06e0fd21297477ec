"""The idle cost of the stack: no resource with a fixed hourly (or monthly) price, every resource type priced in
docs/cost.md, and chalicelib/cost.py's pipeline constants equal to the synthesized state machines and Lambdas.

Synthesized once by tests/test_cdk.py's cached helper (its `dev` stage fixtures are reused here)."""
from __future__ import annotations

import json
import re
from typing import Any

import pytest

from cdk.check import resolve
from cdk.constants import REPO_ROOT
from chalicelib.cost import FARGATE_MEMORY_GB, FARGATE_PUBLIC_IP, FARGATE_VCPU, PIPELINES
from tests.test_cdk import _of_type, dev, resources

__all__ = ["dev", "resources"]  # fixtures of tests/test_cdk.py, used here by name

# Resource types that cost money every hour they exist, used or not (a NAT gateway ~$33/month, a load balancer
# ~$16, an instance, a cluster, a public IPv4 address, a KMS key $1, a secret $0.40, a hosted zone $0.50 ...).
FIXED_PRICE_TYPES = {
    "AWS::EC2::NatGateway", "AWS::EC2::Instance", "AWS::EC2::EIP", "AWS::EC2::TransitGateway",
    "AWS::EC2::ClientVpnEndpoint", "AWS::EC2::VPNConnection", "AWS::AutoScaling::AutoScalingGroup",
    "AWS::ElasticLoadBalancing::LoadBalancer", "AWS::ElasticLoadBalancingV2::LoadBalancer",
    "AWS::RDS::DBInstance", "AWS::RDS::DBCluster", "AWS::ElastiCache::CacheCluster",
    "AWS::ElastiCache::ReplicationGroup", "AWS::OpenSearchService::Domain", "AWS::Elasticsearch::Domain",
    "AWS::Redshift::Cluster", "AWS::MSK::Cluster", "AWS::EKS::Cluster", "AWS::Kinesis::Stream",
    "AWS::SageMaker::NotebookInstance", "AWS::SageMaker::Endpoint", "AWS::SageMaker::Domain",
    "AWS::KMS::Key", "AWS::SecretsManager::Secret", "AWS::Route53::HostedZone", "AWS::WAFv2::WebACL",
    "AWS::CloudWatch::Dashboard", "AWS::ECS::Service", "AWS::DocDB::DBCluster", "AWS::Neptune::DBCluster",
}
DOC = REPO_ROOT / "docs" / "cost.md"


def _fixed_price(type_: str, props: dict[str, Any]) -> str | None:
    """Why this resource has a price at zero use, or None. Types whose idle price depends on a property."""
    if type_ in FIXED_PRICE_TYPES:
        return "a fixed hourly or monthly price"
    if type_ == "AWS::DynamoDB::Table" and props.get("BillingMode") != "PAY_PER_REQUEST":
        return "provisioned capacity (billed per hour)"
    if type_ == "AWS::EC2::VPCEndpoint" and props.get("VpcEndpointType", "Gateway") != "Gateway":
        return "an interface endpoint (billed per AZ-hour)"
    if type_ == "AWS::Batch::ComputeEnvironment":
        compute = props.get("ComputeResources", {})
        if compute.get("Type") not in ("FARGATE", "FARGATE_SPOT") and compute.get("MinvCpus", 0) > 0:
            return "EC2 capacity kept running (MinvCpus > 0)"
    if type_ in ("AWS::Lambda::Alias", "AWS::Lambda::Version") and "ProvisionedConcurrencyConfig" in props:
        return "provisioned concurrency (billed per hour)"
    if type_ in ("AWS::ApiGateway::Stage", "AWS::Serverless::Api") and props.get("CacheClusterEnabled"):
        return "an API cache (billed per hour)"
    if type_ == "AWS::StepFunctions::StateMachine" and props.get("StateMachineType") == "EXPRESS":
        return None
    return None


def test_no_resource_has_a_price_at_zero_use(resources: dict[str, Any]) -> None:
    found = {logical_id: why for logical_id, res in resources.items()
             if (why := _fixed_price(res["Type"], res.get("Properties", {})))}
    assert not found, f"resources that cost money while kaos is idle: {found}"


def test_the_check_catches_what_it_is_for() -> None:
    assert _fixed_price("AWS::EC2::NatGateway", {})
    assert _fixed_price("AWS::DynamoDB::Table", {"BillingMode": "PROVISIONED"})
    assert _fixed_price("AWS::EC2::VPCEndpoint", {"VpcEndpointType": "Interface"})
    assert _fixed_price("AWS::Batch::ComputeEnvironment", {"ComputeResources": {"Type": "EC2", "MinvCpus": 2}})
    assert _fixed_price("AWS::DynamoDB::Table", {"BillingMode": "PAY_PER_REQUEST"}) is None


def test_every_resource_type_is_in_the_idle_cost_table(resources: dict[str, Any]) -> None:
    """docs/cost.md lists each type with its monthly cost at zero use: a new type needs its price looked up."""
    documented = set(re.findall(r"^\| `(AWS::[A-Za-z0-9:]+)`", DOC.read_text(), flags=re.MULTILINE))
    missing = sorted({res["Type"] for res in resources.values()} - documented)
    assert not missing, f"add these resource types to {DOC.name} with their idle cost: {missing}"


def _path(definition: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The states entered from `name` until a Succeed or Fail state; a Choice takes its Default (the path that
    runs the job)."""
    states: list[dict[str, Any]] = []
    while True:
        state = definition["States"][name]
        states.append(state)
        if state["Type"] in ("Succeed", "Fail"):
            return states
        name = state["Default"] if state["Type"] == "Choice" else state["Next"]


def _states_on_failure_path(definition: dict[str, Any]) -> int:
    """The longest failure: the success path up to its last state with a Catch, which fails, then the catch's
    states (RecordFailure, the Fail state)."""
    success = _path(definition, definition["StartAt"])
    last = max(i for i, state in enumerate(success) if state.get("Catch"))
    return last + 1 + len(_path(definition, success[last]["Catch"][0]["Next"]))


@pytest.mark.parametrize(("kind", "machine"), [("train", "TrainingTraining"), ("batch", "BatchBatch")])
def test_pipeline_constants_are_the_synthesized_ones(resources: dict[str, Any], kind: str, machine: str) -> None:
    (state_machine,) = [m for logical_id, m in _of_type(resources, "AWS::StepFunctions::StateMachine").items()
                        if logical_id.startswith(machine)]
    definition = json.loads(resolve(state_machine["Properties"]["DefinitionString"], resources))
    pipeline = PIPELINES[kind]
    assert pipeline.transitions_success == len(_path(definition, definition["StartAt"]))
    assert pipeline.transitions_failure == _states_on_failure_path(definition)
    functions = {f["Properties"]["Handler"]: f["Properties"]
                 for f in _of_type(resources, "AWS::Lambda::Function").values()}
    for component, memory, timeout in pipeline.lambdas:
        props = functions[f"functions.{component}.handler"]
        assert (props["MemorySize"], props["Timeout"]) == (memory, timeout), component


def test_batch_jobs_run_the_fargate_size_cost_py_prices(resources: dict[str, Any]) -> None:
    (definition,) = _of_type(resources, "AWS::Batch::JobDefinition").values()
    container = definition["Properties"]["ContainerProperties"]
    sizes = {r["Type"]: float(r["Value"]) for r in container["ResourceRequirements"]}
    assert sizes == {"VCPU": FARGATE_VCPU, "MEMORY": FARGATE_MEMORY_GB * 1024}
    # No EphemeralStorage: Fargate's free 20 GiB, so cost.py bills no storage; a public IP costs by the hour.
    assert "EphemeralStorage" not in container
    assert (container["NetworkConfiguration"]["AssignPublicIp"] == "ENABLED") is FARGATE_PUBLIC_IP
