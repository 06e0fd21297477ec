"""One IAM role per workspace incarnation: the only identity user code of that workspace ever runs as.

A SageMaker training job has exactly one execution role for its whole life and no per-job session policy, so
what a training script can reach is what its role can reach. AWS's documented pattern for tenant isolation on
SageMaker is a role per tenant, created under a permissions boundary and an IAM path, and passed with an
``iam:PassRole`` limited to that path. kaos creates the role when the workspace is created and deletes it when
the workspace is killed (once its containers have ended); the role name carries the incarnation, so a job of a
killed workspace, whose session names the deleted role, cannot write into a workspace later created under the
same name.

The role may read ``ws/<workspace>/*`` and write only job outputs (``ws/<workspace>/jobs/*/output/*``) and the data
capture of its endpoints (``ws/<workspace>/endpoints/*/capture/*``, written as the model's role): never blobs,
manifests, materialized snapshots, code bundles (``sourcedirs/``) or the ``incoming/`` prefix that drives
auto-retraining. The boundary (written by CDK) caps every such role to ``ws/*`` whatever its inline policy says.
Quotas and eventual consistency: docs/security.md.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from botocore.exceptions import ClientError

from chalicelib.adapters import error_code

ROLE_PATH = "/kaos/workspaces/"
POLICY_NAME = "workspace"
# Trusted by the services that run user code: SageMaker training and Batch (ECS) tasks.
TRUST = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Action": "sts:AssumeRole",
    "Principal": {"Service": ["sagemaker.amazonaws.com", "ecs-tasks.amazonaws.com"]}}]}


def incarnation_token(workspace: str, incarnation: str) -> str:
    """12 hex of a workspace incarnation (name and creation time). Fixed length, so a name pattern `kaos-<token>-*`
    covers one workspace's resources only: a pattern on the workspace name would also match every workspace whose
    name extends it (`kaos-a-*` covers workspace `a-b`'s `kaos-a-b-...`)."""
    return hashlib.sha256(f"{workspace}\n{incarnation}".encode()).hexdigest()[:12]


def role_name(workspace: str, incarnation: str) -> str:
    """``kaos-ws-<workspace>-<12 hex of the incarnation>``: 64 characters at most (IAM's role-name limit)."""
    suffix = hashlib.sha256(incarnation.encode()).hexdigest()[:12]
    return f"kaos-ws-{workspace[:64 - 8 - 13]}-{suffix}"


def role_arn(role_prefix_arn: str, workspace: str, incarnation: str) -> str:
    """``role_prefix_arn`` is ``arn:aws:iam::<account>:role/kaos/workspaces/`` (from CDK)."""
    return f"{role_prefix_arn}{role_name(workspace, incarnation)}"


def policy_document(bucket: str, workspace: str, incarnation: str, log_group_arn: str) -> dict[str, Any]:
    prefix = f"arn:aws:s3:::{bucket}/ws/{workspace}/"
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "ReadOwnWorkspace", "Effect": "Allow", "Action": "s3:GetObject", "Resource": f"{prefix}*"},
        {"Sid": "ListOwnWorkspace", "Effect": "Allow", "Action": "s3:ListBucket",
         "Resource": f"arn:aws:s3:::{bucket}", "Condition": {"StringLike": {"s3:prefix": f"ws/{workspace}/*"}}},
        {"Sid": "WriteJobOutputs", "Effect": "Allow", "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
         "Resource": [f"{prefix}jobs/*/output/*", f"{prefix}endpoints/*/capture/*"]},
        # A served model's container log: SageMaker names the group after the endpoint, kaos-<incarnation token>-...
        # (chalicelib/registry.py hosted_name).
        {"Sid": "EndpointLogs", "Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream",
                                                              "logs:PutLogEvents", "logs:DescribeLogStreams"],
         "Resource": f"{log_group_arn.rsplit(':log-group:', 1)[0]}:log-group:/aws/sagemaker/Endpoints/"
                     f"kaos-{incarnation_token(workspace, incarnation)}-*"},
        {"Sid": "TrainingLogs", "Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
         "Resource": f"{log_group_arn}:log-stream:*"},
        {"Sid": "TrainingLogGroup", "Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:DescribeLogStreams"],
         "Resource": f"{log_group_arn}:*"},
        {"Sid": "Metrics", "Effect": "Allow", "Action": "cloudwatch:PutMetricData", "Resource": "*",
         "Condition": {"StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}}},
    ]}


