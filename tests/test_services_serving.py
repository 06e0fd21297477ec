"""The model registry and the endpoints service without the embedded stack: in-memory repositories, moto in process
for S3, Step Functions and SageMaker hosting (its endpoints are InService at once)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from chalicelib.adapters import (
    EndpointNotInService,
    InvocationTimeout,
    ModelError,
    PayloadTooLarge,
    Runtime,
    UnsupportedMediaType,
)
from chalicelib.errors import NotFound, ValidationFailed
from chalicelib.registry import AliasNotFound, JobNotCompleted, VersionNotApproved
from chalicelib.repositories.endpoints import NameTaken
from chalicelib.repositories.models import VersionNotFound
from chalicelib.repositories.workspaces import Workspace
from chalicelib.serving import EndpointKilled, MissingModelFn, NothingToRollBack
from chalicelib.tenancy import incarnation_token
from chalicelib.wiring import Wiring
from tests.service_wiring import BUCKET, OWNER, executions, services, snapshot, workspace  # noqa: F401



@pytest.fixture(autouse=True)
def s3_keeps_checksums() -> Iterator[None]:
    """S3 keeps the SHA-256 sent with a PUT (moto does not: the embedded stack's patch adds it), which Prepare's
    check of the code bundle reads. Installed only if no embedded stack of this process installed it already."""
    from kaos.local import patches_s3

    mine = not patches_s3.PATCHES
    if mine:
        patches_s3.apply()
    yield
    if mine:
        patches_s3.remove()


INFERENCE = b"import joblib\n\ndef model_fn(model_dir):\n    return joblib.load(model_dir + '/model.joblib')\n"


def _job(wiring: Wiring, ws: Workspace, n: int, code: dict[str, bytes] | None = None,
         status: str = "COMPLETED") -> str:
    """A training job of `ws` that ended `status` (with a model when COMPLETED), as RecordOutcome leaves it."""
    files = code or {"train.py": b"print('train')\n", "inference.py": INFERENCE}
    request = {"code": snapshot(wiring, ws.name, "code", files),
               "data": {"training": snapshot(wiring, ws.name, "data", {"rows.csv": b"1\n"})}, "params": {"n": n}}
    job_id = str(wiring.training.submit(ws.name, ws.created_at, OWNER, request)[0]["id"])
    row = wiring.repositories.jobs.get(ws.name, job_id)
    uri = f"s3://{BUCKET}/ws/{ws.name}/jobs/{job_id}/output/{job_id}/output/model.tar.gz" if status == "COMPLETED" \
        else None
    wiring.repositories.jobs.set_status(row, status, "t1", model_uri=uri)
    wiring.provenance.add_node(ws.name, f"model:{job_id}", "model", {"uri": uri, "sha256": f"{n:064x}"}, "t1")
    wiring.provenance.add_edge(ws.name, f"job:{job_id}", "produced", f"model:{job_id}", "t1")
    return job_id


def _sagemaker_runs(prepared: dict[str, Any]) -> None:
    """What the state machine's CreateModel/CreateEndpointConfig/CreateEndpoint|UpdateEndpoint states send."""
    sagemaker = boto3.client("sagemaker")
    if not prepared["model_exists"]:
        sagemaker.create_model(**prepared["model"])
    if not prepared["config_exists"]:
        sagemaker.create_endpoint_config(**prepared["config"])
    if prepared["update"]:
        # moto 5.2.5 has no UpdateEndpoint in process (the embedded stack's patch adds it): its end state instead,
        # the endpoint serving the new config.
        sagemaker.delete_endpoint(EndpointName=prepared["endpoint"]["EndpointName"])
    sagemaker.create_endpoint(EndpointName=prepared["endpoint"]["EndpointName"],
                              EndpointConfigName=prepared["endpoint"]["EndpointConfigName"])


def _deploy_through(wiring: Wiring, ws: Workspace, endpoint: dict[str, Any]) -> dict[str, Any]:
    """Runs the newest deployment of `endpoint` as the state machine would, and records its success."""
    deployment = endpoint["deployments"][0]["deployment"]
    prepared = wiring.endpoints.prepare(ws.name, endpoint["name"], deployment, 2)
    _sagemaker_runs(prepared)
    described = boto3.client("sagemaker").describe_endpoint(EndpointName=endpoint["sagemaker_endpoint"])
    wiring.endpoints.record(ws.name, endpoint["name"], deployment, "Completed", described)
    return wiring.endpoints.info(ws.name, endpoint["name"])


def test_registry_versions_approval_and_aliases(services: Wiring) -> None:  # noqa: F811
    ws = workspace(services)
    first, second = _job(services, ws, 1), _job(services, ws, 2)
    version, created = services.registry.register(ws, "digits", first)
    assert created and version["version"] == 1 and version["status"] == "PendingManualApproval"
    assert services.registry.register(ws, "digits", first) == (version, False)
    assert services.registry.register(ws, "digits", second)[0]["version"] == 2
    with pytest.raises(JobNotCompleted):
        services.registry.register(ws, "digits", _job(services, ws, 3, status="FAILED"))
    with pytest.raises(VersionNotFound):
        services.registry.approve(ws.name, "digits", 9, "Approved")
    with pytest.raises(VersionNotApproved):
        services.registry.move_alias(ws.name, "digits", "champion", 1)
    services.registry.approve(ws.name, "digits", 1, "Approved")
    # On AWS the approval status is the version's SageMaker Model Package's too.
    sagemaker = boto3.client("sagemaker")
    (package_group,) = sagemaker.list_model_package_groups()["ModelPackageGroupSummaryList"]
    token = incarnation_token(ws.name, ws.created_at)
    assert package_group["ModelPackageGroupName"].startswith(f"kaos-{token}-ws-a-digits-")
    packages = sagemaker.list_model_packages(ModelPackageGroupName=package_group["ModelPackageGroupName"])
    assert sorted(p["ModelApprovalStatus"] for p in packages["ModelPackageSummaryList"]) == [
        "Approved", "PendingManualApproval"]
    assert services.registry.move_alias(ws.name, "digits", "champion", 1) == {"alias": "champion", "version": 1,
                                                                               "previous": None}
    assert services.registry.move_alias(ws.name, "digits", "challenger", 2)["previous"] is None
    group = services.registry.group(ws.name, "digits")
    assert [v["version"] for v in group["versions"]] == [2, 1] and group["versions"][1]["aliases"] == ["champion"]
    assert services.registry.resolve(ws.name, "digits@champion").job_id == first
    assert services.registry.resolve(ws.name, "digits/2").job_id == second
    with pytest.raises(AliasNotFound):
        services.registry.resolve(ws.name, "digits@nope")
    with pytest.raises(VersionNotApproved):  # the champion cannot be rejected from under its alias
        services.registry.approve(ws.name, "digits", 1, "Rejected")
    assert services.registry.move_alias(ws.name, "digits", "challenger", None) == {"alias": "challenger",
                                                                                   "previous": 2}
    lineage = services.provenance.lineage(ws.name, "version:digits.1", "up")
    assert {n["id"] for n in lineage["nodes"]} >= {"version:digits.1", f"model:{first}", f"job:{first}"}


def test_bad_deploys_are_refused_before_anything_is_created(services: Wiring) -> None:  # noqa: F811
    ws = workspace(services)
    no_model_fn = _job(services, ws, 1, {"train.py": b"print(1)\n", "inference.py": b"def predict_fn(x, m):\n"
                                                                                     b"    return x\n"})
    no_inference = _job(services, ws, 2, {"train.py": b"print(2)\n"})
    for job in (no_model_fn, no_inference):
        with pytest.raises(MissingModelFn):
            services.endpoints.deploy(ws, OWNER, {"model": job})
    good = _job(services, ws, 3)
    with pytest.raises(ValidationFailed, match="instance_type: serverless endpoints have no GPU"):
        services.endpoints.deploy(ws, OWNER, {"model": good, "instance_type": "ml.g5.xlarge", "memory_mb": 2048})
    with pytest.raises(ValidationFailed, match="instance_count"):
        services.endpoints.deploy(ws, OWNER, {"model": good, "instance_count": 2})
    with pytest.raises(NotFound):
        services.endpoints.deploy(ws, OWNER, {"model": "train-" + "0" * 24})
    with pytest.raises(JobNotCompleted):
        services.endpoints.deploy(ws, OWNER, {"model": _job(services, ws, 4, status="FAILED")})
    assert services.endpoints.page(ws.name, 10, None) == {"endpoints": [], "next": None}
    assert executions(services, services.settings.deployment_state_machine_arn) == []


def test_deploy_promote_rollback_and_kill(services: Wiring) -> None:  # noqa: F811
    ws = workspace(services)
    first, second = _job(services, ws, 1), _job(services, ws, 2)
    services.registry.register(ws, "digits", first)
    services.registry.register(ws, "digits", second)
    endpoint = services.endpoints.deploy(ws, OWNER, {"model": "digits/1", "capture_percent": 50})
    assert endpoint["name"] == "digits" and endpoint["status"] == "Creating" and endpoint["kind"] == "serverless"
    assert endpoint["memory_mb"] == 2048 and endpoint["model"] == {"job_id": first, "group": "digits", "version": 1,
                                                                    "model_sha256": f"{1:064x}"}
    hosted = f"kaos-{incarnation_token(ws.name, ws.created_at)}-ws-a-digits-"
    assert len(endpoint["sagemaker_endpoint"]) <= 63 and endpoint["sagemaker_endpoint"].startswith(hosted)
    deployment = endpoint["deployments"][0]["deployment"]
    assert executions(services, services.settings.deployment_state_machine_arn) == [deployment]
    with pytest.raises(NameTaken):
        services.endpoints.deploy(ws, OWNER, {"model": "digits/2"})

    prepared = services.endpoints.prepare(ws.name, "digits", deployment, 2)
    model = prepared["model"]
    assert model["ExecutionRoleArn"].startswith(services.settings.workspace_role_prefix)
    assert model["PrimaryContainer"]["ModelDataUrl"].endswith("model.tar.gz")
    assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_SUBMIT_DIRECTORY"].endswith("sourcedir.tar.gz")
    variant = prepared["config"]["ProductionVariants"][0]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 2048, "MaxConcurrency": 5}
    capture = prepared["config"]["DataCaptureConfig"]
    assert capture["DestinationS3Uri"] == f"s3://{BUCKET}/ws/ws-a/endpoints/digits/capture"
    assert not prepared["update"] and not prepared["model_exists"] and not prepared["config_exists"]
    # A retried execution finds what its first attempt created.
    _sagemaker_runs(prepared)
    again = services.endpoints.prepare(ws.name, "digits", deployment, 2)
    assert again["model_exists"] and again["config_exists"] and again["update"]

    services.endpoints.record(ws.name, "digits", deployment, "Completed", boto3.client(
        "sagemaker").describe_endpoint(EndpointName=endpoint["sagemaker_endpoint"]))
    with pytest.raises(NothingToRollBack):
        services.endpoints.rollback(ws, "digits")
    live = services.endpoints.info(ws.name, "digits")
    assert live["status"] == "InService" and live["deployments"][0]["status"] == "Succeeded"
    lineage = services.provenance.lineage(ws.name, "endpoint:digits", "both")
    ids = {n["id"] for n in lineage["nodes"]}
    assert {"version:digits.1", f"model:{first}", f"job:{first}", "capture:digits"} <= ids

    promoted = services.endpoints.promote(ws, "digits", "digits/2")
    assert promoted["status"] == "Updating" and promoted["model"]["version"] == 1
    promoted = _deploy_through(services, ws, promoted)
    assert promoted["status"] == "InService" and promoted["model"]["version"] == 2
    rolled = _deploy_through(services, ws, services.endpoints.rollback(ws, "digits"))
    assert rolled["model"]["version"] == 1 and [d["action"] for d in rolled["deployments"]] == [
        "rollback", "promote", "deploy"]

    killed = services.endpoints.kill(ws.name, "digits", OWNER)
    assert killed["status"] == "Deleting"
    with pytest.raises(EndpointKilled):
        services.endpoints.kill(ws.name, "digits", OWNER)
    assert services.endpoints.info(ws.name, "digits")["status"] == "Deleted"  # SageMaker's endpoint is gone
    assert boto3.client("sagemaker").list_models()["Models"] == []


