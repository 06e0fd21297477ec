"""Job rows (training and batch jobs share them): created once per fingerprint, then changed only by versioned
status updates.

- `create` is a conditional put fenced by the workspace incarnation (see repositories.workspaces): the job id is
  the fingerprint's prefix, so an identical second create finds the stored job (`created` False).
- `set_status` is optimistic locking on the row's `version`: a concurrent change (a kill racing a resume, or a
  pipeline task) raises `ConcurrentUpdate`, a `Conflict` (HTTP 409), and leaves the row as the other writer left it.
- `page` lists newest first through gsi1 (JOBS#<ws> / <created_at>#<job id>); its cursor is the query's
  LastEvaluatedKey, checked on the way back in (a forged one is a 400, never a DynamoDB error).
"""
from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, cast

from pynamodb.exceptions import DoesNotExist, TransactWriteError, UpdateError
from pynamodb.expressions.update import Action

from chalicelib.cost import job_cost
from chalicelib.errors import ConcurrentUpdate, Conflict, NotFound, ValidationFailed
from chalicelib.repositories.workspaces import (MemoryWorkspaces, condition_failed, fenced_write,
                                                item_condition_failed, put_once_fenced)
from chalicelib.tables import JobItem, ws_key

TERMINAL = ("COMPLETED", "FAILED", "KILLED")
# Job ids are `<kind>-<fingerprint prefix>`; anything much longer is refused before it reaches a key.
MAX_JOB_ID_CHARS = 80


@dataclass
class Job:
    """One job row. `version` is the optimistic-locking counter (None until stored)."""

    workspace: str
    job_id: str
    fingerprint: str
    kind: str
    status: str
    spec: dict[str, Any]
    created_at: str
    created_by: str
    updated_at: str
    execution_arn: str | None = None
    training_job_name: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    metrics: dict[str, Any] | None = None
    failure_reason: str | None = None
    model_uri: str | None = None
    hyperparameters: dict[str, Any] | None = None
    metric_series: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    attempt: int = 1
    attempts: list[dict[str, Any]] = field(default_factory=list)
    sources: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    version: int | None = None


# What a status change may set besides the status (None removes the attribute).
CHANGEABLE = frozenset({"execution_arn", "training_job_name", "started_at", "ended_at", "metrics", "failure_reason",
                        "metric_series",
                        "model_uri", "attempt", "attempts", "usage"})



class JobRepository(Protocol):
    def create(self, job: Job, incarnation: str) -> tuple[Job, bool]:
        """Stores the job unless its id exists: (the stored job, whether this call created it). Conflict when the
        workspace is no longer `incarnation` (killed or re-created): no job is created."""

    def get(self, workspace: str, job_id: str) -> Job:
        """The job, read consistently; NotFound if there is none, ValidationFailed for an impossible id."""

    def set_status(self, job: Job, status: str, at: str, *, fenced: bool = False, **changes: Any) -> None:
        """One versioned change: the status, `updated_at`, a history entry, and `changes` (CHANGEABLE fields).
        `job` is updated in place. ConcurrentUpdate if the row changed since `job` was read; with `fenced`, the change
        commits only while the workspace is the job's incarnation (IncarnationGone otherwise)."""

    def page(self, workspace: str, limit: int, cursor: str | None) -> tuple[list[Job], str | None]:
        """Up to `limit` jobs, newest first, and the cursor of the next page (None at the end)."""

    def unfinished(self, workspace: str) -> list[Job]:
        """Every job of the workspace that has not ended."""

    def many(self, workspace: str, job_ids: Iterable[str]) -> dict[str, Job]:
        """The jobs that exist among `job_ids`, by id."""

    def statuses(self, workspace: str, job_ids: Iterable[str]) -> dict[str, str]:
        """The status of each job that exists among `job_ids` (reads only the status attribute)."""


