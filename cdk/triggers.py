"""S3-triggered incremental retraining (chalicelib/triggers.py): the EventBridge rule, the two Lambdas and the
retrain state machine.

S3 "Object Created" on the data bucket under `ws/` → rule → OnUpload (one idempotent pending row per file; the first
file of a burst opens a batch and starts `retrain-<ws>-<batch>`) → state machine: Wait WINDOW_SECONDS → ProcessBatch
(one derived data snapshot and one training job per batch) → Succeed; a failure is recorded on the batch
(RecordBatchFailure) → Fail. EventBridge is used because Chalice cannot package S3 notifications of an existing bucket;
the bucket's EventBridge notifications are on (cdk/storage.py).
"""
from __future__ import annotations

from aws_cdk import Duration, Fn, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from chalicelib.triggers import MAX_WINDOW_SECONDS, WINDOW_SECONDS, BatchStillFilling
from cdk.bundling import functions_code
from cdk.constants import (
    DEFAULT_TRAINING_INSTANCE_TYPE,
    DEFAULT_TRAINING_MAX_RUNTIME_SECONDS,
    SAGEMAKER_TRAINING_LOG_GROUP,
    env_names,
)
from cdk.grants import grant_bucket_read_write, grant_table_read_write
from cdk.recording import guard_record_failure, mark_failed
from cdk.training import LOG_RETENTION, TaskFunction, _lambda_retry

ERROR_PATH = "$.error"
# Every key under ws/ matches (S3 event patterns cannot anchor `incoming/` after a variable workspace name without
# wildcard matching); OnUpload drops the rest after a string check, with no AWS call.
KEY_PREFIX = "ws/"


