"""The embedded stack ends promptly: on SIGTERM (`kaos local down`), also in the middle of its start, and when the
process it was started for (PARENT_PID_ENV: the test session) ends, so a killed test run leaves no stack behind.
(tests/test_persistence.py times `kaos local down` of stacks that ran jobs.)"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaos.local.stack import PARENT_PID_ENV, STOP_SECONDS, watch_process
from kaos.processes import alive

from .conftest import stack_environment


def _wait(condition: object, timeout: float, what: str) -> float:
    """Seconds until `condition()` held; fails after `timeout`."""
    started = time.monotonic()
    while not condition():  # type: ignore[operator]
        assert time.monotonic() - started < timeout, f"{what} after {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture
def parent() -> Iterator[subprocess.Popen[bytes]]:
    """A stand-in for the test session the stack belongs to."""
    process = subprocess.Popen(["sleep", "600"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def test_an_exited_process_is_not_alive_before_it_is_reaped() -> None:
    """`local down` waits for the stack to end: a zombie (exited, its parent has not reaped it yet, as init may take
    seconds to) has ended."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert alive(child.pid)  # waiting for its input
        assert child.stdin is not None
        child.stdin.close()  # it reads the end and exits; nobody reaps it until child.wait()
        _wait(lambda: Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", 30,
              "the child to exit")
        assert not alive(child.pid)  # the zombie is still there, unreaped
    finally:
        child.wait()
    assert not alive(child.pid)
    assert alive(os.getpid())


def test_watch_process_reports_the_end_of_a_process(parent: subprocess.Popen[bytes]) -> None:
    gone = threading.Event()
    watch_process(parent.pid, gone.set)
    assert not gone.wait(0.3)
    parent.kill()
    parent.wait()
    assert gone.wait(5)


def _start(home: Path, parent_pid: int) -> subprocess.Popen[bytes]:
    env = {**stack_environment(home), PARENT_PID_ENV: str(parent_pid)}
    return subprocess.Popen([sys.executable, "-m", "kaos.local.stack", str(home / "local"), "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _starting(home: Path, parent_pid: int) -> subprocess.Popen[bytes]:
    """A stack whose start is under way (its first step makes the state dir), far from ready."""
    stack = _start(home, parent_pid)
    _wait(lambda: (home / "local" / "work").exists() or stack.poll() is not None, 120,
          "the stack never began its start")
    assert stack.poll() is None, "the stack exited at once"
    return stack


def test_sigterm_during_the_start_ends_it(tmp_path: Path, parent: subprocess.Popen[bytes]) -> None:
    stack = _starting(tmp_path / "home", parent.pid)
    try:
        stack.send_signal(signal.SIGTERM)
        stack.wait(STOP_SECONDS)
        assert not (tmp_path / "home" / "local" / "runtime.json").exists()
    finally:
        stack.kill()
        stack.wait()


def test_the_stack_ends_with_the_process_it_was_started_for(tmp_path: Path,
                                                             parent: subprocess.Popen[bytes]) -> None:
    stack = _starting(tmp_path / "home", parent.pid)
    try:
        parent.kill()
        parent.wait()
        stack.wait(STOP_SECONDS)
    finally:
        stack.kill()
        stack.wait()


def test_a_busy_port_fails_at_once_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "kaos.local.stack", str(tmp_path / "local"), str(port)],
                                env=stack_environment(tmp_path), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert time.monotonic() - started < 15  # the interpreter's start and imports; no emulator, no synth
    assert result.stderr.strip().splitlines() == [
        f"kaos local up: port {port} on 127.0.0.1 is in use: choose another with --port, or stop what listens there"]
    assert not (tmp_path / "local" / "runtime.json").exists()
