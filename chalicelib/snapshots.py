"""Content-addressed snapshots: clients upload only the blobs a workspace lacks, then commit a manifest."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from typing import Any
from collections.abc import Mapping
from urllib.parse import urlsplit

from pynamodb.exceptions import DoesNotExist, PutError

from chalicelib import config, limits
from chalicelib.adapters import ObjectStore, WebFiles
from chalicelib.domain import FileEntry, Manifest, parse_manifest, split_s3_url
from chalicelib.errors import InputInvalid, NotFound, PlatformBucketReference, ValidationFailed
from chalicelib.models import LatestItem, SnapshotItem, ws_key
from chalicelib.workspaces import now, workspace_prefix

# A deterministic archive: fixed mtime and owner so the same snapshot always yields the same bytes.
_EPOCH = 0


def blob_key(workspace: str, sha256: str) -> str:
    return f"{workspace_prefix(workspace)}blobs/{sha256}"


def manifest_key(workspace: str, snapshot_id: str) -> str:
    return f"{workspace_prefix(workspace)}manifests/{snapshot_id}.json"


def materialized_prefix(workspace: str, snapshot_id: str) -> str:
    return f"{workspace_prefix(workspace)}snapshots/{snapshot_id}/"


def sourcedir_key(workspace: str, snapshot_id: str) -> str:
    return f"{workspace_prefix(workspace)}sourcedirs/{snapshot_id}/sourcedir.tar.gz"


def _s3_bucket_of_https(url: str) -> str | None:
    """The bucket an https URL of S3 names (virtual-hosted `bucket.s3....amazonaws.com/key` or path-style
    `s3....amazonaws.com/bucket/key`), or None for any other host."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if not host.endswith((".amazonaws.com", ".amazonaws.com.cn")):
        return None
    labels = host.split(".")
    first_s3 = next((i for i, label in enumerate(labels) if label == "s3" or label.startswith("s3-")), None)
    if first_s3 is None:
        return None
    if first_s3 > 0:
        return ".".join(labels[:first_s3])
    return parts.path.lstrip("/").split("/", 1)[0] or None


