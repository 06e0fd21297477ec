"""chalicelib/cost.py against hand-computed cases (prices fixed here, so a price refresh changes no expectation)."""
from __future__ import annotations

import json
import time
from datetime import date, datetime
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.stub import Stubber

from cdk.constants import DEFAULT_TRAINING_INSTANCE_TYPE
from chalicelib import cost, costs
from chalicelib.adapters import EndpointMetrics, EndpointUsage
from chalicelib.cost import Prices
from chalicelib.costs import endpoint_cost_of
from chalicelib.errors import ValidationFailed
from chalicelib.repositories.endpoints import Endpoint
from chalicelib.wiring import Wiring
from chalicelib.domain import now
from kaos import prices
from kaos.cli.common import console
from kaos.cli.cost import print_cost
from kaos.cli.views import provenance_tree
from tests.service_wiring import OWNER, services, snapshot, workspace  # noqa: F401

PRICES = Prices(
    date="2026-12-01", region="us-east-1",
    training_hour={"ml.m5.large": 0.115, "ml.m5.xlarge": 0.23},
    hosting_hour={"ml.m5.large": 0.115},
    unit={"serverless_inference_gb_second": 0.00002, "serverless_inference_data_gb": 0.016,
          "fargate_vcpu_hour": 0.04048, "fargate_gb_hour": 0.004445, "public_ipv4_hour": 0.005,
          "step_functions_transition": 0.000025, "lambda_gb_second": 0.0000166667, "lambda_request": 0.0000002,
          "api_gateway_request": 0.0000035, "dynamodb_write_unit": 0.000000625},
)
RESOURCES = {"instance_type": "ml.m5.large", "instance_count": 1, "volume_gb": 30, "max_runtime_seconds": 86400}


def _job(**overrides: object) -> dict[str, Any]:
    args: dict[str, object] = {"kind": "train", "status": "COMPLETED", "resources": RESOURCES, "inputs": 3,
                               "history": 4, "started_at": None, "ended_at": None, "usage": None, "p": PRICES}
    args.update(overrides)
    return cost.job_cost(**args)  # type: ignore[arg-type]


def _lines(answer: dict[str, Any]) -> dict[str, float]:
    return {line["item"]: line["usd"] for line in answer["lines"]}


def test_measured_training_is_billable_seconds_times_price_plus_the_pipeline() -> None:
    answer = _job(usage={"billable_seconds": 3600, "training_seconds": 3600, "lambda_ms": [1000, 500]})
    # 1 h x $0.115; 4 transitions x $0.000025; 2 requests x $0.0000002; (0.5 GB x 1 s + 0.5 GB x 0.5 s) x
    # $0.0000166667; (7 + 3 x 3 inputs + 2 x 4 status changes) = 24 writes x $0.000000625.
    assert _lines(answer) == {"SageMaker training ml.m5.large": 0.115, "Step Functions transitions": 0.0001,
                              "Lambda requests": 0.0000004, "Lambda duration": 0.0000125,
                              "DynamoDB writes": 0.000015}
    assert answer["usd"] == pytest.approx(0.115128, abs=1e-6)
    assert answer["basis"] == "measured"
    assert answer["prices"] == "AWS list prices us-east-1 2026-12-01"
    assert "spot_savings_usd" not in answer


def test_managed_spot_bills_the_billable_seconds_and_reports_the_saving() -> None:
    answer = _job(resources={**RESOURCES, "instance_type": "ml.m5.xlarge", "instance_count": 2},
                  usage={"billable_seconds": 1800, "training_seconds": 3600, "lambda_ms": [0, 0]})
    # 1800 s x 2 instances = 1 instance-hour at $0.23 billed; the other 1800 s x 2 were not.
    assert _lines(answer)["SageMaker training ml.m5.xlarge"] == 0.23
    assert answer["spot_savings_usd"] == 0.23


def test_running_job_is_estimated_from_its_max_runtime_and_the_lambdas_timeouts() -> None:
    answer = _job(status="TRAINING", history=2)
    # 86,400 s = 24 h x $0.115 = $2.76; Lambdas at their timeouts: 0.5 GB x 300 s + 0.5 GB x 120 s = 210 GB-s.
    lines = _lines(answer)
    assert lines["SageMaker training ml.m5.large"] == pytest.approx(2.76)
    assert lines["Lambda duration"] == pytest.approx(210 * 0.0000166667, abs=1e-6)
    assert answer["basis"] == "estimate"


