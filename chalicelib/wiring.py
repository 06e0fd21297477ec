"""The composition root: the one place that builds adapters, repositories and services, once per process.

Every Lambda handler module and the Chalice app call `wiring(<component>)` at import (cold start): it loads and
validates the component's settings (chalicelib.config.load, so a missing variable fails the cold start naming it),
and every service is then built on first use from collaborators built here, never by the services themselves.
Warm invocations reuse all of it: boto3 clients (chalicelib.adapters.AwsClients), pynamodb connections, services.
Tests build a `Wiring` of their own, with the in-memory repositories (`Repositories.memory()`).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from chalicelib import config
from chalicelib.adapters import (
    AwsClients,
    BatchJobs,
    EndpointMetrics,
    Executions,
    Hosting,
    LogReader,
    ObjectStore,
    Runtime,
    TrainingJobs,
    WebFiles,
)
from chalicelib.batch import Batch, BatchPipeline
from chalicelib.config import Settings
from chalicelib.costs import Costs
from chalicelib.downloads import Downloads
from chalicelib.grids import Grids
from chalicelib.lifecycle import JobLogPages, Jobs
from chalicelib.logs import JobLogs
from chalicelib.metrics import JobMetrics
from chalicelib.pipeline import TrainingPipeline
from chalicelib.provenance import Provenance
from chalicelib.registry import Registry
from chalicelib.repositories.endpoints import DynamoEndpoints, EndpointRepository, MemoryEndpoints
from chalicelib.repositories.grids import DynamoGrids, GridRepository, MemoryGrids
from chalicelib.repositories.jobs import DynamoJobs, JobRepository, MemoryJobs
from chalicelib.repositories.models import DynamoModels, MemoryModels, ModelRepository
from chalicelib.repositories.provenance import DynamoProvenance, MemoryProvenance, ProvenanceRepository
from chalicelib.repositories.snapshots import DynamoSnapshots, MemorySnapshots, SnapshotRepository
from chalicelib.repositories.triggers import DynamoTriggers, MemoryTriggers, TriggerRepository
from chalicelib.repositories.workspaces import DynamoWorkspaces, MemoryWorkspaces, WorkspaceRepository
from chalicelib.reproduce import Reproductions
from chalicelib.serving import Endpoints
from chalicelib.snapshots import Snapshots
from chalicelib.tenancy import WorkspaceRoles
from chalicelib.training import Training
from chalicelib.triggers import Triggers
from chalicelib.workspaces import Workspaces


@dataclass(frozen=True)
class Repositories:
    """Every repository a service reaches DynamoDB through (chalicelib.repositories)."""

    workspaces: WorkspaceRepository
    jobs: JobRepository
    grids: GridRepository
    snapshots: SnapshotRepository
    provenance: ProvenanceRepository
    triggers: TriggerRepository
    endpoints: EndpointRepository
    models: ModelRepository

    @classmethod
    def dynamo(cls) -> Repositories:
        return cls(DynamoWorkspaces(), DynamoJobs(), DynamoGrids(), DynamoSnapshots(), DynamoProvenance(),
                   DynamoTriggers(), DynamoEndpoints(), DynamoModels())

    @classmethod
    def memory(cls) -> Repositories:
        """The in-memory twins, sharing one workspace twin (whose kill sweeps the others' rows)."""
        workspaces = MemoryWorkspaces()
        return cls(workspaces, MemoryJobs(workspaces), MemoryGrids(workspaces), MemorySnapshots(workspaces),
                   MemoryProvenance(workspaces), MemoryTriggers(workspaces), MemoryEndpoints(workspaces),
                   MemoryModels(workspaces))


class Wiring:
    """Adapters and services of one process, each built once, on first use (a task Lambda builds only what its
    task needs, and reads only the settings those need)."""

    def __init__(self, settings: Settings, *, clients: AwsClients | None = None,
                 repositories: Repositories | None = None) -> None:
        self.settings = settings
        self.clients = clients or AwsClients()
        self.repositories = repositories or Repositories.dynamo()

    # --- adapters -------------------------------------------------------------------------------------------
    @functools.cached_property
    def store(self) -> ObjectStore:
        return ObjectStore(self.clients.s3, self.settings.bucket, platform_buckets=self.settings.platform_buckets)

    @functools.cached_property
    def executions(self) -> Executions:
        return Executions(self.clients.stepfunctions)

    @functools.cached_property
    def training_jobs(self) -> TrainingJobs:
        return TrainingJobs(self.clients.sagemaker)

    @functools.cached_property
    def batch_jobs(self) -> BatchJobs:
        return BatchJobs(self.clients.batch)

    @functools.cached_property
    def training_logs(self) -> JobLogs:
        return JobLogs(store=self.store, reader=LogReader(self.clients.logs, self.settings.training_log_group))

    @functools.cached_property
    def batch_logs(self) -> JobLogs:
        return JobLogs(store=self.store, reader=LogReader(self.clients.logs, self.settings.batch_log_group))

    @functools.cached_property
    def roles(self) -> WorkspaceRoles:
        settings = self.settings
        return WorkspaceRoles(settings.bucket, settings.workspace_role_boundary, settings.workspace_role_prefix,
                              settings.training_log_group_arn, settings.batch_job_definition,
                              client=self.clients.iam, batch_client=self.clients.batch)

    @functools.cached_property
    def hosting(self) -> Hosting:
        return Hosting(self.clients.sagemaker, self.clients.cloudwatch)

    @functools.cached_property
    def runtime(self) -> Runtime:
        return Runtime(self.clients.sagemaker_runtime)

    @functools.cached_property
    def endpoint_metrics(self) -> EndpointMetrics:
        return EndpointMetrics(self.clients.cloudwatch)

    def endpoint_logs(self, sagemaker_endpoint: str) -> LogReader:
        """SageMaker writes each endpoint's container log to a group of its own."""
        return LogReader(self.clients.logs, f"/aws/sagemaker/Endpoints/{sagemaker_endpoint}")

    # --- services -------------------------------------------------------------------------------------------
    @functools.cached_property
    def snapshots(self) -> Snapshots:
        return Snapshots(store=self.store, repository=self.repositories.snapshots, web=WebFiles())

    @functools.cached_property
    def provenance(self) -> Provenance:
        return Provenance(store=self.store, repository=self.repositories.provenance,
                          snapshots=self.repositories.snapshots)

    @functools.cached_property
    def jobs(self) -> Jobs:
        return Jobs(settings=self.settings, repository=self.repositories.jobs, provenance=self.provenance,
                    executions=self.executions, training_jobs=self.training_jobs, batch_jobs=self.batch_jobs)

    @functools.cached_property
    def job_logs(self) -> JobLogPages:
        return JobLogPages(repository=self.repositories.jobs, logs=self.training_logs)

    @functools.cached_property
    def job_metrics(self) -> JobMetrics:
        return JobMetrics(store=self.store, repository=self.repositories.jobs)

    @functools.cached_property
    def training(self) -> Training:
        return Training(settings=self.settings, jobs=self.jobs, snapshots=self.snapshots,
                        snapshot_repository=self.repositories.snapshots)

    @functools.cached_property
    def pipeline(self) -> TrainingPipeline:
        return TrainingPipeline(settings=self.settings, jobs=self.jobs, workspaces=self.repositories.workspaces,
                                store=self.store, snapshots=self.snapshots, provenance=self.provenance,
                                logs=lambda: self.training_logs)

    @functools.cached_property
    def batch(self) -> Batch:
        return Batch(settings=self.settings, jobs=self.jobs, snapshots=self.snapshots)

    @functools.cached_property
    def batch_pipeline(self) -> BatchPipeline:
        return BatchPipeline(settings=self.settings, jobs=self.jobs, workspaces=self.repositories.workspaces,
                             store=self.store, snapshots=self.snapshots, provenance=self.provenance,
                             logs=lambda: self.batch_logs)

    @functools.cached_property
    def grids(self) -> Grids:
        return Grids(settings=self.settings, training=self.training, jobs=self.repositories.jobs,
                     grids=self.repositories.grids, store=self.store, executions=self.executions)

    @functools.cached_property
    def workspaces(self) -> Workspaces:
        return Workspaces(repository=self.repositories.workspaces, jobs=self.repositories.jobs, lifecycle=self.jobs,
                          grids=self.grids, store=self.store, roles=self.roles, training_jobs=self.training_jobs,
                          batch_jobs=self.batch_jobs, endpoints=self.endpoints)

    @functools.cached_property
    def reproductions(self) -> Reproductions:
        return Reproductions(training=self.training, jobs=self.jobs, snapshots=self.snapshots,
                             provenance=self.provenance)

    @functools.cached_property
    def costs(self) -> Costs:
        return Costs(jobs=self.repositories.jobs, provenance=self.provenance, endpoints=self.repositories.endpoints,
                     meter=self.endpoint_metrics)

    @functools.cached_property
    def downloads(self) -> Downloads:
        return Downloads(store=self.store, jobs=self.jobs, snapshots=self.snapshots)

    @functools.cached_property
    def registry(self) -> Registry:
        return Registry(repository=self.repositories.models, jobs=self.repositories.jobs, provenance=self.provenance,
                        hosting=self.hosting)

    @functools.cached_property
    def endpoints(self) -> Endpoints:
        return Endpoints(settings=self.settings, repository=self.repositories.endpoints, registry=self.registry,
                         workspaces=self.repositories.workspaces, store=self.store, snapshots=self.snapshots,
                         provenance=self.provenance, executions=self.executions, hosting=self.hosting,
                         runtime=self.runtime, logs=self.endpoint_logs, meter=self.endpoint_metrics)

    @functools.cached_property
    def triggers(self) -> Triggers:
        return Triggers(settings=self.settings, store=self.store, executions=self.executions,
                        repository=self.repositories.triggers, workspaces=self.repositories.workspaces,
                        latest=self.repositories.snapshots, snapshots=self.snapshots, provenance=self.provenance,
                        training=self.training)


@functools.cache
def wiring(component: str) -> Wiring:
    """The process's wiring for `component` (a handler module in functions/, or "api"), built once per process: its
    settings are loaded and validated on the first call, which handler modules make at import."""
    return Wiring(config.load(component))
