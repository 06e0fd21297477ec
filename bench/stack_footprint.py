"""The embedded stack's footprint (issue 14 item 4): start and stop times, and memory at rest as jobs accumulate.

Starts the stack with the real CLI (`kaos local up --detach`) in a temporary KAOS_HOME and measures:
  up (empty)      `kaos local up --detach` on an empty state dir (the baseline of the up times)
  RSS at rest     after 0, 20, 40, 80 finished jobs (tiny training scripts, distinct params), once the stack is
                  idle: the stack process alone and its whole process tree (warm Lambda environments, servers)
  down            `kaos local down` (the CLI's SIGTERM until the process is gone)
  up (N jobs)     `kaos local up --detach` again on the state the 80 jobs left
  SIGTERM -> exit a stack started in the foreground, from SIGTERM until its process is gone
Memory is compared with a bare `python -c "import moto.server"` process measured in the same run.
FOOTPRINT_JOBS (default 80) sets the largest job count; FOOTPRINT_IDLE_SECONDS (default 20) how long the stack
is left alone before a memory reading ("at rest"). The stack's warm Lambda environments end after 10 s idle here
(KAOS_LOCAL_LAMBDA_IDLE_SECONDS; 180 s by default), so "at rest" is reached within the run.

Run: .venv/bin/python -m bench.stack_footprint
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.grid import trivial_inputs
from bench.peers import _descendants, rss_bytes
from kaos.client import Client
from kaos.settings import ClientConfig

JOBS = int(os.environ.get("FOOTPRINT_JOBS", "80"))
IDLE_SECONDS = float(os.environ.get("FOOTPRINT_IDLE_SECONDS", "20"))
ENDED = ("COMPLETED", "FAILED", "KILLED")
MB = 1 << 20


def cli(env: dict[str, str], state: Path, *args: str) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "kaos.cli", "local", *args, "--state-dir", str(state)], env=env,
                            capture_output=True, text=True)
    log = state / "stack.log"
    assert result.returncode == 0, f"kaos local {' '.join(args)}: {result.stdout}{result.stderr}" + (
        "\n".join(log.read_text().splitlines()[-20:]) if log.exists() else "")
    return time.perf_counter() - started


def memory(pid: int) -> tuple[int, int, int]:
    """RSS of the process, summed RSS of its tree, and the tree's process count."""
    tree = _descendants(pid)
    return rss_bytes(pid), sum(rss_bytes(p) for p in tree), len(tree)


def baseline_rss() -> int:
    """A bare interpreter with moto's server imported, idle."""
    process = subprocess.Popen([sys.executable, "-c", "import moto.server, sys; sys.stdin.read()"],
                               stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        last, current = -1, rss_bytes(process.pid)
        while current != last and time.monotonic() < deadline:  # imports done: the RSS stops moving
            time.sleep(1)
            last, current = current, rss_bytes(process.pid)
        return current
    finally:
        process.kill()
        process.wait()


def client_for(state: Path) -> Client:
    runtime = json.loads((state / "runtime.json").read_text())
    return Client(ClientConfig(api_url=runtime["api_url"], profile="kaos-local-dev",
                               credentials_file=str(state / "credentials")))


def run_jobs(client: Client, code: str, data: str, first: int, count: int) -> None:
    ids = [client.submit("footprint", code, {"training": data}, {"i": i})["id"] for i in range(first, first + count)]
    deadline = time.monotonic() + 60 + 10 * count
    pending = set(ids)
    while pending:
        assert time.monotonic() < deadline, f"jobs did not end: {sorted(pending)[:5]}"
        pending = {job for job in pending if client.job("footprint", job)["status"] not in ENDED}
        time.sleep(1)


def sigterm_to_exit(env: dict[str, str], state: Path) -> float:
    """A foreground stack (as `kaos local up` runs it) on the same state: seconds from SIGTERM to its end."""
    process = subprocess.Popen([sys.executable, "-m", "kaos.local.stack", str(state), "--quiet"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (state / "runtime.json").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the foreground stack did not start"
        time.sleep(0.05)
    started = time.perf_counter()
    process.send_signal(signal.SIGTERM)
    process.wait(60)
    return time.perf_counter() - started


class Rows(list[tuple[str, str, str]]):
    """The table, each row printed as soon as it is measured (a later failure keeps the earlier ones)."""

    def append(self, row: tuple[str, str, str]) -> None:
        super().append(row)
        print(f"{row[0]:<58}{row[1]:>16}{row[2]:>18}", flush=True)


def main() -> None:
    base = baseline_rss()
    print(f"baseline: `python -c 'import moto.server'` RSS {base / MB:.0f} MB; times against up on an empty state; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'measure':<58}{'value':>16}{'ratio':>18}", flush=True)
    rows = Rows()
    with tempfile.TemporaryDirectory(prefix="kaos-bench-footprint-") as tmp:
        home = Path(tmp)
        env = {**os.environ, "KAOS_HOME": str(home), "KAOS_LOCAL_LAMBDA_IDLE_SECONDS": "10"}
        state = home / "local"
        cli(env, state, "up", "--detach")  # a first start may synthesize the CDK app: not what is measured
        cli(env, state, "down")
        for path in (state / "data",):
            subprocess.run(["rm", "-rf", str(path)], check=True)
        up_empty = cli(env, state, "up", "--detach")
        rows.append(("up --detach, empty state (baseline)", f"{up_empty:.2f} s", "1.00x"))
        try:
            client = client_for(state)
            code, data = trivial_inputs(client, "footprint", home)
            pid = int(json.loads((state / "runtime.json").read_text())["pid"])
            done = 0
            for target in sorted({0, JOBS // 4, JOBS // 2, JOBS}):
                run_jobs(client, code, data, done, target - done)
                done = target
                time.sleep(IDLE_SECONDS)
                own, tree, processes = memory(pid)
                rows.append((f"RSS at rest after {done} jobs: stack / tree ({processes} processes)",
                             f"{own / MB:.0f} / {tree / MB:.0f} MB", f"{own / base:.2f}x / {tree / base:.2f}x"))
        finally:
            down = cli(env, state, "down")
        rows.append(("down", f"{down:.2f} s", f"{down / up_empty:.2f}x"))
        up_full = cli(env, state, "up", "--detach")
        rows.append((f"up --detach, state of {JOBS} jobs", f"{up_full:.2f} s", f"{up_full / up_empty:.2f}x"))
        cli(env, state, "down")
        stop = sigterm_to_exit(env, state)
        rows.append((f"SIGTERM -> exit, state of {JOBS} jobs", f"{stop:.2f} s", f"{stop / up_empty:.2f}x"))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
