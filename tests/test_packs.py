"""Packs (issue 14 item 1): many small missing blobs travel as a few objects, which are kept; `complete` lets a blob
of a pack into the workspace only once every blob of the pack hashes to its name, and every reader of blobs reads it
out of its pack, checked against its name again.

`Snapshots` over the real DynamoDB repository and S3 adapter (moto in process), driven as the client drives it;
the client's own pack upload and ranged download through the embedded stack are exercised by
tests/test_submit_requests.py.
"""
from __future__ import annotations

import gzip
import io
import tarfile
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest

from chalicelib import blobs as blobs_module
from chalicelib import limits
from chalicelib.adapters import ObjectStore, client_config
from chalicelib.blobs import BlobPlace, blob_key, pack_key
from chalicelib.domain import sha256_hex
from chalicelib.errors import ChecksumMismatch, IntegrityError, ValidationFailed
from chalicelib.snapshots import Snapshots, materialized_prefix, proposal_key
from tests.contract_tables import dynamo_table  # noqa: F401  (fixture)
from tests.test_submit_requests import USER, AwsCalls, manifest, send, snapshots  # noqa: F401  (snapshots: fixture)

FILES = {f"pkg/m{i:02}.py": f"VALUE = {i}\n".encode() for i in range(limits.PACK_MIN_BLOBS + 2)}


def propose(service: Snapshots, ws: str, files: dict[str, bytes] = FILES, kind: str = "code") -> dict[str, Any]:
    pending, status = service.commit(ws, kind, manifest(files), USER)
    assert status == 202 and pending["missing"] == [] and pending["missing_count"] == len(files)
    packed = sorted(d for pack in pending["packs"] for d in pack["blobs"])
    assert packed == sorted(sha256_hex(b) for b in files.values())
    return pending


def committed(service: Snapshots, ws: str, files: dict[str, bytes] = FILES, kind: str = "code") -> dict[str, Any]:
    pending = propose(service, ws, files, kind)
    send(service, ws, files, pending)
    answer, status = service.complete(ws, pending["id"], USER)
    assert status == 201 and answer["files"] == len(files)
    return pending


def sourcedir_files(service: Snapshots, ws: str, snapshot_id: str) -> dict[str, bytes]:
    uri, _ = service.sourcedir(ws, snapshot_id)
    archive = gzip.decompress(service.store.get_bytes(uri.split("/", 3)[3]))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def test_a_pack_is_taken_whole_kept_and_its_blobs_read_out_of_it(snapshots: Snapshots) -> None:  # noqa: F811
    pending = committed(snapshots, "ws-a")
    (pack,) = pending["packs"]
    stored = snapshots.store.get_bytes(pack_key("ws-a", pack["id"]))  # kept, as uploaded
    places = snapshots.repository.blobs("ws-a", pack["blobs"])
    for digest in pack["blobs"]:  # each blob indexed at its offset in the pack, and no blob object written
        place = places[digest]
        assert place.pack == pack["id"] and sha256_hex(stored[place.offset:place.offset + place.size]) == digest
        assert snapshots.store.facts(blob_key("ws-a", digest)) is None
    # Readers: the code bundle SageMaker runs holds each file's bytes ...
    assert sourcedir_files(snapshots, "ws-a", pending["id"]) == FILES
    # ... and so does a data snapshot's materialized prefix (each object with the SHA-256 S3 verified).
    data = committed(snapshots, "ws-a", {f"d/{p}": b + b"#data\n" for p, b in FILES.items()}, kind="data")
    snapshots.materialize("ws-a", data["id"])
    for path, body in FILES.items():
        key = materialized_prefix("ws-a", data["id"]) + f"d/{path}"
        fact = snapshots.store.facts(key)
        assert fact is not None and fact.sha256 == sha256_hex(body + b"#data\n")
        assert snapshots.store.get_bytes(key) == body + b"#data\n"
    entry = next(f for f in snapshots.manifest("ws-a", pending["id"]).files if f.path == "pkg/m03.py")
    assert snapshots.read_blob("ws-a", entry) == FILES["pkg/m03.py"]


