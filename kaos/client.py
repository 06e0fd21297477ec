"""HTTP client of the kaos API: every request is SigV4-signed by botocore with the user's AWS credentials."""
from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from collections.abc import Callable, Iterable, Iterator
from urllib.parse import urlencode

import botocore.exceptions

from chalicelib import limits
from chalicelib.adapters import blob_put_headers
from chalicelib.domain import parse_manifest
from kaos.bundle import Committed, LocalFile
from kaos.settings import ClientConfig

if TYPE_CHECKING:
    import botocore.session
    import requests

# botocore's session and signer and requests (~0.3 s of imports together) load when a command first talks to AWS or
# the API: `kaos local up/down`, `--help` and `--version` never do.

TIMEOUT = 60
# Blob uploads in flight at once: enough to hide per-request latency, few enough for a laptop uplink and 2 cores.
UPLOAD_CONCURRENCY = 8
INVOKE_TIMEOUT = 90


class ApiError(Exception):
    """A refusal by the API (`status` >= 400) or a local condition that stops a request (`status` 0)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def is_local_url(url: str) -> bool:
    return url.startswith(("http://127.0.0.1", "http://localhost"))


def unreachable(url: str, exc: Exception) -> ApiError:
    """The everyday "next morning" case: the stack is down (locally) or the network/URL is wrong (on AWS)."""
    if is_local_url(url):
        return ApiError(0, "Unreachable", f"the embedded stack at {url} is not running; "
                                          "start it with `kaos local up --detach`")
    return ApiError(0, "Unreachable", f"cannot reach the kaos API at {url} ({type(exc).__name__}); "
                                      "`kaos cloud status` checks the deployed stack")


def profiles(credentials_file: str) -> list[str]:
    """The profiles botocore can see (config and credentials files, or the given credentials file)."""
    import botocore.session

    session = botocore.session.Session()
    if credentials_file:
        session.set_config_variable("credentials_file", credentials_file)
    return sorted(session.available_profiles)


def botocore_session(profile: str) -> botocore.session.Session:
    """A session of the named profile; "default" means botocore's own chain (environment variables, the default
    profile, instance roles), so credentials from the environment work without a profile file."""
    import botocore.session

    return botocore.session.Session(profile=None if profile in ("", "default") else profile)


def credentials(profile: str, credentials_file: str) -> Any:
    """Frozen-able botocore credentials of a profile; an unknown profile names the ones that exist."""
    session = botocore_session(profile)
    if credentials_file:
        session.set_config_variable("credentials_file", credentials_file)
    try:
        found = session.get_credentials()
    except botocore.exceptions.ProfileNotFound:
        known = ", ".join(profiles(credentials_file)) or "none"
        where = f" in {credentials_file}" if credentials_file else ""
        raise ApiError(0, "ProfileNotFound", f"profile {profile!r} does not exist{where}; profiles: {known} "
                                             "(set KAOS_PROFILE or `kaos config show` to see the target)") from None
    if found is None:
        raise ApiError(0, "NoCredentials", f"no AWS credentials for profile {profile!r}")
    return found


class Client:
    def __init__(self, config: ClientConfig) -> None:
        import requests

        if not config.api_url:
            raise ApiError(0, "NotConfigured", "no API URL configured: start the embedded stack with "
                                               "`kaos local up --detach` (or deploy with `kaos cloud deploy`)")
        self.base = config.api_url.rstrip("/")
        self.region = config.region
        self.credentials = credentials(config.profile, config.credentials_file)
        self.http = requests.Session()
        self.committed = Committed()
        self.unconfirmed: dict[str, set[str]] = {}  # per workspace: ids named from `committed` without a request
        self._uploads = threading.local()  # a requests.Session per upload thread (a Session is not thread-safe)

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else b""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        response = self.send(method, path, data, headers, query)
        try:
            return response.json()
        except ValueError:
            return {"error": {"code": "BadResponse", "message": response.text[:500]}}

    def send(self, method: str, path: str, data: bytes, headers: dict[str, str],
             query: dict[str, Any] | None = None, timeout: float = TIMEOUT) -> requests.Response:
        """One SigV4-signed request with a raw body; a 4xx/5xx answer raises its `{"error"}` as ApiError."""
        import requests
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        url = self.base + path
        clean = {k: v for k, v in (query or {}).items() if v is not None}
        if clean:
            url += "?" + urlencode(clean)
        signed = AWSRequest(method=method, url=url, data=data, headers=headers)
        SigV4Auth(self.credentials.get_frozen_credentials(), "execute-api", self.region).add_auth(signed)
        try:
            response = self.http.request(method, url, data=data, headers=dict(signed.headers.items()),
                                         timeout=timeout)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise unreachable(self.base, exc) from exc
        if response.status_code >= 400:
            try:
                payload = response.json()
            except ValueError:
                payload = {"error": {"code": "BadResponse", "message": response.text[:500]}}
            error = payload.get("error") or {"code": str(response.status_code), "message": payload.get("message", "")}
            raise ApiError(response.status_code, error.get("code", ""), error.get("message", ""))
        return response

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

    # auto-retrain (S3-triggered retraining)
    def auto_retrain(self, workspace: str, enabled: bool | None = None) -> Any:
        """Turns auto-retrain on/off (None: only reads it); the answer lists the recent upload batches."""
        if enabled is None:
            return self.request("GET", f"/workspaces/{workspace}/auto-retrain")
        return self.request("POST", f"/workspaces/{workspace}/auto-retrain", {"enabled": enabled})

    def push_data(self, workspace: str, files: list[tuple[str, Path]], on_bytes: Callable[[int], None]) -> Any:
        """Uploads files under ws/<ws>/incoming/<name> straight to S3 by presigned PUT URLs (never via the API)."""
        sizes = {name: path.stat().st_size for name, path in files}
        answer = self.request("POST", f"/workspaces/{workspace}/incoming",
                              {"files": [{"path": name, "size": sizes[name]} for name, _ in files]})
        sources = dict(files)
        for entry in answer["files"]:
            with sources[entry["path"]].open("rb") as handle:
                put = self.http.put(entry["url"], data=_Reading(handle, sizes[entry["path"]], on_bytes), timeout=None)
            if put.status_code >= 300:
                raise ApiError(put.status_code, "UploadFailed", f"{entry['path']}: {put.text[:300]}")
        return answer

    # snapshots
    def upload_snapshot(
        self, workspace: str, kind: str, files: list[LocalFile], on_bytes: Callable[[int], None]
    ) -> dict[str, Any]:
        """Commits the files as a snapshot, uploading only the blobs the workspace lacks, straight to S3 by
        presigned URL (UPLOAD_CONCURRENCY at a time; many small ones in packs when the server asks for them). A
        snapshot this user committed before is named by its id without a request, not resent as a manifest."""
        manifest = [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in files]
        snapshot_id = parse_manifest(kind, manifest).snapshot_id  # the server's id of this manifest
        if self.committed.knows(self.base, workspace, snapshot_id):
            # Named by id without a request: the submission that names it checks it (a snapshot gone since, e.g.
            # with its workspace re-made, answers SnapshotNotFound there, and operations.submitting commits again).
            self.unconfirmed.setdefault(workspace, set()).add(snapshot_id)
            return {"id": snapshot_id, "kind": kind, "status": "committed"}
        by_digest = {f.sha256: f for f in files}
        result: dict[str, Any] = self.request("POST", f"/workspaces/{workspace}/snapshots",
                                              {"kind": kind, "files": manifest})
        uploaded: set[str] = set()
        while result.get("status") == "pending":
            packs = result.get("packs", [])
            digests = [blob["sha256"] for blob in result["missing"]] + [d for pack in packs for d in pack["blobs"]]
            if uploaded.intersection(digests):
                raise ApiError(409, "UploadLost", "an uploaded blob is still reported missing; try again")
            uploaded.update(digests)
            with ThreadPoolExecutor(max_workers=UPLOAD_CONCURRENCY) as pool:
                puts = [pool.submit(self._put_blob, by_digest[blob["sha256"]], blob["url"], on_bytes)
                        for blob in result["missing"]]
                puts += [pool.submit(self._put_pack, [by_digest[d] for d in pack["blobs"]], pack["url"], on_bytes)
                         for pack in packs]
                for put in puts:
                    if (failure := put.result()) is not None:
                        raise failure
            result = self.request("POST", f"/workspaces/{workspace}/snapshots/{result['id']}/complete")
        self.committed.remember(self.base, workspace, snapshot_id)
        return result

    def forget_unconfirmed(self, workspace: str) -> bool:
        """Drops the snapshot ids named without a request in the workspace from what this user committed (so the
        next upload commits them in full); whether there were any."""
        ids = self.unconfirmed.pop(workspace, set())
        for snapshot_id in ids:
            self.committed.remember(self.base, workspace, snapshot_id, known=False)
        return bool(ids)

    def _put_blob(self, local: LocalFile, url: str, on_bytes: Callable[[int], None]) -> ApiError | None:
        """One blob by its presigned URL, on this thread's connection; the refusal, if S3 refused it."""
        session = self._upload_session()
        # The URL is signed with these headers: S3 stores the bytes only if they hash to the blob's name, and
        # only if the blob is not stored yet.
        with local.source.open("rb") as handle:
            put = session.put(url, data=_Reading(handle, local.size, on_bytes),
                              headers=blob_put_headers(local.sha256), timeout=None)
        if put.status_code == 412 or put.status_code < 300:
            return None  # 412: stored meanwhile (by another upload of the same bytes); `complete` checks it
        if "BadDigest" in put.text:
            return ApiError(put.status_code, "UploadFailed",
                            f"{local.path}: S3 refused the bytes: they no longer hash to the sha256 computed before "
                            "the upload (was the file changed meanwhile?)")
        return ApiError(put.status_code, "UploadFailed", f"{local.path}: {put.text[:300]}")

    def _put_pack(self, blobs: list[LocalFile], url: str, on_bytes: Callable[[int], None]) -> ApiError | None:
        """Many small blobs as one pack: their bytes concatenated in the server's order, by one presigned PUT; the
        server checks every blob against its name when the snapshot is completed."""
        put = self._upload_session().put(url, data=_Concatenated(blobs, on_bytes), headers=blob_put_headers(None),
                                         timeout=None)
        if put.status_code == 412 or put.status_code < 300:
            return None  # 412: stored already (an upload retried after its `complete` was lost); `complete` checks it
        return ApiError(put.status_code, "UploadFailed", f"pack of {len(blobs)} files (first: {blobs[0].path}): "
                                                         f"{put.text[:300]}")

    def _upload_session(self) -> requests.Session:
        """This thread's connection for uploads (a requests.Session is not thread-safe)."""
        import requests

        session = getattr(self._uploads, "session", None)
        if session is None:
            session = self._uploads.session = requests.Session()
        return session

    # jobs
    def submit(self, workspace: str, code: str | None, data: dict[str, str] | None, params: dict[str, Any] | None,
               resources: dict[str, Any] | None = None, framework: str | None = None) -> Any:
        """Any of code, data and params may be None: the workspace's latest of that kind is used."""
        body = {k: v for k, v in (("code", code), ("data", data), ("params", params), ("resources", resources),
                                  ("framework", framework)) if v}
        if params == {}:
            body["params"] = {}
        return self.request("POST", f"/workspaces/{workspace}/jobs", body)

    def submit_grid(self, workspace: str, code: str | None, data: dict[str, str] | None, params: dict[str, Any],
                    resources: dict[str, Any] | None, parallelism: int, framework: str | None = None) -> Any:
        body = {k: v for k, v in (("code", code), ("data", data), ("resources", resources), ("framework", framework))
                if v}
        return self.request("POST", f"/workspaces/{workspace}/grids",
                            {**body, "params": params, "parallelism": parallelism})

    def grid(self, workspace: str, grid_id: str, sort_by: str | None = None, desc: bool = False, page: int = 1,
             limit: int = 50) -> Any:
        return self.request("GET", f"/workspaces/{workspace}/grids/{grid_id}",
                            query={"sort_by": sort_by, "desc": "true" if desc else None, "page": page,
                                   "limit": limit})

    def jobs(self, workspace: str, limit: int | None = None, cursor: str | None = None) -> Any:
        return self.request("GET", f"/workspaces/{workspace}/jobs", query={"limit": limit, "cursor": cursor})

    def job(self, workspace: str, job_id: str) -> Any:
        return self.request("GET", f"/workspaces/{workspace}/jobs/{job_id}")

    def kill_job(self, workspace: str, job_id: str) -> Any:
        return self.request("POST", f"/workspaces/{workspace}/jobs/{job_id}/kill")

    def resume_job(self, workspace: str, job_id: str) -> Any:
        return self.request("POST", f"/workspaces/{workspace}/jobs/{job_id}/resume")

    def reproduce(self, workspace: str, job_id: str) -> Any:
        """The job training a COMPLETED job's exact inputs again (the same one on every call), with `comparison`
        of the two models' hashes (`identical` is null until it has completed)."""
        return self.request("POST", f"/workspaces/{workspace}/jobs/{job_id}/reproduce")

    def logs(self, workspace: str, job_id: str, next_token: str | None = None) -> Any:
        return self.request("GET", f"/workspaces/{workspace}/jobs/{job_id}/logs", query={"next": next_token})

    def lineage(self, workspace: str, node: str, direction: str, depth: int | None = None,
                limit: int | None = None, cursor: str | None = None) -> Any:
        """One page of a provenance walk: at most `limit` nodes; pass its `next` as `cursor` for the rest."""
        return self.request("GET", f"/workspaces/{workspace}/lineage/{node}",
                            query={"direction": direction, "depth": depth, "limit": limit, "cursor": cursor})

    def cost(self, workspace: str, since: str | None = None) -> Any:
        """What the workspace's jobs, models (rolled up along their lineage) and endpoints cost."""
        return self.request("GET", f"/workspaces/{workspace}/cost", query={"since": since})

    def impact(self, workspace: str, target: str) -> Any:
        """Jobs and models downstream of a data snapshot (snapshot:<id> or an id) or an s3:// object."""
        return self.request("GET", f"/workspaces/{workspace}/impact", query={"target": target})

    # downloads
    def job_files(self, workspace: str, job_id: str, what: str | None = None) -> Any:
        """Presigned GET URLs of a job's code and data files and model, and its params (`what`: one part)."""
        return self.request("GET", f"/workspaces/{workspace}/jobs/{job_id}/files", query={"what": what})

    def download(self, url: str, target: Path, on_bytes: Callable[[int], None],
                 span: tuple[int, int] | None = None) -> str:
        """Streams a presigned GET straight from S3 into `target` (only the bytes at `span` = (offset, size) of the
        object, for a blob kept in a pack); returns the sha256 of what was written."""
        digest = hashlib.sha256()
        if span is not None and span[1] == 0:  # an empty file: there is no range of zero bytes to ask for
            target.write_bytes(b"")
            return digest.hexdigest()
        ranged = {} if span is None else {"Range": f"bytes={span[0]}-{span[0] + span[1] - 1}"}
        with self.http.get(url, stream=True, timeout=TIMEOUT, headers=ranged) as response:
            if response.status_code >= 300:
                raise ApiError(response.status_code, "DownloadFailed", f"{target.name}: {response.text[:300]}")
            with target.open("wb") as handle:
                for chunk in response.iter_content(1 << 16):
                    handle.write(chunk)
                    digest.update(chunk)
                    on_bytes(len(chunk))
        return digest.hexdigest()

    def submit_batch(self, workspace: str, code: str, data: str, command: str | None = None,
                     max_runtime_seconds: int | None = None, per_file: bool = False,
                     glob: str | None = None) -> Any:
        """A batch job over one data snapshot; once COMPLETED its `model` is `snapshot:<output data snapshot id>`."""
        body = {k: v for k, v in (("code", code), ("data", data), ("command", command),
                                  ("max_runtime_seconds", max_runtime_seconds)) if v is not None}
        if per_file:
            body.update({"per_file": True, **({"glob": glob} if glob else {})})
        return self.request("POST", f"/workspaces/{workspace}/batch-jobs", body)

    # serving: the model registry (groups, versions, approval, aliases) and endpoints
    def register_model(self, workspace: str, group: str, job_id: str) -> Any:
        return self.request("POST", f"/workspaces/{workspace}/models/{group}/versions", {"job_id": job_id})

    def model_groups(self, workspace: str) -> Any:
        return self.request("GET", f"/workspaces/{workspace}/models")

    def model_group(self, workspace: str, group: str) -> Any:
        return self.request("GET", f"/workspaces/{workspace}/models/{group}")

    def approve_model(self, workspace: str, group: str, version: int, status: str) -> Any:
        return self.request("POST", f"/workspaces/{workspace}/models/{group}/versions/{version}/approval",
                            {"status": status})

    def move_alias(self, workspace: str, group: str, alias: str, version: int | None) -> Any:
        """Points the alias at `version` (atomically, from wherever it was); None deletes it."""
        path = f"/workspaces/{workspace}/models/{group}/aliases/{alias}"
        if version is None:
            return self.request("DELETE", path)
        return self.request("PUT", path, {"version": version})

    def deploy_endpoint(self, workspace: str, settings: dict[str, Any]) -> Any:
        """`settings`: {"model"} and any of name, memory_mb, max_concurrency, instance_type, capture_percent."""
        return self.request("POST", f"/workspaces/{workspace}/endpoints", settings)

    def endpoints(self, workspace: str, limit: int | None = None, next_token: str | None = None) -> Any:
        return self.request("GET", f"/workspaces/{workspace}/endpoints", query={"limit": limit, "next": next_token})

    def endpoint(self, workspace: str, name: str) -> Any:
        return self.request("GET", f"/workspaces/{workspace}/endpoints/{name}")

    def promote(self, workspace: str, name: str, model: str) -> Any:
        return self.request("POST", f"/workspaces/{workspace}/endpoints/{name}/deployments", {"model": model})

    def rollback(self, workspace: str, name: str) -> Any:
        return self.request("POST", f"/workspaces/{workspace}/endpoints/{name}/rollback")

    def kill_endpoint(self, workspace: str, name: str) -> Any:
        return self.request("DELETE", f"/workspaces/{workspace}/endpoints/{name}")

    def endpoint_logs(self, workspace: str, name: str, next_token: str | None = None) -> Any:
        return self.request("GET", f"/workspaces/{workspace}/endpoints/{name}/logs", query={"next": next_token})

    def invoke(self, workspace: str, name: str, body: bytes, content_type: str,
               accept: str | None = None) -> tuple[bytes, str]:
        """The model's raw answer and its Content-Type. Waits longer than other requests: the server gives an
        invocation 60 s before it answers 504 InvocationTimeout, which should reach the caller as such."""
        headers = {"Content-Type": content_type, **({"Accept": accept} if accept else {})}
        response = self.send("POST", f"/workspaces/{workspace}/endpoints/{name}/invocations", body, headers,
                             timeout=INVOKE_TIMEOUT)
        return response.content, response.headers.get("Content-Type", "")


