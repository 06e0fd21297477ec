"""`kaos workspace kill` means stopped: on the embedded stack a kill stops the workspace's running training
(execution ABORTED, SageMaker job Stopped, process gone), its running grid (grid execution and its points'
executions) and its batch job (Batch job terminated, process gone), removes every row (jobs, grid points) and every
object under `ws/<name>/`, nothing appears there afterwards, and the name re-created by another user is a new
incarnation that sees nothing of the old one. In process (moto), the fences: an outcome recorded after the kill is
dropped and writes nothing, also when the kill lands between Record's check and its end."""
from __future__ import annotations

import io
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from kaos.client import ApiError, Client

from tests.contract_tables import dynamo_table  # noqa: F401  (fixture)

from .conftest import TEMPLATE, Stack, tiny_code, until

DEV = "arn:aws:iam::123456789012:user/dev"
GUEST = "arn:aws:iam::123456789012:user/guest"

# The training body: saves a partial model (a stopped SageMaker job still uploads it), then writes its pid and
# waits for a stop file that never comes, for at most 300 s (so a broken kill cannot leave it running for ever).
RUNNING = """\
hps = json.loads(os.environ.get('SM_HPS') or '{}')
open(os.path.join(os.environ['SM_MODEL_DIR'], 'partial.txt'), 'w').write('saved before the kill')
open(hps['pidfile'] + '.tmp', 'w').write(str(os.getpid()))
os.replace(hps['pidfile'] + '.tmp', hps['pidfile'])
print('kaos-test: running', flush=True)
deadline = time.monotonic() + 300
while time.monotonic() < deadline and not os.path.exists(hps['pidfile'] + '.stop'):
    time.sleep(0.2)
"""

# The batch command: writes its pid, then waits the same way (its argument is the pid file).
BATCH_RUNNING = """\
import os, sys, time
pidfile = sys.argv[1]
open(pidfile + '.tmp', 'w').write(str(os.getpid()))
os.replace(pidfile + '.tmp', pidfile)
print('kaos-test: running', flush=True)
deadline = time.monotonic() + 300
while time.monotonic() < deadline and not os.path.exists(pidfile + '.stop'):
    time.sleep(0.2)
"""


# --- helpers ----------------------------------------------------------------------------------------------
def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie (a zombie has ended; only its exit status is left)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def read_pid(path: Path) -> int | None:
    return int(path.read_text()) if path.exists() else None


def started(client: Client, workspace: str, job_id: str, pidfile: Path) -> int:
    """The pid the job's process wrote once it runs; fails at once (with the job) if the job ends first."""
    def check() -> int | None:
        pid = read_pid(pidfile)
        if pid is None:
            job = client.job(workspace, job_id)
            assert job["status"] not in ("COMPLETED", "FAILED", "KILLED"), (job["status"], job["failure_reason"])
        return pid

    return int(until(check, f"the process of {job_id} to start", every=1))


def bucket(stack: Stack) -> str:
    names = [b["Name"] for b in stack.aws("s3").list_buckets()["Buckets"]]
    return next(n for n in names if n.startswith("kaos-storagedata"))


def table(stack: Stack) -> str:
    names = stack.aws("dynamodb").list_tables()["TableNames"]
    assert len(names) == 1, names
    return str(names[0])


def versions(stack: Stack, prefix: str) -> list[str]:
    """Every object version and delete marker under the prefix (the bucket is versioned)."""
    page = stack.aws("s3").list_object_versions(Bucket=bucket(stack), Prefix=prefix)
    return [v["Key"] for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]


