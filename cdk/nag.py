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

from aws_cdk import Acknowledgment, Stack, Validations
from constructs import IConstruct

from cdk.api import ApiGatewayAccount
from cdk.grants import executions_arn, training_log_group_arn
from cdk.lambdas import TaskFunction

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


# The Resource::* statements every StateMachine construct adds for its logs and tracing.
_LOGS_AND_TRACING = (
    "the StateMachine construct adds CloudWatch Logs vended delivery (logs:*LogDelivery, DescribeResourcePolicies, "
    "...) and X-Ray tracing (xray:PutTraceSegments, ...) actions, which support no resource-level permissions."
)


def _invoked(stack: Stack, *functions: TaskFunction) -> dict[str, str]:
    """The `<function ARN>:*` grants tasks.LambdaInvoke adds to a state machine's role."""
    return {
        _wildcard_resource(stack, f"{task.function.function_arn}:*"): (
            f"Added by tasks.LambdaInvoke so the state machine may invoke qualified versions/aliases of the "
            f"{task.node.id} function; it is still that one function."
        )
        for task in functions
    }


def _objects(stack: KaosStack, keys: str) -> dict[str, str]:
    """Get/Put on any object of the data bucket (grants.grant_bucket_read_write), whose keys are made at run time."""
    return {
        _wildcard_resource(stack, stack.storage.data_bucket.arn_for_objects("*")): (
            f"Object keys are {keys} computed at run time; access is limited to this one bucket and to "
            "Get/Put/AbortMultipartUpload (no delete)."
        )
    }


def acknowledge_task_functions(stack: KaosStack) -> None:
    """Every task Lambda (cdk/lambdas.py) runs the runtime the asset's wheels are built for."""
    for construct in stack.node.find_all():
        if isinstance(construct, TaskFunction):
            _ack(construct.function, {"AwsSolutions-L1": (
                "python3.12 is pinned on purpose: the asset's wheels are resolved for 3.12 (pip --python-version) "
                "and the Chalice API function uses the same runtime; a newer runtime is a deliberate, tested upgrade."
            )})


def acknowledge_findings(stack: KaosStack) -> None:
    """Acknowledge the accepted findings on the narrowest construct (the role) that raises them."""
    bucket = stack.storage.data_bucket
    training = stack.training
    training_log_group = training_log_group_arn(stack)
    objects = _objects(stack, "content hashes and job prefixes")
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
            **{
                _wildcard_resource(stack, arn): (
                    f"{kind.capitalize()} execution names are job fingerprints chosen at run time; Describe/Stop/"
                    f"GetExecutionHistory are limited to executions of the one {kind} state machine."
                )
                for kind, arn in (("training", stack.api.executions_arn), ("batch", stack.api.batch_executions_arn))
            },
            _wildcard_resource(stack, stack.api.grid_executions_arn): (
                "`kaos workspace kill` stops the workspace's grids; grid execution names are fingerprints chosen at "
                "run time (grid-*), and only StopExecution on the one grid state machine is granted."
            ),
            _wildcard_resource(stack, stack.api.batch_jobs_arn): (
                "`kaos workspace kill` terminates the Batch jobs of the workspace's batch executions; Batch job ids "
                "are assigned at submission. TerminateJob only, on jobs of this account and region."
            ),
            "AwsSolutions-IAM5[Resource::*]": (
                "batch:DescribeJobs (a kill waits for the Batch jobs it terminated to end) and "
                "cloudwatch:GetMetricData (an endpoint's cost reads its invocation metrics) support no "
                "resource-level permissions."
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
            **_invoked(stack, training.prepare, training.record),
            _wildcard_resource(
                stack, f"arn:{stack.partition}:sagemaker:{stack.region}:{stack.account}:training-job/*"
            ): (
                "Training job names are job fingerprints computed at run time; the grant is limited to training jobs "
                "in this account and region (Create/Describe/Stop/AddTags)."
            ),
            "AwsSolutions-IAM5[Resource::*]": f"Added by the StateMachine construct: {_LOGS_AND_TRACING}",
        },
    )


