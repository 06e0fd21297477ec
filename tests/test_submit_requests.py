"""What a snapshot commit costs in requests (issue 14 item 1): an unchanged resubmit of a 1,001-file bundle makes at
most 3 API requests and no S3 request per file.

* Service level: `Snapshots` over the real DynamoDB repository and S3 adapter (moto in process), every AWS request
  counted where botocore sends it (`BaseClient._make_api_call`, which pynamodb uses too).
* Client level, on the embedded stack: every HTTP request the client process sends (API or presigned S3), counted
  at requests' transport (`Session.send`).
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.client
import pytest
import requests

from chalicelib import limits
from chalicelib.adapters import ObjectStore, WebFiles
from chalicelib.blobs import BlobPlace, blob_key, pack_key
from chalicelib.domain import sha256_hex
from chalicelib.errors import ChecksumMismatch
from chalicelib.repositories.snapshots import DynamoSnapshots
from chalicelib.snapshots import Snapshots
from kaos import operations as ops
from kaos.bundle import HashCache, hash_files, scan
from kaos.local import patches_s3
from tests.conftest import Stack
from tests.contract_tables import dynamo_table  # noqa: F401  (fixture)

N = 1_001
BUCKET = "kaos-requests"
USER = "arn:aws:iam::123456789012:user/dev"


class AwsCalls:
    """Every botocore request of this process, as (service, operation)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: Counter[tuple[str, str]] = Counter()
        send = botocore.client.BaseClient._make_api_call  # type: ignore[attr-defined]  # botocore is untyped here

        def counted(client: Any, operation: str, params: Any) -> Any:
            self.seen[(client.meta.service_model.service_name, operation)] += 1
            return send(client, operation, params)

        monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", counted)

    def take(self) -> dict[str, int]:
        taken = {f"{service}:{op}": count for (service, op), count in sorted(self.seen.items())}
        self.seen.clear()
        return taken


@pytest.fixture
def snapshots(dynamo_table: str) -> Iterator[Snapshots]:  # noqa: F811
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    patches_s3.apply()  # S3 keeps the SHA-256 a PUT sends, as the embedded stack's S3 does
    try:
        yield Snapshots(store=ObjectStore(s3, BUCKET), repository=DynamoSnapshots(), web=WebFiles())
    finally:
        patches_s3.remove()


def bundle(n: int = N, changed: int | None = None) -> dict[str, bytes]:
    return {f"src/m{i:04}.py": f"x = {i if i != changed else -i}\n".encode() for i in range(n)}


def manifest(files: dict[str, bytes]) -> list[dict[str, Any]]:
    return [{"path": p, "sha256": sha256_hex(b), "size": len(b)} for p, b in files.items()]


def upload(snapshots: Snapshots, ws: str, files: dict[str, bytes], digests: list[str]) -> None:
    """What the client's presigned PUTs of loose blobs store (S3 checksums each one)."""
    bodies = {sha256_hex(b): b for b in files.values()}
    for digest in digests:
        snapshots.store.put_bytes(blob_key(ws, digest), bodies[digest], sha256_hex=digest, if_absent=True)


def send(snapshots: Snapshots, ws: str, files: dict[str, bytes], pending: dict[str, Any]) -> None:
    """What the client uploads for a pending answer: its loose blobs, and its packs (each pack's blobs' bytes
    concatenated in the order given, by one conditional PUT)."""
    upload(snapshots, ws, files, [m["sha256"] for m in pending["missing"]])
    bodies = {sha256_hex(b): b for b in files.values()}
    for pack in pending.get("packs", []):
        snapshots.store.put_bytes(pack_key(ws, pack["id"]), b"".join(bodies[d] for d in pack["blobs"]),
                                  if_absent=True)


def commit(snapshots: Snapshots, ws: str, files: dict[str, bytes], aws: AwsCalls) -> tuple[dict[str, int], ...]:
    """Commits as the client does (commit, upload what is missing, complete, ...); the AWS calls of each API
    request (the uploads are the client's, not counted)."""
    costs = []
    answer, _ = snapshots.commit(ws, "code", manifest(files), USER)
    costs.append(aws.take())
    while answer["status"] == "pending":
        send(snapshots, ws, files, answer)
        aws.take()
        answer, _ = snapshots.complete(ws, answer["id"], USER)
        costs.append(aws.take())
    return tuple(costs)