def extract_archive(archive: Path, target: Path) -> list[str]:
    """Unpacks a model.tar.gz into `target`, refusing members with absolute paths or `..` (and, through
    tarfile's "data" filter, links leaving the target, devices and special permission bits); returns the names."""
    import tarfile

    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                name = member.name.replace("\\", "/")
                if name.startswith("/") or ".." in name.split("/"):
                    raise ApiError(0, "UnsafeArchive", f"{archive.name}: refusing member {member.name!r}")
            target.mkdir(parents=True, exist_ok=True)
            tar.extractall(target, members=members, filter="data")
    except tarfile.TarError as exc:
        raise ApiError(0, "UnsafeArchive", f"{archive.name}: {exc}") from None
    return [m.name for m in members]


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


class _Concatenated:
    """The files' bytes one after the other, read as requests streams a body (a pack), reporting bytes read."""

    def __init__(self, files: list[LocalFile], on_bytes: Callable[[int], None]) -> None:
        self._files = iter(files)
        self._size = sum(f.size for f in files)
        self._on_bytes = on_bytes

    def __len__(self) -> int:
        return self._size  # Content-Length: presigned PUTs do not accept chunked encoding

    def __iter__(self) -> Iterator[bytes]:
        for local in self._files:
            with local.source.open("rb") as handle:
                while chunk := handle.read(1 << 16):
                    self._on_bytes(len(chunk))
                    yield chunk


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
