"""Lambda execution environments for the embedded stack: one process per warm environment.

On AWS each function runs in its own sandbox with exactly the environment variables its template declares, the
runtime's reserved variables, and its execution role's temporary credentials. Offline, a function's handler runs in
a worker process started with exactly that (:func:`function_environment`) — never in the stack's own process, whose
environment and credentials are the emulator's. Like Lambda, one environment serves one invocation at a time; a pool
per function grows on demand up to ``max_workers`` (once an invocation has waited ``scale_out_wait`` for a busy one
to free; beyond ``max_workers`` invocations wait, as throttled ones retry on AWS) and keeps idle environments warm
for ``idle_seconds``, then ends them, as Lambda reclaims an environment that served nothing for a while (so a
burst's environments do not stay resident).

Wire protocol (worker side is :func:`main`): the parent writes one JSON line per invocation to the worker's
stdin; the worker answers with one JSON line on a private descriptor (its stdout is redirected to stderr, so a
handler's ``print`` never corrupts the protocol): ``{"result": ...}`` or ``{"errorType", "errorMessage",
"stackTrace"}`` as the Python runtime reports an unhandled error. Before its first answer it writes
:data:`INITIALIZED` once, when its handler's import is over (the pool's scale-out wait counts from there).

Environments start warm (:class:`WarmParent`): one process (the embedded stack has one for every function, the
API's too) is started with only the runtime's common, secret-free variables (no package's paths either, in "/"),
imports the third-party packages the functions import (:data:`PRELOAD`: botocore, pynamodb, chalice... ~0.4 CPU-s
of a ~0.9 CPU-s cold start), and forks each new environment. The child replaces its whole ``os.environ`` with its
function's before it imports anything of the function, and puts its package's folders first on its path, so a
function still sees exactly its variables, its code and its role's credentials; the parent holds no credentials
and has imported nothing of kaos (whose modules read their configuration at import). What the preload read from
the environment is checked against each function's: a difference refuses the fork rather than start a function
with module state made under other values.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import IO, Any

# What the Lambda Python runtime sets in every function's environment besides the template's variables
# (https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html#configuration-envvars-runtime).
RESERVED = ("AWS_EXECUTION_ENV", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_LAMBDA_FUNCTION_NAME",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_LOG_GROUP_NAME",
            "AWS_LAMBDA_LOG_STREAM_NAME",
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "LAMBDA_TASK_ROOT",
            "LAMBDA_RUNTIME_DIR", "LANG", "PATH", "LD_LIBRARY_PATH", "TZ", "PYTHONPATH")
# The one variable the embedded stack adds: where AWS is. Trust-store variables pass through so https
# remote data can be served by a local test CA (the Lambda image has its own trust store).
OFFLINE_ONLY = ("AWS_ENDPOINT_URL", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
# How long an idle environment stays warm. Lambda documents no figure (minutes, in practice); offline each one is
# a ~50 MB process, so a burst's environments are given back once the burst is over.
IDLE_SECONDS = float(os.environ.get("KAOS_LOCAL_LAMBDA_IDLE_SECONDS", "180"))
# What a warm parent imports before it forks environments: the third-party modules the handlers of both packages
# import (python -X importtime of app.app and functions.*), nothing of kaos. Importing them reads HOME and
# PYNAMODB_CONFIG, neither of which a template sets (checked at each fork).
PRELOAD = ("boto3", "botocore.session", "botocore.client", "botocore.config", "pynamodb.models",
           "pynamodb.attributes", "pynamodb.connection", "urllib3", "dateutil.parser", "jmespath", "chalice",
           "tarfile", "gzip", "uuid", "csv", "email.parser")
# The services kaos's functions make clients for (chalicelib.adapters.AwsClients; pynamodb's DynamoDB).
SERVICE_MODELS = ("dynamodb", "s3", "stepfunctions", "sagemaker", "sagemaker-runtime", "logs", "cloudwatch", "sts",
                  "iam", "batch")
# How many environments one function may have at once. Lambda scales out per concurrent invocation; offline an
# environment is a CPU-bound process of ~80 MB whose cold start alone is ~0.9 CPU-s, so more of them than the
# machine has cores only adds cold starts and memory: a 10-point grid on 2 cores took 37-39 s and 2.0 GB with 8
# per function, 27-31 s and 1.2 GB with 2 (bench.grid_fit). Further invocations wait for a free one, as a
# throttled invocation is retried on AWS.
CONCURRENCY = int(os.environ.get("KAOS_LOCAL_LAMBDA_CONCURRENCY", "0")) or max(2, os.cpu_count() or 2)
# How long an invocation that finds every environment of its function busy waits for one to free before the pool
# grows. Lambda would scale out at once; offline a new environment is a fork, its handler's import (0.1-0.3 CPU-s,
# on the same cores) and ~30 MB for as long as it stays warm, while a busy task function's environment is free again
# in tens of ms, or in ~0.8 s from a cold start. In a 10-point grid (bench.grid_fit) the pools grew to 7-8
# environments (Lambda processes 254-284 MB PSS at the tree's peak); waiting 0.25 s made 6 (242 MB), 0.5 s one
# per function, 5 (213 MB), with the same wall time. An invocation that takes longer still gets one of its own.
SCALE_OUT_WAIT_SECONDS = float(os.environ.get("KAOS_LOCAL_LAMBDA_SCALE_OUT_WAIT_SECONDS", "0.5"))
# Lambda's limit on an on-demand environment's init phase: an invocation waits no longer than this for a busy
# environment that is still importing its handler.
INIT_LIMIT_SECONDS = 10.0
# The runtime's line once the handler's import is over (a success or an init error), before its first answer.
INITIALIZED = b'"INITIALIZED"'


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    handler: str  # module.attribute
    variables: dict[str, str]
    role_arn: str
    timeout_seconds: int = 3
    memory_mb: int = 128
    code_paths: tuple[str, ...] = ()
    runtime: str = "python3.12"


def package_environment(code_paths: tuple[str, ...]) -> dict[str, str]:
    """The runtime's variables that every function of one deployment package has alike (no credentials), or with
    no package every function: all a warm parent is started with."""
    common = {"LANG": "en_US.UTF-8", "TZ": ":UTC",
              "PATH": os.path.dirname(sys.executable) + ":/usr/local/bin:/usr/bin:/bin"}
    if not code_paths:
        return common
    return {"LAMBDA_TASK_ROOT": code_paths[0], **common, "PYTHONPATH": os.pathsep.join(code_paths)}


def function_environment(spec: FunctionSpec, credentials: dict[str, str], region: str,
                         endpoint_url: str) -> dict[str, str]:
    env = {
        "AWS_EXECUTION_ENV": f"AWS_Lambda_{spec.runtime}", "AWS_REGION": region, "AWS_DEFAULT_REGION": region,
        "AWS_LAMBDA_FUNCTION_NAME": spec.name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb), "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.name}", **package_environment(spec.code_paths),
        **credentials, **spec.variables, "AWS_ENDPOINT_URL": endpoint_url,
    }
    for key in OFFLINE_ONLY[1:]:
        if key in os.environ:
            env[key] = os.environ[key]
    return env


class FunctionError(Exception):
    """An unhandled error inside the function, carrying the runtime's errorType."""

    def __init__(self, error_type: str, message: str, stack: list[str]) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.stack = stack


