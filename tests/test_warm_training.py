"""Warm starts (kaos/local/warm_training.py): a training job of a catalogue framework is forked from a server of
its image's interpreter that has imported the framework, and sees what a fresh `python train.py` would see.

Each job runs through the emulator's real training runner with the catalogue's scikit-learn image; a job whose
environment sets a variable of its own starts fresh, which gives each test its fresh twin to compare with.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from chalicelib.environments import lookup
from kaos.local.emulator import Emulator
from kaos.local.environments import Environments, default_cache_dir
from kaos.local.warm_training import (PRELOADS, SOURCE_FILE_LIMIT, SOURCE_READ_LIMIT, WarmStarts, chosen_preloads,
                                      forkable, shadowed)
from tests import test_sagemaker_runner
from tests.test_environments import train as train_job
from tests.test_sagemaker_runner import read_tar, wait_for

IMAGE = lookup("sklearn").image_uri("us-east-1")
# The runner tests' emulator: a bucket with a training channel.
emulator = test_sagemaker_runner.emulator

# What the process saw, kept with its model.
PROBE = """\
import json, os, sys
seen_numpy = "numpy" in sys.modules
import numpy, sklearn  # scikit-learn sets two OpenMP variables as it is imported: either way, they are set now
fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
mask = os.umask(0); os.umask(mask)
report = {
    "argv": sys.argv, "path0": sys.path[0], "file": __file__, "name": __name__, "cwd": os.getcwd(),
    "umask": mask, "session_leader": os.getsid(0) == os.getpid(), "parent": os.getppid(), "fds": fds,
    "stdin": sys.stdin.read(), "environ": dict(os.environ), "random": numpy.random.rand(), "executable": sys.executable,
    "kaos_on_path": any("kaos" in p.split(os.sep)[-2:] for p in sys.path), "preloaded": seen_numpy,
}
json.dump(report, open(os.path.join(os.environ["SM_MODEL_DIR"], "report.json"), "w"))
"""


def train(emulator: Emulator, name: str, script: str, environment: dict[str, str] | None = None,
          wait: bool = True, **hyperparameters: Any) -> dict[str, Any]:
    encoded = {k: json.dumps(v) for k, v in hyperparameters.items()}
    return train_job(emulator, name, {"train.py": script}, IMAGE, encoded, environment, wait)


def report(emulator: Emulator, name: str) -> dict[str, Any]:
    described = train(emulator, name, PROBE, epochs=2) if name.startswith("warm") else \
        train(emulator, name, PROBE, {"FRESH": "1"}, epochs=2)
    assert described["TrainingJobStatus"] == "Completed", described.get("FailureReason")
    result: dict[str, Any] = json.loads(read_tar(emulator, f"out/{name}/output/model.tar.gz")["report.json"])
    return result


def test_a_warm_job_sees_what_a_fresh_process_sees(emulator: Emulator) -> None:
    warm, fresh, again = report(emulator, "warm-a"), report(emulator, "fresh-a"), report(emulator, "warm-b")
    assert warm["parent"] != os.getpid() and fresh["parent"] == os.getpid()  # forked by the server; by the runner
    assert warm["preloaded"] and not fresh["preloaded"]  # the one thing that differs: numpy was imported already
    per_job = {"HOME", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "TRAINING_JOB_NAME",
               "TRAINING_JOB_ARN", "FRESH"}
    assert {k: v for k, v in warm["environ"].items() if k not in per_job and not k.startswith("SM_")} == \
           {k: v for k, v in fresh["environ"].items() if k not in per_job and not k.startswith("SM_")}
    assert warm["environ"]["TRAINING_JOB_NAME"] == "warm-a" and "AWS_SECRET_ACCESS_KEY" in warm["environ"]
    assert json.loads(warm["environ"]["SM_HPS"]) == json.loads(fresh["environ"]["SM_HPS"]) == {"epochs": 2}
    for key in ("argv", "name", "umask", "session_leader", "fds", "stdin", "executable", "kaos_on_path"):
        assert warm[key] == fresh[key], key
    assert warm["argv"] == ["train.py", "--epochs", "2"] and warm["fds"] == [0, 1, 2, 3]  # 3: the listing itself
    for key in ("path0", "file", "cwd"):  # each job's own folder, the same place in it
        assert warm[key].replace("warm-a", "J") == fresh[key].replace("fresh-a", "J"), key
    assert warm["random"] != again["random"]  # numpy's global random state seeded anew in each job


def test_a_warm_jobs_failure_reads_as_a_fresh_ones(emulator: Emulator) -> None:
    script = "import sklearn\n\ndef fit():\n    raise ValueError('no convergence')\n\nfit()\n"
    warm, fresh = train(emulator, "warm-fail", script), train(emulator, "fresh-fail", script, {"FRESH": "1"})
    assert warm["TrainingJobStatus"] == fresh["TrainingJobStatus"] == "Failed"
    assert warm["FailureReason"].replace("warm-fail", "J") == fresh["FailureReason"].replace("fresh-fail", "J")
    assert 'train.py", line 4, in fit' in warm["FailureReason"] and "runpy" not in warm["FailureReason"]
    assert warm["FailureReason"].endswith("exit code: 1")
    exited = train(emulator, "warm-exit", "import sys\nprint('bye')\nsys.exit(3)\n")
    assert exited["TrainingJobStatus"] == "Failed" and exited["FailureReason"].endswith("exit code: 3")


def test_a_warm_job_is_stopped_with_its_process_group(emulator: Emulator) -> None:
    train(emulator, "warm-stop", "import time\nprint('sleeping', flush=True)\ntime.sleep(60)\n", wait=False)
    wait_for(emulator, "warm-stop", {"Training"}, key="SecondaryStatus", timeout=180)
    emulator.client("sagemaker").stop_training_job(TrainingJobName="warm-stop")
    assert wait_for(emulator, "warm-stop", {"Stopped", "Completed", "Failed"})["TrainingJobStatus"] == "Stopped"


def test_only_a_job_whose_environment_fits_the_server_is_forked() -> None:
    server = {"PATH": "/env/bin:/usr/bin", "HOME": "/warm", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
              "PYTHONUNBUFFERED": "1"}
    job = {**server, "HOME": "/job", "SM_HPS": "{}", "AWS_REGION": "us-east-1", "TRAINING_JOB_NAME": "j"}
    assert forkable(job, server, {"SKLEARN_SITE_JOBLIB": None}) is None
    assert "OMP_NUM_THREADS" in str(forkable({**job, "OMP_NUM_THREADS": "4"}, server, {}))  # read as BLAS loads
    assert "PYTHONHASHSEED" in str(forkable({**job, "PYTHONHASHSEED": "0"}, server, {}))  # read at start
    assert "MY_FLAG" in str(forkable({**job, "MY_FLAG": "1"}, server, {}))  # the job's own: maybe read at import
    assert "SKLEARN_SITE_JOBLIB" in str(forkable({**job, "SKLEARN_SITE_JOBLIB": "1"}, server,
                                                 {"SKLEARN_SITE_JOBLIB": None}))  # a preload read it
    assert "PATH" in str(forkable({**job, "PATH": "/other/bin"}, server, {}))


def test_a_forked_process_leads_its_own_group_when_its_pid_is_answered(tmp_path: Path) -> None:
    # A stop signals the job's process group as soon as the pid is known: it must exist by then (the child's
    # setsid, not the fork, is what the server waits for before answering).
    python = str(Environments(default_cache_dir()).ensure(IMAGE).python)
    env = {"PATH": f"{Path(python).parent}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "PYTHONUNBUFFERED": "1"}
    (tmp_path / "train.py").write_text("import time\ntime.sleep(60)\n")
    starts = WarmStarts(tmp_path)
    try:
        for _ in range(5):
            process = starts.spawn("sklearn", [python, "train.py"], env, str(tmp_path), 0o077, env)
            assert process is not None
            os.killpg(process.pid, signal.SIGKILL)  # raises ProcessLookupError if the group is not there yet
            assert process.wait(30) == -signal.SIGKILL
            assert process.stdout.read() == b""
    finally:
        starts.close()


def test_the_entry_selects_which_preloads_a_server_imports(tmp_path: Path) -> None:
    preloads = PRELOADS["sklearn"]
    outside, tmp_path = tmp_path, tmp_path / "job"  # the job's folder, with something above it
    tmp_path.mkdir()

    def chosen(source: str | bytes) -> tuple[str, ...]:
        entry = tmp_path / "train.py"
        entry.write_bytes(source.encode() if isinstance(source, str) else source)
        return chosen_preloads(preloads, str(entry))

    # The digits template's imports: scikit-learn's, never pandas (nor sklearn.ensemble, which it does not name).
    assert chosen("from sklearn.exceptions import ConvergenceWarning\nfrom sklearn.linear_model import "
                  "LogisticRegression\nfrom sklearn.metrics import accuracy_score\n") == \
        ("sklearn", "sklearn.metrics", "sklearn.linear_model")  # in the list's order: the order of import
    # Anywhere in the file, aliased, or a submodule named by `from a import b`.
    assert chosen("def load():\n    import pandas as pd\n    return pd\n") == ("pandas",)
    assert chosen("from sklearn import ensemble\n") == ("sklearn", "sklearn.ensemble")
    assert chosen("import numpy.linalg, scipy\n") == ("numpy", "scipy")
    # A relative import is the job's own module; imports of nothing listed, or a file that is not Python this
    # interpreter parses (Python 2, binary, too large, missing, not a regular file): all of them.
    assert chosen("from .sklearn import model\nimport helper\n") == preloads
    assert chosen("print 'python 2'\nimport pandas\n") == preloads
    assert chosen(b"\x00\xff import pandas") == preloads
    assert chosen("import pandas\n" + "#" * SOURCE_READ_LIMIT) == preloads
    assert chosen_preloads(preloads, str(tmp_path / "absent.py")) == preloads
    # The job's own modules beside the entry point count, theirs in turn, relative imports too; not above its folder.
    (tmp_path / "model.py").write_text("from features import pipeline\n")
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "__init__.py").write_text("from .pipeline import build\n")
    (tmp_path / "features" / "pipeline.py").write_text("import pandas\nfrom sklearn import pipeline\n")
    assert chosen("import model\n") == ("pandas", "sklearn", "sklearn.pipeline")
    (outside / "outside.py").write_text("import pandas\n")
    assert chosen("import numpy\nfrom .. import outside\nfrom . import outside\n") == ("numpy",)
    chain = tmp_path / "chain"
    chain.mkdir()
    for i in range(SOURCE_FILE_LIMIT):  # with the entry, one file more than is read
        (chain / f"step{i}.py").write_text(f"import step{i + 1}\n")
    (chain / "train.py").write_text("import numpy, step0\n")
    assert chosen_preloads(preloads, str(chain / "train.py")) == preloads
    (chain / f"step{SOURCE_FILE_LIMIT - 2}.py").write_text("")  # the limit itself is read
    assert chosen_preloads(preloads, str(chain / "train.py")) == ("numpy",)
    os.mkfifo(tmp_path / "pipe.py")  # never opened for a blocking read: the stack would hang on it
    assert chosen_preloads(preloads, str(tmp_path / "pipe.py")) == preloads
    # The limit counts all files together: the entry within it, but not with its module.
    (tmp_path / "big.py").write_text("import pandas\n" + "#" * (SOURCE_READ_LIMIT // 2))
    assert chosen("import numpy, big\n" + "#" * (SOURCE_READ_LIMIT // 4)) == ("numpy", "pandas")
    assert chosen("import numpy, big\n" + "#" * (SOURCE_READ_LIMIT // 2)) == preloads
    (tmp_path / "link.py").symlink_to(tmp_path / "train.py")
    assert chosen_preloads(preloads, str(tmp_path / "link.py")) == preloads


# What a forked job finds imported before its code runs, and which server forked it.
SEEN = """\
import json, os, sys
print(json.dumps({{"parent": os.getppid(), "seen": [m for m in {names!r} if m in sys.modules]}}))
{imports}
"""


def test_a_server_imports_what_its_jobs_import_and_idle_servers_are_closed_but_the_last_used(tmp_path: Path) -> None:
    python = str(Environments(default_cache_dir()).ensure(IMAGE).python)
    env = {"PATH": f"{Path(python).parent}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "PYTHONUNBUFFERED": "1"}
    names = ["numpy", "scipy.stats", "sklearn.linear_model", "sklearn.ensemble", "pandas", "pyarrow"]
    starts = WarmStarts(tmp_path)

    def run(imports: str) -> dict[str, Any]:
        (tmp_path / "train.py").write_text(SEEN.format(names=names, imports=imports))
        process = starts.spawn("sklearn", [python, "train.py"], env, str(tmp_path), 0o077, env)
        assert process is not None
        output = process.stdout.read()
        assert process.wait(60) == 0, output
        result: dict[str, Any] = json.loads(output)
        return result

    try:
        linear = run("import sklearn.linear_model")
        # scikit-learn's own imports come with it (numpy, scipy.stats); pandas and the pyarrow it loads do not.
        assert linear["seen"] == ["numpy", "scipy.stats", "sklearn.linear_model"]
        assert run("from sklearn.linear_model import Ridge")["parent"] == linear["parent"]  # the same selection
        with_pandas = run("import pandas, sklearn.linear_model")
        assert with_pandas["seen"] == ["numpy", "scipy.stats", "sklearn.linear_model", "pandas", "pyarrow"]
        assert with_pandas["parent"] != linear["parent"]
        # Two selections in turn keep a server each; while a job of the first runs, a third selection closes
        # neither: the first is busy (its job's exit status comes through it), the second the idle one used last.
        (tmp_path / "waits.py").write_text("import os, time, sklearn.linear_model\n"
                                           "while not os.path.exists('go'):\n    time.sleep(0.05)\n")
        waiting = starts.spawn("sklearn", [python, "waits.py"], env, str(tmp_path), 0o077, env)
        assert waiting is not None
        assert run("import pandas, sklearn.linear_model")["parent"] == with_pandas["parent"]
        everything = run("import os")
        assert everything["seen"] == names  # nothing of the framework's named: everything
        (tmp_path / "go").touch()
        assert waiting.wait(60) == 0
        # A fourth closes the idle ones but the one used last.
        assert run("import numpy")["seen"] == ["numpy"]
        for closed in (linear, with_pandas):
            with pytest.raises(ProcessLookupError):
                os.kill(closed["parent"], 0)
        assert run("import os")["parent"] == everything["parent"]
        # A module of the job's own named as one the server has imported: a fresh process would import the job's.
        (tmp_path / "joblib.py").write_text("")
        assert shadowed(str(tmp_path), frozenset({"joblib"})) is not None
        assert starts.spawn("sklearn", [python, "train.py"], env, str(tmp_path), 0o077, env) is None
    finally:
        (tmp_path / "go").touch()  # a waiting job left by a failed assertion ends too
        starts.close()


SCAN = """\
import hashlib, json, os, re, sys
digest = json.loads(os.environ["SM_HPS"])["digest"]
found = 0
with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", buffering=0) as mem:
    for line in maps:
        start, end = (int(x, 16) for x in line.split()[0].split("-"))
        if line.split()[1][0] != "r" or "[vvar]" in line or "[vsyscall]" in line:
            continue
        try:
            mem.seek(start)
            chunk = mem.read(end - start)
        except OSError:
            continue
        for hit in re.finditer(re.escape(b"kaos-leak-" + b"probe-"), chunk):
            tail = chunk[hit.end():hit.end() + 20]
            found += hashlib.sha256(tail).hexdigest() == digest
