"""Each component's wiring builds the services its handler uses from exactly the settings the component declares
(chalicelib.config.COMPONENTS): a service that read another component's variable at construction would fail the
cold start of a Lambda that is not configured with it."""
from __future__ import annotations

import pytest

from chalicelib import config
from chalicelib.config import Settings
from chalicelib.wiring import Repositories, Wiring

USES = {
    "api": ("workspaces", "training", "grids", "batch", "jobs", "job_logs", "reproductions", "downloads",
            "snapshots", "provenance", "triggers", "registry", "endpoints"),
    "prepare_deployment": ("endpoints",), "record_deployment": ("endpoints",),
    "prepare_training": ("pipeline",), "record_outcome": ("pipeline",),
    "create_point": ("grids",), "record_grid": ("grids",),
    "prepare_batch": ("batch_pipeline",), "record_batch": ("batch_pipeline",),
    "on_upload": ("triggers",), "process_batch": ("triggers",),
}


def _declared_only(component: str) -> dict[str, str]:
    values = {name: f"arn:aws:states:us-east-1:123456789012:stateMachine:{name}"
              for name in config.COMPONENTS[component]}
    for seconds in (config.TRAINING_MAX_RUNTIME_SECONDS, config.BATCH_MAX_RUNTIME_SECONDS,
                    config.ENDPOINT_POLL_SECONDS):
        if seconds in values:
            values[seconds] = "3600"
    return values


def test_the_components_are_the_handlers() -> None:
    assert set(USES) == set(config.COMPONENTS)


@pytest.mark.parametrize("component", sorted(USES))
def test_a_component_builds_its_services_from_its_own_settings(component: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    settings = Settings(component, _declared_only(component))
    settings.check()
    wiring = Wiring(settings, repositories=Repositories.memory())
    for name in USES[component]:
        assert getattr(wiring, name) is getattr(wiring, name)  # built once
