"""What a job, a model and an endpoint cost, at the AWS list prices of chalicelib/prices.json: pure arithmetic.

A job's cost is its compute plus the pipeline that ran it:
- training: `BillableTimeInSeconds x InstanceCount x` the instance's hourly price, as SageMaker bills it (with managed
  spot training BillableTimeInSeconds < TrainingTimeInSeconds, and the difference at the same price is the saving);
- batch: Fargate's vCPU-hours and GB-hours of the job definition (1 vCPU, 2 GiB; its ephemeral storage is the free
  default 20 GiB), billed per second with a one-minute minimum;
- the pipeline: Step Functions state transitions, the task Lambdas' requests and GB-seconds, the DynamoDB writes.

Three bases, from best to worst, named in every answer (`basis`):
- `measured`: the numbers AWS reported (BillableTimeInSeconds), recorded by the Record task on the job row (`usage`);
- `elapsed`: the job ended without a measurement (killed, failed before training, batch jobs): the interval between
  Prepare's end and the job's end, an upper bound of the compute time;
- `estimate`: the job has not ended: the instance price x the max runtime, the upper bound a user commits to.

State transitions are counted along the path the job's state machine takes (cdk/training.py, cdk/batch.py, checked
against the synthesized definition by tests/test_cdk_cost.py) rather than read from the execution history: the
history costs a GetExecutionHistory per job and a permission on every execution, and for these linear machines it
holds the same count. Retries of a task add transitions the path does not show; at $0.000025 each they are noise.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

PRICES_FILE = Path(__file__).with_name("prices.json")
SECONDS_PER_HOUR = 3600
GIB = 1024
# Answers keep nano-dollars: a job's requests cost fractions of a micro-dollar (the total sums unrounded lines).
DIGITS = 9


@dataclass(frozen=True)
class Pipeline:
    """The fixed work of one run of a job's state machine: states entered on success and on failure, and the task
    Lambdas invoked (component, memory MB, timeout s), in order."""

    transitions_success: int
    transitions_failure: int
    lambdas: tuple[tuple[str, int, int], ...]


# Training: Prepare -> Train -> RecordSuccess -> Trained. Batch: Prepare -> AnythingToRun? (Choice) -> Run ->
# RecordSuccess -> Processed. A failure leaves at the failing state for RecordFailure -> <Fail state>: the longest
# (RecordSuccess fails) is counted, an upper bound.
PIPELINES = {
    "train": Pipeline(transitions_success=4, transitions_failure=5,
                      lambdas=(("prepare_training", 512, 300), ("record_outcome", 512, 120))),
    "batch": Pipeline(transitions_success=5, transitions_failure=6,
                      lambdas=(("prepare_batch", 512, 300), ("record_batch", 1024, 900))),
}
# Batch jobs run the job definition of cdk/batch.py (tests/test_cdk_cost.py checks it): 1 vCPU, 2 GiB of memory,
# Fargate's default ephemeral storage, whose 20 GiB are free, and a public IPv4 address (no NAT gateway).
FARGATE_VCPU = 1.0
FARGATE_MEMORY_GB = 2.0
FARGATE_PUBLIC_IP = True
FARGATE_MINIMUM_SECONDS = 60
# DynamoDB write request units of a job besides its status changes: the job and environment nodes, the `used` edge
# pair, the model (or output snapshot) node and `produced` pair, each row under 1 KB (1 unit), plus the input
# snapshots' node and edge pair each. A status change is one conditional update (2 units: job rows pass 1 KB once
# the history grows; the fenced end is a transaction, which DynamoDB bills twice).
WRITES_PER_INPUT = 3
WRITES_FIXED = 7
WRITES_PER_STATUS = 2


@dataclass(frozen=True)
class Line:
    """One priced quantity: `quantity` of `unit` at `price` USD each."""

    item: str
    quantity: float
    unit: str
    price: float

    @property
    def usd(self) -> float:
        return self.quantity * self.price

    def document(self) -> dict[str, Any]:
        return {"item": self.item, "quantity": round(self.quantity, DIGITS), "unit": self.unit,
                "usd": round(self.usd, DIGITS)}


@dataclass(frozen=True)
class Prices:
    date: str
    region: str
    training_hour: dict[str, float]
    hosting_hour: dict[str, float]
    unit: dict[str, float]

    @classmethod
    def parse(cls, document: dict[str, Any]) -> Prices:
        return cls(str(document["date"]), str(document["region"]),
                   {k: float(v) for k, v in document["training_hour"].items()},
                   {k: float(v) for k, v in document["hosting_hour"].items()},
                   {k: float(v) for k, v in document["unit"].items()})

    def hourly(self, table: dict[str, float], instance_type: str) -> float:
        """An instance type outside the table costs nothing here rather than failing a job's answer; the answer's
        `unpriced` names it."""
        return table.get(instance_type, 0.0)


@cache
def prices() -> Prices:
    return Prices.parse(json.loads(PRICES_FILE.read_text()))


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return max(0.0, (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds())


def training_lines(p: Prices, instance_type: str, count: int, billable_seconds: float,
                   training_seconds: float | None = None) -> tuple[list[Line], float]:
    """SageMaker training: the billed instance-hours, and the managed-spot saving (time trained but not billed)."""
    hourly = p.hourly(p.training_hour, instance_type)
    line = Line(f"SageMaker training {instance_type}", billable_seconds * count / SECONDS_PER_HOUR,
                "instance-hour", hourly)
    saved = 0.0
    if training_seconds is not None and training_seconds > billable_seconds:
        saved = (training_seconds - billable_seconds) * count / SECONDS_PER_HOUR * hourly
    return [line], saved


def fargate_lines(p: Prices, seconds: float) -> list[Line]:
    hours = max(seconds, FARGATE_MINIMUM_SECONDS) / SECONDS_PER_HOUR
    lines = [Line("Fargate vCPU", FARGATE_VCPU * hours, "vCPU-hour", p.unit["fargate_vcpu_hour"]),
             Line("Fargate memory", FARGATE_MEMORY_GB * hours, "GB-hour", p.unit["fargate_gb_hour"])]
    if FARGATE_PUBLIC_IP:
        lines.append(Line("Public IPv4 address", hours, "address-hour", p.unit["public_ipv4_hour"]))
    return lines


def pipeline_lines(p: Prices, transitions: int, lambda_gb_seconds: float, invocations: int,
                   writes: int) -> list[Line]:
    return [
        Line("Step Functions transitions", transitions, "transition", p.unit["step_functions_transition"]),
        Line("Lambda requests", invocations, "request", p.unit["lambda_request"]),
        Line("Lambda duration", lambda_gb_seconds, "GB-second", p.unit["lambda_gb_second"]),
        Line("DynamoDB writes", writes, "write request unit", p.unit["dynamodb_write_unit"]),
    ]


def _lambda_gb_seconds(pipeline: Pipeline, durations_ms: list[float] | None) -> float:
    """Measured durations (billed per millisecond, rounded up) at each task Lambda's memory, or their timeouts."""
    if durations_ms is None:
        return sum(memory / GIB * timeout for _, memory, timeout in pipeline.lambdas)
    return sum(memory / GIB * math.ceil(ms) / 1000
               for (_, memory, _), ms in zip(pipeline.lambdas, durations_ms, strict=False))


