"""Batch (processing) jobs on AWS Batch: submission by fingerprint, the pipeline's prepare and record tasks.

A batch job runs a command over one data snapshot and its output becomes a new data snapshot, usable as a
training channel. It is a job row of kind "batch", so the jobs list/info/kill routes serve it unchanged; its
output snapshot is stored in `model_uri` as `snapshot:<id>` (the `model` field of the job's description).

Container contract (implemented by the job definition's bootstrap command, see cdk/batch.py): the code snapshot
is unpacked into `KAOS_WORK_DIR` (the command's working directory), the input snapshot is downloaded into
`KAOS_INPUT_DIR`, the command runs with `/bin/sh -c`, and after exit 0 every file under `KAOS_OUTPUT_DIR` is
uploaded below `KAOS_OUTPUT_URI`. Prepare passes the three S3 pointers and the command as environment overrides.

Per-file jobs (`per_file: true`, optional `glob`): every input file matching the glob is a datum, and the command
runs once per datum with `KAOS_DATUM` (its path), `KAOS_INPUT_FILE` and its own `KAOS_OUTPUT_DIR`. A datum's
cache key is the sha256 of (its path, its content, the code snapshot, the command, the image); once a datum's
outputs are recorded, `ws/<ws>/datums/<key>.json` lists them (path, sha256, size of blobs the workspace holds),
and that marker is the cache entry. Prepare looks every datum up in the cache without downloading anything (the
manifest carries the content hashes), materializes only the datums to process, and writes the plan the container
reads (`KAOS_DATUMS_URI`: the datums to process). The container uploads datum i's outputs below
`<output prefix>i/` and then writes `<output prefix>i.done`; Record registers them, writes their markers
(written by the Lambda, never by user code, so a job cannot forge a cache entry), and commits the union of new
and reused outputs as the output snapshot. A failed job still caches the datums it finished, so its resume (or
the job on fixed data) does not redo them. The job's fingerprint still covers the whole input snapshot.
"""
from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from chalicelib import limits
from chalicelib import cost, lineage_events
from chalicelib.tenancy import job_definition_name
from chalicelib.adapters import ObjectStore
from chalicelib.config import Settings
from chalicelib.logs import JobLogs
from chalicelib.domain import (FileEntry, JobSpec, Resources, attempt_name, canonical_json, now, params_manifest,
                               sha256_hex, validate_path, workspace_prefix)
from chalicelib.errors import InputInvalid, IntegrityError, KaosError, NotFound, ValidationFailed
from chalicelib.lifecycle import Jobs, job_prefix
from chalicelib.repositories.jobs import TERMINAL, Job, describe
from chalicelib.repositories.workspaces import IncarnationGone, WorkspaceRepository
from chalicelib.provenance import Provenance
from chalicelib.blobs import ingest
from chalicelib.repositories.snapshots import Derived
from chalicelib.snapshots import Snapshots, materialized_prefix
from chalicelib.pipeline import failure_reason
from chalicelib.training import snapshot_ref
from chalicelib.workspaces import Fence

KIND = "batch"
INPUT_CHANNEL = "input"
# Commands tried, in order, when the submission names none: the first whose file is in the code snapshot.
DEFAULT_COMMANDS = (("process.py", "python process.py"), ("main.py", "python main.py"),
                    ("process.sh", "sh process.sh"))
MAX_COMMAND_CHARS = 4096
# AWS Batch refuses attempt timeouts under 60 seconds.
MIN_RUNTIME_SECONDS = 60
# Fargate resources of the job definition (cdk/batch.py); recorded in the spec so the fingerprint names them.
FARGATE_RESOURCES = "fargate-1vcpu-2048mib"
FARGATE_STORAGE_GB = 21
LOG_TAIL_LINES = 20
FAILURE_REASON_CHARS = 2000
MAX_GLOB_CHARS = 256
# Parallel S3 calls of Prepare (cache lookups, copies) and Record (hashing outputs, writing markers).
DATUM_CONCURRENCY = 16
# Bump when the meaning of a datum's outputs changes (the bootstrap's per-datum contract): old entries go unused.
DATUM_KEY_VERSION = 1
DONE_SUFFIX = ".done"


