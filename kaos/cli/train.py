"""`kaos train ...`: deploy, list, inspect, follow, download, stop, resume and reproduce training jobs."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from kaos import operations as ops
from kaos import render
from kaos.bundle import HashCache, hash_files, scan
from kaos.cli.common import JsonOpt, WorkspaceOpt, client, console, emit_json, err, fail, workspace
from kaos.cli.progress import byte_bar, on_grid, on_job, status_line
from kaos.cli.views import jobs_table, print_grid, print_job, provenance_tree
from kaos.client import ApiError, Client, extract_archive

app = typer.Typer(help="Deploy and inspect training jobs.", no_args_is_help=True)


def upload(api: Client, ws: str, kind: str, directory: Path, label: str,
           scanned: list[tuple[str, Path, int]] | None = None) -> str:
    """Hashes a folder (as `scanned` listed it, if given) and uploads the bytes the workspace lacks; the snapshot
    id."""
    entries = scan(directory, label) if scanned is None else scanned
    total = sum(size for _, _, size in entries)
    with byte_bar() as progress:
        task = progress.add_task(f"hashing {kind} ({len(entries)} files)", total=total)
        files = hash_files(entries, lambda n: progress.advance(task, n), HashCache(directory))
        sent = progress.add_task(f"uploading {kind}", total=total)
        snapshot = api.upload_snapshot(ws, kind, files, lambda n: progress.advance(sent, n))
    return str(snapshot["id"])


def follow_job(api: Client, ws: str, job_id: str) -> dict[str, Any]:
    with status_line(f"job {job_id}: waiting") as show:
        return ops.wait_job(api, ws, job_id, on_job(show))


@app.command("deploy")
def train_deploy(
    source: Path | None = typer.Option(None, "--source", "-s",
                                       help="Code directory (train.py, train.sh or kaos.toml entry_point). "
                                            "Default: the workspace's latest code."),
    data: list[str] = typer.Option([], "--data", "-d",
                                   help="Data directory, NAME=DIR for a named channel, or snapshot:ID (a data "
                                        "snapshot, e.g. a batch job's output; repeatable). "
                                        "Default: the workspace's latest data."),
    params: Path | None = typer.Option(None, "--hyperparams", "-h",
                                       help="JSON object of hyperparameters; list values make a grid. "
                                            "Default: the workspace's latest params."),
    manifests: list[str] = typer.Option([], "--manifest", "-m",
                                        help="Remote data: a JSON-lines file of {url, path} (s3:// or https://), "
                                             "or NAME=FILE for a named channel (repeatable; not with -d)."),
    parallelism: int = typer.Option(10, "--parallelism", "-p", min=1, help="Grid points trained at once."),
    ws_option: str | None = WorkspaceOpt,
    wait: bool = typer.Option(False, "--wait", help="Follow the job (or grid) to its end."),
    max_runtime: int | None = typer.Option(None, "--max-runtime", min=1,
                                           help="Stop the training after this many seconds."),
    instance_type: str | None = typer.Option(None, "--instance-type", help="SageMaker instance type (ml.*)."),
    framework: str | None = typer.Option(None, "--framework",
                                         help="The image: FRAMEWORK[:VERSION] of the catalogue, e.g. sklearn:1.2-1 "
                                              "(default: kaos.toml [train] framework/framework_version, else the "
                                              "deployment's image; docs/environments.md)."),
    as_json: bool = JsonOpt,
) -> None:
    """Snapshot what you give (uploading only new bytes), reuse the latest of the rest, and train."""
    ws = workspace(ws_option)
    inputs = ops.check_deploy(source, data, manifests, params)  # before anything is hashed or sent
    api = client()
    given = {name: ops.resolve(api, ws, ref, ("snapshot",)) for name, ref in inputs.snapshots.items()}
    resources = {k: v for k, v in (("max_runtime_seconds", max_runtime), ("instance_type", instance_type)) if v}

    def attempt() -> dict[str, Any]:
        code = upload(api, ws, "code", inputs.code, "-s", inputs.scanned.get(inputs.code)) if inputs.code else None
        snapshots = given | {name: upload(api, ws, "data", path, f"-d {name}", inputs.scanned.get(path))
                             for name, path in inputs.folders.items()}
        snapshots |= {name: ops.commit_remote(api, ws, entries) for name, entries in inputs.remote.items()}
        return ops.submit(api, ws, code, snapshots or None, inputs.params, resources, parallelism,
                          framework or ops.code_framework(source))

    submitted = ops.submitting(api, ws, attempt)
    if submitted["grid"]:
        return _deployed_grid(api, ws, submitted, wait, as_json)
    return _deployed_job(api, ws, submitted, wait, as_json)


def _deployed_grid(api: Client, ws: str, grid: dict[str, Any], wait: bool, as_json: bool) -> None:
    if wait:
        err.print(f"grid {grid['id']} submitted", markup=False, highlight=False)
        with status_line(f"grid {grid['id']}: waiting") as show:
            grid = {**ops.wait_grid(api, ws, grid["id"], on_grid(show)), "cached": grid["cached"]}
    if as_json:
        return emit_json(grid)
    note = "[yellow]cache hit: this grid was submitted before[/]" if grid.get("cached") else "started"
    console.print(f"grid [bold]{grid['id']}[/] {note}: {grid['points']} points, {grid['parallelism']} at once; "
                  f"`kaos train info {grid['id']} -w {ws}` shows them")
    return None


def _deployed_job(api: Client, ws: str, job: dict[str, Any], wait: bool, as_json: bool) -> None:
    if ops.failed_before(job):
        # Not a cache hit: nothing useful came back. Resuming is explicit, so a failing script is not rerun by
        # accident on every redeploy.
        if as_json:
            emit_json(job)
        fail(f"job {job['id']} with identical inputs ended {job['status']}"
             + (f" ({job['failure_reason']})" if job.get("failure_reason") else "")
             + f"; `kaos train resume {job['id']} -w {ws}` runs it again as a new attempt")
    if wait:
        err.print(f"job {job['id']} submitted", markup=False, highlight=False)
        job = {**follow_job(api, ws, job["id"]), "cached": job["cached"], "sources": job.get("sources", {})}
    if as_json:
        return emit_json(job)
    note = "[yellow]cache hit: identical inputs, nothing started[/]" if job.get("cached") else "started"
    reused = [name for name, source_ in job.get("sources", {}).items() if source_ == "latest"]
    console.print(f"job [bold]{job['id']}[/] {note}; status {job['status']}"
                  + (f"; reused the latest {', '.join(reused)}" if reused else ""))
    if wait:
        print_job(job)
        if job["status"] != "COMPLETED":
            raise typer.Exit(1)
    return None


@app.command("list")
def train_list(ws_option: str | None = WorkspaceOpt,
               limit: int = typer.Option(50, "--limit", min=1, help="Jobs per page."),
               next_token: str | None = typer.Option(None, "--next", help="Continue a previous listing."),
               every: bool = typer.Option(False, "--all", help="Every job (all pages)."),
               status: str | None = typer.Option(None, "--status", help="Only jobs in this status (e.g. FAILED)."),
               since: str | None = typer.Option(None, "--since", help="Only jobs created since: an ISO date/time or "
                                                                      "a duration (30m, 2h, 7d)."),
               wide: bool = typer.Option(False, "--wide", help="More columns (kind, attempt)."),
               cost: bool = typer.Option(False, "--cost", help="A cost column (USD at AWS list prices)."),
               as_json: bool = JsonOpt) -> None:
    """List the workspace's training and batch jobs, newest first, a page at a time."""
    ws = workspace(ws_option)
    after = ops.since_time(since) if since else None
    listed = ops.list_jobs(client(), ws, limit, next_token, every, status, after)
    if as_json:
        return emit_json({"jobs": listed.jobs, "next": listed.next})
    # --wide: as wide as the table needs, whatever the terminal (for a pager or a file).
    (Console(width=max(console.width, 240)) if wide else console).print(jobs_table(listed.jobs, wide, cost))
    if listed.next:
        filters = "".join(f" {flag} {value}" for flag, value in (("--status", status), ("--since", since),
                                                                 ("--limit", limit if limit != 50 else None))
                          if value)
        err.print(f"more: `kaos train list -w {ws}{filters} --next {listed.next}`", markup=False, highlight=False)
    return None


