"""Run AWS Batch jobs for real, in local subprocesses, and create the template's Batch resources in moto.

moto's Batch without Docker (``batch_simple``) marks every job SUCCEEDED without running anything. The patch in
:mod:`kaos.local.patches` hands each submitted job to :class:`LocalBatchRunner` instead, which runs the job the
way Batch runs a container:

- the command is the job definition's (or the override's) ``command`` with ``Ref::<name>`` parameters
  substituted; ``python``/``python3`` is the image's interpreter (kaos.local.environments: the catalogue's pins
  for the job definition's image, nothing of kaos), whose directory also leads ``PATH``;
  nothing is downloaded or uploaded by the runner itself: the container's command does that (kaos' job
  definition runs the bootstrap of cdk/batch.py, the same code that runs on Fargate);
- the environment is the job definition's merged with the overrides', plus ``AWS_BATCH_JOB_ID``,
  ``AWS_BATCH_JQ_NAME``, ``AWS_BATCH_JOB_ATTEMPT``; absolute paths in ``*_DIR`` variables are container paths
  and are re-rooted under ``<work_dir>/batch/<job id>/root`` so concurrent jobs never share a directory;
  credentials are dummies with ``AWS_ENDPOINT_URL`` at the emulator, and no ``AWS_*`` variable of this process
  leaks in, so user code can never reach real AWS;
- stdout and stderr go to CloudWatch Logs like the awslogs driver: the job definition's ``awslogs-group``
  (default ``/aws/batch/job``), stream ``<awslogs-stream-prefix or definition name>/default/<job id>``;
- exit 0 is SUCCEEDED; anything else is FAILED with ``statusReason`` = the tail of stderr (on AWS it is
  "Essential container in task exited"; the log holds the rest). The job's ``Timeout.attemptDurationSeconds``
  and TerminateJob kill the process group: FAILED with Batch's reason.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final

from botocore.config import Config

from kaos.local.clients import new_client
from kaos.local import iam
from kaos.local.environments import Environments, default_cache_dir
from kaos.local.containers import (LOG_COPY, STOP_WAIT_SECONDS, LogShipper, RoleKeys, anonymous_keys,
                                   clear_job_folder, container_base_environment)

LOG = logging.getLogger(__name__)

DEFAULT_LOG_GROUP: Final[str] = "/aws/batch/job"
STATUS_REASON_LIMIT: Final[int] = 1024
TIMEOUT_REASON: Final[str] = "Job attempt duration exceeded timeout"
_TAIL_LINES: Final[int] = 20
_POLL_SECONDS: Final[float] = 0.25


class LocalBatchRunner:
    """Executes moto Batch jobs in subprocesses, one thread per job."""

    def __init__(self, endpoint_url: str, work_dir: Path, *, region: str = "us-east-1",
                 role_keys: RoleKeys = anonymous_keys, environments: Environments | None = None) -> None:
        self.role_keys = role_keys
        self.environments = environments or Environments(default_cache_dir())
        self.endpoint_url = endpoint_url
        self.work_dir = Path(work_dir)
        self.region = region
        self.lock = threading.RLock()
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._threads: dict[str, threading.Thread] = {}

    def start(self, job: Any) -> None:
        """Runs moto's ``Job`` in the background; its status reads RUNNING until the process ends."""
        thread = threading.Thread(target=self._run, args=(job,), name=f"batch-{job.job_id}", daemon=True)
        with self.lock:
            self._threads[job.job_id] = thread
        thread.start()

    def wait(self, job_id: str, timeout: float | None = None) -> None:
        with self.lock:
            thread = self._threads.get(job_id)
        if thread is not None:
            thread.join(timeout)

    def stop_all(self) -> None:
        with self.lock:
            processes = list(self._processes.values())
            threads = list(self._threads.values())
        for process in processes:
            _kill_group(process)
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def job_dir(self, job_id: str) -> Path:
        return self.work_dir / "batch" / job_id

    # -- execution --------------------------------------------------------------------------

    def _run(self, job: Any) -> None:
        success, reason, exit_code, terminated = False, "", None, False
        try:
            exit_code, reason, terminated = self._execute(job)
            success = exit_code == 0 and not reason
        except Exception as exc:  # setup trouble: Batch reports CannotStartContainerError
            LOG.exception("batch job %s could not start", job.job_id)
            reason = f"CannotStartContainerError: {exc}"
        finally:
            with self.lock:
                self._processes.pop(job.job_id, None)
            clear_job_folder(self.job_dir(job.job_id), keep_log=not terminated)
            job.exit_code = exit_code
            if not success:
                job.job_stopped_reason = reason[-STATUS_REASON_LIMIT:] or (
                    f"Essential container in task exited (exit code {exit_code})"
                )
            job._mark_stopped(success=success)

    def _execute(self, job: Any) -> tuple[int, str, bool]:
        """(exit code, failure reason or "", whether TerminateJob stopped it)."""
        props = job.job_definition.container_properties or {}
        overrides = job.container_overrides or {}
        root = self.job_dir(job.job_id)
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)
        # The image's Python environment (its pins; the bootstrap of cdk/batch.py installs the code's
        # requirements.txt itself, on AWS as here).
        built = self.environments.ensure(str(props.get("image", "")))
        command = container_command(props, overrides, job.parameters or {}, built.python)
        # The task runs with the job role; the awslogs driver ships its output with the execution role.
        job_keys = self.role_keys(props["jobRoleArn"], "ecs-tasks.amazonaws.com") if props.get("jobRoleArn") \
            else {}
        log_keys = self.role_keys(props["executionRoleArn"], "ecs-tasks.amazonaws.com") \
            if props.get("executionRoleArn") else anonymous_keys("", "")
        env = self._environment(job, props, overrides, root / "root", job_keys, built.python)
        options = (props.get("logConfiguration") or {}).get("options") or {}
        group = options.get("awslogs-group") or DEFAULT_LOG_GROUP
        stream = job.log_stream_name or f"{job.job_definition.name}/default/{job.job_id}"
        shipper = LogShipper(self._client("logs", log_keys), group, stream, root / LOG_COPY)
        stderr_tail: deque[str] = deque(maxlen=_TAIL_LINES)
        try:
            process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       stdin=subprocess.DEVNULL, start_new_session=True, umask=0o077)
            with self.lock:
                self._processes[job.job_id] = process
            readers = [
                threading.Thread(target=_pump, args=(process.stdout, shipper.write, None), daemon=True),
                threading.Thread(target=_pump, args=(process.stderr, shipper.write, stderr_tail), daemon=True),
            ]
            for reader in readers:
                reader.start()
            stopped = self._supervise(job, process)
            for reader in readers:
                reader.join()
            exit_code = process.wait()
        finally:
            shipper.close()
        if stopped:
            return exit_code, stopped, stopped != TIMEOUT_REASON
        if exit_code != 0:
            tail = "\n".join(stderr_tail).strip()
            return exit_code, tail or f"Essential container in task exited (exit code {exit_code})", False
        return 0, "", False

    def _supervise(self, job: Any, process: subprocess.Popen[bytes]) -> str:
        """Waits for the process; kills it on TerminateJob or at the attempt timeout and returns Batch's reason."""
        timeout = (job.timeout or {}).get("attemptDurationSeconds") or (
            (job.job_definition.timeout or {}).get("attemptDurationSeconds")
        )
        deadline = time.monotonic() + float(timeout) if timeout else None
        while process.poll() is None:
            reason = ""
            if job.stop:
                reason = job.job_stopped_reason or "Terminated"
            elif deadline is not None and time.monotonic() > deadline:
                reason = TIMEOUT_REASON
            if reason:
                _kill_group(process)
                process.wait()
                return reason
            time.sleep(_POLL_SECONDS)
        return ""

    def _environment(self, job: Any, props: dict[str, Any], overrides: dict[str, Any], root: Path,
                     keys: dict[str, str], python: Path) -> dict[str, str]:
        variables = {e["name"]: str(e["value"]) for e in props.get("environment") or []}
        variables.update({e["name"]: str(e["value"]) for e in overrides.get("environment") or []})
        for name, value in list(variables.items()):
            if name.endswith("_DIR") and value.startswith("/"):
                variables[name] = str(root / value.lstrip("/"))
        # The task's environment: the container's basics, the definition's and overrides' variables, Batch's own
        # and the job role's keys; nothing of the stack's process.
        env = container_base_environment(root.parent / "home", python)
        env.update(variables)
        env.update({
            "AWS_ENDPOINT_URL": self.endpoint_url,
            **keys,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_BATCH_JOB_ID": job.job_id,
            "AWS_BATCH_JQ_NAME": job.job_queue.name,
            "AWS_BATCH_JOB_ATTEMPT": str(len(job.attempts) or 1),
        })
        return env

    def _client(self, service: str, keys: dict[str, str]) -> Any:
        return new_client(service, self.region, keys["AWS_ACCESS_KEY_ID"], keys["AWS_SECRET_ACCESS_KEY"],
                          keys.get("AWS_SESSION_TOKEN"), self.endpoint_url,
                          Config(retries={"max_attempts": 3, "mode": "standard"}))