def job_definition_name(workspace: str, incarnation: str) -> str:
    """The workspace's Batch job definition: Batch takes the job role from the definition, so each workspace has
    its own, a copy of the stack's with the workspace role (named like the role)."""
    return role_name(workspace, incarnation)


class WorkspaceRoles:
    """IAM and Batch: creates and deletes the execution role of a workspace incarnation and the Batch job
    definition that runs its batch jobs under that role (idempotent both ways)."""

    def __init__(self, bucket: str, boundary_arn: str, role_prefix_arn: str, log_group_arn: str,
                 base_job_definition: str = "", *, client: Any, batch_client: Any) -> None:
        self.bucket, self.boundary_arn = bucket, boundary_arn
        self.role_prefix_arn, self.log_group_arn = role_prefix_arn, log_group_arn
        self.base_job_definition = base_job_definition
        self.client, self.batch = client, batch_client

    def _register_job_definition(self, workspace: str, incarnation: str, role: str) -> None:
        """A copy of the stack's definition (image, command, resources, logging, execution role) whose job role is
        the workspace's. Registering again adds a revision; jobs name the definition, so the latest is used."""
        if not self.base_job_definition:
            return
        name = job_definition_name(workspace, incarnation)
        if self.batch.describe_job_definitions(jobDefinitionName=name, status="ACTIVE")["jobDefinitions"]:
            return
        base = self.batch.describe_job_definitions(jobDefinitions=[self.base_job_definition])["jobDefinitions"][0]
        container = {**base["containerProperties"], "jobRoleArn": role}
        copied = {key: base[key] for key in ("parameters", "retryStrategy", "timeout", "platformCapabilities",
                                             "propagateTags") if key in base}
        self.batch.register_job_definition(jobDefinitionName=name, type=base["type"], containerProperties=container,
                                           **copied)

    def _deregister_job_definitions(self, workspace: str, incarnation: str) -> None:
        if not self.base_job_definition:
            return
        name = job_definition_name(workspace, incarnation)
        for definition in self.batch.describe_job_definitions(jobDefinitionName=name,
                                                              status="ACTIVE")["jobDefinitions"]:
            self.batch.deregister_job_definition(jobDefinition=definition["jobDefinitionArn"])

    def ensure(self, workspace: str, incarnation: str) -> str:
        name = role_name(workspace, incarnation)
        try:
            self.client.create_role(RoleName=name, Path=ROLE_PATH, AssumeRolePolicyDocument=json.dumps(TRUST),
                                    PermissionsBoundary=self.boundary_arn, MaxSessionDuration=43200,
                                    Description=f"kaos workspace {workspace} (incarnation {incarnation})")
        except ClientError as exc:
            if error_code(exc) != "EntityAlreadyExists":
                raise
        self.client.put_role_policy(RoleName=name, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(
            policy_document(self.bucket, workspace, incarnation, self.log_group_arn)))
        arn = role_arn(self.role_prefix_arn, workspace, incarnation)
        self._register_job_definition(workspace, incarnation, arn)
        return arn

    def delete(self, workspace: str, incarnation: str) -> None:
        self._deregister_job_definitions(workspace, incarnation)
        name = role_name(workspace, incarnation)
        # IAM refuses to delete a role that still has inline policies: the policy first. Both are idempotent.
        try:
            self.client.delete_role_policy(RoleName=name, PolicyName=POLICY_NAME)
        except ClientError as exc:
            if error_code(exc) != "NoSuchEntity":
                raise
        try:
            self.client.delete_role(RoleName=name)
        except ClientError as exc:
            if error_code(exc) != "NoSuchEntity":
                raise
