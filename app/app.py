"""The kaos REST API: routes only. Each is declared in chalicelib.schemas (validated at the edge, described in
/openapi.json), calls one chalicelib service and shapes the output."""
from __future__ import annotations

import functools
import logging
from typing import Any
from collections.abc import Callable, Mapping

from chalice.app import Chalice, IAMAuthorizer, Request, Response

from chalicelib.domain import page_size
from chalicelib.errors import KaosError
from chalicelib.http import caller, error_body, json_body
from chalicelib.repositories.workspaces import Workspace
from chalicelib.schemas import SPECS, openapi, validate
from chalicelib.wiring import Wiring, wiring

app = Chalice(app_name="kaos")
# NumPy payloads of model invocations travel as bytes (API Gateway's binary media types; JSON and CSV are text).
app.api.binary_types.append("application/x-npy")
log = logging.getLogger("kaos.api")
# API Gateway verifies SigV4 against IAM on every route but the OpenAPI document (AWS_IAM authorization).
iam = IAMAuthorizer()
View = Callable[..., Any]
# Built at import (cold start): a missing or malformed setting fails here, naming the variable.
WIRING: Wiring = wiring("api")
# The one route that may reach a workspace being killed (its owner finishes the kill); every other route with
# {workspace} in its path is refused (404) unless the caller is a member of a live workspace.
KILL = ("/workspaces/{workspace}", "DELETE")


def route(path: str, method: str) -> Callable[[View], View]:
    """Registers a view declared in chalicelib.schemas: validates path, query and body against its schemas,
    passes the caller (and the parsed body), and answers errors as 4xx JSON, never a traceback.

    Whenever the path has {workspace}, the view receives the `Workspace` (not its name), and only after the
    caller's membership was checked here: a view cannot forget the check.

    Chalice turns exceptions raised in a view into its own 500 before any middleware sees them, so the
    translation has to sit around the view itself (the only `except Exception` of the API)."""
    spec = SPECS[(path, method)]

    def register(view: View) -> View:
        @functools.wraps(view)
        def guarded(**params: str) -> Any:
            try:
                request = _request()
                kwargs: dict[str, Any] = dict(params)
                if not spec.public:
                    kwargs["user"] = caller(request.context)
                if "workspace" in params:  # first: a non-member learns nothing, not even which input is invalid
                    kwargs["workspace"] = WIRING.workspaces.admit(params["workspace"], kwargs["user"],
                                                                  killing=(path, method) == KILL)
                validate("path", spec, params)
                validate("query", spec, dict(request.query_params or {}))
                if spec.body is not None:
                    kwargs["body"] = validate("body", spec, json_body(_raw_body(request)))
                return view(**kwargs)
            except KaosError as exc:
                return Response(error_body(exc.code, exc.message), status_code=exc.status)
            except Exception:
                log.exception("unhandled error in %s %s", method, path)
                return Response(error_body("InternalError", "internal error; see the API logs"), status_code=500)

        app.route(path, methods=[method], authorizer=None if spec.public else iam,
                  content_types=list(spec.content_types))(guarded)
        return view

    return register


def _request() -> Request:
    request = app.current_request
    assert request is not None, "a view runs only while Chalice handles a request"
    return request


def _raw_body(request: Request) -> bytes | None:
    raw = request.raw_body
    return raw.encode() if isinstance(raw, str) else raw


def _query(name: str) -> str | None:
    params = _request().query_params
    return None if params is None else params.get(name)


def _created(document: dict[str, Any], created: bool) -> Response:
    return Response(document, status_code=201 if created else 200)


def _cached(document: dict[str, Any], created: bool) -> Response:
    return _created({**document, "cached": not created}, created)


@route("/openapi.json", "GET")
def openapi_document() -> dict[str, Any]:
    return openapi()


@route("/workspaces", "POST")
def create_workspace(user: str, body: dict[str, Any]) -> Response:
    return _created(*WIRING.workspaces.create(body["name"], user))


@route("/workspaces", "GET")
def list_workspaces(user: str) -> dict[str, Any]:
    return {"workspaces": WIRING.workspaces.list_for(user)}


@route("/workspaces/{workspace}", "GET")
def workspace_info(user: str, workspace: Workspace) -> dict[str, Any]:
    return WIRING.workspaces.info(workspace.name, user)


@route("/workspaces/{workspace}", "DELETE")
def kill_workspace(user: str, workspace: Workspace) -> dict[str, Any]:
    return WIRING.workspaces.kill(workspace.name, user)


@route("/workspaces/{workspace}/members", "GET")
def members(user: str, workspace: Workspace) -> dict[str, Any]:
    return WIRING.workspaces.members(workspace.name, user)


@route("/workspaces/{workspace}/members", "POST")
def share(user: str, workspace: Workspace, body: dict[str, Any]) -> dict[str, Any]:
    return WIRING.workspaces.share(workspace.name, user, body["user"])


