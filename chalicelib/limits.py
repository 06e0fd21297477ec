"""Every limit kaos enforces, in one place; errors name them and docs/limits.md lists them.

Each value is chosen from the AWS limit that forces it, as noted beside it.
"""
from __future__ import annotations

# Workspace names become parts of S3 keys, SageMaker job names (<= 63 chars) and execution names (<= 80 chars).
WORKSPACE_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$"
WORKSPACE_NAME_RULE = (
    "lowercase letters, digits and hyphens; 2-32 characters; must start with a letter and not end with a hyphen"
)

# One presigned PUT may carry at most 5 GiB (S3 single-part upload limit).
MAX_FILE_BYTES = 5 * 1024**3
# A snapshot commit travels in one API request (API Gateway 10 MB, Lambda 6 MB payload); 10,000 entries of
# path + sha256 + size stay under 3 MB even with 200-character paths.
MAX_FILES_PER_SNAPSHOT = 10_000
# S3 keys are at most 1,024 bytes; the snapshot prefix takes up to ~100 of them.
MAX_PATH_CHARS = 900
# Presigned URLs are handed out in pages so one response stays well under the 6 MB Lambda response limit.
MAX_BLOBS_PER_REQUEST = 1_000
# Small missing blobs travel in packs (their bytes concatenated, one presigned PUT each, kept as they are) once
# there are at least PACK_MIN_BLOBS of them: each loose blob costs a PUT and two HEADs, a pack a PUT, a HEAD and a
# GET. A pack holds blobs of at most PACK_BLOB_BYTES each, PACK_MAX_BYTES in all (it is verified in the API
# Lambda's memory, and readers keep whole packs in theirs) and PACK_MAX_BLOBS blobs, so that the packs of a
# 10,000-file snapshot (10 of them) are handed out in one answer and taken by one `complete` well within API
# Gateway's 29 s: taking one is a HEAD, a GET, hashing and ceil(blobs/25) BatchWriteItem of the index.
PACK_MIN_BLOBS = 8
PACK_MAX_BLOBS = 1_000
PACK_BLOB_BYTES = 256 * 1024
PACK_MAX_BYTES = 32 * 1024 * 1024
# SageMaker: at most 100 hyperparameters, keys <= 256 chars, values <= 2,500 chars once JSON-encoded.
MAX_HYPERPARAMETERS = 100
MAX_HYPERPARAMETER_KEY_CHARS = 256
MAX_HYPERPARAMETER_VALUE_CHARS = 2_500
# A params file is carried inside the API request and the Step Functions payload (256 KiB limit).
MAX_PARAMS_BYTES = 64 * 1024
# Request bodies: API Gateway accepts 10 MB, Lambda 6 MB; we keep to 6 MB.
MAX_REQUEST_BYTES = 6 * 1024 * 1024
# Nesting of a JSON request body (objects and arrays): the API's bodies nest 3 levels (params values may add a
# few); refusing deep nesting before parsing keeps the recursive JSON decoder, schema validator and encoder far
# from Python's recursion limit (1,000 levels raise RecursionError).
MAX_JSON_DEPTH = 32
# Page sizes for list routes; DynamoDB Query returns at most 1 MB per page anyway.
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
# Log lines returned per request (CloudWatch GetLogEvents returns at most 10,000 events / 1 MB).
MAX_LOG_LINES = 10_000
# SageMaker StoppingCondition.MaxRuntimeInSeconds may be at most 28 days.
MAX_RUNTIME_SECONDS = 28 * 24 * 3600
# Grid points per submission: 10,000 points run through a Distributed Map (each point a child execution), far
# from the 25,000-event history limit of one Standard execution; the points file is read from S3, not the payload.
MAX_GRID_POINTS = 10_000
# Distributed Map runs at most 10,000 child executions at once.
MAX_PARALLELISM = 1_000
# Members per workspace (each is one row; the cap keeps `members` one page).
MAX_MEMBERS = 100
# Data channels per job (SageMaker allows 20 input channels per training job).
MAX_CHANNELS = 20
