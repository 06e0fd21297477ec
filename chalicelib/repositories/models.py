"""The model registry's rows: groups (their version counter and aliases), versions and the job -> version dedupe.

All rows live in the workspace's partition (WS#<ws>), so `workspace kill` sweeps them with the rest:
  MODELGROUP#<group>               the group: `latest_version` (the counter) and `aliases` {alias: version}
  MODELVER#<group>#<6 digits>      one version (zero-padded: a Query lists them in order)
  MODELJOB#<group>#<job id>        which version a job was registered as (registering it again finds it)
Registering is one fenced transaction: the group's counter moves from the number read (a versioned update, or the
group's creation), the version row and the dedupe row are put where absent. A concurrent registration makes one of
the two lose its transaction; the loser reads again and retries. Alias moves are versioned updates of the group
row, so two moves never both win against the same read (ConcurrentUpdate, which the service retries).
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from pynamodb.exceptions import DoesNotExist, TransactWriteError, UpdateError

from chalicelib.errors import ConcurrentUpdate, Conflict, NotFound
from chalicelib.repositories.workspaces import (
    IncarnationGone,
    MemoryWorkspaces,
    condition_failed,
    fenced_write,
)
from chalicelib.tables import ModelGroupItem, ModelJobItem, ModelVersionItem, _Item, ws_key

# Concurrent registrations in one group each lose at most once per winner; beyond this the caller may retry.
REGISTER_ATTEMPTS = 8


class GroupNotFound(NotFound):
    code = "GroupNotFound"


class VersionNotFound(NotFound):
    code = "VersionNotFound"


@dataclass
class ModelVersion:
    workspace: str
    group: str
    number: int
    job_id: str
    status: str
    model_data: str
    model_sha256: str
    image: str
    framework: str
    code: str  # the job's code snapshot id: where inference.py comes from when the archive has no code/
    created_at: str
    updated_at: str
    package_arn: str | None = None  # its SageMaker Model Package (approval status on AWS)


@dataclass
class ModelGroup:
    workspace: str
    group: str
    latest_version: int
    created_at: str
    aliases: dict[str, int] = field(default_factory=dict)
    version: int | None = None


class ModelRepository(Protocol):
    def register(self, version: ModelVersion, incarnation: str) -> tuple[ModelVersion, bool]:
        """Stores `version` as its group's next number (its own `number` is ignored; the group is created on first
        use), unless the job was registered in that group: then (that version, False). Conflict when the workspace
        is no longer `incarnation`."""

    def group(self, workspace: str, group: str) -> ModelGroup:
        """GroupNotFound if no version was ever registered in it."""

    def groups(self, workspace: str) -> list[ModelGroup]:
        """Every group of the workspace, by name."""

    def versions(self, workspace: str, group: str) -> list[ModelVersion]:
        """The group's versions, newest first."""

    def version(self, workspace: str, group: str, number: int) -> ModelVersion:
        """VersionNotFound if there is no such version."""

    def set_status(self, workspace: str, group: str, number: int, status: str, at: str) -> ModelVersion:
        """The version's approval status; VersionNotFound if there is no such version."""

    def set_alias(self, group: ModelGroup, alias: str, number: int | None) -> None:
        """Points `alias` at `number` (None removes it) if the group row is still as `group` was read
        (ConcurrentUpdate otherwise); `group` is updated in place."""

    def set_package(self, workspace: str, group: str, number: int, arn: str) -> None:
        """Records the version's SageMaker Model Package ARN; VersionNotFound if there is no such version."""


def version_sk(group: str, number: int) -> str:
    return f"MODELVER#{group}#{number:06d}"


def group_not_found(workspace: str, group: str) -> GroupNotFound:
    return GroupNotFound(f"model group {group!r} does not exist in workspace {workspace!r}")


def version_not_found(workspace: str, group: str, number: int) -> VersionNotFound:
    return VersionNotFound(f"model version {group}/{number} does not exist in workspace {workspace!r}")


_VERSION_FIELDS = ("group", "number", "job_id", "status", "model_data", "model_sha256", "image", "framework", "code",
                   "created_at", "updated_at", "package_arn")


def _version(item: ModelVersionItem) -> ModelVersion:
    values: dict[str, Any] = {name: getattr(item, name) for name in _VERSION_FIELDS}
    values["number"] = int(item.number)
    return ModelVersion(workspace=item.pk.removeprefix("WS#"), **values)


