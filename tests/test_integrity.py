"""Platform-bucket references through the running embedded stack (issue 8, Deliver 1; integrity follows).

* Remote data manifests may not name the platform's own buckets: a clear 4xx naming the entry and saying to
  reference the snapshot or model instead.
* A blob is stored only if its bytes hash to its name: S3 refuses other bytes on the presigned PUT (a signed
  checksum), refuses a PUT through a URL reused after the commit (If-None-Match: *), and the server refuses to
  commit a blob whose stored bytes do not hash to its name.
* Derived objects (a code snapshot's sourcedir.tar.gz, a materialized data snapshot, a snapshot's manifest, a batch
  datum's cache entry) are checked before use: tampered ones fail the job with IntegrityError, and it never runs.

Every refusal has its positive control in the same test (the same operation succeeds on the right bytes).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from chalicelib.adapters import ObjectStore
from chalicelib.errors import PlatformBucketReference
from kaos.client import ApiError

from .conftest import TEMPLATE, Stack, tiny_code


def data_bucket(stack: Stack) -> str:
    return str(next(b["Name"] for b in stack.aws("s3").list_buckets()["Buckets"]
                    if b["Name"].startswith("kaos-storagedata")))


def why(job: dict[str, Any]) -> str:
    return json.dumps({k: job.get(k) for k in ("id", "status", "failure_reason", "metrics")})


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def exists(stack: Stack, key: str) -> bool:
    try:
        stack.aws("s3").head_object(Bucket=data_bucket(stack), Key=key)
    except stack.aws("s3").exceptions.ClientError:
        return False
    return True


def deploy(stack: Stack, workspace: str, *args: str) -> dict[str, Any]:
    result = stack.kaos("train", "deploy", "-w", workspace, *args, "--wait", "--json", check=False)
    assert result.stdout, result.stderr
    job: dict[str, Any] = json.loads(result.stdout)
    return job


def params_file(tmp_path: Path, **params: Any) -> str:
    path = tmp_path / f"params-{len(list(tmp_path.glob('params-*')))}.json"
    path.write_text(json.dumps(params))
    return str(path)


def logs(stack: Stack, workspace: str, job_id: str) -> str:
    return stack.kaos("train", "logs", job_id, "-w", workspace).stdout


# --- remote manifests never name the platform's buckets -------------------------------------------------------


def test_remote_manifest_naming_the_platform_bucket_is_refused(stack: Stack, tmp_path: Path) -> None:
    dev, guest = stack.client("dev"), stack.client("guest")
    dev.create_workspace("integ-owner")
    guest.create_workspace("integ-guest")
    bucket = data_bucket(stack)
    owned = deploy(stack, "integ-owner", "-s", str(tiny_code(tmp_path)), "-d", str(TEMPLATE / "data"))
    assert owned["status"] == "COMPLETED", why(owned)
    code = json.loads(stack.aws("s3").get_object(
        Bucket=bucket, Key=f"ws/integ-owner/manifests/{owned['inputs']['code']}.json")["Body"].read())
    train_py = next(f for f in code["files"] if f["path"] == "train.py")
    foreign = f"s3://{bucket}/ws/integ-owner/blobs/{train_py['sha256']}"
    model = owned["model"]

    # Remote data elsewhere is fine (committed without being fetched; a job fetches and checks it).
    ok_entry = {"path": "rows.csv", "url": "https://data.example.org/sets/rows.csv", "sha256": "0" * 64}
    attempts = [
        [ok_entry, {"path": "train.py", "url": foreign}],
        [{"path": "model.tar.gz", "url": model}],
        [{"path": "train.py", "url": f"https://{bucket}.s3.amazonaws.com/ws/integ-owner/blobs/{train_py['sha256']}"}],
        [{"path": "train.py", "url": f"https://s3.us-east-1.amazonaws.com/{bucket}/ws/integ-owner/x"}],
    ]
    for files in attempts:
        with pytest.raises(ApiError) as refused:
            guest.request("POST", "/workspaces/integ-guest/snapshots", {"kind": "data", "files": files})
        error = refused.value
        index = len(files) - 1
        assert error.status == 400 and error.code == "PlatformBucketReference", error
        assert error.message.startswith(f"files[{index}].url (path {files[index]['path']!r})"), error.message
        assert "platform's own bucket" in error.message and "reference the snapshot" in error.message
        assert "model" in error.message
    # Not even a member may name its own workspace's keys: the platform's buckets are never remote data.
    with pytest.raises(ApiError) as own:
        dev.request("POST", "/workspaces/integ-owner/snapshots", {"kind": "data", "files": [
            {"path": "train.py", "url": foreign}]})
    assert own.value.code == "PlatformBucketReference"
    assert guest.workspace("integ-guest")["snapshots"] == 0

    # Positive control: data outside the platform (here also an https URL of another S3 bucket) is accepted, for
    # the same caller and workspace.
    elsewhere = {"path": "more.csv", "url": "https://another-bucket.s3.amazonaws.com/sets/more.csv"}
    accepted = guest.request("POST", "/workspaces/integ-guest/snapshots",
                             {"kind": "data", "files": [ok_entry, elsewhere]})
    assert accepted["status"] == "committed"
    assert guest.workspace("integ-guest")["snapshots"] == 1


def test_cli_reports_the_platform_bucket_entry(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", "integ-cli")
    bucket = data_bucket(stack)
    manifest = tmp_path / "platform.jsonl"
    manifest.write_text(json.dumps({"path": "x.csv", "url": f"s3://{bucket}/ws/integ-owner/blobs/{'0' * 64}"}) + "\n")
    result = stack.kaos("train", "deploy", "-w", "integ-cli", "-s", str(tiny_code(tmp_path)), "-m", str(manifest),
                        check=False)
    text = " ".join(result.stderr.split())
    assert result.returncode != 0
    assert "files[0].url (path 'x.csv')" in text and "platform's own bucket" in text, text
    assert "PlatformBucketReference" in text
    assert stack.kaos_json("workspace", "info", "integ-cli")["jobs"] == 0


def test_task_lambdas_refuse_platform_references_of_older_snapshots() -> None:
    """Snapshots committed before the API refused them still cannot reach the bucket: the copy refuses first."""

    class NoCalls:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"S3 was called ({name}) for a platform-bucket reference")

    store = ObjectStore("kaos-data", NoCalls())
    with pytest.raises(PlatformBucketReference, match="kaos-data"):
        store.copy_pinned("kaos-data", "ws/other/blobs/x", "version:1", "ws/mine/snapshots/s/x")
    with pytest.raises(PlatformBucketReference):
        store.pin("kaos-data", "ws/other/blobs/x")
