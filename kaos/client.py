"""HTTP client of the kaos API: every request is SigV4-signed by botocore with the user's AWS credentials."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable
from urllib.parse import urlencode

import botocore.session
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from chalicelib import limits
from kaos.bundle import LocalFile
from kaos.settings import ClientConfig

TIMEOUT = 60


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class Client:
    def __init__(self, config: ClientConfig) -> None:
        if not config.api_url:
            raise ApiError(0, "NotConfigured", "no API URL: run `kaos local up` or set KAOS_API_URL")
        self.base = config.api_url.rstrip("/")
        self.region = config.region
        session = botocore.session.Session(profile=config.profile or None)
        if config.credentials_file:
            session.set_config_variable("credentials_file", config.credentials_file)
        credentials = session.get_credentials()
        if credentials is None:
            raise ApiError(0, "NoCredentials", f"no AWS credentials for profile {config.profile!r}")
        self.credentials = credentials
        self.http = requests.Session()

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        url = self.base + path
        clean = {k: v for k, v in (query or {}).items() if v is not None}
        if clean:
            url += "?" + urlencode(clean)
        data = json.dumps(body).encode() if body is not None else b""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        signed = AWSRequest(method=method, url=url, data=data, headers=headers)
        SigV4Auth(self.credentials.get_frozen_credentials(), "execute-api", self.region).add_auth(signed)
        response = self.http.request(method, url, data=data, headers=dict(signed.headers.items()), timeout=TIMEOUT)
        try:
            payload = response.json()
        except ValueError:
            payload = {"error": {"code": "BadResponse", "message": response.text[:500]}}
        if response.status_code >= 400:
            error = payload.get("error") or {"code": str(response.status_code), "message": payload.get("message", "")}
            raise ApiError(response.status_code, error.get("code", ""), error.get("message", ""))
        return payload

    # workspaces
    def create_workspace(self, name: str) -> Any:
        return self.request("POST", "/workspaces", {"name": name})

    def workspaces(self) -> Any:
        return self.request("GET", "/workspaces")["workspaces"]

    def workspace(self, name: str) -> Any:
        return self.request("GET", f"/workspaces/{name}")

    def kill_workspace(self, name: str) -> Any:
        return self.request("DELETE", f"/workspaces/{name}")

    def members(self, name: str) -> Any:
        return self.request("GET", f"/workspaces/{name}/members")

    def share(self, name: str, user: str) -> Any:
        return self.request("POST", f"/workspaces/{name}/members", {"user": user})

    def unshare(self, name: str, user: str) -> Any:
        return self.request("POST", f"/workspaces/{name}/members/remove", {"user": user})

    # snapshots
    def upload_snapshot(
        self, workspace: str, kind: str, files: list[LocalFile], on_bytes: Callable[[int], None]
    ) -> dict[str, Any]:
        """Uploads only the blobs the workspace lacks, straight to S3 by presigned URL, then commits."""
        by_digest = {f.sha256: f for f in files}
        digests = sorted(by_digest)
        for start in range(0, len(digests), limits.MAX_BLOBS_PER_REQUEST):
            chunk = digests[start : start + limits.MAX_BLOBS_PER_REQUEST]
            missing = self.request("POST", f"/workspaces/{workspace}/blobs/missing", {"blobs": chunk})["missing"]
            for blob in missing:
                local = by_digest[blob["sha256"]]
                with local.source.open("rb") as handle:
                    put = self.http.put(blob["url"], data=_Reading(handle, local.size, on_bytes), timeout=None)
                if put.status_code >= 300:
                    raise ApiError(put.status_code, "UploadFailed", f"{local.path}: {put.text[:300]}")
        manifest = [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in files]
        snapshot: dict[str, Any] = self.request("POST", f"/workspaces/{workspace}/snapshots",
                                                {"kind": kind, "files": manifest})
        return snapshot

    # jobs
    def submit(self, workspace: str, code: str, data: dict[str, str], params: dict[str, Any],
               resources: dict[str, Any] | None = None) -> Any:
        body = {"code": code, "data": data, "params": params, **({"resources": resources} if resources else {})}
        return self.request("POST", f"/workspaces/{workspace}/jobs", body)

    def jobs(self, workspace: str, limit: int | None = None, cursor: str | None = None) -> Any:
        return self.request("GET", f"/workspaces/{workspace}/jobs", query={"limit": limit, "cursor": cursor})

    def job(self, workspace: str, job_id: str) -> Any:
        return self.request("GET", f"/workspaces/{workspace}/jobs/{job_id}")

    def kill_job(self, workspace: str, job_id: str) -> Any:
        return self.request("POST", f"/workspaces/{workspace}/jobs/{job_id}/kill")

    def resume_job(self, workspace: str, job_id: str) -> Any:
        return self.request("POST", f"/workspaces/{workspace}/jobs/{job_id}/resume")

    def logs(self, workspace: str, job_id: str, next_token: str | None = None) -> Any:
        return self.request("GET", f"/workspaces/{workspace}/jobs/{job_id}/logs", query={"next": next_token})

    def lineage(self, workspace: str, node: str, direction: str, depth: int | None = None) -> Any:
        return self.request("GET", f"/workspaces/{workspace}/lineage/{node}",
                            query={"direction": direction, "depth": depth})


class _Reading:
    """A file wrapper reporting bytes read, so uploads can drive a progress bar (requests streams it)."""

    def __init__(self, handle: Any, size: int, on_bytes: Callable[[int], None]) -> None:
        self._handle = handle
        self._size = size
        self._on_bytes = on_bytes

    def __len__(self) -> int:
        # A known length makes requests send Content-Length instead of chunked encoding, which S3 presigned
        # PUTs do not accept.
        return self._size

    def read(self, size: int = -1) -> bytes:
        chunk = bytes(self._handle.read(size))
        self._on_bytes(len(chunk))
        return chunk

    def __iter__(self) -> Iterable[bytes]:
        return iter(lambda: self.read(1 << 16), b"")


def load_params(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ApiError(0, "ValidationFailed", f"-h: params file {str(path)!r} does not exist")
    if path.stat().st_size > limits.MAX_PARAMS_BYTES:
        raise ApiError(0, "ValidationFailed", f"-h: params file is over {limits.MAX_PARAMS_BYTES} bytes")
    try:
        value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(0, "ValidationFailed", f"-h: {path} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ApiError(0, "ValidationFailed", f"-h: {path} must hold a JSON object of hyperparameters")
    return value
