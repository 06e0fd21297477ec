"""Every function ships exactly the variables its code reads, and its cold start fails, naming the variable, when one
is missing (bug 1: the grid point Lambda shipped without KAOS_TRAINING_IMAGE and its jobs got an empty image).

The synthesized template (the cached synth tests/test_cdk.py uses) is the deployment under test; a cold start is a
fresh interpreter that imports the handler's module and builds its wiring (`chalicelib.wiring.wiring(component)`),
with exactly the function's template environment plus what the Lambda runtime itself sets.
"""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from cdk.check import resolve
from cdk.constants import REPO_ROOT
from cdk.lambdas import component_of, handler_of
from chalicelib.config import COMPONENTS

from .test_cdk import _synth

# What the Lambda runtime sets in every function's environment (never the template); credentials are fake, no call
# leaves the process.
RUNTIME = {"AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing", "LANG": "C.UTF-8", "TZ": ":UTC"}

# Run in the child: import the handler's module with the full environment, then build the wiring once per variable
# with that variable removed. Prints {"ok": bool, "error": str, "missing": {variable: variable ConfigError named}}.
COLD_START = """
import importlib, json, os, sys
from chalicelib.errors import ConfigError
from chalicelib.wiring import wiring
wiring = getattr(wiring, "__wrapped__", wiring)  # each call a cold start, should the process cache it
component, module = sys.argv[1], sys.argv[2]
full = dict(os.environ)
out = {"ok": True, "error": "", "missing": {}}
try:
    importlib.import_module(module)
    wiring(component)
except Exception as exc:
    out.update(ok=False, error=f"{type(exc).__name__}: {exc}")
for name in json.loads(sys.argv[3]):
    os.environ.clear()
    os.environ.update({k: v for k, v in full.items() if k != name})
    try:
        wiring(component)
        out["missing"][name] = None
    except ConfigError as exc:
        out["missing"][name] = exc.variable if exc.component == component and name in str(exc) else repr(exc)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def functions() -> dict[str, dict[str, str]]:
    """component -> the resolved environment of its function in the dev template."""
    resources: dict[str, Any] = _synth("dev")[1]["Resources"]
    out: dict[str, dict[str, str]] = {}
    for resource in resources.values():
        if resource["Type"] in ("AWS::Lambda::Function", "AWS::Serverless::Function"):
            props = resource["Properties"]
            component = component_of(props["Handler"])
            assert component not in out, f"two functions of {component}"
            variables = props.get("Environment", {}).get("Variables", {})
            out[component] = {k: str(resolve(v, resources)) for k, v in variables.items()}
    return out


def test_every_component_is_deployed_with_exactly_the_variables_it_reads(functions: dict[str, dict[str, str]]) -> None:
    assert set(functions) == set(COMPONENTS)
    for component, environment in functions.items():
        assert set(environment) == COMPONENTS[component], component


def test_grid_points_create_jobs_with_the_same_training_settings_as_the_api(
    functions: dict[str, dict[str, str]],
) -> None:
    training = {name: functions["api"][name] for name in COMPONENTS["create_point"] if name.startswith("KAOS_TRAIN")}
    assert training, "create_point reads the training settings"
    for component in ("create_point", "process_batch"):
        assert {name: functions[component][name] for name in training} == training, component


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_cold_start_needs_every_variable_and_names_the_missing_one(
    component: str, functions: dict[str, dict[str, str]]
) -> None:
    environment = functions[component]
    module = "app" if component == "api" else handler_of(component).rsplit(".", 1)[0]
    cwd = REPO_ROOT / "app" if component == "api" else REPO_ROOT  # Chalice imports `app` from its project dir
    result = subprocess.run(
        [sys.executable, "-c", COLD_START, component, module, json.dumps(sorted(environment))],
        env={**RUNTIME, **environment, "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'app'}"}, cwd=cwd,
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["ok"], out["error"]
    assert out["missing"] == {name: name for name in environment}
