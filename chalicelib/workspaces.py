"""Workspaces: a walled garden of code, data, params, jobs and models that only its members see.

Killing a workspace (`kill`) stops before it deletes, and a name used again is a new incarnation:

1. The workspace row becomes a tombstone (`killed_at`). It keeps the name taken, every route refuses the workspace,
   and every write made on behalf of the workspace is fenced by it: job rows are created and jobs end (Record)
   in one transaction with a check that the workspace row still has the job's incarnation (`created_at`) and no
   `killed_at`, so a job of the killed incarnation can never write into it, or into a later one.
2. Everything running is stopped: running grid executions (their map starts no more points), then every job that
   has not ended: its execution, its SageMaker training job or its Batch job; the job is marked KILLED.
3. Its rows (jobs, grids and their points, snapshots, members, provenance, triggers) and every object version under
   `ws/<name>/` are deleted.
4. Stopped containers can still write while they stop (SageMaker uploads a stopped job's model directory), so the
   kill waits for them (KILL_WAIT_SECONDS), sweeps the prefix again and only then deletes the tombstone: the name is
   free. If they take longer, the answer is `stopping` and the tombstone lists them; the next `kill`, or a `create`
   of the name, finishes the kill once they have ended.

A re-created workspace has a new `created_at`, the incarnation in every job fingerprint: its jobs have new ids,
and nothing an old job still holds names them.
"""
from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from functools import cache
from collections.abc import Callable, Iterable
from typing import Any, cast

from pynamodb.connection import Connection
from pynamodb.exceptions import DeleteError, DoesNotExist, TransactWriteError, UpdateError
from pynamodb.transactions import TransactWrite

from chalicelib import config, limits
from chalicelib.adapters import BatchJobs, ObjectStore, TrainingJobs, clients
from chalicelib.tenancy import WorkspaceRoles
from chalicelib.domain import validate_workspace_name
from chalicelib.errors import Conflict, Forbidden, KaosError, NotFound, ValidationFailed
from chalicelib.tables import JobItem, MemberItem, WorkspaceItem, _Item, grid_key, ws_key

# How long a kill waits for the containers it stopped to end, within the API Lambda's 30 s: SageMaker sends SIGTERM
# and uploads what the job saved; longer stops (SageMaker allows 120 s) answer `stopping` (see the module doc).
KILL_WAIT_SECONDS = 10.0
_KILL_POLL_SECONDS = 0.25
# Fence checks during long write phases of a Record task (a batch job's outputs) happen at most this often.
FENCE_INTERVAL_SECONDS = 1.0
_SAGEMAKER_RUNNING = ("InProgress", "Stopping")


@cache
def _connection() -> Connection:
    """One pynamodb connection per process: each new one builds a botocore client (~0.1 s)."""
    return Connection()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def principal_arn(member: str, caller: str) -> str:
    """An ARN as given, or a bare user name resolved to an IAM user in the caller's account."""
    if member.startswith("arn:"):
        return member
    account = caller.split(":")[4] if caller.startswith("arn:") and caller.count(":") >= 5 else ""
    return f"arn:aws:iam::{account}:user/{member}"


def workspace_prefix(workspace: str) -> str:
    # The trailing slash matters: without it killing "mnist" would also match "mnist2/" keys.
    return f"ws/{workspace}/"


class IncarnationGone(KaosError):
    """A write on behalf of a workspace incarnation that has been killed (and perhaps re-created since): dropped."""

    status = 409
    code = "IncarnationGone"


def current_incarnation(workspace: str) -> str | None:
    """The workspace's live incarnation (its `created_at`); None while it is being killed or when it is gone."""
    try:
        item = WorkspaceItem.get(ws_key(workspace), "META", consistent_read=True)
    except DoesNotExist:
        return None
    return None if item.killed_at else item.created_at


def incarnation_alive(workspace: str, incarnation: str | None) -> bool:
    """Whether work of this incarnation may still write (None: any live incarnation, for rows from before it)."""
    current = current_incarnation(workspace)
    return current is not None and (incarnation is None or current == incarnation)


