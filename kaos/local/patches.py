"""Patches to moto 5.2.5 internals that make the offline emulation faithful.

Every patch is listed in ``PATCH_POINTS`` (``module.attribute``) and is applied by :func:`apply`
and undone by :func:`remove`, through :class:`kaos.local.patching.Patches`: a target moto renamed (or an added
attribute moto now defines) fails the start loudly, and so does a moto version outside ``MOTO_VERSIONS``.
Patches are process-global (moto's backends are process-global),
so only one :class:`kaos.local.emulator.Emulator` is active at a time; the patches call back into
it through the :class:`Hooks` passed to :func:`apply`.

Patched integrations (each has a contract test in ``tests/test_emulator_contract.py``; S3 -> EventBridge key
encoding, the Batch runner hook, the DynamoDB locks and the EC2 catalogues in
``tests/test_patches_contract.py``, which also runs each on stock moto to show it fails there):

- Lambda invoke (direct, Step Functions ``lambda:invoke`` / legacy Lambda ARNs, S3 notifications,
  EventBridge Lambda targets) dispatches to in-process handlers.
- EventBridge rule targets of type Lambda and Step Functions are delivered.
- Step Functions ``_normalise_parameters`` / ``_normalise_response`` map PascalCase parameters onto
  the botocore operation model and back, and turn datetimes into ISO-8601 strings.
- Step Functions ``sagemaker:*`` optimised integration, with ``.sync`` for training, processing,
  transform and tuning jobs.
- SageMaker ``CreateTrainingJob`` runs a real local training; ``StopTrainingJob`` is added.
- Fault injection (e.g. ``ThrottlingException``) in front of any moto action.
- Batch jobs (``batch_simple``, no Docker) run their command locally (:mod:`kaos.local.batch_runner`).
- SageMaker hosting: endpoints served by local model servers, UpdateEndpoint, InvokeEndpoint
  (:mod:`kaos.local.patches_serving`, its own PATCH_POINTS).
- moto.ec2 (imported by Batch, whose Fargate compute environment needs only its default network) without its
  instance type catalogues and public AMIs: ~1 s of every start and ~60 MB resident.
- botocore's data files are parsed once for the process: its sessions share one loader, and moto's dispatch reads
  their models wherever moto merges no extras of its own (:mod:`kaos.local.botocore_data`).
- moto's models are not registered for its dashboard: the registry kept every instance ever made alive (the items
  a write replaced, a transaction's copies), so the stack's memory grew with every job.
- DynamoDB writes one at a time, and each read request whole between them: no read finds an item half updated.
- DynamoDB reads (GetItem, BatchGetItem, Query, Scan) answered without moto's shape-walking serializer
  (:mod:`kaos.local.patches_dynamodb`, its own PATCH_POINTS).
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import functools
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, cast

from botocore.exceptions import ClientError
from botocore.model import OperationModel, ServiceModel

from kaos.local import patches_dynamodb, patches_s3, patches_serving
from kaos.local.botocore_data import SharedModels, registering, with_plain_dicts
from kaos.local.patching import Patches, check_moto
from kaos.local.serving_runner import LocalServingRunner

LOG = logging.getLogger(__name__)

# Beside the synth cache of the checkout (kaos/local/stack.py): what later starts can reuse.
REGIONS_CACHE: Final = Path(__file__).resolve().parents[2] / ".cache"
PATCH_POINTS: Final[tuple[str, ...]] = (
    "moto.awslambda_simple.models.LambdaSimpleBackend.invoke",
    "moto.awslambda.models.LambdaFunction.invoke",
    "moto.events.models.Rule.send_to_targets",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service"
    ".StateTaskService._normalise_parameters",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service"
    ".StateTaskService._normalise_response",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.state_task_factory"
    ".state_task_service_for",
    "moto.stepfunctions.parser.asl.utils.json_path.parse",
    "moto.stepfunctions.parser.asl.component.common.path.result_path.parse",
    "moto.stepfunctions.parser.backend.execution_worker.ExecutionWorker._get_evaluation_entrypoint",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_sfn"
    ".StateTaskServiceSfn._build_sync2_resolver",
    "moto.stepfunctions.parser.backend.execution.BaseExecutionWorkerCommunication.terminated",
    "moto.sagemaker.models.SageMakerModelBackend.create_training_job",
    "moto.sagemaker.responses.SageMakerResponse.create_training_job",
    "moto.sagemaker.models.SageMakerModelBackend.describe_training_job",
    "moto.sagemaker.models.SageMakerModelBackend.stop_training_job (added)",
    "moto.sagemaker.responses.SageMakerResponse.stop_training_job (added)",
    "moto.core.responses.BaseResponse.call_action",
    "moto.batch_simple.models.BatchSimpleBackend._mark_job_as_finished",
    "moto.s3.notifications._send_event_bridge_message",
    "moto.logs.responses.LogsResponse.filter_log_events",
    "moto.dynamodb.models.DynamoDBBackend.{put_item,update_item,delete_item,transact_write_items} (serialized)",
    "moto.dynamodb.responses.DynamoHandler.call_action (inherited; a read request whole, never during a write)",
    "moto.backends.list_of_moto_modules (listed once)",
    "moto.utilities.utils.load_resource (while moto.ec2 is imported: no instance type catalogues)",
    "moto.core.common_models.BaseModel.__new__ (no registry of every model instance)",
    "moto.core.utils._load_service_model and botocore.session.Session._register_data_loader (one parse of each "
    "botocore data file)",
)


class TrainingRunnerProtocol(Protocol):
    """What the SageMaker patch needs from a training runner (see ``LocalTrainingRunner``)."""

    lock: threading.RLock
    changed: threading.Condition  # on ``lock``, notified whenever a job's description changed

    def start(self, request: dict[str, Any], update: Callable[[dict[str, Any]], None]) -> None: ...

    def stop(self, training_job_name: str) -> None: ...


class BatchRunnerProtocol(Protocol):
    """What the Batch patch needs from a batch runner (see ``LocalBatchRunner``)."""

    def start(self, job: Any) -> None: ...


@dataclass
class Hooks:
    """Callbacks from the patched moto code into the active emulator."""

    # (function_name, payload, invocation_type) -> (response payload, function error or None);
    # raises KeyError when no handler is registered for the function.
    invoke_lambda: Callable[[str, bytes, str], tuple[bytes, str | None]]
    has_lambda: Callable[[str], bool]
    # (service_name, action) -> error code to inject, or None
    take_fault: Callable[[str, str], str | None]
    training_runner: TrainingRunnerProtocol | None
    endpoint_url: str
    # Runs submitted AWS Batch jobs (see ``LocalBatchRunner``); None keeps moto's run-nothing behaviour.
    batch_runner: BatchRunnerProtocol | None = None
    # Serves SageMaker endpoints (kaos/local/patches_serving.py); None keeps moto's record-only endpoints.
    serving_runner: LocalServingRunner | None = None


_HOOKS: Hooks | None = None
PATCHES = Patches()
_APPLY_LOCK = threading.Lock()


def active_hooks() -> Hooks:
    if _HOOKS is None:
        raise RuntimeError("kaos emulator patches are not active")
    return _HOOKS


def function_name_from(name_or_arn: str) -> str:
    """``fn``, ``fn:qualifier``, ``arn:aws:lambda:r:a:function:fn[:q]`` → ``fn``."""
    if name_or_arn.startswith("arn:"):
        parts = name_or_arn.split(":")
        return parts[6] if len(parts) > 6 else parts[-1]
    return name_or_arn.split(":")[0]


# ---------------------------------------------------------------------------------------------
# Lambda
# ---------------------------------------------------------------------------------------------


def _lambda_simple_invoke(
    self: Any, function_name: str, qualifier: str | None, body: Any, headers: Any,
    response_headers: Any,
) -> bytes:
    from moto.awslambda.exceptions import UnknownFunctionException

    hooks = active_hooks()
    name = function_name_from(function_name)
    if not hooks.has_lambda(name):
        arn = (
            function_name
            if function_name.startswith("arn:")
            else f"arn:aws:lambda:{self.region_name}:{self.account_id}:function:{name}"
        )
        raise UnknownFunctionException(arn)
    invocation_type = (headers or {}).get("X-Amz-Invocation-Type") or "RequestResponse"
    payload = body if isinstance(body, bytes) else (body or "").encode("utf-8")
    result, function_error = hooks.invoke_lambda(name, payload, invocation_type)
    if function_error:
        response_headers["x-amz-function-error"] = function_error
    response_headers["x-amz-executed-version"] = "$LATEST"
    response_headers["Content-Length"] = str(len(result))
    return result


def _lambda_function_invoke(
    self: Any, body: str, request_headers: Any, response_headers: Any
) -> bytes:
    # Used by S3 notifications and InvokeAsync: always asynchronous in AWS.
    hooks = active_hooks()
    name = self.function_name
    if not hooks.has_lambda(name):
        LOG.warning("Lambda %s has no in-process handler; event dropped", name)
        return b""
    payload = body.encode("utf-8") if isinstance(body, str) else (body or b"{}")
    result, function_error = hooks.invoke_lambda(name, payload, "Event")
    if function_error:
        response_headers["x-amz-function-error"] = function_error
    return result


# ---------------------------------------------------------------------------------------------
# EventBridge
# ---------------------------------------------------------------------------------------------


def _events_send_to_targets(
    self: Any, original_event: Any, transform_input: bool = True
) -> None:
    from moto.events.utils import EventTemplateParser
    from moto.utilities.arns import parse_arn

    original = PATCHES.original(_rule_cls(), "send_to_targets")
    if not self.event_pattern.matches_event(original_event):
        return
    other_targets: list[dict[str, Any]] = []
    for target in self.targets:
        arn = parse_arn(target["Arn"])
        if arn.service not in ("lambda", "states"):
            other_targets.append(target)
            continue
        if transform_input:
            transformer = target.get("InputTransformer", {})
            if "Input" in target:
                event: Any = json.loads(target["Input"])
            else:
                event = EventTemplateParser.parse(
                    input_template=transformer.get("InputTemplate"),
                    input_paths_map=transformer.get("InputPathsMap", {}),
                    event=original_event,
                )
        else:
            event = copy.deepcopy(original_event)
        _deliver_async(target["Arn"], arn.service, event)
    if other_targets:
        # Let moto deliver the rest, on a shallow copy so concurrent senders see the full rule.
        clone = copy.copy(self)
        clone.targets = other_targets
        original(clone, original_event, transform_input)


def _deliver_async(target_arn: str, service: str, event: Any) -> None:
    hooks = active_hooks()
    body = json.dumps(event, default=str).encode("utf-8")

    def deliver() -> None:
        try:
            if service == "lambda":
                hooks.invoke_lambda(function_name_from(target_arn), body, "Event")
            else:
                from kaos.local.clients import new_client

                new_client("stepfunctions", target_arn.split(":")[3], "testing", "testing",
                           endpoint_url=hooks.endpoint_url,
                           ).start_execution(stateMachineArn=target_arn, input=body.decode("utf-8"))
        except Exception:  # EventBridge retries and then drops; we log.
            LOG.exception("EventBridge delivery to %s failed", target_arn)

    threading.Thread(target=deliver, name=f"events-{service}", daemon=True).start()


_S3_EVENTS_SUSPENDED = threading.Event()


@contextlib.contextmanager
def s3_events_suspended() -> Iterator[None]:
    """No S3 -> EventBridge events while the stored state is loaded back: they were delivered when the objects
    were first written (on AWS the objects never left), and the functions are not registered yet."""
    _S3_EVENTS_SUSPENDED.set()
    try:
        yield
    finally:
        _S3_EVENTS_SUSPENDED.clear()


def _s3_send_event_bridge_message(account_id: str, bucket: Any, event_name: str, key: Any) -> None:
    """S3 -> EventBridge events carry the object key URL-encoded, as S3 event notifications do ("a b+c" ->
    "a+b%2Bc", "/" kept); moto 5.2.5 sends it raw, so consumers that correctly `unquote_plus` would mangle '+'."""
    from urllib.parse import quote_plus

    from moto.s3 import notifications

    if _S3_EVENTS_SUSPENDED.is_set():
        return

    class EncodedKey:
        def __init__(self, raw: Any) -> None:
            self.name = quote_plus(raw.name, safe="/")
            self.size, self.etag, self.version_id = raw.size, raw.etag, raw.version_id

    original = PATCHES.original(notifications, "_send_event_bridge_message")
    original(account_id, bucket, event_name, EncodedKey(key))


def _rule_cls() -> type:
    from moto.events.models import Rule

    return Rule


# ---------------------------------------------------------------------------------------------
# Step Functions parameter/response normalisation
# ---------------------------------------------------------------------------------------------

_SERVICE_MODEL_LOCK = threading.Lock()


def service_model(service_name: str) -> ServiceModel:
    """The service's botocore model as moto's dispatch holds it (one per process): a botocore session of its own
    kept a second copy of every model it read (SageMaker's is ~11 MB of Python objects in the stack)."""
    from moto.core.utils import get_service_model

    with _SERVICE_MODEL_LOCK:  # moto's cache is unlocked: two first callers would each parse the model
        model: ServiceModel = get_service_model(service_name)
    return model


@functools.cache
def operation_model(service_name: str, action: str) -> OperationModel | None:
    """The botocore operation for ``action`` in any casing (``submit_job``, ``submitJob``)."""
    try:
        model = service_model(service_name)
    except Exception:
        return None
    key = action.replace("_", "").lower()
    for op_name in model.operation_names:
        if op_name.lower() == key:
            return model.operation_model(op_name)
    return None


def iso_datetimes(value: Any) -> Any:
    """Replace datetimes by ISO-8601 strings, in place for dicts and lists; returns the value."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.UTC)
        return value.isoformat()
    if isinstance(value, dict):
        for key, item in list(value.items()):
            value[key] = iso_datetimes(item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            value[index] = iso_datetimes(item)
    return value


def _normalise_parameters(
    self: Any, parameters: dict[str, Any], boto_service_name: str | None = None,
    service_action_name: str | None = None,
) -> None:
    service = self._get_boto_service_name(boto_service_name=boto_service_name)
    action = self._get_boto_service_action(service_action_name=service_action_name)
    op = operation_model(service, action)
    if op is not None and op.input_shape is not None and isinstance(parameters, dict):
        self._to_boto_request(parameters, op.input_shape)


def _normalise_response(
    self: Any, response: Any, boto_service_name: str | None = None,
    service_action_name: str | None = None,
) -> None:
    service = self._get_boto_service_name(boto_service_name=boto_service_name)
    action = self._get_boto_service_action(service_action_name=service_action_name)
    op = operation_model(service, action)
    if op is not None and op.output_shape is not None and isinstance(response, dict):
        sfn_cased_response(response, op.output_shape)
    iso_datetimes(response)


def sfn_cased_response(response: Any, shape: Any) -> None:
    """Rename output members in place as Step Functions does: first letter upper-cased.

    (moto's ``_from_boto_response`` round-trips through snake case, which turns
    ``VolumeSizeInGB`` into ``VolumeSizeInGb``.) Only structure members are renamed, never the
    keys of maps or of JSON payloads.
    """
    from botocore.model import ListShape, MapShape, StructureShape
    from botocore.response import StreamingBody

    if isinstance(shape, StructureShape) and isinstance(response, dict):
        for key in list(response):
            if key not in shape.members:
                continue
            value = response.pop(key)
            if isinstance(value, StreamingBody):
                value = value.read().decode("utf-8")
            sfn_cased_response(value, shape.members[key])
            response[key[:1].upper() + key[1:]] = value
    elif isinstance(shape, ListShape) and isinstance(response, list):
        for item in response:
            sfn_cased_response(item, shape.member)
    elif isinstance(shape, MapShape) and isinstance(response, dict):
        for item in response.values():
            sfn_cased_response(item, shape.value)


# ---------------------------------------------------------------------------------------------
# Step Functions SageMaker optimised integration
# ---------------------------------------------------------------------------------------------

# action (lower) -> (describe operation, name parameter, status key, success, failure statuses)
_SAGEMAKER_SYNC: Final[dict[str, tuple[str, str, str, set[str], set[str]]]] = {
    "createtrainingjob": (
        "describe_training_job", "TrainingJobName", "TrainingJobStatus",
        {"Completed"}, {"Failed", "Stopped"},
    ),
    "createprocessingjob": (
        "describe_processing_job", "ProcessingJobName", "ProcessingJobStatus",
        {"Completed"}, {"Failed", "Stopped"},
    ),
    "createtransformjob": (
        "describe_transform_job", "TransformJobName", "TransformJobStatus",
        {"Completed"}, {"Failed", "Stopped"},
    ),
    "createhyperparametertuningjob": (
        "describe_hyper_parameter_tuning_job", "HyperParameterTuningJobName",
        "HyperParameterTuningJobStatus", {"Completed"}, {"Failed", "Stopped"},
    ),
}


def sagemaker_error_name(client_error: ClientError) -> str:
    """Error name Step Functions' SageMaker integration surfaces for a service error.

    Step Functions runs the integration on the AWS Java SDK: exceptions modelled by the SageMaker
    API surface as ``SageMaker.<Code>Exception`` (e.g. ``SageMaker.ResourceLimitExceededException``);
    anything else, including ``ThrottlingException`` and ``ValidationException``, is the SDK's base
    class ``SageMaker.AmazonSageMakerException`` with the code in the cause.
    """
    code = client_error.response.get("Error", {}).get("Code", "")
    modelled = set(service_model("sagemaker").error_shapes)
    if code in {s.name for s in modelled}:
        return f"SageMaker.{code if code.endswith('Exception') else code + 'Exception'}"
    return "SageMaker.AmazonSageMakerException"


def _make_sagemaker_task_service() -> Any:
    from moto.stepfunctions.parser.api import HistoryEventType, TaskFailedEventDetails
    from moto.stepfunctions.parser.asl.component.common.error_name.custom_error_name import (
        CustomErrorName,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
        FailureEvent,
        FailureEventException,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import (
        StatesErrorName,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import (
        StatesErrorNameType,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.resource import (
        ResourceCondition,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_callback import (
        StateTaskServiceCallback,
    )
    from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails
    from moto.stepfunctions.parser.asl.utils.boto_client import boto_client_for
    from moto.stepfunctions.parser.asl.utils.encoding import to_json_str

    class StateTaskServiceSageMaker(StateTaskServiceCallback):
        """``arn:aws:states:::sagemaker:<action>[.sync]``.

        WaitForTaskToken is listed only because the callback base class needs a task token
        endpoint to exist for ``.sync``; AWS does not offer it for SageMaker.
        """

        def __init__(self) -> None:
            # moto declares the set's items as ResourceCondition, its constants as str.
            patterns: set[Any] = {ResourceCondition.Sync, ResourceCondition.WaitForTaskToken}
            super().__init__(supported_integration_patterns=patterns)

        def _get_supported_parameters(self) -> set[str] | None:
            op = operation_model("sagemaker", self.resource.api_action)
            if op is None or op.input_shape is None:
                return None
            return set(op.input_shape.members)

        def _from_error(self, env: Any, ex: Exception) -> Any:
            if isinstance(ex, ClientError):
                error = sagemaker_error_name(ex)
                meta = ex.response.get("ResponseMetadata", {})
                details = "; ".join([
                    "Service: AmazonSageMaker",
                    f"Status Code: {meta.get('HTTPStatusCode')}",
                    f"Error Code: {ex.response['Error'].get('Code')}",
                    f"Request ID: {meta.get('RequestId')}",
                    "Proxy: null",
                ])
                cause = f"{ex.response['Error'].get('Message')} ({details})"
                return FailureEvent(
                    env=env,
                    error_name=CustomErrorName(error),
                    event_type=HistoryEventType.TaskFailed,
                    event_details=cast(EventDetails, {"taskFailedEventDetails": TaskFailedEventDetails(
                        error=error, cause=cause, resource=self._get_sfn_resource(),
                        resourceType=self._get_sfn_resource_type(),
                    )}),
                )
            return super()._from_error(env=env, ex=ex)

        def _build_sync_resolver(
            self, env: Any, resource_runtime_part: Any, normalised_parameters: dict[str, Any],
            state_credentials: Any,
        ) -> Callable[[], Any]:
            spec = _SAGEMAKER_SYNC.get(self.resource.api_action.lower())
            if spec is None:
                raise RuntimeError(
                    f"Unsupported .sync callback procedure in resource {self.resource.resource_arn}"
                )
            describe_op, name_key, status_key, ok, failed = spec
            client = boto_client_for(
                service="sagemaker", region=resource_runtime_part.region,
                state_credentials=state_credentials,
            )
            env.stack.pop()  # the Create* response
            job_name = normalised_parameters[name_key]

            def resolve() -> dict[str, Any] | None:
                if describe_op == "describe_training_job":
                    _await_training_end(resource_runtime_part, job_name, env.is_running)
                    if not env.is_running():  # stopped meanwhile (a kill): ABORTED, not a failed task
                        return None
                description = getattr(client, describe_op)(**{name_key: job_name})
                description.pop("ResponseMetadata", None)
                status = description.get(status_key)
                if status in ok or status in failed:
                    self._normalise_response(description, service_action_name=describe_op)
                if status in ok:
                    return dict(description)
                if status in failed:
                    raise FailureEventException(
                        FailureEvent(
                            env=env,
                            error_name=StatesErrorName(typ=StatesErrorNameType.StatesTaskFailed),
                            event_type=HistoryEventType.TaskFailed,
                            event_details=cast(EventDetails, {"taskFailedEventDetails": TaskFailedEventDetails(
                                resource=self._get_sfn_resource(), resourceType=self._get_sfn_resource_type(),
                                error=StatesErrorNameType.StatesTaskFailed.to_name(),
                                cause=to_json_str(description),
                            )}),
                        )
                    )
                return None

            return resolve

        def _eval_service_task(
            self, env: Any, resource_runtime_part: Any, normalised_parameters: dict[str, Any],
            state_credentials: Any,
        ) -> None:
            client = boto_client_for(
                service="sagemaker", region=resource_runtime_part.region,
                state_credentials=state_credentials,
            )
            response = getattr(client, self._get_boto_service_action())(**normalised_parameters)
            response.pop("ResponseMetadata", None)
            env.stack.append(response)

    return StateTaskServiceSageMaker


_SAGEMAKER_TASK_CLS: Any = None
# How long one .sync check waits for a local training to end before describing it anyway, and how often it looks
# whether the execution was stopped meanwhile (moto's own loop looks every 0.5 s).
_SYNC_WAIT_SECONDS: Final[float] = 10.0
_STOP_CHECK_SECONDS: Final[float] = 0.5


def _await_training_end(runtime_part: Any, job_name: str, running: Callable[[], bool]) -> None:
    """Returns once the local training has ended, the execution stopped (`running` false) or _SYNC_WAIT_SECONDS
    passed. moto's .sync loop describes the job every 0.5 s over HTTP (IAM check, deep copy): waiting on the
    runner's notification instead makes that one DescribeTrainingJob per end (or per 10 s), and the end is seen at
    once rather than up to 0.5 s late."""
    from moto.sagemaker.models import sagemaker_backends

    runner = active_hooks().training_runner
    if runner is None:
        return
    jobs = sagemaker_backends[runtime_part.account][runtime_part.region].training_jobs
    _await_end(runner.changed, lambda: getattr(jobs.get(job_name), "training_job_status", None) in _ENDED, running)


def _await_end(changed: threading.Condition, ended: Callable[[], bool], running: Callable[[], bool]) -> None:
    """What a .sync task waits on instead of describing its resource every 0.5 s: returns once `ended()` (looked at
    whenever `changed` is notified), the execution stopped (`running()` false, looked at every _STOP_CHECK_SECONDS)
    or _SYNC_WAIT_SECONDS passed (the task then describes the resource anyway)."""
    deadline = time.monotonic() + _SYNC_WAIT_SECONDS
    with changed:
        while not ended() and running():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            changed.wait(min(left, _STOP_CHECK_SECONDS))


_ENDED: Final = frozenset({"Completed", "Failed", "Stopped"})
# Notified whenever an execution's status leaves RUNNING (it terminated, or StopExecution aborted it).
_EXECUTION_ENDED: Final = threading.Condition()


def _notify_execution_ended() -> None:
    with _EXECUTION_ENDED:
        _EXECUTION_ENDED.notify_all()


def _terminated(original: Callable[[Any], None]) -> Callable[[Any], None]:
    def terminated(self: Any) -> None:
        original(self)
        _notify_execution_ended()

    return terminated


def _child_execution_awaited(original: Callable[..., Any]) -> Callable[..., Any]:
    """StateTaskServiceSfn._build_sync2_resolver (`states:startExecution.sync:2`, a grid's point trainings), whose
    resolver first waits for the child execution to leave RUNNING, the parent to stop or _SYNC_WAIT_SECONDS to pass.
    moto's .sync loop described the child every 0.5 s over HTTP (IAM check, signature, dispatch: ~100 of a 10-point
    grid's ~1,000 emulator requests) and saw its end up to 0.5 s late; now it describes the child once it ended."""
    from moto.stepfunctions.parser.api import ExecutionStatus
    from moto.stepfunctions.responses import get_backend

    def build(self: Any, env: Any, resource_runtime_part: Any, normalised_parameters: Any,
              state_credentials: Any) -> Any:
        # The parser backend's Execution (its `exec_status`); the StartExecution answer is still on the stack, where
        # the original resolver takes it from. A child not found here is described every 0.5 s, as by stock moto.
        try:
            child: Any = get_backend(resource_runtime_part.account, resource_runtime_part.region).describe_execution(
                env.stack[-1]["ExecutionArn"])
        except Exception:
            child = None
        resolve = original(self, env, resource_runtime_part, normalised_parameters, state_credentials)
        if child is None:
            return resolve

        def resolver() -> Any:
            _await_end(_EXECUTION_ENDED, lambda: child.exec_status != ExecutionStatus.RUNNING, env.is_running)
            return resolve()

        return resolver

    return build


def _state_task_service_for(service_name: str) -> Any:
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service_factory,
    )

    if service_name == "sagemaker":
        return _SAGEMAKER_TASK_CLS()
    return state_task_service_factory.state_task_service_for(service_name=service_name)


# ---------------------------------------------------------------------------------------------
# SageMaker training jobs
# ---------------------------------------------------------------------------------------------


# CreateTrainingJob's Environment, from the response handler to the backend on the request's thread.
_TRAINING_REQUEST = threading.local()


def _response_create_training_job(self: Any) -> Any:
    """moto's response leaves CreateTrainingJob's Environment (the container's variables) out of the backend call:
    it travels beside it, for the runner to set in the job's process."""
    from moto.sagemaker.responses import SageMakerResponse

    _TRAINING_REQUEST.environment = self._get_param("Environment") or {}
    try:
        return PATCHES.original(SageMakerResponse, "create_training_job")(self)
    finally:
        _TRAINING_REQUEST.environment = {}


def _create_training_job(self: Any, training_job_name: str, **kwargs: Any) -> Any:
    from moto.sagemaker.exceptions import ResourceInUseException
    from moto.sagemaker.models import SageMakerModelBackend

    hooks = active_hooks()
    runner = hooks.training_runner
    original = PATCHES.original(SageMakerModelBackend, "create_training_job")
    if training_job_name in self.training_jobs:
        raise ResourceInUseException(
            message=f"Training job names must be unique within an AWS account and region, and a "
            f"training job with this name already exists ({self.training_jobs[training_job_name].arn})"
        )
    requested_algorithm = copy.deepcopy(kwargs.get("algorithm_specification") or {})
    job = original(self, training_job_name=training_job_name, **kwargs)
    if runner is None:
        return job
    with runner.lock:
        # moto adds a made-up MetricDefinitions entry; keep what the caller sent.
        job.algorithm_specification = requested_algorithm
        job.training_job_status = "InProgress"
        job.secondary_status = "Starting"
        job.failure_reason = None
        job.training_start_time = None
        job.training_end_time = None
        job.model_artifacts = None
        job.secondary_status_transitions = [
            {"Status": "Starting", "StartTime": job.creation_time,
             "StatusMessage": "Launching requested ML instances"}
        ]
        job.final_metric_data_list = None
    request = {
        "TrainingJobName": training_job_name,
        "HyperParameters": kwargs.get("hyper_parameters") or {},
        "AlgorithmSpecification": kwargs.get("algorithm_specification") or {},
        "RoleArn": kwargs.get("role_arn"),
        "InputDataConfig": kwargs.get("input_data_config") or [],
        "OutputDataConfig": kwargs.get("output_data_config") or {},
        "ResourceConfig": kwargs.get("resource_config") or {},
        "StoppingCondition": kwargs.get("stopping_condition") or {},
        "Environment": dict(getattr(_TRAINING_REQUEST, "environment", {})),
        "Region": self.region_name,
    }

    def update(fields: dict[str, Any]) -> None:
        with runner.lock:
            now = datetime.datetime.now(datetime.UTC)
            new_secondary = fields.get("SecondaryStatus")
            if new_secondary and new_secondary != job.secondary_status:
                transitions = job.secondary_status_transitions
                if transitions and "EndTime" not in transitions[-1]:
                    transitions[-1]["EndTime"] = now
                entry: dict[str, Any] = {"Status": new_secondary, "StartTime": now}
                if fields.get("StatusMessage"):
                    entry["StatusMessage"] = fields["StatusMessage"]
                transitions.append(entry)
            elif new_secondary and fields.get("StatusMessage") and job.secondary_status_transitions:
                # Within one stage SageMaker rewrites its message (Starting: launching, waiting for capacity, ...).
                job.secondary_status_transitions[-1]["StatusMessage"] = fields["StatusMessage"]
            for key, attr in _UPDATE_FIELDS.items():
                if key in fields:
                    setattr(job, attr, fields[key])
            if "TrainingEndTime" in fields and job.training_start_time is not None:
                # SageMaker reports both once a job ends and bills "the time interval between" TrainingStartTime
                # and TrainingEndTime (DescribeTrainingJob); without managed spot training the two are equal.
                seconds = math.ceil((job.training_end_time - job.training_start_time).total_seconds())
                job.training_time_in_seconds = job.billable_time_in_seconds = seconds
            if fields.get("TrainingJobStatus") in ("Completed", "Failed", "Stopped"):
                transitions = job.secondary_status_transitions
                if transitions and "EndTime" not in transitions[-1]:
                    transitions[-1]["EndTime"] = now
            job.last_modified_time = now
            runner.changed.notify_all()

    runner.start(request, update)
    return job


_UPDATE_FIELDS: Final[dict[str, str]] = {
    "TrainingJobStatus": "training_job_status",
    "SecondaryStatus": "secondary_status",
    "FailureReason": "failure_reason",
    "ModelArtifacts": "model_artifacts",
    "TrainingStartTime": "training_start_time",
    "TrainingEndTime": "training_end_time",
    "FinalMetricDataList": "final_metric_data_list",
}


def _describe_training_job(self: Any, training_job_name: str) -> dict[str, Any]:
    from moto.sagemaker.models import SageMakerModelBackend

    original = PATCHES.original(SageMakerModelBackend, "describe_training_job")
    runner = active_hooks().training_runner
    if runner is None:
        return dict(original(self, training_job_name))
    with runner.lock:
        return copy.deepcopy(original(self, training_job_name))


def _stop_training_job(self: Any, training_job_name: str) -> None:
    from moto.sagemaker.exceptions import ValidationError
    from moto.sagemaker.models import FakeTrainingJob

    job = self.training_jobs.get(training_job_name)
    if job is None:
        arn = FakeTrainingJob.arn_formatter(training_job_name, self.account_id, self.region_name)
        raise ValidationError(message=f"Could not find training job '{arn}'.")
    runner = active_hooks().training_runner
    if runner is None:
        return
    with runner.lock:
        if job.training_job_status != "InProgress":
            raise ValidationError(
                message=f"The request was rejected because the training job is in status "
                f"{job.training_job_status}."
            )
    runner.stop(training_job_name)


def _response_stop_training_job(self: Any) -> Any:
    from moto.core.responses import EmptyResult

    self.sagemaker_backend.stop_training_job(self._get_param("TrainingJobName"))
    return EmptyResult()


# ---------------------------------------------------------------------------------------------
# AWS Batch jobs
# ---------------------------------------------------------------------------------------------


def _mark_batch_job_as_finished(self: Any, include_start_attempt: bool, job: Any) -> None:
    """moto marks the job SUCCEEDED at once; instead the job is started and ends when its process does."""
    from moto.batch_simple.models import BatchSimpleBackend

    runner = _HOOKS.batch_runner if _HOOKS is not None else None
    if runner is None or "size" in (job.array_properties or {}):
        # Array parents are summaries of their children in Batch; moto finishes them itself.
        PATCHES.original(BatchSimpleBackend, "_mark_job_as_finished")(self, include_start_attempt, job)
        return
    self.backend._jobs[job.job_id] = job
    job.job_started_at = datetime.datetime.now()
    options = ((job.job_definition.container_properties or {}).get("logConfiguration") or {}).get("options") or {}
    # The awslogs driver names streams <prefix>/<container name>/<id>; Batch's container name is "default".
    job.log_stream_name = f"{options.get('awslogs-stream-prefix') or job.job_definition.name}/default/{job.job_id}"
    if include_start_attempt:
        job._start_attempt()
    runner.start(job)


# ---------------------------------------------------------------------------------------------
# Fault injection
# ---------------------------------------------------------------------------------------------


def _call_action(self: Any) -> Any:
    from moto.core.exceptions import ServiceException
    from moto.core.responses import BaseResponse
    from moto.core.utils import camelcase_to_underscores

    original = PATCHES.original(BaseResponse, "call_action")
    hooks = _HOOKS
    if hooks is not None:
        try:
            action = self._get_action()
        except Exception:
            action = None
        code = hooks.take_fault(self.service_name or "", action) if action else None
        if code is not None:
            message = "Rate exceeded" if "Throttl" in code else f"Injected {code}"

            # moto picks the service model for serialising an error from the exception's module.
            error_cls = type(code, (ServiceException,), {"__module__": type(self).__module__})

            def fail() -> None:
                raise error_cls(code, message)

            # Response objects are created per request: shadow the action on this instance only,
            # so moto serialises the error exactly like one raised by the service.
            setattr(self, camelcase_to_underscores(action), fail)
    return original(self)


# ---------------------------------------------------------------------------------------------
# apply / remove
# ---------------------------------------------------------------------------------------------


# DynamoDB checks a write's condition and applies it atomically, runs transactions serializably, and reads an item
# whole; moto's server handles requests on threads without a lock, so two conditional writes (or transactions) can
# both pass their checks, and a read can find an item half updated: moto applies an UpdateExpression's actions one
# at a time to the stored item, and writes a read's answer from the stored items after its handler returned (a job
# read FAILED without the failure reason written with it). So a write holds both locks below, and a read request
# the items lock from its handler's start to its answer's last byte. The state's flush (kaos/local/persistence.py)
# holds the writes' lock alone while it reads, and asks this server for table descriptions meanwhile: a read
# request must not wait for it (a first version that ran every request under the writes' lock deadlocked there).
_DYNAMODB_WRITES = ("put_item", "update_item", "delete_item", "transact_write_items")
_DYNAMODB_LOCK = threading.RLock()  # the writes, and the state's flush
_DYNAMODB_ITEMS_LOCK = threading.RLock()  # the writes, taken after the writes' lock, and each read request
# The reads patches_dynamodb answers itself, and the transaction that reads.
_DYNAMODB_READS = patches_dynamodb.READS | {"TransactGetItems"}


def _serialized(original: Callable[..., Any]) -> Callable[..., Any]:
    def write(*args: Any, **kwargs: Any) -> Any:
        with _DYNAMODB_LOCK, _DYNAMODB_ITEMS_LOCK:
            return original(*args, **kwargs)

    return write


def _dynamodb_request(self: Any) -> Any:
    """A DynamoDB read request whole, never during a write (a Query or Scan reads at most 1 MB a page, so none holds
    the writes for long); any other request as moto runs it."""
    from moto.dynamodb.responses import DynamoHandler

    original = PATCHES.original(DynamoHandler, "call_action")
    if self._get_action() not in _DYNAMODB_READS:
        return original(self)
    with _DYNAMODB_ITEMS_LOCK:
        return original(self)


def dynamodb_writes_serialized() -> list[tuple[Any, str, Callable[..., Any]]]:
    """moto's DynamoDB writes one at a time, as (owner, attribute, replacement): the embedded stack installs them
    (`apply`), and the repository contract tests that race writers give their in-process moto the same ones."""
    from moto.dynamodb.models import DynamoDBBackend

    return [(DynamoDBBackend, name, _serialized(getattr(DynamoDBBackend, name))) for name in _DYNAMODB_WRITES]


def _final_once_stopped(original: Callable[..., Any]) -> Callable[..., Any]:
    """StopExecution is final on AWS (the execution is ABORTED at once, whatever its running task does next), but
    moto's Environment.set_error/set_timed_out overwrite its ProgramStopped: a kill stops the execution, then the
    SageMaker job, whose `.sync` task fails on seeing it Stopped, and moto ends the execution FAILED. The state
    mutex is an RLock, so the original may take it again inside."""
    from moto.stepfunctions.parser.asl.eval.program_state import ProgramStopped

    def final_once_stopped(self: Any, *args: Any, **kwargs: Any) -> None:
        with self._state_mutex:
            if not isinstance(self._program_state, ProgramStopped):
                original(self, *args, **kwargs)

    return final_once_stopped


def environment_before_thread(worker_cls: Any) -> list[tuple[str, Callable[..., Any]]]:
    """moto's ExecutionWorker builds an execution's Environment in the execution's own thread, after parsing the
    definition, and marks it running only when its first state is chosen; a StopExecution arriving first (a kill right
    after a submit, under load) found ``env`` None and failed with a 500, or found it not yet running and was ignored,
    so the execution ran on. On AWS a started execution can be stopped at once: the Environment is built, running,
    before the thread starts, and the thread's own build returns it. An execution stopped before its first state ends
    there, ABORTED, with the history AWS gives it. Returns (attribute, replacement) for the worker class."""
    from moto.stepfunctions.parser.asl.eval import program_state

    running: Callable[[], Any] = program_state.ProgramRunning  # moto's class has no annotations
    original_start, original_environment = worker_cls.start, worker_cls._get_evaluation_environment
    original_logic = worker_cls._execution_logic

    def environment(self: Any) -> Any:
        return self.env if self.env is not None else original_environment(self)

    def start(self: Any) -> None:
        self.env = original_environment(self)
        self.env._program_state = running()  # what moto sets when the thread picks the first state
        original_start(self)

    def logic(self: Any) -> None:
        try:
            original_logic(self)
        except RuntimeError:  # the program could not pick its first state: the execution was stopped before it
            if not isinstance(self.env.program_state(), program_state.ProgramStopped):
                raise
            # The program's own body, whose loop over states ends at once, writes ExecutionAborted to the history.
            self._get_evaluation_entrypoint()._eval_body(self.env)
            self._execution_communication.terminated()

    return [("start", start), ("_get_evaluation_environment", environment), ("_execution_logic", logic)]


def aborted_when_stopped(execution_cls: Any) -> Callable[..., Any]:
    """moto's StopExecution only signals the execution's thread, which reports ABORTED once the state it is in
    returns (a `.sync` task at its next poll), so a DescribeExecution right after the stop still said RUNNING. On AWS a
    stopped execution is ABORTED when StopExecution answers: the status is set with the stop. Returns `stop`."""
    original = execution_cls.stop

    def stop(self: Any, stop_date: datetime.datetime, error: str | None, cause: str | None) -> None:
        from moto.stepfunctions.parser.api import ExecutionStatus
        from moto.stepfunctions.parser.asl.eval.program_state import ProgramStopped

        original(self, stop_date=stop_date, error=error, cause=cause)
        worker = self.exec_worker
        stopped = worker is not None and worker.env is not None and isinstance(worker.env.program_state(),
                                                                                 ProgramStopped)
        if stopped and self.exec_status == ExecutionStatus.RUNNING:
            self.exec_status, self.stop_date = ExecutionStatus.ABORTED, stop_date
            _notify_execution_ended()

    return stop


def stop_execution_fixes() -> list[tuple[Any, str, Callable[..., Any]]]:
    """The fixes of moto's StopExecution above, as (owner, attribute, replacement): the embedded stack installs them
    (`apply`), and the service tests' moto gets the same ones (tests/service_wiring.py)."""
    from moto.stepfunctions.parser.backend.execution import Execution
    from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker

    return [*((ExecutionWorker, name, fix) for name, fix in environment_before_thread(ExecutionWorker)),
            (Execution, "stop", aborted_when_stopped(Execution))]


def _lexer_next_token(self: Any) -> Any:
    """moto's ASL lexer reads ``"RoleArn.$"`` as the task-credentials keyword everywhere, so a Parameters field
    ``"RoleArn.$"`` (createTrainingJob's execution role) is dropped by the parser's error recovery. kaos' state
    machines use no task ``Credentials``: the token is read as the ordinary ``"<field>.$"`` path binding."""
    from moto.stepfunctions.parser.asl.antlr.runtime.ASLLexer import ASLLexer

    token = super(ASLLexer, self).nextToken()
    if token.type == ASLLexer.ROLEARNPATH:
        token.type = ASLLexer.STRINGDOLLAR
    return token


def _filter_log_events(self: Any) -> str:
    """FilterLogEvents honouring `logStreamNamePrefix` (moto ignores it and returns every stream's events).

    kaos reads one job's training log as the streams `<job name>/...` of the shared SageMaker log group."""
    prefix = self._get_param("logStreamNamePrefix")
    if not prefix or self._get_param("logStreamNames"):
        from moto.logs.responses import LogsResponse

        return str(PATCHES.original(LogsResponse, "filter_log_events")(self))
    group = self.logs_backend.groups.get(self._get_param("logGroupName"))
    names = [name for name in (group.streams if group is not None else {}) if name.startswith(prefix)]
    if not names:
        return json.dumps({"events": [], "searchedLogStreams": []})
    events, next_token, searched = self.logs_backend.filter_log_events(
        self._get_param("logGroupName"), names, self._get_param("startTime"), self._get_param("endTime"),
        self._get_param("limit"), self._get_param("nextToken"), self._get_param("filterPattern"),
        self._get_param("interleaved", False),
    )
    return json.dumps({"events": events, "nextToken": next_token, "searchedLogStreams": searched})


_moto_modules: tuple[str, ...] | None = None


def _list_of_moto_modules() -> tuple[str, ...]:
    """moto's service packages, listed once: moto's server lists its package directory (~150 entries, ~0.9 ms)
    on every request to find the service, while holding the dispatcher's one lock, so requests queue behind it."""
    global _moto_modules
    if _moto_modules is None:
        from moto import backends

        _moto_modules = tuple(PATCHES.original(backends, "list_of_moto_modules")())
    return _moto_modules


def _regions_file() -> Path:
    """Where the region lists of this botocore's data are kept between starts (beside the synth cache)."""
    import hashlib

    import botocore

    data = f"{botocore.__version__}\0{os.environ.get('AWS_DATA_PATH', '')}"
    return REGIONS_CACHE / f"botocore-regions-{hashlib.sha256(data.encode()).hexdigest()[:16]}.json"


def _shared_regions() -> Callable[..., list[str]]:
    """boto3's Session.get_available_regions, answered once per (service, partition) from moto's one session, and
    kept on disk for the next start.

    moto asks it from a fresh Session per call (three at moto.ec2's import, one per service backend), and each
    fresh Session parses the whole service model (~0.3 CPU-s for EC2's) to read one endpoint prefix. The answer
    depends only on botocore's data files, so it is stored per botocore version (and AWS_DATA_PATH): a start after
    the first reads it back (~0.6 s of every stack start). An unreadable file is recomputed and rewritten."""
    from boto3.session import Session
    from moto.core.base_backend import AccountSpecificBackend

    original = Session.get_available_regions
    path = _regions_file()
    try:
        stored: dict[str, list[str]] = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = {}
    lock = threading.Lock()

    @functools.cache
    def regions(service: str, partition: str, non_regional: bool) -> tuple[str, ...]:
        key = f"{service}/{partition}/{non_regional}"
        with lock:
            if isinstance(stored.get(key), list):
                return tuple(stored[key])
        answer = tuple(original(AccountSpecificBackend.get_session(), service, partition, non_regional))
        with lock:
            stored[key] = list(answer)
            try:  # whole or not at all: a concurrent start reads the old file or this one
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
                partial.write_text(json.dumps(stored, sort_keys=True))
                os.replace(partial, path)
            except OSError:
                pass  # a read-only checkout: computed again next time
        return answer

    def get_available_regions(self: Any, service_name: str, partition_name: str = "aws",
                              allow_non_regional: bool = False) -> list[str]:
        return list(regions(service_name, partition_name, allow_non_regional))

    return get_available_regions


def _validated_file() -> Path:
    """Where the digests of state machine definitions moto's parser accepted are kept (per moto version)."""
    from moto import __version__

    return REGIONS_CACHE / f"asl-validated-{__version__}.json"


def _parsed_once() -> Callable[[Any], Any]:
    """ExecutionWorker._get_evaluation_entrypoint, parsing each definition with the ANTLR parser once: every
    execution parsed its machine's whole definition again (~40 ms of the stack's CPU for the training machine, a
    grid's 10 child executions 8% of the stack's CPU). The parse tree is only read afterwards, so it is kept (by the
    definition's text); each execution still gets its own program from it (moto's preprocessor), because program
    components keep per-evaluation state (a Parallel state's counters) that executions must not share."""
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
    from moto.stepfunctions.parser.asl.parse.preprocessor import Preprocessor

    @functools.lru_cache(maxsize=64)
    def tree(definition: str) -> Any:
        return AmazonStateLanguageParser.parse(definition)[1]  # a definition with syntax errors raises, uncached

    # The cache alone let executions that start together (a grid's points) each miss it and parse; the parse is
    # CPU under the GIL, so making them wait for the first costs nothing.
    parsing = threading.Lock()

    def entrypoint(self: Any) -> Any:
        with parsing:
            parsed = tree(self._evaluation_details.state_machine_details.definition)
        return Preprocessor().visit(parsed)

    entrypoint.parsed = tree  # type: ignore[attr-defined]  # the contract test reads its cache_info
    return entrypoint


def _remembered_validation(original: Callable[..., None]) -> Any:
    """moto's StepFunctionsParserBackend._validate_definition, skipped for a definition this moto version's parser
    accepted before (kept on disk by SHA-256): CreateStateMachine parses the whole definition with the ANTLR parser
    only to refuse a bad one, ~0.35 CPU-s of every stack start for its five unchanged machines. A definition not
    seen before is validated as by moto, and a refused one is never recorded."""
    import hashlib

    path = _validated_file()
    try:
        stored = json.loads(path.read_text())
        accepted: set[str] = set(stored) if isinstance(stored, list) else set()
    except (OSError, ValueError):
        accepted = set()
    lock = threading.Lock()

    def validate(definition: str) -> None:
        digest = hashlib.sha256(definition.encode()).hexdigest()
        with lock:
            if digest in accepted:
                return
        original(definition=definition)  # raises InvalidDefinition for a bad one
        with lock:
            accepted.add(digest)
            try:  # whole or not at all, as the region lists
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
                partial.write_text(json.dumps(sorted(accepted)))
                os.replace(partial, path)
            except OSError:
                pass
    return staticmethod(validate)


def _shared_error_lookups() -> Callable[[], Any]:
    """moto.core.errors.ErrorLookupFactory, one for the process: get_error_model makes a new factory per error
    response, so its per-service cache never hits and every error walks the whole service model's shapes."""
    from moto.core.errors import ErrorLookupFactory

    shared = ErrorLookupFactory()
    return lambda: shared


# The EC2 catalogues moto loads when moto.ec2 is imported: every instance type and, per location type and region,
# the instance type offerings. Offline EC2 only lends Batch's Fargate compute environment a default VPC, subnet and
# security group (kaos/local/batch_runner.py); no instance is launched and no instance type is ever looked up.
EC2_INSTANCE_TYPES_FILE: Final = "ec2/resources/instance_types.json"
EC2_OFFERINGS_DIR: Final = "ec2/resources/instance_type_offerings/"


def _import_ec2_without_catalogues() -> None:
    """Imports moto.ec2 with empty instance type catalogues and no default AMIs: loading them cost ~1 s of
    every start and ~60 MB of the stack's resident memory for data nothing offline reads (DescribeInstanceTypes,
    DescribeInstanceTypeOfferings and DescribeImages answer empty lists). The catalogues are module globals
    filled at import, so the loader is swapped for the import only; a process that imported moto.ec2 before
    keeps its catalogues."""
    # moto's documented switch: no public AMIs are made per EC2 backend (read when each backend is created).
    os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"
    if "moto.ec2" in sys.modules:
        return
    from moto.utilities import utils

    load = utils.load_resource

    def lean(resource: str) -> Any:
        if resource == EC2_INSTANCE_TYPES_FILE:
            return {}
        if resource.startswith(EC2_OFFERINGS_DIR):
            return []
        return load(resource)

    utils.load_resource = lean
    try:
        from moto.ec2.models import amis, instance_types
    finally:
        utils.load_resource = load
    # Both bound the loader by name at their import: later loads (a backend's AMIs) see moto's own again.
    for module in (amis, instance_types):
        setattr(module, "load_resource", load)  # noqa: B010  (mypy: moto does not re-export the name)


@functools.cache
def _shared_models() -> SharedModels:
    """One per process: a session made before a remove() and apply() keeps reading through the same loader."""
    from botocore.loaders import create_loader
    from moto.core.loaders import create_loader as create_moto_loader

    return SharedModels(with_plain_dicts(create_loader()), with_plain_dicts(create_moto_loader()))


def _share_botocore_data(moto_utils: Any) -> None:
    """Every botocore session made from here on reads through one loader, and moto's dispatch takes the sessions'
    models wherever they are the same (kaos/local/botocore_data.py): ~30 MB of the stack's memory at its peak."""
    from botocore.session import Session

    shared = _shared_models()
    PATCHES.replace(Session, "_register_data_loader", registering(shared.botocore))
    PATCHES.replace(moto_utils, "_load_service_model", shared.load)


def _untracked(cls: type, *args: Any, **kwargs: Any) -> Any:
    """moto's BaseModel.__new__ without its registry: moto appends every model instance it ever makes (each item
    PutItem writes, each copy a transaction takes, each S3 object version, each log event) to a class-level list for
    its dashboard (/moto-api/data.json, which nothing offline reads), and only a full reset empties it. Items a
    write replaced and a transaction's copies stayed alive for the stack's life: its resident memory grew with
    every job."""
    return object.__new__(cls)


def apply(hooks: Hooks) -> None:
    """Install all patches (idempotent) and route them to ``hooks``."""
    global _HOOKS, _SAGEMAKER_TASK_CLS
    with _APPLY_LOCK:
        _HOOKS = hooks
        if PATCHES:
            return
        check_moto()
        from boto3.session import Session

        # First: importing moto's Batch (below) imports moto.ec2, which asks for the regions at import.
        PATCHES.replace(Session, "get_available_regions", _shared_regions())
        _import_ec2_without_catalogues()
        from moto.core import errors as moto_errors, utils as moto_utils

        # Per error response moto also listed botocore's data directory from a fresh Session (the service name of
        # the exception's package): the answer is fixed for the process.
        PATCHES.replace(moto_utils, "service_name_from_moto_package_name",
                        functools.cache(moto_utils.service_name_from_moto_package_name))
        PATCHES.replace(moto_errors, "ErrorLookupFactory", _shared_error_lookups())
        from moto.core.common_models import BaseModel

        PATCHES.replace(BaseModel, "__new__", staticmethod(_untracked))
        _share_botocore_data(moto_utils)
        from moto.awslambda.models import LambdaFunction
        from moto.awslambda_simple.models import LambdaSimpleBackend
        from moto.batch_simple.models import BatchSimpleBackend
        from moto.core.responses import BaseResponse
        from moto.events.models import Rule
        from moto.sagemaker.models import SageMakerModelBackend
        from moto.sagemaker.responses import SageMakerResponse
        from moto.stepfunctions.parser.asl.component.state.exec.state_task import state_task_factory
        from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service import (
            StateTaskService,
        )

        if _SAGEMAKER_TASK_CLS is None:
            _SAGEMAKER_TASK_CLS = _make_sagemaker_task_service()
        PATCHES.replace(LambdaSimpleBackend, "invoke", _lambda_simple_invoke)
        PATCHES.replace(LambdaFunction, "invoke", _lambda_function_invoke)
        PATCHES.replace(Rule, "send_to_targets", _events_send_to_targets)
        PATCHES.replace(StateTaskService, "_normalise_parameters", _normalise_parameters)
        PATCHES.replace(StateTaskService, "_normalise_response", _normalise_response)
        PATCHES.replace(state_task_factory, "state_task_service_for", _state_task_service_for)
        PATCHES.replace(SageMakerModelBackend, "create_training_job", _create_training_job)
        PATCHES.replace(SageMakerResponse, "create_training_job", _response_create_training_job)
        PATCHES.replace(SageMakerModelBackend, "describe_training_job", _describe_training_job)
        PATCHES.add(SageMakerModelBackend, "stop_training_job", _stop_training_job)
        PATCHES.add(SageMakerResponse, "stop_training_job", _response_stop_training_job)
        PATCHES.replace(BaseResponse, "call_action", _call_action)
        PATCHES.replace(BatchSimpleBackend, "_mark_job_as_finished", _mark_batch_job_as_finished)
        from moto.s3 import notifications as s3_notifications

        PATCHES.replace(s3_notifications, "_send_event_bridge_message", _s3_send_event_bridge_message)
        from moto.stepfunctions.parser.models import StepFunctionsParserBackend

        PATCHES.replace(StepFunctionsParserBackend, "_validate_definition",
                        _remembered_validation(StepFunctionsParserBackend._validate_definition))
        from moto.stepfunctions.parser.asl.antlr.runtime.ASLLexer import ASLLexer

        PATCHES.replace(ASLLexer, "nextToken", _lexer_next_token)
        from moto.stepfunctions.parser.asl.component.common.path import result_path
        from moto.stepfunctions.parser.asl.utils import json_path

        # Every JSONPath a state evaluates was parsed anew, and jsonpath_ng's parse builds its yacc parser on each
        # call: 8% of the stack's CPU in a 10-point grid. Parsed paths are immutable, so each is parsed once.
        for module in (json_path, result_path):
            PATCHES.replace(module, "parse", functools.lru_cache(maxsize=4096)(module.__dict__["parse"]))
        from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker

        PATCHES.replace(ExecutionWorker, "_get_evaluation_entrypoint", _parsed_once())
        from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_sfn import (
            StateTaskServiceSfn,
        )
        from moto.stepfunctions.parser.backend.execution import BaseExecutionWorkerCommunication

        PATCHES.replace(StateTaskServiceSfn, "_build_sync2_resolver",
                        _child_execution_awaited(StateTaskServiceSfn._build_sync2_resolver))
        PATCHES.replace(BaseExecutionWorkerCommunication, "terminated",
                        _terminated(BaseExecutionWorkerCommunication.terminated))
        from moto.stepfunctions.parser.asl.eval.environment import Environment

        for name in ("set_error", "set_timed_out"):
            PATCHES.replace(Environment, name, _final_once_stopped(getattr(Environment, name)))
        for owner, name, replacement in stop_execution_fixes():
            PATCHES.replace(owner, name, replacement)
        from moto.logs.responses import LogsResponse

        PATCHES.replace(LogsResponse, "filter_log_events", _filter_log_events)
        # Before the writes are serialized: its TransactWriteItems reads the items it may restore under the lock.
        patches_dynamodb.apply()  # DynamoDB reads as a JSON dump, item-level rollback (kaos/local/patches_dynamodb.py)
        for owner, name, replacement in dynamodb_writes_serialized():
            PATCHES.replace(owner, name, replacement)
        from moto.dynamodb.responses import DynamoHandler

        PATCHES.replace(DynamoHandler, "call_action", _dynamodb_request)
        from moto import backends

        PATCHES.replace(backends, "list_of_moto_modules", _list_of_moto_modules)
        patches_s3.apply()  # S3 checksums verified and kept, conditional writes atomic (kaos/local/patches_s3.py)
    if hooks.serving_runner is not None:
        patches_serving.apply(hooks.serving_runner)  # endpoints that serve (kaos/local/patches_serving.py)


def remove() -> None:
    """Restore moto's originals."""
    global _HOOKS
    with _APPLY_LOCK:
        PATCHES.remove()
        _HOOKS = None
    patches_s3.remove()
    patches_dynamodb.remove()
    patches_serving.remove()
