"""Run a SageMaker CreateTrainingJob request for real, in a local subprocess.

The user's entry point sees the contract SageMaker framework containers
(sagemaker-training-toolkit, script mode) give it, with ``/opt/ml`` mapped to
``<work_dir>/jobs/<TrainingJobName>/opt/ml``:

- ``input/config/{hyperparameters,resourceconfig,inputdataconfig}.json``,
  ``input/data/<channel>/`` (downloaded from each channel's ``S3Uri`` prefix),
  ``model/``, ``output/data/``, ``output/failure``, ``code/`` (``sagemaker_submit_directory``).
- A job of a scikit-learn or PyTorch image whose environment fits is forked from a warm server of the image's
  interpreter that has imported the framework (kaos.local.warm_training), and sees what a fresh process would.
- The process runs with the training image's Python environment (kaos.local.environments): the image's pinned
  packages plus the code's ``requirements.txt``, nothing of kaos; ``LocalTrainingRunner.environment_id`` is its id,
  and the Training transition's StatusMessage carries it (with any fidelity warning) for the job's record.
- Command line ``--<hp> <value>`` for every non-``sagemaker_*`` hyperparameter, decoded from JSON
  like the toolkit does; environment ``SM_*`` variables as in the toolkit's ENVIRONMENT_VARIABLES.md.
- Credentials: real SageMaker hands the job its execution role's credentials. Locally the process
  gets dummy credentials and ``AWS_ENDPOINT_URL`` pointing at the emulator, and every ``AWS_*``
  variable of the parent process is removed, so user code can never reach real AWS by accident.

Output is merged and streamed to CloudWatch Logs (``/aws/sagemaker/TrainingJobs``, stream
``<job>/algo-1-<epoch seconds>``) and copied to ``jobs/<job>/log.txt``. On exit 0 ``model/`` and
``output/data/`` are uploaded as ``<S3OutputPath>/<job>/output/{model,output}.tar.gz``.
Unlike SageMaker's own archives they are byte-stable (see ``_tar_dir``): identical files give an
identical model.tar.gz, so its sha256 compares two trainings.
A non-zero exit is ``Failed`` with ``FailureReason`` from ``output/failure`` or the output tail.
At most ``slots`` trainings run at once (``KAOS_LOCAL_TRAINING_SLOTS`` of the stack, default this machine's cores):
one slot is one instance. A job beyond them waits as a SageMaker job waits for capacity (``InProgress``, ``Starting``,
SageMaker's insufficient-capacity message) and starts, in submit order, when a running one ends. Each process gets
the BLAS/OpenMP thread variables and ``SM_NUM_CPUS`` set to its slot's share of the cores (see ``_environment``).
``StopTrainingJob`` and ``StoppingCondition.MaxRuntimeInSeconds`` send SIGTERM to the process
group, then SIGKILL after ``stop_grace_seconds`` (SageMaker: 120 s); the job ends ``Stopped``
(SecondaryStatus ``Stopped`` or ``MaxRuntimeExceeded``) and whatever the script saved in
``model/`` is still uploaded, as SageMaker does.
"""

from __future__ import annotations

import datetime
import gzip
import json
import logging
import os
import shutil
import signal
import subprocess
import tarfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlparse

from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from chalicelib.environments import entry_for_image
from kaos.local.clients import new_client
from kaos.local.environments import (BuiltEnvironment, EnvironmentBuildError, Environments, default_cache_dir,
                                     environment_message, layered_environment, pip_install)
from kaos.local.containers import (LOG_COPY, STOP_WAIT_SECONDS, LogShipper, RoleKeys, anonymous_keys,
                                   clear_job_folder, container_base_environment, extract_private)
from kaos.local.state_dir import TRAINING_SLOTS_ENV
from kaos.local.warm_training import WarmProcess, WarmStarts

LOG = logging.getLogger(__name__)

LOG_GROUP: Final[str] = "/aws/sagemaker/TrainingJobs"
CURRENT_HOST: Final[str] = "algo-1"
FAILURE_REASON_LIMIT: Final[int] = 1024
_TAIL_LINES: Final[int] = 20
# What numpy/scipy/scikit-learn's native libraries read for their thread pools (OpenMP, OpenBLAS, MKL, BLIS,
# Accelerate, numexpr).
THREAD_VARIABLES: Final[tuple[str, ...]] = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                            "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
# SageMaker's StatusMessages of the Starting transition (SecondaryStatusTransition.StatusMessage).
WAITING_MESSAGE: Final[str] = "Insufficient capacity error from EC2 while launching instances, retrying!"
PREPARING_MESSAGE: Final[str] = "Preparing the instances for training"
# Channel files, code and model archives move in the job's own thread: s3transfer's default starts a pool of 10
# threads per file, which for a grid of points (and a channel of many small files) is threads made and dropped per
# file, for no speed against an emulator on this machine.
_TRANSFER: Final = TransferConfig(use_threads=False)

