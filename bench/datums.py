"""Incremental per-file batch jobs on the embedded stack: adding k files to N processes k.

Starts the stack with the real CLI in a temporary KAOS_HOME, writes N small input files and a trivial per-file
command (`process.sh`: the byte count of the datum), then runs, each as `kaos batch deploy --per-file --wait`:
  1. initial: the N files (every datum processed; warms the stack and fills the datum cache);
  2. incremental: 10 files added (a new input snapshot, so a new job) — processes 10, reuses N;
  3. full: the same N + 10 files with the code changed trivially (a comment), so every datum's key changes and
     all N + 10 are processed: the cost of reprocessing the same input without the datum cache.
Wall time is the whole CLI call (scan + hash, upload of the new bytes, submit, the pipeline, polling until
COMPLETED); the job's own time is its RUNNING → COMPLETED span (Prepare's cache lookup, the container, Record).

Run: .venv/bin/python -m bench.datums [--files N]   (default N = 1000)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORKSPACE = "bench"
ADDED = 10
PROCESS = 'wc -c < "$KAOS_INPUT_FILE" > "$KAOS_OUTPUT_DIR/$KAOS_DATUM.len"\n'


def kaos_cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "kaos.cli", *args], env=env, cwd=ROOT, text=True,
                          capture_output=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"kaos {' '.join(args[:2])} failed ({done.returncode}):\n{done.stdout[-2000:]}\n"
                         f"{done.stderr[-3000:]}")
    return done.stdout


def write_inputs(directory: Path, start: int, count: int) -> None:
    for i in range(start, start + count):
        (directory / f"item-{i:05d}.txt").write_text(f"record {i}\n" * (1 + i % 7))


def job_seconds(job: dict[str, Any]) -> float:
    """RUNNING (Prepare) → COMPLETED (Record), from the job's status history."""
    at = {entry["status"]: datetime.fromisoformat(entry["at"].replace("Z", "+00:00")) for entry in job["history"]}
    return (at["COMPLETED"] - at["RUNNING"]).total_seconds()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000, help="input files before the 10 are added")
    files = parser.parse_args().files
    print(f"per-file batch jobs on the embedded stack; {files} + {ADDED} files; Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    rows: list[tuple[str, dict[str, Any], float]] = []
    with tempfile.TemporaryDirectory(prefix="kaos-bench-") as tmp:
        home = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KAOS_", "AWS_"))}
        env["KAOS_HOME"] = str(home)
        state = str(home / "local")
        start = time.perf_counter()
        kaos_cli(env, "local", "up", "--detach", "--state-dir", state)
        print(f"kaos local up --detach: {time.perf_counter() - start:.1f} s")
        try:
            kaos_cli(env, "workspace", "create", WORKSPACE)
            code, data = home / "code", home / "data"
            code.mkdir()
            data.mkdir()
            (code / "process.sh").write_text(PROCESS)
            write_inputs(data, 0, files)

            def deploy(label: str) -> None:
                began = time.perf_counter()
                job = json.loads(kaos_cli(env, "batch", "deploy", "-s", str(code), "-d", str(data), "--per-file",
                                          "-w", WORKSPACE, "--wait", "--json"))
                wall = time.perf_counter() - began
                if job["status"] != "COMPLETED":
                    raise SystemExit(f"{label}: {job['status']}: {job.get('failure_reason')}")
                rows.append((label, job, wall))
                metrics = job["metrics"]
                print(f"  {label}: processed {metrics['datums_processed']}, reused {metrics['datums_reused']}, "
                      f"wall {wall:.1f} s", flush=True)

            deploy(f"initial ({files} files)")
            write_inputs(data, files, ADDED)
            deploy(f"incremental (+{ADDED})")
            (code / "process.sh").write_text(PROCESS + "# changed: every datum's key changes\n")
            deploy(f"full ({files + ADDED}, new code)")
        finally:
            subprocess.run([sys.executable, "-m", "kaos.cli", "local", "down", "--state-dir", state], env=env,
                           cwd=ROOT, capture_output=True, check=False)
    header = f"{'job':28} {'processed':>9} {'reused':>7} {'wall s':>8} {'job s':>8}"
    print(header)
    print("-" * len(header))
    for label, job, wall in rows:
        metrics = job["metrics"]
        print(f"{label:28} {metrics['datums_processed']:>9} {metrics['datums_reused']:>7} {wall:8.1f} "
              f"{job_seconds(job):8.1f}")
    (_, incremental, inc_wall), (_, full, full_wall) = rows[1], rows[2]
    processed = incremental["metrics"]["datums_processed"] / full["metrics"]["datums_processed"]
    print(f"incremental / full: files processed {processed:.3f}, wall time {inc_wall / full_wall:.3f} "
          f"({full_wall / inc_wall:.1f}x faster), job time {job_seconds(incremental) / job_seconds(full):.3f}")
    ok = incremental["metrics"]["datums_processed"] == ADDED and full["metrics"]["datums_reused"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
