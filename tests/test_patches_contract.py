"""Contract tests for the moto patch points that had none (S3 -> EventBridge key encoding, the Batch runner hook, the
DynamoDB locks, moto.ec2 imported without its catalogues, moto's registry of model instances, botocore's data
parsed once for the process), and for the patching itself (a missing target or an untested moto version fails
loudly).

Each contract is checked twice: with the patch it holds, and with moto's own code put back for that one patch point
(`Patches.stock`) it does not, so each test shows the patch is what it tests and fails on stock moto."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest
from botocore.exceptions import ClientError

from kaos.local import patches
from kaos.local.emulator import Emulator, LambdaContext
from kaos.local.patching import MOTO_VERSIONS, Patches, PatchTargetError, check_moto

BUCKET = "kaos-patches"


# --- the patching ---------------------------------------------------------------------------------------------
class Target:
    def method(self) -> str:
        return "moto"


def test_a_patch_whose_target_is_gone_fails_loudly() -> None:
    installed = Patches()
    with pytest.raises(PatchTargetError, match="renamed_method does not exist"):
        installed.replace(Target, "renamed_method", lambda self: "patched")
    with pytest.raises(PatchTargetError, match="method exists now"):
        installed.add(Target, "method", lambda self: "patched")
    assert not installed and not hasattr(Target, "renamed_method")
    installed.replace(Target, "method", lambda self: "patched")
    assert Target().method() == "patched"
    installed.remove()
    assert Target().method() == "moto"


def test_moto_outside_the_supported_range_is_refused() -> None:
    low, high = (".".join(map(str, v)) for v in MOTO_VERSIONS)
    check_moto(low)
    check_moto()  # the installed one (requirements.txt pins it)
    for version in (high, "5.2.4", "6.0.0"):
        with pytest.raises(PatchTargetError, match=f"moto {version} is installed"):
            check_moto(version)


# --- S3 -> EventBridge: the object key URL-encoded --------------------------------------------------------------
def _eventbridge_key(emulator: Emulator, key: str) -> str:
    """The object key an EventBridge rule's Lambda target receives for a PUT of `key`."""
    received: list[str] = []
    arrived = threading.Event()

    def handler(event: dict[str, Any], context: LambdaContext) -> None:
        received.append(event["detail"]["object"]["key"])
        arrived.set()

    emulator.register_lambda("on-upload", handler)
    s3, events = emulator.client("s3"), emulator.client("events")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_notification_configuration(Bucket=BUCKET,
                                             NotificationConfiguration={"EventBridgeConfiguration": {}})
    events.put_rule(Name="uploads", EventPattern=json.dumps({"source": ["aws.s3"]}))
    events.put_targets(Rule="uploads", Targets=[
        {"Id": "1", "Arn": "arn:aws:lambda:us-east-1:123456789012:function:on-upload"}])
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    assert arrived.wait(10), "no event reached the target"
    return received[0]


def test_s3_eventbridge_events_carry_the_key_url_encoded(emulator: Emulator) -> None:
    # S3 encodes as in its event notifications: space -> '+', '+' -> '%2B', '/' kept.
    assert _eventbridge_key(emulator, "in/a b+c.csv") == "in/a+b%2Bc.csv"


def test_stock_moto_sends_the_raw_key(emulator: Emulator) -> None:
    from moto.s3 import notifications

    with patches.PATCHES.stock(notifications, "_send_event_bridge_message"):
        assert _eventbridge_key(emulator, "in/a b+c.csv") == "in/a b+c.csv"