class _Worker:
    """One environment, forked by its package's warm parent: a pidfd for the process (a signal through it never
    reaches a reused pid), the pipe its invocations are written to and the one its answers come back on (read
    unbuffered: a line left in a reader's buffer would not wake the next select)."""

    def __init__(self, pidfd: int, requests: IO[bytes], answers: IO[bytes]) -> None:
        self.pidfd = pidfd
        self.requests, self.answers = requests, answers
        self._unread = bytearray()
        self.started = time.monotonic()
        self.idle_since = self.started
        self.initialized = False  # the runtime has said INITIALIZED (main): its handler's import is over
        self.handling_since = self.started  # when its current invocation's handler began (the pool's, under its lock)

    def call(self, request: dict[str, Any], timeout: float,
             on_initialized: Callable[[], None] = lambda: None) -> dict[str, Any] | None:
        """The worker's answer, or None if it did not answer in time or died (the worker is then unusable). The
        runtime's INITIALIZED line, if it comes first, calls `on_initialized`."""
        deadline = time.monotonic() + timeout
        try:
            self.requests.write(json.dumps(request).encode() + b"\n")
            self.requests.flush()
        except (BrokenPipeError, OSError):
            return None
        while True:
            line = self._line(deadline)
            if line is None:
                return None
            if line == INITIALIZED:
                self.initialized = True
                on_initialized()
                continue
            answer: dict[str, Any] = json.loads(line)
            return answer

    def _line(self, deadline: float) -> bytes | None:
        while b"\n" not in self._unread:
            with selectors.DefaultSelector() as selector:
                selector.register(self.answers, selectors.EVENT_READ)
                if not selector.select(max(0.0, deadline - time.monotonic())):
                    return None
            chunk = os.read(self.answers.fileno(), 1 << 16)
            if not chunk:
                return None
            self._unread += chunk
        line, _, rest = bytes(self._unread).partition(b"\n")
        self._unread = bytearray(rest)
        return line

    def kill(self) -> None:
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it has ended already

    def stop(self) -> None:
        """Kills it and waits for its end (the pidfd turns readable; its warm parent reaps it)."""
        self.kill()
        with selectors.DefaultSelector() as selector:
            selector.register(self.pidfd, selectors.EVENT_READ)
            selector.select(5)
        os.close(self.pidfd)
        self.answers.close()
        try:
            self.requests.close()
        except OSError:
            pass  # BrokenPipe on the flush of a closed pipe


