"""Where one local job's time goes, from submit to COMPLETED (issue 14 item 2), against the same train.py run
directly by the job's own interpreter (the baseline, measured in the same run).

Starts the embedded stack with the real CLI in a temporary KAOS_HOME, uploads the sklearn-digits template, trains
one warm-up job (the environment build and first imports are one-time costs), then traces RUNS jobs with distinct
params. Each stage is read from what the stack recorded, on the one clock of this machine:
  submit        client: POST .../jobs until it answers
  to execution  answer -> the Step Functions execution's start (history)
  <state>       each state of the training pipeline, entered -> exited (history)
  in Train:     CreateTrainingJob -> TrainingStartTime (the container's start) -> TrainingEndTime (SageMaker
                describe), each secondary status (Downloading, Training = the script, Uploading), and
                TrainingEndTime -> the Train state's exit (the .sync integration learning of the end)
  to seen       execution end -> the client first sees COMPLETED, polling every 50 ms (a tight client), and as
                `kaos train deploy --wait` sees it with its own polling (CLI row)
Run: .venv/bin/python -m bench.trace_job
"""
from __future__ import annotations

import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import boto3

from bench.submit import TEMPLATE, TERMINAL, WORKSPACE, Bench, checked, kaos_cli
from chalicelib import environments as catalogue
from kaos.client import Client
from kaos.local.environments import Environments, default_cache_dir

RUNS = int(os.environ.get("TRACE_RUNS", "5"))
TIGHT_POLL_S = 0.05


def job_python() -> Path:
    """The interpreter the job runs train.py with: its image's environment (kaos/local/environments.py), built by
    the warm-up job. The project's own interpreter has other scikit-learn and BLAS builds, so timing the plain
    script with it compared two different programs (22.7 s against the job's 5.2 s in one run)."""
    image = catalogue.lookup(catalogue.DEFAULT_TRAINING_FRAMEWORK).image_uri("us-east-1")
    return Environments(default_cache_dir()).ensure(image).python


def plain_run(home: Path, python: Path, seed: int) -> float:
    """train.py run directly by the job's interpreter, with the channel and model directories SageMaker would
    give, and no thread limit (as a user runs it)."""
    model = home / f"plain-model-{seed}"
    model.mkdir()
    env = {**os.environ, "SM_MODEL_DIR": str(model), "SM_CHANNEL_TRAINING": str(TEMPLATE / "data")}
    params = json.loads((TEMPLATE / "params.json").read_text())
    args = [a for k, v in {**params, "seed": seed}.items() for a in (f"--{k}", str(v))]
    started = time.perf_counter()
    subprocess.run([str(python), str(TEMPLATE / "train" / "train.py"), *args], env=env, check=True,
                   capture_output=True)
    return time.perf_counter() - started


def admin(state: Path, service: str) -> Any:
    runtime = json.loads((state / "runtime.json").read_text())
    keys = json.loads((state / "aws-admin.json").read_text())
    session = boto3.session.Session(aws_access_key_id=keys["aws_access_key_id"],
                                    aws_secret_access_key=keys["aws_secret_access_key"], region_name="us-east-1")
    return session.client(service, endpoint_url=runtime["endpoint_url"])  # type: ignore[call-overload]


def seconds(at: datetime.datetime) -> float:
    return at.timestamp()


