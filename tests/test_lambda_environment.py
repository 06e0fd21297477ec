"""Each Lambda of the embedded stack runs in its own process with exactly its template's environment variables
(plus the Lambda runtime's reserved ones and the emulator endpoint), under a session of its own role: read from
the running function processes themselves, after a job has exercised them. Environments are forked from a warm
parent per deployment package (kaos/local/lambda_runtime.py), so a process's kernel-held environment
(/proc/<pid>/environ) is the parent's, secret-free one: each runtime reports its own os.environ through the
stack's test hook, and the kernel's view is checked to hold nothing but the package's common variables."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kaos.local.lambda_runtime import OFFLINE_ONLY, RESERVED, package_environment
from kaos.local.loader import Resolver

from .conftest import TEMPLATE, Stack, tiny_code, until

# The API and the training pipeline's two tasks: all run for a job.
RAN = {"app.app", "functions.prepare_training.handler", "functions.record_outcome.handler"}


def kernel_view(pid: int) -> tuple[dict[str, str], int]:
    """The environment the kernel holds for the process (the one it was started with) and its parent's pid."""
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    status = Path(f"/proc/{pid}/status").read_text()
    parent = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
    return dict(item.decode().split("=", 1) for item in environ.split(b"\0") if b"=" in item), parent


@pytest.fixture(scope="module")
def reports(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What every warm environment's runtime says of itself (pid, handler, os.environ), after a training."""
    stack.kaos("workspace", "create", "lambda-env")
    job = stack.kaos_json("train", "deploy", "-w", "lambda-env", "-s", str(tiny_code(tmp_path_factory.mktemp("c"))),
                          "-d", str(TEMPLATE / "data"), "-h", str(TEMPLATE / "params.json"), "--wait")
    assert job["status"] == "COMPLETED", job
    admin = stack.client("admin")

    def idle_ones() -> list[dict[str, Any]] | None:
        """The reports, once the job's three functions each have an idle environment to answer (the session
        stack is shared: another test's job may be using one at this moment)."""
        found: list[dict[str, Any]] = admin.request("POST", "/_local/faults", {"inspect": "environments"})[
            "environments"]
        return found if RAN <= {report["handler"] for report in found} else None

    reports: list[dict[str, Any]] = until(idle_ones, "an idle environment of each function the job ran", 60)
    return reports


@pytest.fixture(scope="module")
def environments(reports: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """handler -> environment, as its runtime reads os.environ."""
    return {report["handler"]: report["environ"] for report in reports}


def template_functions(stack: Stack) -> dict[str, tuple[str, dict[str, str]]]:
    template = json.loads((stack.state_dir / "template.json").read_text())
    resolver = Resolver(template["Resources"])
    functions = {}
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] in ("AWS::Lambda::Function", "AWS::Serverless::Function"):
            props = resource["Properties"]
            variables = resolver.resolve(props.get("Environment", {}).get("Variables", {}))
            functions[props["Handler"]] = (resolver.names[logical_id], {k: str(v) for k, v in variables.items()})
    return functions


def test_each_function_sees_exactly_its_template_environment(environments: dict[str, dict[str, str]],
                                                             stack: Stack) -> None:
    declared = template_functions(stack)
    assert RAN <= set(environments)
    for handler, env in environments.items():
        name, variables = declared[handler]
        assert {k: env[k] for k in variables} == variables, handler
        extra = set(env) - set(variables) - set(RESERVED) - set(OFFLINE_ONLY)
        assert not extra, f"{handler} sees variables its template does not give it: {sorted(extra)}"
        assert not [k for k in env if k.startswith("KAOS_") and k not in variables], handler
        assert env["AWS_LAMBDA_FUNCTION_NAME"] == name
        assert env["AWS_SESSION_TOKEN"], handler  # a session of the function's role, not a user's key


def test_the_kernel_holds_no_function_variable_or_credential(reports: list[dict[str, Any]], stack: Stack) -> None:
    """A forked environment's /proc/<pid>/environ is its warm parent's: the runtime's common variables, no
    package's and no credentials; the one parent of every function is a child of the stack."""
    assert reports
    parents = set()
    for report in reports:
        held, parent = kernel_view(report["pid"])
        assert held == package_environment(()), report["handler"]
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & set(held)
        assert kernel_view(parent)[1] == int(stack.runtime["pid"]), report["handler"]
        parents.add(parent)
    assert len(parents) == 1


def test_functions_differ_where_their_templates_differ(environments: dict[str, dict[str, str]],
                                                        stack: Stack) -> None:
    """The old shared environment hid a function missing a variable; now each has only its own."""
    declared = template_functions(stack)
    prepare, record = declared["functions.prepare_training.handler"][1], declared["functions.record_outcome.handler"][1]
    only_prepare = set(prepare) - set(record)
    assert only_prepare, "the two task templates should differ (PrepareTraining names the workspace roles)"
    assert not only_prepare & set(environments["functions.record_outcome.handler"])
