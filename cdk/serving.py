"""The deployment pipeline: two task Lambdas and the Standard state machine that puts a model behind an endpoint.

Input `{"workspace", "endpoint", "deployment"}` (the execution is named by the deployment id: started once).
Prepare (the requests; which of them already exist, so a retried execution creates nothing twice; create or update)
→ CreateModel → CreateEndpointConfig (with or without data capture) → CreateEndpoint | UpdateEndpoint (real-time:
with the canary and alarm auto-rollback DeploymentConfig Prepare built) → a bounded DescribeEndpoint/Wait loop →
RecordSuccess, or RecordFailure (which deletes what the failed deployment created) → DeploymentFailed.

The SageMaker integrations are request-response (`arn:aws:states:::sagemaker:createModel`, ...): hosting has no
`.sync`, so the loop polls DescribeEndpoint through the SDK integration every `poll_seconds` (Prepare's setting)
at most MAX_POLLS times. JSONPath throughout (moto's interpreter cannot run JSONata).
"""
from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from cdk.grants import DataStores, executions_arn, grant_log_read
from cdk.lambdas import TaskFunction
from cdk.recording import mark_failed
from cdk.tenancy import ENDPOINT_LOG_GROUP_PREFIX
from cdk.states import (
    API_THROTTLING_BACKOFF,
    Outcome,
    catch_all,
    lambda_task,
    outcome_steps,
    standard_state_machine,
)

PREPARED = "$.prepared"
DESCRIBED = "$.described"
CREATED = "$.created"  # the create/update steps' answers (ARNs), kept beside the state input
POLLS = "$.polls"
# 1,800 polls: an hour at the stack's interval (cdk/constants.py), beyond a creation plus a guarded rollout.
MAX_POLLS = 1800
# SageMaker names hosting resources kaos creates kaos-* (chalicelib/serving.py), so grants can say so.
RESOURCE_PREFIX = "kaos-"
SAGEMAKER_TRANSIENT_ERRORS = ["SageMaker.ThrottlingException", "SageMaker.AmazonSageMakerException",
                              "SageMaker.SageMakerException"]


def _task(scope: Construct, id_: str, action: str, request: str, fields: Sequence[str],
          result_path: str) -> sfn.CustomState:
    """A request-response SageMaker integration whose request fields Prepare returned at `request`; its answer
    goes to `result_path` (a CustomState's JSON has no way to say DISCARD, and without a path the answer would
    replace the whole state input)."""
    state = sfn.CustomState(scope, id_, state_json={
        "Type": "Task", "Resource": f"arn:{Stack.of(scope).partition}:states:::{action}",
        "Parameters": {f"{f}.$": f"{request}.{f}" for f in fields},
        "ResultPath": result_path,
    })
    API_THROTTLING_BACKOFF.retry(state, SAGEMAKER_TRANSIENT_ERRORS)
    return state


