"""Offline SageMaker hosting (kaos/local/patches_serving.py + serving_runner.py) through boto3, as the deployment
state machine and the API call it: CreateModel/EndpointConfig/Endpoint -> InService -> InvokeEndpoint (errors as
SageMaker Runtime returns them), data capture and logs, UpdateEndpoint blue/green with a canary rolled back by an
alarm and an all-at-once promotion, DeleteEndpoint, a model that cannot load; each fails on stock moto (records
that are InService at once, canned invocation results, no UpdateEndpoint)."""
from __future__ import annotations

import io
import json
import stat
import tarfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError
from moto.sagemakerruntime.responses import SageMakerRuntimeResponse

from chalicelib import environments as catalogue
from kaos.local import patches_serving
from kaos.local.emulator import Emulator
from tests.test_iam_contract import allow, as_role, refused, role

# The default scikit-learn image: its environment is the one the session builds for the other tests too.
IMAGE = catalogue.lookup("sklearn").image_uri("us-east-1")
ROLE = "arn:aws:iam::123456789012:role/kaos-ws-a-0123456789ab"
BUCKET = "serving"
# A numpy model: label 1 when the feature it watches is over 0.5; a row starting with 99 takes 3 s (the timeout).
INFERENCE = """
import time
import numpy as np

class Threshold:
    def __init__(self, feature):
        self.feature = feature

    def predict(self, rows):
        if rows[0][0] == 99:
            time.sleep(3)
        return (np.atleast_2d(rows)[:, self.feature] > 0.5).astype(np.int64)

def model_fn(model_dir):
    return Threshold(int(open(model_dir + "/feature.txt").read()))
"""


