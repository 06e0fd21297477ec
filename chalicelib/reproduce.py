"""Reproductions: train a completed job again with exactly its recorded inputs, and compare the two models.

A reproduction has the original's code, data and params snapshots, environment (training image) and resources,
so on its own it would be a cache hit of the original (same fingerprint, same job). Its fingerprint document
therefore carries `reproduction_of: <original job id>` (chalicelib.domain.JobSpec.reproduces), which makes it a
job of its own and, reproduced again, always the same job: reproducing is idempotent like submitting. Provenance
links `job:<new> -reproduces-> job:<original>`.

The models are compared by two hashes recorded in their provenance nodes (chalicelib.archive `read_model`):
`sha256` of the model.tar.gz bytes (byte-stable archives locally; SageMaker's own tars are not) and
`content_sha256` over the archive's member names and bytes, which compares on AWS as well.
"""
from __future__ import annotations

from typing import Any

from chalicelib.errors import Conflict, KaosError, NotFound, ValidationFailed
from chalicelib.lifecycle import Jobs
from chalicelib.provenance import Provenance
from chalicelib.repositories.jobs import describe
from chalicelib.snapshots import Snapshots
from chalicelib.training import Inputs, Training
from chalicelib.domain import now

REL = "reproduces"
MODEL_FIELDS = ("uri", "sha256", "content_sha256", "size")


class ReproductionMismatch(KaosError):
    """The reproduction would not have the original's inputs (a bug, never a user error): nothing is started."""

    status = 500
    code = "ReproductionMismatch"


class Reproductions:
    def __init__(self, *, training: Training, jobs: Jobs, snapshots: Snapshots, provenance: Provenance) -> None:
        self._training = training
        self._jobs = jobs
        self._snapshots = snapshots
        self._provenance = provenance

    def reproduce(self, workspace: str, incarnation: str, user: str, job_id: str) -> tuple[dict[str, Any], bool]:
        """The reproduction of `job_id` (created and started the first time; the same job on every later call)
        with the comparison of its model to the original's once it has one."""
        original = self._jobs.get(workspace, job_id)
        if original["kind"] != "train":
            raise ValidationFailed(f"job: {job_id!r} is a {original['kind']} job; only training jobs can be "
                                   "reproduced")
        if original["status"] != "COMPLETED":
            raise Conflict(f"job {job_id!r} is {original['status']}; only a COMPLETED job can be reproduced "
                           "(its model is what the reproduction is compared with)"
                           + ("; wait for it to end" if original["status"] in ("SUBMITTED", "TRAINING")
                              else "; `kaos train resume` runs it again"))
        recorded = original["inputs"]
        params = self._snapshots.read_params(workspace, recorded["params"])
        inputs = Inputs(
            code=recorded["code"], data=tuple(sorted(recorded["data"].items())), params=params,
            resources=dict(original["resources"]), sources={"code": "original", "data": "original",
                                                            "params": "original"},
            environment=original["environment"], reproduces=job_id,
        )
        item, created = self._training.create(workspace, incarnation, user, inputs, params)
        reproduction = describe(item)
        for name in ("inputs", "environment", "resources"):
            if reproduction[name] != original[name]:
                raise ReproductionMismatch(f"the reproduction {item.job_id} of {job_id} would not have the "
                                           f"original's {name}: {reproduction[name]!r} != {original[name]!r}")
        self._provenance.add_edge(workspace, f"job:{item.job_id}", REL, f"job:{job_id}", now())
        # Idempotent by name, as for submissions: a repeated reproduction never starts a second execution.
        self._jobs.start(item)
        return {**reproduction, "cached": not created, "reproduction_of": job_id,
                "comparison": self.compare(workspace, job_id, reproduction)}, created

    def compare(self, workspace: str, original_id: str, reproduction: dict[str, Any]) -> dict[str, Any]:
        """The two models' hashes; `identical` is None until the reproduction has a model (or when the original's
        model was recorded before content hashes and the archives differ)."""
        original = self._model(workspace, original_id)
        new = self._model(workspace, reproduction["id"]) if reproduction["status"] == "COMPLETED" else None
        archive_identical = content_identical = identical = None
        if original is not None and new is not None:
            archive_identical = original["sha256"] == new["sha256"]
            if original.get("content_sha256") and new.get("content_sha256"):
                content_identical = original["content_sha256"] == new["content_sha256"]
            # Equal archives have equal contents; otherwise the contents decide (SageMaker's tars differ anyway).
            identical = True if archive_identical else content_identical
        return {"original": original, "reproduction": new, "archive_identical": archive_identical,
                "content_identical": content_identical, "identical": identical}

    def _model(self, workspace: str, job_id: str) -> dict[str, Any] | None:
        try:
            node = self._provenance.node(workspace, f"model:{job_id}")
        except NotFound:
            return None
        return {k: node["attrs"].get(k) for k in MODEL_FIELDS}
