"""S3-triggered incremental retraining (chalicelib/triggers.py): the EventBridge rule, the two Lambdas and the
retrain state machine.

S3 "Object Created" on the data bucket under `ws/` → rule → OnUpload (one idempotent pending row per file; the first
file of a burst opens a batch and starts `retrain-<ws>-<batch>`) → state machine: Wait WINDOW_SECONDS → ProcessBatch
(one derived data snapshot and one training job per batch) → Succeed; a failure is recorded on the batch
(RecordBatchFailure) → Fail. EventBridge is used because Chalice cannot package S3 notifications of an existing bucket;
the bucket's EventBridge notifications are on (cdk/storage.py).
"""
from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from chalicelib.triggers import MAX_WINDOW_SECONDS, WINDOW_SECONDS, BatchNotReady, BatchStillFilling
from cdk.grants import DataStores, grant_start, grant_table_read_write
from cdk.lambdas import TaskFunction
from cdk.recording import mark_failed
from cdk.constants import DEFAULT_TRAINING_MAX_RUNTIME_SECONDS
from cdk.states import ERROR_PATH, Backoff, catch_all, failure_step, from_input, lambda_task, standard_state_machine

# Only keys under a workspace's incoming/ match (EventBridge wildcard matching): with a plain `ws/` prefix every blob,
# pack, manifest and model kaos writes invoked OnUpload once, only to be dropped (a new 1,001-file bundle: 1,001
# invocations, on AWS and on the embedded stack alike). OnUpload still checks the key (`*` also matches `/`).
KEY_PATTERN = "ws/*/incoming/*"
# How long a batch may wait for the one ahead of it (BatchNotReady): as long as that one may take: its own window,
# the ProcessBatch timeout, and the training it waits for (up to the training max runtime). Polled every 2 minutes
# at most, so a day of waiting is ~720 retries (~3,600 history events, far below a Standard execution's 25,000).
PROCESS_TIMEOUT_SECONDS = 15 * 60
MAX_QUEUE_WAIT_SECONDS = MAX_WINDOW_SECONDS + PROCESS_TIMEOUT_SECONDS + DEFAULT_TRAINING_MAX_RUNTIME_SECONDS
NOT_READY_POLL_SECONDS = 120
NOT_READY_BACKOFF = Backoff(interval_seconds=5, rate=2, max_delay_seconds=NOT_READY_POLL_SECONDS,
                            max_attempts=-(-MAX_QUEUE_WAIT_SECONDS // NOT_READY_POLL_SECONDS) + 6)
# Every window until MAX_WINDOW_SECONDS have passed since the batch opened (then ProcessBatch closes it).
STILL_FILLING_BACKOFF = Backoff(interval_seconds=WINDOW_SECONDS, rate=1,
                                max_attempts=MAX_WINDOW_SECONDS // WINDOW_SECONDS + 2)


class Triggers(Construct):
    def __init__(self, scope: Construct, id_: str, *, data: DataStores, training: sfn.IStateMachine) -> None:
        super().__init__(scope, id_)
        # --- ProcessBatch: reads the incoming objects, writes blobs/manifests/rows, starts the training pipeline.
        # Hashes each incoming file by streaming it: up to a few GiB per batch.
        self.process = TaskFunction(self, "ProcessBatch", component="process_batch",
                                    timeout=Duration.seconds(PROCESS_TIMEOUT_SECONDS), memory_size=1024)
        data.grant_read_write(self.process.function)
        # Incoming objects are read at the version the event named (s3:GetObjectVersion), only under incoming/.
        self.incoming_objects_arn = data.bucket.arn_for_objects("ws/*/incoming/*")
        self.process.function.add_to_role_policy(iam.PolicyStatement(
            actions=["s3:GetObjectVersion"], resources=[self.incoming_objects_arn],
        ))
        # Before a batch closes it lists incoming/ for files whose event has not arrived (chalicelib.triggers._sweep).
        self.process.function.add_to_role_policy(iam.PolicyStatement(
            actions=["s3:ListBucketVersions"], resources=[data.bucket.bucket_arn],
            conditions={"StringLike": {"s3:prefix": KEY_PATTERN}},
        ))
        self.training_executions_arn = grant_start(training, self.process.function)

        # --- The retrain state machine: one execution per batch.
        wait = sfn.Wait(self, "Window", time=sfn.WaitTime.duration(Duration.seconds(WINDOW_SECONDS)))
        process = lambda_task(self, "Process", self.process.function, result_path="$.processed",
                              payload=from_input("workspace", "batch"))
        # The previous batch of the workspace is still processing: batches derive in order, however long that takes.
        NOT_READY_BACKOFF.retry(process, [BatchNotReady.__name__])
        # Files still joining (a slow or long burst): close only after a quiet window; ProcessBatch stops asking
        # after MAX_WINDOW_SECONDS, so this retry runs out only if that bound is wrong.
        STILL_FILLING_BACKOFF.retry(process, [BatchStillFilling.__name__], jitter=False)
        # A failure that cannot be recorded must not leave the batch OPEN/CLOSED, blocking the workspace's next
        # batches (cdk/recording.py).
        mark_batch_failed = mark_failed(
            self, "MarkBatchFailed", table=data.table, sort_key="PENDING#{}", id_path="$.batch",
            running=("OPEN", "CLOSED"), reason_attribute="reason", time_attributes=("ended_at",),
        )
        record_failure = failure_step(
            self, "RecordBatchFailure", self.process.function, failed="RetrainFailed", mark=mark_batch_failed,
            payload={**from_input("workspace", "batch"), "error": sfn.JsonPath.object_at(ERROR_PATH)},
        )
        catch_all(record_failure, process)
        definition = wait.next(process).next(sfn.Succeed(self, "Retrained"))
        self.state_machine = standard_state_machine(self, "RetrainStateMachine", definition)

        # --- OnUpload: the rule's target; writes pending rows and starts the batch's execution (by name).
        self.on_upload = TaskFunction(self, "OnUpload", component="on_upload", timeout=Duration.minutes(1),
                                      memory_size=256)
        grant_table_read_write(data.table, self.on_upload.function)
        self.retrain_executions_arn = grant_start(self.state_machine, self.on_upload.function)

        self.rule = events.Rule(
            self, "IncomingRule",
            description="kaos: S3 Object Created under ws/ of the data bucket -> OnUpload (auto-retrain)",
            event_pattern=events.EventPattern(
                source=["aws.s3"],
                detail_type=["Object Created"],
                detail={"bucket": {"name": [data.bucket.bucket_name]},
                        "object": {"key": events.Match.wildcard(KEY_PATTERN)}},
            ),
        )
        # EventBridge retries a failed asynchronous delivery; OnUpload raises only for AWS trouble (ignored events
        # return normally), and every write it makes is idempotent.
        self.rule.add_target(targets.LambdaFunction(
            self.on_upload.function, retry_attempts=8, max_event_age=Duration.hours(2),
        ))