# --- Batch: a job runs its command and ends when its process does -------------------------------------------------
def _batch_job(emulator: Emulator, tmp_path: Path) -> tuple[str, str, Path]:
    """Submits a job whose command writes a scratch file in its working folder, waits for `<tmp>/go`, then writes
    `<tmp>/ran`; (job id, status right after the submit, the marker)."""
    batch, iam = emulator.client("batch"), emulator.client("iam")
    emulator.client("logs").create_log_group(logGroupName="/aws/batch/job")
    role = iam.create_role(RoleName="batch", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    environment = batch.create_compute_environment(computeEnvironmentName="contract-ce", type="UNMANAGED",
                                                   state="ENABLED", serviceRole=role)["computeEnvironmentArn"]
    batch.create_job_queue(jobQueueName="contract-q", state="ENABLED", priority=1,
                           computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment}])
    script = ("import os, sys, time\n"
              "open('scratch', 'w').close()\n"  # in its working folder
              "while not os.path.exists(sys.argv[1] + '/go'): time.sleep(0.05)\n"
              "open(sys.argv[1] + '/ran', 'w').close()\n")
    batch.register_job_definition(jobDefinitionName="contract-jd", type="container", containerProperties={
        "image": "python", "vcpus": 1, "memory": 128, "command": ["python", "-c", script, str(tmp_path)]})
    job = batch.submit_job(jobName="contract", jobQueue="contract-q", jobDefinition="contract-jd")["jobId"]
    return job, batch.describe_jobs(jobs=[job])["jobs"][0]["status"], tmp_path / "ran"


def _final_status(emulator: Emulator, job: str) -> str:
    deadline = time.monotonic() + 30
    while (status := emulator.client("batch").describe_jobs(jobs=[job])["jobs"][0]["status"]) not in (
            "SUCCEEDED", "FAILED"):
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    return str(status)


def test_a_batch_job_succeeds_only_after_its_command_ran(emulator: Emulator, tmp_path: Path) -> None:
    job, status, ran = _batch_job(emulator, tmp_path)
    assert status not in ("SUCCEEDED", "FAILED")
    (tmp_path / "go").write_text("")
    assert _final_status(emulator, job) == "SUCCEEDED"
    assert ran.exists()


def test_a_batch_job_leaves_only_its_log_copy(emulator: Emulator, tmp_path: Path) -> None:
    """(Not a patch point: the offline runner behind it.) A job's working folder goes when it ends."""
    job, _, _ = _batch_job(emulator, tmp_path)
    (tmp_path / "go").write_text("")
    assert _final_status(emulator, job) == "SUCCEEDED"
    assert [p.name for p in emulator.batch_runner.job_dir(job).iterdir()] == ["log.txt"]


def test_stock_moto_marks_a_batch_job_succeeded_without_running_it(emulator: Emulator, tmp_path: Path) -> None:
    from moto.batch_simple.models import BatchSimpleBackend

    with patches.PATCHES.stock(BatchSimpleBackend, "_mark_job_as_finished"):
        job, status, ran = _batch_job(emulator, tmp_path)
    assert status == "SUCCEEDED" and _final_status(emulator, job) == "SUCCEEDED"
    assert not ran.exists()


