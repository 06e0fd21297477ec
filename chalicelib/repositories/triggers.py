"""Auto-retrain rows (all in the workspace's partition, so `kaos workspace kill` removes them with the rest):

  AUTORETRAIN#CONFIG              enabled, updated_by, updated_at
  AUTORETRAIN#OPEN                the newest batch's id (open or not): the pointer a new batch replaces
  PENDING#<batch>                 the batch: status OPEN|CLOSED|DONE|FAILED and what processing pinned or made
  PENDINGFILE#<batch>#<file id>   a file of the batch
  INCOMING#<file id>              the dedupe row: which batch took the file

Every write that decides something is conditional, so at-least-once deliveries and retried tasks converge:
`open` replaces the pointer only if it still names the batch the caller saw; `join` takes a file only if no batch
took it and the batch is still OPEN (one transaction with its dedupe row); `close` flips only an OPEN batch;
`pin_base` sets the base only once.
"""
from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from pynamodb.exceptions import DoesNotExist, TransactWriteError, UpdateError
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from chalicelib.repositories.workspaces import MemoryWorkspaces, condition_failed, connection
from chalicelib.tables import (AutoRetrainItem, BatchItem, IncomingFileItem, OpenBatchItem, PendingFileItem,
                               ws_key)

OPEN, CLOSED, DONE, FAILED = "OPEN", "CLOSED", "DONE", "FAILED"
CONFIG_SK = "AUTORETRAIN#CONFIG"
OPEN_SK = "AUTORETRAIN#OPEN"


@dataclass(frozen=True)
class AutoRetrain:
    enabled: bool
    updated_by: str
    updated_at: str


@dataclass
class RetrainBatch:
    workspace: str
    batch_id: str
    status: str
    opened_at: str
    previous: str | None = None
    started: bool = False
    closed_at: str | None = None
    ended_at: str | None = None
    base: dict[str, Any] | None = None
    snapshot: str | None = None
    previous_snapshot: str | None = None
    job: str | None = None
    files: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    reason: str | None = None
    last_joined_at: str | None = None
    # Its wait for the batch ahead outlasted the state machine's retries: the batch ahead processes it when done.
    stalled: bool = False


@dataclass(frozen=True)
class PendingFile:
    file_id: str
    key: str
    path: str
    version: str | None
    etag: str | None
    sequencer: str | None
    received_at: str


# What `finish` may set besides the status and `ended_at`.
FINISHED_FIELDS = frozenset({"snapshot", "previous_snapshot", "job", "files", "skipped", "reason"})


class TriggerRepository(Protocol):
    def set_config(self, workspace: str, config: AutoRetrain) -> None: ...

    def config(self, workspace: str) -> AutoRetrain | None: ...

    def recent(self, workspace: str, limit: int) -> list[RetrainBatch]:
        """The newest `limit` batches, newest first."""

    def pointer(self, workspace: str) -> str | None:
        """The id of the newest batch (open or not), None before the first."""

    def batch(self, workspace: str, batch_id: str) -> RetrainBatch | None:
        """Read consistently."""

    def successor(self, workspace: str, batch_id: str) -> RetrainBatch | None:
        """The batch opened right after this one, if any."""

    def open(self, batch: RetrainBatch, replaces: str | None) -> bool:
        """Writes the new batch and points the pointer at it, in one transaction conditional on the pointer still
        naming `replaces` (None: no pointer yet). False when another delivery opened a batch first."""

    def taken_by(self, workspace: str, file_id: str) -> str | None:
        """The batch that took the file, if one did."""

    def join(self, workspace: str, batch_id: str, file: PendingFile) -> bool:
        """The file's dedupe row, its membership row and the batch's `last_joined_at`, in one transaction
        conditional on no batch having taken the file and the batch being OPEN. False if either failed."""

    def mark_started(self, workspace: str, batch_id: str) -> None: ...

    def close(self, workspace: str, batch_id: str, at: str) -> bool:
        """OPEN -> CLOSED; False if the batch was not OPEN."""

    def pin_base(self, workspace: str, batch_id: str, base: dict[str, Any]) -> None:
        """Sets the inputs the batch derives from, unless they are set already (a retry keeps the first)."""

    def stall(self, workspace: str, batch_id: str) -> bool:
        """Marks a batch that has not ended stalled; False if it has ended."""

    def files(self, workspace: str, batch_id: str) -> list[PendingFile]: ...

    def finish(self, batch: RetrainBatch, status: str, at: str, **changes: Any) -> None:
        """Sets the final status, `ended_at` and `changes` (FINISHED_FIELDS; None values are left alone); `batch`
        is updated in place."""


