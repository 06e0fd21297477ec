"""The kaos command line: parses, calls kaos.client, renders. No business rules live here."""
from __future__ import annotations

import difflib
import json
import os
import shutil
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

from kaos.bundle import BundleError, hash_files, read_data_manifest, scan
from kaos.cli_templates import template_app
from kaos.client import ApiError, Client, load_params
from kaos.client import extract_archive
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
        _fail(str(exc), exc.exit_code)


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
    if "models" in info:
        table.add_row("models", str(info["models"]))
    console.print(table)


def _edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def _close_names(name: str, names: list[str]) -> list[str]:
    """Up to three likely intended names: difflib's close matches, then any within two edits."""
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    near = sorted((n for n in names if n not in close and _edit_distance(name, n) <= 2),
                  key=lambda n: (_edit_distance(name, n), n))
    return (close + near)[:3]


@workspace_app.command("set")
def workspace_set(name: str) -> None:
    """Make NAME the current workspace (it must exist and you must be a member)."""
    client = _client()
    try:
        client.workspace(name)
    except ApiError as exc:
        if exc.status not in (400, 404):
            _fail(f"{exc.message} ({exc.code})")
        close = _close_names(name, [w["name"] for w in _call(client.workspaces)])
        _fail(exc.message + (f"; did you mean: {', '.join(close)}?" if close else
                             "; `kaos workspace list` shows yours"))
    config = ClientConfig.load()
    config.workspace = name
    config.save()
    console.print(f"current workspace: [bold]{name}[/]")


@workspace_app.command("current")
def workspace_current(as_json: bool = JsonOpt) -> None:
    """Print the current workspace (the default of every -w option)."""
    current = ClientConfig.load().workspace or None
    if as_json:
        return _emit_json({"workspace": current})
    if current is None:
        console.print("no current workspace; `kaos workspace set NAME` or `kaos workspace create NAME` sets one")
        return None
    console.print(current)
    return None


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


@workspace_app.command("auto-retrain")
def workspace_auto_retrain(
    name: str | None = typer.Argument(None, help="Workspace (default: the current one)."),
    state: str | None = typer.Argument(None, metavar="[on|off]", help="Turn it on or off; omit to show it."),
    as_json: bool = JsonOpt,
) -> None:
    """Retrain on new data: files under ws/<ws>/incoming/ (`kaos data push`) start one job per upload window."""
    if state is not None and state not in ("on", "off"):
        _fail(f"{state!r}: say on or off")
    result = _call(lambda: _client().auto_retrain(_workspace(name), None if state is None else state == "on"))
    if as_json:
        return _emit_json(result)
    console.print(f"auto-retrain in [bold]{result['workspace']}[/]: {'on' if result['enabled'] else 'off'} "
                  f"(uploads within {result['window_seconds']} s make one retraining)")
    if result["batches"]:
        table = Table("batch", "status", "files", "snapshot", "job", "skipped / reason")
        for batch in result["batches"]:
            notes = ", ".join(f"{s['path']}: {s['reason']}" for s in batch["skipped"]) or batch.get("reason") or ""
            table.add_row(batch["id"], batch["status"], str(batch["files"]), (batch["snapshot"] or "")[:12],
                          batch["job"] or "", notes)
        console.print(table)
    return None


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


def _channels(values: list[str]) -> dict[str, Path]:
    """`-d DIR` is the channel `training`; `-d NAME=DIR` names it, as SageMaker channels are named."""
    channels: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        name, path = (name, path) if sep and not Path(value).exists() else ("training", value)
        if name in channels:
            _fail(f"-d: channel {name!r} given twice")
        channels[name] = Path(path)
    return channels


