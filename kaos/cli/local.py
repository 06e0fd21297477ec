"""`kaos local up|status|down`: the embedded offline stack (kaos.local) as a foreground or background process."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import typer

from kaos.cli.common import JsonOpt, console, emit_json, fail
from kaos.cli.progress import status_line
from kaos.settings import ClientConfig, home

app = typer.Typer(help="Run the embedded offline stack on this machine.", no_args_is_help=True)
StateDirOpt = typer.Option(None, "--state-dir",
                           help="Where the embedded stack keeps its state (default: the last one `up` used, "
                                "else $KAOS_HOME/local).")
STARTUP_TIMEOUT_SECONDS = 600  # the first start synthesizes the CDK app
STOP_TIMEOUT_SECONDS = 30


def _state_dir(state_dir: Path | None) -> Path:
    remembered = ClientConfig.load().state_dir
    return (state_dir or (Path(remembered) if remembered else home() / "local")).resolve()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _check_port(port: int) -> None:
    """A busy port is said at once, not as a traceback tail after the stack's start-up."""
    if not port:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            fail(f"port {port} on 127.0.0.1 is in use ({exc.strerror}); choose another with --port, "
                 "or leave --port out for a free one")


def _stack_command(directory: Path, port: int, quiet: bool) -> list[str]:
    return [sys.executable, "-m", "kaos.local.stack", str(directory), str(port), *(["--quiet"] if quiet else [])]


def _remember(directory: Path) -> None:
    """The client targets the local stack from now on (the stack writes its URL and profile when it is ready)."""
    config = ClientConfig.load()
    if config.target != "local":
        config.switch("local", config.targets.get("local", {}))
    config.state_dir = str(directory) if directory != (home() / "local").resolve() else ""
    config.save()


@app.command("up")
def local_up(state_dir: Path | None = StateDirOpt,
             detach: bool = typer.Option(False, "--detach", help="Run in the background; return when ready."),
             port: int = typer.Option(0, "--port", help="API port (default: a free one)."),
             quiet: bool = typer.Option(False, "--quiet", help="Foreground: print no request lines."),
             test_hooks: bool = typer.Option(False, "--test-hooks", hidden=True,
                                             help="Serve /_local/faults to a local admin user (the test suite).")
             ) -> None:
    """Start the embedded stack: AWS emulator, pipelines, Lambdas and the API on 127.0.0.1."""
    from kaos.local.stack import TEST_HOOKS_ENV, Runtime

    if test_hooks:  # the stack process reads it from its environment
        os.environ[TEST_HOOKS_ENV] = "1"
    directory = (state_dir.resolve() if state_dir else _state_dir(None))
    running = Runtime.read(directory)
    if running and _alive(running.pid):
        console.print(f"already running: API {running.api_url} (pid {running.pid})")
        return
    _check_port(port)
    (directory / "runtime.json").unlink(missing_ok=True)
    _remember(directory)
    if not detach:
        # The stack replaces this process, so Ctrl-C and SIGTERM reach it directly.
        os.execv(sys.executable, _stack_command(directory, port, quiet))
    os.umask(0o077)  # the state dir, its log and pid file are this user's only (the stack keeps the umask)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with (directory / "stack.log").open("w") as log:
        child = subprocess.Popen(_stack_command(directory, port, quiet=True), stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    (directory / "stack.pid").write_text(str(child.pid))
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    with status_line("starting the embedded stack (the first start synthesizes the CDK app)"):
        while (runtime := Runtime.read(directory)) is None:
            if child.poll() is not None:
                tail = (directory / "stack.log").read_text().strip().splitlines()[-1:]
                fail(f"the stack exited with {child.returncode}: {' '.join(tail)} (log: {directory / 'stack.log'})")
            if time.monotonic() > deadline:
                fail(f"the stack did not answer within {STARTUP_TIMEOUT_SECONDS} s (log: {directory / 'stack.log'})")
            time.sleep(0.2)
    console.print(f"kaos local stack ready: API {runtime.api_url} (pid {child.pid}); `{_down_command(directory)}` "
                  "stops it", markup=False)


def _down_command(directory: Path) -> str:
    default = directory == (home() / "local").resolve()
    return "kaos local down" + ("" if default else f" --state-dir {directory}")


@app.command("status")
def local_status(state_dir: Path | None = StateDirOpt, as_json: bool = JsonOpt) -> None:
    """Say whether the embedded stack is running and where."""
    from kaos.local.stack import Runtime

    directory = _state_dir(state_dir)
    runtime = Runtime.read(directory)
    status = {"running": bool(runtime and _alive(runtime.pid)), **(runtime.__dict__ if runtime else {})}
    if as_json:
        return emit_json(status)
    if not status["running"]:
        fail(f"the embedded stack ({directory}) is not running; start it with `kaos local up --detach`")
    console.print(f"running: API {status['api_url']}, AWS emulator {status['endpoint_url']}, pid {status['pid']}",
                  markup=False)
    return None


@app.command("down")
def local_down(state_dir: Path | None = StateDirOpt) -> None:
    """Stop the embedded stack started with --detach."""
    from kaos.local.stack import Runtime

    directory = _state_dir(state_dir)
    runtime = Runtime.read(directory)
    pid_file = directory / "stack.pid"
    pid = runtime.pid if runtime else (int(pid_file.read_text()) if pid_file.exists() else 0)
    if not pid or not _alive(pid):
        console.print("the embedded stack is not running")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    console.print("stopped")
