"""The HTTP API: the Chalice app in `app/` (routes) packaged by `chalice.cdk.Chalice` with a CDK-owned role."""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import json

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigateway
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from chalice.cdk import Chalice
from constructs import Construct

from cdk.bundling import LAMBDA_PYTHON_VERSION
from cdk.grants import (
    DataStores,
    executions_arn,
    grant_log_read,
    grant_workspace_deletion,
    training_log_group_arn,
)
from cdk.lambdas import LOG_RETENTION

API_HANDLER = "APIHandler"  # logical id chalice gives the function behind the REST API
REST_API = "RestAPI"
API_GATEWAY_STAGE = "api"

# Stage-wide throttling (every route). kaos is driven by a CLI: a user's command makes a handful of sequential calls
# (an upload asks for presigned URLs in pages of MAX_BLOBS_PER_REQUEST, then commits one snapshot), so 50 requests/s
# steady is far above legitimate use by a team, while it caps what a leaked credential or a runaway script can cost
# (Lambda concurrency ≈ rate * 30 s timeout at worst, DynamoDB on-demand, SageMaker). Burst 100 absorbs a few CLIs
# starting at once. Both are well under the account default (10,000 rps / 5,000 burst), which they must not exceed.
THROTTLING_RATE_LIMIT = 50
THROTTLING_BURST_LIMIT = 100
# Starting a training run (POST .../jobs) launches SageMaker instances: throttled much harder than reads.
START_JOB_PATH = "/workspaces/{workspace}/jobs"
START_JOB_RATE_LIMIT = 2
START_JOB_BURST_LIMIT = 5
# Execution logs at ERROR only, and never request/response bodies (DataTraceEnabled would copy user data and
# presigned URLs into CloudWatch); who called what is in the access log below.
EXECUTION_LOGGING_LEVEL = "ERROR"
# Request size: API Gateway rejects payloads over 10 MB (hard limit) and Lambda over 6 MB; the app enforces
# chalicelib.limits.MAX_REQUEST_BYTES (6 MB) itself. Chalice emits no request models, so a request validator would
# have nothing to check (path parameters are always present once a route matches): none is configured.
# One JSON line per request; `userArn` is the SigV4 caller (routes use AWS_IAM authorization).
ACCESS_LOG_FORMAT = json.dumps(
    {
        "requestId": "$context.requestId",
        "extendedRequestId": "$context.extendedRequestId",
        "requestTime": "$context.requestTime",
        "ip": "$context.identity.sourceIp",
        "userAgent": "$context.identity.userAgent",
        "accountId": "$context.identity.accountId",
        "caller": "$context.identity.caller",
        "userArn": "$context.identity.userArn",
        "httpMethod": "$context.httpMethod",
        "resourcePath": "$context.resourcePath",
        "path": "$context.path",
        "protocol": "$context.protocol",
        "status": "$context.status",
        "responseLength": "$context.responseLength",
        "responseLatency": "$context.responseLatency",
        "integrationLatency": "$context.integrationLatency",
        "error": "$context.error.message",
        "integrationError": "$context.integration.error",
    },
    separators=(",", ":"),
)


def method_resource_path(path: str) -> str:
    """A route path as a stage MethodSetting's ResourcePath spells it: `/a/b` → `/~1a~1b` (every `/` becomes `~1`,
    then a leading `/` is added)."""
    return "/" + path.replace("/", "~1")


def _method_setting(resource_path: str, http_method: str, rate: int, burst: int) -> dict[str, object]:
    return {
        "ResourcePath": resource_path,
        "HttpMethod": http_method,
        "ThrottlingRateLimit": rate,
        "ThrottlingBurstLimit": burst,
        "LoggingLevel": EXECUTION_LOGGING_LEVEL,
        "DataTraceEnabled": False,
        "MetricsEnabled": True,
    }


METHOD_SETTINGS = [
    _method_setting("/*", "*", THROTTLING_RATE_LIMIT, THROTTLING_BURST_LIMIT),
    _method_setting(method_resource_path(START_JOB_PATH), "POST", START_JOB_RATE_LIMIT, START_JOB_BURST_LIMIT),
]


