"""Grids through the services without the embedded stack (in-memory repositories, moto in process)."""
from __future__ import annotations

from typing import Any

import pytest

from chalicelib.repositories.workspaces import IncarnationGone
from chalicelib.wiring import Wiring
from chalicelib.domain import now
from tests.service_wiring import OWNER, component, services, snapshot, workspace  # noqa: F401


def _grid(wiring: Wiring, ws: str, incarnation: str, values: list[float]) -> dict[str, Any]:
    code = snapshot(wiring, ws, "code", {"train.py": b"print('hi')\n"})
    data = snapshot(wiring, ws, "data", {"rows.csv": b"a,b\n1,2\n"})
    grid, _ = wiring.grids.submit(ws, incarnation, OWNER, {"code": code, "data": {"training": data},
                                                           "params": {"lr": values}})
    return grid


def _point(wiring: Wiring, ws: str, incarnation: str, grid_id: str, index: int, lr: float) -> dict[str, Any]:
    return wiring.grids.create_point({"workspace": ws, "grid_id": grid_id, "incarnation": incarnation,
                                      "user": OWNER, "point": {"index": index, "params": {"lr": lr}}})


def test_a_point_created_across_a_workspace_kill_leaves_no_row(services: Wiring,  # noqa: F811
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug 4: the point row was written after the job row without the incarnation fence, so a kill that swept the
    workspace between the two left a GRID#<ws>#<grid> row that no later sweep could find (its grid row was gone)."""
    ws = workspace(services)
    grid = _grid(services, ws.name, ws.created_at, [0.1, 1.0])
    point_lambda = component(services, "create_point")
    _point(point_lambda, ws.name, ws.created_at, grid["id"], 0, 0.1)
    repositories = services.repositories
    assert [p.index for p in repositories.grids.points(ws.name, grid["id"])] == [0]
    real_create = point_lambda.training.create

    def create_then_killed(*args: Any) -> Any:
        created = real_create(*args)
        repositories.workspaces.tombstone(ws, now())  # the kill lands here and sweeps every row it can find
        repositories.workspaces.delete_rows(ws.name)
        return created

    monkeypatch.setattr(point_lambda.training, "create", create_then_killed)
    with pytest.raises(IncarnationGone):
        _point(point_lambda, ws.name, ws.created_at, grid["id"], 1, 1.0)
    assert repositories.grids.points(ws.name, grid["id"]) == []


def test_info_reads_one_page_of_jobs(services: Wiring, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Bug 6: every page loaded every point and batch-got every job; a page now reads only its own."""
    ws = workspace(services)
    values = [float(i) for i in range(25)]
    grid = _grid(services, ws.name, ws.created_at, values)
    point_lambda = component(services, "create_point")
    for index, lr in enumerate(values):
        _point(point_lambda, ws.name, ws.created_at, grid["id"], index, lr)
    read: list[list[str]] = []
    jobs = services.repositories.jobs
    real_many = jobs.many

    def many(workspace: str, ids: list[str]) -> Any:
        read.append(list(ids))
        return real_many(workspace, ids)

    monkeypatch.setattr(jobs, "many", many)
    info = services.grids.info(ws.name, grid["id"], None, False, 10, 2)
    assert [row["index"] for row in info["rows"]] == list(range(10, 20))
    assert [row["params"] for row in info["rows"]] == [{"lr": float(i)} for i in range(10, 20)]
    assert (info["page"], info["pages"], info["counts"]) == (2, 3, {"SUBMITTED": 25})
    assert [len(ids) for ids in read] == [10]
    # Sorting orders every point, so it reads them all (and still answers one page).
    read.clear()
    info = services.grids.info(ws.name, grid["id"], "accuracy", True, 10, 3)
    assert [row["index"] for row in info["rows"]] == list(range(20, 25)) and [len(ids) for ids in read] == [25]
