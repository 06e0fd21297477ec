"""SageMaker hosting for the embedded stack: endpoints that really serve, on moto 5.2.5.

Registered by :mod:`kaos.local.patches` (its ``apply``/``remove`` call this module's with the emulator's
:class:`~kaos.local.serving_runner.LocalServingRunner`), installed through :class:`kaos.local.patching.Patches`
(a moto rename fails loudly) and listed in ``PATCH_POINTS``. moto keeps endpoints as records that are InService at
once and answers InvokeEndpoint with canned data; here, as on SageMaker:

- **CreateEndpoint** refuses an existing name, answers at once with the endpoint ``Creating``, and brings up each
  production variant of the config in the background (:meth:`LocalServingRunner.launch`): ``InService`` when every
  variant passed its health check, else ``Failed`` with the FailureReason.
- **UpdateEndpoint** (moto lacks it) needs an ``InService`` endpoint, goes ``Updating`` and deploys blue/green:
  the new fleet comes up beside the old one (a fleet that fails its health check leaves the endpoint ``InService``
  on the old config with the FailureReason), traffic shifts as ``DeploymentConfig.BlueGreenUpdatePolicy`` says
  (``ALL_AT_ONCE``; ``CANARY``: ``CanarySize`` then the rest; ``LINEAR``: ``LinearStepSize`` steps), each shift
  followed by a bake of ``WaitIntervalInSeconds`` during which the CloudWatch alarms of
  ``AutoRollbackConfiguration`` are watched (moto's alarm state). An alarm in ``ALARM`` rolls back: ``RollingBack``,
  all traffic to the old fleet, the new one stopped, then ``InService`` on the old config with the FailureReason.
  Otherwise the endpoint takes the new config, and the old fleet stops after ``TerminationWaitInSeconds``.
  Waits are multiplied by ``LocalServingRunner.time_scale`` (1 unless a test shortens them).
- **DeleteEndpoint** removes the endpoint and stops its processes.
- **InvokeEndpoint** (sagemaker-runtime) forwards the body, ``Content-Type`` and ``Accept`` to a live variant's
  server (by variant weight, or ``TargetVariant``) and returns its body, content type and
  ``InvokedProductionVariant``; errors as SageMaker Runtime returns them: a container answer that is not 2xx is
  ``ModelError`` (424, ``OriginalStatusCode``, ``OriginalMessage``, ``LogStreamArn``), no answer within the
  invocation timeout is ``ModelError`` with SageMaker's timeout message, a body over the limit (4 MB serverless,
  6 MB real-time) is HTTP 413 "HTTP content length exceeded <n> bytes.", an unknown or not yet serving endpoint is
  ``ValidationError``. Each invocation that reaches a server publishes SageMaker's invocation metrics into moto's
  CloudWatch (namespace ``AWS/SageMaker``, dimensions ``EndpointName`` and ``VariantName``): ``Invocations``,
  ``Invocation4XXErrors``, ``Invocation5XXErrors`` (a timeout counts as 5XX), ``ModelLatency`` and
  ``OverheadLatency`` (microseconds); a serverless fleet brought up by an invocation (a cold start) publishes
  ``ModelSetupTime``.

Endpoints outlive a stack restart as SageMaker's outlive anything on the caller's side: every change of an
InService endpoint writes ``<work dir>/serving-endpoints.json`` (the endpoint, its config and models, as created);
:func:`apply` puts them back into moto's backend, InService, and the first invocation of each brings its fleet up
again (a cold start, as a serverless endpoint scaled to zero has), by which time the stack has restored the S3
objects and roles the fleet needs.
"""
from __future__ import annotations

import datetime
import json
import os
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote

from kaos.local.patching import Patches
from kaos.local.serving_runner import (LOG_GROUP_PREFIX, Fleet, InvocationTimeout, LocalServingRunner,
                                       ServingFailure)

LOG = logging.getLogger(__name__)

