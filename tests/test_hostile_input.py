"""Hostile input gets a clean 4xx naming the field and the rule (never a 500 or a traceback), the CLI reports a
symlink loop in one line, and the embedded stack keeps its files to its user (dirs 0700, files 0600)."""
from __future__ import annotations

import base64
import json
import stat
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from chalicelib import limits
from chalicelib.domain import parse_manifest
from chalicelib.errors import ValidationFailed
from chalicelib.http import json_body, json_depth
from kaos.bundle import BundleError, read_data_manifest, scan
from kaos.client import ApiError

from .conftest import TEMPLATE, Stack, tiny_code
from .test_gateway_auth import sign

SHA = "0" * 64


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def post_raw(stack: Stack, path: str, body: bytes) -> requests.Response:
    url, headers = sign(stack, "POST", path, body)
    return requests.post(url, data=body, headers=headers, timeout=30)


def error_of(response: requests.Response) -> dict[str, str]:
    payload = response.json()
    assert set(payload) == {"error"} and set(payload["error"]) == {"code", "message"}, payload
    return dict(payload["error"])


# --- deeply nested JSON ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [
    '{"name": ' + nested(1000) + "}",
    nested(1000),
    '{"name": "x", "extra": ' + '{"a": ' * 1000 + "1" + "}" * 1000 + "}",
    '{"name": ' + nested(100_000) + "}",
])
def test_json_nested_deeper_than_the_limit_is_a_400(stack: Stack, body: str) -> None:
    answer = post_raw(stack, "/workspaces", body.encode())
    assert answer.status_code == 400, answer.text
    error = error_of(answer)
    assert error["code"] == "ValidationFailed"
    assert error["message"] == f"body: JSON nested deeper than {limits.MAX_JSON_DEPTH} levels (objects and arrays)"


def test_json_nested_within_the_limit_reaches_validation(stack: Stack) -> None:
    stack.client().create_workspace("hostile-nest")
    # Exactly at the limit: parsed, then refused by the schema for what it is (name must be a string).
    at_limit = post_raw(stack, "/workspaces", ('{"name": ' + nested(limits.MAX_JSON_DEPTH - 1) + "}").encode())
    assert at_limit.status_code == 400
    assert error_of(at_limit)["message"].startswith("name: must be"), at_limit.text
    # Deep nesting inside strings is text, not structure.
    ws = f"hn-{uuid.uuid4().hex[:8]}"
    texty = json.dumps({"name": ws, "x": "[" * 2000 + "{" * 2000}).encode()
    refused = post_raw(stack, "/workspaces", texty)
    assert refused.status_code == 400 and "nested" not in error_of(refused)["message"], refused.text
    assert post_raw(stack, "/workspaces", json.dumps({"name": ws}).encode()).status_code == 201
    # A params object nesting a few levels is a legitimate body: it gets past the body checks to the job rules.
    params = {"layers": {"a": {"b": {"c": [1, 2]}}}}
    with pytest.raises(ApiError) as rejected:
        stack.client().request("POST", f"/workspaces/{ws}/jobs", {"code": SHA, "params": params})
    assert rejected.value.status in (400, 404, 409) and "nested" not in rejected.value.message


def test_json_body_counts_structure_not_text() -> None:
    assert json_body(('{"a": ' + nested(limits.MAX_JSON_DEPTH - 1) + "}").encode())["a"]
    with pytest.raises(ValidationFailed, match="nested deeper than"):
        json_body(('{"a": ' + nested(limits.MAX_JSON_DEPTH) + "}").encode())
    assert json_depth(b'{"a": "[[[[{{{{", "b": "\\"[[[", "c": [{}]}') == 3
    assert json_depth(b'"unterminated [[[[') == 0
    assert json_depth(b"]]]]") == 0
    assert json_depth(b"") == 0


