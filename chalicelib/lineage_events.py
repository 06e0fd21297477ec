"""OpenLineage run events for jobs: START when Prepare hands a job to SageMaker or Batch, COMPLETE when its outcome
is recorded as a success, FAIL when it is recorded as a failure.

- The OpenLineage job is the kaos job: namespace `kaos://<workspace>`, name = the job id.
- The run id is a UUID5 of the job and its attempt, so a retried Prepare or Record task re-emits the same run id
  and a resumed job (a new attempt) is a new run of the same job.
- Every snapshot is a dataset in namespace `s3://<bucket>` named by its manifest key
  (`ws/<ws>/manifests/<id>.json`): the same name wherever the snapshot appears, so a batch job's output snapshot
  is the very dataset a later training reads as a data channel. Its facets carry the snapshot id (`version` and
  `kaos_snapshot`); a data channel's name is an input facet (`kaos_channel`). A model is the dataset
  `s3://<bucket>` / its object key.

Off unless KAOS_OPENLINEAGE_URL (HTTP transport, POST <url>/api/v1/lineage) or KAOS_OPENLINEAGE_FILE (file
transport, one JSON event per line appended) is set in the task's settings: the openlineage client is imported
only then (it costs ~0.25 s on a cold start). Emitting never fails the pipeline: any error is logged and dropped.
"""
from __future__ import annotations

import logging
import uuid
from functools import cache
from typing import Any

from chalicelib.config import Settings
from chalicelib.snapshots import manifest_key

log = logging.getLogger(__name__)

# OpenLineage wants a URI naming the producer; kaos has no public home to point at, so a URN.
PRODUCER = "urn:kaos:pipeline"
FACETS_SCHEMA = "urn:kaos:openlineage:facets"
HTTP_TIMEOUT_SECONDS = 5.0
# The client's default (5 retries with backoff) could hold a task Lambda for half a minute on a dead endpoint.
HTTP_RETRY = {"total": 1, "connect": 1, "read": 1, "backoff_factor": 0.2,
              "status_forcelist": [500, 502, 503, 504], "allowed_methods": ["POST"]}
JOB_TYPES = {"train": "TRAINING", "batch": "BATCH"}
# What building an event of a malformed job row raises, and what the client's transports raise (requests' errors and
# file errors are OSErrors; the client wraps others in RuntimeError and refuses bad configuration with ValueError).
_BUILD_ERRORS = (KeyError, TypeError, ValueError, AttributeError)
_TRANSPORT_ERRORS = (OSError, RuntimeError, ValueError)


def job_namespace(workspace: str) -> str:
    return f"kaos://{workspace}"


def run_id(workspace: str, job_id: str, attempt: int) -> str:
    """Deterministic per attempt: every event of one attempt, re-emitted by a retried task or not, shares it."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{job_namespace(workspace)}/{job_id}#{attempt}"))


def started(item: Any, settings: Settings) -> None:
    """START of the job's current attempt (call once Prepare has set it running)."""
    _emit(item, "START", settings)


def ended(item: Any, settings: Settings) -> None:
    """COMPLETE or FAIL, from the status the record task has just written (other statuses emit nothing)."""
    event_type = {"COMPLETED": "COMPLETE", "FAILED": "FAIL"}.get(str(item.status))
    if event_type is not None:
        _emit(item, event_type, settings)


def _emit(item: Any, event_type: str, settings: Settings) -> None:
    """`settings` are the task's (a component that emits declares the OpenLineage variables)."""
    if not settings.lineage_enabled:
        return
    # Lineage is an observer: never the reason a job fails, and one dead transport does not silence the other.
    try:
        event = build_event(item, event_type, settings.bucket)
        clients = _clients(settings.openlineage_url, settings.openlineage_file)
    except _BUILD_ERRORS:
        log.warning("OpenLineage %s event for job %s not built", event_type, getattr(item, "job_id", "?"),
                    exc_info=True)
        return
    for client in clients:
        try:
            client.emit(event)
        except _TRANSPORT_ERRORS as exc:  # an unreachable endpoint is the usual cause: one line, no traceback
            log.warning("OpenLineage %s event for job %s not emitted by the %s transport: %s", event_type,
                        item.job_id, client.transport.kind, exc)


