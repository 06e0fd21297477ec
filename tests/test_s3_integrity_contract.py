"""Contract tests of the S3 integrity behaviours kaos relies on, in the embedded emulator (kaos.local.patches_s3).

A blob's presigned PUT carries its SHA-256 as a signed checksum and `If-None-Match: *`; derived caches are checked
against the SHA-256 S3 keeps. moto 5.2.5 neither verifies nor (for a presigned PUT) keeps such a checksum, and its
conditional PUT is not atomic: the tests marked so fail without the patch. If a moto upgrade changes any of this,
the test of that behaviour fails by name.
"""
from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import requests
from botocore.config import Config

from chalicelib.adapters import ObjectStore, blob_put_headers
from kaos.local import patches_s3
from kaos.local.emulator import Emulator

BUCKET = "kaos-integrity-contract"
GOOD = b"the bytes the blob is named after\n"
OTHER = b"other bytes, the same length (34)\n"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emu = Emulator(tmp_path_factory.mktemp("emu"), stop_grace_seconds=1)
    emu.start()
    emu.client("s3").create_bucket(Bucket=BUCKET)
    emu.client("s3").put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture(scope="module")
def s3(emulator: Emulator) -> Any:
    """The emulator's S3 with SigV4 presigning (as chalicelib's ObjectStore presigns), same credentials."""
    credentials = emulator.client("s3")._request_signer._credentials
    return boto3.client("s3", endpoint_url=emulator.endpoint_url, region_name=emulator.region,
                        aws_access_key_id=credentials.access_key, aws_secret_access_key=credentials.secret_key,
                        aws_session_token=credentials.token, config=Config(signature_version="s3v4"))


def key_for(name: str) -> str:
    return f"ws/contract/blobs/{name}-{time.monotonic_ns()}"


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def stored(s3: Any, key: str) -> bytes | None:
    try:
        return bytes(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def test_patch_points_are_installed_while_the_emulator_runs(emulator: Emulator) -> None:
    from moto.s3.responses import S3Response

    assert len(patches_s3.PATCH_POINTS) == 2
    assert S3Response._get_checksum is patches_s3._get_checksum
    assert S3Response.put_object.__qualname__.startswith("_serialized_put")


def test_presigned_put_with_other_bytes_than_its_signed_checksum_is_refused(s3: Any) -> None:
    """Fails without the patch: moto stores any bytes under any x-amz-checksum-sha256."""
    key = key_for("bad")
    url = ObjectStore(s3, BUCKET).presign_blob_put(key, sha(GOOD))
    assert "x-amz-checksum-sha256" in url.split("X-Amz-SignedHeaders=", 1)[1].split("&", 1)[0]
    refused = requests.put(url, data=OTHER, headers=blob_put_headers(sha(GOOD)), timeout=30)
    assert refused.status_code == 400 and "<Code>BadDigest</Code>" in refused.text, refused.text
    assert stored(s3, key) is None
    # Positive control: the bytes the checksum names are stored, through the same URL.
    accepted = requests.put(url, data=GOOD, headers=blob_put_headers(sha(GOOD)), timeout=30)
    assert accepted.status_code == 200, accepted.text
    assert stored(s3, key) == GOOD


def test_checksum_sent_with_a_presigned_put_is_kept(s3: Any) -> None:
    """Fails without the patch: moto keeps a checksum only when x-amz-sdk-checksum-algorithm names it, which a
    presigned PUT does not send, so HeadObject with ChecksumMode=ENABLED returns none."""
    key = key_for("kept")
    url = ObjectStore(s3, BUCKET).presign_blob_put(key, sha(GOOD))
    assert requests.put(url, data=GOOD, headers=blob_put_headers(sha(GOOD)), timeout=30).status_code == 200
    head = s3.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(GOOD).digest()).decode()
    facts = ObjectStore(s3, BUCKET).facts(key)
    assert facts is not None and facts.sha256 == sha(GOOD) and facts.size == len(GOOD)


def test_sdk_put_object_checksum_is_verified_and_kept(s3: Any) -> None:
    """Fails without the patch. How kaos writes what it derives (sourcedir.tar.gz, manifests, cache entries)."""
    store = ObjectStore(s3, BUCKET)
    key = key_for("sdk")
    with pytest.raises(Exception, match="BadDigest"):
        store.put_bytes(key, OTHER, sha256_hex=sha(GOOD))
    assert stored(s3, key) is None
    store.put_bytes(key, GOOD, sha256_hex=sha(GOOD))
    facts = store.facts(key)
    assert facts is not None and facts.sha256 == sha(GOOD)
    # The SDK's default checksum (CRC32, in an aws-chunked trailer) is verified too, and is not a SHA-256.
    s3.put_object(Bucket=BUCKET, Key=key + "-default", Body=OTHER * 1000)
    assert stored(s3, key + "-default") == OTHER * 1000
    assert store.facts(key + "-default").sha256 is None  # type: ignore[union-attr]


def test_a_presigned_put_is_refused_once_the_key_exists(s3: Any) -> None:
    """moto honours If-None-Match: * without a patch; kaos relies on it (a URL reused after the commit)."""
    key = key_for("reuse")
    url = ObjectStore(s3, BUCKET).presign_blob_put(key, sha(GOOD))
    assert requests.put(url, data=GOOD, headers=blob_put_headers(sha(GOOD)), timeout=30).status_code == 200
    again = requests.put(url, data=GOOD, headers=blob_put_headers(sha(GOOD)), timeout=30)
    assert again.status_code == 412 and "PreconditionFailed" in again.text
    versions = s3.list_object_versions(Bucket=BUCKET, Prefix=key).get("Versions", [])
    assert len(versions) == 1 and stored(s3, key) == GOOD
    assert ObjectStore(s3, BUCKET).put_bytes(key, GOOD, sha256_hex=sha(GOOD), if_absent=True) is False


def test_conditional_puts_of_an_absent_key_have_one_winner(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails without the patch: moto checks If-None-Match and stores in two steps, so both racing PUTs succeed.
    Storing is slowed down here so that the two requests overlap every time."""
    from moto.s3.models import S3Backend

    original = S3Backend.put_object

    def slow_put_object(self: Any, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.5)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(S3Backend, "put_object", slow_put_object)
    key = key_for("race")
    url = ObjectStore(s3, BUCKET).presign_blob_put(key, sha(GOOD))
    statuses: list[int] = []
    start = threading.Barrier(2)

    def put() -> None:
        start.wait()
        statuses.append(requests.put(url, data=GOOD, headers=blob_put_headers(sha(GOOD)), timeout=30).status_code)

    threads = [threading.Thread(target=put) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 412]
    assert len(s3.list_object_versions(Bucket=BUCKET, Prefix=key).get("Versions", [])) == 1


def test_patches_are_removed_and_reinstalled() -> None:
    from moto.s3.responses import S3Response

    # The module-scoped emulator is running; a second start/stop cycle is not possible while it runs, so the
    # removal is checked on the patch module itself: remove() restores moto's originals, apply() reinstalls.
    installed = S3Response._get_checksum
    patches_s3.remove()
    try:
        assert S3Response._get_checksum is not installed
        assert not S3Response.put_object.__qualname__.startswith("_serialized_put")
    finally:
        patches_s3.apply()
    assert S3Response._get_checksum is patches_s3._get_checksum
