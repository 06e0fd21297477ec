"""A job's inputs and outputs for download: presigned GET URLs of its code and data blobs, its params, its model.

Bytes never pass through the API: the client fetches each blob straight from S3 and checks it against the
manifest's sha256; a blob kept in a pack is the range `offset`..`offset + size - 1` of its pack's URL. Presigning is
local computation (no AWS call), so a whole snapshot is answered at once (with one index read per 100 files).
"""
from __future__ import annotations

import json
from typing import Any
from collections.abc import Iterable

from chalicelib import limits
from chalicelib.adapters import ObjectStore
from chalicelib.errors import InputInvalid, ValidationFailed
from chalicelib.blobs import blob_key, pack_key
from chalicelib.snapshots import Snapshots
from chalicelib.lifecycle import Jobs
from chalicelib.domain import workspace_prefix

PARTS = ("code", "data", "params", "model")
# What bounds the response: Lambda answers at most 6 MB. A snapshot holds at most MAX_FILES_PER_SNAPSHOT
# (10,000) files and each entry (path, sha256, size and a ~450-character SigV4 URL) is ~600 bytes, so one
# snapshot is ~6 MB at worst; a job can have up to MAX_CHANNELS data channels. Rather than page, a response
# over this budget is refused and the client asks for the parts one at a time (`what=code`, `what=data`).
MAX_RESPONSE_BYTES = 5 * 1024 * 1024


class ResponseTooLarge(ValidationFailed):
    """413-like: the listing would not fit in one Lambda response."""

    status = 413


class Downloads:
    def __init__(self, *, store: ObjectStore, jobs: Jobs, snapshots: Snapshots) -> None:
        self.store = store
        self._jobs = jobs
        self.snapshots = snapshots

    def files(self, workspace: str, job_id: str, what: str | None = None) -> dict[str, Any]:
        """The parts of the job named by `what` (all of them when None), each ready for direct download."""
        if what is not None and what not in PARTS:
            raise ValidationFailed(f"what: must be one of {', '.join(PARTS)}")
        job = self._jobs.get(workspace, job_id)
        inputs = job["inputs"]
        wanted = PARTS if what is None else (what,)
        result: dict[str, Any] = {"job": job["id"], "status": job["status"]}
        if "code" in wanted:
            result["code"] = self._entries(workspace, inputs["code"])
        if "data" in wanted:
            result["data"] = {channel: self._entries(workspace, snapshot_id)
                              for channel, snapshot_id in sorted(inputs["data"].items())}
        if "params" in wanted:
            result["params"] = self.snapshots.read_params(workspace, inputs["params"])
        if "model" in wanted:
            result["model"] = self._model(workspace, job.get("model"))
        size = len(json.dumps(result))
        if size > MAX_RESPONSE_BYTES:
            raise ResponseTooLarge(
                f"what: the listing is {size / 2**20:.1f} MB, over the {MAX_RESPONSE_BYTES // 2**20} MB a response "
                "may carry; ask for the parts separately (what=code, what=data; `kaos train get --code`, --data)"
            )
        return result

    def _entries(self, workspace: str, snapshot_id: str) -> list[dict[str, Any]]:
        manifest = self.snapshots.manifest(workspace, snapshot_id)
        # parse_manifest already refuses more files than this; kept here because the response size rests on it.
        if len(manifest.files) > limits.MAX_FILES_PER_SNAPSHOT:
            raise InputInvalid(f"snapshot {snapshot_id!r} has over {limits.MAX_FILES_PER_SNAPSHOT} files")
        blobs = self.snapshots.reader(workspace, manifest.files)
        places = {f.sha256: blobs.place(f.sha256) for f in manifest.files}
        keys = {digest: blob_key(workspace, digest) if place.pack is None else pack_key(workspace, place.pack)
                for digest, place in places.items()}
        urls = self._presign(keys.values())
        return [{"path": f.path, "sha256": f.sha256, "size": f.size, "url": urls[keys[f.sha256]],
                 **({} if places[f.sha256].pack is None else {"offset": places[f.sha256].offset})}
                for f in manifest.files]

    def _presign(self, keys: Iterable[str]) -> dict[str, str]:
        """One URL per distinct blob or pack (identical files, and the files of one pack, share one)."""
        return {key: self.store.presign_get(key) for key in dict.fromkeys(keys)}

    def _model(self, workspace: str, uri: str | None) -> dict[str, Any] | None:
        if not uri or not uri.startswith("s3://"):
            return None  # no model yet, or a batch job's output (`snapshot:<id>`), which is not a model archive
        # Only keys of the workspace whose membership the route checked are presigned.
        prefix = f"s3://{self.store.bucket}/{workspace_prefix(workspace)}"
        if not uri.startswith(prefix):
            raise InputInvalid(f"model {uri!r} is not in the workspace's prefix of the bucket")
        key = uri[len(f"s3://{self.store.bucket}/"):]
        size = self.store.size(key)
        if size is None:
            return None
        return {"url": self.store.presign_get(key), "size": size}
