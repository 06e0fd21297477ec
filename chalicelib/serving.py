"""Serving: endpoints that put a trained model behind SageMaker hosting (Serverless Inference by default, a real-time
endpoint when an instance type is given), deployed by the deployment state machine (cdk/serving.py).

Every request is validated before any AWS call: the settings (the schema checks ranges; the rules across fields
are here), the MODEL reference (registry.resolve), and the model's code, which must define `model_fn` in
`inference.py` (the scikit-learn container's default model_fn raises, so such a model would fail only at its first
request). Then the endpoint row is written (the name is taken) and one execution per deployment is started, named
by the deployment id, so a retried request starts nothing twice.

Names, all derived from fingerprints (a retried execution finds what its first attempt created):
  SageMaker endpoint   kaos-<12 hex of the incarnation>-<ws>-<name>-<8 hex of (ws, incarnation, name, created_at)>,
                       at most 63 characters
  Model                kaos-m-<24 hex of (workspace role, image, model data, code bundle)>
  EndpointConfig       kaos-c-<24 hex of (model, settings, capture destination, endpoint)>
  Alarm (real-time)    <SageMaker endpoint>-5xx, on Invocation5XXErrors: the rollout's auto-rollback alarm
The deployment pipeline's tasks are `prepare` (requests, and whether to create or update) and `record`.
"""
from __future__ import annotations

import ast
import logging
from collections.abc import Callable
from typing import Any

from chalicelib.adapters import (
    Executions,
    EndpointMetrics,
    EndpointNotInService,
    Hosting,
    LogReader,
    NotAcceptable,
    ObjectStore,
    PayloadTooLarge,
    Runtime,
    UnsupportedMediaType,
    INFERENCE_CONTENT_TYPES as CONTENT_TYPES,
    execution_arn_for,
)
from chalicelib.config import Settings
from chalicelib.costs import endpoint_cost_of, endpoint_costs
from chalicelib.errors import ConcurrentUpdate, Conflict, InputInvalid, ValidationFailed
from chalicelib.provenance import Provenance
from chalicelib.registry import ModelRef, Registry, check_name, fingerprint, hosted_name, version_node
from chalicelib.repositories.endpoints import DELETED, Endpoint, EndpointNotFound, EndpointRepository
from chalicelib.repositories.workspaces import Workspace, WorkspaceRepository
from chalicelib.snapshots import Snapshots
from chalicelib.tenancy import role_arn
from chalicelib.domain import now, workspace_prefix

log = logging.getLogger("kaos.serving")

MAX_DEPLOYMENTS = 20  # kept in the endpoint row, newest first
MAX_LOG_EVENTS = 10_000  # FilterLogEvents' page limit
INFERENCE_PROGRAM = "inference.py"
MAX_INFERENCE_BYTES = 1 << 20  # read to find model_fn: a serving script, not a data file
# SageMaker's payload limits (InvokeEndpoint): 4 MB for Serverless Inference, 6 MB for real-time endpoints.
PAYLOAD_LIMITS = {"serverless": 4 * 1024 * 1024, "realtime": 6 * 1024 * 1024}
GPU_FAMILIES = ("ml.g", "ml.p", "ml.inf", "ml.trn")
DEFAULTS = {"memory_mb": 2048, "max_concurrency": 5, "instance_count": 1, "capture_percent": 0}
# Real-time rollouts: 10 % of capacity first, baked for 5 minutes under the 5XX alarm, then the rest.
CANARY_PERCENT = 10
CANARY_WAIT_SECONDS = 300
ALARM_THRESHOLD = 1
LIVE = ("Creating", "Updating", "InService", "RollingBack", "Failed")
# How often a kill re-reads an endpoint its deployment's state machine keeps changing (each change is a
# ConcurrentUpdate), as for jobs and grids.
KILL_ATTEMPTS = 5


class MissingModelFn(ValidationFailed):
    code = "MissingModelFn"


class NothingToRollBack(Conflict):
    code = "NothingToRollBack"


class EndpointKilled(Conflict):
    code = "EndpointKilled"


class EndpointBusy(Conflict):
    code = "EndpointBusy"


def sagemaker_endpoint_name(workspace: str, incarnation: str, name: str, created_at: str) -> str:
    return hosted_name(workspace, incarnation, name, [workspace, incarnation, name, created_at])