def acknowledge_grid_findings(stack: KaosStack) -> None:
    """The grid state machine (a Distributed Map of child training executions) and its two task Lambdas."""
    grid = stack.grid
    bucket = stack.storage.data_bucket
    for task in (grid.create_point, grid.record):
        _ack(task.role, _objects(stack, "content hashes and grid ids"))
    _ack(
        grid.state_machine.role,
        {
            "AwsSolutions-IAM5[Resource::*]": f"Added by the StateMachine construct: {_LOGS_AND_TRACING}",
            _wildcard_resource(stack, f"arn:{stack.partition}:s3:::{bucket.bucket_name}/*"): (
                "The Distributed Map's ItemReader reads the grid's points file, whose key holds the grid id chosen "
                "at run time; GetObject on this one bucket only."
            ),
            **_invoked(stack, grid.create_point, grid.record),
            _wildcard_resource(stack, executions_arn(stack.training.state_machine, "*")): (
                "startExecution.sync:2 describes and stops the child training executions it starts; their names are "
                "job fingerprints chosen at run time, limited to the one training state machine."
            ),
        },
    )
    _ack(
        grid.state_machine,
        {
            _wildcard_resource(stack, executions_arn(grid.state_machine)): (
                "Distributed Map runs each point as a child execution of this same state machine; names are "
                "generated by Step Functions at run time."
            ),
            _wildcard_resource(stack, executions_arn(grid.state_machine, "/*:*")): (
                "Map Run child executions (<state machine>/<map run>:<child>) are named by Step Functions at run time."
            ),
        },
    )


def acknowledge_batch_findings(stack: KaosStack) -> None:
    """The batch pipeline (cdk/batch.py): Fargate compute, job role, task Lambdas, state machine, API grant."""
    jobs = stack.batch
    _ack(
        jobs.state_machine.role,
        {
            _wildcard_resource(stack, jobs.workspace_definitions_arn): (
                "Batch jobs are submitted with their workspace's copy of the job definition (whose job role is the "
                "workspace role), registered at run time when the workspace is created: kaos-ws-<name>-<hash>."
            ),
        },
    )
    for task in (jobs.prepare, jobs.record):
        _ack(task.role, _objects(stack, "content hashes and job prefixes"))
    _ack(
        jobs.state_machine.role,
        {
            **_invoked(stack, jobs.prepare, jobs.record),
            _wildcard_resource(stack, jobs.jobs_arn): (
                "batch:submitJob.sync submits the job (SubmitJob is authorized on the job it creates too) and "
                "terminates it when the execution is stopped; Batch job ids are assigned at submission. "
                "Submit/TerminateJob only, on jobs of this account and region."
            ),
            "AwsSolutions-IAM5[Resource::*]": (
                f"batch:DescribeJobs (polled by the .sync integration) supports no resource-level permissions; "
                f"{_LOGS_AND_TRACING}"
            ),
        },
    )


def acknowledge_remote_data_findings(stack: KaosStack) -> None:
    """Read access to the buckets an operator lists in `remoteDataBuckets`, for remote data manifests."""
    reason = ("Remote data manifests reference objects by key chosen by users at run time; reads only "
              "(GetObject/GetObjectVersion) on a bucket the operator listed in the remoteDataBuckets context.")
    findings = {_wildcard_resource(stack, arn): reason for arn in stack.remote_data_arns}
    if findings:
        for role in (stack.api.role, stack.training.prepare.role, stack.batch.prepare.role):
            _ack(role, findings)


def acknowledge_trigger_findings(stack: KaosStack) -> None:
    """S3-triggered retraining (cdk/triggers.py): OnUpload, ProcessBatch and the retrain state machine."""
    triggers = stack.triggers
    _ack(triggers.process.role, {
        **_objects(stack, "the sha256 digests of content-addressed blobs, manifests and materialized snapshots"),
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
        **_invoked(stack, triggers.process),
        "AwsSolutions-IAM5[Resource::*]": f"Added by the StateMachine construct: {_LOGS_AND_TRACING}",
    })


