"""The grid state machine: a Distributed Map over the points file in S3, one child training execution per point.

Distributed Map keeps each point's history in its own child workflow, so a 10,000-point grid stays far from
the 25,000-event limit of one Standard execution; the points are read from S3 because 10,000 of them would
not fit the 256 KiB execution input."""
from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from cdk.bundling import functions_code
from cdk.constants import DEFAULT_TRAINING_INSTANCE_TYPE, DEFAULT_TRAINING_MAX_RUNTIME_SECONDS, env_names
from cdk.grants import grant_bucket_read_write, grant_table_read_write
from cdk.recording import guard_record_failure, mark_failed
from cdk.training import LOG_RETENTION, TaskFunction, _lambda_retry

ERROR_PATH = "$.error"


class Grid(Construct):
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
        code = functions_code()
        # CreatePoint builds each point's job spec as the API does for one job: the same training settings
        # (without them a point's job had an empty image, which the per-function environments offline exposed).
        environment = {env_names.BUCKET: bucket.bucket_name, env_names.TABLE: table.table_name,
                       env_names.TRAINING_STATE_MACHINE_ARN: training.state_machine_arn,
                       env_names.TRAINING_IMAGE: training_image,
                       env_names.TRAINING_INSTANCE_TYPE: DEFAULT_TRAINING_INSTANCE_TYPE,
                       env_names.TRAINING_MAX_RUNTIME_SECONDS: str(DEFAULT_TRAINING_MAX_RUNTIME_SECONDS)}
        self.create_point = TaskFunction(self, "CreatePoint", handler="functions.create_point.handler", code=code,
                                         environment=environment, timeout=Duration.minutes(1))
        self.record = TaskFunction(self, "RecordGrid", handler="functions.record_grid.handler", code=code,
                                   environment=environment, timeout=Duration.minutes(1))
        for fn in (self.create_point.function, self.record.function):
            grant_table_read_write(table, fn)
            grant_bucket_read_write(bucket, fn)

        # --- One point: create (or find) its job; train it unless it is a cache hit.
        create = tasks.LambdaInvoke(
            self, "CreatePointJob", lambda_function=self.create_point.function,
            payload=sfn.TaskInput.from_object({
                "workspace": sfn.JsonPath.string_at("$.workspace"),
                "grid_id": sfn.JsonPath.string_at("$.grid_id"),
                "incarnation": sfn.JsonPath.string_at("$.incarnation"),
                "user": sfn.JsonPath.string_at("$.user"),
                "point": sfn.JsonPath.object_at("$.point"),
            }),
            payload_response_only=True, retry_on_service_exceptions=False, result_path="$.job",
        )
        _lambda_retry(create)
        train = tasks.StepFunctionsStartExecution(
            self, "TrainPoint", state_machine=training,
            integration_pattern=sfn.IntegrationPattern.RUN_JOB, associate_with_parent=True,
            name=sfn.JsonPath.string_at("$.job.job_id"),
            input=sfn.TaskInput.from_object({
                "workspace": sfn.JsonPath.string_at("$.workspace"),
                "job_id": sfn.JsonPath.string_at("$.job.job_id"),
            }),
            result_path=sfn.JsonPath.DISCARD,
        )
        # A point's failure is recorded on its own job; the grid goes on with the other points.
        done = sfn.Pass(self, "PointDone", result=sfn.Result.from_object({}))
        train.add_catch(done, errors=["States.ALL"], result_path=ERROR_PATH)
        point = create.next(
            sfn.Choice(self, "NewPoint?")
            .when(sfn.Condition.boolean_equals("$.job.run", True), train.next(done))
            .otherwise(done)
        )

        points = sfn.DistributedMap(
            self, "Points",
            item_reader=sfn.S3JsonItemReader(bucket=bucket, key=sfn.JsonPath.string_at("$.points_key")),
            item_selector={
                "workspace": sfn.JsonPath.string_at("$.workspace"),
                "grid_id": sfn.JsonPath.string_at("$.grid_id"),
                "incarnation": sfn.JsonPath.string_at("$.incarnation"),
                "user": sfn.JsonPath.string_at("$.user"),
                "point": sfn.JsonPath.object_at("$$.Map.Item.Value"),
            },
            # No ToleratedFailurePercentage: a point's training failure is caught inside its iteration (the
            # point's job records it), so only a failure to create points fails the map.
            max_concurrency_path="$.parallelism",
            result_path=sfn.JsonPath.DISCARD,
        )
        points.item_processor(point, mode=sfn.ProcessorMode.DISTRIBUTED,
                              execution_type=sfn.ProcessorType.STANDARD)

        def record(id_: str, outcome: str) -> tasks.LambdaInvoke:
            task = tasks.LambdaInvoke(
                self, id_, lambda_function=self.record.function,
                payload=sfn.TaskInput.from_object({
                    "workspace": sfn.JsonPath.string_at("$.workspace"),
                    "grid_id": sfn.JsonPath.string_at("$.grid_id"),
                    "outcome": outcome,
                }),
                payload_response_only=True, retry_on_service_exceptions=False, result_path="$.recorded",
            )
            _lambda_retry(task)
            return task

        record_failure = record("RecordGridFailure", "Failed")
        failed = sfn.Fail(self, "GridFailed", error="GridFailed")
        record_failure.next(failed)
        # A failure that cannot be recorded must not leave the grid RUNNING either (cdk/recording.py).
        mark_grid_failed = mark_failed(
            self, "MarkGridFailed", table=table, sort_key="GRID#{}", id_path="$.grid_id", running=("RUNNING",),
            reason_attribute=None, time_attributes=("updated_at",), execution_attribute="execution_arn",
            versioned=True,
        )
        guard_record_failure(record_failure, mark_grid_failed, failed)
        points.add_catch(record_failure, errors=["States.ALL"], result_path=ERROR_PATH)
        record_success = record("RecordGridSuccess", "Completed")
        # Nor an outcome that cannot be recorded: the grid is recorded as failed instead.
        record_success.add_catch(record_failure, errors=["States.ALL"], result_path=ERROR_PATH)
        definition = points.next(record_success).next(sfn.Succeed(self, "GridDone"))

        self.log_group = logs.LogGroup(self, "Logs", retention=LOG_RETENTION, removal_policy=RemovalPolicy.DESTROY)
        self.state_machine = sfn.StateMachine(
            self, "GridStateMachine",
            state_machine_type=sfn.StateMachineType.STANDARD,
            query_language=sfn.QueryLanguage.JSON_PATH,
            definition_body=sfn.DefinitionBody.from_chainable(definition),
            logs=sfn.LogOptions(destination=self.log_group, level=sfn.LogLevel.ALL),
            tracing_enabled=True,
        )
