"""Hyperparameter grids: one training per point of the cartesian product, run by a Distributed Map.

The API only validates, writes the points file to S3 and starts the grid execution; each point's job row
(and its cache check) is written inside the map by the CreatePoint task, so a 10,000-point submission is
accepted in one request far below API Gateway's 29-second limit."""
from __future__ import annotations

import math
from typing import Any

from pynamodb.exceptions import DoesNotExist, TransactWriteError, UpdateError

from chalicelib import config, limits
from chalicelib.adapters import Executions, ObjectStore, clients
from chalicelib.domain import FINGERPRINT_CHARS, canonical_json, grid_points, sha256_hex
from chalicelib.errors import Conflict, InputInvalid, NotFound, ValidationFailed
from chalicelib.tables import GridItem, GridPointItem, JobItem, grid_key, ws_key
from chalicelib.training import Inputs, Training
from chalicelib.workspaces import (IncarnationGone, fenced_write, item_condition_failed, now,
                                   workspace_prefix)


class Grids:
    def __init__(self, store: ObjectStore | None = None, executions: Executions | None = None) -> None:
        self._store = store
        self._executions = executions
        self.training = Training(store, executions)

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            settings = config.settings()
            self._store = ObjectStore(clients().s3, settings.bucket, platform_buckets=settings.platform_buckets)
        return self._store

    @property
    def executions(self) -> Executions:
        if self._executions is None:
            self._executions = Executions(clients().stepfunctions)
        return self._executions

    def submit(
        self, workspace: str, incarnation: str, user: str, request: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        settings = config.settings()
        parallelism = validate_parallelism(request.get("parallelism", 10))
        inputs = self.training.resolve_inputs(workspace, request)
        points = grid_points(inputs.params)  # refuses grids over the cap before anything is written
        if len(points) < 2:
            raise ValidationFailed("params: a grid needs at least one list value with two or more points")
        document = {"workspace": workspace, "incarnation": incarnation, "code": inputs.code,
                    "data": dict(inputs.data), "params": inputs.params, "resources": inputs.resources,
                    "environment": settings.training_image}
        fingerprint = sha256_hex(canonical_json(document).encode())
        grid_id = f"grid-{fingerprint[:FINGERPRINT_CHARS]}"
        points_key = f"{workspace_prefix(workspace)}grids/{grid_id}/points.json"
        # The map reads its items from S3: a 10,000-point list would not fit the 256 KiB execution input.
        self.store.put_json(points_key, [{"index": i, "params": p} for i, p in enumerate(points)])
        at = now()
        arn = settings.grid_state_machine_arn.replace(":stateMachine:", ":execution:") + f":{grid_id}"
        item = GridItem(
            ws_key(workspace), f"GRID#{grid_id}", grid_id=grid_id, fingerprint=fingerprint, status="RUNNING",
            spec=document, points=len(points), parallelism=parallelism,
            points_key=points_key, execution_arn=arn, sources=inputs.sources, created_at=at, created_by=user,
            updated_at=at,
        )
        created = True
        try:  # fenced like job rows: a submission racing a kill of the workspace creates no grid
            fenced_write(workspace, incarnation, lambda tx: tx.save(item, condition=GridItem.pk.does_not_exist()))
        except IncarnationGone:
            raise Conflict(f"workspace {workspace!r} is being killed (or was re-created); no grid was created") \
                from None
        except TransactWriteError as exc:
            if not item_condition_failed(exc, 1):
                raise
            created = False
            item = self._grid(workspace, grid_id)
        self.executions.start(settings.grid_state_machine_arn, grid_id, {
            "workspace": workspace, "grid_id": grid_id, "incarnation": incarnation, "user": user,
            "bucket": self.store.bucket, "points_key": points_key, "parallelism": int(item.parallelism),
        })
        self.training.remember_inputs(workspace, inputs)
        return {**self.describe(item), "sources": inputs.sources}, created

    def create_point(self, event: dict[str, Any]) -> dict[str, Any]:
        """Map iteration: the point's job row (a cache hit if these inputs ran before) and its index row."""
        workspace, grid_id = event["workspace"], event["grid_id"]
        grid = self._grid(workspace, grid_id)
        if grid.status != "RUNNING":  # killed (with its workspace): no more points; the job row is fenced too
            raise InputInvalid(f"grid {grid_id} is {grid.status}; no more points are created")
        spec = grid.spec
        inputs = Inputs(spec["code"], tuple(sorted(spec["data"].items())), spec["params"],
                        spec["resources"], {"grid": grid_id})
        point = event["point"]
        job, created = self.training.create(workspace, event["incarnation"], event["user"], inputs, point["params"])
        GridPointItem(grid_key(workspace, grid_id), f"POINT#{point['index']:05d}", index=point["index"],
                      job_id=job.job_id, params=point["params"]).save()
        return {"job_id": job.job_id, "run": created}

    def finish(self, workspace: str, grid_id: str, outcome: str) -> dict[str, Any]:
        try:
            grid = self._grid(workspace, grid_id)
        except NotFound:  # its workspace was killed
            return {"grid_id": grid_id, "status": "DROPPED"}
        if grid.status == "KILLED":
            return {"grid_id": grid_id, "status": grid.status}
        grid.update(actions=[GridItem.status.set("COMPLETED" if outcome == "Completed" else "FAILED"),
                             GridItem.updated_at.set(now())])
        return {"grid_id": grid_id, "status": grid.status}

    def halt_all(self, workspace: str, reason: str) -> int:
        """Marks every running grid of the workspace KILLED (CreatePoint then refuses its points) and stops its
        execution (its Distributed Map starts no more points; the points' own executions are stopped with their
        jobs). Returns how many grids it stopped; repeating it is harmless."""
        stopped = 0
        for grid in GridItem.query(ws_key(workspace), GridItem.sk.startswith("GRID#"), consistent_read=True):
            if grid.status != "RUNNING":
                continue
            for _ in range(5):
                try:
                    grid.update(actions=[GridItem.status.set("KILLED"), GridItem.updated_at.set(now())])
                    break
                except UpdateError as exc:  # RecordGrid changed it meanwhile (optimistic locking)
                    if exc.cause_response_code != "ConditionalCheckFailedException":
                        raise
                    try:
                        grid.refresh(consistent_read=True)
                    except DoesNotExist:  # a concurrent kill deleted it
                        break
                    if grid.status != "RUNNING":
                        break
            else:
                raise Conflict(f"grid {grid.grid_id!r} kept changing while it was being killed; kill again")
            self.executions.stop(grid.execution_arn, reason)
            stopped += 1
        return stopped

    def _grid(self, workspace: str, grid_id: str) -> GridItem:
        try:
            return GridItem.get(ws_key(workspace), f"GRID#{grid_id}", consistent_read=True)
        except DoesNotExist:
            raise NotFound(f"grid {grid_id!r} does not exist in workspace {workspace!r}") from None

    def info(self, workspace: str, grid_id: str, sort_by: str | None, descending: bool, limit: int,
             page: int) -> dict[str, Any]:
        """The grid with its points' jobs (status, params, metrics), optionally sorted by a metric."""
        grid = self._grid(workspace, grid_id)
        rows = list(GridPointItem.query(grid_key(workspace, grid_id)))
        jobs = {j.job_id: j for j in self._jobs(workspace, [r.job_id for r in rows])}
        points = []
        for row in rows:
            job = jobs.get(row.job_id)
            points.append({"index": int(row.index), "job": row.job_id, "params": row.params,
                           "status": job.status if job else "PENDING", "metrics": (job.metrics or {}) if job else {}})
        if sort_by:
            known = {name for p in points for name in p["metrics"]}
            if known and sort_by not in known:
                raise ValidationFailed(f"sort_by: unknown metric {sort_by!r}; known: {', '.join(sorted(known))}")
            present = [p for p in points if isinstance(p["metrics"].get(sort_by), (int, float))]
            missing = [p for p in points if p not in present]
            present.sort(key=lambda p: p["metrics"][sort_by], reverse=descending)
            points = present + missing  # missing values last, whatever the order
        counts: dict[str, int] = {}
        for p in points:
            counts[p["status"]] = counts.get(p["status"], 0) + 1
        pages = max(1, math.ceil(len(points) / limit))
        if not 1 <= page <= pages:
            raise ValidationFailed(f"page: the grid has {pages} page(s) of {limit} points")
        return {**self.describe(grid), "counts": counts, "page": page, "pages": pages,
                "rows": points[(page - 1) * limit: page * limit]}

    def _jobs(self, workspace: str, job_ids: list[str]) -> list[JobItem]:
        keys = [(ws_key(workspace), f"JOB#{job_id}") for job_id in job_ids]
        return list(JobItem.batch_get(keys))

    @staticmethod
    def describe(item: GridItem) -> dict[str, Any]:
        spec = item.spec
        return {"id": item.grid_id, "status": item.status, "points": int(item.points),
                "parallelism": int(item.parallelism), "params": spec["params"],
                "inputs": {"code": spec["code"], "data": spec["data"]}, "created_at": item.created_at,
                "execution": item.execution_arn, "sources": item.sources or {}}


def validate_parallelism(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limits.MAX_PARALLELISM:
        raise ValidationFailed(f"parallelism: must be an integer from 1 to {limits.MAX_PARALLELISM}")
    return value