@train_app.command("deploy")
def train_deploy(
    source: Path | None = typer.Option(None, "--source", "-s",
                                       help="Code directory (train.py, train.sh or kaos.toml entry_point). "
                                            "Default: the workspace's latest code."),
    data: list[str] = typer.Option([], "--data", "-d",
                                   help="Data directory, or NAME=DIR for a named channel (repeatable). "
                                        "Default: the workspace's latest data."),
    params: Path | None = typer.Option(None, "--hyperparams", "-h",
                                       help="JSON object of hyperparameters; list values make a grid. "
                                            "Default: the workspace's latest params."),
    manifests: list[str] = typer.Option([], "--manifest", "-m",
                                        help="Remote data: a JSON-lines file of {url, path} (s3:// or https://), "
                                             "or NAME=FILE for a named channel (repeatable; not with -d)."),
    parallelism: int = typer.Option(10, "--parallelism", "-p", min=1, help="Grid points trained at once."),
    workspace: str | None = WorkspaceOpt,
    wait: bool = typer.Option(False, "--wait", help="Follow the job (or grid) to its end."),
    max_runtime: int | None = typer.Option(None, "--max-runtime", min=1,
                                           help="Stop the training after this many seconds."),
    instance_type: str | None = typer.Option(None, "--instance-type", help="SageMaker instance type (ml.*)."),
    as_json: bool = JsonOpt,
) -> None:
    """Snapshot what you give (uploading only new bytes), reuse the latest of the rest, and train."""
    ws = _workspace(workspace)
    hyper = _call(lambda: load_params(params)) if params else None
    if data and manifests:
        _fail("-d and -m are mutually exclusive: give data as directories (-d) or as remote manifests (-m)")
    channels = _channels(data)
    remote = {name: _call(lambda p=path, n=name: read_data_manifest(p, f"-m {n}"))
              for name, path in _channels(manifests).items()}
    client = _client()
    # Every local check (directories, sizes, symlinks) runs before anything is uploaded.
    _call(lambda: [scan(source, "-s")] if source else None)
    _call(lambda: [scan(path, f"-d {name}") for name, path in channels.items()])
    code = _call(lambda: _snapshot(client, ws, "code", source, "-s")["id"]) if source else None
    data_ids = {name: _call(lambda p=path, n=name: _snapshot(client, ws, "data", p, f"-d {n}")["id"])
                for name, path in channels.items()} or None
    if remote:
        data_ids = {name: _call(lambda e=entries: client.request(
            "POST", f"/workspaces/{ws}/snapshots", {"kind": "data", "files": e})["id"])
            for name, entries in remote.items()}
    resources = {k: v for k, v in (("max_runtime_seconds", max_runtime), ("instance_type", instance_type)) if v}
    if hyper is not None and any(isinstance(v, list) for v in hyper.values()):
        grid = _call(lambda: client.submit_grid(ws, code, data_ids, hyper, resources, parallelism))
        if wait:
            grid = {**_wait_grid(client, ws, grid["id"]), "cached": grid["cached"]}
        if as_json:
            return _emit_json(grid)
        note = "[yellow]cache hit: this grid was submitted before[/]" if grid.get("cached") else "started"
        console.print(f"grid [bold]{grid['id']}[/] {note}: {grid['points']} points, {grid['parallelism']} at once; "
                      f"`kaos train info {grid['id']}` shows them")
        return None
    job = _call(lambda: client.submit(ws, code, data_ids, hyper, resources))
    if wait:
        job = {**_wait(client, ws, job["id"]), "cached": job["cached"], "sources": job.get("sources", {})}
    if as_json:
        return _emit_json(job)
    note = "[yellow]cache hit: identical inputs, nothing started[/]" if job.get("cached") else "started"
    reused = [name for name, source_ in job.get("sources", {}).items() if source_ == "latest"]
    console.print(f"job [bold]{job['id']}[/] {note}; status {job['status']}"
                  + (f"; reused the latest {', '.join(reused)}" if reused else ""))
    if wait:
        _print_job(job)
        if job["status"] != "COMPLETED":
            raise typer.Exit(1)
    return None


def _wait_grid(client: Client, ws: str, grid_id: str) -> Any:
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
                  "{task.total}"), TimeElapsedColumn(), console=err, transient=True) as progress:
        task = progress.add_task(f"{grid_id}: running", total=None)
        while True:
            grid = _call(lambda: client.grid(ws, grid_id, limit=1))
            done = sum(n for status, n in grid["counts"].items() if status in TERMINAL)
            progress.update(task, total=grid["points"], completed=done,
                            description=f"{grid_id}: {grid['status']}")
            if grid["status"] in ("COMPLETED", "FAILED") and done == grid["points"]:
                return grid
            time.sleep(1)


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
    sources = job.get("sources") or {}

    def origin(kind: str) -> str:
        # Where the input came from: given with this deploy, or reused from the workspace's latest.
        return f" ({sources[kind]})" if kind in sources else ""

    table.add_row("code" + origin("code"), job["inputs"]["code"])
    for channel, snapshot in sorted(job["inputs"]["data"].items()):
        table.add_row(f"data:{channel}" + origin("data"), snapshot)
    table.add_row("params" + origin("params"), job["inputs"]["params"])
    for name, value in sorted(job["metrics"].items()):
        table.add_row(f"metric:{name}", f"{value:.6g}")
    console.print(table)


