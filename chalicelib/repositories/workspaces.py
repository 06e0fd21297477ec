"""Workspace rows (META, the kill tombstone) and memberships, and the incarnation fence every other repository's
writes on behalf of a workspace go through.

The fence: a write made for a workspace incarnation (its `created_at`) commits in one DynamoDB transaction with a
condition check that the workspace row still has that incarnation and no `killed_at`. A transaction holds at most
100 items (TransactWriteItems limit), which bounds what one fenced write may add.

The member cap (limits.MAX_MEMBERS) is enforced in the write: the META row keeps `member_count`, and adding a
member is one transaction that puts the member (if absent) and increments the count under `member_count < cap`.
"""
from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol, cast

from pynamodb.connection import Connection
from pynamodb.exceptions import DeleteError, DoesNotExist, TransactWriteError, UpdateError
from pynamodb.transactions import TransactWrite

from chalicelib import limits
from chalicelib.errors import Conflict, KaosError, ValidationFailed
from chalicelib.tables import JobItem, MemberItem, WorkspaceItem, _Item, grid_key, ws_key


def over_cap() -> ValidationFailed:
    return ValidationFailed(f"user: a workspace has at most {limits.MAX_MEMBERS} members")


class IncarnationGone(KaosError):
    """A write on behalf of a workspace incarnation that has been killed (and perhaps re-created since): dropped."""

    status = 409
    code = "IncarnationGone"


@dataclass
class Workspace:
    name: str
    owner: str
    created_at: str  # also the workspace's incarnation (in every job's fingerprint)
    killed_at: str | None = None
    # Training and batch containers a kill stopped and still waits for ("sagemaker:<name>", "batch:<id>").
    kill_pending: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Member:
    workspace: str
    user: str
    role: str
    added_at: str
    owner: str
    workspace_created_at: str


class WorkspaceRepository(Protocol):
    def create(self, workspace: Workspace, at: str) -> bool:
        """Writes the workspace row and its owner's membership together; False (nothing written) if the name is
        taken."""

    def get(self, name: str) -> Workspace | None: ...

    def alive(self, name: str, incarnation: str | None) -> bool:
        """Whether work of this incarnation may still write (None: any live incarnation)."""

    def tombstone(self, workspace: Workspace, at: str) -> Workspace:
        """Marks the workspace killed (once; a concurrent kill's mark wins) and returns the row as stored."""

    def set_pending(self, workspace: Workspace, pending: list[str]) -> bool:
        """Records what a kill waits for; False if a concurrent kill (or create) already finished it."""

    def delete_tombstone(self, workspace: Workspace) -> None:
        """Deletes the tombstone unless a concurrent kill or create got there first."""

    def member(self, name: str, user: str) -> Member | None: ...

    def members(self, name: str) -> list[Member]: ...

    def memberships(self, user: str) -> list[Member]: ...

    def add_member(self, workspace: Workspace, user: str, at: str) -> None:
        """Adds `user` as a member (a no-op if it is one); ValidationFailed over the cap, checked in the write."""

    def remove_member(self, name: str, user: str) -> None: ...

    def counts(self, name: str) -> dict[str, int]:
        """Snapshots, jobs, members and models (jobs with an s3:// model) of the workspace."""

    def delete_rows(self, name: str) -> int:
        """Every row of the workspace but its tombstone (its partition, its grids' points, provenance)."""


@cache
def connection() -> Connection:
    """One pynamodb connection per process: each new one builds a botocore client (~0.1 s)."""
    return Connection()


def fenced_write(workspace: str, incarnation: str | None, write: Callable[[TransactWrite], None]) -> None:
    """Commits the items `write` adds in one transaction with a check that the workspace row is still this
    incarnation and not being killed. IncarnationGone if it is not; TransactWriteError if an item's own condition
    failed (its `cancellation_reasons[1:]` say which)."""
    condition = WorkspaceItem.pk.exists() & WorkspaceItem.killed_at.does_not_exist()
    if incarnation is not None:
        condition &= WorkspaceItem.created_at == incarnation
    try:
        with TransactWrite(connection=connection()) as tx:
            # pynamodb sends condition checks first, so this is cancellation reason 0.
            tx.condition_check(WorkspaceItem, ws_key(workspace), "META", condition=condition)
            write(tx)
    except TransactWriteError as exc:
        if item_condition_failed(exc, 0):
            raise IncarnationGone(f"workspace {workspace!r}: incarnation {incarnation} was killed") from exc
        raise


