"""Integrity and platform-bucket references through the running embedded stack (issue 8, Deliver 1 and 2).

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

import base64
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
import requests

from chalicelib.adapters import ObjectStore, blob_put_headers
from chalicelib.errors import PlatformBucketReference
from kaos.bundle import hash_files, scan
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

    store = ObjectStore(NoCalls(), "kaos-data")
    with pytest.raises(PlatformBucketReference, match="kaos-data"):
        store.copy_pinned("kaos-data", "ws/other/blobs/x", "version:1", "ws/mine/snapshots/s/x")
    with pytest.raises(PlatformBucketReference):
        store.pin("kaos-data", "ws/other/blobs/x")


# --- blobs: S3 refuses other bytes, reused URLs, and the server re-checks ---------------------------------------


def propose(stack: Stack, workspace: str, files: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = stack.client().request("POST", f"/workspaces/{workspace}/snapshots",
                                                    {"kind": "data", "files": files})
    return result


def test_presigned_put_with_other_bytes_is_refused_and_the_blob_stays_absent(stack: Stack) -> None:
    dev = stack.client()
    dev.create_workspace("integ-blobs")
    good, other = b"the right bytes\n", b"other bytes!!!!\n"
    assert len(good) == len(other)
    files = [{"path": "a.txt", "sha256": sha(good), "size": len(good)}]
    pending = propose(stack, "integ-blobs", files)
    (missing,) = pending["missing"]
    key = f"ws/integ-blobs/blobs/{sha(good)}"
    refused = requests.put(missing["url"], data=other, headers=blob_put_headers(sha(good)), timeout=30)
    assert refused.status_code == 400 and "BadDigest" in refused.text, refused.text
    assert not exists(stack, key)
    still = dev.request("POST", f"/workspaces/integ-blobs/snapshots/{pending['id']}/complete")
    assert still["status"] == "pending" and still["missing_count"] == 1
    # Positive control: the right bytes through the same URL, then the commit.
    assert requests.put(missing["url"], data=good, headers=blob_put_headers(sha(good)), timeout=30).status_code == 200
    committed = dev.request("POST", f"/workspaces/integ-blobs/snapshots/{pending['id']}/complete")
    assert committed["status"] == "committed"

    # The URL reused after the commit writes nothing: 412, the blob keeps its one version.
    reused = requests.put(missing["url"], data=good, headers=blob_put_headers(sha(good)), timeout=30)
    assert reused.status_code == 412 and "PreconditionFailed" in reused.text, reused.text
    again = requests.put(missing["url"], data=other, headers=blob_put_headers(sha(good)), timeout=30)
    assert again.status_code in (400, 412)
    versions = stack.aws("s3").list_object_versions(Bucket=data_bucket(stack), Prefix=key)["Versions"]
    assert len(versions) == 1
    body = stack.aws("s3").get_object(Bucket=data_bucket(stack), Key=key)["Body"].read()
    assert body == good


@pytest.mark.parametrize("with_checksum", [True, False], ids=["checksummed", "unchecksummed"])
def test_complete_refuses_a_blob_whose_bytes_do_not_hash_to_its_name(stack: Stack, with_checksum: bool) -> None:
    """Bytes stored under a blob's name by any other writer (here the admin, with or without a checksum of its
    own bytes) are found at `complete`: 400 naming the path, nothing committed, the bytes removed."""
    dev = stack.client()
    workspace = f"integ-recheck-{'c' if with_checksum else 'n'}"
    dev.create_workspace(workspace)
    good, other = f"model weights {workspace}\n".encode(), f"forged weight {workspace}\n".encode()
    files = [{"path": "w.bin", "sha256": sha(good), "size": len(good)}]
    pending = propose(stack, workspace, files)
    key = f"ws/{workspace}/blobs/{sha(good)}"
    extra = {"ChecksumSHA256": base64.b64encode(hashlib.sha256(other).digest()).decode()} if with_checksum else {}
    stack.aws("s3").put_object(Bucket=data_bucket(stack), Key=key, Body=other, **extra)
    with pytest.raises(ApiError) as refused:
        dev.request("POST", f"/workspaces/{workspace}/snapshots/{pending['id']}/complete")
    error = refused.value
    assert error.status == 400 and error.code == "ChecksumMismatch", error
    assert "'w.bin'" in error.message and sha(other) in error.message and "not committed" in error.message
    assert dev.workspace(workspace)["snapshots"] == 0
    assert not exists(stack, key)
    # Positive control: the client uploads the right bytes (the key is free again) and the commit succeeds.
    retry = dev.request("POST", f"/workspaces/{workspace}/snapshots/{pending['id']}/complete")
    assert retry["status"] == "pending"
    (missing,) = retry["missing"]
    assert requests.put(missing["url"], data=good, headers=blob_put_headers(sha(good)), timeout=30).status_code == 200
    committed = dev.request("POST", f"/workspaces/{workspace}/snapshots/{pending['id']}/complete")
    assert committed["status"] == "committed" and dev.workspace(workspace)["snapshots"] == 1


def test_the_client_uploads_with_the_signed_headers(stack: Stack, tmp_path: Path) -> None:
    """kaos' own client: the blobs it uploads carry the SHA-256 S3 verified (HeadObject ChecksumMode)."""
    stack.client().create_workspace("integ-client")
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.csv").write_text("a,b\n3,4\n")
    files = hash_files(scan(data, "-d"), lambda n: None)
    snapshot = stack.client().upload_snapshot("integ-client", "data", files, lambda n: None)
    assert snapshot["status"] == "committed"
    head = stack.aws("s3").head_object(Bucket=data_bucket(stack), Key=f"ws/integ-client/blobs/{files[0].sha256}",
                                       ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(files[0].sha256)).decode()