@train_app.command("info")
def train_info(job: str, workspace: str | None = WorkspaceOpt, as_json: bool = JsonOpt,
               sort_by: str | None = typer.Option(None, "--sort-by", help="Grids: order points by this metric."),
               desc: bool = typer.Option(False, "--desc", help="Grids: largest metric first."),
               page: int = typer.Option(1, "--page", min=1, help="Grids: page of points."),
               limit: int = typer.Option(50, "--limit", min=1, max=200, help="Grids: points per page.")) -> None:
    """Show a job (status, inputs, metrics, model, failure reason) or a grid's points."""
    if job.startswith("grid-"):
        grid = _call(lambda: _client().grid(_workspace(workspace), job, sort_by, desc, page, limit))
        if as_json:
            return _emit_json(grid)
        return _print_grid(grid)
    described = _call(lambda: _client().job(_workspace(workspace), job))
    if as_json:
        return _emit_json(described)
    _print_job(described)


def _print_grid(grid: dict[str, Any]) -> None:
    counts = ", ".join(f"{n} {status.lower()}" for status, n in sorted(grid["counts"].items()))
    console.print(f"grid [bold]{grid['id']}[/] {grid['status']}: {grid['points']} points ({counts}); "
                  f"page {grid['page']}/{grid['pages']}")
    names = sorted({k for p in grid["rows"] for k in p["metrics"]})
    axes = [k for k, v in grid["params"].items() if isinstance(v, list)]
    table = Table("#", "job", "status", *axes, *names)
    for point in grid["rows"]:
        table.add_row(str(point["index"]), point["job"], point["status"],
                      *(str(point["params"].get(a)) for a in axes),
                      *(f"{point['metrics'][n]:.4g}" if n in point["metrics"] else "-" for n in names))
    console.print(table)


JOB_PARTS = ("code", "data", "params", "model")


def _inside(root: Path, *relative: str) -> Path:
    """root/relative..., refusing absolute paths and `..` (paths come from the server; trust them no further)."""
    parts: list[str] = []
    for piece in relative:
        posix = piece.replace("\\", "/")
        if posix.startswith("/") or ".." in posix.split("/"):
            _fail(f"refusing to write outside {root}: {piece!r}")
        parts += [p for p in posix.split("/") if p not in ("", ".")]
    return root.joinpath(*parts)


def _job_files(client: Client, ws: str, job: str, chosen: list[str]) -> dict[str, Any]:
    """One request for everything; part by part when it is too large for one response (413) or fewer are wanted."""
    if len(chosen) == len(JOB_PARTS):
        try:
            listing: dict[str, Any] = client.job_files(ws, job)
            return listing
        except ApiError as exc:
            if exc.status != 413:
                _fail(f"{exc.message} ({exc.code})")
    listing = {}
    for part in chosen:
        listing.update(_call(lambda p=part: client.job_files(ws, job, p)))
    return listing