def fenced_write(workspace: str, incarnation: str | None, write: Callable[[TransactWrite], None]) -> None:
    """Commits the items `write` adds in one transaction with a check that the workspace row is still this
    incarnation and not being killed. IncarnationGone if it is not; TransactWriteError if an item's own condition
    failed (its `cancellation_reasons[1:]` say which)."""
    condition = WorkspaceItem.pk.exists() & WorkspaceItem.killed_at.does_not_exist()
    if incarnation is not None:
        condition &= WorkspaceItem.created_at == incarnation
    try:
        with TransactWrite(connection=_connection()) as tx:
            # pynamodb sends condition checks first, so this is cancellation reason 0.
            tx.condition_check(WorkspaceItem, ws_key(workspace), "META", condition=condition)
            write(tx)
    except TransactWriteError as exc:
        reasons = exc.cancellation_reasons if exc.cause_response_code == "TransactionCanceledException" else []
        if reasons and reasons[0] is not None and reasons[0].code == "ConditionalCheckFailed":
            raise IncarnationGone(f"workspace {workspace!r}: incarnation {incarnation} was killed") from exc
        raise


def item_condition_failed(exc: TransactWriteError, index: int) -> bool:
    """Whether the `index`-th item of a fenced_write (1 = the first item `write` added) failed its condition."""
    reasons = exc.cancellation_reasons if exc.cause_response_code == "TransactionCanceledException" else []
    reason = reasons[index] if len(reasons) > index else None
    return reason is not None and reason.code == "ConditionalCheckFailed"


class Fence:
    """Raises IncarnationGone once the workspace is no longer this incarnation; checks at most every `interval`
    seconds, so a long write phase (thousands of outputs) stays cheap. Thread-safe."""

    def __init__(self, workspace: str, incarnation: str | None, interval: float = FENCE_INTERVAL_SECONDS) -> None:
        self.workspace, self.incarnation, self.interval = workspace, incarnation, interval
        self._checked = -float("inf")
        self._lock = threading.Lock()

    def check(self) -> None:
        with self._lock:
            if time.monotonic() - self._checked < self.interval:
                return
            if not incarnation_alive(self.workspace, self.incarnation):
                raise IncarnationGone(f"workspace {self.workspace!r}: incarnation {self.incarnation} was killed")
            self._checked = time.monotonic()