Updater = Callable[[dict[str, Any]], None]
JobProcess = subprocess.Popen[bytes] | WarmProcess


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def training_slots(environ: Mapping[str, str] = os.environ) -> int:
    """How many trainings the stack runs at once: its KAOS_LOCAL_TRAINING_SLOTS, else this machine's cores. Read
    when the stack starts, so a bad value stops it there rather than failing jobs later."""
    raw = environ.get(TRAINING_SLOTS_ENV, "").strip()
    if not raw:
        return os.cpu_count() or 1
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{TRAINING_SLOTS_ENV} must be a whole number of at least 1, not {raw!r}")
    return int(raw)


def decode_hyperparameter(value: Any) -> Any:
    """The toolkit JSON-decodes each value and keeps the raw string when that fails."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _arg_value(value: Any) -> str:
    # sagemaker_training.mapping.to_cmd_args
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    if value is None:
        return ""
    return str(value)


def to_cmd_args(hyperparameters: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for key in sorted(hyperparameters):
        args += [f"--{key}" if len(key) > 1 else f"-{key}", _arg_value(hyperparameters[key])]
    return args


def to_env_vars(mapping: dict[str, Any]) -> dict[str, str]:
    """sagemaker_training.mapping.to_env_vars: SM_<KEY>; a string as it is, None empty, anything else compact
    key-sorted ASCII JSON."""
    def value(item: Any) -> str:
        if item is None:
            return ""
        if isinstance(item, str):
            return item
        return json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    return {f"SM_{key.upper()}": value(item) for key, item in mapping.items()}


def _tar_dir(source: Path, target: Path) -> None:
    """``source`` as a byte-stable tar.gz: the same files always give the same archive bytes.

    Members are in sorted path order (a directory before its contents) with mtime 0, owner 0:0 and no
    owner names, modes normalized to 0o644 (0o755 for directories and executables), and the gzip header
    carries no time and no file name. Member names are relative to ``source`` as SageMaker writes them."""
    members = sorted((path.relative_to(source).as_posix(), path) for path in source.rglob("*"))
    with target.open("wb") as raw, \
            gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as compressed, \
            tarfile.open(fileobj=compressed, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, path in members:
            info = tar.gettarinfo(str(path), arcname=name)
            if info is None:  # sockets and other special files (tarfile cannot store them)
                continue
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.devmajor = info.devminor = 0
            if info.isdir() or (info.isreg() and info.mode & 0o111):
                info.mode = 0o755
            elif info.issym():
                info.mode = 0o777
            else:
                info.mode = 0o644
            if info.isreg():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)


def _silent(line: str) -> None:
    pass


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


@dataclass
class _Job:
    name: str
    request: dict[str, Any]
    update: Updater
    root: Path
    process: JobProcess | None = None
    stop_reason: str | None = None  # "Stopped" | "MaxRuntimeExceeded"
    environment: BuiltEnvironment | None = None
    python: Path | None = None  # the interpreter the job runs with: the environment's, or a package layer over it
    framework_module: str | None = None  # the image's SAGEMAKER_TRAINING_MODULE
    framework: str | None = None  # the catalogue's framework of the image (which warm server may fork it)
    say: Callable[[str], None] = _silent  # the job's log, once it has one
    thread: threading.Thread | None = None
    done: threading.Event = field(default_factory=threading.Event)  # set once the job ended, run or not
    clients: dict[str, Any] = field(default_factory=dict)  # by service, with the job's keys; dropped at its end
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=_TAIL_LINES))
    log_stream: str | None = None
    keys: dict[str, str] = field(default_factory=dict)


class _Stopped(Exception):
    pass


class _ClientError(Exception):
    """Setup problem attributable to the request (SageMaker: ``ClientError: ...``)."""


class LocalTrainingRunner:
    """Executes CreateTrainingJob requests in subprocesses, at most ``slots`` at once (one thread per running job;
    a waiting job is only its queue entry)."""

    def __init__(
        self, endpoint_url: str, work_dir: Path, *, stop_grace_seconds: float = 10.0,
        region: str = "us-east-1", role_keys: RoleKeys = anonymous_keys, environments: Environments | None = None,
        slots: int | None = None,
    ) -> None:
        self.slots = training_slots() if slots is None else slots
        self.role_keys = role_keys
        self.environments = environments or Environments(default_cache_dir())
        self.endpoint_url = endpoint_url
        self.work_dir = Path(work_dir)
        self.stop_grace_seconds = stop_grace_seconds
        self.region = region
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)  # notified by the update callbacks (kaos.local.patches)
        self._jobs: dict[str, _Job] = {}
        self._running = 0
        self._waiting: deque[_Job] = deque()  # in submit order, as they get a slot
        self._warm = WarmStarts(self.work_dir)

    # -- public -----------------------------------------------------------------------------

    def start(self, request: dict[str, Any], update: Updater) -> None:
        """Start ``request`` (CreateTrainingJob shape); ``update`` receives Describe fields."""
        name = request["TrainingJobName"]
        job = _Job(
            name=name, request=request, update=update,
            root=self.work_dir / "jobs" / name,
        )
        with self.lock:
            self._jobs[name] = job
            if self._running < self.slots:
                self._launch(job)
            else:
                self._waiting.append(job)
                job.update({"SecondaryStatus": "Starting", "StatusMessage": f"{WAITING_MESSAGE} (offline: all "
                            f"{self.slots} training slots of this machine are busy; {TRAINING_SLOTS_ENV} sets them)"})

    def stop(self, training_job_name: str, reason: str = "Stopped") -> None:
        """StopTrainingJob: Stopping, SIGTERM to the process group, SIGKILL after the grace period. A job still
        waiting for a slot never starts: it ends Stopped at once."""
        with self.lock:
            job = self._jobs.get(training_job_name)
            if job is None or job.stop_reason is not None:
                return
            job.stop_reason = reason
            job.update({"SecondaryStatus": "Stopping", "TrainingJobStatus": "Stopping"})
            if job in self._waiting:
                self._end_waiting(job)
                return
            process = job.process
        if process is not None:
            self._terminate(process, self.stop_grace_seconds)

    def stop_all(self, grace_seconds: float = 0.0) -> None:
        with self.lock:
            jobs = list(self._jobs.values())
            while self._waiting:  # first, so no waiting job is launched into a slot the others free
                job = self._waiting[0]
                job.stop_reason = job.stop_reason or "Stopped"
                self._end_waiting(job)
        for job in jobs:
            with self.lock:
                if job.stop_reason is None:
                    job.stop_reason = "Stopped"
                process = job.process
            if process is not None and process.poll() is None:
                self._terminate(process, grace_seconds)
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        for job in jobs:
            if job.thread is not None:
                job.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._warm.close()

    def wait(self, training_job_name: str, timeout: float | None = None) -> None:
        self._jobs[training_job_name].done.wait(timeout)

    def environment_id(self, training_job_name: str) -> str | None:
        built = self._jobs[training_job_name].environment
        return built.environment_id if built is not None else None

    def job_dir(self, training_job_name: str) -> Path:
        return self.work_dir / "jobs" / training_job_name

    # -- slots ------------------------------------------------------------------------------

    def _launch(self, job: _Job) -> None:
        """Give ``job`` a slot (the caller holds the lock) and run it on a thread of its own."""
        self._running += 1
        job.thread = threading.Thread(target=self._occupy, args=(job,), name=f"train-{job.name}", daemon=True)
        job.thread.start()

    def _occupy(self, job: _Job) -> None:
        try:
            self._run(job)
        finally:
            # What the runner keeps of an ended job is its record (environment_id, job_dir): its clients (with their
            # connection pools), its log shipper and its session keys go with it.
            job.clients.clear()
            job.say, job.keys, job.process = _silent, {}, None
            with self.lock:
                self._running -= 1
                while self._waiting and self._running < self.slots:
                    waited = self._waiting.popleft()
                    waited.update({"SecondaryStatus": "Starting", "StatusMessage": PREPARING_MESSAGE})
                    self._launch(waited)
            job.done.set()

    def _end_waiting(self, job: _Job) -> None:
        """A waiting job stopped (the caller holds the lock): it leaves the queue and ends without having run."""
        self._waiting.remove(job)
        job.update({"TrainingJobStatus": "Stopped", "SecondaryStatus": job.stop_reason, "TrainingEndTime": _now()})
        job.done.set()

    # -- helpers ----------------------------------------------------------------------------

    def _client(self, service: str, job: _Job) -> Any:
        """SageMaker reads channels and writes the model and logs with the job's execution role: one client per
        service for the job's session (its keys are its own, so clients are not shared between jobs)."""
        if service not in job.clients:
            job.clients[service] = new_client(
                service, self.region, job.keys["AWS_ACCESS_KEY_ID"], job.keys["AWS_SECRET_ACCESS_KEY"],
                job.keys.get("AWS_SESSION_TOKEN"), self.endpoint_url,
                Config(retries={"max_attempts": 3, "mode": "standard"}))
        return job.clients[service]

    @staticmethod
    def _terminate(process: JobProcess, grace_seconds: float) -> None:
        def signal_group(sig: int) -> None:
            try:
                os.killpg(process.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

        signal_group(signal.SIGTERM)
        if grace_seconds <= 0:
            signal_group(signal.SIGKILL)
            return

        def kill_later() -> None:
            try:
                process.wait(grace_seconds)
            except subprocess.TimeoutExpired:
                signal_group(signal.SIGKILL)

        threading.Thread(target=kill_later, daemon=True).start()

    def _check_stopped(self, job: _Job) -> None:
        with self.lock:
            if job.stop_reason is not None:
                raise _Stopped()

    # -- the job ----------------------------------------------------------------------------

    def _run(self, job: _Job) -> None:
        request = job.request
        opt_ml = job.root / "opt" / "ml"
        shipper: LogShipper | None = None
        try:
            if job.root.exists():
                shutil.rmtree(job.root)
            for sub in ("input/config", "input/data", "model", "output/data", "code"):
                (opt_ml / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(job.root, 0o700)
            try:
                job.keys = self.role_keys(request["RoleArn"], "sagemaker.amazonaws.com")
            except Exception as exc:  # SageMaker validates the role when the job is created
                raise _ClientError(f"Could not assume role {request.get('RoleArn')}: {exc}") from exc
            start = _now()
            job.log_stream = f"{job.name}/{CURRENT_HOST}-{int(start.timestamp())}"
            shipper = LogShipper(self._client("logs", job), LOG_GROUP, job.log_stream, job.root / LOG_COPY,
                                 create_group=True)
            job.say = shipper.write
            job.update({"TrainingStartTime": start})

            job.update({"SecondaryStatus": "Downloading",
                        "StatusMessage": "Downloading input data"})
            raw_hps: dict[str, str] = {
                k: str(v) for k, v in (request.get("HyperParameters") or {}).items()
            }
            decoded = {k: decode_hyperparameter(v) for k, v in raw_hps.items()}
            framework = {k: v for k, v in decoded.items() if k.startswith("sagemaker_")}
            user_hps = {k: v for k, v in decoded.items() if not k.startswith("sagemaker_")}
            channels = self._write_config_and_data(job, opt_ml, raw_hps)
            self._check_stopped(job)
            command, module_dir, entry_point, user_args = self._prepare_code(job, opt_ml, framework, user_hps)
            self._check_stopped(job)
            base = self._base_environment(job)
            env = self._environment(job, base, opt_ml, channels, user_hps, module_dir, entry_point, user_args)
            # SageMaker's message, then (offline) what the image's environment was: the record reads it there.
            job.update({"SecondaryStatus": "Training",
                        "StatusMessage": "Training image download completed. Training in progress."
                        + (f" {environment_message(job.environment)}" if job.environment else "")})
            exit_code = self._execute(job, command, opt_ml / "code", env, base, shipper)
            shipper.close()

            with self.lock:
                stop_reason = job.stop_reason
            if exit_code == 0 and stop_reason is None:
                (opt_ml / "output" / "success").write_text("")  # the toolkit's files.write_success_file
            if exit_code == 0 or stop_reason is not None:
                if stop_reason is None:
                    job.update({"SecondaryStatus": "Uploading",
                                "StatusMessage": "Uploading generated training model"})
                artifacts = self._upload_outputs(job, opt_ml, only_if_model=stop_reason is not None)
                final: dict[str, Any] = {"TrainingEndTime": _now()}
                if artifacts is not None:
                    final["ModelArtifacts"] = {"S3ModelArtifacts": artifacts}
                if stop_reason is not None:
                    final.update({"TrainingJobStatus": "Stopped", "SecondaryStatus": stop_reason})
                    if stop_reason == "MaxRuntimeExceeded":
                        final["StatusMessage"] = "Training job runtime exceeded MaxRuntimeInSeconds provided"
                else:
                    final.update({"TrainingJobStatus": "Completed", "SecondaryStatus": "Completed",
                                  "StatusMessage": "Training job completed"})
                job.update(final)
            else:
                reason = self._failure_reason(job, opt_ml, exit_code, command)
                job.update({"TrainingJobStatus": "Failed", "SecondaryStatus": "Failed",
                            "FailureReason": reason, "TrainingEndTime": _now(),
                            "StatusMessage": "Training job failed"})
        except _Stopped:
            with self.lock:
                reason_status = job.stop_reason or "Stopped"
            job.update({"TrainingJobStatus": "Stopped", "SecondaryStatus": reason_status,
                        "TrainingEndTime": _now()})
        except Exception as exc:  # setup errors: ClientError like SageMaker
            LOG.warning("training job %s failed during setup: %s", job.name, exc)
            if shipper is not None:
                shipper.write(traceback.format_exc())
            prefix = "ClientError" if isinstance(exc, _ClientError) else "InternalServerError"
            job.update({"TrainingJobStatus": "Failed", "SecondaryStatus": "Failed",
                        "FailureReason": f"{prefix}: {exc}"[:FAILURE_REASON_LIMIT],
                        "TrainingEndTime": _now()})
        finally:
            if shipper is not None:
                shipper.close()
            with self.lock:
                stopped = job.stop_reason == "Stopped"
            clear_job_folder(job.root, keep_log=not stopped)

    def _write_config_and_data(
        self, job: _Job, opt_ml: Path, raw_hps: dict[str, str]
    ) -> list[str]:
        request = job.request
        config_dir = opt_ml / "input" / "config"
        (config_dir / "hyperparameters.json").write_text(json.dumps(raw_hps, indent=2))
        resource = request.get("ResourceConfig") or {}
        instance_type = resource.get("InstanceType", "local")
        (config_dir / "resourceconfig.json").write_text(json.dumps({
            "current_host": CURRENT_HOST, "current_instance_type": instance_type,
            "current_group_name": "homogeneousCluster", "hosts": [CURRENT_HOST],
            "instance_groups": [{"instance_group_name": "homogeneousCluster",
                                 "instance_type": instance_type, "hosts": [CURRENT_HOST]}],
            "network_interface_name": "eth0",
        }, indent=2))
        input_config: dict[str, Any] = {}
        channels: list[str] = []
        s3 = self._client("s3", job)
        for channel in request.get("InputDataConfig") or []:
            name = channel["ChannelName"]
            channels.append(name)
            input_config[name] = {
                "TrainingInputMode": channel.get("InputMode", "File"),
                "S3DistributionType": "FullyReplicated",
                "RecordWrapperType": channel.get("RecordWrapperType", "None"),
            }
            if channel.get("ContentType"):
                input_config[name]["ContentType"] = channel["ContentType"]
            target = opt_ml / "input" / "data" / name
            target.mkdir(parents=True, exist_ok=True)
            source = (channel.get("DataSource") or {}).get("S3DataSource") or {}
            uri = source.get("S3Uri")
            if not uri:
                raise _ClientError(f"Channel {name} has no S3DataSource.S3Uri")
            if source.get("S3DataType", "S3Prefix") != "S3Prefix":
                raise _ClientError(f"Channel {name}: only S3DataType S3Prefix is emulated")
            self._download_prefix(s3, uri, target)
        (config_dir / "inputdataconfig.json").write_text(json.dumps(input_config, indent=2))
        return channels

    @staticmethod
    def _download_prefix(s3: Any, uri: str, target: Path) -> None:
        bucket, prefix = _split_s3(uri)
        found = False
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/"):
                    continue
                found = True
                relative = key[len(prefix):].lstrip("/") if key != prefix else Path(key).name
                if not relative:
                    relative = Path(key).name
                destination = target / relative
                if not destination.resolve().is_relative_to(target.resolve()):
                    raise _ClientError(f"S3 key {key} escapes the channel directory")
                destination.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, key, str(destination), Config=_TRANSFER)
        if not found:
            raise _ClientError(f"No S3 objects found under S3 URL \"{uri}\" given in input data source. "
                               "Please ensure that the bucket exists in the selected region, that "
                               "objects exist under that S3 prefix, and that the role has access.")

    def _prepare_code(
        self, job: _Job, opt_ml: Path, framework: dict[str, Any], user_hps: dict[str, Any]
    ) -> tuple[list[str], str, str, list[str]]:
        """(command, module dir, entry point, user args) as sagemaker_training.entry_point.run decides them."""
        code_dir = opt_ml / "code"
        submit = framework.get("sagemaker_submit_directory")
        program = framework.get("sagemaker_program")
        algorithm = job.request.get("AlgorithmSpecification") or {}
        if submit:
            submit = str(submit)
            if submit.startswith("s3://"):
                bucket, key = _split_s3(submit)
                archive = job.root / "sourcedir.tar.gz"
                try:
                    self._client("s3", job).download_file(bucket, key, str(archive), Config=_TRANSFER)
                except Exception as exc:
                    raise _ClientError(f"Could not download {submit}: {exc}") from exc
                extract_private(archive, code_dir)
            else:
                local = Path(submit.removeprefix("file://"))
                if local.is_dir():
                    shutil.copytree(local, code_dir, dirs_exist_ok=True)
                elif local.is_file():
                    extract_private(local, code_dir)
                else:
                    raise _ClientError(f"sagemaker_submit_directory {submit} not found")
        python = self._python_for(job, code_dir)
        if program:
            entry = str(program)
            path = code_dir / entry
            if not path.is_file():
                raise _ClientError(f"Entry point {entry} not found in {submit}")
            args = to_cmd_args(user_hps)
            # sagemaker_training._entry_point_type.get: .sh is a command, a setup.py beside it a package, .py a
            # program, anything else a command.
            if entry.endswith(".sh"):
                command = ["/bin/sh", entry, *args]
            elif (code_dir / "setup.py").is_file():
                command = [str(self._install_package(job, code_dir)), "-m", entry.replace(".py", ""), *args]
            elif entry.endswith(".py"):
                command = [python, entry, *args]
            else:
                path.chmod(path.stat().st_mode | 0o111)
                command = [str(path.resolve()), *args]
            return command, str(submit or code_dir), entry, args
        entrypoint = algorithm.get("ContainerEntrypoint")
        if entrypoint:
            arguments = [str(a) for a in algorithm.get("ContainerArguments") or []]
            return [*entrypoint, *arguments], str(code_dir), entrypoint[0], arguments
        raise _ClientError(
            "No entry point: set the sagemaker_program and sagemaker_submit_directory "
            "hyperparameters (script mode) or AlgorithmSpecification.ContainerEntrypoint"
        )

    # -- environments -----------------------------------------------------------------------

    def _python_for(self, job: _Job, code_dir: Path) -> str:
        """The training image's interpreter (kaos.local.environments), with the code's requirements.txt installed
        on top as the toolkit does; the build's progress goes to the job's log, a failed build fails the job."""
        image = str((job.request.get("AlgorithmSpecification") or {}).get("TrainingImage", ""))
        requirements = code_dir / "requirements.txt"
        try:
            built = self.environments.ensure(image, [requirements] if requirements.is_file() else [],
                                             progress=job.say)
        except EnvironmentBuildError as error:
            raise _ClientError(f"pip install -r requirements.txt failed: {error}") from error
        job.environment, job.python = built, built.python
        entry = entry_for_image(image)
        job.framework_module, job.framework = entry.training_module, entry.framework
        return str(built.python)

    def _install_package(self, job: _Job, code_dir: Path) -> Path:
        """The toolkit's `pip install .` of a code folder with a setup.py (modules.install), into a layer of the job's
        own over the image's environment (the cached environment is shared, so it is never installed into)."""
        assert job.python is not None
        layer = job.root / "package"
        try:
            python = layered_environment(layer, job.python.parent.parent)
            pip_install(layer, ["."], job.say, cwd=code_dir)
        except EnvironmentBuildError as error:
            raise _ClientError(f"InstallModuleError: pip install . failed: {error}") from error
        job.python = python
        return python

    # -- execution --------------------------------------------------------------------------

    def _environment(
        self, job: _Job, base: dict[str, str], opt_ml: Path, channels: list[str], user_hps: dict[str, Any],
        module_dir: str, entry_point: str, user_args: list[str],
    ) -> dict[str, str]:
        request = job.request
        paths = {
            "model_dir": opt_ml / "model",
            "input_dir": opt_ml / "input",
            "input_config_dir": opt_ml / "input" / "config",
            "output_dir": opt_ml / "output",
            "output_data_dir": opt_ml / "output" / "data",
            "output_intermediate_dir": opt_ml / "output" / "intermediate",
        }
        paths["output_intermediate_dir"].mkdir(parents=True, exist_ok=True)
        channel_dirs = {c: str(opt_ml / "input" / "data" / c) for c in channels}
        resource_config = json.loads((opt_ml / "input/config/resourceconfig.json").read_text())
        input_data_config = json.loads((opt_ml / "input/config/inputdataconfig.json").read_text())
        num_cpus = self._num_cpus()
        module_name = entry_point[:-3] if entry_point.endswith(".py") else entry_point
        group = resource_config["current_group_name"]
        # sagemaker_training.environment.Environment: its public properties are SM_TRAINING_ENV.
        training_env: dict[str, Any] = {
            "additional_framework_parameters": {},
            "channel_input_dirs": channel_dirs,
            "current_host": CURRENT_HOST,
            "current_instance_group": group,
            "current_instance_group_hosts": [CURRENT_HOST],
            "current_instance_type": resource_config["current_instance_type"],
            "distribution_hosts": [],
            "distribution_instance_groups": [],
            "framework_module": job.framework_module,
            "hosts": [CURRENT_HOST],
            "hyperparameters": user_hps,
            "input_data_config": input_data_config,
            "instance_groups": [group],
            "instance_groups_dict": {g["instance_group_name"]: g for g in resource_config["instance_groups"]},
            "is_hetero": False,
            "is_master": True,
            "is_modelparallel_enabled": None,
            "is_smddpmprun_installed": False,
            "is_smddprun_installed": False,
            "job_name": job.name,
            "log_level": 20,
            "master_hostname": CURRENT_HOST,
            "module_dir": module_dir,
            "module_name": module_name,
            "network_interface_name": "eth0",
            "num_cpus": num_cpus,
            "num_gpus": 0,
            "num_neurons": 0,
            "resource_config": resource_config,
            "topology": None,
            "user_entry_point": entry_point,
            **{k: str(v) for k, v in paths.items()},
        }
        # Environment.to_env_vars: what the toolkit exports, each through mapping.to_env_vars (strings as they are,
        # None empty, anything else compact key-sorted JSON).
        exported: dict[str, Any] = {
            "hosts": [CURRENT_HOST], "network_interface_name": "eth0", "hps": user_hps,
            "user_entry_point": entry_point, "framework_params": {}, "resource_config": resource_config,
            "input_data_config": input_data_config, "channels": sorted(channels), "current_host": CURRENT_HOST,
            "current_instance_type": resource_config["current_instance_type"], "current_instance_group": group,
            "current_instance_group_hosts": [CURRENT_HOST], "instance_groups": [group],
            "instance_groups_dict": training_env["instance_groups_dict"], "distribution_instance_groups": [],
            "is_hetero": False, "module_name": module_name, "log_level": 20,
            "framework_module": job.framework_module, "num_cpus": num_cpus, "num_gpus": 0, "num_neurons": 0,
            "module_dir": module_dir, "training_env": training_env, "user_args": user_args,
            **{k: str(v) for k, v in paths.items()},
            **{f"channel_{name}": path for name, path in channel_dirs.items()},
            **{f"hp_{key}": value for key, value in user_hps.items()},
        }
        # What the container gets, and nothing of the stack's or the client's environment (no KAOS_*, no home
        # with other users' keys): the image's basics, the SageMaker variables and the execution role's keys.
        env = dict(base)
        env.update(request.get("Environment") or {})  # CreateTrainingJob's Environment: the user's values win
        env.update({
            "PYTHONUNBUFFERED": "1",
            "AWS_ENDPOINT_URL": self.endpoint_url,
            **job.keys,
            "AWS_DEFAULT_REGION": request.get("Region", self.region),
            "AWS_REGION": request.get("Region", self.region),
            "TRAINING_JOB_NAME": job.name,
            "TRAINING_JOB_ARN": f"arn:aws:sagemaker:{request.get('Region', self.region)}:"
                                f"123456789012:training-job/{job.name}",
            **to_env_vars(exported),
        })
        return env

    def _num_cpus(self) -> int:
        """The cores one instance has here: its slot's share of this machine. Not the instance type's vCPUs (an
        ml.m5.large has 2, an ml.c5.4xlarge 16): the slots run side by side on these cores, and every process
        sizing its BLAS/OpenMP pools to more than its share oversubscribes them (a 10-point grid on 2 cores ran 4x
        slower than a loop). SM_NUM_CPUS (the toolkit's num_cpus) and the thread variables say the same."""
        return max(1, (os.cpu_count() or 1) // self.slots)

    def _base_environment(self, job: _Job) -> dict[str, str]:
        """What every job's process starts from, before its own variables: the image's basics and the slot's thread
        variables (also what a warm server of the image's interpreter starts with)."""
        assert job.python is not None  # _prepare_code chose it
        env = container_base_environment(job.root / "home", job.python)
        env.update({name: str(self._num_cpus()) for name in THREAD_VARIABLES})
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _execute(
        self, job: _Job, command: list[str], cwd: Path, env: dict[str, str], base: dict[str, str],
        shipper: LogShipper,
    ) -> int:
        self._check_stopped(job)
        # Forked from the image's warm server when the job fits it (kaos/local/warm_training.py), else started
        # fresh; outside the lock: a server's first start imports its framework. What the job writes is its
        # workspace's: owner-only on this shared machine.
        process: JobProcess | None = self._warm.spawn(job.framework, command, env, str(cwd), 0o077, base)
        with self.lock:
            if process is None:
                process = subprocess.Popen(
                    command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True, umask=0o077,
                )
            job.process = process
            stopped = job.stop_reason is not None
        if stopped:  # stopped while it was being started
            self._terminate(process, 0)
        max_runtime = (job.request.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
        timer: threading.Timer | None = None
        if max_runtime:
            timer = threading.Timer(float(max_runtime), self.stop, args=(job.name, "MaxRuntimeExceeded"))
            timer.daemon = True
            timer.start()
        try:
            assert process.stdout is not None
            for raw in iter(process.stdout.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                job.tail.append(line)
                shipper.write(line)
            return process.wait()
        finally:
            if timer is not None:
                timer.cancel()

    def _upload_outputs(self, job: _Job, opt_ml: Path, only_if_model: bool) -> str | None:
        output_path = (job.request.get("OutputDataConfig") or {}).get("S3OutputPath")
        model_dir = opt_ml / "model"
        if not output_path or (only_if_model and not any(model_dir.iterdir())):
            return None
        bucket, prefix = _split_s3(output_path.rstrip("/"))
        base = "/".join(p for p in (prefix, job.name, "output") if p)
        s3 = self._client("s3", job)
        model_tar = job.root / "model.tar.gz"
        _tar_dir(model_dir, model_tar)
        s3.upload_file(str(model_tar), bucket, f"{base}/model.tar.gz", Config=_TRANSFER)
        data_dir = opt_ml / "output" / "data"
        if any(data_dir.iterdir()):
            output_tar = job.root / "output.tar.gz"
            _tar_dir(data_dir, output_tar)
            s3.upload_file(str(output_tar), bucket, f"{base}/output.tar.gz", Config=_TRANSFER)
        return f"s3://{bucket}/{base}/model.tar.gz"

    @staticmethod
    def _failure_reason(job: _Job, opt_ml: Path, exit_code: int, command: list[str]) -> str:
        """SageMaker's FailureReason: the failure file as AlgorithmError with the container's exit code. The toolkit
        writes that file when the script has not (process.check_error's ExecuteUserScriptError, the output's
        deduplicated tail as ErrorMessage)."""
        failure = opt_ml / "output" / "failure"
        suffix = f", exit code: {exit_code}"
        if not (failure.is_file() and failure.read_text(errors="replace").strip()):
            head = f"ExecuteUserScriptError:\nExitCode {exit_code}\nErrorMessage \""
            tail = f"\"\nCommand \"{' '.join(command)}\""
            budget = FAILURE_REASON_LIMIT - len("AlgorithmError: ") - len(head) - len(tail) - len(suffix)
            message = "\n".join(dict.fromkeys(job.tail)).strip()
            failure.write_text(head + message[max(0, len(message) - budget):] + tail)
        return f"AlgorithmError: {failure.read_text(errors='replace')}{suffix}"[:FAILURE_REASON_LIMIT]
