"""Settings read from the environment at call time; CDK is the only writer of these variables."""
from __future__ import annotations

import os
from dataclasses import dataclass

BUCKET = "KAOS_BUCKET"
TABLE = "KAOS_TABLE"
TRAINING_STATE_MACHINE_ARN = "KAOS_TRAINING_STATE_MACHINE_ARN"
GRID_STATE_MACHINE_ARN = "KAOS_GRID_STATE_MACHINE_ARN"
SAGEMAKER_ROLE_ARN = "KAOS_SAGEMAKER_ROLE_ARN"
TRAINING_IMAGE = "KAOS_TRAINING_IMAGE"
TRAINING_INSTANCE_TYPE = "KAOS_TRAINING_INSTANCE_TYPE"
TRAINING_MAX_RUNTIME_SECONDS = "KAOS_TRAINING_MAX_RUNTIME_SECONDS"
TRAINING_LOG_GROUP = "KAOS_TRAINING_LOG_GROUP"
# Batch (processing) jobs: the API starts the state machine; Prepare names the queue and definition.
BATCH_STATE_MACHINE_ARN = "KAOS_BATCH_STATE_MACHINE_ARN"
BATCH_JOB_QUEUE = "KAOS_BATCH_JOB_QUEUE"
BATCH_JOB_DEFINITION = "KAOS_BATCH_JOB_DEFINITION"
BATCH_IMAGE = "KAOS_BATCH_IMAGE"
BATCH_LOG_GROUP = "KAOS_BATCH_LOG_GROUP"
BATCH_MAX_RUNTIME_SECONDS = "KAOS_BATCH_MAX_RUNTIME_SECONDS"
# OpenLineage run events (chalicelib/lineage_events.py): HTTP endpoint base URL and/or a local file; unset = off.
OPENLINEAGE_URL = "KAOS_OPENLINEAGE_URL"
OPENLINEAGE_FILE = "KAOS_OPENLINEAGE_FILE"
# S3-triggered retraining (chalicelib/triggers.py): OnUpload starts the retrain state machine per batch.
RETRAIN_STATE_MACHINE_ARN = "KAOS_RETRAIN_STATE_MACHINE_ARN"
# Buckets of the stack besides the data bucket (comma-separated, e.g. the access-log bucket): remote data manifests
# may not name them (chalicelib/snapshots.py). The data bucket is always one of the platform's buckets.
PLATFORM_BUCKETS = "KAOS_PLATFORM_BUCKETS"
# Per-workspace execution roles (chalicelib/tenancy.py): their ARN prefix (path included) and the boundary.
WORKSPACE_ROLE_PREFIX = "KAOS_WORKSPACE_ROLE_PREFIX"
WORKSPACE_ROLE_BOUNDARY = "KAOS_WORKSPACE_ROLE_BOUNDARY"
TRAINING_LOG_GROUP_ARN = "KAOS_TRAINING_LOG_GROUP_ARN"


@dataclass(frozen=True)
class Settings:
    bucket: str
    table: str
    training_state_machine_arn: str
    grid_state_machine_arn: str
    sagemaker_role_arn: str
    training_image: str
    training_instance_type: str
    training_max_runtime_seconds: int
    training_log_group: str
    batch_state_machine_arn: str = ""
    batch_job_queue: str = ""
    batch_job_definition: str = ""
    batch_image: str = ""
    batch_log_group: str = ""
    batch_max_runtime_seconds: int = 86400
    other_buckets: tuple[str, ...] = ()
    workspace_role_prefix: str = ""
    workspace_role_boundary: str = ""
    training_log_group_arn: str = ""

    @property
    def platform_buckets(self) -> frozenset[str]:
        """Every bucket the stack owns: data kaos holds is referenced by snapshot or model, never by URL."""
        return frozenset(b for b in (self.bucket, *self.other_buckets) if b)


def settings() -> Settings:
    env = os.environ
    return Settings(
        bucket=env.get(BUCKET, ""),
        table=env.get(TABLE, ""),
        training_state_machine_arn=env.get(TRAINING_STATE_MACHINE_ARN, ""),
        grid_state_machine_arn=env.get(GRID_STATE_MACHINE_ARN, ""),
        sagemaker_role_arn=env.get(SAGEMAKER_ROLE_ARN, ""),
        training_image=env.get(TRAINING_IMAGE, ""),
        training_instance_type=env.get(TRAINING_INSTANCE_TYPE, "ml.m5.large"),
        training_max_runtime_seconds=int(env.get(TRAINING_MAX_RUNTIME_SECONDS, "86400")),
        # SageMaker writes training logs to this fixed group; it is not configurable on AWS.
        training_log_group=env.get(TRAINING_LOG_GROUP, "/aws/sagemaker/TrainingJobs"),
        batch_state_machine_arn=env.get(BATCH_STATE_MACHINE_ARN, ""),
        batch_job_queue=env.get(BATCH_JOB_QUEUE, ""),
        batch_job_definition=env.get(BATCH_JOB_DEFINITION, ""),
        batch_image=env.get(BATCH_IMAGE, ""),
        batch_log_group=env.get(BATCH_LOG_GROUP, "/aws/batch/job"),
        batch_max_runtime_seconds=int(env.get(BATCH_MAX_RUNTIME_SECONDS, "86400")),
        other_buckets=tuple(b.strip() for b in env.get(PLATFORM_BUCKETS, "").split(",") if b.strip()),
        workspace_role_prefix=env.get(WORKSPACE_ROLE_PREFIX, ""),
        workspace_role_boundary=env.get(WORKSPACE_ROLE_BOUNDARY, ""),
        training_log_group_arn=env.get(TRAINING_LOG_GROUP_ARN, ""),
    )
