"""Step Functions task: record the end of a grid (its points record themselves)."""
from __future__ import annotations

from typing import Any

from chalicelib.grids import Grids


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return Grids().finish(event["workspace"], event["grid_id"], event["outcome"])