def validate_job_id(job_id: Any) -> str:
    if not isinstance(job_id, str) or len(job_id) > MAX_JOB_ID_CHARS:
        raise ValidationFailed("job: must be a job id such as train-0123abcd...")
    return job_id


def not_found(workspace: str, job_id: str) -> NotFound:
    return NotFound(f"job {job_id!r} does not exist in workspace {workspace!r}")


def _history(job: Job, status: str, at: str) -> list[dict[str, Any]]:
    return [*job.history, {"status": status, "at": at}]


def _check_changes(changes: dict[str, Any]) -> None:
    unknown = set(changes) - CHANGEABLE
    if unknown:
        raise TypeError(f"not changeable by a status update: {', '.join(sorted(unknown))}")


def describe(job: Job) -> dict[str, Any]:
    """The API's job document (GET /workspaces/{workspace}/jobs/{job})."""
    spec = job.spec
    return {
        "id": job.job_id, "workspace": spec["workspace"], "kind": job.kind, "status": job.status,
        "fingerprint": job.fingerprint,
        "inputs": {"code": spec["code"], "data": spec["data"], "params": spec["params"]},
        "environment": spec["environment"], "resources": spec["resources"],
        "created_at": job.created_at, "updated_at": job.updated_at,
        "started_at": job.started_at, "ended_at": job.ended_at,
        "metrics": job.metrics or {}, "failure_reason": job.failure_reason, "model": job.model_uri,
        "hyperparameters": job.hyperparameters, "metric_series": job.metric_series or {},
        "training_job_name": job.training_job_name, "execution": job.execution_arn,
        "history": job.history, "attempt": job.attempt, "attempts": job.attempts, "sources": job.sources,
        "cost": job_cost(kind=job.kind, status=job.status, resources=spec["resources"], inputs=2 + len(spec["data"]),
                         history=len(job.history), started_at=job.started_at, ended_at=job.ended_at,
                         usage=job.usage, attempts=job.attempts),
    }


# --- cursors -----------------------------------------------------------------------------------------------------
# A jobs cursor is the LastEvaluatedKey of the gsi1 query: these string attributes, nothing else.
_CURSOR_KEYS = {"pk", "sk", "gsi1pk", "gsi1sk"}


def encode_cursor(key: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, sort_keys=True).encode()).decode()


def decode_cursor(cursor: str, workspace: str) -> dict[str, Any]:
    """The DynamoDB start key a cursor carries, checked to be one this listing can have answered: a forged
    cursor (other attributes or value types, another workspace's keys) is a 400, never a DynamoDB error."""
    invalid = ValidationFailed("cursor: invalid cursor (not a `next` returned by this workspace's job list)")
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, TypeError):
        raise invalid from None
    if not isinstance(value, dict) or set(value) != _CURSOR_KEYS:
        raise invalid
    for attribute in value.values():
        if not (isinstance(attribute, dict) and set(attribute) == {"S"} and isinstance(attribute["S"], str)
                and 0 < len(attribute["S"]) <= 1024):
            raise invalid
    if value["pk"]["S"] != ws_key(workspace) or value["gsi1pk"]["S"] != f"JOBS#{workspace}" \
            or not value["sk"]["S"].startswith("JOB#"):
        raise invalid
    return value


def _cursor_of(job: Job) -> dict[str, Any]:
    return {"pk": {"S": ws_key(job.workspace)}, "sk": {"S": f"JOB#{job.job_id}"},
            "gsi1pk": {"S": f"JOBS#{job.workspace}"}, "gsi1sk": {"S": f"{job.created_at}#{job.job_id}"}}


# --- pynamodb ----------------------------------------------------------------------------------------------------
_ROW_FIELDS = tuple(f.name for f in fields(Job) if f.name != "workspace")


