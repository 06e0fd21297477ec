"""The static IAM check of `make synth` (cdk/check.py): hand-made policies with known mistakes must be flagged, and
their corrected versions must pass, so the check can fail and does not fail for nothing."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cdk.check import (
    IAM_IGNORED_FINDINGS,
    IamFinding,
    arn_matches_format,
    check_iam,
    check_policy,
    placeholder,
    resolve,
    sar_action,
)

ACCOUNT = "arn:aws:logs:us-east-1:123456789012"
GROUP = f"{ACCOUNT}:log-group:/aws/sagemaker/TrainingJobs"
READ_LOGS = ["logs:GetLogEvents", "logs:FilterLogEvents", "logs:DescribeLogStreams"]


def _policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", **s} for s in statements]}


def _counted(findings: list[IamFinding]) -> list[IamFinding]:
    return [f for f in findings if not f.ignored]


def _mismatched_actions(findings: list[IamFinding]) -> set[str]:
    return {f.detail.split(" ", 1)[0] for f in findings if f.kind == "RESOURCE_TYPE_MISMATCH"}


def test_log_group_actions_granted_on_log_streams_are_flagged() -> None:
    # Today's bug: FilterLogEvents/DescribeLogStreams take the log-group type only, GetLogEvents the log-stream type.
    findings = _counted(check_policy(_policy(
        {"Action": READ_LOGS, "Resource": [GROUP, f"{GROUP}:log-stream:*"]}
    )))
    assert _mismatched_actions(findings) == set(READ_LOGS)
    (filter_,) = [f for f in findings if f.kind == "RESOURCE_TYPE_MISMATCH" and "FilterLogEvents" in f.detail]
    assert f"{GROUP}:log-stream:*" in filter_.detail and filter_.statement == 0
    # Nothing in the policy is of the log-group type as IAM sees it (`...:log-group:NAME:*`).
    assert {f.detail.split(" ", 1)[0] for f in findings if f.kind == "REQUIRED_RESOURCE_MISSING"} == {
        "logs:FilterLogEvents", "logs:DescribeLogStreams"
    }


def test_log_stream_grant_alone_is_flagged_for_filter_log_events() -> None:
    findings = _counted(check_policy(_policy({"Action": "logs:FilterLogEvents", "Resource": f"{GROUP}:log-stream:*"})))
    assert {f.kind for f in findings} == {"RESOURCE_TYPE_MISMATCH", "REQUIRED_RESOURCE_MISSING"}


def test_correct_log_read_policy_passes() -> None:
    policy = _policy(
        {"Action": ["logs:FilterLogEvents", "logs:DescribeLogStreams"], "Resource": f"{GROUP}:*"},
        {"Action": "logs:GetLogEvents", "Resource": f"{GROUP}:log-stream:*"},
    )
    assert check_policy(policy) == []


def test_the_log_group_arn_form_matters() -> None:
    # The bare group ARN is not what IAM evaluates log-group actions against; `log-group:*` covers every group.
    assert _mismatched_actions(check_policy(_policy({"Action": "logs:DescribeLogStreams", "Resource": GROUP}))) == {
        "logs:DescribeLogStreams"
    }
    assert check_policy(_policy({"Action": READ_LOGS, "Resource": f"{ACCOUNT}:log-group:*"})) == []


def test_bucket_and_object_types_are_told_apart() -> None:
    findings = check_policy(_policy(
        {"Action": "s3:GetObject", "Resource": "arn:aws:s3:::data"},
        {"Action": "s3:ListBucket", "Resource": "arn:aws:s3:::data/*"},
    ))
    assert _mismatched_actions(findings) == {"s3:GetObject", "s3:ListBucket"}
    assert check_policy(_policy(
        {"Action": ["s3:GetObject", "s3:PutObject"], "Resource": "arn:aws:s3:::data/ws/*"},
        {"Action": "s3:ListBucket", "Resource": "arn:aws:s3:::data"},
    )) == []


def test_item_actions_on_an_index_are_flagged_and_query_is_not() -> None:
    table = "arn:aws:dynamodb:us-east-1:123456789012:table/Kaos"
    findings = check_policy(_policy({"Action": ["dynamodb:GetItem", "dynamodb:Query"],
                                     "Resource": [table, f"{table}/index/gsi1"]}))
    assert _mismatched_actions(findings) == {"dynamodb:GetItem"}
    assert check_policy(_policy({"Action": "dynamodb:Query", "Resource": [table, f"{table}/index/gsi1"]})) == []


def test_action_without_resource_types_needs_star() -> None:
    findings = check_policy(_policy({"Action": "logs:DescribeLogGroups", "Resource": f"{ACCOUNT}:log-group:*"}))
    assert [f.kind for f in _counted(findings)] == ["RESOURCE_TYPE_MISMATCH"]
    assert 'Resource "*" only' in _counted(findings)[0].detail
    assert check_policy(_policy({"Action": "logs:DescribeLogGroups", "Resource": "*"})) == []


def test_required_resource_types_and_their_alternatives() -> None:
    batch = "arn:aws:batch:us-east-1:123456789012"
    queue, definition = f"{batch}:job-queue/q", f"{batch}:job-definition/d:1"
    findings = _counted(check_policy(_policy({"Action": "batch:SubmitJob", "Resource": [queue, definition]})))
    assert [f.kind for f in findings] == ["REQUIRED_RESOURCE_MISSING"]
    assert "batch:SubmitJob requires job " in findings[0].detail
    # (parliament's own RESOURCE_MISMATCH, not counted, also wants a job definition ARN without a revision)
    assert _counted(check_policy(_policy({"Action": "batch:SubmitJob",
                                          "Resource": [queue, definition, f"{batch}:job/*"]}))) == []
    # Split across statements of one policy is as good: each resource of the request is authorized on its own.
    assert _counted(check_policy(_policy({"Action": "batch:SubmitJob", "Resource": [queue, definition]},
                                         {"Action": "batch:SubmitJob", "Resource": f"{batch}:job/*"}))) == []
    # states:DescribeExecution lists execution* and express*: one request names one of them.
    execution = "arn:aws:states:us-east-1:123456789012:execution:Training:*"
    assert _counted(check_policy(_policy({"Action": "states:DescribeExecution", "Resource": execution}))) == []


def test_unknown_action_and_malformed_statements_are_findings() -> None:
    findings = check_policy(_policy({"Action": "logs:FilterLogEvent", "Resource": f"{GROUP}:*"}))
    assert [f.kind for f in findings] == ["parliament:UNKNOWN_ACTION"]
    findings = check_policy({"Version": "2012-10-17", "Statement": [{"Action": "s3:GetObject", "Resource": "*"}]})
    assert "parliament:MALFORMED" in {f.kind for f in findings}
    findings = check_policy(_policy({"NotAction": "iam:*", "Resource": "*"}))
    assert "ALLOW_WITH_NOT_ELEMENT" in {f.kind for f in findings}


def test_resource_star_is_reported_but_not_counted() -> None:
    (star,) = check_policy(_policy({"Action": "s3:GetObject", "Resource": "*"}))
    assert star.kind == "parliament:RESOURCE_STAR" and star.ignored
    assert all(len(reason) > 60 for reason in IAM_IGNORED_FINDINGS.values())


def test_arn_matching() -> None:
    lambda_format = sar_action("lambda:InvokeFunction").types["function"][0]  # type: ignore[union-attr]
    fn = "arn:aws:lambda:us-east-1:123456789012:function:Prepare"
    assert arn_matches_format(fn, lambda_format)
    assert arn_matches_format(f"{fn}:*", lambda_format)  # versions and aliases are of the function type
    assert not arn_matches_format("arn:aws:lambda:us-east-1:123456789012:layer:x", lambda_format)
    execution = sar_action("states:StopExecution").types["execution"][0]  # type: ignore[union-attr]
    machine = "arn:aws:states:us-east-1:123456789012:execution:Grid"
    assert arn_matches_format(f"{machine}:*", execution)
    assert arn_matches_format(f"{machine}/*:*", execution)  # Distributed Map child executions
    assert not arn_matches_format("arn:aws:states:us-east-1:123456789012:stateMachine:Grid", execution)
    assert not arn_matches_format("arn:aws:states:us-east-1:123456789012:execution:Grid", execution)
    log_group = sar_action("logs:FilterLogEvents").types["log-group"][0]  # type: ignore[union-attr]
    assert arn_matches_format(f"{GROUP}:*", log_group)
    assert arn_matches_format("arn:aws:logs:*:*:*", log_group)
    assert not arn_matches_format(f"{GROUP}:log-stream:*", log_group)
    assert not arn_matches_format(GROUP, log_group)


def test_placeholders_are_of_the_resource_type() -> None:
    resources: dict[str, Any] = {
        "Data": {"Type": "AWS::S3::Bucket", "Properties": {}},
        "Logs": {"Type": "AWS::Logs::LogGroup", "Properties": {"LogGroupName": {
            "Fn::Join": ["", ["/kaos/", {"Ref": "AWS::Region"}]]}}},
        "Machine": {"Type": "AWS::StepFunctions::StateMachine", "Properties": {}},
        "Vpc": {"Type": "AWS::EC2::VPC", "Properties": {}},
    }
    assert placeholder("Data", "Arn", resources) == "arn:aws:s3:::data"
    assert placeholder("Logs", "Arn", resources) == "arn:aws:logs:us-east-1:123456789012:log-group:/kaos/us-east-1:*"
    assert resolve({"Fn::Select": [6, {"Fn::Split": [":", {"Ref": "Machine"}]}]}, resources) == "Machine"
    with pytest.raises(ValueError, match="AWS::EC2::VPC"):
        placeholder("Vpc", "Ref", resources)
    with pytest.raises(ValueError, match="unsupported intrinsic"):
        resolve({"Fn::Sub": "${Data}"}, resources)


def _template(tmp_path: Path, resources: dict[str, Any]) -> Path:
    path = tmp_path / "template.json"
    path.write_text(json.dumps({"Resources": resources}))
    return path


def test_check_iam_resolves_intrinsics_and_reads_every_policy_kind(tmp_path: Path) -> None:
    group_arn = {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":logs:", {"Ref": "AWS::Region"}, ":",
                                   {"Ref": "AWS::AccountId"}, ":log-group:/aws/sagemaker/TrainingJobs"]]}
    stream_arn = {"Fn::Join": ["", [group_arn, ":log-stream:*"]]}
    bad = _policy({"Action": READ_LOGS, "Resource": [group_arn, stream_arn]})
    good = _policy({"Action": "logs:FilterLogEvents", "Resource": {"Fn::GetAtt": ["Logs", "Arn"]}})
    resources = {
        "Logs": {"Type": "AWS::Logs::LogGroup", "Properties": {}},
        "Role": {"Type": "AWS::IAM::Role", "Properties": {"Policies": [{"PolicyName": "inline",
                                                                        "PolicyDocument": good}]}},
        "Policy": {"Type": "AWS::IAM::Policy", "Properties": {"PolicyDocument": bad}},
        "Managed": {"Type": "AWS::IAM::ManagedPolicy", "Properties": {"PolicyDocument": good}},
    }
    report = check_iam(_template(tmp_path, resources))
    assert (report.policies, report.statements) == (3, 3)
    assert {f.policy for f in report.findings} == {"Policy"}
    assert _mismatched_actions(report.findings) == set(READ_LOGS)
    assert report.summary().startswith(f"iam-check: 3 policies, 3 statements, {len(report.findings)} findings")

    resources["Policy"]["Properties"]["PolicyDocument"] = good
    assert check_iam(_template(tmp_path, resources)).findings == []
    resources["Policy"]["Properties"]["PolicyDocument"] = _policy(
        {"Action": "s3:GetObject", "Resource": {"Fn::GetAtt": ["Nowhere", "Arn"]}}
    )
    assert [f.kind for f in check_iam(_template(tmp_path, resources)).findings] == ["UNRESOLVED"]
    assert [f.kind for f in check_iam(_template(tmp_path, {"Logs": resources["Logs"]})).findings] == ["EMPTY"]