def put_once_fenced(workspace: str, incarnation: str, item: _Item, what: str) -> bool:
    """Writes `item` unless a row has its key (False), only while the workspace is `incarnation`: otherwise
    Conflict (HTTP 409), saying no `what` was created."""
    try:
        fenced_write(workspace, incarnation, lambda tx: tx.save(item, condition=_Item.pk.does_not_exist()))
    except IncarnationGone:
        raise Conflict(f"workspace {workspace!r} is being killed (or was re-created); no {what} was created") \
            from None
    except TransactWriteError as exc:
        if item_condition_failed(exc, 1):
            return False
        raise
    return True


def item_condition_failed(exc: TransactWriteError, index: int) -> bool:
    """Whether the `index`-th item of a transaction failed its condition. pynamodb sends condition checks, then
    deletes, puts and updates, in that order (so in a fenced_write, 0 is the fence)."""
    reasons = exc.cancellation_reasons if exc.cause_response_code == "TransactionCanceledException" else []
    reason = reasons[index] if len(reasons) > index else None
    return reason is not None and reason.code == "ConditionalCheckFailed"


def condition_failed(exc: UpdateError | DeleteError) -> bool:
    return exc.cause_response_code == "ConditionalCheckFailedException"


def _workspace(item: WorkspaceItem) -> Workspace:
    return Workspace(item.pk.removeprefix("WS#"), item.owner, item.created_at, item.killed_at,
                     list(item.kill_pending or []))


def _member(item: MemberItem) -> Member:
    return Member(item.pk.removeprefix("WS#"), item.user, item.role, item.added_at, item.owner or "",
                  item.workspace_created_at or "")


def _member_item(member: Member) -> MemberItem:
    return MemberItem(ws_key(member.workspace), f"MEMBER#{member.user}", user=member.user, role=member.role,
                      added_at=member.added_at, owner=member.owner,
                      workspace_created_at=member.workspace_created_at, gsi1pk=f"USER#{member.user}",
                      gsi1sk=ws_key(member.workspace))


