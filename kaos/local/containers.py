"""What a job's process starts with offline: the container's basics and its role's keys, nothing of the stack's.

A SageMaker training container or a Batch (Fargate) task sees the image's environment, the variables the
service sets, and its role's credentials. The offline runners start from :func:`container_base_environment` —
never from ``os.environ``, which holds the stack's own credentials and the client's ``KAOS_HOME``.
"""
from __future__ import annotations

import logging
import shutil
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

# How long a runner's stop_all waits, in total, for the threads of the jobs it killed to finish (their uploads):
# a stop of the stack never waits a long time per job.
STOP_WAIT_SECONDS = 3.0
# (role ARN, service principal) -> AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN of the role.
RoleKeys = Callable[[str, str], dict[str, str]]


def anonymous_keys(role_arn: str, service: str) -> dict[str, str]:
    """Keys for an emulator that does not enforce IAM (unit tests of the runners): accepted, identify no one."""
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def container_base_environment(home: Path, python: Path) -> dict[str, str]:
    """`python` is the image's interpreter offline (kaos.local.environments.Environments.ensure): its folder leads
    PATH, so `python` and the scripts of its packages are the image's, never kaos's."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return {
        "PATH": f"{python.parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
    }


# The copy of a job's output the runners keep beside its working files (the product reads CloudWatch).
LOG_COPY = "log.txt"


def extract_private(archive: Path, target: Path) -> None:
    """Extracts a job's or endpoint's archive owner-only, whatever modes it carries: the files are its workspace's,
    and tarfile's "data" filter keeps group and other read."""
    def private(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
        member = tarfile.data_filter(member, path)
        return member if member.mode is None else member.replace(mode=member.mode & 0o700, deep=False)

    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tarfile.open(archive, "r:*") as tar:
        tar.extractall(target, filter=private)


def clear_job_folder(root: Path, keep_log: bool) -> None:
    """Removes what a job left in its working folder when it ends: inputs, code, outputs (hundreds of MB; what the
    product keeps is in S3 by then). The log copy (kilobytes) stays unless `keep_log` is false: a job stopped by
    request (a workspace kill) leaves nothing."""
    if not root.exists():
        return
    for entry in root.iterdir():
        if keep_log and entry.name == LOG_COPY:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    if not keep_log:
        root.rmdir()


class LogShipper:
    """A job's output, as its log driver ships it: PutLogEvents batches (every FLUSH_SECONDS, or FLUSH_LINES lines)
    into `group`/`stream`, in order, each line also appended to a local copy file. The stream is created here;
    the group too when `create_group` (SageMaker makes its group; Batch's awslogs driver writes into the group the
    job definition names, which CDK created)."""

    FLUSH_SECONDS = 0.5
    FLUSH_LINES = 100

    def __init__(self, logs: Any, group: str, stream: str, copy_to: Path, *, create_group: bool = False) -> None:
        self._logs, self._group, self._stream = logs, group, stream
        if create_group:
            try:
                logs.create_log_group(logGroupName=group)
            except logs.exceptions.ResourceAlreadyExistsException:
                pass
        try:
            logs.create_log_stream(logGroupName=group, logStreamName=stream)
        except logs.exceptions.ResourceAlreadyExistsException:
            pass
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._last_ts = 0
        self._closed = threading.Event()
        self._copy = open(copy_to, "w", encoding="utf-8")  # closed in close()
        self._thread = threading.Thread(target=self._loop, name=f"logs-{stream}", daemon=True)
        self._thread.start()

    def write(self, text: str) -> None:
        """One event per non-empty line of `text`; every line, empty ones too, goes to the local copy."""
        for line in text.splitlines() or [""]:
            with self._lock:
                self._copy.write(line + "\n")
                self._copy.flush()
                # CloudWatch orders a stream's events by timestamp: never earlier than the previous one.
                self._last_ts = max(int(time.time() * 1000), self._last_ts)
                # CloudWatch refuses an empty message (and with it the whole batch); the log drivers skip them.
                if line:
                    self._pending.append({"timestamp": self._last_ts, "message": line})
                flush_now = len(self._pending) >= self.FLUSH_LINES
            if flush_now:
                self._flush()

    def _flush(self) -> None:
        with self._lock:  # held while shipping, so batches arrive in order
            batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                self._logs.put_log_events(logGroupName=self._group, logStreamName=self._stream, logEvents=batch)
            except Exception:  # a job's output is not worth failing the job for (the driver drops it too)
                LOG.exception("could not ship %d log lines to %s", len(batch), self._stream)

    def _loop(self) -> None:
        while not self._closed.wait(self.FLUSH_SECONDS):
            self._flush()

    def close(self) -> None:
        """Ships what is pending and closes the copy (idempotent)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._thread.join()
        self._flush()
        self._copy.close()
