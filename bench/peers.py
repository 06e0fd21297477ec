"""What the benchmarks share to measure peers fairly: a peer tool in a virtualenv of its own (never a kaos dependency)
and the peak memory of a process tree."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType


def venv_python(venv: Path, packages: list[str]) -> Path:
    """The interpreter of ``venv`` with ``packages`` installed, made on first use and reused by later runs."""
    python = venv / "bin" / "python"
    if not (venv / ".installed").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *packages],
                       check=True)
        (venv / ".installed").write_text("")
    return python


def _descendants(pid: int) -> set[int]:
    """``pid`` and every live process below it (children are listed per thread that forked them)."""
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        found.add(current)
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                todo += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                pass
    return found


def _proc_bytes(pid: int, name: str, field: str) -> int:
    """A size /proc/<pid>/<name> gives in kB on the line starting with `field`, in bytes (0: the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_bytes(pid: int) -> int:
    return _proc_bytes(pid, "status", "VmRSS:")


def pss_bytes(pid: int) -> int:
    """The process's proportional share of the memory it maps (a page shared by n processes counts 1/n): what
    forked processes that share their parent's pages cost the machine, which summed RSS counts n times."""
    return _proc_bytes(pid, "smaps_rollup", "Pss:")


def _label(pid: int) -> str:
    """What a process is, for the peak's breakdown: `python -m <module>`, else its program and first argument."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    if "-m" in argv[:-1]:
        return f"-m {argv[argv.index('-m') + 1]}"
    return " ".join(Path(arg).name for arg in argv[:2])


class TreePeak:
    """Samples the summed RSS of the process trees below ``roots`` (plus any root added later) every ``interval``
    seconds until closed; ``peak`` is the largest sum seen, ``processes`` the most processes at once. Summed RSS
    counts shared pages once per process, as `ps` sums do; ``pss_peak`` is the largest summed PSS (shared pages
    split between their processes), read in the same samples."""

    def __init__(self, roots: list[int], interval: float = 0.2) -> None:
        self.roots = list(roots)
        self.interval = interval
        self.peak = 0
        self.pss_peak = 0
        self.processes = 0
        self.peak_of: dict[int, int] = {}  # per root process alone
        self.at_peak: dict[str, list[int]] = {}  # label -> RSS of each such process in the peak's sample
        self.pss_at_peak: dict[str, list[int]] = {}  # label -> PSS of each such process in the PSS peak's sample
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> TreePeak:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._closed.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            pids = set().union(*(_descendants(root) for root in self.roots))
            sizes = {pid: rss_bytes(pid) for pid in pids}
            if sum(sizes.values()) > self.peak:
                self.peak, self.at_peak = sum(sizes.values()), _by_label(sizes)
            shares = {pid: pss_bytes(pid) for pid in pids}
            if sum(shares.values()) > self.pss_peak:
                self.pss_peak, self.pss_at_peak = sum(shares.values()), _by_label(shares)
            self.processes = max(self.processes, len(pids))
            for root in self.roots:
                self.peak_of[root] = max(self.peak_of.get(root, 0), rss_bytes(root))
            if self._closed.wait(self.interval):
                return


def _by_label(sizes: dict[int, int]) -> dict[str, list[int]]:
    """Each process's size under what it is (`_label`)."""
    found: dict[str, list[int]] = {}
    for pid, size in sizes.items():
        found.setdefault(_label(pid), []).append(size)
    return found


def timed_tree(command: list[str], cwd: Path, env: dict[str, str], extra_roots: tuple[int, ...] = ()
               ) -> tuple[float, TreePeak]:
    """Run ``command`` to its end: (wall seconds, its tree's peak together with ``extra_roots``' trees)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    with TreePeak([process.pid, *extra_roots]) as peak:
        output, _ = process.communicate()
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{output.decode(errors='replace')}")
    return elapsed, peak
