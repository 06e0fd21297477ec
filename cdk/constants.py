"""Names shared by the constructs; env var names come from chalicelib.config so they cannot drift."""
from __future__ import annotations

from pathlib import Path

from chalicelib import config as env_names

REPO_ROOT = Path(__file__).resolve().parent.parent
STACK_ID = "Kaos"

# SageMaker writes training logs to this fixed group; it is not configurable on AWS.
SAGEMAKER_TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"
# The managed rule Step Functions creates to learn that a `.sync` SageMaker training job finished.
SAGEMAKER_SYNC_RULE = "StepFunctionsGetEventsForSageMakerTrainingJobsRule"

DEFAULT_STAGE = "dev"
DEFAULT_REGION = "us-east-1"
DEFAULT_TRAINING_INSTANCE_TYPE = "ml.m5.large"
DEFAULT_TRAINING_MAX_RUNTIME_SECONDS = 86400

# Account that publishes the SageMaker scikit-learn framework image, per region
# (https://docs.aws.amazon.com/sagemaker/latest/dg-ecr-paths/sagemaker-algo-docker-registry-paths.html).
# Other regions: pass `-c trainingImage=...`.
_SKLEARN_IMAGE_ACCOUNTS = {
    "us-east-1": "683313688378",
    "us-east-2": "257758044811",
    "us-west-2": "246618743249",
    "eu-west-1": "141502667606",
    "eu-central-1": "492215442770",
}
_SKLEARN_IMAGE_TAG = "sagemaker-scikit-learn:1.2-1-cpu-py3"


def default_training_image(region: str) -> str:
    """The scikit-learn framework image for `region`; raises for a region missing from the table."""
    try:
        account = _SKLEARN_IMAGE_ACCOUNTS[region]
    except KeyError:
        raise ValueError(
            f"no default SageMaker scikit-learn image known for {region}; pass -c trainingImage=<uri>"
        ) from None
    return f"{account}.dkr.ecr.{region}.amazonaws.com/{_SKLEARN_IMAGE_TAG}"


__all__ = ["env_names"]
