"""The CLI as a user meets it, as a subprocess: every failure is a message (a traceback only with --debug), ids by
prefix, paging, --version/-h/completion, early checks, non-terminal --wait, logs -f ending, the cloud target, and
every command the CLI suggests runs as printed.

The first part needs no stack; the second shares ONE embedded stack (module-scoped) and a few tiny jobs."""
from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kaos import cloud
from kaos import operations as ops
from kaos.client import ApiError

from . import cli_process
from .conftest import TEMPLATE, Stack, tiny_code

SUGGESTION = re.compile(r"`(kaos [^`]+)`")
# Every command any test saw the CLI suggest; the last test runs each against the stack.
SUGGESTED: set[str] = set()
# Suggestions that need an AWS account (exercised with a stand-in cdk above, not runnable here).
NEEDS_AN_ACCOUNT = ("kaos cloud deploy", "kaos cloud status")


def kaos(home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120,
         answer: str | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "KAOS_HOME": str(home), "COLUMNS": "100", **(env or {})}
    for key in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "KAOS_PROFILE", "KAOS_API_URL",
                "KAOS_DEBUG"):
        environment.pop(key, None)
    environment.update(env or {})
    result = cli_process.run(args, environment, timeout, input=answer)
    SUGGESTED.update(SUGGESTION.findall(result.stdout + result.stderr))
    return result