def test_a_failed_creation_removes_what_it_created(services: Wiring) -> None:  # noqa: F811
    ws = workspace(services)
    endpoint = services.endpoints.deploy(ws, OWNER, {"model": _job(services, ws, 1), "name": "broken"})
    deployment = endpoint["deployments"][0]["deployment"]
    _sagemaker_runs(services.endpoints.prepare(ws.name, "broken", deployment, 2))
    services.endpoints.record(ws.name, "broken", deployment, "Failed",
                              {"Error": "EndpointFailed", "Cause": "model_fn raised"})
    failed = services.endpoints.info(ws.name, "broken")
    assert failed["status"] == "Failed" and "model_fn raised" in failed["failure_reason"]
    sagemaker = boto3.client("sagemaker")
    assert sagemaker.list_endpoints()["Endpoints"] == [] and sagemaker.list_models()["Models"] == []
    assert sagemaker.list_endpoint_configs()["EndpointConfigs"] == []


def test_invocations_are_checked_before_the_model_is_called(services: Wiring) -> None:  # noqa: F811
    ws = workspace(services)
    endpoint = services.endpoints.deploy(ws, OWNER, {"model": _job(services, ws, 1), "name": "small"})
    with pytest.raises(PayloadTooLarge):
        services.endpoints.invoke(ws.name, "small", b"x" * (4 * 1024 * 1024 + 1), "text/csv", None)
    with pytest.raises(UnsupportedMediaType):
        services.endpoints.invoke(ws.name, "small", b"<a/>", "application/xml", None)
    assert endpoint["status"] == "Creating"


