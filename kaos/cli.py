"""The kaos command line: parses, calls kaos.client, renders. No business rules live here."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.tree import Tree

from kaos.bundle import BundleError, hash_files, scan
from kaos.cli_templates import template_app
from kaos.client import ApiError, Client, load_params
from kaos.settings import ClientConfig

app = typer.Typer(help="kaos: incremental, reproducible ML training on serverless AWS (or offline).",
                  no_args_is_help=True)
workspace_app = typer.Typer(help="Create, list, inspect and delete workspaces.", no_args_is_help=True)
train_app = typer.Typer(help="Deploy and inspect training jobs.", no_args_is_help=True)
local_app = typer.Typer(help="Run the embedded offline stack on this machine.", no_args_is_help=True)
app.add_typer(workspace_app, name="workspace")
app.add_typer(train_app, name="train")
app.add_typer(local_app, name="local")
app.add_typer(template_app, name="template")

console = Console()
err = Console(stderr=True)
TERMINAL = ("COMPLETED", "FAILED", "KILLED")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON.")
WorkspaceOpt = typer.Option(None, "--workspace", "-w", help="Workspace (default: the current one).")


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _client() -> Client:
    try:
        return Client(ClientConfig.load())
    except ApiError as exc:
        _fail(exc.message)
        raise


def _call(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except ApiError as exc:
        _fail(f"{exc.message} ({exc.code})")
    except BundleError as exc:
        _fail(str(exc))


def _workspace(name: str | None) -> str:
    chosen = name or ClientConfig.load().workspace
    if not chosen:
        _fail("no workspace given: pass -w NAME or run `kaos workspace create NAME`")
    return str(chosen)


def _emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


# --- workspace ------------------------------------------------------------------------------------------
@workspace_app.command("create")
def workspace_create(name: str) -> None:
    """Create a workspace and make it the current one."""
    created = _call(lambda: _client().create_workspace(name))
    config = ClientConfig.load()
    config.workspace = created["name"]
    config.save()
    console.print(f"workspace [bold]{created['name']}[/] ready (current)")


@workspace_app.command("list")
def workspace_list(as_json: bool = JsonOpt) -> None:
    """List the workspaces you are a member of."""
    rows = _call(lambda: _client().workspaces())
    if as_json:
        return _emit_json(rows)
    current = ClientConfig.load().workspace
    table = Table("", "name", "owner", "created")
    for row in rows:
        table.add_row("*" if row["name"] == current else "", row["name"], row["owner"], row["created_at"])
    console.print(table)


@workspace_app.command("info")
def workspace_info(name: str | None = typer.Argument(None), as_json: bool = JsonOpt) -> None:
    """Show a workspace with its counts of snapshots, jobs and members."""
    info = _call(lambda: _client().workspace(_workspace(name)))
    if as_json:
        return _emit_json(info)
    table = Table(show_header=False)
    for key in ("name", "owner", "created_at", "snapshots", "jobs", "members"):
        table.add_row(key, str(info[key]))
    console.print(table)


@workspace_app.command("kill")
def workspace_kill(name: str, yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation.")) -> None:
    """Delete a workspace with everything in it (exactly that workspace)."""
    if not yes and not typer.confirm(f"Delete workspace {name!r} and all its data, jobs and models?"):
        raise typer.Exit(1)
    result = _call(lambda: _client().kill_workspace(name))
    config = ClientConfig.load()
    if config.workspace == name:
        config.workspace = ""
        config.save()
    console.print(f"deleted workspace [bold]{name}[/] ({result['deleted_rows']} rows, "
                  f"{result['deleted_objects']} objects)")


@workspace_app.command("share")
def workspace_share(name: str, user: str = typer.Argument(..., help="IAM user name or principal ARN.")) -> None:
    """Give a user access to a workspace (owner only)."""
    _print_members(_call(lambda: _client().share(name, user)))


@workspace_app.command("unshare")
def workspace_unshare(name: str, user: str = typer.Argument(..., help="IAM user name or principal ARN.")) -> None:
    """Remove a user's access to a workspace (owner only)."""
    _print_members(_call(lambda: _client().unshare(name, user)))


