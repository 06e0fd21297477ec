"""Application transients (chalicelib.errors.Transient) are retried by the state machines before any Catch: a
throttled write or a lost conditional-check race in a task Lambda no longer fails a finished training (issue 11:
"one DynamoDB throttle in Record fails a finished training"). On the embedded stack, whose Step Functions
interpreter runs the synthesized definitions."""
from __future__ import annotations

from pathlib import Path

from chalicelib.errors import ConcurrentUpdate, Throttled

from .conftest import Stack, inject, tiny_code
from .test_faults import deploy


def test_transient_errors_in_task_lambdas_are_retried_not_recorded_as_failures(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", "transient-retry")
    # The training has run when RecordOutcome is throttled; PrepareTraining loses a race before it starts.
    inject(stack, {"lambda": "RecordOutcome", "error": Throttled.__name__, "times": 1})
    inject(stack, {"lambda": "PrepareTraining", "error": ConcurrentUpdate.__name__, "times": 1})
    job = deploy(stack, tiny_code(tmp_path), "--wait", params={"run": "transient"}, tmp=tmp_path)
    assert job["status"] == "COMPLETED", job
    history = stack.aws("stepfunctions").get_execution_history(executionArn=job["execution"], maxResults=1000)
    failed = [e["lambdaFunctionFailedEventDetails"]["error"] for e in history["events"]
              if e["type"] == "LambdaFunctionFailed"]
    assert sorted(failed) == sorted([Throttled.__name__, ConcurrentUpdate.__name__])
