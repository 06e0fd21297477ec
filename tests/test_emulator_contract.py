"""Contract tests: one per moto integration that kaos.local.patches changes.

If a moto upgrade breaks a patch, the test for that integration fails here, by name.
"""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from typing import Any

import pytest

from kaos.local.emulator import Emulator, LambdaContext

ROLE = "arn:aws:iam::123456789012:role/kaos-test"
BUCKET = "kaos-contract"


def run_state_machine(
    emulator: Emulator, definition: dict[str, Any], payload: dict[str, Any] | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    sfn = emulator.client("stepfunctions")
    name = f"sm-{time.monotonic_ns()}"
    arn = sfn.create_state_machine(
        name=name, definition=json.dumps(definition), roleArn=ROLE
    )["stateMachineArn"]
    execution = sfn.start_execution(
        stateMachineArn=arn, name=f"ex-{time.monotonic_ns()}", input=json.dumps(payload or {})
    )["executionArn"]
    deadline = time.monotonic() + timeout
    while True:
        described = sfn.describe_execution(executionArn=execution)
        if described["status"] != "RUNNING":
            described["history"] = sfn.get_execution_history(executionArn=execution)["events"]
            return described
        if time.monotonic() > deadline:
            raise AssertionError(f"execution still running after {timeout}s")
        time.sleep(0.1)


def task(resource: str, parameters: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"StartAt": "T", "States": {"T": {
        "Type": "Task", "Resource": resource, "Parameters": parameters, "End": True, **extra,
    }}}


# ---------------------------------------------------------------------------------------------
# (a) Lambda
# ---------------------------------------------------------------------------------------------


class ModelNotReady(Exception):
    pass


def test_lambda_invoke_task_reaches_registered_handler(emulator: Emulator) -> None:
    seen: list[tuple[Any, str, int]] = []

    def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        seen.append((event, context.function_name, context.get_remaining_time_in_millis()))
        return {"doubled": event["n"] * 2}

    emulator.register_lambda("double", handler)
    result = run_state_machine(emulator, task(
        "arn:aws:states:::lambda:invoke",
        {"FunctionName": "arn:aws:lambda:us-east-1:123456789012:function:double", "Payload.$": "$"},
        ResultSelector={"value.$": "$.Payload.doubled"},
    ), {"n": 21})
    assert result["status"] == "SUCCEEDED"
    assert json.loads(result["output"]) == {"value": 42}
    assert seen[0][0] == {"n": 21} and seen[0][1] == "double" and seen[0][2] > 0


def test_a_stopped_execution_is_aborted_when_the_stop_answers(emulator: Emulator) -> None:
    """On AWS DescribeExecution says ABORTED as soon as StopExecution answers; moto's own stop only signals the
    execution's thread, which reports it once its state returns (here, never while the handler blocks)."""
    from moto.stepfunctions.parser.backend.execution import Execution

    from kaos.local.patches import PATCHES

    entered, release = threading.Event(), threading.Event()

    def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        entered.set()
        release.wait(30)
        return {}

    emulator.register_lambda("blocks", handler)
    sfn = emulator.client("stepfunctions")
    machine = sfn.create_state_machine(name=f"sm-{time.monotonic_ns()}", roleArn=ROLE, definition=json.dumps(task(
        "arn:aws:states:::lambda:invoke", {"FunctionName": "arn:aws:lambda:us-east-1:123456789012:function:blocks"})))

    def stopped_status() -> str:
        entered.clear()
        arn = sfn.start_execution(stateMachineArn=machine["stateMachineArn"], name=f"ex-{time.monotonic_ns()}")[
            "executionArn"]
        assert entered.wait(30)
        sfn.stop_execution(executionArn=arn, error="Killed")
        return str(sfn.describe_execution(executionArn=arn)["status"])

    try:
        assert stopped_status() == "ABORTED"
        with PATCHES.stock(Execution, "stop"):
            assert stopped_status() == "RUNNING"
    finally:
        release.set()


def test_an_execution_stopped_before_its_first_state_never_runs_it(emulator: Emulator,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill right after a submit: the stop lands while the execution's thread is still parsing the definition. On
    AWS it is ABORTED at once and its first state never runs; moto ignored the stop (its Environment was not yet
    running) and ran the execution on."""
    from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker

    parsing, parsed, entered = threading.Event(), threading.Event(), threading.Event()
    parse = ExecutionWorker._get_evaluation_entrypoint

    def held(self: Any) -> Any:  # the thread's first step, held until the stop has answered
        parsing.set()
        assert parsed.wait(30)
        return parse(self)

    monkeypatch.setattr(ExecutionWorker, "_get_evaluation_entrypoint", held)
    emulator.register_lambda("first", lambda event, context: entered.set())
    sfn = emulator.client("stepfunctions")
    machine = sfn.create_state_machine(name=f"sm-{time.monotonic_ns()}", roleArn=ROLE, definition=json.dumps(task(
        "arn:aws:states:::lambda:invoke", {"FunctionName": "arn:aws:lambda:us-east-1:123456789012:function:first"})))
    arn = sfn.start_execution(stateMachineArn=machine["stateMachineArn"], name=f"ex-{time.monotonic_ns()}")[
        "executionArn"]
    assert parsing.wait(30)
    sfn.stop_execution(executionArn=arn, error="Killed", cause="kaos kill")
    assert sfn.describe_execution(executionArn=arn)["status"] == "ABORTED"
    parsed.set()
    deadline = time.monotonic() + 30
    while not (types := [e["type"] for e in sfn.get_execution_history(executionArn=arn)["events"]])[-1:] == [
            "ExecutionAborted"]:
        assert time.monotonic() < deadline, types
        time.sleep(0.05)
    assert types == ["ExecutionStarted", "ExecutionAborted"] and not entered.is_set()
    assert sfn.describe_execution(executionArn=arn)["status"] == "ABORTED"


def test_lambda_error_is_caught_by_exception_class_name(emulator: Emulator) -> None:
    def handler(event: dict[str, Any], context: LambdaContext) -> None:
        raise ModelNotReady("still training")

    emulator.register_lambda("check", handler)
    direct = emulator.client("lambda").invoke(FunctionName="check", Payload=b"{}")
    assert direct["FunctionError"] == "Unhandled"
    body = json.loads(direct["Payload"].read())
    assert body["errorType"] == "ModelNotReady" and body["errorMessage"] == "still training"
    assert isinstance(body["stackTrace"], list) and body["stackTrace"]

    definition = task(
        "arn:aws:states:::lambda:invoke", {"FunctionName": "check", "Payload": {}},
        Catch=[{"ErrorEquals": ["ModelNotReady"], "ResultPath": "$.error", "Next": "Caught"}],
    )
    definition["States"]["T"].pop("End")
    definition["States"]["T"]["Next"] = "Done"
    definition["States"]["Done"] = {"Type": "Succeed"}
    definition["States"]["Caught"] = {"Type": "Pass", "Result": {"caught": True}, "End": True}
    result = run_state_machine(emulator, definition)
    assert result["status"] == "SUCCEEDED"
    assert json.loads(result["output"]) == {"caught": True}


def test_unknown_lambda_fails(emulator: Emulator) -> None:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as info:
        emulator.client("lambda").invoke(FunctionName="missing", Payload=b"{}")
    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"
    result = run_state_machine(emulator, task(
        "arn:aws:states:::lambda:invoke", {"FunctionName": "missing", "Payload": {}}
    ))
    assert result["status"] == "FAILED"
    assert result["error"] == "Lambda.ResourceNotFoundException"


def test_s3_notification_and_eventbridge_reach_handlers(emulator: Emulator) -> None:
    received: dict[str, Any] = {}
    done = {"s3": threading.Event(), "events": threading.Event()}

    def on_s3(event: dict[str, Any], context: LambdaContext) -> None:
        received["s3"] = event
        done["s3"].set()

    def on_event(event: dict[str, Any], context: LambdaContext) -> None:
        received["events"] = event
        done["events"].set()

    emulator.register_lambda("on-s3", on_s3)
    emulator.register_lambda("on-event", on_event)
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
             "Principal": {"Service": "lambda.amazonaws.com"}}]}
    role = emulator.client("iam").create_role(
        RoleName="on-s3", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    lam = emulator.client("lambda")
    function_arn = lam.create_function(
        FunctionName="on-s3", Runtime="python3.11", Role=role, Handler="app.handler",
        Code={"ZipFile": _zip_bytes()},
    )["FunctionArn"]
    s3 = emulator.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={
        "LambdaFunctionConfigurations": [{"LambdaFunctionArn": function_arn, "Events": ["s3:ObjectCreated:*"]}],
    })
    s3.put_object(Bucket=BUCKET, Key="in/data.csv", Body=b"x")
    assert done["s3"].wait(5)
    assert received["s3"]["Records"][0]["s3"]["object"]["key"].endswith("data.csv")

    events = emulator.client("events")
    events.put_rule(Name="r", EventPattern=json.dumps({"source": ["kaos.test"]}))
    events.put_targets(Rule="r", Targets=[
        {"Id": "1", "Arn": "arn:aws:lambda:us-east-1:123456789012:function:on-event"},
    ])
    events.put_events(Entries=[{"Source": "kaos.test", "DetailType": "t", "Detail": json.dumps({"k": 1})}])
    assert done["events"].wait(5)
    assert received["events"]["detail"] == {"k": 1}

    sfn = emulator.client("stepfunctions")
    machine = sfn.create_state_machine(
        name="on-event", roleArn=ROLE,
        definition=json.dumps({"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}),
    )["stateMachineArn"]
    events.put_targets(Rule="r", Targets=[{"Id": "2", "Arn": machine, "RoleArn": ROLE}])
    events.put_events(Entries=[{"Source": "kaos.test", "DetailType": "t", "Detail": json.dumps({"k": 2})}])
    deadline = time.monotonic() + 5
    while not sfn.list_executions(stateMachineArn=machine)["executions"]:
        assert time.monotonic() < deadline, "EventBridge did not start the state machine"
        time.sleep(0.1)


def _zip_bytes() -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", "def handler(e, c):\n    return e\n")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# (b) sagemaker:createTrainingJob.sync
# ---------------------------------------------------------------------------------------------

TRAIN_SCRIPT = """\
import json, os, sys
rows = open(os.path.join(os.environ["SM_CHANNEL_TRAINING"], "train.csv")).read().split()
if os.environ.get("SM_HP_FAIL") == "1":
    print("loading data", flush=True)
    print("ValueError: cannot fit on " + str(len(rows)) + " rows", file=sys.stderr)
    sys.exit(2)
model_dir = os.environ["SM_MODEL_DIR"]
open(os.path.join(model_dir, "model.joblib"), "wb").write(b"weights")
json.dump({"rows": len(rows)}, open(os.path.join(model_dir, "metrics.json"), "w"))
"""


def upload_source(emulator: Emulator, files: dict[str, str], key: str = "code/sourcedir.tar.gz") -> str:
    s3 = emulator.client("s3")
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            archive.addfile(info, io.BytesIO(data))
    s3.put_object(Bucket=BUCKET, Key=key, Body=buffer.getvalue())
    s3.put_object(Bucket=BUCKET, Key="data/train/train.csv", Body=b"1\n2\n3\n")
    return f"s3://{BUCKET}/{key}"


def training_parameters(source: str, **hyperparameters: str) -> dict[str, Any]:
    return {
        "RoleArn": ROLE,
        "AlgorithmSpecification": {"TrainingImage": "local/sklearn", "TrainingInputMode": "File"},
        "HyperParameters": {
            "sagemaker_program": json.dumps("train.py"),
            "sagemaker_submit_directory": json.dumps(source),
            **hyperparameters,
        },
        "InputDataConfig": [{"ChannelName": "training", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/data/train",
        }}}],
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/models"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
        "StoppingCondition": {"MaxRuntimeInSeconds": 120},
    }


def test_create_training_job_sync_succeeds_with_model_in_s3(emulator: Emulator) -> None:
    source = upload_source(emulator, {"train.py": TRAIN_SCRIPT})
    parameters = training_parameters(source) | {"TrainingJobName.$": "$.name"}
    result = run_state_machine(
        emulator, task("arn:aws:states:::sagemaker:createTrainingJob.sync", parameters),
        {"name": "contract-ok"},
    )
    assert result["status"] == "SUCCEEDED", result.get("cause")
    output = json.loads(result["output"])
    assert output["TrainingJobStatus"] == "Completed"
    assert output["ResourceConfig"]["VolumeSizeInGB"] == 5
    artifact = output["ModelArtifacts"]["S3ModelArtifacts"]
    assert artifact == f"s3://{BUCKET}/models/contract-ok/output/model.tar.gz"
    body = emulator.client("s3").get_object(Bucket=BUCKET, Key="models/contract-ok/output/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as archive:
        assert sorted(archive.getnames()) == ["metrics.json", "model.joblib"]
        metrics = archive.extractfile("metrics.json")
        assert metrics is not None and json.load(metrics) == {"rows": 3}


def test_create_training_job_sync_failure_surfaces_output_tail(emulator: Emulator) -> None:
    source = upload_source(emulator, {"train.py": TRAIN_SCRIPT})
    parameters = training_parameters(source, fail="1") | {"TrainingJobName": "contract-fail"}
    result = run_state_machine(
        emulator, task("arn:aws:states:::sagemaker:createTrainingJob.sync", parameters)
    )
    assert result["status"] == "FAILED"
    assert result["error"] == "States.TaskFailed"
    cause = json.loads(result["cause"])
    assert cause["TrainingJobStatus"] == "Failed"
    assert "ValueError: cannot fit on 3 rows" in cause["FailureReason"]
    assert cause["FailureReason"].startswith("AlgorithmError")


# ---------------------------------------------------------------------------------------------
# (c) throttling + Retry
# ---------------------------------------------------------------------------------------------


def test_throttled_create_training_job_is_retried(emulator: Emulator) -> None:
    source = upload_source(emulator, {"train.py": TRAIN_SCRIPT})
    emulator.inject_throttling("sagemaker", "CreateTrainingJob", times=1)
    parameters = training_parameters(source) | {"TrainingJobName": "contract-throttled"}
    result = run_state_machine(emulator, task(
        "arn:aws:states:::sagemaker:createTrainingJob", parameters,
        Retry=[{"ErrorEquals": ["SageMaker.AmazonSageMakerException"], "IntervalSeconds": 1,
                "MaxAttempts": 3, "BackoffRate": 1.0}],
    ))
    assert result["status"] == "SUCCEEDED", result.get("cause")
    failures = [e["taskFailedEventDetails"] for e in result["history"] if e["type"] == "TaskFailed"]
    assert len(failures) == 1
    assert failures[0]["error"] == "SageMaker.AmazonSageMakerException"
    assert "Error Code: ThrottlingException" in failures[0]["cause"]
    assert "TrainingJobArn" in json.loads(result["output"])


# ---------------------------------------------------------------------------------------------
# (d) aws-sdk with datetimes, (e) batch parameter normalisation
# ---------------------------------------------------------------------------------------------


def test_aws_sdk_describe_training_job_serialises_datetimes(emulator: Emulator) -> None:
    source = upload_source(emulator, {"train.py": TRAIN_SCRIPT})
    emulator.client("sagemaker").create_training_job(
        TrainingJobName="contract-sdk", **training_parameters(source)
    )
    result = run_state_machine(emulator, task(
        "arn:aws:states:::aws-sdk:sagemaker:describeTrainingJob",
        {"TrainingJobName": "contract-sdk"},
    ))
    assert result["status"] == "SUCCEEDED", result.get("cause")
    output = json.loads(result["output"])
    assert output["TrainingJobName"] == "contract-sdk"
    assert isinstance(output["CreationTime"], str) and output["CreationTime"].startswith("20")


def test_batch_submit_job_parameters_are_normalised(emulator: Emulator) -> None:
    batch = emulator.client("batch")
    iam = emulator.client("iam")
    role_arn = iam.create_role(RoleName="batch", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    env_arn = batch.create_compute_environment(
        computeEnvironmentName="kaos-ce", type="UNMANAGED", state="ENABLED", serviceRole=role_arn,
    )["computeEnvironmentArn"]
    batch.create_job_queue(jobQueueName="kaos-q", state="ENABLED", priority=1,
                           computeEnvironmentOrder=[{"order": 1, "computeEnvironment": env_arn}])
    batch.register_job_definition(jobDefinitionName="kaos-jd", type="container", containerProperties={
        "image": "busybox", "vcpus": 1, "memory": 128, "command": ["true"],
    })
    result = run_state_machine(emulator, task(
        "arn:aws:states:::batch:submitJob",
        {"JobName": "contract-batch", "JobQueue": "kaos-q", "JobDefinition": "kaos-jd"},
    ))
    assert result["status"] == "SUCCEEDED", result.get("cause")
    output = json.loads(result["output"])
    assert output["JobName"] == "contract-batch" and output["JobId"]


def test_filter_log_events_honours_the_stream_prefix(emulator: Emulator) -> None:
    logs = emulator.client("logs")
    logs.create_log_group(logGroupName="/aws/sagemaker/TrainingJobs")
    for stream in ("job-a/algo-1-1", "job-ab/algo-1-1", "job-b/algo-1-1"):
        logs.create_log_stream(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=stream)
        logs.put_log_events(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=stream,
                            logEvents=[{"timestamp": int(time.time() * 1000), "message": f"from {stream}"}])
    events = logs.filter_log_events(logGroupName="/aws/sagemaker/TrainingJobs",
                                    logStreamNamePrefix="job-a/")["events"]
    assert [e["message"] for e in events] == ["from job-a/algo-1-1"]
    none = logs.filter_log_events(logGroupName="/aws/sagemaker/TrainingJobs", logStreamNamePrefix="zzz/")
    assert none["events"] == []
