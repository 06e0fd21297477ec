"""LocalTrainingRunner: unmodified SageMaker script-mode code runs with the toolkit's contract."""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kaos.local.emulator import Emulator

ROLE = "arn:aws:iam::123456789012:role/kaos-test"
BUCKET = "kaos-runner"

# An unmodified SageMaker script: argparse hyperparameters, paths from the SM_* environment only.
SAGEMAKER_SCRIPT = """\
import argparse, json, os

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--learning-rate", type=float, default=0.1)
parser.add_argument("--model-dir", default=os.environ["SM_MODEL_DIR"])
parser.add_argument("--train", default=os.environ["SM_CHANNEL_TRAINING"])
args = parser.parse_args()

rows = []
for root, _, files in os.walk(args.train):
    for name in sorted(files):
        rows.append(os.path.relpath(os.path.join(root, name), args.train))
for epoch in range(args.epochs):
    print(f"epoch {epoch} lr {args.learning_rate}")
with open(os.path.join(args.model_dir, "metrics.json"), "w") as f:
    json.dump({"epochs": args.epochs, "files": sorted(rows),
               "hps": json.loads(os.environ["SM_HPS"]),
               "channels": json.loads(os.environ["SM_CHANNELS"]),
               "current_host": os.environ["SM_CURRENT_HOST"],
               "num_gpus": os.environ["SM_NUM_GPUS"]}, f)
with open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], "report.txt"), "w") as f:
    f.write("ok")
# What the job saw under /opt/ml/input/config, kept with the model (the job's folder goes when it ends).
for name in os.listdir(os.environ["SM_INPUT_CONFIG_DIR"]):
    with open(os.path.join(os.environ["SM_INPUT_CONFIG_DIR"], name)) as source:
        with open(os.path.join(args.model_dir, "config-" + name), "w") as copy:
            copy.write(source.read())
"""


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    emu = Emulator(tmp_path / "emu", stop_grace_seconds=1)
    emu.start()
    s3 = emu.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="data/train/part-0.csv", Body=b"1,2\n")
    s3.put_object(Bucket=BUCKET, Key="data/train/nested/part-1.csv", Body=b"3,4\n")
    try:
        yield emu
    finally:
        emu.stop()


def upload_source(emulator: Emulator, files: dict[str, str], key: str) -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            archive.addfile(info, io.BytesIO(data))
    emulator.client("s3").put_object(Bucket=BUCKET, Key=key, Body=buffer.getvalue())
    return f"s3://{BUCKET}/{key}"


