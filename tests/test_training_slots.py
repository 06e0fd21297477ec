"""Offline trainings run at most `slots` at once, as one instance each: the others wait as SageMaker jobs wait for
capacity, then run in turn; each process's BLAS/OpenMP threads are its slot's share of the cores."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kaos.local.emulator import Emulator
from kaos.local.sagemaker_runner import PREPARING_MESSAGE, THREAD_VARIABLES, WAITING_MESSAGE, training_slots
from kaos.local.state_dir import TRAINING_SLOTS_ENV
from tests.test_sagemaker_runner import BUCKET, ROLE, read_tar, until, upload_source, wait_for

# Says when it started and ended (wall clock, for the overlap), keeps the variables it got with its model, and holds
# its slot until the test creates the release file.
GATED = """\
import json, os, pathlib, sys, time
gate = pathlib.Path(sys.argv[sys.argv.index("--gate") + 1])
name = os.environ["TRAINING_JOB_NAME"]
(gate / (name + ".started")).write_text(repr(time.time()))
names = {names!r}
with open(os.path.join(os.environ["SM_MODEL_DIR"], "env.json"), "w") as out:
    json.dump({{key: os.environ.get(key) for key in names}}, out)
while not (gate / "release").exists():
    time.sleep(0.02)
(gate / (name + ".ended")).write_text(repr(time.time()))
"""
SLOTS = 2


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emu = Emulator(tmp_path_factory.mktemp("emu"), stop_grace_seconds=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TRAINING_SLOTS_ENV, str(SLOTS))  # the stack's setting, read when its runner starts
        emu.start()
    s3 = emu.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="data/train/part-0.csv", Body=b"1,2\n")
    try:
        yield emu
    finally:
        emu.stop()


def request(name: str, source: str, gate: Path) -> dict[str, Any]:
    return {
        "TrainingJobName": name, "RoleArn": ROLE,
        "HyperParameters": {"gate": json.dumps(str(gate)), "sagemaker_program": json.dumps("train.py"),
                            "sagemaker_submit_directory": json.dumps(source)},
        "AlgorithmSpecification": {"TrainingImage": "local/sklearn", "TrainingInputMode": "File"},
        "InputDataConfig": [{"ChannelName": "training", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/data/train"}}}],
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/out"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
        "StoppingCondition": {"MaxRuntimeInSeconds": 120},
    }


def test_slots_bound_the_running_trainings_and_the_rest_wait_then_run(emulator: Emulator, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    source = upload_source(emulator, {"train.py": GATED.format(names=[*THREAD_VARIABLES, "SM_NUM_CPUS"])},
                           "code/gated.tar.gz")
    sagemaker = emulator.client("sagemaker")
    names = ["slot-a", "slot-b", "slot-c", "slot-d"]
    for name in names:
        sagemaker.create_training_job(**request(name, source, gate))
    until(lambda: all((gate / f"{n}.started").exists() for n in names[:SLOTS]), "the first two to start", 30)

    for name in ("slot-c", "slot-d"):  # queued when created: no slot was free
        waiting = sagemaker.describe_training_job(TrainingJobName=name)
        assert (waiting["TrainingJobStatus"], waiting["SecondaryStatus"]) == ("InProgress", "Starting")
        assert waiting["SecondaryStatusTransitions"][-1]["StatusMessage"].startswith(WAITING_MESSAGE)
        assert "TrainingStartTime" not in waiting
        assert not (gate / f"{name}.started").exists()

    sagemaker.stop_training_job(TrainingJobName="slot-d")
    stopped = wait_for(emulator, "slot-d", {"Stopped"}, timeout=5)
    assert [t["Status"] for t in stopped["SecondaryStatusTransitions"]] == ["Starting", "Stopping", "Stopped"]

    (gate / "release").write_text("")
    for name in names[:3]:
        ended = wait_for(emulator, name, {"Completed", "Failed", "Stopped"})
        assert ended["TrainingJobStatus"] == "Completed", ended.get("FailureReason")
    assert not (gate / "slot-d.started").exists()  # a job stopped while waiting never ran

    spans = [(float((gate / f"{n}.started").read_text()), float((gate / f"{n}.ended").read_text()))
             for n in names[:3]]
    assert max(sum(start <= moment < end for start, end in spans) for moment, _ in spans) <= SLOTS
    waited = sagemaker.describe_training_job(TrainingJobName="slot-c")["SecondaryStatusTransitions"]
    assert [t["Status"] for t in waited] == ["Starting", "Downloading", "Training", "Uploading", "Completed"]
    assert waited[0]["StatusMessage"] == PREPARING_MESSAGE
    assert all("EndTime" in t for t in waited)

    share = str(max(1, (os.cpu_count() or 1) // SLOTS))
    seen = json.loads(read_tar(emulator, "out/slot-a/output/model.tar.gz")["env.json"])
    assert seen == dict.fromkeys([*THREAD_VARIABLES, "SM_NUM_CPUS"], share)


def test_a_jobs_own_environment_wins_over_the_thread_defaults(emulator: Emulator, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "release").write_text("")
    source = upload_source(emulator, {"train.py": GATED.format(names=["OMP_NUM_THREADS", "MKL_NUM_THREADS"])},
                           "code/env.tar.gz")
    runner = emulator.training_runner
    seen: list[dict[str, Any]] = []
    runner.start({**request("own-env", source, gate), "Environment": {"OMP_NUM_THREADS": "7"}}, seen.append)
    runner.wait("own-env", timeout=30)
    assert seen[-1]["TrainingJobStatus"] == "Completed", seen
    env = json.loads(read_tar(emulator, "out/own-env/output/model.tar.gz")["env.json"])
    assert env == {"OMP_NUM_THREADS": "7", "MKL_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // SLOTS))}


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_slots_setting_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(ValueError, match=f"{TRAINING_SLOTS_ENV} must be a whole number of at least 1"):
        training_slots({TRAINING_SLOTS_ENV: value})
    assert training_slots({}) == (os.cpu_count() or 1)
