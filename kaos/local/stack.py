"""The embedded stack: emulator + resources from the synthesized template + in-process Lambdas + the API.

`kaos local up` runs `LocalStack.run()` in the foreground (or as a detached child that writes `runtime.json`
when ready). The product code running inside sees only AWS_ENDPOINT_URL and the environment the template
gives its functions; there is no emulator branch anywhere in chalicelib/, functions/ or app/.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import json
import logging
import os
import secrets
import select
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any
from collections.abc import Callable, Mapping

from kaos.local.gateway import ADMIN_USER, ApiGateway, GatewayServer, LocalUser, PortInUse, listen
from kaos.local import iam, patches
from kaos.local.lambda_runtime import FunctionPool, FunctionSpec, WarmParent, function_environment
from kaos.local.loader import ACCOUNT_ID, REGION, TemplateLoader, import_handler
from kaos.local.persistence import Persistence
from kaos.local.state_dir import TEST_HOOKS_ENV, Runtime, StateDirInUse, lock_state_dir
from kaos.settings import ClientConfig, home

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL_USERS = ("dev", "guest")
# Environment of `kaos local up` -> synth context: emulator buckets that remote data manifests (-m s3://...) may
# name (comma-separated). Unset by default.
LOCAL_CONTEXT = {"KAOS_LOCAL_REMOTE_DATA_BUCKETS": "remoteDataBuckets"}
# Environment of `kaos local up` -> context that on AWS only becomes function environment variables (OpenLineage's
# HTTP endpoint and file transport; cdk/stack.py). It is synthesized as a placeholder and filled in at start, so
# every value (each test run's receiver port) shares one cached synth instead of paying 40-90 s for its own.
RUNTIME_CONTEXT = {"KAOS_OPENLINEAGE_URL": "openLineageUrl", "KAOS_OPENLINEAGE_FILE": "openLineageFile"}
# Set by whoever starts a stack that must not outlive it (the test suite: its own pid): the stack stops when that
# process ends, however it ended, so a test run killed by its timeout leaves no stack behind.
PARENT_PID_ENV = "KAOS_LOCAL_PARENT_PID"
# A stop (SIGTERM, SIGINT, the parent gone) ends the process within this many seconds.
STOP_SECONDS = 10.0
# While serving, freed heap pages go back to the system this often (see _trim_heap).
TRIM_SECONDS = 30.0
M_ARENA_MAX = -8  # glibc's mallopt parameter number
# What a kaos user's IAM identity needs on AWS: calling the API (execute-api:Invoke); nothing else.
API_USER_POLICY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": f"arn:aws:execute-api:{REGION}:*:*"}]}


def default_state_dir() -> Path:
    return home() / "local"


def local_environment_image() -> str:
    """The default training image offline is the one on AWS (the catalogue's default for this region): the runner
    builds that image's environment (kaos.local.environments), so a job's fingerprint is the same in both places."""
    from cdk.constants import default_training_image

    return default_training_image(REGION)


FUNCTION_TYPES = ("AWS::Lambda::Function", "AWS::Serverless::Function")


def _placeholder(name: str) -> str:
    return f"@{name}@"


def local_template(environ: Mapping[str, str]) -> dict[str, Any]:
    """The template `kaos local up` runs with this environment: what `cdk synth -c ...` gives for the settings
    that are CDK context on AWS (LOCAL_CONTEXT, RUNTIME_CONTEXT), from one synth cache per checkout and
    LOCAL_CONTEXT value (the template depends only on the sources and the context)."""
    from cdk.synth import KEY_FILE, synthesize

    extra = {key: environ[name] for name, key in LOCAL_CONTEXT.items() if environ.get(name)}
    runtime = {key: _placeholder(name) for name, key in RUNTIME_CONTEXT.items()}
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:8]
    outdir = REPO_ROOT / ".cache" / (f"synth-{digest}" if extra else "synth")
    context = {"trainingImage": local_environment_image(), **extra, **runtime}
    key = outdir / KEY_FILE
    for _ in range(3):
        path = synthesize(outdir, context)
        # Read after synthesize() released the cache's lock: a start of other sources (another checkout, an edit)
        # synthesizing into the same directory meanwhile removes the key first, so an unchanged key around the read
        # means the template read is the one synthesize() checked.
        checked = key.read_text() if key.exists() else None
        text = path.read_text()
        if checked is not None and key.exists() and key.read_text() == checked:
            break
    else:
        raise RuntimeError(f"{outdir} is being synthesized from other sources by another process; start again")
    template: dict[str, Any] = json.loads(text)
    for resource in template["Resources"].values():
        variables = resource.get("Properties", {}).get("Environment", {}).get("Variables", {})
        if resource["Type"] not in FUNCTION_TYPES or not isinstance(variables, dict):
            continue
        for name in RUNTIME_CONTEXT:
            if variables.get(name) == _placeholder(name):
                # Unset: empty, as a synth without that context declares it (the feature is off).
                variables[name] = environ.get(name, "")
    leftover = [name for name in RUNTIME_CONTEXT if _placeholder(name) in json.dumps(template)]
    if leftover:
        raise RuntimeError(f"the template uses context for {leftover} beyond function environment variables: "
                           "move it to LOCAL_CONTEXT (synthesized with its value)")
    return template


def load_users(state_dir: Path, admin: bool = False) -> dict[str, LocalUser]:
    """Local IAM users, created once per state dir and kept, with a credentials profile for each; the admin
    user (test hooks) exists only while `admin` is set."""
    path = state_dir / "users.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    if not admin:
        stored.pop(ADMIN_USER, None)
    for name in (*LOCAL_USERS, *((ADMIN_USER,) if admin else ())):
        stored.setdefault(name, {"access_key": "AKIA" + secrets.token_hex(8).upper(),
                                 "secret_key": secrets.token_urlsafe(30)})
    path.write_text(json.dumps(stored, indent=2))
    path.chmod(0o600)
    lines = []
    for name, keys in stored.items():
        lines += [f"[kaos-local-{name}]", f"aws_access_key_id = {keys['access_key']}",
                  f"aws_secret_access_key = {keys['secret_key']}", ""]
    credentials = state_dir / "credentials"
    credentials.write_text("\n".join(lines))
    credentials.chmod(0o600)
    return {
        keys["access_key"]: LocalUser(name, keys["access_key"], keys["secret_key"]) for name, keys in stored.items()
    }


class LambdaFaults:
    """Makes the next N invocations of a function (matched by a substring of its name) raise an error."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, list[Any]] = {}

    def add(self, name_part: str, error: str, times: int) -> None:
        with self._lock:
            self._pending[name_part] = [error, times]

    def wrap(self, name: str, handler: Any) -> Any:
        def invoke(event: Any, context: Any) -> Any:
            with self._lock:
                hit = next((k for k, (_, left) in self._pending.items() if k in name and left > 0), None)
                if hit is not None:
                    self._pending[hit][1] -= 1
                    error = self._pending[hit][0]
            if hit is not None:
                # The exception's class name becomes the Step Functions error name, as with a real handler.
                raise type(error, (Exception,), {})(f"injected fault in {name}")
            return handler(event, context)

        return invoke


class _StopRequested(BaseException):
    """SIGTERM/SIGINT while the stack starts: unwinds the start (BaseException, so no handler on the way keeps
    it), then the stop runs."""


def watch_process(pid: int, gone: Callable[[], None]) -> threading.Thread:
    """Calls `gone` (in a daemon thread) once process `pid` has ended, however it ended: a pidfd wakes the thread
    when the kernel reaps it; without pidfds (kernels before 5.3) the pid is checked every second."""
    def wait() -> None:
        try:
            descriptor = os.pidfd_open(pid)
        except ProcessLookupError:
            gone()
            return
        except OSError:
            while _alive(pid):
                time.sleep(1)
            gone()
            return
        try:
            select.select([descriptor], [], [])
        finally:
            os.close(descriptor)
        gone()

    thread = threading.Thread(target=wait, name=f"watch-{pid}", daemon=True)
    thread.start()
    return thread


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalStack:
    def __init__(self, state_dir: Path, api_port: int = 0, test_hooks: bool | None = None,
                 quiet: bool = False) -> None:
        self.state_dir = state_dir
        self.test_hooks = os.environ.get(TEST_HOOKS_ENV) == "1" if test_hooks is None else test_hooks
        self.api_port = api_port
        self.quiet = quiet
        self.emulator: Any = None
        self.gateway: GatewayServer | None = None
        self.outputs: dict[str, str] = {}
        self.faults = LambdaFaults()
        self.persistence: Persistence | None = None
        self.pools: list[FunctionPool] = []
        # One warm parent forks every function's environments, the API's too: what it preloads is the runtime's
        # third-party modules and botocore's data, no package's code, paths or variables (lambda_runtime), so the
        # packages need no parent each (one was ~25-45 MB of PSS at a grid's peak, and ~70 MB of RSS at rest).
        self.parent = WarmParent(())
        self._lock: Any = None  # the state directory's lock file (lock_state_dir), held while the process runs
        self.api_pool: FunctionPool | None = None

    def _control(self, request: dict[str, Any]) -> dict[str, Any]:
        """Test hooks: what the warm Lambda environments say of themselves (`inspect`), or fault injection: an AWS
        API error on the next calls, or a raising Lambda handler."""
        if request.get("inspect") == "environments":
            return {"environments": [found for pool in self.pools for found in pool.inspect()]}
        times = int(request.get("times", 1))
        if "lambda" in request:
            self.faults.add(str(request["lambda"]), str(request.get("error", "InjectedFault")), times)
        else:
            self.emulator.inject_fault(str(request["service"]), str(request["action"]), str(request["code"]), times)
        return {"injected": request}

    def start(self) -> Runtime:
        from kaos.local.emulator import Emulator

        listening = listen(self.api_port)  # first: a busy port fails at once (PortInUse)
        # Every workspace's files pass through here: only this user may read them (dirs 0700, files 0600).
        os.umask(0o077)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = lock_state_dir(self.state_dir)  # before anything in the directory is read or written
        for private in (self.state_dir, self.state_dir / "work"):
            private.mkdir(mode=0o700, exist_ok=True)
            private.chmod(0o700)
        template = local_template(os.environ)
        # The exact template this stack runs (roles, policies, functions): for inspection and the tests.
        (self.state_dir / "template.json").write_text(json.dumps(template))
        # IAM enforced: every request to the emulator is decided by the caller's policies (kaos/local/iam.py).
        self.emulator = Emulator(self.state_dir / "work", enforce_iam=True)
        endpoint = self.emulator.start()
        # Workspaces, snapshots, jobs, models and logs outlive the process: <state_dir>/data (see persistence.py).
        # The change tracker goes in front of moto's WSGI app before anything writes.
        self.persistence = Persistence(self.state_dir, self.emulator.client, REGION, ACCOUNT_ID)
        self.persistence.track(self.emulator.wsgi_server)
        if str(REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(REPO_ROOT))
        stack = TemplateLoader(template, self.emulator.client, REPO_ROOT).load()
        assert stack.api is not None, "the template has no API function"
        # This process's own product-model calls (restore's fail_interrupted_jobs) act as the emulator's admin.
        # Functions and jobs never inherit this environment: they get exactly theirs (lambda_runtime, containers).
        admin = self.emulator.admin
        os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
                           "AWS_ACCESS_KEY_ID": admin.access_key, "AWS_SECRET_ACCESS_KEY": admin.secret_key,
                           **stack.api.variables})
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            os.environ.pop(key, None)
        # The resources exist (empty) and nothing serves yet: load the stored state, fail interrupted jobs.
        with patches.s3_events_suspended():
            restored = self.persistence.restore()
        if restored.counts:
            _print(f"restored state from {self.persistence.store.data_dir} in {restored.seconds:.2f} s: "
                   f"{restored.counts}")
        self.persistence.start()
        for name, spec in stack.functions.items():
            pool = self._pool(spec, endpoint)
            self.emulator.register_lambda(name, self.faults.wrap(name, pool.invoke))
        self.outputs = stack.outputs
        api_pool = self.api_pool = self._pool(stack.api, endpoint)
        sys.path.insert(0, str(REPO_ROOT / "app"))
        chalice_app = import_handler(stack.api.handler)  # for route matching only; the API runs in api_pool
        users = load_users(self.state_dir, admin=self.test_hooks)
        for user in users.values():
            # The local users are IAM users that may call the API and nothing else: no direct AWS access.
            iam.create_user(user.name, user.access_key, user.secret_key, API_USER_POLICY)
        gateway = ApiGateway(chalice_app, users,  # type: ignore[arg-type]
                             region=REGION, control=self._control if self.test_hooks else None,
                             invoke=api_pool.invoke)
        self.gateway = GatewayServer(gateway, listening, on_write=self.persistence.flush,
                                     log=None if self.quiet else _print)
        api_url = self.gateway.start()
        runtime = Runtime(api_url=api_url, endpoint_url=endpoint, pid=os.getpid(), state_dir=str(self.state_dir))
        self._configure_client(runtime)
        # The emulator's own identity, for inspecting what the product stored (tests, debugging); the state
        # dir is 0700 and the file 0600.
        admin = self.emulator.admin
        (self.state_dir / "aws-admin.json").write_text(json.dumps(
            {"aws_access_key_id": admin.access_key, "aws_secret_access_key": admin.secret_key}))
        (self.state_dir / "runtime.json").write_text(json.dumps(runtime.__dict__))
        return runtime

    def _prewarm(self) -> None:
        """After the ready line, while the user types the next command: an API environment made ahead (the first
        request after `up` waited for its cold start, 0.98 s of a `kaos workspace list` that takes 0.43 s warm),
        and with it the warm parent every function forks from. Both are what the first request makes anyway; the
        environment is reaped when idle, as any other."""
        if self.api_pool is not None:
            self.api_pool.prewarm()

    def _pool(self, spec: FunctionSpec, endpoint: str) -> FunctionPool:
        """A function's environments: its template's variables and a fresh session of its role each."""
        def environment() -> dict[str, str]:
            keys = self.emulator.role_keys(spec.role_arn, "lambda.amazonaws.com")
            return function_environment(spec, keys, REGION, endpoint)

        pool = FunctionPool(spec, environment, self.parent)
        self.pools.append(pool)
        return pool

    def _configure_client(self, runtime: Runtime) -> None:
        config = ClientConfig.load()
        config.api_url = runtime.api_url
        config.region = REGION
        config.profile = f"kaos-local-{LOCAL_USERS[0]}"
        config.credentials_file = str(self.state_dir / "credentials")
        config.save()

    def stop(self) -> None:
        """Stops serving, then the functions (all at once), stores the state and stops the emulator (and the
        jobs)."""
        if self._lock is None:
            return  # the start stopped before it held the state directory: nothing of it is this process's
        (self.state_dir / "runtime.json").unlink(missing_ok=True)
        if self.gateway is not None:
            self.gateway.stop()
        from kaos.local.emulator import at_once

        at_once([pool.close for pool in self.pools])
        self.parent.close()
        try:
            if self.persistence is not None:
                # Before the emulator stops: the last writes (and the in-flight jobs, failed on the next start).
                report = self.persistence.stop()
                if report is not None:
                    _print(f"saved state in {report.seconds:.2f} s: {report.counts}")
        finally:
            if self.emulator is not None:
                self.emulator.stop()

    def run(self) -> None:
        """Foreground: serve until SIGINT/SIGTERM, or until the process named by PARENT_PID_ENV ends; a signal
        during the start stops it there. The stop takes at most STOP_SECONDS, then the process ends anyway."""
        _configure_logging(self.quiet)
        done = threading.Event()
        starting = True

        def on_signal(signum: int, _frame: object) -> None:
            done.set()
            if starting:
                raise _StopRequested(signum)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        parent = os.environ.get(PARENT_PID_ENV)
        if parent:
            # The same path as a `kaos local down`: a SIGTERM to this process, handled in the main thread.
            watch_process(int(parent), lambda: os.kill(os.getpid(), signal.SIGTERM))
        try:
            runtime = self.start()
            starting = False
            _print(f"kaos local stack ready: API {runtime.api_url} (AWS emulator {runtime.endpoint_url})")
            threading.Thread(target=self._prewarm, name="prewarm", daemon=True).start()
            _settle_collector()
            while not done.wait(TRIM_SECONDS):
                _trim_heap()
        except _StopRequested:
            pass
        finally:
            starting = False
            _exit_after(STOP_SECONDS)
            self.stop()
        # Everything is stored: the interpreter's own teardown (every module, every thread's objects, atexit
        # joins) would only delay the exit by seconds.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _configure_logging(quiet: bool) -> None:
    """The foreground log: warnings and errors one line each (the cause, no traceback); quiet: errors only."""
    handler = logging.StreamHandler()
    handler.setFormatter(_OneLine("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.ERROR if quiet else logging.WARNING, handlers=[handler], force=True)
    # The emulator's own HTTP requests (many per API request) are not logged, nor moto's report of each failed
    # state (a failed training is an outcome the API reports, not an error of the stack).
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    logging.getLogger("moto").setLevel(logging.CRITICAL)
    warnings.showwarning = _warning_line


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: object = None, line: str | None = None) -> None:
    """A Python warning (a library's, e.g. moto's on a template it half supports) as one log line, without the
    source line `warnings` prints under it."""
    logging.getLogger("py.warnings").warning("%s: %s", category.__name__, message)


def _limit_malloc_arenas() -> None:
    """glibc gives each thread that allocates concurrently an arena of its own (up to 8 per core) and rarely
    returns their freed memory: the stack's many short-lived request threads left RSS growing with use. Two
    arenas serve it (the GIL serializes most allocation anyway); called before the first thread starts."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 2)
    except (OSError, AttributeError):  # not glibc: nothing to limit
        pass


def _settle_collector() -> None:
    """Ends the start's pause of the cyclic garbage collector (main): once collected, what the start built (moto,
    botocore's models, the template's resources, the restored state) is frozen out of every later collection. With
    ~1.5 M objects alive, each full collection during the start walked them all (0.5-0.7 s of a start on the state
    of 80 jobs); frozen, later collections walk only what changed since. Runs after the ready line, so no `up` waits
    for it."""
    gc.collect()
    gc.freeze()
    gc.enable()


def _trim_heap() -> None:
    """Returns the heap's free pages to the system (glibc keeps them otherwise), so RSS at rest is what is
    in use."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _print(line: str) -> None:
    print(line, flush=True)