class WarmParent:
    """The process that forks environments (see the module docstring): of one deployment package (`code_paths`,
    its folder the parent's), or of any package with none. Thread-safe: the pools of many functions fork through
    one."""

    def __init__(self, code_paths: tuple[str, ...]) -> None:
        self.code_paths = code_paths
        self._lock = threading.Lock()
        self._channel: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.read_at_import: dict[str, str | None] = {}
        self._closed = False

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "kaos.local.lambda_runtime", "--warm-parent", str(theirs.fileno())],
                env=package_environment(self.code_paths), stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),),
                cwd=self.code_paths[0] if self.code_paths else "/", start_new_session=True)
        ready = ours.recv(1 << 16)
        if not ready:
            ours.close()
            raise FunctionError("Runtime.Unknown", "the warm parent of the Lambda environments did not start", [])
        self.read_at_import = json.loads(ready)
        self._channel = ours
        return ours

    def fork(self, handler: str, env: dict[str, str], cwd: str | None) -> _Worker:
        """A new environment running `handler` with exactly `env`. A parent that has ended (killed, say) is
        started again once."""
        request_read, request_write = os.pipe()
        answer_read, answer_write = os.pipe()
        try:
            with self._lock:
                reply, fds = self._exchange(b"fork", [request_read, answer_write], env)
        except BaseException:
            for fd in (request_write, answer_read):
                os.close(fd)
            raise
        finally:
            os.close(request_read)
            os.close(answer_write)
        if not fds:
            for fd in (request_write, answer_read):
                os.close(fd)
            raise FunctionError("Runtime.Unknown", f"the warm parent could not fork: {reply.decode()!r}", [])
        worker = _Worker(fds[0], os.fdopen(request_write, "wb"), os.fdopen(answer_read, "rb", buffering=0))
        # The environment's setup is the first line of its request pipe, read by it alone: the function's variables
        # (its role's session keys) never pass through the warm parent, whose memory the next environment copies.
        try:
            worker.requests.write(json.dumps({"handler": handler, "env": env, "cwd": cwd}).encode() + b"\n")
            worker.requests.flush()
        except OSError:
            worker.stop()
            raise FunctionError("Runtime.Unknown", "the new environment ended before its setup", []) from None
        return worker

    def _exchange(self, message: bytes, fds: list[int], env: dict[str, str]) -> tuple[bytes, list[int]]:
        """Sends one fork request and reads its answer (the caller holds the lock)."""
        for attempt in (1, 2):
            if self._closed:  # a fork that raced the stack's stop starts no parent after its close
                raise FunctionError("Runtime.Shutdown", "the embedded stack is stopping", [])
            channel = self._channel or self._start()
            differ = sorted(name for name, value in self.read_at_import.items() if env.get(name) != value)
            if differ:
                raise FunctionError("Runtime.Unknown", f"the Lambda environments' preload read {differ}, which "
                                                       "this function's environment sets otherwise: not forked", [])
            try:
                socket.send_fds(channel, [message], fds)
                reply, received, _, _ = socket.recv_fds(channel, 1 << 16, 1)
            except OSError:
                reply, received = b"", []
            if reply:
                return reply, received
            self._end()  # the parent is gone: start another
            if attempt == 2:
                raise FunctionError("Runtime.Unknown", "the warm parent of the Lambda environments ended", [])
        raise AssertionError("unreachable")

    def _end(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def close(self) -> None:
        """Ends the parent (its environments are ended by their pools). A start in progress holds the lock while
        the parent preloads (~0.5 s): the process is killed first, so the stop does not wait for that."""
        self._closed = True
        starting = self._process
        if starting is not None:
            starting.kill()
        with self._lock:
            self._end()


def stop_all(workers: list[_Worker]) -> None:
    """Ends the workers at once: every one is killed before the first is waited for."""
    for worker in workers:
        worker.kill()
    for worker in workers:
        worker.stop()


@dataclass
class FunctionPool:
    """The warm environments of one function."""

    spec: FunctionSpec
    environment: Callable[[], dict[str, str]]
    parent: WarmParent
    max_workers: int = CONCURRENCY
    idle_seconds: float = IDLE_SECONDS
    scale_out_wait: float = SCALE_OUT_WAIT_SECONDS
    _idle: list[_Worker] = field(default_factory=list)
    _running: set[_Worker] = field(default_factory=set)  # busy ones: a stop ends them too
    _busy: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _closed: bool = False
    _closing: threading.Event = field(default_factory=threading.Event)  # wakes the reaper
    _reaper: threading.Thread | None = None

    def _grow_at(self, arrived: float) -> float:
        """When an invocation that arrived at `arrived` and found every environment busy makes a new one (the
        caller holds the condition): once it has waited scale_out_wait and each busy environment has run its
        handler that long. An environment's import does not count: a cold start is most of its first invocation,
        and a second import beside it on the same cores would not end sooner (only after Lambda's init limit does
        the pool stop waiting for one)."""
        grow_at = arrived + self.scale_out_wait
        for worker in self._running:
            began = worker.handling_since if worker.initialized else worker.started + INIT_LIMIT_SECONDS
            grow_at = max(grow_at, began + self.scale_out_wait)
        return grow_at

    def _acquire(self) -> _Worker:
        with self._cond:
            arrived = time.monotonic()
            while not self._idle and not self._closed:
                if self._busy >= self.max_workers:
                    self._cond.wait()  # at the bound: only a release frees one
                    continue
                wait = self._grow_at(arrived) - time.monotonic()
                if not self._busy or wait <= 0:
                    break  # grow: no environment yet, or the busy ones stayed busy for scale_out_wait
                self._cond.wait(wait)  # a release, or a busy one's INITIALIZED (_initialized), wakes it
            if self._closed:
                raise FunctionError("Runtime.Shutdown", "the embedded stack is stopping", [])
            self._busy += 1
            if self._idle:
                worker = self._idle.pop()
                worker.handling_since = time.monotonic()
                self._running.add(worker)
                return worker
        try:
            worker = self.parent.fork(self.spec.handler, self.environment(),
                                      self.spec.code_paths[0] if self.spec.code_paths else None)
        except BaseException:
            self._release(None)
            raise
        with self._cond:
            self._running.add(worker)
            self._cond.notify_all()  # a waiting invocation now counts it as initializing (_grow_at)
            if not self._closed:
                return worker
        self._release(worker, reusable=False)  # closed while it started: the stop missed it
        raise FunctionError("Runtime.Shutdown", "the embedded stack is stopping", [])

    def _initialized(self, worker: _Worker) -> None:
        """The environment's import is over: its handler runs from now (an invocation waiting on it recounts)."""
        with self._cond:
            worker.handling_since = time.monotonic()
            self._cond.notify_all()

    def _release(self, worker: _Worker | None, reusable: bool = True) -> None:
        with self._cond:
            self._busy -= 1
            if worker is not None:
                self._running.discard(worker)
                if reusable and not self._closed:
                    worker.idle_since = time.monotonic()
                    self._idle.append(worker)
                    worker = None
                    self._start_reaper()
            self._cond.notify()
        if worker is not None:
            worker.stop()

    def _start_reaper(self) -> None:
        """The pool's reaper thread, from its first idle environment on (the caller holds the condition)."""
        if self._reaper is None:
            self._reaper = threading.Thread(target=self._reap, name=f"lambda-reaper-{self.spec.name}", daemon=True)
            self._reaper.start()

    def _reap(self) -> None:
        """Ends the environments idle for ``idle_seconds`` (invocations take the most recently released one, so
        after a burst the others go idle and end)."""
        while not self._closing.is_set():
            with self._cond:
                now = time.monotonic()
                expired = [w for w in self._idle if now - w.idle_since >= self.idle_seconds]
                self._idle = [w for w in self._idle if w not in expired]
                oldest = min((w.idle_since for w in self._idle), default=now)
            stop_all(expired)
            # Its own event, not the pool's condition: a release's notify must reach a waiting invocation.
            self._closing.wait(max(0.05, oldest + self.idle_seconds - now))

    def invoke(self, event: Any, context: Any) -> Any:
        """Runs the handler on ``event``; raises :class:`FunctionError` as the runtime reports failures."""
        worker = self._acquire()
        timeout = float(self.spec.timeout_seconds)
        request = {"event": event, "request_id": getattr(context, "aws_request_id", ""),
                   "function_arn": getattr(context, "invoked_function_arn", ""), "timeout": timeout}
        # The function's own timeout, as Lambda enforces it; half a second for the pipe.
        answer = worker.call(request, timeout + 0.5, lambda: self._initialized(worker))
        if answer is None:
            self._release(worker, reusable=False)
            raise FunctionError("Sandbox.Timedout", f"Task timed out after {timeout:.2f} seconds", [])
        self._release(worker)
        if "errorType" in answer:
            raise FunctionError(str(answer["errorType"]), str(answer.get("errorMessage", "")),
                                list(answer.get("stackTrace", [])))
        return answer.get("result")

    def prewarm(self) -> None:
        """Makes one environment ahead of the first invocation and keeps it warm (idle, reaped as any other), as
        provisioned concurrency keeps one; nothing if the pool is closing."""
        try:
            worker = self._acquire()
        except FunctionError:
            return
        self._release(worker)

    def close(self) -> None:
        """Ends every environment, the busy ones too (their invocations fail as a stopped sandbox's would)."""
        with self._cond:
            self._closed = True
            workers, self._idle = [*self._idle, *self._running], []
            self._cond.notify_all()
        self._closing.set()
        stop_all(workers)

    def inspect(self) -> list[dict[str, Any]]:
        """What each idle environment's runtime says of itself (pid, os.environ): for the stack's test hooks."""
        with self._cond:
            answers = [worker.call({"inspect": True}, 10) for worker in self._idle]
        return [answer["result"] for answer in answers if answer is not None]

    @property
    def warm(self) -> int:
        """The idle environments kept warm now."""
        with self._cond:
            return len(self._idle)


# -- worker side ----------------------------------------------------------------------------------------


@dataclass
class _Context:
    function_name: str
    aws_request_id: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    deadline: float
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = ""

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


class _LogHandler(logging.Handler):
    """The handler the Lambda Python runtime (awslambdaric's bootstrap) puts on the root logger before it imports
    the function: each record as `[LEVEL]\\t<UTC time>\\t<request id>\\t<message>` to the function's log. Without it
    a function's INFO lines, which its own logger's level lets through on AWS, were dropped offline."""

    def __init__(self) -> None:
        super().__init__()
        self.request_id = ""
        self.setFormatter(logging.Formatter(
            "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s\n", "%Y-%m-%dT%H:%M:%S"))

    def filter(self, record: logging.LogRecord) -> bool:
        record.aws_request_id = self.request_id
        return True

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(self.format(record))
        sys.stderr.flush()


def main(handler_path: str, answer_fd: int) -> None:
    """The runtime's loop in an environment: imports the handler, then answers each invocation until stdin ends."""
    import importlib
    import traceback

    answers = os.fdopen(answer_fd, "wb")
    os.dup2(2, 1)  # the handler's prints go to the log (stderr), not into the protocol
    sys.stdout = sys.stderr
    logging.Formatter.converter = time.gmtime
    log = _LogHandler()
    logging.getLogger().addHandler(log)
    module_name, _, attribute = handler_path.rpartition(".")
    for path in reversed(os.environ.get("PYTHONPATH", "").split(os.pathsep)):
        if path and path not in sys.path:
            sys.path.insert(0, path)
    init_error: dict[str, Any] | None = None
    handler: Any = None
    try:
        handler = getattr(importlib.import_module(module_name), attribute)
    except Exception as exc:  # Runtime.ImportModuleError: every invocation reports it
        init_error = {"errorType": "Runtime.ImportModuleError",
                      "errorMessage": f"Unable to import module '{module_name}': {exc}", "stackTrace": []}
    answers.write(INITIALIZED + b"\n")  # the pool counts the scale-out wait from here (FunctionPool._grow_at)
    answers.flush()
    for line in sys.stdin.buffer:
        request = json.loads(line)
        if request.get("inspect"):
            answer: dict[str, Any] = {"result": {"pid": os.getpid(), "handler": handler_path,
                                                 "environ": dict(os.environ)}}
        elif init_error is not None:
            answer = init_error
        else:
            log.request_id = request["request_id"]
            context = _Context(os.environ.get("AWS_LAMBDA_FUNCTION_NAME", ""), request["request_id"],
                               request["function_arn"], int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                                                                           "128")),
                               time.monotonic() + float(request["timeout"]),
                               log_group_name=os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", ""))
            try:
                answer = {"result": handler(request["event"], context)}
            except Exception as exc:
                stack = traceback.format_tb(exc.__traceback__.tb_next if exc.__traceback__ else None)
                answer = {"errorType": type(exc).__name__, "errorMessage": str(exc), "stackTrace": stack}
            try:
                json.dumps(answer)
            except (TypeError, ValueError) as exc:
                answer = {"errorType": "Runtime.MarshalError", "errorMessage": f"Unable to marshal response: {exc}",
                          "stackTrace": []}
        answers.write(json.dumps(answer).encode() + b"\n")
        answers.flush()


