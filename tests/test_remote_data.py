"""Remote data manifests: S3 objects referenced (pinned by version, not copied at submit), https fetched."""
from __future__ import annotations

import hashlib
import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import TEMPLATE, Stack, local_tls, tiny_code

CSV = (TEMPLATE / "data" / "digits.csv").read_bytes()


@pytest.fixture()
def https_server(stack: Stack, tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "digits.csv").write_bytes(CSV)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*map(str, local_tls(stack.home)))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_s3_and_https_references_train(stack: Stack, tmp_path: Path, https_server: str) -> None:
    s3 = stack.aws("s3")
    s3.create_bucket(Bucket="external-data")
    s3.put_bucket_versioning(Bucket="external-data", VersioningConfiguration={"Status": "Enabled"})
    version = s3.put_object(Bucket="external-data", Key="sets/digits.csv", Body=CSV)["VersionId"]
    manifest = tmp_path / "remote.jsonl"
    manifest.write_text("\n".join(json.dumps(e) for e in [
        {"url": "s3://external-data/sets/digits.csv", "path": "s3/digits.csv"},
        {"url": f"{https_server}/digits.csv", "path": "web/digits.csv",
         "sha256": hashlib.sha256(CSV).hexdigest()},
    ]) + "\n")
    stack.kaos("workspace", "create", "remote")
    code = tiny_code(tmp_path, "n = sum(1 for _ in open(os.environ['SM_CHANNEL_TRAINING'] + '/s3/digits.csv'))\n"
                               "m = sum(1 for _ in open(os.environ['SM_CHANNEL_TRAINING'] + '/web/digits.csv'))\n"
                               "print('rows', n, m)")
    job = json.loads(stack.kaos("train", "deploy", "-s", str(code), "-m", str(manifest), "--wait",
                                "--json").stdout)
    assert job["status"] == "COMPLETED", job
    assert "rows 1798 1798" in stack.kaos("train", "logs", job["id"]).stdout
    # The snapshot pins the S3 object's version: overwriting the object does not change what the job used.
    bucket = next(b["Name"] for b in s3.list_buckets()["Buckets"] if "storagedata" in b["Name"])
    stored = json.loads(s3.get_object(Bucket=bucket, Key=f"ws/remote/manifests/{job['inputs']['data']['training']}"
                                                          ".json")["Body"].read())
    pinned = {f["path"]: f for f in stored["files"]}
    assert pinned["s3/digits.csv"]["version"] == f"version:{version}"
    assert pinned["s3/digits.csv"]["size"] == len(CSV)


def test_bad_manifest_lines_are_reported_by_number_before_anything(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", "remote-bad")
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text('{"url": "s3://b/k", "path": "ok.csv"}\nnot json\n{"url": "ftp://x/y", "path": "a"}\n'
                        '{"path": "nourl"}\n{"url": "s3://b/k2", "path": "../escape"}\n')
    result = stack.kaos("train", "deploy", "-s", str(tiny_code(tmp_path)), "-m", str(manifest), check=False)
    text = " ".join(result.stderr.split())
    assert result.returncode != 0
    for expected in ("line 2: not JSON", "line 3: unsupported URL scheme", "line 4: needs", "line 5: path"):
        assert expected in text, (expected, text)
    both = stack.kaos("train", "deploy", "-d", str(TEMPLATE / "data"), "-m", str(manifest), check=False)
    assert both.returncode != 0 and "mutually exclusive" in both.stderr
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"url": "s3://no-such-bucket-here/k", "path": "x.csv"}\n')
    gone = stack.kaos("train", "deploy", "-s", str(tiny_code(tmp_path)), "-m", str(missing), check=False)
    assert gone.returncode != 0 and "does not exist or is not readable" in " ".join(gone.stderr.split())
    # The bad lines stopped everything before any upload; the unreadable object stopped the job from starting
    # (the code snapshot it had uploaded is complete and content-addressed, so nothing partial remains).
    assert stack.kaos_json("workspace", "info")["jobs"] == 0
