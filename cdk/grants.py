"""Least-privilege grants spelled out, where the CDK `grant_*` helpers would add wildcard actions or resources."""
from __future__ import annotations

from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3

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
