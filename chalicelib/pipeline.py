"""The training pipeline's tasks: Prepare (materialize the inputs, answer the CreateTrainingJob request) and
Record (the model, its metrics and provenance, or the failure), each a Step Functions task Lambda.

Record's writes are fenced by the job's workspace incarnation: an outcome arriving after a kill of the workspace
is dropped (`dropped: true`) and leaves nothing behind, provenance included.
"""
from __future__ import annotations

import json
import logging
import tomllib
from collections.abc import Callable
from typing import Any

from chalicelib import cost, environments, lineage_events
from chalicelib.adapters import ObjectStore
from chalicelib.archive import read_model
from chalicelib.config import Settings
from chalicelib.domain import Manifest, attempt_name, canonical_json, environment_id, hyperparameters, now
from chalicelib.errors import InputInvalid, KaosError
from chalicelib.lifecycle import Jobs, job_prefix
from chalicelib.logs import JobLogs
from chalicelib.metrics import Extractor, parse_definitions, series_key
from chalicelib.provenance import Provenance
from chalicelib.repositories.jobs import TERMINAL, Job, describe
from chalicelib.repositories.workspaces import IncarnationGone, WorkspaceRepository
from chalicelib.snapshots import Snapshots
from chalicelib.tenancy import role_arn

log = logging.getLogger("kaos.training")

# Entry points tried, in order, when the code snapshot does not name one (SageMaker's `sagemaker_program`).
DEFAULT_ENTRY_POINTS = ("train.py", "train.sh", "train")
CONFIG_FILE = "kaos.toml"
# Step Functions Catch results are kept in the row; DynamoDB items stop at 400 KB, reasons well before.
MAX_REASON_CHARS = 2000


