"""Incremental development: any subset of inputs, named channels, kaos.toml entry points and grids."""
from __future__ import annotations

import json
from pathlib import Path

from .conftest import TEMPLATE, Stack, tiny_code


def test_three_generations_reuse_what_was_not_given(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", "incr")
    code = tiny_code(tmp_path)
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"lr": 0.1}))
    first = json.loads(stack.kaos("train", "deploy", "-s", str(code), "-d", str(TEMPLATE / "data"),
                                  "-h", str(params), "--wait", "--json").stdout)
    assert first["status"] == "COMPLETED" and set(first["sources"].values()) == {"given"}

    (code / "train.py").write_text((code / "train.py").read_text() + "print('generation 2')\n")
    second = json.loads(stack.kaos("train", "deploy", "-s", str(code), "--wait", "--json").stdout)
    assert second["status"] == "COMPLETED" and second["id"] != first["id"]
    assert second["sources"] == {"code": "given", "data": "latest", "params": "latest"}
    assert second["inputs"]["data"] == first["inputs"]["data"]
    assert second["inputs"]["params"] == first["inputs"]["params"]
    assert second["inputs"]["code"] != first["inputs"]["code"]

    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.csv").write_text("a,b\n1,2\n")
    third = json.loads(stack.kaos("train", "deploy", "-d", f"train={data}", "-d",
                                  f"validation={TEMPLATE / 'data'}", "--wait", "--json").stdout)
    assert third["status"] == "COMPLETED"
    assert third["sources"] == {"code": "latest", "data": "given", "params": "latest"}
    assert third["inputs"]["code"] == second["inputs"]["code"]
    assert set(third["inputs"]["data"]) == {"train", "validation"}
    # Every generation is still there, each with its own inputs: nothing was overwritten.
    listed = {j["id"] for j in stack.kaos_json("train", "list")["jobs"]}
    assert {first["id"], second["id"], third["id"]} <= listed


def test_first_deploy_needs_code_and_data(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", "incr-first")
    result = stack.kaos("train", "deploy", "-s", str(tiny_code(tmp_path)), check=False)
    assert result.returncode != 0 and "data: required on a workspace's first deploy" in " ".join(result.stderr.split())


def test_kaos_toml_names_the_entry_point(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", "incr-toml")
    code = tmp_path / "code"
    code.mkdir()
    (code / "fit.sh").write_text('echo "shell says $*"\necho \'{"score": 3}\' > "$SM_MODEL_DIR/metrics.json"\n')
    (code / "kaos.toml").write_text('[train]\nentry_point = "fit.sh"\n')
    job = json.loads(stack.kaos("train", "deploy", "-s", str(code), "-d", str(TEMPLATE / "data"),
                                "--wait", "--json").stdout)
    assert job["status"] == "COMPLETED" and job["metrics"] == {"score": 3}
    (code / "kaos.toml").write_text('[train]\nentry_point = "missing.py"\n')
    # The client refuses it before hashing (the pipeline would fail the job on it later).
    bad = stack.kaos("train", "deploy", "-s", str(code), "--wait", "--json", check=False)
    assert bad.returncode == 1 and "names entry_point 'missing.py'" in bad.stderr and not bad.stdout


def test_grid_trains_every_point_and_reuses_trained_ones(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", "grid")
    code = tiny_code(tmp_path, "lr = float(sys.argv[sys.argv.index('--lr') + 1])\n"
                               "json.dump({'score': lr * 10}, open(os.environ['SM_MODEL_DIR'] + '/s.json', 'w'))")
    (code / "train.py").write_text((code / "train.py").read_text().replace(
        "json.dump({'accuracy': 1.0}", "json.dump({'accuracy': lr}"))
    grid_file = tmp_path / "grid.json"
    grid_file.write_text(json.dumps({"lr": [0.1, 0.3, 0.2], "depth": [1, 2], "seed": 7}))
    grid = json.loads(stack.kaos("train", "deploy", "-s", str(code), "-d", str(TEMPLATE / "data"),
                                 "-h", str(grid_file), "-p", "3", "--wait", "--json").stdout)
    assert grid["status"] == "COMPLETED" and grid["points"] == 6 and grid["counts"] == {"COMPLETED": 6}
    info = stack.kaos_json("train", "info", grid["id"], "--sort-by", "accuracy", "--desc")
    accuracies = [p["metrics"]["accuracy"] for p in info["rows"]]
    assert accuracies == sorted(accuracies, reverse=True) and accuracies[0] == 0.3
    assert len({p["job"] for p in info["rows"]}) == 6
    page = stack.kaos_json("train", "info", grid["id"], "--limit", "4", "--page", "2")
    assert page["pages"] == 2 and len(page["rows"]) == 2
    table = stack.kaos("train", "info", grid["id"], "--sort-by", "accuracy").stdout
    assert "lr" in table and "accuracy" in table
    bad_sort = stack.kaos("train", "info", grid["id"], "--sort-by", "nope", check=False)
    assert bad_sort.returncode != 0 and "unknown metric" in bad_sort.stderr

    # A bigger grid over the same code and data: the six points already trained are cache hits.
    grid_file.write_text(json.dumps({"lr": [0.1, 0.3, 0.2, 0.4], "depth": [1, 2], "seed": 7}))
    bigger = json.loads(stack.kaos("train", "deploy", "-h", str(grid_file), "--wait", "--json").stdout)
    assert bigger["points"] == 8 and bigger["counts"] == {"COMPLETED": 8}
    jobs = stack.kaos_json("train", "list", "--limit", "200")["jobs"]
    assert len(jobs) == 8  # 6 + 2 new: no point trained twice


def test_grid_bad_input_starts_nothing(stack: Stack, tmp_path: Path) -> None:
    stack.kaos("workspace", "create", "grid-bad")
    code = tiny_code(tmp_path)
    cases = {
        "at most 10000 points": {f"p{i}": list(range(10)) for i in range(5)},
        "at least one value": {"lr": []},
        "nested lists": {"lr": [[1], 2]},
    }
    for message, params in cases.items():
        params_file = tmp_path / "p.json"
        params_file.write_text(json.dumps(params))
        result = stack.kaos("train", "deploy", "-s", str(code), "-d", str(TEMPLATE / "data"), "-h",
                            str(params_file), check=False)
        assert result.returncode != 0 and message in " ".join(result.stderr.split()), (message, result.stderr)
    zero = stack.kaos("train", "deploy", "-s", str(code), "-d", str(TEMPLATE / "data"), "-p", "0", check=False)
    assert zero.returncode != 0
    assert stack.kaos_json("train", "list")["jobs"] == []
