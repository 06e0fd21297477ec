"""Pure domain rules: names, content-addressed manifests, params and the job fingerprint (no AWS calls)."""
from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from collections.abc import Mapping, Sequence

from chalicelib import limits
from chalicelib.errors import ValidationFailed

SNAPSHOT_KINDS = ("code", "data", "params")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_WORKSPACE = re.compile(limits.WORKSPACE_NAME_PATTERN)
_HP_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_CHANNEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Job ids keep 24 hex digits (96 bits) of the fingerprint: collision-free in practice and short enough that
# "train-<24>" plus an attempt suffix stays far below SageMaker's 63-character job-name limit.
FINGERPRINT_CHARS = 24


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces, so equal values always hash equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def validate_workspace_name(name: str, field: str = "workspace") -> str:
    if not isinstance(name, str) or not _WORKSPACE.match(name):
        raise ValidationFailed(f"{field}: {name!r} is not a valid workspace name ({limits.WORKSPACE_NAME_RULE})")
    return name


def validate_sha256(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise ValidationFailed(f"{field}: must be a lowercase hex sha256 digest (64 characters)")
    return value


def validate_path(path: Any, field: str) -> str:
    """Snapshot paths are relative POSIX paths that cannot leave the snapshot once materialized."""
    if not isinstance(path, str) or not path:
        raise ValidationFailed(f"{field}: must be a non-empty relative path")
    if len(path) > limits.MAX_PATH_CHARS:
        raise ValidationFailed(f"{field}: longer than {limits.MAX_PATH_CHARS} characters")
    parts = path.split("/")
    if path.startswith("/") or "\\" in path or "\x00" in path or any(p in ("", ".", "..") for p in parts):
        raise ValidationFailed(
            f"{field}: {path!r} must be a relative path with '/' separators and no '', '.' or '..' parts"
        )
    return path


@dataclass(frozen=True)
class FileEntry:
    """A file of a snapshot: a blob uploaded to the workspace (sha256), or a remote object referenced by URL.

    Remote S3 objects are pinned by version id (or ETag, in unversioned buckets) and copied when a job needs
    them; https files are fetched by the pipeline, and verified against `sha256` when the manifest gives one."""

    path: str
    sha256: str
    size: int
    url: str = ""
    version: str = ""

    def as_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"path": self.path, "sha256": self.sha256, "size": self.size}
        if self.url:
            entry.update(url=self.url, version=self.version)
        return entry

    @property
    def remote(self) -> bool:
        return bool(self.url)


@dataclass(frozen=True)
class Manifest:
    """The content of a snapshot: its id is the sha256 of this document, so identical trees share one id."""

    kind: str
    files: tuple[FileEntry, ...]

    @property
    def document(self) -> dict[str, Any]:
        return {"kind": self.kind, "files": [f.as_dict() for f in self.files]}

    @property
    def snapshot_id(self) -> str:
        return sha256_hex(canonical_json(self.document).encode())

    @property
    def total_bytes(self) -> int:
        return sum(max(f.size, 0) for f in self.files)  # https files of unknown size count as 0


def parse_manifest(kind: Any, files: Any) -> Manifest:
    if kind not in SNAPSHOT_KINDS:
        raise ValidationFailed(f"kind: must be one of {', '.join(SNAPSHOT_KINDS)}")
    if not isinstance(files, list) or not files:
        raise ValidationFailed("files: must be a non-empty list of {path, sha256, size}")
    if len(files) > limits.MAX_FILES_PER_SNAPSHOT:
        raise ValidationFailed(f"files: at most {limits.MAX_FILES_PER_SNAPSHOT} files per snapshot")
    entries: dict[str, FileEntry] = {}
    for i, item in enumerate(files):
        if not isinstance(item, dict):
            raise ValidationFailed(f"files[{i}]: must be an object with path, sha256 and size")
        path = validate_path(item.get("path"), f"files[{i}].path")
        url = item.get("url")
        if url is not None:
            validate_url(url, f"files[{i}].url")
            digest = validate_sha256(item["sha256"], f"files[{i}].sha256") if item.get("sha256") else ""
        else:
            digest = validate_sha256(item.get("sha256"), f"files[{i}].sha256")
        size = item.get("size", -1 if url else None)
        if not isinstance(size, int) or isinstance(size, bool) or size < (-1 if url else 0) \
                or size > limits.MAX_FILE_BYTES:
            raise ValidationFailed(f"files[{i}].size: must be an integer from 0 to {limits.MAX_FILE_BYTES} bytes")
        if path in entries:
            raise ValidationFailed(f"files[{i}].path: {path!r} appears twice")
        version = item.get("version", "")
        if not isinstance(version, str) or len(version) > 1024:
            raise ValidationFailed(f"files[{i}].version: must be a string (an S3 version id or ETag)")
        entries[path] = FileEntry(path, digest, size, url or "", version)
    _refuse_file_directory_clashes(files, entries)
    return Manifest(kind, tuple(entries[p] for p in sorted(entries)))


