"""One small class per AWS boundary, each taking its boto3 client in `__init__` (tests pass a Stubber-wrapped or a
moto-backed one). `AwsClients` makes those clients, lazily per service, all from one botocore Config; the composition
root (chalicelib/wiring.py) holds one per process, so importing this module costs nothing and warm Lambdas reuse
their clients and connections.

Adapters catch `botocore.exceptions.ClientError` only (anything else is a bug or a network failure botocore has
already retried) and turn the error codes they expect into answers (None, False) or named errors (chalicelib.errors).
"""
from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import ClientError

from chalicelib.errors import AwsCallFailed, Conflict, InputInvalid, KaosError, NotFound, PlatformBucketReference

if TYPE_CHECKING:
    from botocore.config import Config

# Presigned PUT URLs live long enough for a slow upload of a 5 GiB file; S3 caps SigV4 presigning at 7 days.
PRESIGN_SECONDS = 3600
# HEAD requests are cheap but sequential latency adds up for 10,000-file snapshots.
HEAD_CONCURRENCY = 16
# Every thread pool that shares a client (HEADs and copies here, datum reads in batch.py, lineage Queries) uses at
# most HEAD_CONCURRENCY threads; botocore's default pool holds 10 connections, so 16 threads would queue for one
# (and urllib3 warns "Connection pool is full, discarding connection"). The pool is sized for them, with room.
MAX_POOL_CONNECTIONS = 2 * HEAD_CONCURRENCY
# botocore's "standard" retry mode retries throttling and transient errors with jittered backoff (legacy mode
# retries fewer error codes).
RETRIES = {"mode": "standard", "max_attempts": 5}
# The S3 error codes of an absent object (HeadObject answers a bare 404; GetObject NoSuchKey; versions NoSuchVersion).
_ABSENT = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchVersion"})
_UNREADABLE = _ABSENT | {"403", "AccessDenied", "NoSuchBucket"}
_PRECONDITION = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})

T = TypeVar("T")