def container_command(props: dict[str, Any], overrides: dict[str, Any], parameters: dict[str, str],
                      python: Path) -> list[str]:
    """The container's argv: override or definition command, `Ref::name` substituted, python → the image's."""
    command = [str(part) for part in (overrides.get("command") or props.get("command") or [])]
    if not command:
        raise ValueError("the job has no command (the image's CMD cannot be run locally)")
    command = [parameters.get(part[len("Ref::"):], part) if part.startswith("Ref::") else part for part in command]
    if command[0] in ("python", "python3"):
        command[0] = str(python)
    return command


def _pump(pipe: IO[bytes] | None, write: Callable[[str], None], tail: deque[str] | None) -> None:
    assert pipe is not None
    for raw in iter(pipe.readline, b""):
        line = raw.decode("utf-8", errors="replace").rstrip("\n")
        if tail is not None:
            tail.append(line)
        write(line)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------------------------------------
# Creating the template's Batch resources (called by kaos.local.loader.TemplateLoader.load)
# ---------------------------------------------------------------------------------------------

BATCH_SERVICE_ROLE: Final[str] = "AWSServiceRoleForBatch"
# Keys whose values are free-form maps (their keys are not API member names).
_FREE_FORM: Final[frozenset[str]] = frozenset({"Options", "Parameters", "Tags"})