@train_app.command("get")
def train_get(
    job: str,
    output: Path | None = typer.Option(None, "--output", "-o", help="Directory to fill (default: ./JOB)."),
    code: bool = typer.Option(False, "--code", help="Download the code (to DIR/code)."),
    data: bool = typer.Option(False, "--data", help="Download the data channels (to DIR/data/<channel>)."),
    params: bool = typer.Option(False, "--params", help="Write the hyperparameters (DIR/params.json)."),
    model: bool = typer.Option(False, "--model", help="Download and unpack the model (to DIR/model)."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty directory."),
    workspace: str | None = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Download a job's code, data, params and model (default: all) into DIR, checking every file's sha256."""
    ws = _workspace(workspace)
    target = output if output is not None else Path(job)
    if target.exists() and not target.is_dir():
        _fail(f"{target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        _fail(f"{target} is not empty; pass --force to write into it, or -o another directory")
    chosen = [part for part, on in zip(JOB_PARTS, (code, data, params, model), strict=True) if on] or list(JOB_PARTS)
    client = _client()
    listing = _job_files(client, ws, job, chosen)
    if "model" in chosen and listing.get("model") is None:
        message = f"job {job} has no model (status {listing.get('status')})"
        if model:
            _fail(message)
        err.print(f"[yellow]warning:[/] {message}; downloading the rest")
    files = [(_inside(target, "code", f["path"]), f) for f in listing.get("code", [])]
    files += [(_inside(target, "data", channel, f["path"]), f)
              for channel, entries in sorted(listing.get("data", {}).items()) for f in entries]
    archive = listing.get("model")
    total = sum(f["size"] for _, f in files) + (archive["size"] if archive else 0)
    target.mkdir(parents=True, exist_ok=True)
    done: dict[str, Path] = {}
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TimeElapsedColumn(), console=err, transient=True) as progress:
        task = progress.add_task(f"downloading {job} ({len(files)} files{' and the model' if archive else ''})",
                                 total=total)
        for dest, entry in files:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if entry["sha256"] in done:  # identical content: copy the verified local file
                shutil.copyfile(done[entry["sha256"]], dest)
                progress.advance(task, entry["size"])
                continue
            partial = dest.with_name(dest.name + ".part")
            digest = _call(lambda e=entry, p=partial: client.download(e["url"], p, lambda n: progress.advance(task, n)))
            if digest != entry["sha256"]:
                partial.unlink(missing_ok=True)
                _fail(f"{dest.relative_to(target)}: sha256 {digest} does not match the manifest's {entry['sha256']}")
            partial.replace(dest)
            done[entry["sha256"]] = dest
        members: list[str] = []
        if archive:
            partial = target / ".model.tar.gz.part"
            _call(lambda: client.download(archive["url"], partial, lambda n: progress.advance(task, n)))
            received = partial.stat().st_size
            if received != archive["size"]:
                partial.unlink(missing_ok=True)
                _fail(f"model.tar.gz: got {received} bytes, expected {archive['size']}")
            try:
                members = _call(lambda: extract_archive(partial, target / "model"))
            finally:
                partial.unlink(missing_ok=True)
    if "params" in listing:
        (target / "params.json").write_text(json.dumps(listing["params"], indent=2, sort_keys=True) + "\n")
    summary = {"job": job, "directory": str(target), "parts": chosen, "files": len(files),
               "bytes": total, "params": "params" in listing, "model": members if archive else None}
    if as_json:
        return _emit_json(summary)
    written = [f"{len(files)} files" if files else "", "params.json" if summary["params"] else "",
               f"model ({len(members)} entries)" if archive else ""]
    console.print(f"job [bold]{job}[/] → {target}: " + ", ".join(w for w in written if w) + " (sha256 verified)")
    return None


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


@train_app.command("reproduce")
def train_reproduce(model_or_job: str = typer.Argument(..., metavar="MODEL_OR_JOB",
                                                       help="model:<job id>, job:<job id> or a job id."),
                    workspace: str | None = WorkspaceOpt,
                    wait: bool = typer.Option(False, "--wait", help="Follow the new job and compare the models."),
                    as_json: bool = JsonOpt) -> None:
    """Train a COMPLETED job again with exactly its recorded inputs, as a new job linked to it in provenance."""
    prefix, _, job = model_or_job.rpartition(":")
    if prefix not in ("", "model", "job"):
        _fail(f"{model_or_job!r}: give model:<job id>, job:<job id> or a job id")
    client, ws = _client(), _workspace(workspace)
    started = _call(lambda: client.reproduce(ws, job))
    result = started
    if wait:
        _wait(client, ws, started["id"])
        # Reproducing is idempotent: the same job again, now with its model compared to the original's.
        result = {**_call(lambda: client.reproduce(ws, job)), "cached": started["cached"]}
    if as_json:
        return _emit_json(result)
    note = "already reproduced: the same job" if result["cached"] else "started"
    console.print(f"job [bold]{result['id']}[/] reproduces {result['reproduction_of']} ({note}); "
                  f"status {result['status']}")
    if wait:
        _print_job(result)
        comparison = result["comparison"]
        new, original = comparison["reproduction"] or {}, comparison["original"] or {}
        if comparison["identical"] is None:
            verdict = "unknown (no model to compare)" if not new else "unknown (the original has no content hash)"
        else:
            said = {True: "equal", False: "differs", None: "not recorded"}
            verdict = ("yes" if comparison["identical"] else "no") + (
                f" (model.tar.gz sha256 {said[comparison['archive_identical']]}, content sha256 "
                f"{said[comparison['content_identical']]}: {str(new.get('content_sha256'))[:12]} new vs "
                f"{str(original.get('content_sha256'))[:12]} original)")
        console.print(f"model bytes identical: {verdict}")
        if result["status"] != "COMPLETED":
            raise typer.Exit(1)
    return None


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
                     depth: int | None = typer.Option(None, "--depth", min=1, help="Follow at most N hops."),
                     fmt: str = typer.Option("text", "--format", "-f",
                                             help="text (tree), json, dot, mermaid, png or svg (png/svg need "
                                                  "Graphviz' dot)."),
                     output: Path | None = typer.Option(None, "--output", "-o",
                                                        help="Write to FILE (required for png)."),
                     as_json: bool = JsonOpt) -> None:
    """Show the provenance graph of a job (train-...), model (model:train-...) or snapshot (snapshot:<id>)."""
    from kaos import render

    fmt = "json" if as_json else fmt
    if fmt not in render.FORMATS:
        _fail(f"--format must be one of {', '.join(render.FORMATS)}")
    if fmt == "png" and output is None:
        _fail("--format png writes binary: give -o FILE")
    try:
        if fmt in render.IMAGE_FORMATS:
            render.dot_binary()
        node_id = node if ":" in node else f"job:{node}"
        client, ws, pages, cursor = _client(), _workspace(workspace), [], None

        def page_after(after: str | None) -> Any:
            return _call(lambda: client.lineage(ws, node_id, "down" if down else "up", depth, cursor=after))

        while True:  # every page of the walk (the API returns at most 1,000 nodes per page)
            page = page_after(cursor)
            pages.append(page)
            if not (cursor := page.get("next")):
                break
        graph = render.merge_pages(pages)
        rendered = b"" if fmt == "text" else render.render(graph, fmt)
    except render.RenderError as exc:
        _fail(str(exc))
    if fmt == "text":
        if output is None:
            console.print(render_tree(graph, down))
        else:
            with output.open("w") as handle:
                Console(file=handle, width=200).print(render_tree(graph, down))
    elif output is None:
        sys.stdout.write(rendered.decode())
    else:
        output.write_bytes(rendered)
    if output is not None:
        err.print(f"wrote {fmt} of {len(graph['nodes'])} node(s) to {output}")
    return None


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


# --- batch ----------------------------------------------------------------------------------------------
data_app = typer.Typer(help="Push new data files; with auto-retrain on they retrain the workspace.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("push")
def data_push(files: list[Path] = typer.Argument(..., help="Files to upload (each under its own name)."),
              workspace: str | None = WorkspaceOpt, as_json: bool = JsonOpt) -> None:
    """Upload FILES to ws/<ws>/incoming/<name> straight to S3; auto-retrain turns them into a new data snapshot
    (the latest training data + these files) and one training job."""
    ws = _workspace(workspace)
    named: dict[str, Path] = {}
    for path in files:
        if not path.is_file():
            _fail(f"{path}: not a file")
        if path.name in named:
            _fail(f"{path.name}: two files with this name")
        named[path.name] = path
    client = _client()
    total = sum(p.stat().st_size for p in named.values())
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TimeElapsedColumn(), console=err, transient=True) as progress:
        task = progress.add_task(f"uploading {len(named)} file(s)", total=total)
        result = _call(lambda: client.push_data(ws, list(named.items()), lambda n: progress.advance(task, n)))
    if as_json:
        return _emit_json(result)
    note = ("auto-retrain is on: they retrain the workspace shortly" if result.get("auto_retrain")
            else "auto-retrain is off: nothing retrains (`kaos workspace auto-retrain on`)")
    console.print(f"pushed {len(result['files'])} file(s) to ws/{ws}/incoming/; {note}")
    return None


@data_app.command("impact")
def data_impact(target: str = typer.Argument(..., help="s3://bucket/key (or prefix/), snapshot:<id> or an id."),
                workspace: str | None = WorkspaceOpt, as_json: bool = JsonOpt) -> None:
    """Every job and model downstream of a data snapshot, or of an S3 object that remote data manifests use."""
    result = _call(lambda: _client().impact(_workspace(workspace), target))
    if as_json:
        return _emit_json(result)
    if not result["matched"]:
        console.print(f"no data snapshot of this workspace references {target}")
        return None
    console.print(f"{target}: in {len(result['matched'])} snapshot(s): {', '.join(result['matched'])}")
    table = Table("type", "id", "detail")
    for kind, key in (("job", "kind"), ("model", "uri"), ("snapshot", "kind")):
        for row in result[f"{kind}s"]:
            table.add_row(kind, row["id"], str(row.get(key) or ""))
    console.print(table if table.rows else "nothing downstream: no job used it")
    if result.get("truncated"):
        err.print("[yellow]truncated:[/] more than 5,000 nodes downstream; see `kaos train provenance --down`")
    return None


batch_app = typer.Typer(help="Run processing jobs on AWS Batch; each output is a new data snapshot.",
                        no_args_is_help=True)
app.add_typer(batch_app, name="batch")


@batch_app.command("deploy")
def batch_deploy(
    source: Path = typer.Option(..., "--source", "-s",
                                help="Code directory (process.py, main.py or process.sh unless --command is given)."),
    data: Path = typer.Option(..., "--data", "-d", help="Input data directory ($KAOS_INPUT_DIR in the job)."),
    command: str | None = typer.Option(None, "--command",
                                       help="Shell command run in the code directory; it writes its results "
                                            "to $KAOS_OUTPUT_DIR."),
    workspace: str | None = WorkspaceOpt,
    wait: bool = typer.Option(False, "--wait", help="Follow the job to its end."),
    max_runtime: int | None = typer.Option(None, "--max-runtime", min=60,
                                           help="Stop the job after this many seconds."),
    per_file: bool = typer.Option(False, "--per-file",
                                  help="Run the command once per input file ($KAOS_DATUM, $KAOS_INPUT_FILE); files "
                                       "processed before by the same code and command reuse their outputs."),
    glob: str | None = typer.Option(None, "--glob", help="With --per-file: which input paths are datums (fnmatch)."),
    as_json: bool = JsonOpt,
) -> None:
    """Snapshot code and data (uploading only new bytes) and run a batch job; its output is a data snapshot."""
    ws = _workspace(workspace)
    client = _client()
    # Every local check (directories, sizes, symlinks) runs before anything is uploaded.
    _call(lambda: (scan(source, "-s"), scan(data, "-d")))
    code = _call(lambda: _snapshot(client, ws, "code", source, "-s"))
    dataset = _call(lambda: _snapshot(client, ws, "data", data, "-d"))
    if glob and not per_file:
        raise typer.BadParameter("--glob needs --per-file", param_hint="--glob")
    job = _call(lambda: client.submit_batch(ws, code["id"], dataset["id"], command, max_runtime, per_file, glob))
    if wait:
        job = {**_wait(client, ws, job["id"]), "cached": job["cached"]}
    if as_json:
        return _emit_json(job)
    note = "[yellow]cache hit: identical inputs, nothing started[/]" if job.get("cached") else "started"
    console.print(f"batch job [bold]{job['id']}[/] {note}; status {job['status']}")
    if wait:
        _print_job(job)
        if job["status"] != "COMPLETED":
            raise typer.Exit(1)
        output = str(job["model"]).removeprefix("snapshot:")
        console.print(f"output: data snapshot [bold]{output}[/] (train on it: `kaos train info`, provenance "
                      f"`kaos train provenance snapshot:{output}`)")
    return None


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
             port: int = typer.Option(0, "--port", help="API port (default: a free one)."),
             test_hooks: bool = typer.Option(False, "--test-hooks", hidden=True,
                                             help="Serve /_local/faults to a local admin user (the test suite).")
             ) -> None:
    """Start the embedded stack: AWS emulator, pipelines, Lambdas and the API on 127.0.0.1."""
    from kaos.local.stack import TEST_HOOKS_ENV, LocalStack, Runtime

    if test_hooks:  # the detached child reads it from its environment
        os.environ[TEST_HOOKS_ENV] = "1"
    directory = _state_dir(state_dir)
    running = Runtime.read(directory)
    if running and _alive(running.pid):
        console.print(f"already running: API {running.api_url} (pid {running.pid})")
        return
    (directory / "runtime.json").unlink(missing_ok=True)
    if not detach:
        LocalStack(directory, port).run()
        return
    os.umask(0o077)  # the state dir, its log and pid file are this user's only (the stack keeps the umask)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
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