def defines_model_fn(source: bytes) -> bool:
    """Whether a Python module defines or imports `model_fn` at top level (read, never run)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "model_fn":
            return True
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "model_fn" for t in node.targets):
            return True
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == "model_fn" for a in node.names):
            return True
    return False


def serving_settings(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(kind, settings) from a deploy request: the rules across fields (ranges are the schema's)."""
    instance_type = body.get("instance_type")
    if instance_type is None:
        settings = {"memory_mb": body.get("memory_mb", DEFAULTS["memory_mb"]),
                    "max_concurrency": body.get("max_concurrency", DEFAULTS["max_concurrency"])}
        kind = "serverless"
    else:
        if str(instance_type).startswith(GPU_FAMILIES) and ("memory_mb" in body or "max_concurrency" in body):
            raise ValidationFailed("instance_type: serverless endpoints have no GPU (memory_mb and max_concurrency "
                                   "are serverless settings)")
        for field in ("memory_mb", "max_concurrency"):
            if field in body:
                raise ValidationFailed(f"{field}: applies to serverless endpoints only (drop instance_type)")
        settings = {"instance_type": instance_type, "instance_count": body.get("instance_count", 1)}
        kind = "realtime"
    if kind == "serverless" and "instance_count" in body:
        raise ValidationFailed("instance_count: applies to real-time endpoints only (give instance_type)")
    capture = body.get("capture_percent", DEFAULTS["capture_percent"])
    return kind, {"memory_mb": None, "max_concurrency": None, "instance_type": None, "instance_count": None,
                  **settings, "capture_percent": capture}


