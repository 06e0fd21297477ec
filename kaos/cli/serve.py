"""`kaos serve ...`: put a trained model behind an endpoint, promote and roll back versions, predict, follow its
log, walk its provenance, kill it."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from kaos import operations as ops
from kaos.cli.common import JsonOpt, WorkspaceOpt, client, console, emit_json, err, fail, workspace
from kaos.cli.progress import status_line
from kaos.cli.train import DepthOpt, DownOpt, FormatOpt, OutputOpt, train_provenance
from kaos.cli.views import endpoints_table, model_label, print_endpoint
from kaos.client import Client

app = typer.Typer(help="Serve trained models behind endpoints (SageMaker Serverless Inference; offline a local "
                       "model server).", no_args_is_help=True)
ModelArg = typer.Argument(..., metavar="MODEL",
                          help="A job id (or unique prefix), GROUP/VERSION (digits/3) or GROUP@ALIAS "
                               "(digits@champion).")
WaitOpt = typer.Option(False, "--wait", help="Follow the endpoint until it is InService (exit 1 if it fails).")


def _settled(api: Client, ws: str, endpoint: dict[str, Any], wait: bool, as_json: bool, what: str) -> None:
    """Shows an endpoint just changed; with --wait follows it to rest and fails with the reason it did not go live."""
    if wait:
        err.print(f"endpoint {endpoint['name']} {what}", markup=False, highlight=False)
        with status_line(f"endpoint {endpoint['name']}: {endpoint['status']}") as show:
            endpoint = ops.wait_endpoint(api, ws, endpoint["name"], lambda e: show(f"endpoint {e['name']}: "
                                                                                   f"{e['status']}"))
    if as_json:
        emit_json(endpoint)
    else:
        console.print(f"endpoint [bold]{endpoint['name']}[/] {endpoint['status']}: "
                      f"{model_label(endpoint['model'])}", highlight=False)
    failure = ops.deployment_failure(endpoint) if wait else None
    if failure:
        fail(f"endpoint {endpoint['name']}: {failure}; `kaos serve logs {endpoint['name']} -w {ws}` shows the "
             "model server's output")
    if not wait and not as_json:
        err.print(f"`kaos serve info {endpoint['name']} -w {ws}` shows its progress", markup=False, highlight=False)


@app.command("deploy")
def serve_deploy(
    model: str = ModelArg,
    name: str | None = typer.Option(None, "--name", "-n", help="Endpoint name (default: the group name, or the "
                                                                 "job id's short form)."),
    memory: int | None = typer.Option(None, "--memory", help="Serverless memory in MB: 1024-6144 in 1024 steps "
                                                             "(default 2048)."),
    max_concurrency: int | None = typer.Option(None, "--max-concurrency",
                                               help="Serverless: concurrent requests, 1-200 (default 5)."),
    instance_type: str | None = typer.Option(None, "--instance-type",
                                             help="A real-time endpoint on this instance type (ml.*) instead of "
                                                  "serverless."),
    capture: int | None = typer.Option(None, "--capture", metavar="PERCENT",
                                       help="Capture this percentage of requests and responses (0-100) as JSON "
                                            "lines in the workspace."),
    ws_option: str | None = WorkspaceOpt,
    wait: bool = WaitOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Deploy MODEL behind a new endpoint."""
    api, ws = client(), workspace(ws_option)
    settings = {"model": ops.model_reference(api, ws, model), "name": name, "memory_mb": memory,
                "max_concurrency": max_concurrency, "instance_type": instance_type, "capture_percent": capture}
    endpoint = api.deploy_endpoint(ws, {k: v for k, v in settings.items() if v is not None})
    _settled(api, ws, endpoint, wait, as_json, "deploying")


@app.command("promote")
def serve_promote(name: str, model: str = ModelArg, ws_option: str | None = WorkspaceOpt, wait: bool = WaitOpt,
                  as_json: bool = JsonOpt) -> None:
    """Put MODEL on a live endpoint (blue/green for serverless, canary with alarm rollback for real-time)."""
    api, ws = client(), workspace(ws_option)
    endpoint = api.promote(ws, name, ops.model_reference(api, ws, model))
    _settled(api, ws, endpoint, wait, as_json, "promoting")


