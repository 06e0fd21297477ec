"""The embedded stack keeps its state across `kaos local down`/`up` and across a crash of its process.

These tests restart the stack, so each runs its own (started through the CLI, as a user does) in its own
KAOS_HOME instead of the shared session `stack` fixture."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kaos.local.persistence import INTERRUPTED_REASON, Stored, load_stored
from kaos.local.stack import STOP_SECONDS
from kaos.processes import alive

from .conftest import TEMPLATE, Stack, stack_environment, tiny_code


# What the stack prints once ready: one line per API request, its own stop report, one-line warnings.
FOREGROUND_LINE = re.compile(r"(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) /\S* \d{3} \d+ ms$|saved state in |"
                             r"(WARNING|ERROR) [\w.]+: ")


class Restartable:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.state_dir = home / "local"
        self.env = stack_environment(home)
        self.stack: Stack | None = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "kaos.cli", "local", *args, "--state-dir",
                                 str(self.state_dir)], env=self.env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    def up(self) -> Stack:
        self.cli("up", "--detach")
        self.stack = Stack(self.home)
        return self.stack

    def down(self) -> None:
        started = time.monotonic()
        self.cli("down")
        assert time.monotonic() - started < STOP_SECONDS + 5, "the stack took too long to stop"
        assert not (self.state_dir / "runtime.json").exists()
        # The foreground log from ready to stop: at most one line per API request, no traceback.
        log = (self.state_dir / "stack.log").read_text().split("kaos local stack ready", 1)[-1].splitlines()[1:]
        unexpected = [line for line in log if not FOREGROUND_LINE.match(line)]
        assert not unexpected, "\n".join(unexpected[:20])

    def close(self) -> None:
        """Stops the stack if one runs (a test's teardown)."""
        subprocess.run([sys.executable, "-m", "kaos.cli", "local", "down", "--state-dir", str(self.state_dir)],
                       env=self.env, capture_output=True, text=True, timeout=120)

    def crash(self) -> None:
        """`kill -9` of the stack's process (its pid is in runtime.json), returning once it is gone."""
        assert self.stack is not None
        pid = int(self.stack.runtime["pid"])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while alive(pid):
            assert time.monotonic() < deadline, f"the stack process {pid} outlived SIGKILL"
            time.sleep(0.05)
        assert (self.state_dir / "runtime.json").exists()  # a crash leaves it behind; `up` must cope

    def stored(self) -> Stored:
        """What a restart would load now (snapshots plus the journal), read from the files alone."""
        return load_stored(self.state_dir / "data")

    def job_rows(self) -> list[dict[str, Any]]:
        """Job items as they are stored now."""
        return [item for items in self.stored().tables.values() for item in items.values()
                if item.get("sk", {}).get("S", "").startswith("JOB#")]

    def stored_log_text(self) -> str:
        """Every log event message as the last periodic log export wrote them."""
        return "\n".join(path.read_text() for path in (self.state_dir / "data" / "logs").glob("*/*.jsonl"))


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Restartable]:
    stack = Restartable(tmp_path / "kaos-home")
    try:
        yield stack
    finally:
        stack.close()


def deploy(stack: Stack, code: Path, *extra: str) -> dict[str, Any]:
    args = ["train", "deploy", "-s", str(code), "-d", str(TEMPLATE / "data"), "-h", str(TEMPLATE / "params.json"),
            *extra, "--json"]
    return dict(json.loads(stack.kaos(*args).stdout))


