"""`kaos local up|status|down`: the embedded offline stack (kaos.local) in the foreground or in the background."""
from __future__ import annotations

import os
import shlex
from pathlib import Path

import typer

from kaos.cli.common import JsonOpt, console, emit_json, fail
from kaos.cli.progress import status_line
from kaos.settings import ClientConfig, home

app = typer.Typer(help="Run the embedded offline stack on this machine.", no_args_is_help=True)
StateDirOpt = typer.Option(None, "--state-dir",
                           help="Where the embedded stack keeps its state (default: the last one `up` used, "
                                "else $KAOS_HOME/local).")


def _default() -> Path:
    return (home() / "local").resolve()


def _state_dir(state_dir: Path | None) -> Path:
    remembered = ClientConfig.load().state_dir
    return (state_dir or (Path(remembered) if remembered else _default())).resolve()


def _state_option(directory: Path) -> str:
    """The --state-dir a suggested command needs to reach this stack (none for the default one)."""
    return "" if directory == _default() else f" --state-dir {shlex.quote(str(directory))}"


def _remember(directory: Path) -> None:
    """The client targets the local stack from now on (the stack writes its URL and profile when it is ready)."""
    config = ClientConfig.load()
    if config.target != "local":
        config.switch("local", config.targets.get("local", {}))
    config.state_dir = "" if directory == _default() else str(directory)
    config.save()


@app.command("up")
def local_up(state_dir: Path | None = StateDirOpt,
             detach: bool = typer.Option(False, "--detach", help="Run in the background; return when ready."),
             port: int = typer.Option(0, "--port", help="API port (default: a free one)."),
             quiet: bool = typer.Option(False, "--quiet", help="Print no line per request."),
             training_slots: int | None = typer.Option(None, "--training-slots", min=1,
                                                       help="Trainings run at once (default: this machine's cores)."),
             test_hooks: bool = typer.Option(False, "--test-hooks", hidden=True,
                                             help="Serve /_local/faults to a local admin user (the test suite).")
             ) -> None:
    """Start the embedded stack: AWS emulator, pipelines, Lambdas and the API on 127.0.0.1."""
    from kaos import processes
    from kaos.local.state_dir import TEST_HOOKS_ENV, TRAINING_SLOTS_ENV, StateDirInUse, lock_state_dir

    if test_hooks:  # the stack process reads it from its environment
        os.environ[TEST_HOOKS_ENV] = "1"
    if training_slots is not None:  # likewise
        os.environ[TRAINING_SLOTS_ENV] = str(training_slots)
    directory = state_dir.resolve() if state_dir else _state_dir(None)
    if runtime := processes.running(directory):
        console.print(f"already running: API {runtime.api_url} (pid {runtime.pid})", markup=False)
        return
    if directory.is_dir():
        try:  # a stack still starting (it has no runtime.json yet), or one whose runtime.json is gone
            lock_state_dir(directory, hold=False)
        except StateDirInUse as exc:
            fail(str(exc))
    processes.check_port(port)
    _remember(directory)
    if not detach:
        # The stack replaces this process, so Ctrl-C and SIGTERM reach it directly.
        (directory / "runtime.json").unlink(missing_ok=True)
        command = processes.command(directory, port, quiet)
        os.execv(command[0], command)
    with status_line("starting the embedded stack (the first start synthesizes the CDK app)"):
        runtime = processes.start_detached(directory, port, quiet)
    console.print(f"kaos local stack ready: API {runtime.api_url} (pid {runtime.pid}); "
                  f"`kaos local down{_state_option(directory)}` stops it", markup=False)


@app.command("status")
def local_status(state_dir: Path | None = StateDirOpt, as_json: bool = JsonOpt) -> None:
    """Say whether the embedded stack is running and where."""
    from kaos import processes

    directory = _state_dir(state_dir)
    runtime = processes.running(directory)
    if as_json:
        return emit_json({"running": runtime is not None, **(runtime.__dict__ if runtime else {})})
    if runtime is None:
        fail(f"the embedded stack ({directory}) is not running; start it with "
             f"`kaos local up --detach{_state_option(directory)}`")
    console.print(f"running: API {runtime.api_url}, AWS emulator {runtime.endpoint_url}, pid {runtime.pid}",
                  markup=False)
    return None


@app.command("down")
def local_down(state_dir: Path | None = StateDirOpt) -> None:
    """Stop the embedded stack started with --detach."""
    from kaos import processes

    console.print("stopped" if processes.stop(_state_dir(state_dir)) else "the embedded stack is not running")