def _group(item: ModelGroupItem) -> ModelGroup:
    return ModelGroup(item.pk.removeprefix("WS#"), item.group, int(item.latest_version), item.created_at,
                      {k: int(v) for k, v in (item.aliases or {}).items()}, int(item.version))


class DynamoModels:
    def register(self, version: ModelVersion, incarnation: str) -> tuple[ModelVersion, bool]:
        ws, name = version.workspace, version.group
        for _ in range(REGISTER_ATTEMPTS):
            existing = self._registered(ws, name, version.job_id)
            if existing is not None:
                return existing, False
            try:
                group: ModelGroup | None = self.group(ws, name)
            except GroupNotFound:
                group = None
            stored = replace(version, number=(group.latest_version if group else 0) + 1)
            try:
                fenced_write(ws, incarnation, functools.partial(self._register, stored=stored, group=group))
            except IncarnationGone:
                raise Conflict(f"workspace {ws!r} is being killed (or was re-created); no version was registered") \
                    from None
            except TransactWriteError:
                continue  # another registration won the counter or the job: read again
            return stored, True
        raise ConcurrentUpdate(f"model group {name!r} is being registered into concurrently; try again")

    @staticmethod
    def _register(tx: Any, *, stored: ModelVersion, group: ModelGroup | None) -> None:
        ws, name = ws_key(stored.workspace), stored.group
        if group is None:
            tx.save(ModelGroupItem(ws, f"MODELGROUP#{name}", group=name, latest_version=stored.number, aliases={},
                                   created_at=stored.created_at), condition=_Item.pk.does_not_exist())
        else:
            tx.update(ModelGroupItem(ws, f"MODELGROUP#{name}", version=group.version),
                      actions=[ModelGroupItem.latest_version.set(stored.number)])
        values = {key: getattr(stored, key) for key in _VERSION_FIELDS}
        tx.save(ModelVersionItem(ws, version_sk(name, stored.number), **values), condition=_Item.pk.does_not_exist())
        tx.save(ModelJobItem(ws, f"MODELJOB#{name}#{stored.job_id}", number=stored.number),
                condition=_Item.pk.does_not_exist())

    def _registered(self, workspace: str, group: str, job_id: str) -> ModelVersion | None:
        try:
            row = ModelJobItem.get(ws_key(workspace), f"MODELJOB#{group}#{job_id}", consistent_read=True)
        except DoesNotExist:
            return None
        return self.version(workspace, group, int(row.number))

    def group(self, workspace: str, group: str) -> ModelGroup:
        try:
            return _group(ModelGroupItem.get(ws_key(workspace), f"MODELGROUP#{group}", consistent_read=True))
        except DoesNotExist:
            raise group_not_found(workspace, group) from None

    def groups(self, workspace: str) -> list[ModelGroup]:
        rows = ModelGroupItem.query(ws_key(workspace), ModelGroupItem.sk.startswith("MODELGROUP#"),
                                    consistent_read=True)
        return [_group(row) for row in rows]

    def versions(self, workspace: str, group: str) -> list[ModelVersion]:
        rows = ModelVersionItem.query(ws_key(workspace), ModelVersionItem.sk.startswith(f"MODELVER#{group}#"),
                                      consistent_read=True, scan_index_forward=False)
        return [_version(row) for row in rows]

    def version(self, workspace: str, group: str, number: int) -> ModelVersion:
        try:
            return _version(ModelVersionItem.get(ws_key(workspace), version_sk(group, number), consistent_read=True))
        except DoesNotExist:
            raise version_not_found(workspace, group, number) from None

    def set_status(self, workspace: str, group: str, number: int, status: str, at: str) -> ModelVersion:
        return self._update(workspace, group, number, ModelVersionItem.status.set(status),
                            ModelVersionItem.updated_at.set(at))

    def set_package(self, workspace: str, group: str, number: int, arn: str) -> None:
        self._update(workspace, group, number, ModelVersionItem.package_arn.set(arn))

    @staticmethod
    def _update(workspace: str, group: str, number: int, *actions: Any) -> ModelVersion:
        item = ModelVersionItem(ws_key(workspace), version_sk(group, number))
        try:
            item.update(actions=list(actions), condition=_Item.pk.exists())
        except UpdateError as exc:
            if condition_failed(exc):
                raise version_not_found(workspace, group, number) from None
            raise
        return _version(item)

    def set_alias(self, group: ModelGroup, alias: str, number: int | None) -> None:
        aliases = {k: v for k, v in group.aliases.items() if k != alias}
        if number is not None:
            aliases[alias] = number
        item = ModelGroupItem(ws_key(group.workspace), f"MODELGROUP#{group.group}", version=group.version)
        try:
            item.update(actions=[ModelGroupItem.aliases.set(aliases)])
        except UpdateError as exc:
            if condition_failed(exc):
                raise ConcurrentUpdate(f"the aliases of model group {group.group!r} changed meanwhile; try again") \
                    from None
            raise
        group.aliases, group.version = aliases, int(item.version)


