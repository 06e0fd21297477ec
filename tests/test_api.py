"""Route tests over HTTP against the embedded stack: signatures, errors, idempotency, isolation."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from typing import Any

import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from chalicelib.adapters import blob_put_headers
from kaos.client import ApiError

from .conftest import REPO, Stack


def _load_app() -> Any:
    """The Chalice app under a private module name: chalice's own loader imports the module named `app`,
    which must stay free for it (the CDK synth in this process packages the app)."""
    from chalicelib import config

    spec = importlib.util.spec_from_file_location("kaos_api_under_test", REPO / "app" / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # The app loads its settings at import; only its routes are read here, so any valid values do ("1" parses as
    # text, a number of seconds and a bucket list). Nothing of it outlives the import.
    saved, loaded = dict(os.environ), config._loaded
    os.environ.update({name: "1" for name in config.COMPONENTS["api"] if name not in os.environ})
    try:
        spec.loader.exec_module(module)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        config._loaded = loaded
    return module.app


chalice_app = _load_app()


def concrete(path: str) -> str:
    values = {"{job}": "train-" + "0" * 24, "{node}": "job:x", "{workspace}": "ws-x", "{snapshot}": "a" * 64,
              "{grid}": "grid-" + "0" * 24, "{group}": "digits", "{version}": "1", "{alias}": "champion",
              "{name}": "digits"}
    return re.sub(r"\{[^}]+\}", lambda m: values[m.group(0)], path)


ROUTES = [(path, method) for path, entry in chalice_app.routes.items() for method in entry
          if entry[method].authorizer is not None]


def test_only_the_openapi_document_is_public() -> None:
    public = {(p, m) for p, e in chalice_app.routes.items() for m in e if e[m].authorizer is None}
    assert public == {("/openapi.json", "GET")}
    assert len(ROUTES) >= 14


@pytest.mark.parametrize("path, method", ROUTES)
def test_every_route_refuses_unsigned_and_wrongly_signed_requests(stack: Stack, path: str, method: str) -> None:
    url = stack.api_url + concrete(path)
    unsigned = requests.request(method, url, data=b"{}", timeout=10)
    assert unsigned.status_code in (401, 403), unsigned.text
    request = AWSRequest(method=method, url=url, data=b"{}")
    SigV4Auth(Credentials("AKIAUNKNOWN", "secret"), "execute-api", "us-east-1").add_auth(request)
    forged = requests.request(method, url, data=b"{}", headers=dict(request.headers.items()), timeout=10)
    assert forged.status_code == 403, forged.text
    keys = stack.client()
    request = AWSRequest(method=method, url=url, data=b"{}")
    SigV4Auth(Credentials(keys.credentials.access_key, "not-the-secret"), "execute-api", "us-east-1").add_auth(request)
    wrong = requests.request(method, url, data=b"{}", headers=dict(request.headers.items()), timeout=10)
    assert wrong.status_code == 403, wrong.text


def raw(stack: Stack, method: str, path: str, body: bytes) -> requests.Response:
    client = stack.client()
    request = AWSRequest(method=method, url=stack.api_url + path, data=body)
    SigV4Auth(client.credentials.get_frozen_credentials(), "execute-api", "us-east-1").add_auth(request)
    return requests.request(method, stack.api_url + path, data=body, headers=dict(request.headers.items()), timeout=10)


@pytest.mark.parametrize("body", [b"not json", b"[1,2]", b"", b'{"name": 5}', b'{"name": "Bad_Name"}'])
def test_bad_bodies_get_4xx_json_errors(stack: Stack, body: bytes) -> None:
    response = raw(stack, "POST", "/workspaces", body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "ValidationFailed" and error["message"].split(":")[0] in ("body", "name")


def test_workspace_create_is_idempotent_and_names_are_owned(stack: Stack) -> None:
    dev, guest = stack.client("dev"), stack.client("guest")
    first = dev.request("POST", "/workspaces", {"name": "api-owned"})
    again = dev.request("POST", "/workspaces", {"name": "api-owned"})
    assert first == again
    with pytest.raises(ApiError) as taken:
        guest.create_workspace("api-owned")
    assert taken.value.status == 409
    assert "api-owned" in [w["name"] for w in dev.workspaces()]
    assert "api-owned" not in [w["name"] for w in guest.workspaces()]


def test_non_members_get_404_for_the_workspace_and_its_objects(stack: Stack) -> None:
    dev, guest = stack.client("dev"), stack.client("guest")
    dev.create_workspace("api-private")
    for call in (lambda: guest.workspace("api-private"), lambda: guest.jobs("api-private"),
                 lambda: guest.job("api-private", "train-" + "0" * 24), lambda: guest.kill_workspace("api-private"),
                 lambda: guest.submit("api-private", "a" * 64, {"training": "b" * 64}, {}),
                 lambda: guest.request("POST", "/workspaces/api-private/snapshots",
                                       {"kind": "data", "files": [{"path": "a", "sha256": "a" * 64, "size": 1}]})):
        with pytest.raises(ApiError) as error:
            call()
        assert error.value.status == 404
    assert dev.workspace("api-private")["name"] == "api-private"


def test_unknown_objects_are_404(stack: Stack) -> None:
    dev = stack.client()
    dev.create_workspace("api-unknown")
    for call in (lambda: dev.workspace("api-nothing"), lambda: dev.job("api-unknown", "train-" + "1" * 24),
                 lambda: dev.lineage("api-unknown", "job:train-123", "up"),
                 lambda: dev.submit("api-unknown", "a" * 64, {"training": "b" * 64}, {})):
        with pytest.raises(ApiError) as error:
            call()
        assert error.value.status == 404, error.value


def test_snapshot_commit_is_pending_until_blobs_arrive_and_writes_no_row_before(stack: Stack) -> None:
    dev = stack.client()
    dev.create_workspace("api-blobs")
    digest = hashlib.sha256(b"hello").hexdigest()
    files = [{"path": "a.txt", "sha256": digest, "size": 5}]
    pending = dev.request("POST", "/workspaces/api-blobs/snapshots", {"kind": "data", "files": files})
    assert pending["status"] == "pending" and [m["sha256"] for m in pending["missing"]] == [digest]
    assert dev.workspace("api-blobs")["snapshots"] == 0
    still = dev.request("POST", f"/workspaces/api-blobs/snapshots/{pending['id']}/complete")
    assert still["status"] == "pending" and still["missing_count"] == 1
    # The presigned PUT is signed with the blob's checksum and If-None-Match: the upload must send both.
    assert requests.put(pending["missing"][0]["url"], data=b"hello", headers=blob_put_headers(digest),
                        timeout=10).status_code == 200
    with pytest.raises(ApiError) as wrong_size:
        dev.request("POST", "/workspaces/api-blobs/snapshots", {"kind": "data", "files": [{**files[0], "size": 6}]})
    assert wrong_size.value.status == 400 and "files" in wrong_size.value.message
    snapshot = dev.request("POST", f"/workspaces/api-blobs/snapshots/{pending['id']}/complete")
    again = dev.request("POST", "/workspaces/api-blobs/snapshots", {"kind": "data", "files": files})
    assert snapshot["status"] == "committed" and snapshot["id"] == again["id"] == pending["id"]
    assert snapshot["files"] == 1 and snapshot["bytes"] == 5
    with pytest.raises(ApiError) as unknown:
        dev.request("POST", f"/workspaces/api-blobs/snapshots/{'f' * 64}/complete")
    assert unknown.value.status == 404
    with pytest.raises(ApiError) as wrong_kind:
        dev.submit("api-blobs", snapshot["id"], {"training": snapshot["id"]}, {})
    assert wrong_kind.value.status == 400 and wrong_kind.value.message.startswith("code:")


def test_kill_removes_exactly_that_workspace(stack: Stack) -> None:
    dev = stack.client()
    for name in ("mnist", "mnist2"):
        dev.create_workspace(name)
        digest = hashlib.sha256(name.encode()).hexdigest()
        files = [{"path": "x", "sha256": digest, "size": len(name)}]
        pending = dev.request("POST", f"/workspaces/{name}/snapshots", {"kind": "data", "files": files})
        for blob in pending["missing"]:
            requests.put(blob["url"], data=name.encode(), headers=blob_put_headers(digest),
                         timeout=10).raise_for_status()
        dev.request("POST", f"/workspaces/{name}/snapshots/{pending['id']}/complete")
    result = dev.kill_workspace("mnist")
    assert result["deleted_objects"] >= 2
    with pytest.raises(ApiError):
        dev.workspace("mnist")
    survivor = dev.workspace("mnist2")
    assert survivor["snapshots"] == 1
    keys = stack.aws("s3").list_objects_v2(Bucket=_bucket(stack), Prefix="ws/mnist2/")["KeyCount"]
    assert keys >= 2


def _bucket(stack: Stack) -> str:
    return next(b["Name"] for b in stack.aws("s3").list_buckets()["Buckets"] if "data" in b["Name"])


def test_bad_query_parameters(stack: Stack) -> None:
    dev = stack.client()
    dev.create_workspace("api-query")
    for query in ({"limit": "0"}, {"limit": "x"}, {"limit": "100000"}, {"cursor": "%%%"}):
        with pytest.raises(ApiError) as error:
            dev.request("GET", "/workspaces/api-query/jobs", query=query)
        assert error.value.status == 400, query
    with pytest.raises(ApiError) as depth:
        dev.request("GET", "/workspaces/api-query/lineage/job:x", query={"depth": "-1"})
    assert depth.value.status in (400, 404)
    body = json.dumps({"name": "x" * 100}).encode()
    assert raw(stack, "POST", "/workspaces", body).status_code == 400


def test_openapi_document_matches_the_routes(stack: Stack) -> None:
    document = requests.get(stack.api_url + "/openapi.json", timeout=10).json()
    documented = {(path, method.upper()) for path, ops in document["paths"].items() for method in ops}
    served = {(p, m) for p, e in chalice_app.routes.items() for m in e}
    assert documented == served
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            assert ("security" in op) == (path != "/openapi.json"), (path, method)
            assert "500" in op["responses"]


def test_errors_name_the_field_and_rule(stack: Stack) -> None:
    dev = stack.client()
    dev.create_workspace("api-rules")
    cases = [
        ({"code": "x", "data": {"training": "a" * 64}}, "code: must match pattern"),
        ({"code": "a" * 64, "data": {}}, "data: must contain at least 1 properties"),
        ({"code": "a" * 64, "data": {"training": "a" * 64}, "resources": {"max_runtime_seconds": 0}},
         "resources.max_runtime_seconds: must be bigger than or equal to 1"),
        ({"code": "a" * 64, "data": {"training": "a" * 64}, "surprise": 1}, "body: must not contain"),
    ]
    for body, message in cases:
        with pytest.raises(ApiError) as error:
            dev.request("POST", "/workspaces/api-rules/jobs", body)
        assert error.value.status == 400 and error.value.message.startswith(message), error.value.message


def test_sharing_grants_and_revokes_access(stack: Stack) -> None:
    dev, guest = stack.client("dev"), stack.client("guest")
    dev.create_workspace("api-shared")
    with pytest.raises(ApiError):
        guest.workspace("api-shared")
    members = dev.share("api-shared", "guest")["members"]
    assert {m["role"] for m in members} == {"owner", "member"}
    assert dev.share("api-shared", "guest") == dev.members("api-shared")  # idempotent
    assert guest.workspace("api-shared")["members"] == 2
    assert "api-shared" in [w["name"] for w in guest.workspaces()]
    for call in (lambda: guest.share("api-shared", "someone"), lambda: guest.kill_workspace("api-shared"),
                 lambda: guest.unshare("api-shared", "dev")):
        with pytest.raises(ApiError) as error:
            call()
        assert error.value.status == 403
    with pytest.raises(ApiError) as owner:
        dev.unshare("api-shared", "dev")
    assert owner.value.status == 400
    dev.unshare("api-shared", "guest")
    with pytest.raises(ApiError) as gone:
        guest.workspace("api-shared")
    assert gone.value.status == 404
