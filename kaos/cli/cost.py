"""`kaos cost [WORKSPACE]`: what a workspace's jobs, models and endpoints cost, at AWS list prices."""
from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from kaos import operations as ops
from kaos.cli.common import JsonOpt, client, console, emit_json, offline, workspace
from kaos.cli.views import cost_text, id_column, money


def cost(ws_argument: str | None = typer.Argument(None, metavar="WORKSPACE",
                                                  help="Workspace (default: the current one)."),
         since: str | None = typer.Option(None, "--since", help="Only jobs created since: an ISO date/time or a "
                                                                "duration (30m, 2h, 7d)."),
         as_json: bool = JsonOpt) -> None:
    """Sum the cost of a workspace by job, model (rolled up along its lineage: its job and the batch jobs that
    made its data) and endpoint. Offline, local run times priced as AWS would bill them."""
    ws = workspace(ws_argument)
    answer = client().cost(ws, ops.since_time(since) if since else None)
    if as_json:
        return emit_json(answer)
    print_cost(answer, offline())
    return None


def print_cost(answer: dict[str, Any], local: bool) -> None:
    label = "estimated at AWS prices" if local else "at AWS list prices"
    since = f" since {answer['since']}" if answer.get("since") else ""
    console.print(f"workspace [bold]{answer['workspace']}[/]{since}: [bold]{money(answer['total_usd'])}[/] "
                  f"{label} ({answer['prices']})", highlight=False)
    if answer["jobs"]:
        jobs = Table(title="jobs")
        id_column(jobs, "job")
        for header in ("kind", "status", "created", "cost"):
            jobs.add_column(header, overflow="fold")
        for job in answer["jobs"]:
            jobs.add_row(job["id"], job["kind"], job["status"], job["created_at"], cost_text(job, local))
        console.print(jobs)
    if answer["models"]:
        models = Table(title="models (rolled up: every job upstream of the model)")
        id_column(models, "model")
        for header in ("own", "rolled up", "jobs"):
            models.add_column(header, overflow="fold")
        for model in answer["models"]:
            rolled = money(model["rolled_up_usd"]) + (" (walk truncated)" if model.get("truncated") else "")
            models.add_row(model["id"], money(model["usd"]), rolled, str(len(model.get("lineage", []))))
        console.print(models)
    if answer["endpoints"]:
        endpoints = Table(title="endpoints")
        id_column(endpoints, "endpoint")
        for header in ("kind", "status", "cost"):
            endpoints.add_column(header, overflow="fold")
        for endpoint in answer["endpoints"]:
            endpoints.add_row(endpoint["name"], endpoint["kind"], endpoint["status"], cost_text(endpoint, local))
        console.print(endpoints)