def error_code(exc: ClientError) -> str:
    """The service's error code (`Error.Code`) of a failed call."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def client_config() -> Config:
    """The one botocore Config of every kaos client: a pool large enough for our thread pools, standard retries,
    and SigV4 for S3 presigning (the checksum and If-None-Match headers of a blob's PUT are part of its signature;
    SigV2 URLs, botocore's default for presigning in some regions, cannot sign them)."""
    from botocore.config import Config

    return Config(max_pool_connections=MAX_POOL_CONNECTIONS, retries=RETRIES,  # type: ignore[arg-type]
                  signature_version="s3v4")


class AwsClients:
    """The process's boto3 clients, one per service, each made on first use (boto3 costs ~0.16 s to import and
    a client ~20 ms to build; a Lambda that never touches SageMaker never builds its client)."""

    def __init__(self, config: Config | None = None) -> None:
        self._config = config

    def _make(self, service: str) -> Any:
        import boto3

        # boto3-stubs types client() per literal service name; ours arrive as plain strings.
        return boto3.client(service, config=self._config or client_config())  # type: ignore[call-overload]

    @functools.cached_property
    def s3(self) -> Any:
        return self._make("s3")

    @functools.cached_property
    def stepfunctions(self) -> Any:
        return self._make("stepfunctions")

    @functools.cached_property
    def sagemaker(self) -> Any:
        return self._make("sagemaker")

    @functools.cached_property
    def batch(self) -> Any:
        return self._make("batch")

    @functools.cached_property
    def logs(self) -> Any:
        return self._make("logs")

    @functools.cached_property
    def iam(self) -> Any:
        return self._make("iam")

    @functools.cached_property
    def sts(self) -> Any:
        return self._make("sts")

    @functools.cached_property
    def sagemaker_runtime(self) -> Any:
        return self._make("sagemaker-runtime")

    @functools.cached_property
    def cloudwatch(self) -> Any:
        return self._make("cloudwatch")


def _answer_or(call: Callable[[], T], absent: frozenset[str]) -> T | None:
    """The call's answer, or None when AWS answers one of the `absent` error codes."""
    try:
        return call()
    except ClientError as exc:
        if error_code(exc) in absent:
            return None
        raise


def checksum_sha256(sha256_hex: str) -> str:
    """S3's spelling of a SHA-256 (`ChecksumSHA256`, header `x-amz-checksum-sha256`): base64 of the 32 bytes."""
    return base64.b64encode(bytes.fromhex(sha256_hex)).decode()


def _sha256_hex(checksum: Any, checksum_type: Any) -> str | None:
    """The hex SHA-256 of the whole object from a HeadObject/CopyObject answer, or None when S3 holds none (or
    only a composite one of a multipart upload, `<base64>-<parts>`, which is not the object's hash)."""
    if not isinstance(checksum, str) or "-" in checksum or checksum_type == "COMPOSITE":
        return None
    try:
        raw = base64.b64decode(checksum, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


def blob_put_headers(sha256_hex: str | None) -> dict[str, str]:
    """The headers a blob's (or, without a SHA-256, a pack's) presigned PUT is signed with
    (`ObjectStore.presign_blob_put`); the uploader sends them.

    `x-amz-checksum-sha256`: S3 computes the body's SHA-256 and refuses the PUT (400 BadDigest) unless it is this
    one, so a blob is stored only if its bytes hash to its name (a pack's bytes are checked blob by blob when it is
    taken). `If-None-Match: *`: a conditional write, refused (412 PreconditionFailed) when the key exists, so a
    committed blob or pack is never overwritten (a URL reused after the commit writes nothing)."""
    conditional = {"If-None-Match": "*"}
    return conditional if sha256_hex is None else {"x-amz-checksum-sha256": checksum_sha256(sha256_hex), **conditional}


@dataclass(frozen=True)
class ObjectFacts:
    """What a HeadObject with ChecksumMode=ENABLED tells: the SHA-256 is the one S3 computed when it stored the
    bytes (it verifies a checksum sent with a PUT, and computes one on a copy asking for it); None when the object
    was written without one."""

    size: int
    sha256: str | None
    version: str | None
    content_type: str
    metadata: dict[str, str]


@dataclass(frozen=True)
class ObjectVersion:
    """One version of an object as ListObjectVersions lists it (`version` None in an unversioned bucket)."""

    key: str
    version: str | None
    etag: str
    last_modified: datetime


class ObjectStore:
    """The workspace bucket: content-addressed blobs, manifests, materialized snapshots, models, logs.

    `platform_buckets`: every bucket of the stack (this one always included). Remote data may not name them: what
    kaos holds is reached only through a workspace the caller is a member of (its snapshots and models), never by
    URL, which would reach any workspace."""

    def __init__(self, s3: Any, bucket: str, *, platform_buckets: Iterable[str] = ()) -> None:
        self.client = s3
        self.bucket = bucket
        self.platform_buckets = frozenset({bucket, *platform_buckets})

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def presign_put(self, key: str) -> str:
        return str(
            self.client.generate_presigned_url(
                "put_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=PRESIGN_SECONDS
            )
        )

    def presign_blob_put(self, key: str, sha256_hex: str | None) -> str:
        """A PUT URL for a content-addressed blob (or a pack, without `sha256_hex`): S3 accepts it only with bytes
        whose SHA-256 is `sha256_hex`, and only while the key does not exist; the uploader sends
        `blob_put_headers(sha256_hex)`, which it signs."""
        checksum = {} if sha256_hex is None else {"ChecksumSHA256": checksum_sha256(sha256_hex)}
        return str(
            self.client.generate_presigned_url(
                "put_object", Params={"Bucket": self.bucket, "Key": key, **checksum, "IfNoneMatch": "*"},
                ExpiresIn=PRESIGN_SECONDS,
            )
        )

    def presign_get(self, key: str) -> str:
        return str(
            self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=PRESIGN_SECONDS
            )
        )

    def size(self, key: str) -> int | None:
        """The object's size, or None when it does not exist."""
        head = _answer_or(lambda: self.client.head_object(Bucket=self.bucket, Key=key), _ABSENT)
        return None if head is None else int(head["ContentLength"])

    def facts(self, key: str) -> ObjectFacts | None:
        """Size, stored SHA-256, version and content type of the object (one HeadObject); None when absent."""
        head = _answer_or(lambda: self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED"),
                          _ABSENT)
        if head is None:
            return None
        return ObjectFacts(
            size=int(head["ContentLength"]), sha256=_sha256_hex(head.get("ChecksumSHA256"), head.get("ChecksumType")),
            version=_version(head), content_type=str(head.get("ContentType") or "application/octet-stream"),
            metadata=dict(head.get("Metadata") or {}),
        )

    def facts_of(self, keys: Iterable[str]) -> dict[str, ObjectFacts | None]:
        """`facts` of many keys, HEAD_CONCURRENCY at a time."""
        keys = list(dict.fromkeys(keys))
        with ThreadPoolExecutor(max_workers=HEAD_CONCURRENCY) as pool:
            return dict(zip(keys, pool.map(self.facts, keys), strict=True))

    def stored_sha256(self, key: str, facts: ObjectFacts) -> tuple[str, str | None]:
        """The SHA-256 of the object's bytes computed by S3, with the version holding them: the stored checksum,
        or, for an object written without one (before kaos asked for checksums, or by a copy that did not), a copy
        in place that asks S3 to compute it (server-side: no bytes pass through the caller). The copy keeps the
        content type and metadata, and later reads of the key find the checksum."""
        if facts.sha256 is not None:
            return facts.sha256, facts.version
        result = self.client.copy_object(
            Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": key},
            MetadataDirective="REPLACE", ContentType=facts.content_type, Metadata=facts.metadata,
            ChecksumAlgorithm="SHA256",
        )
        digest = _sha256_hex(result.get("CopyObjectResult", {}).get("ChecksumSHA256"), None)
        if digest is None:
            raise InputInvalid(f"S3 did not return a SHA-256 for the copy of {key!r}")
        return digest, _version(result)

    def discard(self, key: str, versions: Iterable[str | None]) -> None:
        """Removes these versions of the key (None: the object of an unversioned bucket), so bytes that proved
        wrong can neither be read nor block the conditional PUT of the right ones."""
        for version in dict.fromkeys(versions):
            if version:
                self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=version)
            else:
                self.client.delete_object(Bucket=self.bucket, Key=key)

    def put_bytes(self, key: str, body: bytes, content_type: str = "application/octet-stream",
                  sha256_hex: str | None = None, if_absent: bool = False) -> bool:
        """Writes the object; with `sha256_hex` S3 verifies the bytes against it and keeps it as the object's
        checksum. With `if_absent` the write is conditional (If-None-Match: *): False when the key already exists,
        which leaves the existing object as it is."""
        extra: dict[str, str] = {}
        if sha256_hex is not None:
            extra["ChecksumSHA256"] = checksum_sha256(sha256_hex)
        if if_absent:
            extra["IfNoneMatch"] = "*"
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type, **extra)
        except ClientError as exc:
            if if_absent and error_code(exc) in _PRECONDITION:
                return False
            raise
        return True

    def put_file(self, key: str, body: IO[bytes], content_type: str, sha256_hex: str) -> None:
        """Writes a seekable file (one PUT, up to S3's 5 GiB) that S3 verifies against `sha256_hex` and keeps it."""
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type,
                               ChecksumSHA256=checksum_sha256(sha256_hex))

    def put_json(self, key: str, value: Any) -> str:
        """Writes the JSON document (its SHA-256 verified and kept by S3); returns that SHA-256 (hex)."""
        import hashlib

        body = json.dumps(value, sort_keys=True).encode()
        digest = hashlib.sha256(body).hexdigest()
        self.put_bytes(key, body, "application/json", sha256_hex=digest)
        return digest

    def get_bytes(self, key: str) -> bytes:
        return bytes(self.stream(key).read())

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def stream(self, key: str, version: str | None = None, start: int = 0, end: int | None = None) -> IO[bytes]:
        """A file-like body for streaming reads (model archives and logs can be large), of one version if given,
        of bytes `start` to `end` (inclusive) if given. NotFound when the object (or that version) is absent."""
        extra: dict[str, str] = {"VersionId": version} if version else {}
        if start or end is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end}"
        try:
            body: IO[bytes] = self.client.get_object(Bucket=self.bucket, Key=key, **extra)["Body"]
        except ClientError as exc:
            if error_code(exc) in _ABSENT:
                raise NotFound(f"object {key!r} does not exist") from exc
            raise
        return body

    def describe(self, key: str) -> dict[str, Any]:
        head = self.client.head_object(Bucket=self.bucket, Key=key)
        return {
            "size": int(head["ContentLength"]),
            "etag": str(head.get("ETag", "")).strip('"'),
            "version_id": head.get("VersionId"),
        }

    def refuse_platform_bucket(self, bucket: str, key: str, field: str = "url") -> None:
        """Remote data may not name the platform's own buckets (see the class)."""
        if bucket in self.platform_buckets:
            raise PlatformBucketReference(
                f"{field}: s3://{bucket}/{key} is in the kaos platform's own bucket {bucket!r}, which remote data "
                "may not name; reference the snapshot instead (snapshot:<id>: a job's data maps each channel to a "
                "snapshot id) or the model (model:<job id>)"
            )

    def pin(self, bucket: str, key: str) -> dict[str, Any]:
        """Version id (versioned buckets) or ETag, and size, of an object in any bucket the role may read."""
        self.refuse_platform_bucket(bucket, key)
        head = _answer_or(lambda: self.client.head_object(Bucket=bucket, Key=key), _UNREADABLE)
        if head is None:
            raise NotFound(f"s3://{bucket}/{key} does not exist or is not readable")
        version = _version(head)
        etag = str(head.get("ETag", "")).strip('"')
        return {"version": f"version:{version}" if version else f"etag:{etag}", "size": int(head["ContentLength"])}

    def copy_pinned(self, bucket: str, key: str, version: str, dest_key: str) -> None:
        """Copies exactly the pinned object: by version id, or only if its ETag is unchanged."""
        self.refuse_platform_bucket(bucket, key)
        source: dict[str, str] = {"Bucket": bucket, "Key": key}
        extra: dict[str, str] = {}
        kind, _, value = version.partition(":")
        if kind == "version":
            source["VersionId"] = value
        elif kind == "etag":
            extra["CopySourceIfMatch"] = f'"{value}"'
        try:
            self.client.copy_object(Bucket=self.bucket, Key=dest_key, CopySource=source, **extra)
        except ClientError as exc:
            if error_code(exc) in _PRECONDITION:
                raise InputInvalid(f"s3://{bucket}/{key} changed since the snapshot pinned it ({version})") from exc
            if error_code(exc) in _UNREADABLE:
                raise InputInvalid(f"s3://{bucket}/{key} ({version}) is gone or not readable") from exc
            raise

    def put_stream(self, key: str, body: Any, content_type: str = "application/octet-stream") -> None:
        """Uploads a file-like body of unknown length without holding it: multipart, one part (8 MiB) at a time.
        AwsCallFailed when S3 refuses it."""
        try:
            self.client.upload_fileobj(body, self.bucket, key, ExtraArgs={"ContentType": content_type})
        except ClientError as exc:
            raise AwsCallFailed(f"s3://{self.bucket}/{key}: upload failed ({error_code(exc)})") from exc

    def copy(self, source_key: str, key: str, version: str | None = None) -> str | None:
        """Server-side copy (of one version of the source, if given); S3 computes the copy's SHA-256 and keeps it
        as its checksum. Returns it (hex)."""
        source = {"Bucket": self.bucket, "Key": source_key, **({"VersionId": version} if version else {})}
        result = self.client.copy_object(Bucket=self.bucket, Key=key, CopySource=source, ChecksumAlgorithm="SHA256")
        return _sha256_hex(result.get("CopyObjectResult", {}).get("ChecksumSHA256"), None)

    def keys(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield str(obj["Key"])

    def current_versions(self, prefix: str) -> Iterator[ObjectVersion]:
        """The current version of every object under the prefix (not deleted ones): ListObjectVersions, 1,000
        versions a page; S3 has no listing by time, so every version under the prefix is paged through."""
        for listed in self._versions(prefix):
            if listed.get("IsLatest"):
                yield ObjectVersion(str(listed["Key"]), _version(listed), str(listed.get("ETag", "")).strip('"'),
                                    listed["LastModified"])

    def version_order(self, key: str) -> list[str | None]:
        """The versions of exactly this key, newest first (S3 lists a key's versions in that order)."""
        return [_version(listed) for listed in self._versions(key) if listed["Key"] == key]

    def _versions(self, prefix: str) -> Iterator[dict[str, Any]]:
        """Every version (no delete markers) under the prefix, as ListObjectVersions lists them."""
        paginator = self.client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Versions", [])

    def delete_keys(self, keys: Iterable[str]) -> None:
        """Deletes these objects (their current version; absent ones are no error), 1,000 per DeleteObjects."""
        self._delete_objects([{"Key": key} for key in keys], "the given keys")

    def delete_prefix(self, prefix: str) -> int:
        """Deletes every version under the prefix (the bucket is versioned); returns how many were removed."""
        removed = 0
        paginator = self.client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            objects = [
                {"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
            ]
            removed += self._delete_objects(objects, prefix)
        return removed

    def _delete_objects(self, objects: list[dict[str, str]], what: str) -> int:
        # DeleteObjects takes at most 1,000 keys per call.
        for start in range(0, len(objects), 1000):
            chunk = objects[start : start + 1000]
            answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})
            # DeleteObjects answers 200 and lists the keys it could not delete: a kill must not pass over them.
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                raise RuntimeError(f"could not delete {len(errors)} object version(s) under {what}, e.g. "
                                   f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}")
        return len(objects)


