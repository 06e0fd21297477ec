"""Step Functions task: record a batch job's output snapshot (and provenance) or its failure."""
from __future__ import annotations

from typing import Any

from chalicelib.errors import throttling_is_transient
from chalicelib.wiring import wiring

WIRING = wiring("record_batch")  # at import: a missing setting fails the cold start, naming it


@throttling_is_transient
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    detail = event.get("batch") if event["outcome"] == "Completed" else event.get("error")
    job = WIRING.batch_pipeline.record(event["workspace"], event["job_id"], event.get("execution", ""),
                                       event["outcome"], detail or {})
    # `dropped`: the job's workspace was killed (or re-created) before its outcome arrived, so nothing was written.
    return {"job_id": job["id"], "status": job["status"], "output": job["model"], "dropped": bool(job.get("dropped"))}
