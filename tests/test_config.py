"""Settings fail fast: a component's missing, malformed or undeclared variable is a ConfigError naming it."""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator

import pytest

from chalicelib import config
from chalicelib.errors import ConfigError, ConcurrentUpdate, Conflict, Throttled, Transient, names

# A plausible value for every variable, as CDK would set it.
VALUES = {
    config.BUCKET: "kaos-data",
    config.TABLE: "kaos-table",
    config.TRAINING_STATE_MACHINE_ARN: "arn:aws:states:us-east-1:123456789012:stateMachine:training",
    config.GRID_STATE_MACHINE_ARN: "arn:aws:states:us-east-1:123456789012:stateMachine:grid",
    config.BATCH_STATE_MACHINE_ARN: "arn:aws:states:us-east-1:123456789012:stateMachine:batch",
    config.RETRAIN_STATE_MACHINE_ARN: "arn:aws:states:us-east-1:123456789012:stateMachine:retrain",
    config.TRAINING_IMAGE: "123.dkr.ecr.us-east-1.amazonaws.com/sklearn:1.2-1-cpu-py3",
    config.TRAINING_INSTANCE_TYPE: "ml.m5.large",
    config.TRAINING_MAX_RUNTIME_SECONDS: "86400",
    config.TRAINING_LOG_GROUP: "/aws/sagemaker/TrainingJobs",
    config.TRAINING_LOG_GROUP_ARN: "arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/TrainingJobs",
    config.BATCH_JOB_QUEUE: "arn:aws:batch:us-east-1:123456789012:job-queue/q",
    config.BATCH_JOB_DEFINITION: "arn:aws:batch:us-east-1:123456789012:job-definition/d:1",
    config.BATCH_IMAGE: "python:3.12-slim",
    config.BATCH_LOG_GROUP: "/kaos/batch",
    config.BATCH_MAX_RUNTIME_SECONDS: "86400",
    config.PLATFORM_BUCKETS: "kaos-access-logs",
    config.WORKSPACE_ROLE_PREFIX: "arn:aws:iam::123456789012:role/kaos/workspaces/",
    config.WORKSPACE_ROLE_BOUNDARY: "arn:aws:iam::123456789012:policy/kaos/boundary",
    config.OPENLINEAGE_URL: "",
    config.OPENLINEAGE_FILE: "",
    config.DEPLOYMENT_STATE_MACHINE_ARN: "arn:aws:states:us-east-1:123456789012:stateMachine:deploy",
    config.ENDPOINT_POLL_SECONDS: "5",
}


@pytest.fixture(autouse=True)
def _process_settings() -> Iterator[None]:
    """`load` sets the process settings: each test starts and ends without any."""
    saved = config._loaded
    config._loaded = None
    yield
    config._loaded = saved


def test_every_variable_has_a_setting_and_every_component_declares_known_variables() -> None:
    assert set(VALUES) == set(config._VARIABLES)
    for component, variables in config.COMPONENTS.items():
        assert variables <= set(config._VARIABLES), component


@pytest.mark.parametrize("component", sorted(config.COMPONENTS))
def test_a_component_loads_from_exactly_its_variables(component: str) -> None:
    environ = {name: VALUES[name] for name in config.COMPONENTS[component]}
    loaded = config.load(component, environ)
    assert config.settings() is loaded
    assert loaded.bucket == "kaos-data"


@pytest.mark.parametrize("component", sorted(config.COMPONENTS))
def test_removing_any_variable_fails_the_load_naming_it(component: str) -> None:
    for name in sorted(config.COMPONENTS[component]):
        environ = {n: VALUES[n] for n in config.COMPONENTS[component] if n != name}
        with pytest.raises(ConfigError, match=name) as raised:
            config.load(component, environ)
        assert (raised.value.variable, raised.value.component) == (name, component)
        assert component in str(raised.value)
    assert config._loaded is None  # a failed load leaves no settings behind


def test_malformed_values_fail_the_load() -> None:
    base = {name: VALUES[name] for name in config.COMPONENTS["api"]}
    for name, bad in ((config.TRAINING_MAX_RUNTIME_SECONDS, "a day"), (config.TRAINING_MAX_RUNTIME_SECONDS, "0"),
                      (config.TRAINING_STATE_MACHINE_ARN, ""), (config.BUCKET, "")):
        with pytest.raises(ConfigError, match=f"{name} of api is malformed"):
            config.load("api", {**base, name: bad})


def test_reading_an_undeclared_setting_names_it() -> None:
    environ = {name: VALUES[name] for name in config.COMPONENTS["record_grid"]}
    settings = config.load("record_grid", {**environ, config.TRAINING_IMAGE: "leaks-in"})
    with pytest.raises(ConfigError, match=f"record_grid reads {config.TRAINING_IMAGE}"):
        settings.training_image  # noqa: B018 (the read is the test)


def test_unknown_component() -> None:
    with pytest.raises(ConfigError, match="unknown component 'nope'"):
        config.load("nope", VALUES)


def test_typed_values() -> None:
    settings = config.load("api", VALUES)
    assert settings.training_max_runtime_seconds == 86400
    assert settings.platform_buckets == {"kaos-data", "kaos-access-logs"}


def test_lineage_is_off_when_both_are_empty() -> None:
    environ = {name: VALUES[name] for name in config.COMPONENTS["record_outcome"]}
    assert not config.load("record_outcome", environ).lineage_enabled
    assert config.load("record_outcome", {**environ, config.OPENLINEAGE_FILE: "/tmp/events"}).lineage_enabled


def test_unloaded_process_reads_the_environment_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config.BUCKET, "first")
    monkeypatch.delenv(config.TRAINING_IMAGE, raising=False)
    assert config.settings().bucket == "first"
    monkeypatch.setenv(config.BUCKET, "second")
    assert config.settings().bucket == "second"
    with pytest.raises(ConfigError, match=f"{config.TRAINING_IMAGE} is not set"):
        config.settings().training_image  # noqa: B018


def test_transient_names_are_every_concrete_class() -> None:
    assert names(Transient) == ["ConcurrentUpdate", "Throttled", "Transient"]
    assert ConcurrentUpdate.status == Conflict.status == 409
    assert issubclass(Throttled, Transient)


def test_every_transient_class_lives_in_chalicelib_errors() -> None:
    """CDK lists the retryable error names from chalicelib.errors at synth time (cdk/states.py); a Transient class
    defined in a module CDK does not import would be missing from every Retry and fail the run instead."""
    import chalicelib

    for module in pkgutil.walk_packages(chalicelib.__path__, "chalicelib."):
        importlib.import_module(module.name)
    todo: list[type[Exception]] = [Transient]
    while todo:
        cls = todo.pop()
        assert cls.__module__ == "chalicelib.errors", f"{cls.__module__}.{cls.__name__}"
        todo.extend(cls.__subclasses__())
