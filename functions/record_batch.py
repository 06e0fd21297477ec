"""Step Functions task: record a batch job's output snapshot (and provenance) or its failure."""
from __future__ import annotations

from typing import Any

from chalicelib.batch import Batch


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    detail = event.get("batch") if event["outcome"] == "Completed" else event.get("error")
    job = Batch().record(event["workspace"], event["job_id"], event.get("execution", ""), event["outcome"],
                         detail or {})
    return {"job_id": job["id"], "status": job["status"], "output": job["model"]}
