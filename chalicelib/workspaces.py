"""Workspaces: a walled garden of code, data, params, jobs and models that only its members see."""
from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from collections.abc import Iterable
from typing import Any, cast

from pynamodb.connection import Connection
from pynamodb.exceptions import DoesNotExist, TransactWriteError
from pynamodb.transactions import TransactWrite

from chalicelib import config, limits
from chalicelib.adapters import ObjectStore
from chalicelib.domain import validate_workspace_name
from chalicelib.errors import Conflict, Forbidden, NotFound, ValidationFailed
from chalicelib.models import JobItem, MemberItem, WorkspaceItem, _Item, ws_key


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


class Workspaces:
    def __init__(self, store: ObjectStore | None = None) -> None:
        self._store = store

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            self._store = ObjectStore(config.settings().bucket)
        return self._store

    def create(self, name: str, user: str) -> tuple[dict[str, Any], bool]:
        """Creates the workspace owned by `user`; creating it again as its owner is a no-op (idempotent)."""
        validate_workspace_name(name, "name")
        created_at = now()
        workspace = WorkspaceItem(ws_key(name), "META", owner=user, created_at=created_at)
        member = MemberItem(
            ws_key(name), f"MEMBER#{user}", user=user, role="owner", added_at=created_at, owner=user,
            workspace_created_at=created_at, gsi1pk=f"USER#{user}", gsi1sk=ws_key(name),
        )
        try:
            # Workspace and owner membership are written together or not at all.
            with TransactWrite(connection=_connection()) as tx:
                tx.save(workspace, condition=WorkspaceItem.pk.does_not_exist())
                tx.save(member)
        except TransactWriteError as exc:
            existing = self._get(name)
            if existing is not None and existing.owner == user:
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
        """Deletes exactly this workspace: its rows (exact partition keys), provenance and S3 prefix."""
        self._require_owner(name, user)
        rows = 0
        with _Item.batch_write() as batch:
            for node in _Item.gsi1.query(f"PROV#{name}"):
                batch.delete(node)
                rows += 1
            for row in _Item.query(ws_key(name)):
                batch.delete(row)
                rows += 1
        objects = self.store.delete_prefix(workspace_prefix(name))
        return {"name": name, "deleted_rows": rows, "deleted_objects": objects}

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