# -- warm parent side ------------------------------------------------------------------------------------


class _WatchedEnvironment(MutableMapping[str, str]):
    """os.environ during an import: everything goes to the real one, and every name touched is kept ("*": the
    whole environment was listed)."""

    def __init__(self, real: MutableMapping[str, str]) -> None:
        self.real = real
        self.touched: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.touched.add(key)
        return self.real[key]

    def __setitem__(self, key: str, value: str) -> None:
        self.touched.add(key)
        self.real[key] = value

    def __delitem__(self, key: str) -> None:
        self.touched.add(key)
        del self.real[key]

    def __iter__(self) -> Iterator[str]:
        self.touched.add("*")
        return iter(self.real)

    def __len__(self) -> int:
        self.touched.add("*")
        return len(self.real)


def import_watching_environment(modules: Iterable[str]) -> set[str]:
    """Imports `modules`; the environment variables the imports read, set or removed ("*" if they listed it): what
    a process that forks others after the import would hand them, as module state, from its own environment."""
    import importlib

    return watching_environment(lambda: [importlib.import_module(name) for name in modules])


def watching_environment(action: Callable[[], object]) -> set[str]:
    """Runs `action`; the environment variables it read, set or removed ("*" if it listed them)."""
    real = os.environ
    watched = _WatchedEnvironment(real)
    os.environ = watched  # type: ignore[assignment]  # noqa: B003  (watched, not replaced: it forwards to real)
    try:
        action()
    finally:
        os.environ = real  # noqa: B003  (the real mapping back)
    return watched.touched


