"""Serving endpoint rows: WS#<ws> / ENDPOINT#<name>, in the workspace's partition (a workspace kill sweeps them).

A name is taken while its endpoint is not Deleted: creating over a Deleted row replaces it (conditional put), so a
name can be reused after a kill. Every later change is a versioned update of the whole mutable part (status,
settings, model, deployments, reason): the API and the deployment pipeline both write the row, and a write that
raced another is a ConcurrentUpdate (the API answers 409, a task Lambda is retried on the row as it now is).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Protocol

from pynamodb.exceptions import DoesNotExist, PutError, TransactWriteError, UpdateError

from chalicelib.errors import ConcurrentUpdate, Conflict, NotFound
from chalicelib.repositories.workspaces import (
    IncarnationGone,
    MemoryWorkspaces,
    condition_failed,
    fenced_write,
    item_condition_failed,
)
from chalicelib.tables import EndpointItem, _Item, ws_key

DELETED = "Deleted"


class EndpointNotFound(NotFound):
    code = "EndpointNotFound"


class NameTaken(Conflict):
    code = "NameTaken"


@dataclass
class Endpoint:
    workspace: str
    name: str
    status: str
    sagemaker_endpoint: str
    kind: str  # serverless | realtime
    settings: dict[str, Any]  # memory_mb, max_concurrency, instance_type, instance_count, capture_percent
    model: dict[str, Any]  # the live (or being deployed) model: job_id, group, version, model_sha256, ...
    created_at: str
    created_by: str
    updated_at: str
    deployments: list[dict[str, Any]] = field(default_factory=list)  # newest first
    failure_reason: str | None = None
    version: int | None = None


class EndpointRepository(Protocol):
    def create(self, endpoint: Endpoint, incarnation: str) -> Endpoint:
        """Stores the endpoint unless a live (not Deleted) endpoint has its name: NameTaken. Conflict when the
        workspace is no longer `incarnation`."""

    def get(self, workspace: str, name: str) -> Endpoint:
        """EndpointNotFound if there is none (a Deleted one is returned: its history stays readable)."""

    def save(self, endpoint: Endpoint) -> None:
        """Writes the mutable fields if the row is unchanged since `endpoint` was read (ConcurrentUpdate
        otherwise); `endpoint.version` is updated in place."""

    def page(self, workspace: str, limit: int, after: str | None) -> tuple[list[Endpoint], str | None]:
        """Up to `limit` endpoints by name, from the one after `after`; the last name when more may follow."""


def not_found(workspace: str, name: str) -> EndpointNotFound:
    return EndpointNotFound(f"endpoint {name!r} does not exist in workspace {workspace!r}")


def name_taken(name: str) -> NameTaken:
    return NameTaken(f"name: endpoint {name!r} exists and is not deleted; kill it first or choose another name")


_MUTABLE = ("status", "settings", "model", "deployments", "failure_reason", "updated_at")
_FIELDS = ("name", "sagemaker_endpoint", "kind", "created_at", "created_by", *_MUTABLE)


def _endpoint(item: EndpointItem) -> Endpoint:
    values = {name: getattr(item, name) for name in _FIELDS}
    # The deployment state machine's last resort (cdk/recording.py mark_failed) writes the pipelines' FAILED.
    values["status"] = "Failed" if item.status == "FAILED" else item.status
    return Endpoint(workspace=item.pk.removeprefix("WS#"), version=int(item.version), **values)


class DynamoEndpoints:
    def create(self, endpoint: Endpoint, incarnation: str) -> Endpoint:
        ws = endpoint.workspace
        try:
            previous: Endpoint | None = self.get(ws, endpoint.name)
        except EndpointNotFound:
            previous = None
        if previous is not None and previous.status != DELETED:
            raise name_taken(endpoint.name)
        # Over a Deleted row: replace exactly the row read (its version), else only where none exists.
        version: dict[str, Any] = {} if previous is None else {"version": previous.version}
        item = EndpointItem(ws_key(ws), f"ENDPOINT#{endpoint.name}",
                            **{name: getattr(endpoint, name) for name in _FIELDS}, **version)
        try:
            fenced_write(ws, incarnation, lambda tx: tx.save(item))
        except IncarnationGone:
            raise Conflict(f"workspace {ws!r} is being killed (or was re-created); no endpoint was created") from None
        except TransactWriteError as exc:
            if item_condition_failed(exc, 1):
                raise name_taken(endpoint.name) from None
            raise
        return _endpoint(item)

    def get(self, workspace: str, name: str) -> Endpoint:
        try:
            return _endpoint(EndpointItem.get(ws_key(workspace), f"ENDPOINT#{name}", consistent_read=True))
        except DoesNotExist:
            raise not_found(workspace, name) from None

    def save(self, endpoint: Endpoint) -> None:
        item = EndpointItem(ws_key(endpoint.workspace), f"ENDPOINT#{endpoint.name}", version=endpoint.version)
        actions = [getattr(EndpointItem, name).set(getattr(endpoint, name)) for name in _MUTABLE
                   if getattr(endpoint, name) is not None]
        if endpoint.failure_reason is None:
            actions.append(EndpointItem.failure_reason.remove())
        try:
            item.update(actions=actions, condition=_Item.pk.exists())
        except (UpdateError, PutError) as exc:
            if condition_failed(exc):  # type: ignore[arg-type]
                raise ConcurrentUpdate(f"endpoint {endpoint.name!r} changed while it was being updated; try again") \
                    from None
            raise
        endpoint.version = int(item.version)

    def page(self, workspace: str, limit: int, after: str | None) -> tuple[list[Endpoint], str | None]:
        # '$' follows '#': the range holds exactly the endpoint rows from `after` on (`after` itself dropped).
        condition = EndpointItem.sk.between(f"ENDPOINT#{after or ''}", "ENDPOINT$")
        rows = EndpointItem.query(ws_key(workspace), condition, consistent_read=True, limit=limit + 2)
        found = [_endpoint(row) for row in rows if row.name != after][:limit + 1]
        return found[:limit], found[limit - 1].name if len(found) > limit else None


class MemoryEndpoints:
    """The in-memory twin; rows live in the workspace twin's partitions, so a workspace kill sweeps them."""

    def __init__(self, workspaces: MemoryWorkspaces) -> None:
        self._workspaces = workspaces

    def create(self, endpoint: Endpoint, incarnation: str) -> Endpoint:
        with self._workspaces.lock:
            if not self._workspaces.alive(endpoint.workspace, incarnation):
                raise Conflict(f"workspace {endpoint.workspace!r} is being killed (or was re-created); no endpoint "
                               "was created")
            rows = self._workspaces.table(endpoint.workspace, "endpoints")
            previous = rows.get(endpoint.name)
            if previous is not None and previous.status != DELETED:
                raise name_taken(endpoint.name)
            stored = copy.deepcopy(endpoint)
            stored.version = 1 if previous is None else previous.version + 1
            rows[endpoint.name] = stored
            return copy.deepcopy(stored)

    def get(self, workspace: str, name: str) -> Endpoint:
        with self._workspaces.lock:
            stored = self._workspaces.rows.get(workspace, {}).get("endpoints", {}).get(name)
            if stored is None:
                raise not_found(workspace, name)
            return copy.deepcopy(stored)  # type: ignore[no-any-return]

    def save(self, endpoint: Endpoint) -> None:
        with self._workspaces.lock:
            rows = self._workspaces.rows.get(endpoint.workspace, {}).get("endpoints", {})
            stored = rows.get(endpoint.name)
            if stored is None or stored.version != endpoint.version:
                raise ConcurrentUpdate(f"endpoint {endpoint.name!r} changed while it was being updated; try again")
            endpoint.version = stored.version + 1
            rows[endpoint.name] = copy.deepcopy(endpoint)

    def page(self, workspace: str, limit: int, after: str | None) -> tuple[list[Endpoint], str | None]:
        with self._workspaces.lock:
            rows = self._workspaces.rows.get(workspace, {}).get("endpoints", {})
            names = [name for name in sorted(rows) if after is None or name > after]
            found = [copy.deepcopy(rows[name]) for name in names[:limit]]
            return found, found[-1].name if len(names) > limit else None