@route("/workspaces/{workspace}/members/remove", "POST")
def unshare(user: str, workspace: Workspace, body: dict[str, Any]) -> dict[str, Any]:
    return WIRING.workspaces.unshare(workspace.name, user, body["user"])


@route("/workspaces/{workspace}/snapshots", "POST")
def commit_snapshot(user: str, workspace: Workspace, body: dict[str, Any]) -> Response:
    snapshot, status = WIRING.snapshots.commit(workspace.name, body["kind"], body["files"], user)
    return Response(snapshot, status_code=status)


@route("/workspaces/{workspace}/snapshots/{snapshot}/complete", "POST")
def complete_snapshot(user: str, workspace: Workspace, snapshot: str) -> Response:
    result, status = WIRING.snapshots.complete(workspace.name, snapshot, user)
    return Response(result, status_code=status)


@route("/workspaces/{workspace}/snapshots/{snapshot}", "GET")
def snapshot_info(user: str, workspace: Workspace, snapshot: str) -> dict[str, Any]:
    return WIRING.snapshots.describe(WIRING.snapshots.get(workspace.name, snapshot))


@route("/workspaces/{workspace}/jobs", "POST")
def submit_job(user: str, workspace: Workspace, body: dict[str, Any]) -> Response:
    return _cached(*WIRING.training.submit(workspace.name, workspace.created_at, user, body))


@route("/workspaces/{workspace}/grids", "POST")
def submit_grid(user: str, workspace: Workspace, body: dict[str, Any]) -> Response:
    return _cached(*WIRING.grids.submit(workspace.name, workspace.created_at, user, body))


@route("/workspaces/{workspace}/grids/{grid}", "GET")
def grid_info(user: str, workspace: Workspace, grid: str) -> dict[str, Any]:
    page = int(_query("page") or 1)
    return WIRING.grids.info(workspace.name, grid, _query("sort_by"), _query("desc") == "true", _page_size("limit"),
                             page)


@route("/workspaces/{workspace}/batch-jobs", "POST")
def submit_batch_job(user: str, workspace: Workspace, body: dict[str, Any]) -> Response:
    return _cached(*WIRING.batch.submit(workspace.name, workspace.created_at, user, body))


@route("/workspaces/{workspace}/jobs", "GET")
def list_jobs(user: str, workspace: Workspace) -> dict[str, Any]:
    return WIRING.jobs.page(workspace.name, _page_size("limit"), _query("cursor"))


@route("/workspaces/{workspace}/jobs/{job}", "GET")
def job_info(user: str, workspace: Workspace, job: str) -> dict[str, Any]:
    return WIRING.jobs.get(workspace.name, job)


@route("/workspaces/{workspace}/jobs/{job}/kill", "POST")
def kill_job(user: str, workspace: Workspace, job: str) -> dict[str, Any]:
    return WIRING.jobs.kill(workspace.name, job, user)


@route("/workspaces/{workspace}/jobs/{job}/resume", "POST")
def resume_job(user: str, workspace: Workspace, job: str) -> dict[str, Any]:
    return WIRING.jobs.resume(workspace.name, job, user)


@route("/workspaces/{workspace}/jobs/{job}/reproduce", "POST")
def reproduce_job(user: str, workspace: Workspace, job: str) -> Response:
    return _created(*WIRING.reproductions.reproduce(workspace.name, workspace.created_at, user, job))


@route("/workspaces/{workspace}/jobs/{job}/logs", "GET")
def job_logs(user: str, workspace: Workspace, job: str) -> dict[str, Any]:
    return WIRING.job_logs.read(workspace.name, job, _query("next"), int(_query("limit") or 1000))


@route("/workspaces/{workspace}/jobs/{job}/metrics", "GET")
def job_metrics(user: str, workspace: Workspace, job: str) -> dict[str, Any]:
    limit = _query("limit")
    return WIRING.job_metrics.page(workspace.name, job, _query("metric"), _query("next"), int(limit) if limit else None)


@route("/workspaces/{workspace}/jobs/{job}/files", "GET")
def job_files(user: str, workspace: Workspace, job: str) -> dict[str, Any]:
    return WIRING.downloads.files(workspace.name, job, _query("what"))


@route("/workspaces/{workspace}/lineage/{node}", "GET")
def lineage(user: str, workspace: Workspace, node: str) -> dict[str, Any]:
    depth, limit = _query("depth"), _query("limit")
    return WIRING.costs.lineage(workspace.name, node, _query("direction") or "up",
                                     int(depth) if depth else None, int(limit) if limit else None, _query("cursor"))


@route("/workspaces/{workspace}/impact", "GET")
def impact(user: str, workspace: Workspace) -> dict[str, Any]:
    return WIRING.provenance.impact(workspace.name, _query("target"))


@route("/workspaces/{workspace}/auto-retrain", "GET")
def auto_retrain_status(user: str, workspace: Workspace) -> dict[str, Any]:
    return WIRING.triggers.status(workspace.name)