def test_down_and_up_keep_workspaces_jobs_models_and_logs(local: Restartable, tmp_path: Path) -> None:
    # A tiny training (a log line, a model, a metric): what is kept does not depend on what the script computes.
    code = tiny_code(tmp_path, "print('trained on the digits data', flush=True)")
    stack = local.up()
    stack.kaos("workspace", "create", "keep")
    job = deploy(stack, code, "--wait")
    assert job["status"] == "COMPLETED", job
    before = {
        "workspaces": stack.kaos_json("workspace", "list"),
        "info": stack.kaos_json("workspace", "info"),
        "job": stack.kaos_json("train", "info", job["id"]),
        "provenance": stack.kaos_json("train", "provenance", f"model:{job['id']}"),
    }
    # The job reads COMPLETED from its execution's last task; a `down` before that execution ended would abort it
    # (an in-flight execution does not survive a stop), and its kept record is what is checked below.
    assert stack.executions(job["id"]) == ["SUCCEEDED"]
    local.down()
    assert (local.state_dir / "data" / "format.json").exists()

    stack = local.up()
    assert "restored state" in (local.state_dir / "stack.log").read_text()
    assert stack.kaos_json("workspace", "list") == before["workspaces"]
    assert stack.kaos_json("workspace", "info") == before["info"]
    listed = stack.kaos_json("train", "list")["jobs"]
    assert [(j["id"], j["status"]) for j in listed] == [(job["id"], "COMPLETED")]
    assert stack.kaos_json("train", "info", job["id"]) == before["job"]
    info = stack.kaos("train", "info", job["id"]).stdout
    assert "metric:accuracy" in info and "COMPLETED" in info
    assert "trained on the digits data" in stack.kaos("train", "logs", job["id"]).stdout
    assert stack.kaos_json("train", "provenance", f"model:{job['id']}") == before["provenance"]
    assert "produced by" in stack.kaos("train", "provenance", f"model:{job['id']}").stdout
    # The model object itself came back, byte for byte as the provenance recorded it.
    bucket, key = job["model"].removeprefix("s3://").split("/", 1)
    body = stack.aws("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    model_node = next(n for n in before["provenance"]["nodes"] if n["id"] == f"model:{job['id']}")
    assert len(body) == model_node["attrs"]["size"]

    # Identical inputs are still a cache hit that starts no second execution (the execution record is kept).
    assert stack.executions(job["id"]) == ["SUCCEEDED"]
    again = deploy(stack, code)
    assert again["id"] == job["id"] and again["cached"] is True
    assert stack.executions(job["id"]) == ["SUCCEEDED"]
    assert stack.kaos_json("train", "info", job["id"]) == before["job"]

    # A second restart right after changes made since the first one keeps those too.
    stack.kaos("workspace", "create", "later")
    local.down()
    stack = local.up()
    assert {w["name"] for w in stack.kaos_json("workspace", "list")} >= {"keep", "later"}


def test_a_crash_fails_the_running_job_and_keeps_the_rest(local: Restartable, tmp_path: Path) -> None:
    flag, pid_file = tmp_path / "slow.flag", tmp_path / "train.pid"
    flag.write_text("sleep")
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "train.py").write_text(
        "import json, os, pathlib, time\n"
        "print('slow training started', flush=True)\n"
        f"if pathlib.Path({str(flag)!r}).exists():\n"
        f"    pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n"
        "    time.sleep(60)\n"
        "model = os.environ['SM_MODEL_DIR']\n"
        "json.dump({'accuracy': 0.5}, open(os.path.join(model, 'metrics.json'), 'w'))\n"
    )
    stack = local.up()
    stack.kaos("workspace", "create", "crash")
    fast = json.loads(stack.kaos("train", "deploy", "-s", str(tiny_code(tmp_path)), "-d", str(TEMPLATE / "data"),
                                 "--wait", "--json").stdout)
    assert fast["status"] == "COMPLETED", fast
    assert stack.executions(fast["id"]) == ["SUCCEEDED"]  # ended before the crash (see the test above)
    job = json.loads(stack.kaos("train", "deploy", "-s", str(slow), "-d", str(TEMPLATE / "data"), "--json").stdout)
    try:
        # Crash once the running job has reached the stored state (a Lambda's write, not an acknowledged API
        # write: the periodic flush stores it within a few seconds).
        deadline = time.monotonic() + 90
        while not any(row["sk"]["S"] == f"JOB#{job['id']}" and row["status"]["S"] == "TRAINING"
                      for row in local.job_rows()):
            assert time.monotonic() < deadline, "the running job never reached the stored state"
            time.sleep(0.5)
        assert stack.kaos_json("train", "info", job["id"])["status"] == "TRAINING"
        # The log line must have reached the stored state too (log events are exported every few seconds).
        while "slow training started" not in local.stored_log_text():
            assert time.monotonic() < deadline, "the running job's log never reached the stored state"
            time.sleep(0.5)
        local.crash()

        stack = local.up()
        failed = stack.kaos_json("train", "info", job["id"])
        assert failed["status"] == "FAILED"
        assert failed["failure_reason"] == INTERRUPTED_REASON.format(job=job["id"])
        assert failed["ended_at"] and failed["history"][-1]["status"] == "FAILED"
        assert [h["status"] for h in failed["history"]] == ["SUBMITTED", "TRAINING", "FAILED"]
        assert "slow training started" in stack.kaos("train", "logs", job["id"]).stdout
        assert stack.executions(job["id"]) == ["ABORTED"]  # moto cannot resume it; the record stays
        assert stack.executions(fast["id"]) == ["SUCCEEDED"]
        kept = stack.kaos_json("train", "info", fast["id"])
        assert kept["status"] == "COMPLETED" and kept["metrics"] == fast["metrics"]
        assert "crash" in {w["name"] for w in stack.kaos_json("workspace", "list")}

        # The stopped job runs again as a new attempt (a new execution name), this time without sleeping.
        flag.unlink()
        resumed = stack.kaos_json("train", "resume", job["id"], "--wait")
        assert resumed["status"] == "COMPLETED", resumed
        assert resumed["attempt"] == 2 and resumed["metrics"] == {"accuracy": 0.5}
        assert resumed["attempts"][0]["failure_reason"] == failed["failure_reason"]
        assert stack.executions(f"{job['id']}-2") == ["SUCCEEDED"]
    finally:
        if pid_file.exists():  # the first attempt's process outlived the crashed stack
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass


def test_the_jobs_in_flight_are_found_in_the_stored_state_not_by_scanning_the_table() -> None:
    """A start fails the jobs that were in flight; it finds them in the files it just read (a Scan of the table
    over HTTP read every blob index row too, most of a start's time once large bundles were committed)."""
    from kaos.local.persistence import StoredTable, in_flight_jobs, item_line

    def row(sk: str, status: str | None = None) -> dict[str, Any]:
        return {"pk": {"S": "WS#a"}, "sk": {"S": sk}, **({"status": {"S": status}} if status else {})}

    rows = [row("JOB#train-1", "TRAINING"), row("JOB#train-2", "SUBMITTED"), row("JOB#train-3", "COMPLETED"),
            row("JOB#train-4", "FAILED"), row("BLOB#" + "a" * 64), row("GRID#g", "TRAINING"), row("META", "TRAINING")]
    stored = Stored(tables={"t": StoredTable({str(i): item for i, item in enumerate(rows)}),
                            "other": StoredTable({"x": row("JOB#train-5", "TRAINING")})})
    assert in_flight_jobs(stored) == [("WS#a", "JOB#train-1"), ("WS#a", "JOB#train-2"), ("WS#a", "JOB#train-5")]
    # The same rows as a snapshot's lines, left unparsed by the read; and a table whose key has no sort key.
    lines = StoredTable()
    lines.read([item_line(item, ["pk", "sk"]) for item in rows], ["pk", "sk"])
    by_pk = StoredTable()
    by_pk.read([item_line(row("JOB#train-6", "TRAINING"), ["pk"])], ["pk"])
    assert in_flight_jobs(Stored(tables={"t": lines, "u": by_pk})) == [
        ("WS#a", "JOB#train-1"), ("WS#a", "JOB#train-2"), ("WS#a", "JOB#train-6")]