def _check(changes: dict[str, Any]) -> dict[str, Any]:
    unknown = set(changes) - FINISHED_FIELDS
    if unknown:
        raise TypeError(f"not set by finish: {', '.join(sorted(unknown))}")
    return {name: value for name, value in changes.items() if value is not None}


def batch_sk(batch_id: str) -> str:
    return f"PENDING#{batch_id}"


def file_sk(batch_id: str, file_id: str) -> str:
    return f"PENDINGFILE#{batch_id}#{file_id}"


_BATCH_FIELDS = tuple(f.name for f in fields(RetrainBatch) if f.name != "workspace")


def _batch(item: BatchItem) -> RetrainBatch:
    values = {name: getattr(item, name) for name in _BATCH_FIELDS}
    values.update(files=int(item.files or 0), skipped=list(item.skipped or []), started=bool(item.started),
                  stalled=bool(item.stalled), base=dict(item.base) if item.base is not None else None)
    return RetrainBatch(workspace=item.pk.removeprefix("WS#"), **values)


def _file(item: PendingFileItem) -> PendingFile:
    return PendingFile(item.sk.rsplit("#", 1)[1], item.key, item.path, item.version, item.etag, item.sequencer,
                       item.received_at)


def _get(model: type[Any], workspace: str, sk: str) -> Any:
    try:
        return model.get(ws_key(workspace), sk, consistent_read=True)
    except DoesNotExist:
        return None