PATCH_POINTS: Final[tuple[str, ...]] = (
    "moto.sagemaker.models.SageMakerModelBackend.create_endpoint",
    "moto.sagemaker.models.SageMakerModelBackend.delete_endpoint",
    "moto.sagemaker.models.SageMakerModelBackend.update_endpoint (added)",
    "moto.sagemaker.responses.SageMakerResponse.update_endpoint (added)",
    "moto.sagemakerruntime.responses.SageMakerRuntimeResponse.invoke_endpoint",
    "moto.sagemakerruntime.responses.SageMakerRuntimeResponse.use_raw_body",
)
TIMED_OUT: Final = ("Your invocation timed out while waiting for a response from container primary. Review the "
                    "latency metrics for each container in Amazon CloudWatch, resolve the issue, and try again.")
# How often a bake looks at the deployment's alarms.
ALARM_POLL_SECONDS: Final = 0.2

STATE_FILE: Final = "serving-endpoints.json"
METRICS_NAMESPACE: Final = "AWS/SageMaker"

PATCHES = Patches()
_LOCK = threading.Lock()
_RUNNER: LocalServingRunner | None = None


@dataclass
class _Live:
    """The fleets serving one endpoint and their traffic shares (weights)."""

    routes: list[tuple[Fleet, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Held while a restored endpoint's fleet comes up at its first invocation (one bring-up, not one per request).
    revive: threading.Lock = field(default_factory=threading.Lock)

    def pick(self, target_variant: str | None) -> Fleet | None:
        with self.lock:
            routes = [(f, w) for f, w in self.routes if not target_variant or f.variant == target_variant]
        if not routes:
            return None
        total = sum(weight for _, weight in routes)
        point = random.uniform(0, total)  # SageMaker splits traffic by variant weight
        for fleet, weight in routes:
            point -= weight
            if point <= 0:
                return fleet
        return routes[-1][0]

    def fleets(self) -> list[Fleet]:
        with self.lock:
            return [fleet for fleet, _ in self.routes]


# (account, region, endpoint name) -> what serves it
_ENDPOINTS: dict[tuple[str, str, str], _Live] = {}


def _runner() -> LocalServingRunner:
    if _RUNNER is None:
        raise RuntimeError("kaos serving patches are not active")
    return _RUNNER


def _key(backend: Any, name: str) -> tuple[str, str, str]:
    return backend.account_id, backend.region_name, name


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _set(endpoint: Any, status: str, reason: str | None = None) -> None:
    endpoint.endpoint_status = status
    endpoint.failure_reason = reason
    endpoint.last_modified_time = _now()
    if status == "InService":
        _save()


def _saved_endpoint(backend: Any, endpoint: Any) -> dict[str, Any] | None:
    config = backend.endpoint_configs.get(endpoint.endpoint_config_name)
    if config is None:
        return None
    models = {}
    for variant in config.production_variants:
        model = backend._models.get(variant["ModelName"])
        if model is not None:
            models[model.model_name] = {"execution_role_arn": model.execution_role_arn,
                                        "primary_container": model.primary_container,
                                        "containers": model.containers}
    return {"account": backend.account_id, "region": backend.region_name, "name": endpoint.endpoint_name,
            "config": {"name": config.endpoint_config_name, "production_variants": config.production_variants,
                       "data_capture_config": config.data_capture_config}, "models": models}


def _save() -> None:
    """Every InService endpoint with what it runs, written atomically (see the module docstring)."""
    from moto.sagemaker.models import sagemaker_backends

    runner = _RUNNER
    if runner is None:
        return
    with _LOCK:
        saved = []
        for account, region, name in sorted(_ENDPOINTS):
            backend = sagemaker_backends[account][region]
            endpoint = backend.endpoints.get(name)
            if endpoint is not None and endpoint.endpoint_status in ("InService", "Updating", "RollingBack"):
                entry = _saved_endpoint(backend, endpoint)
                if entry is not None:
                    saved.append(entry)
        path = runner.work_dir / STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(saved, default=str))
        os.replace(tmp, path)


def _restore(path: Path) -> None:
    """The saved endpoints back into moto's backend, InService, their fleets brought up at first use."""
    from moto.sagemaker.models import SageMakerModelBackend, sagemaker_backends

    if not path.is_file():
        return
    for entry in json.loads(path.read_text()):
        backend = sagemaker_backends[entry["account"]][entry["region"]]
        for name, model in entry["models"].items():
            if name not in backend._models:
                backend.create_model(model_name=name, execution_role_arn=model["execution_role_arn"],
                                     primary_container=model["primary_container"], vpc_config=None,
                                     containers=model["containers"], tags=None)
        config = entry["config"]
        if config["name"] not in backend.endpoint_configs:
            backend.create_endpoint_config(endpoint_config_name=config["name"],
                                           production_variants=config["production_variants"],
                                           data_capture_config=config["data_capture_config"],
                                           async_inference_config={}, tags=[], kms_key_id="")
        if entry["name"] not in backend.endpoints:
            PATCHES.original(SageMakerModelBackend, "create_endpoint")(backend, entry["name"], config["name"], [])
            _ENDPOINTS[_key(backend, entry["name"])] = _Live()


def _launch(backend: Any, endpoint_name: str, config_name: str) -> list[tuple[Fleet, float]]:
    """Every variant of the config up (raises ServingFailure, leaving none of them running)."""
    from moto.sagemaker.utils import arn_formatter

    def arn(kind: str, name: str) -> str:
        return str(arn_formatter(kind, name, backend.account_id, backend.region_name))

    config = backend.endpoint_configs.get(config_name)
    if config is None:
        raise ServingFailure(f"Could not find endpoint configuration '{arn('endpoint-config', config_name)}'.")
    routes: list[tuple[Fleet, float]] = []
    try:
        for variant in config.production_variants:
            model = backend._models.get(variant["ModelName"])
            if model is None:
                raise ServingFailure(f"Could not find model \"{arn('model', variant['ModelName'])}\".")
            description = {"ExecutionRoleArn": model.execution_role_arn, "PrimaryContainer": model.primary_container,
                           "Containers": model.containers}
            fleet = _runner().launch(endpoint_name, config_name, variant, description, config.data_capture_config)
            routes.append((fleet, float(variant.get("InitialVariantWeight") or 1.0)))
    except BaseException:
        for fleet, _ in routes:
            _runner().retire(fleet)
        raise
    return routes


def _adopt_config(backend: Any, endpoint: Any, config_name: str) -> None:
    """DescribeEndpoint's view of the config the endpoint now runs."""
    config = backend.endpoint_configs.get(config_name)
    endpoint.endpoint_config_name = config_name
    if config is not None:
        endpoint.production_variants = endpoint._process_production_variants(config.production_variants)
        endpoint.data_capture_config = config.data_capture_config


# -- CreateEndpoint / DeleteEndpoint -------------------------------------------------------------------


def _create_endpoint(self: Any, endpoint_name: str, endpoint_config_name: str, tags: list[dict[str, str]]) -> Any:
    from moto.sagemaker.exceptions import ValidationError
    from moto.sagemaker.models import SageMakerModelBackend

    with _LOCK:
        existing = self.endpoints.get(endpoint_name)
        if existing is not None:
            raise ValidationError(message=f"Cannot create already existing endpoint \"{existing.arn}\".")
        original = PATCHES.original(SageMakerModelBackend, "create_endpoint")
        endpoint = original(self, endpoint_name, endpoint_config_name, tags)
        _set(endpoint, "Creating")
        live = _ENDPOINTS[_key(self, endpoint_name)] = _Live()

    def bring_up() -> None:
        try:
            routes = _launch(self, endpoint_name, endpoint_config_name)
        except ServingFailure as exc:
            _set(endpoint, "Failed", str(exc))
            return
        except Exception as exc:  # the emulator's own fault: the endpoint fails as on an internal error
            LOG.exception("endpoint %s could not be created", endpoint_name)
            _set(endpoint, "Failed", f"Request to service failed. If failure persists after retry, contact "
                                     f"customer support. ({exc})")
            return
        with live.lock:
            live.routes = routes
        if self.endpoints.get(endpoint_name) is not endpoint:  # deleted meanwhile
            _retire_all(live)
            return
        _set(endpoint, "InService")

    threading.Thread(target=bring_up, name=f"endpoint-{endpoint_name}", daemon=True).start()
    return endpoint


def _retire_all(live: _Live) -> None:
    with live.lock:
        fleets, live.routes = [fleet for fleet, _ in live.routes], []
    for fleet in fleets:
        _runner().retire(fleet)


def _delete_endpoint(self: Any, endpoint_name: str) -> None:
    from moto.sagemaker.models import SageMakerModelBackend

    with _LOCK:
        PATCHES.original(SageMakerModelBackend, "delete_endpoint")(self, endpoint_name)
        live = _ENDPOINTS.pop(_key(self, endpoint_name), None)
    if live is not None:
        threading.Thread(target=_retire_all, args=(live,), name=f"delete-{endpoint_name}", daemon=True).start()
    _save()


# -- UpdateEndpoint ----------------------------------------------------------------------------------


def _update_endpoint(self: Any, endpoint_name: str, endpoint_config_name: str,
                     deployment_config: dict[str, Any] | None = None) -> Any:
    from moto.sagemaker.exceptions import ValidationError
    from moto.sagemaker.models import FakeEndpoint, FakeEndpointConfig

    with _LOCK:
        endpoint = self.endpoints.get(endpoint_name)
        if endpoint is None:
            arn = FakeEndpoint.arn_formatter(endpoint_name, self.account_id, self.region_name)
            raise ValidationError(message=f"Could not find endpoint \"{arn}\".")
        if endpoint_config_name not in self.endpoint_configs:
            arn = FakeEndpointConfig.arn_formatter(endpoint_config_name, self.account_id, self.region_name)
            raise ValidationError(message=f"Could not find endpoint configuration \"{arn}\".")
        if endpoint.endpoint_status != "InService":
            raise ValidationError(message=f"Cannot update in-progress endpoint \"{endpoint.arn}\".")
        _set(endpoint, "Updating")
        live = _ENDPOINTS.setdefault(_key(self, endpoint_name), _Live())
    threading.Thread(target=_deploy, args=(self, endpoint, live, endpoint_config_name, deployment_config or {}),
                     name=f"update-{endpoint_name}", daemon=True).start()
    return endpoint


def _steps(routing: dict[str, Any]) -> list[float]:
    """The traffic share of the new fleet after each shift of a TrafficRoutingConfiguration."""
    kind = routing.get("Type", "ALL_AT_ONCE")
    size = routing.get("CanarySize" if kind == "CANARY" else "LinearStepSize") or {}
    # INSTANCE_COUNT sizes are shares of one instance per fleet offline: the whole of it.
    share = min(1.0, float(size.get("Value", 100)) / 100) if size.get("Type") == "CAPACITY_PERCENT" else 1.0
    if kind == "CANARY":
        return [share, 1.0] if share < 1 else [1.0]
    if kind == "LINEAR":
        steps = [min(1.0, share * n) for n in range(1, int(1 / share) + 2)] if share > 0 else [1.0]
        return sorted(set(steps))
    return [1.0]


def _alarming(backend: Any, alarms: list[str]) -> list[str]:
    from moto.cloudwatch.models import cloudwatch_backends

    known = cloudwatch_backends[backend.account_id][backend.region_name].alarms
    return [name for name in alarms if getattr(known.get(name), "state_value", None) == "ALARM"]


def _bake(backend: Any, alarms: list[str], seconds: float) -> list[str]:
    """Watches the alarms for `seconds`; the ones in ALARM (empty: the bake passed)."""
    deadline = time.monotonic() + seconds
    while True:
        firing = _alarming(backend, alarms)
        left = deadline - time.monotonic()
        if firing or left <= 0:
            return firing
        time.sleep(min(ALARM_POLL_SECONDS, left))


def _shift(live: _Live, old: list[tuple[Fleet, float]], new: list[tuple[Fleet, float]], share: float) -> None:
    with live.lock:
        live.routes = [(f, w * (1 - share)) for f, w in old if share < 1] + [(f, w * share) for f, w in new]


def _deploy(backend: Any, endpoint: Any, live: _Live, config_name: str, deployment: dict[str, Any]) -> None:
    runner = _runner()
    with live.lock:
        old = list(live.routes)
    try:
        new = _launch(backend, endpoint.endpoint_name, config_name)
    except ServingFailure as exc:
        _set(endpoint, "InService", str(exc))  # the old fleet never stopped serving
        return
    except Exception as exc:
        LOG.exception("endpoint %s could not be updated", endpoint.endpoint_name)
        _set(endpoint, "InService", f"Request to service failed. ({exc})")
        return
    if backend.endpoints.get(endpoint.endpoint_name) is not endpoint:  # deleted meanwhile: nothing to shift to
        for fleet, _ in new:
            runner.retire(fleet)
        return
    policy = deployment.get("BlueGreenUpdatePolicy") or {}
    routing = policy.get("TrafficRoutingConfiguration") or {}
    alarms = [str(a["AlarmName"]) for a in (deployment.get("AutoRollbackConfiguration") or {}).get("Alarms") or []]
    wait = float(routing.get("WaitIntervalInSeconds") or 0) * runner.time_scale
    for share in _steps(routing):
        _shift(live, old, new, share)
        firing = _bake(backend, alarms, wait)
        if firing:
            _set(endpoint, "RollingBack", endpoint.failure_reason)
            _shift(live, old, new, 0.0)
            for fleet, _ in new:
                runner.retire(fleet)
            _set(endpoint, "InService", f"Update was rolled back: the alarm(s) {', '.join(firing)} went into "
                                        f"ALARM state during the deployment.")
            return
    _adopt_config(backend, endpoint, config_name)
    _set(endpoint, "InService")
    time.sleep(float(policy.get("TerminationWaitInSeconds") or 0) * runner.time_scale)
    for fleet, _ in old:
        runner.retire(fleet)


def _response_update_endpoint(self: Any) -> Any:
    from moto.core.responses import ActionResult

    endpoint = self.sagemaker_backend.update_endpoint(
        endpoint_name=self._get_param("EndpointName"), endpoint_config_name=self._get_param("EndpointConfigName"),
        deployment_config=self._get_param("DeploymentConfig"))
    return ActionResult({"EndpointArn": endpoint.arn})


# -- InvokeEndpoint ------------------------------------------------------------------------------------


def _error(status: int, code: str | None, fields: dict[str, Any]) -> tuple[int, dict[str, str], str]:
    # moto takes a response tuple's status from its "status" header.
    headers = {"Content-Type": "application/json", "status": str(status)}
    if code:
        headers["x-amzn-ErrorType"] = code
    return status, headers, json.dumps(fields)


def _model_error(region: str, account: str, fleet: Fleet, status: int | None, message: str) -> Any:
    group = LOG_GROUP_PREFIX + fleet.endpoint
    kind = "client" if status is not None and 400 <= status < 500 else "server"
    text = (f"Received {kind} error ({status or 0}) from primary with message \"{message}\". See "
            f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}#logEventViewer:group={group} "
            f"in account {account} for more information.")
    fields: dict[str, Any] = {"Message": text, "OriginalMessage": message,
                              "LogStreamArn": f"arn:aws:logs:{region}:{account}:log-group:{group}"}
    if status is not None:
        fields["OriginalStatusCode"] = status
    return _error(424, "ModelError", fields)


