"""Lambda execution environments for the embedded stack: one process per warm environment.

On AWS each function runs in its own sandbox with exactly the environment variables its template declares, the
runtime's reserved variables, and its execution role's temporary credentials. Offline, a function's handler
runs in a worker process started with exactly that (:func:`function_environment`) — never in the stack's own
process, whose environment and credentials are the emulator's. Like Lambda, one environment serves one
invocation at a time; a pool per function grows on demand up to ``max_workers`` (further invocations wait, as
throttled ones retry on AWS) and keeps idle environments warm for ``idle_seconds``, then ends them, as Lambda
reclaims an environment that served nothing for a while (so a burst's environments do not stay resident).

Wire protocol (worker side is :func:`main`): the parent writes one JSON line per invocation to the worker's
stdin; the worker answers with one JSON line on a private descriptor (its stdout is redirected to stderr, so a
handler's ``print`` never corrupts the protocol): ``{"result": ...}`` or ``{"errorType", "errorMessage",
"stackTrace"}`` as the Python runtime reports an unhandled error.
"""
from __future__ import annotations

import json
import logging
import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

# What the Lambda Python runtime sets in every function's environment besides the template's variables
# (https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html#configuration-envvars-runtime).
RESERVED = ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "LAMBDA_TASK_ROOT",
            "LAMBDA_RUNTIME_DIR", "LANG", "PATH", "LD_LIBRARY_PATH", "TZ", "PYTHONPATH")
# The one variable the embedded stack adds: where AWS is. Trust-store variables pass through so https
# remote data can be served by a local test CA (the Lambda image has its own trust store).
OFFLINE_ONLY = ("AWS_ENDPOINT_URL", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
# How long an idle environment stays warm. Lambda documents no figure (minutes, in practice); offline each one is
# a ~50 MB process, so a burst's environments are given back once the burst is over.
IDLE_SECONDS = float(os.environ.get("KAOS_LOCAL_LAMBDA_IDLE_SECONDS", "180"))
# How many environments one function may have at once. Lambda scales out per concurrent invocation; offline an
# environment is a CPU-bound process of ~80 MB whose cold start alone is ~0.9 CPU-s, so more of them than the
# machine has cores only adds cold starts and memory: a 10-point grid on 2 cores took 37-39 s and 2.0 GB with 8
# per function, 27-31 s and 1.2 GB with 2 (bench.grid_fit). Further invocations wait for a free one, as a
# throttled invocation is retried on AWS.
CONCURRENCY = int(os.environ.get("KAOS_LOCAL_LAMBDA_CONCURRENCY", "0")) or max(2, os.cpu_count() or 2)


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    handler: str  # module.attribute
    variables: dict[str, str]
    role_arn: str
    timeout_seconds: int = 3
    memory_mb: int = 128
    code_paths: tuple[str, ...] = ()


def function_environment(spec: FunctionSpec, credentials: dict[str, str], region: str,
                         endpoint_url: str) -> dict[str, str]:
    env = {
        "AWS_REGION": region, "AWS_DEFAULT_REGION": region, "AWS_LAMBDA_FUNCTION_NAME": spec.name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb), "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.name}", "LAMBDA_TASK_ROOT": spec.code_paths[0]
        if spec.code_paths else "", "LANG": "en_US.UTF-8", "TZ": ":UTC",
        "PATH": os.path.dirname(sys.executable) + ":/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": os.pathsep.join(spec.code_paths),
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
    def __init__(self, spec: FunctionSpec, env: dict[str, str]) -> None:
        read_fd, write_fd = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kaos.local.lambda_runtime", spec.handler, str(write_fd)],
            stdin=subprocess.PIPE, env=env, pass_fds=(write_fd,), cwd=spec.code_paths[0] if spec.code_paths
            else None, start_new_session=True)
        os.close(write_fd)
        self.answers: IO[bytes] = os.fdopen(read_fd, "rb")
        self.started = time.monotonic()
        self.idle_since = self.started

    def call(self, request: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """The worker's answer, or None if it did not answer in time or died (the worker is then unusable)."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        with selectors.DefaultSelector() as selector:
            selector.register(self.answers, selectors.EVENT_READ)
            if not selector.select(timeout):
                return None
        line = self.answers.readline()
        if not line:
            return None
        answer: dict[str, Any] = json.loads(line)
        return answer

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()

    def stop(self) -> None:
        self.kill()
        self.process.wait()
        self.answers.close()
        if self.process.stdin is not None:
            self.process.stdin.close()


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
    max_workers: int = CONCURRENCY
    idle_seconds: float = IDLE_SECONDS
    _idle: list[_Worker] = field(default_factory=list)
    _running: set[_Worker] = field(default_factory=set)  # busy ones: a stop ends them too
    _busy: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _closed: bool = False
    _closing: threading.Event = field(default_factory=threading.Event)  # wakes the reaper
    _reaper: threading.Thread | None = None

    def _acquire(self) -> _Worker:
        with self._cond:
            while not self._idle and self._busy >= self.max_workers and not self._closed:
                self._cond.wait()
            if self._closed:
                raise FunctionError("Runtime.Shutdown", "the embedded stack is stopping", [])
            self._busy += 1
            if self._idle:
                worker = self._idle.pop()
                self._running.add(worker)
                return worker
        try:
            worker = _Worker(self.spec, self.environment())
        except BaseException:
            self._release(None)
            raise
        with self._cond:
            self._running.add(worker)
            if not self._closed:
                return worker
        self._release(worker, reusable=False)  # closed while it started: the stop missed it
        raise FunctionError("Runtime.Shutdown", "the embedded stack is stopping", [])

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
        answer = worker.call(request, timeout + 0.5)
        if answer is None:
            self._release(worker, reusable=False)
            raise FunctionError("Sandbox.Timedout", f"Task timed out after {timeout:.2f} seconds", [])
        self._release(worker)
        if "errorType" in answer:
            raise FunctionError(str(answer["errorType"]), str(answer.get("errorMessage", "")),
                                list(answer.get("stackTrace", [])))
        return answer.get("result")

    def close(self) -> None:
        """Ends every environment, the busy ones too (their invocations fail as a stopped sandbox's would)."""
        with self._cond:
            self._closed = True
            workers, self._idle = [*self._idle, *self._running], []
            self._cond.notify_all()
        self._closing.set()
        stop_all(workers)

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


def main() -> None:
    import importlib
    import traceback

    handler_path, answer_fd = sys.argv[1], int(sys.argv[2])
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
    for line in sys.stdin.buffer:
        request = json.loads(line)
        log.request_id = request["request_id"]
        if init_error is not None:
            answer: dict[str, Any] = init_error
        else:
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


if __name__ == "__main__":
    main()
