"""Grids that fit the machine (issue 14): the sklearn-digits template's 10-point grid (10 values of C) three ways,
each timed from its command's start to its end with the peak summed RSS of its whole process tree, and its peak
summed PSS (a page shared by n processes counted 1/n: kaos's Lambda environments are forked from a warm parent and
share its pages, which summed RSS counts once per process):

* kaos: `kaos train deploy -s train -d data -h grid.json --wait` on a fresh embedded stack (`kaos local up
  --detach`), default parallelism; the tree is the CLI's and the stack's (the stack, its Lambda workers, the
  trainings). A single deploy before it builds the image environment and uploads the code and data, so the grid
  pays only what a user's second deploy pays. The stack's own RSS (its process alone) at rest and at its peak during
  the grid are printed too.
* loop (baseline): the same train.py run 10 times in one process (runpy), with the image's interpreter.
* Metaflow: a foreach flow whose step runs the same train.py (runpy), `python flow.py run` with the local runtime's
  defaults; Metaflow and scikit-learn installed by this benchmark into a virtualenv of their own
  (.cache/bench-metaflow, reused by later runs; never a project dependency).

The loop's and Metaflow's processes get the BLAS/OpenMP thread variables of one kaos point with the default slots
(1 thread): with the libraries' default (a thread per core) a loaded 2-core machine spends most of its time in
OpenBLAS's spinning threads (one fit: 317 s wall at 2 threads vs 40 s at 1, load 10), which measures the machine's
load rather than the orchestration.

Run: .venv/bin/python -m bench.grid_fit [kaos] [loop] [metaflow]   (all three by default; minutes on 2 cores)
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.peers import TreePeak, rss_bytes, timed_tree, venv_python
from chalicelib import environments as catalogue
from kaos.local.environments import Environments, default_cache_dir
from kaos.local.sagemaker_runner import THREAD_VARIABLES

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "kaos" / "templates" / "sklearn-digits"
METAFLOW_VENV = REPO / ".cache" / "bench-metaflow"
C_VALUES = [0.02, 0.05, 0.1, 0.2, 0.5, 2.0, 5.0, 10.0, 20.0, 50.0]  # not the warm-up's 1.0: no cache hit
FIXED = {"max_iter": 500, "test_size": 0.25, "seed": 7}
MB = 1024 * 1024

LOOP = """
import os, runpy, sys, tempfile
for c in {values!r}:
    os.environ["SM_MODEL_DIR"] = tempfile.mkdtemp()
    os.environ["SM_CHANNEL_TRAINING"] = {data!r}
    sys.argv = ["train.py", "-C", str(c), "--max_iter", "500", "--test_size", "0.25", "--seed", "7"]
    runpy.run_path({train!r}, run_name="__main__")
"""

FLOW = """
import json, os, runpy, sys, tempfile
from metaflow import FlowSpec, step


