"""The Kaos stack: composes the constructs and owns the wiring between them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aws_cdk import CfnOutput, Environment, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from constructs import Construct

from cdk.api import Api
from cdk.batch import DEFAULT_BATCH_IMAGE, BatchJobs
from cdk.constants import REPO_ROOT, env_names
from cdk.grid import Grid
from cdk.nag import acknowledge_findings, acknowledge_grid_findings, acknowledge_remote_data_findings
from cdk.tenancy import WorkspaceIsolation
from cdk.storage import Storage
from cdk.table import ProvenanceTable
from cdk.nag import acknowledge_batch_findings
from cdk.training import Training
from cdk.triggers import Triggers
from cdk.nag import acknowledge_trigger_findings


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
        bucket, table = self.storage.data_bucket, self.table.table
        self.training = Training(self, "Training", bucket=bucket, table=table)
        # User code runs as its workspace's own role (cdk/tenancy.py): the training state machine may pass only
        # those roles, PrepareTraining names the job's, the API creates and deletes them.
        self.isolation = WorkspaceIsolation(self, "Isolation", bucket=bucket)
        self.isolation.grant_pass(self.training.state_machine.role, "sagemaker.amazonaws.com")
        # The stack's other buckets, which remote data manifests may not name either (the data bucket always).
        platform = {env_names.PLATFORM_BUCKETS: self.storage.access_log_bucket.bucket_name}
        for key, value in {**self.isolation.environment, **platform}.items():
            self.training.prepare.function.add_environment(key, value)
        # Batch (processing) jobs; context `batchImage` picks the job image (default: a public python image).
        self.batch = BatchJobs(self, "Batch", bucket=bucket, table=table,
                               image=str(self.node.try_get_context("batchImage") or DEFAULT_BATCH_IMAGE))
        self.grid = Grid(self, "Grid", bucket=bucket, table=table, training=self.training.state_machine,
                         training_image=training_image)
        # S3-triggered retraining: files under ws/<ws>/incoming/ -> one derived snapshot + one job per batch.
        self.triggers = Triggers(self, "Triggers", bucket=bucket, table=table,
                                 training=self.training.state_machine, training_image=training_image)
        # Remote data manifests (-m s3://...): the API pins objects (HeadObject) and PrepareTraining copies them.
        # Only buckets named in context `remoteDataBuckets` (comma-separated) are readable: no s3:::*/* grant.
        remote_buckets = [b for b in str(self.node.try_get_context("remoteDataBuckets") or "").split(",") if b]
        self.remote_data_arns = [f"arn:{self.partition}:s3:::{name}/*" for name in remote_buckets]
        self.api = Api(
            self,
            "Api",
            source_dir=REPO_ROOT / "app",
            work_dir=work_dir,
            bucket=bucket,
            table=table,
            state_machine=self.training.state_machine,
            batch_state_machine=self.batch.state_machine,
            batch_image=self.batch.image,
            grid_state_machine=self.grid.state_machine,
            training_image=training_image,
            manage_account_role=manage_api_gateway_account,
            # The API copies the stack's Batch job definition for each workspace (chalicelib/tenancy.py).
            extra_environment={**self.isolation.environment, **platform,
                               env_names.BATCH_JOB_DEFINITION: self.batch.job_definition.job_definition_arn},
        )
        self.isolation.grant_manage(self.api.role)
        execution_role = self.batch.container.execution_role
        assert execution_role is not None, "Fargate job definitions always have an execution role"
        self.isolation.grant_batch_definitions(self.api.role, self.batch.workspace_definitions_arn,
                                               execution_role.role_arn)

        if self.remote_data_arns:
            statement = iam.PolicyStatement(actions=["s3:GetObject", "s3:GetObjectVersion"],
                                            resources=self.remote_data_arns)
            for role in (self.api.role, self.training.prepare.role):
                role.add_to_principal_policy(statement)
        # OpenLineage run events (chalicelib/lineage_events.py), emitted by the training and batch tasks: on only with
        # the `openLineageUrl` context (`openLineageFile`: a file transport, for the embedded stack).
        lineage = {name: str(self.node.try_get_context(key)) for name, key in (
            (env_names.OPENLINEAGE_URL, "openLineageUrl"), (env_names.OPENLINEAGE_FILE, "openLineageFile"))
            if self.node.try_get_context(key)}
        for task in (self.training.prepare, self.training.record, self.batch.prepare, self.batch.record):
            for name, value in lineage.items():
                task.function.add_environment(name, value)
        CfnOutput(self, "ApiUrl", value=self.api.url)
        CfnOutput(self, "BucketName", value=bucket.bucket_name)
        CfnOutput(self, "TableName", value=table.table_name)
        CfnOutput(self, "TrainingStateMachineArn", value=self.training.state_machine.state_machine_arn)
        CfnOutput(self, "BatchStateMachineArn", value=self.batch.state_machine.state_machine_arn)
        CfnOutput(self, "InvokePolicyArn", value=self.api.invoke_policy.managed_policy_arn)

        acknowledge_findings(self)
        acknowledge_batch_findings(self)
        acknowledge_grid_findings(self)
        acknowledge_remote_data_findings(self)
        acknowledge_trigger_findings(self)