def _publish(backend: Any, fleet: Fleet, metrics: dict[str, tuple[float, str]]) -> None:
    """Metrics of one variant as SageMaker publishes them, put into moto's CloudWatch backend of the endpoint's
    account and region (name -> (value, unit))."""
    from moto.cloudwatch.models import cloudwatch_backends

    dimensions = [{"Name": "EndpointName", "Value": fleet.endpoint}, {"Name": "VariantName", "Value": fleet.variant}]
    at = _now().replace(tzinfo=None)  # moto compares a query's StartTime with naive UTC timestamps
    cloudwatch_backends[backend.account_id][backend.region_name].put_metric_data(METRICS_NAMESPACE, [
        {"MetricName": name, "Value": value, "Unit": unit, "Dimensions": dimensions, "Timestamp": at}
        for name, (value, unit) in metrics.items()])


def _invoked(backend: Any, fleet: Fleet, received: float, sent: float, status: int | None) -> None:
    """The invocation metrics of one request: ModelLatency from sending it to the server until its answer was
    read, OverheadLatency the rest of its time here; `status` None: no answer in time (a 5XX)."""
    answered = time.perf_counter()
    client_error, server_error = status is not None and 400 <= status < 500, status is None or status >= 500
    _publish(backend, fleet, {
        "Invocations": (1.0, "None"),
        "Invocation4XXErrors": (float(client_error), "None"),
        "Invocation5XXErrors": (float(server_error), "None"),
        "ModelLatency": ((answered - sent) * 1e6, "Microseconds"),
        "OverheadLatency": ((sent - received) * 1e6, "Microseconds")})