def test_killed_job_without_a_measurement_costs_its_elapsed_time() -> None:
    answer = _job(status="KILLED", started_at="2026-12-01T10:00:00+00:00", ended_at="2026-12-01T10:30:00+00:00")
    assert _lines(answer)["SageMaker training ml.m5.large"] == pytest.approx(0.0575)
    assert answer["basis"] == "elapsed"


def test_a_resumed_job_costs_its_earlier_attempts_too() -> None:
    first = {"attempt": 1, "status": "FAILED", "started_at": "2026-12-01T10:00:00+00:00",
             "ended_at": "2026-12-01T10:10:00+00:00", "usage": {"billable_seconds": 600, "lambda_ms": [0, 0]}}
    alone = _job(usage={"billable_seconds": 3600, "lambda_ms": [1000, 500]})
    resumed = _job(usage={"billable_seconds": 3600, "lambda_ms": [1000, 500]}, attempts=[first])
    # Attempt 1: 600 s x $0.115 / 3600 + 5 transitions (a failure's longest path) + 2 requests + 18 writes.
    earlier = 600 / 3600 * 0.115 + 5 * 0.000025 + 2 * 0.0000002 + (7 + 3 * 3 + 2) * 0.000000625
    assert _lines(resumed)["attempt 1 (FAILED)"] == pytest.approx(earlier)
    assert resumed["usd"] == pytest.approx(alone["usd"] + earlier)
    assert resumed["basis"] == "measured"


def test_batch_job_bills_fargate_with_a_one_minute_minimum() -> None:
    answer = _job(kind="batch", resources={"instance_type": "fargate-1vcpu-2048mib", "instance_count": 1,
                                           "volume_gb": 21, "max_runtime_seconds": 3600},
                  started_at="2026-12-01T10:00:00+00:00", ended_at="2026-12-01T10:00:30+00:00",
                  usage={"lambda_ms": [0, 0]})
    lines = _lines(answer)
    # 30 s is billed as 60 s: 1/60 h x (1 vCPU x $0.04048, 2 GB x $0.004445, the task's public IPv4 address x
    # $0.005); the 20 GB of storage are free.
    assert lines["Fargate vCPU"] == pytest.approx(0.04048 / 60, abs=1e-6)
    assert lines["Fargate memory"] == pytest.approx(2 * 0.004445 / 60, abs=1e-6)
    assert lines["Public IPv4 address"] == pytest.approx(0.005 / 60, abs=1e-6)
    assert not any("storage" in item for item in lines)
    assert lines["Step Functions transitions"] == pytest.approx(5 * 0.000025)
    assert "unpriced" not in answer


def test_an_instance_type_missing_from_the_table_is_named_not_guessed() -> None:
    answer = _job(resources={**RESOURCES, "instance_type": "ml.x9.huge"}, usage={"billable_seconds": 60})
    assert _lines(answer).get("SageMaker training ml.x9.huge", 0.0) == 0.0
    assert answer["unpriced"] == ["ml.x9.huge"]


def test_realtime_endpoint_bills_instance_hours_and_serverless_gb_seconds() -> None:
    realtime = cost.endpoint_cost(kind="realtime", instance_type="ml.m5.large", instance_count=2, hours=10,
                                  requests=1000, p=PRICES)
    # 20 instance-hours x $0.115 + 1,000 requests x ($0.0000035 API Gateway + $0.0000002 Lambda).
    assert realtime["usd"] == pytest.approx(2.3 + 0.0037)
    serverless = cost.endpoint_cost(kind="serverless", instance_type=None, instance_count=0, hours=10,
                                    memory_mb=2048, inference_seconds=100, data_gb=0.5, p=PRICES)
    # 2 GB x 100 s = 200 GB-s x $0.00002, plus 0.5 GB processed x $0.016; idle hours cost nothing.
    assert serverless["usd"] == pytest.approx(0.004 + 0.008)


def test_recorded_usage_reads_the_sync_result_or_a_failures_describe_cause() -> None:
    since = time.monotonic()
    completed = cost.recorded_usage({"lambda_ms": [120]}, {"BillableTimeInSeconds": 61, "TrainingTimeInSeconds": 61},
                                    since)
    assert completed["billable_seconds"] == 61 and completed["training_seconds"] == 61
    assert completed["lambda_ms"][0] == 120 and len(completed["lambda_ms"]) == 2
    cause = json.dumps({"TrainingJobStatus": "Failed", "BillableTimeInSeconds": 7, "TrainingTimeInSeconds": 9})
    failed = cost.recorded_usage(None, {"Error": "States.TaskFailed", "Cause": cause}, since)
    assert (failed["billable_seconds"], failed["training_seconds"]) == (7, 9)
    lambda_error = cost.recorded_usage(None, {"Error": "Lambda.Unknown", "Cause": "not json"}, since)
    assert "billable_seconds" not in lambda_error