class DynamoTriggers:
    def set_config(self, workspace: str, config: AutoRetrain) -> None:
        AutoRetrainItem(ws_key(workspace), CONFIG_SK, enabled=config.enabled, updated_by=config.updated_by,
                        updated_at=config.updated_at).save()

    def config(self, workspace: str) -> AutoRetrain | None:
        item = _get(AutoRetrainItem, workspace, CONFIG_SK)
        return None if item is None else AutoRetrain(bool(item.enabled), item.updated_by, item.updated_at)

    def recent(self, workspace: str, limit: int) -> list[RetrainBatch]:
        rows = BatchItem.query(ws_key(workspace), BatchItem.sk.startswith("PENDING#"), scan_index_forward=False,
                               limit=limit, consistent_read=True)
        return [_batch(row) for row in rows]

    def pointer(self, workspace: str) -> str | None:
        item = _get(OpenBatchItem, workspace, OPEN_SK)
        return None if item is None else str(item.batch_id)

    def batch(self, workspace: str, batch_id: str) -> RetrainBatch | None:
        item = _get(BatchItem, workspace, batch_sk(batch_id))
        return None if item is None else _batch(item)

    def successor(self, workspace: str, batch_id: str) -> RetrainBatch | None:
        # PENDINGFILE# rows sort after PENDING#: the condition below stops at the batch rows ("PENDING#~" > any id).
        rows = BatchItem.query(ws_key(workspace), BatchItem.sk.between(f"{batch_sk(batch_id)}0", "PENDING#~"),
                               limit=1, consistent_read=True)
        return next((_batch(row) for row in rows), None)

    def open(self, batch: RetrainBatch, replaces: str | None) -> bool:
        workspace = batch.workspace
        item = BatchItem(ws_key(workspace), batch_sk(batch.batch_id),
                         **{name: getattr(batch, name) for name in _BATCH_FIELDS})
        condition = (OpenBatchItem.pk.does_not_exist() if replaces is None
                     else OpenBatchItem.batch_id == replaces)
        try:
            with TransactWrite(connection=connection()) as tx:
                tx.save(OpenBatchItem(ws_key(workspace), OPEN_SK, batch_id=batch.batch_id), condition=condition)
                tx.save(item, condition=BatchItem.pk.does_not_exist())
        except TransactWriteError as exc:
            if exc.cause_response_code == "TransactionCanceledException":
                return False
            raise
        return True

    def taken_by(self, workspace: str, file_id: str) -> str | None:
        item = _get(IncomingFileItem, workspace, f"INCOMING#{file_id}")
        return None if item is None else str(item.batch_id)

    def join(self, workspace: str, batch_id: str, file: PendingFile) -> bool:
        member = PendingFileItem(ws_key(workspace), file_sk(batch_id, file.file_id), key=file.key, path=file.path,
                                 version=file.version, etag=file.etag, sequencer=file.sequencer,
                                 received_at=file.received_at)
        dedupe = IncomingFileItem(ws_key(workspace), f"INCOMING#{file.file_id}", key=file.key, batch_id=batch_id,
                                  received_at=file.received_at)
        try:
            with TransactWrite(connection=connection()) as tx:
                tx.save(dedupe, condition=IncomingFileItem.pk.does_not_exist())
                tx.save(member)
                tx.update(BatchItem(ws_key(workspace), batch_sk(batch_id)),
                          actions=[BatchItem.last_joined_at.set(file.received_at)],
                          condition=BatchItem.status == OPEN)
        except TransactWriteError as exc:
            if exc.cause_response_code == "TransactionCanceledException":
                return False
            raise
        return True

    def _update(self, workspace: str, batch_id: str, actions: list[Action], condition: Any = None) -> bool:
        try:
            BatchItem(ws_key(workspace), batch_sk(batch_id)).update(actions=actions, condition=condition)
        except UpdateError as exc:
            if condition is not None and condition_failed(exc):
                return False
            raise
        return True

    def mark_started(self, workspace: str, batch_id: str) -> None:
        self._update(workspace, batch_id, [BatchItem.started.set(True)], BatchItem.pk.exists())

    def close(self, workspace: str, batch_id: str, at: str) -> bool:
        return self._update(workspace, batch_id, [BatchItem.status.set(CLOSED), BatchItem.closed_at.set(at)],
                            BatchItem.status == OPEN)

    def pin_base(self, workspace: str, batch_id: str, base: dict[str, Any]) -> None:
        self._update(workspace, batch_id, [BatchItem.base.set(base)], BatchItem.base.does_not_exist())

    def stall(self, workspace: str, batch_id: str) -> bool:
        return self._update(workspace, batch_id, [BatchItem.stalled.set(True)],
                            BatchItem.status.is_in(OPEN, CLOSED))

    def files(self, workspace: str, batch_id: str) -> list[PendingFile]:
        rows = PendingFileItem.query(ws_key(workspace), PendingFileItem.sk.startswith(f"PENDINGFILE#{batch_id}#"),
                                     consistent_read=True)
        return [_file(row) for row in rows]

    def finish(self, batch: RetrainBatch, status: str, at: str, **changes: Any) -> None:
        values = {"status": status, "ended_at": at, **_check(changes)}
        self._update(batch.workspace, batch.batch_id,
                     [getattr(BatchItem, name).set(value) for name, value in values.items()])
        for name, value in values.items():
            setattr(batch, name, copy.deepcopy(value))


