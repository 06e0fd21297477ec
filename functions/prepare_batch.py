"""Step Functions task: materialize a batch job's inputs and return the pieces of its SubmitJob request."""
from __future__ import annotations

from typing import Any

from chalicelib.batch import Batch


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return Batch().prepare(event["workspace"], event["job_id"])