def test_commit_requests_grow_with_what_changed_not_with_the_bundle(
        snapshots: Snapshots, monkeypatch: pytest.MonkeyPatch) -> None:
    """f(n, k) on n = 130 files with pages and packs of 100 blobs (1,000 in production): the same arithmetic,
    10x faster."""
    monkeypatch.setattr(limits, "MAX_BLOBS_PER_REQUEST", 100)
    monkeypatch.setattr(limits, "PACK_MAX_BLOBS", 100)
    aws = AwsCalls(monkeypatch)
    new = commit(snapshots, "ws-a", bundle(130), aws)
    # New bundle: the row and latest pointer looked up (none), 2 index reads; no HEAD: 130 small unindexed blobs
    # travel in two packs (100 and 30), both handed out at once; the manifest and the proposal written ...
    assert new[0] == {"dynamodb:BatchGetItem": 2, "dynamodb:GetItem": 2, "s3:PutObject": 2}
    # ... and the next request reads the manifest and the proposal (no lookup of the blobs again), takes both packs
    # (a HEAD and a GET each, every blob indexed at its place in its pack, which is kept: no blob written) and
    # records the snapshot (its row and the kind's latest pointer).
    assert new[1] == {"dynamodb:BatchWriteItem": 6, "dynamodb:GetItem": 1, "dynamodb:PutItem": 2,
                      "s3:GetObject": 4, "s3:HeadObject": 2}
    assert len(new) == 2

    assert commit(snapshots, "ws-a", bundle(130), aws) == ({"dynamodb:GetItem": 1},)  # unchanged: one lookup

    # One file changed: the latest snapshot's manifest vouches for the other 129 blobs; one index read, one HEAD;
    # `complete` checks the one blob its proposal names.
    assert commit(snapshots, "ws-a", bundle(130, changed=7), aws) == (
        {"dynamodb:BatchGetItem": 1, "dynamodb:GetItem": 2, "s3:GetObject": 1, "s3:HeadObject": 1,
         "s3:PutObject": 2},
        {"dynamodb:BatchWriteItem": 1, "dynamodb:GetItem": 1, "dynamodb:PutItem": 2, "s3:GetObject": 2,
         "s3:HeadObject": 1},
    )


def test_a_1001_file_bundle_whose_blobs_are_indexed_costs_no_s3_request_per_file(
        snapshots: Snapshots, monkeypatch: pytest.MonkeyPatch) -> None:
    """The blobs are indexed as a first commit leaves them (the test above checks how); 2,002 requests to moto
    to get there would cost this test 20 s."""
    files = bundle()
    snapshots.repository.put_blobs("ws-a", {sha256_hex(b): BlobPlace(len(b)) for b in files.values()}, "t0")
    aws = AwsCalls(monkeypatch)
    assert snapshots.commit("ws-a", "code", manifest(files), USER)[1] == 201
    assert aws.take() == {"dynamodb:BatchGetItem": 11, "dynamodb:GetItem": 2, "dynamodb:PutItem": 2,
                          "s3:PutObject": 1}
    assert snapshots.commit("ws-a", "code", manifest(files), USER)[1] == 200
    assert aws.take() == {"dynamodb:GetItem": 1}  # the same snapshot again: one lookup
    renamed = {("lib/" + p if p.endswith("0007.py") else p): b for p, b in files.items()}
    assert snapshots.commit("ws-a", "code", manifest(renamed), USER)[1] == 201
    # A new manifest over the latest snapshot's blobs: its manifest vouches for all, no index read.
    assert aws.take() == {"dynamodb:GetItem": 2, "dynamodb:PutItem": 2, "s3:GetObject": 1, "s3:PutObject": 1}
    assert snapshots.commit("ws-a", "code", manifest(bundle(changed=7)), USER)[1] == 202
    # One file changed: one index read and one HEAD (its blob is absent: it gets an upload URL, no row yet); the
    # manifest and the proposal written.
    assert aws.take() == {"dynamodb:BatchGetItem": 1, "dynamodb:GetItem": 2, "s3:GetObject": 1,
                          "s3:HeadObject": 1, "s3:PutObject": 2}


