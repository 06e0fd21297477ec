"""The life of a job row, whatever its kind (training or batch): registration by fingerprint with its input
provenance, reads, the fenced end a Record task writes, kill and resume.

Execution names are the job id (then `<job id>-<attempt>` after a resume), so the execution ARN is known before
the start and the row never needs a second write for it (the pipeline's own status writes would race with it).
"""
from __future__ import annotations

from typing import Any

from chalicelib.adapters import BatchJobs, Executions, TrainingJobs, execution_arn_for
from chalicelib.config import Settings
from chalicelib.domain import JobSpec, attempt_name, environment_id, now, workspace_prefix
from chalicelib.errors import ConcurrentUpdate, Conflict, NotFound
from chalicelib.logs import JobLogs
from chalicelib.provenance import Provenance
from chalicelib.repositories.jobs import TERMINAL, Job, JobRepository, describe
from chalicelib.repositories.provenance import Edge, Node

# How often a kill re-reads a job that a pipeline task keeps changing (each change is a ConcurrentUpdate).
KILL_ATTEMPTS = 5


def job_prefix(workspace: str, job_id: str) -> str:
    return f"{workspace_prefix(workspace)}jobs/{job_id}/"


def dropped(job_id: str) -> dict[str, Any]:
    """What Record answers for an outcome it dropped because the job's workspace incarnation was killed."""
    return {"id": job_id, "status": "DROPPED", "model": None, "dropped": True}


