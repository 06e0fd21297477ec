"""The model registry: groups of numbered versions of trained models, their approval status and aliases.

A version is a completed training job's model.tar.gz registered into a group (`kaos model register JOB --group G`):
the same job registered again is the same version. Versions start `PendingManualApproval` (SageMaker's Model
Package default when approval is manual) and are approved or rejected. Aliases (`champion`, `challenger`, any
name) point at one version each and move atomically (a versioned write of the group row); `champion` may only
point at an Approved version. Deployments name models by MODEL reference (`resolve`): a job id, `G/VERSION` or
`G@ALIAS`.

Provenance: `version:<group>.<N> -used-> model:<job id>`, so lineage walks from an endpoint through the version
to the job and its inputs, and `impact` walks from data down to the versions and endpoints.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from chalicelib.adapters import Hosting
from chalicelib.domain import canonical_json, now, sha256_hex
from chalicelib.errors import ConcurrentUpdate, Conflict, NotFound, ValidationFailed
from chalicelib.provenance import Provenance
from chalicelib.repositories.jobs import JobRepository
from chalicelib.repositories.models import ModelGroup, ModelRepository, ModelVersion
from chalicelib.repositories.workspaces import Workspace
from chalicelib.tenancy import incarnation_token

NAME_PATTERN = "^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$"
NAME_RULE = "1 to 32 of a-z, 0-9 and '-', starting and ending with a letter or digit"
STATUSES = ("PendingManualApproval", "Approved", "Rejected")
# The alias only an Approved version may carry: what `deploy G@champion` puts in front of users.
GUARDED_ALIAS = "champion"
# Alias moves that lose a race re-read the group and try again, this many times.
ALIAS_ATTEMPTS = 5
# SageMaker resource names: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$.
MAX_SAGEMAKER_NAME = 63
_NAME = re.compile(NAME_PATTERN)
_REFERENCE = re.compile(r"^(?P<group>[a-z0-9-]{1,32})(?:/(?P<number>[0-9]{1,6})|@(?P<alias>[a-z0-9-]{1,32}))$")


class JobNotCompleted(Conflict):
    code = "JobNotCompleted"


class AliasNotFound(NotFound):
    code = "AliasNotFound"


class VersionNotApproved(Conflict):
    code = "VersionNotApproved"


@dataclass(frozen=True)
class ModelRef:
    """A deployable model: what a MODEL reference resolved to."""

    job_id: str
    model_data: str
    model_sha256: str
    image: str
    framework: str
    code: str
    group: str | None = None
    version: int | None = None

    def public(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "group": self.group, "version": self.version,
                "model_sha256": self.model_sha256}

    def document(self) -> dict[str, Any]:
        """Everything the deployment pipeline needs (stored in the endpoint row)."""
        return {**self.public(), "model_data": self.model_data, "image": self.image, "framework": self.framework,
                "code": self.code}

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> ModelRef:
        return cls(document["job_id"], document["model_data"], document["model_sha256"], document["image"],
                   document["framework"], document["code"], document.get("group"), document.get("version"))


def check_name(value: str, field: str) -> str:
    if not _NAME.match(value):
        raise ValidationFailed(f"{field}: must be {NAME_RULE}")
    return value


def framework_of(image: str) -> str:
    """The SageMaker framework container an image is (its inference contract); kaos trains with scikit-learn's
    unless told otherwise, and the offline interpreter stands in for it."""
    repository = image.rsplit("/", 1)[-1].split(":", 1)[0]
    for name, marker in (("pytorch", "pytorch"), ("tensorflow", "tensorflow"), ("xgboost", "xgboost")):
        if marker in repository:
            return name
    return "sklearn"


def fingerprint(value: Any, chars: int) -> str:
    """The first `chars` hex digits of the sha256 of `value`'s canonical JSON."""
    return sha256_hex(canonical_json(value).encode())[:chars]


def hosted_name(workspace: str, incarnation: str, name: str, identity: Any) -> str:
    """`kaos-<incarnation token>-<ws>-<name>-<8 hex of identity>`, cut to SageMaker's 63 characters (the hash keeps
    it unique). The fixed-length token first lets the workspace role's grants name exactly its own resources."""
    readable = f"kaos-{incarnation_token(workspace, incarnation)}-{workspace}-{name}"
    return readable[:MAX_SAGEMAKER_NAME - 9].rstrip("-") + f"-{fingerprint(identity, 8)}"


def version_node(group: str, number: int) -> str:
    return f"version:{group}.{number}"


def describe_version(version: ModelVersion, aliases: dict[str, int]) -> dict[str, Any]:
    return {"group": version.group, "version": version.number, "job_id": version.job_id, "status": version.status,
            "model_data": version.model_data, "model_sha256": version.model_sha256, "image": version.image,
            "framework": version.framework, "created_at": version.created_at, "updated_at": version.updated_at,
            "aliases": sorted(a for a, n in aliases.items() if n == version.number)}


