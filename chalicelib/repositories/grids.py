"""Grid rows and their points.

A grid row (WS#<ws> / GRID#<id>) is created once per fingerprint, fenced by the workspace incarnation like job
rows, and changes status by versioned updates (a kill racing RecordGrid is a `ConcurrentUpdate`, HTTP 409). Each
point is a row in the grid's own partition (GRID#<ws>#<id> / POINT#<index, 5 digits>), so one page of points is one
Query over a key range, whatever the grid's size (limits.MAX_GRID_POINTS <= 99,999 keeps the zero-padded order).
Point rows are written fenced too: a CreatePoint that outlives a workspace kill leaves no row behind.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from pynamodb.exceptions import DoesNotExist, UpdateError

from chalicelib.errors import ConcurrentUpdate, Conflict, NotFound
from chalicelib.repositories.workspaces import MemoryWorkspaces, condition_failed, fenced_write, put_once_fenced
from chalicelib.tables import GridItem, GridPointItem, grid_key, ws_key


@dataclass
class Grid:
    workspace: str
    grid_id: str
    fingerprint: str
    status: str
    spec: dict[str, Any]
    points: int
    parallelism: int
    points_key: str
    execution_arn: str
    created_at: str
    created_by: str
    updated_at: str
    sources: dict[str, Any] = field(default_factory=dict)
    version: int | None = None


@dataclass(frozen=True)
class GridPoint:
    index: int
    job_id: str
    params: dict[str, Any]



class GridRepository(Protocol):
    def create(self, grid: Grid, incarnation: str) -> tuple[Grid, bool]:
        """Stores the grid unless its id exists: (the stored grid, created). Conflict when the workspace is no
        longer `incarnation`."""

    def get(self, workspace: str, grid_id: str) -> Grid: ...

    def set_status(self, grid: Grid, status: str, at: str) -> None:
        """A versioned status change (`grid` updated in place); ConcurrentUpdate if the row changed since read."""

    def running(self, workspace: str) -> list[Grid]: ...

    def put_point(self, workspace: str, incarnation: str, grid_id: str, point: GridPoint) -> None:
        """Records a point's job (idempotent), only while the workspace is `incarnation` (IncarnationGone)."""

    def points(self, workspace: str, grid_id: str, start: int = 0, limit: int | None = None) -> list[GridPoint]:
        """The recorded points with `start <= index < start + limit` (all from `start` when limit is None)."""

    def job_ids(self, workspace: str, grid_id: str) -> list[str]:
        """The job of every recorded point, in index order (reads only the job ids)."""


def point_sk(index: int) -> str:
    return f"POINT#{index:05d}"


def not_found(workspace: str, grid_id: str) -> NotFound:
    return NotFound(f"grid {grid_id!r} does not exist in workspace {workspace!r}")


_ROW_FIELDS = tuple(f.name for f in fields(Grid) if f.name != "workspace")


def _grid(item: GridItem) -> Grid:
    values = {name: getattr(item, name) for name in _ROW_FIELDS}
    values.update(points=int(item.points), parallelism=int(item.parallelism), sources=dict(item.sources or {}),
                  version=int(item.version))
    return Grid(workspace=item.pk.removeprefix("WS#"), **values)


