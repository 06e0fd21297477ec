"""Packs (issue 14 item 1): many small missing blobs travel as one object, and `complete` lets a blob of a pack into
the workspace only once every blob of the pack hashes to its name.

`Snapshots` over the real DynamoDB repository and S3 adapter (moto in process), driven as the client drives it;
the client's own pack upload through the embedded stack is exercised by tests/test_submit_requests.py.
"""
from __future__ import annotations

import gzip
import io
import tarfile
from typing import Any

import pytest

from chalicelib import limits
from chalicelib.blobs import blob_key
from chalicelib.domain import sha256_hex
from chalicelib.errors import ChecksumMismatch
from chalicelib.snapshots import Snapshots, pack_key
from tests.contract_tables import dynamo_table  # noqa: F401  (fixture)
from tests.test_submit_requests import USER, manifest, send, snapshots  # noqa: F401  (snapshots: fixture)

FILES = {f"pkg/m{i:02}.py": f"VALUE = {i}\n".encode() for i in range(limits.PACK_MIN_BLOBS + 2)}


def propose(service: Snapshots, ws: str, files: dict[str, bytes] = FILES) -> dict[str, Any]:
    pending, status = service.commit(ws, "code", manifest(files), USER)
    assert status == 202 and pending["missing"] == [] and pending["missing_count"] == len(files)
    assert sorted(pending["pack"]["blobs"]) == sorted(sha256_hex(b) for b in files.values())
    return pending


def test_a_pack_is_taken_whole_and_its_blobs_read_as_uploaded_blobs(snapshots: Snapshots) -> None:  # noqa: F811
    pending = propose(snapshots, "ws-a")
    send(snapshots, "ws-a", FILES, pending)
    committed, status = snapshots.complete("ws-a", pending["id"], USER)
    assert status == 201 and committed["files"] == len(FILES)
    assert snapshots.store.facts(pack_key("ws-a", pending["pack"]["id"])) is None  # transport only: removed
    digests = [sha256_hex(b) for b in FILES.values()]
    assert snapshots.repository.blobs("ws-a", digests) == {sha256_hex(b): len(b) for b in FILES.values()}
    for body in FILES.values():  # each blob stored at its content address, with the SHA-256 S3 verified
        fact = snapshots.store.facts(blob_key("ws-a", sha256_hex(body)))
        assert fact is not None and fact.sha256 == sha256_hex(body)
        assert snapshots.store.get_bytes(blob_key("ws-a", sha256_hex(body))) == body
    # Readers: the code bundle SageMaker runs holds each file's bytes.
    uri, _ = snapshots.sourcedir("ws-a", pending["id"])
    archive = gzip.decompress(snapshots.store.get_bytes(uri.split("/", 3)[3]))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert {m.name: tar.extractfile(m).read() for m in tar.getmembers()} == FILES  # type: ignore[union-attr]


def test_a_pack_with_one_bad_blob_is_refused_whole(snapshots: Snapshots) -> None:  # noqa: F811
    pending = propose(snapshots, "ws-a")
    order = pending["pack"]["blobs"]
    bodies = {sha256_hex(b): b for b in FILES.values()}
    bad = order[3]
    tampered = b"".join(bodies[d] if d != bad else bodies[d].replace(b"VALUE", b"VALUX") for d in order)
    key = pack_key("ws-a", pending["pack"]["id"])
    snapshots.store.put_bytes(key, tampered)
    path = next(p for p, b in FILES.items() if sha256_hex(b) == bad)
    with pytest.raises(ChecksumMismatch, match=f"files: {path!r}: its bytes in the pack hash to .* refused whole"):
        snapshots.complete("ws-a", pending["id"], USER)
    assert snapshots.repository.blobs("ws-a", order) == {}  # no partial write: nothing indexed ...
    assert all(snapshots.store.facts(blob_key("ws-a", d)) is None for d in order)  # ... nor stored
    assert snapshots.store.facts(key) is None  # and removed, so the right bytes can be sent again

    snapshots.store.put_bytes(key, tampered + b"!")  # a pack longer than its blobs is refused before it is read
    with pytest.raises(ChecksumMismatch, match=r"pack: holds \d+ bytes, but its \d+ blobs"):
        snapshots.complete("ws-a", pending["id"], USER)

    send(snapshots, "ws-a", FILES, pending)
    assert snapshots.complete("ws-a", pending["id"], USER)[1] == 201


def test_a_pack_counts_only_in_the_workspace_it_was_uploaded_to(snapshots: Snapshots) -> None:  # noqa: F811
    pending_a = propose(snapshots, "ws-a")
    pending_b = propose(snapshots, "ws-b")
    assert pending_b["pack"]["id"] == pending_a["pack"]["id"]  # same blobs, same pack: but under ws-a's prefix
    send(snapshots, "ws-a", FILES, pending_a)
    still, status = snapshots.complete("ws-b", pending_b["id"], USER)
    assert status == 202 and still["pack"] == {**pending_b["pack"], "url": still["pack"]["url"]}
    assert snapshots.repository.blobs("ws-b", pending_b["pack"]["blobs"]) == {}
    assert snapshots.complete("ws-a", pending_a["id"], USER)[1] == 201


def test_sending_a_pack_again_is_a_no_op(snapshots: Snapshots) -> None:  # noqa: F811
    pending = propose(snapshots, "ws-a")
    send(snapshots, "ws-a", FILES, pending)
    first, _ = snapshots.complete("ws-a", pending["id"], USER)
    send(snapshots, "ws-a", FILES, pending)  # a client retrying the whole round
    again, status = snapshots.complete("ws-a", pending["id"], USER)
    assert status == 200 and again == first
    assert snapshots.commit("ws-a", "code", manifest(FILES), USER) == (first, 200)

    few = dict(list(FILES.items())[: limits.PACK_MIN_BLOBS - 1])  # too few to pack: loose, as before packs
    pending, status = snapshots.commit("ws-b", "code", manifest(few), USER)
    assert status == 202 and "pack" not in pending and len(pending["missing"]) == len(few)


def test_a_server_side_producer_that_placed_its_blobs_gets_no_pack(snapshots: Snapshots) -> None:  # noqa: F811
    # A batch job's Record copies each output to its content address itself, then commits: its small blobs must be
    # found where it put them, not handed out as a pack nobody will upload.
    for body in FILES.values():
        snapshots.store.put_bytes(blob_key("ws-p", sha256_hex(body)), body)
    committed, status = snapshots.commit("ws-p", "data", manifest(FILES), USER, placed=True)
    assert status == 201 and committed["status"] == "committed" and committed["files"] == len(FILES)
    pending, status = snapshots.commit("ws-q", "data", manifest(FILES), USER)  # a client's commit: packed
    assert status == 202 and "pack" in pending