# botocore's data loader of the warm parent, holding the service data every environment's clients are made from.
_SERVICE_DATA: Any = None


def _load_service_data() -> None:
    """Loads botocore's service models and endpoint data into a loader of the warm parent's: each environment
    parsed them again for its first clients, ~30% of the Lambda CPU of a 10-point grid. Only files are read here
    (no session, client, credential or region); the environments' sessions take the loader
    (`_share_service_data`)."""
    from botocore.loaders import create_loader

    from kaos.local.botocore_data import with_plain_dicts

    global _SERVICE_DATA
    loader = with_plain_dicts(create_loader())
    for service in SERVICE_MODELS:
        for kind in ("service-2", "endpoint-rule-set-1"):
            loader.load_service_model(service, kind)
    for name in ("endpoints", "partitions", "_retry", "sdk-default-configuration"):
        loader.load_data(name)
    _SERVICE_DATA = loader


def _share_service_data() -> None:
    """In a forked environment: every botocore session it makes (boto3's default one, pynamodb's one per thread)
    takes the warm parent's loader (kaos/local/botocore_data.py)."""
    from botocore.session import Session

    from kaos.local.botocore_data import registering

    if _SERVICE_DATA is not None:
        Session._register_data_loader = registering(_SERVICE_DATA)  # type: ignore[attr-defined]  # botocore is untyped here