@route("/workspaces/{workspace}/auto-retrain", "POST")
def auto_retrain(user: str, workspace: Workspace, body: dict[str, Any]) -> dict[str, Any]:
    # Any member may toggle it: members may deploy anyway, and auto-retrain only re-deploys the latest inputs.
    return WIRING.triggers.set_enabled(workspace.name, user, bool(body["enabled"]))


@route("/workspaces/{workspace}/incoming", "POST")
def incoming_urls(user: str, workspace: Workspace, body: dict[str, Any]) -> dict[str, Any]:
    return WIRING.triggers.upload_urls(workspace.name, body["files"])


def _page_size(name: str) -> int:
    return page_size(_query(name))


# --- serving and the model registry (chalicelib/serving.py, chalicelib/registry.py) ------------------------------
@route("/workspaces/{workspace}/models/{group}/versions", "POST")
def register_model(user: str, workspace: Workspace, group: str, body: dict[str, Any]) -> Response:
    return _created(*WIRING.registry.register(workspace, group, body["job_id"]))


@route("/workspaces/{workspace}/models", "GET")
def model_groups(user: str, workspace: Workspace) -> dict[str, Any]:
    return WIRING.registry.groups(workspace.name)


@route("/workspaces/{workspace}/models/{group}", "GET")
def model_group(user: str, workspace: Workspace, group: str) -> dict[str, Any]:
    return WIRING.registry.group(workspace.name, group)


@route("/workspaces/{workspace}/models/{group}/versions/{version}/approval", "POST")
def approve_model(user: str, workspace: Workspace, group: str, version: str, body: dict[str, Any]) -> dict[str, Any]:
    return WIRING.registry.approve(workspace.name, group, int(version), body["status"])


@route("/workspaces/{workspace}/models/{group}/aliases/{alias}", "PUT")
def move_alias(user: str, workspace: Workspace, group: str, alias: str, body: dict[str, Any]) -> dict[str, Any]:
    return WIRING.registry.move_alias(workspace.name, group, alias, body["version"])


@route("/workspaces/{workspace}/models/{group}/aliases/{alias}", "DELETE")
def delete_alias(user: str, workspace: Workspace, group: str, alias: str) -> dict[str, Any]:
    return WIRING.registry.move_alias(workspace.name, group, alias, None)


@route("/workspaces/{workspace}/endpoints", "POST")
def deploy_endpoint(user: str, workspace: Workspace, body: dict[str, Any]) -> Response:
    return Response(WIRING.endpoints.deploy(workspace, user, body), status_code=202)


@route("/workspaces/{workspace}/endpoints", "GET")
def list_endpoints(user: str, workspace: Workspace) -> dict[str, Any]:
    return WIRING.endpoints.page(workspace.name, _page_size("limit"), _query("next"))


@route("/workspaces/{workspace}/endpoints/{name}", "GET")
def endpoint_info(user: str, workspace: Workspace, name: str) -> dict[str, Any]:
    return WIRING.endpoints.info(workspace.name, name)


@route("/workspaces/{workspace}/endpoints/{name}", "DELETE")
def kill_endpoint(user: str, workspace: Workspace, name: str) -> Response:
    return Response(WIRING.endpoints.kill(workspace.name, name, user), status_code=202)


@route("/workspaces/{workspace}/endpoints/{name}/deployments", "POST")
def promote_endpoint(user: str, workspace: Workspace, name: str, body: dict[str, Any]) -> Response:
    return Response(WIRING.endpoints.promote(workspace, name, body["model"]), status_code=202)


@route("/workspaces/{workspace}/endpoints/{name}/rollback", "POST")
def rollback_endpoint(user: str, workspace: Workspace, name: str) -> Response:
    return Response(WIRING.endpoints.rollback(workspace, name), status_code=202)


@route("/workspaces/{workspace}/endpoints/{name}/invocations", "POST")
def invoke_endpoint(user: str, workspace: Workspace, name: str) -> Response:
    request = _request()
    headers: Mapping[str, str] = request.headers or {}  # Chalice's mapping: case-insensitive names
    body, content_type = WIRING.endpoints.invoke(workspace.name, name, _raw_body(request) or b"",
                                                 headers.get("content-type"), headers.get("accept"))
    # A Lambda proxy answer carries text, or base64 that Chalice makes of a binary media type's bytes.
    binary = content_type.split(";", 1)[0].strip() in app.api.binary_types
    return Response(body if binary else body.decode("utf-8", errors="replace"),
                    headers={"Content-Type": content_type}, status_code=200)


@route("/workspaces/{workspace}/endpoints/{name}/logs", "GET")
def endpoint_logs(user: str, workspace: Workspace, name: str) -> dict[str, Any]:
    return WIRING.endpoints.logs(workspace.name, name, _query("next"), int(_query("limit") or 1000))


# --- cost (chalicelib/costs.py) -------------------------------------------------------------------------------------
@route("/workspaces/{workspace}/cost", "GET")
def workspace_cost(user: str, workspace: Workspace) -> dict[str, Any]:
    return WIRING.costs.workspace(workspace.name, _query("since"))
