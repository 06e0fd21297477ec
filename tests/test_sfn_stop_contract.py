"""Contract of the StopExecution patch point (kaos/local/patches.py `_final_once_stopped`): once an execution is
stopped, a failure of the task it was running (the SageMaker job a kill stops next) does not turn it FAILED."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import pytest
from moto.stepfunctions.parser.asl.eval.environment import Environment
from moto.stepfunctions.parser.asl.eval.program_state import ProgramError, ProgramStopped

from kaos.local import patches
from kaos.local.emulator import Emulator


def _stopped_environment() -> Any:
    """moto's execution environment as StopExecution leaves it (`set_stop` on a running program)."""
    env: Any = Environment.__new__(Environment)
    env._state_mutex, env._frames, env.program_state_event = threading.RLock(), [], threading.Event()
    env._program_state = ProgramStopped(stop_date=None, cause="killed by dev", error="Killed")
    return env


@pytest.fixture
def patched(emulator: Emulator) -> Iterator[None]:
    yield  # the emulator installs the patches


@pytest.mark.parametrize("stock", [False, True], ids=["patched", "stock-moto"])
@pytest.mark.parametrize("late", ["set_error", "set_timed_out"])
def test_a_stopped_execution_stays_stopped(patched: None, late: str, stock: bool) -> None:
    env = _stopped_environment()
    args = ({"error": "States.TaskFailed", "cause": "TrainingJobStatus Stopped"},) if late == "set_error" else ()
    with patches.PATCHES.stock(Environment, late) if stock else nullcontext():
        getattr(env, late)(*args)
    if stock:  # what the patch is for: moto overwrites the stop, and the killed execution ends FAILED / TIMED_OUT
        assert not isinstance(env._program_state, ProgramStopped)
    else:
        assert isinstance(env._program_state, ProgramStopped)


def test_a_running_execution_still_fails(patched: None) -> None:
    env = _stopped_environment()
    env._program_state = None  # running programs are not ProgramStopped
    env.set_error({"error": "States.TaskFailed", "cause": "boom"})
    assert isinstance(env._program_state, ProgramError)
