"""The data bucket (content-addressed blobs, snapshots, models) and its server access-log bucket."""
from __future__ import annotations

from typing import Any

from aws_cdk import RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct


class Storage(Construct):
    """Two buckets: `data_bucket` (versioned, EventBridge notifications on) and `access_log_bucket`."""

    def __init__(self, scope: Construct, id_: str, *, removal_policy: RemovalPolicy) -> None:
        super().__init__(scope, id_)
        # Both private, encrypted and TLS-only.
        hardened: dict[str, Any] = {"encryption": s3.BucketEncryption.S3_MANAGED,
                                    "block_public_access": s3.BlockPublicAccess.BLOCK_ALL, "enforce_ssl": True,
                                    "removal_policy": removal_policy}
        self.access_log_bucket = s3.Bucket(
            self, "AccessLogs", **hardened, object_ownership=s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
        )
        self.data_bucket = s3.Bucket(
            self, "Data", **hardened, versioned=True, server_access_logs_bucket=self.access_log_bucket,
            server_access_logs_prefix="data/",
        )
        # EventBridge notifications on: Object Created events reach functions/ through EventBridge rules
        # (Chalice cannot package S3 notifications). Set as the bucket's native CloudFormation property rather than
        # `event_bridge_enabled=True`, which CDK implements with a custom-resource Lambda (an extra function with
        # an AWS-managed policy, and a resource the offline loader would have to special-case).
        cfn_bucket = self.data_bucket.node.default_child
        assert isinstance(cfn_bucket, s3.CfnBucket)
        cfn_bucket.notification_configuration = s3.CfnBucket.NotificationConfigurationProperty(
            event_bridge_configuration=s3.CfnBucket.EventBridgeConfigurationProperty(event_bridge_enabled=True)
        )