def output_prefix(workspace: str, job_id: str, attempt: int) -> str:
    """Per attempt, so files a failed attempt managed to upload never leak into a later attempt's snapshot."""
    return f"{job_prefix(workspace, job_id)}output/{attempt}/"


def plan_key(workspace: str, job_id: str, attempt: int) -> str:
    """The datums one attempt of a per-file job processes; the job role may read it (cdk/batch.py)."""
    return f"{job_prefix(workspace, job_id)}datums/{attempt}.json"


def datum_marker_key(workspace: str, key: str) -> str:
    return f"{workspace_prefix(workspace)}datums/{key}.json"


def datum_key(entry: FileEntry, code: str, command: str, image: str) -> str:
    """What a datum's outputs depend on. The path is part of it: the command sees it as KAOS_DATUM (and may name
    outputs after it). Remote files without a sha256 are named by URL and pinned version."""
    content = entry.sha256 or f"{entry.url}#{entry.version}"
    return sha256_hex(canonical_json({"v": DATUM_KEY_VERSION, "path": entry.path, "content": content,
                                      "code": code, "command": command, "image": image}).encode())


class Batch:
    """Submission of batch jobs (the API)."""

    def __init__(self, *, settings: Settings, jobs: Jobs, snapshots: Snapshots) -> None:
        self._settings = settings
        self._jobs = jobs
        self.snapshots = snapshots

    def submit(
        self, workspace: str, incarnation: str, user: str, request: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """Creates the job for these inputs, or returns the existing one: the fingerprint is the identity.
        `max_runtime_seconds` is the Batch attempt timeout: AWS Batch refuses less than 60 seconds."""
        settings = self._settings
        code = snapshot_ref(self.snapshots, workspace, request.get("code"), "code", "code")
        data = snapshot_ref(self.snapshots, workspace, request.get("data"), "data", "data")
        command = request.get("command")
        if command is not None and (not isinstance(command, str) or not command.strip()
                                    or len(command) > MAX_COMMAND_CHARS or "\x00" in command):
            raise ValidationFailed(f"command: must be a non-empty shell command of at most {MAX_COMMAND_CHARS} "
                                   "characters")
        runtime = request.get("max_runtime_seconds", settings.batch_max_runtime_seconds)
        if not isinstance(runtime, int) or not MIN_RUNTIME_SECONDS <= runtime <= limits.MAX_RUNTIME_SECONDS:
            raise ValidationFailed(
                f"max_runtime_seconds: must be an integer from {MIN_RUNTIME_SECONDS} to {limits.MAX_RUNTIME_SECONDS}"
            )
        per_file, glob = request.get("per_file", False), request.get("glob")
        if not isinstance(per_file, bool):
            raise ValidationFailed("per_file: must be true or false")
        if glob is not None and (not per_file or not isinstance(glob, str) or not glob.strip()
                                 or len(glob) > MAX_GLOB_CHARS or "\x00" in glob):
            raise ValidationFailed(f"glob: a pattern of at most {MAX_GLOB_CHARS} characters, only with per_file")
        # The command is an input like params are for training: content-addressed, so it is in the fingerprint.
        # So is the per-file mode (and its glob); a whole-input job's params stay exactly {"command": ...}.
        document: dict[str, Any] = {"command": command} if command else {}
        if per_file:
            document.update({"per_file": True, "glob": glob or "*"})
        manifest, body = params_manifest(document)
        params_snapshot = self.snapshots.put_small(workspace, manifest, {manifest.files[0].sha256: body}, user)
        spec = JobSpec(
            workspace=workspace, incarnation=incarnation, kind=KIND, code=code, data=((INPUT_CHANNEL, data),),
            params=params_snapshot["id"], environment=settings.batch_image,
            resources=Resources(instance_type=FARGATE_RESOURCES, instance_count=1, volume_gb=FARGATE_STORAGE_GB,
                                max_runtime_seconds=runtime),
        )
        job, created = self._jobs.register(spec, incarnation, user, {})
        self._jobs.start(job)
        return describe(job), created


class BatchPipeline:
    """The batch pipeline's tasks: Prepare (the SubmitJob pieces) and Record (the output snapshot or the failure)."""

    def __init__(self, *, settings: Settings, jobs: Jobs, workspaces: WorkspaceRepository, store: ObjectStore,
                 snapshots: Snapshots, provenance: Provenance, logs: Callable[[], JobLogs]) -> None:
        self._settings = settings
        self._jobs = jobs
        self._workspaces = workspaces
        self.store = store
        self.snapshots = snapshots
        self.provenance = provenance
        # Only Record archives logs: Prepare's Lambda is not configured with the log group (built on first use).
        self._logs = logs
        # While Record runs: the job's workspace incarnation, checked before each write (see `record`), and when
        # Record started (its duration is part of the job's cost).
        self._fence: Fence | None = None
        self._since = 0.0

    def prepare(self, workspace: str, job_id: str) -> dict[str, Any]:
        """Materializes the inputs and returns the pieces of the SubmitJob request the state machine sends."""
        since = cost.started()
        settings = self._settings
        item = self._jobs.repository.get(workspace, job_id)
        if item.status in TERMINAL:
            raise InputInvalid(f"job {job_id} is already {item.status}")
        spec = item.spec
        code_uri, manifest = self.snapshots.sourcedir(workspace, spec["code"])
        params = self.snapshots.read_params(workspace, spec["params"])
        command = params.get("command")
        if not command:
            paths = {f.path for f in manifest.files}
            command = next((c for entry, c in DEFAULT_COMMANDS if entry in paths), None)
            if command is None:
                names = ", ".join(entry for entry, _ in DEFAULT_COMMANDS)
                raise InputInvalid(f"code: no command given and no default entry point found; add one of {names}")
        attempt = int(item.attempt)
        data = spec["data"][INPUT_CHANNEL]
        run = True
        environment = {
            "KAOS_OUTPUT_URI": self.store.uri(output_prefix(workspace, job_id, attempt)),
            "KAOS_CODE_URI": code_uri,
            "KAOS_COMMAND": command,
            "KAOS_JOB_ID": job_id,
        }
        if params.get("per_file"):
            plan = self._plan(workspace, spec, command, str(params.get("glob") or "*"))
            # Record reads the plan back (its `reused` outputs become the job's): recorded, so it is checked then.
            self.snapshots.put_recorded_json(workspace, plan_key(workspace, job_id, attempt), plan)
            environment["KAOS_INPUT_URI"] = self.store.uri(materialized_prefix(workspace, data))
            environment["KAOS_DATUMS_URI"] = self.store.uri(plan_key(workspace, job_id, attempt))
            # Nothing new to process: the state machine skips the container and Record reuses every output.
            run = bool(plan["process"])
        else:
            environment["KAOS_INPUT_URI"] = self.snapshots.materialize(workspace, data)
        name = attempt_name(job_id, attempt)
        request = {
            "JobName": name,
            "JobQueue": settings.batch_job_queue,
            # The workspace's own definition: its job role is the workspace role (chalicelib/tenancy.py).
            "JobDefinition": job_definition_name(workspace, str(spec.get("incarnation", ""))),
            "ContainerOverrides": {
                "Environment": [{"Name": k, "Value": v} for k, v in sorted(environment.items())],
            },
            "Timeout": {"AttemptDurationSeconds": int(spec["resources"]["max_runtime_seconds"])},
        }
        at = now()
        self._jobs.repository.set_status(item, "RUNNING", at, started_at=at, usage=cost.prepared_usage(since))
        lineage_events.started(item, self._settings)
        return {"batch": request, "run": run}

    def _plan(self, workspace: str, spec: dict[str, Any], command: str, glob: str) -> dict[str, Any]:
        """Splits the input's datums into cached (their markers' outputs are reused) and to process (copied to
        the materialized snapshot prefix: k copies, not N; the prefix stays valid for any later job)."""
        data = spec["data"][INPUT_CHANNEL]
        entries = [f for f in self.snapshots.manifest(workspace, data).files if fnmatch.fnmatchcase(f.path, glob)]
        if not entries:
            raise InputInvalid(f"per-file: no input file matches the glob {glob!r}")
        keys = [datum_key(f, spec["code"], command, str(spec["environment"])) for f in entries]
        marker_keys = [datum_marker_key(workspace, k) for k in keys]
        # Only entries kaos recorded are cache hits (one BatchGetItem per 100); each is checked against its record.
        records = self.snapshots.recorded(workspace, marker_keys)
        with ThreadPoolExecutor(max_workers=DATUM_CONCURRENCY) as pool:
            markers = list(pool.map(lambda key: self._marker(workspace, key, records.get(key)), marker_keys))
        todo = [(i, f, k) for i, (f, k, m) in enumerate(zip(entries, keys, markers, strict=True)) if m is None]
        self.snapshots.materialize_entries(workspace, data, [f for _, f, _ in todo])
        return {
            "glob": glob,
            "process": [{"i": i, "path": f.path, "key": k} for i, f, k in todo],
            "reused": [{"path": f.path, "key": k, "files": m["files"]}
                       for f, k, m in zip(entries, keys, markers, strict=True) if m is not None],
        }

    def _marker(self, workspace: str, key: str, record: Derived | None) -> dict[str, Any] | None:
        """A datum's cache entry, or None (a miss) when kaos recorded none or it is gone. One whose bytes are not
        the recorded ones fails the job (IntegrityError); its record is dropped, so a resume processes the datum."""
        if record is None:
            return None
        try:
            marker, _ = self.snapshots.read_recorded_json(workspace, key, "a datum cache entry", record)
        except NotFound:
            return None
        except IntegrityError as exc:
            self.snapshots.forget_derived(workspace, key)
            raise IntegrityError(f"{exc.message}. The job was not run; the entry was dropped, so resuming the job "
                                 "processes the datum again") from None
        return marker if isinstance(marker, dict) and isinstance(marker.get("files"), list) else None

    def record(
        self, workspace: str, job_id: str, execution: str, outcome: str, detail: dict[str, Any]
    ) -> dict[str, Any]:
        item = self._jobs.to_record(workspace, job_id, execution)
        if isinstance(item, dict):
            return item
        # Every write below (log, output blobs, datum markers, snapshot, provenance) first checks that the workspace
        # is still the job's incarnation, and the job's end is fenced by it: a kill drops the outcome.
        self._fence = Fence(self._workspaces, workspace, item.spec.get("incarnation"))
        self._since = cost.started()
        try:
            self._fence_check()
            return self._record(workspace, item, outcome, detail)
        except IncarnationGone:
            return {**describe(item), "dropped": True}
        finally:
            self._fence = None

    def _fence_check(self) -> None:
        if self._fence is not None:
            self._fence.check()

    def _record(self, workspace: str, item: Job, outcome: str, detail: dict[str, Any]) -> dict[str, Any]:
        job_id = item.job_id
        if outcome == "Completed":
            self._archive_log(workspace, job_id, _log_stream(detail))
            if self._per_file(workspace, item):
                return self._record_datums(workspace, item)
            return self._record_output(workspace, item)
        reason, stream = self._failure(detail)
        metrics = None
        if self._per_file(workspace, item):
            try:  # the datums that finished stay cached, so a resume (or fixed data) does not redo them
                metrics = self._harvest(workspace, item)[1]
            except NotFound:  # Prepare failed before writing the plan: nothing ran
                pass
            except IncarnationGone:
                raise
            except KaosError as exc:
                reason = f"{reason}\n(finished datums could not be cached: {exc})"
        lines = self._archive_log(workspace, job_id, stream)
        tail = "\n".join(lines).strip()
        if tail and tail not in reason:
            reason = f"{reason}\n{tail}"
        extra = {"metrics": metrics} if metrics else {}
        self._jobs.finish(item, "FAILED", failure_reason=reason[-FAILURE_REASON_CHARS:], ended_at=now(),
                          usage=cost.recorded_usage(item.usage, {}, self._since), **extra)
        lineage_events.ended(item, self._settings)
        return describe(item)

    def _per_file(self, workspace: str, item: Job) -> bool:
        return bool(self.snapshots.read_params(workspace, item.spec["params"]).get("per_file"))

    def _harvest(self, workspace: str, item: Job) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Registers the outputs of every datum this attempt finished (its `.done` object exists) as blobs and
        writes their cache markers. Returns each datum's outputs (plan order: reused, then processed) and counts."""
        attempt = int(item.attempt)
        plan, _ = self.snapshots.read_recorded_json(workspace, plan_key(workspace, item.job_id, attempt),
                                     f"the datum plan of {item.job_id} (attempt {attempt})")
        prefix = output_prefix(workspace, item.job_id, attempt)
        by_datum: dict[str, list[str]] = {}
        done: set[str] = set()
        for key in self.store.keys(prefix):
            rest = key[len(prefix):]
            if "/" not in rest and rest.endswith(DONE_SUFFIX):
                done.add(rest[: -len(DONE_SUFFIX)])
            elif "/" in rest:
                index, _, path = rest.partition("/")
                by_datum.setdefault(index, []).append(path)
        finished = [d for d in plan["process"] if str(d["i"]) in done]

        def register(datum: dict[str, Any]) -> dict[str, Any]:
            index = str(datum["i"])
            files = [self._register_blob(workspace, f"{prefix}{index}/{path}", path)
                     for path in sorted(by_datum.get(index, []))]
            self._fence_check()
            self.snapshots.put_recorded_json(workspace, datum_marker_key(workspace, datum["key"]),
                              {"path": datum["path"], "files": files, "job": item.job_id})
            return {"path": datum["path"], "files": files}

        with ThreadPoolExecutor(max_workers=DATUM_CONCURRENCY) as pool:
            processed = list(pool.map(register, finished))
        reused = [{"path": d["path"], "files": d["files"]} for d in plan["reused"]]
        metrics = {"datums": len(plan["process"]) + len(reused), "datums_processed": len(processed),
                   "datums_reused": len(reused)}
        if len(finished) < len(plan["process"]):
            metrics["datums_unfinished"] = len(plan["process"]) - len(finished)
        return reused + processed, metrics

    def _record_datums(self, workspace: str, item: Job) -> dict[str, Any]:
        """The output snapshot of a per-file job: the union of every datum's outputs, reused and new."""
        datums, metrics = self._harvest(workspace, item)
        if metrics.get("datums_unfinished"):
            raise InputInvalid(f"{metrics['datums_unfinished']} datum(s) were not processed although the job "
                               "succeeded")
        union: dict[str, tuple[dict[str, Any], str]] = {}
        for datum in datums:
            for f in datum["files"]:
                seen = union.get(f["path"])
                if seen is not None and seen[0]["sha256"] != f["sha256"]:
                    raise InputInvalid(f"datums {seen[1]!r} and {datum['path']!r} both wrote {f['path']!r} with "
                                       "different content; name outputs after $KAOS_DATUM")
                union[f["path"]] = (f, datum["path"])
        return self._commit_output(workspace, item, [f for f, _ in union.values()], metrics)

    def _record_output(self, workspace: str, item: Job) -> dict[str, Any]:
        """Registers every output object as a blob and records them as one data snapshot made by the job."""
        prefix = output_prefix(workspace, item.job_id, int(item.attempt))
        keys = sorted(self.store.keys(prefix))
        if not keys:
            raise InputInvalid("the batch job wrote no files to KAOS_OUTPUT_DIR, so there is no output snapshot")
        if len(keys) > limits.MAX_FILES_PER_SNAPSHOT:
            raise InputInvalid(f"the batch job wrote {len(keys)} files; a snapshot holds at most "
                               f"{limits.MAX_FILES_PER_SNAPSHOT}")
        files = [self._register_blob(workspace, key, key[len(prefix):]) for key in keys]
        return self._commit_output(workspace, item, files, None)

    def _commit_output(self, workspace: str, item: Job, files: list[dict[str, Any]],
                       metrics: dict[str, int] | None) -> dict[str, Any]:
        if not files:
            raise InputInvalid("the batch job wrote no files to KAOS_OUTPUT_DIR, so there is no output snapshot")
        if len(files) > limits.MAX_FILES_PER_SNAPSHOT:
            raise InputInvalid(f"the batch job wrote {len(files)} files; a snapshot holds at most "
                               f"{limits.MAX_FILES_PER_SNAPSHOT}")
        self._fence_check()
        snapshot, _ = self.snapshots.commit(workspace, "data", files, item.created_by, placed=True)
        if snapshot.get("status") == "pending":  # every blob was copied above; a pending answer is a lost race
            raise InputInvalid(f"output snapshot {snapshot['id']} is still missing blobs; retry the record step")
        at = now()
        node = f"snapshot:{snapshot['id']}"
        self.provenance.add_node(workspace, node, "snapshot", {"kind": "data"}, at)
        self.provenance.add_edge(workspace, f"job:{item.job_id}", "produced", node, at)
        extra = {"metrics": metrics} if metrics else {}
        try:
            self._jobs.finish(item, "COMPLETED", model_uri=node, ended_at=at,
                              usage=cost.recorded_usage(item.usage, {}, self._since), **extra)
        except IncarnationGone:  # the output snapshot's node may be shared with other jobs: only the edge goes
            self._jobs.retract_produced(workspace, item.job_id, node, node=False)
            raise
        lineage_events.ended(item, self._settings)
        return describe(item)

    def _register_blob(self, workspace: str, key: str, path: str) -> dict[str, Any]:
        """Streams the object once for its sha256, then copies it to its content address (unless present)."""
        validate_path(path, f"output {path!r}")
        self._fence_check()
        blob = ingest(self.store, workspace, key)
        return {"path": path, "sha256": blob.sha256, "size": blob.size}

    def _failure(self, error: dict[str, Any]) -> tuple[str, str | None]:
        """A readable reason and the log stream from a Catch result; the Cause of a failed `.sync` task is the
        DescribeJobs job (PascalCase as Step Functions spells it), anything else is a task error."""
        cause = error.get("Cause")
        try:
            job = json.loads(cause) if isinstance(cause, str) else None
        except ValueError:
            job = None
        if not isinstance(job, dict) or not _get(job, "Status"):
            return failure_reason(error), None
        container = _get(job, "Container") or {}
        exit_code = _get(container, "ExitCode")
        reason = f"batch job {_get(job, 'JobName') or ''} {_get(job, 'Status')}".replace("  ", " ")
        if exit_code is not None:
            reason += f" (exit code {exit_code})"
        status_reason = _get(job, "StatusReason")
        if status_reason:
            reason += f": {status_reason}"
        return reason, _log_stream(job)

    def _archive_log(self, workspace: str, job_id: str, stream: str | None) -> list[str]:
        """Keeps the job's log beside its outputs (CloudWatch retention is finite); returns its last lines."""
        if not stream:
            return []
        self._fence_check()
        return self._logs().archive(stream, job_prefix(workspace, job_id) + "log.txt", tail=LOG_TAIL_LINES)


def _get(document: Any, name: str) -> Any:
    """A member as Step Functions spells it (`StatusReason`) or as the Batch API does (`statusReason`)."""
    if not isinstance(document, dict):
        return None
    value = document.get(name)
    return document.get(name[:1].lower() + name[1:]) if value is None else value


def _log_stream(job: dict[str, Any]) -> str | None:
    stream = _get(_get(job, "Container"), "LogStreamName")
    return str(stream) if stream else None