class GridFlow(FlowSpec):
    @step
    def start(self):
        self.points = {values!r}
        self.next(self.train, foreach="points")

    @step
    def train(self):
        model_dir = tempfile.mkdtemp()
        os.environ["SM_MODEL_DIR"] = model_dir
        os.environ["SM_CHANNEL_TRAINING"] = {data!r}
        sys.argv = ["train.py", "-C", str(self.input), "--max_iter", "500", "--test_size", "0.25", "--seed", "7"]
        runpy.run_path({train!r}, run_name="__main__")
        self.metrics = json.load(open(os.path.join(model_dir, "metrics.json")))
        self.next(self.join)

    @step
    def join(self, inputs):
        self.results = [i.metrics for i in inputs]
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    GridFlow()
"""


def bench_kaos(scratch: Path) -> tuple[float, TreePeak, int]:
    """(wall, peak of the CLI's and the stack's trees, the stack process's RSS at rest before the grid)."""
    home = scratch / "home"
    state = home / "local"
    env = {**os.environ, "KAOS_HOME": str(home), "COLUMNS": "200"}
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        env.pop(key, None)
    kaos = [sys.executable, "-m", "kaos.cli"]
    project = scratch / "digits"
    shutil.copytree(TEMPLATE, project, ignore=shutil.ignore_patterns("__pycache__"))
    (project / "grid.json").write_text(json.dumps({"C": C_VALUES, **FIXED}))
    subprocess.run([*kaos, "local", "up", "--detach", "--quiet", "--state-dir", str(state)], env=env, check=True,
                   capture_output=True)
    try:
        stack_pid = int(json.loads((state / "runtime.json").read_text())["pid"])
        subprocess.run([*kaos, "workspace", "create", "bench"], cwd=project, env=env, check=True, capture_output=True)
        subprocess.run([*kaos, "train", "deploy", "-s", "train", "-d", "data", "-h", "params.json", "-w", "bench",
                        "--wait"], cwd=project, env=env, check=True, capture_output=True)
        rest = rss_bytes(stack_pid)
        wall, peak = timed_tree([*kaos, "train", "deploy", "-s", "train", "-d", "data", "-h", "grid.json", "-w",
                                 "bench", "--wait", "--json"], project, env, extra_roots=(stack_pid,))
        return wall, peak, rest
    finally:
        subprocess.run([*kaos, "local", "down", "--state-dir", str(state)], env=env, check=False, capture_output=True)


def code(template: str) -> str:
    return template.format(values=C_VALUES, data=str(TEMPLATE / "data"), train=str(TEMPLATE / "train" / "train.py"))


def main() -> None:
    chosen = sys.argv[1:] or ["kaos", "loop", "metaflow"]
    image = catalogue.lookup("sklearn").image_uri("us-east-1")  # the default image, as `kaos train` uses
    image_python = Environments(default_cache_dir()).ensure(image).python
    metaflow_python = venv_python(METAFLOW_VENV, ["metaflow", "scikit-learn"])
    print(f"{os.cpu_count()} cores; each row: wall s, peak summed RSS MB of the tree, peak summed PSS MB (shared "
          "pages split), most processes at once, load average at its start")
    results: dict[str, tuple[float, TreePeak]] = {}
    with tempfile.TemporaryDirectory(prefix="kaos-bench-grid-fit-") as tmp:
        scratch = Path(tmp)
        (scratch / "loop.py").write_text(code(LOOP))
        (scratch / "flow.py").write_text(code(FLOW))
        plain_env = {"PATH": os.environ.get("PATH", ""), "HOME": str(scratch), "TMPDIR": str(scratch),
                     "LANG": "C.UTF-8", **dict.fromkeys(THREAD_VARIABLES, "1")}
        flow_env = {**plain_env, "USERNAME": "bench", "METAFLOW_DEFAULT_DATASTORE": "local",
                    "METAFLOW_DEFAULT_METADATA": "local"}
        for name in chosen:
            load = os.getloadavg()[0]
            started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            if name == "kaos":
                wall, peak, stack_rest = bench_kaos(scratch)
                print(f"  stack process alone: {stack_rest / MB:.0f} MB at rest before the grid, "
                      f"{peak.peak_of[peak.roots[1]] / MB:.0f} MB at its peak during it")
            elif name == "loop":
                wall, peak = timed_tree([str(image_python), "loop.py"], scratch, plain_env)
            else:
                wall, peak = timed_tree([str(metaflow_python), "flow.py", "--no-pylint", "run"], scratch, flow_env)
            results[name] = wall, peak
            print(f"{name:<10}{wall:>8.1f} s{peak.peak / MB:>8.0f} MB{peak.pss_peak / MB:>8.0f} MB PSS"
                  f"{peak.processes:>5} processes   "
                  f"(started {started}, load {load:.1f})", flush=True)
            for label, sizes in sorted(peak.at_peak.items(), key=lambda item: -sum(item[1])):
                print(f"    at the peak: {len(sizes):>3} x {label:<52}{sum(sizes) / MB:>8.0f} MB")
            for label, shares in sorted(peak.pss_at_peak.items(), key=lambda item: -sum(item[1])):
                print(f"    at the PSS peak: {len(shares):>3} x {label:<48}{sum(shares) / MB:>8.0f} MB PSS")
    if {"kaos", "loop", "metaflow"} <= results.keys():
        (kaos_wall, kaos_peak), (loop_wall, _), (flow_wall, flow_peak) = (
            results[k] for k in ("kaos", "loop", "metaflow"))
        print(f"kaos / plain loop wall {kaos_wall / loop_wall:.2f} (goal <= 2); kaos / Metaflow peak RSS "
              f"{kaos_peak.peak / flow_peak.peak:.2f}, PSS {kaos_peak.pss_peak / flow_peak.pss_peak:.2f} "
              f"(goal <= 0.5); Metaflow / loop wall {flow_wall / loop_wall:.2f}")


if __name__ == "__main__":
    main()
