"""Content-addressed snapshots: clients upload only the blobs a workspace lacks, then commit a manifest.

Integrity (what holds the bytes to their names):

* A blob is stored only if its bytes hash to its name. Its presigned PUT is signed with the SHA-256 as the
  object's checksum (`x-amz-checksum-sha256`), so S3 refuses other bytes, and with `If-None-Match: *`, so a stored
  blob is never overwritten (a URL reused after the commit writes nothing). Before committing, the server compares
  the SHA-256 S3 stored for each blob with its name; a blob without one is checksummed by S3 (a copy in place),
  and bytes that do not match are removed and the commit refused.
* A blob so verified is indexed (a `BLOB#<sha256>` row in the workspace's partition, with its size and place), so
  later commits ask DynamoDB about 100 blobs per request instead of S3 about each; only unindexed blobs are HEADed.
  Blobs are never deleted but with their workspace, whose kill deletes the index with it.
* Many small missing blobs travel as **packs** (as git sends and keeps objects): one presigned PUT per pack of their
  bytes concatenated in the order the server listed, at `ws/<ws>/packs/<pack id>` (the id hashes the pack's table
  of digests and sizes, which fixes its bytes), conditional on the key being absent like a blob's. `complete` reads
  the packs of its own workspace only, checks every blob's SHA-256 against its name before indexing any (one bad
  blob refuses the whole pack, which is removed), then indexes each blob at its offset in the pack, which is kept.
  Readers find blobs through the index (`BlobReader`: a pack is read once, not once per blob). Why keep packs
  rather than write each blob out: a new bundle of n small files then costs ceil(n/PACK_MAX_BLOBS) objects, not n
  PutObjects within the request (measured on the embedded stack: the explosion of 1,001 blobs was most of a new
  bundle's deploy), and building its code bundle reads those few packs instead of n blobs.

Cost of a commit of n files, k of whose blobs are not indexed yet (docs/architecture.md has the whole table):
an existing snapshot id answers from one GetItem; otherwise one PutObject (the manifest), the latest snapshot of
the kind (GetItem + its manifest: its blobs are known), one BatchGetItem per 100 of the m other blobs, and ceil(k/25)
BatchWriteItem. Packed blobs (k >= PACK_MIN_BLOBS small ones) cost no S3 request of their own: HeadObject and
GetObject per pack of up to PACK_MAX_BLOBS, all packs handed out at once and taken by one `complete`; a loose blob
costs a HeadObject twice (when its URL is handed out, and when the upload is verified). A commit that answers
pending keeps what it found lacking as a **proposal** (`ws/<ws>/proposals/<id>.json`, which only the API writes):
`complete` then checks those packs and blobs only (one GetObject) instead of looking every blob up again.
* A manifest is read back only if it hashes to its snapshot id.
* Derived objects are checked before a job uses them: a code snapshot's sourcedir.tar.gz against the SHA-256
  recorded in DynamoDB when it was built (`DerivedItem`; no job role may write the table), a materialized data
  snapshot's files against the manifest. A mismatch raises IntegrityError: the job fails with that reason and
  never runs (the object is rebuilt from the verified blobs, so a resume runs it on the right bytes).
"""
from __future__ import annotations

import gzip
import json
import tarfile
import tempfile
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from chalicelib import limits
from chalicelib.adapters import HEAD_CONCURRENCY, ObjectFacts, ObjectStore, WebFiles
from chalicelib.blobs import BlobPlace, BlobReader, HashingReader, HashingWriter, blob_key, pack_key
from chalicelib.domain import FileEntry, Manifest, now, parse_manifest, sha256_hex, split_s3_url, workspace_prefix
from chalicelib.errors import (ChecksumMismatch, InputInvalid, IntegrityError, NotFound, PlatformBucketReference,
                               ValidationFailed)
from chalicelib.repositories.snapshots import Derived, Snapshot, SnapshotRepository

# A deterministic archive: fixed mtime and owner so the same snapshot always yields the same bytes.
_EPOCH = 0
_NO_FACTS = ObjectFacts(size=-1, sha256=None, version=None, content_type="", metadata={})
# A code bundle up to this size is built in memory; a larger one spills to the Lambda's /tmp (never held whole).
SPOOL_BYTES = 8 * 1024 * 1024


