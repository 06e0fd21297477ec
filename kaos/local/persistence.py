"""Keeps the embedded stack's data across restarts: DynamoDB items, S3 objects and CloudWatch log events.

moto holds everything in memory. This module writes what the product stored to ``<state_dir>/data`` and
loads it back into a freshly started emulator (after the template's resources exist, before the API
serves)::

    data/format.json                          {"format": 1}
    data/dynamodb/<table>.jsonl               one low-level item per line, as Scan returns it
    data/s3/<bucket>/index.json               {key: {sha256, size, etag, content_type, metadata, ...}}
    data/s3/<bucket>/objects/<sha[:2]>/<sha>  object bodies, by content (identical bodies stored once)
    data/logs/<hash of group>/index.json      {"group": name, "streams": {name: {file, signature}}}
    data/logs/<hash of group>/<hash>.jsonl    one {"timestamp", "message"} event per line
    data/stepfunctions/executions.jsonl       one record (name, input, status, dates, output) per execution

Every file is written to a temporary name and renamed, so a crash in the middle of an export leaves each
file either as it was or complete. Object bodies are written before the bucket index that names them, and
exports go S3, then logs, then DynamoDB, so the items (which refer to objects) are never newer than the
objects in the same export. Only the latest version of each S3 key is kept (versions are not history the
product reads back; restored objects get new version ids). Step Functions executions are kept as records
only (describe/list, and their names stay taken, so a cache hit's idempotent StartExecution still finds the
job's execution instead of starting a second one); moto cannot resume a running one, so it comes back
ABORTED, the jobs that were in flight are marked FAILED (:func:`fail_interrupted_jobs`) and
``kaos train resume`` runs them again under a new execution name. SageMaker training job records are not
kept (the product reads a job's outcome from its own table, its logs from CloudWatch).

When to export: :class:`ChangeTracker` sits in front of the emulator's WSGI app and marks a service dirty
on any request that is not a read (by X-Amz-Target action name or HTTP method; the service from the SigV4
credential scope). Executions are exported with DynamoDB: every step of a job writes its item.
:class:`Persistence` exports the dirty services every few seconds from a thread and once more on a clean
stop. Within a service, work is proportional to what changed where that is cheap to tell: S3 downloads
only keys whose ETag changed, logs re-read only streams whose size or last timestamp changed, executions
describe only new or running ones; DynamoDB tables are scanned whole (they hold metadata only).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

LOG = logging.getLogger(__name__)

FORMAT = 1
SERVICES = ("s3", "logs", "dynamodb")  # export order: what refers to something comes after it
EXPORT_INTERVAL_SECONDS = float(os.environ.get("KAOS_LOCAL_EXPORT_SECONDS", "5"))
TRANSFER_THREADS = 8
INTERRUPTED_REASON = (
    "the embedded stack stopped while this job was running; `kaos train resume {job}` runs it again"
)
IN_FLIGHT = ("SUBMITTED", "TRAINING")
INTERRUPTED_EXECUTION = ("KaosStackStopped", "the embedded stack stopped while this execution was running")
_READ_ACTIONS = ("Get", "Describe", "List", "Scan", "Query", "Filter", "BatchGet", "Head", "Test")
_SCOPE = re.compile(r"Credential=[^/&,\s]+/\d{8}/[^/&,\s]+/([^/&,\s]+)/aws4_request")


# --- files -------------------------------------------------------------------------------------------
def atomic_write(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Writes through ``write(handle)`` to a temporary file beside ``path``, fsyncs it, renames it over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, lambda h: json.dump(value, h, sort_keys=True))


def write_lines(path: Path, values: Iterable[Any]) -> None:
    def write(handle: Any) -> None:
        for value in values:
            handle.write(json.dumps(value, separators=(",", ":")) + "\n")

    atomic_write(path, write)


def read_lines(path: Path) -> Iterator[Any]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else default


def _name_hash(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:24]


def _code(exc: Exception) -> str:
    return str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", ""))


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- change tracking ---------------------------------------------------------------------------------
class ChangeTracker:
    """Marks a persisted service dirty when the emulator receives a request that may change it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dirty: set[str] = set(SERVICES)  # nothing exported yet

    def wrap(self, app: Callable[..., Any]) -> Callable[..., Any]:
        def tracked(environ: dict[str, Any], start_response: Any) -> Any:
            self.observe(environ)
            return app(environ, start_response)

        return tracked

    def observe(self, environ: dict[str, Any]) -> None:
        target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
        if target:
            if target.rsplit(".", 1)[-1].startswith(_READ_ACTIONS):
                return
        elif environ.get("REQUEST_METHOD", "GET") in ("GET", "HEAD", "OPTIONS"):
            return
        scope = _SCOPE.search(str(environ.get("HTTP_AUTHORIZATION", ""))) or _SCOPE.search(
            unquote(str(environ.get("QUERY_STRING", "")))
        )
        service = scope.group(1) if scope else None
        if service is None:
            self.mark(*SERVICES)  # unsigned or unrecognised: assume the worst
        elif service in SERVICES:
            self.mark(service)

    def mark(self, *services: str) -> None:
        with self._lock:
            self._dirty.update(services)

    def take(self) -> set[str]:
        """The dirty services, now marked clean (writes from here on mark them again)."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            return dirty


# --- export / import ---------------------------------------------------------------------------------
@dataclass
class Report:
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, value: int) -> None:
        self.counts[name] = self.counts.get(name, 0) + value


class StateStore:
    """Exports the emulator's persisted services to ``data_dir`` and imports them back."""

    def __init__(self, data_dir: Path, client: Callable[[str], Any], region: str, account: str) -> None:
        self.data_dir = data_dir
        self.region, self.account = region, account
        self._clients: dict[str, Any] = {}
        self._client_factory = client
        self._client_lock = threading.Lock()

    def client(self, service: str) -> Any:
        with self._client_lock:
            if service not in self._clients:
                self._clients[service] = self._client_factory(service)
            return self._clients[service]

    def has_data(self) -> bool:
        return (self.data_dir / "format.json").exists()

    # -- export
    def export(self, services: Iterable[str] = SERVICES) -> Report:
        started = time.monotonic()
        report = Report()
        wanted = set(services)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for service in SERVICES:
            if service in wanted:
                getattr(self, f"_export_{service}")(report)
        if not self.has_data():
            write_json(self.data_dir / "format.json", {"format": FORMAT})
        report.seconds = time.monotonic() - started
        return report

    def _export_dynamodb(self, report: Report) -> None:
        self._export_executions(report)
        ddb = self.client("dynamodb")
        for page in ddb.get_paginator("list_tables").paginate():
            for table in page["TableNames"]:
                items: list[dict[str, Any]] = []
                for scanned in ddb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
                    items.extend(scanned["Items"])
                write_lines(self.data_dir / "dynamodb" / f"{table}.jsonl", items)
                report.add("dynamodb_items", len(items))

    def _export_executions(self, report: Report) -> None:
        """Execution records; a closed execution never changes, so only new or running ones are described."""
        sfn = self.client("stepfunctions")
        path = self.data_dir / "stepfunctions" / "executions.jsonl"
        old = {r["executionArn"]: r for r in read_lines(path)} if path.exists() else {}
        records = []
        for page in sfn.get_paginator("list_state_machines").paginate():
            for machine in page["stateMachines"]:
                pages = sfn.get_paginator("list_executions").paginate(stateMachineArn=machine["stateMachineArn"])
                for listed in (e for p in pages for e in p["executions"]):
                    known = old.get(listed["executionArn"])
                    if known is not None and known["status"] == listed["status"] != "RUNNING":
                        records.append(known)
                        continue
                    described = sfn.describe_execution(executionArn=listed["executionArn"])
                    record = {k: described.get(k) for k in ("executionArn", "stateMachineArn", "name", "input",
                                                            "status", "output", "error", "cause")}
                    for key in ("startDate", "stopDate"):
                        record[key] = described[key].timestamp() if described.get(key) else None
                    records.append(record)
        records.sort(key=lambda r: (r["startDate"] or 0, r["executionArn"]))
        if records != sorted(old.values(), key=lambda r: (r["startDate"] or 0, r["executionArn"])):
            write_lines(path, records)
        report.add("executions", len(records))

    def _export_s3(self, report: Report) -> None:
        s3 = self.client("s3")
        for bucket in s3.list_buckets().get("Buckets", []):
            self._export_bucket(bucket["Name"], report)

    def _export_bucket(self, bucket: str, report: Report) -> None:
        s3 = self.client("s3")
        root = self.data_dir / "s3" / bucket
        old: dict[str, dict[str, Any]] = read_json(root / "index.json", {})
        listed: dict[str, str] = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                listed[obj["Key"]] = obj["ETag"]
        index = {key: old[key] for key, etag in listed.items()
                 if key in old and old[key]["etag"] == etag and self._blob(root, old[key]["sha256"]).exists()}
        fetch = [key for key in listed if key not in index]

        def download(key: str) -> tuple[str, dict[str, Any] | None]:
            try:
                response = s3.get_object(Bucket=bucket, Key=key)
            except Exception as exc:
                if _code(exc) in ("NoSuchKey", "404"):
                    return key, None  # deleted since the listing
                raise
            digest = hashlib.sha256()
            size = 0
            (root / "objects").mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=root / "objects", prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    for chunk in iter(lambda: response["Body"].read(1 << 20), b""):
                        digest.update(chunk)
                        size += len(chunk)
                        handle.write(chunk)
                    handle.flush()
                    os.fsync(handle.fileno())
                blob = self._blob(root, digest.hexdigest())
                blob.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, blob)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            entry = {"sha256": digest.hexdigest(), "size": size, "etag": response["ETag"],
                     "content_type": response.get("ContentType"), "metadata": response.get("Metadata") or {}}
            for name, header in (("content_encoding", "ContentEncoding"), ("cache_control", "CacheControl"),
                                 ("content_disposition", "ContentDisposition")):
                if response.get(header):
                    entry[name] = response[header]
            return key, entry

        with ThreadPoolExecutor(max_workers=TRANSFER_THREADS) as pool:
            for key, entry in pool.map(download, fetch):
                if entry is not None:
                    index[key] = entry
                    report.add("s3_bytes_downloaded", int(entry["size"]))
        if index != old or not (root / "index.json").exists():
            write_json(root / "index.json", index)
        # Bodies nothing names any more (deleted or overwritten keys), after the new index is in place.
        for digest in {e["sha256"] for e in old.values()} - {e["sha256"] for e in index.values()}:
            self._blob(root, digest).unlink(missing_ok=True)
        report.add("s3_objects", len(index))

    @staticmethod
    def _blob(root: Path, digest: str) -> Path:
        return root / "objects" / digest[:2] / digest

    def _export_logs(self, report: Report) -> None:
        logs = self.client("logs")
        for page in logs.get_paginator("describe_log_groups").paginate():
            for group in page["logGroups"]:
                self._export_group(group["logGroupName"], report)

    def _export_group(self, group: str, report: Report) -> None:
        logs = self.client("logs")
        root = self.data_dir / "logs" / _name_hash(group)
        old = read_json(root / "index.json", {"group": group, "streams": {}})["streams"]
        streams: dict[str, dict[str, Any]] = {}
        for page in logs.get_paginator("describe_log_streams").paginate(logGroupName=group):
            for stream in page["logStreams"]:
                name = stream["logStreamName"]
                signature = [stream.get("storedBytes", 0), stream.get("firstEventTimestamp"),
                             stream.get("lastEventTimestamp")]
                entry = {"file": f"{_name_hash(name)}.jsonl", "signature": signature}
                if old.get(name) != entry or not (root / entry["file"]).exists():
                    events = self._stream_events(group, name)
                    write_lines(root / entry["file"], events)
                    report.add("log_events_written", len(events))
                streams[name] = entry
        if streams != old or not (root / "index.json").exists():
            write_json(root / "index.json", {"group": group, "streams": streams})
        for name in set(old) - set(streams):
            (root / old[name]["file"]).unlink(missing_ok=True)
        report.add("log_streams", len(streams))

    def _stream_events(self, group: str, stream: str) -> list[dict[str, Any]]:
        logs = self.client("logs")
        events: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"logGroupName": group, "logStreamName": stream, "startFromHead": True}
            if token:
                kwargs["nextToken"] = token
            response = logs.get_log_events(**kwargs)
            batch = response.get("events", [])
            events.extend({"timestamp": e["timestamp"], "message": e["message"]} for e in batch)
            if not batch or response.get("nextForwardToken") in (None, token):
                return events
            token = response["nextForwardToken"]

    # -- import
    def import_all(self) -> Report:
        started = time.monotonic()
        report = Report()
        if not self.has_data():
            return report
        stored = read_json(self.data_dir / "format.json", {}).get("format")
        if stored != FORMAT:
            raise RuntimeError(f"{self.data_dir} holds state format {stored}; this kaos reads format {FORMAT}")
        self._import_s3(report)
        self._import_logs(report)
        self._import_executions(report)
        self._import_dynamodb(report)
        report.seconds = time.monotonic() - started
        return report

    def _import_executions(self, report: Report) -> None:
        """Closed execution records straight into moto's state machines (StartExecution would run them)."""
        from moto.stepfunctions.models import Execution
        from moto.stepfunctions.responses import get_backend

        path = self.data_dir / "stepfunctions" / "executions.jsonl"
        if not path.exists():
            return
        backend = get_backend(self.account, self.region)

        def moment(value: float | None) -> datetime | None:
            # Aware, as the executing backend's own executions (ListExecutions sorts them all by start date).
            return None if value is None else datetime.fromtimestamp(value, UTC)

        for record in read_lines(path):
            try:
                machine = backend.describe_state_machine(record["stateMachineArn"])
            except Exception:
                LOG.warning("not restoring execution %s: its state machine is gone", record["executionArn"])
                continue
            execution = Execution(region_name=self.region, account_id=self.account, state_machine_name=machine.name,
                                  execution_name=record["name"], state_machine_arn=machine.arn,
                                  execution_input=record["input"])
            execution.start_date = moment(record["startDate"]) or execution.start_date
            if record["status"] == "RUNNING":
                execution.status, execution.stop_date = "ABORTED", datetime.now(UTC)
                execution.error, execution.cause = INTERRUPTED_EXECUTION
            else:
                execution.status, execution.stop_date = record["status"], moment(record["stopDate"])
                execution.output, execution.error, execution.cause = record["output"], record["error"], record["cause"]
            machine.executions.append(execution)
            report.add("executions", 1)

    def _import_dynamodb(self, report: Report) -> None:
        ddb = self.client("dynamodb")
        existing = {t for page in ddb.get_paginator("list_tables").paginate() for t in page["TableNames"]}
        for path in sorted((self.data_dir / "dynamodb").glob("*.jsonl")):
            table = path.stem
            if table not in existing:
                LOG.warning("not restoring %s: the template no longer has table %s", path, table)
                continue
            batch: list[dict[str, Any]] = []
            for item in read_lines(path):
                batch.append({"PutRequest": {"Item": item}})
                if len(batch) == 25:
                    self._write_batch(table, batch)
                    report.add("dynamodb_items", len(batch))
                    batch = []
            if batch:
                self._write_batch(table, batch)
                report.add("dynamodb_items", len(batch))

    def _write_batch(self, table: str, requests: list[dict[str, Any]]) -> None:
        pending: dict[str, Any] = {table: requests}
        while pending:
            pending = self.client("dynamodb").batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}

    def _import_s3(self, report: Report) -> None:
        s3 = self.client("s3")
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        for index_path in sorted((self.data_dir / "s3").glob("*/index.json")):
            bucket, root = index_path.parent.name, index_path.parent
            if bucket not in existing:
                LOG.warning("not restoring %s: the template no longer has bucket %s", root, bucket)
                continue
            index: dict[str, dict[str, Any]] = read_json(index_path, {})

            def upload(item: tuple[str, dict[str, Any]], bucket: str = bucket, root: Path = root) -> int:
                key, entry = item
                kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Metadata": entry.get("metadata") or {}}
                for name, header in (("content_type", "ContentType"), ("content_encoding", "ContentEncoding"),
                                     ("cache_control", "CacheControl"),
                                     ("content_disposition", "ContentDisposition")):
                    if entry.get(name):
                        kwargs[header] = entry[name]
                with self._blob(root, entry["sha256"]).open("rb") as body:
                    s3.put_object(Body=body, **kwargs)
                return int(entry["size"])

            with ThreadPoolExecutor(max_workers=TRANSFER_THREADS) as pool:
                for size in pool.map(upload, index.items()):
                    report.add("s3_objects", 1)
                    report.add("s3_bytes", size)

    def _import_logs(self, report: Report) -> None:
        # CloudWatch's PutLogEvents (and moto's) rejects events older than 14 days, so restored events go
        # into moto's log streams directly; groups and streams are created through the API.
        from moto.logs.models import logs_backends

        logs = self.client("logs")
        backend = logs_backends[self.account][self.region]
        for index_path in sorted((self.data_dir / "logs").glob("*/index.json")):
            index = read_json(index_path, {})
            group = index["group"]
            try:
                logs.create_log_group(logGroupName=group)
            except Exception as exc:
                if _code(exc) != "ResourceAlreadyExistsException":
                    raise
            for stream, entry in index["streams"].items():
                try:
                    logs.create_log_stream(logGroupName=group, logStreamName=stream)
                except Exception as exc:
                    if _code(exc) != "ResourceAlreadyExistsException":
                        raise
                events = list(read_lines(index_path.parent / entry["file"]))
                if events:
                    backend.groups[group].put_log_events(stream, events)
                report.add("log_streams", 1)
                report.add("log_events", len(events))

    def size_on_disk(self) -> int:
        return _dir_size(self.data_dir) if self.data_dir.exists() else 0