def _preload() -> dict[str, str | None]:
    """Imports PRELOAD and loads the service data; the variables that touched, with their values (None: unset)."""
    touched = import_watching_environment(PRELOAD) | watching_environment(_load_service_data)
    if "*" in touched:
        raise RuntimeError("importing the preload listed the environment: its module state would hold the warm "
                           "parent's")
    return {name: os.environ.get(name) for name in sorted(touched)}


def _reap(_signum: int, _frame: object) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def warm_parent(channel_fd: int) -> None:
    """Preloads, says what the preload read, then forks an environment per request until the stack closes the
    channel (or ends). One thread only: a fork copies no other thread's state."""
    channel = socket.socket(fileno=channel_fd)
    if not os.environ.get("PYTHONPATH") and sys.path and sys.path[0] == os.getcwd():
        # A parent of every package: `python -m` put its folder ("/") first on the path environments inherit;
        # each puts its own package's folders there instead (main).
        del sys.path[0]
    read = _preload()
    # The preloaded objects out of the collector's reach: a collection in an environment would otherwise write to
    # every page holding them, and the pages it shares with this parent would become its own.
    gc.collect()
    gc.freeze()
    channel.send(json.dumps(read).encode())
    signal.signal(signal.SIGCHLD, _reap)
    while True:
        message, fds, _, _ = socket.recv_fds(channel, 64, 2)
        if not message:
            return
        # SIGCHLD held until the pidfd is open: a child that ends at once is not reaped (its pid reused) first.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        try:
            pid = os.fork()
            if pid == 0:
                _become(channel, fds)
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            socket.send_fds(channel, [f"fork failed: {exc}".encode()], [])
            continue
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            for fd in fds:
                os.close(fd)
        socket.send_fds(channel, [str(pid).encode()], [pidfd])
        os.close(pidfd)


def _become(channel: socket.socket, fds: list[int]) -> None:
    """The forked child: its own session, the request pipe as stdin (its first line the environment's setup:
    handler, variables, folder), exactly the function's environment, then the runtime's loop (:func:`main`); it
    never returns into the warm parent's loop."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        channel.close()
        os.setsid()
        os.dup2(fds[0], 0)
        os.close(fds[0])
        request = json.loads(sys.stdin.buffer.readline())
        if request["cwd"]:
            os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        _share_service_data()
        main(request["handler"], fds[1])
        code = 0
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":  # python -m kaos.local.lambda_runtime --warm-parent FD (WarmParent._start)
    warm_parent(int(sys.argv[2]))
