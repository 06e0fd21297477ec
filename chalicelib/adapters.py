"""One small class per AWS boundary. Each takes its client injected (tests pass a Stubber-wrapped one) or
creates it lazily on first use, so importing this module costs nothing and warm Lambdas reuse clients."""
from __future__ import annotations

import base64
import binascii
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from collections.abc import Iterable, Iterator

from chalicelib.errors import Conflict, InputInvalid, NotFound, PlatformBucketReference

# Presigned PUT URLs live long enough for a slow upload of a 5 GiB file; S3 caps SigV4 presigning at 7 days.
PRESIGN_SECONDS = 3600
# HEAD requests are cheap but sequential latency adds up for 10,000-file snapshots.
HEAD_CONCURRENCY = 16


def _client(service: str) -> Any:
    import boto3  # imported here: boto3 costs ~0.16 s and only some code paths need each client

    # boto3-stubs types client() per literal service name; ours arrive as plain strings.
    return boto3.client(service)  # type: ignore[call-overload]


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


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


def blob_put_headers(sha256_hex: str) -> dict[str, str]:
    """The headers a blob's presigned PUT is signed with (`ObjectStore.presign_blob_put`); the uploader sends them.

    `x-amz-checksum-sha256`: S3 computes the body's SHA-256 and refuses the PUT (400 BadDigest) unless it is this
    one, so a blob is stored only if its bytes hash to its name. `If-None-Match: *`: a conditional write, refused
    (412 PreconditionFailed) when the key exists, so a committed blob is never overwritten (a URL reused after the
    commit writes nothing)."""
    return {"x-amz-checksum-sha256": checksum_sha256(sha256_hex), "If-None-Match": "*"}


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


