"""200 concurrent submissions over 10 workspaces, each workspace's job requested twenty times at once: exactly the
expected jobs, cache hits and executions, and every training completes."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kaos.bundle import hash_files, scan

from .conftest import TEMPLATE, Stack, tiny_code

WORKSPACES = 10
REQUESTS_PER_WORKSPACE = 20
# Each workspace's one distinct job is requested twenty times, concurrently: 10 trainings run (the races are in the
# submissions; every training beyond one per workspace only adds minutes to the suite).
DISTINCT_PER_WORKSPACE = 1


def test_200_concurrent_deploys(stack: Stack, tmp_path: Path) -> None:
    client = stack.client()
    code_files = hash_files(scan(tiny_code(tmp_path), "-s"), lambda _: None)
    data_files = hash_files(scan(TEMPLATE / "data", "-d"), lambda _: None)
    inputs: dict[str, tuple[str, str]] = {}
    for w in range(WORKSPACES):
        name = f"conc-{w}"
        client.create_workspace(name)
        code = client.upload_snapshot(name, "code", code_files, lambda _: None)["id"]
        data = client.upload_snapshot(name, "data", data_files, lambda _: None)["id"]
        inputs[name] = (code, data)
    requests = [(name, i % DISTINCT_PER_WORKSPACE) for name in inputs for i in range(REQUESTS_PER_WORKSPACE)]

    def submit(request: tuple[str, int]) -> dict[str, Any]:
        name, point = request
        code, data = inputs[name]
        # Each thread signs with its own client: a requests.Session is not shared across threads.
        job: dict[str, Any] = stack.client().submit(name, code, {"training": data}, {"point": point})
        return job

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(submit, requests))  # any 4xx/5xx raises here
    accepted = time.monotonic() - started

    by_request: dict[tuple[str, int], set[str]] = {}
    for request, job in zip(requests, results, strict=True):
        by_request.setdefault(request, set()).add(job["id"])
    assert all(len(ids) == 1 for ids in by_request.values()), "identical inputs got different jobs"
    distinct = {job["id"] for job in results}
    assert len(distinct) == WORKSPACES * DISTINCT_PER_WORKSPACE
    assert sum(not job["cached"] for job in results) == len(distinct)  # exactly one creator per job

    for name in inputs:
        listed = client.jobs(name, limit=200)["jobs"]
        assert len(listed) == DISTINCT_PER_WORKSPACE and len({j["id"] for j in listed}) == DISTINCT_PER_WORKSPACE
    sfn = stack.aws("stepfunctions")
    machine = next(m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"]
                   if "TrainingTraining" in m["name"])
    names = [e["name"] for e in sfn.get_paginator("list_executions").paginate(stateMachineArn=machine)
             .build_full_result()["executions"]]
    assert len([n for n in names if n in distinct]) == len(distinct)  # one execution per job, no duplicates

    deadline = time.monotonic() + 400
    pending = set(distinct)
    while pending and time.monotonic() < deadline:
        for name in inputs:
            for job in client.jobs(name, limit=200)["jobs"]:
                if job["status"] in ("COMPLETED", "FAILED", "KILLED"):
                    assert job["status"] == "COMPLETED", (job["id"], job.get("failure_reason"))
                    pending.discard(job["id"])
        time.sleep(2)
    print(f"\n{len(requests)} submissions accepted in {accepted:.1f} s; {len(distinct)} trainings done "
          f"{time.monotonic() - started:.1f} s after the first submission")
    assert not pending, f"{len(pending)} jobs did not finish"