def test_json_depth_is_linear_on_hostile_text() -> None:
    size = limits.MAX_REQUEST_BYTES
    for raw in (b'"' + b'\\"' * (size // 2), b'"' * size, b"[]" * (size // 2), b'"a\\' * (size // 3)):
        started = time.monotonic()
        json_depth(raw)
        assert time.monotonic() - started < 5, raw[:20]


# --- forged paging cursors --------------------------------------------------------------------------------------
def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def _key(ws: str) -> dict[str, Any]:
    return {"pk": {"S": f"WS#{ws}"}, "sk": {"S": "JOB#train-" + "f" * 24},
            "gsi1pk": {"S": f"JOBS#{ws}"}, "gsi1sk": {"S": "2999-01-01T00:00:00Z#train-" + "f" * 24}}


def test_forged_jobs_cursors_are_a_400(stack: Stack) -> None:
    ws = "hostile-cursor"
    client = stack.client()
    client.create_workspace(ws)
    good = _key(ws)
    forged = [
        _cursor({"pk": 5, "sk": 5, "gsi1pk": 5, "gsi1sk": 5}),
        _cursor({name: {"N": "1"} for name in good}),
        _cursor({name: {"S": ["x"]} for name in good}),
        _cursor({name: {"S": None} for name in good}),
        _cursor({name: {"S": "x", "N": "1"} for name in good}),
        _cursor({**good, "extra": {"S": "x"}}),
        _cursor({k: v for k, v in good.items() if k != "sk"}),
        _cursor({**good, "gsi1sk": {"S": "x" * 1100}}),
        _cursor(_key("someone-else")),
        _cursor({**good, "pk": {"S": "WS#someone-else"}}),
        _cursor([1, 2, 3]),
        _cursor("cursor"),
        _cursor(1e308),
        "!!!not-base64!!!",
        base64.urlsafe_b64encode(b"\xff\xfe not json").decode(),
    ]
    for cursor in forged:
        with pytest.raises(ApiError) as refused:
            client.request("GET", f"/workspaces/{ws}/jobs", query={"cursor": cursor})
        assert refused.value.status == 400, (cursor, refused.value)
        assert refused.value.message.startswith("cursor: invalid cursor"), refused.value.message
    # Positive control: a well-formed start key of this workspace's listing pages as DynamoDB does.
    answer = client.request("GET", f"/workspaces/{ws}/jobs", query={"cursor": _cursor(good)})
    assert answer["jobs"] == [] and answer["next"] is None


def test_jobs_cursor_round_trip() -> None:
    from chalicelib.repositories.jobs import decode_cursor, encode_cursor

    key = _key("ws-a")
    assert decode_cursor(encode_cursor(key), "ws-a") == key
    with pytest.raises(ValidationFailed, match="invalid cursor"):
        decode_cursor(encode_cursor(key), "ws-b")


# --- manifests holding `a` and `a/b` ----------------------------------------------------------------------------
@pytest.mark.parametrize("paths, bad, parent", [
    (["a", "a/b"], "a/b", "a"),
    (["a/b", "a"], "a/b", "a"),
    (["x/y", "k", "x/y/z/w"], "x/y/z/w", "x/y"),
])
def test_a_manifest_with_a_path_that_is_both_file_and_directory_is_a_400(
        stack: Stack, paths: list[str], bad: str, parent: str) -> None:
    client = stack.client()
    client.create_workspace("hostile-tree")
    files = [{"path": p, "sha256": SHA, "size": 1} for p in paths]
    with pytest.raises(ApiError) as refused:
        client.request("POST", "/workspaces/hostile-tree/snapshots", {"kind": "data", "files": files})
    assert refused.value.status == 400
    index = paths.index(bad)
    assert refused.value.message == (f"files[{index}].path: {bad!r} lies under {parent!r}, which is also a file; a "
                                     "path cannot be both a file and a directory")
    remote = [{"path": p, "url": f"https://example.invalid/{i}"} for i, p in enumerate(paths)]
    with pytest.raises(ApiError) as refused_remote:
        client.request("POST", "/workspaces/hostile-tree/snapshots", {"kind": "data", "files": remote})
    assert refused_remote.value.status == 400 and "both a file and a directory" in refused_remote.value.message
    # Positive control: siblings and look-alike names are a fine tree (pending: the blobs are not uploaded).
    fine = [{"path": p, "sha256": SHA, "size": 1} for p in ("a/b", "a/c", "ab", "a-b/c")]
    answer = client.request("POST", "/workspaces/hostile-tree/snapshots", {"kind": "data", "files": fine})
    assert answer["status"] == "pending"


def test_parse_manifest_refuses_file_directory_clashes_only() -> None:
    entry = {"sha256": SHA, "size": 1}
    with pytest.raises(ValidationFailed, match=r"files\[0\]\.path: 'd/e/f' lies under 'd'"):
        parse_manifest("data", [{"path": "d/e/f", **entry}, {"path": "d", **entry}])
    assert len(parse_manifest("data", [{"path": p, **entry} for p in ("d/e", "d/f", "de", "d.e/f")]).files) == 4


def test_cli_remote_manifest_refuses_file_directory_clashes(tmp_path: Path) -> None:
    manifest = tmp_path / "remote.jsonl"
    lines = [{"url": "https://example.invalid/1", "path": "a/b/c"}, {"url": "https://example.invalid/2", "path": "a"},
             {"url": "https://example.invalid/3", "path": "x"}, {"url": "https://example.invalid/4", "path": "x/y"}]
    manifest.write_text("\n".join(json.dumps(line) for line in lines))
    with pytest.raises(BundleError) as refused:
        read_data_manifest(manifest, "-m training")
    assert "line 2: paths 'a' and 'a/b/c' cannot both exist" in str(refused.value)
    assert "line 4: paths 'x/y' and 'x' cannot both exist" in str(refused.value)
    manifest.write_text("\n".join(json.dumps(line) for line in lines if line["path"] in ("a/b/c", "x")))
    assert [e["path"] for e in read_data_manifest(manifest, "-m training")] == ["a/b/c", "x"]


# --- symlink loops in an upload directory -------------------------------------------------------------------------
def _code_with_loop(tmp: Path, kind: str) -> tuple[Path, Path]:
    code = tiny_code(tmp)
    if kind == "pair":
        (code / "loop-a").symlink_to("loop-b")
        (code / "loop-b").symlink_to("loop-a")
        return code, code / "loop-a"
    (code / "sub").mkdir()
    (code / "sub" / "self").symlink_to("self")
    return code, code / "sub" / "self"


@pytest.mark.parametrize("kind", ["pair", "self"])
def test_cli_reports_a_symlink_loop_in_one_line(stack: Stack, tmp_path: Path, kind: str) -> None:
    code, loop = _code_with_loop(tmp_path, kind)
    result = stack.kaos("train", "deploy", "-s", str(code), "-w", "hostile-loop", check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: -s: {loop} is a symlink loop"], result.stderr
    # Positive control: the same directory without the loop scans (only train.py).
    for link in (code / "loop-a", code / "loop-b", code / "sub" / "self"):
        if link.is_symlink():
            link.unlink()
    assert [rel for rel, _, _ in scan(code, "-s")] == ["train.py"]


def test_scan_reports_loops_as_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "ok.txt").write_text("ok")
    (tmp_path / "me").symlink_to("me")
    with pytest.raises(BundleError) as refused:
        scan(tmp_path, "-d training")
    assert refused.value.exit_code == 2 and str(refused.value) == f"-d training: {tmp_path / 'me'} is a symlink loop"
    (tmp_path / "me").unlink()
    (tmp_path / "out").symlink_to("/etc/hostname")
    with pytest.raises(BundleError) as leaving:  # unchanged: symlinks leaving the bundle stay exit code 1
        scan(tmp_path, "-d training")
    assert leaving.value.exit_code == 1 and "leaving the bundle" in str(leaving.value)


# --- the local work folder --------------------------------------------------------------------------------------
def test_the_stack_keeps_its_files_to_its_user(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", "hostile-perm")
    params = tmp_path / "params.json"
    params.write_text("{}")
    job = json.loads(stack.kaos("train", "deploy", "-s", str(tiny_code(tmp_path)), "-d", str(TEMPLATE / "data"),
                                "-h", str(params), "-w", "hostile-perm", "--wait", "--json").stdout)
    assert job["status"] == "COMPLETED", job
    state = stack.state_dir
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "work").stat().st_mode) == 0o700
    job_files = [p for p in (state / "work").rglob("*") if p.is_file() and not p.is_symlink()]
    assert job_files, "the job left no files to check"
    status = Path(f"/proc/{stack.runtime['pid']}/status")
    if status.exists():
        umask = next(line.split()[1] for line in status.read_text().splitlines() if line.startswith("Umask:"))
        assert umask == "0077"
    exposed = [path for path in [state, *state.rglob("*")]
               if not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) & 0o077]
    listing = "\n".join(f"{oct(stat.S_IMODE(p.stat().st_mode))} {p}" for p in exposed[:20])
    assert not exposed, listing
