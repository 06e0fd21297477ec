"""The embedded stack as a process of this machine: the command that runs it, a busy port said before starting,
starting it in the background and waiting until it answers, stopping it. Every wait has a deadline."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from kaos.client import ApiError
from kaos.local.state_dir import Runtime

STARTUP_TIMEOUT_SECONDS = 600  # the first start synthesizes the CDK app
STOP_TIMEOUT_SECONDS = 30
POLL_SECONDS = 0.2
# The start is waited for more closely: its end is what `local up` reports, and a stack starts in ~2.5 s (one small
# file read per look).
START_POLL_SECONDS = 0.02


def alive(pid: int) -> bool:
    """Whether the process runs. A zombie (exited, not yet reaped) does not: a detached stack's parent is init,
    which may reap it seconds after its exit (this sandbox's init took 2 s), and `local down` waited for that."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no procfs (macOS): the signal check is all there is


def running(directory: Path) -> Runtime | None:
    runtime = Runtime.read(directory)
    return runtime if runtime and alive(runtime.pid) else None


def check_port(port: int) -> None:
    """A busy port is said at once, not as a traceback tail after the stack's start-up."""
    if not port:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise ApiError(0, "PortInUse", f"port {port} on 127.0.0.1 is in use ({exc.strerror}); choose another "
                                           "with --port, or leave --port out for a free one") from None


def command(directory: Path, port: int, quiet: bool) -> list[str]:
    return [sys.executable, "-m", "kaos.local.stack", str(directory), str(port), *(["--quiet"] if quiet else [])]


def start_detached(directory: Path, port: int, quiet: bool, timeout: float = STARTUP_TIMEOUT_SECONDS) -> Runtime:
    """Starts the stack in its own session (it outlives this process) and returns once it has written its runtime
    file, i.e. once the API answers."""
    os.umask(0o077)  # the state dir, its log and pid file are this user's only (the stack keeps the umask)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_path = directory / "stack.log"
    (directory / "runtime.json").unlink(missing_ok=True)
    with log_path.open("w") as log:
        child = subprocess.Popen(command(directory, port, quiet), stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    (directory / "stack.pid").write_text(str(child.pid))
    deadline = time.monotonic() + timeout
    while (runtime := Runtime.read(directory)) is None:
        if child.poll() is not None:
            tail = log_path.read_text().strip().splitlines()[-1:]
            raise ApiError(0, "StackExited", f"the stack exited with {child.returncode}: {' '.join(tail)} "
                                             f"(log: {log_path})")
        if time.monotonic() > deadline:
            raise ApiError(0, "StackTimeout", f"the stack did not answer within {timeout:.0f} s (log: {log_path})")
        time.sleep(START_POLL_SECONDS)
    return runtime


def stop(directory: Path, timeout: float = STOP_TIMEOUT_SECONDS) -> bool:
    """SIGTERM, then SIGKILL after the timeout; False when no stack was running."""
    runtime = Runtime.read(directory)
    pid_file = directory / "stack.pid"
    pid = runtime.pid if runtime else (int(pid_file.read_text()) if pid_file.exists() else 0)
    if not pid or not alive(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS / 2)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
    return True
