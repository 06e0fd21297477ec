"""Submit latency on the embedded stack: `train deploy` up to "accepted", against a signed GET /workspaces.

Starts the stack with the real CLI in a temporary KAOS_HOME, creates a workspace, uploads the sklearn-digits
template's code and data once, then measures
  * API submit: `Client.submit` = POST /workspaces/{ws}/jobs, 20 runs, each with distinct params (a new job,
    never a cache hit);
  * CLI deploy: `kaos train deploy -s -d -h -w --json` as a subprocess, 20 runs with distinct params files
    (interpreter start, imports, scan + hash, the missing-blob check that finds nothing, snapshot commit, submit);
  * baseline: a signed GET /workspaces, the cheapest authenticated round trip, sampled right before every
    submit (same load) and also on the idle stack before any job exists.
The jobs really train in the background while later runs are measured (realistic load); the benchmark waits for
all of them to finish before `kaos local down`, and reports how long they took to drain.

Run: .venv/bin/python -m bench.submit
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
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kaos.bundle import hash_files, scan
from kaos.client import Client
from kaos.settings import ClientConfig

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "kaos" / "templates" / "sklearn-digits"
RUNS = 20
IDLE_SAMPLES = 20
WORKSPACE = "bench"
TERMINAL = ("COMPLETED", "FAILED", "KILLED")
DRAIN_TIMEOUT_S = 1800.0


def percentile(samples: list[float], pct: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[pct - 1]


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def kaos_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kaos.cli", *args], env=env, cwd=ROOT, text=True,
                          capture_output=True, check=False)


def checked(done: subprocess.CompletedProcess[str], what: str) -> str:
    if done.returncode != 0:
        raise SystemExit(f"{what} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done.stdout


class Bench:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.state = home / "local"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KAOS_")}
        self.env["KAOS_HOME"] = str(home)
        self.params: dict[str, Any] = json.loads((TEMPLATE / "params.json").read_text())
        self.jobs: list[str] = []
        self.baseline_loaded: list[float] = []

    def up(self) -> float:
        seconds, done = timed(lambda: kaos_cli(self.env, "local", "up", "--detach", "--state-dir", str(self.state)))
        checked(done, "kaos local up")
        return float(seconds)

    def down(self) -> None:
        done = kaos_cli(self.env, "local", "down", "--state-dir", str(self.state))
        if done.returncode != 0:
            print(f"warning: kaos local down failed: {done.stderr[-1000:]}", file=sys.stderr)

    def client(self) -> Client:
        runtime = json.loads((self.state / "runtime.json").read_text())
        return Client(ClientConfig(api_url=runtime["api_url"], profile="kaos-local-dev",
                                   credentials_file=str(self.state / "credentials")))

    def snapshot(self, client: Client, kind: str, directory: Path) -> str:
        files = hash_files(scan(directory, kind), lambda _n: None)
        return str(client.upload_snapshot(WORKSPACE, kind, files, lambda _n: None)["id"])

    def baseline(self, client: Client) -> float:
        seconds, _ = timed(client.workspaces)
        return float(seconds)

    def api_submits(self, client: Client, code: str, data: str) -> list[float]:
        samples = []
        for i in range(RUNS):
            self.baseline_loaded.append(self.baseline(client))
            params = {**self.params, "seed": 1000 + i}
            seconds, job = timed(functools.partial(client.submit, WORKSPACE, code, {"training": data}, params))
            if job.get("cached"):
                raise SystemExit(f"run {i}: a cache hit; the params were meant to make a new job")
            self.jobs.append(job["id"])
            samples.append(float(seconds))
        return samples

    def cli_deploys(self, client: Client) -> list[float]:
        params_dir = self.home / "params"
        params_dir.mkdir()
        samples = []
        for i in range(RUNS):
            path = params_dir / f"{i}.json"
            path.write_text(json.dumps({**self.params, "seed": 2000 + i}))
            self.baseline_loaded.append(self.baseline(client))
            seconds, done = timed(functools.partial(
                kaos_cli, self.env, "train", "deploy", "-s", str(TEMPLATE / "train"), "-d", str(TEMPLATE / "data"),
                "-h", str(path), "-w", WORKSPACE, "--json"))
            job = json.loads(checked(done, "kaos train deploy"))
            if job.get("cached"):
                raise SystemExit(f"CLI run {i}: a cache hit; the params were meant to make a new job")
            self.jobs.append(job["id"])
            samples.append(float(seconds))
        return samples

    def drain(self, client: Client) -> tuple[float, Counter[str]]:
        start = time.perf_counter()
        pending = set(self.jobs)
        statuses: Counter[str] = Counter()
        while pending:
            if time.perf_counter() - start > DRAIN_TIMEOUT_S:
                raise SystemExit(f"{len(pending)} jobs still running after {DRAIN_TIMEOUT_S:.0f} s")
            for job_id in sorted(pending):
                status = client.job(WORKSPACE, job_id)["status"]
                if status in TERMINAL:
                    statuses[status] += 1
                    pending.discard(job_id)
            if pending:
                time.sleep(1.0)
        return time.perf_counter() - start, statuses


def row(label: str, samples: list[float], base: float) -> str:
    p50, p95 = statistics.median(samples), percentile(samples, 95)
    return (f"{label:34} {len(samples):>3} {p50 * 1000:9.1f} {p95 * 1000:9.1f} {max(samples) * 1000:9.1f} "
            f"{p50 / base:9.1f}")


def main() -> int:
    print(f"submit latency on the embedded stack; Python {sys.version.split()[0]}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="kaos-bench-") as tmp:
        bench = Bench(Path(tmp))
        started = bench.up()
        print(f"kaos local up --detach: {started:.1f} s")
        try:
            client = bench.client()
            client.create_workspace(WORKSPACE)
            code = bench.snapshot(client, "code", TEMPLATE / "train")
            data = bench.snapshot(client, "data", TEMPLATE / "data")
            for _ in range(3):  # warm the connection and the API's lazy paths
                bench.baseline(client)
            idle = [bench.baseline(client) for _ in range(IDLE_SAMPLES)]
            first_submit = time.perf_counter()
            api = bench.api_submits(client, code, data)
            cli = bench.cli_deploys(client)
            submitted = time.perf_counter() - first_submit
            drained, statuses = bench.drain(client)
        finally:
            bench.down()
    base = statistics.median(bench.baseline_loaded)
    header = f"{'measure':34} {'n':>3} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9} {'p50 x GET':>9}"
    print(header)
    print("-" * len(header))
    print(row("GET /workspaces, idle (baseline)", idle, base))
    print(row("GET /workspaces, under load (base)", bench.baseline_loaded, base))
    print(row("API submit (POST .../jobs)", api, base))
    print(row("CLI train deploy (subprocess)", cli, base))
    print(f"ratios are against the GET /workspaces p50 sampled right before each submit ({base * 1000:.1f} ms)")
    print(f"{len(bench.jobs)} jobs: submitted over {submitted:.1f} s, then drained {drained:.1f} s later "
          f"({submitted + drained:.1f} s from the first submit); outcomes: "
          + ", ".join(f"{status} {count}" for status, count in sorted(statuses.items())))
    return 0 if statuses.get("COMPLETED", 0) == len(bench.jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
