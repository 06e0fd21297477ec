"""The one streaming SHA-256 and the one ingest routine (chalicelib/blobs.py), on moto's in-process S3."""
from __future__ import annotations

import hashlib
import io

import pytest

from chalicelib.adapters import AwsClients, ObjectStore
from chalicelib.blobs import HashingReader, blob_key, ingest, sha256_of
from chalicelib.errors import NotFound
from tests.aws_fixtures import aws_env_fixture, moto_fixture  # noqa: F401  (fixtures)

BUCKET = "kaos-data"


@pytest.fixture
def store(moto: AwsClients) -> ObjectStore:
    moto.s3.create_bucket(Bucket=BUCKET)
    moto.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return ObjectStore(moto.s3, BUCKET)


def test_hashing_reader_hashes_what_passes_through() -> None:
    body = b"x" * (3 << 20) + b"tail"
    reader = HashingReader(io.BytesIO(body))
    assert reader.read(10) == b"x" * 10
    reader.drain()
    assert (reader.hexdigest(), reader.size) == (hashlib.sha256(body).hexdigest(), len(body))
    assert sha256_of(io.BytesIO(body)) == (hashlib.sha256(body).hexdigest(), len(body))


def test_ingest_copies_the_pinned_version_to_its_content_address_once(store: ObjectStore) -> None:
    first = store.client.put_object(Bucket=BUCKET, Key="ws/w/incoming/a.csv", Body=b"one")["VersionId"]
    store.client.put_object(Bucket=BUCKET, Key="ws/w/incoming/a.csv", Body=b"two")
    blob = ingest(store, "w", "ws/w/incoming/a.csv", first)
    assert (blob.sha256, blob.size) == (hashlib.sha256(b"one").hexdigest(), 3)
    assert store.get_bytes(blob_key("w", blob.sha256)) == b"one"
    assert store.facts(blob_key("w", blob.sha256)).sha256 == blob.sha256  # type: ignore[union-attr]
    versions = len(store.client.list_object_versions(Bucket=BUCKET, Prefix="ws/w/blobs/")["Versions"])
    assert ingest(store, "w", "ws/w/incoming/a.csv", first) == blob
    assert len(store.client.list_object_versions(Bucket=BUCKET, Prefix="ws/w/blobs/")["Versions"]) == versions


def test_ingest_of_a_missing_object_is_not_found(store: ObjectStore) -> None:
    with pytest.raises(NotFound):
        ingest(store, "w", "ws/w/incoming/gone.csv")
