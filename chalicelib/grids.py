"""Hyperparameter grids: one training per point of the cartesian product, run by a Distributed Map.

The API only validates, writes the points file to S3 and starts the grid execution; each point's job row
(and its cache check) is written inside the map by the CreatePoint task, so a 10,000-point submission is
accepted in one request far below API Gateway's 29-second limit. The grid records the environment and resources
it resolved at submission, so a point is exactly the job the same single submission would be (same fingerprint).
"""
from __future__ import annotations

import math
from typing import Any

from chalicelib import limits
from chalicelib.adapters import Executions, ObjectStore, execution_arn_for
from chalicelib.config import Settings
from chalicelib.domain import FINGERPRINT_CHARS, canonical_json, grid_points, now, sha256_hex, workspace_prefix
from chalicelib.errors import ConcurrentUpdate, Conflict, InputInvalid, NotFound, ValidationFailed
from chalicelib.repositories.grids import Grid, GridPoint, GridRepository
from chalicelib.repositories.jobs import JobRepository
from chalicelib.training import Inputs, Training

# How often a kill re-reads a grid that RecordGrid keeps changing (each change is a ConcurrentUpdate).
KILL_ATTEMPTS = 5


class Grids:
    def __init__(self, *, settings: Settings, training: Training, jobs: JobRepository, grids: GridRepository,
                 store: ObjectStore, executions: Executions) -> None:
        self._settings = settings
        self._training = training
        self._jobs = jobs
        self._grids = grids
        self._store = store
        self._executions = executions

    def submit(
        self, workspace: str, incarnation: str, user: str, request: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """Creates the grid for these inputs (or finds it: the fingerprint is the identity) and starts its
        Distributed Map. At most limits.MAX_GRID_POINTS points; their list goes to S3 for the map's ItemReader,
        since Step Functions caps an execution's input at 256 KiB."""
        parallelism = validate_parallelism(request.get("parallelism", 10))
        inputs = self._training.resolve_inputs(workspace, request)
        points = grid_points(inputs.params)  # refuses grids over the cap before anything is written
        if len(points) < 2:
            raise ValidationFailed("params: a grid needs at least one list value with two or more points")
        document = {"workspace": workspace, "incarnation": incarnation, "code": inputs.code,
                    "data": dict(inputs.data), "params": inputs.params,
                    "resources": self._training.resources(inputs.resources),
                    "environment": self._training.environment(inputs)}
        fingerprint = sha256_hex(canonical_json(document).encode())
        grid_id = f"grid-{fingerprint[:FINGERPRINT_CHARS]}"
        points_key = f"{workspace_prefix(workspace)}grids/{grid_id}/points.json"
        # The map reads its items from S3: a 10,000-point list would not fit the 256 KiB execution input.
        self._store.put_json(points_key, [{"index": i, "params": p} for i, p in enumerate(points)])
        at = now()
        machine = self._settings.grid_state_machine_arn
        grid, created = self._grids.create(Grid(
            workspace, grid_id, fingerprint, "RUNNING", document, len(points), parallelism, points_key,
            execution_arn_for(machine, grid_id), at, user, at, sources=inputs.sources), incarnation)
        self._executions.start(machine, grid_id, {
            "workspace": workspace, "grid_id": grid_id, "incarnation": incarnation, "user": user,
            "bucket": self._store.bucket, "points_key": points_key, "parallelism": grid.parallelism,
        })
        self._training.remember_inputs(workspace, inputs)
        return {**describe(grid), "sources": inputs.sources}, created

    def create_point(self, event: dict[str, Any]) -> dict[str, Any]:
        """Map iteration: the point's job row (a cache hit if these inputs ran before) and its index row."""
        workspace, grid_id, incarnation = event["workspace"], event["grid_id"], event["incarnation"]
        grid = self._grids.get(workspace, grid_id)
        if grid.status != "RUNNING":  # killed (with its workspace): no more points; the job row is fenced too
            raise InputInvalid(f"grid {grid_id} is {grid.status}; no more points are created")
        spec = grid.spec
        inputs = Inputs(spec["code"], tuple(sorted(spec["data"].items())), spec["params"], spec["resources"],
                        {"grid": grid_id}, environment=spec["environment"])
        point = event["point"]
        job, created = self._training.create(workspace, incarnation, event["user"], inputs, point["params"])
        self._grids.put_point(workspace, incarnation, grid_id, GridPoint(point["index"], job.job_id, point["params"]))
        return {"job_id": job.job_id, "run": created}

    def finish(self, workspace: str, grid_id: str, outcome: str) -> dict[str, Any]:
        try:
            grid = self._grids.get(workspace, grid_id)
        except NotFound:  # its workspace was killed
            return {"grid_id": grid_id, "status": "DROPPED"}
        if grid.status == "KILLED":
            return {"grid_id": grid_id, "status": grid.status}
        # A kill racing this write is a ConcurrentUpdate, retried by the state machine on the row as it is then.
        self._grids.set_status(grid, "COMPLETED" if outcome == "Completed" else "FAILED", now())
        return {"grid_id": grid_id, "status": grid.status}

    def halt_all(self, workspace: str, reason: str) -> int:
        """Marks every running grid of the workspace KILLED (CreatePoint then refuses its points) and stops its
        execution (its Distributed Map starts no more points; the points' own executions are stopped with their
        jobs). Returns how many grids it stopped; repeating it is harmless."""
        stopped = 0
        for grid in self._grids.running(workspace):
            for _ in range(KILL_ATTEMPTS):
                try:
                    self._grids.set_status(grid, "KILLED", now())
                    break
                except ConcurrentUpdate:  # RecordGrid changed it meanwhile
                    try:
                        grid = self._grids.get(workspace, grid.grid_id)
                    except NotFound:  # a concurrent kill deleted it
                        break
                    if grid.status != "RUNNING":
                        break
            else:
                raise Conflict(f"grid {grid.grid_id!r} kept changing while it was being killed; kill again")
            self._executions.stop(grid.execution_arn, reason)
            stopped += 1
        return stopped

    def info(self, workspace: str, grid_id: str, sort_by: str | None, descending: bool, limit: int,
             page: int) -> dict[str, Any]:
        """The grid with one page of its points' jobs (status, params, metrics), optionally sorted by a metric.

        Unsorted, a page reads only its own points and jobs; the status counts read only the job ids of the points
        and the jobs' statuses. Sorting by a metric orders every point, so it reads them all."""
        grid = self._grids.get(workspace, grid_id)
        pages = max(1, math.ceil(grid.points / limit))
        if not 1 <= page <= pages:
            raise ValidationFailed(f"page: the grid has {pages} page(s) of {limit} points")
        job_ids = self._grids.job_ids(workspace, grid_id)
        statuses = self._jobs.statuses(workspace, job_ids)
        counts: dict[str, int] = {}
        for job_id in job_ids:
            status = statuses.get(job_id, "PENDING")
            counts[status] = counts.get(status, 0) + 1
        if sort_by:
            rows = self._rows(workspace, self._grids.points(workspace, grid_id))
            known = {name for p in rows for name in p["metrics"]}
            if known and sort_by not in known:
                raise ValidationFailed(f"sort_by: unknown metric {sort_by!r}; known: {', '.join(sorted(known))}")
            present = [p for p in rows if isinstance(p["metrics"].get(sort_by), (int, float))]
            missing = [p for p in rows if p not in present]
            present.sort(key=lambda p: p["metrics"][sort_by], reverse=descending)
            rows = (present + missing)[(page - 1) * limit: page * limit]  # missing values last, whatever the order
        else:
            rows = self._rows(workspace, self._grids.points(workspace, grid_id, (page - 1) * limit, limit))
        return {**describe(grid), "counts": counts, "page": page, "pages": pages, "rows": rows}

    def _rows(self, workspace: str, points: list[GridPoint]) -> list[dict[str, Any]]:
        jobs = self._jobs.many(workspace, [p.job_id for p in points])
        rows = []
        for point in points:
            job = jobs.get(point.job_id)
            rows.append({"index": point.index, "job": point.job_id, "params": point.params,
                         "status": job.status if job else "PENDING", "metrics": (job.metrics or {}) if job else {}})
        return rows


def describe(grid: Grid) -> dict[str, Any]:
    """The API's grid document (GET /workspaces/{workspace}/grids/{grid} adds counts and a page of rows)."""
    spec = grid.spec
    return {"id": grid.grid_id, "status": grid.status, "points": grid.points, "parallelism": grid.parallelism,
            "params": spec["params"], "inputs": {"code": spec["code"], "data": spec["data"]},
            "created_at": grid.created_at, "execution": grid.execution_arn, "sources": grid.sources}


def validate_parallelism(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limits.MAX_PARALLELISM:
        raise ValidationFailed(f"parallelism: must be an integer from 1 to {limits.MAX_PARALLELISM}")
    return value