@app.command("info")
def train_info(job: str, ws_option: str | None = WorkspaceOpt, as_json: bool = JsonOpt,
               sort_by: str | None = typer.Option(None, "--sort-by", help="Grids: order points by this metric."),
               desc: bool = typer.Option(False, "--desc", help="Grids: largest metric first."),
               page: int = typer.Option(1, "--page", min=1, help="Grids: page of points."),
               limit: int = typer.Option(50, "--limit", min=1, max=200, help="Grids: points per page.")) -> None:
    """Show a job (status, inputs, metrics, model, failure reason) or a grid's points; any unique id prefix."""
    api, ws = client(), workspace(ws_option)
    ident = ops.resolve(api, ws, job, ("grid",) if job.startswith("grid-") else ("job", "grid"))
    if ident.startswith("grid-"):
        grid = api.grid(ws, ident, sort_by, desc, page, limit)
        if as_json:
            return emit_json(grid)
        return print_grid(grid)
    described = {**api.job(ws, ident), "environment_ran": ops.environment_ran(api, ws, ident)}
    if as_json:
        return emit_json(described)
    print_job(described)
    return None


JOB_PARTS = ("code", "data", "params", "model")


def _inside(root: Path, *relative: str) -> Path:
    """root/relative..., refusing absolute paths and `..` (paths come from the server; trust them no further)."""
    parts: list[str] = []
    for piece in relative:
        posix = piece.replace("\\", "/")
        if posix.startswith("/") or ".." in posix.split("/"):
            fail(f"refusing to write outside {root}: {piece!r}")
        parts += [p for p in posix.split("/") if p not in ("", ".")]
    return root.joinpath(*parts)