def _version(answer: dict[str, Any]) -> str | None:
    """The VersionId of an S3 answer; None in an unversioned bucket (S3 spells that "null")."""
    version = answer.get("VersionId")
    return str(version) if version and version != "null" else None


def execution_arn_for(state_machine_arn: str, name: str) -> str:
    """The ARN Step Functions gives the execution `name` of the machine (known before the start, so a job row
    written once can carry it)."""
    return f"{state_machine_arn.replace(':stateMachine:', ':execution:')}:{name}"


class Executions:
    """Step Functions executions, named by job fingerprints so a start is exactly-once."""

    def __init__(self, sfn: Any) -> None:
        self.client = sfn

    def start(self, state_machine_arn: str, name: str, payload: dict[str, Any]) -> str:
        """Starts the execution, or returns the existing one of that name (a retried submission)."""
        try:
            response = self.client.start_execution(
                stateMachineArn=state_machine_arn, name=name, input=json.dumps(payload)
            )
        except ClientError as exc:
            if error_code(exc) != "ExecutionAlreadyExists":
                raise
            arn = execution_arn_for(state_machine_arn, name)
            described = self.client.describe_execution(executionArn=arn)
            if json.loads(described.get("input") or "{}") != payload:
                raise Conflict(f"execution {name!r} already exists with other input") from exc
            return arn
        return str(response["executionArn"])

    def describe(self, execution_arn: str) -> dict[str, Any]:
        return dict(self.client.describe_execution(executionArn=execution_arn))

    def stop(self, execution_arn: str, cause: str) -> None:
        """Stops a running execution; one that already ended (or never started) is left as it is."""
        _answer_or(lambda: self.client.stop_execution(executionArn=execution_arn, error="Killed",
                                                      cause=cause[:32768]),
                   frozenset({"ExecutionDoesNotExist", "ValidationException"}))

    def submitted_jobs(self, execution_arn: str) -> list[str]:
        """The ids of the jobs the execution's `.sync` Batch tasks submitted (their TaskSubmitted events: SubmitJob's
        answer), so a kill can terminate them; an execution that does not exist has none."""
        ids: list[str] = []
        kwargs: dict[str, Any] = {"executionArn": execution_arn, "maxResults": 1000}
        while True:
            page = _answer_or(lambda: self.client.get_execution_history(**kwargs),
                              frozenset({"ExecutionDoesNotExist"}))
            if page is None:
                return ids
            for event in page.get("events", []):
                job_id = _submitted_batch_job(event)
                if job_id is not None and job_id not in ids:
                    ids.append(job_id)
            if not page.get("nextToken"):
                return ids
            kwargs["nextToken"] = page["nextToken"]