@pytest.mark.parametrize(("error", "expected"), [
    ({"service_error_code": "ModelError", "http_status_code": 424, "modeled_fields": {
        "OriginalStatusCode": 415, "OriginalMessage": "unsupported"}}, UnsupportedMediaType),
    ({"service_error_code": "ModelError", "http_status_code": 424, "modeled_fields": {
        "OriginalStatusCode": 500, "OriginalMessage": "predict_fn raised"}}, ModelError),
    ({"service_error_code": "ModelError", "http_status_code": 424, "service_message": (
        'Received server error (0) from primary with message "Your invocation timed out while waiting for a '
        'response from container primary."')}, InvocationTimeout),
    ({"service_error_code": "413", "http_status_code": 413,
      "service_message": "HTTP content length exceeded 4194304 bytes."}, PayloadTooLarge),
    ({"service_error_code": "ValidationError", "http_status_code": 400,
      "service_message": "Endpoint kaos-ws-a-x-0 of account 123456789012 not found."}, EndpointNotInService),
])
def test_runtime_errors_are_named_as_sagemaker_runtime_answers_them(error: dict[str, Any],
                                                                    expected: type[Exception]) -> None:
    from botocore.stub import Stubber

    client = boto3.client("sagemaker-runtime", region_name="us-east-1", aws_access_key_id="k",
                          aws_secret_access_key="s")
    with Stubber(client) as stub:
        stub.add_client_error("invoke_endpoint", **error)
        with pytest.raises(expected):
            Runtime(client).invoke("kaos-ws-a-x-0", b"[1]", "application/json", "application/json")