def test_another_workspaces_index_vouches_for_nothing(snapshots: Snapshots, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {"a.py": b"a\n", "b.py": b"b\n"}
    upload(snapshots, "ws-a", files, [sha256_hex(b) for b in files.values()])
    assert snapshots.commit("ws-a", "code", manifest(files), USER)[1] == 201
    pending, status = snapshots.commit("ws-b", "code", manifest(files), USER)
    assert status == 202 and pending["missing_count"] == 2


def test_a_blob_is_indexed_only_once_its_bytes_hash_to_its_name(snapshots: Snapshots) -> None:
    good, bad = b"good\n", b"bad\n"
    snapshots.store.put_bytes(blob_key("ws-a", sha256_hex(good)), good, sha256_hex=sha256_hex(good))
    snapshots.store.put_bytes(blob_key("ws-a", sha256_hex(good + b"!")), bad)  # written without a checksum
    files: list[dict[str, Any]] = [{"path": "good", "sha256": sha256_hex(good), "size": 5},
             {"path": "bad", "sha256": sha256_hex(good + b"!"), "size": 4}]
    with pytest.raises(ChecksumMismatch):
        snapshots.commit("ws-a", "data", files, USER)
    assert snapshots.repository.blobs("ws-a", [f["sha256"] for f in files]) == {}
    assert snapshots.store.facts(blob_key("ws-a", sha256_hex(good + b"!"))) is None  # removed


# --- the client, on the embedded stack ---------------------------------------------------------------------


class HttpCalls:
    """Every HTTP request this process sends through requests, as (method, API path or "s3")."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, api_url: str) -> None:
        self.seen: Counter[str] = Counter()
        send = requests.Session.send

        def counted(session: requests.Session, request: requests.PreparedRequest, **kwargs: Any) -> Any:
            url = request.url or ""
            where = url[len(api_url):].split("?")[0] if url.startswith(api_url) else "s3"
            self.seen[f"{request.method} {where}"] += 1
            return send(session, request, **kwargs)

        monkeypatch.setattr(requests.Session, "send", counted)


@pytest.fixture
def client_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("KAOS_CACHE_DIR", str(tmp_path / "cache"))
    yield tmp_path / "cache"


def test_an_unchanged_resubmit_is_one_api_request_and_no_upload(
        stack: Stack, tmp_path: Path, client_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = stack.client()
    client.create_workspace("requests")
    code, data = tmp_path / "code", tmp_path / "data"
    # 1,001 files of 10 distinct contents: a manifest of 1,001 entries, 10 blobs to upload the first time (the
    # service test above counts what 1,001 distinct blobs cost the server).
    sources = {f"src/m{i:04}.py": f"x = {i % 10}\n".encode() for i in range(N - 1)}
    for root, files in ((code, sources), (data, {"train.csv": b"a,b\n1,2\n"})):
        for path, body in files.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(body)
    (code / "train.py").write_text("print('hi')\n")
    old = os.stat(code).st_mtime - 60  # not "racy": the hash cache may keep them
    for written in [*code.rglob("*"), *data.rglob("*")]:
        os.utime(written, (old, old))

    def deploy() -> dict[str, Any]:
        """As `kaos train deploy` does: commit both inputs, submit, once more in full if a named one is gone."""
        def attempt() -> dict[str, Any]:
            ids = {kind: client.upload_snapshot("requests", kind, hash_files(scan(root, kind), lambda _: None,
                                                                             HashCache(root)), lambda _: None)["id"]
                   for kind, root in (("code", code), ("data", data))}
            return dict(client.submit("requests", ids["code"], {"training": ids["data"]}, {"seed": 1}))

        return ops.submitting(client, "requests", attempt)

    calls = HttpCalls(monkeypatch, client.base)
    first = deploy()
    # The code's 11 distinct blobs travel as one pack, the data's one blob loose: two uploads in all.
    assert calls.seen["PUT s3"] == 2, calls.seen
    calls.seen.clear()
    hashed = Counter[str]()
    reads = Path.open

    def counted_open(path: Path, *args: Any, **kwargs: Any) -> Any:
        if code in path.parents or data in path.parents:
            hashed[str(path)] += 1
        return reads(path, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counted_open)
    again = deploy()
    assert again["id"] == first["id"] and again["cached"]
    # The two inputs are named by the ids this user committed: the submission is the one round trip.
    assert calls.seen == {"POST /workspaces/requests/jobs": 1}, calls.seen
    assert not hashed, f"{len(hashed)} unchanged files were read again"

    # The workspace re-made: the snapshots the client remembers are gone. The submission naming them is refused
    # (SnapshotNotFound), and the same deploy commits both in full and submits again.
    client.kill_workspace("requests")
    client.create_workspace("requests")
    monkeypatch.setattr(Path, "open", reads)
    calls.seen.clear()
    fresh = deploy()
    assert fresh["id"] != first["id"] and not fresh["cached"]
    assert calls.seen["POST /workspaces/requests/jobs"] == 2 and calls.seen["POST /workspaces/requests/snapshots"] == 2
    assert calls.seen["PUT s3"] == 2, calls.seen
