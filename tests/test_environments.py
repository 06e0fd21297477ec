"""Offline jobs run in their image's environment (issue 10): the image's packages, the job's requirements.txt, nothing
of kaos; a cache hit when nothing changed; a fidelity warning for every difference from the image.

Runner-level (tests/test_sagemaker_runner.py style): the emulator runs CreateTrainingJob / SubmitJob requests naming a
catalogue image. The environments come from the session's shared cache (tests/conftest.py): the scikit-learn image's
is the stack's default image too, so one cold build (from the package registry) serves the whole suite.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chalicelib import environments as catalogue
from chalicelib.domain import JobSpec, Resources
from kaos.local.emulator import Emulator
from kaos.local.environments import Environments, closest_wheel, default_cache_dir
from tests import test_sagemaker_runner
from tests.conftest import TEMPLATE, Stack
from tests.test_sagemaker_runner import BUCKET, ROLE, upload_source, wait_for

SKLEARN = catalogue.lookup("sklearn").image_uri("us-east-1")
# The runner tests' emulator: a bucket with a training channel.
emulator = test_sagemaker_runner.emulator


def train(emulator: Emulator, name: str, files: dict[str, str], image: str = SKLEARN,
          hyperparameters: dict[str, str] | None = None, environment: dict[str, str] | None = None,
          wait: bool = True) -> dict[str, Any]:
    """Runs a script-mode job of `files` (hyperparameters JSON-encoded, as the SDK sends them) and waits for its
    end (or only starts it)."""
    source = upload_source(emulator, files, f"code/{name}.tar.gz")
    emulator.client("sagemaker").create_training_job(
        TrainingJobName=name, RoleArn=ROLE, Environment=environment or {},
        HyperParameters={"sagemaker_program": '"train.py"', "sagemaker_submit_directory": f'"{source}"',
                         **(hyperparameters or {})},
        AlgorithmSpecification={"TrainingImage": image, "TrainingInputMode": "File"},
        InputDataConfig=[{"ChannelName": "training", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/data/train"}}}],
        OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/out"},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
        StoppingCondition={"MaxRuntimeInSeconds": 600},
    )
    return wait_for(emulator, name, {"Completed", "Failed", "Stopped"}, timeout=600) if wait else {}


def log_of(emulator: Emulator, name: str) -> str:
    return (emulator.training_runner.job_dir(name) / "log.txt").read_text()


def test_the_image_packages_are_there_and_kaos_is_not(emulator: Emulator) -> None:
    # The scikit-learn image has pandas (kaos does not); moto is kaos's alone, and fails as it would on AWS.
    script = ("import pandas, sklearn\nprint('pandas', pandas.__version__, 'sklearn', sklearn.__version__)\n"
              "try:\n    import moto\nexcept ImportError:\n    print('no moto')\n")
    described = train(emulator, "env-pandas", {"train.py": script})
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    log = log_of(emulator, "env-pandas")
    pins = dict(catalogue.lookup("sklearn").offline_pins)
    assert f"sklearn {pins['scikit-learn'].removeprefix('==')}" in log
    assert "no moto" in log
    # The record's source: the Training transition names the environment, and the Python difference.
    training = next(t for t in described["SecondaryStatusTransitions"] if t["Status"] == "Training")
    assert f"Environment {emulator.training_runner.environment_id('env-pandas')}" in training["StatusMessage"]
    assert "Python 3.10 in the image, 3.11" in training["StatusMessage"]


def test_requirements_give_a_new_environment_then_a_cache_hit(emulator: Emulator) -> None:
    runner = emulator.training_runner
    files = {"train.py": "import six\nprint('six', six.__version__)\n", "requirements.txt": "six==1.16.0\n"}
    first = train(emulator, "env-req-1", files)
    assert first["TrainingJobStatus"] == "Completed", first.get("FailureReason")
    assert "six 1.16.0" in log_of(emulator, "env-req-1")
    with_requirements = runner.environment_id("env-req-1")
    plain = train(emulator, "env-plain", {"train.py": "print('plain')\n"})
    assert plain["TrainingJobStatus"] == "Completed"
    assert runner.environment_id("env-plain") != with_requirements

    built = runner.environments.cache_dir / f"env-{with_requirements}" / "kaos-environment.json"
    before = built.stat().st_mtime_ns
    again = train(emulator, "env-req-2", files)
    assert again["TrainingJobStatus"] == "Completed"
    assert runner.environment_id("env-req-2") == with_requirements
    assert built.stat().st_mtime_ns == before  # not rebuilt
    assert "Building the environment" not in log_of(emulator, "env-req-2")


def test_a_failed_build_fails_the_job_with_pips_message(emulator: Emulator) -> None:
    files = {"train.py": "print('never')\n", "requirements.txt": "kaos-no-such-package-anywhere==0.0.1\n"}
    described = train(emulator, "env-bad", files)
    assert described["TrainingJobStatus"] == "Failed"
    assert "No matching distribution found for kaos-no-such-package-anywhere" in str(described["FailureReason"])


def test_an_unmet_pin_takes_the_closest_release_with_a_warning(tmp_path: Path) -> None:
    # scikit-learn 1.2-1's image pins pandas 1.1.3, which has no wheel for this machine's Python.
    entry = catalogue.lookup("sklearn", "1.2-1")
    assert ("pandas", "==1.1.3") in entry.offline_pins
    # The oldest newer release with a wheel for this Python (psutil 5.7.2 and 5.7.3 have none), else the newest older.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    assert closest_wheel(venv, "psutil", "5.7.2") == "5.9.4"
    assert closest_wheel(venv, "psutil", "999.0") == closest_wheel(venv, "psutil", "998.0") is not None
    built = Environments(default_cache_dir()).ensure(entry.image_uri("eu-west-1"))
    assert any(w.startswith("pandas==1.1.3 (the image's) has no wheel") for w in built.warnings), built.warnings
    assert "Python 3.9 in the image, 3.11" in " ".join(built.warnings)


def test_an_image_outside_the_catalogue_is_said(emulator: Emulator) -> None:
    built = emulator.batch_runner.environments.ensure("example.com/custom:1")
    assert "not in kaos's image catalogue" in built.warnings[0]
    assert not list((built.python.parent.parent / "lib").glob("python*/site-packages/moto"))


def test_an_environment_change_is_a_new_fingerprint() -> None:
    def spec(image: str) -> JobSpec:
        return JobSpec(workspace="w", incarnation="1", kind="train", code="c" * 64, data=(("training", "d" * 64),),
                       params="p" * 64, environment=image,
                       resources=Resources(instance_type="ml.m5.large", instance_count=1, volume_gb=30,
                                           max_runtime_seconds=60))
    old, new = (catalogue.lookup("sklearn", v).image_uri("us-east-1") for v in ("1.2-1", "1.4-2"))
    assert spec(old).fingerprint != spec(new).fingerprint
    assert spec(new).fingerprint == spec(catalogue.lookup("sklearn").image_uri("us-east-1")).fingerprint


@pytest.mark.parametrize("framework", ["sklearn", "pytorch", "python"])
def test_every_framework_has_a_default_image(framework: str) -> None:
    entry = catalogue.lookup(framework)
    assert entry.python is not None and tuple(map(int, entry.python.split("."))) <= (3, 11)
    assert catalogue.entry_for_image(entry.image_uri("us-east-1")) == entry


PACKAGE_SCRIPT = """\
import json, os, sys
import helper
print("argv", json.dumps(sys.argv[1:]))
print("module", __spec__.name if __spec__ else None, helper.VALUE)
for name in ("SM_HPS", "SM_HP_NOTHING", "SM_HP_LAYERS", "SM_FRAMEWORK_MODULE", "SM_USER_ARGS", "SM_CHANNELS"):
    print(name, repr(os.environ[name]))