class Triggers(Construct):
    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        bucket: s3.IBucket,
        table: dynamodb.ITable,
        training: sfn.IStateMachine,
        training_image: str,
    ) -> None:
        super().__init__(scope, id_)
        stack = Stack.of(self)
        code = functions_code()
        base_env = {env_names.BUCKET: bucket.bucket_name, env_names.TABLE: table.table_name}

        # --- ProcessBatch: reads the incoming objects, writes blobs/manifests/rows, starts the training pipeline.
        self.process = TaskFunction(
            self, "ProcessBatch", handler="functions.on_upload.process_batch", code=code,
            environment={
                **base_env,
                env_names.TRAINING_STATE_MACHINE_ARN: training.state_machine_arn,
                env_names.TRAINING_IMAGE: training_image,
                env_names.TRAINING_INSTANCE_TYPE: DEFAULT_TRAINING_INSTANCE_TYPE,
                env_names.TRAINING_MAX_RUNTIME_SECONDS: str(DEFAULT_TRAINING_MAX_RUNTIME_SECONDS),
                env_names.TRAINING_LOG_GROUP: SAGEMAKER_TRAINING_LOG_GROUP,
            },
            # Hashes each incoming file by streaming it: up to a few GiB per batch.
            timeout=Duration.minutes(15), memory_size=1024,
        )
        grant_table_read_write(table, self.process.function)
        grant_bucket_read_write(bucket, self.process.function)
        # Incoming objects are read at the version the event named (s3:GetObjectVersion), only under incoming/.
        self.incoming_objects_arn = bucket.arn_for_objects("ws/*/incoming/*")
        self.process.function.add_to_role_policy(iam.PolicyStatement(
            actions=["s3:GetObjectVersion"], resources=[self.incoming_objects_arn],
        ))
        training.grant_start_execution(self.process.function)
        training_name = Fn.select(6, Fn.split(":", training.state_machine_arn))
        self.training_executions_arn = (
            f"arn:{stack.partition}:states:{stack.region}:{stack.account}:execution:{training_name}:*"
        )
        # Executions.start describes an execution of the same name to tell a retry from a conflict.
        self.process.function.add_to_role_policy(iam.PolicyStatement(
            actions=["states:DescribeExecution"], resources=[self.training_executions_arn],
        ))

        # --- The retrain state machine: one execution per batch.
        wait = sfn.Wait(self, "Window", time=sfn.WaitTime.duration(Duration.seconds(WINDOW_SECONDS)))
        process = tasks.LambdaInvoke(
            self, "Process", lambda_function=self.process.function,
            payload=sfn.TaskInput.from_object({
                "workspace": sfn.JsonPath.string_at("$.workspace"),
                "batch": sfn.JsonPath.string_at("$.batch"),
            }),
            payload_response_only=True, retry_on_service_exceptions=False, result_path="$.processed",
        )
        _lambda_retry(process)
        # The previous batch of the workspace is still processing: batches derive in order. Worst case
        # 5+7.5+11.25+... ≈ 5 min of waiting over 8 retries.
        process.add_retry(errors=["BatchNotReady"], interval=Duration.seconds(5), backoff_rate=1.5, max_attempts=8)
        # Files still joining (a slow or long burst): close only after a quiet window; ProcessBatch stops asking
        # after MAX_WINDOW_SECONDS, so this retry runs out only if that bound is wrong.
        process.add_retry(errors=[BatchStillFilling.code], interval=Duration.seconds(WINDOW_SECONDS),
                          backoff_rate=1, max_attempts=MAX_WINDOW_SECONDS // WINDOW_SECONDS + 2)
        record_failure = tasks.LambdaInvoke(
            self, "RecordBatchFailure", lambda_function=self.process.function,
            payload=sfn.TaskInput.from_object({
                "workspace": sfn.JsonPath.string_at("$.workspace"),
                "batch": sfn.JsonPath.string_at("$.batch"),
                "error": sfn.JsonPath.object_at(ERROR_PATH),
            }),
            payload_response_only=True, retry_on_service_exceptions=False, result_path="$.recorded",
        )
        _lambda_retry(record_failure)
        failed = sfn.Fail(self, "RetrainFailed", error="RetrainFailed", cause_path=f"{ERROR_PATH}.Cause")
        record_failure.next(failed)
        # A failure that cannot be recorded must not leave the batch OPEN/CLOSED, blocking the workspace's next
        # batches (cdk/recording.py).
        mark_batch_failed = mark_failed(
            self, "MarkBatchFailed", table=table, sort_key="PENDING#{}", id_path="$.batch",
            running=("OPEN", "CLOSED"), reason_attribute="reason", time_attributes=("ended_at",),
        )
        guard_record_failure(record_failure, mark_batch_failed, failed)
        process.add_catch(record_failure, errors=["States.ALL"], result_path=ERROR_PATH)
        definition = wait.next(process).next(sfn.Succeed(self, "Retrained"))
        self.log_group = logs.LogGroup(self, "StateMachineLogs", retention=LOG_RETENTION,
                                       removal_policy=RemovalPolicy.DESTROY)
        self.state_machine = sfn.StateMachine(
            self, "RetrainStateMachine",
            state_machine_type=sfn.StateMachineType.STANDARD,
            query_language=sfn.QueryLanguage.JSON_PATH,
            definition_body=sfn.DefinitionBody.from_chainable(definition),
            logs=sfn.LogOptions(destination=self.log_group, level=sfn.LogLevel.ALL),
            tracing_enabled=True,
        )

        # --- OnUpload: the rule's target; writes pending rows and starts the batch's execution (by name).
        self.on_upload = TaskFunction(
            self, "OnUpload", handler="functions.on_upload.handler", code=code,
            environment={**base_env, env_names.RETRAIN_STATE_MACHINE_ARN: self.state_machine.state_machine_arn},
            timeout=Duration.minutes(1), memory_size=256,
        )
        grant_table_read_write(table, self.on_upload.function)
        self.state_machine.grant_start_execution(self.on_upload.function)
        retrain_name = Fn.select(6, Fn.split(":", self.state_machine.state_machine_arn))
        self.retrain_executions_arn = (
            f"arn:{stack.partition}:states:{stack.region}:{stack.account}:execution:{retrain_name}:*"
        )
        self.on_upload.function.add_to_role_policy(iam.PolicyStatement(
            actions=["states:DescribeExecution"], resources=[self.retrain_executions_arn],
        ))

        self.rule = events.Rule(
            self, "IncomingRule",
            description="kaos: S3 Object Created under ws/ of the data bucket -> OnUpload (auto-retrain)",
            event_pattern=events.EventPattern(
                source=["aws.s3"],
                detail_type=["Object Created"],
                detail={"bucket": {"name": [bucket.bucket_name]}, "object": {"key": [{"prefix": KEY_PREFIX}]}},
            ),
        )
        # EventBridge retries a failed asynchronous delivery; OnUpload raises only for AWS trouble (ignored events
        # return normally), and every write it makes is idempotent.
        self.rule.add_target(targets.LambdaFunction(
            self.on_upload.function, retry_attempts=8, max_event_age=Duration.hours(2),
        ))