def test_packs_past_the_readers_memory_are_read_by_range(snapshots: Snapshots,  # noqa: F811
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    pending = committed(snapshots, "ws-a")
    monkeypatch.setattr(blobs_module, "PACK_CACHE_BYTES", 0)
    aws = AwsCalls(monkeypatch)
    snapshots.sourcedir("ws-a", pending["id"])
    assert aws.take()["s3:GetObject"] == 1 + len(FILES)  # the manifest, then one ranged GET per blob
    assert sourcedir_files(snapshots, "ws-a", pending["id"]) == FILES


def test_a_blob_read_out_of_a_tampered_pack_is_refused(snapshots: Snapshots) -> None:  # noqa: F811
    # Whoever could replace a kept pack (the API role: a client's URL is conditional on the key being absent)
    # still gets nothing run on other bytes: every reader checks each blob against its name.
    pending = committed(snapshots, "ws-a")
    data = committed(snapshots, "ws-d", kind="data")
    for ws, answer in (("ws-a", pending), ("ws-d", data)):
        key = pack_key(ws, answer["packs"][0]["id"])
        snapshots.store.put_bytes(key, snapshots.store.get_bytes(key).replace(b"VALUE = 3", b"VALUE = 4"))
    with pytest.raises(IntegrityError, match=r"pkg/m03\.py"):
        snapshots.sourcedir("ws-a", pending["id"])
    with pytest.raises(IntegrityError, match=r"pkg/m03\.py"):
        snapshots.materialize("ws-d", data["id"])
    assert snapshots.store.facts(materialized_prefix("ws-d", data["id"]) + "pkg/m03.py") is None


def test_a_packs_url_is_conditional_on_the_key_being_absent(snapshots: Snapshots) -> None:  # noqa: F811
    # Signed with If-None-Match, so once a pack is taken nobody holding its URL can replace its bytes. (The
    # adapter's own client configuration, which signs presigned URLs with SigV4 as every Lambda's does.)
    signing = Snapshots(store=ObjectStore(boto3.client("s3", config=client_config()), snapshots.store.bucket),
                        repository=snapshots.repository, web=snapshots.web)
    pack = propose(signing, "ws-a")["packs"][0]
    signed = parse_qs(urlsplit(pack["url"]).query)["X-Amz-SignedHeaders"][0].split(";")
    assert "if-none-match" in signed


def test_a_pack_with_one_bad_blob_is_refused_whole(snapshots: Snapshots) -> None:  # noqa: F811
    pending = propose(snapshots, "ws-a")
    order = pending["packs"][0]["blobs"]
    bodies = {sha256_hex(b): b for b in FILES.values()}
    bad = order[3]
    tampered = b"".join(bodies[d] if d != bad else bodies[d].replace(b"VALUE", b"VALUX") for d in order)
    key = pack_key("ws-a", pending["packs"][0]["id"])
    snapshots.store.put_bytes(key, tampered)
    path = next(p for p, b in FILES.items() if sha256_hex(b) == bad)
    with pytest.raises(ChecksumMismatch, match=f"files: {path!r}: its bytes in the pack hash to .* refused whole"):
        snapshots.complete("ws-a", pending["id"], USER)
    assert snapshots.repository.blobs("ws-a", order) == {}  # no partial write: nothing indexed ...
    assert snapshots.store.facts(key) is None  # ... and the pack removed, so the right bytes can be sent again

    snapshots.store.put_bytes(key, tampered + b"!")  # a pack longer than its blobs is refused before it is read
    with pytest.raises(ChecksumMismatch, match=r"pack: holds \d+ bytes, but its \d+ blobs"):
        snapshots.complete("ws-a", pending["id"], USER)

    send(snapshots, "ws-a", FILES, pending)
    assert snapshots.complete("ws-a", pending["id"], USER)[1] == 201


def test_many_blobs_travel_in_several_packs_taken_by_one_complete(snapshots: Snapshots,  # noqa: F811
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "PACK_MAX_BLOBS", 4)
    pending = propose(snapshots, "ws-a")
    assert [len(p["blobs"]) for p in pending["packs"]] == [4, 4, 2]  # the last pack takes the remainder
    early, status = snapshots.complete("ws-a", pending["id"], USER)  # nothing uploaded yet: the same packs
    assert status == 202 and [p["id"] for p in early["packs"]] == [p["id"] for p in pending["packs"]]
    send(snapshots, "ws-a", FILES, pending)
    aws = AwsCalls(monkeypatch)
    assert snapshots.complete("ws-a", pending["id"], USER)[1] == 201
    taken = aws.take()
    assert taken["s3:HeadObject"] == 3 and "s3:PutObject" not in taken  # a HEAD per pack; no blob written
    assert sourcedir_files(snapshots, "ws-a", pending["id"]) == FILES


def test_a_pack_counts_only_in_the_workspace_it_was_uploaded_to(snapshots: Snapshots) -> None:  # noqa: F811
    pending_a = propose(snapshots, "ws-a")
    pending_b = propose(snapshots, "ws-b")
    pack_b = pending_b["packs"][0]
    assert pack_b["id"] == pending_a["packs"][0]["id"]  # same blobs, same pack: but under ws-a's prefix
    send(snapshots, "ws-a", FILES, pending_a)
    still, status = snapshots.complete("ws-b", pending_b["id"], USER)
    assert status == 202 and still["packs"] == [{**pack_b, "url": still["packs"][0]["url"]}]
    assert snapshots.repository.blobs("ws-b", pack_b["blobs"]) == {}
    assert snapshots.complete("ws-a", pending_a["id"], USER)[1] == 201


def test_sending_a_pack_again_is_a_no_op(snapshots: Snapshots) -> None:  # noqa: F811
    pending = propose(snapshots, "ws-a")
    send(snapshots, "ws-a", FILES, pending)
    first, _ = snapshots.complete("ws-a", pending["id"], USER)
    send(snapshots, "ws-a", FILES, pending)  # a client retrying the whole round: its conditional PUT writes nothing
    again, status = snapshots.complete("ws-a", pending["id"], USER)
    assert status == 200 and again == first
    assert snapshots.commit("ws-a", "code", manifest(FILES), USER) == (first, 200)

    few = dict(list(FILES.items())[: limits.PACK_MIN_BLOBS - 1])  # too few to pack: loose, as before packs
    pending, status = snapshots.commit("ws-b", "code", manifest(few), USER)
    assert status == 202 and "packs" not in pending and len(pending["missing"]) == len(few)


def test_a_blob_the_index_does_not_place_is_read_loose(snapshots: Snapshots) -> None:  # noqa: F811
    # Blobs indexed before packs were kept (or uploaded loose) have no pack: readers find them at their address.
    for body in FILES.values():
        snapshots.store.put_bytes(blob_key("ws-l", sha256_hex(body)), body, sha256_hex=sha256_hex(body))
    snapshots.repository.put_blobs("ws-l", {sha256_hex(b): BlobPlace(len(b)) for b in FILES.values()}, "t0")
    answer, status = snapshots.commit("ws-l", "code", manifest(FILES), USER)
    assert status == 201
    assert sourcedir_files(snapshots, "ws-l", answer["id"]) == FILES


def test_a_server_side_producer_that_placed_its_blobs_gets_no_pack(snapshots: Snapshots) -> None:  # noqa: F811
    # A batch job's Record copies each output to its content address itself, then commits: its small blobs must be
    # found where it put them, not handed out as a pack nobody will upload.
    for body in FILES.values():
        snapshots.store.put_bytes(blob_key("ws-p", sha256_hex(body)), body)
    answer, status = snapshots.commit("ws-p", "data", manifest(FILES), USER, placed=True)
    assert status == 201 and answer["status"] == "committed" and answer["files"] == len(FILES)
    pending, status = snapshots.commit("ws-q", "data", manifest(FILES), USER)  # a client's commit: packed
    assert status == 202 and "packs" in pending


def test_complete_checks_what_the_commit_proposed_and_without_a_proposal_looks_everything_up(
        snapshots: Snapshots, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """A pending commit keeps what it lacked (its proposal); `complete` checks just that, without looking the
    bundle's blobs up again. Without a proposal it can read (none kept, or not one of this manifest's), it looks
    everything up as the commit did: the same outcome, more requests."""
    aws = AwsCalls(monkeypatch)
    for ws, proposal in (("ws-kept", None), ("ws-lost", "gone"), ("ws-foreign", {"loose": ["f" * 64], "packs": []}),
                         ("ws-garbled", {"packs": "x"})):
        pending = propose(snapshots, ws)
        key = proposal_key(ws, pending["id"])
        assert {*snapshots.store.get_json(key)} == {"loose", "packs"}
        if proposal == "gone":
            snapshots.store.client.delete_object(Bucket=snapshots.store.bucket, Key=key)
        elif proposal is not None:
            snapshots.store.put_json(key, proposal)
        send(snapshots, ws, FILES, pending)
        aws.take()
        answer, status = snapshots.complete(ws, pending["id"], USER)
        assert status == 201 and answer["files"] == len(FILES), ws
        looked_up = aws.take().get("dynamodb:BatchGetItem", 0)
        assert looked_up == (0 if proposal is None else 1), ws
        assert sourcedir_files(snapshots, ws, pending["id"]) == FILES


def test_a_blob_indexed_with_another_size_is_refused_when_committed(snapshots: Snapshots) -> None:  # noqa: F811
    """The size of every blob the index vouches for is checked by the commit, even when others are missing (the
    proposal then names only the missing ones, and `complete` checks no more)."""
    files = {**FILES, "big.bin": b"x" * (limits.PACK_BLOB_BYTES + 1)}
    digest = sha256_hex(FILES["pkg/m03.py"])
    snapshots.repository.put_blobs("ws-a", {digest: BlobPlace(len(FILES["pkg/m03.py"]) + 1)}, "t0")
    with pytest.raises(ValidationFailed, match=r"pkg/m03\.py"):
        snapshots.commit("ws-a", "code", manifest(files), USER)
