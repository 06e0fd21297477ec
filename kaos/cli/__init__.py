"""The kaos command line: parses, calls the client library (kaos.client, kaos.operations, kaos.cloud), renders.

One module per command group; main() is the one error path: an expected failure is one message (with what to do
next) and an exit code, anything else a one-line "unexpected error" unless --debug asks for the traceback."""
from __future__ import annotations

import os
import sys
from importlib.metadata import PackageNotFoundError, version

import typer

from kaos.cli import batch, cloud, local, model, serve, train, workspace
from kaos.cli import cost, ui
from kaos.cli.common import describe, report
from kaos.cli_templates import template_app

DEBUG_ENV = "KAOS_DEBUG"

app = typer.Typer(help="kaos: incremental, reproducible ML training on serverless AWS (or offline).",
                  no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]},
                  pretty_exceptions_enable=False)
app.add_typer(workspace.app, name="workspace")
app.add_typer(train.app, name="train")
app.add_typer(batch.data_app, name="data")
app.add_typer(batch.app, name="batch")
app.add_typer(serve.app, name="serve")
app.add_typer(model.app, name="model")
app.add_typer(local.app, name="local")
app.add_typer(cloud.app, name="cloud")
app.add_typer(cloud.config_app, name="config")
app.add_typer(template_app, name="template")
app.command("ui")(ui.ui)
app.command("cost")(cost.cost)


def _version() -> str:
    try:
        return version("kaos")
    except PackageNotFoundError:  # run from a checkout that was never pip-installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"kaos {_version()}\n")
        raise typer.Exit()


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of a failure."),
    show_version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                      help="Print the version and exit."),
) -> None:
    """kaos: incremental, reproducible ML training on serverless AWS (or offline)."""
    if debug:
        os.environ[DEBUG_ENV] = "1"


def main() -> None:
    try:
        app(prog_name="kaos")
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # the outermost handler: every failure leaves through here
        if os.environ.get(DEBUG_ENV):
            raise
        known = describe(exc)
        if known is None:
            report(f"unexpected {type(exc).__name__}: {exc} (run again with --debug for the traceback)")
            sys.exit(1)
        report(known[0])
        sys.exit(known[1])
