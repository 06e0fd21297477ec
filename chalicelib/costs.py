"""Costs of a workspace (GET /workspaces/{ws}/cost) and priced lineage (GET /workspaces/{ws}/lineage/{node}).

A job's own cost is part of its answer (chalicelib/cost.py, `describe`). A model's cost rolls up along its lineage:
the job that produced it plus every job upstream of it, i.e. the batch jobs that produced its data, theirs, and
so on; a job reached along two paths counts once. The walk is the provenance walk (one Query per node), so the
cost of the answer grows with the lineage, not with the workspace.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib.adapters import EndpointMetrics, EndpointUsage
from chalicelib.cost import endpoint_cost, prices, serverless_seconds, total
from chalicelib.errors import ValidationFailed
from chalicelib.provenance import MAX_LIMIT, Provenance
from chalicelib.repositories.endpoints import Endpoint, EndpointNotFound, EndpointRepository
from chalicelib.repositories.jobs import Job, JobRepository, describe

# Jobs read per page while summing a workspace (the repository's largest page).
PAGE = 200
# Models rolled up per answer, newest first: each is a provenance walk (a few Queries per level of its lineage), so
# an answer stays within API Gateway's 29 s whatever the workspace holds; `--since` narrows to the rest.
MAX_ROLLUPS = 100


def parse_since(since: str | None) -> datetime | None:
    """`since` as an aware datetime: an ISO 8601 date or date-time (UTC unless it names its offset)."""
    if not since:
        return None
    try:
        parsed = datetime.fromisoformat(since)
    except ValueError:
        raise ValidationFailed("since: must be an ISO 8601 date or date-time, such as 2026-12-01 or "
                               "2026-12-01T10:00:00Z") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _job_of(node: dict[str, Any]) -> str | None:
    """The job whose cost a node carries: a job node's own, a model node's producing job (model:<job id>)."""
    kind, _, rest = str(node["id"]).partition(":")
    return rest if kind in ("job", "model") else None


class Costs:
    def __init__(self, *, jobs: JobRepository, provenance: Provenance, endpoints: EndpointRepository,
                 meter: EndpointMetrics) -> None:
        self._jobs = jobs
        self._provenance = provenance
        self._endpoints = endpoints
        self._meter = meter

    def workspace(self, workspace: str, since: str | None) -> dict[str, Any]:
        """Every job created since `since` with its cost, each model with its own and rolled-up cost, the total."""
        start = parse_since(since)
        jobs = self._jobs_since(workspace, start)
        by_id = {job.job_id: job for job in jobs}
        rows = [{"id": job.job_id, "kind": job.kind, "status": job.status, "created_at": job.created_at,
                 **_summary(describe(job)["cost"])} for job in jobs]
        trained = [job for job in jobs if job.kind == "train" and job.model_uri]
        models = [self._model(workspace, job, by_id) for job in trained[:MAX_ROLLUPS]]
        every = self._all_endpoints(workspace)
        costs = endpoint_costs(every, self._meter)
        endpoints = [{"name": e.name, "kind": e.kind, "status": e.status, **_summary(costs[e.name])} for e in every]
        return {
            "workspace": workspace, "since": start.isoformat() if start else None, "currency": "USD",
            "prices": f"AWS list prices {prices().region} {prices().date}",
            "total_usd": total(rows + endpoints), "jobs": rows, "models": models, "endpoints": endpoints,
            "models_omitted": max(0, len(trained) - MAX_ROLLUPS),
        }

    def _endpoints_of(self, workspace: str, nodes: list[dict[str, Any]]) -> list[Endpoint]:
        """The endpoint rows of a walk's endpoint nodes (a node whose row is gone has no cost to show)."""
        found = []
        for n in nodes:
            if n["type"] == "endpoint":
                try:
                    found.append(self._endpoints.get(workspace, str(n["id"]).partition(":")[2]))
                except EndpointNotFound:
                    continue
        return found

    def _all_endpoints(self, workspace: str) -> list[Endpoint]:
        found: list[Endpoint] = []
        after: str | None = None
        while True:
            page, after = self._endpoints.page(workspace, PAGE, after)
            found += page
            if not after:
                return found

    def _jobs_since(self, workspace: str, start: datetime | None) -> list[Job]:
        """Newest first, stopping at the first job older than `start`."""
        found: list[Job] = []
        cursor: str | None = None
        while True:
            page, cursor = self._jobs.page(workspace, PAGE, cursor)
            for job in page:
                if start is not None and datetime.fromisoformat(job.created_at) < start:
                    return found
                found.append(job)
            if not cursor:
                return found

    def _model(self, workspace: str, job: Job, known: dict[str, Job]) -> dict[str, Any]:
        rolled = self.rollup(workspace, f"model:{job.job_id}", known)
        return {"id": f"model:{job.job_id}", "job": job.job_id, "usd": describe(job)["cost"]["usd"], **rolled}

    def rollup(self, workspace: str, node: str, known: dict[str, Job] | None = None) -> dict[str, Any]:
        """The cost of every job upstream of `node` (itself included when it is a job or a model)."""
        walk = self._provenance.lineage(workspace, node, "up", None, MAX_LIMIT)
        ids = sorted({job_id for n in walk["nodes"] if n["type"] == "job" and (job_id := _job_of(n))})
        jobs = self._read(workspace, ids, known or {})
        costs = {job_id: describe(jobs[job_id])["cost"] for job_id in ids if job_id in jobs}
        return {"rolled_up_usd": total(list(costs.values())),
                "lineage": [{"job": job_id, "usd": cost["usd"]} for job_id, cost in costs.items()],
                "truncated": walk["next"] is not None}

    def _read(self, workspace: str, ids: list[str], known: dict[str, Job]) -> dict[str, Job]:
        missing = [job_id for job_id in ids if job_id not in known]
        return {**{i: known[i] for i in ids if i in known}, **self._jobs.many(workspace, missing)}

    def lineage(self, workspace: str, node: str, direction: str, depth: int | None, limit: int | None,
                cursor: str | None) -> dict[str, Any]:
        """The provenance walk with a `cost` on each job node, each model node (its producing job's) and each
        endpoint node, and `cost_usd`: the sum over the job and endpoint nodes of the page (upstream of a model,
        whole: its rolled-up cost)."""
        answer = self._provenance.lineage(workspace, node, direction, depth, limit, cursor)
        ids = sorted({job_id for n in answer["nodes"] if (job_id := _job_of(n))})
        jobs = self._read(workspace, ids, {})
        costs = {f"job:{job_id}": describe(job)["cost"] for job_id, job in jobs.items()}
        costs |= {f"endpoint:{name}": cost for name, cost in endpoint_costs(
            self._endpoints_of(workspace, answer["nodes"]), self._meter).items()}
        on_page: list[dict[str, Any]] = []
        for n in answer["nodes"]:
            cost = costs.get(n["id"]) or costs.get(f"job:{_job_of(n)}")
            if cost is not None:
                n["cost"] = _summary(cost)
                if n["type"] in ("job", "endpoint"):
                    on_page.append(cost)
        answer["cost_usd"] = total(on_page)
        return answer


