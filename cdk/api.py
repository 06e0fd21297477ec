"""The HTTP API: the Chalice app in `app/` (routes) packaged by `chalice.cdk.Chalice` with a CDK-owned role."""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from aws_cdk import Fn, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from chalice.cdk import Chalice
from constructs import Construct

from cdk.bundling import LAMBDA_PYTHON_VERSION
from cdk.constants import (
    DEFAULT_TRAINING_INSTANCE_TYPE,
    DEFAULT_TRAINING_MAX_RUNTIME_SECONDS,
    SAGEMAKER_TRAINING_LOG_GROUP,
    env_names,
)
from cdk.grants import grant_bucket_read_write, grant_table_read_write, grant_workspace_deletion
from cdk.training import LOG_RETENTION

API_HANDLER = "APIHandler"  # logical id chalice gives the function behind the REST API
REST_API = "RestAPI"
API_GATEWAY_STAGE = "api"


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
    """REST API (regional) → one Lambda running `app.app`; `url` is the stage's invoke URL."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        source_dir: Path,
        work_dir: Path,
        bucket: s3.IBucket,
        table: dynamodb.ITable,
        state_machine: sfn.IStateMachine,
        training_image: str,
    ) -> None:
        super().__init__(scope, id_)
        stack = Stack.of(self)
        partition, region, account = stack.partition, stack.region, stack.account
        training_log_group_arn = (
            f"arn:{partition}:logs:{region}:{account}:log-group:{SAGEMAKER_TRAINING_LOG_GROUP}"
        )

        self.log_group = logs.LogGroup(self, "Logs", retention=LOG_RETENTION, removal_policy=RemovalPolicy.DESTROY)
        # manage_iam_role=False: chalice's generated policy would be broad; this role is least privilege.
        self.role = iam.Role(self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
        self.log_group.grant_write(self.role)
        grant_table_read_write(table, self.role)
        grant_bucket_read_write(bucket, self.role)
        grant_workspace_deletion(bucket, self.role)
        state_machine.grant_start_execution(self.role)
        # Executions of this one state machine: arn:...:execution:<state machine name>:<execution name>.
        state_machine_name = Fn.select(6, Fn.split(":", state_machine.state_machine_arn))
        self.executions_arn = f"arn:{partition}:states:{region}:{account}:execution:{state_machine_name}:*"
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["states:DescribeExecution", "states:StopExecution", "states:GetExecutionHistory"],
                resources=[self.executions_arn],
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:GetLogEvents", "logs:FilterLogEvents", "logs:DescribeLogStreams"],
                resources=[training_log_group_arn, f"{training_log_group_arn}:log-stream:*"],
            )
        )

        stage_config = {
            "api_gateway_stage": API_GATEWAY_STAGE,
            "api_gateway_endpoint_type": "REGIONAL",
            "manage_iam_role": False,
            "iam_role_arn": self.role.role_arn,
            "lambda_timeout": 30,
            "lambda_memory_size": 512,
            "environment_variables": {
                env_names.BUCKET: bucket.bucket_name,
                env_names.TABLE: table.table_name,
                env_names.TRAINING_STATE_MACHINE_ARN: state_machine.state_machine_arn,
                env_names.TRAINING_IMAGE: training_image,
                env_names.TRAINING_INSTANCE_TYPE: DEFAULT_TRAINING_INSTANCE_TYPE,
                env_names.TRAINING_MAX_RUNTIME_SECONDS: str(DEFAULT_TRAINING_MAX_RUNTIME_SECONDS),
                env_names.TRAINING_LOG_GROUP: SAGEMAKER_TRAINING_LOG_GROUP,
            },
        }
        with _chalice_packaging(work_dir, region):
            self.chalice = Chalice(self, "Chalice", source_dir=str(source_dir), stage_config=stage_config)

        handler = self.chalice.get_resource(API_HANDLER)
        # chalice picks the runtime of the interpreter running synth; pin it to the task Lambdas' runtime instead
        # (the packaged dependencies are pure Python).
        handler.add_property_override("Runtime", f"python{LAMBDA_PYTHON_VERSION}")
        handler.add_property_override("LoggingConfig", {"LogGroup": self.log_group.log_group_name})
        self.rest_api_id: str = self.chalice.get_resource(REST_API).ref
        self.url = f"https://{self.rest_api_id}.execute-api.{region}.{stack.url_suffix}/{API_GATEWAY_STAGE}/"
