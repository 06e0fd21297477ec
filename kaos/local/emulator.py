"""The embedded offline AWS: moto 5.2.5 in server mode, with executing Step Functions and patches.

Public surface::

    emulator = Emulator(work_dir: Path, *, region: str = "us-east-1", stop_grace_seconds: float = 10.0)
    endpoint: str = emulator.start()            # "http://127.0.0.1:<free port>"
    emulator.register_lambda(function_name: str, handler: Callable[[dict, LambdaContext], Any]) -> None
    emulator.unregister_lambda(function_name: str) -> None
    emulator.inject_throttling(service: str, action: str, times: int = 1) -> None
    emulator.inject_fault(service: str, action: str, code: str, times: int = 1) -> None
    emulator.training_runner: LocalTrainingRunner   # after start()
    emulator.endpoint_url: str | None
    emulator.client(service: str) -> botocore client for the emulator (dummy credentials), one per service
    emulator.stop() -> None                     # kills training subprocesses, stops the server
    with Emulator(work_dir) as emulator: ...    # start/stop

What it changes globally in this process (moto needs it): ``MOTO_PORT`` (the Step Functions
interpreter calls other services at ``http://localhost:$MOTO_PORT``), ``MOTO_EC2_LOAD_DEFAULT_AMIS=false``, moto's
``default_user_config`` (Step Functions execution on; Lambda and Batch without Docker), moto's
backends (reset on start) and the patches in :mod:`kaos.local.patches` (applied on start, removed
on stop). Hence one started Emulator per process at a time.

Lambda: a registered handler is the function; it is invoked with the decoded JSON payload and a
:class:`LambdaContext`. Its return value is JSON-encoded as the response payload. If it raises,
the invoke returns ``FunctionError: Unhandled`` and ``{"errorType", "errorMessage", "stackTrace"}``
like the Python runtime, so Step Functions sees the error name ``errorType``. Unknown functions get
``ResourceNotFoundException`` (Step Functions: ``Lambda.ResourceNotFoundException``).
``InvocationType=Event`` runs the handler in a background thread.

SageMaker: ``CreateTrainingJob`` runs the job with :class:`LocalTrainingRunner`; endpoints are served by
:class:`LocalServingRunner` (``emulator.serving_runner``, see :mod:`kaos.local.patches_serving`);
Batch: ``SubmitJob`` runs the job's command with :class:`LocalBatchRunner` (``emulator.batch_runner``).
``StopTrainingJob`` stops it. Step Functions ``sagemaker:createTrainingJob.sync`` waits for it and
fails with ``States.TaskFailed`` (cause: the DescribeTrainingJob JSON) when it ends Failed or
Stopped; a service error on the call itself (e.g. an injected ``ThrottlingException``) surfaces as
``SageMaker.AmazonSageMakerException`` (modelled errors as ``SageMaker.<Code>Exception``), with
``Error Code: ThrottlingException`` in the cause, as the AWS Java SDK behind Step Functions does.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from botocore.config import Config

from kaos.local.clients import new_client
from kaos.local import iam, patches
from kaos.local.containers import anonymous_keys
from kaos.local.sagemaker_runner import LocalTrainingRunner
from kaos.local.batch_runner import LocalBatchRunner
from kaos.local.environments import Environments, default_cache_dir
from kaos.local.serving_runner import LocalServingRunner

if TYPE_CHECKING:  # moto loads when the emulator starts, not when this module is imported
    from kaos.local.moto_server import KeepAliveMotoServer

LOG = logging.getLogger(__name__)

ACCOUNT_ID: Final[str] = "123456789012"
DEFAULT_TIMEOUT_SECONDS: Final[int] = 900
# Multiplies the waits of endpoint deployment policies (canary bakes, termination waits), so a stack under test
# can run a guarded rollout in seconds; unset on a user's stack (the policy's own waits).
SERVING_TIME_SCALE_ENV: Final[str] = "KAOS_LOCAL_SERVING_TIME_SCALE"

Handler = Callable[[Any, "LambdaContext"], Any]


@dataclass
class LambdaContext:
    """The subset of the Lambda Python runtime's context object that handlers use."""

    function_name: str
    aws_request_id: str
    invoked_function_arn: str
    memory_limit_in_mb: int = 128
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = ""
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_seconds
        self.log_group_name = self.log_group_name or f"/aws/lambda/{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def at_once(calls: list[Callable[[], object]]) -> None:
    """Runs the calls side by side (each stop waits on its own processes) and returns when all have."""
    threads = [threading.Thread(target=call, name="stop") for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


class Emulator:
    """moto server in this process, on 127.0.0.1 and a free port, with kaos' patches."""

    def __init__(
        self, work_dir: Path, *, region: str = "us-east-1", stop_grace_seconds: float = 10.0,
        enforce_iam: bool = False,
    ) -> None:
        self.enforce_iam = enforce_iam
        self.admin: iam.Keys | None = None
        self.work_dir = Path(work_dir)
        self.region = region
        self.stop_grace_seconds = stop_grace_seconds
        self.endpoint_url: str | None = None
        self._server: KeepAliveMotoServer | None = None
        self._handlers: dict[str, Handler] = {}
        self._faults: dict[tuple[str, str], list[Any]] = {}
        self._lock = threading.Lock()
        self._runner: LocalTrainingRunner | None = None
        self._batch_runner: LocalBatchRunner | None = None
        self._serving_runner: LocalServingRunner | None = None
        self._clients: dict[str, Any] = {}

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def wsgi_server(self) -> Any:
        """The running HTTP server, whose WSGI application a tracker may wrap (kaos/local/persistence.py); None
        before start."""
        return self._server.wsgi if self._server is not None else None

    def start(self) -> str:
        from moto.core.config import default_user_config
        from moto.moto_api._internal.models import moto_api_backend

        from kaos.local.moto_server import KeepAliveMotoServer

        if self._server is not None:
            assert self.endpoint_url is not None
            return self.endpoint_url
        self.work_dir.mkdir(parents=True, exist_ok=True)
        default_user_config["stepfunctions"] = {"execute_state_machine": True}
        default_user_config["lambda"] = {"use_docker": False}
        default_user_config["batch"] = {"use_docker": False}
        moto_api_backend.reset()
        server = KeepAliveMotoServer()
        server.start()
        host, port = server.get_host_and_port()
        os.environ["MOTO_PORT"] = str(port)
        self._server = server
        self.endpoint_url = f"http://{host}:{port}"
        role_keys = anonymous_keys
        if self.enforce_iam:
            # From here on every request is authenticated and decided by IAM (kaos/local/iam.py); the
            # emulator's own calls (loader, persistence, assertions) use the admin user.
            self.admin = iam.create_admin()
            iam.enable()
            role_keys = self.role_keys
        self._runner = LocalTrainingRunner(
            self.endpoint_url, self.work_dir, stop_grace_seconds=self.stop_grace_seconds,
            region=self.region, role_keys=role_keys,
        )
        self._batch_runner = LocalBatchRunner(self.endpoint_url, self.work_dir, region=self.region,
                                              role_keys=role_keys)
        self._serving_runner = LocalServingRunner(self.endpoint_url, self.work_dir, Environments(default_cache_dir()),
                                                  region=self.region, role_keys=role_keys)
        self._serving_runner.time_scale = float(os.environ.get(SERVING_TIME_SCALE_ENV) or 1)
        patches.apply(
            patches.Hooks(
                invoke_lambda=self._invoke_lambda,
                has_lambda=self._has_lambda,
                take_fault=self._take_fault,
                training_runner=self._runner,
                endpoint_url=self.endpoint_url,
                batch_runner=self._batch_runner,
                serving_runner=self._serving_runner,
            )
        )
        return self.endpoint_url

    def stop(self) -> None:
        # The runners' processes end at once, all of them: each runner waits for its own after killing them.
        at_once([stop for stop in (
            self._runner and (lambda runner=self._runner: runner.stop_all(grace_seconds=0)),
            self._batch_runner and self._batch_runner.stop_all,
            self._serving_runner and self._serving_runner.stop_all) if stop])
        if self._server is not None:
            self._server.stop()
            self._server = None
        patches.remove()
        if self.enforce_iam:
            iam.disable()
        self.endpoint_url = None
        with self._lock:
            self._clients.clear()

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def training_runner(self) -> LocalTrainingRunner:
        if self._runner is None:
            raise RuntimeError("Emulator not started")
        return self._runner

    @property
    def batch_runner(self) -> LocalBatchRunner:
        if self._batch_runner is None:
            raise RuntimeError("Emulator not started")
        return self._batch_runner

    @property
    def serving_runner(self) -> LocalServingRunner:
        if self._serving_runner is None:
            raise RuntimeError("Emulator not started")
        return self._serving_runner

    def client(self, service: str) -> Any:
        """A boto3 client for the emulator: the admin user's when IAM is enforced, else dummy credentials. One per
        service, shared (botocore clients are thread-safe): the start alone asks for ~80, and each new one costs
        tens of milliseconds and its own copy of the service's endpoint and hook tables."""
        if self.endpoint_url is None:
            raise RuntimeError("Emulator not started")
        keys = self.admin or iam.Keys("testing", "testing")
        with self._lock:  # one client per service (new_client serializes the making of any client)
            if service not in self._clients:
                self._clients[service] = new_client(service, self.region, keys.access_key, keys.secret_key,
                                                    endpoint_url=self.endpoint_url,
                                                    config=Config(retries={"max_attempts": 1}))
            return self._clients[service]

    @staticmethod
    def role_keys(role_arn: str, service: str) -> dict[str, str]:
        """A new session of ``role_arn`` as ``service`` (a job, a Lambda environment) gets it on AWS."""
        return iam.service_credentials(role_arn, service, f"kaos-{uuid.uuid4().hex[:12]}").environment()

    # -- Lambda -----------------------------------------------------------------------------

    def register_lambda(self, function_name: str, handler: Handler) -> None:
        """Route invocations of ``function_name`` (name or ARN) to ``handler`` in-process."""
        with self._lock:
            self._handlers[patches.function_name_from(function_name)] = handler

    def unregister_lambda(self, function_name: str) -> None:
        with self._lock:
            self._handlers.pop(patches.function_name_from(function_name), None)

    def _has_lambda(self, name: str) -> bool:
        with self._lock:
            return name in self._handlers

    def _invoke_lambda(
        self, name: str, payload: bytes, invocation_type: str
    ) -> tuple[bytes, str | None]:
        with self._lock:
            handler = self._handlers[name]
        if invocation_type == "DryRun":
            return b"", None
        if invocation_type == "Event":
            thread = threading.Thread(
                target=self._call_handler, args=(name, handler, payload),
                name=f"lambda-{name}", daemon=True,
            )
            thread.start()
            return b"", None
        return self._call_handler(name, handler, payload)

    def _call_handler(self, name: str, handler: Handler, payload: bytes) -> tuple[bytes, str | None]:
        request_id = str(uuid.uuid4())
        context = LambdaContext(
            function_name=name, aws_request_id=request_id,
            invoked_function_arn=f"arn:aws:lambda:{self.region}:{ACCOUNT_ID}:function:{name}",
        )
        try:
            text = payload.decode("utf-8") if payload else ""
            event = json.loads(text) if text.strip() else {}
        except ValueError as exc:
            return _error_payload("Runtime.UnmarshalError", f"Unable to unmarshal input: {exc}", []), "Unhandled"
        try:
            result = handler(event, context)
        except Exception as exc:  # the Python runtime's unhandled-error shape
            stack = traceback.format_tb(exc.__traceback__.tb_next if exc.__traceback__ else None)
            # A handler running in its own environment reports the runtime's errorType (FunctionError).
            error_type = str(getattr(exc, "error_type", type(exc).__name__))
            stack = list(getattr(exc, "stack", stack))
            LOG.info("Lambda %s raised %s: %s", name, error_type, exc)
            return _error_payload(error_type, str(exc), stack, request_id), "Unhandled"
        try:
            return json.dumps(result).encode("utf-8"), None
        except (TypeError, ValueError) as exc:
            return _error_payload(
                "Runtime.MarshalError", f"Unable to marshal response: {exc}", []
            ), "Unhandled"

    # -- faults -----------------------------------------------------------------------------

    def inject_throttling(self, service: str, action: str, times: int = 1) -> None:
        """The next ``times`` calls of ``service``/``action`` fail with ThrottlingException."""
        self.inject_fault(service, action, "ThrottlingException", times)

    def inject_fault(self, service: str, action: str, code: str, times: int = 1) -> None:
        with self._lock:
            self._faults[(service.lower(), action.lower())] = [code, times]

    def _take_fault(self, service: str, action: str) -> str | None:
        with self._lock:
            entry = self._faults.get((service.lower(), action.lower()))
            if not entry or entry[1] <= 0:
                return None
            entry[1] -= 1
            return str(entry[0])


def _error_payload(
    error_type: str, message: str, stack: list[str], request_id: str = ""
) -> bytes:
    return json.dumps(
        {"errorMessage": message, "errorType": error_type, "requestId": request_id,
         "stackTrace": stack}
    ).encode("utf-8")
