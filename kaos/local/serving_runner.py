"""The hosting side of offline SageMaker endpoints: one model server process per production variant.

:meth:`LocalServingRunner.launch` does what SageMaker hosting does for one variant of an endpoint config:

- downloads the model's ``ModelDataUrl`` (model.tar.gz) and, when set, ``SAGEMAKER_SUBMIT_DIRECTORY`` (the
  training's sourcedir.tar.gz) with the MODEL's ``ExecutionRoleArn`` credentials, as SageMaker does;
- builds the image's environment with the user's ``requirements.txt`` (from the code that will be served:
  ``<model>/code/`` first, else the submit directory) through :class:`kaos.local.environments.Environments`;
- starts :mod:`kaos.local.inference_server` (copied beside the endpoint, run with ``python -I``) with only what a
  serving container gets: the model's ``Environment`` (``SAGEMAKER_*``), ``SM_MODEL_DIR``, the execution role's keys
  and region, the emulator's ``AWS_ENDPOINT_URL`` (nothing of kaos, nothing of the stack's environment);
- waits for the model to load and ``/ping`` to answer 200 within the health deadline, else fails with SageMaker's
  FailureReason for a variant that did not pass the ping health check;
- ships the process output to CloudWatch Logs ``/aws/sagemaker/Endpoints/<EndpointName>``, stream
  ``<VariantName>/<instance id>`` (the group created as SageMaker does, with the execution role);
- writes data capture (``DataCaptureConfig``) as SageMaker does: sampled request/response pairs as JSON lines under
  ``<DestinationS3Uri>/<EndpointName>/<VariantName>/yyyy/mm/dd/hh/``, with the execution role's credentials.

:meth:`invoke` forwards an invocation to a fleet's server with the platform's per-invocation timeout; the
SageMaker Runtime error shapes are made by :mod:`kaos.local.patches_serving`.
"""
from __future__ import annotations

import base64
import datetime
import http.client
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlparse

from botocore.config import Config

from kaos.local.clients import new_client
from kaos.local.environments import BuiltEnvironment
from kaos.local.containers import (LOG_COPY, LogShipper, RoleKeys, anonymous_keys, container_base_environment,
                                   extract_private)

LOG = logging.getLogger(__name__)

# The model server, copied beside each endpoint and run by the image's interpreter. The stack never imports it: it
# imports numpy (~15 MB and 0.1 s of every start, for a process that decodes no payload).
SERVER_SOURCE: Final = Path(__file__).with_name("inference_server.py")
# The line the server prints once its model is loaded, then its port (the server's LISTENING; a test holds them equal).
LISTENING: Final = "Model loaded; listening on 127.0.0.1:"

LOG_GROUP_PREFIX: Final = "/aws/sagemaker/Endpoints/"
SERVERLESS_PAYLOAD: Final = 4 * 1024 * 1024  # the serverless InvokeEndpoint limit (request and response)
REALTIME_PAYLOAD: Final = 6 * 1024 * 1024
INVOCATION_TIMEOUT_SECONDS: Final = 60.0  # "The timeout for the container to respond to /invocations is 1 minute"
HEALTH_TIMEOUT_SECONDS: Final = 180.0  # serverless: download the model and answer /ping within 3 minutes
PING_FAILED: Final = ("The primary container for production variant {variant} did not pass the ping health check. "
                      "Please check CloudWatch logs for this endpoint.")
DEFAULT_PROGRAM: Final = "inference.py"


class EnvironmentsProtocol(Protocol):
    """kaos.local.environments.Environments (contract C3): the interpreter of an image plus requirements."""

    def ensure(self, image_uri: str, requirements: Sequence[Path] = ()) -> BuiltEnvironment: ...


class ServingFailure(Exception):
    """A variant that could not be brought up; str() is the endpoint's FailureReason."""


class InvocationTimeout(Exception):
    """The container did not answer within the invocation timeout."""


@dataclass(frozen=True)
class Invocation:
    status: int
    content_type: str
    body: bytes


