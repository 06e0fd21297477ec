"""`kaos template list|get`: runnable example projects shipped inside the kaos package (kaos/templates/NAME).

Each template folder holds `train/` (the code snapshot), `data/` (the 'training' channel), `params.json` and a
README.md whose first line describes it.
"""
from __future__ import annotations

import difflib
import json
import shutil
import stat
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

import kaos

template_app = typer.Typer(help="List and copy runnable example projects.", no_args_is_help=True)

console = Console()
err = Console(stderr=True)
_SKIPPED = ("__pycache__", "*.pyc", "*.pyo", ".DS_Store", ".ipynb_checkpoints")


def templates_dir() -> Path:
    return Path(kaos.__file__).parent / "templates"


def _names() -> list[str]:
    root = templates_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def _files(folder: Path) -> list[Path]:
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part in ("__pycache__", ".ipynb_checkpoints") for part in rel.parts) \
                and not path.name.endswith((".pyc", ".pyo")) and path.name != ".DS_Store":
            found.append(path)
    return found


def _description(folder: Path) -> str:
    readme = folder / "README.md"
    if readme.is_file():
        for line in readme.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip():
                return line.strip().lstrip("#").strip()
    return ""


def describe(name: str) -> dict[str, Any]:
    folder = templates_dir() / name
    return {"name": name, "description": _description(folder), "files": len(_files(folder)), "path": str(folder)}


def _fail(message: str, code: int = 1) -> NoReturn:
    # As the CLI's one error path prints: the message as given (paths may hold `[...]`, which markup would eat).
    err.print(Text("error: ", style="bold red") + Text(message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


def _resolve(name: str) -> Path:
    names = _names()
    if name in names:
        return templates_dir() / name
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else \
        f"available: {', '.join(names) or '(none)'}"
    _fail(f"unknown template {name!r}; {hint} (see `kaos template list`)")


@template_app.command("list")
def template_list(as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")) -> None:
    """List the runnable example projects shipped with kaos."""
    rows = [describe(name) for name in _names()]
    if as_json:
        return _emit_json(rows)
    table = Table("name", "description", "files")
    for row in rows:
        table.add_row(row["name"], row["description"], str(row["files"]))
    console.print(table)
    console.print("copy one with [bold]kaos template get NAME[/]")


@template_app.command("get")
def template_get(
    name: str = typer.Argument(..., help="Template name (see `kaos template list`)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Target directory (default: ./NAME)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Copy a template into a new directory, ready for `kaos train deploy`."""
    source = _resolve(name)
    target = output if output is not None else Path(name)
    if target.exists() and not target.is_dir():
        _fail(f"{str(target)!r} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()):
        _fail(f"{str(target)!r} already exists and is not empty; refusing to overwrite it "
              "(choose another directory with -o DIR)")
    try:
        shutil.copytree(source, target, ignore=shutil.ignore_patterns(*_SKIPPED), dirs_exist_ok=True)
    except OSError as exc:
        _fail(f"could not copy template {name!r} to {str(target)!r}: {exc}")
    copied = _files(target)
    for path in copied:
        # Package installs may drop the executable bit; shell entry points keep it for running by hand.
        if path.suffix == ".sh":
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    if as_json:
        return _emit_json({"name": name, "path": str(target.resolve()), "files": len(copied)})
    console.print(f"copied template [bold]{name}[/] to {target} ({len(copied)} files)")
    params = "params.json" if (target / "params.json").is_file() else None
    command = f"kaos train deploy -s {target / 'train'} -d {target / 'data'}"
    console.print("run it with:  " + command + (f" -h {target / params}" if params else "") + " --wait",
                  highlight=False, soft_wrap=True)