# --- DynamoDB: a conditional write is checked and applied atomically --------------------------------------------
def _racing_conditional_puts(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Two PutItems of one absent key, each only if it is absent; the first is held inside moto's write (it read
    the key's current item, absent, and has yet to check its condition and store) until the second finished or was
    seen waiting for 1 s. Which succeeded."""
    from moto.dynamodb.models import table

    dynamodb = emulator.client("dynamodb")
    dynamodb.create_table(TableName="t", BillingMode="PAY_PER_REQUEST",
                          AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                          KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])
    inside, release = threading.Event(), threading.Event()
    original = table.Item

    def held(*args: Any, **kwargs: Any) -> Any:  # Table.put_item makes the new Item between its read and check
        if not inside.is_set():
            inside.set()
            release.wait(10)
        return original(*args, **kwargs)

    monkeypatch.setattr(table, "Item", held)
    results: dict[str, bool] = {}

    def put(name: str) -> None:
        try:
            dynamodb.put_item(TableName="t", Item={"pk": {"S": "k"}, "by": {"S": name}},
                              ConditionExpression="attribute_not_exists(pk)")
            results[name] = True
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "ConditionalCheckFailedException"
            results[name] = False

    first = threading.Thread(target=put, args=("first",))
    first.start()
    assert inside.wait(10)
    second = threading.Thread(target=put, args=("second",))
    second.start()
    second.join(1)
    release.set()
    first.join(10)
    second.join(10)
    return [results["first"], results["second"]]


def test_conditional_writes_are_atomic(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _racing_conditional_puts(emulator, monkeypatch) == [True, False]


def test_stock_moto_lets_both_conditional_writes_pass(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.dynamodb.models import DynamoDBBackend

    with patches.PATCHES.stock(DynamoDBBackend, "put_item"):
        assert _racing_conditional_puts(emulator, monkeypatch) == [True, True]


def _read_during_an_update(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A GetItem of an item whose UpdateItem (status and reason set together) is held inside moto, between its
    first action and its second, until the read finished or was seen waiting for 1 s. What the read found."""
    from moto.dynamodb.models import dynamo_type

    dynamodb = emulator.client("dynamodb")
    dynamodb.create_table(TableName="torn", BillingMode="PAY_PER_REQUEST",
                          AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                          KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])
    dynamodb.put_item(TableName="torn", Item={"pk": {"S": "job"}, "status": {"S": "TRAINING"}})
    inside, release = threading.Event(), threading.Event()
    original = dynamo_type.LimitedSizeDict.__setitem__

    def held(self: Any, key: str, value: Any) -> None:  # moto sets an update's attributes one at a time
        original(self, key, value)
        if key == "status" and not inside.is_set():
            inside.set()
            release.wait(10)

    monkeypatch.setattr(dynamo_type.LimitedSizeDict, "__setitem__", held)
    update = threading.Thread(target=lambda: dynamodb.update_item(
        TableName="torn", Key={"pk": {"S": "job"}}, UpdateExpression="SET #s = :s, reason = :r",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":s": {"S": "FAILED"}, ":r": {"S": "IntegrityError"}}))
    update.start()
    assert inside.wait(10)
    found: dict[str, Any] = {}
    read = threading.Thread(target=lambda: found.update(
        dynamodb.get_item(TableName="torn", Key={"pk": {"S": "job"}}, ConsistentRead=True)["Item"]))
    read.start()
    read.join(1)
    release.set()
    update.join(10)
    read.join(10)
    return {name: value["S"] for name, value in found.items() if name != "pk"}


def test_a_read_never_finds_an_item_half_updated(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _read_during_an_update(emulator, monkeypatch) == {"status": "FAILED", "reason": "IntegrityError"}


def test_a_read_does_not_wait_for_the_state_flush(emulator: Emulator) -> None:
    # The flush holds the writes' lock while it reads, and asks this server for table descriptions and, when it
    # cannot read the items in process, for the items themselves (kaos/local/persistence.py).
    dynamodb = emulator.client("dynamodb")
    dynamodb.create_table(TableName="flushed", BillingMode="PAY_PER_REQUEST",
                          AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                          KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])
    dynamodb.put_item(TableName="flushed", Item={"pk": {"S": "k"}})
    found: list[Any] = []
    with patches._DYNAMODB_LOCK:
        read = threading.Thread(target=lambda: found.extend([
            dynamodb.describe_table(TableName="flushed")["Table"]["TableName"],
            dynamodb.get_item(TableName="flushed", Key={"pk": {"S": "k"}})["Item"]["pk"]["S"],
            len(dynamodb.scan(TableName="flushed")["Items"])]))
        read.start()
        read.join(10)
        answered_meanwhile = not read.is_alive()
    read.join(10)
    assert answered_meanwhile and found == ["flushed", "k", 1]


