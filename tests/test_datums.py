"""Per-file (datum-level) incremental batch jobs end to end on the embedded stack: the command runs once per input
file, and a datum whose (path, content, code, command, image) was processed before reuses its recorded outputs, so
adding k files to N processes k."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .conftest import Stack

# One output per datum, named after it; the sum of the CSV's second column.
SUM = """\
import csv, os, pathlib
source = pathlib.Path(os.environ["KAOS_INPUT_FILE"])
with open(source, newline="") as handle:
    total = sum(float(row[1]) for row in list(csv.reader(handle))[1:])
out = pathlib.Path(os.environ["KAOS_OUTPUT_DIR"]) / (os.environ["KAOS_DATUM"] + ".sum")
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(f"{total}\\n")
# What the container was given and holds: the test reads it back from the job's archived log.
inputs = ",".join(sorted(os.listdir(os.environ["KAOS_INPUT_DIR"])))
outputs = sum(1 for p in pathlib.Path(os.environ["KAOS_OUTPUT_DIR"]).rglob("*") if p.is_file())
print("summed", os.environ["KAOS_DATUM"], "inputs", inputs, "outputs", outputs)
"""


def write_csv(directory: Path, index: int, scale: int = 1) -> None:
    rows = "".join(f"{r},{(index + r) * scale}\n" for r in range(5))
    (directory / f"part-{index:03d}.csv").write_text("row,value\n" + rows)


def bucket(stack: Stack) -> str:
    s3 = stack.aws("s3")
    return str(next(b["Name"] for b in s3.list_buckets()["Buckets"] if b["Name"].startswith("kaos-storagedata")))


def output_files(stack: Stack, workspace: str, job: dict[str, Any]) -> dict[str, str]:
    """path → content of the job's output snapshot."""
    s3, name = stack.aws("s3"), bucket(stack)
    snapshot = job["model"].removeprefix("snapshot:")
    manifest = json.loads(s3.get_object(Bucket=name, Key=f"ws/{workspace}/manifests/{snapshot}.json")["Body"].read())
    return {f["path"]: s3.get_object(Bucket=name, Key=f"ws/{workspace}/blobs/{f['sha256']}")["Body"].read().decode()
            for f in manifest["files"]}


def deploy(stack: Stack, code: Path, data: Path, *extra: str) -> dict[str, Any]:
    job: dict[str, Any] = json.loads(stack.kaos("batch", "deploy", "-s", str(code), "-d", str(data), "--per-file",
                                                "--glob", "*.csv", "--command", "python sum.py", "-w", "datums", *extra,
                                                "--wait", "--json").stdout)
    return job


def job_log(stack: Stack, job: dict[str, Any]) -> str:
    """The job's log as Record archived it beside its outputs."""
    log = stack.aws("s3").get_object(Bucket=bucket(stack), Key=f"ws/datums/jobs/{job['id']}/log.txt")
    return str(log["Body"].read().decode())


def counts(job: dict[str, Any]) -> tuple[int, int]:
    assert job["status"] == "COMPLETED", job
    return job["metrics"]["datums_processed"], job["metrics"]["datums_reused"]


