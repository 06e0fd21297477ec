"""Content-addressed blobs: the one streaming SHA-256, the one routine that turns an object kaos did not upload
itself (a batch job's output, a file dropped under `incoming/`) into a blob, and the one reader of blobs.

A verified blob lives loose, at its content address `ws/<ws>/blobs/<sha256>`, or in a kept **pack**
(`ws/<ws>/packs/<pack id>`: many small blobs a client uploaded as one object, as git keeps objects in packs); the
blob index (`BlobPlace`) says where. Readers go through `BlobReader`, which reads each pack once.

Objects are hashed as they stream (1 MiB at a time), never read whole: a model archive or an uploaded file may be
gigabytes, and a Lambda has at most 10 GB of memory.
"""
from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

from chalicelib import limits
from chalicelib.adapters import ObjectStore
from chalicelib.errors import InputInvalid
from chalicelib.domain import workspace_prefix

CHUNK_BYTES = 1 << 20
# Whole packs a reader keeps in memory (each is at most PACK_MAX_BYTES); past this, blobs are read by range. A code
# bundle of 10,000 files of 2 KB is 20 MB of packs: read in 10 GETs instead of 10,000.
PACK_CACHE_BYTES = 64 * 1024 * 1024


def blob_key(workspace: str, sha256: str) -> str:
    return f"{workspace_prefix(workspace)}blobs/{sha256}"


def pack_key(workspace: str, pack_id: str) -> str:
    return f"{workspace_prefix(workspace)}packs/{pack_id}"


@dataclass(frozen=True)
class BlobPlace:
    """Where the workspace holds a verified blob of `size` bytes: its own object at `blob_key` (`pack` None), or the
    bytes at `offset` of the kept pack `pack`."""

    size: int
    pack: str | None = None
    offset: int = 0


class BlobReader:
    """Opens a workspace's blobs where the index places them (a blob the index does not place is read loose, as
    blobs were stored before packs were kept). A pack is read whole once and kept while PACK_CACHE_BYTES allow,
    else each blob of it by range. Callers verify what they read against the blob's name: this only locates."""

    def __init__(self, store: ObjectStore, workspace: str, places: Mapping[str, BlobPlace]) -> None:
        self._store = store
        self._workspace = workspace
        self._places = places
        self._packs: dict[str, bytes] = {}
        self._cached = 0
        self._lock = threading.Lock()  # materialization reads blobs from a thread pool

    def open(self, sha256: str) -> IO[bytes]:
        place = self.place(sha256)
        if place.pack is None:
            return self._store.stream(blob_key(self._workspace, sha256))
        end = place.offset + place.size
        body = self._pack(place.pack) if place.size else b""  # an empty blob: no range to ask for
        if body is None:
            return self._store.stream(pack_key(self._workspace, place.pack), start=place.offset, end=end - 1)
        return io.BytesIO(body[place.offset:end])

    def read(self, sha256: str) -> bytes:
        return bytes(self.open(sha256).read())

    def packed(self, sha256: str) -> bool:
        return self.place(sha256).pack is not None

    def place(self, sha256: str) -> BlobPlace:
        """Where the blob is read from (loose, of unknown size, when the index does not place it)."""
        return self._places.get(sha256) or BlobPlace(-1)

    def _pack(self, pack_id: str) -> bytes | None:
        with self._lock:
            if pack_id in self._packs:
                return self._packs[pack_id]
            if self._cached + limits.PACK_MAX_BYTES > PACK_CACHE_BYTES:
                return None
            # Bounded even if the object were longer than the pack that was verified (it cannot be replaced: its
            # PUT was conditional on the key being absent).
            key = pack_key(self._workspace, pack_id)
            body = bytes(self._store.stream(key, end=limits.PACK_MAX_BYTES - 1).read())
            self._packs[pack_id] = body
            self._cached += len(body)
            return body


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
