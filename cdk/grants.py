"""Least-privilege grants spelled out, where the CDK `grant_*` helpers would add wildcard actions or resources."""
from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Fn, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from constructs import IConstruct

from cdk.constants import SAGEMAKER_TRAINING_LOG_GROUP
from cdk.table import GSI1

# Blobs are content-addressed and rows append-only: only workspace deletion (the API) deletes objects, by its
# own grant below.
_OBJECT_ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"]
_BUCKET_ACTIONS = ["s3:ListBucket", "s3:GetBucketLocation"]
# Item actions take the table resource type only; Query also takes the index type (a Query of `gsi1` is authorized on
# `table/T/index/gsi1`). The static IAM check (cdk/check.py) flags an action granted on a type it does not take.
_TABLE_ACTIONS = [
    "dynamodb:GetItem",
    "dynamodb:BatchGetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:BatchWriteItem",
    "dynamodb:ConditionCheckItem",
    "dynamodb:DescribeTable",
]
_INDEX_ACTIONS = ["dynamodb:Query"]
# Reading a log group's events: FilterLogEvents and DescribeLogStreams take the log-group type, which IAM evaluates as
# `arn:...:log-group:NAME:*`; GetLogEvents takes the log-stream type (`...:log-group:NAME:log-stream:STREAM`), which
# the same pattern covers. Neither the bare group ARN nor `...:log-stream:*` covers the log-group actions.
_LOG_READ_ACTIONS = ["logs:GetLogEvents", "logs:FilterLogEvents", "logs:DescribeLogStreams"]


@dataclass(frozen=True)
class DataStores:
    """The data bucket and the table: what every pipeline's task Lambdas and the API read and write."""

    bucket: s3.IBucket
    table: dynamodb.ITable

    def grant_read_write(self, *grantees: iam.IGrantable) -> None:
        for grantee in grantees:
            grant_table_read_write(self.table, grantee)
            grant_bucket_read_write(self.bucket, grantee)


def grant_bucket_read_write(bucket: s3.IBucket, grantee: iam.IGrantable) -> None:
    """Get/Put objects under any key (keys are content hashes made at run time) and list the bucket."""
    iam.Grant.add_to_principal(
        grantee=grantee, actions=_OBJECT_ACTIONS, resource_arns=[bucket.arn_for_objects("*")]
    )
    iam.Grant.add_to_principal(grantee=grantee, actions=_BUCKET_ACTIONS, resource_arns=[bucket.bucket_arn])


def grant_table_read_write(table: dynamodb.ITable, grantee: iam.IGrantable) -> None:
    """Item reads/writes on the table, queries on the table and on `gsi1` only (no Scan, no streams)."""
    iam.Grant.add_to_principal(grantee=grantee, actions=_TABLE_ACTIONS, resource_arns=[table.table_arn])
    iam.Grant.add_to_principal(
        grantee=grantee, actions=_INDEX_ACTIONS, resource_arns=[table.table_arn, f"{table.table_arn}/index/{GSI1}"]
    )


def log_group_pattern(log_group_arn: str) -> str:
    """`arn:...:log-group:NAME` -> `arn:...:log-group:NAME:*`: the group as IAM sees it, and every stream in it."""
    return f"{log_group_arn}:*"


def grant_log_read(log_group_arn: str, grantee: iam.IGrantable) -> None:
    """Read the events of one log group (`log_group_arn` is the bare `arn:...:log-group:NAME`)."""
    iam.Grant.add_to_principal(
        grantee=grantee, actions=_LOG_READ_ACTIONS, resource_arns=[log_group_pattern(log_group_arn)]
    )


def grant_workspace_deletion(bucket: s3.IBucket, grantee: iam.IGrantable) -> None:
    """`kaos workspace kill` removes every version under `ws/<name>/` of the versioned bucket."""
    iam.Grant.add_to_principal(
        grantee=grantee, actions=["s3:DeleteObject", "s3:DeleteObjectVersion"],
        resource_arns=[bucket.arn_for_objects("ws/*")],
    )
    iam.Grant.add_to_principal(grantee=grantee, actions=["s3:ListBucketVersions"], resource_arns=[bucket.bucket_arn])


def training_log_group_arn(scope: IConstruct) -> str:
    """The bare ARN of SageMaker's fixed training log group in the stack's account and region."""
    stack = Stack.of(scope)
    return f"arn:{stack.partition}:logs:{stack.region}:{stack.account}:log-group:{SAGEMAKER_TRAINING_LOG_GROUP}"


def executions_arn(state_machine: sfn.IStateMachine, names: str = ":*") -> str:
    """The ARN pattern of executions of `state_machine`: `arn:...:execution:<state machine name><names>`.

    `names` follows the state machine's name: ":*" every execution, ":grid-*" those named so, "/*:*" the child
    executions of its Distributed Map runs. The name is the 7th field of the state machine's ARN."""
    stack = Stack.of(state_machine)
    name = Fn.select(6, Fn.split(":", state_machine.state_machine_arn))
    return f"arn:{stack.partition}:states:{stack.region}:{stack.account}:execution:{name}{names}"


def grant_sync_rule(state_machine: sfn.StateMachine, rule: str) -> None:
    """A `.sync` integration learns that its job ended through a managed EventBridge rule it creates on first use."""
    stack = Stack.of(state_machine)
    state_machine.add_to_role_policy(iam.PolicyStatement(
        actions=["events:PutTargets", "events:PutRule", "events:DescribeRule"],
        resources=[f"arn:{stack.partition}:events:{stack.region}:{stack.account}:rule/{rule}"],
    ))


def grant_start(state_machine: sfn.IStateMachine, grantee: iam.IGrantable) -> str:
    """Start executions of `state_machine` and describe them (starting is idempotent by name: an execution of the
    same name is described to tell a retry from a conflict); returns the executions' ARN pattern."""
    state_machine.grant_start_execution(grantee)
    executions = executions_arn(state_machine)
    iam.Grant.add_to_principal(grantee=grantee, actions=["states:DescribeExecution"], resource_arns=[executions])
    return executions
