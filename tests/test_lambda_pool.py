"""Warm Lambda environments end after idling, as Lambda reclaims them (kaos/local/lambda_runtime.py): a burst's
worker processes do not stay resident in the embedded stack's process tree."""
from __future__ import annotations

import functools
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from pathlib import Path
from types import SimpleNamespace

import pytest

from kaos.local.lambda_runtime import SERVICE_MODELS, FunctionError, FunctionPool, FunctionSpec, WarmParent
from kaos.processes import alive

from .conftest import until


def test_an_idle_environment_ends_and_the_next_invocation_starts_a_new_one(tmp_path: Path) -> None:
    (tmp_path / "handler.py").write_text("import os\ndef handler(event, context):\n    return os.getpid()\n")
    spec = FunctionSpec("f", "handler.handler", {}, "arn:aws:iam::123456789012:role/r", timeout_seconds=30,
                        code_paths=(str(tmp_path),))
    parent = WarmParent(spec.code_paths)
    pool = FunctionPool(spec, lambda: {"PATH": os.environ["PATH"], "PYTHONPATH": str(tmp_path)}, parent,
                        idle_seconds=0.5)
    try:
        first = pool.invoke({}, None)
        assert pool.invoke({}, None) == first  # warm: the same environment serves the next invocation
        assert pool.warm == 1
        until(lambda: not pool.warm and not alive(first), "the idle environment to end", 20, every=0.05)
        second = pool.invoke({}, None)
        assert second != first and pool.warm == 1
    finally:
        pool.close()
        parent.close()
    assert not pool.warm and not alive(second)


BLOCKING = """import os, time
def handler(event, context):
    while event.get("until") and not os.path.exists(event["until"]):
        time.sleep(0.01)
    return os.getpid()
"""


@pytest.mark.parametrize("scale_out_wait", [30.0, 0.2])
def test_a_busy_environment_is_waited_for_before_the_pool_grows(tmp_path: Path, scale_out_wait: float) -> None:
    """An invocation that finds the function's one environment busy waits `scale_out_wait` for it rather than
    start another (SCALE_OUT_WAIT_SECONDS); one that is still busy after that no longer holds the next."""
    (tmp_path / "handler.py").write_text(BLOCKING)
    spec = FunctionSpec("f", "handler.handler", {}, "arn:aws:iam::123456789012:role/r", timeout_seconds=60,
                        code_paths=(str(tmp_path),))
    parent = WarmParent(spec.code_paths)
    pool = FunctionPool(spec, lambda: {"PATH": os.environ["PATH"], "PYTHONPATH": str(tmp_path)}, parent,
                        max_workers=2, scale_out_wait=scale_out_wait)
    released = tmp_path / "released"
    try:
        pool.prewarm()
        warm = pool.inspect()[0]["pid"]
        with ThreadPoolExecutor(max_workers=2) as side:
            try:
                busy = side.submit(pool.invoke, {"until": str(released)}, None)
                until(lambda: pool.warm == 0, "the first invocation to take the warm environment", 20, every=0.01)
                second = side.submit(pool.invoke, {}, None)
                if scale_out_wait > 1:  # it waits for the busy environment (a new one would answer in ~0.2 s)
                    with pytest.raises(FuturesTimeout):
                        second.result(timeout=1.5)
                    released.touch()
                    assert busy.result(20) == warm and second.result(20) == warm and pool.warm == 1
                else:  # the busy one stays busy past the wait: a second environment serves it meanwhile
                    assert second.result(20) != warm and not busy.done()
                    released.touch()
                    assert busy.result(20) == warm and pool.warm == 2
            finally:  # a failed assertion must not leave the executor waiting on the blocked invocation
                released.touch()
    finally:
        pool.close()
        parent.close()


def test_an_environment_still_importing_its_handler_is_waited_for(tmp_path: Path) -> None:
    """A burst on a cold function (a Map's first iterations) used to fork an environment per invocation once the
    scale-out wait passed during the first one's import: the wait counts only from the end of an environment's
    import (its runtime's INITIALIZED), so the import's 1.5 s here make no second environment."""
    (tmp_path / "handler.py").write_text("import os, time\ntime.sleep(1.5)\n"
                                         "def handler(event, context):\n    return os.getpid()\n")
    spec = FunctionSpec("f", "handler.handler", {}, "arn:aws:iam::123456789012:role/r", timeout_seconds=30,
                        code_paths=(str(tmp_path),))
    parent = WarmParent(spec.code_paths)
    pool = FunctionPool(spec, lambda: {"PATH": os.environ["PATH"], "PYTHONPATH": str(tmp_path)}, parent,
                        max_workers=2, scale_out_wait=0.2)
    try:
        with ThreadPoolExecutor(max_workers=2) as side:
            first = side.submit(pool.invoke, {}, None)
            until(lambda: pool._running, "the first environment to be forked", 20, every=0.01)
            second = side.submit(pool.invoke, {}, None)
            assert first.result(20) == second.result(20) and pool.warm == 1
    finally:
        pool.close()
        parent.close()


