"""What a job's process starts with offline: the container's basics and its role's keys, nothing of the stack's.

A SageMaker training container or a Batch (Fargate) task sees the image's environment, the variables the
service sets, and its role's credentials. The offline runners start from :func:`container_base_environment` —
never from ``os.environ``, which holds the stack's own credentials and the client's ``KAOS_HOME``.
"""
from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

# How long a runner's stop_all waits, in total, for the threads of the jobs it killed to finish (their uploads):
# a stop of the stack never waits a long time per job.
STOP_WAIT_SECONDS = 3.0
# (role ARN, service principal) -> AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN of the role.
RoleKeys = Callable[[str, str], dict[str, str]]


def anonymous_keys(role_arn: str, service: str) -> dict[str, str]:
    """Keys for an emulator that does not enforce IAM (unit tests of the runners): accepted, identify no one."""
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def container_base_environment(home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return {
        # The image's interpreter is this one offline (issue: environments that match the cloud).
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
    }


# The copy of a job's output the runners keep beside its working files (the product reads CloudWatch).
LOG_COPY = "log.txt"


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
