"""Cold import time of each Lambda entry module, in a fresh interpreter, against `import boto3`.

Each sample is a new interpreter (`python -c`) whose sys.path is laid out as in Lambda: the API handler "app.app"
runs from `app/` (module `app`), the task handlers "functions.<name>.handler" from the asset root (repo root here).
The timer wraps the import only (not interpreter start-up). After the import the child lists any forbidden module
(SageMaker SDK, CDK, the `kaos` client package) in sys.modules: those must never reach a Lambda.

Run: .venv/bin/python -m bench.cold_imports   (exits 1 if a forbidden module is imported)
"""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RUNS = 7
GOAL_S = 0.25
FORBIDDEN = ("sagemaker", "aws_cdk", "kaos")
TOP = 10


@dataclass(frozen=True)
class Entry:
    label: str
    module: str
    path: Path  # sys.path[0] in the child, as the Lambda runtime's task root
    component: str | None = None  # its settings (chalicelib.config.COMPONENTS), loaded at import as on Lambda


BASELINE = Entry("import boto3 (baseline)", "boto3", ROOT)
ENTRIES = (
    Entry("API handler app.app", "app", ROOT / "app", "api"),
    Entry("functions.prepare_training", "functions.prepare_training", ROOT, "prepare_training"),
    Entry("functions.record_outcome", "functions.record_outcome", ROOT, "record_outcome"),
)

CHILD = """
import sys, time, json, importlib
sys.path[0] = {path!r}
t = time.perf_counter()
importlib.import_module({module!r})
elapsed = time.perf_counter() - t
bad = sorted(m for m in sys.modules if m.split(".")[0] in {forbidden!r})
print(json.dumps({{"seconds": elapsed, "forbidden": bad}}))
"""


def lambda_env(component: str | None) -> dict[str, str]:
    """The parent's environment minus anything kaos- or path-related, plus the region Lambda always sets and the
    component's variables as CDK writes them (placeholder values: "1" parses as a name, an ARN, a number of seconds
    and a bucket list; the handler validates them at import)."""
    from chalicelib.config import COMPONENTS

    env = {k: v for k, v in os.environ.items() if not k.startswith("KAOS_") and k not in ("PYTHONPATH",
                                                                                          "PYTHONSTARTUP")}
    env["AWS_DEFAULT_REGION"] = "us-east-1"
    env["AWS_REGION"] = "us-east-1"
    env.update(dict.fromkeys(COMPONENTS[component], "1") if component else {})
    return env


def sample(entry: Entry, extra: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    code = CHILD.format(path=str(entry.path), module=entry.module, forbidden=FORBIDDEN)
    done = subprocess.run([sys.executable, *extra, "-c", code], cwd=entry.path, env=lambda_env(entry.component),
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"importing {entry.module} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result, done.stderr


@dataclass
class Timing:
    entry: Entry
    samples: list[float]
    forbidden: list[str]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        return min(self.samples)


def measure(entries: list[Entry]) -> list[Timing]:
    """RUNS rounds, each sampling every entry once: load drifting during the run hits all entries alike."""
    timings = [Timing(entry, [], []) for entry in entries]
    for _ in range(RUNS):
        for timing in timings:
            result, _ = sample(timing.entry)
            timing.samples.append(float(result["seconds"]))
            timing.forbidden = sorted(set(timing.forbidden) | set(result["forbidden"]))
    return timings


_IMPORTTIME = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$")


def importtime_report(entry: Entry) -> list[str]:
    """`-X importtime` of one fresh import: the heaviest direct imports of the entry module, the heaviest modules
    at any depth (cumulative, so a chain shows as parent > child), and the heaviest by self time.

    importlib.import_module bypasses the C-level import timer, so the entry module itself has no row and its
    direct imports are the shallowest rows after the child's own `json` import."""
    _, stderr = sample(entry, ("-X", "importtime"))
    rows: list[tuple[int, int, int, str]] = []
    for line in stderr.splitlines():
        match = _IMPORTTIME.match(line)
        if match:
            rows.append((int(match[1]), int(match[2]), len(match[3]), match[4]))
    start = max((i for i, r in enumerate(rows) if r[3] == "json"), default=-1) + 1
    ours = rows[start:]
    depth = min((r[2] for r in ours), default=1)
    top_level = sorted((r for r in ours if r[2] == depth), key=lambda r: -r[1])[:TOP]
    by_cumulative = sorted(ours, key=lambda r: -r[1])[:TOP]
    by_self = sorted(ours, key=lambda r: -r[0])[:TOP]
    lines = [f"  -X importtime for {entry.module}: top {TOP} direct imports by cumulative time"]
    lines += [f"    {cum / 1000:8.1f} ms  {name}" for _, cum, _, name in top_level]
    lines.append(f"  top {TOP} imports at any depth by cumulative time (indent = depth)")
    lines += [f"    {cum / 1000:8.1f} ms  {' ' * (d - depth)}{name}" for _, cum, d, name in by_cumulative]
    lines.append(f"  top {TOP} modules by self time")
    lines += [f"    {own / 1000:8.1f} ms  {name}" for own, _, _, name in by_self]
    return lines


def main() -> int:
    print(f"cold import of Lambda entry modules: fresh interpreter each, {RUNS} interleaved rounds; "
          f"{sys.executable} (Python {sys.version.split()[0]}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f})")
    timings = measure([BASELINE, *ENTRIES])
    baseline = timings[0]
    header = f"{'module':32} {'median s':>9} {'min s':>7} {'x boto3':>8} {'goal':>6}  forbidden modules"
    print(header)
    print("-" * len(header))
    failed = False
    for timing in timings:
        ratio = timing.median / baseline.median
        is_entry = timing is not baseline
        goal = ("ok" if timing.median <= GOAL_S else "SLOW") if is_entry else ""
        check = ""
        if is_entry:
            check = "ok" if not timing.forbidden else "FAIL: " + ", ".join(timing.forbidden[:8])
            failed = failed or bool(timing.forbidden)
        print(f"{timing.entry.label:32} {timing.median:9.3f} {timing.best:7.3f} {ratio:8.2f} {goal:>6}  {check}")
    print(f"goal: median <= {GOAL_S:.2f} s per entry module; forbidden: {', '.join(FORBIDDEN)}")
    for timing in timings[1:]:
        if timing.entry.module == "app" or timing.median > GOAL_S:
            print()
            print("\n".join(importtime_report(timing.entry)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
