"""The training pipeline: SageMaker execution role, the two task Lambdas and the Standard state machine.

Input `{"workspace": str, "job_id": str}`; Prepare → Train (`sagemaker:createTrainingJob.sync`) → RecordSuccess, and
any failure → RecordFailure → TrainingFailed (if RecordFailure itself fails: MarkJobFailed, a direct DynamoDB update,
→ TrainingFailed). JSONPath throughout (moto's interpreter cannot run JSONata).
"""
from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from cdk.bundling import LAMBDA_PYTHON_VERSION, functions_code
from cdk.constants import SAGEMAKER_SYNC_RULE, SAGEMAKER_TRAINING_LOG_GROUP, env_names
from cdk.grants import grant_bucket_read_write, grant_log_read, grant_table_read_write
from cdk.recording import guard_record_failure, mark_failed

LOG_RETENTION = logs.RetentionDays.ONE_MONTH
LAMBDA_RUNTIME = lambda_.Runtime(f"python{LAMBDA_PYTHON_VERSION}", lambda_.RuntimeFamily.PYTHON)

# JSONPaths of the execution document.
PREPARED_PATH = "$.prepared"
TRAINING_REQUEST = "$.prepared.training"
TRAINED_PATH = "$.trained"
RECORDED_PATH = "$.recorded"
ERROR_PATH = "$.error"

LAMBDA_TRANSIENT_ERRORS = [
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
]
# Step Functions names service-integration errors `SageMaker.<ErrorCode>`; codes SageMaker does not model (throttling)
# arrive as the generic `SageMaker.AmazonSageMakerException`.
SAGEMAKER_TRANSIENT_ERRORS = ["SageMaker.ThrottlingException", "SageMaker.AmazonSageMakerException"]
SAGEMAKER_CAPACITY_ERRORS = ["SageMaker.ResourceLimitExceededException"]

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


