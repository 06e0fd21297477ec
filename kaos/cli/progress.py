"""Progress display: rich bars and spinners on a terminal; without one (a pipe, CI, a log file) one plain line
per state change, so a log shows what happened and nothing is redrawn."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from kaos.cli.common import err
from kaos.operations import grid_done


def interactive() -> bool:
    return err.is_terminal


@contextmanager
def byte_bar() -> Iterator[Progress]:
    """A transient progress bar of bytes (hashing, uploads, downloads); silent without a terminal."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TimeElapsedColumn(), console=err, transient=True, disable=not interactive()) as progress:
        yield progress


@contextmanager
def status_line(first: str) -> Iterator[Callable[[str], None]]:
    """A spinner whose text is replaced on each change (terminal), or one printed line per change (otherwise)."""
    if not interactive():
        # Only the changes: the caller printed what it waits for, and `first` is a placeholder until one.
        yield lambda text: err.print(text, markup=False, highlight=False)
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                  transient=True) as progress:
        task = progress.add_task(first)
        yield lambda text: progress.update(task, description=text)


def on_job(show: Callable[[str], None]) -> Callable[[dict[str, Any]], None]:
    return lambda job: show(f"{job['id']}: {job['status']}")


def on_grid(show: Callable[[str], None]) -> Callable[[dict[str, Any]], None]:
    return lambda grid: show(f"{grid['id']}: {grid['status']}, {grid_done(grid)}/{grid['points']} points done")