def build_event(item: Any, event_type: str, bucket: str) -> Any:
    """The RunEvent for one JobItem (pure: no I/O)."""
    from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
    from openlineage.client.facet_v2 import error_message_run, job_type_job

    spec = item.spec
    workspace = str(spec["workspace"])
    time = (item.started_at if event_type == "START" else item.ended_at) or _now()
    run_facets: dict[str, Any] = {}
    if event_type == "FAIL":
        run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=str(item.failure_reason or "failed"), programmingLanguage="unknown", producer=PRODUCER)
    job_facets: dict[str, Any] = {"jobType": job_type_job.JobTypeJobFacet(
        processingType="BATCH", integration="KAOS", jobType=JOB_TYPES.get(str(item.kind), str(item.kind).upper()),
        producer=PRODUCER)}
    inputs = [_input(workspace, bucket, str(spec["code"]), "code", None),
              _input(workspace, bucket, str(spec["params"]), "params", None)]
    inputs += [_input(workspace, bucket, str(snapshot_id), "data", channel)
               for channel, snapshot_id in sorted(dict(spec["data"]).items())]
    outputs = [_output(workspace, bucket, str(item.model_uri))] if event_type == "COMPLETE" and item.model_uri else []
    return RunEvent(
        eventType=getattr(RunState, event_type), eventTime=time, producer=PRODUCER,
        run=Run(runId=run_id(workspace, str(item.job_id), int(item.attempt)), facets=run_facets),
        job=Job(namespace=job_namespace(workspace), name=str(item.job_id), facets=job_facets),
        inputs=inputs, outputs=outputs,
    )


def _snapshot_facets(snapshot_id: str, kind: str) -> dict[str, Any]:
    from openlineage.client.facet_v2 import dataset_version_dataset

    return {"version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=snapshot_id,
                                                                          producer=PRODUCER),
            "kaos_snapshot": _facet_classes()["snapshot"](snapshotId=snapshot_id, kind=kind, producer=PRODUCER)}


def _input(workspace: str, bucket: str, snapshot_id: str, kind: str, channel: str | None) -> Any:
    from openlineage.client.event_v2 import InputDataset

    input_facets = {} if channel is None else {"kaos_channel": _facet_classes()["channel"](name=channel,
                                                                                          producer=PRODUCER)}
    return InputDataset(namespace=f"s3://{bucket}", name=manifest_key(workspace, snapshot_id),
                        facets=_snapshot_facets(snapshot_id, kind), inputFacets=input_facets)


def _output(workspace: str, bucket: str, uri: str) -> Any:
    """A model (`s3://bucket/key`) or a batch job's output snapshot (`snapshot:<id>`)."""
    from openlineage.client.event_v2 import OutputDataset

    if uri.startswith("snapshot:"):
        snapshot_id = uri[len("snapshot:"):]
        return OutputDataset(namespace=f"s3://{bucket}", name=manifest_key(workspace, snapshot_id),
                             facets=_snapshot_facets(snapshot_id, "data"))
    without_scheme = uri.removeprefix("s3://")
    model_bucket, _, key = without_scheme.partition("/")
    return OutputDataset(namespace=f"s3://{model_bucket}", name=key)


@cache
def _facet_classes() -> dict[str, type]:
    """kaos's custom facets, defined on first use so importing this module never imports the client."""
    import attr
    from openlineage.client.facet_v2 import DatasetFacet, InputDatasetFacet

    @attr.define
    class KaosSnapshotDatasetFacet(DatasetFacet):
        snapshotId: str  # OpenLineage spells fields in camelCase
        kind: str

        @staticmethod
        def _get_schema() -> str:
            return f"{FACETS_SCHEMA}#/$defs/KaosSnapshotDatasetFacet"

    @attr.define
    class KaosChannelInputDatasetFacet(InputDatasetFacet):
        name: str

        @staticmethod
        def _get_schema() -> str:
            return f"{FACETS_SCHEMA}#/$defs/KaosChannelInputDatasetFacet"

    return {"snapshot": KaosSnapshotDatasetFacet, "channel": KaosChannelInputDatasetFacet}


@cache
def _clients(url: str, path: str) -> tuple[Any, ...]:
    """One client per transport and configuration (a warm Lambda reuses them)."""
    from openlineage.client import OpenLineageClient
    from openlineage.client.transport.file import FileConfig, FileTransport
    from openlineage.client.transport.http import HttpConfig, HttpTransport

    transports: list[Any] = []
    if url:
        # urljoin drops a last path segment without a trailing slash: <url>/api/v1/lineage either way.
        transports.append(HttpTransport(HttpConfig(url=url.rstrip("/") + "/", timeout=HTTP_TIMEOUT_SECONDS,
                                                   retry=HTTP_RETRY)))
    if path:
        transports.append(FileTransport(FileConfig(log_file_path=path, append=True)))
    # The job's code is a snapshot, not whatever git checkout the process runs in (the client's default is off;
    # said here so an openlineage.yml or OPENLINEAGE__ variable cannot turn it on).
    return tuple(OpenLineageClient(transport=t, config={"facets": {"source_code_location": {"disabled": True}}})
                 for t in transports)


def _now() -> str:
    from chalicelib.domain import now

    return now()
