"""The training pipeline: SageMaker execution role, the two task Lambdas and the Standard state machine.

Input `{"workspace": str, "job_id": str}`; Prepare → Train (`sagemaker:createTrainingJob.sync`) → RecordSuccess, and
any failure → RecordFailure → TrainingFailed (if RecordFailure itself fails: MarkJobFailed, a direct DynamoDB update,
→ TrainingFailed). JSONPath throughout (moto's interpreter cannot run JSONata).
"""
from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from cdk.constants import SAGEMAKER_SYNC_RULE
from cdk.grants import (
    DataStores,
    grant_log_read,
    grant_sync_rule,
    training_log_group_arn,
)
from cdk.lambdas import TaskFunction
from cdk.states import (
    API_THROTTLING_BACKOFF,
    Backoff,
    catch_all,
    job_outcome_steps,
    lambda_task,
    standard_state_machine,
    sync_task,
)

# JSONPaths of the execution document.
PREPARED_PATH = "$.prepared"
TRAINING_REQUEST = "$.prepared.training"
TRAINED_PATH = "$.trained"

# Step Functions names service-integration errors `SageMaker.<ErrorCode>`; codes SageMaker does not model (throttling)
# arrive as the generic `SageMaker.AmazonSageMakerException`.
SAGEMAKER_TRANSIENT_ERRORS = ["SageMaker.ThrottlingException", "SageMaker.AmazonSageMakerException"]
SAGEMAKER_CAPACITY_ERRORS = ["SageMaker.ResourceLimitExceededException"]
# Instance quota reached (other trainings running): wait for capacity, worst case 60+120+240+480+960 = 1860 s = 31 min.
CAPACITY_BACKOFF = Backoff(interval_seconds=60, rate=2, max_attempts=5)

# The CreateTrainingJob request fields PrepareTraining returns (PascalCase, as the API takes them).
TRAINING_REQUEST_FIELDS = (
    "TrainingJobName",
    "AlgorithmSpecification",
    "RoleArn",
    "HyperParameters",
    "InputDataConfig",
    "OutputDataConfig",
    "ResourceConfig",
    "StoppingCondition",
)


class Training(Construct):
    """Everything one training run needs; `state_machine` is what the API starts (execution name = fingerprint)."""

    def __init__(self, scope: Construct, id_: str, *, data: DataStores) -> None:
        super().__init__(scope, id_)
        stack = Stack.of(self)
        partition, region, account = stack.partition, stack.region, stack.account

        # --- Task Lambdas (their environments: cdk/lambdas.py).
        self.prepare = TaskFunction(self, "PrepareTraining", component="prepare_training", timeout=Duration.minutes(5))
        self.record = TaskFunction(self, "RecordOutcome", component="record_outcome", timeout=Duration.minutes(2))
        data.grant_read_write(self.prepare.function, self.record.function)
        grant_log_read(training_log_group_arn(self), self.record.function)

        # --- States. Prepare's input ({"workspace", "job_id"}) is its event.
        prepare = lambda_task(self, "Prepare", self.prepare.function, result_path=PREPARED_PATH)
        train = sync_task(
            self, "Train", resource=f"arn:{partition}:states:::sagemaker:createTrainingJob.sync",
            request_path=TRAINING_REQUEST, request_fields=TRAINING_REQUEST_FIELDS,
            # The billed and trained seconds SageMaker reports price the job (chalicelib/cost.py); the image and the
            # status transitions say what environment it ran in (chalicelib/environments.py environment_ran).
            result_fields=("TrainingJobName", "TrainingJobStatus", "ModelArtifacts", "BillableTimeInSeconds",
                           "TrainingTimeInSeconds", "AlgorithmSpecification", "SecondaryStatusTransitions"),
            result_path=TRAINED_PATH,
        )
        API_THROTTLING_BACKOFF.retry(train, SAGEMAKER_TRANSIENT_ERRORS)
        CAPACITY_BACKOFF.retry(train, SAGEMAKER_CAPACITY_ERRORS)

        # A job whose outcome cannot be recorded is recorded as failed, with the recording error as its reason (the
        # model object stays where SageMaker wrote it); one whose failure cannot be recorded is marked FAILED.
        record_success, record_failure = job_outcome_steps(
            self, self.record.function, table=data.table, running=("SUBMITTED", "TRAINING"),
            success={"training": sfn.JsonPath.object_at(TRAINED_PATH)}, failed="TrainingFailed",
        )
        catch_all(record_failure, prepare, train)
        definition = prepare.next(train).next(record_success).next(sfn.Succeed(self, "Trained"))
        self.state_machine = standard_state_machine(self, "TrainingStateMachine", definition,
                                                    include_execution_data=True)
        # CustomState grants nothing: the `.sync` integration's permissions, written out.
        self.state_machine.add_to_role_policy(
            iam.PolicyStatement(
                actions=[
                    "sagemaker:CreateTrainingJob",
                    "sagemaker:DescribeTrainingJob",
                    "sagemaker:StopTrainingJob",
                    "sagemaker:AddTags",
                ],
                # Wildcard on the name only: job names are fingerprints computed at run time.
                resources=[f"arn:{partition}:sagemaker:{region}:{account}:training-job/*"],
            )
        )
        grant_sync_rule(self.state_machine, SAGEMAKER_SYNC_RULE)
