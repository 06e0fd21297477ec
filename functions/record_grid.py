"""Step Functions task: record the end of a grid (its points record themselves)."""
from __future__ import annotations

from typing import Any

from chalicelib.errors import throttling_is_transient
from chalicelib.wiring import wiring

WIRING = wiring("record_grid")  # at import: a missing setting fails the cold start, naming it


@throttling_is_transient
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return WIRING.grids.finish(event["workspace"], event["grid_id"], event["outcome"])
