"""Step Functions task: materialize a job's inputs and return its CreateTrainingJob request."""
from __future__ import annotations

from typing import Any


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    raise NotImplementedError("filled in by the training service")