class Serving(Construct):
    def __init__(self, scope: Construct, id_: str, *, data: DataStores) -> None:
        super().__init__(scope, id_)
        stack = Stack.of(self)
        self.arn = f"arn:{stack.partition}:sagemaker:{stack.region}:{stack.account}"
        self.endpoints_arn = f"{self.arn}:endpoint/{RESOURCE_PREFIX}*"
        self.configs_arn = f"{self.arn}:endpoint-config/{RESOURCE_PREFIX}*"
        self.models_arn = f"{self.arn}:model/{RESOURCE_PREFIX}*"
        # The registry's versions are Model Packages of one group per kaos group (chalicelib/registry.py).
        self.package_groups_arn = f"{self.arn}:model-package-group/{RESOURCE_PREFIX}*"
        self.packages_arn = f"{self.arn}:model-package/{RESOURCE_PREFIX}*/*"
        self.alarms_arn = f"arn:{stack.partition}:cloudwatch:{stack.region}:{stack.account}:alarm:{RESOURCE_PREFIX}*"
        self.api_executions_arn = ""  # set by grant_api
        self.log_groups_arn = (f"arn:{stack.partition}:logs:{stack.region}:{stack.account}:log-group:"
                               f"{ENDPOINT_LOG_GROUP_PREFIX}{RESOURCE_PREFIX}*")

        self.prepare = TaskFunction(self, "PrepareDeployment", component="prepare_deployment",
                                    timeout=Duration.minutes(2))
        self.record = TaskFunction(self, "RecordDeployment", component="record_deployment",
                                   timeout=Duration.minutes(2))
        data.grant_read_write(self.prepare.function, self.record.function)
        self._grant_each(self.prepare.role, "Describe")
        self.prepare.function.add_to_role_policy(iam.PolicyStatement(
            actions=["cloudwatch:PutMetricAlarm"], resources=[self.alarms_arn]))
        self._grant_each(self.record.role, "Delete")

        prepare = lambda_task(self, "Prepare", self.prepare.function, result_path=PREPARED)
        create_model = _task(self, "CreateModel", "sagemaker:createModel", f"{PREPARED}.model",
                             ("ModelName", "ExecutionRoleArn", "PrimaryContainer"), f"{CREATED}.model")
        config_fields = ("EndpointConfigName", "ProductionVariants")
        create_config = _task(self, "CreateEndpointConfig", "sagemaker:createEndpointConfig", f"{PREPARED}.config",
                              config_fields, f"{CREATED}.config")
        create_captured = _task(self, "CreateEndpointConfigWithCapture", "sagemaker:createEndpointConfig",
                                f"{PREPARED}.config", (*config_fields, "DataCaptureConfig"), f"{CREATED}.config")
        endpoint_fields = ("EndpointName", "EndpointConfigName")
        create_endpoint = _task(self, "CreateEndpoint", "sagemaker:createEndpoint", f"{PREPARED}.endpoint",
                                endpoint_fields, f"{CREATED}.endpoint")
        update_endpoint = _task(self, "UpdateEndpoint", "sagemaker:updateEndpoint", f"{PREPARED}.endpoint",
                                endpoint_fields, f"{CREATED}.endpoint")
        update_guarded = _task(self, "UpdateEndpointWithGuardrails", "sagemaker:updateEndpoint",
                               f"{PREPARED}.endpoint", (*endpoint_fields, "DeploymentConfig"), f"{CREATED}.endpoint")
        describe = _task(self, "DescribeEndpoint", "aws-sdk:sagemaker:describeEndpoint", f"{PREPARED}.endpoint",
                         ("EndpointName",), result_path=DESCRIBED)
        start_polls = sfn.Pass(self, "StartPolling", result=sfn.Result.from_object({"count": 0}), result_path=POLLS)
        count = sfn.Pass(self, "CountPoll", parameters={"count.$": f"States.MathAdd({POLLS}.count, 1)"},
                         result_path=POLLS)
        wait = sfn.Wait(self, "WaitForEndpoint", time=sfn.WaitTime.seconds_path(f"{PREPARED}.poll_seconds"))
        endpoint_failed = sfn.Pass(self, "EndpointFailed", parameters={
            "Error": "EndpointFailed", "Cause.$": f"States.JsonToString({DESCRIBED})"}, result_path="$.error")
        timed_out = sfn.Pass(self, "DeploymentTimedOut", parameters={
            "Error": "DeploymentTimedOut", "Cause": f"the endpoint was not InService after {MAX_POLLS} polls"},
            result_path="$.error")

        mark = mark_failed(self, "MarkEndpointFailed", table=data.table, sort_key="ENDPOINT#{}",
                           id_path="$.endpoint", running=("Creating", "Updating"), reason_attribute="failure_reason",
                           time_attributes=("updated_at",), versioned=True)
        record_success, record_failure = outcome_steps(
            self, Outcome(self.record.function, ("workspace", "endpoint", "deployment"),
                          {"described": sfn.JsonPath.object_at(DESCRIBED)}, execution=False),
            failed="DeploymentFailed", mark=mark)
        catch_all(record_failure, prepare, create_model, create_config, create_captured, create_endpoint,
                  update_endpoint, update_guarded, describe)
        endpoint_failed.next(record_failure)
        timed_out.next(record_failure)

        start_polls.next(wait).next(describe).next(
            sfn.Choice(self, "EndpointStatus?")
            .when(sfn.Condition.string_equals(f"{DESCRIBED}.EndpointStatus", "InService"),
                  record_success.next(sfn.Succeed(self, "Deployed")))
            .when(sfn.Condition.string_equals(f"{DESCRIBED}.EndpointStatus", "Failed"), endpoint_failed)
            .when(sfn.Condition.number_greater_than_equals(f"{POLLS}.count", MAX_POLLS), timed_out)
            .otherwise(count.next(wait)))
        for state in (create_endpoint, update_endpoint, update_guarded):
            state.next(start_polls)
        endpoint = (sfn.Choice(self, "CreateOrUpdate?")
                    .when(sfn.Condition.boolean_equals(f"{PREPARED}.update", False), create_endpoint)
                    .when(sfn.Condition.is_present(f"{PREPARED}.endpoint.DeploymentConfig"), update_guarded)
                    .otherwise(update_endpoint))
        create_config.next(endpoint)
        create_captured.next(endpoint)
        config = (sfn.Choice(self, "ConfigExists?")
                  .when(sfn.Condition.boolean_equals(f"{PREPARED}.config_exists", True), endpoint)
                  .when(sfn.Condition.is_present(f"{PREPARED}.config.DataCaptureConfig"), create_captured)
                  .otherwise(create_config))
        create_model.next(config)
        definition = prepare.next(
            sfn.Choice(self, "ModelExists?")
            .when(sfn.Condition.boolean_equals(f"{PREPARED}.model_exists", True), config)
            .otherwise(create_model))
        self.state_machine = standard_state_machine(self, "DeploymentStateMachine", definition,
                                                    include_execution_data=True)
        # CustomState grants nothing: the integrations' permissions, written out, on kaos-* resources only.
        self.state_machine.add_to_role_policy(iam.PolicyStatement(
            actions=["sagemaker:CreateModel"], resources=[self.models_arn]))
        self.state_machine.add_to_role_policy(iam.PolicyStatement(
            actions=["sagemaker:CreateEndpointConfig"], resources=[self.configs_arn]))
        self.state_machine.add_to_role_policy(iam.PolicyStatement(
            actions=["sagemaker:CreateEndpoint", "sagemaker:UpdateEndpoint"],
            resources=[self.endpoints_arn, self.configs_arn]))
        self.state_machine.add_to_role_policy(iam.PolicyStatement(
            actions=["sagemaker:DescribeEndpoint"], resources=[self.endpoints_arn]))

    def _grant_each(self, role: iam.IRole, verb: str) -> None:
        """`<verb>Endpoint`, `<verb>EndpointConfig` and `<verb>Model`, each on its own resource type."""
        for noun, arn in (("Endpoint", self.endpoints_arn), ("EndpointConfig", self.configs_arn),
                          ("Model", self.models_arn)):
            role.add_to_principal_policy(iam.PolicyStatement(actions=[f"sagemaker:{verb}{noun}"], resources=[arn]))

    def grant_api(self, role: iam.IRole) -> None:
        """What the API does itself: start deployments (and stop them on a kill), describe and delete endpoints
        and what they ran, invoke them, read their logs and invocation metrics; register model versions as Model
        Packages."""
        self.state_machine.grant_start_execution(role)
        self.api_executions_arn = executions_arn(self.state_machine)
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["states:DescribeExecution", "states:StopExecution"], resources=[self.api_executions_arn]))
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["sagemaker:DescribeEndpoint", "sagemaker:DeleteEndpoint", "sagemaker:InvokeEndpoint"],
            resources=[self.endpoints_arn]))
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["sagemaker:DeleteEndpointConfig"], resources=[self.configs_arn]))
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["sagemaker:DeleteModel"], resources=[self.models_arn]))
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["cloudwatch:DeleteAlarms"], resources=[self.alarms_arn]))
        # An endpoint's cost reads its invocation metrics (chalicelib/costs.py); GetMetricData takes no resource.
        role.add_to_principal_policy(iam.PolicyStatement(actions=["cloudwatch:GetMetricData"], resources=["*"]))
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["sagemaker:CreateModelPackageGroup", "sagemaker:DescribeModelPackageGroup"],
            resources=[self.package_groups_arn]))
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["sagemaker:CreateModelPackage", "sagemaker:UpdateModelPackage"], resources=[self.packages_arn]))
        grant_log_read(self.log_groups_arn, role)
