"""Each Lambda of the embedded stack runs in its own process with exactly its template's environment variables
(plus the Lambda runtime's reserved ones and the emulator endpoint), under a session of its own role: read from
the running function processes themselves (/proc/<pid>/environ), after a job has exercised them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaos.local.lambda_runtime import OFFLINE_ONLY, RESERVED
from kaos.local.loader import Resolver

from .conftest import TEMPLATE, Stack, tiny_code


def function_processes(stack_pid: int) -> dict[str, dict[str, str]]:
    """handler -> environment, for every function process under the stack (one per warm environment)."""
    found: dict[str, dict[str, str]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            status = (proc / "status").read_text()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        parent = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        if parent == stack_pid and b"kaos.local.lambda_runtime" in argv:
            handler = argv[argv.index(b"kaos.local.lambda_runtime") + 1].decode()
            found[handler] = dict(item.decode().split("=", 1) for item in environ.split(b"\0") if b"=" in item)
    return found


@pytest.fixture(scope="module")
def environments(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    stack.kaos("workspace", "create", "lambda-env")
    job = stack.kaos_json("train", "deploy", "-w", "lambda-env", "-s", str(tiny_code(tmp_path_factory.mktemp("c"))),
                          "-d", str(TEMPLATE / "data"), "-h", str(TEMPLATE / "params.json"), "--wait")
    assert job["status"] == "COMPLETED", job
    return function_processes(int(stack.runtime["pid"]))


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
    # The API, the training pipeline's two tasks: all ran for the job above.
    assert {"app.app", "functions.prepare_training.handler", "functions.record_outcome.handler"} <= set(environments)
    for handler, env in environments.items():
        name, variables = declared[handler]
        assert {k: env[k] for k in variables} == variables, handler
        extra = set(env) - set(variables) - set(RESERVED) - set(OFFLINE_ONLY)
        assert not extra, f"{handler} sees variables its template does not give it: {sorted(extra)}"
        assert not [k for k in env if k.startswith("KAOS_") and k not in variables], handler
        assert env["AWS_LAMBDA_FUNCTION_NAME"] == name
        assert env["AWS_SESSION_TOKEN"], handler  # a session of the function's role, not a user's key


def test_functions_differ_where_their_templates_differ(environments: dict[str, dict[str, str]],
                                                        stack: Stack) -> None:
    """The old shared environment hid a function missing a variable; now each has only its own."""
    declared = template_functions(stack)
    prepare, record = declared["functions.prepare_training.handler"][1], declared["functions.record_outcome.handler"][1]
    only_prepare = set(prepare) - set(record)
    assert only_prepare, "the two task templates should differ (PrepareTraining names the workspace roles)"
    assert not only_prepare & set(environments["functions.record_outcome.handler"])