class DynamoGrids:
    def create(self, grid: Grid, incarnation: str) -> tuple[Grid, bool]:
        values = {name: getattr(grid, name) for name in _ROW_FIELDS if name != "version"}
        item = GridItem(ws_key(grid.workspace), f"GRID#{grid.grid_id}", **values)
        if not put_once_fenced(grid.workspace, incarnation, item, "grid"):
            return self.get(grid.workspace, grid.grid_id), False
        return _grid(item), True

    def get(self, workspace: str, grid_id: str) -> Grid:
        try:
            return _grid(GridItem.get(ws_key(workspace), f"GRID#{grid_id}", consistent_read=True))
        except DoesNotExist:
            raise not_found(workspace, grid_id) from None

    def set_status(self, grid: Grid, status: str, at: str) -> None:
        item = GridItem(ws_key(grid.workspace), f"GRID#{grid.grid_id}", version=grid.version)
        try:
            item.update(actions=[GridItem.status.set(status), GridItem.updated_at.set(at)])
        except UpdateError as exc:
            if condition_failed(exc):
                raise ConcurrentUpdate(f"grid {grid.grid_id!r} changed while it was being updated; try again") from None
            raise
        grid.status, grid.updated_at, grid.version = status, at, int(item.version)

    def running(self, workspace: str) -> list[Grid]:
        rows = GridItem.query(ws_key(workspace), GridItem.sk.startswith("GRID#"), consistent_read=True,
                              filter_condition=GridItem.status == "RUNNING")
        return [_grid(row) for row in rows]

    def put_point(self, workspace: str, incarnation: str, grid_id: str, point: GridPoint) -> None:
        item = GridPointItem(grid_key(workspace, grid_id), point_sk(point.index), index=point.index,
                             job_id=point.job_id, params=point.params)
        fenced_write(workspace, incarnation, lambda tx: tx.save(item))

    def points(self, workspace: str, grid_id: str, start: int = 0, limit: int | None = None) -> list[GridPoint]:
        key = grid_key(workspace, grid_id)
        condition = GridPointItem.sk >= point_sk(start) if limit is None else \
            GridPointItem.sk.between(point_sk(start), point_sk(start + limit - 1))
        return [GridPoint(int(row.index), row.job_id, row.params)
                for row in GridPointItem.query(key, condition, consistent_read=True)]

    def job_ids(self, workspace: str, grid_id: str) -> list[str]:
        rows = GridPointItem.query(grid_key(workspace, grid_id), consistent_read=True, attributes_to_get=["job_id"])
        return [row.job_id for row in rows]


class MemoryGrids:
    """The in-memory twin; rows live in the workspace twin's partitions, so a workspace kill sweeps them."""

    def __init__(self, workspaces: MemoryWorkspaces) -> None:
        self._workspaces = workspaces

    def create(self, grid: Grid, incarnation: str) -> tuple[Grid, bool]:
        with self._workspaces.lock:
            if not self._workspaces.alive(grid.workspace, incarnation):
                raise Conflict(f"workspace {grid.workspace!r} is being killed (or was re-created); no grid was "
                               "created")
            rows = self._workspaces.table(grid.workspace, "grids")
            if grid.grid_id in rows:
                return copy.deepcopy(rows[grid.grid_id]), False
            stored = copy.deepcopy(grid)
            stored.version = 1
            rows[grid.grid_id] = stored
            return copy.deepcopy(stored), True

    def get(self, workspace: str, grid_id: str) -> Grid:
        with self._workspaces.lock:
            stored = self._workspaces.rows.get(workspace, {}).get("grids", {}).get(grid_id)
            if stored is None:
                raise not_found(workspace, grid_id)
            return copy.deepcopy(stored)  # type: ignore[no-any-return]

    def set_status(self, grid: Grid, status: str, at: str) -> None:
        with self._workspaces.lock:
            stored = self._workspaces.rows.get(grid.workspace, {}).get("grids", {}).get(grid.grid_id)
            if stored is None or stored.version != grid.version:
                raise ConcurrentUpdate(f"grid {grid.grid_id!r} changed while it was being updated; try again")
            stored.status, stored.updated_at, stored.version = status, at, stored.version + 1
            grid.status, grid.updated_at, grid.version = status, at, stored.version

    def running(self, workspace: str) -> list[Grid]:
        with self._workspaces.lock:
            rows = self._workspaces.rows.get(workspace, {}).get("grids", {}).values()
            return [copy.deepcopy(g) for g in sorted(rows, key=lambda g: g.grid_id) if g.status == "RUNNING"]

    def put_point(self, workspace: str, incarnation: str, grid_id: str, point: GridPoint) -> None:
        with self._workspaces.lock:
            self._workspaces.fence(workspace, incarnation)
            self._workspaces.table(workspace, "points")[(grid_id, point.index)] = point

    def points(self, workspace: str, grid_id: str, start: int = 0, limit: int | None = None) -> list[GridPoint]:
        end = float("inf") if limit is None else start + limit
        with self._workspaces.lock:
            rows = self._workspaces.rows.get(workspace, {}).get("points", {})
            return sorted((p for (g, i), p in rows.items() if g == grid_id and start <= i < end),
                          key=lambda p: p.index)

    def job_ids(self, workspace: str, grid_id: str) -> list[str]:
        return [point.job_id for point in self.points(workspace, grid_id)]
