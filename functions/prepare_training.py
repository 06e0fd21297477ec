"""Step Functions task: materialize a job's inputs and return its CreateTrainingJob request."""
from __future__ import annotations

from typing import Any

from chalicelib.errors import throttling_is_transient
from chalicelib.wiring import wiring

WIRING = wiring("prepare_training")  # at import: a missing setting fails the cold start, naming it


@throttling_is_transient
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return WIRING.pipeline.prepare(event["workspace"], event["job_id"])