class Endpoints:
    def __init__(self, *, settings: Settings, repository: EndpointRepository, registry: Registry,
                 workspaces: WorkspaceRepository, store: ObjectStore, snapshots: Snapshots, provenance: Provenance,
                 executions: Executions, hosting: Hosting, runtime: Runtime,
                 logs: Callable[[str], LogReader], meter: EndpointMetrics) -> None:
        self._settings = settings
        self.repository = repository
        self._registry = registry
        self._workspaces = workspaces
        self._store = store
        self._snapshots = snapshots
        self._provenance = provenance
        self._executions = executions
        self._hosting = hosting
        self._runtime = runtime
        self._logs = logs
        self._meter = meter

    # --- the API ----------------------------------------------------------------------------------------------
    def deploy(self, workspace: Workspace, user: str, body: dict[str, Any]) -> dict[str, Any]:
        kind, settings = serving_settings(body)
        model = self._registry.resolve(workspace.name, str(body["model"]))
        self.check_code(workspace.name, model)
        name = check_name(str(body.get("name") or model.group or _short(model.job_id)), "name")
        at = now()
        endpoint = Endpoint(workspace.name, name, "Creating",
                            sagemaker_endpoint_name(workspace.name, workspace.created_at, name, at), kind, settings,
                            model.document(), at, user, at)
        self._settle(workspace.name, name)
        endpoint = self.repository.create(endpoint, workspace.created_at)
        return self._start(workspace, endpoint, model, "deploy")

    def promote(self, workspace: Workspace, name: str, reference: str) -> dict[str, Any]:
        endpoint = self._live(workspace.name, name)
        model = self._registry.resolve(workspace.name, reference)
        self.check_code(workspace.name, model)
        return self._start(workspace, endpoint, model, "promote")

    def rollback(self, workspace: Workspace, name: str) -> dict[str, Any]:
        endpoint = self._live(workspace.name, name)
        succeeded = [d for d in endpoint.deployments if d["status"] == "Succeeded"]
        current = endpoint.model.get("model_data")
        previous = next((d for d in succeeded if d["model"]["model_data"] != current), None)
        if previous is None:
            raise NothingToRollBack(f"endpoint {name!r} has no earlier successful deployment of another model")
        return self._start(workspace, endpoint, ModelRef.from_document(previous["model"]), "rollback")

    def kill(self, workspace: str, name: str, user: str) -> dict[str, Any]:
        endpoint = self.repository.get(workspace, name)
        if endpoint.status in ("Deleting", DELETED):
            raise EndpointKilled(f"endpoint {name!r} is already {endpoint.status.lower()}")
        return self.describe(self._halt(endpoint, f"endpoint killed by {user}"))

    def halt_all(self, workspace: str, reason: str) -> int:
        """`workspace kill`: stops every endpoint of the workspace and deletes what it runs (its rows go with the
        workspace's). Returns how many were live."""
        halted, after = 0, None
        while True:
            endpoints, after = self.repository.page(workspace, 100, after)
            for endpoint in endpoints:
                if endpoint.status not in ("Deleting", DELETED):
                    self._halt(endpoint, reason)
                    halted += 1
                for deployment in endpoint.deployments:
                    self._remove(deployment)
                self._hosting.delete_alarm(f"{endpoint.sagemaker_endpoint}-5xx")
            if after is None:
                return halted

    def _halt(self, endpoint: Endpoint, reason: str) -> Endpoint:
        """Stops the deployment in progress, deletes the SageMaker endpoint: Deleting (Deleted once it is gone).
        A deployment's state machine that changed the row meanwhile (ConcurrentUpdate) is read again and the halt
        decided on what it wrote (stopping and deleting again are harmless), KILL_ATTEMPTS times."""
        for _ in range(KILL_ATTEMPTS):
            for deployment in endpoint.deployments:
                if deployment["status"] == "InProgress":
                    self._executions.stop(self._execution(deployment["deployment"]), reason)
                    deployment.update(status="Stopped", ended_at=now(), failure_reason=reason)
            self._hosting.delete_endpoint(endpoint.sagemaker_endpoint)
            endpoint.status, endpoint.updated_at = "Deleting", now()
            try:
                self.repository.save(endpoint)
                return endpoint
            except ConcurrentUpdate:
                endpoint = self.repository.get(endpoint.workspace, endpoint.name)
                if endpoint.status in ("Deleting", DELETED):  # halted meanwhile
                    return endpoint
        raise Conflict(f"endpoint {endpoint.name!r} kept changing while it was being killed; kill it again")

    def info(self, workspace: str, name: str) -> dict[str, Any]:
        endpoint = self._settle(workspace, name) or self.repository.get(workspace, name)
        return self.describe(endpoint, endpoint_costs([endpoint], self._meter)[endpoint.name])

    def page(self, workspace: str, limit: int, after: str | None) -> dict[str, Any]:
        endpoints, next_name = self.repository.page(workspace, limit, after)
        costs = endpoint_costs(endpoints, self._meter)  # one CloudWatch request for the page
        return {"endpoints": [self.describe(e, costs[e.name]) for e in endpoints], "next": next_name}

    def invoke(self, workspace: str, name: str, body: bytes, content_type: str | None,
               accept: str | None) -> tuple[bytes, str]:
        endpoint = self.repository.get(workspace, name)
        limit = PAYLOAD_LIMITS[endpoint.kind]
        if len(body) > limit:
            raise PayloadTooLarge(f"body: {len(body)} bytes is over the {endpoint.kind} limit of {limit} bytes")
        media = (content_type or "application/json").split(";", 1)[0].strip().lower()
        if media not in CONTENT_TYPES:
            raise UnsupportedMediaType(f"Content-Type: {media!r} is not one of {', '.join(CONTENT_TYPES)}")
        wanted = accept or "application/json"
        if not any(a.split(";", 1)[0].strip() in (*CONTENT_TYPES, "*/*") for a in wanted.split(",")):
            raise NotAcceptable(f"Accept: {wanted!r} names none of {', '.join(CONTENT_TYPES)}")
        if endpoint.status not in ("InService", "Updating", "RollingBack"):
            raise EndpointNotInService(f"endpoint {name!r} is {endpoint.status}; it serves once InService")
        answer = self._runtime.invoke(endpoint.sagemaker_endpoint, body, content_type or media, wanted)
        return answer.body, answer.content_type

    def logs(self, workspace: str, name: str, token: str | None, limit: int) -> dict[str, Any]:
        """The model server's log: SageMaker writes it to /aws/sagemaker/Endpoints/<endpoint>, one stream per
        instance (AllTraffic/<instance id>)."""
        if not 1 <= limit <= MAX_LOG_EVENTS:
            raise ValidationFailed(f"limit: must be 1 to {MAX_LOG_EVENTS} events")
        endpoint = self.repository.get(workspace, name)
        page = self._logs(endpoint.sagemaker_endpoint).page("AllTraffic/", limit, token)
        return {"job": name, "status": endpoint.status, "events": page.events, "next": page.token}

    def check_code(self, workspace: str, model: ModelRef) -> None:
        """400 MissingModelFn unless the model's code snapshot has inference.py defining model_fn (read from its blob:
        one manifest and one small object)."""
        manifest = self._snapshots.manifest(workspace, model.code)
        entry = next((f for f in manifest.files if f.path == INFERENCE_PROGRAM), None)
        if model.framework != "sklearn":
            return  # the other framework containers have a default model_fn
        if entry is None or entry.size is None or entry.size > MAX_INFERENCE_BYTES:
            raise MissingModelFn(f"model: the code of job {model.job_id} has no {INFERENCE_PROGRAM} (the scikit-learn "
                                 "container serves a model through its model_fn); add one and train again")
        if not defines_model_fn(self._snapshots.read_blob(workspace, entry)):
            raise MissingModelFn(f"model: {INFERENCE_PROGRAM} of job {model.job_id} defines no model_fn (the "
                                 "scikit-learn container has no default one)")

    # --- internals --------------------------------------------------------------------------------------------
    def _live(self, workspace: str, name: str) -> Endpoint:
        endpoint = self.repository.get(workspace, name)
        if endpoint.status in ("Deleting", DELETED):
            raise EndpointKilled(f"endpoint {name!r} was killed")
        if endpoint.status != "InService":
            raise EndpointBusy(f"endpoint {name!r} is {endpoint.status}; promote or roll back once it is InService")
        return endpoint

    def _settle(self, workspace: str, name: str) -> Endpoint | None:
        """A Deleting endpoint whose SageMaker endpoint is gone becomes Deleted, and its configs and models are
        deleted (SageMaker deletes an endpoint asynchronously; the next read finishes the kill)."""
        try:
            endpoint = self.repository.get(workspace, name)
        except EndpointNotFound:
            return None
        if endpoint.status != "Deleting" or self._hosting.endpoint(endpoint.sagemaker_endpoint) is not None:
            return endpoint
        for deployment in endpoint.deployments:
            self._remove(deployment)
        self._hosting.delete_alarm(f"{endpoint.sagemaker_endpoint}-5xx")
        endpoint.status, endpoint.updated_at = DELETED, now()
        self.repository.save(endpoint)
        return endpoint

    def _remove(self, deployment: dict[str, Any], keep: tuple[dict[str, Any], ...] = ()) -> None:
        """Deletes the deployment's config and model, unless one of `keep` uses the same (names are fingerprints:
        promoting the live model again names the live model)."""
        for field, delete in (("config_name", self._hosting.delete_config), ("model_name", self._hosting.delete_model)):
            name = deployment.get(field)
            if name and all(other.get(field) != name for other in keep):
                delete(name)

    def _execution(self, deployment: str) -> str:
        return execution_arn_for(self._settings.deployment_state_machine_arn, deployment)

    def _start(self, workspace: Workspace, endpoint: Endpoint, model: ModelRef, action: str) -> dict[str, Any]:
        number = (endpoint.deployments[0]["number"] + 1) if endpoint.deployments else 1
        deployment = "deploy-" + fingerprint([workspace.name, workspace.created_at, endpoint.name, endpoint.created_at,
                                       number], 24)
        at = now()
        endpoint.deployments = [{"deployment": deployment, "number": number, "action": action,
                                 "model": model.document(), "status": "InProgress", "started_at": at,
                                 "ended_at": None, "failure_reason": None}, *endpoint.deployments][:MAX_DEPLOYMENTS]
        if endpoint.status != "Creating":
            endpoint.status = "Updating"
        endpoint.updated_at = at
        self.repository.save(endpoint)
        try:
            self._executions.start(self._settings.deployment_state_machine_arn, deployment,
                                   {"workspace": workspace.name, "endpoint": endpoint.name,
                                    "deployment": deployment})
        except Exception as exc:
            self._fail(endpoint, deployment, f"the deployment could not be started: {exc}")
            raise
        return self.describe(endpoint)

    def _fail(self, endpoint: Endpoint, deployment: str, reason: str) -> None:
        for entry in endpoint.deployments:
            if entry["deployment"] == deployment:
                entry.update(status="Failed", ended_at=now(), failure_reason=reason)
        endpoint.status = "InService" if any(d["status"] == "Succeeded" for d in endpoint.deployments) else "Failed"
        endpoint.failure_reason, endpoint.updated_at = reason, now()
        self.repository.save(endpoint)

    @staticmethod
    def describe(endpoint: Endpoint, cost: dict[str, Any] | None = None) -> dict[str, Any]:
        """`cost`: metered (endpoint_costs); without it, instance-hours only (a deployment's own answer)."""
        public = ("deployment", "status", "started_at", "ended_at", "failure_reason")
        return {
            "name": endpoint.name, "workspace": endpoint.workspace, "status": endpoint.status,
            "failure_reason": endpoint.failure_reason, "sagemaker_endpoint": endpoint.sagemaker_endpoint,
            "kind": endpoint.kind, **{k: endpoint.settings.get(k) for k in (
                "memory_mb", "max_concurrency", "instance_type", "instance_count", "capture_percent")},
            "model": ModelRef.from_document(endpoint.model).public(),
            "deployments": [{**{k: d.get(k) for k in public}, "action": d.get("action"),
                             "model": ModelRef.from_document(d["model"]).public()} for d in endpoint.deployments],
            "created_at": endpoint.created_at, "updated_at": endpoint.updated_at,
            "invocations_path": f"/workspaces/{endpoint.workspace}/endpoints/{endpoint.name}/invocations",
            "cost": cost or endpoint_cost_of(endpoint),
        }

    # --- the deployment pipeline ------------------------------------------------------------------------------
    def prepare(self, workspace: str, name: str, deployment: str, poll_seconds: int) -> dict[str, Any]:
        """The SageMaker requests of one deployment, which of them already exist (a retried execution), and
        whether the endpoint is created or updated."""
        endpoint = self.repository.get(workspace, name)
        entry = _entry(endpoint, deployment)
        if entry["status"] != "InProgress":
            raise InputInvalid(f"deployment {deployment} already ended ({entry['status']})")
        found = self._workspaces.get(workspace)
        if found is None or found.killed_at is not None:
            raise InputInvalid(f"workspace {workspace!r} is gone")
        model = ModelRef.from_document(entry["model"])
        code_uri, _ = self._snapshots.sourcedir(workspace, model.code)
        role = role_arn(self._settings.workspace_role_prefix, workspace, found.created_at)
        model_name = "kaos-m-" + fingerprint([role, model.image, model.model_data, code_uri], 24)
        variant: dict[str, Any] = {"VariantName": "AllTraffic", "ModelName": model_name}
        settings = endpoint.settings
        if endpoint.kind == "serverless":
            variant["ServerlessConfig"] = {"MemorySizeInMB": settings["memory_mb"],
                                           "MaxConcurrency": settings["max_concurrency"]}
        else:
            variant.update(InstanceType=settings["instance_type"], InitialInstanceCount=settings["instance_count"])
        config: dict[str, Any] = {"ProductionVariants": [variant]}
        if settings.get("capture_percent"):
            config["DataCaptureConfig"] = {
                "EnableCapture": True, "InitialSamplingPercentage": settings["capture_percent"],
                "DestinationS3Uri": self._store.uri(f"{workspace_prefix(workspace)}endpoints/{name}/capture"),
                "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]}
        config_name = "kaos-c-" + fingerprint([model_name, config, endpoint.sagemaker_endpoint], 24)
        exists = self._hosting.endpoint(endpoint.sagemaker_endpoint) is not None
        request: dict[str, Any] = {"EndpointName": endpoint.sagemaker_endpoint, "EndpointConfigName": config_name}
        if exists and endpoint.kind == "realtime":
            request["DeploymentConfig"] = self._guardrails(endpoint.sagemaker_endpoint)
        entry.update(model_name=model_name, config_name=config_name, action_taken="update" if exists else "create")
        self.repository.save(endpoint)
        return {
            "model": {"ModelName": model_name, "ExecutionRoleArn": role, "PrimaryContainer": {
                "Image": model.image, "ModelDataUrl": model.model_data, "Environment": {
                    "SAGEMAKER_PROGRAM": INFERENCE_PROGRAM, "SAGEMAKER_SUBMIT_DIRECTORY": code_uri,
                    "SAGEMAKER_CONTAINER_LOG_LEVEL": "20", "SAGEMAKER_REGION": self._region()}}},
            "config": {"EndpointConfigName": config_name, **config},
            "endpoint": request,
            "model_exists": self._hosting.model_exists(model_name),
            "config_exists": self._hosting.config_exists(config_name),
            "update": exists, "poll_seconds": poll_seconds, "polls": 0,
        }

    def _guardrails(self, sagemaker_endpoint: str) -> dict[str, Any]:
        alarm = f"{sagemaker_endpoint}-5xx"
        self._hosting.put_error_alarm(alarm, sagemaker_endpoint, ALARM_THRESHOLD)
        return {"BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": {"Type": "CANARY", "WaitIntervalInSeconds": CANARY_WAIT_SECONDS,
                                                    "CanarySize": {"Type": "CAPACITY_PERCENT",
                                                                   "Value": CANARY_PERCENT}},
                    "TerminationWaitInSeconds": 0, "MaximumExecutionTimeoutInSeconds": 3 * CANARY_WAIT_SECONDS},
                "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": alarm}]}}

    def _region(self) -> str:
        return str(self._hosting.client.meta.region_name)

    def record(self, workspace: str, name: str, deployment: str, outcome: str,
               detail: dict[str, Any]) -> dict[str, Any]:
        """The deployment's end: the live model, or the failure (and what the failed deployment created is
        deleted). A rolled-back update ends InService on the old model, with the rollback's reason."""
        endpoint = self.repository.get(workspace, name)
        entry = _entry(endpoint, deployment)
        if entry["status"] != "InProgress":
            return {"endpoint": name, "status": endpoint.status, "deployment": entry["status"]}
        at = now()
        rolled_back = outcome == "Completed" and detail.get("EndpointConfigName") not in (None,
                                                                                        entry.get("config_name"))
        if outcome == "Completed" and not rolled_back:
            # Lineage first: its writes are idempotent, so a retried Record (after a failed save) rewrites nothing,
            # while a Record retried after the save would find the deployment ended and write none.
            self._record_lineage(endpoint, ModelRef.from_document(entry["model"]), at)
            entry.update(status="Succeeded", ended_at=at)
            endpoint.model, endpoint.status, endpoint.failure_reason = entry["model"], "InService", None
            endpoint.updated_at = at
            self.repository.save(endpoint)
        else:
            reason = str(detail.get("FailureReason") or "") if rolled_back else _reason(detail)
            self._fail(endpoint, deployment, reason or "rolled back by its alarm")
            if entry.get("action_taken") == "create":
                self._hosting.delete_endpoint(endpoint.sagemaker_endpoint)
            self._remove(entry, keep=tuple(d for d in endpoint.deployments if d["status"] == "Succeeded"))
        return {"endpoint": name, "status": endpoint.status, "deployment": _entry(endpoint, deployment)["status"]}

    def _record_lineage(self, endpoint: Endpoint, model: ModelRef, at: str) -> None:
        ws, node = endpoint.workspace, f"endpoint:{endpoint.name}"
        self._provenance.add_node(ws, node, "endpoint", {"sagemaker_endpoint": endpoint.sagemaker_endpoint,
                                                         "kind": endpoint.kind}, at)
        served = version_node(model.group, model.version) if model.group and model.version else \
            f"model:{model.job_id}"
        self._provenance.add_edge(ws, node, "used", served, at)
        if endpoint.settings.get("capture_percent"):
            capture = f"capture:{endpoint.name}"
            self._provenance.add_node(ws, capture, "capture", {
                "uri": self._store.uri(f"{workspace_prefix(ws)}endpoints/{endpoint.name}/capture")}, at)
            self._provenance.add_edge(ws, node, "produced", capture, at)


def _entry(endpoint: Endpoint, deployment: str) -> dict[str, Any]:
    found = next((d for d in endpoint.deployments if d["deployment"] == deployment), None)
    if found is None:
        raise InputInvalid(f"deployment {deployment} is not one of endpoint {endpoint.name!r}")
    return found


def _reason(error: dict[str, Any]) -> str:
    return f"{error.get('Error', 'Error')}: {error.get('Cause', '')}"[:2000]


def _short(job_id: str) -> str:
    """`train-<24 hex>` -> `train-<8 hex>`: a default endpoint name."""
    kind, _, digest = job_id.partition("-")
    return f"{kind}-{digest[:8]}"
