"""The runnable templates in kaos/templates: `kaos template list|get`, each template's layout, and each one
trained end to end through the CLI on the embedded stack."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from chalicelib.pipeline import DEFAULT_ENTRY_POINTS
from kaos.cli import app
from kaos.cli_templates import templates_dir
from kaos.local.environments import Environments, default_cache_dir
from kaos.local.sagemaker_runner import to_cmd_args

from .conftest import Stack

TEMPLATES = templates_dir()
SHIPPED = ("shell-stats", "sklearn-digits", "sklearn-regressor")
runner = CliRunner()


def template(*args: str) -> Any:
    return runner.invoke(app, ["template", *args])


def sm_env(model: Path, data: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    return {**env, "SM_MODEL_DIR": str(model), "SM_CHANNEL_TRAINING": str(data), **extra}


def deploy(stack: Stack, workspace: str, folder: Path, params: Path) -> dict[str, Any]:
    result = stack.kaos("train", "deploy", "-w", workspace, "-s", str(folder / "train"), "-d", str(folder / "data"),
                        "-h", str(params), "--wait", "--json")
    job: dict[str, Any] = json.loads(result.stdout)
    assert job["status"] == "COMPLETED", job
    return job


def get_copy(stack: Stack, name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    stack.kaos("template", "get", name, "-o", str(target))
    return target


# --- kaos template list / get -----------------------------------------------------------------------------
def test_list_shows_the_shipped_templates() -> None:
    result = template("list", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(SHIPPED) <= set(rows)
    for name in SHIPPED:
        folder = TEMPLATES / name
        first_line = (folder / "README.md").read_text().splitlines()[0]
        assert rows[name]["description"] == first_line.lstrip("#").strip() != ""
        assert rows[name]["files"] == sum(1 for p in folder.rglob("*") if p.is_file() and "__pycache__" not in
                                          p.parts and p.suffix != ".pyc")
    table = template("list")
    assert table.exit_code == 0
    for name in SHIPPED:
        assert name in table.stdout


@pytest.mark.parametrize("name", sorted(p.name for p in TEMPLATES.iterdir() if p.is_dir() and p.name[0] not in "._"))
def test_template_layout(name: str) -> None:
    folder = TEMPLATES / name
    assert (folder / "README.md").read_text().strip(), "README.md says what it trains"
    assert any((folder / "train" / entry).is_file() for entry in DEFAULT_ENTRY_POINTS)
    assert [p for p in (folder / "data").rglob("*") if p.is_file()]
    assert isinstance(json.loads((folder / "params.json").read_text()), dict)


def test_digits_grid_params() -> None:
    folder = TEMPLATES / "sklearn-digits"
    grid = json.loads((folder / "params-grid.json").read_text())
    params = json.loads((folder / "params.json").read_text())
    assert set(grid) == set(params)
    assert grid["C"] == [0.1, 1.0, 10.0]
    assert all(not isinstance(v, list) for k, v in grid.items() if k != "C")


def test_get_copies_and_refuses_to_overwrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = template("get", "shell-stats")  # default target: ./NAME
    assert result.exit_code == 0, result.output
    copied = tmp_path / "shell-stats"
    source = TEMPLATES / "shell-stats"
    for path in source.rglob("*"):
        if path.is_file():
            assert (copied / path.relative_to(source)).read_bytes() == path.read_bytes()
    assert os.access(copied / "train" / "train.sh", os.X_OK)
    assert "kaos train deploy" in result.stdout

    (copied / "params.json").write_text('{"column": 1}')
    again = template("get", "shell-stats")
    assert again.exit_code == 1
    assert "already exists and is not empty" in again.stderr
    assert (copied / "params.json").read_text() == '{"column": 1}'  # untouched

    empty = tmp_path / "empty"
    empty.mkdir()
    into_empty = template("get", "sklearn-regressor", "-o", str(empty), "--json")
    assert into_empty.exit_code == 0, into_empty.output
    assert json.loads(into_empty.stdout)["files"] == 4
    assert (empty / "train" / "train.py").is_file()

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert "not a directory" in template("get", "sklearn-digits", "-o", str(a_file)).stderr


def test_get_unknown_name_suggests() -> None:
    result = template("get", "sklearn-digit")
    assert result.exit_code == 1
    assert "unknown template 'sklearn-digit'" in result.stderr
    assert "did you mean 'sklearn-digits'" in result.stderr
    nothing_close = template("get", "zzz")
    assert nothing_close.exit_code == 1
    assert "available: shell-stats, sklearn-digits, sklearn-regressor" in nothing_close.stderr


# --- the templates' training code, run locally under the SageMaker env contract -------------------------------
def run_regressor(tmp: Path, params: dict[str, Any],
                  python: Path = Path(sys.executable)) -> tuple[bytes, dict[str, Any]]:
    folder = TEMPLATES / "sklearn-regressor"
    model = tmp / "model"
    model.mkdir(parents=True)
    subprocess.run([str(python), "train.py", *to_cmd_args(params)], cwd=folder / "train", check=True,
                   capture_output=True, env=sm_env(model, folder / "data"), timeout=60)
    return (model / "model.pkl").read_bytes(), json.loads((model / "metrics.json").read_text())


def run_shell(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    folder = TEMPLATES / "shell-stats"
    for sub in ("model", "output"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    return subprocess.run(["/bin/sh", "train.sh", *args], cwd=folder / "train", capture_output=True, text=True,
                          env=sm_env(tmp / "model", folder / "data", SM_OUTPUT_DIR=str(tmp / "output"), **env),
                          timeout=30)


def test_shell_template_runs_with_sh_and_reads_its_hyperparameter(tmp_path: Path) -> None:
    default = run_shell(tmp_path / "default")
    assert default.returncode == 0, default.stderr
    by_arg = run_shell(tmp_path / "arg", "--column", "2")
    assert by_arg.returncode == 0, by_arg.stderr
    by_env = run_shell(tmp_path / "env", SM_HP_COLUMN="2")  # JSON-encoded, as the runner sets it
    assert by_env.returncode == 0, by_env.stderr

    def metrics(run: str) -> dict[str, Any]:
        return dict(json.loads((tmp_path / run / "model" / "metrics.json").read_text()))

    assert metrics("default")["column"] == 3 and metrics("default")["accuracy"] >= 0.9
    assert metrics("arg")["column"] == 2 and metrics("arg")["accuracy"] < metrics("default")["accuracy"]
    assert metrics("env") == metrics("arg")
    assert metrics("default")["rows"] == 150
    assert "sepal_width" in (tmp_path / "arg" / "model" / "model.txt").read_text()

    bad = run_shell(tmp_path / "bad", "--column", "9")
    assert bad.returncode == 1
    assert "column 9 is not a feature column" in (tmp_path / "bad" / "output" / "failure").read_text()


def test_regressor_is_deterministic(tmp_path: Path) -> None:
    params = json.loads((TEMPLATES / "sklearn-regressor" / "params.json").read_text())
    first, first_metrics = run_regressor(tmp_path / "one", params)
    second, second_metrics = run_regressor(tmp_path / "two", params)
    assert first == second
    assert first_metrics == second_metrics
    other, _ = run_regressor(tmp_path / "three", {**params, "seed": params["seed"] + 1})
    assert other != first


# --- end to end on the embedded stack --------------------------------------------------------------------------
def test_digits_template_end_to_end(stack: Stack, tmp_path: Path) -> None:
    folder = get_copy(stack, "sklearn-digits", tmp_path)
    stack.kaos("workspace", "create", "tpl-digits")
    job = deploy(stack, "tpl-digits", folder, folder / "params.json")
    assert {"accuracy", "f1_macro", "train_examples", "test_examples"} <= set(job["metrics"])
    assert job["metrics"]["accuracy"] > 0.9


def test_regressor_template_end_to_end(stack: Stack, tmp_path: Path) -> None:
    folder = get_copy(stack, "sklearn-regressor", tmp_path)
    stack.kaos("workspace", "create", "tpl-regressor")
    job = deploy(stack, "tpl-regressor", folder, folder / "params.json")
    assert {"r2", "rmse", "mae"} <= set(job["metrics"])
    assert job["metrics"]["r2"] > 0.3 and job["metrics"]["rmse"] > 0
    # The job ran the same code on the same data with the same params as a local run in the job's image environment
    # (kaos.local.environments): identical metrics.
    image_python = Environments(default_cache_dir()).ensure(job["environment"]).python
    _, local = run_regressor(tmp_path / "local", json.loads((folder / "params.json").read_text()), image_python)
    assert {k: job["metrics"][k] for k in local} == pytest.approx(local, rel=1e-9)


def test_shell_template_end_to_end_and_its_hyperparameter(stack: Stack, tmp_path: Path) -> None:
    folder = get_copy(stack, "shell-stats", tmp_path)
    stack.kaos("workspace", "create", "tpl-shell")
    default = deploy(stack, "tpl-shell", folder, folder / "params.json")
    assert {"rows", "accuracy", "column"} <= set(default["metrics"])
    assert default["metrics"]["rows"] == 150 and default["metrics"]["column"] == 3
    assert default["metrics"]["accuracy"] >= 0.9

    other_params = tmp_path / "column-2.json"
    other_params.write_text(json.dumps({**json.loads((folder / "params.json").read_text()), "column": 2}))
    other = deploy(stack, "tpl-shell", folder, other_params)
    assert other["id"] != default["id"] and other["cached"] is False
    assert other["metrics"]["column"] == 2
    assert other["metrics"]["accuracy"] < default["metrics"]["accuracy"]
    assert other["inputs"]["code"] == default["inputs"]["code"]  # only the params changed
    logs = stack.kaos("train", "logs", "-w", "tpl-shell", other["id"]).stdout
    assert "sepal_width (column 2)" in logs