class Registry:
    def __init__(self, *, repository: ModelRepository, jobs: JobRepository, provenance: Provenance,
                 hosting: Hosting) -> None:
        self.repository = repository
        self._jobs = jobs
        self._provenance = provenance
        self._hosting = hosting

    def model_of_job(self, workspace: str, job_id: str) -> ModelRef:
        """The model a COMPLETED training job produced; JobNotCompleted for any other job (NotFound if none)."""
        job = self._jobs.get(workspace, job_id)
        if job.status != "COMPLETED" or not str(job.model_uri or "").startswith("s3://") or job.kind != "train":
            raise JobNotCompleted(f"model: job {job_id!r} is {job.status} and has no model to serve (only a "
                                  "COMPLETED training job has one)")
        node = self._provenance.repository.node(workspace, f"model:{job_id}")
        sha256 = str(node.attrs.get("sha256", "")) if node is not None else ""
        image = str(job.spec["environment"])
        return ModelRef(job_id, str(job.model_uri), sha256, image, framework_of(image), str(job.spec["code"]))

    # --- registration and reads -------------------------------------------------------------------------------
    def register(self, workspace: Workspace, group: str, job_id: str) -> tuple[dict[str, Any], bool]:
        check_name(group, "group")
        model = self.model_of_job(workspace.name, job_id)
        at = now()
        version, created = self.repository.register(ModelVersion(
            workspace.name, group, 0, job_id, "PendingManualApproval", model.model_data, model.model_sha256,
            model.image, model.framework, model.code, at, at), workspace.created_at)
        node = version_node(group, version.number)
        self._provenance.add_node(workspace.name, node, "version", {"group": group, "version": version.number}, at)
        self._provenance.add_edge(workspace.name, node, "used", f"model:{job_id}", at)
        if version.package_arn is None:  # also when a retry finds the version its first attempt registered
            self._package(workspace, version)
        return describe_version(version, self.repository.group(workspace.name, group).aliases), created

    def _package(self, workspace: Workspace, version: ModelVersion) -> None:
        """The version as a SageMaker Model Package (the group's next package version), which carries its
        approval status where SageMaker's tools (Studio, pipelines, EventBridge rules) see it."""
        group = hosted_name(workspace.name, workspace.created_at, version.group,
                            [workspace.name, workspace.created_at, version.group])
        self._hosting.ensure_package_group(group, f"kaos model group {version.group} of workspace "
                                                  f"{workspace.name}")
        version.package_arn = self._hosting.create_package(
            group, fingerprint([group, version.number], 32), version.image, version.model_data, version.status)
        self.repository.set_package(workspace.name, version.group, version.number, version.package_arn)

    def groups(self, workspace: str) -> dict[str, Any]:
        return {"groups": [{"group": g.group, "latest_version": g.latest_version, "aliases": g.aliases}
                           for g in self.repository.groups(workspace)]}

    def group(self, workspace: str, group: str) -> dict[str, Any]:
        found = self.repository.group(workspace, group)
        return {"group": group, "aliases": found.aliases,
                "versions": [describe_version(v, found.aliases) for v in self.repository.versions(workspace, group)]}

    def approve(self, workspace: str, group: str, number: int, status: str) -> dict[str, Any]:
        if status not in STATUSES[1:]:
            raise ValidationFailed("status: must be Approved or Rejected")
        self.repository.version(workspace, group, number)
        aliases = self.repository.group(workspace, group).aliases
        if status != "Approved" and aliases.get(GUARDED_ALIAS) == number:
            raise VersionNotApproved(f"status: {group}/{number} carries the alias {GUARDED_ALIAS!r}; move it first")
        version = self.repository.set_status(workspace, group, number, status, now())
        if version.package_arn is not None:
            self._hosting.set_package_status(version.package_arn, status)
        return describe_version(version, aliases)

    # --- aliases ----------------------------------------------------------------------------------------------
    def move_alias(self, workspace: str, group: str, alias: str, number: int | None) -> dict[str, Any]:
        """Points `alias` at version `number` (None: removes it), atomically; answers the previous version."""
        check_name(alias, "alias")
        if number is not None:
            version = self.repository.version(workspace, group, number)
            if alias == GUARDED_ALIAS and version.status != "Approved":
                raise VersionNotApproved(f"version: {group}/{number} is {version.status}; only an Approved version "
                                         f"may be {GUARDED_ALIAS!r} (approve it first)")
        for _ in range(ALIAS_ATTEMPTS):
            found: ModelGroup = self.repository.group(workspace, group)
            previous = found.aliases.get(alias)
            if number is None and previous is None:
                raise AliasNotFound(f"alias: {group}@{alias} does not exist")
            try:
                self.repository.set_alias(found, alias, number)
            except ConcurrentUpdate:
                continue
            moved: dict[str, Any] = {"alias": alias, "previous": previous}
            return moved if number is None else {**moved, "version": number}
        raise ConcurrentUpdate(f"the aliases of {group!r} keep changing; try again")

    # --- MODEL references -------------------------------------------------------------------------------------
    def resolve(self, workspace: str, reference: str) -> ModelRef:
        """A job id, `G/VERSION` or `G@ALIAS` -> the model it names (404 for an unknown job, version or alias)."""
        matched = _REFERENCE.match(reference)
        if matched is None:
            return self.model_of_job(workspace, reference)
        group = matched["group"]
        if matched["alias"]:
            number = self.repository.group(workspace, group).aliases.get(matched["alias"])
            if number is None:
                raise AliasNotFound(f"model: {reference} names no version (unknown alias {matched['alias']!r})")
        else:
            number = int(matched["number"])
        version = self.repository.version(workspace, group, number)
        return ModelRef(version.job_id, version.model_data, version.model_sha256, version.image, version.framework,
                        version.code, group, number)
