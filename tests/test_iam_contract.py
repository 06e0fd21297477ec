"""Contract tests for the emulator's IAM (kaos/local/iam.py): for each service kaos uses, an action inside a role's
policy is allowed and the same action outside it is refused; plus what moto alone does not evaluate (resources
outside S3, conditions, boundaries, PassRole, presigned URLs, unknown keys, Step Functions' own credentials)."""
from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any
from urllib.error import HTTPError

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from kaos.local import iam
from kaos.local.emulator import Emulator

ACCOUNT = "123456789012"
REGION = "us-east-1"
LAMBDA_TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": ["lambda.amazonaws.com", "states.amazonaws.com",
                                                 "sagemaker.amazonaws.com"]}, "Action": "sts:AssumeRole"}]}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emu = Emulator(tmp_path_factory.mktemp("iam") / "emu", stop_grace_seconds=1, enforce_iam=True)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def role(emulator: Emulator, name: str, statements: list[dict[str, Any]], boundary: str | None = None) -> str:
    client = emulator.client("iam")
    extra = {"PermissionsBoundary": boundary} if boundary else {}
    arn: str = client.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(LAMBDA_TRUST),
                                  **extra)["Role"]["Arn"]
    # IAM refuses an empty policy: a role with nothing to do may still ask who it is.
    statements = statements or [allow("sts:GetCallerIdentity", "*")]
    client.put_role_policy(RoleName=name, PolicyName="p", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": statements}))
    return arn


def as_role(emulator: Emulator, role_arn: str, service: str) -> Any:
    keys = emulator.role_keys(role_arn, "lambda.amazonaws.com")
    # SigV4 query signatures for presigned URLs, as kaos' ObjectStore makes them (S3 refuses new SigV2 use).
    return boto3.client(service, endpoint_url=emulator.endpoint_url, region_name=REGION,
                        aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
                        aws_session_token=keys["AWS_SESSION_TOKEN"], config=Config(signature_version="s3v4"))


def refused(call: Callable[[], Any]) -> bool:
    try:
        call()
    except ClientError as exc:
        return exc.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    return False


def allow(action: str, resource: str) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource}


def test_s3_objects_by_key(emulator: Emulator) -> None:
    emulator.client("s3").create_bucket(Bucket="walls")
    arn = role(emulator, "s3-role", [allow("s3:GetObject", "arn:aws:s3:::walls/ws/a/*"),
                                     allow("s3:PutObject", "arn:aws:s3:::walls/ws/a/jobs/*")])
    emulator.client("s3").put_object(Bucket="walls", Key="ws/a/x", Body=b"a")
    emulator.client("s3").put_object(Bucket="walls", Key="ws/b/x", Body=b"b")
    s3 = as_role(emulator, arn, "s3")
    assert s3.get_object(Bucket="walls", Key="ws/a/x")["Body"].read() == b"a"
    assert refused(lambda: s3.get_object(Bucket="walls", Key="ws/b/x"))
    s3.put_object(Bucket="walls", Key="ws/a/jobs/1/model", Body=b"m")
    assert refused(lambda: s3.put_object(Bucket="walls", Key="ws/a/blobs/x", Body=b"m"))


def test_s3_list_with_prefix_condition(emulator: Emulator) -> None:
    emulator.client("s3").create_bucket(Bucket="listed")
    arn = role(emulator, "s3-list-role", [{"Effect": "Allow", "Action": "s3:ListBucket",
                                           "Resource": "arn:aws:s3:::listed",
                                           "Condition": {"StringLike": {"s3:prefix": "ws/a/*"}}}])
    s3 = as_role(emulator, arn, "s3")
    s3.list_objects_v2(Bucket="listed", Prefix="ws/a/")
    assert refused(lambda: s3.list_objects_v2(Bucket="listed", Prefix="ws/b/"))
    assert refused(lambda: s3.list_objects_v2(Bucket="listed"))


