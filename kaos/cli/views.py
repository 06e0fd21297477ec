"""Rich renderings of API answers. Ids are never cut: their column does not wrap, the other columns do."""
from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.tree import Tree

from kaos.cli.common import console


def id_column(table: Table, header: str) -> None:
    table.add_column(header, no_wrap=True, overflow="ignore", min_width=10)


def job_table(job: dict[str, Any]) -> Table:
    table = Table(show_header=False)
    id_column(table, "field")
    table.add_column("value", overflow="fold")
    # A batch job's output is a data snapshot, not a model.
    output = "output" if str(job.get("model") or "").startswith("snapshot:") else "model"
    for key in ("id", "status", "created_at", "started_at", "ended_at", "environment", "model", "failure_reason"):
        if job.get(key):
            table.add_row(output if key == "model" else key, str(job[key]))
    if int(job.get("attempt") or 1) > 1:
        table.add_row("attempt", str(job["attempt"]))
    sources = job.get("sources") or {}

    def origin(kind: str) -> str:
        # Where the input came from: given with this deploy, or reused from the workspace's latest.
        return f" ({sources[kind]})" if kind in sources and kind != "grid" else ""

    table.add_row("code" + origin("code"), job["inputs"]["code"])
    for channel, snapshot in sorted(job["inputs"]["data"].items()):
        table.add_row(f"data:{channel}" + origin("data"), snapshot)
    table.add_row("params" + origin("params"), job["inputs"]["params"])
    for name, value in sorted(job["metrics"].items()):
        table.add_row(f"metric:{name}", f"{value:.6g}")
    return table


def print_job(job: dict[str, Any]) -> None:
    console.print(job_table(job))


def jobs_table(jobs: list[dict[str, Any]], wide: bool) -> Table:
    table = Table()
    id_column(table, "job")
    table.add_column("status", no_wrap=True)
    if wide:
        table.add_column("kind", no_wrap=True)
        table.add_column("attempt", no_wrap=True)
    table.add_column("created", overflow="fold")
    table.add_column("metrics", overflow="fold")
    for job in jobs:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(job["metrics"].items()))
        extra = [job.get("kind", ""), str(job.get("attempt", 1))] if wide else []
        table.add_row(job["id"], job["status"], *extra, job["created_at"], metrics)
    return table


def print_grid(grid: dict[str, Any]) -> None:
    counts = ", ".join(f"{n} {status.lower()}" for status, n in sorted(grid["counts"].items()))
    console.print(f"grid [bold]{grid['id']}[/] {grid['status']}: {grid['points']} points ({counts}); "
                  f"page {grid['page']}/{grid['pages']}")
    names = sorted({k for p in grid["rows"] for k in p["metrics"]})
    axes = [k for k, v in grid["params"].items() if isinstance(v, list)]
    table = Table("#")
    id_column(table, "job")
    for header in ("status", *axes, *names):
        table.add_column(header)
    for point in grid["rows"]:
        table.add_row(str(point["index"]), point["job"], point["status"],
                      *(str(point["params"].get(a)) for a in axes),
                      *(f"{point['metrics'][n]:.4g}" if n in point["metrics"] else "-" for n in names))
    console.print(table)


def print_members(result: dict[str, Any]) -> None:
    table = Table()
    id_column(table, "user")
    table.add_column("role")
    table.add_column("added", overflow="fold")
    for member in result["members"]:
        table.add_row(member["user"], member["role"], member.get("added_at", ""))
    console.print(table)


def provenance_tree(graph: dict[str, Any], down: bool) -> Tree:
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
