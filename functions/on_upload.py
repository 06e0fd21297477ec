"""S3-triggered retraining: `handler` is the EventBridge target of S3 "Object Created" events under ws/, and
`process_batch` is the retrain state machine's task (Wait WINDOW_SECONDS → ProcessBatch; its Catch → `error`).

The two are different functions with different settings (components "on_upload" and "on_upload.process_batch"),
and a module cannot tell at import which of its handlers the runtime will call, so each loads its own on its
first call (still once per process, before any work)."""
from __future__ import annotations

import logging
from typing import Any

from chalicelib.wiring import wiring

logging.getLogger("kaos").setLevel(logging.INFO)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {"results": wiring("on_upload").triggers.on_event(event)}


def process_batch(event: dict[str, Any], context: Any) -> dict[str, Any]:
    triggers = wiring("on_upload.process_batch").triggers
    if event.get("error") is not None:
        return triggers.fail(event["workspace"], event["batch"], event["error"])
    return triggers.process(event["workspace"], event["batch"])
