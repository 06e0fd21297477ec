"""The workspace repository contract, run against pynamodb (moto in process) and the in-memory twin."""
from __future__ import annotations

import pytest

from chalicelib import limits
from chalicelib.errors import Conflict, ValidationFailed
from chalicelib.repositories.grids import GridPoint
from chalicelib.repositories.workspaces import Workspace
from tests.contract_tables import Repositories, dynamo_table, repos  # noqa: F401  (fixtures)
from tests.test_contract_grids import _grid
from tests.test_contract_jobs import _job

OWNER, INCARNATION = "arn:aws:iam::123456789012:user/dev", "2026-01-01T00:00:00.000+00:00"


def test_create_once_with_its_owner(repos: Repositories) -> None:  # noqa: F811
    assert repos.workspaces.create(Workspace("ws-a", OWNER, INCARNATION), "t0")
    assert not repos.workspaces.create(Workspace("ws-a", "someone else", "later"), "t1")
    assert repos.workspaces.get("ws-a") == Workspace("ws-a", OWNER, INCARNATION)
    assert repos.workspaces.get("ws-b") is None
    owner = repos.workspaces.member("ws-a", OWNER)
    assert owner is not None and owner.role == "owner"
    assert [m.workspace for m in repos.workspaces.memberships(OWNER)] == ["ws-a"]
    assert repos.workspaces.alive("ws-a", INCARNATION) and repos.workspaces.alive("ws-a", None)
    assert not repos.workspaces.alive("ws-a", "another") and not repos.workspaces.alive("ws-b", None)


def test_the_member_cap_is_checked_in_the_write(repos: Repositories,  # noqa: F811
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_MEMBERS", 4)  # the cap is read at each write; 4 keeps the test quick
    workspace = Workspace("ws-a", OWNER, INCARNATION)
    repos.workspaces.create(workspace, "t0")
    for i in range(limits.MAX_MEMBERS - 1):
        repos.workspaces.add_member(workspace, f"user-{i}", "t1")
    repos.workspaces.add_member(workspace, "user-0", "t1")  # already a member: no-op, not over the cap
    with pytest.raises(ValidationFailed, match="at most"):
        repos.workspaces.add_member(workspace, "one-too-many", "t2")
    assert len(repos.workspaces.members("ws-a")) == limits.MAX_MEMBERS
    repos.workspaces.remove_member("ws-a", "user-0")
    repos.workspaces.remove_member("ws-a", "user-0")  # idempotent
    repos.workspaces.add_member(workspace, "one-more", "t3")
    assert len(repos.workspaces.members("ws-a")) == limits.MAX_MEMBERS


def test_tombstone_pending_and_delete(repos: Repositories) -> None:  # noqa: F811
    repos.workspaces.create(Workspace("ws-a", OWNER, INCARNATION), "t0")
    first = repos.workspaces.tombstone(repos.workspaces.get("ws-a"), "t1")  # type: ignore[arg-type]
    second = repos.workspaces.tombstone(repos.workspaces.get("ws-a"), "t2")  # type: ignore[arg-type]
    assert first.killed_at == second.killed_at == "t1" and not repos.workspaces.alive("ws-a", None)
    with pytest.raises(Conflict):
        repos.workspaces.add_member(first, "late", "t3")
    assert repos.workspaces.set_pending(first, ["sagemaker:x"])
    assert repos.workspaces.get("ws-a").kill_pending == ["sagemaker:x"]  # type: ignore[union-attr]
    repos.workspaces.delete_tombstone(Workspace("ws-a", OWNER, INCARNATION, killed_at="other kill"))
    assert repos.workspaces.get("ws-a") is not None
    repos.workspaces.delete_tombstone(first)
    assert repos.workspaces.get("ws-a") is None
    assert not repos.workspaces.set_pending(first, [])


def test_delete_rows_sweeps_jobs_grids_and_points(repos: Repositories) -> None:  # noqa: F811
    ws = "ws-g"
    repos.workspaces.create(Workspace(ws, OWNER, INCARNATION), "t0")
    repos.jobs.create(_job(workspace=ws), INCARNATION)
    repos.grids.create(_grid(), INCARNATION)
    repos.grids.put_point(ws, INCARNATION, "grid-0001", GridPoint(0, "train-0001", {}))
    assert repos.workspaces.counts(ws) == {"snapshots": 0, "jobs": 1, "members": 1, "models": 0}
    assert repos.workspaces.delete_rows(ws) >= 4
    assert repos.workspaces.counts(ws) == {"snapshots": 0, "jobs": 0, "members": 0, "models": 0}
    assert repos.grids.points(ws, "grid-0001") == [] and repos.workspaces.get(ws) is not None
