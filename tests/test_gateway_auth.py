"""The embedded stack's gateway does what API Gateway's AWS_IAM authorization does: credential scope (region and
service), the payload hash of the body received, bodies over the limit refused before they are read, and the
test-only admin route. Raw signed requests (botocore SigV4Auth) against the running stack; every refusal has a
positive control that passes through the same code path."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from chalice import Chalice

from chalicelib import limits
from kaos.local.gateway import ADMIN_USER, CONTROL_PATH, ApiGateway, LocalUser

from .conftest import Stack

REGION = "us-east-1"


def sign(stack: Stack, method: str, path: str, body: bytes = b"", *, user: str = "dev", region: str = REGION,
         service: str = "execute-api", content_sha256: str | None = None) -> tuple[str, dict[str, str]]:
    """URL and headers of a SigV4-signed request; `content_sha256` is signed as X-Amz-Content-SHA256."""
    url = stack.api_url + path
    headers = {"Content-Type": "application/json"} if body else {}
    if content_sha256 is not None:
        headers["X-Amz-Content-SHA256"] = content_sha256
    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    SigV4Auth(stack.client(user).credentials.get_frozen_credentials(), service, region).add_auth(request)
    return url, dict(request.headers.items())


def message(response: requests.Response) -> str:
    return str(response.json().get("message", ""))


def workspace_names(stack: Stack, user: str = "dev") -> set[str]:
    return {w["name"] for w in stack.client(user).workspaces()}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- credential scope --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("region", ["us-west-2", "eu-central-1"])
def test_credential_scoped_to_another_region_is_refused(stack: Stack, region: str) -> None:
    url, headers = sign(stack, "GET", "/workspaces", region=region)
    refused = requests.get(url, headers=headers, timeout=10)
    assert refused.status_code == 403, refused.text
    assert message(refused) == f"Credential should be scoped to a valid region, not '{region}'."
    url, headers = sign(stack, "GET", "/workspaces", region=REGION)  # positive control: the stack's region
    assert requests.get(url, headers=headers, timeout=10).status_code == 200


@pytest.mark.parametrize("service", ["s3", "lambda", "execute-apis"])
def test_credential_scoped_to_another_service_is_refused(stack: Stack, service: str) -> None:
    url, headers = sign(stack, "GET", "/workspaces", service=service)
    refused = requests.get(url, headers=headers, timeout=10)
    assert refused.status_code == 403, refused.text
    assert message(refused) == "Credential should be scoped to correct service: 'execute-api'."
    url, headers = sign(stack, "GET", "/workspaces", service="execute-api")  # positive control
    assert requests.get(url, headers=headers, timeout=10).status_code == 200


# --- payload hash ------------------------------------------------------------------------------------------------
def test_body_swapped_after_signing_with_a_signed_content_hash_is_refused(stack: Stack) -> None:
    signed_name, swapped_name = unique("gw-signed"), unique("gw-swapped")
    signed_body = json.dumps({"name": signed_name}).encode()
    swapped_body = json.dumps({"name": swapped_name}).encode()
    url, headers = sign(stack, "POST", "/workspaces", signed_body,
                        content_sha256=hashlib.sha256(signed_body).hexdigest())
    refused = requests.post(url, data=swapped_body, headers=headers, timeout=10)
    assert refused.status_code == 403, refused.text
    assert "x-amz-content-sha256" in message(refused)
    assert swapped_name not in workspace_names(stack)
    accepted = requests.post(url, data=signed_body, headers=headers, timeout=10)  # positive control
    assert accepted.status_code == 201, accepted.text
    assert signed_name in workspace_names(stack)


def test_body_swapped_after_signing_without_a_content_hash_header_is_refused(stack: Stack) -> None:
    signed_body = json.dumps({"name": unique("gw-plain")}).encode()
    swapped_name = unique("gw-plain-swapped")
    url, headers = sign(stack, "POST", "/workspaces", signed_body)
    refused = requests.post(url, data=json.dumps({"name": swapped_name}).encode(), headers=headers, timeout=10)
    assert refused.status_code == 403, refused.text
    assert "signature" in message(refused)
    assert swapped_name not in workspace_names(stack)
    assert requests.post(url, data=signed_body, headers=headers, timeout=10).status_code == 201


def test_unsigned_payload_is_not_trusted(stack: Stack) -> None:
    name = unique("gw-unsigned")
    body = json.dumps({"name": name}).encode()
    url, headers = sign(stack, "POST", "/workspaces", body, content_sha256="UNSIGNED-PAYLOAD")
    refused = requests.post(url, data=body, headers=headers, timeout=10)
    assert refused.status_code == 403, refused.text
    assert name not in workspace_names(stack)
    # Positive control: the same request with the body's real hash in the signed header.
    url, headers = sign(stack, "POST", "/workspaces", body, content_sha256=hashlib.sha256(body).hexdigest())
    assert requests.post(url, data=body, headers=headers, timeout=10).status_code == 201
    assert name in workspace_names(stack)


def test_signature_is_checked_against_the_body_even_when_the_content_hash_header_matches(stack: Stack) -> None:
    # A header claiming the swapped body's hash, but the signature was made over the original request.
    body, other = json.dumps({"name": unique("gw-a")}).encode(), json.dumps({"name": unique("gw-b")}).encode()
    url, headers = sign(stack, "POST", "/workspaces", body, content_sha256=hashlib.sha256(body).hexdigest())
    headers["X-Amz-Content-SHA256"] = hashlib.sha256(other).hexdigest()
    refused = requests.post(url, data=other, headers=headers, timeout=10)
    assert refused.status_code == 403, refused.text
    assert "signature" in message(refused)


# --- body size and reading order -------------------------------------------------------------------------------
def _connect(stack: Stack) -> socket.socket:
    parts = urlsplit(stack.api_url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode()


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    while len(rest) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(status_line.split()[1]), headers, rest


def _signed_head(stack: Stack, path: str, body: bytes, declared: int, user: str = "dev") -> bytes:
    url, headers = sign(stack, "POST", path, body, user=user)
    headers["Host"] = urlsplit(url).netloc
    headers["Content-Length"] = str(declared)
    return _head("POST", path, headers)


def test_a_body_over_the_limit_is_refused_from_its_content_length_before_it_is_sent(stack: Stack) -> None:
    oversize = b"x" * (limits.MAX_REQUEST_BYTES + 1)
    with _connect(stack) as sock:
        sock.sendall(_signed_head(stack, "/workspaces", oversize, len(oversize)))  # headers only, no body
        status, headers, payload = _read_response(sock)
    assert status == 413, payload
    assert headers.get("connection") == "close"
    assert str(limits.MAX_REQUEST_BYTES) in json.loads(payload)["message"]
    # Positive control: under the limit the gateway waits for the body, then serves the request.
    name = unique("gw-size")
    body = json.dumps({"name": name}).encode()
    with _connect(stack) as sock:
        sock.sendall(_signed_head(stack, "/workspaces", body, len(body)))
        sock.settimeout(1.0)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        sock.settimeout(10)
        sock.sendall(body)
        status, _, payload = _read_response(sock)
    assert status == 201, payload
    assert name in workspace_names(stack)


def test_an_unauthenticated_body_is_not_read(stack: Stack) -> None:
    body = b"{" + b" " * 1_000_000 + b"}"  # under the size limit
    url = stack.api_url + "/workspaces"
    request = AWSRequest(method="POST", url=url, data=body)
    SigV4Auth(Credentials("AKIAUNKNOWNKEY000000", "secret"), "execute-api", REGION).add_auth(request)
    headers = {**dict(request.headers.items()), "Host": urlsplit(url).netloc, "Content-Length": str(len(body))}
    with _connect(stack) as sock:
        sock.sendall(_head("POST", "/workspaces", headers))  # the body is never sent
        status, _, payload = _read_response(sock)
    assert status == 403, payload
    assert json.loads(payload)["message"] == "The security token included in the request is invalid."
    for missing in ({"Authorization": "AWS4-HMAC-SHA256 garbage"}, {}):
        with _connect(stack) as sock:
            sock.sendall(_head("POST", "/workspaces", {"Host": urlsplit(url).netloc, **missing,
                                                        "Content-Length": str(len(body))}))
            status, _, payload = _read_response(sock)
        assert status == 403 and json.loads(payload)["message"] == "Missing Authentication Token", payload
    # The positive control (a known key: the gateway waits for the body) is in the test above.


def test_post_without_a_valid_content_length_is_refused(stack: Stack) -> None:
    netloc = urlsplit(stack.api_url).netloc
    for headers, expected in (({}, 411), ({"Content-Length": "ten"}, 400), ({"Content-Length": "-1"}, 400),
                              ({"Transfer-Encoding": "chunked"}, 411)):
        _, signed = sign(stack, "POST", "/workspaces", b"")
        with _connect(stack) as sock:
            sock.sendall(_head("POST", "/workspaces", {**signed, "Host": netloc, **headers}))
            status, _, payload = _read_response(sock)
        assert status == expected, (headers, payload)
    # Positive control: an empty body declared as such reaches the route (which wants a JSON object).
    url, signed = sign(stack, "POST", "/workspaces", b"")
    answer = requests.post(url, data=b"", headers=signed, timeout=10)
    assert answer.status_code == 400 and "JSON object is required" in answer.json()["error"]["message"]


def test_a_refused_small_body_keeps_the_connection_usable(stack: Stack) -> None:
    netloc = urlsplit(stack.api_url).netloc
    body = b'{"name": "x"}'
    with _connect(stack) as sock:
        for _ in range(3):  # one keep-alive connection: unsigned POST with a body, then a signed GET
            sock.sendall(_head("POST", "/workspaces", {"Host": netloc, "Content-Length": str(len(body))}) + body)
            status, headers, _ = _read_response(sock)
            assert status == 403 and headers.get("connection") != "close"
            _, signed = sign(stack, "GET", "/workspaces")
            sock.sendall(_head("GET", "/workspaces", {**signed, "Host": netloc}))
            status, _, payload = _read_response(sock)
            assert status == 200, payload


# --- the test-only admin route ---------------------------------------------------------------------------------
HARMLESS_FAULT = {"lambda": "NoFunctionHasThisName", "error": "Never", "times": 0}


@pytest.mark.parametrize("user", ["guest", "dev"])
def test_fault_route_refuses_every_user_but_admin(stack: Stack, user: str) -> None:
    body = json.dumps(HARMLESS_FAULT).encode()
    url, headers = sign(stack, "POST", CONTROL_PATH, body, user=user)
    refused = requests.post(url, data=body, headers=headers, timeout=10)
    assert refused.status_code == 403, refused.text
    assert f"user/{user} is not authorized to perform: execute-api:Invoke" in message(refused)
    # The same path reports the warm Lambda environments (their role sessions' keys among their variables).
    inspect = json.dumps({"inspect": "environments"}).encode()
    url, headers = sign(stack, "POST", CONTROL_PATH, inspect, user=user)
    refused = requests.post(url, data=inspect, headers=headers, timeout=10)
    assert refused.status_code == 403 and "environments" not in refused.text, refused.text
    url, headers = sign(stack, "POST", CONTROL_PATH, body, user=ADMIN_USER)  # positive control
    accepted = requests.post(url, data=body, headers=headers, timeout=10)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json() == {"injected": HARMLESS_FAULT}


def test_fault_route_refuses_unsigned_and_forged_requests(stack: Stack) -> None:
    body = json.dumps(HARMLESS_FAULT).encode()
    url = stack.api_url + CONTROL_PATH
    assert requests.post(url, data=body, timeout=10).status_code == 403
    url, headers = sign(stack, "POST", CONTROL_PATH, body, user=ADMIN_USER, region="us-west-2")
    assert requests.post(url, data=body, headers=headers, timeout=10).status_code == 403
    url, headers = sign(stack, "POST", CONTROL_PATH, body, user=ADMIN_USER)
    assert requests.post(url, data=b'{"lambda": "x", "times": 5}', headers=headers, timeout=10).status_code == 403


def _gateway(control: Any) -> tuple[ApiGateway, dict[str, LocalUser]]:
    app = Chalice(app_name="gateway-under-test")

    @app.route("/ping", methods=["GET"])
    def ping() -> dict[str, str]:
        return {"ok": "yes"}

    users = {u.access_key: u for u in (LocalUser("dev", "AKIADEV", "dev-secret"),
                                        LocalUser(ADMIN_USER, "AKIAADMIN", "admin-secret"))}
    return ApiGateway(app, users, region=REGION, control=control), users


def _local_call(gateway: ApiGateway, user: LocalUser, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
    url = "http://127.0.0.1:1" + path
    request = AWSRequest(method=method, url=url, data=body)
    SigV4Auth(Credentials(user.access_key, user.secret_key), "execute-api", REGION).add_auth(request)
    status, _, payload = gateway.handle(method, url, {**dict(request.headers.items()), "Host": "127.0.0.1:1"}, body)
    return status, json.loads(payload)


def test_without_test_hooks_the_fault_route_is_an_unknown_path() -> None:
    calls: list[Any] = []
    absent, users = _gateway(None)
    present, _ = _gateway(lambda request: calls.append(request) or {"injected": request})
    admin = users["AKIAADMIN"]
    body = json.dumps(HARMLESS_FAULT).encode()
    unknown = _local_call(absent, admin, "POST", "/_local/nothing-here", body)
    assert unknown[0] == 403 and unknown[1] == {"message": "Missing Authentication Token"}
    assert _local_call(absent, admin, "POST", CONTROL_PATH, body) == unknown
    assert not calls
    assert _local_call(present, admin, "POST", CONTROL_PATH, body) == (200, {"injected": HARMLESS_FAULT})
    assert calls == [HARMLESS_FAULT]
    assert _local_call(absent, users["AKIADEV"], "GET", "/ping") == (200, {"ok": "yes"})


def test_a_stack_started_without_test_hooks_has_no_admin_and_no_fault_route(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # A state dir left world-readable (as before kaos kept it private): the start makes it 0700 again.
    (home / "local" / "work").mkdir(parents=True)
    for directory in (home / "local", home / "local" / "work"):
        directory.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "KAOS_LOCAL_TEST_HOOKS"}
    env.update(KAOS_HOME=str(home))
    cli = [sys.executable, "-m", "kaos.cli", "local"]
    started = subprocess.run([*cli, "up", "--detach", "--state-dir", str(home / "local")], env=env,
                             capture_output=True, text=True, timeout=600)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        runtime = json.loads((home / "local" / "runtime.json").read_text())
        for directory in (home / "local", home / "local" / "work"):
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
        credentials = (home / "local" / "credentials").read_text()
        assert "[kaos-local-dev]" in credentials and f"[kaos-local-{ADMIN_USER}]" not in credentials
        users = json.loads((home / "local" / "users.json").read_text())
        dev = users["dev"]
        body = json.dumps(HARMLESS_FAULT).encode()
        answers = []
        for path in (CONTROL_PATH, "/_local/nothing-here"):
            request = AWSRequest(method="POST", url=runtime["api_url"] + path, data=body)
            SigV4Auth(Credentials(dev["access_key"], dev["secret_key"]), "execute-api", REGION).add_auth(request)
            response = requests.post(runtime["api_url"] + path, data=body, headers=dict(request.headers.items()),
                                     timeout=10)
            answers.append((response.status_code, response.json()))
        assert answers[0] == answers[1] == (403, {"message": "Missing Authentication Token"})
        # Positive control: the same signing reaches a real route of this stack.
        request = AWSRequest(method="GET", url=runtime["api_url"] + "/workspaces")
        SigV4Auth(Credentials(dev["access_key"], dev["secret_key"]), "execute-api", REGION).add_auth(request)
        listed = requests.get(runtime["api_url"] + "/workspaces", headers=dict(request.headers.items()), timeout=10)
        assert listed.status_code == 200, listed.text
    finally:
        subprocess.run([*cli, "down", "--state-dir", str(home / "local")], env=env, capture_output=True, text=True,
                       timeout=120)


def test_admin_user_exists_only_with_test_hooks(tmp_path: Path) -> None:
    from kaos.local.stack import load_users

    with_admin = load_users(tmp_path, admin=True)
    assert ADMIN_USER in {u.name for u in with_admin.values()}
    assert f"[kaos-local-{ADMIN_USER}]" in (tmp_path / "credentials").read_text()
    without = load_users(tmp_path)  # the same state dir started later without test hooks
    assert {u.name for u in without.values()} == {"dev", "guest"}
    assert ADMIN_USER not in (tmp_path / "credentials").read_text()
    assert ADMIN_USER not in json.loads((tmp_path / "users.json").read_text())