def test_an_import_error_and_a_timeout_are_reported_as_the_lambda_runtime_reports_them(tmp_path: Path) -> None:
    """The runtime's INITIALIZED line comes before an init error's answer, and a timed-out invocation ends its
    environment: both still reach the caller as Lambda names them, and the pool serves the next invocation."""
    (tmp_path / "broken.py").write_text("raise RuntimeError('no such table')\n")
    (tmp_path / "slow.py").write_text("import os, time\ndef handler(event, context):\n"
                                      "    time.sleep(event['sleep'])\n    return os.getpid()\n")
    parent = WarmParent((str(tmp_path),))
    pools = {name: FunctionPool(FunctionSpec(name, f"{name}.handler", {}, "arn:aws:iam::123456789012:role/r",
                                             timeout_seconds=1, code_paths=(str(tmp_path),)),
                                lambda: {"PATH": os.environ["PATH"], "PYTHONPATH": str(tmp_path)}, parent)
             for name in ("broken", "slow")}
    try:
        for _ in range(2):  # the same environment answers the second time too
            with pytest.raises(FunctionError) as failed:
                pools["broken"].invoke({}, None)
            assert failed.value.error_type == "Runtime.ImportModuleError"
            assert "Unable to import module 'broken': no such table" in str(failed.value)
        assert pools["broken"].warm == 1
        with pytest.raises(FunctionError) as timed_out:
            pools["slow"].invoke({"sleep": 5}, None)
        assert timed_out.value.error_type == "Sandbox.Timedout" and pools["slow"].warm == 0
        assert pools["slow"].invoke({"sleep": 0}, None) > 0  # a new environment
    finally:
        for pool in pools.values():
            pool.close()
        parent.close()


def test_a_prewarmed_environment_serves_the_first_invocation(tmp_path: Path) -> None:
    """The stack makes one API environment ahead of the first request (LocalStack._prewarm), starting the warm
    parent: it is kept warm and the first invocation finds it; a closed pool makes nothing."""
    (tmp_path / "handler.py").write_text("import os\ndef handler(event, context):\n    return os.getpid()\n")
    spec = FunctionSpec("f", "handler.handler", {}, "arn:aws:iam::123456789012:role/r", timeout_seconds=30,
                        code_paths=(str(tmp_path),))
    parent = WarmParent(spec.code_paths)
    pool = FunctionPool(spec, lambda: {"PATH": os.environ["PATH"], "PYTHONPATH": str(tmp_path)}, parent)
    try:
        pool.prewarm()
        started = parent._process
        assert started is not None and alive(started.pid) and pool.warm == 1
        prewarmed = pool.inspect()[0]["pid"]
        assert pool.invoke({}, None) == prewarmed and pool.warm == 1
    finally:
        pool.close()
        parent.close()
    pool.prewarm()
    assert not pool.warm and parent._process is None and not alive(prewarmed) and not alive(started.pid)


def test_a_functions_info_lines_reach_its_log_with_the_request_id(tmp_path: Path,
                                                                  capfd: pytest.CaptureFixture[str]) -> None:
    """The runtime's root handler (as awslambdaric's): a logger whose level lets INFO through is heard, each line
    carrying the invocation's request id; before it, offline, only WARNING and above reached the log."""
    (tmp_path / "handler.py").write_text("import logging\nlog = logging.getLogger('app')\nlog.setLevel(logging.INFO)\n"
                                         "def handler(event, context):\n    log.info('decided %s', event['n'])\n")
    spec = FunctionSpec("f", "handler.handler", {}, "arn:aws:iam::123456789012:role/r", timeout_seconds=30,
                        code_paths=(str(tmp_path),))
    parent = WarmParent(spec.code_paths)
    pool = FunctionPool(spec, lambda: {"PATH": os.environ["PATH"], "PYTHONPATH": str(tmp_path)}, parent)
    try:
        pool.invoke({"n": 1}, SimpleNamespace(aws_request_id="req-1", invoked_function_arn="arn"))
        pool.invoke({"n": 2}, SimpleNamespace(aws_request_id="req-2", invoked_function_arn="arn"))
    finally:
        pool.close()
        parent.close()
    lines = [line for line in capfd.readouterr().err.splitlines() if "decided" in line]
    assert [line.split("\t")[0] for line in lines] == ["[INFO]", "[INFO]"]
    assert [line.split("\t")[2:] for line in lines] == [["req-1", "decided 1"], ["req-2", "decided 2"]]
    assert lines[0].split("\t")[1].endswith("Z")


