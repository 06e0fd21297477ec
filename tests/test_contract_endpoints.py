"""The endpoint repository contract, run against pynamodb (moto in process) and the in-memory twin."""
from __future__ import annotations

import pytest

from chalicelib.errors import ConcurrentUpdate, Conflict
from chalicelib.repositories.endpoints import (
    DynamoEndpoints,
    Endpoint,
    EndpointNotFound,
    EndpointRepository,
    MemoryEndpoints,
    NameTaken,
)
from chalicelib.repositories.workspaces import Workspace, WorkspaceRepository
from tests.contract_tables import dynamo_table, with_workspace  # noqa: F401  (fixture)

WS, OWNER, INCARNATION = "ws-e", "arn:aws:iam::123456789012:user/dev", "2026-01-01T00:00:00.000+00:00"


@pytest.fixture(params=["dynamo", "memory"])
def repos(request: pytest.FixtureRequest) -> tuple[WorkspaceRepository, EndpointRepository]:
    return with_workspace(request, MemoryEndpoints, DynamoEndpoints, Workspace(WS, OWNER, INCARNATION))


def _endpoint(name: str = "digits") -> Endpoint:
    return Endpoint(WS, name, "Creating", f"kaos-{WS}-{name}-0000abcd", "serverless",
                    {"memory_mb": 2048, "max_concurrency": 5}, {"job_id": "train-1"}, "t0", OWNER, "t0",
                    [{"deployment": "deploy-1", "status": "InProgress"}])


def test_create_get_and_name_clash(repos: tuple[WorkspaceRepository, EndpointRepository]) -> None:
    _, endpoints = repos
    stored = endpoints.create(_endpoint(), INCARNATION)
    assert stored.version == 1 and endpoints.get(WS, "digits") == stored
    with pytest.raises(NameTaken):
        endpoints.create(_endpoint(), INCARNATION)
    with pytest.raises(EndpointNotFound):
        endpoints.get(WS, "other")


def test_deleted_name_is_reusable(repos: tuple[WorkspaceRepository, EndpointRepository]) -> None:
    _, endpoints = repos
    stored = endpoints.create(_endpoint(), INCARNATION)
    stored.status = "Deleted"
    endpoints.save(stored)
    again = endpoints.create(_endpoint(), INCARNATION)
    assert again.status == "Creating" and endpoints.get(WS, "digits").status == "Creating"


def test_save_is_versioned(repos: tuple[WorkspaceRepository, EndpointRepository]) -> None:
    _, endpoints = repos
    stored = endpoints.create(_endpoint(), INCARNATION)
    racer = endpoints.get(WS, "digits")
    stored.status, stored.failure_reason = "Failed", "boom"
    endpoints.save(stored)
    assert endpoints.get(WS, "digits").failure_reason == "boom"
    racer.status = "InService"
    with pytest.raises(ConcurrentUpdate):
        endpoints.save(racer)
    stored.status, stored.failure_reason = "InService", None
    endpoints.save(stored)
    assert endpoints.get(WS, "digits") == stored and stored.failure_reason is None


def test_create_is_fenced_and_pages_by_name(repos: tuple[WorkspaceRepository, EndpointRepository]) -> None:
    workspaces, endpoints = repos
    for name in ("c", "a", "b-1", "b"):
        endpoints.create(_endpoint(name), INCARNATION)
    page, after = endpoints.page(WS, 2, None)
    assert [e.name for e in page] == ["a", "b"] and after == "b"
    page, after = endpoints.page(WS, 2, after)
    assert [e.name for e in page] == ["b-1", "c"] and after is None
    workspaces.tombstone(workspaces.get(WS), "t1")  # type: ignore[arg-type]
    with pytest.raises(Conflict):
        endpoints.create(_endpoint("d"), INCARNATION)