class TrainingPipeline:
    def __init__(self, *, settings: Settings, jobs: Jobs, workspaces: WorkspaceRepository, store: ObjectStore,
                 snapshots: Snapshots, provenance: Provenance, logs: Callable[[], JobLogs]) -> None:
        self._settings = settings
        self._jobs = jobs
        self._workspaces = workspaces
        self._store = store
        self._snapshots = snapshots
        self._provenance = provenance
        # Only Record archives logs: Prepare's Lambda is not configured with the log group (built on first use).
        self._logs = logs

    def prepare(self, workspace: str, job_id: str) -> dict[str, Any]:
        """Materializes inputs and returns the CreateTrainingJob request the state machine runs. Its HyperParameters
        are the params JSON-encoded as the SageMaker SDK does (SageMaker allows 100 of them, each value at most
        2500 characters: checked at submission by chalicelib.domain.parse_params)."""
        since = cost.started()
        job = self._jobs.repository.get(workspace, job_id)
        if job.status in TERMINAL:
            raise InputInvalid(f"job {job_id} is already {job.status}")
        spec = job.spec
        code_uri, manifest = self._snapshots.sourcedir(workspace, spec["code"])
        train = self._train_config(workspace, manifest)
        entry = self._entry_point(manifest, train)
        # SageMaker publishes these as CloudWatch metrics; Record extracts the same from the log (chalicelib.metrics).
        definitions = [d.as_sagemaker() for d in parse_definitions(train.get("metric_definitions"))]
        channels = [
            {
                "ChannelName": channel,
                "DataSource": {"S3DataSource": {
                    "S3DataType": "S3Prefix", "S3Uri": self._snapshots.materialize(workspace, snapshot_id),
                    "S3DataDistributionType": "FullyReplicated",
                }},
            }
            for channel, snapshot_id in sorted(spec["data"].items())
        ]
        hps = hyperparameters(self._snapshots.read_params(workspace, spec["params"]))
        # The SageMaker SDK JSON-encodes these two, and framework containers decode them the same way.
        hps["sagemaker_program"] = json.dumps(entry)
        hps["sagemaker_submit_directory"] = json.dumps(code_uri)
        resources = spec["resources"]
        name = attempt_name(job_id, job.attempt)
        request = {
            "TrainingJobName": name,
            "AlgorithmSpecification": {"TrainingImage": spec["environment"], "TrainingInputMode": "File",
                                       **({"MetricDefinitions": definitions} if definitions else {})},
            # The workspace incarnation's own role: the job's code reaches only its workspace (tenancy.py).
            "RoleArn": role_arn(self._settings.workspace_role_prefix, workspace, str(spec.get("incarnation", ""))),
            "HyperParameters": hps,
            "InputDataConfig": channels,
            "OutputDataConfig": {"S3OutputPath": self._store.uri(job_prefix(workspace, job_id) + "output")},
            "ResourceConfig": {"InstanceType": resources["instance_type"],
                               "InstanceCount": resources["instance_count"],
                               "VolumeSizeInGB": resources["volume_gb"]},
            "StoppingCondition": {"MaxRuntimeInSeconds": resources["max_runtime_seconds"]},
        }
        at = now()
        self._jobs.repository.set_status(job, "TRAINING", at, training_job_name=name, started_at=at,
                                         usage=cost.prepared_usage(since))
        lineage_events.started(job, self._settings)
        return {"training": request}

    def _train_config(self, workspace: str, manifest: Manifest) -> dict[str, Any]:
        """The [train] table of the code's kaos.toml ({} without one)."""
        files = {f.path: f for f in manifest.files}
        if CONFIG_FILE not in files:
            return {}
        try:
            config_doc = tomllib.loads(self._snapshots.read_blob(workspace, files[CONFIG_FILE]).decode())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InputInvalid(f"code: {CONFIG_FILE} is not valid TOML ({exc})") from None
        train = config_doc.get("train", {})
        return train if isinstance(train, dict) else {}

    def _entry_point(self, manifest: Manifest, train: dict[str, Any]) -> str:
        """`entry_point` from the code's kaos.toml ([train] table), else the first default that exists."""
        files = {f.path: f for f in manifest.files}
        entry = train.get("entry_point")
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
        since = cost.started()
        job = self._jobs.to_record(workspace, job_id, execution)
        if isinstance(job, dict):
            return job
        if not self._workspaces.alive(workspace, job.spec.get("incarnation")):
            return {**describe(job), "dropped": True}
        series = self._series(workspace, job)
        self._record_environment(workspace, job, detail)
        try:
            if outcome == "Completed":
                described = self._record_model(workspace, job, detail, since, series.summary())
            else:
                self._jobs.finish(job, "FAILED", failure_reason=failure_reason(detail), ended_at=now(),
                                  usage=cost.recorded_usage(job.usage, detail, since),
                                  metric_series=series.summary() or None)
                lineage_events.ended(job, self._settings)
                described = describe(job)
        except IncarnationGone:  # killed while recording: nothing of it stays
            return {**describe(job), "dropped": True}
        # After the fenced end, so a log is never archived into a killed (or later) incarnation's prefix. The job
        # has ended: a failed copy is logged, not raised (CloudWatch Logs still holds the log).
        if job.training_job_name is not None:
            try:
                self._logs().archive(f"{job.training_job_name}/", job_prefix(workspace, job.job_id) + "log.txt")
                if series.summary():
                    self._store.put_json(series_key(workspace, job.job_id), series.document())
            except KaosError:
                log.exception("could not archive the log of job %s", job_id)
        return described

    def _record_environment(self, workspace: str, job: Job, detail: dict[str, Any]) -> None:
        """The environment the job ran in, read from its DescribeTrainingJob answer (the .sync result, or a failure's
        Cause), as an environment node the job used: the image, the code's requirements.txt and, offline, the built
        environment and its fidelity warnings (chalicelib.environments.environment_ran). A job that never got a
        training job (failed in Prepare) has none."""
        training = _described_training(detail)
        if training is None:
            return
        try:
            files = self._snapshots.manifest(workspace, job.spec["code"]).files
        except KaosError:
            log.exception("could not read the code of job %s", job.job_id)
            return
        requirements = next((f.sha256 for f in files if f.path == "requirements.txt"), None)
        ran = environments.environment_ran(training, requirements)
        node, at = f"environment:{environment_id(canonical_json(ran))}", now()
        self._provenance.add_node(workspace, node, "environment", ran, at)
        self._provenance.add_edge(workspace, f"job:{job.job_id}", "used", node, at)

    def _series(self, workspace: str, job: Job) -> Extractor:
        """Every metric the job logged over time (chalicelib.metrics), read from its log BEFORE the fenced end so
        the summary is part of that write. A log or kaos.toml that cannot be read loses the series, never the
        outcome (Prepare refused a bad kaos.toml already, for the jobs that got as far as running)."""
        if job.training_job_name is None:
            return Extractor()
        try:
            manifest = self._snapshots.manifest(workspace, job.spec["code"])
            extractor = Extractor(parse_definitions(self._train_config(workspace, manifest).get("metric_definitions")))
            for message in self._logs().reader.messages(f"{job.training_job_name}/"):
                for line in message.splitlines():
                    extractor.feed(line)
        except KaosError:
            log.exception("could not read the metrics logged by job %s", job.job_id)
            return Extractor()
        return extractor

    def _record_model(self, workspace: str, job: Job, training: dict[str, Any], since: float,
                      series: dict[str, Any]) -> dict[str, Any]:
        uri = str(training.get("ModelArtifacts", {}).get("S3ModelArtifacts", ""))
        prefix = f"s3://{self._store.bucket}/"
        if not uri.startswith(prefix):
            raise InputInvalid(f"model artifacts {uri!r} are not in the workspace bucket")
        key = uri[len(prefix):]
        described = self._store.describe(key)
        model = read_model(self._store, key)
        metrics = model.metrics
        if not metrics:
            output_key = key.rsplit("/", 1)[0] + "/output.tar.gz"
            if self._store.size(output_key) is not None:
                metrics = read_model(self._store, output_key).metrics
        at = now()
        model_node = f"model:{job.job_id}"
        self._provenance.add_node(workspace, model_node, "model", {
            "uri": uri, "sha256": model.sha256, "content_sha256": model.content_sha256, **described}, at)
        self._provenance.add_edge(workspace, f"job:{job.job_id}", "produced", model_node, at)
        try:
            self._jobs.finish(job, "COMPLETED", model_uri=uri, metrics=metrics, ended_at=at,
                              usage=cost.recorded_usage(job.usage, training, since), metric_series=series or None)
        except IncarnationGone:
            self._jobs.retract_produced(workspace, job.job_id, model_node, node=True)
            raise
        lineage_events.ended(job, self._settings)
        return describe(job)


def _described_training(detail: dict[str, Any]) -> dict[str, Any] | None:
    """The DescribeTrainingJob answer in a Record's input: the .sync result itself, or a failure's JSON Cause."""
    if "AlgorithmSpecification" in detail:
        return detail
    try:
        cause = json.loads(detail.get("Cause", ""))
    except (TypeError, ValueError):
        return None
    return cause if isinstance(cause, dict) and "AlgorithmSpecification" in cause else None


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
            return f"{name}: {reason}"[:MAX_REASON_CHARS]
    return f"{name}: {cause}"[:MAX_REASON_CHARS]