def _submitted_batch_job(event: dict[str, Any]) -> str | None:
    details = event.get("taskSubmittedEventDetails") or {}
    if event.get("type") != "TaskSubmitted" or details.get("resourceType") != "batch":
        return None
    try:
        output = json.loads(details.get("output") or "{}")
    except ValueError:
        return None
    job_id = (output.get("JobId") or output.get("jobId")) if isinstance(output, dict) else None
    return job_id if isinstance(job_id, str) else None


# SageMaker answers ValidationException for a job that already ended (stop) or never existed (both).
_NO_TRAINING_JOB = frozenset({"ValidationException", "ResourceNotFound"})


class TrainingJobs:
    """SageMaker training jobs, for what the state machine cannot do itself (stopping on a kill)."""

    def __init__(self, sagemaker: Any) -> None:
        self.client = sagemaker

    def stop(self, name: str) -> None:
        """Stops the job; one that already ended or never existed is left as it is."""
        _answer_or(lambda: self.client.stop_training_job(TrainingJobName=name), _NO_TRAINING_JOB)

    def status(self, name: str) -> str | None:
        """TrainingJobStatus (InProgress, Stopping, Completed, Failed, Stopped), or None if there is no such job."""
        answer = _answer_or(lambda: self.client.describe_training_job(TrainingJobName=name), _NO_TRAINING_JOB)
        return None if answer is None else str(answer["TrainingJobStatus"])


