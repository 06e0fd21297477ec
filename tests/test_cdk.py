"""Intent of the synthesized CDK app (cdk/): assertions on the template, never on logical ids.

Synthesis goes through the cached `cdk.synth.synthesize` (one real synth per stage and source change, ~6-15 s cold,
milliseconds when cached), so the task-Lambda bundling and the Chalice packaging are covered too.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Match, Template

from cdk import api
from cdk.check import check_iam, resolve
from cdk.constants import REPO_ROOT
from cdk.synth import synthesize
from chalicelib import config
from chalicelib.errors import Transient, names

SYNTH_DIR = REPO_ROOT / ".cache" / "cdk-test"
ENV_NAMES = {v for k, v in vars(config).items() if k.isupper() and isinstance(v, str)}


def _synth(stage: str) -> tuple[Path, dict[str, Any]]:
    return _synth_with({"stage": stage}, stage)


def _synth_with(context: dict[str, str], name: str | None = None) -> tuple[Path, dict[str, Any]]:
    outdir = SYNTH_DIR / (name or "-".join(f"{k}-{v}" for k, v in sorted(context.items())))
    path = synthesize(outdir, context)
    return path, json.loads(path.read_text())


@pytest.fixture(scope="module")
def shared_account() -> dict[str, Any]:
    """A dev stack in an account whose API Gateway logging role is someone else's, reading two remote data
    buckets: one synth (40-90 s on a clean clone) for the two tests of those settings."""
    context = {"stage": "dev", "apiGatewayAccount": "false", "remoteDataBuckets": "corp-datasets,shared-ml"}
    return _synth_with(context)[1]


@pytest.fixture(scope="module")
def dev() -> tuple[Path, dict[str, Any]]:
    return _synth("dev")


@pytest.fixture(scope="module")
def prod() -> tuple[Path, dict[str, Any]]:
    return _synth("prod")


@pytest.fixture(scope="module", params=["dev", "prod"])
def any_stage(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The Resources of each stage: hardening must not depend on the stage."""
    res: dict[str, Any] = request.getfixturevalue(request.param)[1]["Resources"]
    return res


@pytest.fixture(scope="module")
def template(dev: tuple[Path, dict[str, Any]]) -> Template:
    return Template.from_json(dev[1])


@pytest.fixture(scope="module")
def resources(dev: tuple[Path, dict[str, Any]]) -> dict[str, Any]:
    res: dict[str, Any] = dev[1]["Resources"]
    return res


def _of_type(resources: dict[str, Any], type_: str) -> dict[str, Any]:
    return {k: v for k, v in resources.items() if v["Type"] == type_}


@pytest.fixture(scope="module")
def definition(resources: dict[str, Any]) -> dict[str, Any]:
    machines = _of_type(resources, "AWS::StepFunctions::StateMachine")
    (machine,) = [m for logical_id, m in machines.items() if logical_id.startswith("TrainingTraining")]
    parsed: dict[str, Any] = json.loads(resolve(machine["Properties"]["DefinitionString"], resources))
    return parsed