json.dump({"found": found}, open(os.path.join(os.environ["SM_MODEL_DIR"], "scan.json"), "w"))
"""


def test_no_job_finds_another_jobs_request_in_its_memory(emulator: Emulator) -> None:
    # Every warm job's process starts as a copy of the server's memory: the server must never have held another
    # job's request (its environment holds the job's session keys; this token travels beside them in argv).
    secret = os.urandom(10).hex()
    # Neither entry imports anything of scikit-learn's, so both are forked from the one server that preloads it all.
    # Its request is larger than the next one's, so that one could not simply overwrite it where it was freed.
    first = train(emulator, "warm-secret", "import sys\nprint(len(sys.argv))\n", padding="p" * 2000,
                  token=f"kaos-leak-probe-{secret}")
    assert first["TrainingJobStatus"] == "Completed", first.get("FailureReason")
    digest = hashlib.sha256(secret.encode()).hexdigest()
    scan = train(emulator, "warm-scan", SCAN, digest=digest)
    assert scan["TrainingJobStatus"] == "Completed", scan.get("FailureReason")
    assert json.loads(read_tar(emulator, "out/warm-scan/output/model.tar.gz")["scan.json"]) == {"found": 0}
    # The scan finds the token where it is: in the process that was given it.
    own = train(emulator, "warm-own", SCAN, digest=digest, token=f"kaos-leak-probe-{secret}")
    assert own["TrainingJobStatus"] == "Completed", own.get("FailureReason")
    assert json.loads(read_tar(emulator, "out/warm-own/output/model.tar.gz")["scan.json"])["found"] >= 1
