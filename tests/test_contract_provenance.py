"""The provenance repository contract, run against pynamodb (moto in process) and the in-memory twin."""
from __future__ import annotations

import threading

import pytest

from kaos.local.patches import dynamodb_writes_serialized
from chalicelib.repositories.provenance import DynamoProvenance, Edge, MemoryProvenance, Node, ProvenanceRepository
from tests.aws_fixtures import memory_twin
from tests.contract_tables import dynamo_table  # noqa: F401  (fixture)

WS = "ws-a"


@pytest.fixture(params=["dynamo", "memory"])
def provenance(request: pytest.FixtureRequest) -> ProvenanceRepository:
    workspaces = memory_twin(request)
    return DynamoProvenance() if workspaces is None else MemoryProvenance(workspaces)


def test_nodes_are_appended_once(provenance: ProvenanceRepository) -> None:
    assert provenance.add_node(WS, Node("job:j", "job", {"kind": "train"}, "t1"))
    assert not provenance.add_node(WS, Node("job:j", "job", {"kind": "other"}, "t2"))
    assert provenance.node(WS, "job:j") == Node("job:j", "job", {"kind": "train"}, "t1")
    assert provenance.node(WS, "job:none") is None
    assert provenance.node("other", "job:j") is None


def test_an_edge_is_one_hop_either_way(provenance: ProvenanceRepository) -> None:
    provenance.add_node(WS, Node("job:j", "job", {}, "t"))
    for target in ("snapshot:b", "snapshot:a"):
        provenance.add_edge(WS, "job:j", "used", target, "t")
        provenance.add_edge(WS, "job:j", "used", target, "t")  # a retried task writes nothing twice
    provenance.add_edge(WS, "job:j", "produced", "model:j", "t")
    up = provenance.expand(WS, "job:j", ("OUT#used#",))
    assert up.node is not None and up.node.id == "job:j"
    assert up.edges == [("OUT", "used", "snapshot:a"), ("OUT", "used", "snapshot:b")]
    down = provenance.expand(WS, "snapshot:a", ("IN#used#",))
    assert down.node is None and down.edges == [("IN", "used", "job:j")]
    assert provenance.expand(WS, "job:j", ()).edges == []


def test_many_nodes_and_edges_at_once_are_each_written_once(provenance: ProvenanceRepository) -> None:
    provenance.add_node(WS, Node("snapshot:known", "snapshot", {"kind": "code"}, "t0"))
    nodes = [Node("job:j", "job", {"kind": "train"}, "t1"), Node("snapshot:known", "snapshot", {"kind": "x"}, "t1"),
             *(Node(f"snapshot:{i}", "snapshot", {"kind": "data"}, "t1") for i in range(12))]
    edges = [Edge("job:j", "used", node.id, "t1") for node in nodes[1:]]
    for _ in range(2):  # a retried submission writes nothing twice
        provenance.add(WS, nodes, edges)
    assert provenance.node(WS, "snapshot:known") == Node("snapshot:known", "snapshot", {"kind": "code"}, "t0")
    assert provenance.node(WS, "snapshot:3") == Node("snapshot:3", "snapshot", {"kind": "data"}, "t1")
    assert provenance.expand(WS, "job:j", ("OUT#used#",)).edges == sorted(("OUT", "used", n.id) for n in nodes[1:])
    assert provenance.expand(WS, "snapshot:11", ("IN#",)).edges == [("IN", "used", "job:j")]


def test_concurrent_adds_of_the_same_rows_write_each_once(provenance: ProvenanceRepository,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Submissions sharing inputs race on the same nodes: every row is written by one of them, and the race
    costs no submission its rows. DynamoDB applies each write atomically; moto in process does only with the
    write serialization the embedded stack installs (stock moto's transaction copies the table while others
    write to it)."""
    for owner, name, replacement in dynamodb_writes_serialized():
        monkeypatch.setattr(owner, name, replacement)
    def add(who: int) -> None:
        nodes = [Node(f"job:{who}", "job", {}, "t"), *(Node(f"snapshot:{i}", "snapshot", {"by": who}, "t")
                                                      for i in range(6))]
        provenance.add(WS, nodes, [Edge(f"job:{who}", "used", node.id, "t") for node in nodes[1:]])

    threads = [threading.Thread(target=add, args=(who,)) for who in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(6):
        node = provenance.node(WS, f"snapshot:{i}")
        assert node is not None and node.attrs["by"] in range(4)
        assert provenance.expand(WS, f"snapshot:{i}", ("IN#",)).edges == [("IN", "used", f"job:{w}")
                                                                          for w in range(4)]


def test_retract_removes_what_a_dropped_record_wrote(provenance: ProvenanceRepository) -> None:
    provenance.add_node(WS, Node("model:j", "model", {}, "t"))
    provenance.add_edge(WS, "job:j", "produced", "model:j", "t")
    provenance.retract(WS, "job:j", "produced", "model:j", node=True)
    assert provenance.expand(WS, "job:j", ("OUT#",)).edges == []
    assert provenance.node(WS, "model:j") is None
    provenance.retract(WS, "job:j", "produced", "model:j", node=False)  # again: nothing left, no error