@contextlib.contextmanager
def _chalice_packaging(work_dir: Path, region: str) -> Iterator[None]:
    """Run `chalice package` with its side effects pointed away from the repo.

    The construct writes `chalice.out/` under the current directory and asks botocore for a region (to spell the
    API Gateway service principal), so both are set for the duration and restored afterwards.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work_dir / "chalice.out", ignore_errors=True)  # one zip per synth otherwise accumulates
    old_cwd, old_region = os.getcwd(), os.environ.get("AWS_DEFAULT_REGION")
    os.chdir(work_dir)
    os.environ["AWS_DEFAULT_REGION"] = region
    try:
        yield
    finally:
        os.chdir(old_cwd)
        if old_region is None:
            os.environ.pop("AWS_DEFAULT_REGION", None)
        else:
            os.environ["AWS_DEFAULT_REGION"] = old_region


class Api(Construct):
    """REST API (regional) → one Lambda running `app.app`; `url` is the stage's invoke URL.

    The stage is throttled, access- and execution-logged (with retention) and traced; `invoke_policy` is what
    callers need, since every route uses AWS_IAM (SigV4) authorization (declared in app/app.py).
    """

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        source_dir: Path,
        work_dir: Path,
        data: DataStores,
        state_machine: sfn.IStateMachine,
        batch_state_machine: sfn.IStateMachine,
        grid_state_machine: sfn.IStateMachine,
        environment: dict[str, str],
        manage_account_role: bool = True,
    ) -> None:
        super().__init__(scope, id_)
        stack = Stack.of(self)
        partition, region, account = stack.partition, stack.region, stack.account

        self.log_group = logs.LogGroup(self, "Logs", retention=LOG_RETENTION, removal_policy=RemovalPolicy.DESTROY)
        # manage_iam_role=False: chalice's generated policy would be broad; this role is least privilege.
        self.role = iam.Role(self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
        self.log_group.grant_write(self.role)
        data.grant_read_write(self.role)
        grant_workspace_deletion(data.bucket, self.role)

        def start_and_manage(machine: sfn.IStateMachine) -> str:
            """Start executions and describe/stop them (`kaos train kill`); GetExecutionHistory: a kill finds the
            job an execution submitted (its TaskSubmitted event). Returns the executions' ARN pattern."""
            machine.grant_start_execution(self.role)
            executions = executions_arn(machine)
            self.role.add_to_policy(iam.PolicyStatement(
                actions=["states:DescribeExecution", "states:StopExecution", "states:GetExecutionHistory"],
                resources=[executions],
            ))
            return executions

        self.executions_arn = start_and_manage(state_machine)
        self.batch_executions_arn = start_and_manage(batch_state_machine)
        grid_state_machine.grant_start_execution(self.role)
        grant_log_read(training_log_group_arn(self), self.role)
        # `kaos train kill` stops the training itself too: stopping an execution does not always stop the job.
        # `kaos workspace kill` also waits for it to end. kaos names every training job `train-<fingerprint>[-n]`.
        self.training_jobs_arn = f"arn:{partition}:sagemaker:{region}:{account}:training-job/train-*"
        self.role.add_to_policy(
            iam.PolicyStatement(actions=["sagemaker:StopTrainingJob", "sagemaker:DescribeTrainingJob"],
                                resources=[self.training_jobs_arn])
        )
        # `kaos workspace kill` stops the workspace's grids (executions named `grid-<fingerprint>`) and terminates the
        # Batch jobs of its batch executions, then waits for them to end.
        self.grid_executions_arn = executions_arn(grid_state_machine, ":grid-*")
        self.role.add_to_policy(
            iam.PolicyStatement(actions=["states:StopExecution"], resources=[self.grid_executions_arn])
        )
        self.batch_jobs_arn = f"arn:{partition}:batch:{region}:{account}:job/*"  # job ids are assigned by Batch
        self.role.add_to_policy(iam.PolicyStatement(actions=["batch:TerminateJob"], resources=[self.batch_jobs_arn]))
        # DescribeJobs supports no resource-level permissions.
        self.role.add_to_policy(iam.PolicyStatement(actions=["batch:DescribeJobs"], resources=["*"]))

        stage_config = {
            "api_gateway_stage": API_GATEWAY_STAGE,
            "api_gateway_endpoint_type": "REGIONAL",
            "manage_iam_role": False,
            "iam_role_arn": self.role.role_arn,
            "lambda_timeout": 30,
            "lambda_memory_size": 512,
            "environment_variables": environment,
        }
        with _chalice_packaging(work_dir, region):
            self.chalice = Chalice(self, "Chalice", source_dir=str(source_dir), stage_config=stage_config)

        handler = self.chalice.get_resource(API_HANDLER)
        # chalice picks the runtime of the interpreter running synth; pin it to the task Lambdas' runtime instead
        # (the packaged dependencies are pure Python).
        handler.add_property_override("Runtime", f"python{LAMBDA_PYTHON_VERSION}")
        handler.add_property_override("LoggingConfig", {"LogGroup": self.log_group.log_group_name})
        rest_api = self.chalice.get_resource(REST_API)
        self.rest_api_id: str = rest_api.ref
        self.url = f"https://{self.rest_api_id}.execute-api.{region}.{stack.url_suffix}/{API_GATEWAY_STAGE}/"

        # --- Stage hardening on chalice's AWS::Serverless::Api (SAM passes these to the AWS::ApiGateway::Stage).
        self.access_log_group = logs.LogGroup(
            self, "AccessLogs", retention=LOG_RETENTION, removal_policy=RemovalPolicy.DESTROY
        )
        # API Gateway creates its execution log group on first write, without retention; created here first.
        self.execution_log_group = logs.LogGroup(
            self,
            "ExecutionLogs",
            log_group_name=f"API-Gateway-Execution-Logs_{self.rest_api_id}/{API_GATEWAY_STAGE}",
            retention=LOG_RETENTION,
            removal_policy=RemovalPolicy.DESTROY,
        )
        rest_api.add_property_override("MethodSettings", METHOD_SETTINGS)
        rest_api.add_property_override(
            "AccessLogSetting",
            {"DestinationArn": self.access_log_group.log_group_arn, "Format": ACCESS_LOG_FORMAT},
        )
        rest_api.add_property_override("TracingEnabled", True)
        self.account: ApiGatewayAccount | None = None
        if manage_account_role:
            self.account = ApiGatewayAccount(self, "Account")
            # Stage logging settings are rejected until the account has a CloudWatch role.
            rest_api.add_resource_dependency(self.account.account)

        # --- Callers: every route uses AWS_IAM authorization, so a principal needs execute-api:Invoke on the stage.
        # Attach this policy to the users/roles allowed to use kaos (output `InvokePolicyArn`).
        self.invoke_arn = (
            f"arn:{partition}:execute-api:{region}:{account}:{self.rest_api_id}/{API_GATEWAY_STAGE}/*/*"
        )
        self.invoke_policy = iam.ManagedPolicy(
            self,
            "InvokePolicy",
            description="Call the kaos REST API (AWS_IAM authorization on every route).",
            statements=[iam.PolicyStatement(actions=["execute-api:Invoke"], resources=[self.invoke_arn])],
        )


