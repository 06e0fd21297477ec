"""Creates the embedded stack's resources from the synthesized CDK template, through boto3 against the emulator.

moto's CloudFormation cannot deploy our template (SAM transform, asset buckets), so each resource type we use
is created directly, with intrinsic functions resolved against the physical names chosen here. State machine
definitions are the synthesized JSON with references resolved and nothing else changed.
"""
from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable
from pathlib import Path

from kaos.local import iam
from kaos.local.lambda_runtime import FunctionSpec

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"
Handler = Callable[[dict[str, Any], Any], Any]


@dataclass
class LoadedStack:
    physical: dict[str, str] = field(default_factory=dict)
    # Each function as its template declares it: handler, its own variables, its role (kaos/local/lambda_runtime).
    functions: dict[str, FunctionSpec] = field(default_factory=dict)
    api: FunctionSpec | None = None
    outputs: dict[str, str] = field(default_factory=dict)


def physical_name(logical_id: str, resource_type: str) -> str:
    if resource_type == "AWS::S3::Bucket":
        # Bucket names: lowercase, 3-63 characters.
        return f"kaos-{logical_id.lower()}"[:63]
    return f"Kaos-{logical_id}"[:64]


class Resolver:
    def __init__(self, resources: dict[str, Any], region: str = REGION, account: str = ACCOUNT_ID) -> None:
        self.resources = resources
        self.pseudo = {
            "AWS::Region": region, "AWS::AccountId": account, "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com", "AWS::StackName": "Kaos", "AWS::NoValue": None,
        }
        self.names = {lid: physical_name(lid, r["Type"]) for lid, r in resources.items()}
        self.region, self.account = region, account

    def ref(self, logical_id: str) -> str:
        if logical_id in self.pseudo:
            return str(self.pseudo[logical_id])
        kind = self.resources[logical_id]["Type"]
        if kind in ("AWS::StepFunctions::StateMachine", "AWS::IAM::ManagedPolicy", "AWS::Batch::JobDefinition",
                    "AWS::Batch::JobQueue", "AWS::Batch::ComputeEnvironment"):
            return self.arn(logical_id)  # CloudFormation's Ref of these is their ARN
        return self.names[logical_id]

    def arn(self, logical_id: str) -> str:
        kind, name = self.resources[logical_id]["Type"], self.names[logical_id]
        path = self.resources[logical_id].get("Properties", {}).get("Path", "/")
        arns = {
            "AWS::IAM::ManagedPolicy": f"arn:aws:iam::{self.account}:policy{path}{name}",
            "AWS::S3::Bucket": f"arn:aws:s3:::{name}",
            "AWS::DynamoDB::Table": f"arn:aws:dynamodb:{self.region}:{self.account}:table/{name}",
            "AWS::IAM::Role": f"arn:aws:iam::{self.account}:role{path}{name}",
            "AWS::Lambda::Function": f"arn:aws:lambda:{self.region}:{self.account}:function:{name}",
            "AWS::Serverless::Function": f"arn:aws:lambda:{self.region}:{self.account}:function:{name}",
            "AWS::StepFunctions::StateMachine": f"arn:aws:states:{self.region}:{self.account}:stateMachine:{name}",
            "AWS::Logs::LogGroup": f"arn:aws:logs:{self.region}:{self.account}:log-group:{name}:*",
            "AWS::Batch::JobQueue": f"arn:aws:batch:{self.region}:{self.account}:job-queue/{name}",
            "AWS::Batch::JobDefinition": f"arn:aws:batch:{self.region}:{self.account}:job-definition/{name}:1",
            "AWS::Batch::ComputeEnvironment": f"arn:aws:batch:{self.region}:{self.account}:compute-environment/{name}",
        }
        return arns.get(kind, f"arn:aws:kaos:{self.region}:{self.account}:{name}")

    def get_att(self, logical_id: str, attribute: str) -> str:
        if attribute == "Arn" or attribute.endswith("Arn"):  # Arn, JobQueueArn, ComputeEnvironmentArn, ...
            return self.arn(logical_id)
        if attribute in ("Name", "TableName"):
            return self.names[logical_id]
        if attribute == "StreamArn":
            return self.arn(logical_id) + "/stream/local"
        raise ValueError(f"unsupported Fn::GetAtt {logical_id}.{attribute}")

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                logical_id, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.get_att(logical_id, attribute)
            if key == "Fn::Join":
                separator, parts = arg
                return separator.join(str(self.resolve(p)) for p in self.resolve(parts))
            if key == "Fn::Sub":
                return self.sub(arg)
            if key == "Fn::Select":
                index, items = arg
                return self.resolve(items)[int(self.resolve(index))]
            if key == "Fn::Split":
                separator, text = arg
                return str(self.resolve(text)).split(separator)
        return {k: self.resolve(v) for k, v in value.items()}

    def sub(self, arg: Any) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in variables:
                return str(variables[name])
            if "." in name:
                logical_id, attribute = name.split(".", 1)
                return self.get_att(logical_id, attribute)
            return self.ref(name)

        return re.sub(r"\$\{([^!}][^}]*)\}", replace, text)


