"""Training jobs: submission by fingerprint (exactly-once), the pipeline's prepare and record tasks, reads."""
from __future__ import annotations

import base64
import json
import logging
import tarfile
import tomllib
from dataclasses import dataclass, replace
from typing import IO, Any, cast

from pynamodb.exceptions import DoesNotExist, TransactWriteError, UpdateError
from pynamodb.expressions.update import Action

from chalicelib import config
from chalicelib.tenancy import role_arn
from chalicelib import lineage_events
from chalicelib.logs import JobLogs
from chalicelib.adapters import (BatchJobs, Executions, LogReader, ObjectStore, TrainingJobs, clients,
                                 execution_arn_for)
from chalicelib.domain import (
    JobSpec,
    Manifest,
    Resources,
    attempt_name,
    is_grid,
    environment_id,
    hyperparameters,
    params_manifest,
    parse_params,
    validate_channel,
    sha256_hex,
    validate_sha256,
)
from chalicelib.errors import Conflict, InputInvalid, NotFound, ValidationFailed
from chalicelib.tables import JobItem, LatestInputsItem, _Item, node_key, ws_key
from chalicelib.provenance import Provenance
from chalicelib.blobs import HashingReader, blob_key, sha256_of
from chalicelib.snapshots import Snapshots
from chalicelib.workspaces import (IncarnationGone, fenced_write, incarnation_alive, item_condition_failed, now,
                                   workspace_prefix)

log = logging.getLogger("kaos.training")

# Entry points tried, in order, when the code snapshot does not name one (SageMaker's `sagemaker_program`).
DEFAULT_ENTRY_POINTS = ("train.py", "train.sh", "train")
TERMINAL = ("COMPLETED", "FAILED", "KILLED")
METRICS_FILE = "metrics.json"
CONFIG_FILE = "kaos.toml"


@dataclass(frozen=True)
class Inputs:
    """A submission's inputs after filling the unspecified ones from the workspace's latest."""

    code: str
    data: tuple[tuple[str, str], ...]
    params: dict[str, Any]
    resources: dict[str, Any]
    sources: dict[str, str]
    # Reproductions only (chalicelib/reproduce.py): the original's environment and full resources, and its id.
    environment: str = ""
    reproduces: str = ""


def job_prefix(workspace: str, job_id: str) -> str:
    return f"{workspace_prefix(workspace)}jobs/{job_id}/"