def _refuse_file_directory_clashes(files: list[Any], entries: Mapping[str, FileEntry]) -> None:
    """A snapshot materializes as a directory tree: `a` and `a/b` cannot both be files."""
    for i, item in enumerate(files):
        parts = item["path"].split("/")
        for k in range(1, len(parts)):
            parent = "/".join(parts[:k])
            if parent in entries:
                raise ValidationFailed(
                    f"files[{i}].path: {item['path']!r} lies under {parent!r}, which is also a file; a path cannot "
                    "be both a file and a directory"
                )


REMOTE_SCHEMES = ("s3://", "https://")


def validate_url(url: Any, field: str) -> str:
    if not isinstance(url, str) or not url.startswith(REMOTE_SCHEMES) or len(url) > 2048:
        raise ValidationFailed(f"{field}: must be an s3:// or https:// URL of at most 2048 characters")
    if url.startswith("s3://"):
        bucket, _, key = url[len("s3://"):].partition("/")
        if not bucket or not key:
            raise ValidationFailed(f"{field}: an S3 URL names a bucket and a key (s3://bucket/key)")
    return url


def split_s3_url(url: str) -> tuple[str, str]:
    bucket, _, key = url[len("s3://"):].partition("/")
    return bucket, key


def parse_params(params: Any) -> dict[str, Any]:
    """Params are a JSON object of SageMaker hyperparameters; values are JSON-encoded as the SageMaker SDK does."""
    if not isinstance(params, dict):
        raise ValidationFailed("params: must be a JSON object mapping names to values")
    if len(params) > limits.MAX_HYPERPARAMETERS:
        raise ValidationFailed(f"params: at most {limits.MAX_HYPERPARAMETERS} hyperparameters (SageMaker limit)")
    if len(canonical_json(params).encode()) > limits.MAX_PARAMS_BYTES:
        raise ValidationFailed(f"params: at most {limits.MAX_PARAMS_BYTES} bytes of JSON")
    for key, value in params.items():
        if not _HP_KEY.match(key) or len(key) > limits.MAX_HYPERPARAMETER_KEY_CHARS or key.startswith("sagemaker_"):
            raise ValidationFailed(
                f"params.{key}: names are letters, digits, '_', '.', '-' (start with a letter or '_'), at most "
                f"{limits.MAX_HYPERPARAMETER_KEY_CHARS} characters, and may not start with 'sagemaker_'"
            )
        if isinstance(value, list):
            if not value:
                raise ValidationFailed(f"params.{key}: a grid list must have at least one value")
            if any(isinstance(v, (list, dict)) for v in value):
                raise ValidationFailed(f"params.{key}: grid values must be scalars (no nested lists or objects)")
            if any(len(canonical_json(v)) > limits.MAX_HYPERPARAMETER_VALUE_CHARS for v in value):
                raise ValidationFailed(
                    f"params.{key}: each value at most {limits.MAX_HYPERPARAMETER_VALUE_CHARS} characters as JSON"
                )
            continue
        if len(canonical_json(value)) > limits.MAX_HYPERPARAMETER_VALUE_CHARS:
            raise ValidationFailed(
                f"params.{key}: value longer than {limits.MAX_HYPERPARAMETER_VALUE_CHARS} characters as JSON"
            )
    return params


