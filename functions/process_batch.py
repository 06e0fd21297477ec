"""Step Functions task of the retrain state machine (Wait WINDOW_SECONDS → ProcessBatch; its Catch → `error`):
retrain a closed batch of uploads, or record why it could not be."""
from __future__ import annotations

import logging
from typing import Any

from chalicelib.errors import throttling_is_transient
from chalicelib.wiring import wiring

logging.getLogger("kaos").setLevel(logging.INFO)
WIRING = wiring("process_batch")  # at import: a missing setting fails the cold start, naming it


@throttling_is_transient
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    triggers = WIRING.triggers
    if event.get("error") is not None:
        return triggers.fail(event["workspace"], event["batch"], event["error"])
    return triggers.process(event["workspace"], event["batch"])
