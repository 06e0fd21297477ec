"""Names shared by the constructs; env var names come from chalicelib.config so they cannot drift."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

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
DEFAULT_BATCH_MAX_RUNTIME_SECONDS = 86400

# The default training image: the SageMaker scikit-learn framework image, resolved at synth time from the image URI
# catalogue the SageMaker Python SDK ships (sagemaker-core's image_uri_config/*.json). Only the catalogue's data is
# read, never the SDK's code: it is a build-time input and is never imported by, or packaged into, a Lambda.
SKLEARN_FRAMEWORK_VERSION = "1.2-1"
SKLEARN_PY_VERSION = "py3"


def _sdk_image_catalogue(framework: str) -> dict[str, Any]:
    spec = importlib.util.find_spec("sagemaker")  # locates the package without executing it
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = next((Path(p) / "core" / "image_uri_config" / f"{framework}.json" for p in locations), None)
    if path is None or not path.is_file():
        raise ValueError("the SageMaker SDK's image catalogue is missing: `make setup` installs sagemaker-core "
                         "(data only), or pass -c trainingImage=<uri>")
    catalogue: dict[str, Any] = json.loads(path.read_text())
    return catalogue


def default_training_image(region: str) -> str:
    """The scikit-learn framework training image for `region`, from the SDK's catalogue."""
    entry = _sdk_image_catalogue("sklearn")["training"]["versions"][SKLEARN_FRAMEWORK_VERSION]
    account = entry["registries"].get(region)
    if account is None:
        raise ValueError(f"the SageMaker SDK knows no scikit-learn image in {region}; pass -c trainingImage=<uri>")
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return (f"{account}.dkr.ecr.{region}.{domain}/{entry['repository']}:"
            f"{SKLEARN_FRAMEWORK_VERSION}-cpu-{SKLEARN_PY_VERSION}")


__all__ = ["env_names"]
