"""Step Functions task: materialize a job's inputs and return its CreateTrainingJob request."""
from __future__ import annotations

from typing import Any

from chalicelib.training import Training


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return Training().prepare(event["workspace"], event["job_id"])
