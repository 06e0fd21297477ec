"""Metrics logged over time (chalicelib/metrics.py): extraction from a log, and the record step storing them and
the route's service paging them (in-memory repositories, moto in process: no embedded stack)."""
from __future__ import annotations

import json
import time

import boto3
import pytest

from chalicelib.errors import InputInvalid, ValidationFailed
from chalicelib.metrics import MAX_POINTS, Extractor, parse_definitions
from chalicelib.wiring import Wiring
from tests.service_wiring import BUCKET, OWNER, component, services, snapshot, workspace  # noqa: F401
from tests.test_kill import _model

DEFINITIONS = [{"name": "train:loss", "regex": r"loss=([0-9.eE+-]+)"}]


def test_regex_definitions_and_json_lines_give_steps_and_min_max_last() -> None:
    extractor = Extractor(parse_definitions(DEFINITIONS))
    for line in ["epoch 0 loss=0.9", "epoch 1 loss=0.5", "noise", "epoch 2 loss=0.7",
                 '{"metric": "acc", "value": 0.5, "step": 10}', '{"metric": "acc", "value": 0.75, "step": 20}',
                 '{"metric": "acc", "value": "NaN", "step": 30}', '{"metric": "acc", "value": true}',
                 '{"metric": "lr", "value": 1e-3}', "{not json \"metric\""]:
        extractor.feed(line)
    document = extractor.document()
    assert document["metrics"] == {"acc": {"steps": [10, 20], "values": [0.5, 0.75]},
                                   "lr": {"steps": [0], "values": [0.001]},
                                   "train:loss": {"steps": [0, 1, 2], "values": [0.9, 0.5, 0.7]}}
    assert document["summary"]["train:loss"] == {"min": 0.5, "max": 0.9, "last": 0.7, "count": 3, "last_step": 2}
    assert document["summary"]["acc"]["last_step"] == 20


def test_a_long_series_is_thinned_but_keeps_its_last_point_and_full_summary() -> None:
    extractor = Extractor()
    total = 2 * MAX_POINTS + 7
    for step in range(total):
        extractor.feed(json.dumps({"metric": "loss", "value": -step, "step": step}))
    columns = extractor.document()["metrics"]["loss"]
    assert len(columns["steps"]) <= MAX_POINTS + 1
    assert columns["steps"][-1] == total - 1 and columns["steps"][:3] == [0, 4, 8]
    assert extractor.summary()["loss"] == {"min": -(total - 1), "max": 0, "last": -(total - 1), "count": total,
                                           "last_step": total - 1}


@pytest.mark.parametrize(("raw", "field"), [
    ([{"name": "x"}], "metric_definitions[0].regex"),
    ([{"name": "", "regex": "a=(1)"}], "metric_definitions[0].name"),
    ([{"name": "x", "regex": "a=("}], "metric_definitions[0].regex is not a valid"),
    ([{"name": "x", "regex": "a=1"}], "needs a group"),
    ("loss", "must be a list"),
])
def test_bad_definitions_name_the_field_and_rule(raw: object, field: str) -> None:
    with pytest.raises(InputInvalid, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_definitions(raw)


def test_record_stores_the_series_and_the_route_pages_it(services: Wiring) -> None:  # noqa: F811
    """The real path minus the state machine: submit, Prepare (MetricDefinitions in the CreateTrainingJob request),
    a log in CloudWatch, Record (summary in the job row, series beside the log), then the route's pages."""
    ws = workspace(services)
    toml = b'[train]\nmetric_definitions = [{name = "train:loss", regex = "loss=([0-9.]+)"}]\n'
    code = snapshot(services, ws.name, "code", {"train.py": b"print('hi')\n", "kaos.toml": toml})
    data = snapshot(services, ws.name, "data", {"rows.csv": b"a\n1\n"})
    job, _ = services.training.submit(ws.name, ws.created_at, OWNER, {
        "code": code, "data": {"training": data}, "params": {"lr": 0.1, "depth": 3}})
    assert job["hyperparameters"] == {"lr": 0.1, "depth": 3}
    request = component(services, "prepare_training").pipeline.prepare(ws.name, job["id"])["training"]
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == [{"Name": "train:loss",
                                                                        "Regex": "loss=([0-9.]+)"}]
    name = request["TrainingJobName"]
    logs = boto3.client("logs")
    logs.create_log_group(logGroupName=services.settings.training_log_group)
    logs.create_log_stream(logGroupName=services.settings.training_log_group, logStreamName=f"{name}/algo-1")
    lines = [f"step {i} loss={1 / (i + 1):.4f}" for i in range(5)] + [
        json.dumps({"metric": "acc", "value": i / 10, "step": i}) for i in range(3)]
    now = int(time.time() * 1000)  # CloudWatch refuses events older than 14 days
    logs.put_log_events(logGroupName=services.settings.training_log_group, logStreamName=f"{name}/algo-1",
                        logEvents=[{"timestamp": now + i, "message": m} for i, m in enumerate(lines)])
    recorder = component(services, "record_outcome")
    recorded = recorder.pipeline.record(ws.name, job["id"], job["execution"], "Completed",
                                        _model(BUCKET, ws.name, name))
    assert recorded["status"] == "COMPLETED"
    assert recorded["metric_series"]["train:loss"] == {"min": 0.2, "max": 1, "last": 0.2, "count": 5,
                                                       "last_step": 4}
    first = services.job_metrics.page(ws.name, job["id"], None, None, 6)
    rest = services.job_metrics.page(ws.name, job["id"], None, first["next"], 6)
    assert [(p["metric"], p["step"]) for p in first["points"] + rest["points"]] == \
        [("acc", 0), ("acc", 1), ("acc", 2)] + [("train:loss", i) for i in range(5)]
    assert rest["next"] is None and first["summary"]["acc"]["max"] == 0.2
    only = services.job_metrics.page(ws.name, job["id"], "acc", "1", None)
    assert [p["value"] for p in only["points"]] == [0.1, 0.2]
    with pytest.raises(ValidationFailed, match=r"metric: .* logged no metric 'nope'"):
        services.job_metrics.page(ws.name, job["id"], "nope", None, None)
    with pytest.raises(ValidationFailed, match="limit"):
        services.job_metrics.page(ws.name, job["id"], None, None, 0)
