"""Step Functions task: a deployment's SageMaker requests, and whether each step still has to run."""
from __future__ import annotations

from typing import Any

from chalicelib.errors import throttling_is_transient
from chalicelib.wiring import wiring

WIRING = wiring("prepare_deployment")  # at import: a missing setting fails the cold start, naming it


@throttling_is_transient
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return WIRING.endpoints.prepare(event["workspace"], event["endpoint"], event["deployment"],
                                    WIRING.settings.endpoint_poll_seconds)