def test_rollup_sums_the_totals() -> None:
    assert cost.total([{"usd": 0.1}, {"usd": 0.2}, {}]) == pytest.approx(0.3)


def test_the_repository_price_table_prices_the_default_instance_and_every_unit() -> None:
    table = cost.prices()
    assert DEFAULT_TRAINING_INSTANCE_TYPE in table.training_hour
    assert set(PRICES.unit) <= set(table.unit)
    assert table.region == "us-east-1" and table.date


# --- the rollup along the lineage, through the services (in-memory repositories, moto in process) ----------------
def _finish(wired: Wiring, ws: str, job_id: str, output: str, usage: dict[str, object]) -> None:
    """What Record writes: the output node, the `produced` edge, the job's end with its measured usage."""
    at = now()
    wired.provenance.add_node(ws, output, output.split(":")[0], {}, at)
    wired.provenance.add_edge(ws, f"job:{job_id}", "produced", output, at)
    job = wired.repositories.jobs.get(ws, job_id)
    wired.repositories.jobs.set_status(job, "COMPLETED", at, started_at="2026-12-01T10:00:00+00:00",
                                          ended_at="2026-12-01T10:05:00+00:00", model_uri=output, usage=usage)


def test_a_models_cost_rolls_up_the_jobs_along_its_lineage(services: Wiring,  # noqa: F811
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    found = workspace(services)
    ws, incarnation = found.name, found.created_at
    raw = snapshot(services, ws, "data", {"raw.csv": b"a\n1\n"})
    code = snapshot(services, ws, "code", {"process.py": b"print(1)\n", "train.py": b"print(2)\n"})
    batch, _ = services.batch.submit(ws, incarnation, OWNER, {"code": code, "data": raw})
    clean = snapshot(services, ws, "data", {"clean.csv": b"a\n2\n"})
    _finish(services, ws, batch["id"], f"snapshot:{clean}", {"lambda_ms": [100, 200]})
    train, _ = services.training.submit(ws, incarnation, OWNER, {"code": code, "data": {"train": clean}})
    _finish(services, ws, train["id"], f"model:{train['id']}", {"billable_seconds": 120, "lambda_ms": [50, 80]})
    unrelated, _ = services.training.submit(ws, incarnation, OWNER, {"code": code, "data": {"train": raw}})

    own = {j: services.jobs.get(ws, j)["cost"]["usd"] for j in (batch["id"], train["id"], unrelated["id"])}
    answer = services.costs.workspace(ws, None)
    (model,) = answer["models"]
    assert model["id"] == f"model:{train['id']}" and model["usd"] == own[train["id"]]
    assert model["rolled_up_usd"] == pytest.approx(own[train["id"]] + own[batch["id"]])
    assert {entry["job"] for entry in model["lineage"]} == {train["id"], batch["id"]}
    assert answer["total_usd"] == pytest.approx(sum(own.values()))
    assert {row["id"]: row["basis"] for row in answer["jobs"]} == {
        batch["id"]: "elapsed", train["id"]: "measured", unrelated["id"]: "estimate"}

    lineage = services.costs.lineage(ws, f"model:{train['id']}", "up", None, None, None)
    assert lineage["cost_usd"] == pytest.approx(model["rolled_up_usd"])
    priced = {n["id"]: n["cost"]["usd"] for n in lineage["nodes"] if "cost" in n}
    assert priced == {f"model:{train['id']}": own[train["id"]], f"job:{train['id']}": own[train["id"]],
                      f"job:{batch['id']}": own[batch["id"]]}

    assert answer["models_omitted"] == 0
    monkeypatch.setattr(costs, "MAX_ROLLUPS", 0)  # a bounded answer says what it left out
    bounded = services.costs.workspace(ws, None)
    assert (bounded["models"], bounded["models_omitted"], bounded["total_usd"]) == ([], 1, answer["total_usd"])
    assert services.costs.workspace(ws, "2999-01-01")["jobs"] == []
    with pytest.raises(ValidationFailed, match="since"):
        services.costs.workspace(ws, "last tuesday")


# --- `kaos cloud prices refresh`: the Price List adapter, with botocore's Stubber (moto has no Price List) -------
def _product(usage: str, usd: str, unit: str = "Hrs") -> str:
    return json.dumps({"product": {"attributes": {"usagetype": usage}}, "terms": {"OnDemand": {"T1": {
        "priceDimensions": {"D1": {"unit": unit, "pricePerUnit": {"USD": usd}}}}}}})


def test_prices_refresh_rewrites_the_instance_prices_the_price_list_has(tmp_path: Path) -> None:
    table = tmp_path / "prices.json"
    table.write_text(json.dumps({"date": "2020-01-01", "region": "us-east-1", "training_hour": {
        "ml.m5.large": 0.1, "ml.x9.huge": 9.0}, "hosting_hour": {"ml.m5.large": 0.1}, "unit": {}}))
    pricing = botocore.session.get_session().create_client(
        "pricing", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stubber = Stubber(pricing)

    def expect(instance_type: str, products: list[str]) -> None:
        stubber.add_response("get_products", {"FormatVersion": "aws_v1", "PriceList": products}, {
            "ServiceCode": "AmazonSageMaker", "FormatVersion": "aws_v1",
            "Filters": [{"Type": "TERM_MATCH", "Field": "regionCode", "Value": "us-east-1"},
                        {"Type": "TERM_MATCH", "Field": "instanceName", "Value": instance_type}]})

    # Training and hosting told apart by usage type; a notebook's price of the same instance and a
    # non-hourly dimension are not instance-hour prices.
    expect("ml.m5.large", [_product("USE1-Train:ml.m5.large", "0.1150000000"),
                           _product("USE1-Host:ml.m5.large", "0.1150000000"),
                           _product("USE1-Notebk:ml.m5.large", "0.1150000000"),
                           _product("USE1-Train:ml.m5.large", "0.02", unit="GB-Mo")])
    expect("ml.x9.huge", [])  # an instance the list does not price keeps its price
    with stubber:
        changes = prices.refresh(prices.PriceList(pricing), table, date(2026, 12, 1))
    stubber.assert_no_pending_responses()
    assert [(c.table, c.instance_type, c.old, c.new) for c in changes] == [
        ("training_hour", "ml.m5.large", 0.1, 0.115), ("hosting_hour", "ml.m5.large", 0.1, 0.115)]
    refreshed = json.loads(table.read_text())
    assert refreshed["date"] == "2026-12-01"
    assert refreshed["training_hour"] == {"ml.m5.large": 0.115, "ml.x9.huge": 9.0}
    assert Prices.parse(refreshed).hosting_hour == {"ml.m5.large": 0.115}


def test_an_endpoint_costs_its_instance_hours_until_it_is_deleted() -> None:
    def endpoint(kind: str, status: str, settings: dict[str, object]) -> Endpoint:
        return Endpoint("ws", "digits", status, "kaos-ws-digits-0123abcd", kind, settings, {},
                        "2026-12-01T00:00:00+00:00", OWNER, "2026-12-01T10:00:00+00:00")

    realtime = {"instance_type": "ml.m5.large", "instance_count": 2}
    # Deleted after 10 h: 20 instance-hours, whatever the time now.
    deleted = endpoint_cost_of(endpoint("realtime", "Deleted", realtime))
    assert deleted["basis"] == "elapsed" and deleted["lines"][0]["quantity"] == pytest.approx(20)
    # Live: until `at`.
    live = endpoint_cost_of(endpoint("realtime", "InService", realtime),
                            at=datetime.fromisoformat("2026-12-01T01:30:00+00:00"))
    assert live["lines"][0]["quantity"] == pytest.approx(3)
    serverless = endpoint_cost_of(endpoint("serverless", "InService", {"memory_mb": 2048}))
    assert serverless["usd"] == 0 and serverless["unmetered"]


def test_serverless_inference_is_billed_from_the_invocation_metrics() -> None:
    # 3 requests, 250,000 us in the model: 250 ms, plus each request's rounding up to the ms counted whole (3 ms).
    assert cost.serverless_seconds(3, 250_000) == pytest.approx(0.253)
    assert cost.serverless_seconds(0, 0) == 0
    endpoint = Endpoint("ws", "digits", "InService", "kaos-ws-digits-0123abcd", "serverless", {"memory_mb": 2048},
                        {}, "2026-12-01T00:00:00+00:00", OWNER, "2026-12-01T00:00:00+00:00")
    answer = endpoint_cost_of(endpoint, usage=EndpointUsage(invocations=3, model_latency_us=250_000))
    # 2 GB x 0.253 s = 0.506 GB-s x $0.00002, plus 3 requests x ($0.0000035 API Gateway + $0.0000002 Lambda).
    assert answer["usd"] == pytest.approx(0.506 * 0.00002 + 3 * 0.0000037, abs=1e-12)
    assert answer["basis"] == "measured" and answer["unmetered"] == ["serverless data processed"]
    assert _lines(answer)["SageMaker serverless inference"] == pytest.approx(0.506 * 0.00002)


def test_endpoint_metrics_sum_each_endpoints_daily_points_across_pages() -> None:
    client = botocore.session.get_session().create_client("cloudwatch", region_name="us-east-1")
    start = datetime.fromisoformat("2026-11-30T10:00:00+00:00")
    end = datetime.fromisoformat("2026-12-01T10:01:00+00:00")

    def query(i: int, m: int, endpoint: str, metric: str) -> dict[str, Any]:
        return {"Id": f"q{i}_{m}", "MetricStat": {"Metric": {"Namespace": "AWS/SageMaker", "MetricName": metric,
                "Dimensions": [{"Name": "EndpointName", "Value": endpoint},
                               {"Name": "VariantName", "Value": "AllTraffic"}]}, "Period": 86400, "Stat": "Sum"}}

    queries = [query(0, 0, "a", "Invocations"), query(0, 1, "a", "ModelLatency"),
               query(1, 0, "b", "Invocations"), query(1, 1, "b", "ModelLatency")]
    request = {"MetricDataQueries": queries, "StartTime": start, "EndTime": end}
    with Stubber(client) as stub:
        stub.add_response("get_metric_data", {"MetricDataResults": [
            {"Id": "q0_0", "Values": [2.0, 3.0]}, {"Id": "q0_1", "Values": [1000.0]}, {"Id": "q1_0", "Values": []}],
            "NextToken": "more"}, request)
        stub.add_response("get_metric_data", {"MetricDataResults": [{"Id": "q0_1", "Values": [500.0]}]},
                          {**request, "NextToken": "more"})
        usage = EndpointMetrics(client).usage(["b", "a", "a"], start, end)
    assert usage == {"a": EndpointUsage(5, 1500.0), "b": EndpointUsage(0, 0.0)}


def test_kaos_cost_prints_jobs_models_and_endpoints_with_the_offline_label(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "width", 200)  # no cell folded
    answer = {"workspace": "ws", "since": None, "prices": "AWS list prices us-east-1 2026-12-01", "total_usd": 1.5,
              "jobs": [{"id": "train-1", "kind": "train", "status": "COMPLETED", "created_at": "2026-12-01",
                        "usd": 0.0021, "basis": "measured"}],
              "models": [{"id": "model:train-1", "usd": 0.0021, "rolled_up_usd": 0.0031, "truncated": False,
                          "lineage": [{"job": "train-1", "usd": 0.0021}, {"job": "batch-1", "usd": 0.001}]}],
              "endpoints": []}
    with console.capture() as captured:
        print_cost(answer, local=True)
    text = captured.get()
    assert "$1.50 estimated at AWS prices" in text and "$0.002100 (measured, estimated at AWS prices)" in text
    assert "$0.003100" in text and "endpoints" not in text
    with console.capture() as captured:
        print_cost(answer, local=False)
    assert "at AWS list prices" in captured.get() and "estimated" not in captured.get()


def test_the_provenance_tree_shows_each_jobs_cost_and_the_models_rolled_up_cost(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "width", 200)
    graph = {"root": "model:train-1", "nodes": [
        {"id": "model:train-1", "type": "model", "attrs": {}, "cost": {"usd": 0.25, "basis": "measured"}},
        {"id": "job:train-1", "type": "job", "attrs": {}, "cost": {"usd": 0.25, "basis": "measured"}},
        {"id": "snapshot:s", "type": "snapshot", "attrs": {"kind": "data"}},
        {"id": "job:batch-1", "type": "job", "attrs": {}, "cost": {"usd": 0.5, "basis": "elapsed"}}],
        "edges": [{"source": "job:train-1", "rel": "produced", "target": "model:train-1"},
                  {"source": "job:train-1", "rel": "used", "target": "snapshot:s"},
                  {"source": "job:batch-1", "rel": "produced", "target": "snapshot:s"}]}
    with console.capture() as captured:
        console.print(provenance_tree(graph, down=False))
    lines = captured.get().splitlines()
    assert "model:train-1 $0.25 (with its lineage: $0.75, 2 jobs)" in lines[0]
    assert any("job:batch-1 $0.50" in line for line in lines)