def test_a_forked_environment_has_exactly_its_own_variables_and_the_preload_is_guarded(tmp_path: Path) -> None:
    """Forked from the warm parent (started with the package's variables only), an environment's os.environ is
    exactly the one its pool gives it, for each of two functions of one package; and a function whose
    environment sets a variable the preload read at import (PYNAMODB_CONFIG: pynamodb's settings path) is not
    forked from module state made without it."""
    (tmp_path / "probe.py").write_text("import os, sys\ndef handler(event, context):\n"
                                       "    return {'environ': dict(os.environ), 'cwd': os.getcwd(),\n"
                                       "            'preloaded': 'pynamodb.models' in sys.modules}\n")
    parent = WarmParent((str(tmp_path),))
    pools = []
    try:
        for name, secret in (("a", "key-a"), ("b", "key-b")):
            spec = FunctionSpec(name, "probe.handler", {}, "arn:aws:iam::123456789012:role/r", timeout_seconds=30,
                                code_paths=(str(tmp_path),))
            env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(tmp_path), "AWS_SECRET_ACCESS_KEY": secret,
                   "ONLY_" + name.upper(): "1"}
            pools.append(FunctionPool(spec, lambda env=env: env, parent))  # type: ignore[misc]
            seen = pools[-1].invoke({}, None)
            assert seen == {"environ": env, "cwd": str(tmp_path), "preloaded": True}
        spec = FunctionSpec("c", "probe.handler", {}, "arn:aws:iam::123456789012:role/r", code_paths=(str(tmp_path),))
        pools.append(FunctionPool(spec, lambda: {"PYNAMODB_CONFIG": "/elsewhere.py"}, parent))
        with pytest.raises(FunctionError, match="PYNAMODB_CONFIG"):
            pools[-1].invoke({}, None)
        # The warm parent killed: the next new environment starts another, and exactly as before.
        assert parent._process is not None
        parent._process.kill()
        spec = FunctionSpec("d", "probe.handler", {}, "arn:aws:iam::123456789012:role/r", code_paths=(str(tmp_path),))
        pools.append(FunctionPool(spec, lambda: {"PATH": os.environ["PATH"], "ONLY_D": "1"}, parent))
        assert pools[-1].invoke({}, None)["environ"] == {"PATH": os.environ["PATH"], "ONLY_D": "1"}
    finally:
        for pool in pools:
            pool.close()
        parent.close()


def test_one_parent_serves_every_package_each_environment_seeing_its_own_code(tmp_path: Path) -> None:
    """The embedded stack's one warm parent (no package of its own) forks the environments of two packages that
    each have a module of the same name: each imports its own package's, runs in its own folder, and neither sees
    the parent's folder on its path."""
    packages = []
    for name in ("api", "functions"):
        package = tmp_path / name
        package.mkdir()
        (package / "probe.py").write_text(f"import os, sys\nPACKAGE = {name!r}\ndef handler(event, context):\n"
                                          "    return {'package': PACKAGE, 'cwd': os.getcwd(), 'path': sys.path,\n"
                                          "            'preloaded': 'pynamodb.models' in sys.modules}\n")
        packages.append(package)
    parent = WarmParent(())
    pools = []
    try:
        for package in packages:
            spec = FunctionSpec(package.name, "probe.handler", {}, "arn:aws:iam::123456789012:role/r",
                                timeout_seconds=30, code_paths=(str(package),))
            env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(package)}
            pools.append(FunctionPool(spec, lambda env=env: env, parent))  # type: ignore[misc]
            seen = pools[-1].invoke({}, None)
            assert seen["package"] == package.name and seen["cwd"] == str(package) and seen["preloaded"]
            assert seen["path"][0] == str(package) and "/" not in seen["path"]
            assert not [entry for entry in seen["path"] if entry in {str(p) for p in packages} - {str(package)}]
        assert parent._process is not None and Path(f"/proc/{parent._process.pid}/cwd").resolve() == Path("/")
    finally:
        for pool in pools:
            pool.close()
        parent.close()


SHARED_DATA = """\
import os, sys
import botocore.session
from kaos.local import lambda_runtime
lambda_runtime._load_service_data()
lambda_runtime._share_service_data()  # what a forked environment does once its environment is its function's
default, own = botocore.session.get_session(), botocore.session.get_session()  # boto3's and pynamodb's, say
shared = [s.get_component("data_loader") is lambda_runtime._SERVICE_DATA for s in (default, own)]
client = default.create_client("s3", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b")
os.environ["AWS_DATA_PATH"] = sys.argv[1]
elsewhere = botocore.session.get_session().get_component("data_loader")
print(shared, client.meta.service_model.service_name, elsewhere is lambda_runtime._SERVICE_DATA,
      sys.argv[1] in elsewhere.search_paths)
"""


def test_environments_make_their_clients_from_the_warm_parents_service_data(tmp_path: Path) -> None:
    # Every botocore session of an environment takes the loader the warm parent filled (each environment parsed
    # the service models again before), unless its environment names data paths of its own.
    done = subprocess.run([sys.executable, "-c", SHARED_DATA, str(tmp_path)], capture_output=True, text=True,
                          check=True, env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")})
    assert done.stdout.split() == ["[True,", "True]", "s3", "False", "True"], done.stderr


def test_the_warm_parent_loads_every_service_the_functions_make_clients_for() -> None:
    from chalicelib.adapters import AwsClients

    made = {name for name, value in vars(AwsClients).items() if isinstance(value, functools.cached_property)}
    assert made | {"dynamodb"} == {name.replace("-", "_") for name in SERVICE_MODELS}  # pynamodb: DynamoDB