def import_handler(path: str) -> Handler:
    module_name, _, attribute = path.rpartition(".")
    handler: Handler = getattr(importlib.import_module(module_name), attribute)
    return handler


class TemplateLoader:
    """Creates buckets, tables, roles, log groups and state machines; collects Lambda handlers and config."""

    def __init__(self, template: dict[str, Any], clients: Callable[[str], Any], code_root: Path) -> None:
        self.template = template
        self.code_root = code_root
        self.resources: dict[str, Any] = template["Resources"]
        self.resolver = Resolver(self.resources)
        self.client = clients

    def load(self) -> LoadedStack:
        stack = LoadedStack(physical=dict(self.resolver.names))
        order = ["AWS::IAM::ManagedPolicy", "AWS::IAM::Role", "AWS::IAM::Policy", "AWS::S3::Bucket",
                 "AWS::DynamoDB::Table", "AWS::Logs::LogGroup", "AWS::Lambda::Function",
                 "AWS::Serverless::Function", "AWS::StepFunctions::StateMachine"]
        # EventBridge rules last: their targets (functions, state machines) exist by then.
        order.append("AWS::Events::Rule")
        for kind in order:
            for logical_id, resource in self.resources.items():
                if resource["Type"] == kind:
                    self._create(stack, logical_id, kind, resource.get("Properties", {}))
        from kaos.local.batch_runner import create_batch_resources  # AWS Batch: compute env, queue, job definition

        create_batch_resources(self.resources, self.resolver, self.client, ACCOUNT_ID, REGION)
        for name, output in self.template.get("Outputs", {}).items():
            stack.outputs[name] = str(self.resolver.resolve(output["Value"]))
        return stack

    def _create(self, stack: LoadedStack, logical_id: str, kind: str, props: dict[str, Any]) -> None:
        name = self.resolver.names[logical_id]
        # IAM goes into moto's backend in this process (kaos/local/iam.py: template_role and the like).
        if kind == "AWS::IAM::ManagedPolicy":
            iam.template_managed_policy(name, props.get("Path", "/"),
                                        json.dumps(self.resolver.resolve(props["PolicyDocument"])))
        elif kind == "AWS::IAM::Role":
            self._create_role(name, props)
        elif kind == "AWS::IAM::Policy":
            # The policies the emulator decides every request by (kaos/local/iam.py): exactly the template's.
            document = json.dumps(self.resolver.resolve(props["PolicyDocument"]))
            for role in self.resolver.resolve(props.get("Roles", [])):
                iam.template_role_policy(role, props.get("PolicyName", name), document)
        elif kind == "AWS::S3::Bucket":
            s3 = self.client("s3")
            self._idempotent(lambda: s3.create_bucket(Bucket=name), "BucketAlreadyOwnedByYou")
            if props.get("VersioningConfiguration", {}).get("Status") == "Enabled":
                s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
            if props.get("NotificationConfiguration", {}).get("EventBridgeConfiguration", {}).get(
                    "EventBridgeEnabled"):
                # S3 -> EventBridge "Object Created" events (the rules below pick what they need).
                s3.put_bucket_notification_configuration(
                    Bucket=name, NotificationConfiguration={"EventBridgeConfiguration": {}})
        elif kind == "AWS::DynamoDB::Table":
            self._create_table(name, props)
        elif kind == "AWS::Logs::LogGroup":
            group = self.resolver.resolve(props.get("LogGroupName")) or name
            self._idempotent(lambda: self.client("logs").create_log_group(logGroupName=group),
                             "ResourceAlreadyExistsException")
        elif kind in ("AWS::Lambda::Function", "AWS::Serverless::Function"):
            variables = self.resolver.resolve(props.get("Environment", {}).get("Variables", {}))
            api = kind == "AWS::Serverless::Function"
            spec = FunctionSpec(
                name=name, handler=props["Handler"], variables={k: str(v) for k, v in variables.items()},
                role_arn=str(self.resolver.resolve(props["Role"])), timeout_seconds=int(props.get("Timeout", 3)),
                memory_mb=int(props.get("MemorySize", 128)), runtime=str(props["Runtime"]),
                # The deployment package: the Chalice project (app.py + chalicelib/) or functions/ + chalicelib/.
                code_paths=(str(self.code_root / "app"),) if api else (str(self.code_root),))
            if api:
                stack.api = spec
            else:
                stack.functions[name] = spec
        elif kind == "AWS::Events::Rule":
            self._create_rule(name, props)
        elif kind == "AWS::StepFunctions::StateMachine":
            definition = self.resolver.resolve(props["DefinitionString"])
            json.loads(definition)  # fail here, not inside an execution, if resolution broke the JSON
            sfn = self.client("stepfunctions")
            self._idempotent(lambda: sfn.create_state_machine(
                name=name, definition=definition, roleArn=self.resolver.resolve(props["RoleArn"]),
                type=props.get("StateMachineType", "STANDARD"),
            ), "StateMachineAlreadyExists")

    def _create_role(self, name: str, props: dict[str, Any]) -> None:
        boundary = self.resolver.resolve(props["PermissionsBoundary"]) if props.get("PermissionsBoundary") else None
        iam.template_role(name, props.get("Path", "/"),
                          json.dumps(self.resolver.resolve(props["AssumeRolePolicyDocument"])), boundary)
        for policy in props.get("Policies", []):
            iam.template_role_policy(name, policy["PolicyName"],
                                     json.dumps(self.resolver.resolve(policy["PolicyDocument"])))
        for arn in self.resolver.resolve(props.get("ManagedPolicyArns", [])):
            iam.attach_template_policy(name, arn)

    def _create_rule(self, name: str, props: dict[str, Any]) -> None:
        """An EventBridge rule with its pattern on its bus (default), and its targets (the emulator delivers
        Lambda targets to the in-process handler registered under the function's name)."""
        events = self.client("events")
        bus = self.resolver.resolve(props.get("EventBusName")) or "default"
        events.put_rule(Name=name, EventBusName=bus, State=props.get("State", "ENABLED"),
                        EventPattern=json.dumps(self.resolver.resolve(props["EventPattern"])),
                        Description=props.get("Description", ""))
        targets = [{key: value for key, value in self.resolver.resolve(target).items()
                    if key in ("Id", "Arn", "Input", "InputPath", "RoleArn", "RetryPolicy")}
                   for target in props.get("Targets", [])]
        if targets:
            events.put_targets(Rule=name, EventBusName=bus, Targets=targets)

    def _create_table(self, name: str, props: dict[str, Any]) -> None:
        kwargs: dict[str, Any] = {
            "TableName": name, "KeySchema": props["KeySchema"],
            "AttributeDefinitions": props["AttributeDefinitions"], "BillingMode": "PAY_PER_REQUEST",
        }
        if props.get("GlobalSecondaryIndexes"):
            kwargs["GlobalSecondaryIndexes"] = [
                {k: v for k, v in index.items() if k in ("IndexName", "KeySchema", "Projection")}
                for index in props["GlobalSecondaryIndexes"]
            ]
        self._idempotent(lambda: self.client("dynamodb").create_table(**kwargs), "ResourceInUseException")

    @staticmethod
    def _idempotent(call: Callable[[], Any], exists_code: str) -> None:
        """Creating what a previous start of the same state already created is not an error."""
        try:
            call()
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code != exists_code:
                raise