class BatchJobs:
    """AWS Batch jobs, for what the state machine cannot do itself (terminating them on a workspace kill)."""

    ENDED = ("SUCCEEDED", "FAILED")

    def __init__(self, batch: Any) -> None:
        self.client = batch

    def terminate(self, job_id: str, reason: str) -> None:
        """TerminateJob: a job that already ended is left as it is (Batch accepts the call)."""
        self.client.terminate_job(jobId=job_id, reason=reason[:1024])

    def status(self, job_id: str) -> str | None:
        """The job's status (SUBMITTED ... RUNNING, SUCCEEDED, FAILED), or None if Batch does not know it."""
        jobs = self.client.describe_jobs(jobs=[job_id]).get("jobs", [])
        return str(jobs[0]["status"]) if jobs else None


@dataclass(frozen=True)
class LogPage:
    """One FilterLogEvents answer: its events ({"timestamp", "message"}, oldest first) and the token of the next
    page (None once every event stored so far was returned)."""

    events: list[dict[str, Any]]
    token: str | None


class LogReader:
    """Job logs where SageMaker and Batch write them: CloudWatch Logs, one stream per job instance.

    FilterLogEvents answers at most `limit` (<= 10,000) events or 1 MB per call, and may answer an EMPTY page that
    still carries a `nextToken` (it searches the group in time slices): only a page without a token ends a read."""

    def __init__(self, logs: Any, log_group: str) -> None:
        self.client = logs
        self.log_group = log_group

    def page(self, stream_prefix: str, limit: int, token: str | None = None, start_time: int | None = None) -> LogPage:
        """One page from `token`, or (without one) from `start_time` (ms since the epoch, inclusive) or the start.
        A group that does not exist (no job has logged yet) is an empty last page."""
        kwargs: dict[str, Any] = {"logGroupName": self.log_group, "logStreamNamePrefix": stream_prefix,
                                  "limit": limit}
        if token:
            kwargs["nextToken"] = token
        elif start_time is not None:
            kwargs["startTime"] = start_time
        try:
            response = _answer_or(lambda: self.client.filter_log_events(**kwargs),
                                  frozenset({"ResourceNotFoundException"}))
        except ClientError as exc:
            raise AwsCallFailed(f"CloudWatch Logs {self.log_group}: {error_code(exc)} "
                                f"{exc.response.get('Error', {}).get('Message', '')}") from exc
        if response is None:
            return LogPage([], None)
        events = [{"timestamp": int(e["timestamp"]), "message": str(e["message"])}
                  for e in response.get("events", [])]
        return LogPage(events, response.get("nextToken") or None)

    def messages(self, stream_prefix: str) -> Iterator[str]:
        """Every message of the streams, oldest first, a page at a time (never the whole log at once)."""
        token: str | None = None
        while True:
            page = self.page(stream_prefix, 10_000, token)
            for event in page.events:
                yield event["message"]
            if page.token is None:
                return
            token = page.token