def job_cost(*, kind: str, status: str, resources: dict[str, Any], inputs: int, history: int,
             started_at: str | None, ended_at: str | None, usage: dict[str, Any] | None,
             attempts: Sequence[dict[str, Any]] = (), p: Prices | None = None) -> dict[str, Any]:
    """The `cost` of a job's answer (GET /jobs/{job}): total USD, basis, lines and the prices' date. A resumed
    job's earlier `attempts` (what each ran and consumed, kept by the resume) are one line each."""
    p = p or prices()
    usage = usage or {}
    pipeline = PIPELINES.get(kind, PIPELINES["train"])
    ended = status in ("COMPLETED", "FAILED", "KILLED")
    elapsed = _seconds(started_at, ended_at)
    saved = 0.0
    if "billable_seconds" in usage:
        basis, seconds = "measured", float(usage["billable_seconds"])
    elif ended:
        basis, seconds = "elapsed", elapsed or 0.0
    else:
        basis, seconds = "estimate", float(resources.get("max_runtime_seconds", 0))
    if kind == "batch":
        compute = fargate_lines(p, seconds) if seconds else []
    else:
        compute, saved = training_lines(p, str(resources.get("instance_type", "")),
                                        int(resources.get("instance_count", 1)), seconds,
                                        usage.get("training_seconds"))
    transitions = pipeline.transitions_success if status != "FAILED" else pipeline.transitions_failure
    durations = usage.get("lambda_ms")
    earlier = [Line(f"attempt {a.get('attempt')} ({a.get('status') or 'FAILED'})", 1, "attempt", job_cost(
        kind=kind, status=str(a.get("status") or "FAILED"), resources=resources, inputs=inputs, history=0,
        started_at=a.get("started_at"), ended_at=a.get("ended_at"), usage=a.get("usage"), p=p)["usd"])
        for a in attempts]
    lines = earlier + compute + pipeline_lines(
        p, transitions, _lambda_gb_seconds(pipeline, durations if ended or durations else None),
        len(pipeline.lambdas), WRITES_FIXED + WRITES_PER_INPUT * inputs + WRITES_PER_STATUS * max(history, 1))
    unpriced = sorted({str(resources.get("instance_type"))} - set(p.training_hour)) if kind != "batch" else []
    return _answer(lines, basis, p, saved=saved, unpriced=unpriced)


