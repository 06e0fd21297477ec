"""S3-triggered retraining: `handler` is the EventBridge target of S3 "Object Created" events under ws/, and
`process_batch` is the retrain state machine's task (Wait WINDOW_SECONDS → ProcessBatch; its Catch → `error`)."""
from __future__ import annotations

import logging
from typing import Any

from chalicelib.triggers import Triggers

logging.getLogger("kaos").setLevel(logging.INFO)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {"results": Triggers().on_event(event)}


def process_batch(event: dict[str, Any], context: Any) -> dict[str, Any]:
    triggers = Triggers()
    if event.get("error") is not None:
        return triggers.fail(event["workspace"], event["batch"], event["error"])
    return triggers.process(event["workspace"], event["batch"])
