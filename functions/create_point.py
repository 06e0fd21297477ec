"""Distributed Map iteration task: create (or find) the job of one grid point."""
from __future__ import annotations

from typing import Any

from chalicelib.grids import Grids


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return Grids().create_point(event)
