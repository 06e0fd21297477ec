"""State-machine fragments the four pipelines (training, batch, grid, retrain) are built from.

- `lambda_task`: a task Lambda invocation whose response is the state's result; Lambda's own transient errors and
  the application's (`chalicelib.errors.Transient`: throttling, lost conditional-check races) are retried before any
  Catch, so one throttled write in Record does not fail a finished training.
- `sync_task`: a `.sync` service integration whose request a Prepare task built at run time.
- `outcome_steps`: RecordSuccess and RecordFailure, the two calls of a pipeline's record Lambda, and the failure path
  after RecordFailure (the Fail state, and the direct DynamoDB update if recording fails: cdk/recording.py).
- `standard_state_machine`: a Standard, JSONPath (moto's interpreter cannot run JSONata), logged, traced machine.

Error names are the exception classes' names (chalicelib/errors.py): a Lambda reports the concrete class only, so a
family is matched by listing its classes (`chalicelib.errors.names`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from chalicelib.errors import Transient, names
from cdk.lambdas import LOG_RETENTION
from cdk.recording import guard_record_failure, mark_failed

# JSONPaths of the execution document every pipeline shares.
ERROR_PATH = "$.error"
RECORDED_PATH = "$.recorded"
# Catch-all: only where every failure has one meaning (record it, or give up recording it) and after the retries.
ALL_ERRORS = ["States.ALL"]

LAMBDA_TRANSIENT_ERRORS = [
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
]
TRANSIENT_ERRORS = [*LAMBDA_TRANSIENT_ERRORS, *names(Transient)]


@dataclass(frozen=True)
class Backoff:
    """An exponential retry schedule; `max_attempts` counts retries, FULL jitter only shortens the waits."""

    interval_seconds: int
    rate: float
    max_attempts: int
    max_delay_seconds: int | None = None  # no wait grows beyond this

    @property
    def worst_case_seconds(self) -> float:
        """The longest the retries can wait in total (FULL jitter waits a random part of each delay)."""
        delays = (self.interval_seconds * self.rate**i for i in range(self.max_attempts))
        return sum(delay if self.max_delay_seconds is None else min(delay, self.max_delay_seconds) for delay in delays)

    def retry(self, state: sfn.TaskStateBase | sfn.CustomState, errors: Sequence[str], *, jitter: bool = True) -> None:
        state.add_retry(
            errors=list(errors), interval=Duration.seconds(self.interval_seconds), backoff_rate=self.rate,
            max_attempts=self.max_attempts, jitter_strategy=sfn.JitterType.FULL if jitter else sfn.JitterType.NONE,
            max_delay=None if self.max_delay_seconds is None else Duration.seconds(self.max_delay_seconds),
        )


# Worst case 2+4+8+16+32+64 = 126 s of waiting over 6 retries.
TRANSIENT_BACKOFF = Backoff(interval_seconds=2, rate=2, max_attempts=6)
# AWS API throttling of a `.sync` integration: worst case 5+10+20+40+80 = 155 s over 5 retries.
API_THROTTLING_BACKOFF = Backoff(interval_seconds=5, rate=2, max_attempts=5)


def from_input(*keys: str) -> dict[str, Any]:
    """Payload fields copied from the state input under the same names."""
    return {key: sfn.JsonPath.string_at(f"$.{key}") for key in keys}


def lambda_task(
    scope: Construct, id_: str, function: lambda_.IFunction, *, result_path: str,
    payload: Mapping[str, Any] | None = None,
) -> tasks.LambdaInvoke:
    """Invoke `function` with `payload` (default: the whole state input); its response lands at `result_path`."""
    task = tasks.LambdaInvoke(
        scope, id_, lambda_function=function,
        payload=None if payload is None else sfn.TaskInput.from_object(dict(payload)),
        payload_response_only=True, retry_on_service_exceptions=False, result_path=result_path,
    )
    TRANSIENT_BACKOFF.retry(task, TRANSIENT_ERRORS)
    return task


def sync_task(
    scope: Construct, id_: str, *, resource: str, request_path: str, request_fields: Sequence[str],
    result_fields: Sequence[str], result_path: str,
) -> sfn.CustomState:
    """A `.sync` integration (`resource`) whose request fields a Prepare task returned at `request_path`.

    CustomState, not the typed constructs (SageMakerCreateTrainingJob, BatchSubmitJob): those fix the channels and
    the environment override names at synth time, while Prepare decides them per run. It grants nothing either: the
    integration's permissions are written out by the caller."""
    return sfn.CustomState(scope, id_, state_json={
        "Type": "Task",
        "Resource": resource,
        "Parameters": {f"{f}.$": f"{request_path}.{f}" for f in request_fields},
        "ResultSelector": {f"{f}.$": f"$.{f}" for f in result_fields},
        "ResultPath": result_path,
    })


