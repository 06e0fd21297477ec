"""`kaos workspace ...`: create, choose, inspect, share and delete workspaces; auto-retrain."""
from __future__ import annotations

import difflib

import typer
from rich.table import Table

from kaos.cli.common import JsonOpt, client, console, emit_json, fail, workspace
from kaos.cli.views import id_column, print_members
from kaos.client import ApiError
from kaos.operations import check_member
from kaos.settings import ClientConfig

app = typer.Typer(help="Create, list, inspect and delete workspaces.", no_args_is_help=True)


@app.command("create")
def workspace_create(name: str) -> None:
    """Create a workspace and make it the current one."""
    created = client().create_workspace(name)
    config = ClientConfig.load()
    config.workspace = created["name"]
    config.save()
    console.print(f"workspace [bold]{created['name']}[/] ready (current)")


@app.command("list")
def workspace_list(as_json: bool = JsonOpt) -> None:
    """List the workspaces you are a member of."""
    rows = client().workspaces()
    if as_json:
        return emit_json(rows)
    current = ClientConfig.load().workspace
    table = Table("")
    id_column(table, "name")
    table.add_column("owner", overflow="fold")
    table.add_column("created", overflow="fold")
    for row in rows:
        table.add_row("*" if row["name"] == current else "", row["name"], row["owner"], row["created_at"])
    console.print(table)
    return None


@app.command("info")
def workspace_info(name: str | None = typer.Argument(None), as_json: bool = JsonOpt) -> None:
    """Show a workspace with its counts of snapshots, jobs and members."""
    info = client().workspace(workspace(name))
    if as_json:
        return emit_json(info)
    table = Table(show_header=False)
    for key in ("name", "owner", "created_at", "snapshots", "jobs", "members", "models"):
        if key in info:
            table.add_row(key, str(info[key]))
    console.print(table)
    return None


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


@app.command("set")
def workspace_set(name: str) -> None:
    """Make NAME the current workspace (it must exist and you must be a member)."""
    api = client()
    try:
        api.workspace(name)
    except ApiError as exc:
        if exc.status not in (400, 404):
            raise
        close = _close_names(name, [w["name"] for w in api.workspaces()])
        fail(exc.message + (f"; did you mean: {', '.join(close)}?" if close else
                            "; `kaos workspace list` shows yours"))
    config = ClientConfig.load()
    config.workspace = name
    config.save()
    console.print(f"current workspace: [bold]{name}[/]")


@app.command("current")
def workspace_current(as_json: bool = JsonOpt) -> None:
    """Print the current workspace (the default of every -w option)."""
    current = ClientConfig.load().workspace or None
    if as_json:
        return emit_json({"workspace": current})
    if current is None:
        console.print("no current workspace; `kaos workspace set NAME` or `kaos workspace create NAME` sets one")
        return None
    console.print(current)
    return None


@app.command("kill")
def workspace_kill(name: str, yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation.")) -> None:
    """Delete a workspace with everything in it (exactly that workspace)."""
    if not yes and not typer.confirm(f"Delete workspace {name!r} and all its data, jobs and models?"):
        raise typer.Exit(1)
    result = client().kill_workspace(name)
    config = ClientConfig.load()
    if config.workspace == name:
        config.workspace = ""
        config.save()
    console.print(f"deleted workspace [bold]{name}[/] ({result['deleted_rows']} rows, "
                  f"{result['deleted_objects']} objects)")


UserArg = typer.Argument(..., help="A user of the embedded stack (dev, guest), an IAM user name or a principal ARN.")


@app.command("share")
def workspace_share(name: str, user: str = UserArg) -> None:
    """Give a user access to a workspace (owner only)."""
    check_member(ClientConfig.load(), user)
    print_members(client().share(name, user))


@app.command("unshare")
def workspace_unshare(name: str, user: str = UserArg) -> None:
    """Remove a user's access to a workspace (owner only)."""
    print_members(client().unshare(name, user))


@app.command("members")
def workspace_members(name: str | None = typer.Argument(None), as_json: bool = JsonOpt) -> None:
    """List who can see a workspace."""
    result = client().members(workspace(name))
    if as_json:
        return emit_json(result)
    print_members(result)
    return None


@app.command("auto-retrain")
def workspace_auto_retrain(
    name: str | None = typer.Argument(None, help="Workspace (default: the current one)."),
    state: str | None = typer.Argument(None, metavar="[on|off]", help="Turn it on or off; omit to show it."),
    as_json: bool = JsonOpt,
) -> None:
    """Retrain on new data: files under ws/<ws>/incoming/ (`kaos data push`) start one job per upload window."""
    if state is None and name in ("on", "off"):  # `auto-retrain on`: the current workspace
        name, state = None, name
    if state is not None and state not in ("on", "off"):
        fail(f"{state!r}: say on or off")
    result = client().auto_retrain(workspace(name), None if state is None else state == "on")
    if as_json:
        return emit_json(result)
    console.print(f"auto-retrain in [bold]{result['workspace']}[/]: {'on' if result['enabled'] else 'off'} "
                  f"(uploads make one retraining once {result['window_seconds']} s pass without another)")
    if result["batches"]:
        table = Table("batch", "status", "files")
        id_column(table, "snapshot")
        id_column(table, "job")
        table.add_column("skipped / reason", overflow="fold")
        for batch in result["batches"]:
            notes = ", ".join(f"{s['path']}: {s['reason']}" for s in batch["skipped"]) or batch.get("reason") or ""
            table.add_row(batch["id"], batch["status"], str(batch["files"]), batch["snapshot"] or "",
                          batch["job"] or "", notes)
        console.print(table)
    return None