def test_a_workspace_kill_stops_its_endpoints(services: Wiring) -> None:  # noqa: F811
    ws = workspace(services)
    live = _deploy_through(services, ws, services.endpoints.deploy(ws, OWNER, {"model": _job(services, ws, 1)}))
    assert live["status"] == "InService"
    pending = services.endpoints.deploy(ws, OWNER, {"model": _job(services, ws, 2), "name": "pending"})[
        "deployments"][0]["deployment"]
    assert services.workspaces.kill(ws.name, OWNER)["status"] == "killed"
    sagemaker = boto3.client("sagemaker")
    assert sagemaker.list_endpoints()["Endpoints"] == [] and sagemaker.list_models()["Models"] == []
    assert sagemaker.list_endpoint_configs()["EndpointConfigs"] == []
    stopped = boto3.client("stepfunctions").list_executions(
        stateMachineArn=services.settings.deployment_state_machine_arn, statusFilter="ABORTED")["executions"]
    assert [e["name"] for e in stopped] == [pending]  # the deployment in progress was stopped


def test_a_kill_racing_the_deployments_own_write_is_decided_again(services: Wiring,  # noqa: F811
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # The deployment's state machine writes the row while a kill is halting it (a ConcurrentUpdate for the kill):
    # the kill reads the row again and halts what it finds, as a job's or a grid's kill does.
    ws = workspace(services)
    endpoint = services.endpoints.deploy(ws, OWNER, {"model": _job(services, ws, 1), "name": "racing"})
    deployment = endpoint["deployments"][0]["deployment"]
    delete = services.endpoints._hosting.delete_endpoint
    raced: list[str] = []

    def racing_delete(name: str) -> None:
        if not raced:  # the state machine's record lands between the kill's read and its write
            row = services.endpoints.repository.get(ws.name, "racing")
            row.updated_at = "2026-12-02T00:00:00Z"
            services.endpoints.repository.save(row)
            raced.append(name)
        delete(name)

    monkeypatch.setattr(services.endpoints._hosting, "delete_endpoint", racing_delete)
    killed = services.endpoints.kill(ws.name, "racing", OWNER)
    assert raced and killed["status"] == "Deleting"
    assert killed["deployments"][0]["deployment"] == deployment and killed["deployments"][0]["status"] == "Stopped"
    assert services.endpoints.repository.get(ws.name, "racing").status == "Deleting"