def manifest_key(workspace: str, snapshot_id: str) -> str:
    return f"{workspace_prefix(workspace)}manifests/{snapshot_id}.json"


def proposal_key(workspace: str, snapshot_id: str) -> str:
    return f"{workspace_prefix(workspace)}proposals/{snapshot_id}.json"


def materialized_prefix(workspace: str, snapshot_id: str) -> str:
    return f"{workspace_prefix(workspace)}snapshots/{snapshot_id}/"


def sourcedir_key(workspace: str, snapshot_id: str) -> str:
    return f"{workspace_prefix(workspace)}sourcedirs/{snapshot_id}/sourcedir.tar.gz"


class SnapshotNotFound(NotFound):
    """A snapshot named by id that the workspace does not have: the client, which names the snapshots it committed
    by id without asking, commits them again on this code."""

    code = "SnapshotNotFound"


@dataclass(frozen=True)
class Pack:
    """Small missing blobs a client uploads as one object: their bytes concatenated in this order. The id is the
    SHA-256 of the table of contents (digest and size of each blob), which fixes the pack's bytes, so the same
    missing blobs always make the same pack and a resend writes the same key."""

    entries: tuple[FileEntry, ...]

    @cached_property  # read once per blob while a pack is indexed: hashing the table each time was quadratic
    def pack_id(self) -> str:
        return sha256_hex("".join(f"{f.sha256} {f.size}\n" for f in self.entries).encode())

    @property
    def size(self) -> int:
        return sum(f.size for f in self.entries)


def packs_of(small: list[FileEntry]) -> list[Pack]:
    """These small missing blobs (sorted by digest) in packs of up to PACK_MAX_BLOBS blobs and PACK_MAX_BYTES, or
    none when they are fewer than PACK_MIN_BLOBS (they travel loose). The same blobs always make the same packs."""
    if len(small) < limits.PACK_MIN_BLOBS:
        return []
    packs: list[Pack] = []
    while small:
        chosen: list[FileEntry] = []
        total = 0
        for entry in small[:limits.PACK_MAX_BLOBS]:
            if chosen and total + entry.size > limits.PACK_MAX_BYTES:
                break
            chosen.append(entry)
            total += entry.size
        packs.append(Pack(tuple(chosen)))
        small = small[len(chosen):]
    return packs


@dataclass(frozen=True)
class Missing:
    """What a commit still lacks: blobs to upload one by one (the first page first), the packs to upload, and how
    many blobs are missing in all."""

    loose: list[str]
    packs: list[Pack]
    count: int

    def proposal(self) -> dict[str, Any]:
        return {"loose": self.loose, "packs": [[f.sha256 for f in pack.entries] for pack in self.packs]}