def failed(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    """The one-line error of a failed command: no traceback, each expected text present."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    text = " ".join(result.stderr.split())
    for part in expected:
        assert part in text, (part, result.stderr)
    return text


def configure(home: Path, **values: Any) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.json").write_text(json.dumps(values))


def credentials(home: Path) -> Path:
    path = home / "credentials"
    path.write_text("[kaos-local-dev]\naws_access_key_id = AKIAEXAMPLEDEV\naws_secret_access_key = secret\n"
                    "[kaos-local-guest]\naws_access_key_id = AKIAEXAMPLEGUEST\naws_secret_access_key = secret\n")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def offline(tmp_path: Path) -> Path:
    """A client home pointed at a local API that is not running, signing as a local user."""
    home = tmp_path / "home"
    configure(home, api_url=f"http://127.0.0.1:{free_port()}", profile="kaos-local-dev",
              credentials_file=str(credentials(tmp_path)), workspace="w")
    return home


# --- no stack ------------------------------------------------------------------------------------------------
def test_version_and_short_help(tmp_path: Path) -> None:
    version = kaos(tmp_path, "--version")
    assert version.returncode == 0 and re.fullmatch(r"kaos \S+\n", version.stdout)
    helped = kaos(tmp_path, "-h")
    assert helped.returncode == 0 and "Usage: kaos" in helped.stdout and "cloud" in helped.stdout
    # Under `train deploy`, -h stays the hyperparameters file.
    deploy_help = kaos(tmp_path, "train", "deploy", "--help", env={"COLUMNS": "200"})
    assert "--hyperparams" in deploy_help.stdout and re.search(r"-h\s", deploy_help.stdout)


def test_a_command_with_options_imports_no_pydantic_and_status_not_the_stack(tmp_path: Path) -> None:
    """typer 0.29 coerced every option through pydantic: 0.1 s and 8 MB on every command (pyproject pins below it);
    `local status` and `down` imported the whole stack (the emulator, the gateway, boto3) for its runtime.json
    reader: 0.15 s more (kaos.local.state_dir). A cold process, as a user's shell starts it."""
    probe = ("import atexit, runpy, sys\n"
             "atexit.register(lambda: print(sorted({'pydantic', 'kaos.local.stack', 'moto'} & set(sys.modules)),"
             " file=sys.stderr))\n"
             f"sys.argv = ['kaos', 'local', 'status', '--state-dir', {str(tmp_path / 'none')!r}]\n"
             "runpy.run_module('kaos.cli', run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert "not running" in result.stdout + result.stderr, result
    assert result.stderr.strip().splitlines()[-1] == "[]", result.stderr


def test_install_completion(tmp_path: Path) -> None:
    result = kaos(tmp_path, "--install-completion", "bash", env={"HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "kaos" in (tmp_path / ".bashrc").read_text()


def test_stack_down_is_one_line_and_debug_shows_the_traceback(offline: Path) -> None:
    failed(kaos(offline, "workspace", "list"), "is not running", "start it with `kaos local up --detach`")
    debug = kaos(offline, "--debug", "workspace", "list")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_bad_profile_names_the_profiles_that_exist(offline: Path) -> None:
    failed(kaos(offline, "workspace", "list", env={"KAOS_PROFILE": "kaos-local-nobody"}),
           "profile 'kaos-local-nobody' does not exist", "profiles: kaos-local-dev, kaos-local-guest")


def test_no_api_url_says_how_to_get_one(tmp_path: Path) -> None:
    failed(kaos(tmp_path, "workspace", "list"), "`kaos local up --detach`", "`kaos cloud deploy`")


def test_busy_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        failed(kaos(tmp_path, "local", "up", "--detach", "--port", str(port), "--state-dir", str(tmp_path / "s")),
               f"port {port} on 127.0.0.1 is in use")
    assert not (tmp_path / "s" / "stack.pid").exists()  # nothing was started


def test_a_state_dir_a_stack_holds_is_refused_by_a_second_stack(tmp_path: Path) -> None:
    """One stack per state directory: a second would overwrite the first's snapshots and journal. runtime.json
    appears only when a start is done, so the lock, not that file, says a stack is there (one still starting,
    here stood in for by this process holding the lock). Neither `up` nor the stack process itself touches the
    directory then; once the holder is gone (however it ended) the directory is free."""
    from kaos.local.state_dir import StateDirInUse, lock_state_dir

    state = tmp_path / "s"
    state.mkdir()
    held = lock_state_dir(state)
    with pytest.raises(StateDirInUse, match=f"pid {os.getpid()}"):
        lock_state_dir(state, hold=False)
    failed(kaos(tmp_path, "local", "up", "--detach", "--state-dir", str(state)),
           f"another kaos stack (pid {os.getpid()}) is using {state}")
    stack = subprocess.run([sys.executable, "-m", "kaos.local.stack", str(state)], capture_output=True, text=True,
                           timeout=120, env={**os.environ, "KAOS_HOME": str(tmp_path)})
    assert stack.returncode == 1 and f"another kaos stack (pid {os.getpid()})" in stack.stderr, stack.stderr
    assert "Traceback" not in stack.stderr
    assert sorted(path.name for path in state.iterdir()) == ["stack.lock"]  # no template, log, pid or data written
    held.close()
    lock_state_dir(state, hold=False)
    assert (state / "stack.lock").read_text() == str(os.getpid())


def test_error_text_keeps_brackets(offline: Path, tmp_path: Path) -> None:
    failed(kaos(offline, "train", "deploy", "-d", f"a[0-9]b={tmp_path}"), "-d a[0-9]b=")


def test_deploy_inputs_are_checked_before_hashing(offline: Path, tmp_path: Path) -> None:
    """The API is down: each refusal can only come from the client, before any hashing or request."""
    code = tiny_code(tmp_path)
    no_entry = tmp_path / "no-entry"
    no_entry.mkdir()
    (no_entry / "model.py").write_text("")
    failed(kaos(offline, "train", "deploy", "-s", str(no_entry)), "has no entry point", "train.py")
    toml = tmp_path / "toml"
    toml.mkdir()
    (toml / "kaos.toml").write_text('[train]\nentry_point = "fit.sh"\n')
    failed(kaos(offline, "train", "deploy", "-s", str(toml)), "names entry_point 'fit.sh'")
    failed(kaos(offline, "train", "deploy", "-s", str(code), "-d", f"Bad Name={TEMPLATE / 'data'}"),
           "channel names are")
    huge = tmp_path / "grid.json"
    huge.write_text(json.dumps({name: list(range(10)) for name in "abcdefg"}))  # 10^7 points
    failed(kaos(offline, "train", "deploy", "-s", str(code), "-h", str(huge)), "the grid has 10000000 points")
    failed(kaos(offline, "batch", "deploy", "-s", str(no_entry), "-d", str(TEMPLATE / "data")), "process.py")


def test_members_are_checked_on_the_client(offline: Path) -> None:
    failed(kaos(offline, "workspace", "share", "w", "nobody"), "no user 'nobody'", "dev, guest")
    failed(kaos(offline, "workspace", "share", "w", "arn:aws:iam::12:user/x"), "not an IAM principal ARN")
    # A well-formed ARN passes the client's check and reaches the (absent) API.
    failed(kaos(offline, "workspace", "share", "w", "arn:aws:iam::123456789012:user/ana"), "is not running")


def test_since_and_id_patterns() -> None:
    assert ops.since_time("2026-12-01") == "2026-12-01T00:00:00.000+00:00"
    with pytest.raises(ApiError, match="duration"):
        ops.since_time("yesterday")
    assert ops.PREFIX.match("train-3f2a") and ops.PREFIX.match("3f2a") and not ops.PREFIX.match("s3://x")


class FakeApi:
    """The API boundary for the log reader: pages as a server answers them, in order."""

    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self.pages = pages
        self.tokens: list[str | None] = []

    def logs(self, workspace: str, job_id: str, token: str | None) -> dict[str, Any]:
        self.tokens.append(token)
        return self.pages[min(len(self.tokens), len(self.pages)) - 1]


def events(*messages: str) -> list[dict[str, Any]]:
    return [{"timestamp": i, "message": m} for i, m in enumerate(messages)]


def test_log_reader_follows_c7_until_complete() -> None:
    api = FakeApi([{"status": "RUNNING", "events": events("a", "b"), "next": "t1", "complete": False},
                   {"status": "RUNNING", "events": [], "next": "t1b", "complete": False},
                   {"status": "COMPLETED", "events": events("c"), "next": "t2", "complete": True}])
    reader = ops.LogReader(api, "w", "train-x", follow=True, timeout=30)  # type: ignore[arg-type]
    assert [e["message"] for e in reader] == ["a", "b", "c"] and reader.status == "COMPLETED"
    assert api.tokens == [None, "t1", "t1b"]


def test_log_reader_tolerates_the_old_answer() -> None:
    """The old server re-served the sent token with the same events and had no `complete`: printed once, and the
    log ends when the job is terminal and a page brings nothing new."""
    page = {"status": "FAILED", "events": events("a", "b"), "next": None}
    api = FakeApi([page, page])
    reader = ops.LogReader(api, "w", "train-x", follow=True, timeout=30)  # type: ignore[arg-type]
    assert [e["message"] for e in reader] == ["a", "b"] and ops.exit_code(reader.status) == 1


def test_log_reader_without_follow_stops_at_the_end_of_what_is_there() -> None:
    api = FakeApi([{"status": "RUNNING", "events": events("a"), "next": "t1", "complete": False},
                   {"status": "RUNNING", "events": [], "next": "t2", "complete": False}])
    assert [e["message"] for e in ops.LogReader(api, "w", "j", follow=False)] == ["a"]  # type: ignore[arg-type]


def stand_in_cdk(tmp_path: Path, api_url: str) -> Path:
    """The one faked boundary of `cloud deploy`: a cdk that records its arguments and writes the outputs file a
    real `cdk deploy --outputs-file` writes (same shape, the given API URL)."""
    script = tmp_path / "cdk"
    script.write_text(f"""#!{sys.executable}
import json, sys
args = sys.argv[1:]
open({str(tmp_path / 'cdk-args.json')!r}, 'w').write(json.dumps(args))
if args[0] == 'deploy':
    out = args[args.index('--outputs-file') + 1]
    json.dump({{'Kaos': {{'ApiUrl': {api_url!r}, 'BucketName': 'kaos-data', 'TableName': 'kaos'}}}}, open(out, 'w'))
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_cloud_deploy_dry_run_prints_the_exact_cdk_command(tmp_path: Path) -> None:
    result = kaos(tmp_path, "cloud", "deploy", "--profile", "admin", "--region", "eu-west-1", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert shlex.split(result.stdout) == [
        str(cloud.REPO_ROOT / "node_modules" / ".bin" / "cdk"), "deploy", "Kaos", "--require-approval", "never",
        "--outputs-file", str(tmp_path / "cloud-outputs.json"), "-c", "region=eu-west-1", "-c", "stage=dev",
        "--profile", "admin"]


def test_cloud_deploy_writes_the_client_config_and_config_use_switches(offline: Path, tmp_path: Path) -> None:
    url = "https://abc123.execute-api.eu-west-1.amazonaws.com/api/"
    env = {cloud.CDK_ENV: str(stand_in_cdk(tmp_path, url))}
    deployed = kaos(offline, "cloud", "deploy", "--profile", "kaos-local-dev", "--region", "eu-west-1", env=env)
    assert deployed.returncode == 0, deployed.stderr
    assert json.loads((tmp_path / "cdk-args.json").read_text())[:3] == ["deploy", "Kaos", "--require-approval"]
    shown = json.loads(kaos(offline, "config", "show", "--json").stdout)
    assert shown["target"] == "cloud" and shown["api_url"] == url and shown["region"] == "eu-west-1"
    assert shown["profile"] == "kaos-local-dev" and shown["known_targets"] == ["cloud", "local"]
    back = kaos(offline, "config", "use", "local")
    assert back.returncode == 0 and json.loads(kaos(offline, "config", "show", "--json").stdout)["target"] == "local"
    failed(kaos(offline, "workspace", "list"), "start it with `kaos local up --detach`")
    assert kaos(offline, "config", "use", "cloud").returncode == 0
    assert json.loads(kaos(offline, "config", "show", "--json").stdout)["api_url"] == url


def test_config_use_cloud_before_any_deploy_says_how(tmp_path: Path) -> None:
    failed(kaos(tmp_path, "config", "use", "cloud"), "`kaos cloud deploy` creates it")


def test_destroy_names_what_prod_keeps() -> None:
    from cdk.synth import synthesize

    # The template tests/test_cdk.py synthesizes (a cache hit when it ran first).
    template = json.loads(synthesize(cloud.REPO_ROOT / ".cache" / "cdk-test" / "prod", {"stage": "prod"})
                          .read_text())
    kept = cloud.kept_resources(template)
    assert any(k.startswith("AWS::DynamoDB::Table ") for k in kept)
    assert sum(k.startswith("AWS::S3::Bucket ") for k in kept) >= 2


# --- one embedded stack --------------------------------------------------------------------------------------
WS = "cli"


class Session:
    """The stack's client home; every command's output is kept for the assertions."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def run(self, *args: str, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        result = kaos(self.stack.home, *args, env=env)
        assert "Traceback" not in result.stderr, result.stderr
        if check:
            assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result

    def deploy(self, code: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("train", "deploy", "-w", WS, "-s", str(code), "-d", str(TEMPLATE / "data"), *args,
                        check=check)


@dataclass
class Flow:
    """What the module's scenario did and printed. Everything that changes the workspace happens here, once, so the
    tests below only read (and do not depend on their order or on which pytest-xdist worker runs them)."""

    cli: Session
    quick: dict[str, Any]
    slow: dict[str, Any]
    bad: str
    outputs: dict[str, subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def flow(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Flow:
    """Three tiny jobs (quick, logging while it runs, failing) and the commands whose output the tests check."""
    cli = Session(stack)
    cli.run("workspace", "create", WS)
    quick_code = tiny_code(tmp_path_factory.mktemp("quick"))
    quick = json.loads(cli.deploy(quick_code, "--json").stdout)
    slow_code = tiny_code(tmp_path_factory.mktemp("slow"),
                          "for i in range(3):\n    print('line', i, flush=True)\n    time.sleep(1)")
    slow = json.loads(cli.deploy(slow_code, "--json").stdout)
    bad_code = tiny_code(tmp_path_factory.mktemp("bad"), "print('about to fail'); sys.exit(3)")
    outputs = {"wait": cli.deploy(bad_code, "--wait", check=False)}
    bad = re.match(r"job (train-[0-9a-f]{24}) submitted", outputs["wait"].stderr)
    assert bad, outputs["wait"].stderr
    outputs["again"] = cli.deploy(bad_code, check=False)
    outputs["follow"] = cli.run("train", "logs", "-w", WS, "-f", slow["id"])
    outputs["whole"] = cli.run("train", "logs", "-w", WS, slow["id"])
    outputs["follow_bad"] = cli.run("train", "logs", "-w", WS, "-f", bad[1], check=False)
    outputs["failed_only"] = cli.run("train", "list", "-w", WS, "--status", "failed", "--json")
    outputs["share_nobody"] = cli.run("workspace", "share", WS, "nobody", check=False)
    outputs["share_guest"] = cli.run("workspace", "share", WS, "guest")
    extra = tmp_path_factory.mktemp("push") / "more.csv"
    extra.write_text((TEMPLATE / "data" / "digits.csv").read_text().splitlines()[0] + "\n")
    outputs["push"] = cli.run("data", "push", "-w", WS, str(extra))
    grid = tmp_path_factory.mktemp("grid") / "grid.json"
    grid.write_text(json.dumps({"x": [1, 2]}))
    outputs["grid"] = cli.run("train", "deploy", "-w", WS, "-s", str(quick_code), "-h", str(grid), "--wait")
    # Pages of the finished workspace: the first job, then the rest from its --next token.
    outputs["first_page"] = cli.run("train", "list", "-w", WS, "--limit", "1")
    outputs["every"] = cli.run("train", "list", "-w", WS, "--all", "--json")
    token = re.search(r"--next (\S+)`", outputs["first_page"].stderr)
    assert token, outputs["first_page"].stderr
    outputs["second_page"] = cli.run("train", "list", "-w", WS, "--limit", "1", "--next", token[1], "--json")
    return Flow(cli, quick, slow, bad[1], outputs)


def test_wait_without_a_terminal_prints_the_id_first_and_one_line_per_state(flow: Flow) -> None:
    result = flow.outputs["wait"]
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"job {flow.bad} submitted"
    states = [line.removeprefix(f"{flow.bad}: ") for line in lines[1:]]
    assert states[-1] == "FAILED" and all(a != b for a, b in itertools.pairwise(states)), lines
    assert set(states) <= {*ops.TERMINAL, "SUBMITTED", "PENDING", "RUNNING", "TRAINING"}, lines


def test_a_failed_identical_job_is_no_cache_hit(flow: Flow) -> None:
    text = failed(flow.outputs["again"], f"job {flow.bad} with identical inputs ended FAILED",
                  f"`kaos train resume {flow.bad} -w {WS}`")
    assert "cache hit" not in text


def test_logs_follow_ends_with_the_job(flow: Flow) -> None:
    followed = flow.outputs["follow"]
    assert [line for line in followed.stdout.splitlines() if line.startswith("line")] == \
        ["line 0", "line 1", "line 2"]
    assert flow.outputs["whole"].stdout == followed.stdout
    failing = flow.outputs["follow_bad"]
    assert failing.returncode == 1 and "about to fail" in failing.stdout


def test_ids_by_prefix(flow: Flow, tmp_path: Path) -> None:
    cli, quick = flow.cli, flow.quick["id"]
    for prefix in (quick[:12], quick.removeprefix("train-")[:8]):
        assert json.loads(cli.run("train", "info", "-w", WS, prefix, "--json").stdout)["id"] == quick
    ambiguous = failed(cli.run("train", "info", "-w", WS, "train-", check=False), "job or grid ids")
    assert flow.slow["id"] in ambiguous and quick in ambiguous
    failed(cli.run("train", "info", "-w", WS, "train-fffffff", check=False), "no job or grid id")
    snapshot = flow.quick["inputs"]["data"]["training"]
    # The same code and data again, the data named by a prefix of its snapshot id: the quick job, a cache hit.
    reused = json.loads(cli.run("train", "deploy", "-w", WS, "-s", str(tiny_code(tmp_path)),
                                "-d", f"snapshot:{snapshot[:10]}", "--json").stdout)
    assert reused["id"] == quick and reused["inputs"]["data"] == {"training": snapshot}


def test_grids_by_prefix(flow: Flow) -> None:
    """A grid's id is found from its points' jobs; waiting for it without a terminal prints one line per change."""
    waited = flow.outputs["grid"]
    grid = re.match(r"grid (grid-[0-9a-f]{24}) submitted\n", waited.stderr)
    assert grid, waited.stderr
    assert waited.stderr.strip().splitlines()[-1] == f"{grid[1]}: COMPLETED, 2/2 points done"
    for prefix in (grid[1][:10], grid[1].removeprefix("grid-")[:8]):
        shown = json.loads(flow.cli.run("train", "info", "-w", WS, prefix, "--json").stdout)
        assert shown["id"] == grid[1] and shown["points"] == 2


def test_lists_show_full_ids_and_page(flow: Flow) -> None:
    cli = flow.cli
    table = cli.run("train", "list", "-w", WS).stdout  # COLUMNS=100
    assert flow.quick["id"] in table and flow.slow["id"] in table
    every = json.loads(flow.outputs["every"].stdout)["jobs"]
    assert {flow.quick["id"], flow.slow["id"], flow.bad} <= {j["id"] for j in every}
    assert every[0]["id"] in flow.outputs["first_page"].stdout
    rest = json.loads(flow.outputs["second_page"].stdout)
    assert [j["id"] for j in rest["jobs"]] == [every[1]["id"]]
    assert [j["id"] for j in json.loads(flow.outputs["failed_only"].stdout)["jobs"]] == [flow.bad]
    since = json.loads(cli.run("train", "list", "-w", WS, "--all", "--since", "2000-01-01", "--json").stdout)
    assert {j["id"] for j in every} <= {j["id"] for j in since["jobs"]}
    assert json.loads(cli.run("train", "list", "-w", WS, "--since", "2999-01-01", "--json").stdout)["jobs"] == []


def test_share_checks_local_users(flow: Flow) -> None:
    failed(flow.outputs["share_nobody"], "no user 'nobody'")
    assert "guest" in flow.outputs["share_guest"].stdout


def test_data_push_with_auto_retrain_off_suggests_the_command_to_turn_it_on(flow: Flow) -> None:
    assert f"`kaos workspace auto-retrain {WS} on`" in flow.outputs["push"].stdout


def test_cloud_deploy_then_workspace_list_talks_to_the_deployed_api(flow: Flow, tmp_path: Path) -> None:
    """The embedded stack stands in for the account: the stand-in cdk reports its API as the stack's ApiUrl."""
    home = tmp_path / "home"
    env = {cloud.CDK_ENV: str(stand_in_cdk(tmp_path, flow.cli.stack.api_url)),
           "AWS_SHARED_CREDENTIALS_FILE": str(flow.cli.stack.state_dir / "credentials")}
    deployed = kaos(home, "cloud", "deploy", "--profile", "kaos-local-dev", "--region", "us-east-1", env=env)
    assert deployed.returncode == 0, deployed.stderr
    listed = kaos(home, "workspace", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert WS in {w["name"] for w in json.loads(listed.stdout)}


def test_cloud_status_and_destroy_read_the_emulated_account(flow: Flow, tmp_path: Path) -> None:
    """The embedded stack's CloudFormation stands in for the account: a Kaos stack created there (one resource kept
    on deletion, an ApiUrl output) is what `cloud status` reports and what `cloud destroy` says it keeps."""
    stack = flow.cli.stack
    cfn = stack.aws("cloudformation")
    template = {"Resources": {"Data": {"Type": "AWS::CloudFormation::WaitConditionHandle", "DeletionPolicy": "Retain"},
                              "Scratch": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
                "Outputs": {"ApiUrl": {"Value": stack.api_url}}}
    cfn.create_stack(StackName=cloud.STACK_NAME, TemplateBody=json.dumps(template))
    admin = json.loads((stack.state_dir / "aws-admin.json").read_text())
    env = {"AWS_ENDPOINT_URL": stack.runtime["endpoint_url"], "AWS_ACCESS_KEY_ID": admin["aws_access_key_id"],
           "AWS_SECRET_ACCESS_KEY": admin["aws_secret_access_key"],
           cloud.CDK_ENV: str(stand_in_cdk(tmp_path, stack.api_url))}
    try:
        status = json.loads(kaos(tmp_path, "cloud", "status", "--region", "us-east-1", "--json", env=env).stdout)
        assert status["status"] == "CREATE_COMPLETE" and status["outputs"] == {"ApiUrl": stack.api_url}
        refused = kaos(tmp_path, "cloud", "destroy", "--region", "us-east-1", env=env, answer="n\n")
        assert refused.returncode == 1 and "AWS::CloudFormation::WaitConditionHandle Data" in refused.stdout
        assert "Scratch" not in refused.stdout and not (tmp_path / "cdk-args.json").exists()
        destroyed = kaos(tmp_path, "cloud", "destroy", "--region", "us-east-1", "--yes", env=env)
        assert destroyed.returncode == 0, destroyed.stderr
        assert json.loads((tmp_path / "cdk-args.json").read_text())[:3] == ["destroy", "Kaos", "--force"]
    finally:
        cfn.delete_stack(StackName=cloud.STACK_NAME)
    failed(kaos(tmp_path, "cloud", "status", "--region", "us-east-1", env=env), "no Kaos stack in us-east-1")


def test_every_suggested_command_runs_as_printed(flow: Flow, offline: Path) -> None:
    """Every command the CLI suggested in the scenario, and in the no-stack failures, run in the stack's client
    home (where `kaos local up --detach` finds the stack running). Placeholders (NAME) are filled in."""
    for args in (("workspace", "list"), ("workspace", "list", "--json")):
        kaos(offline, *args)  # stack down
        kaos(offline, *args, env={"KAOS_PROFILE": "nobody"})  # bad profile
    suggested = {command for result in flow.outputs.values()
                 for command in SUGGESTION.findall(result.stdout + result.stderr)} | SUGGESTED
    assert {f"kaos train resume {flow.bad} -w {WS}", f"kaos workspace auto-retrain {WS} on",
            "kaos local up --detach", "kaos config show"} <= suggested
    for command in sorted(c for c in suggested if not c.startswith(NEEDS_AN_ACCOUNT)):
        flow.cli.run(*[WS if word == "NAME" else word for word in shlex.split(command)[1:]])