def api_casing(value: Any) -> Any:
    """CloudFormation's PascalCase property names → the Batch API's camelCase (maps like Options left alone)."""
    if isinstance(value, list):
        return [api_casing(v) for v in value]
    if not isinstance(value, dict):
        return value
    return {key[:1].lower() + key[1:]: (item if key in _FREE_FORM else api_casing(item)) for key, item in value.items()}


def _default_network(account: str, region: str) -> tuple[list[str], str]:
    """The default VPC's subnets and its default security group, read from moto's EC2 in this process: an EC2
    client would load EC2's service model (~0.2 CPU-s and 16 MB of the stack's start) for these two lookups."""
    from moto.ec2.models import ec2_backends

    ec2 = ec2_backends[account][region]
    subnets = [subnet.id for subnet in ec2.describe_subnets(filters={"default-for-az": ["true"]})]
    return subnets, ec2.describe_security_groups(groupnames=["default"])[0].id


def create_batch_resources(resources: dict[str, Any], resolver: Any, client: Callable[[str], Any], account: str,
                           region: str) -> None:
    """Creates compute environments, job queues and job definitions under the loader's physical names.

    moto validates networking against its own EC2, so compute environments use the default VPC's subnets and
    security group instead of the template's VPC (nothing offline depends on them); Fargate environments need
    no instance role, and the service-linked role they use on AWS is created as a plain role."""
    kinds = ("AWS::Batch::ComputeEnvironment", "AWS::Batch::JobQueue", "AWS::Batch::JobDefinition")
    if not any(r["Type"] in kinds for r in resources.values()):
        return
    batch = client("batch")
    for logical_id, resource in resources.items():
        props = resource.get("Properties", {})
        name = resolver.names[logical_id]
        if resource["Type"] == "AWS::Batch::ComputeEnvironment":
            subnets, group = _default_network(account, region)
            role = iam.template_role(BATCH_SERVICE_ROLE, "/", "{}")
            compute = api_casing(resolver.resolve({k: v for k, v in props["ComputeResources"].items()
                                                   if k not in ("Subnets", "SecurityGroupIds")}))
            _created(
                batch.create_compute_environment,
                computeEnvironmentName=name, type=str(props.get("Type", "MANAGED")).upper(),
                state=props.get("State", "ENABLED"), serviceRole=role,
                computeResources={**compute, "subnets": subnets, "securityGroupIds": [group]},
            )
    for logical_id, resource in resources.items():
        if resource["Type"] == "AWS::Batch::JobQueue":
            props = resource["Properties"]
            order = [{"order": e["Order"], "computeEnvironment": _logical_name(e["ComputeEnvironment"], resolver)}
                     for e in props["ComputeEnvironmentOrder"]]
            _created(
                batch.create_job_queue,
                jobQueueName=resolver.names[logical_id], state=props.get("State", "ENABLED"),
                priority=props.get("Priority", 1), computeEnvironmentOrder=order,
            )
        elif resource["Type"] == "AWS::Batch::JobDefinition":
            props = api_casing(resolver.resolve(resource["Properties"]))
            kwargs = {k: props[k] for k in ("containerProperties", "parameters", "platformCapabilities",
                                            "retryStrategy", "timeout", "propagateTags") if k in props}
            batch.register_job_definition(jobDefinitionName=resolver.names[logical_id], type=props["type"],
                                          **kwargs)


def _logical_name(reference: Any, resolver: Any) -> str:
    """`{"Ref": id}` or `{"Fn::GetAtt": [id, "...Arn"]}` of a Batch resource → its physical name."""
    if isinstance(reference, dict):
        (key, arg), = reference.items()
        logical_id = arg if key == "Ref" else (arg[0] if isinstance(arg, list) else arg.split(".", 1)[0])
        return str(resolver.names[logical_id])
    return str(reference)


def _created(call: Callable[..., Any], **kwargs: Any) -> None:
    """Creating what a previous start of the same state already created is not an error."""
    try:
        call(**kwargs)
    except Exception as exc:
        message = str(exc)
        if "already exists" not in message:
            raise
