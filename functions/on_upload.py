"""S3-triggered retraining: the EventBridge target of S3 "Object Created" events under ws/ (the retrain state
machine's task is functions/process_batch.py)."""
from __future__ import annotations

import logging
from typing import Any

from chalicelib.errors import throttling_is_transient
from chalicelib.wiring import wiring

logging.getLogger("kaos").setLevel(logging.INFO)
WIRING = wiring("on_upload")  # at import: a missing setting fails the cold start, naming it


@throttling_is_transient
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {"results": WIRING.triggers.on_event(event)}
