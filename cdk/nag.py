"""cdk-nag (AwsSolutions) acknowledgments, each with the reason the finding is accepted.

cdk-nag 3 reports through CDK's policy-validation plugins (`Validations.of(app).add_plugins`): an unacknowledged
finding fails synthesis with a report in `<outdir>/validation-report.json`. Every IAM5 finding is acknowledged one by
one (cdk-nag 3 has no prefix matching), so a new wildcard anywhere fails synth until it is reviewed here.

The SAM resources Chalice generates (`AWS::Serverless::Api`/`Function`) are not inspected by the AwsSolutions pack:
its API Gateway rules (APIG1 access logs, APIG2 request validation, APIG3 WAF, APIG4 authorization, APIG6 execution
logs) match only `AWS::ApiGateway::Stage`/`Method`/`RestApi` constructs, and the one rule that knows
`aws_sam.CfnApi` (APIGWStructuredLogging) is in the Serverless pack only. The API's authorization (AWS_IAM on
every route), throttling, access/execution logs and tracing are asserted by tests/test_cdk.py instead.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aws_cdk import Acknowledgment, Fn, Stack, Validations
from constructs import IConstruct

from cdk.api import ApiGatewayAccount
from cdk.constants import SAGEMAKER_TRAINING_LOG_GROUP

if TYPE_CHECKING:
    from cdk.stack import KaosStack

_PACK = "AwsSolutions::"


def _render(stack: Stack, value: str) -> str:
    """Spell a (possibly tokenized) ARN the way cdk-nag names it in a finding id."""

    def part(p: Any) -> str:
        if isinstance(p, str):
            return p
        if isinstance(p, dict) and set(p) == {"Ref"}:
            return f"<{p['Ref']}>"
        if isinstance(p, dict) and set(p) == {"Fn::GetAtt"}:
            return f"<{p['Fn::GetAtt'][0]}.{p['Fn::GetAtt'][1]}>"
        return json.dumps(p, separators=(",", ":"))

    resolved = stack.resolve(value)
    if isinstance(resolved, dict) and "Fn::Join" in resolved:
        return "".join(part(p) for p in resolved["Fn::Join"][1])
    return part(resolved)


def _ack(construct: IConstruct, findings: dict[str, str]) -> None:
    Validations.of(construct).acknowledge(
        *(Acknowledgment(id=_PACK + rule, reason=reason) for rule, reason in findings.items())
    )


def _wildcard_resource(stack: Stack, arn: str) -> str:
    return f"AwsSolutions-IAM5[Resource::{_render(stack, arn)}]"


def acknowledge_findings(stack: KaosStack) -> None:
    """Acknowledge the accepted findings on the narrowest construct (the role) that raises them."""
    bucket = stack.storage.data_bucket
    training = stack.training
    training_log_group = (
        f"arn:{stack.partition}:logs:{stack.region}:{stack.account}:log-group:{SAGEMAKER_TRAINING_LOG_GROUP}"
    )
    objects = {
        _wildcard_resource(stack, bucket.arn_for_objects("*")): (
            "Object keys are content hashes and job prefixes computed at run time; access is limited to this one "
            "bucket and to Get/Put/AbortMultipartUpload (no delete)."
        )
    }
    training_log_streams = {
        _wildcard_resource(stack, f"{training_log_group}:log-stream:*"): (
            "SageMaker names one log stream per training job at run time (<job>/algo-1-<ts>); the grant is limited "
            "to streams of the fixed /aws/sagemaker/TrainingJobs group."
        )
    }
    training_log_read = {
        _wildcard_resource(stack, f"{training_log_group}:*"): (
            "Reading training logs: FilterLogEvents/DescribeLogStreams are authorized on the log group in its ':*' "
            "form, which also covers GetLogEvents on its streams (named per job at run time); Get/Filter/Describe "
            "only, on the one fixed /aws/sagemaker/TrainingJobs group."
        )
    }
    runtime_version = {
        "AwsSolutions-L1": (
            "python3.12 is pinned on purpose: the asset's wheels are resolved for 3.12 (pip --python-version) and the "
            "Chalice API function uses the same runtime; a newer runtime is a deliberate, tested upgrade."
        )
    }

    isolation = stack.isolation
    workspace_roles = {
        _wildcard_resource(stack, isolation.roles_arn): (
            "One execution role per workspace incarnation, created at run time under the /kaos/workspaces/ path "
            "(kaos-ws-<name>-<hash>); Create/PutRolePolicy only with the workspace boundary attached, PassRole only "
            "to the service that runs user code."
        )
    }
    _ack(
        isolation.boundary,
        {
            **training_log_streams,
            _wildcard_resource(stack, f"{training_log_group}:*"): (
                "logs:DescribeLogStreams/CreateLogGroup are authorized on the log group ARN in its ':*' form; still "
                "the one fixed SageMaker training log group."
            ),
            _wildcard_resource(stack, bucket.arn_for_objects("ws/*")): (
                "The ceiling of every workspace role: reads within ws/ of this bucket only; each role's own policy "
                "narrows it to ws/<its workspace>/."
            ),
            _wildcard_resource(stack, bucket.arn_for_objects("ws/*/jobs/*/output/*")): (
                "The ceiling of every workspace role: writes only job outputs (ws/<workspace>/jobs/<job>/output/...), "
                "named by fingerprint at run time."
            ),
            "AwsSolutions-IAM5[Resource::*]": (
                "cloudwatch:PutMetricData supports no resource-level permissions; the statement is narrowed with a "
                "cloudwatch:namespace condition to /aws/sagemaker/*."
            ),
        },
    )
    _ack(training.state_machine.role, workspace_roles)
    _ack(training.prepare.role, {**objects})
    _ack(training.record.role, {**objects, **training_log_read})
    _ack(training.prepare.function, runtime_version)
    _ack(training.record.function, runtime_version)
    _ack(
        stack.api.role,
        {
            **objects,
            **training_log_read,
            _wildcard_resource(stack, bucket.arn_for_objects("ws/*")): (
                "`kaos workspace kill` deletes every object version under ws/<name>/; names are chosen by users at "
                "run time, and the grant is limited to the ws/ prefix of this one bucket."
            ),
            _wildcard_resource(stack, stack.api.training_jobs_arn): (
                "`kaos train kill` and `kaos workspace kill` stop the job's SageMaker training and wait for it to "
                "end; job names are fingerprints chosen at run time (train-*), and only Stop/DescribeTrainingJob "
                "are granted."
            ),
            **workspace_roles,
            _wildcard_resource(stack, stack.batch.workspace_definitions_arn): (
                "Each workspace's copy of the Batch job definition (job role = the workspace role) is registered "
                "when the workspace is created and deregistered when it is killed: kaos-ws-<name>-<hash>."
            ),
            _wildcard_resource(stack, stack.api.executions_arn): (
                "Execution names are job fingerprints chosen at run time; Describe/Stop/GetExecutionHistory are "
                "limited to executions of the one training state machine."
            ),
        },
    )
    api = stack.api
    if api.account is not None:
        _ack(
            api.account.role,
            {
                _wildcard_resource(stack, ApiGatewayAccount.log_groups_arn(stack)): (
                    "The API Gateway CloudWatch role is one account-wide setting used for the execution and access "
                    "logs of every REST API in this region, whose log group names API Gateway chooses; it is limited "
                    "to log groups of this account and region (no Resource '*', unlike the AWS-managed policy)."
                ),
                "AwsSolutions-IAM5[Resource::*]": (
                    "logs:DescribeLogGroups (part of the AWS-managed AmazonAPIGatewayPushToCloudWatchLogs) takes no "
                    "resource type, so only Resource '*' applies; it lists log group names and nothing else."
                ),
            },
        )
    _ack(
        api.invoke_policy,
        {
            _wildcard_resource(stack, api.invoke_arn): (
                "The policy users attach to call the kaos API: execute-api:Invoke on every method and path of the "
                "one kaos REST API stage (paths carry workspace names chosen at run time; membership is checked "
                "by the app)."
            )
        },
    )
    _ack(
        training.state_machine.role,
        {
            _wildcard_resource(stack, f"{training.prepare.function.function_arn}:*"): (
                "Added by tasks.LambdaInvoke so the state machine may invoke qualified versions/aliases of the "
                "PrepareTraining function; it is still that one function."
            ),
            _wildcard_resource(stack, f"{training.record.function.function_arn}:*"): (
                "Added by tasks.LambdaInvoke so the state machine may invoke qualified versions/aliases of the "
                "RecordOutcome function; it is still that one function."
            ),
            _wildcard_resource(
                stack, f"arn:{stack.partition}:sagemaker:{stack.region}:{stack.account}:training-job/*"
            ): (
                "Training job names are job fingerprints computed at run time; the grant is limited to training jobs "
                "in this account and region (Create/Describe/Stop/AddTags)."
            ),
            "AwsSolutions-IAM5[Resource::*]": (
                "Added by the StateMachine construct for CloudWatch Logs vended delivery (logs:*LogDelivery, "
                "DescribeResourcePolicies, ...) and X-Ray tracing (xray:PutTraceSegments, ...): these actions "
                "support no resource-level permissions."
            ),
        },
    )


def acknowledge_grid_findings(stack: KaosStack) -> None:
    """The grid state machine (a Distributed Map of child training executions) and its two task Lambdas."""
    grid = stack.grid
    bucket = stack.storage.data_bucket
    objects = {
        _wildcard_resource(stack, bucket.arn_for_objects("*")): (
            "Object keys are content hashes and grid ids computed at run time; access is limited to this one "
            "bucket and to Get/Put/AbortMultipartUpload (no delete)."
        )
    }
    runtime_version = {
        "AwsSolutions-L1": "python3.12 is pinned on purpose, as for the training task Lambdas (same asset)."
    }
    for task in (grid.create_point, grid.record):
        _ack(task.role, objects)
        _ack(task.function, runtime_version)
    training_name = Fn.select(6, Fn.split(":", stack.training.state_machine.state_machine_arn))
    grid_name = Fn.select(6, Fn.split(":", grid.state_machine.state_machine_arn))
    executions = f"arn:{stack.partition}:states:{stack.region}:{stack.account}:execution"
    _ack(
        grid.state_machine.role,
        {
            "AwsSolutions-IAM5[Resource::*]": (
                "Added by the StateMachine construct for CloudWatch Logs vended delivery and X-Ray tracing, which "
                "support no resource-level permissions."
            ),
            _wildcard_resource(stack, f"arn:{stack.partition}:s3:::{bucket.bucket_name}/*"): (
                "The Distributed Map's ItemReader reads the grid's points file, whose key holds the grid id chosen "
                "at run time; GetObject on this one bucket only."
            ),
            _wildcard_resource(stack, f"{grid.create_point.function.function_arn}:*"): (
                "Added by tasks.LambdaInvoke so versions/aliases of CreatePoint may be invoked; still that function."
            ),
            _wildcard_resource(stack, f"{grid.record.function.function_arn}:*"): (
                "Added by tasks.LambdaInvoke so versions/aliases of RecordGrid may be invoked; still that function."
            ),
            _wildcard_resource(stack, f"{executions}:{training_name}*"): (
                "startExecution.sync:2 describes and stops the child training executions it starts; their names are "
                "job fingerprints chosen at run time, limited to the one training state machine."
            ),
        },
    )
    _ack(
        grid.state_machine,
        {
            _wildcard_resource(stack, f"{executions}:{grid_name}:*"): (
                "Distributed Map runs each point as a child execution of this same state machine; names are "
                "generated by Step Functions at run time."
            ),
            _wildcard_resource(stack, f"{executions}:{grid_name}/*:*"): (
                "Map Run child executions (<state machine>/<map run>:<child>) are named by Step Functions at run time."
            ),
        },
    )


def acknowledge_batch_findings(stack: KaosStack) -> None:
    """The batch pipeline (cdk/batch.py): Fargate compute, job role, task Lambdas, state machine, API grant."""
    jobs = stack.batch
    bucket = stack.storage.data_bucket
    _ack(
        jobs.state_machine.role,
        {
            _wildcard_resource(stack, jobs.workspace_definitions_arn): (
                "Batch jobs are submitted with their workspace's copy of the job definition (whose job role is the "
                "workspace role), registered at run time when the workspace is created: kaos-ws-<name>-<hash>."
            ),
        },
    )
    objects = {
        _wildcard_resource(stack, bucket.arn_for_objects("*")): (
            "Object keys are content hashes and job prefixes computed at run time; access is limited to this one "
            "bucket and to Get/Put/AbortMultipartUpload (no delete)."
        )
    }
    for task in (jobs.prepare, jobs.record):
        _ack(task.role, objects)
        _ack(task.function, {"AwsSolutions-L1": (
            "python3.12 is pinned on purpose, as for the training task Lambdas (same asset and wheels)."
        )})
    _ack(
        jobs.state_machine.role,
        {
            _wildcard_resource(stack, f"{jobs.prepare.function.function_arn}:*"): (
                "Added by tasks.LambdaInvoke so versions/aliases of PrepareBatch may be invoked; still that function."
            ),
            _wildcard_resource(stack, f"{jobs.record.function.function_arn}:*"): (
                "Added by tasks.LambdaInvoke so versions/aliases of RecordBatch may be invoked; still that function."
            ),
            _wildcard_resource(stack, jobs.jobs_arn): (
                "batch:submitJob.sync submits the job (SubmitJob is authorized on the job it creates too) and "
                "terminates it when the execution is stopped; Batch job ids are assigned at submission. "
                "Submit/TerminateJob only, on jobs of this account and region."
            ),
            "AwsSolutions-IAM5[Resource::*]": (
                "batch:DescribeJobs (polled by the .sync integration) supports no resource-level permissions; the "
                "StateMachine construct adds CloudWatch Logs vended delivery and X-Ray actions, which support none "
                "either."
            ),
        },
    )
    _ack(
        stack.api.role,
        {
            _wildcard_resource(stack, stack.api.batch_executions_arn): (
                "Batch execution names are job fingerprints chosen at run time; Describe/Stop/GetExecutionHistory "
                "are limited to executions of the one batch state machine."
            ),
            _wildcard_resource(stack, stack.api.grid_executions_arn): (
                "`kaos workspace kill` stops the workspace's grids; grid execution names are fingerprints chosen at "
                "run time (grid-*), and only StopExecution on the one grid state machine is granted."
            ),
            _wildcard_resource(stack, stack.api.batch_jobs_arn): (
                "`kaos workspace kill` terminates the Batch jobs of the workspace's batch executions; Batch job ids "
                "are assigned at submission. TerminateJob only, on jobs of this account and region."
            ),
            "AwsSolutions-IAM5[Resource::*]": (
                "batch:DescribeJobs (a kill waits for the Batch jobs it terminated to end) supports no "
                "resource-level permissions."
            ),
        },
    )


def acknowledge_remote_data_findings(stack: KaosStack) -> None:
    """Read access to the buckets an operator lists in `remoteDataBuckets`, for remote data manifests."""
    reason = ("Remote data manifests reference objects by key chosen by users at run time; reads only "
              "(GetObject/GetObjectVersion) on a bucket the operator listed in the remoteDataBuckets context.")
    findings = {_wildcard_resource(stack, arn): reason for arn in stack.remote_data_arns}
    if findings:
        _ack(stack.api.role, findings)
        _ack(stack.training.prepare.role, findings)


def acknowledge_trigger_findings(stack: KaosStack) -> None:
    """S3-triggered retraining (cdk/triggers.py): OnUpload, ProcessBatch and the retrain state machine."""
    triggers = stack.triggers
    bucket = stack.storage.data_bucket
    runtime_version = {
        "AwsSolutions-L1": "python3.12 is pinned on purpose, as for the training task Lambdas (same asset and wheels)."
    }
    for task in (triggers.on_upload, triggers.process):
        _ack(task.function, runtime_version)
    _ack(triggers.process.role, {
        _wildcard_resource(stack, bucket.arn_for_objects("*")): (
            "ProcessBatch writes content-addressed blobs (keys are sha256 digests computed at run time), manifests "
            "and materialized snapshots; Get/Put/AbortMultipartUpload only (no delete), on this one bucket."
        ),
        _wildcard_resource(stack, triggers.incoming_objects_arn): (
            "Incoming files are read at the version their S3 event named (GetObjectVersion); workspace names and "
            "file names are chosen at run time, and the grant is limited to ws/*/incoming/* of this one bucket."
        ),
        _wildcard_resource(stack, triggers.training_executions_arn): (
            "Training execution names are job fingerprints computed at run time; DescribeExecution only (to tell an "
            "idempotent restart from a conflict), on executions of the one training state machine."
        ),
    })
    _ack(triggers.on_upload.role, {
        _wildcard_resource(stack, triggers.retrain_executions_arn): (
            "Retrain execution names are retrain-<workspace>-<batch id>, chosen at run time; DescribeExecution only "
            "(to tell an idempotent restart from a conflict), on executions of the one retrain state machine."
        ),
    })
    _ack(triggers.state_machine.role, {
        _wildcard_resource(stack, f"{triggers.process.function.function_arn}:*"): (
            "Added by tasks.LambdaInvoke so versions/aliases of ProcessBatch may be invoked; still that function."
        ),
        "AwsSolutions-IAM5[Resource::*]": (
            "Added by the StateMachine construct for CloudWatch Logs vended delivery and X-Ray tracing, which "
            "support no resource-level permissions."
        ),
    })