@dataclass(eq=False)  # a fleet is itself (kept in sets), whatever its fields
class Fleet:
    """One production variant of one endpoint config, running."""

    endpoint: str
    config: str
    variant: str
    serverless: bool
    root: Path
    process: subprocess.Popen[bytes]
    shipper: LogShipper
    log_stream: str
    port: int = 0
    capture: Capture | None = None
    reader: threading.Thread | None = None

    @property
    def max_payload(self) -> int:
        return SERVERLESS_PAYLOAD if self.serverless else REALTIME_PAYLOAD


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def _client(service: str, endpoint_url: str, region: str, keys: dict[str, str]) -> Any:
    return new_client(service, region, keys["AWS_ACCESS_KEY_ID"], keys["AWS_SECRET_ACCESS_KEY"],
                      keys.get("AWS_SESSION_TOKEN"), endpoint_url,
                      Config(retries={"max_attempts": 3, "mode": "standard"}))


class Capture:
    """SageMaker data capture of one variant: sampled pairs buffered and written as one JSON-lines object per
    FLUSH_SECONDS (SageMaker writes files periodically too), never failing an invocation."""

    FLUSH_SECONDS = 1.0

    def __init__(self, s3: Any, config: dict[str, Any], endpoint: str, variant: str) -> None:
        self._s3, self._endpoint, self._variant = s3, endpoint, variant
        self._percent = float(config.get("InitialSamplingPercentage", 0))
        modes = {str(option.get("CaptureMode")) for option in config.get("CaptureOptions") or []}
        self._input, self._output = "Input" in modes, "Output" in modes
        headers = config.get("CaptureContentTypeHeader") or {}
        self._csv = set(headers.get("CsvContentTypes") or ["text/csv"])
        self._json = set(headers.get("JsonContentTypes") or ["application/json"])
        self._bucket, prefix = _split_s3(str(config["DestinationS3Uri"]).rstrip("/"))
        self._prefix = f"{prefix}/{endpoint}/{variant}" if prefix else f"{endpoint}/{variant}"
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"capture-{endpoint}", daemon=True)
        self._thread.start()

    def _data(self, body: bytes, content_type: str, mode: str) -> dict[str, str]:
        if content_type in self._csv or content_type in self._json:
            encoding, data = ("CSV" if content_type in self._csv else "JSON"), body.decode("utf-8", "replace")
        else:
            encoding, data = "BASE64", base64.b64encode(body).decode("ascii")
        return {"observedContentType": content_type, "mode": mode, "data": data, "encoding": encoding}

    def record(self, body: bytes, content_type: str, result: Invocation) -> None:
        if random.uniform(0, 100) >= self._percent:
            return
        data: dict[str, Any] = {}
        if self._input:
            data["endpointInput"] = self._data(body, content_type, "INPUT")
        if self._output:
            data["endpointOutput"] = self._data(result.body, result.content_type, "OUTPUT")
        now = datetime.datetime.now(datetime.UTC)
        line = json.dumps({"captureData": data, "eventMetadata": {
            "eventId": str(uuid.uuid4()), "inferenceTime": now.strftime("%Y-%m-%dT%H:%M:%SZ")}, "eventVersion": "0"})
        with self._lock:
            self._lines.append(line)

    def flush(self) -> None:
        with self._lock:  # held while writing, so one flush at a time
            lines, self._lines = self._lines, []
            if not lines:
                return
            now = datetime.datetime.now(datetime.UTC)
            key = f"{self._prefix}/{now:%Y/%m/%d/%H}/{now:%M-%S}-{now.microsecond // 1000:03d}-{uuid.uuid4()}.jsonl"
            try:
                self._s3.put_object(Bucket=self._bucket, Key=key, Body="\n".join(lines).encode() + b"\n")
            except Exception:  # capture never fails inference (SageMaker drops what it cannot write)
                LOG.exception("data capture of %s: could not write %d records", self._endpoint, len(lines))

    def _loop(self) -> None:
        while not self._closed.wait(self.FLUSH_SECONDS):
            self.flush()

    def close(self) -> None:
        self._closed.set()
        self._thread.join()
        self.flush()