def grid_points(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The cartesian product of the list-valued params (in key order, values in given order); scalars are
    shared by every point. Refused over the cap before anything is written or started."""
    axes = {k: v for k, v in params.items() if isinstance(v, list)}
    count = 1
    for values in axes.values():
        count *= len(values)
    if count > limits.MAX_GRID_POINTS:
        raise ValidationFailed(
            f"params: the grid has {count} points; at most {limits.MAX_GRID_POINTS} points per submission"
        )
    base = {k: v for k, v in params.items() if not isinstance(v, list)}
    return [{**base, **dict(zip(axes, combo, strict=True))} for combo in itertools.product(*axes.values())]


def is_grid(params: Mapping[str, Any]) -> bool:
    return any(isinstance(v, list) for v in params.values())


def params_manifest(params: Mapping[str, Any]) -> tuple[Manifest, bytes]:
    """Params are stored as a one-file snapshot so they are content-addressed like code and data."""
    body = (canonical_json(params) + "\n").encode()
    entry = FileEntry("params.json", sha256_hex(body), len(body))
    return Manifest("params", (entry,)), body


def hyperparameters(params: Mapping[str, Any]) -> dict[str, str]:
    return {k: json.dumps(v) for k, v in params.items()}


def validate_channel(name: Any, field: str) -> str:
    if not isinstance(name, str) or not _CHANNEL.match(name):
        raise ValidationFailed(
            f"{field}: channel names are 1-64 letters, digits, '.', '_' or '-' starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Resources:
    instance_type: str
    instance_count: int
    volume_gb: int
    max_runtime_seconds: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "instance_type": self.instance_type,
            "instance_count": self.instance_count,
            "volume_gb": self.volume_gb,
            "max_runtime_seconds": self.max_runtime_seconds,
        }


@dataclass(frozen=True)
class JobSpec:
    """Everything that determines a job's result; its fingerprint names the job, execution and provenance node."""

    workspace: str
    # The workspace's creation time: after a kill and re-create, identical inputs are a new job, never the
    # old execution or SageMaker job names (those outlive the workspace in AWS).
    incarnation: str
    kind: str
    code: str
    data: tuple[tuple[str, str], ...]
    params: str
    environment: str
    resources: Resources
    # The job id this job reproduces (`kaos train reproduce`): same inputs, an identity of its own.
    reproduces: str = ""

    def document(self) -> dict[str, Any]:
        if self.reproduces:  # only reproductions carry it, so every other fingerprint stays as it was
            return {**replace(self, reproduces="").document(), "reproduction_of": self.reproduces}
        return {
            "workspace": self.workspace,
            "incarnation": self.incarnation,
            "kind": self.kind,
            "code": self.code,
            "data": dict(self.data),
            "params": self.params,
            "environment": self.environment,
            "resources": self.resources.as_dict(),
        }

    @property
    def fingerprint(self) -> str:
        return sha256_hex(canonical_json(self.document()).encode())

    @property
    def job_id(self) -> str:
        return f"{self.kind}-{self.fingerprint[:FINGERPRINT_CHARS]}"


def attempt_name(job_id: str, attempt: int) -> str:
    """Execution and SageMaker job name of an attempt: names are never reused, so a resume gets a suffix."""
    return job_id if attempt <= 1 else f"{job_id}-{attempt}"


def environment_id(image: str) -> str:
    return sha256_hex(image.encode())[:FINGERPRINT_CHARS]


def page_size(raw: Any) -> int:
    if raw is None:
        return limits.DEFAULT_PAGE_SIZE
    try:
        value = int(raw)
    except (TypeError, ValueError):
        value = 0
    if not 1 <= value <= limits.MAX_PAGE_SIZE:
        raise ValidationFailed(f"limit: must be an integer from 1 to {limits.MAX_PAGE_SIZE}")
    return value


def sorted_unique(values: Sequence[str]) -> list[str]:
    return sorted(set(values))


def now() -> str:
    """The time every row and event of kaos is stamped with: UTC, ISO 8601, milliseconds (sortable as text)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def workspace_prefix(workspace: str) -> str:
    """Where the workspace's objects live in the bucket."""
    # The trailing slash matters: without it killing "mnist" would also match "mnist2/" keys.
    return f"ws/{workspace}/"
