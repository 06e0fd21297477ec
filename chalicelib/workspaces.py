"""Workspaces: a walled garden of code, data, params, jobs and models that only its members see.

Killing a workspace (`kill`) stops before it deletes, and a name used again is a new incarnation:

1. The workspace row becomes a tombstone (`killed_at`). It keeps the name taken, every route refuses the workspace,
   and every write made on behalf of the workspace is fenced by it: job, grid and grid point rows are created and
   jobs end (Record) in one transaction with a check that the workspace row still has the job's incarnation
   (`created_at`) and no `killed_at` (chalicelib.repositories.workspaces), so a job of the killed incarnation can
   never write into it, or into a later one. Only the kill route still admits its owner (`admit`).
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
from typing import TYPE_CHECKING, Any

from chalicelib.adapters import BatchJobs, ObjectStore, TrainingJobs
from chalicelib.domain import now, validate_workspace_name, workspace_prefix
from chalicelib.errors import Conflict, Forbidden, NotFound, ValidationFailed
from chalicelib.repositories.jobs import JobRepository
from chalicelib.repositories.workspaces import IncarnationGone, Workspace, WorkspaceRepository
from chalicelib.tenancy import WorkspaceRoles

if TYPE_CHECKING:  # they import this module (for `now` and `workspace_prefix`)
    from chalicelib.grids import Grids
    from chalicelib.lifecycle import Jobs
    from chalicelib.serving import Endpoints

# How long a kill waits for the containers it stopped to end, within the API Lambda's 30 s: SageMaker sends SIGTERM
# and uploads what the job saved; longer stops (SageMaker allows 120 s) answer `stopping` (see the module doc).
KILL_WAIT_SECONDS = 10.0
_KILL_POLL_SECONDS = 0.25
# Fence checks during long write phases of a Record task (a batch job's outputs) happen at most this often.
FENCE_INTERVAL_SECONDS = 1.0
_SAGEMAKER_RUNNING = ("InProgress", "Stopping")


def principal_arn(member: str, caller: str) -> str:
    """An ARN as given, or a bare user name resolved to an IAM user in the caller's account."""
    if member.startswith("arn:"):
        return member
    account = caller.split(":")[4] if caller.startswith("arn:") and caller.count(":") >= 5 else ""
    return f"arn:aws:iam::{account}:user/{member}"


def not_found(name: str) -> NotFound:
    return NotFound(f"workspace {name!r} does not exist (or you are not a member)")


class Fence:
    """Raises IncarnationGone once the workspace is no longer this incarnation; checks at most every `interval`
    seconds, so a long write phase (thousands of outputs) stays cheap. Thread-safe."""

    def __init__(self, workspaces: WorkspaceRepository, workspace: str, incarnation: str | None,
                 interval: float = FENCE_INTERVAL_SECONDS) -> None:
        self._workspaces = workspaces
        self.workspace, self.incarnation, self.interval = workspace, incarnation, interval
        self._checked = -float("inf")
        self._lock = threading.Lock()

    def check(self) -> None:
        with self._lock:
            if time.monotonic() - self._checked < self.interval:
                return
            if not self._workspaces.alive(self.workspace, self.incarnation):
                raise IncarnationGone(f"workspace {self.workspace!r}: incarnation {self.incarnation} was killed")
            self._checked = time.monotonic()


