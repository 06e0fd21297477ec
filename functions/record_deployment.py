"""Step Functions task: record a deployment's outcome (the live model and its lineage) or its failure."""
from __future__ import annotations

from typing import Any

from chalicelib.errors import throttling_is_transient
from chalicelib.wiring import wiring

WIRING = wiring("record_deployment")  # at import: a missing setting fails the cold start, naming it


@throttling_is_transient
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    detail = event.get("described") if event["outcome"] == "Completed" else event.get("error")
    return WIRING.endpoints.record(event["workspace"], event["endpoint"], event["deployment"], event["outcome"],
                                   detail or {})
