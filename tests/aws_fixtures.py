"""Fixtures of the tests that need no embedded stack: moto's in-process AWS (`mock_aws`) with boto3 clients made by
chalicelib's own AwsClients, and the dynamo-or-memory choice of the repository contract suites. A test module
imports a fixture by its function name (`moto_fixture`); tests ask for it by its fixture name (`moto`)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from chalicelib.adapters import AwsClients
from chalicelib.repositories.workspaces import MemoryWorkspaces


@pytest.fixture(name="aws_env")
def aws_env_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and a region, and no endpoint override (an embedded stack's would win over moto)."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture(name="moto")
def moto_fixture(aws_env: None) -> Iterator[AwsClients]:
    """Clients of moto's in-process AWS, fresh for each test."""
    from moto import mock_aws

    with mock_aws():
        yield AwsClients()


def memory_twin(request: pytest.FixtureRequest) -> MemoryWorkspaces | None:
    """For a contract suite's parametrized fixture: the workspace twin the in-memory repository keeps its rows in,
    or None when the pynamodb implementation was asked for (its table is then set up on moto's DynamoDB, by
    tests.contract_tables' `dynamo_table`)."""
    if request.param == "memory":
        return MemoryWorkspaces()
    request.getfixturevalue("dynamo_table")
    return None