def create_job(
    emulator: Emulator, name: str, source: str, program: str = "train.py",
    max_runtime: int = 120, **hyperparameters: Any,
) -> None:
    # Hyperparameters JSON-encoded, as the SageMaker Python SDK sends them.
    hps = {k.replace("_", "-"): json.dumps(v) for k, v in hyperparameters.items()}
    hps |= {"sagemaker_program": json.dumps(program),
            "sagemaker_submit_directory": json.dumps(source)}
    emulator.client("sagemaker").create_training_job(
        TrainingJobName=name, RoleArn=ROLE, HyperParameters=hps,
        AlgorithmSpecification={"TrainingImage": "local/sklearn", "TrainingInputMode": "File"},
        InputDataConfig=[{"ChannelName": "training", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/data/train"}}}],
        OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/out"},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
        StoppingCondition={"MaxRuntimeInSeconds": max_runtime},
    )


def wait_for(
    emulator: Emulator, name: str, statuses: set[str], timeout: float = 30.0,
    key: str = "TrainingJobStatus",
) -> dict[str, Any]:
    sagemaker = emulator.client("sagemaker")
    deadline = time.monotonic() + timeout
    while True:
        described = sagemaker.describe_training_job(TrainingJobName=name)
        if described[key] in statuses:
            return described
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} is {described[key]}, expected {statuses}")
        time.sleep(0.1)


def until(condition: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.05)


def read_tar(emulator: Emulator, key: str) -> dict[str, bytes]:
    body = emulator.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_unmodified_sagemaker_script_runs(emulator: Emulator) -> None:
    source = upload_source(emulator, {"train.py": SAGEMAKER_SCRIPT}, "code/a.tar.gz")
    create_job(emulator, "job-script", source, epochs=3, learning_rate=0.05)
    described = wait_for(emulator, "job-script", {"Completed", "Failed", "Stopped"})
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    assert described["SecondaryStatus"] == "Completed"
    assert described["TrainingStartTime"] <= described["TrainingEndTime"]
    artifact = described["ModelArtifacts"]["S3ModelArtifacts"]
    assert artifact == f"s3://{BUCKET}/out/job-script/output/model.tar.gz"

    model = read_tar(emulator, "out/job-script/output/model.tar.gz")
    metrics = json.loads(model["metrics.json"])
    assert metrics["epochs"] == 3
    assert metrics["files"] == ["nested/part-1.csv", "part-0.csv"]
    assert metrics["hps"] == {"epochs": 3, "learning-rate": 0.05}
    assert metrics["channels"] == ["training"] and metrics["current_host"] == "algo-1"
    assert metrics["num_gpus"] == "0"
    assert read_tar(emulator, "out/job-script/output/output.tar.gz") == {"report.txt": b"ok"}

    hyperparameters = json.loads(model["config-hyperparameters.json"])
    assert hyperparameters["epochs"] == "3"  # stored as strings, like SageMaker
    assert hyperparameters["sagemaker_program"] == '"train.py"'
    assert json.loads(model["config-resourceconfig.json"])["hosts"] == ["algo-1"]
    assert "training" in json.loads(model["config-inputdataconfig.json"])
    # The job's working files (inputs, code, model) are gone once it ended; its log copy stays.
    job_dir = emulator.training_runner.job_dir("job-script")
    until(lambda: [p.name for p in job_dir.iterdir()] == ["log.txt"], "the job's folder to be cleared")
    assert "epoch 2 lr 0.05" in (job_dir / "log.txt").read_text()


def test_logs_reach_cloudwatch_in_order(emulator: Emulator) -> None:
    script = (
        "import sys\nfor i in range(250):\n    print(f'line {i}')\n"
        "    if i % 50 == 0: print(f'err {i}', file=sys.stderr)\n"
    )
    source = upload_source(emulator, {"train.py": script}, "code/logs.tar.gz")
    create_job(emulator, "job-logs", source)
    wait_for(emulator, "job-logs", {"Completed"})
    logs = emulator.client("logs")
    streams = logs.describe_log_streams(
        logGroupName="/aws/sagemaker/TrainingJobs", logStreamNamePrefix="job-logs/"
    )["logStreams"]
    assert len(streams) == 1 and streams[0]["logStreamName"].startswith("job-logs/algo-1-")
    events = logs.get_log_events(
        logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=streams[0]["logStreamName"],
        startFromHead=True, limit=10000,
    )["events"]
    messages = [e["message"] for e in events]
    assert [m for m in messages if m.startswith("line")] == [f"line {i}" for i in range(250)]
    assert messages.index("err 50") == messages.index("line 50") + 1
    timestamps = [e["timestamp"] for e in events]
    assert timestamps == sorted(timestamps)


def test_stop_training_job_kills_process(emulator: Emulator) -> None:
    script = "import time\nprint('sleeping', flush=True)\ntime.sleep(60)\n"
    source = upload_source(emulator, {"train.py": script}, "code/sleep.tar.gz")
    create_job(emulator, "job-stop", source)
    wait_for(emulator, "job-stop", {"Training"}, key="SecondaryStatus")
    started = time.monotonic()
    emulator.client("sagemaker").stop_training_job(TrainingJobName="job-stop")
    described = wait_for(emulator, "job-stop", {"Stopped", "Completed", "Failed"})
    assert described["TrainingJobStatus"] == "Stopped"
    assert described["SecondaryStatus"] == "Stopped"
    assert time.monotonic() - started < 5
    statuses = [t["Status"] for t in described["SecondaryStatusTransitions"]]
    assert statuses[-2:] == ["Stopping", "Stopped"]
    # A job stopped by request (what a workspace kill does) leaves nothing behind, not even its log copy.
    job_dir = emulator.training_runner.job_dir("job-stop")
    until(lambda: not job_dir.exists(), "the stopped job's folder to go")


def test_max_runtime_stops_job_and_keeps_saved_model(emulator: Emulator) -> None:
    # SageMaker sends SIGTERM at MaxRuntimeInSeconds; what the script saved is still uploaded.
    script = (
        "import os, signal, sys, time\n"
        "def save(*_):\n"
        "    open(os.path.join(os.environ['SM_MODEL_DIR'], 'checkpoint.txt'), 'w').write('partial')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, save)\n"
        "print('training', flush=True)\n"
        "time.sleep(60)\n"
    )
    source = upload_source(emulator, {"train.py": script}, "code/slow.tar.gz")
    create_job(emulator, "job-maxrt", source, max_runtime=1)
    described = wait_for(emulator, "job-maxrt", {"Stopped", "Completed", "Failed"}, timeout=15)
    assert described["TrainingJobStatus"] == "Stopped"
    assert described["SecondaryStatus"] == "MaxRuntimeExceeded"
    assert read_tar(emulator, "out/job-maxrt/output/model.tar.gz") == {"checkpoint.txt": b"partial"}


def test_shell_entry_point_and_failure_file(emulator: Emulator) -> None:
    script = '#!/bin/sh\necho "args: $@"\necho "shell model" > "$SM_MODEL_DIR/model.txt"\n'
    source = upload_source(emulator, {"train.sh": script}, "code/sh.tar.gz")
    create_job(emulator, "job-sh", source, program="train.sh", alpha="x")
    described = wait_for(emulator, "job-sh", {"Completed", "Failed"})
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    assert read_tar(emulator, "out/job-sh/output/model.tar.gz") == {"model.txt": b"shell model\n"}
    assert "args: --alpha x" in (emulator.training_runner.job_dir("job-sh") / "log.txt").read_text()

    failing = (
        "#!/bin/sh\necho 'Data has 0 rows' > /dev/stderr\n"
        "echo 'ClientError: empty channel' > \"$SM_OUTPUT_DIR/failure\"\nexit 1\n"
    )
    source = upload_source(emulator, {"train.sh": failing}, "code/shfail.tar.gz")
    create_job(emulator, "job-sh-fail", source, program="train.sh")
    described = wait_for(emulator, "job-sh-fail", {"Completed", "Failed"})
    assert described["TrainingJobStatus"] == "Failed"
    # SageMaker takes the failure file the script wrote as AlgorithmError, with the container's exit code.
    assert described["FailureReason"] == "AlgorithmError: ClientError: empty channel\n, exit code: 1"
