"""Rich renderings of API answers. Ids are never cut: their column does not wrap, the other columns do."""
from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.tree import Tree

from kaos.cli.common import console, offline


def id_column(table: Table, header: str) -> None:
    table.add_column(header, no_wrap=True, overflow="ignore", min_width=10)


def money(usd: float) -> str:
    """Cents once there are any; a single job's pipeline costs fractions of a cent, shown to the micro-dollar."""
    return f"${usd:,.2f}" if usd >= 0.01 else f"${usd:.6f}"


def cost_text(cost: dict[str, Any] | None, offline: bool) -> str:
    """A cost and where its numbers come from. Offline, they are local run times priced as AWS would."""
    if not cost:
        return "-"
    return f"{money(float(cost['usd']))} ({cost['basis']}{', estimated at AWS prices' if offline else ''})"


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
    if job.get("cost"):
        table.add_row("cost", cost_text(job["cost"], offline()))
    ran = job.get("environment_ran") or {}
    for key in ("environment_id", "packages_sha256", "requirements_sha256"):
        if ran.get(key):
            table.add_row(f"environment:{key.removesuffix('_sha256')}", str(ran[key]))
    for warning in ran.get("fidelity") or []:
        table.add_row("fidelity", warning)
    return table


def print_job(job: dict[str, Any]) -> None:
    console.print(job_table(job))


def jobs_table(jobs: list[dict[str, Any]], wide: bool, cost: bool = False) -> Table:
    table = Table()
    id_column(table, "job")
    table.add_column("status", no_wrap=True)
    if wide:
        table.add_column("kind", no_wrap=True)
        table.add_column("attempt", no_wrap=True)
    table.add_column("created", overflow="fold")
    table.add_column("metrics", overflow="fold")
    if cost:
        table.add_column("cost", overflow="fold")
    local = offline() if cost else False
    for job in jobs:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(job["metrics"].items()))
        extra = [job.get("kind", ""), str(job.get("attempt", 1))] if wide else []
        priced = [cost_text(job.get("cost"), local)] if cost else []
        table.add_row(job["id"], job["status"], *extra, job["created_at"], metrics, *priced)
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
        cost = nodes.get(node_id, {}).get("cost")
        return (f"[bold]{node_id}[/]" + (f" [dim]{extra}[/]" if extra else "")
                + (f" [green]{money(cost['usd'])}[/]" if cost else ""))

    # Upstream, the jobs of the tree are what the root cost to make: the model's rolled-up cost.
    job_costs = [float(n["cost"]["usd"]) for n in graph["nodes"] if n.get("type") == "job" and n.get("cost")]
    rolled = f" [green](with its lineage: {money(sum(job_costs))}, {len(job_costs)} jobs)[/]"
    root = Tree(label(graph["root"]) + (rolled if not down and len(job_costs) > 1 else ""))

    def grow(branch: Tree, node_id: str, seen: frozenset[str]) -> None:
        for rel, child in sorted(children.get(node_id, [])):
            sub = branch.add(f"[cyan]{rel}[/] {label(child)}")
            if child not in seen:
                grow(sub, child, seen | {child})

    grow(root, graph["root"], frozenset({graph["root"]}))
    return root


def model_label(model: dict[str, Any]) -> str:
    """`digits/3 (train-…)` for a registered version, the job id alone otherwise."""
    if model.get("group") and model.get("version") is not None:
        return f"{model['group']}/{model['version']} ({model['job_id']})"
    return str(model.get("job_id") or "")


def endpoint_table(endpoint: dict[str, Any]) -> Table:
    table = Table(show_header=False)
    id_column(table, "field")
    table.add_column("value", overflow="fold")
    size = (f"{endpoint['memory_mb']} MB, up to {endpoint['max_concurrency']} concurrent requests"
            if endpoint["kind"] == "serverless" else f"{endpoint['instance_count']} x {endpoint['instance_type']}")
    rows = [("name", endpoint["name"]), ("status", endpoint["status"]),
            ("failure_reason", endpoint.get("failure_reason")), ("kind", f"{endpoint['kind']} ({size})"),
            ("model", model_label(endpoint["model"])), ("model_sha256", endpoint["model"].get("model_sha256")),
            ("capture", f"{endpoint['capture_percent']}% of requests" if endpoint.get("capture_percent") else None),
            ("sagemaker_endpoint", endpoint["sagemaker_endpoint"]), ("created_at", endpoint["created_at"]),
            ("updated_at", endpoint["updated_at"]), ("invocations", endpoint["invocations_path"])]
    for key, value in rows:
        if value:
            table.add_row(key, str(value))
    return table


def deployments_table(deployments: list[dict[str, Any]]) -> Table:
    failures = any(row.get("failure_reason") for row in deployments)
    table = Table(title="deployments (newest first)", title_justify="left")
    id_column(table, "deployment")
    table.add_column("model", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("started", overflow="fold")
    table.add_column("ended", overflow="fold")
    if failures:
        table.add_column("failure", overflow="fold")
    for row in deployments:
        model = row["model"]
        short = f"{model['group']}/{model['version']}" if model.get("group") else str(model.get("job_id"))
        table.add_row(str(row["deployment"]), short, row["status"], row.get("started_at") or "",
                      row.get("ended_at") or "", *([row.get("failure_reason") or ""] if failures else []))
    return table


def print_endpoint(endpoint: dict[str, Any]) -> None:
    console.print(endpoint_table(endpoint))
    if endpoint.get("deployments"):
        console.print(deployments_table(endpoint["deployments"]))


def endpoints_table(endpoints: list[dict[str, Any]]) -> Table:
    table = Table()
    id_column(table, "endpoint")
    table.add_column("status", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("model", overflow="fold")
    table.add_column("updated", overflow="fold")
    for endpoint in endpoints:
        table.add_row(endpoint["name"], endpoint["status"], endpoint["kind"], model_label(endpoint["model"]),
                      endpoint["updated_at"])
    return table


def groups_table(groups: list[dict[str, Any]]) -> Table:
    table = Table()
    id_column(table, "group")
    table.add_column("latest", no_wrap=True)
    table.add_column("aliases", overflow="fold")
    for group in groups:
        aliases = ", ".join(f"{alias}={version}" for alias, version in sorted(group["aliases"].items()))
        table.add_row(group["group"], str(group["latest_version"]), aliases)
    return table


def versions_table(group: dict[str, Any]) -> Table:
    table = Table(title=f"model group {group['group']}", title_justify="left")
    table.add_column("version", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("aliases", overflow="fold")
    id_column(table, "job")
    table.add_column("created", overflow="fold")
    for version in group["versions"]:
        table.add_row(str(version["version"]), version["status"], ", ".join(sorted(version.get("aliases") or [])),
                      version["job_id"], version["created_at"])
    return table
