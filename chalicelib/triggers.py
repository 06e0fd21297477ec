"""S3-triggered incremental retraining: files put under `ws/<ws>/incoming/` become ONE derived data snapshot and ONE
training job per batch window, exactly once, however often S3/EventBridge deliver (at least once, any order).

Flow: S3 "Object Created" → EventBridge rule (this bucket, keys `ws/`) → OnUpload (`on_upload`) → per file one
idempotent pending row in the workspace's open batch → the batch's retrain execution (`retrain-<ws>-<batch>`,
Wait WINDOW_SECONDS → ProcessBatch) → `process`: closes the batch, builds the snapshot (previous `training` data +
the batch's files), records `derived` provenance, creates the job and starts the training pipeline.

Exactly once, by construction (every step is a conditional write or a name-keyed start):
- A file is identified by bucket/key/version-id (ETag in unversioned buckets). Its dedupe row `INCOMING#<file id>`
  is written in one transaction with its batch membership row `PENDINGFILE#<batch>#<file id>` and a check that the
  batch is still OPEN: a duplicate delivery fails the condition and changes nothing; a file can never join a batch
  that processing has already closed (it retries into the next batch).
- A batch is opened by the first file after the previous one closed (pointer row `AUTORETRAIN#OPEN`, conditional
  on the pointer it replaced); every later file of the burst joins it (and stamps `last_joined_at` in the same
  transaction). The batch closes once no file has joined for WINDOW_SECONDS (ProcessBatch raises BatchStillFilling,
  which the state machine retries every WINDOW_SECONDS), at most MAX_WINDOW_SECONDS after it opened: a burst is one
  retraining however slowly its events are delivered, and never split by a clock boundary as `floor(time / window)`
  would.
- The batch's execution name is `retrain-<ws>-<batch>` with a fixed input: starting it again is a no-op.
- ProcessBatch flips OPEN → CLOSED (conditional), pins its base inputs once (`base`, a conditional set), and builds a
  content-addressed snapshot (same files → same id) and a job keyed by its fingerprint: a retry after any partial
  progress converges on the same snapshot, job and execution. Batches of one workspace are processed in order
  (a batch waits for its predecessor: BatchNotReady is retried by the state machine), so batch N derives from N-1.

Row layout (all in the workspace's partition `WS#<ws>`, so `kaos workspace kill` removes them with the rest):
  AUTORETRAIN#CONFIG                 enabled, updated_by, updated_at
  AUTORETRAIN#OPEN                   batch_id of the newest batch (open or not)
  PENDING#<batch>                    the batch: status OPEN|CLOSED|DONE|FAILED, previous, base, snapshot, job, skipped,
                                     last_joined_at
  PENDINGFILE#<batch>#<file id>      a file of the batch (key, path, version, etag, sequencer)
  INCOMING#<file id>                 dedupe row (which batch took the file)
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import unquote_plus

from pynamodb.attributes import BooleanAttribute, JSONAttribute, NumberAttribute, UnicodeAttribute
from pynamodb.exceptions import DoesNotExist, TransactWriteError, UpdateError
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from chalicelib import config, limits
from chalicelib.adapters import Executions, ObjectStore, clients
from chalicelib.domain import FileEntry, Manifest, validate_path, validate_workspace_name
from chalicelib.errors import KaosError, NotFound, ValidationFailed
from chalicelib.tables import LatestInputsItem, WorkspaceItem, _Item, ws_key
from chalicelib.provenance import Provenance
from chalicelib.blobs import ingest
from chalicelib.snapshots import Snapshots
from chalicelib.training import Inputs, Training
from chalicelib.workspaces import _connection, now, workspace_prefix

log = logging.getLogger("kaos.triggers")

# The batch window: a retraining starts WINDOW_SECONDS after the first file of a burst; every file that arrives
# meanwhile joins it. Long enough for a `kaos data push` of many files, short enough to feel immediate.
WINDOW_SECONDS = 10
# A burst that keeps arriving (or whose events are delivered slowly) keeps its batch open: ProcessBatch closes it only
# after WINDOW_SECONDS without a new file, but at most MAX_WINDOW_SECONDS after it opened, so a steady trickle still
# retrains. The state machine retries ProcessBatch on BatchStillFilling every WINDOW_SECONDS (cdk/triggers.py).
MAX_WINDOW_SECONDS = 300
INCOMING = "incoming/"
CHANNEL = "training"
# Jobs and snapshots made by a trigger are created by this principal (the job's `sources` say why).
TRIGGER_USER = "kaos:auto-retrain"
OPEN, CLOSED, DONE, FAILED = "OPEN", "CLOSED", "DONE", "FAILED"
_KEY = re.compile(r"^ws/([^/]+)/incoming/(.+)$", re.DOTALL)
_JOIN_ATTEMPTS = 5
RECENT_BATCHES = 10


class BatchStillFilling(KaosError):
    """Files joined the batch less than WINDOW_SECONDS ago; the state machine retries this (debounce)."""

    code = "BatchStillFilling"


class BatchNotReady(KaosError):
    """The previous batch of the workspace is still being processed; the state machine retries this."""

    code = "BatchNotReady"


# --- rows --------------------------------------------------------------------------------------------------
class AutoRetrainItem(_Item):
    enabled = BooleanAttribute()
    updated_by = UnicodeAttribute()
    updated_at = UnicodeAttribute()


class OpenBatchItem(_Item):
    batch_id = UnicodeAttribute()


class BatchItem(_Item):
    batch_id = UnicodeAttribute()
    status = UnicodeAttribute()
    opened_at = UnicodeAttribute()
    previous = UnicodeAttribute(null=True)
    started = BooleanAttribute(default=False)
    closed_at = UnicodeAttribute(null=True)
    ended_at = UnicodeAttribute(null=True)
    base: JSONAttribute = JSONAttribute(null=True)
    snapshot = UnicodeAttribute(null=True)
    previous_snapshot = UnicodeAttribute(null=True)
    job = UnicodeAttribute(null=True)
    files = NumberAttribute(default=0)
    skipped: JSONAttribute = JSONAttribute(null=True)
    reason = UnicodeAttribute(null=True)
    # When the latest file joined (set in the join's transaction): ProcessBatch waits for a quiet window.
    last_joined_at = UnicodeAttribute(null=True)


class PendingFileItem(_Item):
    key = UnicodeAttribute()
    path = UnicodeAttribute()
    version = UnicodeAttribute(null=True)
    etag = UnicodeAttribute(null=True)
    sequencer = UnicodeAttribute(null=True)
    received_at = UnicodeAttribute()


class IncomingFileItem(_Item):
    key = UnicodeAttribute()
    batch_id = UnicodeAttribute()
    received_at = UnicodeAttribute()


CONFIG_SK = "AUTORETRAIN#CONFIG"
OPEN_SK = "AUTORETRAIN#OPEN"
# Reads of a batch just named by the pointer: 20 x 50 ms covers the gap between a transaction's items.
_POINTER_READS = 20
_POINTER_WAIT_SECONDS = 0.05


def batch_sk(batch_id: str) -> str:
    return f"PENDING#{batch_id}"


def file_sk(batch_id: str, file_id: str) -> str:
    return f"PENDINGFILE#{batch_id}#{file_id}"


def incoming_prefix(workspace: str) -> str:
    return f"{workspace_prefix(workspace)}{INCOMING}"


def execution_name(workspace: str, batch_id: str) -> str:
    return f"retrain-{workspace}-{batch_id}"


def _get(model: type[Any], workspace: str, sk: str) -> Any:
    try:
        return model.get(ws_key(workspace), sk, consistent_read=True)
    except DoesNotExist:
        return None


# --- events ------------------------------------------------------------------------------------------------
def parse_event(event: dict[str, Any]) -> list[dict[str, Any]]:
    """The objects an event names: an EventBridge S3 event (`detail`), or an S3 notification (`Records`)."""
    if isinstance(event.get("detail"), dict):
        detail = event["detail"]
        obj = detail.get("object") or {}
        return [{"bucket": str((detail.get("bucket") or {}).get("name", "")), "key": str(obj.get("key", "")),
                 "version": obj.get("version-id"), "etag": obj.get("eTag"), "sequencer": obj.get("sequencer"),
                 "type": str(event.get("detail-type", ""))}]
    records = []
    for record in event.get("Records") or []:
        s3 = record.get("s3") or {}
        obj = s3.get("object") or {}
        kind = "Object Created" if str(record.get("eventName", "")).startswith("ObjectCreated") else ""
        records.append({"bucket": str((s3.get("bucket") or {}).get("name", "")), "key": str(obj.get("key", "")),
                        "version": obj.get("versionId"), "etag": obj.get("eTag"),
                        "sequencer": obj.get("sequencer"), "type": kind})
    return records


def file_id(bucket: str, key: str, version: str | None, etag: str | None) -> str:
    """One object version: bucket/key/version-id, or the ETag where the bucket keeps no versions."""
    pin = f"version:{version}" if version and version != "null" else f"etag:{(etag or '').strip(chr(34))}"
    return hashlib.sha256(f"{bucket}\n{key}\n{pin}".encode()).hexdigest()[:32]


def _new_batch_id() -> str:
    # Milliseconds since the epoch, zero-padded so batch rows sort by opening time.
    return f"{int(time.time() * 1000):013d}"


class Triggers:
    def __init__(self, store: ObjectStore | None = None, executions: Executions | None = None) -> None:
        self._store = store
        self._executions = executions

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            settings = config.settings()
            self._store = ObjectStore(clients().s3, settings.bucket, platform_buckets=settings.platform_buckets)
        return self._store

    @property
    def executions(self) -> Executions:
        if self._executions is None:
            self._executions = Executions(clients().stepfunctions)
        return self._executions

    # --- settings (API) ------------------------------------------------------------------------------------
    def set_enabled(self, workspace: str, user: str, enabled: bool) -> dict[str, Any]:
        """Any member may toggle: members may already deploy, and auto-retrain only re-deploys the latest inputs."""
        AutoRetrainItem(ws_key(workspace), CONFIG_SK, enabled=enabled, updated_by=user, updated_at=now()).save()
        return self.status(workspace)

    def status(self, workspace: str) -> dict[str, Any]:
        item = _get(AutoRetrainItem, workspace, CONFIG_SK)
        batches = BatchItem.query(ws_key(workspace), BatchItem.sk.startswith("PENDING#"), scan_index_forward=False,
                                  limit=RECENT_BATCHES, consistent_read=True)
        return {
            "workspace": workspace, "enabled": bool(item and item.enabled),
            "updated_by": item.updated_by if item else None, "updated_at": item.updated_at if item else None,
            "window_seconds": WINDOW_SECONDS, "incoming_prefix": incoming_prefix(workspace),
            "batches": [self.describe(b) for b in batches],
        }

    def upload_urls(self, workspace: str, files: list[dict[str, Any]]) -> dict[str, Any]:
        """Presigned PUT URLs under the workspace's incoming prefix; bytes go straight to S3, never via the API."""
        if len(files) > limits.MAX_BLOBS_PER_REQUEST:
            raise ValidationFailed(f"files: at most {limits.MAX_BLOBS_PER_REQUEST} per request")
        seen: set[str] = set()
        out = []
        for i, entry in enumerate(files):
            path = validate_path(entry.get("path"), f"files[{i}].path")
            if path in seen:
                raise ValidationFailed(f"files[{i}].path: {path!r} appears twice")
            seen.add(path)
            key = incoming_prefix(workspace) + path
            out.append({"path": path, "key": key, "url": self.store.presign_put(key)})
        return {"workspace": workspace, "files": out, "auto_retrain": self.status(workspace)["enabled"]}

    @staticmethod
    def describe(item: BatchItem) -> dict[str, Any]:
        return {"id": item.batch_id, "status": item.status, "opened_at": item.opened_at,
                "closed_at": item.closed_at, "ended_at": item.ended_at, "files": int(item.files or 0),
                "snapshot": item.snapshot, "previous_snapshot": item.previous_snapshot, "job": item.job,
                "skipped": item.skipped or [], "reason": item.reason}

    # --- OnUpload ----------------------------------------------------------------------------------------
    def on_event(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Handles one delivery; never raises for events it ignores (no retry loop), only for AWS trouble."""
        return [self.on_object(**obj) for obj in parse_event(event)]

    def on_object(self, bucket: str, key: str, version: str | None, etag: str | None, sequencer: str | None,
                  type: str) -> dict[str, Any]:
        key = unquote_plus(key)
        ignored = self._ignored(bucket, key, type)
        if ignored:
            return ignored
        match = _KEY.match(key)
        assert match is not None
        workspace, path = match.group(1), match.group(2)
        auto = _get(AutoRetrainItem, workspace, CONFIG_SK)
        if auto is None or not auto.enabled:
            log.info("auto-retrain is off in %s: %s starts nothing", workspace, key)
            return {"ignored": "auto-retrain off", "key": key}
        fid = file_id(bucket, key, version, etag)
        for _ in range(_JOIN_ATTEMPTS):
            if _get(IncomingFileItem, workspace, f"INCOMING#{fid}") is not None:
                # A late duplicate (the file's batch may be closed by now) must not open a new, empty batch.
                return self._duplicate(workspace, key, fid)
            batch = self._open_batch(workspace)
            member = PendingFileItem(ws_key(workspace), file_sk(batch.batch_id, fid), key=key, path=path,
                                     version=version if version and version != "null" else None,
                                     etag=(etag or "").strip('"') or None, sequencer=sequencer, received_at=now())
            dedupe = IncomingFileItem(ws_key(workspace), f"INCOMING#{fid}", key=key, batch_id=batch.batch_id,
                                      received_at=member.received_at)
            try:
                with TransactWrite(connection=_connection()) as tx:
                    tx.save(dedupe, condition=IncomingFileItem.pk.does_not_exist())
                    tx.save(member)
                    tx.update(batch, actions=[BatchItem.last_joined_at.set(member.received_at)],
                              condition=BatchItem.status == OPEN)
            except TransactWriteError:
                if _get(IncomingFileItem, workspace, f"INCOMING#{fid}") is not None:
                    return self._duplicate(workspace, key, fid)
                continue  # the batch closed meanwhile: join (or open) the next one
            self._ensure_started(workspace, batch)
            return {"pending": key, "path": path, "batch": batch.batch_id}
        raise RuntimeError(f"{key}: could not join a batch after {_JOIN_ATTEMPTS} attempts")

    def _duplicate(self, workspace: str, key: str, fid: str) -> dict[str, Any]:
        """A duplicate delivery: the file is already in a batch; make sure that batch's run started (the first
        delivery may have failed after its transaction)."""
        existing = _get(IncomingFileItem, workspace, f"INCOMING#{fid}")
        taken = _get(BatchItem, workspace, batch_sk(existing.batch_id))
        if taken is not None:
            self._ensure_started(workspace, taken)
        return {"duplicate": key, "batch": existing.batch_id}

    def _ignored(self, bucket: str, key: str, kind: str) -> dict[str, Any] | None:
        reason = None
        if kind and kind != "Object Created":
            reason = f"event type {kind!r}"
        elif bucket != config.settings().bucket:
            reason = f"bucket {bucket!r} is not the kaos data bucket"
        else:
            match = _KEY.match(key)
            if match is None:
                reason = "key is outside ws/<workspace>/incoming/"
            else:
                try:
                    validate_workspace_name(match.group(1))
                    validate_path(match.group(2), "path")
                except ValidationFailed as exc:
                    reason = exc.message
                else:
                    if _get(WorkspaceItem, match.group(1), "META") is None:
                        reason = f"workspace {match.group(1)!r} does not exist"
        if reason is None:
            return None
        if key.startswith("ws/") and INCOMING not in key:
            log.debug("ignored s3://%s/%s: %s", bucket, key, reason)  # the workspace's own writes: routine
        else:
            log.warning("ignored s3://%s/%s: %s", bucket, key, reason)
        return {"ignored": reason, "key": key}

    def _open_batch(self, workspace: str) -> BatchItem:
        """The workspace's open batch, opening one (conditionally on the pointer it replaces) if none is open."""
        pointer = _get(OpenBatchItem, workspace, OPEN_SK)
        current = self._pointed(workspace, pointer)
        if current is not None and current.status == OPEN:
            return cast(BatchItem, current)
        batch_id = _new_batch_id()
        if current is not None and batch_id <= current.batch_id:
            batch_id = f"{int(current.batch_id) + 1:013d}"
        at = now()
        batch = BatchItem(ws_key(workspace), batch_sk(batch_id), batch_id=batch_id, status=OPEN, opened_at=at,
                          previous=pointer.batch_id if pointer is not None else None, started=False, files=0)
        replaced = (OpenBatchItem.pk.does_not_exist() if pointer is None
                    else OpenBatchItem.batch_id == pointer.batch_id)
        try:
            with TransactWrite(connection=_connection()) as tx:
                tx.save(OpenBatchItem(ws_key(workspace), OPEN_SK, batch_id=batch_id), condition=replaced)
                tx.save(batch, condition=BatchItem.pk.does_not_exist())
        except TransactWriteError:
            # Another delivery opened a batch first: join it.
            pointer = _get(OpenBatchItem, workspace, OPEN_SK)
            other = self._pointed(workspace, pointer)
            if other is None:
                raise
            return cast(BatchItem, other)
        log.info("opened batch %s in %s", batch_id, workspace)
        return batch

    @staticmethod
    def _pointed(workspace: str, pointer: Any) -> Any:
        """The batch the pointer names. The pointer and the batch are written in one transaction, but a reader
        can see the pointer before the batch (moto applies a transaction item by item); treating that as "no
        batch" would open a second, empty batch that nobody runs. So wait briefly for it instead."""
        if pointer is None:
            return None
        for _ in range(_POINTER_READS):
            batch = _get(BatchItem, workspace, batch_sk(pointer.batch_id))
            if batch is not None:
                return batch
            time.sleep(_POINTER_WAIT_SECONDS)
        raise RuntimeError(f"batch {pointer.batch_id} named by the open-batch pointer is not readable yet")

    def _ensure_started(self, workspace: str, batch: BatchItem) -> None:
        if batch.started:
            return
        machine = os.environ.get(config.RETRAIN_STATE_MACHINE_ARN, "")
        self.executions.start(machine, execution_name(workspace, batch.batch_id),
                              {"workspace": workspace, "batch": batch.batch_id})
        try:
            batch.update(actions=[BatchItem.started.set(True)])
        except UpdateError:
            log.warning("could not mark batch %s started (it runs regardless)", batch.batch_id)

    # --- ProcessBatch ------------------------------------------------------------------------------------
    def process(self, workspace: str, batch_id: str) -> dict[str, Any]:
        """Closes the batch and turns it into one derived snapshot and one job; every step is idempotent."""
        batch = _get(BatchItem, workspace, batch_sk(batch_id))
        if batch is None:
            return {"batch": batch_id, "status": "missing", "reason": "no such batch (workspace deleted?)"}
        if batch.status in (DONE, FAILED):
            return self.describe(batch)
        if batch.status == OPEN:
            quiet, age = _seconds_since(batch.last_joined_at), _seconds_since(batch.opened_at)
            if quiet is not None and quiet < WINDOW_SECONDS and (age is None or age < MAX_WINDOW_SECONDS):
                raise BatchStillFilling(f"batch {batch_id} of {workspace}: a file joined {quiet:.1f} s ago")
            try:
                batch.update(actions=[BatchItem.status.set(CLOSED), BatchItem.closed_at.set(now())],
                             condition=BatchItem.status == OPEN)
            except UpdateError:
                batch.refresh(consistent_read=True)
        if batch.previous:
            previous = _get(BatchItem, workspace, batch_sk(batch.previous))
            if previous is not None and previous.status in (OPEN, CLOSED):
                raise BatchNotReady(f"batch {batch.previous} of {workspace} is still being processed")
        workspace_item = _get(WorkspaceItem, workspace, "META")
        if workspace_item is None:
            return self._finish(batch, DONE, reason="the workspace no longer exists")
        if batch.base is None:
            latest = _get(LatestInputsItem, workspace, "LATEST#inputs")
            if latest is None or CHANNEL not in (latest.data or {}):
                return self._finish(batch, DONE, reason=f"no deploy with a {CHANNEL!r} data channel yet; deploy once "
                                                        "(kaos train deploy) and later uploads retrain it")
            base = {"code": latest.code, "data": dict(latest.data), "params": latest.params}
            try:
                batch.update(actions=[BatchItem.base.set(base)], condition=BatchItem.base.does_not_exist())
            except UpdateError:
                pass
            batch.refresh(consistent_read=True)
        base = dict(batch.base)
        entries, skipped = self._collect(workspace, batch_id)
        if not entries:
            return self._finish(batch, DONE, skipped=skipped, reason="no file of the batch is left to add")
        previous_id = str(base["data"][CHANNEL])
        snapshots = Snapshots(self.store)
        files = {f.path: f for f in snapshots.manifest(workspace, previous_id).files}
        files.update({f.path: f for f in entries})
        manifest = Manifest("data", tuple(files[p] for p in sorted(files)))
        snapshot, _ = snapshots._record(workspace, manifest, TRIGGER_USER)
        at = now()
        provenance = Provenance()
        new_node, old_node = f"snapshot:{snapshot['id']}", f"snapshot:{previous_id}"
        provenance.add_node(workspace, new_node, "snapshot", {"kind": "data"}, at)
        if snapshot["id"] != previous_id:
            provenance.add_node(workspace, old_node, "snapshot", {"kind": "data"}, at)
            provenance.add_edge(workspace, new_node, "derived", old_node, at)
        data = {**base["data"], CHANNEL: snapshot["id"]}
        inputs = Inputs(str(base["code"]), tuple(sorted(data.items())), dict(base["params"]), {},
                        {"code": "latest", "data": "auto-retrain", "params": "latest"})
        training = Training(store=self.store)
        item, _ = training.create(workspace, workspace_item.created_at, TRIGGER_USER, inputs, inputs.params)
        training.executions.start(config.settings().training_state_machine_arn, item.job_id,
                                  {"workspace": workspace, "job_id": item.job_id})
        training.remember_inputs(workspace, inputs)
        return self._finish(batch, DONE, snapshot=snapshot["id"], previous_snapshot=previous_id, job=item.job_id,
                            files=len(entries), skipped=skipped)

    def fail(self, workspace: str, batch_id: str, error: dict[str, Any]) -> dict[str, Any]:
        """The state machine's catch: the batch ends FAILED with the reason (its successors go on)."""
        batch = _get(BatchItem, workspace, batch_sk(batch_id))
        if batch is None or batch.status in (DONE, FAILED):
            return {"batch": batch_id, "status": batch.status if batch else "missing"}
        reason = f"{error.get('Error', 'Error')}: {error.get('Cause', '')}"[:2000]
        return self._finish(batch, FAILED, reason=reason)

    def _collect(self, workspace: str, batch_id: str) -> tuple[list[FileEntry], list[dict[str, str]]]:
        """The batch's files, newest per path; each copied to its content-addressed blob after a streamed hash."""
        rows = PendingFileItem.query(ws_key(workspace), PendingFileItem.sk.startswith(f"PENDINGFILE#{batch_id}#"),
                                     consistent_read=True)
        newest: dict[str, PendingFileItem] = {}
        for row in rows:
            seen = newest.get(row.path)
            if seen is None or _order(row) > _order(seen):
                newest[row.path] = row
        entries: list[FileEntry] = []
        skipped: list[dict[str, str]] = []
        for path in sorted(newest):
            row = newest[path]
            try:
                entries.append(self._ingest(workspace, row))
            except _Vanished as exc:
                log.warning("skipped %s in %s: %s", row.key, workspace, exc)
                skipped.append({"path": path, "key": row.key, "reason": str(exc)})
        return entries, skipped

    def _ingest(self, workspace: str, row: PendingFileItem) -> FileEntry:
        if self.store.size(row.key) is None:
            raise _Vanished("deleted before processing (HeadObject 404)")
        try:
            blob = ingest(self.store, workspace, row.key, row.version)
        except NotFound as exc:
            raise _Vanished("this version was deleted before processing") from exc
        return FileEntry(row.path, blob.sha256, blob.size)

    def _finish(self, batch: BatchItem, status: str, **fields: Any) -> dict[str, Any]:
        actions: list[Action] = [BatchItem.status.set(status), BatchItem.ended_at.set(now())]
        actions += [getattr(BatchItem, name).set(value) for name, value in fields.items() if value is not None]
        batch.update(actions=actions)
        log.info("batch %s of %s: %s %s", batch.batch_id, batch.pk, status, fields)
        return self.describe(batch)


class _Vanished(Exception):
    pass


def _seconds_since(stamp: str | None) -> float | None:
    if not stamp:
        return None
    return (datetime.now(UTC) - datetime.fromisoformat(stamp)).total_seconds()


def _order(row: PendingFileItem) -> tuple[str, str]:
    # S3 sequencers of one key grow with time; compare them at equal length, then by arrival.
    return ((row.sequencer or "").rjust(32, "0"), row.received_at)