def test_stock_moto_reads_an_item_half_updated(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.dynamodb.responses import DynamoHandler

    with patches.PATCHES.stock(DynamoHandler, "call_action"):
        assert _read_during_an_update(emulator, monkeypatch) == {"status": "FAILED"}  # no reason yet


# --- the server's service dispatch: moto's package directory listed once ------------------------------------------
def _listings_per_request(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> int:
    """How often moto's server lists its package directory for 5 requests (after a first one)."""
    from moto import backends

    s3 = emulator.client("s3")
    s3.list_buckets()
    listed: list[str] = []
    original = backends.os.listdir

    def counted(path: Any) -> list[str]:
        listed.append(str(path))
        return original(path)

    monkeypatch.setattr(backends.os, "listdir", counted)
    for _ in range(5):
        s3.list_buckets()
    return len(listed)


def test_the_service_dispatch_lists_moto_once(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _listings_per_request(emulator, monkeypatch) == 0


def test_stock_moto_lists_its_package_on_every_request(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto import backends

    with patches.PATCHES.stock(backends, "list_of_moto_modules"):
        assert _listings_per_request(emulator, monkeypatch) >= 5


def test_region_lists_are_kept_on_disk_and_read_back_by_the_next_start(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """moto asks botocore for each service's regions at every start (EC2's parses its whole service model): the
    answers depend only on botocore's data, so a start after the first reads them from the file."""
    from boto3.session import Session

    stock = patches.PATCHES.original(Session, "get_available_regions") if patches.PATCHES else \
        Session.get_available_regions
    monkeypatch.setattr(patches, "REGIONS_CACHE", tmp_path)
    monkeypatch.setattr(Session, "get_available_regions", stock)
    first = patches._shared_regions()(None, "ec2")
    assert "us-east-1" in first and first == stock(Session(), "ec2")
    stored = json.loads(patches._regions_file().read_text())
    assert stored == {"ec2/aws/False": first}

    def never(*_: Any, **__: Any) -> list[str]:
        raise AssertionError("botocore was asked again")

    monkeypatch.setattr(Session, "get_available_regions", never)
    assert patches._shared_regions()(None, "ec2") == first  # a new start: from the file
    patches._regions_file().write_text("{not json")
    monkeypatch.setattr(Session, "get_available_regions", stock)
    assert patches._shared_regions()(None, "ec2") == first  # a damaged file is recomputed and rewritten
    assert json.loads(patches._regions_file().read_text()) == stored


def test_a_definition_moto_accepted_is_not_parsed_again_by_the_next_start(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """CreateStateMachine parses the whole definition only to refuse a bad one: a definition this moto accepted
    before is known by its digest (on disk), a bad one is refused as by moto and never recorded."""
    from moto.stepfunctions.parser.models import InvalidDefinition, StepFunctionsParserBackend

    stock = patches.PATCHES.original(StepFunctionsParserBackend, "_validate_definition") if patches.PATCHES else \
        StepFunctionsParserBackend._validate_definition
    monkeypatch.setattr(patches, "REGIONS_CACHE", tmp_path)
    good = json.dumps({"StartAt": "A", "States": {"A": {"Type": "Pass", "End": True}}})
    bad = json.dumps({"StartAt": "A", "States": {"A": {"Type": "NoSuchType", "End": True}}})
    parsed: list[str] = []

    def counting(definition: str) -> None:
        parsed.append(definition)
        stock(definition=definition)

    validate = patches._remembered_validation(counting).__func__
    validate(good)
    for _ in range(2):
        with pytest.raises(InvalidDefinition):
            validate(bad)
    assert parsed == [good, bad, bad]  # a refusal is not remembered
    assert validate(good) is None and len(parsed) == 3  # the same start: from memory
    fresh = patches._remembered_validation(counting).__func__  # a new start: from the file
    assert fresh(good) is None and len(parsed) == 3
    patches._validated_file().write_text("{not json")
    assert patches._remembered_validation(counting).__func__(good) is None and len(parsed) == 4  # damaged: again
    assert json.loads(patches._validated_file().read_text()) == [hashlib.sha256(good.encode()).hexdigest()]


def test_a_jsonpath_is_parsed_once_and_finds_what_it_found_before(emulator: Emulator) -> None:
    """Every JSONPath a state evaluates was parsed anew (jsonpath_ng builds its yacc parser on each parse): with the
    patches each path is parsed once, and finds the same values."""
    from jsonpath_ng.ext import parse as stock_parse
    from moto.stepfunctions.parser.asl.utils import json_path

    data = {"a": [{"b": 1}, {"b": 2}], "c": {"d": "x"}}
    paths = ["$.a[*].b", "$.c.d", "$.a[1]", "$"]
    expected = [[1, 2], "x", {"b": 2}, data]
    assert [[m.value for m in stock_parse(p).find(data)] for p in paths[:2]] == [[1, 2], ["x"]]
    first = [json_path.extract_json(p, data) for p in paths]
    hits = json_path.parse.cache_info().hits  # type: ignore[attr-defined]  # the patch's cache
    assert [json_path.extract_json(p, data) for p in paths] == first == expected
    assert json_path.parse.cache_info().hits == hits + len(paths)  # type: ignore[attr-defined]


def test_a_definition_is_parsed_once_for_all_its_executions(emulator: Emulator) -> None:
    """Each execution parsed its machine's definition with the ANTLR parser again; with the patch the parse tree is
    kept and each execution builds its own program from it: the same outcomes as stock moto's, Parallel and Map
    states included (their components keep per-evaluation state, so programs are never shared)."""
    from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker

    from tests.test_emulator_contract import ROLE

    definition = json.dumps({"StartAt": "Both", "States": {
        "Both": {"Type": "Parallel", "Next": "Each", "Branches": [
            {"StartAt": "A", "States": {"A": {"Type": "Pass", "Result": {"a": 1}, "End": True}}},
            {"StartAt": "B", "States": {"B": {"Type": "Pass", "InputPath": "$.items", "End": True}}}]},
        "Each": {"Type": "Map", "ItemsPath": "$[1]", "End": True, "ItemProcessor": {
            "ProcessorConfig": {"Mode": "INLINE"}, "StartAt": "Twice",
            "States": {"Twice": {"Type": "Pass", "Parameters": {"n.$": "$", "same.$": "$"}, "End": True}}}}}})
    sfn = emulator.client("stepfunctions")
    machine = sfn.create_state_machine(name=f"parsed-once-{time.monotonic_ns()}", definition=definition,
                                       roleArn=ROLE)["stateMachineArn"]

    def outputs(count: int) -> list[Any]:
        arns = [sfn.start_execution(stateMachineArn=machine, input=json.dumps({"items": [i, i + 1, i + 2]}),
                                    name=f"e-{time.monotonic_ns()}-{i}")["executionArn"] for i in range(count)]
        found: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while len(found) < count and time.monotonic() < deadline:
            for arn in arns:
                described = sfn.describe_execution(executionArn=arn)
                if described["status"] != "RUNNING":
                    found[arn] = (described["status"], json.loads(described.get("output", "null")))
            time.sleep(0.05)  # polling the executions' state, not waiting for an assumed duration
        return [found.get(arn) for arn in arns]

    parsed = ExecutionWorker._get_evaluation_entrypoint.parsed  # type: ignore[attr-defined]  # the patch's cache
    misses = parsed.cache_info().misses
    patched = outputs(4)  # concurrently: one tree, four programs
    assert parsed.cache_info().misses == misses + 1
    with patches.PATCHES.stock(ExecutionWorker, "_get_evaluation_entrypoint"):
        stock = outputs(4)
    expected = [("SUCCEEDED", [{"n": i + k, "same": i + k} for k in range(3)]) for i in range(4)]
    assert patched == stock == expected


def test_a_parent_learns_of_its_child_executions_end_without_polling_it(emulator: Emulator,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`states:startExecution.sync:2` described the child every 0.5 s until it ended; with the patch the parent
    waits for the child's end and describes it once. Outcomes are stock moto's: the child's output, or the task's
    failure with the child's cause."""
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_sfn import (
        StateTaskServiceSfn,
    )
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    from tests.test_emulator_contract import ROLE, run_state_machine

    sfn = emulator.client("stepfunctions")
    child = {"StartAt": "Wait", "States": {"Wait": {"Type": "Wait", "Seconds": 2, "Next": "Out"},
                                           "Out": {"Type": "Choice", "Default": "Done", "Choices": [
                                               {"Variable": "$.fail", "BooleanEquals": True, "Next": "Bad"}]},
                                           "Done": {"Type": "Pass", "Result": {"child": "done"}, "End": True},
                                           "Bad": {"Type": "Fail", "Error": "ChildFailed", "Cause": "on purpose"}}}
    child_arn = sfn.create_state_machine(name=f"child-{time.monotonic_ns()}", definition=json.dumps(child),
                                         roleArn=ROLE)["stateMachineArn"]
    parent = {"StartAt": "Run", "States": {"Run": {
        "Type": "Task", "Resource": "arn:aws:states:::states:startExecution.sync:2", "End": True,
        "Parameters": {"StateMachineArn": child_arn, "Name.$": "$$.Execution.Name", "Input": {"fail.$": "$.fail"}},
        "OutputPath": "$.Output"}}}
    described: list[str] = []
    original = StepFunctionsParserBackend.describe_execution
    monkeypatch.setattr(StepFunctionsParserBackend, "describe_execution",
                        lambda backend, execution_arn: described.append(execution_arn) or original(backend,
                                                                                                   execution_arn))

    def run(fail: bool) -> tuple[str, Any, int]:
        described.clear()
        ended = run_state_machine(emulator, parent, {"fail": fail})
        children = len([arn for arn in described if ":execution:child-" in arn])
        failed = [e for e in ended["history"] if e["type"] == "TaskFailed"]
        return ended["status"], (json.loads(ended["output"]) if "output" in ended else
                                 json.loads(failed[0]["taskFailedEventDetails"]["cause"])["Error"]), children

    patched = [run(False), run(True)]
    with patches.PATCHES.stock(StateTaskServiceSfn, "_build_sync2_resolver"):
        stock = [run(False), run(True)]
    assert [o[:2] for o in patched] == [o[:2] for o in stock] == [("SUCCEEDED", {"child": "done"}),
                                                                  ("FAILED", "ChildFailed")]
    # The child found once in process, described once by the task; stock moto described it every 0.5 s.
    assert [o[2] for o in patched] == [2, 2]
    assert min(o[2] for o in stock) >= 4, stock


# --- moto.ec2 without its catalogues ---------------------------------------------------------------------------
EC2_CATALOGUES = """
import json, os, sys
from kaos.local import patches
if sys.argv[1] == "patched":
    patches._import_ec2_without_catalogues()
from moto.ec2.models import amis, ec2_backends, instance_types
from moto.utilities import utils
backend = ec2_backends["123456789012"]["us-east-1"]
print(json.dumps({
    "instance_types": len(instance_types.INSTANCE_TYPES),
    "offerings": sum(len(by_region) for location in instance_types.INSTANCE_TYPE_OFFERINGS.values()
                     for by_region in location.values()),
    "amis": len(backend.amis),
    "loader_restored": amis.load_resource is utils.load_resource is instance_types.load_resource,
    "default_subnets": len(backend.describe_subnets(filters={"default-for-az": ["true"]})),
}))
"""


def _ec2_catalogues(mode: str) -> dict[str, Any]:
    """What moto.ec2 holds once imported in a fresh interpreter (its catalogues are filled at import)."""
    done = subprocess.run([sys.executable, "-c", EC2_CATALOGUES, mode], capture_output=True, text=True, check=True,
                          env={key: value for key, value in os.environ.items() if not key.startswith("MOTO_")})
    return cast(dict[str, Any], json.loads(done.stdout))


def test_ec2_comes_without_catalogues_but_with_its_default_network() -> None:
    held = _ec2_catalogues("patched")
    assert held == {"instance_types": 0, "offerings": 0, "amis": 0, "loader_restored": True,
                    "default_subnets": held["default_subnets"]}
    assert held["default_subnets"] > 0  # what the Fargate compute environment is given (batch_runner)


def test_stock_moto_loads_every_instance_type_offering_and_ami() -> None:
    held = _ec2_catalogues("stock")
    assert held["instance_types"] > 500 and held["offerings"] > 10_000 and held["amis"] > 10


def test_the_stack_does_not_import_the_model_servers_numpy() -> None:
    """The serving runner copies the model server by path and knows its ready line without importing it."""
    from kaos.local import inference_server, serving_runner

    assert serving_runner.SERVER_SOURCE == Path(inference_server.__file__)
    assert serving_runner.LISTENING == inference_server.LISTENING
    probe = ("import sys, kaos.local.stack, kaos.local.emulator, kaos.local.serving_runner; "
             "print('numpy' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_moto_keeps_no_registry_of_every_model_instance(emulator: Emulator) -> None:
    """Items a write replaced and a transaction's copies are freed; stock moto keeps every instance for its
    dashboard, for the process's life."""
    from moto.core.common_models import BaseModel
    from moto.dynamodb.models.dynamo_type import Item

    ddb = emulator.client("dynamodb")
    ddb.create_table(TableName="registry", BillingMode="PAY_PER_REQUEST",
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                     KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])

    def tracked_after_overwrites(times: int) -> int:
        before = len(Item.instances_tracked)  # type: ignore[attr-defined]  # moto's registry
        for i in range(times):
            ddb.put_item(TableName="registry", Item={"pk": {"S": "same"}, "n": {"N": str(i)}})
            ddb.transact_write_items(TransactItems=[{"Put": {"TableName": "registry", "Item": {
                "pk": {"S": "other"}, "n": {"N": str(i)}}}}])
        return len(Item.instances_tracked) - before  # type: ignore[attr-defined]

    assert tracked_after_overwrites(20) == 0
    with patches.PATCHES.stock(BaseModel, "__new__"):
        assert tracked_after_overwrites(20) >= 40
    assert ddb.get_item(TableName="registry", Key={"pk": {"S": "same"}})["Item"]["n"] == {"N": "19"}


# --- botocore's data parsed once for the process -------------------------------------------------------------------
def _session_client(service: str) -> Any:
    import boto3

    return boto3.session.Session().client(service, region_name="us-east-1")  # type: ignore[call-overload]


def _loaders_of_two_sessions() -> tuple[Any, Any]:
    import boto3

    first, second = (boto3.session.Session()._session.get_component("data_loader") for _ in range(2))
    return first, second


def test_the_sessions_and_moto_share_each_model_moto_adds_nothing_to(emulator: Emulator) -> None:
    """SageMaker's model (~9.5 MB of objects) was parsed once by each session that made a client and again by moto's
    dispatch; S3's, to which moto adds its extras, stays moto's own."""
    from moto.core import utils as moto_utils

    first, second = _loaders_of_two_sessions()
    assert first is second
    sagemaker, s3 = _session_client("sagemaker"), _session_client("s3")
    assert moto_utils._load_service_model("sagemaker", "service-2") is sagemaker.meta.service_model._service_description
    moto_s3 = moto_utils._load_service_model("s3", "service-2")
    assert moto_s3 is moto_utils._load_service_model("s3", "service-2")  # moto's copy parsed once, then kept
    # moto's extras are in its copy only (its routing needs them), not in the model the sessions' clients use
    assert moto_s3 != s3.meta.service_model._service_description


def test_stock_moto_and_botocore_parse_each_model_again(emulator: Emulator) -> None:
    from botocore.session import Session
    from moto.core import utils as moto_utils

    with patches.PATCHES.stock(Session, "_register_data_loader"):
        first, second = _loaders_of_two_sessions()
        assert first is not second
    sagemaker = _session_client("sagemaker")
    with patches.PATCHES.stock(moto_utils, "_load_service_model"):
        stock = moto_utils._load_service_model("sagemaker", "service-2")
        assert stock is not sagemaker.meta.service_model._service_description
        assert stock == sagemaker.meta.service_model._service_description