def _job_files(api: Client, ws: str, job: str, chosen: list[str]) -> dict[str, Any]:
    """One request for everything; part by part when it is too large for one response (413) or fewer are wanted."""
    if len(chosen) == len(JOB_PARTS):
        try:
            listing: dict[str, Any] = api.job_files(ws, job)
            return listing
        except ApiError as exc:
            if exc.status != 413:
                raise
    listing = {}
    for part in chosen:
        listing.update(api.job_files(ws, job, part))
    return listing


@app.command("get")
def train_get(
    job: str,
    output: Path | None = typer.Option(None, "--output", "-o", help="Directory to fill (default: ./JOB)."),
    code: bool = typer.Option(False, "--code", help="Download the code (to DIR/code)."),
    data: bool = typer.Option(False, "--data", help="Download the data channels (to DIR/data/<channel>)."),
    params: bool = typer.Option(False, "--params", help="Write the hyperparameters (DIR/params.json)."),
    model: bool = typer.Option(False, "--model", help="Download and unpack the model (to DIR/model)."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty directory."),
    ws_option: str | None = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Download a job's code, data, params and model (default: all) into DIR, checking every file's sha256."""
    api, ws = client(), workspace(ws_option)
    job = ops.resolve(api, ws, job)
    target = output if output is not None else Path(job)
    if target.exists() and not target.is_dir():
        fail(f"{target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        fail(f"{target} is not empty; pass --force to write into it, or -o another directory")
    chosen = [part for part, on in zip(JOB_PARTS, (code, data, params, model), strict=True) if on] or list(JOB_PARTS)
    listing = _job_files(api, ws, job, chosen)
    if "model" in chosen and listing.get("model") is None:
        message = f"job {job} has no model (status {listing.get('status')})"
        if model:
            fail(message)
        err.print(f"[yellow]warning:[/] {message}; downloading the rest")
    files = [(_inside(target, "code", f["path"]), f) for f in listing.get("code", [])]
    files += [(_inside(target, "data", channel, f["path"]), f)
              for channel, entries in sorted(listing.get("data", {}).items()) for f in entries]
    archive = listing.get("model")
    total = sum(f["size"] for _, f in files) + (archive["size"] if archive else 0)
    target.mkdir(parents=True, exist_ok=True)
    members = _download(api, target, job, files, archive, total)
    if "params" in listing:
        (target / "params.json").write_text(json.dumps(listing["params"], indent=2, sort_keys=True) + "\n")
    summary = {"job": job, "directory": str(target), "parts": chosen, "files": len(files),
               "bytes": total, "params": "params" in listing, "model": members if archive else None}
    if as_json:
        return emit_json(summary)
    written = [f"{len(files)} files" if files else "", "params.json" if summary["params"] else "",
               f"model ({len(members)} entries)" if archive else ""]
    console.print(f"job [bold]{job}[/] → {target}: " + ", ".join(w for w in written if w) + " (sha256 verified)")
    return None


def _download(api: Client, target: Path, job: str, files: list[tuple[Path, dict[str, Any]]],
              archive: dict[str, Any] | None, total: int) -> list[str]:
    """Every file (each checked against its sha256) and the model archive (unpacked); the archive's members."""
    done: dict[str, Path] = {}
    with byte_bar() as progress:
        task = progress.add_task(f"downloading {job} ({len(files)} files{' and the model' if archive else ''})",
                                 total=total)
        for dest, entry in files:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if entry["sha256"] in done:  # identical content: copy the verified local file
                shutil.copyfile(done[entry["sha256"]], dest)
                progress.advance(task, entry["size"])
                continue
            partial = dest.with_name(dest.name + ".part")
            span = (entry["offset"], entry["size"]) if "offset" in entry else None
            digest = api.download(entry["url"], partial, lambda n: progress.advance(task, n), span)
            if digest != entry["sha256"]:
                partial.unlink(missing_ok=True)
                fail(f"{dest.relative_to(target)}: sha256 {digest} does not match the manifest's {entry['sha256']}")
            partial.replace(dest)
            done[entry["sha256"]] = dest
        if not archive:
            return []
        partial = target / ".model.tar.gz.part"
        try:
            api.download(archive["url"], partial, lambda n: progress.advance(task, n))
            received = partial.stat().st_size
            if received != archive["size"]:
                fail(f"model.tar.gz: got {received} bytes, expected {archive['size']}")
            return extract_archive(partial, target / "model")
        finally:
            partial.unlink(missing_ok=True)


@app.command("kill")
def train_kill(job: str, ws_option: str | None = WorkspaceOpt,
               yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation.")) -> None:
    """Stop a running job; it ends KILLED and keeps its provenance."""
    api, ws = client(), workspace(ws_option)
    job = ops.resolve(api, ws, job)
    if not yes and not typer.confirm(f"Stop job {job}?"):
        raise typer.Exit(1)
    killed = api.kill_job(ws, job)
    console.print(f"job [bold]{killed['id']}[/] {killed['status']}")


@app.command("resume")
def train_resume(job: str, ws_option: str | None = WorkspaceOpt,
                 wait: bool = typer.Option(False, "--wait", help="Follow the job to its end."),
                 as_json: bool = JsonOpt) -> None:
    """Run a FAILED or KILLED job again with exactly the same inputs: a new attempt of the same job id."""
    api, ws = client(), workspace(ws_option)
    job = ops.resolve(api, ws, job)
    resumed = api.resume_job(ws, job)
    if wait:
        resumed = follow_job(api, ws, job)
    if as_json:
        return emit_json(resumed)
    console.print(f"job [bold]{resumed['id']}[/] attempt {resumed['attempt']}: {resumed['status']}")
    if wait:
        print_job(resumed)
        if resumed["status"] != "COMPLETED":
            raise typer.Exit(1)
    return None


@app.command("reproduce")
def train_reproduce(model_or_job: str = typer.Argument(..., metavar="MODEL_OR_JOB",
                                                       help="model:<job id>, job:<job id> or a job id (or prefix)."),
                    ws_option: str | None = WorkspaceOpt,
                    wait: bool = typer.Option(False, "--wait", help="Follow the new job and compare the models."),
                    as_json: bool = JsonOpt) -> None:
    """Train a COMPLETED job again with exactly its recorded inputs, as a new job linked to it in provenance."""
    prefix, _, job = model_or_job.rpartition(":")
    if prefix not in ("", "model", "job"):
        fail(f"{model_or_job!r}: give model:<job id>, job:<job id> or a job id")
    api, ws = client(), workspace(ws_option)
    job = ops.resolve(api, ws, job)
    started = api.reproduce(ws, job)
    result = started
    if wait:
        follow_job(api, ws, started["id"])
        # Reproducing is idempotent: the same job again, now with its model compared to the original's.
        result = {**api.reproduce(ws, job), "cached": started["cached"]}
    if as_json:
        return emit_json(result)
    note = "already reproduced: the same job" if result["cached"] else "started"
    console.print(f"job [bold]{result['id']}[/] reproduces {result['reproduction_of']} ({note}); "
                  f"status {result['status']}")
    if wait:
        print_job(result)
        console.print(f"model bytes identical: {_verdict(result['comparison'])}")
        if result["status"] != "COMPLETED":
            raise typer.Exit(1)
    return None


def _verdict(comparison: dict[str, Any]) -> str:
    new, original = comparison["reproduction"] or {}, comparison["original"] or {}
    if comparison["identical"] is None:
        return "unknown (no model to compare)" if not new else "unknown (the original has no content hash)"
    said = {True: "equal", False: "differs", None: "not recorded"}
    return ("yes" if comparison["identical"] else "no") + (
        f" (model.tar.gz sha256 {said[comparison['archive_identical']]}, content sha256 "
        f"{said[comparison['content_identical']]}: {str(new.get('content_sha256'))[:12]} new vs "
        f"{str(original.get('content_sha256'))[:12]} original)")


@app.command("logs")
def train_logs(job: str, ws_option: str | None = WorkspaceOpt,
               follow: bool = typer.Option(False, "--follow", "-f",
                                           help="Keep reading until the job ends; exit 0 if it COMPLETED.")) -> None:
    """Print a job's whole training log (stdout and stderr of the entry point)."""
    api, ws = client(), workspace(ws_option)
    reader = ops.LogReader(api, ws, ops.resolve(api, ws, job), follow)
    for event in reader:
        sys.stdout.write(event["message"].rstrip("\n") + "\n")
        sys.stdout.flush()
    if follow:
        raise typer.Exit(ops.exit_code(reader.status))


# The provenance options, shared with `serve provenance` (which walks from an endpoint through this command).
DownOpt = typer.Option(False, "--down", help="Follow edges forward (what used it).")
DepthOpt = typer.Option(None, "--depth", min=1, help="Follow at most N hops.")
FormatOpt = typer.Option("text", "--format", "-f",
                         help="text (tree), json, dot, mermaid, png or svg (png/svg need Graphviz' dot).")
OutputOpt = typer.Option(None, "--output", "-o", help="Write to FILE (required for png).")


@app.command("provenance")
def train_provenance(node: str, ws_option: str | None = WorkspaceOpt, down: bool = DownOpt,
                     depth: int | None = DepthOpt, fmt: str = FormatOpt, output: Path | None = OutputOpt,
                     as_json: bool = JsonOpt) -> None:
    """Show the provenance graph of a job (train-...), model (model:train-...) or snapshot (snapshot:<id>)."""
    fmt = "json" if as_json else fmt
    if fmt not in render.FORMATS:
        fail(f"--format must be one of {', '.join(render.FORMATS)}")
    if fmt == "png" and output is None:
        fail("--format png writes binary: give -o FILE")
    if fmt in render.IMAGE_FORMATS:
        render.dot_binary()
    api, ws = client(), workspace(ws_option)
    node_id = ops.resolve_node(api, ws, node)
    pages, cursor = [], None
    while True:  # every page of the walk (the API returns at most 1,000 nodes per page)
        page = api.lineage(ws, node_id, "down" if down else "up", depth, cursor=cursor)
        pages.append(page)
        if not (cursor := page.get("next")):
            break
    graph = render.merge_pages(pages)
    if fmt == "text":
        if output is None:
            console.print(provenance_tree(graph, down), soft_wrap=False)  # a long label wraps, never cropped
        else:
            with output.open("w") as handle:
                Console(file=handle, width=200).print(provenance_tree(graph, down))
    elif output is None:
        sys.stdout.write(render.render(graph, fmt).decode())
    else:
        output.write_bytes(render.render(graph, fmt))
    if output is not None:
        err.print(f"wrote {fmt} of {len(graph['nodes'])} node(s) to {output}")
    return None