def endpoint_cost_of(endpoint: Endpoint, at: datetime | None = None,
                     usage: EndpointUsage | None = None) -> dict[str, Any]:
    """An endpoint's cost from its creation until its deletion (or `at`, now by default). `usage`: its invocations
    as CloudWatch reports them (endpoint_costs reads them); without it, serverless inference is `unmetered`.
    Serverless data processed ($0.016 per GB in and out) stays unmetered: SageMaker publishes no payload metric."""
    deleted = endpoint.status in ("Deleting", "Deleted")
    end = datetime.fromisoformat(endpoint.updated_at) if deleted else (at or datetime.now(UTC))
    hours = max(0.0, (end - datetime.fromisoformat(endpoint.created_at)).total_seconds() / 3600)
    settings = endpoint.settings
    measured = usage or EndpointUsage()
    answer = endpoint_cost(kind=endpoint.kind, instance_type=settings.get("instance_type"),
                           instance_count=int(settings.get("instance_count") or 1), hours=hours,
                           memory_mb=int(settings.get("memory_mb") or 0), requests=measured.invocations,
                           inference_seconds=serverless_seconds(measured.invocations, measured.model_latency_us),
                           metered=usage is not None)
    if endpoint.kind != "realtime":
        answer["unmetered"] = ["serverless data processed"] + ([] if usage else ["serverless inference GB-seconds"])
    return answer


def endpoint_costs(endpoints: Sequence[Endpoint], meter: EndpointMetrics,
                   at: datetime | None = None) -> dict[str, dict[str, Any]]:
    """Each endpoint's cost (by name) with its invocations read from CloudWatch in one pass, from the first
    creation (to the minute: CloudWatch's resolution) to the next minute."""
    if not endpoints:
        return {}
    end = at or datetime.now(UTC)
    start = min(datetime.fromisoformat(e.created_at) for e in endpoints).replace(second=0, microsecond=0)
    usage = meter.usage([e.sagemaker_endpoint for e in endpoints], start,
                        end.replace(second=0, microsecond=0) + timedelta(minutes=1))
    return {e.name: endpoint_cost_of(e, end, usage.get(e.sagemaker_endpoint)) for e in endpoints}


def _summary(cost: dict[str, Any]) -> dict[str, Any]:
    return {"usd": cost["usd"], "basis": cost["basis"]}