def _revive(backend: Any, endpoint: Any, live: _Live) -> None:
    """A restored InService endpoint's fleet, brought up by its first invocation (Failed if it cannot come up)."""
    with live.revive:
        if live.fleets() or endpoint.endpoint_status != "InService":
            return
        started = time.perf_counter()
        try:
            routes = _launch(backend, endpoint.endpoint_name, endpoint.endpoint_config_name)
        except ServingFailure as exc:
            _set(endpoint, "Failed", str(exc))
            return
        with live.lock:
            live.routes = routes
        setup = (time.perf_counter() - started) * 1e6
        for fleet, _ in routes:
            if fleet.serverless:
                _publish(backend, fleet, {"ModelSetupTime": (setup, "Microseconds")})


def _invoke_endpoint(self: Any) -> Any:
    from moto.sagemaker.models import sagemaker_backends

    received = time.perf_counter()
    name = unquote(self.path.split("?")[0].split("/")[2])
    backend = sagemaker_backends[self.current_account][self.region]
    live = _ENDPOINTS.get(_key(backend, name))
    endpoint = backend.endpoints.get(name)
    if live is not None and endpoint is not None and not live.fleets():
        _revive(backend, endpoint, live)
    fleet = live.pick(self.headers.get("X-Amzn-SageMaker-Target-Variant")) if live and endpoint else None
    if fleet is None:
        return _error(400, "ValidationError", {"message": f"Endpoint {name} of account {self.current_account} "
                                                          f"not found."})
    body = self.raw_body if isinstance(self.raw_body, bytes) else (self.raw_body or "").encode()
    if len(body) > fleet.max_payload:
        return _error(413, None, {"message": f"HTTP content length exceeded {fleet.max_payload} bytes."})
    sent = time.perf_counter()
    try:
        result = _runner().invoke(fleet, body, self.headers.get("Content-Type"), self.headers.get("Accept"))
    except InvocationTimeout:
        _invoked(backend, fleet, received, sent, None)
        return _model_error(self.region, self.current_account, fleet, None, TIMED_OUT)
    _invoked(backend, fleet, received, sent, result.status)
    if not 200 <= result.status < 300:
        return _model_error(self.region, self.current_account, fleet, result.status,
                            result.body.decode("utf-8", "replace"))
    return 200, {"Content-Type": result.content_type, "x-Amzn-Invoked-Production-Variant": fleet.variant}, result.body


