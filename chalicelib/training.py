"""Training submissions: a deploy's inputs resolved against the workspace's latest, and the job they name.

The fingerprint (chalicelib.domain.JobSpec) is the identity: submitting the same inputs again is the same job (a
cache hit), whoever submits them (the API, a grid point, auto-retrain or a reproduction). Everything that goes
into it is decided here, from the inputs alone or from settings read at submission: a grid records the
environment and resources it resolved, so its points (created later by another Lambda) get exactly the
fingerprint the same single job would have.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chalicelib import environments
from chalicelib.config import Settings
from chalicelib.domain import (JobSpec, Resources, is_grid, now, params_manifest, parse_params, validate_channel,
                               validate_sha256)
from chalicelib.errors import ValidationFailed
from chalicelib.lifecycle import Jobs
from chalicelib.repositories.jobs import Job, describe
from chalicelib.repositories.snapshots import LatestInputs, SnapshotRepository
from chalicelib.snapshots import Snapshots

# SageMaker ResourceConfig of every training job: one instance, 30 GB of volume (the fingerprint records them).
INSTANCE_COUNT = 1
VOLUME_GB = 30


@dataclass(frozen=True)
class Inputs:
    """A submission's inputs after filling the unspecified ones from the workspace's latest."""

    code: str
    data: tuple[tuple[str, str], ...]
    params: dict[str, Any]
    resources: dict[str, Any]
    sources: dict[str, str]
    # The training image; "" means the deployment's (settings.training_image), read at submission.
    environment: str = ""
    # Reproductions only (chalicelib/reproduce.py): the original's job id.
    reproduces: str = ""


def snapshot_ref(snapshots: Snapshots, workspace: str, value: Any, kind: str, field: str) -> str:
    """A snapshot id the workspace holds, of this kind (ValidationFailed or NotFound naming `field`)."""
    snapshot_id = validate_sha256(value, field)
    snapshots.get(workspace, snapshot_id, kind, field)
    return snapshot_id


class Training:
    def __init__(self, *, settings: Settings, jobs: Jobs, snapshots: Snapshots,
                 snapshot_repository: SnapshotRepository) -> None:
        self._settings = settings
        self._jobs = jobs
        self._snapshots = snapshots
        self._latest = snapshot_repository

    def submit(
        self, workspace: str, incarnation: str, user: str, request: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """Creates the job for these inputs, or returns the existing one: the fingerprint is the identity."""
        inputs = self.resolve_inputs(workspace, request)
        if is_grid(inputs.params):
            raise ValidationFailed("params: list values make a grid; submit grids to /workspaces/{ws}/grids")
        job, created = self.deploy(workspace, incarnation, user, inputs)
        return {**describe(job), "sources": inputs.sources}, created

    def deploy(self, workspace: str, incarnation: str, user: str, inputs: Inputs) -> tuple[Job, bool]:
        """Creates (or finds) the job, starts its pipeline and makes its inputs the workspace's latest."""
        job, created = self.create(workspace, incarnation, user, inputs, inputs.params)
        self._jobs.start(job)
        self.remember_inputs(workspace, inputs)
        return job, created

    def resolve_inputs(self, workspace: str, request: dict[str, Any]) -> Inputs:
        """Any subset of code, data and params: what is not given is the workspace's latest of that kind."""
        latest = self._latest.latest_inputs(workspace)
        sources: dict[str, str] = {}

        def pick(name: str) -> Any:
            if request.get(name) is not None:
                sources[name] = "given"
                return request[name]
            if latest is not None and getattr(latest, name) is not None:
                sources[name] = "latest"
                return getattr(latest, name)
            return None

        code, data, params = pick("code"), pick("data"), pick("params")
        if code is None or data is None:
            missing = "code" if code is None else "data"
            raise ValidationFailed(f"{missing}: required on a workspace's first deploy (later ones reuse the latest)")
        if params is None:
            sources["params"] = "default"
            params = {}
        code_id = snapshot_ref(self._snapshots, workspace, code, "code", "code")
        channels = tuple(sorted(
            (validate_channel(name, f"data.{name}"),
             snapshot_ref(self._snapshots, workspace, sid, "data", f"data.{name}"))
            for name, sid in data.items()
        ))
        return Inputs(code_id, channels, parse_params(params), request.get("resources") or {}, sources,
                      environment=self.framework_image(request.get("framework")))

    def framework_image(self, framework: str | None) -> str:
        """The image of a chosen "framework[:version]" in the deployment's region (that of its default image);
        "" (none chosen) keeps the deployment's default image."""
        if not framework:
            return ""
        name, _, version = framework.partition(":")
        try:
            return environments.lookup(name, version or None).image_uri(
                environments.region_of(self._settings.training_image))
        except environments.UnknownFramework as error:
            raise ValidationFailed(f"framework: {error}") from error

    def remember_inputs(self, workspace: str, inputs: Inputs) -> None:
        """Makes the inputs the workspace's latest. A grid's list-valued params are not one job's params: after a
        grid, the latest params stay what they were (a later deploy or auto-retrain reuses those)."""
        params = inputs.params
        if is_grid(params):
            previous = self._latest.latest_inputs(workspace)
            params = previous.params if previous is not None else {}
        self._latest.set_latest_inputs(workspace, LatestInputs(inputs.code, dict(inputs.data), params, now()))

    def resources(self, wanted: dict[str, Any]) -> dict[str, Any]:
        """The full SageMaker resources of a job: what the submission asked for, the deployment's defaults for the
        rest (read only when missing, so a grid point's Lambda, handed full resources, reads no setting)."""
        return Resources(
            instance_type=wanted["instance_type"] if "instance_type" in wanted
            else self._settings.training_instance_type,
            instance_count=wanted.get("instance_count", INSTANCE_COUNT), volume_gb=wanted.get("volume_gb", VOLUME_GB),
            max_runtime_seconds=wanted["max_runtime_seconds"] if "max_runtime_seconds" in wanted
            else self._settings.training_max_runtime_seconds,
        ).as_dict()

    def environment(self, inputs: Inputs) -> str:
        return inputs.environment or self._settings.training_image

    def create(
        self, workspace: str, incarnation: str, user: str, inputs: Inputs, params: dict[str, Any]
    ) -> tuple[Job, bool]:
        """The job row for one point of inputs (written once: a conditional put on the fingerprint)."""
        manifest, body = params_manifest(params)
        params_snapshot = self._snapshots.put_small(workspace, manifest, {manifest.files[0].sha256: body}, user)
        spec = JobSpec(
            workspace=workspace, incarnation=incarnation, kind="train", code=inputs.code, data=inputs.data,
            params=params_snapshot["id"], environment=self.environment(inputs),
            resources=Resources(**self.resources(inputs.resources)), reproduces=inputs.reproduces,
        )
        return self._jobs.register(spec, incarnation, user, inputs.sources, hyperparameters=params)