keys = list(json.loads(os.environ["SM_TRAINING_ENV"]))
print("training_env sorted", keys == sorted(keys))
"""
SETUP = "from setuptools import setup\nsetup(name='helper', version='1.0', py_modules=['helper'])\n"


def test_the_toolkit_contract(emulator: Emulator) -> None:
    # A setup.py in the code: `pip install .`, then the entry point runs as a module; JSON-valued SM_* variables are
    # compact and key-sorted, a null hyperparameter is an empty value, SM_FRAMEWORK_MODULE is the image's.
    described = train(emulator, "env-toolkit",
                      {"train.py": PACKAGE_SCRIPT, "setup.py": SETUP, "helper.py": "VALUE = 7\n"},
                      hyperparameters={"nothing": "null", "layers": '{"b": 2, "a": [1, 2]}'})
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    log = log_of(emulator, "env-toolkit")
    assert 'argv ["--layers", "a=[1, 2],b=2", "--nothing", ""]' in log
    assert "module train 7" in log
    assert """SM_HPS '{"layers":{"a":[1,2],"b":2},"nothing":null}'""" in log
    assert "SM_HP_NOTHING ''" in log
    assert """SM_HP_LAYERS '{"a":[1,2],"b":2}'""" in log
    assert "SM_FRAMEWORK_MODULE 'sagemaker_sklearn_container.training:main'" in log
    assert """SM_USER_ARGS '["--layers","a=[1, 2],b=2","--nothing",""]'""" in log
    assert """SM_CHANNELS '["training"]'""" in log
    assert "training_env sorted True" in log


def test_a_failing_script_fails_as_sagemaker_reports_it(emulator: Emulator) -> None:
    described = train(emulator, "env-fail", {"train.py": "import sys\nsys.exit('the data is empty')\n"})
    assert described["TrainingJobStatus"] == "Failed"
    reason = described["FailureReason"]
    assert reason.startswith("AlgorithmError: ExecuteUserScriptError:\nExitCode 1\nErrorMessage \"")
    assert "the data is empty" in reason and reason.endswith(" train.py\", exit code: 1")


def code_folder(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_the_chosen_image_is_recorded_with_what_ran(stack: Stack, tmp_path: Path) -> None:
    # Through the CLI and the executing state machine: kaos.toml chooses scikit-learn 1.2-1, whose pandas pin has
    # no wheel here; the job's record (train info) carries the built environment and that fidelity warning.
    code = code_folder(tmp_path / "code", {
        "train.py": "import os, pandas\nprint('pandas', pandas.__version__)\n"
                    "open(os.path.join(os.environ['SM_MODEL_DIR'], 'model.txt'), 'w').write('m')\n",
        "kaos.toml": '[train]\nframework = "sklearn"\nframework_version = "1.2-1"\n'})
    stack.kaos("workspace", "create", "envs")
    deploy = ["train", "deploy", "-s", str(code), "-d", str(TEMPLATE / "data")]
    job = stack.kaos_json(*deploy, "--wait")
    assert job["status"] == "COMPLETED", job
    assert job["environment"] == catalogue.lookup("sklearn", "1.2-1").image_uri("us-east-1")
    info = stack.kaos_json("train", "info", job["id"])
    ran = info["environment_ran"]
    assert ran["image"] == job["environment"] and len(ran["packages_sha256"]) == 64
    assert any(w.startswith("pandas==1.1.3 (the image's) has no wheel") for w in ran["fidelity"]), ran
    assert "fidelity" in stack.kaos("train", "info", job["id"]).stdout

    # (Another image is another job: test_an_environment_change_is_a_new_fingerprint.) An unknown one is refused,
    # naming the field and what the catalogue has.
    refused = stack.kaos(*deploy, "--framework", "sklearn:0.1", check=False)
    assert refused.returncode != 0 and "framework" in refused.stderr and "sklearn:1.2-1" in refused.stderr


def test_batch_honours_requirements(stack: Stack, tmp_path: Path) -> None:
    # The bootstrap of cdk/batch.py installs the code's requirements.txt for the command (on Fargate as here): six
    # 1.16.0 shadows the newer six the image's boto3 brought.
    code = code_folder(tmp_path / "batch", {
        "main.py": "import os, six\nprint('six', six.__version__)\n"
                   "open(os.path.join(os.environ['KAOS_OUTPUT_DIR'], 'out.txt'), 'w').write('x')\n",
        "requirements.txt": "six==1.16.0\n"})
    stack.kaos("workspace", "create", "envbatch")
    job = stack.kaos_json("batch", "deploy", "-s", str(code), "-d", str(TEMPLATE / "data"), "--wait")
    assert job["status"] == "COMPLETED", job
    assert "six 1.16.0" in stack.kaos("train", "logs", job["id"]).stdout
