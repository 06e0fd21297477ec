"""The Kaos stack: composes the constructs and owns the wiring between them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aws_cdk import CfnOutput, Environment, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from constructs import Construct

from cdk.api import Api
from cdk.batch import DEFAULT_BATCH_IMAGE, BatchJobs
from cdk.constants import (
    ENDPOINT_POLL_SECONDS,
    DEFAULT_BATCH_MAX_RUNTIME_SECONDS,
    DEFAULT_TRAINING_INSTANCE_TYPE,
    DEFAULT_TRAINING_MAX_RUNTIME_SECONDS,
    REPO_ROOT,
    SAGEMAKER_TRAINING_LOG_GROUP,
    env_names,
)
from cdk.grants import DataStores
from cdk.grid import Grid
from cdk.serving import Serving
from cdk.lambdas import environment_of, set_environments
from cdk.storage import Storage
from cdk.table import ProvenanceTable
from cdk.tenancy import WorkspaceIsolation
from cdk.training import Training
from cdk.triggers import Triggers


@dataclass(frozen=True)
class StageSettings:
    """What differs between stages; set by the app entry from context, never branched on inside constructs."""

    name: str
    removal_policy: RemovalPolicy
    deletion_protection: bool

    @classmethod
    def for_stage(cls, name: str) -> StageSettings:
        prod = name == "prod"
        return cls(
            name=name,
            removal_policy=RemovalPolicy.RETAIN if prod else RemovalPolicy.DESTROY,
            deletion_protection=prod,
        )


class KaosStack(Stack):
    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        env: Environment,
        stage: StageSettings,
        training_image: str,
        work_dir: Path,
        manage_api_gateway_account: bool = True,
    ) -> None:
        super().__init__(scope, id_, env=env, stack_name=id_, description=f"kaos serverless ML training ({stage.name})")
        self.storage = Storage(self, "Storage", removal_policy=stage.removal_policy)
        self.table = ProvenanceTable(
            self, "Provenance", removal_policy=stage.removal_policy, deletion_protection=stage.deletion_protection
        )
        data = DataStores(self.storage.data_bucket, self.table.table)
        self.training = Training(self, "Training", data=data)
        # User code runs as its workspace's own role (cdk/tenancy.py): the training state machine may pass only
        # those roles, PrepareTraining names the job's, the API creates and deletes them.
        self.isolation = WorkspaceIsolation(self, "Isolation", bucket=data.bucket)
        self.isolation.grant_pass(self.training.state_machine.role, "sagemaker.amazonaws.com")
        # Batch (processing) jobs; context `batchImage` picks the job image (default: a public python image).
        self.batch = BatchJobs(self, "Batch", data=data,
                               image=str(self.node.try_get_context("batchImage") or DEFAULT_BATCH_IMAGE))
        self.grid = Grid(self, "Grid", data=data, training=self.training.state_machine)
        # S3-triggered retraining: files under ws/<ws>/incoming/ -> one derived snapshot + one job per batch.
        self.triggers = Triggers(self, "Triggers", data=data, training=self.training.state_machine)
        # Serving: the deployment pipeline, whose models run as their workspace's role (passed to SageMaker only).
        self.serving = Serving(self, "Serving", data=data)
        self.isolation.grant_pass(self.serving.state_machine.role, "sagemaker.amazonaws.com")
        # Remote data manifests (-m s3://...): the API pins objects (HeadObject) and PrepareTraining copies them.
        # Only buckets named in context `remoteDataBuckets` (comma-separated) are readable: no s3:::*/* grant.
        remote_buckets = [b for b in str(self.node.try_get_context("remoteDataBuckets") or "").split(",") if b]
        self.remote_data_arns = [f"arn:{self.partition}:s3:::{name}/*" for name in remote_buckets]
        # Every function's environment is its component's subset of these (cdk/lambdas.py).
        values = self._environment_values(training_image)
        set_environments(self, values)
        self.api = Api(
            self,
            "Api",
            source_dir=REPO_ROOT / "app",
            work_dir=work_dir,
            data=data,
            state_machine=self.training.state_machine,
            batch_state_machine=self.batch.state_machine,
            grid_state_machine=self.grid.state_machine,
            environment=environment_of("api", values),
            manage_account_role=manage_api_gateway_account,
        )
        self.isolation.grant_manage(self.api.role)
        self.serving.grant_api(self.api.role)
        execution_role = self.batch.container.execution_role
        assert execution_role is not None, "Fargate job definitions always have an execution role"
        self.isolation.grant_batch_definitions(self.api.role, self.batch.workspace_definitions_arn,
                                               execution_role.role_arn)

        if self.remote_data_arns:
            statement = iam.PolicyStatement(actions=["s3:GetObject", "s3:GetObjectVersion"],
                                            resources=self.remote_data_arns)
            # The API pins the objects; the Prepare tasks copy them into a job's inputs.
            for role in (self.api.role, self.training.prepare.role, self.batch.prepare.role):
                role.add_to_principal_policy(statement)
        CfnOutput(self, "ApiUrl", value=self.api.url)
        CfnOutput(self, "BucketName", value=data.bucket.bucket_name)
        CfnOutput(self, "TableName", value=data.table.table_name)
        CfnOutput(self, "TrainingStateMachineArn", value=self.training.state_machine.state_machine_arn)
        CfnOutput(self, "BatchStateMachineArn", value=self.batch.state_machine.state_machine_arn)
        CfnOutput(self, "InvokePolicyArn", value=self.api.invoke_policy.managed_policy_arn)


    def _environment_values(self, training_image: str) -> dict[str, str]:
        """The value of every variable of chalicelib.config in this stack."""
        context = self.node.try_get_context
        return {
            env_names.BUCKET: self.storage.data_bucket.bucket_name,
            env_names.TABLE: self.table.table.table_name,
            # The stack's other buckets, which remote data manifests may not name either (the data bucket always).
            env_names.PLATFORM_BUCKETS: self.storage.access_log_bucket.bucket_name,
            env_names.TRAINING_STATE_MACHINE_ARN: self.training.state_machine.state_machine_arn,
            env_names.GRID_STATE_MACHINE_ARN: self.grid.state_machine.state_machine_arn,
            env_names.BATCH_STATE_MACHINE_ARN: self.batch.state_machine.state_machine_arn,
            env_names.RETRAIN_STATE_MACHINE_ARN: self.triggers.state_machine.state_machine_arn,
            env_names.DEPLOYMENT_STATE_MACHINE_ARN: self.serving.state_machine.state_machine_arn,
            env_names.ENDPOINT_POLL_SECONDS: str(ENDPOINT_POLL_SECONDS),
            env_names.TRAINING_IMAGE: training_image,
            env_names.TRAINING_INSTANCE_TYPE: DEFAULT_TRAINING_INSTANCE_TYPE,
            env_names.TRAINING_MAX_RUNTIME_SECONDS: str(DEFAULT_TRAINING_MAX_RUNTIME_SECONDS),
            env_names.TRAINING_LOG_GROUP: SAGEMAKER_TRAINING_LOG_GROUP,
            env_names.TRAINING_LOG_GROUP_ARN: self.isolation.log_group_arn,
            env_names.BATCH_JOB_QUEUE: self.batch.job_queue.job_queue_arn,
            # The API copies the stack's Batch job definition for each workspace (chalicelib/tenancy.py).
            env_names.BATCH_JOB_DEFINITION: self.batch.job_definition.job_definition_arn,
            env_names.BATCH_IMAGE: self.batch.image,
            env_names.BATCH_LOG_GROUP: self.batch.log_group.log_group_name,
            env_names.BATCH_MAX_RUNTIME_SECONDS: str(DEFAULT_BATCH_MAX_RUNTIME_SECONDS),
            env_names.WORKSPACE_ROLE_PREFIX: self.isolation.role_prefix_arn,
            env_names.WORKSPACE_ROLE_BOUNDARY: self.isolation.boundary.managed_policy_arn,
            # OpenLineage run events (chalicelib/lineage_events.py), emitted by the training and batch tasks: on only
            # with the `openLineageUrl` context (`openLineageFile`: a file transport, for the embedded stack).
            env_names.OPENLINEAGE_URL: str(context("openLineageUrl") or ""),
            env_names.OPENLINEAGE_FILE: str(context("openLineageFile") or ""),
        }