def fail_interrupted_jobs() -> list[str]:
    """Marks the jobs that were running when the stack stopped FAILED: their executions are gone.

    Goes through the product's own versioned model, as the pipeline's status writes do (one update that
    bumps the version and appends to the history)."""
    from chalicelib.models import JobItem
    from chalicelib.workspaces import now

    failed: list[str] = []
    condition = JobItem.sk.startswith("JOB#") & JobItem.status.is_in(*IN_FLIGHT)
    for item in JobItem.scan(condition, consistent_read=True):
        at = now()
        item.update(actions=[
            JobItem.status.set("FAILED"),
            JobItem.updated_at.set(at),
            JobItem.ended_at.set(at),
            JobItem.failure_reason.set(INTERRUPTED_REASON.format(job=item.job_id)),
            JobItem.history.set((item.history or []) + [{"status": "FAILED", "at": at}]),
        ])
        failed.append(item.job_id)
    return failed


class Persistence:
    """Restore on start, periodic export while running, a final export on a clean stop."""

    def __init__(self, state_dir: Path, client: Callable[[str], Any], region: str, account: str,
                 interval: float = EXPORT_INTERVAL_SECONDS) -> None:
        self.store = StateStore(state_dir / "data", client, region, account)
        self.tracker = ChangeTracker()
        self.interval = interval
        self._export_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tracked = False
        self.last_export: Report | None = None

    def track(self, server: Any) -> bool:
        """Puts the change tracker in front of a werkzeug server's WSGI app; False if there is none to wrap
        (then every export writes everything)."""
        if server is None or not hasattr(server, "app"):
            return False
        server.app = self.tracker.wrap(server.app)
        self._tracked = True
        return True

    def restore(self) -> Report:
        """Loads the stored state and fails the interrupted jobs. Raises rather than start empty: an empty
        stack would overwrite the stored state with nothing on its first export."""
        report = self.store.import_all()
        if report.counts:
            failed = fail_interrupted_jobs()
            report.add("jobs_failed", len(failed))
            LOG.info("restored %s in %.2f s; interrupted jobs marked failed: %s", report.counts, report.seconds,
                     failed or "none")
        return report

    def export(self, everything: bool = False) -> Report | None:
        with self._export_lock:
            services = self.tracker.take()
            if everything or not self._tracked:
                services = set(SERVICES)
            if not services:
                return None
            try:
                report = self.store.export(services)
            except BaseException:
                self.tracker.mark(*services)  # try again next time
                raise
            self.last_export = report
            LOG.debug("exported %s in %.3f s: %s", sorted(services), report.seconds, report.counts)
            return report

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="kaos-persistence", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.export()
            except Exception:
                LOG.exception("exporting the embedded stack's state failed; retrying in %s s", self.interval)

    def stop(self) -> Report | None:
        """Stops the periodic export and exports what changed since the last one."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return self.export()
