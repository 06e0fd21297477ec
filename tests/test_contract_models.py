"""The model registry repository contract, run against pynamodb (moto in process) and the in-memory twin."""
from __future__ import annotations

from dataclasses import replace

import pytest

from chalicelib.errors import ConcurrentUpdate, Conflict
from chalicelib.repositories.models import (
    DynamoModels,
    GroupNotFound,
    MemoryModels,
    ModelRepository,
    ModelVersion,
    VersionNotFound,
)
from chalicelib.repositories.workspaces import Workspace, WorkspaceRepository
from tests.contract_tables import dynamo_table, with_workspace  # noqa: F401  (fixture)

WS, OWNER, INCARNATION = "ws-m", "arn:aws:iam::123456789012:user/dev", "2026-01-01T00:00:00.000+00:00"


@pytest.fixture(params=["dynamo", "memory"])
def repos(request: pytest.FixtureRequest) -> tuple[WorkspaceRepository, ModelRepository]:
    return with_workspace(request, MemoryModels, DynamoModels, Workspace(WS, OWNER, INCARNATION))


def _version(job: str, group: str = "digits") -> ModelVersion:
    return ModelVersion(WS, group, 0, job, "PendingManualApproval", f"s3://b/ws/{WS}/jobs/{job}/model.tar.gz",
                        "a" * 64, "image:1", "sklearn", "c" * 64, "t0", "t0")


def test_register_numbers_versions_once_per_job(repos: tuple[WorkspaceRepository, ModelRepository]) -> None:
    _, models = repos
    first, created = models.register(_version("train-1"), INCARNATION)
    assert created and first.number == 1
    second, created = models.register(_version("train-2"), INCARNATION)
    assert created and second.number == 2
    again, created = models.register(_version("train-1"), INCARNATION)
    assert not created and again == first
    other, _ = models.register(_version("train-1", "other"), INCARNATION)
    assert other.number == 1
    assert [v.number for v in models.versions(WS, "digits")] == [2, 1]
    assert models.version(WS, "digits", 2) == second
    assert [(g.group, g.latest_version) for g in models.groups(WS)] == [("digits", 2), ("other", 1)]
    with pytest.raises(VersionNotFound):
        models.version(WS, "digits", 3)
    with pytest.raises(GroupNotFound):
        models.group(WS, "nope")
    assert models.versions(WS, "nope") == []


def test_register_is_fenced(repos: tuple[WorkspaceRepository, ModelRepository]) -> None:
    workspaces, models = repos
    workspaces.tombstone(workspaces.get(WS), "t1")  # type: ignore[arg-type]
    with pytest.raises(Conflict):
        models.register(_version("train-1"), INCARNATION)
    with pytest.raises(GroupNotFound):
        models.group(WS, "digits")


def test_status_and_aliases(repos: tuple[WorkspaceRepository, ModelRepository]) -> None:
    _, models = repos
    models.register(_version("train-1"), INCARNATION)
    models.register(_version("train-2"), INCARNATION)
    approved = models.set_status(WS, "digits", 1, "Approved", "t1")
    assert approved.status == "Approved" and models.version(WS, "digits", 1).updated_at == "t1"
    with pytest.raises(VersionNotFound):
        models.set_status(WS, "digits", 9, "Approved", "t1")
    assert approved.package_arn is None
    models.set_package(WS, "digits", 1, "arn:aws:sagemaker:us-east-1:123456789012:model-package/kaos-g/1")
    assert models.version(WS, "digits", 1).package_arn.endswith("model-package/kaos-g/1")  # type: ignore[union-attr]
    with pytest.raises(VersionNotFound):
        models.set_package(WS, "digits", 9, "arn")
    group = models.group(WS, "digits")
    racer = replace(group, aliases=dict(group.aliases))
    models.set_alias(group, "champion", 1)
    models.set_alias(group, "challenger", 2)
    assert models.group(WS, "digits").aliases == {"champion": 1, "challenger": 2} == group.aliases
    with pytest.raises(ConcurrentUpdate):  # read before the moves: it loses
        models.set_alias(racer, "champion", 2)
    models.set_alias(group, "champion", None)
    assert models.group(WS, "digits").aliases == {"challenger": 2}