def catch_all(target: sfn.IChainable, *states: sfn.TaskStateBase | sfn.CustomState | sfn.DistributedMap) -> None:
    """Every failure of `states` (after their retries) goes to `target`, with the error at ERROR_PATH."""
    for state in states:
        state.add_catch(target, errors=ALL_ERRORS, result_path=ERROR_PATH)


@dataclass(frozen=True)
class Outcome:
    """The record steps of a pipeline: the record Lambda, the fields naming the run, and what success carries."""

    function: lambda_.IFunction
    keys: tuple[str, ...]  # e.g. ("workspace", "job_id"), copied from the state input
    success: Mapping[str, Any]  # e.g. {"training": <the .sync result>}
    # The execution ARN lets Record ignore a late outcome of an execution that is no longer the job's current attempt
    # (killed, then resumed); grids have one execution each and do not send it.
    execution: bool = True

    def payload(self, outcome: str, detail: Mapping[str, Any]) -> dict[str, Any]:
        execution = {"execution": sfn.JsonPath.execution_id} if self.execution else {}
        return {**from_input(*self.keys), **execution, "outcome": outcome, **detail}


def outcome_steps(
    scope: Construct, outcome: Outcome, *, failed: str, mark: tasks.DynamoUpdateItem, ids: tuple[str, str] = (
        "RecordSuccess", "RecordFailure"), cause: bool = True,
) -> tuple[tasks.LambdaInvoke, tasks.LambdaInvoke]:
    """RecordSuccess and RecordFailure (→ a Fail state named `failed`); RecordSuccess failing is recorded as the run's
    failure, and RecordFailure failing runs `mark` (the direct update of cdk/recording.py) before the Fail state."""
    success_id, failure_id = ids
    record_success = lambda_task(scope, success_id, outcome.function, result_path=RECORDED_PATH,
                                 payload=outcome.payload("Completed", outcome.success))
    record_failure = failure_step(scope, failure_id, outcome.function, failed=failed, mark=mark, cause=cause,
                                  payload=outcome.payload("Failed", {"error": sfn.JsonPath.object_at(ERROR_PATH)}))
    # An outcome that cannot be recorded (no files, a bug) must not leave the run in its running status.
    catch_all(record_failure, record_success)
    return record_success, record_failure


def job_outcome_steps(
    scope: Construct, function: lambda_.IFunction, *, table: dynamodb.ITable, running: tuple[str, ...],
    success: Mapping[str, Any], failed: str,
) -> tuple[tasks.LambdaInvoke, tasks.LambdaInvoke]:
    """`outcome_steps` of a job pipeline (training, batch): the job row `JOB#<$.job_id>` is marked FAILED directly
    while it is still `running` in this execution, if recording fails."""
    mark = mark_failed(
        scope, "MarkJobFailed", table=table, sort_key="JOB#{}", id_path="$.job_id", running=running,
        reason_attribute="failure_reason", time_attributes=("ended_at", "updated_at"),
        execution_attribute="execution_arn", versioned=True,
    )
    return outcome_steps(scope, Outcome(function, ("workspace", "job_id"), success), failed=failed, mark=mark)


def failure_step(
    scope: Construct, id_: str, function: lambda_.IFunction, *, failed: str, mark: tasks.DynamoUpdateItem,
    payload: Mapping[str, Any], cause: bool = True,
) -> tasks.LambdaInvoke:
    """Record a failure with `function`, then fail the execution with error `failed` (and the failure's cause)."""
    record = lambda_task(scope, id_, function, result_path=RECORDED_PATH, payload=payload)
    fail = sfn.Fail(scope, failed, error=failed, cause_path=f"{ERROR_PATH}.Cause" if cause else None)
    record.next(fail)
    guard_record_failure(record, mark, fail)
    return record


def standard_state_machine(
    scope: Construct, id_: str, definition: sfn.IChainable, *, include_execution_data: bool = False
) -> sfn.StateMachine:
    """A Standard state machine logging every event (with the execution data where it holds no secret) to a log
    group of its own, traced with X-Ray."""
    log_group = logs.LogGroup(scope, "StateMachineLogs", retention=LOG_RETENTION, removal_policy=RemovalPolicy.DESTROY)
    return sfn.StateMachine(
        scope, id_,
        state_machine_type=sfn.StateMachineType.STANDARD,
        query_language=sfn.QueryLanguage.JSON_PATH,
        definition_body=sfn.DefinitionBody.from_chainable(definition),
        logs=sfn.LogOptions(destination=log_group, level=sfn.LogLevel.ALL,
                            include_execution_data=include_execution_data),
        tracing_enabled=True,
    )
