"""Names shared by the constructs; env var names come from chalicelib.config so they cannot drift."""
from __future__ import annotations

from pathlib import Path

from chalicelib import config as env_names
from chalicelib import environments

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
DEFAULT_BATCH_MAX_RUNTIME_SECONDS = 86400
# The deployment state machine's DescribeEndpoint interval: a serverless endpoint takes minutes on AWS and seconds
# offline, where a longer wait would be most of a deploy's time; each poll is two cheap state transitions.
ENDPOINT_POLL_SECONDS = 2

def default_training_image(region: str) -> str:
    """The default training image for `region`: kaos's image catalogue (chalicelib/environments.json, whose URIs come
    from the SageMaker SDK's image_uri_config data) and its default rule (chalicelib/environments.py)."""
    try:
        return environments.lookup(environments.DEFAULT_TRAINING_FRAMEWORK).image_uri(region)
    except environments.UnknownFramework as error:
        raise ValueError(f"{error}; pass -c trainingImage=<uri>") from error


__all__ = ["env_names"]
