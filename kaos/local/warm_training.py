"""Warm starts for offline training jobs: fork servers of each image interpreter.

Why: a training process imports its framework before anything else (scikit-learn's import is ~2 CPU-s, most of it
scipy.stats building its distributions), and a grid runs one process per point, as SageMaker runs one instance per
point. On a 2-core machine ten points paid ten imports: the grid took 3-4x a plain loop over the same fits
(docs/benchmarks.md). A fork server is a process of the image's own interpreter that has imported the framework's
mainstream modules with a credential-free environment, and forks each job's process from there, which then runs its
entry point as `python <entry> <args>` would. What a server may import is fixed per framework (`PRELOADS`); a job's
entry point only selects which of those modules (`chosen_preloads`: the ones it imports, or all of them), so no job
can put anything into another job's process, and each selection has a server of its own. AWS has no such thing (a
SageMaker instance starts a fresh container): this is the embedded stack's way to not pay on one laptop what AWS pays
on ten instances.

What the job's process sees is what a fresh `python <entry> <args>` in its environment would see:
* exactly its environment (os.environ replaced, so C code's getenv sees it too), working directory, umask, a session
  of its own, stdin from /dev/null, stdout and stderr to the runner's pipe, only those three descriptors open;
  sys.argv, sys.path[0] (the entry's folder), `__main__`; an uncaught exception printed with the entry's frames only
  and exit code 1; SystemExit's code; atexit handlers and non-daemon threads joined at the end;
* module state the preloads built from the environment: the server reports every variable they read, and a job is
  forked only if its environment has the same values for those, for every variable the interpreter reads at start
  (PYTHON*, LANG, LC_*) and for every thread variable BLAS/OpenMP read as they load (`STARTUP_PREFIXES`); any other
  variable of its own must be one of the per-job ones (`PER_JOB_PREFIXES`: SM_*, AWS_*, TRAINING_JOB_*, HOME).
  Otherwise the job starts fresh, as every job did before;
* its own modules: a job with a module beside its entry point named as one the server has imported starts fresh
  (`shadowed`), since a fresh process would import the job's;
* random state: `random` reseeds itself after a fork; numpy's global RandomState, seeded from the OS when numpy is
  imported, is seeded from the OS again.
What differs, and is said here: /proc/<pid>/cmdline names the server, and str/bytes hashing uses the server's
random secret (a job that sets PYTHONHASHSEED starts fresh).

This module runs in two places: in the stack (`WarmStarts`, stdlib only) and, by path, as the server under the
image's interpreter (`python warm_training.py <fd>`), where nothing of kaos is importable.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

# What the servers may import, by the catalogue's framework, in import order: the modules nearly every job of that
# image imports, whose import has no effect beyond their own module state. A framework not listed gets no server.
PRELOADS: dict[str, tuple[str, ...]] = {
    "sklearn": ("numpy", "scipy", "scipy.stats", "pandas", "joblib", "sklearn", "sklearn.base", "sklearn.metrics",
                "sklearn.model_selection", "sklearn.linear_model", "sklearn.ensemble", "sklearn.preprocessing",
                "sklearn.pipeline"),
    "pytorch": ("numpy", "torch"),
}
# Variables a job's process reads before its code runs, or its native libraries read as they load: a job is forked
# only if it has the server's values for all of them.
STARTUP_PREFIXES = ("PYTHON", "LANG", "LC_", "OMP_", "KMP_", "GOMP_", "OPENBLAS_", "GOTO_", "MKL_", "BLIS_",
                    "VECLIB_", "NUMEXPR_", "MALLOC_", "LD_")
# Variables every job has of its own, read by its code when it runs (a preload that read one shows in `read`).
PER_JOB_PREFIXES = ("SM_", "AWS_", "TRAINING_JOB_")  # and HOME
# A server with no job running ends after this long without a request (the next job starts another).
IDLE_SECONDS = float(os.environ.get("KAOS_LOCAL_WARM_IDLE_SECONDS", "180"))
# How long a server may take to import its preloads (scikit-learn's take ~2 s) before its jobs start fresh.
READY_SECONDS = 120.0
# The most of a job's source the stack reads for its imports (parsing is ~0.1 CPU-s a MiB, on the job's thread): a
# training script and its modules are kilobytes; beyond either limit the job's server preloads them all.
SOURCE_READ_LIMIT = 1 << 20  # bytes, all files together
SOURCE_FILE_LIMIT = 64  # files: the entry point and the job's own modules it imports, theirs in turn


def chosen_preloads(preloads: tuple[str, ...], entry: str) -> tuple[str, ...]:
    """The modules of `preloads` that the job imports, or that hold a module it imports: what the entry point at
    `entry` imports, and the job's own modules beside it that it imports, theirs in turn. All of them when it imports
    none, or when its source cannot be read as Python.

    Why not always all: a module preloaded and never imported is memory each server holds for nothing, the same for
    every job it forks. pandas and the pyarrow it imports are ~68 of a scikit-learn server's ~188 MB; the digits
    template never imports them (docs/benchmarks.md: the grid's peak memory)."""
    imported = _imported_modules(entry)
    chosen = tuple(name for name in preloads if any(module == name or module.startswith(f"{name}.")
                                                    for module in (imported or ())))
    return chosen or preloads


def _imported_modules(entry: str) -> set[str] | None:
    """The absolute module names the job's import statements name, anywhere in its files (`from a import b` names a
    and a.b: b may be a module), following the imports of its own modules (files under the entry's folder, its
    sys.path[0]); None if a file it reaches is not Python this interpreter parses, or the limits are passed."""
    root = os.path.dirname(os.path.abspath(entry))
    entry = os.path.join(root, os.path.basename(entry))
    names: set[str] = set()
    pending, seen = [entry], {entry}
    budget = SOURCE_READ_LIMIT
    while pending:
        path = pending.pop()
        read = _imports(path, budget)
        if read is None:
            return None
        imports, size = read
        budget -= size
        for level, name in imports:
            if level == 0:
                names.add(name)
                base = root
            else:  # relative to the importing file's package
                base = path
                for _ in range(level):
                    base = os.path.dirname(base)
            if os.path.commonpath([root, base]) != root:  # above the job's folder: not its code
                continue
            relative = name.replace(".", os.sep)
            for candidate in (os.path.join(base, f"{relative}.py"), os.path.join(base, relative, "__init__.py")):
                if candidate not in seen and os.path.isfile(candidate):
                    if len(seen) == SOURCE_FILE_LIMIT:
                        return None
                    seen.add(candidate)
                    pending.append(candidate)
    return names


def _imports(path: str, limit: int) -> tuple[list[tuple[int, str]], int] | None:
    """(level, name) of each module the file's import statements name, and the file's size; None if it is not a
    regular file of Python this interpreter parses, or is larger than `limit` bytes. The files are the job's own
    code, extracted with tarfile's data filter (no link out of the job's folder, no device or pipe); opened without
    following a link or blocking, and checked regular all the same, since the stack reads them."""
    import ast  # here, not at the top: the server runs this file too, and never parses
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return None
            source = handle.read(limit + 1)
        if len(source) > limit:
            return None
        tree = ast.parse(source, path)
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((0, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            prefix = f"{node.module}." if node.module else ""
            if node.module:
                found.append((node.level, node.module))
            found.extend((node.level, f"{prefix}{alias.name}") for alias in node.names if alias.name != "*")
    return found, len(source)


def forkable(job_env: Mapping[str, str], server_env: Mapping[str, str], read: Mapping[str, str | None]) -> str | None:
    """Why a job with `job_env` cannot be forked from a server started with `server_env` whose preloads read
    `read` (None: it can)."""
    for name, value in read.items():
        if name != "HOME" and job_env.get(name) != value:  # HOME: see _run_entry
            return f"the preloads read {name}, which the job sets otherwise"
    for name in sorted(job_env.keys() | server_env.keys()):
        if name.startswith(STARTUP_PREFIXES) or name == "PATH":
            if job_env.get(name) != server_env.get(name):
                return f"{name} differs from the server's"
        elif name not in server_env and name != "HOME" and not name.startswith(PER_JOB_PREFIXES):
            return f"the job sets {name}"
    return None


def shadowed(folder: str, modules: frozenset[str]) -> str | None:
    """Why a job whose entry point is in `folder` cannot be forked from a server that has imported `modules` (top-level
    names): one of its own modules there has a preloaded one's name. A fresh process imports the job's (its folder
    comes first on sys.path); a forked one would find the server's already imported. None: it can."""
    try:
        names = os.listdir(folder)
    except OSError:  # nothing of the job's to hide: it fails as a fresh process would
        return None
    for name in names:
        stem, dot, suffix = name.partition(".")
        is_module = dot and (suffix == "py" or suffix == "pyc" or suffix.endswith("so"))
        if stem in modules and (is_module or os.path.isfile(os.path.join(folder, name, "__init__.py"))):
            return f"the job's own {name} has the name of a module the server has imported"
    return None


# --- the stack's side ------------------------------------------------------------------------------------------
class WarmProcess:
    """A forked job process, as much of subprocess.Popen as the runner uses: pid (its process group too), stdout,
    poll, wait. Its exit status comes from the server, which is its parent."""

    def __init__(self, pid: int, stdout: IO[bytes], status: IO[bytes]) -> None:
        self.pid = pid
        self.stdout = stdout
        self.returncode: int | None = None
        self._ended = threading.Event()
        threading.Thread(target=self._read_status, args=(status,), daemon=True, name=f"warm-{pid}").start()

    def _read_status(self, status: IO[bytes]) -> None:
        with status:
            line = status.readline()
        # No status: the server ended before it could reap the job (killed), and the job with it at most.
        self.returncode = int(line) if line.strip() else -signal.SIGKILL
        self._ended.set()

    def poll(self) -> int | None:
        return self.returncode if self._ended.is_set() else None

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
        assert self.returncode is not None
        return self.returncode


class _Server:
    def __init__(self, python: str, env: dict[str, str], preloads: tuple[str, ...], cwd: Path) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self.process = subprocess.Popen(
                [python, __file__, str(theirs.fileno()), *preloads], env=env, cwd=cwd, pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        self.channel = ours
        self.env = env
        ours.settimeout(READY_SECONDS)
        try:
            ready = ours.recv(1 << 20)
        except OSError:  # a preload that hangs: no server for this interpreter
            ready = b""
        ours.settimeout(None)
        answer = json.loads(ready) if ready else {}
        self.read: dict[str, str | None] = answer.get("read", {})
        self.modules: frozenset[str] = frozenset(answer.get("modules", ()))  # top-level names, preloaded or not
        self.alive = bool(ready)
        self._jobs: list[WarmProcess] = []  # forked and maybe running: their exit statuses come through the server

    def busy(self) -> bool:
        """Whether a job it forked is still running (closing it now would lose that job's exit status)."""
        self._jobs = [job for job in self._jobs if job.poll() is None]
        return bool(self._jobs)

    def fork(self, argv: list[str], env: dict[str, str], cwd: str, umask: int) -> WarmProcess | None:
        out_read, out_write = os.pipe()
        status_read, status_write = os.pipe()
        request_read, request_write = os.pipe()
        request = os.fdopen(request_write, "wb")
        try:
            try:
                socket.send_fds(self.channel, [b"fork"], [out_write, status_write, request_read])
            finally:  # the server has its copies (or never will: then no one reads the request, and writing fails)
                for fd in (out_write, status_write, request_read):
                    os.close(fd)
            # To the child itself, which reads it to its end (it may exceed a pipe's buffer: this waits for it).
            with request:
                request.write(json.dumps({"argv": argv, "env": env, "cwd": cwd, "umask": umask}).encode())
            reply = self.channel.recv(1 << 16)
        except OSError:
            reply = b""
        finally:
            if not request.closed:
                with contextlib.suppress(OSError):
                    request.close()
        if not reply:  # the server has ended (idle, or killed)
            self.alive = False
            os.close(out_read)
            os.close(status_read)
            return None
        job = WarmProcess(json.loads(reply)["pid"], os.fdopen(out_read, "rb"), os.fdopen(status_read, "rb"))
        self._jobs.append(job)
        return job

    def close(self) -> None:
        self.channel.close()
        self.process.kill()
        self.process.wait()


class WarmStarts:
    """The fork servers of one training runner, one per interpreter and selection of its framework's preloads,
    started at the first job that can use one. Thread-safe: the runner's job threads spawn through it."""

    def __init__(self, work_dir: Path) -> None:
        self._work_dir = work_dir
        self._servers: dict[tuple[str, tuple[str, ...]], _Server] = {}
        self._refused: set[tuple[str, tuple[str, ...]]] = set()  # servers that did not start: their jobs start fresh
        self._lock = threading.Lock()

    def spawn(self, framework: str | None, argv: list[str], env: dict[str, str], cwd: str, umask: int,
              server_env: dict[str, str]) -> WarmProcess | None:
        """The job's process forked from the server of `argv[0]` (an interpreter) that preloads what its entry
        `argv[1]` imports, or None when it must start fresh: a framework with no preloads, an entry that is not a
        Python file, or an environment the server's module state does not fit (`forkable`). `server_env` is the
        credential-free environment a server of that interpreter starts with."""
        preloads = PRELOADS.get(framework or "")
        if not preloads or len(argv) < 2 or not argv[1].endswith(".py"):
            return None
        key_entry = os.path.join(cwd, argv[1])
        key = (argv[0], chosen_preloads(preloads, key_entry))
        with self._lock:
            for _ in range(2):  # a server found ended (idle, killed) is started again once
                server = self._live_server(key, server_env)
                if server is None or forkable(env, server.env, server.read) is not None or \
                        shadowed(os.path.dirname(key_entry), server.modules) is not None:
                    return None
                forked = server.fork(argv, env, cwd, umask)
                if forked is not None:
                    return forked
            return None

    def _live_server(self, key: tuple[str, tuple[str, ...]], server_env: dict[str, str]) -> _Server | None:
        """The running server for `key` (interpreter, preloads), started if there is none or it has ended; None if
        it cannot start (its jobs then start fresh). The caller holds the lock."""
        if key in self._refused:
            return None
        server = self._servers.pop(key, None)
        if server is not None and server.alive:
            self._servers[key] = server  # the dict's order is the order of last use
            return server
        if server is not None:
            server.close()
        # A new selection closes the interpreter's servers with no job running but the one used last: two projects
        # run in turn keep a server each, and a script edited between runs leaves one behind, not one per version of
        # its imports until each idles out.
        idle = [other for other, kept in self._servers.items() if other[0] == key[0] and not kept.busy()]
        for other in idle[:-1]:
            self._servers.pop(other).close()
        home = self._work_dir / "warm" / hashlib.sha256(repr(key).encode()).hexdigest()[:16]
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        server = self._servers[key] = _Server(key[0], {**server_env, "HOME": str(home)}, key[1], home)
        if not server.alive:
            server.close()
            del self._servers[key]
            self._refused.add(key)
            return None
        return server

    def close(self) -> None:
        with self._lock:
            for server in self._servers.values():
                server.close()
            self._servers.clear()


# --- the server (under the image's interpreter) ----------------------------------------------------------------
def _preload(modules: Iterable[str]) -> tuple[dict[str, str | None], dict[str, str | None]] | None:
    """Imports the modules. Returns the variables the imports read, each with its value when first read (None:
    unset), and the changes they made to the environment (None: removed), or None if they listed the whole
    environment (their state may then hold any of the server's values: no job is forked)."""
    import importlib

    environ_type = type(os.environ)
    read: dict[str, str | None] = {}
    getitem, iterate = environ_type.__getitem__, environ_type.__iter__
    before = dict(os.environ)

    def watched_getitem(self: Any, key: Any) -> Any:
        name = os.fsdecode(key)  # os.environb is of the same class
        try:
            value = getitem(self, key)
        except KeyError:
            read.setdefault(name, None)
            raise
        read.setdefault(name, os.fsdecode(value))
        return value

    def watched_iter(self: Any) -> Any:
        read.setdefault("*", None)
        return iterate(self)

    environ_type.__getitem__ = watched_getitem  # type: ignore[method-assign]
    environ_type.__iter__ = watched_iter  # type: ignore[method-assign]
    try:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # a module the image lacks: the job imports what it has, or fails as it would
                continue
    finally:
        environ_type.__getitem__ = getitem  # type: ignore[method-assign]
        environ_type.__iter__ = iterate  # type: ignore[method-assign]
    if "*" in read:
        return None
    after = dict(os.environ)
    changes = {name: after.get(name) for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
    return read, changes


def _serve(channel: socket.socket) -> dict[str, Any] | None:
    """Answers fork requests until the stack closes the channel or the server has idled (None), or returns a
    request in the forked child, ready to run."""
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    statuses: dict[int, int] = {}  # job pid -> the descriptor its exit status is written to
    while True:
        ready, _, _ = select.select([channel.fileno(), wake_read], [], [], None if statuses else IDLE_SECONDS)
        if not ready and not statuses:
            return None
        if wake_read in ready:
            os.read(wake_read, 4096)
            while statuses:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                fd = statuses.pop(pid, None)
                if fd is not None:
                    os.write(fd, f"{os.waitstatus_to_exitcode(status)}\n".encode())
                    os.close(fd)
        if channel.fileno() not in ready:
            continue
        # Only descriptors: the job's request (its environment holds its session keys, its argv its
        # hyperparameters) is read by the forked child alone, so no job's data is ever in the server's memory, which
        # every later job's process starts as a copy of.
        message, fds, _, _ = socket.recv_fds(channel, 64, 3)
        if not message:
            return None
        # The stack signals the job's process group (a stop): the pid is answered once the child leads its own.
        in_session, session_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            channel.detach()  # closed below with every other descriptor of the server
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.setsid()
            os.close(session_write)
            with os.fdopen(fds[2], "rb") as requested:
                request = json.loads(requested.read())
            os.umask(request["umask"])
            os.chdir(request["cwd"])
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(fds[0], 1)
            os.dup2(fds[0], 2)
            os.closerange(3, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 4096)
            return dict(request)
        os.close(session_write)
        os.read(in_session, 1)  # end of file once the child has its session (or has ended)
        os.close(in_session)
        os.close(fds[0])
        os.close(fds[2])
        statuses[pid] = fds[1]
        channel.send(json.dumps({"pid": pid}).encode())


def _run_entry(request: dict[str, Any]) -> None:
    """In the forked child: becomes `python <entry> <args>` with the job's environment, and runs the entry."""
    import builtins
    import importlib.machinery
    import site
    import sysconfig
    import traceback
    import types

    os.environ.clear()
    os.environ.update(request["env"])
    for name, value in request["changes"].items():  # what importing the preloads does to an environment
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    # Derived from HOME at start (the user base, ~/.local): the job's HOME now. Neither folder exists, so the
    # server's sys.path is the job's either way.
    site.USER_BASE = site.USER_SITE = None
    site.getusersitepackages()
    if sysconfig._CONFIG_VARS:  # type: ignore[attr-defined]  # filled once something asked for a config variable
        sysconfig._CONFIG_VARS["userbase"] = site.getuserbase()  # type: ignore[attr-defined]
    entry = os.path.abspath(request["argv"][1])
    sys.argv = request["argv"][1:]
    sys.path.insert(0, os.path.dirname(entry))
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()  # from the OS, as numpy's import seeds it
    # The interpreter's own way with a script: a new __main__ whose __file__ is the absolute path, code compiled
    # from the file's bytes (its coding cookie honoured), sys.argv as given.
    main = types.ModuleType("__main__")
    main.__dict__.update({"__file__": entry, "__cached__": None, "__builtins__": builtins,
                          "__loader__": importlib.machinery.SourceFileLoader("__main__", entry)})
    sys.modules["__main__"] = main
    try:
        with open(entry, "rb") as source:
            code = compile(source.read(), entry, "exec", dont_inherit=True)
        exec(code, main.__dict__)  # the job's entry point, as `python <entry>` runs it
    except SystemExit:
        raise
    except BaseException as exc:  # reported as the interpreter reports an uncaught exception
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != entry:
            tb = tb.tb_next
        traceback.print_exception(type(exc), exc, tb or exc.__traceback__)
        if isinstance(exc, KeyboardInterrupt):  # the interpreter ends by SIGINT then
            sys.stderr.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        sys.exit(1)


def main(argv: list[str]) -> None:
    del sys.path[0]  # this file's folder (kaos/local): never on a job's path
    channel = socket.socket(fileno=int(argv[0]))
    preloaded = _preload(argv[1:])
    if preloaded is None:
        return  # the stack sees the channel close without an answer: its jobs start fresh
    read, changes = preloaded
    # The preloaded objects out of the collector's reach: a collection in a job would otherwise write to every
    # page holding them, and the pages a job shares with the server would become its own.
    gc.collect()
    gc.freeze()
    modules = sorted({name.partition(".")[0] for name in sys.modules})
    channel.send(json.dumps({"read": read, "modules": modules}).encode())
    request = _serve(channel)
    if request is None:
        return
    _run_entry({**request, "changes": changes})


if __name__ == "__main__":
    main(sys.argv[1:])