# -- apply / remove --------------------------------------------------------------------------------------


def apply(runner: LocalServingRunner) -> None:
    """Install the hosting patches (idempotent), serving through `runner`."""
    global _RUNNER
    from moto.sagemaker.models import SageMakerModelBackend
    from moto.sagemaker.responses import SageMakerResponse
    from moto.sagemakerruntime.responses import SageMakerRuntimeResponse

    with _LOCK:
        _RUNNER = runner
        if not PATCHES:
            PATCHES.replace(SageMakerModelBackend, "create_endpoint", _create_endpoint)
            PATCHES.replace(SageMakerModelBackend, "delete_endpoint", _delete_endpoint)
            PATCHES.add(SageMakerModelBackend, "update_endpoint", _update_endpoint)
            PATCHES.add(SageMakerResponse, "update_endpoint", _response_update_endpoint)
            PATCHES.replace(SageMakerRuntimeResponse, "invoke_endpoint", _invoke_endpoint)
            # An invocation's body is the model's bytes (application/x-npy): moto would decode it as UTF-8 first
            # and answer its own 500 page.
            PATCHES.replace(SageMakerRuntimeResponse, "use_raw_body", True)
        _restore(runner.work_dir / STATE_FILE)


def remove() -> None:
    """Restore moto's originals; endpoints' processes are stopped by the runner (LocalServingRunner.stop_all)."""
    global _RUNNER
    with _LOCK:
        PATCHES.remove()
        _ENDPOINTS.clear()
        _RUNNER = None

