"""The last resort of a pipeline whose failure could not be recorded.

Each state machine ends a failed run with a record step (a task Lambda that marks the job, grid or retrain batch
FAILED) and then a Fail state. When that Lambda still fails after its retries (a bug, throttling that outlasts them,
a timeout), nothing else would ever move the row out of its running status. So the record step's Catch goes to a
direct `dynamodb:updateItem` task that sets the status to FAILED, with the reason and the time, and then to the Fail
state. It goes to the Fail state whatever that update does.

The update is conditional, so it never overwrites an outcome:
- it applies only while the row is still in one of its running statuses;
- where the row names its current execution (`execution_arn`), it applies only if that is this execution, because an
  execution that was killed and then resumed is no longer the job's attempt;
- it increments a `version` attribute where the row has one (pynamodb's optimistic lock), so a writer holding the
  old version cannot overwrite it.

Keys follow chalicelib/tables.py (a pk of `WS#<workspace>`, an sk of `<KIND>#<id>`). Only the fields the state
machine knows are set: the job's `history` list (a JSON string written by pynamodb) is left as it is.
"""
from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

# Where the record step's own error goes (the failure being recorded stays at `$.error`), and the fallback's.
RECORD_ERROR_PATH = "$.recordError"
MARK_ERROR_PATH = "$.markError"
FAILED = "FAILED"
# Step Functions names DynamoDB errors `DynamoDB.<ErrorCode>`; throttling and server errors are worth a retry.
DYNAMODB_TRANSIENT_ERRORS = [
    "DynamoDB.ProvisionedThroughputExceededException",
    "DynamoDB.ThrottlingException",
    "DynamoDB.RequestLimitExceeded",
    "DynamoDB.InternalServerErrorException",
    "DynamoDB.AmazonDynamoDBException",
]


def mark_failed(
    scope: Construct,
    id_: str,
    *,
    table: dynamodb.ITable,
    sort_key: str,
    id_path: str,
    running: Sequence[str],
    reason_attribute: str | None,
    time_attributes: Sequence[str],
    execution_attribute: str | None = None,
    versioned: bool = False,
) -> tasks.DynamoUpdateItem:
    """An updateItem of the row `WS#<$.workspace>` / `sort_key.format(<id_path>)`: status FAILED, if still `running`.

    `sort_key` is a States.Format template with one `{}` (e.g. "JOB#{}"). `reason_attribute` gets the failure that
    was being recorded and the record step's error; `time_attributes` get the time this state was entered.
    """
    names = {"#status": "status"}
    values: dict[str, tasks.DynamoAttributeValue] = {":failed": tasks.DynamoAttributeValue.from_string(FAILED)}
    sets = ["#status = :failed"]
    if reason_attribute:
        names["#reason"] = reason_attribute
        # Error names only: a Catch always records `Error`, and a missing path would fail this state at run time.
        values[":reason"] = tasks.DynamoAttributeValue.from_string(sfn.JsonPath.format(
            "{}; recording it failed with {}, so the state machine marked it failed",
            sfn.JsonPath.string_at("$.error.Error"), sfn.JsonPath.string_at(f"{RECORD_ERROR_PATH}.Error"),
        ))
        sets.append("#reason = :reason")
    if time_attributes:
        values[":at"] = tasks.DynamoAttributeValue.from_string(sfn.JsonPath.string_at("$$.State.EnteredTime"))
        for i, attribute in enumerate(time_attributes):
            names[f"#t{i}"] = attribute
            sets.append(f"#t{i} = :at")
    if versioned:
        names["#version"] = "version"
        values[":zero"] = tasks.DynamoAttributeValue.from_number(0)
        values[":one"] = tasks.DynamoAttributeValue.from_number(1)
        sets.append("#version = if_not_exists(#version, :zero) + :one")
    pending = []
    for i, status in enumerate(running):
        values[f":running{i}"] = tasks.DynamoAttributeValue.from_string(status)
        pending.append(f":running{i}")
    condition = f"#status IN ({', '.join(pending)})"
    if execution_attribute:
        names["#execution"] = execution_attribute
        values[":execution"] = tasks.DynamoAttributeValue.from_string(sfn.JsonPath.execution_id)
        condition += " AND #execution = :execution"
    task = tasks.DynamoUpdateItem(
        scope,
        id_,
        table=table,
        key={
            "pk": tasks.DynamoAttributeValue.from_string(
                sfn.JsonPath.format("WS#{}", sfn.JsonPath.string_at("$.workspace"))
            ),
            "sk": tasks.DynamoAttributeValue.from_string(
                sfn.JsonPath.format(sort_key, sfn.JsonPath.string_at(id_path))
            ),
        },
        update_expression="SET " + ", ".join(sets),
        condition_expression=condition,
        expression_attribute_names=names,
        expression_attribute_values=values,
        result_path=sfn.JsonPath.DISCARD,
    )
    # Worst case 2+4+8+16+32 = 62 s of waiting over 5 retries.
    task.add_retry(errors=DYNAMODB_TRANSIENT_ERRORS, interval=Duration.seconds(2), backoff_rate=2, max_attempts=5,
                   jitter_strategy=sfn.JitterType.FULL)
    return task


def guard_record_failure(record: sfn.TaskStateBase, fallback: tasks.DynamoUpdateItem, failed: sfn.Fail) -> None:
    """`record` (which goes on to `failed`) failing after its retries runs `fallback`, then `failed` in any case."""
    record.add_catch(fallback, errors=["States.ALL"], result_path=RECORD_ERROR_PATH)
    fallback.add_catch(failed, errors=["States.ALL"], result_path=MARK_ERROR_PATH)
    fallback.next(failed)