def test_per_file_jobs_process_only_new_or_changed_datums(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", "datums")
    code, data = tmp_path / "code", tmp_path / "data"
    code.mkdir()
    data.mkdir()
    (code / "sum.py").write_text(SUM)
    for i in range(10):
        write_csv(data, i)
    (data / "README.txt").write_text("not a datum: the glob is *.csv\n")

    first = deploy(stack, code, data)
    assert counts(first) == (10, 0) and first["metrics"]["datums"] == 10
    outputs = output_files(stack, "datums", first)
    assert sorted(outputs) == [f"part-{i:03d}.csv.sum" for i in range(10)]
    assert outputs["part-003.csv.sum"] == f"{float(sum(3 + r for r in range(5)))}\n"
    assert "10 datum(s) to process, 0 reused" in job_log(stack, first)

    # Two more files: a new input snapshot, so a new job, but it processes only the two.
    write_csv(data, 10)
    write_csv(data, 11)
    second = deploy(stack, code, data)
    assert second["id"] != first["id"] and counts(second) == (2, 10)
    grown = output_files(stack, "datums", second)
    assert len(grown) == 12 and {k: grown[k] for k in outputs} == outputs
    # The container downloaded only the two datums it processed, and the ten reused outputs never reached it: a run
    # sees its own output, and the other new datum's if the two share a container.
    log = job_log(stack, second)
    lines = [line.split() for line in log.splitlines() if line.startswith("summed ")]
    assert sorted(line[1] for line in lines) == ["part-010.csv", "part-011.csv"], log
    assert {line[3] for line in lines} == {"part-010.csv,part-011.csv"} and max(int(line[5]) for line in lines) <= 2

    # New code: every datum's key changes, so all twelve run again (with the same results).
    (code / "sum.py").write_text(SUM + "# reformatted\n")
    recoded = deploy(stack, code, data)
    assert counts(recoded) == (12, 0)
    assert output_files(stack, "datums", recoded) == grown and recoded["model"] == second["model"]

    # One file's content changes: one datum runs.
    write_csv(data, 4, scale=10)
    changed = deploy(stack, code, data)
    assert counts(changed) == (1, 11)
    expected = float(sum((4 + r) * 10 for r in range(5)))
    assert output_files(stack, "datums", changed)["part-004.csv.sum"] == f"{expected}\n"

    # Same datums under another job fingerprint (a different timeout): everything is cached, no container runs.
    cached = deploy(stack, code, data, "--max-runtime", "300")
    assert cached["id"] != changed["id"] and counts(cached) == (0, 12) and cached["model"] == changed["model"]
    history = stack.aws("stepfunctions").get_execution_history(executionArn=cached["execution"], maxResults=1000)
    entered = {e["stateEnteredEventDetails"]["name"] for e in history["events"] if "stateEnteredEventDetails" in e}
    assert "AllDatumsCached" in entered and "Run" not in entered


def test_a_failed_datum_fails_the_job_but_finished_datums_stay_cached(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", "datumfail")
    code, data = tmp_path / "code", tmp_path / "data"
    code.mkdir()
    data.mkdir()
    (code / "sum.py").write_text(SUM)
    for i in range(4):
        write_csv(data, i)
    (data / "part-002.csv").write_text("row,value\n0,not-a-number\n")
    failed = json.loads(stack.kaos("batch", "deploy", "-s", str(code), "-d", str(data), "--per-file",
                                   "--command", "python sum.py", "-w", "datumfail", "--wait", "--json").stdout)
    assert failed["status"] == "FAILED", failed
    assert "datum part-002.csv failed" in failed["failure_reason"]
    assert failed["metrics"] == {"datums": 4, "datums_processed": 3, "datums_reused": 0, "datums_unfinished": 1}
    assert stack.executions(failed["id"]) == ["FAILED"]

    # Fixing the bad file: only it runs; the three that finished in the failed job are reused.
    write_csv(data, 2)
    fixed = json.loads(stack.kaos("batch", "deploy", "-s", str(code), "-d", str(data), "--per-file",
                                  "--command", "python sum.py", "-w", "datumfail", "--wait", "--json").stdout)
    assert counts(fixed) == (1, 3)
    assert sorted(output_files(stack, "datumfail", fixed)) == [f"part-{i:03d}.csv.sum" for i in range(4)]


def test_glob_matching_nothing_and_glob_without_per_file_are_refused(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", "datumglob")
    code, data = tmp_path / "code", tmp_path / "data"
    code.mkdir()
    data.mkdir()
    (code / "sum.py").write_text(SUM)
    write_csv(data, 0)
    job = json.loads(stack.kaos("batch", "deploy", "-s", str(code), "-d", str(data), "--per-file", "--glob",
                                "*.parquet", "--command", "python sum.py", "-w", "datumglob", "--wait",
                                "--json").stdout)
    assert job["status"] == "FAILED" and "no input file matches the glob '*.parquet'" in job["failure_reason"]
    refused = stack.kaos("batch", "deploy", "-s", str(code), "-d", str(data), "--glob", "*.csv", "-w", "datumglob",
                         check=False)
    assert refused.returncode != 0 and "--per-file" in refused.stderr + refused.stdout
