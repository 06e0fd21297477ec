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
    _table("jobs", ("job", "kind", "status", "created", "cost"),
           [(j["id"], j["kind"], j["status"], j["created_at"], cost_text(j, local)) for j in answer["jobs"]])
    _table("models (rolled up: every job upstream of the model)", ("model", "own", "rolled up", "jobs"),
           [(m["id"], money(m["usd"]),
             money(m["rolled_up_usd"]) + (" (walk truncated)" if m.get("truncated") else ""),
             str(len(m.get("lineage", [])))) for m in answer["models"]])
    if answer.get("models_omitted"):
        console.print(f"{answer['models_omitted']} older models not rolled up: narrow with --since", highlight=False)
    _table("endpoints", ("endpoint", "kind", "status", "cost"),
           [(e["name"], e["kind"], e["status"], cost_text(e, local)) for e in answer["endpoints"]])


def _table(title: str, headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A table of one kind of thing, its id column first; nothing when there is none."""
    if not rows:
        return
    table = Table(title=title)
    id_column(table, headers[0])
    for header in headers[1:]:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)