def _exit_after(seconds: float) -> None:
    """Ends the process `seconds` from now whatever still runs (a wedged thread, a job that ignores SIGTERM, a
    non-daemon thread the interpreter would wait for at exit)."""
    def expire() -> None:
        sys.stderr.write(f"the stop took longer than {seconds:.0f} s; exiting now\n")
        sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kaos.local.stack", description=__doc__.split("\n")[0])
    parser.add_argument("state_dir", nargs="?", type=Path, default=None)
    parser.add_argument("port", nargs="?", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="print nothing per request")
    args = parser.parse_args(argv)
    _limit_malloc_arenas()
    gc.disable()  # until the start is done (_settle_collector)
    try:
        LocalStack(args.state_dir or default_state_dir(), args.port, quiet=args.quiet).run()
    except (PortInUse, StateDirInUse) as exc:
        sys.exit(f"kaos local up: {exc}")


class _OneLine(logging.Formatter):
    """A record and its exception on one line: the exception's type and message, never the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        exc_info, record.exc_info, record.exc_text = record.exc_info, None, None
        line = super().format(record)
        record.exc_info = exc_info
        if exc_info and exc_info[1] is not None:
            line += f" ({type(exc_info[1]).__name__}: {exc_info[1]})"
        return line


if __name__ == "__main__":
    main()