class DynamoWorkspaces:
    """The pynamodb implementation (rows as documented in chalicelib.tables)."""

    def create(self, workspace: Workspace, at: str) -> bool:
        item = WorkspaceItem(ws_key(workspace.name), "META", owner=workspace.owner, created_at=workspace.created_at,
                             member_count=1)
        owner = Member(workspace.name, workspace.owner, "owner", at, workspace.owner, workspace.created_at)
        try:
            with TransactWrite(connection=connection()) as tx:
                tx.save(item, condition=WorkspaceItem.pk.does_not_exist())
                tx.save(_member_item(owner))
        except TransactWriteError as exc:
            if item_condition_failed(exc, 0):
                return False
            raise
        return True

    def _item(self, name: str) -> WorkspaceItem | None:
        try:
            return WorkspaceItem.get(ws_key(name), "META", consistent_read=True)
        except DoesNotExist:
            return None

    def get(self, name: str) -> Workspace | None:
        item = self._item(name)
        return None if item is None else _workspace(item)

    def alive(self, name: str, incarnation: str | None) -> bool:
        current = self.get(name)
        return current is not None and current.killed_at is None and incarnation in (None, current.created_at)

    def tombstone(self, workspace: Workspace, at: str) -> Workspace:
        if workspace.killed_at is not None:
            return workspace
        item = WorkspaceItem(ws_key(workspace.name), "META")
        try:
            item.update(actions=[WorkspaceItem.killed_at.set(at)],
                        condition=(WorkspaceItem.created_at == workspace.created_at)
                        & WorkspaceItem.killed_at.does_not_exist())
        except UpdateError as exc:
            if not condition_failed(exc):
                raise
            # A concurrent kill marked it first (or the name is another incarnation now).
            current = self.get(workspace.name)
            return current if current is not None else workspace
        return _workspace(item)

    def set_pending(self, workspace: Workspace, pending: list[str]) -> bool:
        try:
            WorkspaceItem(ws_key(workspace.name), "META").update(
                actions=[WorkspaceItem.kill_pending.set(pending)],
                condition=WorkspaceItem.killed_at == workspace.killed_at)
        except UpdateError as exc:
            if not condition_failed(exc):
                raise
            return False
        workspace.kill_pending = list(pending)
        return True

    def delete_tombstone(self, workspace: Workspace) -> None:
        try:
            WorkspaceItem(ws_key(workspace.name), "META").delete(
                condition=WorkspaceItem.killed_at == workspace.killed_at)
        except DeleteError as exc:
            if not condition_failed(exc):
                raise

    def member(self, name: str, user: str) -> Member | None:
        try:
            return _member(MemberItem.get(ws_key(name), f"MEMBER#{user}", consistent_read=True))
        except DoesNotExist:
            return None

    def members(self, name: str) -> list[Member]:
        rows = MemberItem.query(ws_key(name), MemberItem.sk.startswith("MEMBER#"), consistent_read=True)
        return [_member(row) for row in rows]

    def memberships(self, user: str) -> list[Member]:
        return [_member(row) for row in cast(Iterable[MemberItem], MemberItem.gsi1.query(f"USER#{user}"))]

    def add_member(self, workspace: Workspace, user: str, at: str) -> None:
        member = Member(workspace.name, user, "member", at, workspace.owner, workspace.created_at)
        # Rows written before the count existed: the count starts from the members stored now.
        start = len(self.members(workspace.name))
        try:
            with TransactWrite(connection=connection()) as tx:
                tx.update(WorkspaceItem(ws_key(workspace.name), "META"),
                          actions=[WorkspaceItem.member_count.set((WorkspaceItem.member_count | start) + 1)],
                          condition=WorkspaceItem.killed_at.does_not_exist()
                          & (WorkspaceItem.member_count.does_not_exist()
                             | (WorkspaceItem.member_count < limits.MAX_MEMBERS)))
                tx.save(_member_item(member), condition=MemberItem.pk.does_not_exist())
        except TransactWriteError as exc:
            if item_condition_failed(exc, 0):  # the put (pynamodb sends puts before updates)
                return  # already a member
            if item_condition_failed(exc, 1):
                current = self.get(workspace.name)
                if current is None or current.killed_at is not None:
                    raise Conflict(f"workspace {workspace.name!r} is being killed; no member was added") from None
                raise over_cap() from None
            raise

    def remove_member(self, name: str, user: str) -> None:
        try:
            with TransactWrite(connection=connection()) as tx:
                tx.update(WorkspaceItem(ws_key(name), "META"),
                          actions=[WorkspaceItem.member_count.set(WorkspaceItem.member_count - 1)],
                          condition=WorkspaceItem.member_count.exists())
                tx.delete(MemberItem(ws_key(name), f"MEMBER#{user}"), condition=MemberItem.pk.exists())
        except TransactWriteError as exc:
            if item_condition_failed(exc, 0):  # the delete (pynamodb sends deletes before updates)
                return  # not a member: nothing to remove
            if item_condition_failed(exc, 1):  # a row from before the count: no count to keep
                MemberItem(ws_key(name), f"MEMBER#{user}").delete()
                return
            raise

    def counts(self, name: str) -> dict[str, int]:
        # One key-conditioned count per kind: the partition also holds a row per blob (BLOB#), thousands in a
        # workspace with a large code bundle, which a walk over the whole partition would read every time.
        counts = {kind: _Item.count(ws_key(name), _Item.sk.startswith(prefix))
                  for kind, prefix in (("snapshots", "SNAP#"), ("jobs", "JOB#"), ("members", "MEMBER#"))}
        # Batch jobs record their output as `snapshot:<id>`, so only s3:// model URIs count as models.
        counts["models"] = JobItem.count(ws_key(name), filter_condition=JobItem.model_uri.startswith("s3://"))
        return counts

    def delete_rows(self, name: str) -> int:
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