# --- derived objects are checked before a job uses them ----------------------------------------------------------


def evil_sourcedir() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        body = b"print('PWNED: foreign code ran')\nraise SystemExit(0)\n"
        info = tarfile.TarInfo("train.py")
        info.size = len(body)
        archive.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


def test_tampered_sourcedir_fails_the_job_and_never_runs_it(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", "integ-sourcedir")
    code = tiny_code(tmp_path, "print('ORIGINAL code ran')")
    first = deploy(stack, "integ-sourcedir", "-s", str(code), "-d", str(TEMPLATE / "data"),
                   "-h", params_file(tmp_path, run=1))
    assert first["status"] == "COMPLETED", why(first)  # positive control: the cached bundle was built and used
    assert "ORIGINAL code ran" in logs(stack, "integ-sourcedir", first["id"])
    key = f"ws/integ-sourcedir/sourcedirs/{first['inputs']['code']}/sourcedir.tar.gz"
    # A second job on the same code reuses the bundle (the record matches): positive control of the check.
    second = deploy(stack, "integ-sourcedir", "-h", params_file(tmp_path, run=2))
    assert second["status"] == "COMPLETED", why(second)
    assert second["inputs"]["code"] == first["inputs"]["code"]

    evil = evil_sourcedir()
    stack.aws("s3").put_object(Bucket=data_bucket(stack), Key=key, Body=evil,
                               ChecksumSHA256=base64.b64encode(hashlib.sha256(evil).digest()).decode())
    third = deploy(stack, "integ-sourcedir", "-h", params_file(tmp_path, run=3))
    assert third["status"] == "FAILED", why(third)
    reason = third["failure_reason"]
    assert reason.startswith("IntegrityError:") and key in reason and "was overwritten since kaos built it" in reason
    assert "the job was not run" in reason and sha(evil) in reason
    assert third["training_job_name"] is None  # never reached SageMaker
    assert "PWNED" not in logs(stack, "integ-sourcedir", third["id"])

    # The bundle was rebuilt from the verified blobs: resuming runs the recorded code, never the foreign one.
    resumed = json.loads(stack.kaos("train", "resume", third["id"], "-w", "integ-sourcedir", "--wait",
                                    "--json").stdout)
    assert resumed["status"] == "COMPLETED", why(resumed)
    text = logs(stack, "integ-sourcedir", third["id"])
    assert "ORIGINAL code ran" in text and "PWNED" not in text


def test_tampered_materialized_data_fails_the_job(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", "integ-data")
    code = tiny_code(tmp_path, "print('rows', sum(1 for _ in open(os.environ['SM_CHANNEL_TRAINING'] + "
                               "'/digits.csv')))")
    first = deploy(stack, "integ-data", "-s", str(code), "-d", str(TEMPLATE / "data"),
                   "-h", params_file(tmp_path, run=1))
    assert first["status"] == "COMPLETED", why(first)
    assert "rows 1798" in logs(stack, "integ-data", first["id"])
    key = f"ws/integ-data/snapshots/{first['inputs']['data']['training']}/digits.csv"
    forged = b"1,2\n" * 10
    stack.aws("s3").put_object(Bucket=data_bucket(stack), Key=key, Body=forged,
                               ChecksumSHA256=base64.b64encode(hashlib.sha256(forged).digest()).decode())
    second = deploy(stack, "integ-data", "-h", params_file(tmp_path, run=2))
    assert second["status"] == "FAILED", why(second)
    assert second["failure_reason"].startswith("IntegrityError:") and "'digits.csv'" in second["failure_reason"]
    assert "overwritten since kaos materialized them" in second["failure_reason"]
    assert second["training_job_name"] is None
    resumed = json.loads(stack.kaos("train", "resume", second["id"], "-w", "integ-data", "--wait", "--json").stdout)
    assert resumed["status"] == "COMPLETED", why(resumed)
    assert "rows 1798" in logs(stack, "integ-data", second["id"])


def test_a_manifest_that_does_not_hash_to_its_id_fails_the_job(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", "integ-manifest")
    first = deploy(stack, "integ-manifest", "-s", str(tiny_code(tmp_path)), "-d", str(TEMPLATE / "data"),
                   "-h", params_file(tmp_path, run=1))
    assert first["status"] == "COMPLETED", why(first)
    key = f"ws/integ-manifest/manifests/{first['inputs']['data']['training']}.json"
    s3 = stack.aws("s3")
    document = json.loads(s3.get_object(Bucket=data_bucket(stack), Key=key)["Body"].read())
    document["files"].append({"path": "extra.csv", "sha256": first["inputs"]["code"], "size": 64})
    s3.put_object(Bucket=data_bucket(stack), Key=key, Body=json.dumps(document).encode())
    second = deploy(stack, "integ-manifest", "-h", params_file(tmp_path, run=2))
    assert second["status"] == "FAILED", why(second)
    assert second["failure_reason"].startswith("IntegrityError:")
    assert "does not hash to the snapshot's id" in second["failure_reason"]
    assert second["training_job_name"] is None


SUM = """\
import os, pathlib
total = sum(int(line.split(",")[1]) for line in open(os.environ["KAOS_INPUT_FILE"]).read().split()[1:])
out = pathlib.Path(os.environ["KAOS_OUTPUT_DIR"]) / (os.environ["KAOS_DATUM"] + ".sum")
out.write_text(f"{total}\\n")
print("summed", os.environ["KAOS_DATUM"])
"""


def test_tampered_datum_cache_entry_fails_the_job(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", "integ-datums")
    code, data = tmp_path / "code", tmp_path / "data"
    code.mkdir()
    data.mkdir()
    (code / "sum.py").write_text(SUM)
    for i in range(3):
        (data / f"part-{i}.csv").write_text("row,value\n" + "".join(f"{r},{i + r}\n" for r in range(3)))

    def batch(*extra: str) -> dict[str, Any]:
        result = stack.kaos("batch", "deploy", "-w", "integ-datums", "-s", str(code), "-d", str(data), "--per-file",
                            "--command", "python sum.py", *extra, "--wait", "--json", check=False)
        assert result.stdout, result.stderr
        job: dict[str, Any] = json.loads(result.stdout)
        return job

    first = batch()
    assert first["status"] == "COMPLETED" and first["metrics"]["datums_processed"] == 3, why(first)
    cached = batch("--max-runtime", "300")  # positive control: another fingerprint, every datum reused
    assert cached["status"] == "COMPLETED" and cached["metrics"]["datums_reused"] == 3, why(cached)

    s3, bucket = stack.aws("s3"), data_bucket(stack)
    markers = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="ws/integ-datums/datums/")["Contents"]]
    assert len(markers) == 3
    marker = json.loads(s3.get_object(Bucket=bucket, Key=markers[0])["Body"].read())
    # A forged entry: the datum's output claimed to be another (existing) blob of the workspace.
    other = json.loads(s3.get_object(Bucket=bucket, Key=markers[1])["Body"].read())
    marker["files"] = other["files"]
    s3.put_object(Bucket=bucket, Key=markers[0], Body=json.dumps(marker, sort_keys=True).encode())
    forged = batch("--max-runtime", "301")
    assert forged["status"] == "FAILED", why(forged)
    assert forged["failure_reason"].startswith("IntegrityError:") and markers[0] in forged["failure_reason"]
    assert "a datum cache entry" in forged["failure_reason"] and "not what kaos wrote" in forged["failure_reason"]
    # The entry was dropped: resuming processes that datum again, reuses the two others, and gets the right sums.
    resumed = json.loads(stack.kaos("train", "resume", forged["id"], "-w", "integ-datums", "--wait", "--json").stdout)
    assert resumed["status"] == "COMPLETED", why(resumed)
    assert resumed["metrics"]["datums_processed"] == 1 and resumed["metrics"]["datums_reused"] == 2
    assert resumed["model"] == first["model"]