def trace(client: Client, state: Path, code: str, data: str, seed: int) -> dict[str, float]:
    params = {**json.loads((TEMPLATE / "params.json").read_text()), "seed": seed}
    t0 = time.time()
    job = client.submit(WORKSPACE, code, {"training": data}, params)
    accepted = time.time()
    while job["status"] not in TERMINAL:
        time.sleep(TIGHT_POLL_S)
        job = client.job(WORKSPACE, job["id"])
    seen = time.time()
    if job["status"] != "COMPLETED":
        raise SystemExit(f"job {job['id']} ended {job['status']}: {job.get('failure_reason')}")
    sfn = admin(state, "stepfunctions")
    deadline = time.time() + 60
    # The job row turns COMPLETED inside the Record state, just before the execution ends: wait for the end.
    while sfn.describe_execution(executionArn=job["execution"])["status"] == "RUNNING" and time.time() < deadline:
        time.sleep(TIGHT_POLL_S)
    events = sfn.get_execution_history(executionArn=job["execution"], maxResults=1000)["events"]
    stages: dict[str, float] = {"submit (API answers)": accepted - t0,
                                "answer -> execution starts": seconds(events[0]["timestamp"]) - accepted}
    entered: dict[str, float] = {}
    for event in events:
        if event["type"].endswith("StateEntered"):
            entered[event["stateEnteredEventDetails"]["name"]] = seconds(event["timestamp"])
        elif event["type"].endswith("StateExited"):
            name = event["stateExitedEventDetails"]["name"]
            stages[f"state {name}"] = seconds(event["timestamp"]) - entered.pop(name)
            if name == "Train":
                train_exit = seconds(event["timestamp"])
    training = admin(state, "sagemaker").describe_training_job(TrainingJobName=job["training_job_name"])
    stages["  Train: create -> container start"] = (seconds(training["TrainingStartTime"])
                                                    - seconds(training["CreationTime"]))
    stages["  Train: container start -> end"] = (seconds(training["TrainingEndTime"])
                                                - seconds(training["TrainingStartTime"]))
    for step in training.get("SecondaryStatusTransitions", []):
        if "EndTime" in step:
            stages[f"    {step['Status']}"] = seconds(step["EndTime"]) - seconds(step["StartTime"])
    stages["  Train: end -> .sync sees it"] = train_exit - seconds(training["TrainingEndTime"])
    # Negative: the client saw COMPLETED (written by the Record task) before the execution's last event.
    stages["execution ends -> client sees COMPLETED"] = seen - seconds(events[-1]["timestamp"])
    stages["total: submit -> seen COMPLETED"] = seen - t0
    return stages


def cli_wait(bench: Bench, seed: int) -> float:
    path = bench.home / f"params-{seed}.json"
    path.write_text(json.dumps({**bench.params, "seed": seed}))
    started = time.perf_counter()
    checked(kaos_cli(bench.env, "train", "deploy", "-s", str(TEMPLATE / "train"), "-d", str(TEMPLATE / "data"),
                     "-h", str(path), "-w", WORKSPACE, "--wait", "--json"), "kaos train deploy --wait")
    return time.perf_counter() - started


def main() -> int:
    print(f"one local job, stage by stage; Python {sys.version.split()[0]}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="kaos-bench-trace-") as tmp:
        bench = Bench(Path(tmp))
        bench.up()
        samples: dict[str, list[float]] = defaultdict(list)
        plain: list[float] = []
        cli: list[float] = []
        try:
            client = bench.client()
            client.create_workspace(WORKSPACE)
            code = bench.snapshot(client, "code", TEMPLATE / "train")
            data = bench.snapshot(client, "data", TEMPLATE / "data")
            trace(client, bench.state, code, data, 1)  # warm-up: environment, caches, imports
            python = job_python()
            for run in range(RUNS):  # interleaved, so load drift hits all alike
                plain.append(plain_run(bench.home, python, 100 + run))
                for stage, value in trace(client, bench.state, code, data, 100 + run).items():
                    samples[stage].append(value)
                cli.append(cli_wait(bench, 200 + run))
        finally:
            bench.down()
    base = statistics.median(plain)
    print(f"{'stage':44} {'median s':>9} {'min s':>7} {'max s':>7}")
    for stage, values in samples.items():
        print(f"{stage:44} {statistics.median(values):9.2f} {min(values):7.2f} {max(values):7.2f}")
    total = statistics.median(samples["total: submit -> seen COMPLETED"])
    print(f"{'plain: train.py, the job env python':44} {base:9.2f} {min(plain):7.2f} {max(plain):7.2f}")
    print(f"{'CLI: kaos train deploy --wait (process)':44} {statistics.median(cli):9.2f} {min(cli):7.2f} "
          f"{max(cli):7.2f}")
    print(f"overhead over plain: API {total - base:+.2f} s ({total / base:.2f}x), CLI "
          f"{statistics.median(cli) - base:+.2f} s ({statistics.median(cli) / base:.2f}x); goal <= +1.0 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