def partition(stack: Stack, pk: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = stack.aws("dynamodb").query(
        TableName=table(stack), KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": {"S": pk}},
        ConsistentRead=True)["Items"]
    return items


def kill_until_done(client: Client, workspace: str, timeout: float = 150) -> list[dict[str, Any]]:
    """Kills the workspace, again while it answers `stopping` (a kill is idempotent); every answer, in order."""
    answers = [client.kill_workspace(workspace)]
    deadline = time.monotonic() + timeout
    while answers[-1]["status"] == "stopping":
        assert time.monotonic() < deadline, f"the kill never finished: {answers[-1]}"
        time.sleep(1)
        answers.append(client.kill_workspace(workspace))
    assert answers[-1]["status"] == "killed", answers
    return answers


def assert_nothing_appears(stack: Stack, workspace: str, pids: list[int], seconds: float = 8) -> None:
    """The job processes are gone, and for `seconds` after that no object appears under the workspace's prefix."""
    for pid in pids:
        until(lambda pid=pid: not alive(pid), f"process {pid} to end", timeout=60)  # type: ignore[misc]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert versions(stack, f"ws/{workspace}/") == [], "an object appeared under the killed workspace's prefix"
        time.sleep(0.5)


def assert_new_incarnation_is_empty(stack: Stack, workspace: str, old_jobs: list[str]) -> None:
    """`guest` re-creates the name: a new workspace with nothing of the old one's jobs, models or grids."""
    guest = stack.client("guest")
    created = guest.create_workspace(workspace)
    assert created["owner"] == GUEST
    info = guest.workspace(workspace)
    assert (info["jobs"], info["models"], info["snapshots"]) == (0, 0, 0), info
    assert guest.jobs(workspace)["jobs"] == []
    for job_id in old_jobs:
        with pytest.raises(ApiError) as gone:
            guest.job(workspace, job_id)
        assert gone.value.status == 404
    rows = partition(stack, f"WS#{workspace}")
    assert {r["sk"]["S"] for r in rows} == {"META", f"MEMBER#{GUEST}"}, rows
    with pytest.raises(ApiError) as not_member:  # and dev, the old owner, is not a member of the new one
        stack.client().workspace(workspace)
    assert not_member.value.status == 404
    assert versions(stack, f"ws/{workspace}/") == []
    guest.kill_workspace(workspace)


def deploy(stack: Stack, workspace: str, code: Path, params: dict[str, Any], tmp: Path, *extra: str) -> Any:
    params_file = tmp / "params.json"
    params_file.write_text(json.dumps(params))
    return json.loads(stack.kaos("train", "deploy", "-w", workspace, "-s", str(code), "-d", str(TEMPLATE / "data"),
                                 "-h", str(params_file), "--json", *extra).stdout)


def execution_status(stack: Stack, arn: str) -> str:
    return str(stack.aws("stepfunctions").describe_execution(executionArn=arn)["status"])


def training_status(stack: Stack, name: str) -> str:
    return str(stack.aws("sagemaker").describe_training_job(TrainingJobName=name)["TrainingJobStatus"])


# --- on the embedded stack ----------------------------------------------------------------------------------
def test_kill_stops_a_running_training_and_the_name_comes_back_empty(stack: Stack, tmp_path: Path) -> None:
    ws = "kill-train"
    dev = stack.client()
    dev.create_workspace(ws)
    pidfile = tmp_path / "pid"
    job = deploy(stack, ws, tiny_code(tmp_path, RUNNING), {"pidfile": str(pidfile)}, tmp_path)
    pid = started(dev, ws, job["id"], pidfile)
    # Positive controls: it really runs, under a running execution, and the workspace has objects and rows.
    assert alive(pid)
    assert dev.job(ws, job["id"])["status"] == "TRAINING"
    assert execution_status(stack, job["execution"]) == "RUNNING"
    assert training_status(stack, job["id"]) == "InProgress"
    assert versions(stack, f"ws/{ws}/") and partition(stack, f"WS#{ws}")

    answers = kill_until_done(dev, ws)
    assert answers[0]["stopped_jobs"] == 1 and answers[0]["stopped_grids"] == 0, answers
    assert execution_status(stack, job["execution"]) == "ABORTED"
    assert training_status(stack, job["id"]) == "Stopped"
    # A stopped job still uploads the model it saved (as SageMaker does), unless its role is gone: either way the
    # kill waited for it to end, so nothing of it is left or appears later.
    assert_nothing_appears(stack, ws, [pid])
    assert partition(stack, f"WS#{ws}") == []  # the job row too (it was KILLED before it went)
    assert partition(stack, f"NODE#{ws}#job:{job['id']}") == []
    with pytest.raises(ApiError) as gone:  # killing again: the workspace is gone
        dev.kill_workspace(ws)
    assert gone.value.status == 404

    assert_new_incarnation_is_empty(stack, ws, [job["id"]])


def test_the_late_outcome_of_a_killed_job_writes_nothing_into_the_new_incarnation(stack: Stack,
                                                                                  tmp_path: Path) -> None:
    """RecordOutcome delivered (again) after the kill and the re-creation: dropped, with nothing written."""
    ws = "kill-late"
    dev, guest = stack.client(), stack.client("guest")
    dev.create_workspace(ws)
    job = deploy(stack, ws, tiny_code(tmp_path), {"run": "late"}, tmp_path, "--wait")
    assert job["status"] == "COMPLETED"
    old_row = stack.aws("dynamodb").get_item(TableName=table(stack), Key={"pk": {"S": f"WS#{ws}"},
                                                                          "sk": {"S": f"JOB#{job['id']}"}},
                                             ConsistentRead=True)["Item"]
    model_uri = job["model"]
    kill_until_done(dev, ws)
    guest.create_workspace(ws)
    lam = stack.aws("lambda")
    name = record_outcome_function(stack)
    event = {"workspace": ws, "job_id": job["id"], "execution": job["execution"], "outcome": "Completed",
             "training": {"ModelArtifacts": {"S3ModelArtifacts": model_uri}}}
    # 1. The job row is gone with the old incarnation: dropped.
    answer = json.loads(lam.invoke(FunctionName=name, Payload=json.dumps(event).encode())["Payload"].read())
    assert answer == {"job_id": job["id"], "status": "DROPPED", "dropped": True}, answer
    # 2. As if Record had read the row before the kill: the old incarnation's row, not yet ended, in the new
    #    workspace's partition. The incarnation in its spec is not the workspace's: dropped, nothing written.
    row = {**old_row, "status": {"S": "TRAINING"}}
    for field in ("model_uri", "metrics", "ended_at"):
        row.pop(field, None)
    stack.aws("dynamodb").put_item(TableName=table(stack), Item=row)
    try:
        for _ in range(2):  # and delivered twice
            raw = lam.invoke(FunctionName=name, Payload=json.dumps(event).encode())
            assert "FunctionError" not in raw
            answer = json.loads(raw["Payload"].read())
            assert answer == {"job_id": job["id"], "status": "TRAINING", "dropped": True}, answer
        after = stack.aws("dynamodb").get_item(TableName=table(stack), Key={"pk": row["pk"], "sk": row["sk"]},
                                               ConsistentRead=True)["Item"]
        assert after == row
        assert partition(stack, f"NODE#{ws}#model:{job['id']}") == []
        assert partition(stack, f"NODE#{ws}#job:{job['id']}") == []
        assert versions(stack, f"ws/{ws}/") == []
        assert guest.workspace(ws)["models"] == 0
    finally:
        stack.aws("dynamodb").delete_item(TableName=table(stack), Key={"pk": row["pk"], "sk": row["sk"]})
    guest.kill_workspace(ws)


def record_outcome_function(stack: Stack) -> str:
    from kaos.local.loader import physical_name

    template = json.loads((stack.state_dir / "template.json").read_text())  # the template the stack runs
    logical = next(k for k, v in template["Resources"].items()
                   if v["Type"] == "AWS::Lambda::Function" and k.startswith("TrainingRecordOutcomeFunction"))
    return physical_name(logical, "AWS::Lambda::Function")


def test_kill_stops_a_running_grid_and_its_points(stack: Stack, tmp_path: Path) -> None:
    ws = "kill-grid"
    dev = stack.client()
    dev.create_workspace(ws)
    pidfiles = [tmp_path / "pid-a", tmp_path / "pid-b", tmp_path / "pid-c"]
    grid = deploy(stack, ws, tiny_code(tmp_path, RUNNING), {"pidfile": [str(p) for p in pidfiles]}, tmp_path,
                  "-p", "2")
    assert grid["id"].startswith("grid-") and grid["points"] == 3
    # Two points run at once (parallelism 2); the third waits for a free slot that the kill must never give it.
    until(lambda: sum(p.exists() for p in pidfiles) == 2, "two grid points to be training")
    running = {p: read_pid(p) for p in pidfiles if p.exists()}
    assert all(pid is not None and alive(pid) for pid in running.values())
    points = dev.request("GET", f"/workspaces/{ws}/grids/{grid['id']}")["rows"]
    jobs = [p["job"] for p in points]
    assert len(jobs) >= 2 and execution_status(stack, grid["execution"]) == "RUNNING"
    executions = {j: dev.job(ws, j)["execution"] for j in jobs}
    assert [execution_status(stack, arn) for arn in executions.values()].count("RUNNING") >= 2
    assert partition(stack, f"GRID#{ws}#{grid['id']}")

    answers = kill_until_done(dev, ws)
    assert answers[0]["stopped_grids"] == 1 and answers[0]["stopped_jobs"] >= 2, answers
    assert execution_status(stack, grid["execution"]) == "ABORTED"
    for job_id, arn in executions.items():
        assert execution_status(stack, arn) != "RUNNING", job_id
    for job_id in jobs:
        if any(j["TrainingJobName"] == job_id for j in
               stack.aws("sagemaker").list_training_jobs(NameContains=job_id)["TrainingJobSummaries"]):
            assert training_status(stack, job_id) == "Stopped", job_id
    assert_nothing_appears(stack, ws, [pid for pid in running.values() if pid is not None])
    assert [p for p in pidfiles if p not in running and p.exists()] == [], "a point started after the kill"
    assert partition(stack, f"GRID#{ws}#{grid['id']}") == []  # the grid's point rows
    assert partition(stack, f"WS#{ws}") == []

    assert_new_incarnation_is_empty(stack, ws, jobs)


def test_kill_terminates_a_running_batch_job(stack: Stack, tmp_path: Path) -> None:
    ws = "kill-batch"
    dev = stack.client()
    dev.create_workspace(ws)
    code = tmp_path / "batch-code"
    code.mkdir()
    (code / "loop.py").write_text(BATCH_RUNNING)
    pidfile = tmp_path / "batch-pid"
    job = json.loads(stack.kaos("batch", "deploy", "-w", ws, "-s", str(code), "-d", str(TEMPLATE / "data"),
                                "--command", f"python loop.py {pidfile}", "--json").stdout)
    pid = started(dev, ws, job["id"], pidfile)
    assert alive(pid) and execution_status(stack, job["execution"]) == "RUNNING"
    history = stack.aws("stepfunctions").get_execution_history(executionArn=job["execution"])["events"]
    submitted = [json.loads(e["taskSubmittedEventDetails"]["output"]) for e in history
                 if e["type"] == "TaskSubmitted"]
    assert len(submitted) == 1
    batch_job = submitted[0]["JobId"]
    assert stack.aws("batch").describe_jobs(jobs=[batch_job])["jobs"][0]["status"] not in ("SUCCEEDED", "FAILED")

    answers = kill_until_done(dev, ws)
    assert answers[0]["stopped_jobs"] == 1, answers
    assert execution_status(stack, job["execution"]) == "ABORTED"
    described = stack.aws("batch").describe_jobs(jobs=[batch_job])["jobs"][0]
    assert described["status"] == "FAILED" and "killed by" in described["statusReason"], described
    assert_nothing_appears(stack, ws, [pid])
    assert partition(stack, f"WS#{ws}") == []

    assert_new_incarnation_is_empty(stack, ws, [job["id"]])


def test_a_kill_refuses_others_and_a_killed_workspace_refuses_its_members(stack: Stack) -> None:
    ws = "kill-auth"
    dev, guest = stack.client(), stack.client("guest")
    dev.create_workspace(ws)
    with pytest.raises(ApiError) as stranger:
        guest.kill_workspace(ws)
    assert stranger.value.status == 404
    dev.share(ws, "guest")
    with pytest.raises(ApiError) as member:
        guest.kill_workspace(ws)
    assert member.value.status == 403
    answer = dev.kill_workspace(ws)  # nothing runs: the kill finishes at once and the name is free
    assert answer["status"] == "killed" and answer["stopped_jobs"] == 0 and answer["pending"] == []
    with pytest.raises(ApiError) as gone:
        guest.workspace(ws)
    assert gone.value.status == 404
    assert all(w["name"] != ws for w in guest.workspaces())


def test_terminate_job_stops_the_local_batch_process(tmp_path: Path) -> None:
    """The offline Batch runner honours TerminateJob (what a kill calls): the process group is killed and the job
    ends FAILED with the reason; a job that is not terminated keeps running (the control)."""
    from kaos.local.emulator import Emulator

    emulator = Emulator(tmp_path / "emu", stop_grace_seconds=1)
    emulator.start()
    try:
        batch, iam = emulator.client("batch"), emulator.client("iam")
        emulator.client("logs").create_log_group(logGroupName="/aws/batch/job")  # the awslogs driver's default
        role_arn = iam.create_role(RoleName="batch", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        env_arn = batch.create_compute_environment(
            computeEnvironmentName="kill-ce", type="UNMANAGED", state="ENABLED", serviceRole=role_arn,
        )["computeEnvironmentArn"]
        batch.create_job_queue(jobQueueName="kill-q", state="ENABLED", priority=1,
                               computeEnvironmentOrder=[{"order": 1, "computeEnvironment": env_arn}])
        script = tmp_path / "loop.py"
        script.write_text(BATCH_RUNNING)
        batch.register_job_definition(jobDefinitionName="kill-jd", type="container", containerProperties={
            "image": "python", "vcpus": 1, "memory": 128, "command": ["python", str(script), "Ref::pidfile"],
        })
        jobs, pids = {}, {}
        for name in ("terminated", "control"):
            pidfile = tmp_path / f"{name}.pid"
            jobs[name] = batch.submit_job(jobName=name, jobQueue="kill-q", jobDefinition="kill-jd",
                                          parameters={"pidfile": str(pidfile)})["jobId"]
            pids[name] = until(lambda pidfile=pidfile: read_pid(pidfile), f"the {name} job to start")  # type: ignore[misc]
        batch.terminate_job(jobId=jobs["terminated"], reason="workspace 'w' killed by dev")
        until(lambda: not alive(pids["terminated"]), "the terminated job's process to end", timeout=30)
        described = until(lambda: next((j for j in batch.describe_jobs(jobs=[jobs["terminated"]])["jobs"]
                                        if j["status"] in ("SUCCEEDED", "FAILED")), None),
                          "the terminated job to end", timeout=30)
        assert described["status"] == "FAILED" and "killed by dev" in described["statusReason"], described
        assert alive(pids["control"])
        # (The offline runner leaves a running job's status at SUBMITTED; Batch would say RUNNING.)
        assert batch.describe_jobs(jobs=[jobs["control"]])["jobs"][0]["status"] not in ("SUCCEEDED", "FAILED")
        (tmp_path / "control.pid.stop").write_text("")
    finally:
        emulator.stop()


# --- the fences, in process on moto ---------------------------------------------------------------------------
@pytest.fixture
def moto_backend(dynamo_table: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:  # noqa: F811
    """chalicelib against moto in this process: the table of tests.contract_tables and one bucket."""
    env = {"KAOS_TABLE": dynamo_table, "KAOS_BUCKET": "kill-fences"}
    monkeypatch.setenv("KAOS_BUCKET", env["KAOS_BUCKET"])
    boto3.client("s3").create_bucket(Bucket=env["KAOS_BUCKET"])
    return env


def _job_row(workspace: str, job_id: str, incarnation: str) -> Any:
    from chalicelib.tables import JobItem, ws_key

    spec = {"workspace": workspace, "incarnation": incarnation, "kind": "train", "code": "c" * 64,
            "data": {"training": "d" * 64}, "params": "p" * 64, "environment": "image",
            "resources": {"instance_type": "ml.m5.large", "instance_count": 1, "volume_gb": 30,
                          "max_runtime_seconds": 60}}
    return JobItem(ws_key(workspace), f"JOB#{job_id}", job_id=job_id, fingerprint="f" * 64, kind="train",
                   status="TRAINING", spec=spec, created_at="t", created_by=DEV, updated_at="t",
                   execution_arn=f"arn:aws:states:us-east-1:123456789012:execution:sm:{job_id}",
                   training_job_name=job_id, history=[], gsi1pk=f"JOBS#{workspace}", gsi1sk=f"t#{job_id}")


def _model(bucket_name: str, workspace: str, job_id: str) -> dict[str, Any]:
    """A model.tar.gz (with metrics) where SageMaker would put the job's; the detail RecordSuccess receives."""
    body = io.BytesIO()
    with tarfile.open(fileobj=body, mode="w:gz") as archive:
        data = json.dumps({"accuracy": 0.5}).encode()
        member = tarfile.TarInfo("metrics.json")
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
    key = f"ws/{workspace}/jobs/{job_id}/output/{job_id}/output/model.tar.gz"
    boto3.client("s3").put_object(Bucket=bucket_name, Key=key, Body=body.getvalue())
    return {"ModelArtifacts": {"S3ModelArtifacts": f"s3://{bucket_name}/{key}"}}


def _written(bucket_name: str, workspace: str, job_id: str) -> dict[str, Any]:
    """What a Record of the job left: its row's status and model, its model's provenance rows, its log."""
    from chalicelib.tables import JobItem, _Item, node_key, ws_key

    row = JobItem.get(ws_key(workspace), f"JOB#{job_id}", consistent_read=True)
    model_rows = list(_Item.query(node_key(workspace, f"model:{job_id}")))
    edges = list(_Item.query(node_key(workspace, f"job:{job_id}")))
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(
        Bucket=bucket_name, Prefix=f"ws/{workspace}/jobs/{job_id}/").get("Contents", [])]
    return {"status": row.status, "model": row.model_uri, "provenance": len(model_rows) + len(edges),
            "log": any(k.endswith("/log.txt") for k in keys)}


def test_record_writes_only_while_the_workspace_is_the_jobs_incarnation(
    moto_backend: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from chalicelib import config
    from chalicelib.wiring import Wiring
    from tests.test_contract_jobs import _job

    class NoTrainingJobs:  # moto has no StopTrainingJob; the embedded stack's patch is tested above
        def stop(self, name: str) -> None:
            pass

        def status(self, name: str) -> None:
            return None

    class NoRoles:  # the incarnation's IAM role (chalicelib/tenancy.py) is not what this test is about
        def ensure(self, workspace: str, incarnation: str) -> None:
            pass

        def delete(self, workspace: str, incarnation: str) -> None:
            pass

    bucket_name = moto_backend["KAOS_BUCKET"]
    wiring = Wiring(config.settings())
    wiring.training_jobs = NoTrainingJobs()  # type: ignore[assignment]
    wiring.roles = NoRoles()  # type: ignore[assignment]
    workspaces, training, rows, jobs = (wiring.workspaces, wiring.pipeline, wiring.repositories.workspaces,
                                        wiring.repositories.jobs)

    def current_incarnation(name: str) -> str | None:
        found = rows.get(name)
        return None if found is None or found.killed_at else found.created_at

    workspaces.create("wk", DEV)
    incarnation = current_incarnation("wk")
    assert incarnation is not None

    # Positive control: a live incarnation records the model, its provenance and the log.
    _job_row("wk", "train-live", incarnation).save()
    logs = boto3.client("logs")
    group = wiring.settings.training_log_group
    logs.create_log_group(logGroupName=group)
    for job_id in ("train-live", "train-racing"):
        logs.create_log_stream(logGroupName=group, logStreamName=f"{job_id}/algo-1")
        logs.put_log_events(logGroupName=group, logStreamName=f"{job_id}/algo-1",
                            logEvents=[{"timestamp": int(time.time() * 1000), "message": "epoch 1"}])
    done = training.record("wk", "train-live", "", "Completed", _model(bucket_name, "wk", "train-live"))
    assert done["status"] == "COMPLETED" and "dropped" not in done
    assert _written(bucket_name, "wk", "train-live") == {
        "status": "COMPLETED", "model": done["model"], "provenance": 3, "log": True}

    # The kill lands between Record's first check and its end: the fenced end fails, the provenance it wrote is
    # retracted, and no log is archived.
    _job_row("wk", "train-racing", incarnation).save()
    detail = _model(bucket_name, "wk", "train-racing")
    real_check = rows.alive

    def check_then_killed(workspace: str, incarnation: str | None) -> bool:
        passed = real_check(workspace, incarnation)
        rows.tombstone(rows.get("wk"), "killed")  # type: ignore[arg-type]
        return passed

    monkeypatch.setattr(rows, "alive", check_then_killed)
    racing = training.record("wk", "train-racing", "", "Completed", detail)
    monkeypatch.setattr(rows, "alive", real_check)
    assert racing["dropped"] is True and racing["status"] == "TRAINING"
    assert _written(bucket_name, "wk", "train-racing") == {"status": "TRAINING", "model": None, "provenance": 0,
                                                          "log": False}
    # A failure outcome during the kill is dropped the same way, and so is a batch job's outcome.
    assert training.record("wk", "train-racing", "", "Failed", {"Error": "X", "Cause": "y"})["dropped"] is True
    batch_row = _job_row("wk", "batch-racing", incarnation)
    batch_row.kind = "batch"
    batch_row.save()
    failed = {"Error": "X", "Cause": "y"}
    assert wiring.batch_pipeline.record("wk", "batch-racing", "", "Failed", failed)["dropped"] is True
    assert _written(bucket_name, "wk", "batch-racing")["status"] == "TRAINING"

    # No job can be created in a workspace being killed (a grid point, a retrain, a racing submission)...
    from chalicelib.errors import Conflict

    with pytest.raises(Conflict):
        jobs.create(_job("train-new", workspace="wk", incarnation=incarnation), incarnation)
    # ...and once the kill has finished and guest re-created the name, the old incarnation's outcomes are dropped.
    assert workspaces._reap(rows.get("wk"), "test", 0)["status"] == "killed"  # type: ignore[arg-type]
    workspaces.create("wk", GUEST)
    new = current_incarnation("wk")
    assert new is not None and new != incarnation
    _job_row("wk", "train-old", incarnation).save()  # as if read before the kill
    late = training.record("wk", "train-old", "", "Completed", _model(bucket_name, "wk", "train-old"))
    assert late["dropped"] is True
    assert _written(bucket_name, "wk", "train-old") == {"status": "TRAINING", "model": None, "provenance": 0,
                                                       "log": False}
    assert training.record("wk", "train-gone", "", "Completed", {})["status"] == "DROPPED"
    # Positive control for the job fence: the new incarnation creates jobs; the same one again is a cache hit.
    assert jobs.create(_job("train-new", workspace="wk", incarnation=new), new)[1] is True
    assert jobs.create(_job("train-new", workspace="wk", incarnation=new), new)[1] is False
    with pytest.raises(Conflict):  # but not with the old incarnation
        jobs.create(_job("train-other", workspace="wk", incarnation=incarnation), incarnation)
