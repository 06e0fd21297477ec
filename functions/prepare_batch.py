"""Step Functions task: materialize a batch job's inputs and return the pieces of its SubmitJob request."""
from __future__ import annotations

from typing import Any

from chalicelib.errors import throttling_is_transient
from chalicelib.wiring import wiring

WIRING = wiring("prepare_batch")  # at import: a missing setting fails the cold start, naming it


@throttling_is_transient
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return WIRING.batch_pipeline.prepare(event["workspace"], event["job_id"])