def acknowledge_serving_findings(stack: KaosStack) -> None:
    """Serving (cdk/serving.py): the deployment state machine, its task Lambdas, the API's serving grants and the
    workspace boundary's serving statements."""
    serving = stack.serving
    endpoints = {
        _wildcard_resource(stack, arn): (
            f"SageMaker {kind} names are derived from fingerprints at run time (chalicelib/serving.py); the grant is "
            f"limited to {kind}s named kaos-* in this account and region."
        )
        for kind, arn in (("endpoint", serving.endpoints_arn), ("endpoint config", serving.configs_arn),
                          ("model", serving.models_arn))
    }
    alarms = {_wildcard_resource(stack, serving.alarms_arn): (
        "Each real-time endpoint's rollout alarm is named after its endpoint (kaos-...-5xx) at run time; "
        "Put/DeleteAlarms only, on alarms named kaos-*."
    )}
    log_read = {_wildcard_resource(stack, f"{serving.log_groups_arn}:*"): (
        "SageMaker writes each endpoint's log to /aws/sagemaker/Endpoints/<endpoint>, named at run time; reads "
        "only (Get/Filter/DescribeLogStreams), on the groups of kaos-* endpoints."
    )}
    _ack(serving.prepare.role, {**_objects(stack, "content hashes and code bundles"), **endpoints, **alarms})
    _ack(serving.record.role, {**_objects(stack, "content hashes"), **endpoints})
    _ack(serving.state_machine.role, {
        **_invoked(stack, serving.prepare, serving.record), **endpoints,
        _wildcard_resource(stack, stack.isolation.roles_arn): (
            "Models run as their workspace's execution role (created at run time under /kaos/workspaces/); "
            "PassRole only to sagemaker.amazonaws.com."
        ),
        "AwsSolutions-IAM5[Resource::*]": f"Added by the StateMachine construct: {_LOGS_AND_TRACING}",
    })
    _ack(stack.api.role, {
        **endpoints, **alarms, **log_read,
        _wildcard_resource(stack, serving.package_groups_arn): (
            "One Model Package Group per kaos model group, named kaos-<incarnation token>-<workspace>-<group>-<hash> "
            "at run time; Create/DescribeModelPackageGroup only."
        ),
        _wildcard_resource(stack, serving.packages_arn): (
            "Model Package versions of kaos-* groups, numbered by SageMaker at registration; Create/"
            "UpdateModelPackage (approval status) only."
        ),
        _wildcard_resource(stack, serving.api_executions_arn): (
            "Deployment execution names are deployment fingerprints chosen at run time; Describe/StopExecution "
            "only, on executions of the one deployment state machine."
        ),
    })
    _ack(stack.isolation.boundary, {
        _wildcard_resource(stack, stack.storage.data_bucket.arn_for_objects("ws/*/endpoints/*/capture/*")): (
            "The ceiling of every workspace role: an endpoint's data capture (written by SageMaker as the model's "
            "execution role) under ws/<workspace>/endpoints/<name>/capture/, named at run time."
        ),
        _wildcard_resource(stack, f"{serving.log_groups_arn}:*"): (
            "SageMaker writes an endpoint's container log as the model's execution role, to "
            "/aws/sagemaker/Endpoints/<endpoint> (named at run time); kaos-* endpoints only."
        ),
    })


def acknowledge_all(stack: KaosStack) -> None:
    """Every acknowledged finding of the built stack (cdk/app.py, before synth runs cdk-nag)."""
    for acknowledge in (acknowledge_findings, acknowledge_batch_findings, acknowledge_grid_findings,
                        acknowledge_remote_data_findings, acknowledge_trigger_findings, acknowledge_task_functions,
                        acknowledge_serving_findings):
        acknowledge(stack)