def _job(item: JobItem) -> Job:
    values = {name: getattr(item, name) for name in _ROW_FIELDS}
    values.update(history=list(item.history or []), attempts=list(item.attempts or []),
                  sources=dict(item.sources or {}), attempt=int(item.attempt), version=int(item.version))
    return Job(workspace=item.pk.removeprefix("WS#"), **values)


def _item(job: Job) -> JobItem:
    """A new row (pynamodb sets `version` on the first save)."""
    values = {name: getattr(job, name) for name in _ROW_FIELDS if name != "version"}
    return JobItem(ws_key(job.workspace), f"JOB#{job.job_id}", gsi1pk=f"JOBS#{job.workspace}",
                   gsi1sk=f"{job.created_at}#{job.job_id}", **values)


class DynamoJobs:
    def create(self, job: Job, incarnation: str) -> tuple[Job, bool]:
        item = _item(job)
        if not put_once_fenced(job.workspace, incarnation, item, "job"):
            return self.get(job.workspace, job.job_id), False
        return _job(item), True

    def get(self, workspace: str, job_id: str) -> Job:
        try:
            return _job(JobItem.get(ws_key(workspace), f"JOB#{validate_job_id(job_id)}", consistent_read=True))
        except DoesNotExist:
            raise not_found(workspace, job_id) from None

    def set_status(self, job: Job, status: str, at: str, *, fenced: bool = False, **changes: Any) -> None:
        _check_changes(changes)
        item = JobItem(ws_key(job.workspace), f"JOB#{job.job_id}", version=job.version)
        actions: list[Action] = [JobItem.status.set(status), JobItem.updated_at.set(at),
                                 JobItem.history.set(_history(job, status, at))]
        actions += [getattr(JobItem, name).remove() if value is None else getattr(JobItem, name).set(value)
                    for name, value in changes.items()]
        stale = ConcurrentUpdate(f"job {job.job_id!r} changed while it was being updated; try again")
        if fenced:
            try:
                fenced_write(job.workspace, job.spec.get("incarnation"), lambda tx: tx.update(item, actions=actions))
            except TransactWriteError as exc:
                if item_condition_failed(exc, 1):
                    raise stale from None
                raise
            stored = self.get(job.workspace, job.job_id)
        else:
            try:
                item.update(actions=actions)
            except UpdateError as exc:
                if condition_failed(exc):
                    raise stale from None
                raise
            stored = _job(item)
        for name in (f.name for f in fields(Job)):
            setattr(job, name, getattr(stored, name))

    def page(self, workspace: str, limit: int, cursor: str | None) -> tuple[list[Job], str | None]:
        kwargs: dict[str, Any] = {"limit": limit, "scan_index_forward": False}
        if cursor:
            kwargs["last_evaluated_key"] = decode_cursor(cursor, workspace)
        result = JobItem.gsi1.query(f"JOBS#{workspace}", **kwargs)
        jobs = [_job(cast(JobItem, item)) for item in result]
        last = result.last_evaluated_key
        return jobs, encode_cursor(last) if last else None

    def unfinished(self, workspace: str) -> list[Job]:
        rows = JobItem.query(ws_key(workspace), JobItem.sk.startswith("JOB#"), consistent_read=True,
                             filter_condition=~JobItem.status.is_in(*TERMINAL))
        return [_job(row) for row in rows]

    def many(self, workspace: str, job_ids: Iterable[str]) -> dict[str, Job]:
        keys = [(ws_key(workspace), f"JOB#{job_id}") for job_id in dict.fromkeys(job_ids)]
        return {job.job_id: job for job in map(_job, JobItem.batch_get(keys))}

    def statuses(self, workspace: str, job_ids: Iterable[str]) -> dict[str, str]:
        keys = [(ws_key(workspace), f"JOB#{job_id}") for job_id in dict.fromkeys(job_ids)]
        return {row.sk.removeprefix("JOB#"): row.status
                for row in JobItem.batch_get(keys, attributes_to_get=["sk", "status"])}