def _statements(resources: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for res in resources.values():
        if res["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            out += res["Properties"]["PolicyDocument"]["Statement"]
        if res["Type"] == "AWS::IAM::Role":
            for policy in res["Properties"].get("Policies", []):
                out += policy["PolicyDocument"]["Statement"]
    return out


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --- storage


def test_data_bucket_is_private_encrypted_versioned_logged_and_eventbridge_enabled(template: Template) -> None:
    template.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "BucketEncryption": {
                "ServerSideEncryptionConfiguration": [{"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True,
                "BlockPublicPolicy": True,
                "IgnorePublicAcls": True,
                "RestrictPublicBuckets": True,
            },
            "VersioningConfiguration": {"Status": "Enabled"},
            "NotificationConfiguration": {"EventBridgeConfiguration": {"EventBridgeEnabled": True}},
            "LoggingConfiguration": {"DestinationBucketName": Match.any_value()},
        },
    )


def test_every_bucket_is_encrypted_blocked_and_tls_only(any_stage: dict[str, Any]) -> None:
    resources = any_stage
    buckets = _of_type(resources, "AWS::S3::Bucket")
    assert len(buckets) == 2  # data + its access logs
    for bucket in buckets.values():
        assert "BucketEncryption" in bucket["Properties"]
        assert len(bucket["Properties"]["PublicAccessBlockConfiguration"]) == 4
        assert all(bucket["Properties"]["PublicAccessBlockConfiguration"].values())
    # The data bucket (the versioned one) logs every access to the other bucket.
    (data,) = [b for b in buckets.values() if b["Properties"].get("VersioningConfiguration")]
    (log_bucket_id,) = [k for k, b in buckets.items() if b is not data]
    assert data["Properties"]["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": log_bucket_id}
    tls_only = set()
    for policy in _of_type(resources, "AWS::S3::BucketPolicy").values():
        for st in policy["Properties"]["PolicyDocument"]["Statement"]:
            if st["Effect"] == "Deny" and st.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}:
                tls_only.add(policy["Properties"]["Bucket"]["Ref"])
    assert tls_only == set(buckets)


def test_no_custom_resource_lambdas(resources: dict[str, Any]) -> None:
    # The offline loader creates resources through boto3: custom resources (and their handler Lambdas) would need
    # special cases. EventBridge notifications are the bucket's native property for that reason.
    assert not [r for r in resources.values() if r["Type"].startswith("Custom::")]
    # Two task Lambdas each for training, grids, batch jobs, auto-retrain (OnUpload, ProcessBatch) and deployments;
    # the API function is the SAM one.
    assert len(_of_type(resources, "AWS::Lambda::Function")) == 10


# --- table


def test_table_schema_matches_the_pynamodb_models(template: Template) -> None:
    template.resource_count_is("AWS::DynamoDB::Table", 1)
    template.has_resource_properties(
        "AWS::DynamoDB::Table",
        {
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            "BillingMode": "PAY_PER_REQUEST",
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
            "GlobalSecondaryIndexes": [
                {
                    "IndexName": "gsi1",
                    "KeySchema": [
                        {"AttributeName": "gsi1pk", "KeyType": "HASH"},
                        {"AttributeName": "gsi1sk", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
        },
    )


def test_pynamodb_models_use_the_same_names() -> None:
    from chalicelib import tables

    source = Path(tables.__file__).read_text()
    for name in ('"gsi1"', "pk = UnicodeAttribute(hash_key=True)", "sk = UnicodeAttribute(range_key=True)",
                 "gsi1pk = UnicodeAttribute(hash_key=True)", "gsi1sk = UnicodeAttribute(range_key=True)"):
        assert name in source


# --- state machine


def test_state_machine_is_standard_jsonpath_logged_and_traced(template: Template, definition: dict[str, Any]) -> None:
    template.has_resource_properties(
        "AWS::StepFunctions::StateMachine",
        {
            "StateMachineType": "STANDARD",
            "LoggingConfiguration": Match.object_like({"Level": "ALL"}),
            "TracingConfiguration": {"Enabled": True},
        },
    )
    assert definition.get("QueryLanguage", "JSONPath") == "JSONPath"
    assert "JSONata" not in json.dumps(definition)


def test_train_is_a_sync_sagemaker_task_with_retry_and_catch(definition: dict[str, Any]) -> None:
    states = definition["States"]
    sync = ":states:::sagemaker:createTrainingJob.sync"
    (train,) = [s for s in states.values() if s.get("Resource", "").endswith(sync)]
    assert train["Parameters"]["TrainingJobName.$"] == "$.prepared.training.TrainingJobName"
    assert {"InputDataConfig.$", "RoleArn.$", "AlgorithmSpecification.$"} <= set(train["Parameters"])
    assert train["Retry"] and all(r["JitterStrategy"] == "FULL" for r in train["Retry"])
    assert train["Catch"] == [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "RecordFailure"}]
    assert train["ResultPath"] == "$.trained"


def test_flow_prepare_train_record(definition: dict[str, Any]) -> None:
    states = definition["States"]
    assert definition["StartAt"] == "Prepare"
    assert states["Prepare"]["Next"] == "Train"
    assert states["Prepare"]["ResultPath"] == "$.prepared"
    assert states["Prepare"]["Catch"][0]["Next"] == "RecordFailure"
    assert states["Train"]["Next"] == "RecordSuccess"
    assert states["RecordSuccess"]["Parameters"]["outcome"] == "Completed"
    assert states[states["RecordSuccess"]["Next"]]["Type"] == "Succeed"
    assert states["RecordFailure"]["Parameters"] == {
        "workspace.$": "$.workspace", "job_id.$": "$.job_id", "execution.$": "$$.Execution.Id",
        "outcome": "Failed", "error.$": "$.error",
    }
    # A failure to record success is itself recorded, so no job stays TRAINING.
    assert states["RecordSuccess"]["Catch"][0]["Next"] == "RecordFailure"
    assert states["RecordFailure"]["Next"] == "TrainingFailed"
    assert states["TrainingFailed"]["Type"] == "Fail"
    for name in ("Prepare", "RecordSuccess", "RecordFailure"):
        (retry,) = states[name]["Retry"]
        assert "Lambda.TooManyRequestsException" in retry["ErrorEquals"]
        assert (retry["IntervalSeconds"], retry["BackoffRate"], retry["MaxAttempts"]) == (2, 2, 6)


# Each pipeline's failure path: the record step (a task Lambda), its last-resort DynamoDB update, the terminal Fail
# state, the row's sort key template and the statuses the row may still be in.
FAILURE_PATHS = {
    "TrainingTraining": ("RecordFailure", "MarkJobFailed", "TrainingFailed", "JOB#{}", ["SUBMITTED", "TRAINING"]),
    "BatchBatch": ("RecordFailure", "MarkJobFailed", "BatchFailed", "JOB#{}", ["SUBMITTED", "RUNNING"]),
    "GridGrid": ("RecordGridFailure", "MarkGridFailed", "GridFailed", "GRID#{}", ["RUNNING"]),
    "TriggersRetrain": ("RecordBatchFailure", "MarkBatchFailed", "RetrainFailed", "PENDING#{}", ["OPEN", "CLOSED"]),
    "ServingDeployment": ("RecordFailure", "MarkEndpointFailed", "DeploymentFailed", "ENDPOINT#{}",
                          ["Creating", "Updating"]),
}


def _machines(resources: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """State machines by logical-id prefix (FAILURE_PATHS keys): (logical id, resolved definition)."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for logical_id, res in _of_type(resources, "AWS::StepFunctions::StateMachine").items():
        (prefix,) = [p for p in FAILURE_PATHS if logical_id.startswith(p)]
        out[prefix] = (logical_id, json.loads(resolve(res["Properties"]["DefinitionString"], resources)))
    return out


def _task_states(states: dict[str, Any]) -> dict[str, Any]:
    """Every Task state, including those inside Map/Parallel states."""
    out: dict[str, Any] = {}
    for name, state in states.items():
        if state["Type"] == "Task":
            out[name] = state
        for nested in [state.get("ItemProcessor") or state.get("Iterator") or {}, *state.get("Branches", [])]:
            out.update(_task_states(nested.get("States", {})))
    return out


def test_every_record_step_is_retried_and_caught(resources: dict[str, Any]) -> None:
    # A record step that fails for good must still end the run and move its row out of a running status: no job,
    # grid or retrain batch may be left TRAINING/RUNNING/OPEN by a failing record step.
    machines = _machines(resources)
    assert set(machines) == set(FAILURE_PATHS)
    for _, definition in machines.values():
        records = {n: s for n, s in _task_states(definition["States"]).items() if n.startswith("Record")}
        assert records
        for name, state in records.items():
            assert state.get("Retry"), name
            assert [c["ErrorEquals"] for c in state.get("Catch", [])] == [["States.ALL"]], name


@pytest.mark.parametrize("prefix", list(FAILURE_PATHS))
def test_failing_record_step_falls_back_to_a_direct_update_then_fails(prefix: str, resources: dict[str, Any]) -> None:
    record, mark, fail, sort_key, running = FAILURE_PATHS[prefix]
    logical_id, definition = _machines(resources)[prefix]
    states = definition["States"]
    assert states[record]["Next"] == fail and states[fail]["Type"] == "Fail"
    (retry,) = states[record]["Retry"]  # the Lambda retry is kept
    assert "Lambda.TooManyRequestsException" in retry["ErrorEquals"]
    assert states[record]["Catch"] == [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.recordError", "Next": mark}]
    fallback = states[mark]
    assert fallback["Resource"] == "arn:aws:states:::dynamodb:updateItem"
    # Whatever the update does (applied, refused by its condition, failed), the run ends in the Fail state.
    assert fallback["Next"] == fail
    assert fallback["Catch"] == [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.markError", "Next": fail}]
    assert fallback["Retry"] and fallback["ResultPath"] is None
    params = fallback["Parameters"]
    (table_id,) = _of_type(resources, "AWS::DynamoDB::Table")
    assert params["TableName"] == resolve({"Ref": table_id}, resources)
    assert params["Key"]["pk"] == {"S.$": "States.Format('WS#{}', $.workspace)"}
    assert params["Key"]["sk"]["S.$"].startswith(f"States.Format('{sort_key}', $.")
    values = params["ExpressionAttributeValues"]
    assert values[":failed"] == {"S": "FAILED"} and params["ExpressionAttributeNames"]["#status"] == "status"
    assert params["UpdateExpression"].startswith("SET #status = :failed")
    # Only a row still running is changed, and only by the execution that is its current attempt (where rows say).
    assert params["ConditionExpression"].startswith("#status IN (")
    assert sorted(v["S"] for k, v in values.items() if k.startswith(":running")) == sorted(running)
    if "#execution" in params["ExpressionAttributeNames"]:
        assert values[":execution"] == {"S.$": "$$.Execution.Id"}
    # The state machine's role may make that update.
    role = resources[logical_id]["Properties"]["RoleArn"]["Fn::GetAtt"][0]
    updates = [st for res in _of_type(resources, "AWS::IAM::Policy").values()
               if {"Ref": role} in res["Properties"]["Roles"]
               for st in res["Properties"]["PolicyDocument"]["Statement"]
               if "dynamodb:UpdateItem" in _as_list(st["Action"])]
    assert [resolve(st["Resource"], resources) for st in updates] == [
        resolve({"Fn::GetAtt": [table_id, "Arn"]}, resources)
    ]


def test_application_transients_are_retried_before_any_catch(resources: dict[str, Any]) -> None:
    """A throttled write or a lost conditional-check race in a task Lambda (chalicelib.errors.Transient) is retried
    before the state's Catch sends the run to RecordFailure: one DynamoDB throttle in Record must not fail a
    finished training. A Lambda reports the concrete class, so every subclass is listed by name."""
    transient = set(names(Transient))
    assert {"Throttled", "ConcurrentUpdate"} <= transient
    lambda_states = 0
    for prefix, (_, definition) in _machines(resources).items():
        for name, state in _task_states(definition["States"]).items():
            if ":lambda:" in state["Resource"]:
                lambda_states += 1
                retried = {error for retry in state["Retry"] for error in retry["ErrorEquals"]}
                assert transient <= retried, (prefix, name)
                assert "States.ALL" not in retried, (prefix, name)  # a retry never swallows a real failure
    # Prepare/RecordSuccess/RecordFailure of training, batch and deployment, CreatePointJob and the grid's two,
    # Process and its record step.
    assert lambda_states == 14


def test_a_queued_retrain_batch_waits_as_long_as_the_batch_ahead_may_take(resources: dict[str, Any]) -> None:
    """Bug 7: BatchNotReady was retried for ~4 minutes in total while the batch ahead may run its window, a 15 minute
    ProcessBatch and the training it starts; the queued batch then ended FAILED and its files were never retrained."""
    from chalicelib.triggers import MAX_WINDOW_SECONDS, BatchNotReady, BatchStillFilling

    from cdk.constants import DEFAULT_TRAINING_MAX_RUNTIME_SECONDS

    _, definition = _machines(resources)["TriggersRetrain"]
    process = definition["States"]["Process"]
    (not_ready,) = [r for r in process["Retry"] if r["ErrorEquals"] == [BatchNotReady.__name__]]
    cap = not_ready.get("MaxDelaySeconds", float("inf"))
    waits = [min(not_ready["IntervalSeconds"] * not_ready["BackoffRate"] ** i, cap)
             for i in range(not_ready["MaxAttempts"])]
    assert sum(waits) >= DEFAULT_TRAINING_MAX_RUNTIME_SECONDS + MAX_WINDOW_SECONDS + 15 * 60
    # Each retry is ~5 history events: far below the 25,000 events of one Standard execution.
    assert not_ready["MaxAttempts"] * 5 < 25_000
    assert [BatchStillFilling.__name__] in [r["ErrorEquals"] for r in process["Retry"]]


def test_job_fallback_runs_on_the_embedded_interpreter(resources: dict[str, Any]) -> None:
    """MarkJobFailed, as synthesized, on moto's Step Functions interpreter (the embedded stack's): it marks the job
    FAILED with the reason and bumps its version; a finished job, or one another execution owns, is left alone."""
    import time

    import boto3
    from moto import mock_aws

    _, definition = _machines(resources)["TrainingTraining"]
    mark = definition["States"]["MarkJobFailed"]
    table = mark["Parameters"]["TableName"]
    probe = {"StartAt": "MarkJobFailed", "States": {
        "MarkJobFailed": {**mark, "Next": "Marked", "Catch": [{**mark["Catch"][0], "Next": "Refused"}]},
        "Marked": {"Type": "Succeed"}, "Refused": {"Type": "Fail", "Error": "Refused"},
    }}
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        ddb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                         KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                                    {"AttributeName": "sk", "KeyType": "RANGE"}],
                         AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                               {"AttributeName": "sk", "AttributeType": "S"}])
        role = boto3.client("iam", region_name="us-east-1").create_role(
            RoleName="sfn", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        sfn = boto3.client("stepfunctions", region_name="us-east-1")
        machine = sfn.create_state_machine(name="Training", definition=json.dumps(probe), roleArn=role)
        executions = machine["stateMachineArn"].replace(":stateMachine:", ":execution:")

        def run(job: str, status: str, owner: str) -> tuple[str, dict[str, Any]]:
            key = {"pk": {"S": "WS#ws"}, "sk": {"S": f"JOB#{job}"}}
            ddb.put_item(TableName=table, Item={**key, "status": {"S": status}, "version": {"N": "3"},
                                                "execution_arn": {"S": f"{executions}:{owner}"}})
            arn = sfn.start_execution(stateMachineArn=machine["stateMachineArn"], name=job, input=json.dumps({
                "workspace": "ws", "job_id": job, "error": {"Error": "States.TaskFailed", "Cause": "boom"},
                "recordError": {"Error": "Lambda.Unknown", "Cause": "record failed"},
            }))["executionArn"]
            for _ in range(100):
                outcome = sfn.describe_execution(executionArn=arn)["status"]
                if outcome != "RUNNING":
                    break
                time.sleep(0.05)
            return outcome, ddb.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]

        outcome, item = run("train-1", "TRAINING", "train-1")
        assert outcome == "SUCCEEDED" and item["status"] == {"S": "FAILED"} and item["version"] == {"N": "4"}
        assert item["failure_reason"]["S"].startswith("States.TaskFailed; recording it failed with Lambda.Unknown")
        assert item["ended_at"] == item["updated_at"]
        outcome, item = run("train-2", "COMPLETED", "train-2")
        assert outcome == "FAILED" and item["status"] == {"S": "COMPLETED"} and item["version"] == {"N": "3"}
        outcome, item = run("train-3", "TRAINING", "a-resumed-attempt")
        assert outcome == "FAILED" and item["status"] == {"S": "TRAINING"}


def test_state_machine_role_can_run_sagemaker_sync(resources: dict[str, Any]) -> None:
    actions = {a for st in _statements(resources) for a in _as_list(st["Action"])}
    assert {"sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob", "sagemaker:StopTrainingJob",
            "events:PutTargets", "events:PutRule", "events:DescribeRule", "iam:PassRole"} <= actions
    # PassRole only of workspace roles (cdk/tenancy.py), and only to the service that runs them.
    passes = {json.dumps(st["Condition"], sort_keys=True): st for st in _statements(resources)
              if st["Action"] == "iam:PassRole"}
    assert set(passes) == {json.dumps({"StringEquals": {"iam:PassedToService": service}}, sort_keys=True)
                           for service in ("sagemaker.amazonaws.com", "ecs-tasks.amazonaws.com")}
    for statement in passes.values():
        for resource in _as_list(statement["Resource"]):
            rendered = json.dumps(resource)
            assert "kaos/workspaces/kaos-ws-*" in rendered or "BatchContainerExecutionRole" in rendered, rendered


# --- functions and API


def test_task_lambdas(template: Template, resources: dict[str, Any]) -> None:
    for handler, env, timeout in (
        # PrepareTraining passes the workspace's own execution role (cdk/tenancy.py), named from the prefix.
        ("functions.prepare_training.handler", config.COMPONENTS["prepare_training"], 300),
        ("functions.record_outcome.handler", config.COMPONENTS["record_outcome"], 120),
    ):
        (fn,) = [f for f in _of_type(resources, "AWS::Lambda::Function").values()
                 if f["Properties"]["Handler"] == handler]
        props = fn["Properties"]
        assert props["Runtime"] == "python3.12"
        assert (props["Timeout"], props["MemorySize"]) == (timeout, 512)
        assert set(props["Environment"]["Variables"]) == env


def test_task_lambda_asset_holds_both_packages_and_requirements(dev: tuple[Path, dict[str, Any]]) -> None:
    outdir = dev[0].parent
    (fn,) = [f for f in _of_type(dev[1]["Resources"], "AWS::Lambda::Function").values()
             if f["Properties"]["Handler"] == "functions.prepare_training.handler"]
    asset = outdir / fn["Metadata"]["aws:asset:path"]
    assert (asset / "functions" / "prepare_training.py").is_file()
    assert (asset / "functions" / "record_outcome.py").is_file()
    assert (asset / "chalicelib" / "config.py").is_file()
    assert (asset / "pynamodb").is_dir()


def test_api_function_env_and_role(resources: dict[str, Any]) -> None:
    (api,) = _of_type(resources, "AWS::Serverless::Function").values()
    props = api["Properties"]
    assert props["Handler"] == "app.app"
    assert props["Runtime"] == "python3.12"
    assert props["Environment"]["Variables"][config.TRAINING_INSTANCE_TYPE] == "ml.m5.large"
    assert props["Environment"]["Variables"][config.TRAINING_MAX_RUNTIME_SECONDS] == "86400"
    assert {config.BUCKET, config.TABLE, config.TRAINING_STATE_MACHINE_ARN, config.TRAINING_IMAGE} <= set(
        props["Environment"]["Variables"]
    )
    assert "Fn::GetAtt" in props["Role"]  # the CDK role, not a chalice-managed one
    (rest,) = _of_type(resources, "AWS::Serverless::Api").values()
    assert rest["Properties"]["EndpointConfiguration"] == "REGIONAL"


# --- API: authorization, throttling, logs (cdk-nag's AwsSolutions pack does not inspect AWS::Serverless::Api, so
# these tests are the check: see cdk/nag.py)

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "x-amazon-apigateway-any-method"}
# Routes that may be called without AWS_IAM (SigV4) authorization, each with the reason: none. Every route of the
# kaos API requires a signed request; an exception has to be argued here.
UNAUTHENTICATED_ROUTES: dict[tuple[str, str], str] = {
    ("/openapi.json", "GET"): "the API description is public so tools can read it before they have credentials; "
    "it holds no data and is generated from code",
}


@pytest.fixture(scope="module")
def rest_api(resources: dict[str, Any]) -> dict[str, Any]:
    (api,) = _of_type(resources, "AWS::Serverless::Api").values()
    props: dict[str, Any] = api["Properties"]
    return props


def _operations(swagger: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, item in swagger["paths"].items()
        for method, op in item.items()
        if method.lower() in HTTP_METHODS
    ]


def _requires_sigv4(op: dict[str, Any], definitions: dict[str, Any]) -> bool:
    """AWS_IAM authorization, as chalice's IAMAuthorizer emits it (`security: [{sigv4: []}]` with a `sigv4`
    securityDefinition of authtype awsSigv4) or as the `x-amazon-apigateway-auth` extension spells it."""
    if str(op.get("x-amazon-apigateway-auth", {}).get("type", "")).upper() == "AWS_IAM":
        return True
    security = op.get("security")
    if not security:
        return False

    def sigv4(name: str) -> bool:
        scheme: dict[str, Any] = definitions.get(name, {})
        return bool(scheme.get("x-amazon-apigateway-authtype") == "awsSigv4" and scheme.get("type") == "apiKey"
                and scheme.get("name") == "Authorization" and scheme.get("in") == "header")

    # Swagger security is a list of alternatives (any one suffices): each alternative must include SigV4, and an
    # empty alternative ({}) would admit anonymous callers.
    return all(requirement and any(sigv4(name) for name in requirement) for requirement in security)


def test_every_route_requires_aws_iam_authorization(rest_api: dict[str, Any]) -> None:
    swagger = rest_api["DefinitionBody"]
    operations = _operations(swagger)
    assert len(operations) >= 11  # the routes of app/app.py; guards against a vacuous pass on an empty document
    definitions = swagger.get("securityDefinitions", {})
    unauthenticated = [
        f"{method.upper()} {path}"
        for path, method, op in operations
        if not _requires_sigv4(op, definitions) and (path, method.upper()) not in UNAUTHENTICATED_ROUTES
    ]
    assert not unauthenticated, f"routes without AWS_IAM authorization: {unauthenticated}"
    # SAM must not override the document's authorization with an API-wide default.
    assert "Auth" not in rest_api


def test_api_stage_is_throttled(rest_api: dict[str, Any]) -> None:
    settings = rest_api["MethodSettings"]
    (everything,) = [m for m in settings if (m["ResourcePath"], m["HttpMethod"]) == ("/*", "*")]
    assert (everything["ThrottlingRateLimit"], everything["ThrottlingBurstLimit"]) == (
        api.THROTTLING_RATE_LIMIT, api.THROTTLING_BURST_LIMIT
    )
    # Under the account-level default (10,000 rps, burst 5,000), and a burst at least the rate.
    assert 0 < api.THROTTLING_RATE_LIMIT <= api.THROTTLING_BURST_LIMIT <= 5_000
    # Starting a training run is throttled harder, on a route that exists (a renamed route would silently lose it).
    paths = {(p, m) for p, m, _ in _operations(rest_api["DefinitionBody"])}
    overrides = [m for m in settings if m is not everything]
    assert overrides
    for setting in overrides:
        path = setting["ResourcePath"][1:].replace("~1", "/")
        assert setting["ResourcePath"].startswith("/~1")
        assert (path, setting["HttpMethod"].lower()) in paths, setting
        assert setting["ThrottlingRateLimit"] < everything["ThrottlingRateLimit"]
        assert setting["ThrottlingBurstLimit"] < everything["ThrottlingBurstLimit"]
    for setting in settings:
        assert setting["LoggingLevel"] in ("ERROR", "INFO")  # execution logs on
        assert setting["DataTraceEnabled"] is False  # never request/response bodies in logs
        assert setting["MetricsEnabled"] is True


def test_api_access_and_execution_logs_are_on_with_retention(
    rest_api: dict[str, Any], resources: dict[str, Any]
) -> None:
    groups = _of_type(resources, "AWS::Logs::LogGroup")
    access = rest_api["AccessLogSetting"]
    (group_id, attribute) = access["DestinationArn"]["Fn::GetAtt"]
    assert attribute == "Arn" and groups[group_id]["Properties"]["RetentionInDays"] == 30
    fields = json.loads(access["Format"])  # one JSON object per request
    assert {"requestId", "userArn", "ip", "httpMethod", "resourcePath", "status"} <= set(fields)
    # API Gateway's own execution log group is created by the stack, so it has a retention too.
    (api_id,) = _of_type(resources, "AWS::Serverless::Api")
    execution = [g for g in groups.values() if g["Properties"].get("LogGroupName") == {
        "Fn::Join": ["", ["API-Gateway-Execution-Logs_", {"Ref": api_id}, f"/{api.API_GATEWAY_STAGE}"]]
    }]
    assert len(execution) == 1 and execution[0]["Properties"]["RetentionInDays"] == 30
    assert rest_api["TracingEnabled"] is True


def test_api_gateway_account_role_is_set_before_the_stage(resources: dict[str, Any]) -> None:
    # Stage logging needs the region's API Gateway CloudWatch role; the stage waits for it.
    (account_id, account), = _of_type(resources, "AWS::ApiGateway::Account").items()
    (api_res,) = _of_type(resources, "AWS::Serverless::Api").values()
    assert account_id in _as_list(api_res.get("DependsOn", []))
    role = resources[account["Properties"]["CloudWatchRoleArn"]["Fn::GetAtt"][0]]
    assert not role["Properties"].get("ManagedPolicyArns")  # not AmazonAPIGatewayPushToCloudWatchLogs (Resource *)
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "apigateway.amazonaws.com"
    }


def test_invoke_policy_grants_only_execute_api_on_the_stage(resources: dict[str, Any]) -> None:
    # The managed policies: this one and the workspace roles' permissions boundary (cdk/tenancy.py).
    (policy,) = [p for p in _of_type(resources, "AWS::IAM::ManagedPolicy").values()
                 if "execute-api:Invoke" in json.dumps(p["Properties"]["PolicyDocument"])]
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Action"] == "execute-api:Invoke"
    (api_id,) = _of_type(resources, "AWS::Serverless::Api")
    parts = statement["Resource"]["Fn::Join"][1]
    assert {"Ref": api_id} in parts and parts[-1] == f"/{api.API_GATEWAY_STAGE}/*/*"


def test_the_account_role_can_be_left_to_the_account(shared_account: dict[str, Any]) -> None:
    resources = shared_account["Resources"]
    assert not _of_type(resources, "AWS::ApiGateway::Account")
    (api_res,) = _of_type(resources, "AWS::Serverless::Api").values()
    assert "DependsOn" not in api_res
    assert api_res["Properties"]["AccessLogSetting"]


def test_every_env_var_name_comes_from_chalicelib_config(resources: dict[str, Any]) -> None:
    for res in resources.values():
        if res["Type"] in ("AWS::Lambda::Function", "AWS::Serverless::Function"):
            assert set(res["Properties"]["Environment"]["Variables"]) <= ENV_NAMES


def test_outputs(dev: tuple[Path, dict[str, Any]]) -> None:
    assert {"ApiUrl", "BucketName", "TableName", "TrainingStateMachineArn", "InvokePolicyArn"} <= set(
        dev[1]["Outputs"]
    )


# --- least privilege, logs, nag


# Every action allowed on Resource "*", each with the reason; anything else on "*" fails the test, and an entry
# no statement uses any more fails too (the list stays the exact set of exceptions).
STAR_RESOURCE_ALLOWED: dict[str, str] = {
    "cloudwatch:PutMetricData": "no resource-level permissions; SageMaker role, narrowed by a cloudwatch:namespace "
    "condition to /aws/sagemaker/*",
    **dict.fromkeys(
        ("logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery", "logs:DeleteLogDelivery",
         "logs:ListLogDeliveries", "logs:PutResourcePolicy", "logs:DescribeResourcePolicies", "logs:DescribeLogGroups"),
        "state machine role: CloudWatch Logs vended log delivery (added by sfn.StateMachine for LogOptions); these "
        "actions take no resource ARN (DescribeLogGroups is also the API Gateway CloudWatch role's, as in "
        "AmazonAPIGatewayPushToCloudWatchLogs)",
    ),
    **dict.fromkeys(
        ("xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules", "xray:GetSamplingTargets"),
        "state machine role: X-Ray tracing (tracing_enabled=True); X-Ray has no resource-level permissions",
    ),
    "batch:DescribeJobDefinitions": "API role: reads the stack's job definition to copy it per workspace "
                                    "(chalicelib/tenancy.py); it has no resource-level permissions.",
    "batch:DescribeJobs": "batch state machine role: batch:submitJob.sync polls DescribeJobs, which has no "
    "resource-level permissions",
    "cloudwatch:GetMetricData": "API role: an endpoint's cost reads its invocation metrics (chalicelib/costs.py); "
    "GetMetricData takes no resource ARN",
}


def test_no_star_resource_except_allow_listed(resources: dict[str, Any]) -> None:
    on_star: set[str] = set()
    for st in _statements(resources):
        assert "NotResource" not in st and "NotAction" not in st, st
        if "*" in _as_list(st.get("Resource", [])):
            assert st["Effect"] == "Allow", st
            for action in _as_list(st["Action"]):
                assert action in STAR_RESOURCE_ALLOWED, f"{action} on Resource '*' is not allow-listed: {st}"
                on_star.add(action)
    assert on_star == set(STAR_RESOURCE_ALLOWED), "allow-list entries no statement needs any more"
    (metrics,) = [st for st in _statements(resources) if st["Action"] == "cloudwatch:PutMetricData"]
    assert metrics["Condition"] == {"StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}}


def test_static_iam_check_is_clean(dev: tuple[Path, dict[str, Any]], prod: tuple[Path, dict[str, Any]]) -> None:
    # The check `make synth` runs (cdk/check.py, docs/security.md): every action on a resource type it takes.
    for template, _ in (dev, prod):
        report = check_iam(template)
        # 19 policies: the shared SageMaker and Batch job roles are gone (per-workspace roles are made at run time).
        assert report.policies >= 19 and not report.findings, "\n".join(map(str, report.findings))


def test_no_managed_policies_and_no_sagemaker_full_access(resources: dict[str, Any]) -> None:
    for role in _of_type(resources, "AWS::IAM::Role").values():
        assert not role["Properties"].get("ManagedPolicyArns")
    assert "AmazonSageMakerFullAccess" not in json.dumps(resources)


def test_log_retention_everywhere(any_stage: dict[str, Any]) -> None:
    resources = any_stage
    groups = _of_type(resources, "AWS::Logs::LogGroup")
    assert groups and all(g["Properties"].get("RetentionInDays") == 30 for g in groups.values())
    for res in resources.values():
        if res["Type"] in ("AWS::Lambda::Function", "AWS::Serverless::Function"):
            assert res["Properties"]["LoggingConfig"]["LogGroup"]["Ref"] in groups


def test_cdk_nag_clean_and_every_acknowledgment_has_a_reason(dev: tuple[Path, dict[str, Any]]) -> None:
    report = json.loads((dev[0].parent / "validation-report.json").read_text())
    (nag,) = [p for p in report["pluginReports"] if p["pluginName"] == "AwsSolutions"]
    assert nag["conclusion"] == "success" and not nag["violations"]
    assert all(len(s["reason"]) > 40 for s in nag["suppressedViolations"])


def test_dev_is_disposable(resources: dict[str, Any]) -> None:
    (table,) = _of_type(resources, "AWS::DynamoDB::Table").values()
    assert table["DeletionPolicy"] == "Delete"
    assert not table["Properties"].get("DeletionProtectionEnabled")


def test_prod_retains_data_and_protects_the_table(prod: tuple[Path, dict[str, Any]]) -> None:
    (table,) = _of_type(prod[1]["Resources"], "AWS::DynamoDB::Table").values()
    assert table["Properties"]["DeletionProtectionEnabled"] is True
    assert table["Properties"]["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["DeletionPolicy"] == "Retain"
    assert table["UpdateReplacePolicy"] == "Retain"
    for bucket in _of_type(prod[1]["Resources"], "AWS::S3::Bucket").values():
        assert bucket["DeletionPolicy"] == "Retain"
        assert bucket["UpdateReplacePolicy"] == "Retain"


def test_prod_is_cdk_nag_clean(prod: tuple[Path, dict[str, Any]]) -> None:
    report = json.loads((prod[0].parent / "validation-report.json").read_text())
    (nag,) = [p for p in report["pluginReports"] if p["pluginName"] == "AwsSolutions"]
    assert nag["conclusion"] == "success" and not nag["violations"]



def test_remote_data_buckets_are_readable_only_when_listed(shared_account: dict[str, Any]) -> None:
    statements = [st for r in shared_account["Resources"].values() if r["Type"] == "AWS::IAM::Policy"
                  for st in r["Properties"]["PolicyDocument"]["Statement"]]
    reads = [st for st in statements if st["Action"] == ["s3:GetObject", "s3:GetObjectVersion"]]
    # The API role (pins versions), PrepareTraining and PrepareBatch (copy them into a job's inputs).
    assert len(reads) == 3
    resources = json.dumps([st["Resource"] for st in reads])
    assert "corp-datasets/*" in resources and "shared-ml/*" in resources and ":::*" not in resources


def test_default_training_image_comes_from_the_image_catalogue() -> None:
    from cdk.constants import default_training_image

    # The SDK's catalogue covers far more regions than a hand-kept table, and the SDK's code is never imported.
    assert default_training_image("us-east-1") == (
        "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.4-2-cpu-py3"
    )
    assert default_training_image("eu-west-3").endswith(".dkr.ecr.eu-west-3.amazonaws.com/"
                                                        "sagemaker-scikit-learn:1.4-2-cpu-py3")
    with pytest.raises(ValueError, match="trainingImage"):
        default_training_image("xx-nowhere-1")
    import sys

    assert not any(name == "sagemaker" or name.startswith("sagemaker.") for name in sys.modules)
