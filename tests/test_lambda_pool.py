"""Warm Lambda environments end after idling, as Lambda reclaims them (kaos/local/lambda_runtime.py): a burst's
worker processes do not stay resident in the embedded stack's process tree."""
from __future__ import annotations

import os
import time
from pathlib import Path

from kaos.local.lambda_runtime import FunctionPool, FunctionSpec


def test_an_idle_environment_ends_and_the_next_invocation_starts_a_new_one(tmp_path: Path) -> None:
    (tmp_path / "handler.py").write_text("import os\ndef handler(event, context):\n    return os.getpid()\n")
    spec = FunctionSpec("f", "handler.handler", {}, "arn:aws:iam::123456789012:role/r", timeout_seconds=30,
                        code_paths=(str(tmp_path),))
    pool = FunctionPool(spec, lambda: {"PATH": os.environ["PATH"], "PYTHONPATH": str(tmp_path)}, idle_seconds=0.5)
    try:
        first = pool.invoke({}, None)
        assert pool.invoke({}, None) == first  # warm: the same environment serves the next invocation
        assert pool.warm == 1
        deadline = time.monotonic() + 20
        while pool.warm or _alive(first):
            assert time.monotonic() < deadline, "the idle environment was not ended"
            time.sleep(0.05)
        second = pool.invoke({}, None)
        assert second != first and pool.warm == 1
    finally:
        pool.close()
    assert pool.warm == 0 and not _alive(second)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
