"""Content-addressed blobs (`ws/<ws>/blobs/<sha256>`): the one streaming SHA-256 and the one routine that turns an
object kaos did not upload itself (a batch job's output, a file dropped under `incoming/`) into a blob.

Objects are hashed as they stream (1 MiB at a time), never read whole: a model archive or an uploaded file may be
gigabytes, and a Lambda has at most 10 GB of memory.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import IO, Any

from chalicelib.adapters import ObjectStore
from chalicelib.errors import InputInvalid
from chalicelib.workspaces import workspace_prefix

CHUNK_BYTES = 1 << 20


def blob_key(workspace: str, sha256: str) -> str:
    return f"{workspace_prefix(workspace)}blobs/{sha256}"


class Digest:
    """A running SHA-256 and byte count."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class HashingReader(Digest):
    """A file-like wrapper whose every read updates the SHA-256 and the size of the bytes read so far (so one pass
    can both consume a stream, e.g. tarfile or an upload, and hash it)."""

    def __init__(self, raw: IO[bytes] | Any) -> None:
        super().__init__()
        self._raw = raw

    def read(self, size: int = -1) -> bytes:
        chunk = bytes(self._raw.read(size))
        self.update(chunk)
        return chunk

    def drain(self) -> None:
        """Reads the rest (hashing it)."""
        while self.read(CHUNK_BYTES):
            pass


class HashingWriter(Digest):
    """A write-only file that hashes (and counts) what passes through it to `raw`."""

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self._raw = raw

    def write(self, data: bytes) -> int:
        self.update(data)
        return self._raw.write(data)

    def flush(self) -> None:
        self._raw.flush()


def sha256_of(body: IO[bytes] | Any) -> tuple[str, int]:
    """The SHA-256 (hex) and size of everything left in the stream, read a chunk at a time."""
    reader = HashingReader(body)
    reader.drain()
    return reader.hexdigest(), reader.size


@dataclass(frozen=True)
class Blob:
    sha256: str
    size: int


def ingest(store: ObjectStore, workspace: str, key: str, version: str | None = None) -> Blob:
    """Makes the object at `key` (that version, if given) one of the workspace's blobs: streams it once for its
    SHA-256, then copies it server-side to its content address, unless that blob is there already with that SHA-256
    stored. S3 computes the copy's SHA-256: bytes that changed between the read and the copy are refused
    (InputInvalid). NotFound when the object (or the version) is gone."""
    digest, size = sha256_of(store.stream(key, version=version))
    target = blob_key(workspace, digest)
    present = store.facts(target)
    if present is None or present.sha256 != digest:  # absent, or without (or with another) stored SHA-256
        copied = store.copy(key, target, version)
        if copied is not None and copied != digest:
            raise InputInvalid(f"{key} changed while it was read (sha256 {digest}, then {copied})")
    return Blob(digest, size)
