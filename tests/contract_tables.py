"""Fixtures for the repository contract suites: each suite runs once against the pynamodb implementation (on moto's
in-process DynamoDB, `mock_aws`: no embedded stack) and once against the in-memory twin."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import boto3
import pytest

from chalicelib.repositories.grids import DynamoGrids, GridRepository, MemoryGrids
from chalicelib.repositories.jobs import DynamoJobs, JobRepository, MemoryJobs
from chalicelib.repositories.workspaces import DynamoWorkspaces, MemoryWorkspaces, Workspace, WorkspaceRepository

TABLE = "kaos-contract"


@dataclass(frozen=True)
class Repositories:
    workspaces: WorkspaceRepository
    jobs: JobRepository
    grids: GridRepository


def _reset_connections() -> None:
    """pynamodb caches a connection per model class (and chalicelib one for transactions); moto's mock needs new."""
    from chalicelib import tables
    from chalicelib.repositories import workspaces

    workspaces.connection.cache_clear()
    pending: list[type[Any]] = [tables._Item]
    while pending:
        cls = pending.pop()
        cls._connection = None
        pending += cls.__subclasses__()


@pytest.fixture
def dynamo_table(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The single table (chalicelib.tables' key schema) in moto's in-process DynamoDB."""
    from moto import mock_aws

    for key, value in {"KAOS_TABLE": TABLE, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    with mock_aws():
        _reset_connections()
        boto3.client("dynamodb").create_table(
            TableName=TABLE, BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in ("pk", "sk", "gsi1pk", "gsi1sk")],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            GlobalSecondaryIndexes=[{"IndexName": "gsi1", "Projection": {"ProjectionType": "ALL"},
                                     "KeySchema": [{"AttributeName": "gsi1pk", "KeyType": "HASH"},
                                                   {"AttributeName": "gsi1sk", "KeyType": "RANGE"}]}])
        yield TABLE
        _reset_connections()


def memory_repositories() -> Repositories:
    workspaces = MemoryWorkspaces()
    return Repositories(workspaces, MemoryJobs(workspaces), MemoryGrids(workspaces))


@pytest.fixture(params=["dynamo", "memory"])
def repos(request: pytest.FixtureRequest) -> Repositories:
    if request.param == "memory":
        return memory_repositories()
    request.getfixturevalue("dynamo_table")
    return Repositories(DynamoWorkspaces(), DynamoJobs(), DynamoGrids())


Twin = TypeVar("Twin")


def with_workspace(request: pytest.FixtureRequest, memory: Callable[[MemoryWorkspaces], Twin],
                   dynamo: Callable[[], Twin], workspace: Workspace) -> tuple[WorkspaceRepository, Twin]:
    """A repository (pynamodb or its twin, as the fixture's param says) beside the workspace repository, with
    `workspace` created: for suites of one repository whose rows are fenced by the workspace."""
    pair: tuple[WorkspaceRepository, Twin]
    if request.param == "memory":
        workspaces = MemoryWorkspaces()
        pair = (workspaces, memory(workspaces))
    else:
        request.getfixturevalue("dynamo_table")
        pair = (DynamoWorkspaces(), dynamo())
    assert pair[0].create(workspace, workspace.created_at)
    return pair