@workspace_app.command("members")
def workspace_members(name: str | None = typer.Argument(None), as_json: bool = JsonOpt) -> None:
    """List who can see a workspace."""
    result = _call(lambda: _client().members(_workspace(name)))
    if as_json:
        return _emit_json(result)
    _print_members(result)


def _print_members(result: dict[str, Any]) -> None:
    table = Table("user", "role", "added")
    for member in result["members"]:
        table.add_row(member["user"], member["role"], member.get("added_at", ""))
    console.print(table)


# --- train ----------------------------------------------------------------------------------------------
def _snapshot(client: Client, workspace: str, kind: str, directory: Path, label: str) -> dict[str, Any]:
    entries = scan(directory, label)
    total = sum(size for _, _, size in entries)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TimeElapsedColumn(), console=err, transient=True) as progress:
        task = progress.add_task(f"hashing {kind} ({len(entries)} files)", total=total)
        files = hash_files(entries, lambda n: progress.advance(task, n))
        upload = progress.add_task(f"uploading {kind}", total=total)
        snapshot = client.upload_snapshot(workspace, kind, files, lambda n: progress.advance(upload, n))
    return snapshot


@train_app.command("deploy")
def train_deploy(
    source: Path = typer.Option(..., "--source", "-s", help="Code directory (entry point train.py or train.sh)."),
    data: Path = typer.Option(..., "--data", "-d", help="Data directory (the 'training' channel)."),
    params: Path | None = typer.Option(None, "--hyperparams", "-h", help="JSON object of hyperparameters."),
    workspace: str | None = WorkspaceOpt,
    wait: bool = typer.Option(False, "--wait", help="Follow the job to its end."),
    max_runtime: int | None = typer.Option(None, "--max-runtime", min=1,
                                           help="Stop the training after this many seconds."),
    instance_type: str | None = typer.Option(None, "--instance-type", help="SageMaker instance type (ml.*)."),
    as_json: bool = JsonOpt,
) -> None:
    """Snapshot code, data and params (uploading only new bytes) and start a training job."""
    ws = _workspace(workspace)
    hyper = _call(lambda: load_params(params)) if params else {}
    client = _client()
    # Every local check (directories, sizes, symlinks) runs before anything is uploaded.
    _call(lambda: (scan(source, "-s"), scan(data, "-d")))
    code = _call(lambda: _snapshot(client, ws, "code", source, "-s"))
    dataset = _call(lambda: _snapshot(client, ws, "data", data, "-d"))
    resources = {k: v for k, v in (("max_runtime_seconds", max_runtime), ("instance_type", instance_type)) if v}
    job = _call(lambda: client.submit(ws, code["id"], {"training": dataset["id"]}, hyper, resources))
    if wait:
        job = {**_wait(client, ws, job["id"]), "cached": job["cached"]}
    if as_json:
        return _emit_json(job)
    note = "[yellow]cache hit: identical inputs, nothing started[/]" if job.get("cached") else "started"
    console.print(f"job [bold]{job['id']}[/] {note}; status {job['status']}")
    if wait:
        _print_job(job)
        if job["status"] != "COMPLETED":
            raise typer.Exit(1)


def _wait(client: Client, ws: str, job_id: str) -> Any:
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        task = progress.add_task(f"{job_id}: waiting")
        while True:
            job = _call(lambda: client.job(ws, job_id))
            progress.update(task, description=f"{job_id}: {job['status']}")
            if job["status"] in TERMINAL:
                return job
            time.sleep(0.5)


