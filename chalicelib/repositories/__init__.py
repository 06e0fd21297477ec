"""Repositories: the only code that reaches DynamoDB. One module per aggregate (jobs, grids, workspaces, and H3's
snapshots, provenance and triggers), each with a `Protocol` the services depend on, a pynamodb implementation over
the single table of chalicelib.tables, and an in-memory twin that passes the same contract suite
(tests/test_contract_<name>.py), so services are tested without an emulator. Optimistic-locking and
conditional-check races surface as `chalicelib.errors.Conflict` (HTTP 409), never as pynamodb exceptions."""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

# Requests a repository keeps in flight for one call (the blob index of a new bundle is ⌈n/25⌉ BatchWriteItem, a job's
# input provenance a dozen conditional puts), within the connection pool botocore gives pynamodb (10).
CONCURRENCY = 8
T = TypeVar("T")
R = TypeVar("R")


def in_parallel(work: Callable[[list[T]], R], items: list[T], per_request: int) -> list[R]:
    """`work` on each chunk of `per_request` items, CONCURRENCY chunks at a time (one chunk: on this thread), in
    order; the first failure is raised once every chunk ended."""
    chunks = [items[i:i + per_request] for i in range(0, len(items), per_request)]
    if len(chunks) <= 1:
        return [work(chunk) for chunk in chunks]
    with ThreadPoolExecutor(max_workers=min(CONCURRENCY, len(chunks))) as pool:
        return list(pool.map(work, chunks))
