"""Unit tests of the pure domain: names, manifests, params and fingerprints."""
from __future__ import annotations

import json

import pytest

from chalicelib import limits
from chalicelib.domain import (
    JobSpec,
    Resources,
    hyperparameters,
    params_manifest,
    parse_manifest,
    parse_params,
    validate_path,
    validate_workspace_name,
)
from chalicelib.errors import ValidationFailed

DIGEST = "a" * 64
RESOURCES = Resources("ml.m5.large", 1, 30, 3600)


def spec(**changes: object) -> JobSpec:
    values: dict[str, object] = {"workspace": "mnist", "incarnation": "t0", "kind": "train", "code": "c" * 64,
                                 "data": (("training", "d" * 64),),
                                     "params": "p" * 64, "environment": "image:1", "resources": RESOURCES}
    values.update(changes)
    return JobSpec(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["ab", "mnist", "mnist-2", "a" * 32, "x1-y2"])
def test_valid_workspace_names(name: str) -> None:
    assert validate_workspace_name(name) == name


@pytest.mark.parametrize("name", ["a", "A", "1abc", "-abc", "abc-", "a" * 33, "a_b", "a.b", "ab/c", "", "ümlaut"])
def test_invalid_workspace_names_state_the_rule(name: str) -> None:
    with pytest.raises(ValidationFailed) as error:
        validate_workspace_name(name)
    assert limits.WORKSPACE_NAME_RULE in error.value.message


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a//b", "a/./b", "a\\b", "", "a/../b", "a\x00b"])
def test_paths_cannot_escape_the_snapshot(path: str) -> None:
    with pytest.raises(ValidationFailed):
        validate_path(path, "files[0].path")


def test_manifest_id_is_content_addressed_and_order_independent() -> None:
    files = [{"path": "b.py", "sha256": DIGEST, "size": 3}, {"path": "a.py", "sha256": "b" * 64, "size": 1}]
    one = parse_manifest("code", files)
    two = parse_manifest("code", list(reversed(files)))
    assert one.snapshot_id == two.snapshot_id
    assert [f.path for f in one.files] == ["a.py", "b.py"]
    assert one.total_bytes == 4
    changed = parse_manifest("code", [files[0], {**files[1], "size": 2}])
    assert changed.snapshot_id != one.snapshot_id
    assert parse_manifest("data", files).snapshot_id != one.snapshot_id


@pytest.mark.parametrize(
    "files, message",
    [
        ([], "non-empty"),
        ([{"path": "a", "sha256": "xyz", "size": 1}], "sha256"),
        ([{"path": "a", "sha256": DIGEST, "size": -1}], "size"),
        ([{"path": "a", "sha256": DIGEST, "size": limits.MAX_FILE_BYTES + 1}], str(limits.MAX_FILE_BYTES)),
        ([{"path": "a", "sha256": DIGEST, "size": 1}] * 2, "twice"),
        (["a"], "object"),
    ],
)
def test_bad_manifests_name_field_and_rule(files: list[object], message: str) -> None:
    with pytest.raises(ValidationFailed) as error:
        parse_manifest("code", files)
    assert message in error.value.message


def test_manifest_file_count_limit() -> None:
    files = [{"path": f"f{i}", "sha256": DIGEST, "size": 1} for i in range(limits.MAX_FILES_PER_SNAPSHOT + 1)]
    with pytest.raises(ValidationFailed, match=str(limits.MAX_FILES_PER_SNAPSHOT)):
        parse_manifest("data", files)


def test_unknown_kind() -> None:
    with pytest.raises(ValidationFailed, match="kind"):
        parse_manifest("model", [{"path": "a", "sha256": DIGEST, "size": 1}])


@pytest.mark.parametrize(
    "params, field",
    [([1], "params"), ({"sagemaker_program": "x"}, "params.sagemaker_program"), ({"a b": 1}, "params.a b"),
     ({"lr": []}, "params.lr"), ({"lr": [[0.1], 0.2]}, "params.lr"), ({"lr": [{"a": 1}]}, "params.lr"),
     ({"x": "v" * 3000}, "params.x")],
)
def test_bad_params(params: object, field: str) -> None:
    with pytest.raises(ValidationFailed) as error:
        parse_params(params)
    assert error.value.message.startswith(field)


def test_params_are_canonical_and_json_encoded_like_the_sagemaker_sdk() -> None:
    one, body = params_manifest({"b": 1, "a": "x"})
    two, _ = params_manifest({"a": "x", "b": 1})
    assert one.snapshot_id == two.snapshot_id
    assert json.loads(body) == {"a": "x", "b": 1}
    assert hyperparameters({"lr": 0.1, "name": "x", "deep": {"k": True}}) == {
        "lr": "0.1", "name": '"x"', "deep": '{"k": true}'}


def test_fingerprint_covers_every_input() -> None:
    base = spec()
    variants = [spec(workspace="other"), spec(incarnation="t1"), spec(code="e" * 64),
                spec(data=(("training", "f" * 64),)),
                spec(data=(("validation", "d" * 64),)), spec(params="q" * 64), spec(environment="image:2"),
                spec(resources=Resources("ml.c5.xlarge", 1, 30, 3600)), spec(kind="batch")]
    prints = {base.fingerprint} | {v.fingerprint for v in variants}
    assert len(prints) == len(variants) + 1
    assert spec().fingerprint == base.fingerprint


def test_job_ids_fit_sagemaker_and_step_functions_names() -> None:
    job_id = spec().job_id
    assert job_id.startswith("train-")
    assert len(job_id) <= 63 - 4  # room for an attempt suffix within SageMaker's 63 characters
    assert all(c.isalnum() or c == "-" for c in job_id)


def test_grid_points_are_the_cartesian_product() -> None:
    from chalicelib.domain import grid_points, is_grid

    params = {"lr": [0.1, 0.2], "depth": [3, 5, 7], "seed": 1}
    points = grid_points(parse_params(params))
    assert len(points) == 6 and is_grid(params) and not is_grid({"seed": 1})
    assert points[0] == {"lr": 0.1, "depth": 3, "seed": 1} and points[-1] == {"lr": 0.2, "depth": 7, "seed": 1}
    assert len({json.dumps(p, sort_keys=True) for p in points}) == 6
    assert grid_points({"seed": 1}) == [{"seed": 1}]


def test_grids_over_the_cap_are_refused() -> None:
    from chalicelib.domain import grid_points

    big = {f"p{i}": list(range(10)) for i in range(5)}  # 100,000 points
    with pytest.raises(ValidationFailed, match=str(limits.MAX_GRID_POINTS)):
        grid_points(big)
    assert len(grid_points({"a": list(range(100)), "b": list(range(100))})) == limits.MAX_GRID_POINTS