class Jobs:
    def __init__(self, *, settings: Settings, repository: JobRepository, provenance: Provenance,
                 executions: Executions, training_jobs: TrainingJobs, batch_jobs: BatchJobs) -> None:
        self._settings = settings
        self.repository = repository
        self._provenance = provenance
        self._executions = executions
        self._training_jobs = training_jobs
        self._batch_jobs = batch_jobs

    def state_machine(self, kind: str) -> str:
        """Each kind of job has its own pipeline."""
        settings = self._settings
        return settings.batch_state_machine_arn if kind == "batch" else settings.training_state_machine_arn

    def register(self, spec: JobSpec, incarnation: str, user: str, sources: dict[str, Any],
                 hyperparameters: dict[str, Any] | None = None) -> tuple[Job, bool]:
        """The job row for these inputs, written once (the fingerprint is the identity), with its input
        provenance. Conflict if the workspace is no longer `incarnation`."""
        at = now()
        job = Job(spec.workspace, spec.job_id, spec.fingerprint, spec.kind, "SUBMITTED", spec.document(), at, user,
                  at, execution_arn=execution_arn_for(self.state_machine(spec.kind), spec.job_id),
                  history=[{"status": "SUBMITTED", "at": at}], sources=sources, hyperparameters=hyperparameters)
        stored, created = self.repository.create(job, incarnation)
        if created or stored.status == "SUBMITTED":
            # Also on a retry of a submission that wrote the row and failed before this point; cache hits of
            # jobs that already ran have their provenance (each write below is idempotent anyway).
            self._record_inputs(spec, at)
        return stored, created

    def start(self, job: Job) -> None:
        """Starts the job's pipeline. Idempotent by name: a cache hit, or a retry whose first attempt wrote the
        row and failed before the start, both end with exactly one execution."""
        self._executions.start(self.state_machine(job.kind), attempt_name(job.job_id, job.attempt),
                               {"workspace": job.workspace, "job_id": job.job_id})

    def _record_inputs(self, spec: JobSpec, at: str) -> None:
        workspace, job_node = spec.workspace, f"job:{spec.job_id}"
        env_node = f"environment:{environment_id(spec.environment)}"
        inputs = [("code", spec.code), ("params", spec.params)] + [(f"data:{c}", s) for c, s in spec.data]
        nodes = [Node(job_node, "job", {"kind": spec.kind, "fingerprint": spec.fingerprint}, at),
                 Node(env_node, "environment", {"image": spec.environment}, at),
                 *(Node(f"snapshot:{snapshot_id}", "snapshot", {"kind": role.split(":")[0]}, at)
                   for role, snapshot_id in inputs)]
        self._provenance.add(workspace, nodes, [Edge(job_node, "used", node.id, at) for node in nodes[1:]])

    # --- reads ----------------------------------------------------------------------------------------------
    def get(self, workspace: str, job_id: str) -> dict[str, Any]:
        return describe(self.repository.get(workspace, job_id))

    def page(self, workspace: str, limit: int, cursor: str | None) -> dict[str, Any]:
        jobs, next_cursor = self.repository.page(workspace, limit, cursor)
        return {"jobs": [describe(job) for job in jobs], "next": next_cursor}

    # --- the pipeline's end ---------------------------------------------------------------------------------
    def to_record(self, workspace: str, job_id: str, execution: str) -> Job | dict[str, Any]:
        """The job whose outcome a Record task is about to write, or (nothing to write) what Record answers: the
        job is gone with its killed workspace, has ended already (a retried task), or the outcome is a late one of
        an attempt that was killed and resumed (another `execution`)."""
        try:
            job = self.repository.get(workspace, job_id)
        except NotFound:  # its workspace was killed: the outcome of a stopped job arrives late
            return dropped(job_id)
        if job.status in TERMINAL or (execution and execution != job.execution_arn):
            return describe(job)
        return job

    def finish(self, job: Job, status: str, **changes: Any) -> None:
        """The job's last status change: it commits only while the workspace is still the job's incarnation, and
        raises IncarnationGone otherwise (an outcome arriving after a kill is dropped)."""
        self.repository.set_status(job, status, now(), fenced=True, **changes)

    def retract_produced(self, workspace: str, job_id: str, output: str, *, node: bool) -> None:
        """Deletes the `job -produced-> output` edge (and the output's node, if it is the job's own) that a Record
        wrote before its fenced end failed: a dropped outcome leaves no provenance behind."""
        self._provenance.retract_produced(workspace, job_id, output, node=node)

    # --- kill and resume ------------------------------------------------------------------------------------
    def kill(self, workspace: str, job_id: str, user: str) -> dict[str, Any]:
        """Stops the execution and the training (or Batch jobs); the job ends KILLED and keeps its provenance."""
        job = self.repository.get(workspace, job_id)
        if job.status in TERMINAL:
            raise Conflict(f"job {job_id!r} already ended ({job.status}); nothing to kill")
        self.halt(job, f"killed by {user}")
        return describe(job)

    def halt(self, job: Job, reason: str) -> list[str]:
        """Marks a job that has not ended KILLED, then stops what runs it: its execution, and its SageMaker training
        job or (kind batch) the Batch jobs its execution submitted. Returns those containers ("sagemaker:<name>",
        "batch:<id>"), which may take a while to end. Repeating it is harmless."""
        for _ in range(KILL_ATTEMPTS):
            try:
                if job.status not in TERMINAL:
                    self.repository.set_status(job, "KILLED", now(), ended_at=now(), failure_reason=reason)
                break
            except ConcurrentUpdate:  # a pipeline task changed the row meanwhile: decide again on what it wrote
                try:
                    fresh = self.repository.get(job.workspace, job.job_id)
                except NotFound:  # a concurrent workspace kill deleted it: it was stopped there
                    return []
                job.__dict__.update(fresh.__dict__)
        else:
            raise Conflict(f"job {job.job_id!r} kept changing while it was being killed; kill it again")
        if job.execution_arn:
            self._executions.stop(job.execution_arn, reason)
        if job.kind == "batch":
            ids = self._executions.submitted_jobs(job.execution_arn) if job.execution_arn else []
            for batch_job in ids:
                self._batch_jobs.terminate(batch_job, reason)
            return [f"batch:{batch_job}" for batch_job in ids]
        # Named before Prepare records it (the attempt's name), in case CreateTrainingJob was already under way.
        name = job.training_job_name or attempt_name(job.job_id, job.attempt)
        self._training_jobs.stop(name)
        return [f"sagemaker:{name}"]

    def resume(self, workspace: str, job_id: str, user: str) -> dict[str, Any]:
        """Runs a FAILED or KILLED job again with exactly its recorded inputs, as a new attempt.

        moto cannot redrive executions and SageMaker never reuses a job name, so each attempt is a new
        execution named `<job id>-<attempt>`; the preparation it repeats is idempotent (materialized inputs
        are reused), so in effect it restarts from the step that failed. A kill or resume racing this one is a
        409 (the row is versioned)."""
        job = self.repository.get(workspace, job_id)
        if job.status not in ("FAILED", "KILLED"):
            raise Conflict(f"job {job_id!r} is {job.status}; only FAILED or KILLED jobs can be resumed")
        attempt = job.attempt + 1
        arn = execution_arn_for(self.state_machine(job.kind), attempt_name(job_id, attempt))
        # What the attempt ran and consumed stays with it: a job costs the sum of its attempts (chalicelib/cost.py).
        previous = {"attempt": job.attempt, "execution": job.execution_arn, "failure_reason": job.failure_reason,
                    "status": job.status, "started_at": job.started_at, "ended_at": job.ended_at, "usage": job.usage}
        self.repository.set_status(job, "SUBMITTED", now(), attempt=attempt, execution_arn=arn, failure_reason=None,
                                   ended_at=None, attempts=[*job.attempts, previous])
        self.start(job)
        return describe(job)


class JobLogPages:
    """GET /workspaces/{workspace}/jobs/{job}/logs: pages of a job's log (chalicelib.logs reads CloudWatch while
    the job runs, the archived copy after)."""

    def __init__(self, *, repository: JobRepository, logs: JobLogs) -> None:
        self._repository = repository
        self._logs = logs

    def read(self, workspace: str, job_id: str, cursor: str | None, limit: int) -> dict[str, Any]:
        job = self._repository.get(workspace, job_id)
        prefix = f"{job.training_job_name}/" if job.training_job_name else None
        return self._logs.page(job_id=job_id, status=job.status, ended=job.status in TERMINAL, stream_prefix=prefix,
                               archive_key=job_prefix(workspace, job_id) + "log.txt", cursor=cursor, limit=limit)
