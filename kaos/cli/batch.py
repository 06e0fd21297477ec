"""`kaos data ...` (push new files, impact of a snapshot or object) and `kaos batch deploy` (processing jobs)."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from kaos import operations as ops
from kaos.cli.common import JsonOpt, WorkspaceOpt, client, console, emit_json, err, fail, workspace
from kaos.cli.progress import byte_bar
from kaos.cli.train import follow_job, upload
from kaos.cli.views import id_column, print_job
from kaos.bundle import scan

data_app = typer.Typer(help="Push new data files; with auto-retrain on they retrain the workspace.",
                       no_args_is_help=True)
app = typer.Typer(help="Run processing jobs on AWS Batch; each output is a new data snapshot.", no_args_is_help=True)


@data_app.command("push")
def data_push(files: list[Path] = typer.Argument(..., help="Files to upload (each under its own name)."),
              ws_option: str | None = WorkspaceOpt, as_json: bool = JsonOpt) -> None:
    """Upload FILES to ws/<ws>/incoming/<name> straight to S3; auto-retrain turns them into a new data snapshot
    (the latest training data + these files) and one training job."""
    ws = workspace(ws_option)
    named: dict[str, Path] = {}
    for path in files:
        if not path.is_file():
            fail(f"{path}: not a file")
        if path.name in named:
            fail(f"{path.name}: two files with this name")
        named[path.name] = path
    api = client()
    total = sum(p.stat().st_size for p in named.values())
    with byte_bar() as progress:
        task = progress.add_task(f"uploading {len(named)} file(s)", total=total)
        result = api.push_data(ws, list(named.items()), lambda n: progress.advance(task, n))
    if as_json:
        return emit_json(result)
    note = ("auto-retrain is on: they retrain the workspace shortly" if result.get("auto_retrain")
            else f"auto-retrain is off: nothing retrains (`kaos workspace auto-retrain {ws} on` turns it on)")
    console.print(f"pushed {len(result['files'])} file(s) to ws/{ws}/incoming/; {note}", markup=False)
    return None


@data_app.command("impact")
def data_impact(target: str = typer.Argument(..., help="s3://bucket/key (or prefix/), snapshot:<id> or an id."),
                ws_option: str | None = WorkspaceOpt, as_json: bool = JsonOpt) -> None:
    """Every job and model downstream of a data snapshot, or of an S3 object that remote data manifests use."""
    api, ws = client(), workspace(ws_option)
    resolved = ops.resolve_target(api, ws, target)
    result = api.impact(ws, resolved)
    if as_json:
        return emit_json(result)
    if not result["matched"]:
        console.print(f"no data snapshot of this workspace references {target}", markup=False)
        return None
    console.print(f"{target}: in {len(result['matched'])} snapshot(s): {', '.join(result['matched'])}", markup=False)
    table = Table("type")
    id_column(table, "id")
    table.add_column("detail", overflow="fold")
    for kind, key in (("job", "kind"), ("model", "uri"), ("endpoint", "sagemaker_endpoint"), ("snapshot", "kind")):
        for row in result[f"{kind}s"]:
            table.add_row(kind, row["id"], str(row.get(key) or ""))
    console.print(table if table.rows else "nothing downstream: no job used it")
    if result.get("truncated"):
        err.print(f"truncated: more than 5,000 nodes downstream; `kaos train provenance {result['matched'][0]} "
                  f"--down -w {ws}` shows them all", markup=False, highlight=False)
    return None


@app.command("deploy")
def batch_deploy(
    source: Path = typer.Option(..., "--source", "-s",
                                help="Code directory (process.py, main.py or process.sh unless --command is given)."),
    data: Path = typer.Option(..., "--data", "-d", help="Input data directory ($KAOS_INPUT_DIR in the job)."),
    command: str | None = typer.Option(None, "--command",
                                       help="Shell command run in the code directory; it writes its results "
                                            "to $KAOS_OUTPUT_DIR."),
    ws_option: str | None = WorkspaceOpt,
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
    ws = workspace(ws_option)
    if glob and not per_file:
        raise typer.BadParameter("--glob needs --per-file", param_hint="--glob")
    # Every local check (directories, sizes, symlinks, entry point) runs before anything is hashed or uploaded.
    scan(source, "-s")
    scan(data, "-d")
    if command is None:
        ops.check_entry_point(source, ops.BATCH_ENTRY_POINTS, "-s", ops.BATCH_OTHERWISE)
    api = client()
    job = ops.submitting(api, ws, lambda: api.submit_batch(ws, upload(api, ws, "code", source, "-s"),
                                                           upload(api, ws, "data", data, "-d"), command,
                                                           max_runtime, per_file, glob))
    if wait:
        err.print(f"batch job {job['id']} submitted", markup=False, highlight=False)
        job = {**follow_job(api, ws, job["id"]), "cached": job["cached"]}
    if as_json:
        return emit_json(job)
    note = "[yellow]cache hit: identical inputs, nothing started[/]" if job.get("cached") else "started"
    console.print(f"batch job [bold]{job['id']}[/] {note}; status {job['status']}")
    if wait:
        print_job(job)
        if job["status"] != "COMPLETED":
            raise typer.Exit(1)
        output = str(job["model"]).removeprefix("snapshot:")
        console.print(f"output: data snapshot [bold]{output}[/]; train on it with "
                      f"`kaos train deploy -d snapshot:{output} -w {ws}`, its provenance: "
                      f"`kaos train provenance snapshot:{output} -w {ws}`")
    return None