def _stored(job: Job, version: int) -> Job:
    stored = copy.deepcopy(job)
    stored.version = version
    return stored


# --- in memory ---------------------------------------------------------------------------------------------------
class MemoryJobs:
    """The in-memory twin; rows live in the workspace twin's partitions, so a workspace kill sweeps them."""

    def __init__(self, workspaces: MemoryWorkspaces) -> None:
        self._workspaces = workspaces

    def _rows(self, workspace: str) -> dict[str, Job]:
        return self._workspaces.table(workspace, "jobs")

    def create(self, job: Job, incarnation: str) -> tuple[Job, bool]:
        with self._workspaces.lock:
            if not self._workspaces.alive(job.workspace, incarnation):
                raise Conflict(f"workspace {job.workspace!r} is being killed (or was re-created); no job was "
                               "created")
            stored = self._rows(job.workspace).get(job.job_id)
            if stored is not None:
                return copy.deepcopy(stored), False
            self._rows(job.workspace)[job.job_id] = _stored(job, 1)
            return _stored(job, 1), True

    def get(self, workspace: str, job_id: str) -> Job:
        validate_job_id(job_id)
        with self._workspaces.lock:
            stored = self._workspaces.rows.get(workspace, {}).get("jobs", {}).get(job_id)
            if stored is None:
                raise not_found(workspace, job_id)
            return cast(Job, copy.deepcopy(stored))

    def set_status(self, job: Job, status: str, at: str, *, fenced: bool = False, **changes: Any) -> None:
        _check_changes(changes)
        with self._workspaces.lock:
            if fenced:
                self._workspaces.fence(job.workspace, job.spec.get("incarnation"))
            stored = self._workspaces.rows.get(job.workspace, {}).get("jobs", {}).get(job.job_id)
            if stored is None or stored.version != job.version:
                raise ConcurrentUpdate(f"job {job.job_id!r} changed while it was being updated; try again")
            stored.history = _history(stored, status, at)
            stored.status, stored.updated_at = status, at
            for name, value in changes.items():
                setattr(stored, name, copy.deepcopy(value))
            stored.version = (stored.version or 0) + 1
            for name in (f.name for f in fields(Job)):
                setattr(job, name, copy.deepcopy(getattr(stored, name)))

    def _newest_first(self, workspace: str) -> Iterator[Job]:
        rows = self._workspaces.rows.get(workspace, {}).get("jobs", {}).values()
        return iter(sorted(rows, key=lambda j: f"{j.created_at}#{j.job_id}", reverse=True))

    def page(self, workspace: str, limit: int, cursor: str | None) -> tuple[list[Job], str | None]:
        after = decode_cursor(cursor, workspace)["gsi1sk"]["S"] if cursor else None
        with self._workspaces.lock:
            rows = [j for j in self._newest_first(workspace) if after is None or f"{j.created_at}#{j.job_id}" < after]
            jobs = copy.deepcopy(rows[:limit])
        # As DynamoDB does, a full page carries a cursor even when nothing follows it.
        return jobs, encode_cursor(_cursor_of(jobs[-1])) if len(jobs) == limit else None

    def unfinished(self, workspace: str) -> list[Job]:
        with self._workspaces.lock:
            return [copy.deepcopy(j) for j in self._newest_first(workspace) if j.status not in TERMINAL]

    def many(self, workspace: str, job_ids: Iterable[str]) -> dict[str, Job]:
        with self._workspaces.lock:
            rows = self._workspaces.rows.get(workspace, {}).get("jobs", {})
            return {job_id: copy.deepcopy(rows[job_id]) for job_id in job_ids if job_id in rows}

    def statuses(self, workspace: str, job_ids: Iterable[str]) -> dict[str, str]:
        with self._workspaces.lock:
            rows = self._workspaces.rows.get(workspace, {}).get("jobs", {})
            return {job_id: rows[job_id].status for job_id in job_ids if job_id in rows}