@train_app.command("list")
def train_list(workspace: str | None = WorkspaceOpt, limit: int = typer.Option(50, "--limit"),
               as_json: bool = JsonOpt) -> None:
    """List the workspace's training jobs, newest first."""
    page = _call(lambda: _client().jobs(_workspace(workspace), limit))
    if as_json:
        return _emit_json(page)
    table = Table("job", "status", "created", "metrics")
    for job in page["jobs"]:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(job["metrics"].items()))
        table.add_row(job["id"], job["status"], job["created_at"], metrics)
    console.print(table)


def _print_job(job: dict[str, Any]) -> None:
    table = Table(show_header=False)
    for key in ("id", "status", "created_at", "started_at", "ended_at", "environment", "model", "failure_reason"):
        if job.get(key):
            table.add_row(key, str(job[key]))
    table.add_row("code", job["inputs"]["code"])
    for channel, snapshot in sorted(job["inputs"]["data"].items()):
        table.add_row(f"data:{channel}", snapshot)
    table.add_row("params", job["inputs"]["params"])
    for name, value in sorted(job["metrics"].items()):
        table.add_row(f"metric:{name}", f"{value:.6g}")
    console.print(table)


@train_app.command("info")
def train_info(job: str, workspace: str | None = WorkspaceOpt, as_json: bool = JsonOpt) -> None:
    """Show a job: status, inputs, metrics, model, failure reason."""
    described = _call(lambda: _client().job(_workspace(workspace), job))
    if as_json:
        return _emit_json(described)
    _print_job(described)