class WebFiles:
    """https downloads for remote data manifests, verified against a sha256 when the manifest pins one."""

    TIMEOUT_SECONDS = 60

    def open(self, url: str) -> Any:
        import urllib.request  # only the pipeline's prepare step fetches; keep it off the import path

        try:
            return urllib.request.urlopen(url, timeout=self.TIMEOUT_SECONDS)
        except OSError as exc:
            raise InputInvalid(f"{url}: could not be fetched ({exc})") from exc


# --- serving (chalicelib/serving.py) ---------------------------------------------------------------------------
# What the SageMaker framework containers decode and encode (the inference toolkit's content types).
INFERENCE_CONTENT_TYPES = ("application/json", "text/csv", "application/x-npy")
# SageMaker answers ValidationException "Could not find endpoint/model/endpoint configuration" for an absent one.
_NO_HOSTING_RESOURCE = frozenset({"ValidationException", "ResourceNotFound"})


class Hosting:
    """SageMaker hosting resources kaos names (kaos-*) and the CloudWatch alarm that guards a real-time rollout;
    what the deployment state machine cannot do itself (deciding create or update, cleaning up, deleting)."""

    def __init__(self, sagemaker: Any, cloudwatch: Any) -> None:
        self.client = sagemaker
        self.cloudwatch = cloudwatch

    def endpoint(self, name: str) -> dict[str, Any] | None:
        """DescribeEndpoint's answer, or None if there is no such endpoint."""
        answer = _answer_or(lambda: self.client.describe_endpoint(EndpointName=name), _NO_HOSTING_RESOURCE)
        return None if answer is None else dict(answer)

    def model_exists(self, name: str) -> bool:
        return _answer_or(lambda: self.client.describe_model(ModelName=name), _NO_HOSTING_RESOURCE) is not None

    def config_exists(self, name: str) -> bool:
        return _answer_or(lambda: self.client.describe_endpoint_config(EndpointConfigName=name),
                          _NO_HOSTING_RESOURCE) is not None

    def delete_endpoint(self, name: str) -> None:
        """Deletes the endpoint; one that does not exist (any more) is left as it is."""
        _answer_or(lambda: self.client.delete_endpoint(EndpointName=name), _NO_HOSTING_RESOURCE)

    def delete_config(self, name: str) -> None:
        _answer_or(lambda: self.client.delete_endpoint_config(EndpointConfigName=name), _NO_HOSTING_RESOURCE)

    def delete_model(self, name: str) -> None:
        _answer_or(lambda: self.client.delete_model(ModelName=name), _NO_HOSTING_RESOURCE)

    def put_error_alarm(self, alarm: str, endpoint: str, threshold: int) -> None:
        """An alarm on the endpoint's 5XX invocation errors (any `threshold` in a minute), the auto-rollback alarm
        of a guarded UpdateEndpoint. PutMetricAlarm replaces an alarm of that name: idempotent."""
        self.cloudwatch.put_metric_alarm(
            AlarmName=alarm, Namespace="AWS/SageMaker", MetricName="Invocation5XXErrors", Statistic="Sum",
            Dimensions=[{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": "AllTraffic"}],
            Period=60, EvaluationPeriods=1, Threshold=float(threshold), TreatMissingData="notBreaching",
            ComparisonOperator="GreaterThanOrEqualToThreshold")

    def delete_alarm(self, alarm: str) -> None:
        self.cloudwatch.delete_alarms(AlarmNames=[alarm])

    def ensure_package_group(self, name: str, description: str) -> None:
        """A Model Package Group of that name (created once; an existing one is kept)."""
        if _answer_or(lambda: self.client.describe_model_package_group(ModelPackageGroupName=name),
                      _NO_HOSTING_RESOURCE) is not None:
            return
        try:
            self.client.create_model_package_group(ModelPackageGroupName=name,
                                                   ModelPackageGroupDescription=description[:1024])
        except ClientError as exc:  # a concurrent registration created it first
            if "already exists" not in str(exc.response.get("Error", {}).get("Message", "")):
                raise

    def create_package(self, group: str, token: str, image: str, model_data: str, status: str) -> str:
        """A new version of the Model Package Group (`token`: the same request again creates nothing new)."""
        return str(self.client.create_model_package(
            ModelPackageGroupName=group, ClientToken=token, ModelApprovalStatus=status,
            InferenceSpecification={"Containers": [{"Image": image, "ModelDataUrl": model_data}],
                                    "SupportedContentTypes": list(INFERENCE_CONTENT_TYPES),
                                    "SupportedResponseMIMETypes": list(INFERENCE_CONTENT_TYPES)},
        )["ModelPackageArn"])

    def set_package_status(self, arn: str, status: str) -> None:
        self.client.update_model_package(ModelPackageArn=arn, ModelApprovalStatus=status)


class PayloadTooLarge(KaosError):
    status = 413
    code = "PayloadTooLarge"


class UnsupportedMediaType(KaosError):
    status = 415
    code = "UnsupportedMediaType"


class NotAcceptable(KaosError):
    status = 406
    code = "NotAcceptable"


class ModelError(KaosError):
    status = 424
    code = "ModelError"


class InvocationTimeout(KaosError):
    status = 504
    code = "InvocationTimeout"


class EndpointNotInService(Conflict):
    code = "EndpointNotInService"


# The container's own status (ModelError's OriginalStatusCode) -> the error kaos answers with.
_CONTAINER_STATUS: dict[int, type[KaosError]] = {413: PayloadTooLarge, 415: UnsupportedMediaType,
                                                  406: NotAcceptable}


@dataclass(frozen=True)
class Invocation:
    body: bytes
    content_type: str


class Runtime:
    """sagemaker-runtime InvokeEndpoint: the same call on AWS and offline (the emulator forwards it to the model
    server). The container's errors come back as ModelError with its status and message."""

    def __init__(self, runtime: Any) -> None:
        self.client = runtime

    def invoke(self, endpoint: str, body: bytes, content_type: str, accept: str) -> Invocation:
        from botocore.exceptions import ReadTimeoutError

        try:
            answer = self.client.invoke_endpoint(EndpointName=endpoint, Body=body, ContentType=content_type,
                                                 Accept=accept)
        except ReadTimeoutError:
            raise InvocationTimeout(f"endpoint {endpoint}: the model did not answer in time") from None
        except ClientError as exc:
            raise _invocation_error(endpoint, exc) from None
        return Invocation(answer["Body"].read(), str(answer.get("ContentType") or "application/octet-stream"))


def _invocation_error(endpoint: str, exc: ClientError) -> KaosError:
    """InvokeEndpoint's errors as SageMaker Runtime answers them: the container's own status as ModelError (HTTP
    424) with OriginalStatusCode, a timeout as ModelError without one, an endpoint not serving (yet) as
    ValidationError "Endpoint <name> of account <id> not found.", a body over the limit as HTTP 413."""
    code, error = error_code(exc), exc.response.get("Error", {})
    message = str(exc.response.get("OriginalMessage") or error.get("Message") or code)
    lowered = message.lower()
    if "timed out while waiting for a response" in lowered:
        return InvocationTimeout(f"endpoint {endpoint}: the model did not answer within 60 s: {message}"[:4000])
    if code == "ModelError":
        status = int(str(exc.response.get("OriginalStatusCode") or 0))
        return _CONTAINER_STATUS.get(status, ModelError)(f"the model answered {status}: {message}"[:4000])
    if code == "413" or "content length exceeded" in lowered:
        return PayloadTooLarge(f"body: {message}")
    if code == "ModelNotReadyException" or (code == "ValidationError" and "not found" in lowered):
        return EndpointNotInService(f"endpoint {endpoint} is not in service: {message}")
    return AwsCallFailed(f"InvokeEndpoint {endpoint}: {code} {message}")


@dataclass(frozen=True)
class EndpointUsage:
    """An endpoint's InvokeEndpoint requests as SageMaker reports them to CloudWatch (namespace AWS/SageMaker,
    dimensions EndpointName and VariantName): `Invocations` (Count) and `ModelLatency` (Microseconds), summed."""

    invocations: int = 0
    model_latency_us: float = 0.0


class EndpointMetrics:
    """CloudWatch GetMetricData over the invocation metrics of endpoints: one request per 250 endpoints (two
    queries each, of the 500 a request may hold), paged by the paginator."""

    NAMESPACE = "AWS/SageMaker"
    METRICS = ("Invocations", "ModelLatency")
    MAX_QUERIES = 500
    # Daily sums: a multiple of 60, 300 and 3600 s is a valid period at every age of the data (CloudWatch keeps
    # 1-minute points 15 days, 5-minute ones 63 days, hourly ones 455 days); a year of an endpoint is 365 points.
    PERIOD = 86400

    def __init__(self, cloudwatch: Any) -> None:
        self.client = cloudwatch

    def usage(self, endpoints: Iterable[str], start: datetime, end: datetime) -> dict[str, EndpointUsage]:
        """Each endpoint's sums between `start` and `end` (an endpoint never invoked: zeros)."""
        names = sorted(set(endpoints))
        sums = {name: [0.0] * len(self.METRICS) for name in names}
        per_request = self.MAX_QUERIES // len(self.METRICS)
        for first in range(0, len(names), per_request):
            chunk = names[first:first + per_request]
            queries = [{"Id": f"q{i}_{m}", "MetricStat": {
                "Metric": {"Namespace": self.NAMESPACE, "MetricName": metric, "Dimensions": [
                    {"Name": "EndpointName", "Value": name}, {"Name": "VariantName", "Value": "AllTraffic"}]},
                "Period": self.PERIOD, "Stat": "Sum"}}
                for i, name in enumerate(chunk) for m, metric in enumerate(self.METRICS)]
            pages = self.client.get_paginator("get_metric_data").paginate(
                MetricDataQueries=queries, StartTime=start, EndTime=end)
            for page in pages:
                for result in page["MetricDataResults"]:  # one query's points may span pages: added up
                    i, m = (int(part) for part in result["Id"][1:].split("_"))
                    sums[chunk[i]][m] += sum(result.get("Values") or [])
        return {name: EndpointUsage(int(values[0]), values[1]) for name, values in sums.items()}
