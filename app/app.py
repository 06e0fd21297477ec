"""The kaos REST API: routes only. Each is declared in chalicelib.schemas (validated at the edge, described in
/openapi.json), calls one chalicelib service and shapes the output."""
from __future__ import annotations

import functools
import logging
from typing import Any
from collections.abc import Callable

from chalice import Chalice, IAMAuthorizer, Response

from chalicelib.batch import Batch
from chalicelib.domain import page_size
from chalicelib.downloads import Downloads
from chalicelib.errors import KaosError
from chalicelib.grids import Grids
from chalicelib.http import caller, error_body, json_body
from chalicelib.provenance import Provenance
from chalicelib.reproduce import Reproductions
from chalicelib.schemas import SPECS, openapi, validate
from chalicelib.snapshots import Snapshots
from chalicelib.training import Training
from chalicelib.triggers import Triggers
from chalicelib.workspaces import Workspaces

app = Chalice(app_name="kaos")
log = logging.getLogger("kaos.api")
# API Gateway verifies SigV4 against IAM on every route but the OpenAPI document (AWS_IAM authorization).
iam = IAMAuthorizer()
View = Callable[..., Any]


def route(path: str, method: str) -> Callable[[View], View]:
    """Registers a view declared in chalicelib.schemas: validates path, query and body against its schemas,
    passes the caller (and the parsed body), and answers errors as 4xx JSON, never a traceback.

    Chalice turns exceptions raised in a view into its own 500 before any middleware sees them, so the
    translation has to sit around the view itself."""
    spec = SPECS[(path, method)]

    def register(view: View) -> View:
        @functools.wraps(view)
        def guarded(**params: str) -> Any:
            try:
                request = app.current_request
                validate("path", spec, params)
                validate("query", spec, dict(request.query_params or {}))
                kwargs: dict[str, Any] = dict(params)
                if not spec.public:
                    kwargs["user"] = caller(request.context)
                if spec.body is not None:
                    kwargs["body"] = validate("body", spec, json_body(request.raw_body))
                return view(**kwargs)
            except KaosError as exc:
                return Response(error_body(exc.code, exc.message), status_code=exc.status)
            except Exception:
                log.exception("unhandled error in %s %s", method, path)
                return Response(error_body("InternalError", "internal error; see the API logs"), status_code=500)

        app.route(path, methods=[method], authorizer=None if spec.public else iam)(guarded)
        return view

    return register


def _query(name: str) -> str | None:
    return (app.current_request.query_params or {}).get(name)


@route("/openapi.json", "GET")
def openapi_document() -> dict[str, Any]:
    return openapi()


@route("/workspaces", "POST")
def create_workspace(user: str, body: dict[str, Any]) -> Response:
    workspace, created = Workspaces().create(body["name"], user)
    return Response(workspace, status_code=201 if created else 200)


@route("/workspaces", "GET")
def list_workspaces(user: str) -> dict[str, Any]:
    return {"workspaces": Workspaces().list_for(user)}


@route("/workspaces/{workspace}", "GET")
def workspace_info(user: str, workspace: str) -> dict[str, Any]:
    return Workspaces().info(workspace, user)


@route("/workspaces/{workspace}", "DELETE")
def kill_workspace(user: str, workspace: str) -> dict[str, Any]:
    return Workspaces().kill(workspace, user)


@route("/workspaces/{workspace}/members", "GET")
def members(user: str, workspace: str) -> dict[str, Any]:
    return Workspaces().members(workspace, user)


@route("/workspaces/{workspace}/members", "POST")
def share(user: str, workspace: str, body: dict[str, Any]) -> dict[str, Any]:
    return Workspaces().share(workspace, user, body["user"])


@route("/workspaces/{workspace}/members/remove", "POST")
def unshare(user: str, workspace: str, body: dict[str, Any]) -> dict[str, Any]:
    return Workspaces().unshare(workspace, user, body["user"])


@route("/workspaces/{workspace}/snapshots", "POST")
def commit_snapshot(user: str, workspace: str, body: dict[str, Any]) -> Response:
    Workspaces().require(workspace, user)
    snapshot, status = Snapshots().commit(workspace, body["kind"], body["files"], user)
    return Response(snapshot, status_code=status)


@route("/workspaces/{workspace}/snapshots/{snapshot}/complete", "POST")
def complete_snapshot(user: str, workspace: str, snapshot: str) -> Response:
    Workspaces().require(workspace, user)
    result, status = Snapshots().complete(workspace, snapshot, user)
    return Response(result, status_code=status)


