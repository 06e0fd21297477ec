"""`kaos model ...`: the model registry. A group's versions are trained jobs' models, each approved or rejected;
aliases (champion, challenger, any name) point at versions and move atomically."""
from __future__ import annotations

import typer

from kaos import operations as ops
from kaos.cli.common import JsonOpt, WorkspaceOpt, client, console, emit_json, fail, workspace
from kaos.cli.views import groups_table, versions_table

app = typer.Typer(help="Register trained models as versions of a group, approve them, move aliases.",
                  no_args_is_help=True)


@app.command("register")
def model_register(job: str = typer.Argument(..., help="A COMPLETED training job (id or unique prefix)."),
                   group: str = typer.Option(..., "--group", "-g", help="Model group (created on first use)."),
                   ws_option: str | None = WorkspaceOpt, as_json: bool = JsonOpt) -> None:
    """Register JOB's model as the next version of GROUP (the same job again: the same version)."""
    api, ws = client(), workspace(ws_option)
    version = api.register_model(ws, group, ops.resolve(api, ws, job.removeprefix("model:")))
    if as_json:
        return emit_json(version)
    console.print(f"model [bold]{version['group']}/{version['version']}[/] ({version['job_id']}): "
                  f"{version['status']}; `kaos model approve {version['group']}/{version['version']} -w {ws}` "
                  "approves it", highlight=False)
    return None


@app.command("approve")
def model_approve(reference: str = typer.Argument(..., metavar="GROUP/VERSION"),
                  reject: bool = typer.Option(False, "--reject", help="Reject the version instead."),
                  ws_option: str | None = WorkspaceOpt, as_json: bool = JsonOpt) -> None:
    """Approve a version (only approved versions may become champion), or --reject it."""
    group, number = ops.group_version(reference)
    ws = workspace(ws_option)
    version = client().approve_model(ws, group, number, "Rejected" if reject else "Approved")
    if as_json:
        return emit_json(version)
    console.print(f"model [bold]{version['group']}/{version['version']}[/] {version['status']}", highlight=False)
    return None


@app.command("list")
def model_list(group: str | None = typer.Argument(None, help="A group: its versions (default: every group)."),
               ws_option: str | None = WorkspaceOpt, as_json: bool = JsonOpt) -> None:
    """The workspace's model groups, or one group's versions (newest first) with their status and aliases."""
    api, ws = client(), workspace(ws_option)
    if group is None:
        groups = api.model_groups(ws)
        if as_json:
            return emit_json(groups)
        if not groups["groups"]:
            console.print(f"no model groups in {ws}; `kaos model register JOB --group NAME` creates one",
                          markup=False)
            return None
        console.print(groups_table(groups["groups"]))
        return None
    described = api.model_group(ws, group)
    if as_json:
        return emit_json(described)
    console.print(versions_table(described))
    return None


@app.command("alias")
def model_alias(group: str, alias: str,
                version: int | None = typer.Argument(None, help="The version the alias moves to."),
                delete: bool = typer.Option(False, "--delete", help="Remove the alias."),
                ws_option: str | None = WorkspaceOpt, as_json: bool = JsonOpt) -> None:
    """Point ALIAS of GROUP at VERSION (moved atomically from the version it was on), or --delete it."""
    if delete == (version is not None):
        fail("give either VERSION (move the alias) or --delete (remove it)")
    ws = workspace(ws_option)
    moved = client().move_alias(ws, group, alias, version)
    if as_json:
        return emit_json(moved)
    before = f"was {moved['previous']}" if moved.get("previous") is not None else "new"
    now = "deleted" if delete else f"-> {group}/{moved['version']}"
    console.print(f"alias {group}@{alias} {now} ({before})", markup=False, highlight=False)
    return None