class MemoryWorkspaces:
    """The in-memory twin. Other twins keep their rows in `rows` (keyed by workspace) so `delete_rows` sweeps
    them as the table's partitions are swept, and fence their writes with `alive`."""

    def __init__(self) -> None:
        self._workspaces: dict[str, Workspace] = {}
        self._members: dict[tuple[str, str], Member] = {}
        self.lock = threading.RLock()
        # Rows of the other twins, by workspace: name -> kind -> key -> row.
        self.rows: dict[str, dict[str, dict[Any, Any]]] = {}

    def create(self, workspace: Workspace, at: str) -> bool:
        with self.lock:
            if workspace.name in self._workspaces:
                return False
            self._workspaces[workspace.name] = copy.deepcopy(workspace)
            self._members[(workspace.name, workspace.owner)] = Member(
                workspace.name, workspace.owner, "owner", at, workspace.owner, workspace.created_at)
            return True

    def get(self, name: str) -> Workspace | None:
        with self.lock:
            found = self._workspaces.get(name)
            return copy.deepcopy(found)

    def alive(self, name: str, incarnation: str | None) -> bool:
        current = self.get(name)
        return current is not None and current.killed_at is None and incarnation in (None, current.created_at)

    def fence(self, name: str, incarnation: str | None) -> None:
        """Raises IncarnationGone unless the incarnation is alive (call with `lock` held around the write)."""
        if not self.alive(name, incarnation):
            raise IncarnationGone(f"workspace {name!r}: incarnation {incarnation} was killed")

    def tombstone(self, workspace: Workspace, at: str) -> Workspace:
        with self.lock:
            stored = self._workspaces.get(workspace.name)
            if workspace.killed_at is None and stored is not None and stored.created_at == workspace.created_at \
                    and stored.killed_at is None:
                stored.killed_at = at
            return copy.deepcopy(stored) if stored is not None else workspace

    def set_pending(self, workspace: Workspace, pending: list[str]) -> bool:
        with self.lock:
            stored = self._workspaces.get(workspace.name)
            if stored is None or stored.killed_at != workspace.killed_at:
                return False
            stored.kill_pending = list(pending)
            workspace.kill_pending = list(pending)
            return True

    def delete_tombstone(self, workspace: Workspace) -> None:
        with self.lock:
            stored = self._workspaces.get(workspace.name)
            if stored is not None and stored.killed_at == workspace.killed_at:
                del self._workspaces[workspace.name]

    def member(self, name: str, user: str) -> Member | None:
        with self.lock:
            return self._members.get((name, user))

    def members(self, name: str) -> list[Member]:
        with self.lock:
            return sorted((m for (ws, _), m in self._members.items() if ws == name), key=lambda m: m.user)

    def memberships(self, user: str) -> list[Member]:
        with self.lock:
            return sorted((m for (_, u), m in self._members.items() if u == user), key=lambda m: m.workspace)

    def add_member(self, workspace: Workspace, user: str, at: str) -> None:
        with self.lock:
            stored = self._workspaces.get(workspace.name)
            if stored is None or stored.killed_at is not None:
                raise Conflict(f"workspace {workspace.name!r} is being killed; no member was added")
            if (workspace.name, user) in self._members:
                return
            if len(self.members(workspace.name)) >= limits.MAX_MEMBERS:
                raise over_cap()
            self._members[(workspace.name, user)] = Member(workspace.name, user, "member", at, workspace.owner,
                                                           workspace.created_at)

    def remove_member(self, name: str, user: str) -> None:
        with self.lock:
            self._members.pop((name, user), None)

    def counts(self, name: str) -> dict[str, int]:
        with self.lock:
            jobs = list(self.rows.get(name, {}).get("jobs", {}).values())
            return {"snapshots": len(self.rows.get(name, {}).get("snapshots", {})), "jobs": len(jobs),
                    "members": len(self.members(name)),
                    "models": sum(1 for job in jobs if str(job.model_uri or "").startswith("s3://"))}

    def delete_rows(self, name: str) -> int:
        with self.lock:
            rows = sum(len(kind) for kind in self.rows.pop(name, {}).values())
            members = [key for key in self._members if key[0] == name]
            for key in members:
                del self._members[key]
            return rows + len(members)

    def table(self, name: str, kind: str) -> dict[Any, Any]:
        """The twin rows of one kind in the workspace's partition (created on first use; hold `lock`)."""
        return self.rows.setdefault(name, {}).setdefault(kind, {})
