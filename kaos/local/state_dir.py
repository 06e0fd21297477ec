"""What the processes around an embedded stack share with it, importable without the stack (stdlib only): a
`kaos local status`, `down` or `up` reads and checks the state directory and passes variables to the stack process,
and importing kaos.local.stack for that (the emulator, the gateway, boto3) took 0.15-0.2 s of each command."""
from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Set by the test suite's stack fixture (or `kaos local up --test-hooks`): serves the fault-injection route
# to an extra local user, ADMIN_USER, that exists only then.
TEST_HOOKS_ENV = "KAOS_LOCAL_TEST_HOOKS"
# `kaos local up --training-slots`: how many trainings the stack runs at once (kaos.local.sagemaker_runner).
TRAINING_SLOTS_ENV = "KAOS_LOCAL_TRAINING_SLOTS"


@dataclass
class Runtime:
    api_url: str
    endpoint_url: str
    pid: int
    state_dir: str

    @classmethod
    def read(cls, state_dir: Path) -> Runtime | None:
        path = state_dir / "runtime.json"
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))


class StateDirInUse(Exception):
    """Another stack runs on this state directory: two would overwrite each other's snapshots and journal."""


def lock_state_dir(state_dir: Path, hold: bool = True) -> Any:
    """Holds the state directory for this process's life: an exclusive flock on ``stack.lock``, which the kernel
    releases however the process ends (a crash or kill -9 leaves no stale lock, unlike a pid file). runtime.json
    is written only once a start is done, so it alone let a second `up` start a stack on a directory whose first
    stack was still starting (or whose runtime.json was gone). Returns the open file (keep it open: the lock is not
    inherited by the processes the stack starts, close-on-exec), or with ``hold`` False only checks that no stack
    holds the directory (and writes nothing). Raises StateDirInUse, naming the holder's pid."""
    handle = open(state_dir / "stack.lock", "a+")  # held open for the process's life when `hold`
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise StateDirInUse(f"another kaos stack (pid {holder}) is using {state_dir}; `kaos local down "
                            f"--state-dir {state_dir}` stops it") from None
    if not hold:
        handle.close()
        return None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
