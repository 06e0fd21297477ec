"""The API contract in one place: JSON Schemas of every route's path, query and body, and the OpenAPI document
built from them. Routes validate against these at the edge, so the served document cannot drift from the code."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any
from collections.abc import Callable

from chalicelib import limits
from chalicelib.errors import ValidationFailed

SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "lowercase hex sha256 digest"}
WORKSPACE = {"type": "string", "pattern": limits.WORKSPACE_NAME_PATTERN, "description": limits.WORKSPACE_NAME_RULE}
JOB_ID = {"type": "string", "pattern": "^[a-z]+-[0-9a-f]{24}$", "description": "a job id such as train-<24 hex>"}
NODE_ID = {"type": "string", "pattern": "^((snapshot|environment|job|model|endpoint|capture):[A-Za-z0-9-]{1,80}|"
                                      "version:[a-z0-9-]{1,32}\\.[0-9]{1,6})$",
           "description": "a provenance node id: snapshot:<id>, environment:<id>, job:<id>, model:<job id>, "
                          "endpoint:<name>, capture:<endpoint name> or version:<group>.<number>"}
CHANNEL = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
DIGITS = {"type": "string", "pattern": "^[0-9]{1,6}$", "description": "a positive integer"}
USER = {"type": "string", "minLength": 1, "maxLength": 256, "pattern": "^[A-Za-z0-9+=,.@_:/-]+$",
        "description": "an IAM principal ARN, or a user name in the caller's account"}
TIMESTAMP = {"type": "string"}
NULLABLE_STRING = {"type": ["string", "null"]}


def _object(properties: dict[str, Any], required: list[str] | None = None, extra: bool = False) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required or [],
            "additionalProperties": extra}


CREATE_WORKSPACE = _object({"name": WORKSPACE}, ["name"])
FILE_ENTRY = _object({
    "path": {"type": "string", "minLength": 1, "maxLength": limits.MAX_PATH_CHARS},
    "sha256": SHA256,
    "size": {"type": "integer", "minimum": 0, "maximum": limits.MAX_FILE_BYTES},
    "url": {"type": "string", "pattern": "^(s3|https)://", "maxLength": 2048,
            "description": "a remote file (data only): s3:// objects are pinned by version, https fetched by the "
                           "pipeline"},
    "version": {"type": "string", "maxLength": 1024},
}, ["path"])
COMMIT_SNAPSHOT = _object({
    "kind": {"type": "string", "enum": ["code", "data"]},
    "files": {"type": "array", "items": FILE_ENTRY, "minItems": 1, "maxItems": limits.MAX_FILES_PER_SNAPSHOT,
              "description": f"1 to {limits.MAX_FILES_PER_SNAPSHOT} files"},
}, ["kind", "files"])
RESOURCES = _object({
    "instance_type": {"type": "string", "pattern": r"^ml\.[a-z0-9]+\.[a-z0-9]+$"},
    "max_runtime_seconds": {"type": "integer", "minimum": 1, "maximum": limits.MAX_RUNTIME_SECONDS,
                            "description": f"1 to {limits.MAX_RUNTIME_SECONDS} (SageMaker's 28-day limit)"},
})
SUBMIT_JOB = _object({
    "code": SHA256,
    "data": {"type": "object", "minProperties": 1, "maxProperties": limits.MAX_CHANNELS,
             "propertyNames": {"pattern": CHANNEL}, "additionalProperties": SHA256,
             "description": f"channel name -> data snapshot id, 1 to {limits.MAX_CHANNELS} channels"},
    "params": {"type": "object", "maxProperties": limits.MAX_HYPERPARAMETERS},
    "resources": RESOURCES,
    "framework": {"type": "string", "pattern": r"^[a-z][a-z0-9-]{0,31}(:[A-Za-z0-9][A-Za-z0-9.-]{0,31})?$",
                  "description": "the training image: FRAMEWORK[:VERSION] of kaos's image catalogue (e.g. "
                                 "sklearn:1.2-1; default: the deployment's image)"},
})
SUBMIT_GRID = {**SUBMIT_JOB, "required": ["params"], "properties": {
    **SUBMIT_JOB["properties"],
    "parallelism": {"type": "integer", "minimum": 1, "maximum": limits.MAX_PARALLELISM,
                    "description": f"points trained at once, 1 to {limits.MAX_PARALLELISM}"},
}}
SUBMIT_BATCH_JOB = _object({
    "code": SHA256,
    "data": {**SHA256, "description": "the data snapshot the command processes (KAOS_INPUT_DIR)"},
    "command": {"type": "string", "minLength": 1, "maxLength": 4096,
                "description": "run with /bin/sh -c in the code directory (default: python process.py or main.py)"},
    "max_runtime_seconds": {"type": "integer", "minimum": 60, "maximum": limits.MAX_RUNTIME_SECONDS,
                            "description": f"60 to {limits.MAX_RUNTIME_SECONDS} (AWS Batch attempt timeout)"},
    "per_file": {"type": "boolean", "description": "run the command once per input file (datum); files whose "
                 "(path, content, code, command, image) were processed before reuse their earlier outputs"},
    "glob": {"type": "string", "minLength": 1, "maxLength": 256,
             "description": "with per_file: the input paths that are datums (fnmatch; default *)"},
}, ["code", "data"])
MEMBER = _object({"user": USER}, ["user"])
AUTO_RETRAIN = _object({"enabled": {"type": "boolean"}}, ["enabled"])
INCOMING = _object({"files": {"type": "array", "minItems": 1, "maxItems": limits.MAX_BLOBS_PER_REQUEST,
                              "items": _object({"path": {"type": "string", "minLength": 1,
                                                         "maxLength": limits.MAX_PATH_CHARS},
                                                "size": {"type": "integer", "minimum": 0,
                                                         "maximum": limits.MAX_FILE_BYTES}}, ["path"]),
                              "description": f"1 to {limits.MAX_BLOBS_PER_REQUEST} files"}}, ["files"])
AUTO_RETRAIN_OUT = _object({"workspace": {"type": "string"}, "enabled": {"type": "boolean"},
                            "window_seconds": {"type": "integer"}, "batches": {"type": "array"}},
                           ["workspace", "enabled", "window_seconds", "batches"], extra=True)
INCOMING_URLS = _object({"workspace": {"type": "string"}, "auto_retrain": {"type": "boolean"},
                         "files": {"type": "array", "items": _object(
                             {"path": {"type": "string"}, "key": {"type": "string"}, "url": {"type": "string"}},
                             ["path", "key", "url"])}}, ["workspace", "files"])

# Responses
ERROR = _object({"error": _object({"code": {"type": "string"}, "message": {"type": "string"}},
                                  ["code", "message"])}, ["error"])
WORKSPACE_OUT = _object({"name": {"type": "string"}, "owner": {"type": "string"}, "created_at": TIMESTAMP},
                        ["name", "owner", "created_at"], extra=True)
WORKSPACE_INFO = {**WORKSPACE_OUT, "required": ["name", "owner", "created_at", "snapshots", "jobs", "members"],
                  "properties": {**WORKSPACE_OUT["properties"], "snapshots": {"type": "integer"},
                                 "jobs": {"type": "integer"}, "members": {"type": "integer"}}}
WORKSPACES = _object({"workspaces": {"type": "array", "items": WORKSPACE_OUT}}, ["workspaces"])
KILLED = _object({"name": {"type": "string"}, "deleted_rows": {"type": "integer"},
                  "deleted_objects": {"type": "integer"},
                  "status": {"type": "string", "enum": ["killed", "stopping"],
                             "description": "stopping: stopped jobs have not ended yet; kill again to finish"},
                  "stopped_jobs": {"type": "integer"}, "stopped_grids": {"type": "integer"},
                  "pending": {"type": "array", "items": {"type": "string"},
                              "description": "stopped containers still ending (sagemaker:<name>, batch:<id>)"}},
                 ["name", "deleted_rows", "deleted_objects", "status", "stopped_jobs", "stopped_grids", "pending"])
MISSING = _object({"missing": {"type": "array", "items": _object(
    {"sha256": SHA256, "url": {"type": "string"}}, ["sha256", "url"])}}, ["missing"])
SNAPSHOT = _object({"id": SHA256, "kind": {"type": "string"}, "files": {"type": "integer"},
                    "bytes": {"type": "integer"}, "created_at": TIMESTAMP, "status": {"type": "string"}},
                   ["id", "kind", "files", "bytes"])
PENDING = _object({"id": SHA256, "kind": {"type": "string"}, "status": {"type": "string", "enum": ["pending"]},
                   "missing_count": {"type": "integer"}, "missing": MISSING["properties"]["missing"],
                   "pack": _object({"id": SHA256, "url": {"type": "string"},
                                    "blobs": {"type": "array", "items": SHA256,
                                              "description": "PUT these blobs' bytes concatenated in this order"}},
                                   ["id", "url", "blobs"])},
                  ["id", "status", "missing", "missing_count"])
JOB = _object({
    "id": {"type": "string"}, "workspace": {"type": "string"}, "kind": {"type": "string"},
    "status": {"type": "string", "enum": ["SUBMITTED", "TRAINING", "RUNNING", "COMPLETED", "FAILED", "KILLED"]},
    "fingerprint": {"type": "string"}, "inputs": {"type": "object"}, "environment": {"type": "string"},
    "resources": {"type": "object"}, "metrics": {"type": "object"}, "failure_reason": NULLABLE_STRING,
    "model": NULLABLE_STRING, "history": {"type": "array"}, "created_at": TIMESTAMP,
    "hyperparameters": {"type": ["object", "null"], "description": "the params' values (null for jobs without)"},
    "metric_series": {"type": "object", "description": "min, max, last, count, last_step of each metric logged "
                                                       "over time (chalicelib/metrics.py)"},
    "cost": {"type": "object", "description": "USD at AWS list prices: usd, basis (measured, elapsed or estimate), "
                                              "prices, lines (chalicelib/cost.py)"},
}, ["id", "status", "inputs", "metrics"], extra=True)
JOB_SUBMITTED = {**JOB, "required": [*JOB["required"], "cached"],
                 "properties": {**JOB["properties"], "cached": {"type": "boolean"}}}
GRID = _object({"id": {"type": "string"}, "status": {"type": "string"}, "points": {"type": "integer"},
                "parallelism": {"type": "integer"}, "params": {"type": "object"}, "inputs": {"type": "object"}},
               ["id", "status", "points", "parallelism"], extra=True)
GRID_INFO = {**GRID, "required": [*GRID["required"], "counts", "rows", "page", "pages"], "properties": {
    **GRID["properties"], "counts": {"type": "object"}, "page": {"type": "integer"}, "pages": {"type": "integer"},
    "rows": {"type": "array", "items": _object({"index": {"type": "integer"}, "job": {"type": "string"},
                                                  "status": {"type": "string"}, "params": {"type": "object"},
                                                  "metrics": {"type": "object"}}, ["index", "job", "status"])}}}
JOBS = _object({"jobs": {"type": "array", "items": JOB}, "next": NULLABLE_STRING}, ["jobs", "next"])
LOGS = _object({"job": {"type": "string"}, "status": {"type": "string"}, "next": NULLABLE_STRING,
                "events": {"type": "array", "items": _object(
                    {"timestamp": {"type": "integer"}, "message": {"type": "string"}}, ["timestamp", "message"])}},
               ["job", "status", "events", "next"])
LINEAGE = _object({"root": {"type": "string"}, "direction": {"type": "string"},
                   "nodes": {"type": "array", "items": {"type": "object"}},
                   "edges": {"type": "array", "items": _object(
                       {"source": {"type": "string"}, "rel": {"type": "string"}, "target": {"type": "string"}},
                       ["source", "rel", "target"])},
                   "next": {**NULLABLE_STRING, "description": "cursor of the next page (null: walk complete)"},
                   "requests": {"type": "integer", "description": "DynamoDB requests this page cost"},
                   "cost_usd": {"type": "number", "description": "the cost of the page's job nodes (walking up "
                                "from a model, complete: the model's rolled-up cost)"}},
                  ["root", "direction", "nodes", "edges"])
MEMBERS = _object({"workspace": {"type": "string"}, "members": {"type": "array", "items": _object(
    {"user": {"type": "string"}, "role": {"type": "string"}, "added_at": TIMESTAMP}, ["user", "role"])}},
    ["workspace", "members"])
OPENAPI = {"type": "object"}
DOWNLOAD_ENTRY = _object({"path": {"type": "string"}, "sha256": SHA256, "size": {"type": "integer"},
                          "url": {"type": "string"}}, ["path", "sha256", "size", "url"])
JOB_FILES = _object({
    "job": {"type": "string"}, "status": {"type": "string"},
    "code": {"type": "array", "items": DOWNLOAD_ENTRY},
    "data": {"type": "object", "additionalProperties": {"type": "array", "items": DOWNLOAD_ENTRY}},
    "params": {"type": "object"},
    "model": {**_object({"url": {"type": "string"}, "size": {"type": "integer"}}, ["url", "size"]),
              "type": ["object", "null"], "description": "null until the job has a model"},
}, ["job", "status"])


@dataclass(frozen=True)
class RouteSpec:
    path: str
    method: str
    summary: str
    ok: int
    response: dict[str, Any]
    body: dict[str, Any] | None = None
    query: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: tuple[int, ...] = (400, 403, 404, 409)
    public: bool = False
    accepted: bool = False
    # Request Content-Types the route takes (Chalice answers 415 to others before the view runs); "*/*": any, for a
    # raw body the view checks itself.
    content_types: tuple[str, ...] = ("application/json",)

    @property
    def path_params(self) -> dict[str, dict[str, Any]]:
        names = [part[1:-1] for part in self.path.split("/") if part.startswith("{")]
        return {name: PATH_PARAMS[name] for name in names}


METRICS = _object({
    "job": JOB_ID, "status": {"type": "string"},
    "summary": {"type": "object", "additionalProperties": _object(
        {k: {"type": "number"} for k in ("min", "max", "last", "count", "last_step")},
        ["min", "max", "last", "count", "last_step"])},
    "points": {"type": "array", "items": _object({"metric": {"type": "string"}, "step": {"type": "number"},
                                                  "value": {"type": "number"}}, ["metric", "step", "value"])},
    "next": NULLABLE_STRING}, ["job", "status", "summary", "points", "next"])
PRICED = {"usd": {"type": "number"}, "basis": {"type": "string", "enum": ["measured", "elapsed", "estimate"]}}
COST = _object({
    "workspace": {"type": "string"}, "since": NULLABLE_STRING, "currency": {"type": "string"},
    "prices": {"type": "string"}, "total_usd": {"type": "number"},
    "jobs": {"type": "array", "items": _object({"id": {"type": "string"}, "kind": {"type": "string"},
                                                "status": {"type": "string"}, "created_at": TIMESTAMP, **PRICED},
                                               ["id", "usd", "basis"])},
    "models": {"type": "array", "items": _object({
        "id": {"type": "string"}, "job": {"type": "string"}, "usd": {"type": "number"},
        "rolled_up_usd": {"type": "number"}, "truncated": {"type": "boolean"},
        "lineage": {"type": "array", "items": _object({"job": {"type": "string"}, "usd": {"type": "number"}},
                                                      ["job", "usd"])}}, ["id", "usd", "rolled_up_usd"])},
    "endpoints": {"type": "array", "items": _object({"name": {"type": "string"}, "kind": {"type": "string"},
                                                     "status": {"type": "string"}, **PRICED}, ["name", "usd"])},
    "models_omitted": {"type": "integer", "description": "models beyond the 100 newest, not rolled up (narrow "
                                                         "with since)"},
}, ["workspace", "total_usd", "jobs", "models", "endpoints"])
GRID_ID = {"type": "string", "pattern": "^grid-[0-9a-f]{24}$", "description": "a grid id such as grid-<24 hex>"}
PATH_PARAMS = {"workspace": WORKSPACE, "job": JOB_ID, "node": NODE_ID, "grid": GRID_ID, "snapshot": SHA256}
# --- serving and the model registry (chalicelib/serving.py, chalicelib/registry.py) ---------------------------------
SERVING_NAME = {"type": "string", "pattern": "^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$",
                "description": "1 to 32 of a-z, 0-9 and '-', starting and ending with a letter or digit"}
PATH_PARAMS.update(group=SERVING_NAME, alias=SERVING_NAME, name=SERVING_NAME, version=DIGITS)
MODEL_REFERENCE = {"type": "string", "minLength": 1, "maxLength": 80,
                   "pattern": "^([a-z]+-[0-9a-f]{24}|[a-z0-9-]{1,32}/[0-9]{1,6}|[a-z0-9-]{1,32}@[a-z0-9-]{1,32})$",
                   "description": "a job id, G/VERSION (digits/3) or G@ALIAS (digits@champion)"}
MODEL_OF = _object({"job_id": {"type": "string"}, "group": NULLABLE_STRING, "version": {"type": ["integer", "null"]},
                    "model_sha256": {"type": "string"}}, ["job_id", "group", "version", "model_sha256"])
VERSION_OUT = _object({
    "group": {"type": "string"}, "version": {"type": "integer"}, "job_id": {"type": "string"},
    "status": {"type": "string", "enum": ["PendingManualApproval", "Approved", "Rejected"]},
    "model_data": {"type": "string"}, "model_sha256": {"type": "string"}, "image": {"type": "string"},
    "framework": {"type": "string"}, "created_at": TIMESTAMP, "updated_at": TIMESTAMP,
    "aliases": {"type": "array", "items": {"type": "string"}}}, ["group", "version", "job_id", "status", "aliases"])
ALIASES = {"type": "object", "additionalProperties": {"type": "integer"}}
ENDPOINT = _object({
    "name": {"type": "string"}, "workspace": {"type": "string"},
    "status": {"type": "string", "enum": ["Creating", "Updating", "InService", "Failed", "RollingBack", "Deleting",
                                          "Deleted"]},
    "failure_reason": NULLABLE_STRING, "sagemaker_endpoint": {"type": "string"},
    "kind": {"type": "string", "enum": ["serverless", "realtime"]},
    "memory_mb": {"type": ["integer", "null"]}, "max_concurrency": {"type": ["integer", "null"]},
    "instance_type": NULLABLE_STRING, "instance_count": {"type": ["integer", "null"]},
    "capture_percent": {"type": "integer"}, "model": MODEL_OF,
    "deployments": {"type": "array", "items": _object({
        "deployment": {"type": "string"}, "action": {"type": "string"}, "model": MODEL_OF,
        "status": {"type": "string"}, "started_at": TIMESTAMP, "ended_at": NULLABLE_STRING,
        "failure_reason": NULLABLE_STRING}, ["deployment", "model", "status"])},
    "created_at": TIMESTAMP, "updated_at": TIMESTAMP, "invocations_path": {"type": "string"},
    "cost": {"type": "object", "description": "USD so far at AWS list prices (chalicelib/cost.py)"},
}, ["name", "status", "kind", "model", "deployments", "invocations_path"])
DEPLOY = _object({
    "model": MODEL_REFERENCE, "name": SERVING_NAME,
    "memory_mb": {"type": "integer", "minimum": 1024, "maximum": 6144, "multipleOf": 1024,
                  "description": "serverless memory, 1024 to 6144 MB in 1024 MB steps (default 2048)"},
    "max_concurrency": {"type": "integer", "minimum": 1, "maximum": 200,
                        "description": "serverless concurrent requests, 1 to 200 (default 5)"},
    "instance_type": {"type": "string", "pattern": r"^ml\.[a-z0-9]+\.[a-z0-9]+$",
                      "description": "a real-time endpoint on this instance type (default: serverless)"},
    "instance_count": {"type": "integer", "minimum": 1, "maximum": 10, "description": "real-time instances, 1 to 10"},
    "capture_percent": {"type": "integer", "minimum": 0, "maximum": 100,
                        "description": "data capture sampling, 0 to 100 percent (default 0: off)"},
}, ["model"])

PAGE: dict[str, dict[str, Any]] = {"limit": {**DIGITS, "description": f"page size, 1 to {limits.MAX_PAGE_SIZE}"},
        "cursor": {"type": "string", "maxLength": 2048}}

ROUTES = [
    RouteSpec("/openapi.json", "GET", "This document", 200, OPENAPI, errors=(), public=True),
    RouteSpec("/workspaces", "POST", "Create a workspace (idempotent for its owner)", 201, WORKSPACE_OUT,
              CREATE_WORKSPACE, errors=(400, 403, 409)),
    RouteSpec("/workspaces", "GET", "List the caller's workspaces", 200, WORKSPACES, errors=(403,)),
    RouteSpec("/workspaces/{workspace}", "GET", "Describe a workspace with counts", 200, WORKSPACE_INFO),
    RouteSpec("/workspaces/{workspace}", "DELETE", "Delete exactly this workspace (owner only)", 200, KILLED),
    RouteSpec("/workspaces/{workspace}/members", "GET", "List members", 200, MEMBERS),
    RouteSpec("/workspaces/{workspace}/members", "POST", "Share with a user (owner only)", 200, MEMBERS, MEMBER),
    RouteSpec("/workspaces/{workspace}/members/remove", "POST", "Unshare (owner only)", 200, MEMBERS, MEMBER),
    RouteSpec("/workspaces/{workspace}/snapshots", "POST",
              "Propose a snapshot manifest: committed (201/200), or pending (202) with upload URLs of missing blobs",
              201, SNAPSHOT, COMMIT_SNAPSHOT, accepted=True),
    RouteSpec("/workspaces/{workspace}/snapshots/{snapshot}/complete", "POST",
              "Complete a pending snapshot after uploading its blobs", 201, SNAPSHOT, accepted=True),
    RouteSpec("/workspaces/{workspace}/snapshots/{snapshot}", "GET",
              "Describe a committed snapshot (one lookup: a client that remembers committing it names it by id "
              "instead of resending its manifest)", 200, SNAPSHOT),
    RouteSpec("/workspaces/{workspace}/jobs", "POST", "Submit a training job (cache hit on identical inputs)",
              201, JOB_SUBMITTED, SUBMIT_JOB),
    RouteSpec("/workspaces/{workspace}/batch-jobs", "POST",
              "Submit a batch processing job on AWS Batch; its output becomes a data snapshot (described as the "
              "job's model: snapshot:<id>; read it with the jobs routes)", 201, JOB_SUBMITTED, SUBMIT_BATCH_JOB),
    RouteSpec("/workspaces/{workspace}/jobs", "GET", "List jobs, newest first", 200, JOBS, query=PAGE),
    RouteSpec("/workspaces/{workspace}/jobs/{job}", "GET", "Describe a job", 200, JOB),
    RouteSpec("/workspaces/{workspace}/grids", "POST", "Submit a hyperparameter grid (one job per point)", 201,
              GRID, SUBMIT_GRID),
    RouteSpec("/workspaces/{workspace}/grids/{grid}", "GET", "A grid's points with status and metrics", 200,
              GRID_INFO, query={"sort_by": {"type": "string", "minLength": 1, "maxLength": 256},
                                "desc": {"type": "string", "enum": ["true", "false"]},
                                "limit": DIGITS, "page": DIGITS}),
    RouteSpec("/workspaces/{workspace}/jobs/{job}/kill", "POST", "Stop a running job (state KILLED)", 200, JOB,
              errors=(400, 403, 404, 409)),
    RouteSpec("/workspaces/{workspace}/jobs/{job}/resume", "POST", "Run a FAILED or KILLED job again", 200, JOB,
              errors=(400, 403, 404, 409)),
    RouteSpec("/workspaces/{workspace}/jobs/{job}/reproduce", "POST",
              "Train a COMPLETED job again with exactly its recorded inputs, as a new job that reproduces it (the "
              "same new job on every call), with the comparison of the two models' hashes", 201,
              {**JOB_SUBMITTED, "required": [*JOB_SUBMITTED["required"], "reproduction_of", "comparison"],
               "properties": {**JOB_SUBMITTED["properties"], "reproduction_of": JOB_ID, "comparison": _object({
                   "original": {"type": ["object", "null"]}, "reproduction": {"type": ["object", "null"]},
                   "archive_identical": {"type": ["boolean", "null"]},
                   "content_identical": {"type": ["boolean", "null"]}, "identical": {"type": ["boolean", "null"]},
               }, ["original", "reproduction", "identical"])}}, errors=(400, 403, 404, 409)),
    RouteSpec("/workspaces/{workspace}/jobs/{job}/logs", "GET", "Read a job's training log", 200, LOGS,
              query={"next": {"type": "string", "maxLength": 4096}, "limit": DIGITS}),
    # Metrics logged over time (chalicelib/metrics.py).
    RouteSpec("/workspaces/{workspace}/jobs/{job}/metrics", "GET",
              "Metrics a job logged over time: each one's min/max/last and a page of its points", 200, METRICS,
              query={"metric": {"type": "string", "minLength": 1, "maxLength": 255}, "next": DIGITS,
                     "limit": {**DIGITS, "description": "points per page, 1 to 10000 (default 1000)"}}),
    RouteSpec("/workspaces/{workspace}/jobs/{job}/files", "GET",
              "Presigned download URLs of a job's code, data and model, and its params", 200, JOB_FILES,
              query={"what": {"type": "string", "enum": ["code", "data", "params", "model"],
                              "description": "only this part (default: all)"}}, errors=(400, 403, 404, 413)),
    RouteSpec("/workspaces/{workspace}/lineage/{node}", "GET", "Provenance of a node, up or down", 200, LINEAGE,
              query={"direction": {"type": "string", "enum": ["up", "down", "both"]}, "depth": DIGITS,
                     "limit": {**DIGITS, "description": "nodes per page, 1 to 5000 (default 1000)"},
                     "cursor": {"type": "string", "pattern": "^[0-9a-f]{32}$",
                                "description": "the `next` of the previous page"}}),
    RouteSpec("/workspaces/{workspace}/impact", "GET",
              "Jobs and models downstream of a data snapshot, or of an S3 object referenced by data manifests",
              200, _object({"target": {"type": "string"}, "matched": {"type": "array", "items": {"type": "string"}},
                            "jobs": {"type": "array"}, "models": {"type": "array"}, "snapshots": {"type": "array"},
                            "endpoints": {"type": "array"},
                            "edges": {"type": "array"}, "manifests_scanned": {"type": "integer"},
                            "requests": {"type": "integer"}, "truncated": {"type": "boolean"}},
                           ["target", "matched", "jobs", "models"]),
              query={"target": {"type": "string", "minLength": 1, "maxLength": 2048,
                                "pattern": "^(s3://[^/]+/.*|snapshot:[0-9a-f]{64}|[0-9a-f]{64})$",
                                "description": "s3://bucket/key (or prefix/), snapshot:<sha256> or a sha256"}}),
    # S3-triggered retraining (chalicelib/triggers.py).
    RouteSpec("/workspaces/{workspace}/auto-retrain", "GET",
              "Auto-retrain status and the workspace's recent upload batches", 200, AUTO_RETRAIN_OUT),
    RouteSpec("/workspaces/{workspace}/auto-retrain", "POST",
              "Turn auto-retrain on or off (any member): files uploaded under ws/<ws>/incoming/ then retrain with "
              "the latest code and params on the latest training data plus the files", 200, AUTO_RETRAIN_OUT,
              AUTO_RETRAIN),
    # Serving and the model registry (chalicelib/serving.py, chalicelib/registry.py).
    RouteSpec("/workspaces/{workspace}/models/{group}/versions", "POST",
              "Register a completed training job's model as the group's next version (the same job again: the same "
              "version)", 201, VERSION_OUT, _object({"job_id": JOB_ID}, ["job_id"])),
    RouteSpec("/workspaces/{workspace}/models", "GET", "List model groups", 200,
              _object({"groups": {"type": "array", "items": _object({
                  "group": {"type": "string"}, "latest_version": {"type": "integer"}, "aliases": ALIASES},
                  ["group", "latest_version", "aliases"])}}, ["groups"])),
    RouteSpec("/workspaces/{workspace}/models/{group}", "GET", "A model group's versions, newest first", 200,
              _object({"group": {"type": "string"}, "aliases": ALIASES,
                       "versions": {"type": "array", "items": VERSION_OUT}}, ["group", "aliases", "versions"])),
    RouteSpec("/workspaces/{workspace}/models/{group}/versions/{version}/approval", "POST",
              "Approve or reject a version", 200, VERSION_OUT,
              _object({"status": {"type": "string", "enum": ["Approved", "Rejected"]}}, ["status"])),
    RouteSpec("/workspaces/{workspace}/models/{group}/aliases/{alias}", "PUT",
              "Point an alias at a version (atomic; 'champion' only at an Approved one)", 200,
              _object({"alias": {"type": "string"}, "version": {"type": "integer"},
                       "previous": {"type": ["integer", "null"]}}, ["alias", "version", "previous"]),
              _object({"version": {"type": "integer", "minimum": 1, "maximum": 999999}}, ["version"])),
    RouteSpec("/workspaces/{workspace}/models/{group}/aliases/{alias}", "DELETE", "Remove an alias", 200,
              _object({"alias": {"type": "string"}, "previous": {"type": ["integer", "null"]}},
                      ["alias", "previous"])),
    RouteSpec("/workspaces/{workspace}/endpoints", "POST",
              "Deploy a model behind an endpoint (serverless by default; instance_type: real-time)", 202, ENDPOINT,
              DEPLOY),
    RouteSpec("/workspaces/{workspace}/endpoints", "GET", "List endpoints by name", 200,
              _object({"endpoints": {"type": "array", "items": ENDPOINT}, "next": NULLABLE_STRING},
                      ["endpoints", "next"]),
              query={"limit": PAGE["limit"], "next": SERVING_NAME}),
    RouteSpec("/workspaces/{workspace}/endpoints/{name}", "GET", "Describe an endpoint", 200, ENDPOINT),
    RouteSpec("/workspaces/{workspace}/endpoints/{name}", "DELETE", "Kill an endpoint", 202, ENDPOINT),
    RouteSpec("/workspaces/{workspace}/endpoints/{name}/deployments", "POST",
              "Promote another model onto a live endpoint (real-time: canary with alarm auto-rollback; serverless: "
              "blue/green)", 202, ENDPOINT, _object({"model": MODEL_REFERENCE}, ["model"])),
    RouteSpec("/workspaces/{workspace}/endpoints/{name}/rollback", "POST",
              "Deploy the previous successful model again", 202, ENDPOINT),
    RouteSpec("/workspaces/{workspace}/endpoints/{name}/invocations", "POST",
              "Invoke the model: the raw request body with its Content-Type and Accept, answered with the model's "
              "raw response", 200, {"type": "string", "format": "binary"},
              errors=(400, 403, 404, 406, 409, 413, 415, 424, 504), content_types=("*/*",)),
    RouteSpec("/workspaces/{workspace}/endpoints/{name}/logs", "GET", "Read an endpoint's model server log", 200,
              LOGS, query={"next": {"type": "string", "maxLength": 4096}, "limit": DIGITS}),
    RouteSpec("/workspaces/{workspace}/incoming", "POST",
              "Presigned PUT URLs for files under ws/<ws>/incoming/ (upload straight to S3; with auto-retrain on, "
              "each upload window becomes one derived data snapshot and one job)", 200, INCOMING_URLS, INCOMING),
    # Cost (chalicelib/cost.py, chalicelib/costs.py).
    RouteSpec("/workspaces/{workspace}/cost", "GET",
              "What the workspace's jobs, models (rolled up along their lineage) and endpoints cost, at AWS list "
              "prices", 200, COST, query={"since": {"type": "string", "minLength": 10, "maxLength": 40,
                                                    "description": "only jobs created since this ISO 8601 date or "
                                                                   "date-time"}}),
]
SPECS = {(r.path, r.method): r for r in ROUTES}


@cache
def _validator(kind: str, path: str, method: str) -> Callable[[Any], Any]:
    import fastjsonschema  # compiled once per schema and cached for warm invocations

    spec = SPECS[(path, method)]
    if kind == "body":
        schema = spec.body or {}
    else:
        params = spec.path_params if kind == "path" else spec.query
        schema = _object(params, list(spec.path_params) if kind == "path" else [])
    validate: Callable[[Any], Any] = fastjsonschema.compile(schema)
    return validate


def validate(kind: str, spec: RouteSpec, value: Any) -> Any:
    """Raises ValidationFailed naming the field and the rule it broke."""
    from fastjsonschema import JsonSchemaValueException

    try:
        return _validator(kind, spec.path, spec.method)(value)
    except JsonSchemaValueException as exc:
        where = {"body": "body", "path": "path", "query": "query"}[kind]
        raw = exc.name or "data"
        name = raw.replace("data", where, 1) if raw.startswith("data") else where
        rule = exc.message.split(" must ", 1)[-1]
        description = (exc.definition or {}).get("description") if isinstance(exc.definition, dict) else None
        hint = f" ({description})" if description else ""
        raise ValidationFailed(f"{name.removeprefix('body.')}: must {rule}{hint}") from None


def openapi(server_url: str | None = None) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for spec in ROUTES:
        responses: dict[str, Any] = {
            str(spec.ok): {"description": "OK", "content": {"application/json": {"schema": spec.response}}}
        }
        if spec.ok == 201:
            responses["200"] = {"description": "Already existed (idempotent retry)",
                                "content": {"application/json": {"schema": spec.response}}}
        if spec.accepted:
            responses["202"] = {"description": "Pending: upload the missing blobs, then complete",
                                "content": {"application/json": {"schema": PENDING}}}
        for status in (*spec.errors, *(() if spec.public else (401,)), 500):
            responses[str(status)] = {"description": "Error", "content": {"application/json": {"schema": ERROR}}}
        parameters = [{"name": n, "in": "path", "required": True, "schema": s} for n, s in spec.path_params.items()]
        parameters += [{"name": n, "in": "query", "required": False, "schema": s} for n, s in spec.query.items()]
        operation: dict[str, Any] = {"summary": spec.summary, "parameters": parameters, "responses": responses}
        if spec.body is not None:
            operation["requestBody"] = {"required": True,
                                        "content": {"application/json": {"schema": spec.body}}}
        if not spec.public:
            operation["security"] = [{"sigv4": []}]
        paths.setdefault(spec.path, {})[spec.method.lower()] = operation
    document: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": "kaos API", "version": "1",
                 "description": "Every route except this document requires AWS SigV4 (API Gateway AWS_IAM)."},
        "paths": paths,
        "components": {"securitySchemes": {"sigv4": {"type": "apiKey", "name": "Authorization", "in": "header",
                                                      "x-amazon-apigateway-authtype": "awsSigv4"}}},
    }
    if server_url:
        document["servers"] = [{"url": server_url}]
    return document
