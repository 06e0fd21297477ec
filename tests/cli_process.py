"""`kaos` command processes for the tests, forked from a warm parent instead of started cold.

A cold `python -m kaos.cli` spends ~0.3 CPU-s importing botocore, requests, typer, rich and kaos before it parses its
arguments (bytecode compiled), and more tearing that heap down at exit; the suite starts ~400 of them. One server
process per test worker imports all of it once and forks a child per command. The child is a new process as far as the
command can tell: it takes the caller's environment, working directory and output files, runs `kaos.cli` as `python
-m` would and exits with the command's code. `run` returns what subprocess.run would.

kaos is preloaded only because it reads nothing of the environment at import (the server checks that and refuses to
start otherwise): its settings, credentials and endpoints are read when a command runs, in the child. rich's consoles,
built when kaos.cli is imported, decide a fixed width (COLUMNS), colour and interactivity from the environment at
that moment, so the server drops those variables first: without them a console reads the width from the command's
own environment when it prints, and colour is off because the child's output is a file, as it is in the server.

Frames on the socket: the request is one JSON line; the child answers its pid, then its exit code, then closes.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T", str, bytes)

# What every command imports before it reads its arguments (python -X importtime -m kaos.cli workspace list).
PRELOAD = ("botocore.session", "botocore.auth", "botocore.awsrequest", "requests", "typer",
           "typer.main", "rich.console", "rich.table", "rich.progress", "rich.tree", "importlib.metadata",
           "concurrent.futures", "tomllib", "netrc", "webbrowser")
# What rich.console.Console reads from the environment when it is built (rather than when it prints).
CONSOLE_ENVIRONMENT = ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TTY_INTERACTIVE", "TTY_COMPATIBLE", "TERM",
                       "COLORTERM", "JUPYTER_COLUMNS", "JUPYTER_LINES")


def _preload_kaos() -> None:
    from kaos.local.lambda_runtime import import_watching_environment

    for name in CONSOLE_ENVIRONMENT:
        os.environ.pop(name, None)
    touched = import_watching_environment(["kaos.cli"])
    if touched:
        raise RuntimeError(f"importing kaos.cli touched {sorted(touched)} of the environment: a kaos "
                           "preloaded in the server would keep the server's values, so it cannot be preloaded")


def _child(connection: socket.socket, request: dict[str, object]) -> int:
    """Runs in the forked child: becomes the command's process and returns its exit code once the command's
    threads and exit handlers have run and its output is flushed."""
    import runpy
    import signal

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the server lets the kernel reap; the command waits for its own
    connection.sendall(f"{os.getpid()}\n".encode())
    cwd = str(request["cwd"])
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in dict(request["env"]).items()})  # type: ignore[call-overload]
    for fd, path, mode in ((0, request["stdin"], os.O_RDONLY), (1, request["stdout"], os.O_WRONLY),
                           (2, request["stderr"], os.O_WRONLY)):
        opened = os.open(str(path), mode)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin, sys.stdout, sys.stderr = (open(0, closefd=False), open(1, "w", closefd=False),
                                         open(2, "w", closefd=False))
    sys.argv = ["kaos", *[str(arg) for arg in request["args"]]]  # type: ignore[attr-defined]
    sys.path[0] = cwd  # as `python -m` puts the working directory first
    code = 0
    try:
        runpy.run_module("kaos.cli", run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        if exit_.code is None:
            code = 0
        elif isinstance(exit_.code, int):
            code = exit_.code
        else:
            sys.stderr.write(f"{exit_.code}\n")
            code = 1
    except BaseException:  # what the interpreter would print for an uncaught exception, and its exit code
        import traceback

        traceback.print_exc()
        code = 1
    # What the interpreter does at exit before it tears the heap down: wait for the command's non-daemon threads
    # (and thread pools), then run its atexit handlers. The teardown itself is skipped (os._exit in serve): it
    # frees every object the server preloaded, which in a forked child copies most of the inherited pages.
    # kaos closes the files it writes (`with`), so no buffered write waits for that teardown.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def serve(path: str) -> int:
    """The server: preloads, then forks one child per request until its parent closes its stdin."""
    import importlib
    import select
    import signal

    for name in PRELOAD:
        importlib.import_module(name)
    _preload_kaos()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # no zombies: the kernel reaps the children
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        readable, _, _ = select.select([server, sys.stdin], [], [])
        if sys.stdin in readable:  # the test worker is gone (or closed us): so are we
            return 0
        connection, _ = server.accept()
        with connection.makefile("rb") as lines:
            request = json.loads(lines.readline())
        if os.fork() == 0:
            server.close()
            code = _child(connection, request)
            connection.sendall(f"{code}\n".encode())
            os._exit(code)
        connection.close()


class _Server:
    """This test process's server, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._path = ""

    def address(self) -> str:
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                folder = tempfile.mkdtemp(prefix="kaos-cli-")
                atexit.register(shutil.rmtree, folder, True)
                self._path = os.path.join(folder, "socket")
                self._process = subprocess.Popen(
                    [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                     f"import cli_process; sys.exit(cli_process.serve({self._path!r}))"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                assert self._process.stdout is not None and self._process.stdout.readline() == b"ready\n"
                atexit.register(self._process.kill)
            return self._path


_SERVER = _Server()


def run(args: Sequence[str], env: Mapping[str, str], timeout: float, cwd: str | Path | None = None,
        input: str | bytes | None = None) -> subprocess.CompletedProcess[str]:  # same names as subprocess.run
    """`subprocess.run([python, "-m", "kaos.cli", *args], env=env, cwd=cwd, input=input, capture_output=True,
    text=True, timeout=timeout)`, from a warm fork."""
    return _run(args, env, timeout, cwd, input, lambda path: path.read_text())


def run_bytes(args: Sequence[str], env: Mapping[str, str], timeout: float, input: bytes = b""
              ) -> subprocess.CompletedProcess[bytes]:
    """`run` with binary input and output (text=False)."""
    return _run(args, env, timeout, None, input, lambda path: path.read_bytes())


def _run(args: Sequence[str], env: Mapping[str, str], timeout: float, cwd: str | Path | None,
         stdin: str | bytes | None, read: Callable[[Path], T]) -> subprocess.CompletedProcess[T]:
    with tempfile.TemporaryDirectory(prefix="kaos-cli-run-") as scratch:
        out, err, given = Path(scratch, "stdout"), Path(scratch, "stderr"), Path(scratch, "stdin")
        out.touch()
        err.touch()
        given.write_bytes(stdin.encode() if isinstance(stdin, str) else stdin or b"")
        request = {"args": list(args), "env": dict(env), "cwd": str(cwd or os.getcwd()), "stdin": str(given),
                   "stdout": str(out), "stderr": str(err)}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.connect(_SERVER.address())
            connection.sendall(json.dumps(request).encode() + b"\n")
            answer = b""
            pid = None
            deadline = time.monotonic() + timeout
            try:
                while True:
                    connection.settimeout(max(deadline - time.monotonic(), 0.001))
                    if not (chunk := connection.recv(64)):
                        break
                    answer += chunk
                    if pid is None and b"\n" in answer:
                        pid = int(answer.split(b"\n", 1)[0])
            except TimeoutError:
                if pid is not None:
                    os.kill(pid, 9)
                raise subprocess.TimeoutExpired(["kaos", *args], timeout, read(out), read(err)) from None
        lines = answer.decode().split()
        code = int(lines[1]) if len(lines) > 1 else -9  # no code: the process was killed
        return subprocess.CompletedProcess(["kaos", *args], code, read(out), read(err))