class ApiGatewayAccount(Construct):
    """The region's API Gateway account setting: the role API Gateway writes stage logs with.

    This is one setting per account and region, shared by every REST API there: a stack that sets it replaces any
    role set before. Deploy with `-c apiGatewayAccount=false` where the account already manages it.
    """

    def __init__(self, scope: Construct, id_: str) -> None:
        super().__init__(scope, id_)
        stack = Stack.of(self)
        self.role = iam.Role(
            self,
            "CloudWatchRole",
            assumed_by=iam.ServicePrincipal("apigateway.amazonaws.com"),
            # Inline, instead of the AWS-managed AmazonAPIGatewayPushToCloudWatchLogs (Resource "*"): the same
            # actions on log groups of this account and region only (but DescribeLogGroups, which lists names).
            inline_policies={
                "PushToCloudWatchLogs": iam.PolicyDocument(
                    statements=[
                        iam.PolicyStatement(
                            actions=[
                                "logs:CreateLogGroup",
                                "logs:CreateLogStream",
                                "logs:DescribeLogStreams",
                                "logs:PutLogEvents",
                                "logs:GetLogEvents",
                                "logs:FilterLogEvents",
                            ],
                            resources=[self.log_groups_arn(stack)],
                        ),
                        # DescribeLogGroups takes no resource type: only Resource "*" applies to it.
                        iam.PolicyStatement(actions=["logs:DescribeLogGroups"], resources=["*"]),
                    ]
                )
            },
        )
        self.account = apigateway.CfnAccount(self, "Account", cloud_watch_role_arn=self.role.role_arn)

    @staticmethod
    def log_groups_arn(stack: Stack) -> str:
        return f"arn:{stack.partition}:logs:{stack.region}:{stack.account}:log-group:*"
