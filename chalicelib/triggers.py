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
  which the state machine retries every WINDOW_SECONDS), at most MAX_WINDOW_SECONDS after it opened, and never split
  by a clock boundary as `floor(time / window)` would. Before it closes, ProcessBatch sweeps incoming/ in S3 for
  files whose event has not been handled yet (late, or dropped after EventBridge's retries): they join it, and if
  the newest was uploaded within the window the batch stays open. A burst is one retraining however slowly (or
  whether) its events are delivered.
- The batch's execution name is `retrain-<ws>-<batch>` with a fixed input: starting it again is a no-op.
- ProcessBatch flips OPEN → CLOSED (conditional), pins its base inputs once (`base`, a conditional set), and builds a
  content-addressed snapshot (same files → same id) and a job keyed by its fingerprint: a retry after any partial
  progress converges on the same snapshot, job and execution. Batches of one workspace are processed in order
  (a batch waits for its predecessor: BatchNotReady is retried by the state machine), so batch N derives from N-1.
- A queued batch is never dropped: if its wait outlasts the state machine's retries (a chain of batches each
  waiting for the one ahead), RecordBatchFailure marks it `stalled` instead of FAILED, and the batch ahead,
  once processed, processes it (in its own ProcessBatch task; see `process` and `fail`).

Rows: chalicelib/repositories/triggers.py.
"""
from __future__ import annotations

import hashlib
import logging
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote_plus

from chalicelib import limits
from chalicelib.adapters import Executions, ObjectStore
from chalicelib.blobs import ingest
from chalicelib.config import Settings
from chalicelib.domain import FileEntry, Manifest, now, validate_path, validate_workspace_name, workspace_prefix
from chalicelib.errors import KaosError, NotFound, ValidationFailed
from chalicelib.provenance import Provenance
from chalicelib.repositories.snapshots import SnapshotRepository
from chalicelib.repositories.triggers import (CLOSED, DONE, FAILED, OPEN, AutoRetrain, PendingFile, RetrainBatch,
                                              TriggerRepository)
from chalicelib.repositories.workspaces import WorkspaceRepository
from chalicelib.snapshots import Snapshots
from chalicelib.training import Inputs, Training

log = logging.getLogger("kaos.triggers")

# The batch window: a retraining starts WINDOW_SECONDS after the first file of a burst; every file that arrives
# meanwhile joins it. Long enough for a `kaos data push` of many files, short enough to feel immediate.
WINDOW_SECONDS = 10
# A burst that keeps arriving (or whose events are delivered slowly) keeps its batch open: ProcessBatch closes it only
# after WINDOW_SECONDS without a new file, but at most MAX_WINDOW_SECONDS after it opened, so a steady trickle still
# retrains. The state machine retries ProcessBatch on BatchStillFilling every WINDOW_SECONDS (cdk/triggers.py).
MAX_WINDOW_SECONDS = 300
# S3's LastModified is in whole seconds and the Lambda's clock is not S3's: the sweep looks this much further back.
CLOCK_SLACK_SECONDS = 2
INCOMING = "incoming/"
CHANNEL = "training"
# Jobs and snapshots made by a trigger are created by this principal (the job's `sources` say why).
TRIGGER_USER = "kaos:auto-retrain"
_KEY = re.compile(r"^ws/([^/]+)/incoming/(.+)$", re.DOTALL)
_JOIN_ATTEMPTS = 5
RECENT_BATCHES = 10
# Reads of a batch just named by the pointer: 20 x 50 ms covers the gap between a transaction's items.
_POINTER_READS = 20
_POINTER_WAIT_SECONDS = 0.05


class BatchStillFilling(KaosError):
    """Files joined the batch less than WINDOW_SECONDS ago; the state machine retries this (debounce)."""

    code = "BatchStillFilling"


class BatchNotReady(KaosError):
    """The previous batch of the workspace is still being processed; the state machine retries this, and when its
    retries run out the batch is marked stalled (never failed): the batch ahead processes it once done."""

    code = "BatchNotReady"


def incoming_prefix(workspace: str) -> str:
    return f"{workspace_prefix(workspace)}{INCOMING}"


def incoming_file(key: str) -> tuple[str, str]:
    """(workspace, path) of a key under `ws/<workspace>/incoming/`; ValidationFailed saying what is wrong."""
    match = _KEY.match(key)
    if match is None:
        raise ValidationFailed("key is outside ws/<workspace>/incoming/")
    return validate_workspace_name(match.group(1)), validate_path(match.group(2), "path")


def execution_name(workspace: str, batch_id: str) -> str:
    return f"retrain-{workspace}-{batch_id}"


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
    def __init__(self, *, settings: Settings, store: ObjectStore, executions: Executions,
                 repository: TriggerRepository, workspaces: WorkspaceRepository, latest: SnapshotRepository,
                 snapshots: Snapshots, provenance: Provenance, training: Training) -> None:
        self.settings = settings
        self.store = store
        self.executions = executions
        self.repository = repository
        self.workspaces = workspaces
        self.latest = latest
        self.snapshots = snapshots
        self.provenance = provenance
        self.training = training

    # --- settings (API) ------------------------------------------------------------------------------------
    def set_enabled(self, workspace: str, user: str, enabled: bool) -> dict[str, Any]:
        """Any member may toggle: members may already deploy, and auto-retrain only re-deploys the latest inputs."""
        self.repository.set_config(workspace, AutoRetrain(enabled, user, now()))
        return self.status(workspace)

    def status(self, workspace: str) -> dict[str, Any]:
        config = self.repository.config(workspace)
        return {
            "workspace": workspace, "enabled": bool(config and config.enabled),
            "updated_by": config.updated_by if config else None, "updated_at": config.updated_at if config else None,
            "window_seconds": WINDOW_SECONDS, "incoming_prefix": incoming_prefix(workspace),
            "batches": [self.describe(b) for b in self.repository.recent(workspace, RECENT_BATCHES)],
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
    def describe(batch: RetrainBatch) -> dict[str, Any]:
        return {"id": batch.batch_id, "status": batch.status, "opened_at": batch.opened_at,
                "closed_at": batch.closed_at, "ended_at": batch.ended_at, "files": batch.files,
                "snapshot": batch.snapshot, "previous_snapshot": batch.previous_snapshot, "job": batch.job,
                "skipped": batch.skipped, "reason": batch.reason}

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
        workspace, path = incoming_file(key)
        config = self.repository.config(workspace)
        if config is None or not config.enabled:
            log.info("auto-retrain is off in %s: %s starts nothing", workspace, key)
            return {"ignored": "auto-retrain off", "key": key}
        fid = file_id(bucket, key, version, etag)
        for _ in range(_JOIN_ATTEMPTS):
            if self.repository.taken_by(workspace, fid) is not None:
                # A late duplicate (the file's batch may be closed by now) must not open a new, empty batch.
                return self._duplicate(workspace, key, fid)
            batch = self._open_batch(workspace)
            pending = PendingFile(fid, key, path, version if version and version != "null" else None,
                                  (etag or "").strip('"') or None, sequencer, now())
            if not self.repository.join(workspace, batch.batch_id, pending):
                if self.repository.taken_by(workspace, fid) is not None:
                    return self._duplicate(workspace, key, fid)
                continue  # the batch closed meanwhile: join (or open) the next one
            self._ensure_started(workspace, batch)
            return {"pending": key, "path": path, "batch": batch.batch_id}
        raise RuntimeError(f"{key}: could not join a batch after {_JOIN_ATTEMPTS} attempts")

    def _duplicate(self, workspace: str, key: str, fid: str) -> dict[str, Any]:
        """A duplicate delivery: the file is already in a batch; make sure that batch's run started (the first
        delivery may have failed after its transaction)."""
        batch_id = self.repository.taken_by(workspace, fid)
        assert batch_id is not None  # dedupe rows are never deleted but with the workspace
        taken = self.repository.batch(workspace, batch_id)
        if taken is not None:
            self._ensure_started(workspace, taken)
        return {"duplicate": key, "batch": batch_id}

    def _ignored(self, bucket: str, key: str, kind: str) -> dict[str, Any] | None:
        reason = None
        if kind and kind != "Object Created":
            reason = f"event type {kind!r}"
        elif bucket != self.store.bucket:
            reason = f"bucket {bucket!r} is not the kaos data bucket"
        else:
            try:
                workspace, _ = incoming_file(key)
            except ValidationFailed as exc:
                reason = exc.message
            else:
                if self.workspaces.get(workspace) is None:
                    reason = f"workspace {workspace!r} does not exist"
        if reason is None:
            return None
        if key.startswith("ws/") and INCOMING not in key:
            log.debug("ignored s3://%s/%s: %s", bucket, key, reason)  # the workspace's own writes: routine
        else:
            log.warning("ignored s3://%s/%s: %s", bucket, key, reason)
        return {"ignored": reason, "key": key}

    def _open_batch(self, workspace: str) -> RetrainBatch:
        """The workspace's open batch, opening one (conditionally on the pointer it replaces) if none is open."""
        pointer = self.repository.pointer(workspace)
        current = self._pointed(workspace, pointer)
        if current is not None and current.status == OPEN:
            return current
        batch_id = _new_batch_id()
        if current is not None and batch_id <= current.batch_id:
            batch_id = f"{int(current.batch_id) + 1:013d}"
        batch = RetrainBatch(workspace, batch_id, OPEN, now(), previous=pointer)
        if not self.repository.open(batch, pointer):
            # Another delivery opened a batch first: join it.
            other = self._pointed(workspace, self.repository.pointer(workspace))
            if other is None:
                raise RuntimeError(f"{workspace}: the open-batch pointer changed but names no batch")
            return other
        log.info("opened batch %s in %s", batch_id, workspace)
        return batch

    def _pointed(self, workspace: str, pointer: str | None) -> RetrainBatch | None:
        """The batch the pointer names. The pointer and the batch are written in one transaction, but a reader
        can see the pointer before the batch (moto applies a transaction item by item); treating that as "no
        batch" would open a second, empty batch that nobody runs. So wait briefly for it instead."""
        if pointer is None:
            return None
        for _ in range(_POINTER_READS):
            batch = self.repository.batch(workspace, pointer)
            if batch is not None:
                return batch
            time.sleep(_POINTER_WAIT_SECONDS)
        raise RuntimeError(f"batch {pointer} named by the open-batch pointer is not readable yet")

    def _ensure_started(self, workspace: str, batch: RetrainBatch) -> None:
        if batch.started:
            return
        self.executions.start(self.settings.retrain_state_machine_arn, execution_name(workspace, batch.batch_id),
                              {"workspace": workspace, "batch": batch.batch_id})
        self.repository.mark_started(workspace, batch.batch_id)

    # --- ProcessBatch ------------------------------------------------------------------------------------
    def process(self, workspace: str, batch_id: str) -> dict[str, Any]:
        """Closes the batch and turns it into one derived snapshot and one job; every step is idempotent. Then
        processes the batch behind it if that one stalled waiting for this one (see `fail`)."""
        batch = self.repository.batch(workspace, batch_id)
        if batch is None:
            return {"batch": batch_id, "status": "missing", "reason": "no such batch (workspace deleted?)"}
        if batch.status not in (DONE, FAILED):
            self._process(batch)
        self._take_over_stalled(workspace, batch_id)
        return self.describe(self.repository.batch(workspace, batch_id) or batch)

    def _process(self, batch: RetrainBatch) -> None:
        workspace, batch_id = batch.workspace, batch.batch_id
        if batch.status == OPEN:
            _still_filling(batch, batch.last_joined_at, "a file joined")
            _still_filling(batch, self._sweep(batch), "a file whose event is still on its way was uploaded")
            self.repository.close(workspace, batch_id, now())
        if self._waits(batch):
            raise BatchNotReady(f"batch {batch.previous} of {workspace} is still being processed")
        owner = self.workspaces.get(workspace)
        if owner is None or owner.killed_at is not None:
            return self._finish(batch, DONE, reason="the workspace no longer exists")
        if batch.base is None:
            latest = self.latest.latest_inputs(workspace)
            if latest is None or CHANNEL not in latest.data:
                return self._finish(batch, DONE, reason=f"no deploy with a {CHANNEL!r} data channel yet; deploy once "
                                                        "(kaos train deploy) and later uploads retrain it")
            self.repository.pin_base(workspace, batch_id, {"code": latest.code, "data": dict(latest.data),
                                                          "params": latest.params})
        pinned = self.repository.batch(workspace, batch_id)
        assert pinned is not None and pinned.base is not None
        base = pinned.base
        entries, skipped = self._collect(workspace, batch_id)
        if not entries:
            return self._finish(batch, DONE, skipped=skipped, reason="no file of the batch is left to add")
        previous_id = str(base["data"][CHANNEL])
        files = {f.path: f for f in self.snapshots.manifest(workspace, previous_id).files}
        files.update({f.path: f for f in entries})
        manifest = Manifest("data", tuple(files[p] for p in sorted(files)))
        snapshot, _ = self.snapshots.record(workspace, manifest, TRIGGER_USER)
        at = now()
        new_node, old_node = f"snapshot:{snapshot['id']}", f"snapshot:{previous_id}"
        self.provenance.add_node(workspace, new_node, "snapshot", {"kind": "data"}, at)
        if snapshot["id"] != previous_id:
            self.provenance.add_node(workspace, old_node, "snapshot", {"kind": "data"}, at)
            self.provenance.add_edge(workspace, new_node, "derived", old_node, at)
        data = {**base["data"], CHANNEL: snapshot["id"]}
        inputs = Inputs(str(base["code"]), tuple(sorted(data.items())), dict(base["params"]), {},
                        {"code": "latest", "data": "auto-retrain", "params": "latest"})
        job, _ = self.training.deploy(workspace, owner.created_at, TRIGGER_USER, inputs)
        return self._finish(batch, DONE, snapshot=snapshot["id"], previous_snapshot=previous_id, job=job.job_id,
                            files=len(entries), skipped=skipped)

    def _waits(self, batch: RetrainBatch) -> bool:
        """Whether the batch ahead (batches derive in order) is still open or being processed."""
        if not batch.previous:
            return False
        previous = self.repository.batch(batch.workspace, batch.previous)
        return previous is not None and previous.status in (OPEN, CLOSED)

    def fail(self, workspace: str, batch_id: str, error: dict[str, Any]) -> dict[str, Any]:
        """The state machine's catch. A batch whose wait for the batch ahead outlasted the retries is queued, not
        failed: marked stalled, it is processed by the batch ahead once that is done (or here, if it is done by
        now). Any other error ends the batch FAILED with the reason (its successors go on)."""
        batch = self.repository.batch(workspace, batch_id)
        if batch is None or batch.status in (DONE, FAILED):
            return {"batch": batch_id, "status": batch.status if batch else "missing"}
        if error.get("Error") == BatchNotReady.__name__:
            if not self.repository.stall(workspace, batch_id):  # it ended meanwhile (the batch ahead took it over)
                return self.describe(self.repository.batch(workspace, batch_id) or batch)
            if not self._waits(batch):  # the batch ahead finished while this one gave up: nobody else will run it
                return self.process(workspace, batch_id)
            log.info("batch %s of %s waits for batch %s; it will process this one", batch_id, workspace,
                     batch.previous)
            return {**self.describe(batch), "stalled": True}
        reason = f"{error.get('Error', 'Error')}: {error.get('Cause', '')}"[:2000]
        self._finish(batch, FAILED, reason=reason)
        self._take_over_stalled(workspace, batch_id)
        return self.describe(batch)

    def _take_over_stalled(self, workspace: str, batch_id: str) -> None:
        """Processes the batch behind this (ended) one if it stalled waiting for it; in turn, that one takes over
        its own stalled successor, so a queue drains in order."""
        successor = self.repository.successor(workspace, batch_id)
        if successor is None or not successor.stalled or successor.status not in (OPEN, CLOSED):
            return
        log.info("batch %s of %s takes over the stalled batch %s", batch_id, workspace, successor.batch_id)
        try:
            self.process(workspace, successor.batch_id)
        except KaosError as exc:  # its own failure, not this batch's: it ends FAILED, this task succeeds
            self._finish(successor, FAILED, reason=f"{exc.code}: {exc.message}"[:2000])

    def _collect(self, workspace: str, batch_id: str) -> tuple[list[FileEntry], list[dict[str, str]]]:
        """The batch's files, newest per path; each made a blob (blobs.ingest)."""
        uploads: dict[str, list[PendingFile]] = {}
        for row in self.repository.files(workspace, batch_id):
            uploads.setdefault(row.path, []).append(row)
        newest = {path: self._newest(rows) for path, rows in uploads.items()}
        entries: list[FileEntry] = []
        skipped: list[dict[str, str]] = []
        for path in sorted(newest):
            row = newest[path]
            if self.store.size(row.key) is None:
                reason = "deleted before processing (HeadObject 404)"
            else:
                try:
                    blob = ingest(self.store, workspace, row.key, row.version)
                except NotFound:
                    reason = "this version was deleted before processing"
                else:
                    entries.append(FileEntry(row.path, blob.sha256, blob.size))
                    continue
            log.warning("skipped %s in %s: %s", row.key, workspace, reason)
            skipped.append({"path": path, "key": row.key, "reason": reason})
        return entries, skipped

    def _newest(self, rows: list[PendingFile]) -> PendingFile:
        """The newest upload of one path: by S3's order of the key's versions when every row names a version (a
        file the sweep joined has no event sequencer to compare), else by the events' sequencers."""
        if len(rows) > 1 and all(row.version for row in rows):
            rank = {version: i for i, version in enumerate(self.store.version_order(rows[0].key))}
            listed = [row for row in rows if row.version in rank]
            if listed:
                return min(listed, key=lambda row: rank[row.version])
        return max(rows, key=_order)

    def _sweep(self, batch: RetrainBatch) -> str | None:
        """Joins to the closing batch every file uploaded under the workspace's incoming/ whose event has not been
        handled: S3 is the record of what arrived, an event only its prompt, and a delivery may come late (a burst
        of deliveries queues for the function's concurrency) or, after EventBridge's retries, never. Without this
        a burst whose deliveries trail by more than the window split into two retrainings. Files uploaded before
        the batch ahead opened are that batch's (or were uploaded while auto-retrain was off): not swept.
        Returns when the newest file it joined was uploaded (None: it joined none).

        Cost: one ListObjectVersions page per 1,000 versions under incoming/ (S3 cannot list by time) and one
        DynamoDB Query per batch (this one and the one ahead); a GetItem only for a recent file of neither."""
        workspace = batch.workspace
        config = self.repository.config(workspace)
        if config is None or not config.enabled:
            return None
        ahead = self.repository.batch(workspace, batch.previous) if batch.previous else None
        horizon = datetime.fromisoformat(max(config.updated_at, ahead.opened_at if ahead else "")) \
            - timedelta(seconds=CLOCK_SLACK_SECONDS)
        known = {row.file_id for b in (batch, ahead) if b is not None
                 for row in self.repository.files(workspace, b.batch_id)}
        newest: datetime | None = None
        for listed in self.store.current_versions(incoming_prefix(workspace)):
            fid = file_id(self.store.bucket, listed.key, listed.version, listed.etag)
            if listed.last_modified < horizon or fid in known:
                continue
            try:
                _, path = incoming_file(listed.key)
            except ValidationFailed:
                continue  # OnUpload ignores it too
            if self.repository.taken_by(workspace, fid) is not None:
                continue
            if not self.repository.join(workspace, batch.batch_id, PendingFile(
                    fid, listed.key, path, listed.version, listed.etag or None, None, now())):
                if self.repository.taken_by(workspace, fid) is not None:
                    continue  # its event joined it meanwhile
                # Closed meanwhile (a retried ProcessBatch of the same batch): the next batch sweeps the rest.
                log.info("batch %s of %s closed during its sweep", batch.batch_id, workspace)
                break
            log.info("batch %s of %s: swept %s (its event has not arrived)", batch.batch_id, workspace, listed.key)
            newest = max(newest or listed.last_modified, listed.last_modified)
        return None if newest is None else newest.isoformat()

    def _finish(self, batch: RetrainBatch, status: str, **fields: Any) -> None:
        self.repository.finish(batch, status, now(), **fields)
        log.info("batch %s of %s: %s %s", batch.batch_id, batch.workspace, status, fields)


def _still_filling(batch: RetrainBatch, last_upload: str | None, what: str) -> None:
    """BatchStillFilling if `last_upload` is less than WINDOW_SECONDS ago and the batch may stay open longer."""
    quiet, age = _seconds_since(last_upload), _seconds_since(batch.opened_at)
    if quiet is not None and quiet < WINDOW_SECONDS and (age is None or age < MAX_WINDOW_SECONDS):
        raise BatchStillFilling(f"batch {batch.batch_id} of {batch.workspace}: {what} {quiet:.1f} s ago")


def _seconds_since(stamp: str | None) -> float | None:
    if not stamp:
        return None
    return (datetime.now(UTC) - datetime.fromisoformat(stamp)).total_seconds()


def _order(row: PendingFile) -> tuple[str, str]:
    # S3 sequencers of one key grow with time; compare them at equal length, then by arrival.
    return ((row.sequencer or "").rjust(32, "0"), row.received_at)
