"""Settings read from the environment at call time; CDK is the only writer of these variables."""
from __future__ import annotations

import os
from dataclasses import dataclass

BUCKET = "KAOS_BUCKET"
TABLE = "KAOS_TABLE"
TRAINING_STATE_MACHINE_ARN = "KAOS_TRAINING_STATE_MACHINE_ARN"
SAGEMAKER_ROLE_ARN = "KAOS_SAGEMAKER_ROLE_ARN"
TRAINING_IMAGE = "KAOS_TRAINING_IMAGE"
TRAINING_INSTANCE_TYPE = "KAOS_TRAINING_INSTANCE_TYPE"
TRAINING_MAX_RUNTIME_SECONDS = "KAOS_TRAINING_MAX_RUNTIME_SECONDS"
TRAINING_LOG_GROUP = "KAOS_TRAINING_LOG_GROUP"


@dataclass(frozen=True)
class Settings:
    bucket: str
    table: str
    training_state_machine_arn: str
    sagemaker_role_arn: str
    training_image: str
    training_instance_type: str
    training_max_runtime_seconds: int
    training_log_group: str


def settings() -> Settings:
    env = os.environ
    return Settings(
        bucket=env.get(BUCKET, ""),
        table=env.get(TABLE, ""),
        training_state_machine_arn=env.get(TRAINING_STATE_MACHINE_ARN, ""),
        sagemaker_role_arn=env.get(SAGEMAKER_ROLE_ARN, ""),
        training_image=env.get(TRAINING_IMAGE, ""),
        training_instance_type=env.get(TRAINING_INSTANCE_TYPE, "ml.m5.large"),
        training_max_runtime_seconds=int(env.get(TRAINING_MAX_RUNTIME_SECONDS, "86400")),
        # SageMaker writes training logs to this fixed group; it is not configurable on AWS.
        training_log_group=env.get(TRAINING_LOG_GROUP, "/aws/sagemaker/TrainingJobs"),
    )
