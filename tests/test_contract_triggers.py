"""The auto-retrain repository contract, run against pynamodb (moto in process) and the in-memory twin."""
from __future__ import annotations

import pytest

from chalicelib.repositories.triggers import (CLOSED, DONE, OPEN, AutoRetrain, DynamoTriggers, MemoryTriggers,
                                              PendingFile, RetrainBatch, TriggerRepository)
from tests.aws_fixtures import memory_twin
from tests.contract_tables import dynamo_table  # noqa: F401  (fixture)

WS = "ws-a"


@pytest.fixture(params=["dynamo", "memory"])
def triggers(request: pytest.FixtureRequest) -> TriggerRepository:
    workspaces = memory_twin(request)
    return DynamoTriggers() if workspaces is None else MemoryTriggers(workspaces)


def _batch(batch_id: str, previous: str | None = None) -> RetrainBatch:
    return RetrainBatch(WS, batch_id, OPEN, f"t{batch_id}", previous=previous)


def _file(file_id: str, path: str = "a.csv") -> PendingFile:
    return PendingFile(file_id, f"ws/{WS}/incoming/{path}", path, "v1", None, "0A", "t")


def test_config(triggers: TriggerRepository) -> None:
    assert triggers.config(WS) is None
    triggers.set_config(WS, AutoRetrain(True, "alice", "t1"))
    assert triggers.config(WS) == AutoRetrain(True, "alice", "t1")


def test_a_batch_opens_only_over_the_pointer_its_opener_saw(triggers: TriggerRepository) -> None:
    assert triggers.pointer(WS) is None
    assert triggers.open(_batch("0000000000001"), None)
    assert not triggers.open(_batch("0000000000002"), None)  # another delivery opened one first
    assert triggers.open(_batch("0000000000002", "0000000000001"), "0000000000001")
    assert not triggers.open(_batch("0000000000003", "0000000000001"), "0000000000001")
    assert triggers.pointer(WS) == "0000000000002"
    assert [b.batch_id for b in triggers.recent(WS, 10)] == ["0000000000002", "0000000000001"]
    assert [b.batch_id for b in triggers.recent(WS, 1)] == ["0000000000002"]
    successor = triggers.successor(WS, "0000000000001")
    assert successor is not None and successor.batch_id == "0000000000002"
    assert triggers.successor(WS, "0000000000002") is None


def test_a_file_joins_one_open_batch_once(triggers: TriggerRepository) -> None:
    triggers.open(_batch("0000000000001"), None)
    assert triggers.join(WS, "0000000000001", _file("f1"))
    assert not triggers.join(WS, "0000000000001", _file("f1"))  # a duplicate delivery
    assert triggers.taken_by(WS, "f1") == "0000000000001" and triggers.taken_by(WS, "f2") is None
    assert triggers.close(WS, "0000000000001", "t2")
    assert not triggers.close(WS, "0000000000001", "t3")
    assert not triggers.join(WS, "0000000000001", _file("f2"))  # closed: it goes to the next batch
    assert triggers.taken_by(WS, "f2") is None
    batch = triggers.batch(WS, "0000000000001")
    assert batch is not None and (batch.status, batch.closed_at, batch.last_joined_at) == (CLOSED, "t2", "t")
    assert triggers.files(WS, "0000000000001") == [_file("f1")]


def test_processing_pins_once_and_finishes(triggers: TriggerRepository) -> None:
    triggers.open(_batch("0000000000001"), None)
    triggers.mark_started(WS, "0000000000001")
    triggers.pin_base(WS, "0000000000001", {"code": "c"})
    triggers.pin_base(WS, "0000000000001", {"code": "other"})
    assert triggers.stall(WS, "0000000000001")
    batch = triggers.batch(WS, "0000000000001")
    assert batch is not None and batch.started and batch.stalled and batch.base == {"code": "c"}
    triggers.finish(batch, DONE, "t9", job="train-1", files=2, skipped=[{"path": "x"}], reason=None)
    assert (batch.status, batch.job, batch.ended_at) == (DONE, "train-1", "t9")
    assert triggers.batch(WS, "0000000000001") == batch
    assert not triggers.stall(WS, "0000000000001")  # ended: nothing to stall
    with pytest.raises(TypeError):
        triggers.finish(batch, DONE, "t9", started=False)
