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

from cdk.check import resolve
from cdk.constants import REPO_ROOT
from cdk.synth import synthesize
from chalicelib import config

SYNTH_DIR = REPO_ROOT / ".cache" / "cdk-test"
ENV_NAMES = {v for k, v in vars(config).items() if k.isupper() and isinstance(v, str)}


def _synth(stage: str) -> tuple[Path, dict[str, Any]]:
    path = synthesize(SYNTH_DIR / stage, {"stage": stage})
    return path, json.loads(path.read_text())


@pytest.fixture(scope="module")
def dev() -> tuple[Path, dict[str, Any]]:
    return _synth("dev")


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
    (machine,) = _of_type(resources, "AWS::StepFunctions::StateMachine").values()
    parsed: dict[str, Any] = json.loads(resolve(machine["Properties"]["DefinitionString"], resources))
    return parsed


def _statements(resources: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for res in resources.values():
        if res["Type"] == "AWS::IAM::Policy":
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


def test_every_bucket_is_encrypted_blocked_and_tls_only(resources: dict[str, Any]) -> None:
    buckets = _of_type(resources, "AWS::S3::Bucket")
    assert len(buckets) == 2  # data + its access logs
    for bucket in buckets.values():
        assert "BucketEncryption" in bucket["Properties"]
        assert all(bucket["Properties"]["PublicAccessBlockConfiguration"].values())
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
    assert len(_of_type(resources, "AWS::Lambda::Function")) == 2


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
    from chalicelib import models

    source = Path(models.__file__).read_text()
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
        "workspace.$": "$.workspace", "job_id.$": "$.job_id", "outcome": "Failed", "error.$": "$.error"
    }
    assert states["RecordFailure"]["Next"] == "TrainingFailed"
    assert states["TrainingFailed"]["Type"] == "Fail"
    for name in ("Prepare", "RecordSuccess", "RecordFailure"):
        (retry,) = states[name]["Retry"]
        assert "Lambda.TooManyRequestsException" in retry["ErrorEquals"]
        assert (retry["IntervalSeconds"], retry["BackoffRate"], retry["MaxAttempts"]) == (2, 2, 6)


def test_state_machine_role_can_run_sagemaker_sync(resources: dict[str, Any]) -> None:
    actions = {a for st in _statements(resources) for a in _as_list(st["Action"])}
    assert {"sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob", "sagemaker:StopTrainingJob",
            "events:PutTargets", "events:PutRule", "events:DescribeRule", "iam:PassRole"} <= actions
    (pass_role,) = [st for st in _statements(resources) if st["Action"] == "iam:PassRole"]
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}


# --- functions and API


def test_task_lambdas(template: Template, resources: dict[str, Any]) -> None:
    for handler, env, timeout in (
        ("functions.prepare_training.handler", {config.BUCKET, config.TABLE, config.SAGEMAKER_ROLE_ARN}, 300),
        ("functions.record_outcome.handler", {config.BUCKET, config.TABLE}, 120),
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


def test_every_env_var_name_comes_from_chalicelib_config(resources: dict[str, Any]) -> None:
    for res in resources.values():
        if res["Type"] in ("AWS::Lambda::Function", "AWS::Serverless::Function"):
            assert set(res["Properties"]["Environment"]["Variables"]) <= ENV_NAMES


def test_outputs(dev: tuple[Path, dict[str, Any]]) -> None:
    assert {"ApiUrl", "BucketName", "TableName", "TrainingStateMachineArn"} <= set(dev[1]["Outputs"])


# --- least privilege, logs, nag


# The only statements allowed on Resource "*": services without resource-level permissions.
STAR_ALLOWED_PREFIXES = ("cloudwatch:PutMetricData", "xray:", "logs:CreateLogDelivery", "logs:GetLogDelivery",
                         "logs:UpdateLogDelivery", "logs:DeleteLogDelivery", "logs:ListLogDeliveries",
                         "logs:PutResourcePolicy", "logs:DescribeResourcePolicies", "logs:DescribeLogGroups")


def test_no_star_resource_except_documented(resources: dict[str, Any]) -> None:
    for st in _statements(resources):
        if "*" in _as_list(st.get("Resource", [])):
            for action in _as_list(st["Action"]):
                assert action.startswith(STAR_ALLOWED_PREFIXES), st
    (metrics,) = [st for st in _statements(resources) if st["Action"] == "cloudwatch:PutMetricData"]
    assert "Condition" in metrics


def test_no_managed_policies_and_no_sagemaker_full_access(resources: dict[str, Any]) -> None:
    for role in _of_type(resources, "AWS::IAM::Role").values():
        assert not role["Properties"].get("ManagedPolicyArns")
    assert "AmazonSageMakerFullAccess" not in json.dumps(resources)


def test_log_retention_everywhere(resources: dict[str, Any]) -> None:
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


def test_prod_retains_data_and_protects_the_table() -> None:
    _, prod = _synth("prod")
    (table,) = _of_type(prod["Resources"], "AWS::DynamoDB::Table").values()
    assert table["Properties"]["DeletionProtectionEnabled"] is True
    assert table["DeletionPolicy"] == "Retain"
    for bucket in _of_type(prod["Resources"], "AWS::S3::Bucket").values():
        assert bucket["DeletionPolicy"] == "Retain"