class MemoryTriggers:
    """The in-memory twin; rows live in the workspace twin's partitions, so a workspace kill sweeps them."""

    def __init__(self, workspaces: MemoryWorkspaces) -> None:
        self._workspaces = workspaces
        self._lock: threading.RLock = workspaces.lock

    def _rows(self, workspace: str) -> dict[str, Any]:
        return self._workspaces.table(workspace, "autoretrain")

    def _batches(self, workspace: str) -> dict[str, RetrainBatch]:
        batches: dict[str, RetrainBatch] = self._rows(workspace).setdefault("batches", {})
        return batches

    def set_config(self, workspace: str, config: AutoRetrain) -> None:
        with self._lock:
            self._rows(workspace)["config"] = config

    def config(self, workspace: str) -> AutoRetrain | None:
        with self._lock:
            found: AutoRetrain | None = self._rows(workspace).get("config")
            return found

    def recent(self, workspace: str, limit: int) -> list[RetrainBatch]:
        with self._lock:
            batches = self._batches(workspace)
            return [copy.deepcopy(batches[b]) for b in sorted(batches, reverse=True)[:limit]]

    def pointer(self, workspace: str) -> str | None:
        with self._lock:
            found: str | None = self._rows(workspace).get("pointer")
            return found

    def batch(self, workspace: str, batch_id: str) -> RetrainBatch | None:
        with self._lock:
            return copy.deepcopy(self._batches(workspace).get(batch_id))

    def successor(self, workspace: str, batch_id: str) -> RetrainBatch | None:
        with self._lock:
            later = sorted(b for b in self._batches(workspace) if b > batch_id)
            return copy.deepcopy(self._batches(workspace)[later[0]]) if later else None

    def open(self, batch: RetrainBatch, replaces: str | None) -> bool:
        with self._lock:
            rows = self._rows(batch.workspace)
            if rows.get("pointer") != replaces or batch.batch_id in self._batches(batch.workspace):
                return False
            rows["pointer"] = batch.batch_id
            self._batches(batch.workspace)[batch.batch_id] = copy.deepcopy(batch)
            return True

    def taken_by(self, workspace: str, file_id: str) -> str | None:
        with self._lock:
            found: str | None = self._rows(workspace).get("incoming", {}).get(file_id)
            return found

    def join(self, workspace: str, batch_id: str, file: PendingFile) -> bool:
        with self._lock:
            rows = self._rows(workspace)
            batch = self._batches(workspace).get(batch_id)
            if file.file_id in rows.get("incoming", {}) or batch is None or batch.status != OPEN:
                return False
            rows.setdefault("incoming", {})[file.file_id] = batch_id
            rows.setdefault("files", {}).setdefault(batch_id, {})[file.file_id] = file
            batch.last_joined_at = file.received_at
            return True

    def _change(self, workspace: str, batch_id: str, when: bool, **values: Any) -> bool:
        with self._lock:
            batch = self._batches(workspace).get(batch_id)
            if batch is None or not when:
                return False
            for name, value in values.items():
                setattr(batch, name, copy.deepcopy(value))
            return True

    def _status(self, workspace: str, batch_id: str) -> str | None:
        batch = self._batches(workspace).get(batch_id)
        return None if batch is None else batch.status

    def mark_started(self, workspace: str, batch_id: str) -> None:
        self._change(workspace, batch_id, True, started=True)

    def close(self, workspace: str, batch_id: str, at: str) -> bool:
        with self._lock:
            return self._change(workspace, batch_id, self._status(workspace, batch_id) == OPEN,
                                status=CLOSED, closed_at=at)

    def pin_base(self, workspace: str, batch_id: str, base: dict[str, Any]) -> None:
        with self._lock:
            batch = self._batches(workspace).get(batch_id)
            self._change(workspace, batch_id, batch is not None and batch.base is None, base=base)

    def stall(self, workspace: str, batch_id: str) -> bool:
        with self._lock:
            return self._change(workspace, batch_id, self._status(workspace, batch_id) in (OPEN, CLOSED),
                                stalled=True)

    def files(self, workspace: str, batch_id: str) -> list[PendingFile]:
        with self._lock:
            return list(self._rows(workspace).get("files", {}).get(batch_id, {}).values())

    def finish(self, batch: RetrainBatch, status: str, at: str, **changes: Any) -> None:
        values = {"status": status, "ended_at": at, **_check(changes)}
        self._change(batch.workspace, batch.batch_id, True, **values)
        for name, value in values.items():
            setattr(batch, name, copy.deepcopy(value))
