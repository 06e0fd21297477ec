"""The grid repository contract, run against pynamodb (moto in process) and the in-memory twin."""
from __future__ import annotations

import pytest

from chalicelib.errors import ConcurrentUpdate, Conflict, NotFound
from chalicelib.repositories.grids import Grid, GridPoint
from chalicelib.repositories.workspaces import IncarnationGone, Workspace
from tests.contract_tables import Repositories, dynamo_table, repos  # noqa: F401  (fixtures)

WS, OWNER, INCARNATION = "ws-g", "arn:aws:iam::123456789012:user/dev", "2026-01-01T00:00:00.000+00:00"


def _grid(grid_id: str = "grid-0001") -> Grid:
    return Grid(WS, grid_id, "f" * 64, "RUNNING", {"params": {"lr": [1, 2]}}, 2, 10, f"ws/{WS}/grids/{grid_id}",
                f"arn:aws:states:us-east-1:123456789012:execution:grid:{grid_id}", "t0", OWNER, "t0",
                sources={"params": "given"})


@pytest.fixture
def live(repos: Repositories) -> Repositories:  # noqa: F811
    assert repos.workspaces.create(Workspace(WS, OWNER, INCARNATION), INCARNATION)
    return repos


def test_create_once_fenced(live: Repositories) -> None:
    stored, created = live.grids.create(_grid(), INCARNATION)
    assert created and stored.version == 1 and live.grids.get(WS, "grid-0001") == stored
    again, created = live.grids.create(_grid(), INCARNATION)
    assert not created and again == stored
    with pytest.raises(Conflict):
        live.grids.create(_grid("grid-0002"), "another incarnation")
    with pytest.raises(NotFound):
        live.grids.get(WS, "grid-0002")


def test_status_is_versioned(live: Repositories) -> None:
    grid, _ = live.grids.create(_grid(), INCARNATION)
    racer = live.grids.get(WS, grid.grid_id)
    live.grids.set_status(grid, "KILLED", "t1")
    with pytest.raises(ConcurrentUpdate):
        live.grids.set_status(racer, "COMPLETED", "t2")
    assert live.grids.get(WS, grid.grid_id).status == "KILLED"
    assert live.grids.running(WS) == []


def test_points_page_by_index_and_are_fenced(live: Repositories) -> None:
    live.grids.create(_grid(), INCARNATION)
    for i in range(12):
        live.grids.put_point(WS, INCARNATION, "grid-0001", GridPoint(i, f"train-{i:04d}", {"lr": i}))
    live.grids.put_point(WS, INCARNATION, "grid-0001", GridPoint(3, "train-0003", {"lr": 3}))  # idempotent
    assert [p.index for p in live.grids.points(WS, "grid-0001")] == list(range(12))
    assert [p.index for p in live.grids.points(WS, "grid-0001", 5, 5)] == [5, 6, 7, 8, 9]
    assert [p.job_id for p in live.grids.points(WS, "grid-0001", 10, 5)] == ["train-0010", "train-0011"]
    assert live.grids.job_ids(WS, "grid-0001") == [f"train-{i:04d}" for i in range(12)]
    live.workspaces.tombstone(live.workspaces.get(WS), "t1")  # type: ignore[arg-type]
    with pytest.raises(IncarnationGone):
        live.grids.put_point(WS, INCARNATION, "grid-0001", GridPoint(12, "train-0012", {"lr": 12}))
    assert len(live.grids.points(WS, "grid-0001")) == 12
