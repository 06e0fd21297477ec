"""Settings: every environment variable kaos code reads, which component reads which, and fail-fast loading.

CDK is the only writer of these variables: it gives each function exactly `COMPONENTS[<its component>]`
(cdk/lambdas.py), so a function's template lists what its code reads and nothing else. A component is a handler
module of functions/ (`prepare_training`, ...) or `api`, the Chalice app.

At cold start `load(component)` parses every variable the component declares: a missing or malformed one raises
`ConfigError` naming it and the component, so a deployment that forgot a variable fails on its first invocation
instead of starting jobs with an empty image. `settings()` then returns those settings; reading one the component
does not declare raises `ConfigError` too, which keeps COMPONENTS (and so the template) complete.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar, overload

from chalicelib.errors import ConfigError

BUCKET = "KAOS_BUCKET"
TABLE = "KAOS_TABLE"
TRAINING_STATE_MACHINE_ARN = "KAOS_TRAINING_STATE_MACHINE_ARN"
GRID_STATE_MACHINE_ARN = "KAOS_GRID_STATE_MACHINE_ARN"
TRAINING_IMAGE = "KAOS_TRAINING_IMAGE"
TRAINING_INSTANCE_TYPE = "KAOS_TRAINING_INSTANCE_TYPE"
TRAINING_MAX_RUNTIME_SECONDS = "KAOS_TRAINING_MAX_RUNTIME_SECONDS"
TRAINING_LOG_GROUP = "KAOS_TRAINING_LOG_GROUP"
# Batch (processing) jobs: the API starts the state machine; Prepare names the queue and definition.
BATCH_STATE_MACHINE_ARN = "KAOS_BATCH_STATE_MACHINE_ARN"
BATCH_JOB_QUEUE = "KAOS_BATCH_JOB_QUEUE"
BATCH_JOB_DEFINITION = "KAOS_BATCH_JOB_DEFINITION"
BATCH_IMAGE = "KAOS_BATCH_IMAGE"
BATCH_LOG_GROUP = "KAOS_BATCH_LOG_GROUP"
BATCH_MAX_RUNTIME_SECONDS = "KAOS_BATCH_MAX_RUNTIME_SECONDS"
# OpenLineage run events (chalicelib/lineage_events.py): HTTP endpoint base URL and/or a local file; empty = off.
OPENLINEAGE_URL = "KAOS_OPENLINEAGE_URL"
OPENLINEAGE_FILE = "KAOS_OPENLINEAGE_FILE"
# S3-triggered retraining (chalicelib/triggers.py): OnUpload starts the retrain state machine per batch.
RETRAIN_STATE_MACHINE_ARN = "KAOS_RETRAIN_STATE_MACHINE_ARN"
# Buckets of the stack besides the data bucket (comma-separated, e.g. the access-log bucket): remote data manifests
# may not name them (chalicelib/snapshots.py). The data bucket is always one of the platform's buckets.
PLATFORM_BUCKETS = "KAOS_PLATFORM_BUCKETS"
# Per-workspace execution roles (chalicelib/tenancy.py): their ARN prefix (path included) and the boundary.
WORKSPACE_ROLE_PREFIX = "KAOS_WORKSPACE_ROLE_PREFIX"
WORKSPACE_ROLE_BOUNDARY = "KAOS_WORKSPACE_ROLE_BOUNDARY"
TRAINING_LOG_GROUP_ARN = "KAOS_TRAINING_LOG_GROUP_ARN"
# Serving (chalicelib/serving.py): the API starts the deployment state machine; its Prepare task says how long the
# state machine waits between two DescribeEndpoint polls.
DEPLOYMENT_STATE_MACHINE_ARN = "KAOS_DEPLOYMENT_STATE_MACHINE_ARN"
ENDPOINT_POLL_SECONDS = "KAOS_ENDPOINT_POLL_SECONDS"

# Every component builds the ObjectStore, which refuses remote references to any platform bucket.
_STORAGE = frozenset({BUCKET, TABLE, PLATFORM_BUCKETS})
_LINEAGE = frozenset({OPENLINEAGE_URL, OPENLINEAGE_FILE})
# What creating a training job reads (chalicelib/training.py `create`): the API, grid points and auto-retrain all
# create them, and must agree, or the same inputs get different fingerprints.
_TRAINING_JOB = frozenset({TRAINING_IMAGE, TRAINING_INSTANCE_TYPE, TRAINING_MAX_RUNTIME_SECONDS})

COMPONENTS: Mapping[str, frozenset[str]] = {
    "api": _STORAGE | _TRAINING_JOB | {
        TRAINING_STATE_MACHINE_ARN, GRID_STATE_MACHINE_ARN, BATCH_STATE_MACHINE_ARN,
        TRAINING_LOG_GROUP, BATCH_IMAGE, BATCH_MAX_RUNTIME_SECONDS, BATCH_JOB_DEFINITION, PLATFORM_BUCKETS,
        WORKSPACE_ROLE_PREFIX, WORKSPACE_ROLE_BOUNDARY, TRAINING_LOG_GROUP_ARN, DEPLOYMENT_STATE_MACHINE_ARN,
    },
    # Names the workspace role of the job; copies remote data (never from a platform bucket).
    "prepare_training": _STORAGE | _LINEAGE | {WORKSPACE_ROLE_PREFIX, PLATFORM_BUCKETS},
    # Archives the training log beside the model.
    "record_outcome": _STORAGE | _LINEAGE | {TRAINING_LOG_GROUP},
    # Writes the point's job row, whose execution ARN names the training state machine (the map starts it).
    "create_point": _STORAGE | _TRAINING_JOB | {TRAINING_STATE_MACHINE_ARN},
    "record_grid": _STORAGE,
    "prepare_batch": _STORAGE | _LINEAGE | {BATCH_JOB_QUEUE, PLATFORM_BUCKETS},
    "record_batch": _STORAGE | _LINEAGE | {BATCH_LOG_GROUP},
    "on_upload": _STORAGE | {RETRAIN_STATE_MACHINE_ARN},
    "process_batch": _STORAGE | _TRAINING_JOB | {TRAINING_STATE_MACHINE_ARN},
    # Names the workspace role the model runs as; rebuilds a missing code bundle.
    "prepare_deployment": _STORAGE | {WORKSPACE_ROLE_PREFIX, ENDPOINT_POLL_SECONDS},
    # Deletes what a failed deployment created.
    "record_deployment": _STORAGE,
}

T = TypeVar("T")


# ARNs and names are only required to be non-empty: Chalice imports the app (and so loads `api`) while CDK packages
# it, with unresolved tokens standing for them.
def _text(value: str) -> str:
    if not value:
        raise ValueError("it is empty")
    return value


def _optional(value: str) -> str:
    return value


def _seconds(value: str) -> int:
    if not value.isdigit() or int(value) <= 0:
        raise ValueError(f"{value!r} is not a positive number of seconds")
    return int(value)


def _names(value: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in value.split(",") if name.strip())


class _Variable(Generic[T]):
    """A setting: the variable it comes from and how its text is parsed (ValueError: malformed)."""

    def __init__(self, name: str, parse: Callable[[str], T]) -> None:
        self.name, self.parse = name, parse

    @overload
    def __get__(self, settings: None, owner: type[Settings]) -> _Variable[T]: ...

    @overload
    def __get__(self, settings: Settings, owner: type[Settings]) -> T: ...

    def __get__(self, settings: Settings | None, owner: type[Settings]) -> T | _Variable[T]:
        if settings is None:
            return self
        return settings.value(self)


class Settings:
    """The settings of one component, read from the environment it was loaded from (`load`)."""

    bucket = _Variable(BUCKET, _text)
    table = _Variable(TABLE, _text)
    training_state_machine_arn = _Variable(TRAINING_STATE_MACHINE_ARN, _text)
    grid_state_machine_arn = _Variable(GRID_STATE_MACHINE_ARN, _text)
    retrain_state_machine_arn = _Variable(RETRAIN_STATE_MACHINE_ARN, _text)
    training_image = _Variable(TRAINING_IMAGE, _text)
    training_instance_type = _Variable(TRAINING_INSTANCE_TYPE, _text)
    training_max_runtime_seconds = _Variable(TRAINING_MAX_RUNTIME_SECONDS, _seconds)
    # SageMaker writes training logs to one fixed group (/aws/sagemaker/TrainingJobs); CDK passes its name.
    training_log_group = _Variable(TRAINING_LOG_GROUP, _text)
    training_log_group_arn = _Variable(TRAINING_LOG_GROUP_ARN, _text)
    batch_state_machine_arn = _Variable(BATCH_STATE_MACHINE_ARN, _text)
    batch_job_queue = _Variable(BATCH_JOB_QUEUE, _text)
    batch_job_definition = _Variable(BATCH_JOB_DEFINITION, _text)
    batch_image = _Variable(BATCH_IMAGE, _text)
    batch_log_group = _Variable(BATCH_LOG_GROUP, _text)
    batch_max_runtime_seconds = _Variable(BATCH_MAX_RUNTIME_SECONDS, _seconds)
    other_buckets = _Variable(PLATFORM_BUCKETS, _names)
    workspace_role_prefix = _Variable(WORKSPACE_ROLE_PREFIX, _text)
    workspace_role_boundary = _Variable(WORKSPACE_ROLE_BOUNDARY, _text)
    deployment_state_machine_arn = _Variable(DEPLOYMENT_STATE_MACHINE_ARN, _text)
    endpoint_poll_seconds = _Variable(ENDPOINT_POLL_SECONDS, _seconds)
    openlineage_url = _Variable(OPENLINEAGE_URL, _optional)
    openlineage_file = _Variable(OPENLINEAGE_FILE, _optional)

    def __init__(self, component: str, environ: Mapping[str, str]) -> None:
        if component not in COMPONENTS:
            raise ConfigError(f"unknown component {component!r}; the components are {', '.join(sorted(COMPONENTS))}",
                              variable="", component=component)
        self.component = component
        self._declared = COMPONENTS[component]
        # Only what the component declares is kept: nothing else of the process environment can leak in.
        self._environ = {name: environ[name] for name in self._declared if name in environ}

    def value(self, variable: _Variable[T]) -> T:
        """The parsed value of a declared variable; ConfigError if it is undeclared, unset or malformed."""
        name = variable.name
        if name not in self._declared:
            raise ConfigError(f"{self.component} reads {name}, which chalicelib.config.COMPONENTS does not list "
                              f"for it (so its deployment does not set it)", variable=name, component=self.component)
        if name not in self._environ:
            raise ConfigError(f"{name} is not set in the environment of {self.component}, which reads it",
                              variable=name, component=self.component)
        try:
            return variable.parse(self._environ[name])
        except ValueError as exc:
            raise ConfigError(f"{name} of {self.component} is malformed: {exc}", variable=name,
                              component=self.component) from None

    def check(self) -> None:
        """Parses every declared variable, so a missing or malformed one fails now (cold start), not mid-request."""
        for name in sorted(self._declared):
            self.value(_VARIABLES[name])

    @property
    def platform_buckets(self) -> frozenset[str]:
        """Every bucket the stack owns: data kaos holds is referenced by snapshot or model, never by URL."""
        return frozenset((self.bucket, *self.other_buckets))

    @property
    def lineage_enabled(self) -> bool:
        """OpenLineage run events are emitted when an endpoint or a file is configured."""
        return bool(self.openlineage_url or self.openlineage_file)


_VARIABLES: dict[str, _Variable[object]] = {
    v.name: v for v in vars(Settings).values() if isinstance(v, _Variable)
}
_loaded: Settings | None = None


def load(component: str, environ: Mapping[str, str] | None = None) -> Settings:
    """Validates `component`'s variables in `environ` (default: the process environment) and makes the result the
    process settings that `settings()` returns. Raises ConfigError naming the first bad variable and the component."""
    global _loaded
    loaded = Settings(component, os.environ if environ is None else environ)
    loaded.check()
    _loaded = loaded
    return loaded


def settings() -> Settings:
    """The process settings `load` made. Code whose entry point does not load yet gets every variable of the
    process environment, read at call time and parsed on each read (a missing one raises ConfigError)."""
    return _loaded if _loaded is not None else _Unloaded(os.environ)


# Transitional, for entry points that do not call `load` yet: the defaults settings() had before it failed fast.
_UNLOADED_DEFAULTS = {
    TRAINING_INSTANCE_TYPE: "ml.m5.large", TRAINING_MAX_RUNTIME_SECONDS: "86400", BATCH_MAX_RUNTIME_SECONDS: "86400",
    TRAINING_LOG_GROUP: "/aws/sagemaker/TrainingJobs", BATCH_LOG_GROUP: "/aws/batch/job", PLATFORM_BUCKETS: "",
    OPENLINEAGE_URL: "", OPENLINEAGE_FILE: "",
}


class _Unloaded(Settings):
    """Settings of a process that has not called `load`: every variable may be read, the old defaults apply."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.component = "a process that did not load its settings"
        self._declared = frozenset(_VARIABLES)
        self._environ = {**_UNLOADED_DEFAULTS, **{name: environ[name] for name in self._declared if name in environ}}
