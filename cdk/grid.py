"""The grid state machine: a Distributed Map over the points file in S3, one child training execution per point.

Distributed Map keeps each point's history in its own child workflow, so a 10,000-point grid stays far from
the 25,000-event limit of one Standard execution; the points are read from S3 because 10,000 of them would
not fit the 256 KiB execution input."""
from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from cdk.grants import DataStores
from cdk.lambdas import TaskFunction
from cdk.recording import mark_failed
from cdk.states import Outcome, catch_all, from_input, lambda_task, outcome_steps, standard_state_machine

POINT_KEYS = ("workspace", "grid_id", "incarnation", "user")


class Grid(Construct):
    def __init__(self, scope: Construct, id_: str, *, data: DataStores, training: sfn.IStateMachine) -> None:
        super().__init__(scope, id_)
        # CreatePoint builds each point's job spec as the API does for one job, from the same training settings
        # (chalicelib.config.COMPONENTS; without them a point's job had an empty image).
        self.create_point = TaskFunction(self, "CreatePoint", component="create_point", timeout=Duration.minutes(1))
        self.record = TaskFunction(self, "RecordGrid", component="record_grid", timeout=Duration.minutes(1))
        data.grant_read_write(self.create_point.function, self.record.function)

        # --- One point: create (or find) its job; train it unless it is a cache hit.
        create = lambda_task(self, "CreatePointJob", self.create_point.function, result_path="$.job",
                             payload={**from_input(*POINT_KEYS), "point": sfn.JsonPath.object_at("$.point")})
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
        catch_all(done, train)
        point = create.next(
            sfn.Choice(self, "NewPoint?")
            .when(sfn.Condition.boolean_equals("$.job.run", True), train.next(done))
            .otherwise(done)
        )

        points = sfn.DistributedMap(
            self, "Points",
            item_reader=sfn.S3JsonItemReader(bucket=data.bucket, key=sfn.JsonPath.string_at("$.points_key")),
            item_selector={**from_input(*POINT_KEYS), "point": sfn.JsonPath.object_at("$$.Map.Item.Value")},
            # No ToleratedFailurePercentage: a point's training failure is caught inside its iteration (the
            # point's job records it), so only a failure to create points fails the map.
            max_concurrency_path="$.parallelism",
            result_path=sfn.JsonPath.DISCARD,
        )
        points.item_processor(point, mode=sfn.ProcessorMode.DISTRIBUTED,
                              execution_type=sfn.ProcessorType.STANDARD)

        # A failure that cannot be recorded must not leave the grid RUNNING either (cdk/recording.py).
        mark_grid_failed = mark_failed(
            self, "MarkGridFailed", table=data.table, sort_key="GRID#{}", id_path="$.grid_id", running=("RUNNING",),
            reason_attribute=None, time_attributes=("updated_at",), execution_attribute="execution_arn",
            versioned=True,
        )
        # The points record themselves; the grid's record step only ends it (an outcome that cannot be recorded ends
        # it FAILED).
        record_success, record_failure = outcome_steps(
            self, Outcome(self.record.function, ("workspace", "grid_id"), {}, execution=False),
            failed="GridFailed", mark=mark_grid_failed, ids=("RecordGridSuccess", "RecordGridFailure"), cause=False,
        )
        catch_all(record_failure, points)
        definition = points.next(record_success).next(sfn.Succeed(self, "GridDone"))
        self.state_machine = standard_state_machine(self, "GridStateMachine", definition)