@dataclass(frozen=True)
class Proposal:
    """What a pending commit lacked, as `Missing.proposal` kept it: the blobs to upload one by one and the packs
    handed out (digests in pack order). Every other blob of the snapshot was indexed, its size checked, when the
    commit answered: blobs outlive snapshots (only a workspace kill deletes them, with the proposals), so
    `complete` needs to check only these."""

    loose: list[str]
    packs: list[Pack]

    @classmethod
    def parse(cls, document: Any, entries: Mapping[str, FileEntry]) -> Proposal | None:
        """The proposal, or None if the document is not one of these entries' (then everything is looked up)."""
        try:
            loose = [d for d in document["loose"] if d in entries]
            packs = [Pack(tuple(entries[d] for d in digests)) for digests in document["packs"]]
        except (KeyError, TypeError):
            return None
        proposed = loose + [f.sha256 for pack in packs for f in pack.entries]
        if len(loose) != len(document["loose"]) or len(set(proposed)) != len(proposed) or not all(
                pack.entries and len(pack.entries) <= limits.PACK_MAX_BLOBS and pack.size <= limits.PACK_MAX_BYTES
                for pack in packs):
            return None
        return cls(loose, packs)


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
    """Snapshot commits and reads, code bundles, materialized data, and the records of derived objects."""

    def __init__(self, *, store: ObjectStore, repository: SnapshotRepository, web: WebFiles) -> None:
        self.store = store
        self.repository = repository
        self.web = web

    def commit(self, workspace: str, kind: Any, files: Any, user: str,
               placed: bool = False) -> tuple[dict[str, Any], int]:
        """Stores the manifest (content-addressed, so a retry writes the same object), then completes it.
        `placed`: the caller (a server-side producer such as a batch job's Record) already put every blob at its
        content address, so unindexed blobs are looked up in S3, never handed out as a pack to upload.

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
        known = self.repository.get(workspace, manifest.snapshot_id)
        if known is not None:  # its blobs were verified when it was committed, and outlive it
            return {**self.describe(known), "status": "committed"}, 200
        self.store.put_json(manifest_key(workspace, manifest.snapshot_id), manifest.document)
        return self._complete(workspace, manifest, user, unpack=False, packs=not placed)

    def _refuse_platform_url(self, url: str, field: str) -> None:
        """Remote data may not name a bucket of the platform (s3:// or an https URL of S3): a workspace's data is
        reached through its snapshots and models only, where membership was checked, never by URL."""
        if url.startswith("s3://"):
            self.store.refuse_platform_bucket(*split_s3_url(url), field=field)
            return
        bucket = _s3_bucket_of_https(url)
        if bucket is not None and bucket in self.store.platform_buckets:
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
        known = self.repository.get(workspace, snapshot_id)
        if known is not None:  # a retried or concurrent completion
            return {**self.describe(known), "status": "committed"}, 200
        try:
            manifest = self.manifest(workspace, snapshot_id)
        except NotFound:
            raise NotFound(f"snapshot {snapshot_id!r} was never proposed in workspace {workspace!r}") from None
        try:
            document = self.store.get_json(proposal_key(workspace, snapshot_id))
        except NotFound:  # proposed by a server before proposals were kept: look everything up
            document = None
        entries = {f.sha256: f for f in manifest.files if not f.remote}
        return self._complete(workspace, manifest, user, unpack=True,
                              proposal=None if document is None else Proposal.parse(document, entries))

    def _complete(self, workspace: str, manifest: Manifest, user: str, *, unpack: bool, packs: bool = True,
                  proposal: Proposal | None = None) -> tuple[dict[str, Any], int]:
        """201/200 with the snapshot once every blob is present, hashing to its name, with its declared size;
        else 202 pending with upload URLs (each bound to its blob's SHA-256 and to a key that does not exist) and,
        for many small blobs, the packs to upload (`unpack`: take the packs the client was given, if they are there),
        keeping what is missing as the snapshot's proposal."""
        local = [f for f in manifest.files if not f.remote]
        missing = self._missing(workspace, manifest.kind, local, unpack, packs, proposal)
        if missing.count:
            self.store.put_json(proposal_key(workspace, manifest.snapshot_id), missing.proposal())
            # URLs are handed out a page at a time to keep the response far below Lambda's 6 MB.
            answer = {"id": manifest.snapshot_id, "kind": manifest.kind, "status": "pending",
                      "missing_count": missing.count,
                      "missing": [{"sha256": d, "url": self.store.presign_blob_put(blob_key(workspace, d), d)}
                                  for d in missing.loose[: limits.MAX_BLOBS_PER_REQUEST]]}
            if missing.packs:
                answer["packs"] = [{"id": pack.pack_id, "blobs": [f.sha256 for f in pack.entries],
                                    "url": self.store.presign_blob_put(pack_key(workspace, pack.pack_id), None)}
                                   for pack in missing.packs]
            return answer, 202
        snapshot, created = self._record_row(workspace, manifest, user)
        return {**snapshot, "status": "committed"}, 201 if created else 200

    def _missing(self, workspace: str, kind: str, local: list[FileEntry], unpack: bool, packs: bool,
                 proposal: Proposal | None) -> Missing:
        """The blobs of these entries the workspace lacks: with a proposal, of those it names; otherwise the blobs
        of the workspace's latest snapshot of this kind are known (a new version of a bundle shares most of them:
        one GetItem and its manifest), and the other indexed blobs cost a BatchGetItem per 100. Of the rest, small
        ones, when there are PACK_MIN_BLOBS of them, are missing without asking S3 (they travel packed; with
        `unpack` the packs the client was given are taken first); the others are HEADed (`_absent`).
        ValidationFailed when a blob's size is not the one an entry declares; ChecksumMismatch when its bytes do not
        hash to its name."""
        entries = {f.sha256: f for f in local}
        if proposal is None:
            sizes = {d: size for d, size in self._latest_blobs(workspace, kind).items() if d in entries}
            sizes.update({d: place.size for d, place in
                          self.repository.blobs(workspace, entries.keys() - sizes.keys()).items()})
            _check_sizes(local, sizes)
            unindexed = sorted(entries.keys() - sizes.keys())
            small = [entries[d] for d in unindexed if packs and entries[d].size <= limits.PACK_BLOB_BYTES]
            offered = packs_of(small)
            packed = {f.sha256 for pack in offered for f in pack.entries}
            candidates = [d for d in unindexed if d not in packed]
        else:
            proposed = set(proposal.loose).union(f.sha256 for pack in proposal.packs for f in pack.entries)
            sizes = {d: f.size for d, f in entries.items() if d not in proposed}
            offered, candidates = proposal.packs, proposal.loose
        missing_packs: list[Pack] = []
        for pack in offered:
            if unpack and self._take(workspace, pack):
                sizes.update({f.sha256: f.size for f in pack.entries})
            else:
                missing_packs.append(pack)
        loose = self._absent(workspace, entries, candidates, sizes)
        count = len(loose) + sum(len(pack.entries) for pack in missing_packs)
        if not count:
            _check_sizes(local, sizes)
        return Missing(loose, missing_packs, count)

    def _take(self, workspace: str, pack: Pack) -> bool:
        """Takes the workspace's pack, if it was uploaded (False if not): every blob in it is checked against its
        name first, so a pack with one bad blob is refused whole (ChecksumMismatch naming the file) and removed,
        and no blob of it is indexed; then each blob is indexed at its offset in the pack, which is kept (its PUT was
        conditional on the key being absent, so the bytes checked are the ones that stay). The pack is at most
        PACK_MAX_BYTES, read once into memory."""
        key = pack_key(workspace, pack.pack_id)
        fact = self.store.facts(key)
        if fact is None:
            return False
        refused = (f"the pack {pack.pack_id} was refused whole (every blob of a pack must hash to its name, and the "
                   "pack must hold exactly their bytes) and removed; nothing of it was committed. Upload it again.")
        # The current version, read up to one byte past the pack's size (so a longer one shows, and memory stays
        # bounded even if the HEAD was of an earlier upload); reading a version by id would need GetObjectVersion.
        body = bytes(self.store.stream(key, end=pack.size).read()) if fact.size == pack.size else b""
        if len(body) != pack.size:
            self.store.discard(key, [fact.version])
            raise ChecksumMismatch(f"pack: holds {fact.size} bytes, but its {len(pack.entries)} blobs (first: "
                                   f"{pack.entries[0].path!r}) declare {pack.size}; {refused}")
        places: dict[str, BlobPlace] = {}
        offset = 0
        for entry in pack.entries:
            places[entry.sha256] = BlobPlace(entry.size, pack.pack_id, offset)
            offset += entry.size
        bad = [(f, digest) for f in pack.entries
               if (digest := sha256_hex(body[places[f.sha256].offset:places[f.sha256].offset + f.size])) != f.sha256]
        if bad:
            self.store.discard(key, [fact.version])
            (entry, digest), more = bad[0], f" ({len(bad) - 1} other blob(s) too)" if len(bad) > 1 else ""
            raise ChecksumMismatch(f"files: {entry.path!r}: its bytes in the pack hash to {digest}, not to its blob's "
                                   f"name {entry.sha256}{more}; {refused}")
        self.repository.put_blobs(workspace, places, now())
        return True

    def _absent(self, workspace: str, entries: Mapping[str, FileEntry], unindexed: list[str],
                sizes: dict[str, int]) -> list[str]:
        """Of these unindexed blobs, the ones S3 lacks, from the first page of them that has any (a client uploads
        those, then completes), the unchecked rest after them: HEADed a page at a time, and each one present is
        verified and indexed (its size added to `sizes`)."""
        for start in range(0, len(unindexed), limits.MAX_BLOBS_PER_REQUEST):
            page = unindexed[start:start + limits.MAX_BLOBS_PER_REQUEST]
            facts = self.store.facts_of(blob_key(workspace, d) for d in page)
            present = {d: fact for d in page if (fact := facts[blob_key(workspace, d)]) is not None}
            self._verify_blobs(workspace, [entries[d] for d in present], facts)
            self.repository.put_blobs(workspace, {d: BlobPlace(fact.size) for d, fact in present.items()}, now())
            sizes.update({d: fact.size for d, fact in present.items()})
            if len(present) < len(page):
                return [d for d in page if d not in present] + unindexed[start + len(page):]
        return []

    def _latest_blobs(self, workspace: str, kind: str) -> dict[str, int]:
        """The blobs (sha256 -> size) of the workspace's latest snapshot of this kind: every snapshot's blobs were
        verified, with their sizes, before its row and pointer were written, and blobs are deleted only with the
        workspace, whose kill deletes the pointer too. Empty when there is none."""
        latest = self.repository.latest(workspace, kind)
        if latest is None:
            return {}
        try:
            return {f.sha256: f.size for f in self.manifest(workspace, latest).files if not f.remote}
        except (NotFound, IntegrityError):  # not ours to repair here: the index answers instead
            return {}

    def _verify_blobs(self, workspace: str, present: list[FileEntry],
                      facts: Mapping[str, ObjectFacts | None]) -> None:
        """Every blob's bytes hash to its name, as S3 computed it: blobs uploaded through kaos' URLs carry that
        SHA-256 already (S3 verified it on the PUT), so in the usual case this costs nothing beyond the HEADs. A
        blob without a stored SHA-256 (written before kaos asked for checksums, or by a writer that sent none) is
        checksummed by S3 with a copy in place, once. Bytes that do not hash to their name are removed (so the
        right ones can be uploaded: the PUT is conditional on the key being absent) and nothing is committed."""
        todo = [f for f in present if (facts[blob_key(workspace, f.sha256)] or _NO_FACTS).sha256 != f.sha256]
        if not todo:
            return

        def check(entry: FileEntry) -> tuple[FileEntry, str] | None:
            key = blob_key(workspace, entry.sha256)
            fact = facts[key]
            assert fact is not None  # absent blobs were answered with upload URLs above
            digest, version = self.store.stored_sha256(key, fact)
            if digest == entry.sha256:
                return None
            self.store.discard(key, (fact.version, version))
            return entry, digest

        with ThreadPoolExecutor(max_workers=HEAD_CONCURRENCY) as pool:
            bad = [b for b in pool.map(check, todo) if b is not None]
        if bad:
            entry, digest = bad[0]
            more = f" ({len(bad) - 1} other blob(s) too)" if len(bad) > 1 else ""
            raise ChecksumMismatch(
                f"files: {entry.path!r}: the bytes stored for its blob {entry.sha256} hash to {digest}, not to the "
                f"blob's name{more}; they were removed and the snapshot was not committed. Upload it again."
            )

    def put_small(self, workspace: str, manifest: Manifest, blobs: Mapping[str, bytes], user: str) -> dict[str, Any]:
        """Stores a snapshot whose bytes the server already holds (params): blobs first, then the record. A blob
        that exists is left alone (its bytes are checked when they are read)."""
        for digest, body in blobs.items():
            self.store.put_bytes(blob_key(workspace, digest), body, sha256_hex=digest, if_absent=True)
        return self.record(workspace, manifest, user)[0]

    def record(self, workspace: str, manifest: Manifest, user: str) -> tuple[dict[str, Any], bool]:
        """Stores a snapshot whose blobs are all present: its manifest object, then its row (written once; the
        manifest first, so a row never points at a missing manifest), then the kind's latest pointer. Returns the
        snapshot and whether this call created it."""
        self.store.put_json(manifest_key(workspace, manifest.snapshot_id), manifest.document)
        return self._record_row(workspace, manifest, user)

    def _record_row(self, workspace: str, manifest: Manifest, user: str) -> tuple[dict[str, Any], bool]:
        """`record` once the manifest object is stored."""
        snapshot_id = manifest.snapshot_id
        key = manifest_key(workspace, snapshot_id)
        created_at = now()
        snapshot, created = self.repository.create(Snapshot(
            workspace, snapshot_id, manifest.kind, len(manifest.files), manifest.total_bytes, key, created_at, user))
        self.repository.set_latest(workspace, manifest.kind, snapshot_id, created_at)
        return self.describe(snapshot), created

    def get(self, workspace: str, snapshot_id: str, kind: str | None = None, field: str = "snapshot") -> Snapshot:
        """The snapshot; NotFound if the workspace has none of that id, ValidationFailed if it is not of `kind`."""
        snapshot = self.repository.get(workspace, snapshot_id)
        if snapshot is None:
            raise SnapshotNotFound(f"{field}: snapshot {snapshot_id!r} does not exist in workspace {workspace!r}")
        if kind is not None and snapshot.kind != kind:
            raise ValidationFailed(f"{field}: snapshot {snapshot_id!r} is a {snapshot.kind} snapshot, not {kind}")
        return snapshot

    def manifest(self, workspace: str, snapshot_id: str) -> Manifest:
        """The snapshot's manifest, verified: its content hashes to its id (the id is that hash)."""
        key = manifest_key(workspace, snapshot_id)
        document = self.store.get_json(key)
        try:
            manifest = parse_manifest(document["kind"], document["files"])
        except (KeyError, TypeError, ValidationFailed) as exc:
            raise IntegrityError(f"the manifest of snapshot {snapshot_id} (s3 key {key}) is not one kaos wrote "
                                 f"({exc}); nothing was run on it") from None
        if manifest.snapshot_id != snapshot_id:
            raise IntegrityError(f"the manifest of snapshot {snapshot_id} (s3 key {key}) does not hash to the "
                                 f"snapshot's id (its content is snapshot {manifest.snapshot_id}); nothing was run "
                                 "on it")
        return manifest

    def materialize(self, workspace: str, snapshot_id: str) -> str:
        """Copies the snapshot's blobs to their paths under one prefix (an S3Prefix channel); returns its URI.

        Server-side copies of loose blobs move no bytes through the Lambda (packed ones, small by construction, are
        written from their pack); the prefix is named by the snapshot id, so a second job on the same data finds it
        complete and copies nothing."""
        prefix = materialized_prefix(workspace, snapshot_id)
        manifest = self.manifest(workspace, snapshot_id)
        self.materialize_entries(workspace, snapshot_id, manifest.files)
        return self.store.uri(prefix)

    def materialize_entries(self, workspace: str, snapshot_id: str, entries: Iterable[FileEntry]) -> None:
        """Puts these files of the snapshot under its prefix, reusing the ones already there when they are the
        snapshot's bytes: an uploaded file's copy must carry its blob's SHA-256 (S3 computes it on the copy), a
        remote file's its size. A copy holding other bytes was overwritten since kaos made it: it is copied again
        from the blob and IntegrityError is raised, so the job does not run (a resume finds the prefix repaired)."""
        entries = list(entries)
        prefix = materialized_prefix(workspace, snapshot_id)
        facts = self.store.facts_of(prefix + f.path for f in entries)
        blobs = self.reader(workspace, [f for f in entries if not f.remote
                                        and (facts[prefix + f.path] or _NO_FACTS).sha256 != f.sha256])

        def one(f: FileEntry) -> str | None:
            key, fact = prefix + f.path, facts[prefix + f.path]
            if f.remote:
                if fact is not None and (f.size < 0 or fact.size == f.size):
                    return None
                if f.url.startswith("s3://"):
                    bucket, source = split_s3_url(f.url)
                    self.store.copy_pinned(bucket, source, f.version, key)
                else:
                    self._fetch(f, key)
                return None
            if fact is not None and fact.sha256 == f.sha256:
                return None
            copied: str | None
            if blobs.packed(f.sha256):  # written from its pack, with the SHA-256 S3 verifies and keeps
                body = blobs.read(f.sha256)
                copied = sha256_hex(body)
                if copied == f.sha256:
                    self.store.put_bytes(key, body, sha256_hex=f.sha256)
            else:
                copied = self.store.copy(blob_key(workspace, f.sha256), key)
            if copied is not None and copied != f.sha256:
                raise IntegrityError(f"the blob of {f.path!r} in snapshot {snapshot_id} does not hash to its name "
                                     f"{f.sha256} (its bytes hash to {copied}); nothing was run on it")
            # Overwritten: it held bytes S3 checksummed as others (a copy kaos made before checksums has none).
            return f.path if fact is not None and fact.sha256 is not None else None

        with ThreadPoolExecutor(max_workers=HEAD_CONCURRENCY) as pool:
            tampered = [path for path in pool.map(one, entries) if path is not None]
        if tampered:
            raise IntegrityError(
                f"{len(tampered)} file(s) of data snapshot {snapshot_id} under {prefix} (first: {tampered[0]!r}) "
                "were overwritten since kaos materialized them; the job was not run. They were copied again from the "
                "snapshot's blobs, so resuming the job runs it on the snapshot's bytes"
            )

    def _fetch(self, entry: FileEntry, key: str) -> None:
        """Streams an https file into the materialized snapshot, checking its sha256 when the manifest has one."""
        with self.web.open(entry.url) as response:
            body = HashingReader(response)
            self.store.put_stream(key, body)
        if entry.sha256 and body.hexdigest() != entry.sha256:
            raise InputInvalid(f"{entry.url}: its sha256 is {body.hexdigest()}, the manifest pins {entry.sha256}")

    def sourcedir(self, workspace: str, snapshot_id: str) -> tuple[str, Manifest]:
        """sourcedir.tar.gz, the SageMaker script-mode code bundle, built once per code snapshot and verified on
        every reuse: the SHA-256 S3 holds for it must be the one recorded (a derived record) when kaos built it."""
        key = sourcedir_key(workspace, snapshot_id)
        manifest = self.manifest(workspace, snapshot_id)
        record = self.recorded(workspace, [key]).get(key)
        fact = self.store.facts(key)
        if record is not None and fact is not None:
            if fact.sha256 == record.sha256 and fact.size == record.size:
                return self.store.uri(key), manifest
            self._build_sourcedir(workspace, key, manifest)  # repaired for the next attempt, never used now
            raise IntegrityError(
                f"the code bundle of snapshot {snapshot_id} (s3 key {key}) was overwritten since kaos built it: "
                f"S3 holds sha256 {fact.sha256 or '(none: written without a checksum)'}, kaos recorded "
                f"{record.sha256}; the job was not run. The bundle was rebuilt from the snapshot's blobs, so "
                "resuming the job runs the recorded code"
            )
        # Never built, deleted, or built before the records: (re)build it from the blobs.
        self._build_sourcedir(workspace, key, manifest)
        return self.store.uri(key), manifest

    def _build_sourcedir(self, workspace: str, key: str, manifest: Manifest) -> None:
        """A deterministic archive (sorted paths, fixed mtime, owner and gzip header: the same snapshot always makes
        the same bytes) of the verified blobs, streamed: each blob is read a chunk at a time into the archive, which
        is spooled (to /tmp past SPOOL_BYTES), hashed as it is written, and uploaded with that SHA-256 (S3 verifies
        and keeps it), which is then recorded."""
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
            written = HashingWriter(spool)
            # No file name in the gzip header (a BytesIO-less fileobj would lend its name) and a fixed mtime.
            with gzip.GzipFile(filename="", fileobj=written, mode="wb", compresslevel=6, mtime=_EPOCH) as zipped:
                with tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as archive:
                    blobs = self.reader(workspace, manifest.files)
                    for f in manifest.files:
                        info = tarfile.TarInfo(f.path)
                        info.size, info.mtime = f.size, _EPOCH
                        info.mode = 0o755 if f.path.endswith(".sh") else 0o644
                        body = HashingReader(blobs.open(f.sha256))
                        try:
                            archive.addfile(info, body)
                        except OSError as exc:  # a blob shorter than its entry: _check_blob says which
                            if "unexpected end of data" not in str(exc):
                                raise
                        self._check_blob(f, body)
            spool.seek(0)
            self.store.put_file(key, spool, "application/gzip", written.hexdigest())
        self.record_derived(workspace, key, written.hexdigest(), written.size)

    def reader(self, workspace: str, entries: Iterable[FileEntry]) -> BlobReader:
        """A reader of these entries' blobs, placed by the index (one BatchGetItem per 100 uploaded files)."""
        return BlobReader(self.store, workspace,
                          self.repository.blobs(workspace, {f.sha256 for f in entries if not f.remote}))

    def read_blob(self, workspace: str, entry: FileEntry) -> bytes:
        """A small uploaded file's bytes (a config or program the API reads), checked against its blob's name."""
        body = HashingReader(self.reader(workspace, [entry]).open(entry.sha256))
        raw = body.read()
        self._check_blob(entry, body)
        return raw

    @staticmethod
    def _check_blob(entry: FileEntry, body: HashingReader) -> None:
        """The bytes read from a blob (all of them: a longer blob is not its entry either) hash to its name."""
        body.drain()
        if body.hexdigest() != entry.sha256 or body.size != entry.size:
            raise IntegrityError(f"the blob of {entry.path!r} ({entry.sha256}) holds {body.size} bytes hashing to "
                                 f"{body.hexdigest()}; nothing was run on it")

    def read_params(self, workspace: str, snapshot_id: str) -> dict[str, Any]:
        manifest = self.manifest(workspace, snapshot_id)
        if manifest.kind != "params" or len(manifest.files) != 1:
            raise InputInvalid(f"params snapshot {snapshot_id} is not a single params.json")
        entry = manifest.files[0]
        # Loose: the server wrote it (`put_small`), never a client's pack.
        body = HashingReader(self.store.stream(blob_key(workspace, entry.sha256)))
        raw = body.read(limits.MAX_PARAMS_BYTES + 1)
        self._check_blob(entry, body)
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise InputInvalid(f"params snapshot {snapshot_id} does not hold a JSON object")
        return value

    # --- derived objects ------------------------------------------------------------------------------------
    # What kaos derived and will reuse (a code bundle, a batch datum's cache entry, a per-file job's plan) is recorded
    # in DynamoDB by the Lambda that wrote it; no job role may write the table, so whoever can overwrite the object
    # cannot rewrite its record, and a reuse that compares the two notices.

    def record_derived(self, workspace: str, key: str, sha256: str, size: int) -> None:
        """Records what kaos wrote at `key` (after writing it), for `recorded` on reuse."""
        self.repository.put_derived(workspace, _derived_name(workspace, key), Derived(sha256, size, now()))

    def recorded(self, workspace: str, keys: Iterable[str]) -> dict[str, Derived]:
        """The records of those keys that have one (strongly consistent)."""
        by_name = {_derived_name(workspace, key): key for key in keys}
        return {by_name[name]: record for name, record in self.repository.derived(workspace, by_name).items()}

    def forget_derived(self, workspace: str, key: str) -> None:
        """Drops the record of `key`, so the object counts as absent (a cache entry that proved wrong)."""
        self.repository.forget_derived(workspace, _derived_name(workspace, key))

    def put_recorded_json(self, workspace: str, key: str, value: Any) -> None:
        """Writes a JSON document kaos will read back (S3 verifies its SHA-256), then records that SHA-256."""
        body = json.dumps(value, sort_keys=True).encode()
        digest = sha256_hex(body)
        self.store.put_bytes(key, body, "application/json", sha256_hex=digest)
        self.record_derived(workspace, key, digest, len(body))

    def read_recorded_json(self, workspace: str, key: str, what: str,
                           record: Derived | None = None) -> tuple[Any, bool]:
        """A document written by `put_recorded_json`, checked against its record (looked up unless given); the flag
        is False when it has none (an entry older than the records, or one kaos never wrote: callers treat it as
        absent). NotFound when the object is absent; IntegrityError when its bytes differ from the recorded ones."""
        body = self.store.get_bytes(key)
        if record is None:
            record = self.recorded(workspace, [key]).get(key)
            if record is None:
                return json.loads(body), False
        digest = sha256_hex(body)
        if digest != record.sha256:
            raise IntegrityError(f"{what} (s3 key {key}) is not what kaos wrote: its sha256 is {digest}, the one "
                                 f"recorded when it was written is {record.sha256}; nothing was run on it")
        return json.loads(body), True

    @staticmethod
    def describe(snapshot: Snapshot) -> dict[str, Any]:
        return {
            "id": snapshot.snapshot_id, "kind": snapshot.kind, "files": snapshot.file_count,
            "bytes": snapshot.total_bytes, "created_at": snapshot.created_at,
        }


def _check_sizes(local: list[FileEntry], sizes: Mapping[str, int]) -> None:
    """ValidationFailed naming the first entry whose blob is known with another size than the entry declares."""
    wrong = [f for f in local if f.sha256 in sizes and sizes[f.sha256] != f.size]
    if wrong:
        raise ValidationFailed(f"files: {wrong[0].path!r} declares {wrong[0].size} bytes but its blob differs")


def _derived_name(workspace: str, key: str) -> str:
    prefix = workspace_prefix(workspace)
    if not key.startswith(prefix):
        raise ValueError(f"{key!r} is not a key of workspace {workspace!r}")
    return key[len(prefix):]