def _terminate(process: subprocess.Popen[bytes], grace_seconds: float) -> None:
    """SIGTERM to the server's process group, SIGKILL when it has not ended after the grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            process.wait(grace_seconds)
            return
        except subprocess.TimeoutExpired:
            continue
    process.wait()


class LocalServingRunner:
    """Starts, serves through and stops the model server processes of offline endpoints."""

    def __init__(self, endpoint_url: str, work_dir: Path, environments: EnvironmentsProtocol, *,
                 region: str = "us-east-1", role_keys: RoleKeys = anonymous_keys,
                 invocation_timeout: float = INVOCATION_TIMEOUT_SECONDS,
                 health_timeout: float = HEALTH_TIMEOUT_SECONDS) -> None:
        self.endpoint_url = endpoint_url
        self.work_dir = Path(work_dir)
        self.environments = environments
        self.region = region
        self.role_keys = role_keys
        self.invocation_timeout = invocation_timeout
        self.health_timeout = health_timeout
        # Multiplies the waits of a deployment policy (bakes, termination wait): tests shorten them.
        self.time_scale = 1.0
        self._lock = threading.Lock()
        self._fleets: set[Fleet] = set()

    # -- lifecycle of a variant ---------------------------------------------------------------

    def launch(self, endpoint: str, config: str, variant: dict[str, Any], model: dict[str, Any],
               capture: dict[str, Any] | None) -> Fleet:
        """Brings up one variant (blocking until it passes the health check); raises ServingFailure."""
        name = str(variant.get("VariantName") or "AllTraffic")
        root = self.work_dir / "endpoints" / endpoint / f"{config}-{uuid.uuid4().hex[:8]}"
        root.mkdir(parents=True, mode=0o700)
        try:
            keys = self.role_keys(str(model.get("ExecutionRoleArn")), "sagemaker.amazonaws.com")
        except Exception as exc:
            raise ServingFailure(f"Could not assume role {model.get('ExecutionRoleArn')}: {exc}") from exc
        logs = _client("logs", self.endpoint_url, self.region, keys)
        stream = f"{name}/i-{uuid.uuid4().hex[:17]}"
        shipper = LogShipper(logs, LOG_GROUP_PREFIX + endpoint, stream, root / LOG_COPY, create_group=True)
        try:
            command, env = self._prepare(root, model, keys, variant, shipper)
        except ServingFailure as exc:
            shipper.write(str(exc))
            shipper.close()
            raise
        process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, umask=0o077)
        fleet = Fleet(endpoint, config, name, "ServerlessConfig" in variant, root, process, shipper, stream)
        with self._lock:
            self._fleets.add(fleet)
        try:
            self._await_healthy(fleet)
        except BaseException:
            self.retire(fleet)
            raise
        if capture and capture.get("EnableCapture", True) and capture.get("DestinationS3Uri"):
            fleet.capture = Capture(_client("s3", self.endpoint_url, self.region, keys), capture, endpoint, name)
        return fleet

    def _prepare(self, root: Path, model: dict[str, Any], keys: dict[str, str], variant: dict[str, Any],
                 shipper: LogShipper) -> tuple[list[str], dict[str, str]]:
        container = model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]
        environment = {str(k): str(v) for k, v in (container.get("Environment") or {}).items()}
        s3 = _client("s3", self.endpoint_url, self.region, keys)
        model_dir, code_dir = root / "model", root / "code"
        for uri, target in ((container.get("ModelDataUrl"), model_dir),
                            (environment.get("SAGEMAKER_SUBMIT_DIRECTORY"), code_dir)):
            if not uri:
                continue
            archive = root / f"{target.name}.tar.gz"
            try:
                s3.download_file(*_split_s3(str(uri)), str(archive))
                extract_private(archive, target)
            except Exception as exc:  # SageMaker's wording for a model it could not fetch
                raise ServingFailure(f"Failed to download model data for container \"primary\" from URL "
                                     f"\"{uri}\". Please ensure that there is an object located at the URL and "
                                     f"that the role passed to CreateModel has permissions to download the "
                                     f"object. ({exc})") from exc
            archive.unlink()
        model_dir.mkdir(exist_ok=True)
        program = environment.get("SAGEMAKER_PROGRAM") or DEFAULT_PROGRAM
        served = model_dir / "code" if (model_dir / "code" / program).is_file() else code_dir
        requirements = [served / "requirements.txt"] if (served / "requirements.txt").is_file() else []
        try:
            built = self.environments.ensure(str(container.get("Image") or ""), requirements)
        except Exception as exc:
            raise ServingFailure(f"Could not build the serving environment: {exc}") from exc
        for warning in built.warnings:
            shipper.write(f"kaos: environment fidelity: {warning}")
        server = root / "serving" / SERVER_SOURCE.name
        server.parent.mkdir()
        shutil.copyfile(SERVER_SOURCE, server)
        server.chmod(0o600)  # the endpoint's folder is its workspace's, owner-only
        serverless = variant.get("ServerlessConfig") or {}
        command = [str(built.python), "-I", str(server), "--model-dir", str(model_dir),
                   "--max-payload", str(SERVERLESS_PAYLOAD if serverless else REALTIME_PAYLOAD),
                   "--max-concurrency", str(serverless.get("MaxConcurrency") or 100), "--parent-pid", str(os.getpid())]
        if code_dir.is_dir():
            command += ["--code-dir", str(code_dir)]
        env = container_base_environment(root / "home", built.python)
        env.update({**environment, **keys, "SM_MODEL_DIR": str(model_dir), "PYTHONUNBUFFERED": "1",
                    "AWS_ENDPOINT_URL": self.endpoint_url, "AWS_REGION": self.region,
                    "AWS_DEFAULT_REGION": self.region})
        return command, env

    def _await_healthy(self, fleet: Fleet) -> None:
        listening = threading.Event()

        def read() -> None:
            assert fleet.process.stdout is not None
            for raw in iter(fleet.process.stdout.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                if not fleet.port and line.startswith(LISTENING):
                    fleet.port = int(line[len(LISTENING):])
                    listening.set()
                if line:  # CloudWatch refuses an empty event (a batch with one fails whole); awslogs skips them
                    fleet.shipper.write(line)
            listening.set()  # the process ended

        fleet.reader = threading.Thread(target=read, name=f"serve-{fleet.endpoint}", daemon=True)
        fleet.reader.start()
        deadline = time.monotonic() + self.health_timeout
        listening.wait(self.health_timeout)
        while fleet.port and fleet.process.poll() is None and time.monotonic() < deadline:
            try:  # SageMaker's /ping requests time out after 2 s
                with urllib.request.urlopen(f"http://127.0.0.1:{fleet.port}/ping", timeout=2) as ping:
                    if ping.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)  # the next ping of the health check
        raise ServingFailure(PING_FAILED.format(variant=fleet.variant))

    def retire(self, fleet: Fleet, grace_seconds: float = 5.0) -> None:
        """Stops a variant's process (SIGTERM, SIGKILL after the grace period), flushes its capture and logs."""
        with self._lock:
            self._fleets.discard(fleet)
        _terminate(fleet.process, grace_seconds)
        if fleet.reader is not None:
            fleet.reader.join(timeout=grace_seconds)
        if fleet.capture is not None:
            fleet.capture.close()
        fleet.shipper.close()
        shutil.rmtree(fleet.root, ignore_errors=True)

    def stop_all(self) -> None:
        with self._lock:
            fleets = list(self._fleets)
        for fleet in fleets:
            self.retire(fleet, grace_seconds=0)

    # -- serving ------------------------------------------------------------------------------

    def invoke(self, fleet: Fleet, body: bytes, content_type: str | None, accept: str | None) -> Invocation:
        headers = {"Content-Type": content_type} if content_type else {}
        if accept:
            headers["Accept"] = accept
        connection = http.client.HTTPConnection("127.0.0.1", fleet.port, timeout=self.invocation_timeout)
        try:
            connection.request("POST", "/invocations", body=body, headers=headers)
            response = connection.getresponse()
            result = Invocation(response.status, response.headers.get("Content-Type") or "", response.read())
        except TimeoutError as exc:
            raise InvocationTimeout() from exc
        finally:
            connection.close()
        if fleet.capture is not None and 200 <= result.status < 300:
            fleet.capture.record(body, content_type or "", result)
        return result