@train_app.command("kill")
def train_kill(job: str, workspace: str | None = WorkspaceOpt,
               yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation.")) -> None:
    """Stop a running job; it ends KILLED and keeps its provenance."""
    if not yes and not typer.confirm(f"Stop job {job}?"):
        raise typer.Exit(1)
    killed = _call(lambda: _client().kill_job(_workspace(workspace), job))
    console.print(f"job [bold]{killed['id']}[/] {killed['status']}")


@train_app.command("resume")
def train_resume(job: str, workspace: str | None = WorkspaceOpt,
                 wait: bool = typer.Option(False, "--wait", help="Follow the job to its end."),
                 as_json: bool = JsonOpt) -> None:
    """Run a FAILED or KILLED job again with exactly the same inputs (a new attempt)."""
    client, ws = _client(), _workspace(workspace)
    resumed = _call(lambda: client.resume_job(ws, job))
    if wait:
        resumed = _wait(client, ws, job)
    if as_json:
        return _emit_json(resumed)
    console.print(f"job [bold]{resumed['id']}[/] attempt {resumed['attempt']}: {resumed['status']}")
    if wait:
        _print_job(resumed)


@train_app.command("logs")
def train_logs(job: str, workspace: str | None = WorkspaceOpt,
               follow: bool = typer.Option(False, "--follow", "-f", help="Keep reading until the job ends.")) -> None:
    """Print a job's training log (stdout and stderr of the entry point)."""
    client, ws = _client(), _workspace(workspace)
    token: str | None = None
    while True:
        page = _call(lambda token=token: client.logs(ws, job, token))
        for event in page["events"]:
            sys.stdout.write(event["message"].rstrip("\n") + "\n")
        token = page["next"]
        if not follow or (page["status"] in TERMINAL and not page["events"]):
            return
        if not page["events"]:
            time.sleep(1)


@train_app.command("provenance")
def train_provenance(node: str, workspace: str | None = WorkspaceOpt,
                     down: bool = typer.Option(False, "--down", help="Follow edges forward (what used it)."),
                     as_json: bool = JsonOpt) -> None:
    """Show the provenance graph of a job (train-...) or model (model:train-...) as a tree."""
    node_id = node if ":" in node else f"job:{node}"
    graph = _call(lambda: _client().lineage(_workspace(workspace), node_id, "down" if down else "up"))
    if as_json:
        return _emit_json(graph)
    console.print(render_tree(graph, down))


def render_tree(graph: dict[str, Any], down: bool) -> Tree:
    """Upstream trees read "X used Y / X produced by Y"; downstream trees the reverse."""
    nodes = {n["id"]: n for n in graph["nodes"]}
    children: dict[str, list[tuple[str, str]]] = {}
    for edge in graph["edges"]:
        # Normalize to (downstream, upstream): a job is downstream of what it used, a model of its job.
        if edge["rel"] == "produced":
            downstream, upstream, up_label, down_label = edge["target"], edge["source"], "produced by", "produced"
        else:
            downstream, upstream = edge["source"], edge["target"]
            up_label, down_label = edge["rel"], f"{edge['rel']} by"
        if down:
            children.setdefault(upstream, []).append((down_label, downstream))
        else:
            children.setdefault(downstream, []).append((up_label, upstream))

    def label(node_id: str) -> str:
        attrs = nodes.get(node_id, {}).get("attrs", {})
        extra = attrs.get("kind") or attrs.get("image") or attrs.get("uri") or ""
        return f"[bold]{node_id}[/] [dim]{extra}[/]".strip()

    root = Tree(label(graph["root"]))

    def grow(branch: Tree, node_id: str, seen: frozenset[str]) -> None:
        for rel, child in sorted(children.get(node_id, [])):
            sub = branch.add(f"[cyan]{rel}[/] {label(child)}")
            if child not in seen:
                grow(sub, child, seen | {child})

    grow(root, graph["root"], frozenset({graph["root"]}))
    return root


# --- local ----------------------------------------------------------------------------------------------
StateDirOpt = typer.Option(None, "--state-dir",
                           help="Where the embedded stack keeps its state (default ~/.kaos/local).")


def _state_dir(state_dir: Path | None) -> Path:
    from kaos.local.stack import default_state_dir

    return (state_dir or default_state_dir()).resolve()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


@local_app.command("up")
def local_up(state_dir: Path | None = StateDirOpt,
             detach: bool = typer.Option(False, "--detach", help="Run in the background; return when ready."),
             port: int = typer.Option(0, "--port", help="API port (default: a free one).")) -> None:
    """Start the embedded stack: AWS emulator, pipelines, Lambdas and the API on 127.0.0.1."""
    from kaos.local.stack import LocalStack, Runtime

    directory = _state_dir(state_dir)
    running = Runtime.read(directory)
    if running and _alive(running.pid):
        console.print(f"already running: API {running.api_url} (pid {running.pid})")
        return
    (directory / "runtime.json").unlink(missing_ok=True)
    if not detach:
        LocalStack(directory, port).run()
        return
    directory.mkdir(parents=True, exist_ok=True)
    log = (directory / "stack.log").open("w")
    child = subprocess.Popen([sys.executable, "-m", "kaos.local.stack", str(directory), str(port)],
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (directory / "stack.pid").write_text(str(child.pid))
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                  transient=True) as progress:
        progress.add_task("starting the embedded stack (first start synthesizes the CDK app)")
        while (runtime := Runtime.read(directory)) is None:
            if child.poll() is not None:
                tail = (directory / "stack.log").read_text()[-3000:]
                _fail(f"the stack exited with {child.returncode}:\n{tail}")
            time.sleep(0.2)
    console.print(f"kaos local stack ready: API {runtime.api_url} (pid {child.pid}); `kaos local down` stops it")


@local_app.command("status")
def local_status(state_dir: Path | None = StateDirOpt, as_json: bool = JsonOpt) -> None:
    """Say whether the embedded stack is running and where."""
    from kaos.local.stack import Runtime

    runtime = Runtime.read(_state_dir(state_dir))
    status = {"running": bool(runtime and _alive(runtime.pid)), **(runtime.__dict__ if runtime else {})}
    if as_json:
        return _emit_json(status)
    if not status["running"]:
        _fail("the embedded stack is not running; start it with `kaos local up --detach`")
    console.print(f"running: API {status['api_url']}, AWS emulator {status['endpoint_url']}, pid {status['pid']}")


@local_app.command("down")
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
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    console.print("stopped")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
