"""The embedded stack ends promptly: on SIGTERM (`kaos local down`), on SIGINT, and when the process it was
started for (PARENT_PID_ENV: the test session) ends, even with a training running — a killed test run leaves no
stack (or job) behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaos.local.stack import PARENT_PID_ENV, STOP_SECONDS, watch_process

from .conftest import TEMPLATE, Stack, stack_environment, tiny_code


def _wait(condition: object, timeout: float, what: str) -> float:
    """Seconds until `condition()` held; fails after `timeout`."""
    started = time.monotonic()
    while not condition():  # type: ignore[operator]
        assert time.monotonic() - started < timeout, f"{what} after {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - started


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def parent() -> Iterator[subprocess.Popen[bytes]]:
    """A stand-in for the test session the stack belongs to."""
    process = subprocess.Popen(["sleep", "600"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


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


def test_sigterm_during_the_start_ends_it(tmp_path: Path, parent: subprocess.Popen[bytes]) -> None:
    stack = _start(tmp_path / "home", parent.pid)
    try:
        # The start is under way (its first step makes the state dir), far from ready.
        _wait(lambda: (tmp_path / "home" / "local" / "work").exists(), 120, "the stack never began its start")
        stack.send_signal(signal.SIGTERM)
        stack.wait(STOP_SECONDS)
        assert not (tmp_path / "home" / "local" / "runtime.json").exists()
    finally:
        stack.kill()
        stack.wait()


def test_the_stack_and_its_jobs_end_with_the_process_it_was_started_for(
        tmp_path: Path, parent: subprocess.Popen[bytes]) -> None:
    home = tmp_path / "home"
    process = _start(home, parent.pid)
    try:
        _wait(lambda: (home / "local" / "runtime.json").exists() or process.poll() is not None, 600,
              "the stack never became ready")
        assert process.poll() is None, "the stack exited during its start"
        stack = Stack(home)
        stack.kaos("workspace", "create", "lifecycle")
        code = tiny_code(tmp_path, "print('started', flush=True)\ntime.sleep(600)")
        stack.kaos("train", "deploy", "-s", str(code), "-d", str(TEMPLATE / "data"), "-w", "lifecycle")
        _wait(lambda: _training_pids(home), 120, "the training never started")
        training = _training_pids(home)
        parent.kill()
        parent.wait()
        _wait(lambda: process.poll() is not None, STOP_SECONDS + 5, "the stack outlived its parent")
        assert process.returncode == 0
        assert not any(_alive(pid) for pid in training), "a training outlived the stack"
        assert not (home / "local" / "runtime.json").exists()
    finally:
        process.kill()
        process.wait()


def _training_pids(home: Path) -> list[int]:
    """The stack's training processes: those whose working directory is a job's code folder."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd.startswith(str(home / "local" / "work" / "jobs")):
            pids.append(int(entry.name))
    return pids
