"""The job repository contract, run against pynamodb (moto in process) and the in-memory twin."""
from __future__ import annotations

import pytest

from chalicelib.errors import ConcurrentUpdate, Conflict, NotFound, ValidationFailed
from chalicelib.repositories.jobs import Job
from chalicelib.repositories.workspaces import IncarnationGone, Workspace
from tests.contract_tables import Repositories, dynamo_table, repos  # noqa: F401  (fixtures)

WS, OWNER, INCARNATION = "ws-a", "arn:aws:iam::123456789012:user/dev", "2026-01-01T00:00:00.000+00:00"


def _job(job_id: str = "train-0001", created_at: str = "2026-01-02T00:00:00.000+00:00", workspace: str = WS,
         incarnation: str = INCARNATION) -> Job:
    spec = {"workspace": workspace, "incarnation": incarnation, "kind": "train", "code": "c" * 64,
            "data": {"training": "d" * 64}, "params": "p" * 64, "environment": "image",
            "resources": {"instance_type": "ml.m5.large", "instance_count": 1, "volume_gb": 30,
                          "max_runtime_seconds": 60}}
    return Job(workspace, job_id, "f" * 64, "train", "SUBMITTED", spec, created_at, OWNER, created_at,
               execution_arn=f"arn:aws:states:us-east-1:123456789012:execution:sm:{job_id}",
               history=[{"status": "SUBMITTED", "at": created_at}], sources={"code": "given"})


@pytest.fixture
def live(repos: Repositories) -> Repositories:  # noqa: F811
    assert repos.workspaces.create(Workspace(WS, OWNER, INCARNATION), INCARNATION)
    return repos


def test_create_once_then_the_same_job(live: Repositories) -> None:
    stored, created = live.jobs.create(_job(), INCARNATION)
    assert created and stored.version == 1
    again, created_again = live.jobs.create(_job(), INCARNATION)
    assert not created_again and again == stored == live.jobs.get(WS, "train-0001")


def test_create_is_fenced_by_the_incarnation(live: Repositories) -> None:
    with pytest.raises(Conflict):
        live.jobs.create(_job(), "another incarnation")
    live.workspaces.tombstone(live.workspaces.get(WS), "2026-01-03")  # type: ignore[arg-type]
    with pytest.raises(Conflict):
        live.jobs.create(_job(), INCARNATION)
    with pytest.raises(NotFound):
        live.jobs.get(WS, "train-0001")


def test_get_refuses_unknown_and_impossible_ids(live: Repositories) -> None:
    with pytest.raises(NotFound):
        live.jobs.get(WS, "train-missing")
    with pytest.raises(ValidationFailed):
        live.jobs.get(WS, "x" * 81)


def test_set_status_is_versioned_and_a_stale_writer_gets_a_409(live: Repositories) -> None:
    job, _ = live.jobs.create(_job(), INCARNATION)
    racer = live.jobs.get(WS, job.job_id)
    live.jobs.set_status(job, "KILLED", "t1", ended_at="t1", failure_reason="killed by dev")
    assert (job.status, job.version, job.history[-1]) == ("KILLED", 2, {"status": "KILLED", "at": "t1"})
    with pytest.raises(ConcurrentUpdate) as stale:  # e.g. a resume that read the job before the kill
        live.jobs.set_status(racer, "SUBMITTED", "t2", attempt=2, failure_reason=None)
    assert isinstance(stale.value, Conflict) and stale.value.status == 409
    stored = live.jobs.get(WS, job.job_id)
    assert stored == job and stored.failure_reason == "killed by dev"
    live.jobs.set_status(stored, "SUBMITTED", "t3", attempt=2, failure_reason=None, ended_at=None)
    again = live.jobs.get(WS, job.job_id)
    assert (again.status, again.attempt, again.failure_reason, again.ended_at) == ("SUBMITTED", 2, None, None)


def test_fenced_status_commits_only_in_the_jobs_incarnation(live: Repositories) -> None:
    job, _ = live.jobs.create(_job(), INCARNATION)
    live.jobs.set_status(job, "TRAINING", "t1", fenced=True, started_at="t1")
    assert live.jobs.get(WS, job.job_id).status == "TRAINING"
    live.workspaces.tombstone(live.workspaces.get(WS), "t2")  # type: ignore[arg-type]
    with pytest.raises(IncarnationGone):
        live.jobs.set_status(job, "COMPLETED", "t3", fenced=True, model_uri="s3://b/k")
    assert live.jobs.get(WS, job.job_id).status == "TRAINING"


def test_page_lists_newest_first_and_the_cursor_resumes(live: Repositories) -> None:
    for i in range(5):
        live.jobs.create(_job(f"train-000{i}", f"2026-01-0{i + 1}T00:00:00.000+00:00"), INCARNATION)
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        jobs, cursor = live.jobs.page(WS, 2, cursor)
        seen += [j.job_id for j in jobs]
        if cursor is None:
            break
    assert seen == [f"train-000{i}" for i in reversed(range(5))]
    with pytest.raises(ValidationFailed, match="invalid cursor"):
        live.jobs.page(WS, 2, "bm90IGEgY3Vyc29y")
    with pytest.raises(ValidationFailed, match="invalid cursor"):  # another workspace's cursor
        live.jobs.page("ws-b", 2, live.jobs.page(WS, 1, None)[1])


def test_unfinished_and_many(live: Repositories) -> None:
    for i in range(3):
        live.jobs.create(_job(f"train-000{i}"), INCARNATION)
    done = live.jobs.get(WS, "train-0001")
    live.jobs.set_status(done, "COMPLETED", "t1")
    assert sorted(j.job_id for j in live.jobs.unfinished(WS)) == ["train-0000", "train-0002"]
    found = live.jobs.many(WS, ["train-0001", "train-0009", "train-0002"])
    assert sorted(found) == ["train-0001", "train-0002"] and found["train-0001"].status == "COMPLETED"
    assert live.jobs.statuses(WS, ["train-0001", "train-0009", "train-0000"]) == {
        "train-0001": "COMPLETED", "train-0000": "SUBMITTED"}
