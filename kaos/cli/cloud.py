"""`kaos cloud deploy|status|destroy` (the stack in an AWS account) and `kaos config show|use` (which stack the
client talks to)."""
from __future__ import annotations

import shlex
import subprocess
from typing import Any

import typer
from rich.table import Table

from kaos import cloud, prices
from kaos.cli.common import JsonOpt, console, emit_json, err, fail
from kaos.settings import TARGETS, ClientConfig, home

app = typer.Typer(help="Deploy the kaos stack to an AWS account and point the client at it.", no_args_is_help=True)
config_app = typer.Typer(help="Show the client configuration; switch between the local and the cloud stack.",
                         no_args_is_help=True)
ProfileOpt = typer.Option(None, "--profile", help="AWS profile that deploys and signs (default: the last one).")
RegionOpt = typer.Option(None, "--region", help="AWS region (default: the last one, else the profile's region).")
StageOpt = typer.Option(None, "--stage", help="dev (deleted with the stack) or prod (table and buckets kept).")
DryRunOpt = typer.Option(False, "--dry-run", help="Print the cdk command instead of running it.")


def _target(profile: str | None, region: str | None, stage: str | None) -> cloud.Target:
    """Options first, then what the last deploy used, then the profile's own region."""
    remembered = ClientConfig.load().targets.get("cloud", {})
    chosen_profile = profile or remembered.get("profile") or "default"
    chosen_stage = stage or remembered.get("stage") or "dev"
    if chosen_stage not in cloud.STAGES:
        fail(f"--stage {chosen_stage!r}: one of {', '.join(cloud.STAGES)}")
    chosen_region = region or remembered.get("region") or _profile_region(chosen_profile) or "us-east-1"
    return cloud.Target(chosen_region, chosen_profile, chosen_stage)


def _profile_region(profile: str) -> str | None:
    import botocore.session  # only `kaos cloud` reads profiles (kaos/client.py: why imports wait)

    session = botocore.session.Session()
    if profile not in session.available_profiles:
        return None
    region = botocore.session.Session(profile=profile).get_config_variable("region")
    return str(region) if region else None


def _run(command: list[str], what: str) -> None:
    err.print(f"$ {shlex.join(command)}", markup=False, highlight=False)
    done = subprocess.run(command, cwd=cloud.REPO_ROOT, check=False)
    if done.returncode != 0:
        fail(f"{what} failed with exit code {done.returncode} (cdk's output is above)")


@app.command("deploy")
def cloud_deploy(profile: str | None = ProfileOpt, region: str | None = RegionOpt, stage: str | None = StageOpt,
                 dry_run: bool = DryRunOpt) -> None:
    """`cdk deploy` the stack, then point the client at its API (region and profile included)."""
    target = _target(profile, region, stage)
    outputs_file = home() / "cloud-outputs.json"
    command = cloud.deploy_command(target, outputs_file)
    if dry_run:
        print(shlex.join(command))
        return
    home().mkdir(parents=True, exist_ok=True)
    _run(command, "cdk deploy")
    outputs = cloud.read_outputs(outputs_file)
    config = ClientConfig.load()
    config.switch("cloud", {**cloud.client_target(outputs, target), "stage": target.stage})
    config.save()
    console.print(f"deployed {cloud.STACK_NAME} to {target.region} ({target.stage}): API {outputs['ApiUrl']}; "
                  "the client now talks to it (`kaos config use local` switches back)", markup=False)


@app.command("status")
def cloud_status(profile: str | None = ProfileOpt, region: str | None = RegionOpt, as_json: bool = JsonOpt) -> None:
    """The stack's CloudFormation status and outputs."""
    status = cloud.stack_status(_target(profile, region, None))
    if as_json:
        return emit_json(status)
    console.print(f"{status['stack']} in {status['region']}: {status['status']} (updated {status['updated']})",
                  markup=False)
    for key, value in sorted(status["outputs"].items()):
        console.print(f"  {key}: {value}", markup=False, highlight=False)
    return None


prices_app = typer.Typer(help="The AWS list prices kaos computes costs with (chalicelib/prices.json).",
                         no_args_is_help=True)
app.add_typer(prices_app, name="prices")


@prices_app.command("refresh")
def prices_refresh(profile: str | None = ProfileOpt, as_json: bool = JsonOpt) -> None:
    """Re-read the SageMaker instance prices from the AWS Price List API into chalicelib/prices.json; the next
    `kaos cloud deploy` (or `kaos local up`) prices with them."""
    changes = prices.refresh_with(_target(profile, None, None).profile)
    if as_json:
        return emit_json([{"table": c.table, "instance_type": c.instance_type, "old": c.old, "new": c.new}
                          for c in changes])
    for change in changes:
        console.print(f"{change.table} {change.instance_type}: {change.old} -> {change.new} USD", markup=False)
    console.print(f"{len(changes)} price(s) changed in {prices.PRICES_FILE}", markup=False, highlight=False)
    return None


@app.command("destroy")
def cloud_destroy(profile: str | None = ProfileOpt, region: str | None = RegionOpt, stage: str | None = StageOpt,
                  yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
                  dry_run: bool = DryRunOpt) -> None:
    """`cdk destroy` the stack; says first what stays in the account (the prod stage keeps table and buckets)."""
    target = _target(profile, region, stage)
    command = cloud.destroy_command(target)
    # Dry run: the template this checkout would deploy; otherwise the one CloudFormation actually runs.
    template = cloud.synthesized_template(target) if dry_run else cloud.deployed_template(target)
    kept = cloud.kept_resources(template)
    kept_text = (f"kept in the account (delete them yourself if you mean to): {', '.join(kept)}" if kept else
                 f"nothing is kept: the {target.stage} stage deletes the table and buckets with all their data")
    if dry_run:
        print(shlex.join(command))
        print(kept_text)
        return
    if not yes and not typer.confirm(f"Destroy the {cloud.STACK_NAME} stack in {target.region}? {kept_text}."):
        raise typer.Exit(1)
    _run(command, "cdk destroy")
    config = ClientConfig.load()
    if config.target == "cloud" and "local" in config.targets:
        config.switch("local")
    config.targets.pop("cloud", None)
    config.save()
    console.print(f"destroyed {cloud.STACK_NAME} in {target.region}", markup=False)


@config_app.command("show")
def config_show(as_json: bool = JsonOpt) -> None:
    """Which stack the client talks to, as whom, and the targets it knows."""
    config = ClientConfig.load()
    shown: dict[str, Any] = {"target": config.target, **config.active(), "workspace": config.workspace,
                             "known_targets": sorted(config.targets)}
    if as_json:
        return emit_json(shown)
    table = Table(show_header=False)
    for key, value in shown.items():
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value or "-"))
    console.print(table)
    return None


@config_app.command("use")
def config_use(target: str = typer.Argument(..., metavar="local|cloud")) -> None:
    """Talk to the embedded stack (local) or the deployed one (cloud) from now on."""
    if target not in TARGETS:
        fail(f"{target!r}: say local or cloud")
    config = ClientConfig.load()
    if target != config.target and target not in config.targets:
        how = "`kaos local up --detach` starts it" if target == "local" else "`kaos cloud deploy` creates it"
        fail(f"no {target} stack configured yet; {how}")
    if target != config.target:
        config.switch(target)
        config.save()
    console.print(f"target: {target} (API {config.api_url or '-'}, profile {config.profile})", markup=False)