class MemoryModels:
    """The in-memory twin; rows live in the workspace twin's partitions, so a workspace kill sweeps them."""

    def __init__(self, workspaces: MemoryWorkspaces) -> None:
        self._workspaces = workspaces

    def register(self, version: ModelVersion, incarnation: str) -> tuple[ModelVersion, bool]:
        ws = self._workspaces
        with ws.lock:
            if not ws.alive(version.workspace, incarnation):
                raise Conflict(f"workspace {version.workspace!r} is being killed (or was re-created); no version "
                               "was registered")
            jobs = ws.table(version.workspace, "model_jobs")
            known = jobs.get((version.group, version.job_id))
            if known is not None:
                return self.version(version.workspace, version.group, known), False
            groups = ws.table(version.workspace, "model_groups")
            group = groups.get(version.group)
            if group is None:
                group = groups[version.group] = ModelGroup(version.workspace, version.group, 0, version.created_at,
                                                           {}, 0)
            group.latest_version += 1
            group.version = (group.version or 0) + 1
            stored = replace(version, number=group.latest_version)
            ws.table(version.workspace, "model_versions")[(version.group, stored.number)] = stored
            jobs[(version.group, version.job_id)] = stored.number
            return copy.deepcopy(stored), True

    def group(self, workspace: str, group: str) -> ModelGroup:
        with self._workspaces.lock:
            found = self._workspaces.rows.get(workspace, {}).get("model_groups", {}).get(group)
            if found is None:
                raise group_not_found(workspace, group)
            return copy.deepcopy(found)  # type: ignore[no-any-return]

    def groups(self, workspace: str) -> list[ModelGroup]:
        with self._workspaces.lock:
            rows = self._workspaces.rows.get(workspace, {}).get("model_groups", {})
            return [copy.deepcopy(rows[name]) for name in sorted(rows)]

    def versions(self, workspace: str, group: str) -> list[ModelVersion]:
        with self._workspaces.lock:
            rows = self._workspaces.rows.get(workspace, {}).get("model_versions", {})
            return [copy.deepcopy(v) for (g, _), v in sorted(rows.items(), reverse=True) if g == group]

    def version(self, workspace: str, group: str, number: int) -> ModelVersion:
        with self._workspaces.lock:
            found = self._workspaces.rows.get(workspace, {}).get("model_versions", {}).get((group, number))
            if found is None:
                raise version_not_found(workspace, group, number)
            return copy.deepcopy(found)  # type: ignore[no-any-return]

    def set_status(self, workspace: str, group: str, number: int, status: str, at: str) -> ModelVersion:
        return self._update(workspace, group, number, status=status, updated_at=at)

    def set_package(self, workspace: str, group: str, number: int, arn: str) -> None:
        self._update(workspace, group, number, package_arn=arn)

    def _update(self, workspace: str, group: str, number: int, **changes: Any) -> ModelVersion:
        with self._workspaces.lock:
            found = self._workspaces.rows.get(workspace, {}).get("model_versions", {}).get((group, number))
            if found is None:
                raise version_not_found(workspace, group, number)
            for name, value in changes.items():
                setattr(found, name, value)
            return copy.deepcopy(found)  # type: ignore[no-any-return]

    def set_alias(self, group: ModelGroup, alias: str, number: int | None) -> None:
        with self._workspaces.lock:
            stored = self._workspaces.rows.get(group.workspace, {}).get("model_groups", {}).get(group.group)
            if stored is None or stored.version != group.version:
                raise ConcurrentUpdate(f"the aliases of model group {group.group!r} changed meanwhile; try again")
            aliases = {k: v for k, v in stored.aliases.items() if k != alias}
            if number is not None:
                aliases[alias] = number
            stored.aliases, stored.version = aliases, stored.version + 1
            group.aliases, group.version = dict(aliases), stored.version
