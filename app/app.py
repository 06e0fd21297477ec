"""The kaos REST API: routes only. Each validates its input shape, calls one chalicelib service, shapes output."""
from __future__ import annotations

import functools
import logging
from typing import Any
from collections.abc import Callable

from chalice import Chalice, Response
from chalice.app import Request

from chalicelib.domain import page_size, validate_workspace_name
from chalicelib.errors import KaosError, ValidationFailed
from chalicelib.http import caller, error_body, json_body
from chalicelib.provenance import Provenance
from chalicelib.snapshots import Snapshots
from chalicelib.training import Training
from chalicelib.workspaces import Workspaces

app = Chalice(app_name="kaos")
log = logging.getLogger("kaos.api")


View = Callable[..., Any]


def route(path: str, method: str) -> Callable[[View], View]:
    """app.route, with our named errors answered as 4xx JSON and anything else as a 500 without a traceback.

    Chalice turns exceptions raised in a view into its own 500 before any middleware sees them, so the
    translation has to sit around the view itself."""

    def register(view: View) -> View:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return view(*args, **kwargs)
            except KaosError as exc:
                return Response(error_body(exc.code, exc.message), status_code=exc.status)
            except Exception:
                log.exception("unhandled error in %s %s", method, path)
                return Response(error_body("InternalError", "internal error; see the API logs"), status_code=500)

        app.route(path, methods=[method])(guarded)
        return view

    return register


def _request() -> tuple[Request, str]:
    request = app.current_request
    return request, caller(request.context)


def _member(workspace: str) -> tuple[Request, str]:
    request, user = _request()
    Workspaces().require(workspace, user)
    return request, user


@route("/workspaces", "POST")
def create_workspace() -> Response:
    request, user = _request()
    body = json_body(request.raw_body)
    workspace, created = Workspaces().create(body.get("name"), user)
    return Response(workspace, status_code=201 if created else 200)


@route("/workspaces", "GET")
def list_workspaces() -> dict[str, Any]:
    _, user = _request()
    return {"workspaces": Workspaces().list_for(user)}


@route("/workspaces/{workspace}", "GET")
def workspace_info(workspace: str) -> dict[str, Any]:
    _, user = _request()
    return Workspaces().info(validate_workspace_name(workspace), user)


@route("/workspaces/{workspace}", "DELETE")
def kill_workspace(workspace: str) -> dict[str, Any]:
    _, user = _request()
    return Workspaces().kill(validate_workspace_name(workspace), user)


@route("/workspaces/{workspace}/blobs/missing", "POST")
def missing_blobs(workspace: str) -> dict[str, Any]:
    request, _ = _member(workspace)
    return {"missing": Snapshots().missing(workspace, json_body(request.raw_body).get("blobs"))}


@route("/workspaces/{workspace}/snapshots", "POST")
def commit_snapshot(workspace: str) -> Response:
    request, user = _member(workspace)
    body = json_body(request.raw_body)
    snapshot, created = Snapshots().commit(workspace, body.get("kind"), body.get("files"), user)
    return Response(snapshot, status_code=201 if created else 200)


@route("/workspaces/{workspace}/jobs", "POST")
def submit_job(workspace: str) -> Response:
    request, user = _member(workspace)
    job, created = Training().submit(workspace, user, json_body(request.raw_body))
    return Response({**job, "cached": not created}, status_code=201 if created else 200)


@route("/workspaces/{workspace}/jobs", "GET")
def list_jobs(workspace: str) -> dict[str, Any]:
    request, _ = _member(workspace)
    query = request.query_params or {}
    return Training().list(workspace, page_size(query.get("limit")), query.get("cursor"))


@route("/workspaces/{workspace}/jobs/{job}", "GET")
def job_info(workspace: str, job: str) -> dict[str, Any]:
    _member(workspace)
    return Training().get(workspace, job)


@route("/workspaces/{workspace}/jobs/{job}/logs", "GET")
def job_logs(workspace: str, job: str) -> dict[str, Any]:
    request, _ = _member(workspace)
    query = request.query_params or {}
    return Training().read_logs(workspace, job, query.get("next"), page_size(query.get("limit") or 200))


@route("/workspaces/{workspace}/lineage/{node}", "GET")
def lineage(workspace: str, node: str) -> dict[str, Any]:
    request, _ = _member(workspace)
    query = request.query_params or {}
    depth = query.get("depth")
    return Provenance().lineage(workspace, node, query.get("direction", "up"), _int(depth, "depth"))


def _int(value: str | None, field: str) -> int | None:
    if value is None:
        return None
    if not value.isdigit():
        raise ValidationFailed(f"{field}: must be a positive integer")
    return int(value)