@route("/workspaces/{workspace}/jobs", "POST")
def submit_job(user: str, workspace: str, body: dict[str, Any]) -> Response:
    incarnation = Workspaces().require(workspace, user).created_at
    job, created = Training().submit(workspace, incarnation, user, body)
    return Response({**job, "cached": not created}, status_code=201 if created else 200)


@route("/workspaces/{workspace}/grids", "POST")
def submit_grid(user: str, workspace: str, body: dict[str, Any]) -> Response:
    incarnation = Workspaces().require(workspace, user).created_at
    grid, created = Grids().submit(workspace, incarnation, user, body)
    return Response({**grid, "cached": not created}, status_code=201 if created else 200)


@route("/workspaces/{workspace}/grids/{grid}", "GET")
def grid_info(user: str, workspace: str, grid: str) -> dict[str, Any]:
    Workspaces().require(workspace, user)
    page = int(_query("page") or 1)
    return Grids().info(workspace, grid, _query("sort_by"), _query("desc") == "true", _page_size("limit"), page)


@route("/workspaces/{workspace}/batch-jobs", "POST")
def submit_batch_job(user: str, workspace: str, body: dict[str, Any]) -> Response:
    incarnation = Workspaces().require(workspace, user).created_at
    job, created = Batch().submit(workspace, incarnation, user, body)
    return Response({**job, "cached": not created}, status_code=201 if created else 200)


@route("/workspaces/{workspace}/jobs", "GET")
def list_jobs(user: str, workspace: str) -> dict[str, Any]:
    Workspaces().require(workspace, user)
    return Training().list(workspace, _page_size("limit"), _query("cursor"))


@route("/workspaces/{workspace}/jobs/{job}", "GET")
def job_info(user: str, workspace: str, job: str) -> dict[str, Any]:
    Workspaces().require(workspace, user)
    return Training().get(workspace, job)


@route("/workspaces/{workspace}/jobs/{job}/kill", "POST")
def kill_job(user: str, workspace: str, job: str) -> dict[str, Any]:
    Workspaces().require(workspace, user)
    return Training().kill(workspace, job, user)


@route("/workspaces/{workspace}/jobs/{job}/resume", "POST")
def resume_job(user: str, workspace: str, job: str) -> dict[str, Any]:
    Workspaces().require(workspace, user)
    return Training().resume(workspace, job, user)


@route("/workspaces/{workspace}/jobs/{job}/reproduce", "POST")
def reproduce_job(user: str, workspace: str, job: str) -> Response:
    incarnation = Workspaces().require(workspace, user).created_at
    reproduction, created = Reproductions().reproduce(workspace, incarnation, user, job)
    return Response(reproduction, status_code=201 if created else 200)


@route("/workspaces/{workspace}/jobs/{job}/logs", "GET")
def job_logs(user: str, workspace: str, job: str) -> dict[str, Any]:
    Workspaces().require(workspace, user)
    return Training().read_logs(workspace, job, _query("next"), int(_query("limit") or 1000))


@route("/workspaces/{workspace}/jobs/{job}/files", "GET")
def job_files(user: str, workspace: str, job: str) -> dict[str, Any]:
    Workspaces().require(workspace, user)
    return Downloads().files(workspace, job, _query("what"))


@route("/workspaces/{workspace}/lineage/{node}", "GET")
def lineage(user: str, workspace: str, node: str) -> dict[str, Any]:
    Workspaces().require(workspace, user)
    depth, limit = _query("depth"), _query("limit")
    return Provenance().lineage(workspace, node, _query("direction") or "up", int(depth) if depth else None,
                                int(limit) if limit else None, _query("cursor"))


@route("/workspaces/{workspace}/impact", "GET")
def impact(user: str, workspace: str) -> dict[str, Any]:
    Workspaces().require(workspace, user)
    return Provenance().impact(workspace, _query("target"))


@route("/workspaces/{workspace}/auto-retrain", "GET")
def auto_retrain_status(user: str, workspace: str) -> dict[str, Any]:
    Workspaces().require(workspace, user)
    return Triggers().status(workspace)


@route("/workspaces/{workspace}/auto-retrain", "POST")
def auto_retrain(user: str, workspace: str, body: dict[str, Any]) -> dict[str, Any]:
    # Any member may toggle it: members may deploy anyway, and auto-retrain only re-deploys the latest inputs.
    Workspaces().require(workspace, user)
    return Triggers().set_enabled(workspace, user, bool(body["enabled"]))


@route("/workspaces/{workspace}/incoming", "POST")
def incoming_urls(user: str, workspace: str, body: dict[str, Any]) -> dict[str, Any]:
    Workspaces().require(workspace, user)
    return Triggers().upload_urls(workspace, body["files"])


def _page_size(name: str) -> int:
    return page_size(_query(name))
