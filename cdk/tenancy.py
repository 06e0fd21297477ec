"""Per-workspace execution roles (chalicelib/tenancy.py creates them; this is what they may ever be).

The boundary is the ceiling of every workspace role: whatever inline policy the API writes, a workspace role can
touch nothing outside the data bucket's `ws/` prefix, the SageMaker training log group and SageMaker's metric
namespace. The API may create and change roles only under the `/kaos/workspaces/` path and only with this
boundary attached (`iam:PermissionsBoundary` condition), so its IAM rights cannot mint a broader role. The
state machines may pass only those roles, and only to the service that runs user code.
"""
from __future__ import annotations

from aws_cdk import Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk.grants import training_log_group_arn

# SageMaker's log groups of hosted models: /aws/sagemaker/Endpoints/<endpoint name> (kaos names them kaos-*).
ENDPOINT_LOG_GROUP_PREFIX = "/aws/sagemaker/Endpoints/"

ROLE_PATH = "/kaos/workspaces/"
ROLE_NAME_PATTERN = "kaos-ws-*"


class WorkspaceIsolation(Construct):
    def __init__(self, scope: Construct, id_: str, *, bucket: s3.IBucket) -> None:
        super().__init__(scope, id_)
        stack = Stack.of(self)
        self.role_prefix_arn = f"arn:{stack.partition}:iam::{stack.account}:role{ROLE_PATH}"
        self.roles_arn = f"{self.role_prefix_arn}{ROLE_NAME_PATTERN}"
        self.log_group_arn = training_log_group_arn(self)
        self.endpoint_log_groups_arn = (f"arn:{stack.partition}:logs:{stack.region}:{stack.account}:log-group:"
                                        f"{ENDPOINT_LOG_GROUP_PREFIX}kaos-*")
        self.boundary = iam.ManagedPolicy(self, "WorkspaceBoundary", path="/kaos/", statements=[
            iam.PolicyStatement(actions=["s3:GetObject"], resources=[bucket.arn_for_objects("ws/*")]),
            iam.PolicyStatement(actions=["s3:PutObject", "s3:AbortMultipartUpload"],
                                resources=[bucket.arn_for_objects("ws/*/jobs/*/output/*"),
                                           bucket.arn_for_objects("ws/*/endpoints/*/capture/*")]),
            # A served model's container log (SageMaker writes it as the model's execution role).
            iam.PolicyStatement(actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents",
                                         "logs:DescribeLogStreams"],
                                resources=[f"{self.endpoint_log_groups_arn}:*"]),
            iam.PolicyStatement(actions=["s3:ListBucket"], resources=[bucket.bucket_arn],
                                conditions={"StringLike": {"s3:prefix": "ws/*"}}),
            iam.PolicyStatement(actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                                resources=[f"{self.log_group_arn}:log-stream:*"]),
            iam.PolicyStatement(actions=["logs:CreateLogGroup", "logs:DescribeLogStreams"],
                                resources=[f"{self.log_group_arn}:*"]),
            # PutMetricData has no resource-level permissions; the namespace condition narrows it instead.
            iam.PolicyStatement(actions=["cloudwatch:PutMetricData"], resources=["*"],
                                conditions={"StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}}),
        ])

    def grant_manage(self, role: iam.IRole) -> None:
        """Create/update workspace roles (only with the boundary), delete them, read them."""
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["iam:CreateRole", "iam:PutRolePolicy"], resources=[self.roles_arn],
            conditions={"ArnEquals": {"iam:PermissionsBoundary": self.boundary.managed_policy_arn}}))
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["iam:DeleteRolePolicy", "iam:DeleteRole", "iam:GetRole"], resources=[self.roles_arn]))

    def grant_batch_definitions(self, role: iam.IRole, definitions_arn: str, execution_role_arn: str) -> None:
        """Register/deregister each workspace's copy of the Batch job definition (its job role is the workspace
        role; its execution role the stack's), which means passing both roles to ECS tasks."""
        role.add_to_principal_policy(iam.PolicyStatement(
            # DescribeJobDefinitions supports no resource-level permissions.
            actions=["batch:DescribeJobDefinitions"], resources=["*"]))
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["batch:RegisterJobDefinition", "batch:DeregisterJobDefinition"], resources=[definitions_arn]))
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["iam:PassRole"], resources=[self.roles_arn, execution_role_arn],
            conditions={"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}))

    def grant_pass(self, role: iam.IRole, service: str) -> None:
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["iam:PassRole"], resources=[self.roles_arn],
            conditions={"StringEquals": {"iam:PassedToService": service}}))
