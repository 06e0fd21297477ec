"""Grids on the embedded stack: how fast the API accepts a 10,000-point grid, and a 1,000-point grid run.

* accept: POST /workspaces/{ws}/grids with a 100 x 100 grid (10,000 points), against a single-job submit
  measured in the same run (the baseline): the API validates, writes the points file and starts one execution;
  the points' job rows are written inside the Distributed Map. That stack is then stopped, so the 10,000
  points are not trained.
* run: on a fresh stack, a grid of trivial trainings (GRID_RUN_POINTS points, parallelism 20) from submit until
  every point's job ended.

Run: .venv/bin/python -m bench.grid   (GRID_RUN_POINTS=1000 by default; the run takes minutes on 2 cores)
"""
from __future__ import annotations

import functools

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kaos.bundle import hash_files, scan
from kaos.client import Client
from kaos.settings import ClientConfig

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "kaos" / "templates" / "sklearn-digits" / "data"
RUN_POINTS = int(os.environ.get("GRID_RUN_POINTS", "1000"))
TRAIN = "import json, os\njson.dump({'score': 1.0}, open(os.environ['SM_MODEL_DIR'] + '/metrics.json', 'w'))\n"


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def trivial_inputs(client: Client, workspace: str, home: Path) -> tuple[str, str]:
    """A new workspace holding the trivial code and the digits data: their snapshot ids."""
    client.create_workspace(workspace)
    code_dir = home / "code"
    code_dir.mkdir()
    (code_dir / "train.py").write_text(TRAIN)
    code = client.upload_snapshot(workspace, "code", hash_files(scan(code_dir, "-s"), lambda _: None),
                                  lambda _: None)["id"]
    data = client.upload_snapshot(workspace, "data", hash_files(scan(DATA, "-d"), lambda _: None),
                                  lambda _: None)["id"]
    return code, data


@contextmanager
def stack() -> Iterator[tuple[Client, str, str]]:
    """A fresh embedded stack with a workspace holding the trivial code and the digits data."""
    with tempfile.TemporaryDirectory(prefix="kaos-bench-grid-") as tmp:
        home = Path(tmp)
        env = {**os.environ, "KAOS_HOME": str(home)}
        state = home / "local"
        subprocess.run([sys.executable, "-m", "kaos.cli", "local", "up", "--detach", "--state-dir", str(state)],
                       env=env, check=True, capture_output=True)
        try:
            runtime = json.loads((state / "runtime.json").read_text())
            client = Client(ClientConfig(api_url=runtime["api_url"], profile="kaos-local-dev",
                                         credentials_file=str(state / "credentials")))
            code, data = trivial_inputs(client, "grids", home)
            yield client, code, data
        finally:
            subprocess.run([sys.executable, "-m", "kaos.cli", "local", "down", "--state-dir", str(state)],
                           env=env, check=False, capture_output=True)


def main() -> None:
    with stack() as (client, code, data):
        single = [timed(functools.partial(client.submit, "grids", code, {"training": data}, {"single": i}))
                  for i in range(5)]
        big = {"a": list(range(100)), "b": list(range(100))}
        accept = timed(lambda: client.submit_grid("grids", code, {"training": data}, big, None, 1))
    with stack() as (client, code, data):
        started = time.perf_counter()
        run = client.submit_grid("grids", code, {"training": data}, {"p": list(range(RUN_POINTS))}, None, 20)
        while True:
            info = client.grid("grids", run["id"], limit=1)
            done = sum(n for s, n in info["counts"].items() if s in ("COMPLETED", "FAILED", "KILLED"))
            if info["status"] in ("COMPLETED", "FAILED") and done == RUN_POINTS:
                break
            time.sleep(2)
        elapsed = time.perf_counter() - started
    baseline = statistics.median(single)
    print(f"{'measure':<48}{'seconds':>10}{'x single submit':>18}")
    print(f"{'single job submit (baseline, median of 5)':<48}{baseline:>10.3f}{1.0:>18.2f}")
    print(f"{'accept a 10,000-point grid':<48}{accept:>10.3f}{accept / baseline:>18.2f}")
    print(f"{f'run a {RUN_POINTS}-point grid (parallelism 20)':<48}{elapsed:>10.1f}{elapsed / baseline:>18.0f}")
    print(f"{RUN_POINTS / elapsed:.2f} points/s; counts {info['counts']}")


if __name__ == "__main__":
    main()
