"""Regressions of issue 11 in the jobs side that need neither the stack nor a service: bug 8 (`lstrip("./")`)."""
from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator

import boto3
import pytest

from chalicelib.adapters import AwsClients, ObjectStore
from chalicelib.archive import member_name, read_model

BUCKET = "kaos-archive"


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[ObjectStore]:
    from moto import mock_aws

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield ObjectStore(AwsClients().s3, BUCKET, platform_buckets=[BUCKET])


def _archive(store: ObjectStore, key: str, members: dict[str, bytes]) -> None:
    body = io.BytesIO()
    with tarfile.open(fileobj=body, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    store.put_bytes(key, body.getvalue())


def test_only_a_leading_dot_slash_is_stripped_from_member_names() -> None:
    assert member_name("./metrics.json") == member_name("././metrics.json") == "metrics.json"
    # lstrip("./") strips characters: these three all became "metrics.json".
    assert [member_name(n) for n in (".metrics.json", "../metrics.json", "/metrics.json")] == [
        ".metrics.json", "../metrics.json", "/metrics.json"]


def test_a_dotted_file_is_not_the_models_metrics(store: ObjectStore) -> None:
    """Bug 8: `.metrics.json` (a hidden file, e.g. a checkpointer's) was read as the job's metrics.json."""
    _archive(store, "hidden.tar.gz", {".metrics.json": json.dumps({"accuracy": 0.1}).encode()})
    _archive(store, "model.tar.gz", {"./metrics.json": json.dumps({"accuracy": 0.9, "note": "x"}).encode(),
                                     "./model.bin": b"\x00" * 10})
    assert read_model(store, "hidden.tar.gz").metrics == {}
    model = read_model(store, "model.tar.gz")
    assert model.metrics == {"accuracy": 0.9}
    assert model.content_sha256 != read_model(store, "hidden.tar.gz").content_sha256