class Workspaces:
    def __init__(self, *, repository: WorkspaceRepository, jobs: JobRepository, lifecycle: Jobs, grids: Grids,
                 store: ObjectStore, roles: WorkspaceRoles, training_jobs: TrainingJobs,
                 batch_jobs: BatchJobs, endpoints: Endpoints) -> None:
        self._repository = repository
        self._jobs = jobs
        self._lifecycle = lifecycle
        self._grids = grids
        self._store = store
        self._roles = roles
        self._training_jobs = training_jobs
        self._batch_jobs = batch_jobs
        self._endpoints = endpoints

    def create(self, name: str, user: str, *, _after_kill: bool = False) -> tuple[dict[str, Any], bool]:
        """Creates the workspace owned by `user`; creating it again as its owner is a no-op (idempotent).

        A name whose previous workspace is still being killed is free once that kill has finished: this
        finishes it (its owner asked for it) if what it stopped has ended, and otherwise answers 409."""
        validate_workspace_name(name, "name")
        created_at = now()
        workspace = Workspace(name, user, created_at)
        # The incarnation's execution role exists before anything can run in the workspace (tenancy.py).
        self._roles.ensure(name, created_at)
        if self._repository.create(workspace, created_at):
            return _describe(workspace), True
        self._roles.delete(name, created_at)  # this attempt's incarnation never came to be
        existing = self._repository.get(name)
        if existing is not None and existing.killed_at is not None and not _after_kill:
            reaped = self._reap(existing, f"workspace {name!r} killed", wait_seconds=0)
            if reaped["status"] == "killed":
                return self.create(name, user, _after_kill=True)
            raise Conflict(f"name: workspace {name!r} is still being killed ({len(reaped['pending'])} stopped "
                           "job(s) have not ended yet); try again in a minute")
        if existing is not None and existing.owner == user and existing.killed_at is None:
            return _describe(existing), False
        raise Conflict(f"name: workspace {name!r} already exists; choose another name")

    def require(self, name: str, user: str) -> Workspace:
        """The workspace if `user` is a member; otherwise NotFound, so non-members cannot learn it exists."""
        validate_workspace_name(name)
        if self._repository.member(name, user) is None:
            raise not_found(name)
        workspace = self._repository.get(name)
        if workspace is None:
            raise not_found(name)
        if workspace.killed_at is not None:
            raise Conflict(f"workspace {name!r} is being killed (since {workspace.killed_at})")
        return workspace

    def admit(self, name: str, user: str, *, killing: bool = False) -> Workspace:
        """The API's one authorization check for every route with {workspace} in its path: `require`, except that
        the kill route (`killing`) also admits the owner of a workspace being killed, who finishes the kill."""
        if killing:
            validate_workspace_name(name)
            workspace = self._repository.get(name)
            if workspace is not None and workspace.killed_at is not None and workspace.owner == user:
                return workspace
        return self.require(name, user)

    def list_for(self, user: str) -> list[dict[str, Any]]:
        return [{"name": m.workspace, "owner": m.owner, "created_at": m.workspace_created_at, "role": m.role}
                for m in self._repository.memberships(user)]

    def info(self, name: str, user: str) -> dict[str, Any]:
        return {**_describe(self.require(name, user)), **self._repository.counts(name)}

    def kill(self, name: str, user: str) -> dict[str, Any]:
        """Stops everything the workspace runs, then deletes exactly it: its rows (exact partition keys),
        provenance and S3 prefix (see the module doc). Idempotent: killing again finishes a kill that answered
        `stopping` (or that was interrupted)."""
        validate_workspace_name(name)
        workspace = self._repository.get(name)
        if workspace is None or workspace.owner != user:
            if workspace is not None and workspace.killed_at is None and self._repository.member(name, user):
                raise Forbidden(f"workspace {name!r}: only its owner may do this")
            raise not_found(name)
        return self._reap(self._repository.tombstone(workspace, now()), f"workspace {name!r} killed by {user}",
                          KILL_WAIT_SECONDS)

    def _reap(self, item: Workspace, reason: str, wait_seconds: float) -> dict[str, Any]:
        """Steps 2-4 of a kill on a tombstoned workspace; each is idempotent, so any caller may repeat them."""
        name = item.name
        done = {"name": name, "status": "killed", "stopped_jobs": 0, "stopped_grids": 0, "pending": [],
                "deleted_rows": 0, "deleted_objects": 0}
        if not self._current(item):  # a concurrent kill (or create) finished it: the name may be a new workspace
            return done
        jobs, grids, refs = self._stop_running(name, reason)
        known = list(item.kill_pending)
        self._stop_refs(known, reason)  # a previous kill's, again: a stop that did not take effect is retried
        pending = known + [ref for ref in refs if ref not in known]
        result: dict[str, Any] = {"name": name, "stopped_jobs": jobs, "stopped_grids": grids}
        # Recorded before the job rows go, so a later kill still knows what to wait for.
        if pending != known and not self._repository.set_pending(item, pending):
            return {**done, **result}
        rows = self._repository.delete_rows(name)
        objects = self._store.delete_prefix(workspace_prefix(name))
        still = self._still_running(pending, wait_seconds)
        result["pending"] = still
        if still:
            if self._repository.set_pending(item, still):
                return {**result, "status": "stopping", "deleted_rows": rows, "deleted_objects": objects}
            return {**result, "status": "killed", "pending": [], "deleted_rows": rows, "deleted_objects": objects}
        if not self._current(item):
            return {**done, **result, "deleted_rows": rows, "deleted_objects": objects}
        # The incarnation's execution role goes once every container that ran as it has ended (so they stop as
        # SageMaker and Batch stop them, uploads included, and what they wrote is swept below) and before the name is
        # free: no job of this incarnation can write into a workspace created later under the same name.
        self._roles.delete(name, item.created_at)
        # What the stopped containers uploaded while stopping, and rows a task that was already running wrote.
        rows += self._repository.delete_rows(name)
        objects += self._store.delete_prefix(workspace_prefix(name))
        self._repository.delete_tombstone(item)  # unless a concurrent kill (or create) finished it first
        return {**result, "status": "killed", "deleted_rows": rows, "deleted_objects": objects}

    def _current(self, item: Workspace) -> bool:
        """Whether the tombstone is still the workspace's row (not deleted, and the name not taken again)."""
        current = self._repository.get(item.name)
        return current is not None and current.created_at == item.created_at and current.killed_at is not None

    def _stop_running(self, name: str, reason: str) -> tuple[int, int, list[str]]:
        """Stops the running grids, then every job that has not ended (execution, SageMaker or Batch job) and marks
        it KILLED. Returns the counts and the containers that may still be stopping."""
        grids = self._grids.halt_all(name, reason)
        # Endpoints serve as the workspace role, which the kill deletes: they stop first (and cost nothing after).
        self._endpoints.halt_all(name, reason)
        jobs, refs = 0, list[str]()
        for job in self._jobs.unfinished(name):
            refs += self._lifecycle.halt(job, reason)
            jobs += 1
        return jobs, grids, refs

    def _stop_refs(self, refs: list[str], reason: str) -> None:
        for ref in refs:
            kind, _, ident = ref.partition(":")
            if kind == "sagemaker":
                self._training_jobs.stop(ident)
            elif kind == "batch":
                self._batch_jobs.terminate(ident, reason)

    def _running(self, ref: str) -> bool:
        kind, _, ident = ref.partition(":")
        if kind == "sagemaker":
            return self._training_jobs.status(ident) in _SAGEMAKER_RUNNING
        if kind == "batch":
            return self._batch_jobs.status(ident) not in (None, *BatchJobs.ENDED)
        return False

    def _still_running(self, refs: list[str], wait_seconds: float) -> list[str]:
        """The stopped containers that have not ended, after waiting up to `wait_seconds` for them."""
        deadline = time.monotonic() + wait_seconds
        while True:
            refs = [ref for ref in refs if self._running(ref)]
            if not refs or time.monotonic() >= deadline:
                return refs
            time.sleep(_KILL_POLL_SECONDS)

    def members(self, name: str, user: str) -> dict[str, Any]:
        self.require(name, user)
        return {"workspace": name, "members": [{"user": m.user, "role": m.role, "added_at": m.added_at}
                                               for m in self._repository.members(name)]}

    def share(self, name: str, user: str, member: str) -> dict[str, Any]:
        """Adds a member (idempotent). Only the owner shares, so members cannot widen access themselves. The
        member cap (limits.MAX_MEMBERS) is a condition of the write itself, so concurrent shares cannot pass it."""
        workspace = self._require_owner(name, user)
        self._repository.add_member(workspace, principal_arn(member, user), now())
        return self.members(name, user)

    def unshare(self, name: str, user: str, member: str) -> dict[str, Any]:
        workspace = self._require_owner(name, user)
        arn = principal_arn(member, user)
        if arn == workspace.owner:
            raise ValidationFailed("user: the owner cannot be removed; kill the workspace instead")
        self._repository.remove_member(name, arn)
        return self.members(name, user)

    def _require_owner(self, name: str, user: str) -> Workspace:
        workspace = self.require(name, user)
        if workspace.owner != user:
            raise Forbidden(f"workspace {name!r}: only its owner may do this")
        return workspace


def _describe(workspace: Workspace) -> dict[str, Any]:
    return {"name": workspace.name, "owner": workspace.owner, "created_at": workspace.created_at}