class ObjectStore:
    """The workspace bucket: content-addressed blobs, manifests, materialized snapshots, models, logs."""

    def __init__(self, bucket: str, client: Any = None) -> None:
        self.bucket = bucket
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            # SigV4 presigning: the checksum and If-None-Match headers of a blob's PUT are then part of the
            # signature (SigV2 URLs, botocore's default for presigning in some regions, cannot sign them).
            self._client = boto3.client("s3", config=Config(signature_version="s3v4"))
        return self._client

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def presign_put(self, key: str) -> str:
        return str(
            self.client.generate_presigned_url(
                "put_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=PRESIGN_SECONDS
            )
        )

    def presign_blob_put(self, key: str, sha256_hex: str) -> str:
        """A PUT URL for a content-addressed blob: S3 accepts it only with bytes whose SHA-256 is `sha256_hex`, and
        only while the key does not exist; the uploader sends `blob_put_headers(sha256_hex)`, which it signs."""
        return str(
            self.client.generate_presigned_url(
                "put_object",
                Params={"Bucket": self.bucket, "Key": key, "ChecksumSHA256": checksum_sha256(sha256_hex),
                        "IfNoneMatch": "*"},
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
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(head["ContentLength"])

    def sizes(self, keys: Iterable[str]) -> dict[str, int | None]:
        keys = list(keys)
        with ThreadPoolExecutor(max_workers=HEAD_CONCURRENCY) as pool:
            return dict(zip(keys, pool.map(self.size, keys), strict=False))

    def facts(self, key: str) -> ObjectFacts | None:
        """Size, stored SHA-256, version and content type of the object (one HeadObject); None when absent."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except Exception as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        version = head.get("VersionId")
        return ObjectFacts(
            size=int(head["ContentLength"]), sha256=_sha256_hex(head.get("ChecksumSHA256"), head.get("ChecksumType")),
            version=str(version) if version and version != "null" else None,
            content_type=str(head.get("ContentType") or "application/octet-stream"),
            metadata=dict(head.get("Metadata") or {}),
        )

    def facts_of(self, keys: Iterable[str]) -> dict[str, ObjectFacts | None]:
        """`facts` of many keys, HEAD_CONCURRENCY at a time (as many requests as `sizes`)."""
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
        copied = result.get("CopyObjectResult", {})
        digest = _sha256_hex(copied.get("ChecksumSHA256"), None)
        if digest is None:
            raise InputInvalid(f"S3 did not return a SHA-256 for the copy of {key!r}")
        version = result.get("VersionId")
        return digest, str(version) if version and version != "null" else None

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
        except Exception as exc:
            if if_absent and _error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def put_json(self, key: str, value: Any) -> str:
        """Writes the JSON document (its SHA-256 verified and kept by S3); returns that SHA-256 (hex)."""
        import hashlib

        body = json.dumps(value, sort_keys=True).encode()
        digest = hashlib.sha256(body).hexdigest()
        self.put_bytes(key, body, "application/json", sha256_hex=digest)
        return digest

    def get_bytes(self, key: str) -> bytes:
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except Exception as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                raise NotFound(f"object {key!r} does not exist") from exc
            raise

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def stream(self, key: str) -> Any:
        """A file-like body for streaming reads (model archives can be large)."""
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"]

    def describe(self, key: str) -> dict[str, Any]:
        head = self.client.head_object(Bucket=self.bucket, Key=key)
        return {
            "size": int(head["ContentLength"]),
            "etag": str(head.get("ETag", "")).strip('"'),
            "version_id": head.get("VersionId"),
        }

    def refuse_platform_bucket(self, bucket: str, key: str, field: str = "url") -> None:
        """Remote data may not name the platform's own buckets: what kaos holds is reached only through a workspace
        the caller is a member of (its snapshots and models), never by URL, which would reach any workspace."""
        from chalicelib import config  # settings are read at call time

        if bucket == self.bucket or bucket in config.settings().platform_buckets:
            raise PlatformBucketReference(
                f"{field}: s3://{bucket}/{key} is in the kaos platform's own bucket {bucket!r}, which remote data "
                "may not name; reference the snapshot instead (snapshot:<id>: a job's data maps each channel to a "
                "snapshot id) or the model (model:<job id>)"
            )

    def pin(self, bucket: str, key: str) -> dict[str, Any]:
        """Version id (versioned buckets) or ETag, and size, of an object in any bucket the role may read."""
        self.refuse_platform_bucket(bucket, key)
        try:
            head = self.client.head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound", "403", "AccessDenied", "NoSuchBucket"):
                raise NotFound(f"s3://{bucket}/{key} does not exist or is not readable") from exc
            raise
        version = head.get("VersionId") or ""
        etag = str(head.get("ETag", "")).strip('"')
        return {"version": f"version:{version}" if version and version != "null" else f"etag:{etag}",
                "size": int(head["ContentLength"])}

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
        except Exception as exc:
            if _error_code(exc) in ("PreconditionFailed", "412"):
                raise InputInvalid(f"s3://{bucket}/{key} changed since the snapshot pinned it ({version})") from exc
            if _error_code(exc) in ("404", "NoSuchKey", "NoSuchVersion", "403", "AccessDenied"):
                raise InputInvalid(f"s3://{bucket}/{key} ({version}) is gone or not readable") from exc
            raise

    def put_stream(self, key: str, body: Any) -> None:
        self.client.upload_fileobj(body, self.bucket, key)

    def copy(self, source_key: str, key: str) -> str | None:
        """Server-side copy; S3 computes the copy's SHA-256 and keeps it as its checksum. Returns it (hex)."""
        result = self.client.copy_object(Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket,
                                                                                   "Key": source_key},
                                         ChecksumAlgorithm="SHA256")
        return _sha256_hex(result.get("CopyObjectResult", {}).get("ChecksumSHA256"), None)

    def keys(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield str(obj["Key"])

    def delete_prefix(self, prefix: str) -> int:
        """Deletes every version under the prefix (the bucket is versioned); returns how many were removed."""
        removed = 0
        paginator = self.client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            objects = [
                {"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
            ]
            # DeleteObjects takes at most 1,000 keys per call.
            for start in range(0, len(objects), 1000):
                chunk = objects[start : start + 1000]
                answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})
                # DeleteObjects answers 200 and lists the keys it could not delete: a kill must not pass over them.
                errors = answer.get("Errors") or []
                if errors:
                    first = errors[0]
                    raise RuntimeError(f"could not delete {len(errors)} object version(s) under {prefix}, e.g. "
                                       f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}")
                removed += len(chunk)
        return removed


def execution_arn_for(state_machine_arn: str, name: str) -> str:
    return f"{state_machine_arn.replace(':stateMachine:', ':execution:')}:{name}"


class Executions:
    """Step Functions executions, named by job fingerprints so a start is exactly-once."""

    def __init__(self, client: Any = None) -> None:
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _client("stepfunctions")
        return self._client

    def start(self, state_machine_arn: str, name: str, payload: dict[str, Any]) -> str:
        """Starts the execution, or returns the existing one of that name (a retried submission)."""
        try:
            response = self.client.start_execution(
                stateMachineArn=state_machine_arn, name=name, input=json.dumps(payload)
            )
        except Exception as exc:
            if _error_code(exc) != "ExecutionAlreadyExists":
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
        try:
            self.client.stop_execution(executionArn=execution_arn, error="Killed", cause=cause[:32768])
        except Exception as exc:
            if _error_code(exc) not in ("ExecutionDoesNotExist", "ValidationException"):
                raise

    def submitted_jobs(self, execution_arn: str) -> list[str]:
        """The ids of the jobs the execution's `.sync` Batch tasks submitted (their TaskSubmitted events: SubmitJob's
        answer), so a kill can terminate them; an execution that does not exist has none."""
        ids: list[str] = []
        kwargs: dict[str, Any] = {"executionArn": execution_arn, "maxResults": 1000}
        while True:
            try:
                page = self.client.get_execution_history(**kwargs)
            except Exception as exc:
                if _error_code(exc) == "ExecutionDoesNotExist":
                    return ids
                raise
            for event in page.get("events", []):
                details = event.get("taskSubmittedEventDetails") or {}
                if event.get("type") != "TaskSubmitted" or details.get("resourceType") != "batch":
                    continue
                try:
                    output = json.loads(details.get("output") or "{}")
                except ValueError:
                    continue
                job_id = (output.get("JobId") or output.get("jobId")) if isinstance(output, dict) else None
                if isinstance(job_id, str) and job_id not in ids:
                    ids.append(job_id)
            if not page.get("nextToken"):
                return ids
            kwargs["nextToken"] = page["nextToken"]


class TrainingJobs:
    """SageMaker training jobs, for what the state machine cannot do itself (stopping on a kill)."""

    def __init__(self, client: Any = None) -> None:
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _client("sagemaker")
        return self._client

    def stop(self, name: str) -> None:
        """Stops the job; SageMaker answers ValidationException for jobs that already ended or never existed."""
        try:
            self.client.stop_training_job(TrainingJobName=name)
        except Exception as exc:
            if _error_code(exc) not in ("ValidationException", "ResourceNotFound"):
                raise

    def status(self, name: str) -> str | None:
        """TrainingJobStatus (InProgress, Stopping, Completed, Failed, Stopped), or None if there is no such job."""
        try:
            return str(self.client.describe_training_job(TrainingJobName=name)["TrainingJobStatus"])
        except Exception as exc:
            if _error_code(exc) in ("ValidationException", "ResourceNotFound"):
                return None
            raise


class BatchJobs:
    """AWS Batch jobs, for what the state machine cannot do itself (terminating them on a workspace kill)."""

    ENDED = ("SUCCEEDED", "FAILED")

    def __init__(self, client: Any = None) -> None:
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _client("batch")
        return self._client

    def terminate(self, job_id: str, reason: str) -> None:
        """TerminateJob: a job that already ended is left as it is (Batch accepts the call)."""
        self.client.terminate_job(jobId=job_id, reason=reason[:1024])

    def status(self, job_id: str) -> str | None:
        """The job's status (SUBMITTED ... RUNNING, SUCCEEDED, FAILED), or None if Batch does not know it."""
        jobs = self.client.describe_jobs(jobs=[job_id]).get("jobs", [])
        return str(jobs[0]["status"]) if jobs else None


class LogReader:
    """Training logs, where SageMaker writes them: CloudWatch Logs, one stream per job instance."""

    def __init__(self, log_group: str, client: Any = None) -> None:
        self.log_group = log_group
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _client("logs")
        return self._client

    def read(self, stream_prefix: str, token: str | None, limit: int) -> tuple[list[dict[str, Any]], str | None]:
        kwargs: dict[str, Any] = {
            "logGroupName": self.log_group,
            "logStreamNamePrefix": stream_prefix,
            "limit": limit,
        }
        if token:
            kwargs["nextToken"] = token
        try:
            response = self.client.filter_log_events(**kwargs)
        except Exception as exc:
            if _error_code(exc) == "ResourceNotFoundException":
                return [], None
            raise
        events = [{"timestamp": e["timestamp"], "message": e["message"]} for e in response.get("events", [])]
        return events, response.get("nextToken")

    def read_all(self, stream_prefix: str) -> list[str]:
        lines: list[str] = []
        token: str | None = None
        while True:
            events, token = self.read(stream_prefix, token, 10_000)
            lines.extend(e["message"] for e in events)
            if not token or not events:
                return lines


class WebFiles:
    """https downloads for remote data manifests, verified against a sha256 when the manifest pins one."""

    TIMEOUT_SECONDS = 60

    def open(self, url: str) -> Any:
        import urllib.request  # only the pipeline's prepare step fetches; keep it off the import path

        try:
            return urllib.request.urlopen(url, timeout=self.TIMEOUT_SECONDS)
        except OSError as exc:
            raise InputInvalid(f"{url}: could not be fetched ({exc})") from exc
