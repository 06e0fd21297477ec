"""Batch submission through the services without the embedded stack (in-memory repositories, moto in process)."""
from __future__ import annotations

import pytest

from chalicelib.errors import NotFound, ValidationFailed
from chalicelib.wiring import Wiring
from tests.service_wiring import OWNER, executions, services, snapshot, workspace  # noqa: F401


def test_batch_submission_is_exactly_once_and_shares_the_job_routes(services: Wiring) -> None:  # noqa: F811
    ws = workspace(services)
    code = snapshot(services, ws.name, "code", {"process.py": b"print('hi')\n"})
    data = snapshot(services, ws.name, "data", {"in.csv": b"a\n1\n"})
    request = {"code": code, "data": data, "command": "python process.py", "per_file": True}
    job, created = services.batch.submit(ws.name, ws.created_at, OWNER, request)
    again, created_again = services.batch.submit(ws.name, ws.created_at, OWNER, request)
    assert created and not created_again and again["id"] == job["id"] and job["id"].startswith("batch-")
    assert (job["kind"], job["environment"], job["inputs"]["data"]) == ("batch", "kaos/batch:1", {"input": data})
    assert executions(services, services.settings.batch_state_machine_arn) == [job["id"]]
    assert services.jobs.get(ws.name, job["id"]) == {**job, "sources": {}}
    assert [j["id"] for j in services.jobs.page(ws.name, 10, None)["jobs"]] == [job["id"]]
    # Another command is another job; inputs are checked before anything is written.
    other, created = services.batch.submit(ws.name, ws.created_at, OWNER, {**request, "command": "true"})
    assert created and other["id"] != job["id"]
    with pytest.raises(ValidationFailed, match="glob"):
        services.batch.submit(ws.name, ws.created_at, OWNER, {**request, "per_file": False, "glob": "*.csv"})
    with pytest.raises(ValidationFailed, match="is a code snapshot"):
        services.batch.submit(ws.name, ws.created_at, OWNER, {**request, "data": code})
    with pytest.raises(NotFound):
        services.batch.submit(ws.name, ws.created_at, OWNER, {**request, "data": "0" * 64})