def model_archive(feature: int, inference: str = INFERENCE) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in (("feature.txt", str(feature)), ("code/inference.py", inference)):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def deploy_model(emulator: Emulator, name: str, archive: bytes, capture: bool = False) -> str:
    """A model and a serverless endpoint config of it; returns the config's name."""
    emulator.client("s3").put_object(Bucket=BUCKET, Key=f"{name}/model.tar.gz", Body=archive)
    sagemaker = emulator.client("sagemaker")
    sagemaker.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": IMAGE, "ModelDataUrl": f"s3://{BUCKET}/{name}/model.tar.gz",
        "Environment": {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_CONTAINER_LOG_LEVEL": "20"}})
    extra: dict[str, Any] = {"DataCaptureConfig": {
        "EnableCapture": True, "InitialSamplingPercentage": 100, "DestinationS3Uri": f"s3://{BUCKET}/capture",
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]}} if capture else {}
    sagemaker.create_endpoint_config(EndpointConfigName=f"{name}-config", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": name,
        "ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 5}}], **extra)
    return f"{name}-config"


def until(check: Callable[[], Any], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError("condition not reached before the deadline")


def status(emulator: Emulator, name: str, wanted: str) -> dict[str, Any]:
    described: dict[str, Any] = until(
        lambda: (d := emulator.client("sagemaker").describe_endpoint(EndpointName=name))["EndpointStatus"]
        not in ("Creating", "Updating", "RollingBack") and d)
    assert described["EndpointStatus"] == wanted, described
    return described


def invoke(emulator: Emulator, name: str, body: bytes, content_type: str, accept: str = "text/csv") -> Any:
    return emulator.client("sagemaker-runtime").invoke_endpoint(EndpointName=name, Body=body,
                                                                ContentType=content_type, Accept=accept)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """One IAM-enforcing emulator for the module: the servers download, log and capture with the model's
    execution role, as SageMaker does, so that role is given exactly what serving needs."""
    emu = Emulator(tmp_path_factory.mktemp("serving") / "emu", stop_grace_seconds=1, enforce_iam=True)
    emu.start()
    try:
        prepare(emu)
        yield emu
    finally:
        emu.stop()


def prepare(emulator: Emulator) -> None:
    emulator.client("s3").create_bucket(Bucket=BUCKET)
    role(emulator, ROLE.rsplit("/", 1)[1], [
        allow("s3:GetObject", f"arn:aws:s3:::{BUCKET}/*"),
        allow("s3:PutObject", f"arn:aws:s3:::{BUCKET}/capture/*"),
        allow("logs:CreateLogGroup", "arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/Endpoints/*"),
        {"Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
         "Resource": "arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/Endpoints/*:log-stream:*"},
    ])
    emulator.serving_runner.time_scale = 0.02
    emulator.serving_runner.invocation_timeout = 1


@pytest.fixture(scope="module")
def served(emulator: Emulator) -> Emulator:
    config = deploy_model(emulator, "first", model_archive(0), capture=True)
    emulator.client("sagemaker").create_endpoint(EndpointName="digits", EndpointConfigName=config)
    assert emulator.client("sagemaker").describe_endpoint(EndpointName="digits")["EndpointStatus"] == "Creating"
    status(emulator, "digits", "InService")
    return emulator


def test_invoke_and_its_errors(served: Emulator) -> None:
    answer = invoke(served, "digits", b"1,0\n0,1", "text/csv")
    assert (answer["Body"].read(), answer["ContentType"], answer["InvokedProductionVariant"]) == \
        (b"1\n0\n", "text/csv", "AllTraffic")
    assert invoke(served, "digits", b"[[0.9, 0]]", "application/json", "application/json")["Body"].read() == b"[1]"
    with pytest.raises(ClientError) as unsupported:
        invoke(served, "digits", b"<x/>", "application/xml")
    error: Any = unsupported.value.response  # ModelError adds members botocore-stubs does not type
    assert (error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"], error["OriginalStatusCode"]) == \
        ("ModelError", 424, 415)
    assert "Received client error (415) from primary" in error["Error"]["Message"]
    assert error["LogStreamArn"].endswith(":log-group:/aws/sagemaker/Endpoints/digits")
    with pytest.raises(ClientError) as too_large:
        invoke(served, "digits", b"1" * (4 * 1024 * 1024 + 1), "text/csv")
    assert too_large.value.response["Error"] == {"Code": "413",
                                                 "Message": "HTTP content length exceeded 4194304 bytes."}
    with pytest.raises(ClientError) as timed_out:
        invoke(served, "digits", b"99,0\n0,0", "text/csv")
    assert "Your invocation timed out while waiting for a response from container primary" in \
        timed_out.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as unknown:
        invoke(served, "nothing", b"1,0", "text/csv")
    assert unknown.value.response["Error"]["Code"] == "ValidationError"
    # The patch is what serves: stock moto answers any invocation with canned data.
    with patches_serving.PATCHES.stock(SageMakerRuntimeResponse, "invoke_endpoint"), \
            patches_serving.PATCHES.stock(SageMakerRuntimeResponse, "use_raw_body"):
        assert invoke(served, "digits", b"1,0\n0,1", "text/csv")["Body"].read() == b"body"
    # The server's output is in the endpoint's log group; the sampled pairs in the capture prefix.
    logs = served.client("logs")
    streams = logs.describe_log_streams(logGroupName="/aws/sagemaker/Endpoints/digits")["logStreams"]
    assert streams and streams[0]["logStreamName"].startswith("AllTraffic/")
    keys = until(lambda: served.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="capture/digits/AllTraffic/")
                 .get("Contents"))
    record = json.loads(served.client("s3").get_object(Bucket=BUCKET, Key=keys[0]["Key"])["Body"].read()
                        .splitlines()[0])
    assert record["captureData"]["endpointInput"] == {"observedContentType": "text/csv", "mode": "INPUT",
                                                      "data": "1,0\n0,1", "encoding": "CSV"}
    assert record["captureData"]["endpointOutput"]["data"] == "1\n0\n"
    assert record["eventVersion"] == "0"


def test_an_endpoint_keeps_its_files_to_its_user(served: Emulator) -> None:
    """The endpoint's folder is owner-only, and so are the files whose modes came from elsewhere: the model archive's
    members are 0644 (TarInfo's default) and the server script is 0644 in the package. (What the runner creates
    itself follows the stack's umask, 0077: tests/test_hostile_input.py.)"""
    folders = list((served.serving_runner.work_dir / "endpoints" / "digits").iterdir())
    assert folders and all(stat.S_IMODE(folder.stat().st_mode) == 0o700 for folder in folders), folders
    copied = [path for folder in folders for path in folder.rglob("*")
              if path.name in ("feature.txt", "inference.py", "inference_server.py")]
    assert {path.name for path in copied} == {"feature.txt", "inference.py", "inference_server.py"}, copied
    exposed = [f"{oct(stat.S_IMODE(path.stat().st_mode))} {path}" for path in copied
               if stat.S_IMODE(path.stat().st_mode) & 0o077]
    assert not exposed, "\n".join(exposed)


def test_update_rolls_back_on_alarm_then_promotes(served: Emulator) -> None:
    sagemaker, cloudwatch = served.client("sagemaker"), served.client("cloudwatch")
    second = deploy_model(served, "second", model_archive(1))
    cloudwatch.put_metric_alarm(AlarmName="digits-5xx", MetricName="Invocation5XXErrors", Namespace="AWS/SageMaker",
                                Statistic="Sum", Period=60, EvaluationPeriods=1, Threshold=1,
                                ComparisonOperator="GreaterThanOrEqualToThreshold")
    cloudwatch.set_alarm_state(AlarmName="digits-5xx", StateValue="ALARM", StateReason="test")
    canary = {"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {
        "Type": "CANARY", "WaitIntervalInSeconds": 50, "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 50}},
        "TerminationWaitInSeconds": 0}, "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "digits-5xx"}]}}
    sagemaker.update_endpoint(EndpointName="digits", EndpointConfigName=second, DeploymentConfig=canary)
    assert sagemaker.describe_endpoint(EndpointName="digits")["EndpointStatus"] == "Updating"
    with pytest.raises(ClientError, match="Cannot update in-progress endpoint"):
        sagemaker.update_endpoint(EndpointName="digits", EndpointConfigName=second)
    rolled_back = status(served, "digits", "InService")
    assert rolled_back["EndpointConfigName"] == "first-config"
    assert "digits-5xx" in rolled_back["FailureReason"]
    assert invoke(served, "digits", b"1,0\n0,1", "text/csv")["Body"].read() == b"1\n0\n"  # the first model

    cloudwatch.set_alarm_state(AlarmName="digits-5xx", StateValue="OK", StateReason="test")
    sagemaker.update_endpoint(EndpointName="digits", EndpointConfigName=second, DeploymentConfig=canary)
    promoted = status(served, "digits", "InService")
    assert (promoted["EndpointConfigName"], promoted.get("FailureReason")) == ("second-config", None)
    assert invoke(served, "digits", b"1,0\n0,1", "text/csv")["Body"].read() == b"0\n1\n"  # the second model


def test_an_endpoint_serves_again_after_a_restart(served: Emulator) -> None:
    sagemaker = served.client("sagemaker")
    if sagemaker.describe_endpoint(EndpointName="digits")["EndpointConfigName"] != "second-config":
        # The update test ran on another pytest-xdist worker (each has its own module fixture): update it here.
        sagemaker.update_endpoint(EndpointName="digits",
                                  EndpointConfigName=deploy_model(served, "second", model_archive(1)))
        status(served, "digits", "InService")
    served.stop()
    served.start()
    # What the stack restores (kaos/local/persistence.py) before anything is invoked: the objects and the role.
    prepare(served)
    served.client("s3").put_object(Bucket=BUCKET, Key="second/model.tar.gz", Body=model_archive(1))
    described = served.client("sagemaker").describe_endpoint(EndpointName="digits")
    assert (described["EndpointStatus"], described["EndpointConfigName"]) == ("InService", "second-config")
    assert not served.serving_runner._fleets  # brought up by its first invocation, as a cold start
    assert invoke(served, "digits", b"1,0\n0,1", "text/csv")["Body"].read() == b"0\n1\n"


def test_delete_and_a_model_that_cannot_load(served: Emulator) -> None:
    sagemaker = served.client("sagemaker")
    sagemaker.delete_endpoint(EndpointName="digits")
    with pytest.raises(ClientError, match="Could not find endpoint"):
        sagemaker.describe_endpoint(EndpointName="digits")
    with pytest.raises(ClientError):
        invoke(served, "digits", b"1,0", "text/csv")
    until(lambda: not served.serving_runner._fleets)  # its server process stopped
    broken = deploy_model(served, "broken", model_archive(0, inference="import numpy\n"))
    sagemaker.create_endpoint(EndpointName="broken", EndpointConfigName=broken)
    failed = status(served, "broken", "Failed")
    assert failed["FailureReason"] == ("The primary container for production variant AllTraffic did not pass the "
                                       "ping health check. Please check CloudWatch logs for this endpoint.")
    events = served.client("logs").filter_log_events(logGroupName="/aws/sagemaker/Endpoints/broken")["events"]
    assert any("Please provide a model_fn implementation" in event["message"] for event in events)
    with pytest.raises(ClientError, match="Cannot create already existing endpoint"):
        sagemaker.create_endpoint(EndpointName="broken", EndpointConfigName=broken)


# -- IAM: decided as AWS decides, on the resources each request names ------------------------------------

SM = "arn:aws:sagemaker:us-east-1:123456789012"


def answered(call: Any) -> bool:
    """Allowed by IAM: the service itself answered (a missing resource's 4xx counts: IAM let it through)."""
    return not refused(call)


def test_models_configs_endpoints_and_passrole(emulator: Emulator) -> None:
    passed = role(emulator, "ws-role", [])
    other = role(emulator, "other-role", [])
    arn = role(emulator, "deployer", [
        allow("sagemaker:CreateModel", f"{SM}:model/kaos-a-*"),
        allow("iam:PassRole", passed),
        allow("sagemaker:CreateEndpointConfig", f"{SM}:endpoint-config/kaos-a-*"),
        allow("sagemaker:CreateEndpoint", f"{SM}:endpoint/kaos-a-*"),
        allow("sagemaker:UpdateEndpoint", f"{SM}:endpoint/kaos-a-*"),
        allow("sagemaker:UpdateEndpoint", f"{SM}:endpoint-config/kaos-a-*"),
        allow("sagemaker:DescribeEndpoint", f"{SM}:endpoint/kaos-a-*"),
    ])
    sagemaker = as_role(emulator, arn, "sagemaker")
    container = {"Image": IMAGE, "ModelDataUrl": "s3://b/m.tar.gz"}
    assert answered(lambda: sagemaker.create_model(ModelName="kaos-a-1", ExecutionRoleArn=passed,
                                                   PrimaryContainer=container))
    assert refused(lambda: sagemaker.create_model(ModelName="kaos-b-1", ExecutionRoleArn=passed,
                                                  PrimaryContainer=container))
    # SageMaker checks that the caller may pass the execution role it names.
    assert refused(lambda: sagemaker.create_model(ModelName="kaos-a-2", ExecutionRoleArn=other,
                                                  PrimaryContainer=container))
    variants = [{"VariantName": "AllTraffic", "ModelName": "kaos-a-1",
                 "ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 1}}]
    assert answered(lambda: sagemaker.create_endpoint_config(EndpointConfigName="kaos-a-c",
                                                             ProductionVariants=variants))
    assert refused(lambda: sagemaker.create_endpoint_config(EndpointConfigName="kaos-b-c",
                                                            ProductionVariants=variants))
    # CreateEndpoint is on the endpoint AND the config: a grant of the endpoint alone is not enough.
    assert refused(lambda: sagemaker.create_endpoint(EndpointName="kaos-a-e", EndpointConfigName="kaos-a-c"))
    assert answered(lambda: sagemaker.update_endpoint(EndpointName="kaos-a-e", EndpointConfigName="kaos-a-c"))
    assert refused(lambda: sagemaker.update_endpoint(EndpointName="kaos-a-e", EndpointConfigName="kaos-b-c"))
    assert answered(lambda: sagemaker.describe_endpoint(EndpointName="KAOS-A-E"))  # ARNs carry lower-case names
    assert refused(lambda: sagemaker.describe_endpoint(EndpointName="kaos-b-e"))


def test_invoke_endpoint_is_decided_on_the_endpoint(emulator: Emulator) -> None:
    arn = role(emulator, "invoker", [allow("sagemaker:InvokeEndpoint", f"{SM}:endpoint/kaos-a-*")])
    runtime = as_role(emulator, arn, "sagemaker-runtime")
    assert answered(lambda: runtime.invoke_endpoint(EndpointName="kaos-a-e", Body=b"1", ContentType="text/csv"))
    assert refused(lambda: runtime.invoke_endpoint(EndpointName="kaos-b-e", Body=b"1", ContentType="text/csv"))


def test_registry_and_alarms(emulator: Emulator) -> None:
    arn = role(emulator, "registrar", [
        allow("sagemaker:CreateModelPackageGroup", f"{SM}:model-package-group/kaos-a-*"),
        allow("sagemaker:CreateModelPackage", f"{SM}:model-package/kaos-a-*"),
        allow("cloudwatch:PutMetricAlarm", "arn:aws:cloudwatch:us-east-1:123456789012:alarm:kaos-a-*"),
        allow("cloudwatch:DeleteAlarms", "arn:aws:cloudwatch:us-east-1:123456789012:alarm:kaos-a-*"),
    ])
    sagemaker, cloudwatch = as_role(emulator, arn, "sagemaker"), as_role(emulator, arn, "cloudwatch")
    assert answered(lambda: sagemaker.create_model_package_group(ModelPackageGroupName="kaos-a-digits"))
    assert refused(lambda: sagemaker.create_model_package_group(ModelPackageGroupName="kaos-b-digits"))
    package = {"InferenceSpecification": {"Containers": [{"Image": IMAGE}], "SupportedContentTypes": ["text/csv"],
                                          "SupportedResponseMIMETypes": ["text/csv"]}}
    assert answered(lambda: sagemaker.create_model_package(ModelPackageGroupName="kaos-a-digits", **package))
    assert refused(lambda: sagemaker.create_model_package(ModelPackageGroupName="kaos-b-digits", **package))
    alarm = {"MetricName": "Invocation5XXErrors", "Namespace": "AWS/SageMaker", "Statistic": "Sum", "Period": 60,
             "EvaluationPeriods": 1, "Threshold": 1.0, "ComparisonOperator": "GreaterThanOrEqualToThreshold"}
    assert answered(lambda: cloudwatch.put_metric_alarm(AlarmName="kaos-a-5xx", **alarm))
    assert refused(lambda: cloudwatch.put_metric_alarm(AlarmName="kaos-b-5xx", **alarm))
    assert answered(lambda: cloudwatch.delete_alarms(AlarmNames=["kaos-a-5xx"]))
    assert refused(lambda: cloudwatch.delete_alarms(AlarmNames=["kaos-a-5xx", "kaos-b-5xx"]))