def test_dynamodb_by_table_and_index(emulator: Emulator) -> None:
    ddb = emulator.client("dynamodb")
    for table in ("mine", "theirs"):
        ddb.create_table(TableName=table, KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                         AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                         BillingMode="PAY_PER_REQUEST")
    arn = role(emulator, "ddb-role", [allow("dynamodb:PutItem", f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/mine")])
    client = as_role(emulator, arn, "dynamodb")
    client.put_item(TableName="mine", Item={"pk": {"S": "1"}})
    assert refused(lambda: client.put_item(TableName="theirs", Item={"pk": {"S": "1"}}))
    assert refused(lambda: client.get_item(TableName="mine", Key={"pk": {"S": "1"}}))  # action not granted
    # A transaction is decided item by item, on each item's own table.
    assert refused(lambda: client.transact_write_items(TransactItems=[
        {"Put": {"TableName": "mine", "Item": {"pk": {"S": "2"}}}},
        {"Put": {"TableName": "theirs", "Item": {"pk": {"S": "2"}}}}]))


def test_logs_group_actions_need_the_group_arn(emulator: Emulator) -> None:
    emulator.client("logs").create_log_group(logGroupName="/aws/sagemaker/TrainingJobs")
    group = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/sagemaker/TrainingJobs"
    wrong = as_role(emulator, role(emulator, "logs-wrong", [allow("logs:FilterLogEvents", f"{group}:log-stream:*")]),
                    "logs")
    right = as_role(emulator, role(emulator, "logs-right", [allow("logs:FilterLogEvents", f"{group}:*")]), "logs")
    # The bug issue 8 predicted: a stream-level grant does not cover FilterLogEvents.
    assert refused(lambda: wrong.filter_log_events(logGroupName="/aws/sagemaker/TrainingJobs"))
    right.filter_log_events(logGroupName="/aws/sagemaker/TrainingJobs")


def test_step_functions_lambda_sagemaker_by_resource(emulator: Emulator) -> None:
    definition = json.dumps({"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}})
    sfn = emulator.client("stepfunctions")
    mine = sfn.create_state_machine(name="mine", definition=definition,
                                    roleArn=role(emulator, "sm-role", []))["stateMachineArn"]
    theirs = sfn.create_state_machine(name="theirs", definition=definition,
                                      roleArn=f"arn:aws:iam::{ACCOUNT}:role/sm-role")["stateMachineArn"]
    arn = role(emulator, "starter", [
        allow("states:StartExecution", mine),
        allow("lambda:InvokeFunction", f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:mine-fn"),
        allow("sagemaker:DescribeTrainingJob", f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:training-job/mine-*")])
    client = as_role(emulator, arn, "stepfunctions")
    client.start_execution(stateMachineArn=mine)
    assert refused(lambda: client.start_execution(stateMachineArn=theirs))
    emulator.register_lambda("mine-fn", lambda event, context: {"ok": True})
    emulator.register_lambda("their-fn", lambda event, context: {"ok": True})
    lam = as_role(emulator, arn, "lambda")
    assert json.loads(lam.invoke(FunctionName="mine-fn")["Payload"].read()) == {"ok": True}
    assert refused(lambda: lam.invoke(FunctionName="their-fn"))
    sm = as_role(emulator, arn, "sagemaker")
    assert refused(lambda: sm.describe_training_job(TrainingJobName="theirs-1"))
    with pytest.raises(ClientError) as missing:  # allowed, so the service itself answers: no such job
        sm.describe_training_job(TrainingJobName="mine-1")
    assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] != 403


def test_pass_role_is_checked_when_a_job_names_a_role(emulator: Emulator) -> None:
    job_role = role(emulator, "ws-job", [])
    other_role = role(emulator, "other-job", [])
    training = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:training-job/*"
    to_sagemaker = {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}
    arn = role(emulator, "passer", [allow("sagemaker:CreateTrainingJob", training),
                                    {"Effect": "Allow", "Action": "iam:PassRole", "Resource": job_role,
                                     "Condition": to_sagemaker}])
    sm = as_role(emulator, arn, "sagemaker")

    def create(name: str, role_arn: str) -> Any:
        return sm.create_training_job(
            TrainingJobName=name, RoleArn=role_arn, AlgorithmSpecification={"TrainingImage": "i",
                                                                            "TrainingInputMode": "File"},
            OutputDataConfig={"S3OutputPath": "s3://walls/o"}, StoppingCondition={"MaxRuntimeInSeconds": 60},
            ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1})

    assert refused(lambda: create("passes-other", other_role))
    create("passes-own", job_role)


def test_permissions_boundary_caps_a_role(emulator: Emulator) -> None:
    emulator.client("s3").create_bucket(Bucket="bounded")
    boundary = emulator.client("iam").create_policy(PolicyName="boundary", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [allow("s3:GetObject", "arn:aws:s3:::bounded/ws/*")]}))["Policy"]["Arn"]
    arn = role(emulator, "bounded-role", [allow("s3:*", "*")], boundary=boundary)
    emulator.client("s3").put_object(Bucket="bounded", Key="ws/x", Body=b"x")
    s3 = as_role(emulator, arn, "s3")
    assert s3.get_object(Bucket="bounded", Key="ws/x")["Body"].read() == b"x"
    assert refused(lambda: s3.put_object(Bucket="bounded", Key="ws/y", Body=b"y"))


def test_explicit_deny_wins_and_unknown_keys_are_refused(emulator: Emulator) -> None:
    emulator.client("s3").create_bucket(Bucket="denied")
    arn = role(emulator, "deny-role", [allow("s3:*", "*"), {"Effect": "Deny", "Action": "s3:GetObject",
                                                             "Resource": "arn:aws:s3:::denied/secret"}])
    emulator.client("s3").put_object(Bucket="denied", Key="secret", Body=b"s")
    emulator.client("s3").put_object(Bucket="denied", Key="open", Body=b"o")
    s3 = as_role(emulator, arn, "s3")
    assert s3.get_object(Bucket="denied", Key="open")["Body"].read() == b"o"
    assert refused(lambda: s3.get_object(Bucket="denied", Key="secret"))
    stranger = boto3.client("s3", endpoint_url=emulator.endpoint_url, region_name=REGION,
                            aws_access_key_id="AKIASTRANGER0000000", aws_secret_access_key="x")
    assert refused(lambda: stranger.get_object(Bucket="denied", Key="open"))


def test_cloudwatch_namespace_condition(emulator: Emulator) -> None:
    arn = role(emulator, "metrics-role", [{"Effect": "Allow", "Action": "cloudwatch:PutMetricData", "Resource": "*",
                                           "Condition": {"StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}}}])
    cw = as_role(emulator, arn, "cloudwatch")
    cw.put_metric_data(Namespace="/aws/sagemaker/TrainingJobs", MetricData=[{"MetricName": "m", "Value": 1.0}])
    assert refused(lambda: cw.put_metric_data(Namespace="Other", MetricData=[{"MetricName": "m", "Value": 1.0}]))


def _http_status(method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except HTTPError as exc:
        return int(exc.code)


def test_presigned_urls_are_verified(emulator: Emulator) -> None:
    emulator.client("s3").create_bucket(Bucket="presigned")
    arn = role(emulator, "presigner", [allow("s3:PutObject", "arn:aws:s3:::presigned/mine/*"),
                                       allow("s3:GetObject", "arn:aws:s3:::presigned/mine/*")])
    s3 = as_role(emulator, arn, "s3")
    put = s3.generate_presigned_url("put_object", Params={"Bucket": "presigned", "Key": "mine/a"}, ExpiresIn=60)
    assert _http_status("PUT", put, b"data") == 200
    get = s3.generate_presigned_url("get_object", Params={"Bucket": "presigned", "Key": "mine/a"}, ExpiresIn=60)
    assert _http_status("GET", get) == 200
    tampered = get.replace("mine/a", "mine/b")
    assert _http_status("GET", tampered) == 403
    outside = s3.generate_presigned_url("put_object", Params={"Bucket": "presigned", "Key": "theirs/a"})
    assert _http_status("PUT", outside, b"data") == 403  # signed correctly, but the role may not
    expired = s3.generate_presigned_url("get_object", Params={"Bucket": "presigned", "Key": "mine/a"}, ExpiresIn=1)
    deadline = time.monotonic() + 10
    while _http_status("GET", expired) == 200:
        assert time.monotonic() < deadline, "presigned URL still valid after its expiry"
        time.sleep(0.5)
    unsigned = f"{emulator.endpoint_url}/presigned/mine/a"
    assert _http_status("GET", unsigned) == 403


def test_state_machine_calls_are_signed_with_its_role(emulator: Emulator) -> None:
    ddb = emulator.client("dynamodb")
    ddb.create_table(TableName="sfn-table", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                     BillingMode="PAY_PER_REQUEST")
    table_arn = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/sfn-table"
    definition = json.dumps({"StartAt": "Put", "States": {"Put": {
        "Type": "Task", "Resource": "arn:aws:states:::dynamodb:putItem", "End": True,
        "Parameters": {"TableName": "sfn-table", "Item": {"pk": {"S.$": "$.id"}}}}}})
    sfn = emulator.client("stepfunctions")

    def run(role_arn: str, item: str) -> str:
        name = f"m-{time.monotonic_ns()}"
        machine = sfn.create_state_machine(name=name, definition=definition, roleArn=role_arn)["stateMachineArn"]
        execution = sfn.start_execution(stateMachineArn=machine, input=json.dumps({"id": item}))["executionArn"]
        deadline = time.monotonic() + 30
        while (status := sfn.describe_execution(executionArn=execution)["status"]) == "RUNNING":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        return str(status)

    assert run(role(emulator, "sm-writer", [allow("dynamodb:PutItem", table_arn)]), "a") == "SUCCEEDED"
    assert run(role(emulator, "sm-reader", [allow("dynamodb:GetItem", table_arn)]), "b") == "FAILED"
    assert sorted(i["pk"]["S"] for i in ddb.scan(TableName="sfn-table")["Items"]) == ["a"]


def test_asl_parameter_named_role_arn_is_kept(emulator: Emulator) -> None:
    """moto's lexer took "RoleArn.$" for the task-credentials keyword and dropped it (kaos.local.patches)."""
    definition = json.dumps({"StartAt": "P", "States": {"P": {
        "Type": "Pass", "Parameters": {"RoleArn.$": "$.r"}, "End": True}}})
    sfn = emulator.client("stepfunctions")
    machine = sfn.create_state_machine(name="rolearn", definition=definition,
                                       roleArn=role(emulator, "pass-role", []))["stateMachineArn"]
    execution = sfn.start_execution(stateMachineArn=machine, input=json.dumps({"r": "R"}))["executionArn"]
    deadline = time.monotonic() + 30
    while (described := sfn.describe_execution(executionArn=execution))["status"] == "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert json.loads(described["output"]) == {"RoleArn": "R"}


def test_service_credentials_need_the_trust_policy(emulator: Emulator) -> None:
    emulator.client("iam").create_role(RoleName="ecs-only", AssumeRolePolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                 "Principal": {"Service": "ecs-tasks.amazonaws.com"}}]}))
    with pytest.raises(iam.UntrustedService):
        emulator.role_keys(f"arn:aws:iam::{ACCOUNT}:role/ecs-only", "sagemaker.amazonaws.com")
    assert emulator.role_keys(f"arn:aws:iam::{ACCOUNT}:role/ecs-only", "ecs-tasks.amazonaws.com")["AWS_SESSION_TOKEN"]


def test_multi_object_delete_is_decided_per_key(emulator: Emulator) -> None:
    s3_admin = emulator.client("s3")
    s3_admin.create_bucket(Bucket="deletes")
    for key in ("ws/a/1", "ws/b/1"):
        s3_admin.put_object(Bucket="deletes", Key=key, Body=b"x")
    arn = role(emulator, "deleter", [allow("s3:DeleteObject", "arn:aws:s3:::deletes/ws/a/*")])
    s3 = as_role(emulator, arn, "s3")
    # S3 answers a multi-object delete with per-key errors; a key outside the grant is never deleted (the
    # emulator refuses the whole request when any key is outside it: stricter, never looser).
    mixed = s3.delete_objects(Bucket="deletes", Delete={"Objects": [{"Key": "ws/a/1"}, {"Key": "ws/b/1"}]})
    assert {e["Key"] for e in mixed.get("Errors", []) if e["Code"] == "AccessDenied"} >= {"ws/b/1"}
    assert s3.delete_objects(Bucket="deletes", Delete={"Objects": [{"Key": "ws/a/1"}]}).get("Errors") is None
    assert [o["Key"] for o in s3_admin.list_objects_v2(Bucket="deletes")["Contents"]] == ["ws/b/1"]


def test_sessions_of_a_deleted_role_are_refused(emulator: Emulator) -> None:
    emulator.client("s3").create_bucket(Bucket="gone")
    arn = role(emulator, "deleted-later", [allow("s3:PutObject", "arn:aws:s3:::gone/*")])
    s3 = as_role(emulator, arn, "s3")
    s3.put_object(Bucket="gone", Key="before", Body=b"x")
    admin = emulator.client("iam")
    admin.delete_role_policy(RoleName="deleted-later", PolicyName="p")
    admin.delete_role(RoleName="deleted-later")
    assert refused(lambda: s3.put_object(Bucket="gone", Key="after", Body=b"x"))  # 403, not a server error
