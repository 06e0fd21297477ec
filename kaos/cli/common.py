"""What every command group shares: the consoles, the one error path, the current workspace, JSON output."""
from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from kaos.bundle import BundleError
from kaos.client import ApiError, Client
from kaos.render import RenderError
from kaos.settings import ClientConfig

# soft_wrap: a message is never broken into lines by the terminal width, so a suggested command stays one line that
# can be copied (tables still fit the width).
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON.")
WorkspaceOpt = typer.Option(None, "--workspace", "-w", help="Workspace (default: the current one).")


class Failure(Exception):
    """A failure the CLI reports as one message and an exit code (the one error path: see main())."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def fail(message: str, code: int = 1) -> NoReturn:
    raise Failure(message, code)


def report(message: str) -> None:
    """Error text is printed as given: paths, regexes and ids may hold `[...]`, which rich markup would eat."""
    err.print(Text("error: ", style="bold red") + Text(message))


def describe(exc: BaseException) -> tuple[str, int] | None:
    """The message and exit code of an expected failure; None for a bug (shown with --debug)."""
    if isinstance(exc, Failure):
        return exc.message, exc.code
    if isinstance(exc, ApiError):
        return (exc.message if exc.status == 0 else f"{exc.message} ({exc.code})"), 1
    if isinstance(exc, BundleError):
        return str(exc), exc.exit_code
    if isinstance(exc, RenderError):
        return str(exc), 1
    return None


def client() -> Client:
    return Client(ClientConfig.load())


def workspace(name: str | None) -> str:
    chosen = name or ClientConfig.load().workspace
    if not chosen:
        fail("no workspace given: pass -w NAME or create one with `kaos workspace create NAME`")
    return str(chosen)


def offline() -> bool:
    """Whether the CLI talks to the embedded stack (`kaos local up`), whose costs are estimates at AWS prices."""
    return ClientConfig.load().target == "local"


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")
