"""`kaos template list|get`: runnable examples shipped in the package (filled in by the templates work)."""
from __future__ import annotations

import typer

template_app = typer.Typer(help="List and copy runnable example projects.", no_args_is_help=True)
