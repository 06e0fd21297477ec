"""How the embedded stack's start scales with what it has stored (issue 14 item 4: `up` within 3 s whatever the
state size, a snapshot that does not hold the API's writes for long).

Grows one state with the real CLI and API: each step commits distinct code bundles of 9,999 files (the snapshot
limit, less the entry point) and trains on each, so every bundle adds ~10,000 DynamoDB items (its blob index) and a
few packs to S3. After each step the stack is stopped (`local down`: a flush, no snapshot, so the next start replays
the journal too), and on fresh copies of that state:

  up (as left)      `kaos local up --detach` on the state as `down` left it (journal replay included), median of 3
  up (settled)      the same once a start has written its snapshot (what every later start reads), median of 3
  stack RSS         the stack process after the settled start, idle
  down              `kaos local down` after the settled start

Baseline: `up --detach` on an empty state in the same run (the ratios are against it).

Run: .venv/bin/python -m bench.state_start   (STATE_BUNDLES=3,10: the cumulative bundle counts measured)
"""
from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.grid import DATA
from bench.peers import rss_bytes
from bench.stack_footprint import cli, client_for
from kaos.bundle import hash_files, scan
from kaos.local.state_dir import Runtime

STEPS = [int(n) for n in os.environ.get("STATE_BUNDLES", "3,10").split(",")]
FILES = 9_999
RUNS = 3
MB = 1 << 20


def bundle(root: Path, number: int) -> Path:
    """A code bundle of FILES small modules, none shared with another bundle's."""
    code = root / f"bundle-{number}"
    code.mkdir()
    (code / "train.py").write_text("print('trained')\n")
    for i in range(FILES):
        (code / f"m{i:05}.py").write_text(f"# bundle {number} module {i}\n" + "x = 1\n" * 40)
    return code


def grow(env: dict[str, str], state: Path, scratch: Path, first: int, last: int) -> None:
    """Commits bundles first..last-1 and trains on each, then stops the stack."""
    cli(env, state, "up", "--detach")
    try:
        client = client_for(state)
        if first == 0:
            client.create_workspace("state")
        data = client.upload_snapshot("state", "data", hash_files(scan(DATA, "-d"), lambda _: None),
                                      lambda _: None)["id"]
        for number in range(first, last):
            code = bundle(scratch, number)
            snapshot = client.upload_snapshot("state", "code", hash_files(scan(code, "-s"), lambda _: None),
                                              lambda _: None)["id"]
            client.submit("state", snapshot, {"training": data}, {"bundle": number})
            shutil.rmtree(code)
    finally:
        cli(env, state, "down")


def settle(env: dict[str, str], state: Path) -> None:
    """Starts once and waits for the first snapshot (the journal emptied), then stops."""
    cli(env, state, "up", "--detach")
    journal = state / "data" / "journal.log"
    deadline = time.monotonic() + 300
    while journal.exists() and journal.stat().st_size and time.monotonic() < deadline:
        time.sleep(0.2)
    cli(env, state, "down")


def items(state: Path) -> int:
    return sum(sum(1 for _ in path.open()) - 1 for path in (state / "data" / "dynamodb").glob("*.jsonl"))


def median_up(env: dict[str, str], state: Path, copy: Path) -> float:
    """Median `up --detach` over RUNS fresh copies of `state`."""
    times = []
    for _ in range(RUNS):
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(state, copy, symlinks=True)
        times.append(cli(env, copy, "up", "--detach"))
        cli(env, copy, "down")
    return statistics.median(times)


def main() -> None:
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}; {FILES:,} files a bundle; medians of "
          f"{RUNS} starts; ratios against up on an empty state", flush=True)
    with tempfile.TemporaryDirectory(prefix="kaos-bench-state-") as tmp:
        scratch = Path(tmp)
        env = {**os.environ, "KAOS_HOME": str(scratch / "home")}
        state, copy = scratch / "state", scratch / "copy"
        cli(env, state, "up", "--detach")  # a first start may synthesize the CDK app: not measured
        cli(env, state, "down")
        shutil.rmtree(state / "data", ignore_errors=True)
        empty = median_up(env, state, copy)
        print(f"{'bundles':>8}{'items':>10}{'up as left':>14}{'up settled':>14}{'ratio':>8}{'stack RSS':>12}"
              f"{'down':>8}", flush=True)
        print(f"{0:>8}{0:>10}{empty:>12.2f} s{empty:>12.2f} s{1.0:>7.2f}x", flush=True)
        done = 0
        for target in STEPS:
            started = time.monotonic()
            grow(env, state, scratch, done, target)
            done = target
            print(f"  (built in {time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
            as_left = median_up(env, state, copy)
            settle(env, state)
            settled = median_up(env, state, copy)
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(state, copy, symlinks=True)
            cli(env, copy, "up", "--detach")
            runtime = Runtime.read(copy)
            time.sleep(5)  # idle: the periodic thread has nothing to write
            rss = rss_bytes(runtime.pid) if runtime else 0
            down = cli(env, copy, "down")
            print(f"{done:>8}{items(state):>10,}{as_left:>12.2f} s{settled:>12.2f} s{settled / empty:>7.2f}x"
                  f"{rss / MB:>9.0f} MB{down:>6.2f} s", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