class Workspaces:
    def __init__(self, store: ObjectStore | None = None, training_jobs: TrainingJobs | None = None,
                 batch_jobs: BatchJobs | None = None, roles: WorkspaceRoles | None = None) -> None:
        self._roles = roles
        self._store = store
        self._training_jobs = training_jobs
        self._batch_jobs = batch_jobs

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            settings = config.settings()
            self._store = ObjectStore(clients().s3, settings.bucket, platform_buckets=settings.platform_buckets)
        return self._store

    @property
    def roles(self) -> WorkspaceRoles:
        if self._roles is None:
            settings = config.settings()
            self._roles = WorkspaceRoles(settings.bucket, settings.workspace_role_boundary,
                                         settings.workspace_role_prefix, settings.training_log_group_arn,
                                         settings.batch_job_definition)
        return self._roles

    @property
    def training_jobs(self) -> TrainingJobs:
        if self._training_jobs is None:
            self._training_jobs = TrainingJobs(clients().sagemaker)
        return self._training_jobs

    @property
    def batch_jobs(self) -> BatchJobs:
        if self._batch_jobs is None:
            self._batch_jobs = BatchJobs(clients().batch)
        return self._batch_jobs

    def create(self, name: str, user: str, *, _after_kill: bool = False) -> tuple[dict[str, Any], bool]:
        """Creates the workspace owned by `user`; creating it again as its owner is a no-op (idempotent).

        A name whose previous workspace is still being killed is free once that kill has finished: this
        finishes it (its owner asked for it) if what it stopped has ended, and otherwise answers 409."""
        validate_workspace_name(name, "name")
        created_at = now()
        workspace = WorkspaceItem(ws_key(name), "META", owner=user, created_at=created_at)
        member = MemberItem(
            ws_key(name), f"MEMBER#{user}", user=user, role="owner", added_at=created_at, owner=user,
            workspace_created_at=created_at, gsi1pk=f"USER#{user}", gsi1sk=ws_key(name),
        )
        # The incarnation's execution role exists before anything can run in the workspace (tenancy.py).
        self.roles.ensure(name, created_at)
        try:
            # Workspace and owner membership are written together or not at all.
            with TransactWrite(connection=_connection()) as tx:
                tx.save(workspace, condition=WorkspaceItem.pk.does_not_exist())
                tx.save(member)
        except TransactWriteError as exc:
            self.roles.delete(name, created_at)  # this attempt's incarnation never came to be
            existing = self._get(name)
            if existing is not None and existing.killed_at is not None and not _after_kill:
                reaped = self._reap(existing, f"workspace {name!r} killed", wait_seconds=0)
                if reaped["status"] == "killed":
                    return self.create(name, user, _after_kill=True)
                raise Conflict(f"name: workspace {name!r} is still being killed ({len(reaped['pending'])} stopped "
                               "job(s) have not ended yet); try again in a minute") from exc
            if existing is not None and existing.owner == user and existing.killed_at is None:
                return self._describe(existing), False
            raise Conflict(f"name: workspace {name!r} already exists; choose another name") from exc
        return self._describe(workspace), True

    def _get(self, name: str) -> WorkspaceItem | None:
        try:
            return WorkspaceItem.get(ws_key(name), "META", consistent_read=True)
        except DoesNotExist:
            return None

    def require(self, name: str, user: str) -> WorkspaceItem:
        """The workspace if `user` is a member; otherwise NotFound, so non-members cannot learn it exists."""
        validate_workspace_name(name)
        try:
            MemberItem.get(ws_key(name), f"MEMBER#{user}")
        except DoesNotExist:
            raise NotFound(f"workspace {name!r} does not exist (or you are not a member)") from None
        item = self._get(name)
        if item is None:
            raise NotFound(f"workspace {name!r} does not exist (or you are not a member)")
        if item.killed_at is not None:
            raise Conflict(f"workspace {name!r} is being killed (since {item.killed_at})")
        return item

    def list_for(self, user: str) -> list[dict[str, Any]]:
        rows = cast(Iterable[MemberItem], MemberItem.gsi1.query(f"USER#{user}"))
        return [{"name": m.pk.removeprefix("WS#"), "owner": m.owner, "created_at": m.workspace_created_at,
                 "role": m.role} for m in rows]

    def info(self, name: str, user: str) -> dict[str, Any]:
        item = self.require(name, user)
        counts = {"snapshots": 0, "jobs": 0, "members": 0}
        for row in _Item.query(ws_key(name), attributes_to_get=["sk"]):
            kind = row.sk.split("#", 1)[0]
            key = {"SNAP": "snapshots", "JOB": "jobs", "MEMBER": "members"}.get(kind)
            if key:
                counts[key] += 1
        # Batch jobs record their output as `snapshot:<id>`, so only s3:// model URIs count as models.
        counts["models"] = JobItem.count(ws_key(name), filter_condition=JobItem.model_uri.startswith("s3://"))
        return {**self._describe(item), **counts}

    def kill(self, name: str, user: str) -> dict[str, Any]:
        """Stops everything the workspace runs, then deletes exactly it: its rows (exact partition keys),
        provenance and S3 prefix (see the module doc). Idempotent: killing again finishes a kill that answered
        `stopping` (or that was interrupted)."""
        validate_workspace_name(name)
        item = self._get(name)
        if item is None or item.owner != user:
            if item is not None and item.killed_at is None and self._is_member(name, user):
                raise Forbidden(f"workspace {name!r}: only its owner may do this")
            raise NotFound(f"workspace {name!r} does not exist (or you are not a member)")
        return self._reap(self._tombstone(item), f"workspace {name!r} killed by {user}", KILL_WAIT_SECONDS)

    def _is_member(self, name: str, user: str) -> bool:
        try:
            MemberItem.get(ws_key(name), f"MEMBER#{user}")
        except DoesNotExist:
            return False
        return True

    @staticmethod
    def _tombstone(item: WorkspaceItem) -> WorkspaceItem:
        """Marks the workspace killed (once): from now on its incarnation's fenced writes fail."""
        if item.killed_at is None:
            try:
                item.update(actions=[WorkspaceItem.killed_at.set(now())],
                            condition=(WorkspaceItem.created_at == item.created_at)
                            & WorkspaceItem.killed_at.does_not_exist())
            except UpdateError as exc:
                if exc.cause_response_code != "ConditionalCheckFailedException":
                    raise
                item.refresh(consistent_read=True)  # a concurrent kill marked it first
        return item

    def _reap(self, item: WorkspaceItem, reason: str, wait_seconds: float) -> dict[str, Any]:
        """Steps 2-4 of a kill on a tombstoned workspace; each is idempotent, so any caller may repeat them."""
        name = item.pk.removeprefix("WS#")
        done = {"name": name, "status": "killed", "stopped_jobs": 0, "stopped_grids": 0, "pending": [],
                "deleted_rows": 0, "deleted_objects": 0}
        if not self._current(item):  # a concurrent kill (or create) finished it: the name may be a new workspace
            return done
        jobs, grids, refs = self._stop_running(name, reason)
        known = list(item.kill_pending or [])
        self._stop_refs(known, reason)  # a previous kill's, again: a stop that did not take effect is retried
        pending = known + [ref for ref in refs if ref not in known]
        result: dict[str, Any] = {"name": name, "stopped_jobs": jobs, "stopped_grids": grids}
        # Recorded before the job rows go, so a later kill still knows what to wait for.
        if pending != known and not self._set_pending(item, pending):
            return {**done, **result}
        rows = self._delete_rows(name)
        objects = self.store.delete_prefix(workspace_prefix(name))
        still = self._still_running(pending, wait_seconds)
        result["pending"] = still
        if still:
            if self._set_pending(item, still):
                return {**result, "status": "stopping", "deleted_rows": rows, "deleted_objects": objects}
            return {**result, "status": "killed", "pending": [], "deleted_rows": rows, "deleted_objects": objects}
        if not self._current(item):
            return {**done, **result, "deleted_rows": rows, "deleted_objects": objects}
        # The incarnation's execution role goes once every container that ran as it has ended (so they stop as
        # SageMaker and Batch stop them, uploads included, and what they wrote is swept below) and before the name is
        # free: no job of this incarnation can write into a workspace created later under the same name.
        self.roles.delete(name, item.created_at)
        # What the stopped containers uploaded while stopping, and rows a task that was already running wrote.
        rows += self._delete_rows(name)
        objects += self.store.delete_prefix(workspace_prefix(name))
        try:
            item.delete(condition=WorkspaceItem.killed_at == item.killed_at)
        except DeleteError as exc:
            if exc.cause_response_code != "ConditionalCheckFailedException":
                raise  # otherwise a concurrent kill (or create) finished it first
        return {**result, "status": "killed", "deleted_rows": rows, "deleted_objects": objects}

    def _current(self, item: WorkspaceItem) -> bool:
        """Whether the tombstone is still the workspace's row (not deleted, and the name not taken again)."""
        now_item = self._get(item.pk.removeprefix("WS#"))
        return now_item is not None and now_item.created_at == item.created_at and now_item.killed_at is not None

    @staticmethod
    def _set_pending(item: WorkspaceItem, pending: list[str]) -> bool:
        """Records what the kill waits for; False if a concurrent kill (or create) already finished it."""
        try:
            item.update(actions=[WorkspaceItem.kill_pending.set(pending)],
                        condition=WorkspaceItem.killed_at == item.killed_at)
        except UpdateError as exc:
            if exc.cause_response_code != "ConditionalCheckFailedException":
                raise
            return False
        return True

    def _stop_running(self, name: str, reason: str) -> tuple[int, int, list[str]]:
        """Stops the running grids, then every job that has not ended (execution, SageMaker or Batch job) and marks
        it KILLED. Returns the counts and the containers that may still be stopping."""
        from chalicelib.grids import Grids  # grids and training import this module
        from chalicelib.training import TERMINAL, Training

        grids = Grids(self.store).halt_all(name, reason)
        training = Training(self.store, training_jobs=self.training_jobs)
        jobs, refs = 0, []
        for job in JobItem.query(ws_key(name), JobItem.sk.startswith("JOB#"), consistent_read=True):
            if job.status not in TERMINAL:
                refs += training.halt(job, reason, self.batch_jobs)
                jobs += 1
        return jobs, grids, refs

    def _stop_refs(self, refs: list[str], reason: str) -> None:
        for ref in refs:
            kind, _, ident = ref.partition(":")
            if kind == "sagemaker":
                self.training_jobs.stop(ident)
            elif kind == "batch":
                self.batch_jobs.terminate(ident, reason)

    def _running(self, ref: str) -> bool:
        kind, _, ident = ref.partition(":")
        if kind == "sagemaker":
            return self.training_jobs.status(ident) in _SAGEMAKER_RUNNING
        if kind == "batch":
            return self.batch_jobs.status(ident) not in (None, *BatchJobs.ENDED)
        return False

    def _still_running(self, refs: list[str], wait_seconds: float) -> list[str]:
        """The stopped containers that have not ended, after waiting up to `wait_seconds` for them."""
        deadline = time.monotonic() + wait_seconds
        while True:
            refs = [ref for ref in refs if self._running(ref)]
            if not refs or time.monotonic() >= deadline:
                return refs
            time.sleep(_KILL_POLL_SECONDS)

    @staticmethod
    def _delete_rows(name: str) -> int:
        """Every row of the workspace but its tombstone: its partition, its grids' point partitions, provenance."""
        rows = 0
        with _Item.batch_write() as batch:
            for node in _Item.gsi1.query(f"PROV#{name}"):
                batch.delete(node)
                rows += 1
            for row in _Item.query(ws_key(name), consistent_read=True):
                if row.sk == "META":
                    continue
                if row.sk.startswith("GRID#"):
                    for point in _Item.query(grid_key(name, row.sk.removeprefix("GRID#")), consistent_read=True):
                        batch.delete(point)
                        rows += 1
                batch.delete(row)
                rows += 1
        return rows

    def members(self, name: str, user: str) -> dict[str, Any]:
        self.require(name, user)
        rows = MemberItem.query(ws_key(name), MemberItem.sk.startswith("MEMBER#"))
        return {"workspace": name,
                "members": [{"user": m.user, "role": m.role, "added_at": m.added_at} for m in rows]}

    def share(self, name: str, user: str, member: str) -> dict[str, Any]:
        """Adds a member (idempotent). Only the owner shares, so members cannot widen access themselves."""
        workspace = self._require_owner(name, user)
        arn = principal_arn(member, user)
        current = self.members(name, user)
        if arn in {m["user"] for m in current["members"]}:
            return current
        if len(current["members"]) >= limits.MAX_MEMBERS:
            raise ValidationFailed(f"user: a workspace has at most {limits.MAX_MEMBERS} members")
        MemberItem(ws_key(name), f"MEMBER#{arn}", user=arn, role="member", added_at=now(), owner=workspace.owner,
                   workspace_created_at=workspace.created_at, gsi1pk=f"USER#{arn}", gsi1sk=ws_key(name)).save()
        return self.members(name, user)

    def unshare(self, name: str, user: str, member: str) -> dict[str, Any]:
        item = self._require_owner(name, user)
        arn = principal_arn(member, user)
        if arn == item.owner:
            raise ValidationFailed("user: the owner cannot be removed; kill the workspace instead")
        MemberItem(ws_key(name), f"MEMBER#{arn}").delete()
        return self.members(name, user)

    def _require_owner(self, name: str, user: str) -> WorkspaceItem:
        item = self.require(name, user)
        if item.owner != user:
            raise Forbidden(f"workspace {name!r}: only its owner may do this")
        return item

    @staticmethod
    def _describe(item: WorkspaceItem) -> dict[str, Any]:
        return {"name": item.pk.removeprefix("WS#"), "owner": item.owner, "created_at": item.created_at}