def serverless_seconds(invocations: int, model_latency_us: float) -> float:
    """The billed compute time of serverless inference: each request's time in the model (CloudWatch ModelLatency),
    billed per millisecond rounded up. CloudWatch answers the sum, so each request's rounding is counted whole
    (1 ms each): an upper bound by less than 1 ms per request."""
    return (math.ceil(model_latency_us / 1000) + invocations) / 1000 if invocations else 0.0


def endpoint_cost(*, kind: str, instance_type: str | None, instance_count: int, hours: float,
                  memory_mb: int = 0, inference_seconds: float = 0.0, data_gb: float = 0.0, requests: int = 0,
                  metered: bool = False, p: Prices | None = None) -> dict[str, Any]:
    """An endpoint's cost so far: real-time endpoints bill instance-hours while they exist; serverless ones the
    GB-seconds of inference and the data processed (`metered`: `inference_seconds` is what CloudWatch reported).
    Every request also passes API Gateway and the API Lambda."""
    p = p or prices()
    if kind == "realtime":
        lines = [Line(f"SageMaker hosting {instance_type}", hours * instance_count, "instance-hour",
                      p.hourly(p.hosting_hour, str(instance_type)))]
    else:
        lines = [Line("SageMaker serverless inference", memory_mb / GIB * inference_seconds, "GB-second",
                      p.unit["serverless_inference_gb_second"]),
                 Line("SageMaker serverless data processed", data_gb, "GB", p.unit["serverless_inference_data_gb"])]
    lines += [Line("API Gateway requests", requests, "request", p.unit["api_gateway_request"]),
              Line("Lambda requests", requests, "request", p.unit["lambda_request"])]
    unpriced = [str(instance_type)] if kind == "realtime" and instance_type not in p.hosting_hour else []
    # Instance-hours are the endpoint's lifetime; serverless inference is known only when the caller measured it.
    basis = "elapsed" if kind == "realtime" else "measured" if metered else "estimate"
    return _answer(lines, basis, p, unpriced=unpriced)


def _answer(lines: list[Line], basis: str, p: Prices, *, saved: float = 0.0,
            unpriced: list[str] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "usd": round(sum(line.usd for line in lines), DIGITS), "basis": basis,
        "prices": f"AWS list prices {p.region} {p.date}",
        "lines": [line.document() for line in lines if line.quantity],
    }
    if saved:
        answer["spot_savings_usd"] = round(saved, DIGITS)
    if unpriced:
        answer["unpriced"] = unpriced
    return answer


def started() -> float:
    """A task Lambda's start, for `usage`: its duration is billed."""
    return time.monotonic()


def prepared_usage(since: float) -> dict[str, Any]:
    """The usage Prepare records with its status change: its own duration."""
    return {"lambda_ms": [_elapsed_ms(since)]}


def recorded_usage(usage: dict[str, Any] | None, detail: dict[str, Any], since: float) -> dict[str, Any]:
    """The usage Record writes with the job's end: Prepare's duration, Record's own (until this write), and what the
    training reported: the `.sync` result of a completed job, or the DescribeTrainingJob a failure's Cause holds."""
    recorded = dict(usage or {})
    recorded["lambda_ms"] = [*recorded.get("lambda_ms", [])[:1], _elapsed_ms(since)]
    described = detail
    if "BillableTimeInSeconds" not in detail and isinstance(detail.get("Cause"), str):
        try:
            described = json.loads(detail["Cause"])
        except ValueError:
            described = {}
    if isinstance(described, dict) and isinstance(described.get("BillableTimeInSeconds"), int | float):
        recorded["billable_seconds"] = described["BillableTimeInSeconds"]
        if isinstance(described.get("TrainingTimeInSeconds"), int | float):
            recorded["training_seconds"] = described["TrainingTimeInSeconds"]
    return recorded


def _elapsed_ms(since: float) -> int:
    return math.ceil((time.monotonic() - since) * 1000)


def total(costs: list[dict[str, Any]]) -> float:
    """The sum of several answers' totals (a model's lineage, a workspace's jobs)."""
    return round(sum(float(c.get("usd", 0.0)) for c in costs), DIGITS)