class Training:
    def __init__(
        self,
        store: ObjectStore | None = None,
        executions: Executions | None = None,
        logs: JobLogs | None = None,
        training_jobs: TrainingJobs | None = None,
    ) -> None:
        self._training_jobs = training_jobs
        self._store = store
        self._executions = executions
        self._logs = logs
        self.provenance = Provenance()

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            settings = config.settings()
            self._store = ObjectStore(clients().s3, settings.bucket, platform_buckets=settings.platform_buckets)
        return self._store

    @property
    def snapshots(self) -> Snapshots:
        return Snapshots(self.store)

    @property
    def executions(self) -> Executions:
        if self._executions is None:
            self._executions = Executions(clients().stepfunctions)
        return self._executions

    @property
    def training_jobs(self) -> TrainingJobs:
        if self._training_jobs is None:
            self._training_jobs = TrainingJobs(clients().sagemaker)
        return self._training_jobs

    @property
    def logs(self) -> JobLogs:
        if self._logs is None:
            reader = LogReader(clients().logs, config.settings().training_log_group)
            self._logs = JobLogs(store=self.store, reader=reader)
        return self._logs

    # --- submission -------------------------------------------------------------------------------------
    def submit(
        self, workspace: str, incarnation: str, user: str, request: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """Creates the job for these inputs, or returns the existing one: the fingerprint is the identity."""
        settings = config.settings()
        inputs = self.resolve_inputs(workspace, request)
        if is_grid(inputs.params):
            raise ValidationFailed("params: list values make a grid; submit grids to /workspaces/{ws}/grids")
        item, created = self.create(workspace, incarnation, user, inputs, inputs.params)
        # Starting is idempotent by name: a cache hit, or a retry whose first attempt wrote the row and then
        # failed before the start, both end with exactly one execution.
        self.executions.start(settings.training_state_machine_arn, item.job_id,
                              {"workspace": workspace, "job_id": item.job_id})
        self.remember_inputs(workspace, inputs)
        return {**self.describe(item), "sources": inputs.sources}, created

    def resolve_inputs(self, workspace: str, request: dict[str, Any]) -> Inputs:
        """Any subset of code, data and params: what is not given is the workspace's latest of that kind."""
        latest = self._latest(workspace)
        sources: dict[str, str] = {}

        def pick(name: str) -> Any:
            if request.get(name) is not None:
                sources[name] = "given"
                return request[name]
            if latest is not None and getattr(latest, name) is not None:
                sources[name] = "latest"
                return getattr(latest, name)
            return None

        code, data, params = pick("code"), pick("data"), pick("params")
        if code is None or data is None:
            missing = "code" if code is None else "data"
            raise ValidationFailed(f"{missing}: required on a workspace's first deploy (later ones reuse the latest)")
        if params is None:
            sources["params"] = "default"
            params = {}
        code_id = self._snapshot_ref(workspace, code, "code", "code")
        channels = tuple(sorted(
            (validate_channel(name, f"data.{name}"), self._snapshot_ref(workspace, sid, "data", f"data.{name}"))
            for name, sid in data.items()
        ))
        return Inputs(code_id, channels, parse_params(params), request.get("resources") or {}, sources)

    def _latest(self, workspace: str) -> LatestInputsItem | None:
        try:
            return LatestInputsItem.get(ws_key(workspace), "LATEST#inputs", consistent_read=True)
        except DoesNotExist:
            return None

    def remember_inputs(self, workspace: str, inputs: Inputs) -> None:
        LatestInputsItem(ws_key(workspace), "LATEST#inputs", code=inputs.code, data=dict(inputs.data),
                         params=inputs.params, updated_at=now()).save()

    def create(
        self, workspace: str, incarnation: str, user: str, inputs: Inputs, params: dict[str, Any]
    ) -> tuple[JobItem, bool]:
        """The job row for one point of inputs (written once: a conditional put on the fingerprint)."""
        settings = config.settings()
        manifest, body = params_manifest(params)
        params_snapshot = self.snapshots.put_small(workspace, manifest, {manifest.files[0].sha256: body}, user)
        wanted = inputs.resources
        resources = Resources(
            instance_type=wanted.get("instance_type", settings.training_instance_type), instance_count=1,
            volume_gb=30, max_runtime_seconds=wanted.get("max_runtime_seconds", settings.training_max_runtime_seconds),
        )
        spec = JobSpec(
            workspace=workspace, incarnation=incarnation, kind="train", code=inputs.code, data=inputs.data,
            params=params_snapshot["id"], environment=settings.training_image, resources=resources,
        )
        if inputs.reproduces:  # the original's image and resources exactly; `reproduction_of` makes it a new job
            spec = replace(spec, environment=inputs.environment, resources=Resources(**inputs.resources),
                           reproduces=inputs.reproduces)
        at = now()
        # Execution names are the job id, so the ARN is known before the start and the row never needs a
        # second write from here (the pipeline's own status writes would race with it).
        execution_arn = execution_arn_for(settings.training_state_machine_arn, spec.job_id)
        item = JobItem(
            ws_key(workspace), f"JOB#{spec.job_id}", job_id=spec.job_id, fingerprint=spec.fingerprint,
            kind=spec.kind, status="SUBMITTED", spec=spec.document(), created_at=at, created_by=user, updated_at=at,
            execution_arn=execution_arn, history=[{"status": "SUBMITTED", "at": at}], sources=inputs.sources,
            gsi1pk=f"JOBS#{workspace}", gsi1sk=f"{at}#{spec.job_id}",
        )
        created = self.put_job(item, workspace, incarnation)
        if not created:
            item = self._job(workspace, spec.job_id)
        if created or item.status == "SUBMITTED":
            # Also on a retry of a submission that wrote the row and failed before this point; cache hits of
            # jobs that already ran have their provenance (each write below is idempotent anyway).
            self._record_inputs(workspace, spec, at)
        return item, created

    @staticmethod
    def put_job(item: JobItem, workspace: str, incarnation: str) -> bool:
        """Writes a new job row, or finds it there (False: the fingerprint's job exists), only while the workspace
        is this incarnation: a submission racing a kill, or a grid point or retrain of a killed workspace, creates
        no job (Conflict)."""
        try:
            fenced_write(workspace, incarnation, lambda tx: tx.save(item, condition=JobItem.pk.does_not_exist()))
        except IncarnationGone:
            raise Conflict(f"workspace {workspace!r} is being killed (or was re-created); no job was created") from None
        except TransactWriteError as exc:
            if item_condition_failed(exc, 1):
                return False
            raise
        return True

    def _snapshot_ref(self, workspace: str, value: Any, kind: str, field: str) -> str:
        snapshot_id = validate_sha256(value, field)
        self.snapshots.get(workspace, snapshot_id, kind, field)
        return snapshot_id

    def _record_inputs(self, workspace: str, spec: JobSpec, at: str) -> None:
        job_node = f"job:{spec.job_id}"
        env_node = f"environment:{environment_id(spec.environment)}"
        self.provenance.add_node(workspace, job_node, "job", {"kind": spec.kind, "fingerprint": spec.fingerprint}, at)
        self.provenance.add_node(workspace, env_node, "environment", {"image": spec.environment}, at)
        self.provenance.add_edge(workspace, job_node, "used", env_node, at)
        inputs = [("code", spec.code), ("params", spec.params)] + [(f"data:{c}", s) for c, s in spec.data]
        for role, snapshot_id in inputs:
            node = f"snapshot:{snapshot_id}"
            self.provenance.add_node(workspace, node, "snapshot", {"kind": role.split(":")[0]}, at)
            self.provenance.add_edge(workspace, job_node, "used", node, at)

    def kill(self, workspace: str, job_id: str, user: str) -> dict[str, Any]:
        """Stops the execution and the training; the job ends KILLED and keeps its provenance."""
        item = self._job(workspace, job_id)
        if item.status in TERMINAL:
            raise Conflict(f"job {job_id!r} already ended ({item.status}); nothing to kill")
        self.halt(item, f"killed by {user}")
        return self.describe(item)

    def halt(self, item: JobItem, reason: str, batch_jobs: BatchJobs | None = None) -> list[str]:
        """Marks a job that has not ended KILLED, then stops what runs it: its execution, and its SageMaker training
        job or (kind batch) the Batch jobs its execution submitted. Returns those containers ("sagemaker:<name>",
        "batch:<id>"), which may take a while to end. Repeating it is harmless."""
        for _ in range(5):
            try:
                if item.status not in TERMINAL:
                    self._set_status(item, "KILLED", ended_at=now(), failure_reason=reason)
                break
            except UpdateError as exc:  # a pipeline task changed the row meanwhile (optimistic locking)
                if exc.cause_response_code != "ConditionalCheckFailedException":
                    raise
                try:
                    item.refresh(consistent_read=True)
                except DoesNotExist:  # a concurrent workspace kill deleted it: it was stopped there
                    return []
        else:
            raise Conflict(f"job {item.job_id!r} kept changing while it was being killed; kill it again")
        if item.execution_arn:
            self.executions.stop(item.execution_arn, reason)
        if item.kind == "batch":
            ids = self.executions.submitted_jobs(item.execution_arn) if item.execution_arn else []
            batch_jobs = batch_jobs or BatchJobs(clients().batch)
            for batch_job in ids:
                batch_jobs.terminate(batch_job, reason)
            return [f"batch:{batch_job}" for batch_job in ids]
        # Named before Prepare records it (the attempt's name), in case CreateTrainingJob was already under way.
        name = item.training_job_name or attempt_name(item.job_id, int(item.attempt))
        self.training_jobs.stop(name)
        return [f"sagemaker:{name}"]

    def resume(self, workspace: str, job_id: str, user: str) -> dict[str, Any]:
        """Runs a FAILED or KILLED job again with exactly its recorded inputs, as a new attempt.

        moto cannot redrive executions and SageMaker never reuses a job name, so each attempt is a new
        execution named `<job id>-<attempt>`; the preparation it repeats is idempotent (materialized inputs
        are reused), so in effect it restarts from the step that failed."""
        settings = config.settings()
        item = self._job(workspace, job_id)
        if item.status not in ("FAILED", "KILLED"):
            raise Conflict(f"job {job_id!r} is {item.status}; only FAILED or KILLED jobs can be resumed")
        attempt = int(item.attempt) + 1
        name = attempt_name(job_id, attempt)
        # Each kind of job has its own pipeline; resuming starts the one that ran it.
        machine = settings.batch_state_machine_arn if item.kind == "batch" else settings.training_state_machine_arn
        arn = execution_arn_for(machine, name)
        previous = {"attempt": int(item.attempt), "execution": item.execution_arn,
                    "failure_reason": item.failure_reason}
        self._set_status(item, "SUBMITTED", attempt=attempt, execution_arn=arn, failure_reason=None,
                         ended_at=None, attempts=(item.attempts or []) + [previous])
        self.executions.start(machine, name, {"workspace": workspace, "job_id": job_id})
        return self.describe(item)

    # --- reads ------------------------------------------------------------------------------------------
    def _job(self, workspace: str, job_id: str) -> JobItem:
        if not isinstance(job_id, str) or len(job_id) > 80:
            raise ValidationFailed("job: must be a job id such as train-0123abcd...")
        try:
            return JobItem.get(ws_key(workspace), f"JOB#{job_id}", consistent_read=True)
        except DoesNotExist:
            raise NotFound(f"job {job_id!r} does not exist in workspace {workspace!r}") from None

    def get(self, workspace: str, job_id: str) -> dict[str, Any]:
        return self.describe(self._job(workspace, job_id))

    def list(self, workspace: str, limit: int, cursor: str | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"limit": limit, "scan_index_forward": False}
        if cursor:
            kwargs["last_evaluated_key"] = _decode_cursor(cursor, workspace)
        result = JobItem.gsi1.query(f"JOBS#{workspace}", **kwargs)
        jobs = [self.describe(cast(JobItem, item)) for item in result]
        last = result.last_evaluated_key
        return {"jobs": jobs, "next": _encode_cursor(last) if last else None}

    def read_logs(self, workspace: str, job_id: str, token: str | None, limit: int) -> dict[str, Any]:
        item = self._job(workspace, job_id)
        prefix = f"{item.training_job_name}/" if item.training_job_name else None
        return self.logs.page(job_id=job_id, status=item.status, ended=item.status in TERMINAL, stream_prefix=prefix,
                              archive_key=job_prefix(workspace, job_id) + "log.txt", cursor=token, limit=limit)

    @staticmethod
    def describe(item: JobItem) -> dict[str, Any]:
        spec = item.spec
        return {
            "id": item.job_id, "workspace": spec["workspace"], "kind": item.kind, "status": item.status,
            "fingerprint": item.fingerprint,
            "inputs": {"code": spec["code"], "data": spec["data"], "params": spec["params"]},
            "environment": spec["environment"], "resources": spec["resources"],
            "created_at": item.created_at, "updated_at": item.updated_at,
            "started_at": item.started_at, "ended_at": item.ended_at,
            "metrics": item.metrics or {}, "failure_reason": item.failure_reason, "model": item.model_uri,
            "training_job_name": item.training_job_name, "execution": item.execution_arn,
            "history": item.history or [], "attempt": int(item.attempt), "attempts": item.attempts or [],
            "sources": item.sources or {},
        }

    # --- pipeline tasks ---------------------------------------------------------------------------------
    def _set_status(self, item: JobItem, status: str, **fields: Any) -> None:
        """Each status change is one versioned update (optimistic locking) and one history entry."""
        at = now()
        actions: list[Action] = [JobItem.status.set(status), JobItem.updated_at.set(at),
                   JobItem.history.set((item.history or []) + [{"status": status, "at": at}])]
        actions += [getattr(JobItem, name).remove() if value is None else getattr(JobItem, name).set(value)
                    for name, value in fields.items()]
        item.update(actions=actions)

    def finish(self, item: JobItem, status: str, **fields: Any) -> None:
        """The job's last status change, as `_set_status` but fenced: it commits only while the workspace is still
        the job's incarnation, and raises IncarnationGone otherwise (an outcome arriving after a kill is dropped)."""
        at = now()
        actions: list[Action] = [JobItem.status.set(status), JobItem.updated_at.set(at),
                                 JobItem.history.set((item.history or []) + [{"status": status, "at": at}])]
        actions += [getattr(JobItem, name).remove() if value is None else getattr(JobItem, name).set(value)
                    for name, value in fields.items()]
        fenced_write(item.pk.removeprefix("WS#"), item.spec.get("incarnation"),
                     lambda tx: tx.update(item, actions=actions))
        item.refresh(consistent_read=True)

    @staticmethod
    def retract_produced(workspace: str, job_id: str, output: str, *, node: bool) -> None:
        """Deletes the `job -produced-> output` edge rows (and the output's node, if it is the job's own) that a
        Record wrote before its fenced end failed: a dropped outcome leaves no provenance behind."""
        job_node = f"job:{job_id}"
        rows = [_Item(node_key(workspace, job_node), f"OUT#produced#{output}"),
                _Item(node_key(workspace, output), f"IN#produced#{job_node}")]
        if node:
            rows.append(_Item(node_key(workspace, output), "META"))
        for row in rows:
            row.delete()

    def prepare(self, workspace: str, job_id: str) -> dict[str, Any]:
        """Materializes inputs and returns the CreateTrainingJob request the state machine runs."""
        settings = config.settings()
        item = self._job(workspace, job_id)
        if item.status in TERMINAL:
            raise InputInvalid(f"job {job_id} is already {item.status}")
        spec = item.spec
        code_uri, manifest = self.snapshots.sourcedir(workspace, spec["code"])
        entry = self._entry_point(workspace, manifest)
        channels = [
            {
                "ChannelName": channel,
                "DataSource": {"S3DataSource": {
                    "S3DataType": "S3Prefix", "S3Uri": self.snapshots.materialize(workspace, snapshot_id),
                    "S3DataDistributionType": "FullyReplicated",
                }},
            }
            for channel, snapshot_id in sorted(spec["data"].items())
        ]
        hps = hyperparameters(self.snapshots.read_params(workspace, spec["params"]))
        # The SageMaker SDK JSON-encodes these two, and framework containers decode them the same way.
        hps["sagemaker_program"] = json.dumps(entry)
        hps["sagemaker_submit_directory"] = json.dumps(code_uri)
        resources = spec["resources"]
        name = attempt_name(job_id, int(item.attempt))
        request = {
            "TrainingJobName": name,
            "AlgorithmSpecification": {"TrainingImage": spec["environment"], "TrainingInputMode": "File"},
            # The workspace incarnation's own role: the job's code reaches only its workspace (tenancy.py).
            "RoleArn": role_arn(settings.workspace_role_prefix, workspace, str(spec.get("incarnation", ""))),
            "HyperParameters": hps,
            "InputDataConfig": channels,
            "OutputDataConfig": {"S3OutputPath": self.store.uri(job_prefix(workspace, job_id) + "output")},
            "ResourceConfig": {"InstanceType": resources["instance_type"],
                               "InstanceCount": resources["instance_count"],
                               "VolumeSizeInGB": resources["volume_gb"]},
            "StoppingCondition": {"MaxRuntimeInSeconds": resources["max_runtime_seconds"]},
        }
        self._set_status(item, "TRAINING", training_job_name=name, started_at=now())
        lineage_events.started(item)
        return {"training": request}

    def _entry_point(self, workspace: str, manifest: Manifest) -> str:
        """`entry_point` from the code's kaos.toml ([train] table), else the first default that exists."""
        files = {f.path: f for f in manifest.files}
        if CONFIG_FILE in files:
            try:
                config_doc = tomllib.loads(self.store.get_bytes(blob_key(workspace, files[CONFIG_FILE].sha256))
                                          .decode())
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise InputInvalid(f"code: {CONFIG_FILE} is not valid TOML ({exc})") from None
            entry = config_doc.get("train", {}).get("entry_point")
            if entry is not None:
                if not isinstance(entry, str) or entry not in files:
                    raise InputInvalid(f"code: {CONFIG_FILE} names entry_point {entry!r}, which is not in the code")
                return entry
        found = next((e for e in DEFAULT_ENTRY_POINTS if e in files), None)
        if found is None:
            raise InputInvalid(f"code: no entry point found; add one of {', '.join(DEFAULT_ENTRY_POINTS)} "
                               f"or name it in {CONFIG_FILE} ([train] entry_point = ...)")
        return found

    def record(
        self, workspace: str, job_id: str, execution: str, outcome: str, detail: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            item = self._job(workspace, job_id)
        except NotFound:  # its workspace was killed: the outcome of a stopped job arrives late
            return dropped(job_id)
        if item.status in TERMINAL or (execution and execution != item.execution_arn):
            # A retried task (already recorded), or a late outcome of an attempt that was killed and resumed.
            return self.describe(item)
        if not incarnation_alive(workspace, item.spec.get("incarnation")):
            return {**self.describe(item), "dropped": True}
        try:
            if outcome == "Completed":
                described = self._record_model(workspace, item, detail)
            else:
                self.finish(item, "FAILED", failure_reason=failure_reason(detail), ended_at=now())
                lineage_events.ended(item)
                described = self.describe(item)
        except IncarnationGone:  # killed while recording: nothing of it stays
            return {**self.describe(item), "dropped": True}
        # After the fenced end, so a log is never archived into a killed (or later) incarnation's prefix. The job
        # has ended: a failed copy is logged, not raised (CloudWatch Logs still holds the log).
        try:
            self._archive_log(workspace, item)
        except Exception:
            log.exception("could not archive the log of job %s", job_id)
        return described

    def _record_model(self, workspace: str, item: JobItem, training: dict[str, Any]) -> dict[str, Any]:
        uri = str(training.get("ModelArtifacts", {}).get("S3ModelArtifacts", ""))
        prefix = f"s3://{self.store.bucket}/"
        if not uri.startswith(prefix):
            raise InputInvalid(f"model artifacts {uri!r} are not in the workspace bucket")
        key = uri[len(prefix):]
        described = self.store.describe(key)
        digest, metrics, content_sha256 = self._read_model(key)
        if not metrics:
            output_key = key.rsplit("/", 1)[0] + "/output.tar.gz"
            if self.store.size(output_key) is not None:
                metrics = self._read_model(output_key)[1]
        at = now()
        model_node = f"model:{item.job_id}"
        self.provenance.add_node(workspace, model_node, "model",
                                 {"uri": uri, "sha256": digest, "content_sha256": content_sha256, **described}, at)
        self.provenance.add_edge(workspace, f"job:{item.job_id}", "produced", model_node, at)
        try:
            self.finish(item, "COMPLETED", model_uri=uri, metrics=metrics, ended_at=at)
        except IncarnationGone:
            self.retract_produced(workspace, item.job_id, model_node, node=True)
            raise
        lineage_events.ended(item)
        return self.describe(item)

    def _read_model(self, key: str) -> tuple[str, dict[str, Any], str]:
        """Streams the archive once: its sha256, the metrics.json it holds (if any), and its content sha256.

        The content sha256 is the sha256 of the JSON list (no spaces) of sorted [member name, sha256 of its
        bytes] pairs of the archive's regular files (names without a leading "./"): unlike the archive's own
        sha256 it does not depend on mtimes, owners or compression, which SageMaker's tars do not fix."""
        body = HashingReader(self.store.stream(key))
        metrics: dict[str, Any] = {}
        files: list[tuple[str, str]] = []
        with tarfile.open(fileobj=cast(IO[bytes], body), mode="r|gz") as archive:
            for member in archive:
                handle = archive.extractfile(member) if member.isfile() else None
                if handle is None:
                    continue
                if member.name.lstrip("./") == METRICS_FILE:
                    raw = handle.read()
                    member_sha256 = sha256_hex(raw)
                    metrics = _numeric_metrics(raw)
                else:
                    member_sha256 = sha256_of(handle)[0]
                name = member.name
                while name.startswith("./"):
                    name = name[2:]
                files.append((name, member_sha256))
        body.drain()
        content = sha256_hex(json.dumps(sorted(files), separators=(",", ":")).encode())
        return body.hexdigest(), metrics, content

    def _archive_log(self, workspace: str, item: JobItem) -> None:
        """Keeps the job's log in S3 beside its outputs: CloudWatch retention is finite, provenance is not."""
        if item.training_job_name is None:
            return
        self.logs.archive(f"{item.training_job_name}/", job_prefix(workspace, item.job_id) + "log.txt")


def dropped(job_id: str) -> dict[str, Any]:
    """What Record answers for an outcome it dropped because the job's workspace incarnation was killed."""
    return {"id": job_id, "status": "DROPPED", "model": None, "dropped": True}


def _numeric_metrics(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def failure_reason(error: dict[str, Any]) -> str:
    """The readable reason from a Step Functions Catch result ({Error, Cause}); Cause may hold a JSON describe."""
    name = str(error.get("Error", "Error"))
    cause = error.get("Cause", "")
    try:
        parsed = json.loads(cause) if isinstance(cause, str) else cause
    except ValueError:
        parsed = cause
    if isinstance(parsed, dict):
        reason = parsed.get("FailureReason") or parsed.get("errorMessage") or parsed.get("Message")
        if parsed.get("TrainingJobStatus") == "Stopped":
            # SageMaker stops a job at its MaxRuntimeInSeconds (secondary status MaxRuntimeExceeded) or on request.
            detail = parsed.get("SecondaryStatus") or "Stopped"
            return f"{name}: training stopped ({detail})" + (f": {reason}" if reason else "")
        if reason:
            return f"{name}: {reason}"[:2000]
    return f"{name}: {cause}"[:2000]


def _encode_cursor(key: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, sort_keys=True).encode()).decode()


# A jobs cursor is the LastEvaluatedKey of the gsi1 query: these string attributes, nothing else.
_CURSOR_KEYS = {"pk", "sk", "gsi1pk", "gsi1sk"}


def _decode_cursor(cursor: str, workspace: str) -> dict[str, Any]:
    """The DynamoDB start key a cursor carries, checked to be one this listing can have answered: a forged
    cursor (other attributes or value types, another workspace's keys) is a 400, never a DynamoDB error."""
    invalid = ValidationFailed("cursor: invalid cursor (not a `next` returned by this workspace's job list)")
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, TypeError):
        raise invalid from None
    if not isinstance(value, dict) or set(value) != _CURSOR_KEYS:
        raise invalid
    for attribute in value.values():
        if not (isinstance(attribute, dict) and set(attribute) == {"S"} and isinstance(attribute["S"], str)
                and 0 < len(attribute["S"]) <= 1024):
            raise invalid
    if value["pk"]["S"] != ws_key(workspace) or value["gsi1pk"]["S"] != f"JOBS#{workspace}" \
            or not value["sk"]["S"].startswith("JOB#"):
        raise invalid
    return value