class Snapshots:
    def __init__(self, store: ObjectStore | None = None) -> None:
        self._store = store

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            self._store = ObjectStore(config.settings().bucket)
        return self._store

    def commit(self, workspace: str, kind: Any, files: Any, user: str) -> tuple[dict[str, Any], int]:
        """Stores the manifest (content-addressed, so a retry writes the same object), then completes it.

        The manifest travels once: if blobs are missing the answer is `pending` with upload URLs for them,
        and the client finishes with `complete(id)`, a request with no body. (Asking for missing blobs
        first and sending the manifest afterwards would send every digest twice.)"""
        manifest = parse_manifest(kind, files)
        if kind == "params":
            raise ValidationFailed("kind: params snapshots are made by the server from a job's params")
        remote = [i for i, f in enumerate(manifest.files) if f.remote]
        if remote and kind == "code":
            raise ValidationFailed(f"files[{remote[0]}].url: code snapshots hold uploaded files only")
        for i, item in enumerate(files):  # as sent, so the index names the entry
            if isinstance(item.get("url"), str):
                self._refuse_platform_url(item["url"], f"files[{i}].url (path {item.get('path')!r})")
        manifest = self._pin(manifest)
        self.store.put_json(manifest_key(workspace, manifest.snapshot_id), manifest.document)
        return self._complete(workspace, manifest, user)

    def _refuse_platform_url(self, url: str, field: str) -> None:
        """Remote data may not name a bucket of the platform (s3:// or an https URL of S3): a workspace's data is
        reached through its snapshots and models only, where membership was checked, never by URL."""
        if url.startswith("s3://"):
            self.store.refuse_platform_bucket(*split_s3_url(url), field=field)
            return
        bucket = _s3_bucket_of_https(url)
        if bucket is not None and (bucket == self.store.bucket or bucket in config.settings().platform_buckets):
            raise PlatformBucketReference(
                f"{field}: {url.split('?', 1)[0]} is in the kaos platform's own bucket {bucket!r}, which remote data "
                "may not name; reference the snapshot instead (snapshot:<id>: a job's data maps each channel to a "
                "snapshot id) or the model (model:<job id>)"
            )

    def _pin(self, manifest: Manifest) -> Manifest:
        """S3 references get their version id (or ETag) and size now, so the snapshot means fixed bytes."""
        pinned = []
        for f in manifest.files:
            if f.url.startswith("s3://") and not f.version:
                facts = self.store.pin(*split_s3_url(f.url))
                f = FileEntry(f.path, f.sha256, facts["size"], f.url, facts["version"])
            pinned.append(f)
        return Manifest(manifest.kind, tuple(pinned))

    def complete(self, workspace: str, snapshot_id: str, user: str) -> tuple[dict[str, Any], int]:
        try:
            manifest = self.manifest(workspace, snapshot_id)
        except NotFound:
            raise NotFound(f"snapshot {snapshot_id!r} was never proposed in workspace {workspace!r}") from None
        return self._complete(workspace, manifest, user)

    def _complete(self, workspace: str, manifest: Manifest, user: str) -> tuple[dict[str, Any], int]:
        """201/200 with the snapshot once every blob is present with its declared size; else 202 pending."""
        local = [f for f in manifest.files if not f.remote]
        sizes = self.store.sizes(blob_key(workspace, f.sha256) for f in local)
        absent = sorted({f.sha256 for f in local if sizes[blob_key(workspace, f.sha256)] is None})
        if absent:
            # URLs are handed out a page at a time to keep the response far below Lambda's 6 MB.
            page = absent[: limits.MAX_BLOBS_PER_REQUEST]
            return {"id": manifest.snapshot_id, "kind": manifest.kind, "status": "pending",
                    "missing_count": len(absent),
                    "missing": [{"sha256": d, "url": self.store.presign_put(blob_key(workspace, d))}
                                for d in page]}, 202
        wrong = [f for f in local if sizes[blob_key(workspace, f.sha256)] != f.size]
        if wrong:
            raise ValidationFailed(f"files: {wrong[0].path!r} declares {wrong[0].size} bytes but its blob differs")
        snapshot, created = self._record(workspace, manifest, user)
        return {**snapshot, "status": "committed"}, 201 if created else 200

    def put_small(self, workspace: str, manifest: Manifest, blobs: Mapping[str, bytes], user: str) -> dict[str, Any]:
        """Stores a snapshot whose bytes the server already holds (params): blobs first, then the record."""
        for digest, body in blobs.items():
            self.store.put_bytes(blob_key(workspace, digest), body)
        return self._record(workspace, manifest, user)[0]

    def _record(self, workspace: str, manifest: Manifest, user: str) -> tuple[dict[str, Any], bool]:
        snapshot_id = manifest.snapshot_id
        key = manifest_key(workspace, snapshot_id)
        # The manifest object is written before the row, so a row never points at a missing manifest.
        self.store.put_json(key, manifest.document)
        created_at = now()
        item = SnapshotItem(
            ws_key(workspace), f"SNAP#{snapshot_id}", snapshot_id=snapshot_id, kind=manifest.kind,
            file_count=len(manifest.files), total_bytes=manifest.total_bytes, manifest_key=key,
            created_at=created_at, created_by=user,
        )
        created = True
        try:
            item.save(condition=SnapshotItem.pk.does_not_exist())
        except PutError as exc:
            if exc.cause_response_code != "ConditionalCheckFailedException":
                raise
            created = False
            item = SnapshotItem.get(ws_key(workspace), f"SNAP#{snapshot_id}")
        LatestItem(ws_key(workspace), f"LATEST#{manifest.kind}", snapshot_id=snapshot_id, updated_at=created_at).save()
        return self.describe(item), created

    def get(self, workspace: str, snapshot_id: str, kind: str | None = None, field: str = "snapshot") -> SnapshotItem:
        try:
            item = SnapshotItem.get(ws_key(workspace), f"SNAP#{snapshot_id}")
        except DoesNotExist:
            raise NotFound(f"{field}: snapshot {snapshot_id!r} does not exist in workspace {workspace!r}") from None
        if kind is not None and item.kind != kind:
            raise ValidationFailed(f"{field}: snapshot {snapshot_id!r} is a {item.kind} snapshot, not {kind}")
        return item

    def manifest(self, workspace: str, snapshot_id: str) -> Manifest:
        document = self.store.get_json(manifest_key(workspace, snapshot_id))
        return parse_manifest(document["kind"], document["files"])

    def materialize(self, workspace: str, snapshot_id: str) -> str:
        """Copies the snapshot's blobs to their paths under one prefix (an S3Prefix channel); returns its URI.

        Server-side copies move no bytes through the Lambda; the prefix is named by the snapshot id, so a
        second job on the same data finds it complete and copies nothing."""
        prefix = materialized_prefix(workspace, snapshot_id)
        manifest = self.manifest(workspace, snapshot_id)
        present = self.store.sizes(prefix + f.path for f in manifest.files)
        for f in manifest.files:
            if present[prefix + f.path] is not None and (f.size < 0 or present[prefix + f.path] == f.size):
                continue
            if f.url.startswith("s3://"):
                bucket, key = split_s3_url(f.url)
                self.store.copy_pinned(bucket, key, f.version, prefix + f.path)
            elif f.url:
                self._fetch(f, prefix + f.path)
            else:
                self.store.copy(blob_key(workspace, f.sha256), prefix + f.path)
        return self.store.uri(prefix)

    def _fetch(self, entry: FileEntry, key: str) -> None:
        """Streams an https file into the materialized snapshot, checking its sha256 when the manifest has one."""
        digest = hashlib.sha256()

        class Hashing:
            def __init__(self, raw: Any) -> None:
                self.raw = raw

            def read(self, size: int = -1) -> bytes:
                chunk = bytes(self.raw.read(size))
                digest.update(chunk)
                return chunk

        with WebFiles().open(entry.url) as response:
            self.store.put_stream(key, Hashing(response))
        if entry.sha256 and digest.hexdigest() != entry.sha256:
            raise InputInvalid(f"{entry.url}: its sha256 is {digest.hexdigest()}, the manifest pins {entry.sha256}")

    def sourcedir(self, workspace: str, snapshot_id: str) -> tuple[str, Manifest]:
        """Builds sourcedir.tar.gz (the SageMaker script-mode code bundle) once per code snapshot."""
        key = sourcedir_key(workspace, snapshot_id)
        manifest = self.manifest(workspace, snapshot_id)
        if self.store.size(key) is None:
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as archive:
                for f in manifest.files:
                    body = self.store.get_bytes(blob_key(workspace, f.sha256))
                    info = tarfile.TarInfo(f.path)
                    info.size = len(body)
                    info.mtime = _EPOCH
                    info.mode = 0o755 if f.path.endswith(".sh") else 0o644
                    archive.addfile(info, io.BytesIO(body))
            self.store.put_bytes(key, buffer.getvalue(), "application/gzip")
        return self.store.uri(key), manifest

    def read_params(self, workspace: str, snapshot_id: str) -> dict[str, Any]:
        manifest = self.manifest(workspace, snapshot_id)
        if manifest.kind != "params" or len(manifest.files) != 1:
            raise InputInvalid(f"params snapshot {snapshot_id} is not a single params.json")
        value = json.loads(self.store.get_bytes(blob_key(workspace, manifest.files[0].sha256)))
        if not isinstance(value, dict):
            raise InputInvalid(f"params snapshot {snapshot_id} does not hold a JSON object")
        return value

    def latest(self, workspace: str, kind: str) -> str | None:
        try:
            return str(LatestItem.get(ws_key(workspace), f"LATEST#{kind}").snapshot_id)
        except DoesNotExist:
            return None

    @staticmethod
    def describe(item: SnapshotItem) -> dict[str, Any]:
        return {
            "id": item.snapshot_id, "kind": item.kind, "files": int(item.file_count),
            "bytes": int(item.total_bytes), "created_at": item.created_at,
        }