class TaskFunction(Construct):
    """A task Lambda from the shared functions asset, with its own role and a retained log group."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        handler: str,
        code: lambda_.Code,
        environment: dict[str, str],
        timeout: Duration,
        memory_size: int = 512,
    ) -> None:
        super().__init__(scope, id_)
        self.log_group = logs.LogGroup(
            self, "Logs", retention=LOG_RETENTION, removal_policy=RemovalPolicy.DESTROY
        )
        # An explicit role instead of the default one: the default attaches AWSLambdaBasicExecutionRole
        # (logs on every group); this one may write to its own log group only.
        self.role = iam.Role(self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
        self.log_group.grant_write(self.role)
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=LAMBDA_RUNTIME,
            handler=handler,
            code=code,
            environment=environment,
            timeout=timeout,
            memory_size=memory_size,
            role=self.role,
            log_group=self.log_group,
        )


def _lambda_retry(task: sfn.TaskStateBase) -> None:
    # MaxAttempts counts retries: worst case 2+4+8+16+32+64 = 126 s of waiting (FULL jitter only shortens waits).
    task.add_retry(
        errors=LAMBDA_TRANSIENT_ERRORS,
        interval=Duration.seconds(2),
        backoff_rate=2,
        max_attempts=6,
        jitter_strategy=sfn.JitterType.FULL,
    )


class Training(Construct):
    """Everything one training run needs; `state_machine` is what the API starts (execution name = fingerprint)."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        bucket: s3.IBucket,
        table: dynamodb.ITable,
    ) -> None:
        super().__init__(scope, id_)
        stack = Stack.of(self)
        partition, region, account = stack.partition, stack.region, stack.account
        training_log_group_arn = (
            f"arn:{partition}:logs:{region}:{account}:log-group:{SAGEMAKER_TRAINING_LOG_GROUP}"
        )

        # --- Task Lambdas: one asset, two handlers.
        code = functions_code()
        self.prepare = TaskFunction(
            self,
            "PrepareTraining",
            handler="functions.prepare_training.handler",
            code=code,
            environment={
                env_names.BUCKET: bucket.bucket_name,
                env_names.TABLE: table.table_name,
            },
            timeout=Duration.minutes(5),
        )
        self.record = TaskFunction(
            self,
            "RecordOutcome",
            handler="functions.record_outcome.handler",
            code=code,
            environment={env_names.BUCKET: bucket.bucket_name, env_names.TABLE: table.table_name},
            timeout=Duration.minutes(2),
        )
        for fn in (self.prepare.function, self.record.function):
            grant_table_read_write(table, fn)
            grant_bucket_read_write(bucket, fn)
        grant_log_read(training_log_group_arn, self.record.function)

        # --- States.
        prepare = tasks.LambdaInvoke(
            self,
            "Prepare",
            lambda_function=self.prepare.function,
            # No payload: the whole state input ({"workspace", "job_id"}) is the event.
            payload_response_only=True,
            retry_on_service_exceptions=False,
            result_path=PREPARED_PATH,
        )
        _lambda_retry(prepare)

        train = sfn.CustomState(
            self,
            "Train",
            # CustomState, not tasks.SageMakerCreateTrainingJob: that construct fixes the channel list at synth
            # time, while kaos decides the channels (code, data, ...) per run in PrepareTraining.
            state_json={
                "Type": "Task",
                "Resource": f"arn:{partition}:states:::sagemaker:createTrainingJob.sync",
                "Parameters": {f"{f}.$": f"{TRAINING_REQUEST}.{f}" for f in TRAINING_REQUEST_FIELDS},
                "ResultSelector": {
                    "TrainingJobName.$": "$.TrainingJobName",
                    "TrainingJobStatus.$": "$.TrainingJobStatus",
                    "ModelArtifacts.$": "$.ModelArtifacts",
                },
                "ResultPath": TRAINED_PATH,
            },
        )
        # API throttling: worst case 5+10+20+40+80 = 155 s of waiting over 5 retries.
        train.add_retry(
            errors=SAGEMAKER_TRANSIENT_ERRORS,
            interval=Duration.seconds(5),
            backoff_rate=2,
            max_attempts=5,
            jitter_strategy=sfn.JitterType.FULL,
        )
        # Instance quota reached (other trainings running): wait for capacity, worst case
        # 60+120+240+480+960 = 1860 s = 31 min over 5 retries.
        train.add_retry(
            errors=SAGEMAKER_CAPACITY_ERRORS,
            interval=Duration.seconds(60),
            backoff_rate=2,
            max_attempts=5,
            jitter_strategy=sfn.JitterType.FULL,
        )

        record_success = tasks.LambdaInvoke(
            self,
            "RecordSuccess",
            lambda_function=self.record.function,
            payload=sfn.TaskInput.from_object(
                {
                    "workspace": sfn.JsonPath.string_at("$.workspace"),
                    "job_id": sfn.JsonPath.string_at("$.job_id"),
                    # Lets RecordOutcome ignore a late outcome from an execution that is no longer the job's
                    # current attempt (killed, then resumed).
                    "execution": sfn.JsonPath.execution_id,
                    "outcome": "Completed",
                    "training": sfn.JsonPath.object_at(TRAINED_PATH),
                }
            ),
            payload_response_only=True,
            retry_on_service_exceptions=False,
            result_path=RECORDED_PATH,
        )
        _lambda_retry(record_success)

        record_failure = tasks.LambdaInvoke(
            self,
            "RecordFailure",
            lambda_function=self.record.function,
            payload=sfn.TaskInput.from_object(
                {
                    "workspace": sfn.JsonPath.string_at("$.workspace"),
                    "job_id": sfn.JsonPath.string_at("$.job_id"),
                    # Lets RecordOutcome ignore a late outcome from an execution that is no longer the job's
                    # current attempt (killed, then resumed).
                    "execution": sfn.JsonPath.execution_id,
                    "outcome": "Failed",
                    "error": sfn.JsonPath.object_at(ERROR_PATH),
                }
            ),
            payload_response_only=True,
            retry_on_service_exceptions=False,
            result_path=RECORDED_PATH,
        )
        _lambda_retry(record_failure)
        failed = sfn.Fail(self, "TrainingFailed", error="TrainingFailed", cause_path=f"{ERROR_PATH}.Cause")
        record_failure.next(failed)
        # A failure that cannot be recorded must not leave the job TRAINING either (cdk/recording.py).
        mark_job_failed = mark_failed(
            self, "MarkJobFailed", table=table, sort_key="JOB#{}", id_path="$.job_id",
            running=("SUBMITTED", "TRAINING"), reason_attribute="failure_reason",
            time_attributes=("ended_at", "updated_at"), execution_attribute="execution_arn", versioned=True,
        )
        guard_record_failure(record_failure, mark_job_failed, failed)

        prepare.add_catch(record_failure, errors=["States.ALL"], result_path=ERROR_PATH)
        train.add_catch(record_failure, errors=["States.ALL"], result_path=ERROR_PATH)
        # A job whose outcome cannot be recorded must not stay TRAINING forever: it is recorded as failed,
        # with the recording error as its reason (the model object stays where SageMaker wrote it).
        record_success.add_catch(record_failure, errors=["States.ALL"], result_path=ERROR_PATH)
        definition = prepare.next(train).next(record_success).next(sfn.Succeed(self, "Trained"))

        self.log_group = logs.LogGroup(
            self, "StateMachineLogs", retention=LOG_RETENTION, removal_policy=RemovalPolicy.DESTROY
        )
        self.state_machine = sfn.StateMachine(
            self,
            "TrainingStateMachine",
            state_machine_type=sfn.StateMachineType.STANDARD,
            query_language=sfn.QueryLanguage.JSON_PATH,
            definition_body=sfn.DefinitionBody.from_chainable(definition),
            logs=sfn.LogOptions(destination=self.log_group, level=sfn.LogLevel.ALL, include_execution_data=True),
            tracing_enabled=True,
        )

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
        self.state_machine.add_to_role_policy(
            iam.PolicyStatement(
                actions=["events:PutTargets", "events:PutRule", "events:DescribeRule"],
                resources=[f"arn:{partition}:events:{region}:{account}:rule/{SAGEMAKER_SYNC_RULE}"],
            )
        )