@app.command("rollback")
def serve_rollback(name: str, ws_option: str | None = WorkspaceOpt, wait: bool = WaitOpt,
                   as_json: bool = JsonOpt) -> None:
    """Go back to the endpoint's previous successful deployment."""
    api, ws = client(), workspace(ws_option)
    _settled(api, ws, api.rollback(ws, name), wait, as_json, "rolling back")


@app.command("list")
def serve_list(ws_option: str | None = WorkspaceOpt,
               limit: int = typer.Option(50, "--limit", min=1, help="Endpoints per page."),
               next_token: str | None = typer.Option(None, "--next", help="Continue a previous listing."),
               as_json: bool = JsonOpt) -> None:
    """List the workspace's endpoints."""
    ws = workspace(ws_option)
    page = client().endpoints(ws, limit, next_token)
    if as_json:
        return emit_json(page)
    if not page["endpoints"]:
        console.print(f"no endpoints in {ws}; `kaos serve deploy MODEL` creates one", markup=False)
    else:
        console.print(endpoints_table(page["endpoints"]))
    if page.get("next"):
        err.print(f"more: `kaos serve list -w {ws} --next {page['next']}`", markup=False, highlight=False)
    return None


@app.command("info")
def serve_info(name: str, ws_option: str | None = WorkspaceOpt, as_json: bool = JsonOpt) -> None:
    """Show an endpoint: status, failure reason, model, size, and its deployments (newest first)."""
    endpoint = client().endpoint(workspace(ws_option), name)
    if as_json:
        return emit_json(endpoint)
    print_endpoint(endpoint)
    return None


@app.command("logs")
def serve_logs(name: str, ws_option: str | None = WorkspaceOpt,
               follow: bool = typer.Option(False, "--follow", "-f",
                                           help="Keep reading until the endpoint is deleted (Ctrl-C stops).")) -> None:
    """Print the endpoint's log: what its model server wrote (loading, requests, your handlers' output)."""
    api, ws = client(), workspace(ws_option)
    for event in ops.EndpointLogReader(api, ws, name, follow):
        sys.stdout.write(event["message"].rstrip("\n") + "\n")
        sys.stdout.flush()


@app.command("predict")
def serve_predict(name: str,
                  data: str = typer.Option(..., "--data", "-d", metavar="FILE|-",
                                           help="The request body: a file (.json, .csv, .npy) or - for stdin."),
                  content_type: str | None = typer.Option(None, "--content-type",
                                                          help="Content-Type of the body (default: from the "
                                                               "file's extension)."),
                  accept: str | None = typer.Option(None, "--accept",
                                                    help="Accept: the response's type (default: the model's)."),
                  ws_option: str | None = WorkspaceOpt) -> None:
    """Send one request to the endpoint; the model's answer goes to stdout as it came."""
    ws = workspace(ws_option)
    kind = ops.content_type(data, content_type)
    if data == "-":
        body = sys.stdin.buffer.read()
    elif not Path(data).is_file():
        fail(f"--data {data}: not a file")
    else:
        body = Path(data).read_bytes()
    answer, _ = client().invoke(ws, name, body, kind, accept)
    sys.stdout.buffer.write(answer)
    if sys.stdout.isatty() and not answer.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")  # the shell prompt on a line of its own; a pipe gets the bytes unchanged
    sys.stdout.flush()


@app.command("provenance")
def serve_provenance(name: str, ws_option: str | None = WorkspaceOpt, down: bool = DownOpt,
                     depth: int | None = DepthOpt, fmt: str = FormatOpt, output: Path | None = OutputOpt,
                     as_json: bool = JsonOpt) -> None:
    """The endpoint's provenance: endpoint -> model version -> model -> job -> code, data, params, environment."""
    train_provenance(f"endpoint:{name}", ws_option, down, depth, fmt, output, as_json)


@app.command("kill")
def serve_kill(name: str, ws_option: str | None = WorkspaceOpt,
               yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
               as_json: bool = JsonOpt) -> None:
    """Delete the endpoint (its SageMaker endpoint, config and model); its provenance is kept."""
    api, ws = client(), workspace(ws_option)
    if not yes and not typer.confirm(f"Delete endpoint {name} of {ws}?"):
        raise typer.Exit(1)
    killed = api.kill_endpoint(ws, name)
    if as_json:
        return emit_json(killed)
    console.print(f"endpoint [bold]{killed['name']}[/] {killed['status']}", highlight=False)
    return None
