"""Provenance rows: append-only nodes and edges, each edge stored once per direction.

A node is the partition `NODE#<ws>#<node>`: its `META` row and one row per edge (`OUT#<rel>#<other>` or
`IN#<rel>#<other>`), so one Query returns a node with its edges either way, and no item grows with the number of edges
(DynamoDB's 400 KB item limit). Rows are written with a does-not-exist condition: a retried task or a duplicate event
writes nothing twice. Only a Record whose job's end was dropped (its workspace was killed meanwhile) removes what it
wrote (`retract`).
"""
from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from pynamodb.exceptions import PutError, TransactWriteError
from pynamodb.transactions import TransactWrite

from chalicelib.errors import Conflict
from chalicelib.repositories.workspaces import MemoryWorkspaces, connection, item_condition_failed
from chalicelib.tables import EdgeItem, NodeItem, _Item, node_key


@dataclass(frozen=True)
class Node:
    id: str
    type: str
    attrs: dict[str, Any]
    created_at: str


@dataclass(frozen=True)
class Edge:
    """`source -rel-> target`, recorded at `at`."""

    source: str
    rel: str
    target: str
    at: str


@dataclass(frozen=True)
class Expansion:
    """A node (None if it has no META row) and its edges whose sort key starts with one of the asked prefixes, as
    (direction "OUT"|"IN", rel, other node); `requests`: the Query pages it cost (more than one past 1 MB)."""

    node: Node | None
    edges: list[tuple[str, str, str]] = field(default_factory=list)
    requests: int = 1


class ProvenanceRepository(Protocol):
    def add_node(self, workspace: str, node: Node) -> bool:
        """Appends the node unless it exists (True: this call wrote it)."""

    def add_edge(self, workspace: str, source: str, rel: str, target: str, at: str) -> None:
        """`source -rel-> target`: its OUT row on the source and its IN row on the target, each once."""

    def add(self, workspace: str, nodes: list[Node], edges: list[Edge]) -> None:
        """Each node as `add_node`, then each edge as `add_edge`: a reader never finds one of these edges before the
        nodes written with it (each write, and so the whole, is idempotent)."""

    def node(self, workspace: str, node: str) -> Node | None: ...

    def expand(self, workspace: str, node: str, prefixes: tuple[str, ...]) -> Expansion:
        """The node and its edge rows whose sort keys start with `prefixes` (e.g. "OUT#used#"), in sort-key order:
        one Query on the node's partition."""

    def retract(self, workspace: str, source: str, rel: str, target: str, *, node: bool) -> None:
        """Deletes the edge's two rows, and with `node` the target's META row too."""


def _edge_rows(source: str, rel: str, target: str) -> tuple[tuple[str, str, str, str], ...]:
    """(node holding the row, sort key, direction, other end) of the edge's two rows."""
    return ((source, f"OUT#{rel}#{target}", "OUT", target), (target, f"IN#{rel}#{source}", "IN", source))


def _put_once(item: NodeItem | EdgeItem) -> bool:
    try:
        item.save(condition=NodeItem.pk.does_not_exist())
    except PutError as exc:
        if exc.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise
    return True


def _node_item(workspace: str, node: Node) -> NodeItem:
    return NodeItem(node_key(workspace, node.id), "META", node_type=node.type, attrs=node.attrs,
                    created_at=node.created_at, gsi1pk=f"PROV#{workspace}", gsi1sk=node.id)


def _edge_items(workspace: str, edge: Edge) -> list[EdgeItem]:
    return [EdgeItem(node_key(workspace, here), sk, rel=edge.rel, direction=direction, other=other,
                     created_at=edge.at, gsi1pk=f"PROV#{workspace}", gsi1sk=f"{here}#{sk}")
            for here, sk, direction, other in _edge_rows(edge.source, edge.rel, edge.target)]


# DynamoDB's TransactWriteItems takes at most 100 items; a job's inputs are a dozen rows.
TRANSACT_ITEMS = 100
# A transaction cancelled because a concurrent writer added one of its rows first is retried with a fresh read.
ADD_ATTEMPTS = 5


class DynamoProvenance:
    def add_node(self, workspace: str, node: Node) -> bool:
        return _put_once(_node_item(workspace, node))

    def add_edge(self, workspace: str, source: str, rel: str, target: str, at: str) -> None:
        for item in _edge_items(workspace, Edge(source, rel, target, at)):
            _put_once(item)

    def add(self, workspace: str, nodes: list[Node], edges: list[Edge]) -> None:
        # One BatchGetItem finds the rows already there, and one transaction writes the others, each on the
        # condition that it is still absent (append-only, as `add_node` and `add_edge` write): two requests where
        # a conditional put per row were a dozen, for every job submitted (a grid's points share most inputs).
        rows = list({(item.pk, item.sk): item for item in [_node_item(workspace, node) for node in nodes] + [
            item for edge in edges for item in _edge_items(workspace, edge)]}.values())
        for _ in range(ADD_ATTEMPTS):
            present = {(item.pk, item.sk) for item in _Item.batch_get(
                [(item.pk, item.sk) for item in rows], consistent_read=True, attributes_to_get=["pk", "sk"])}
            absent = [item for item in rows if (item.pk, item.sk) not in present]
            try:
                for start in range(0, len(absent), TRANSACT_ITEMS):  # nodes first: they come first in `rows`
                    with TransactWrite(connection=connection()) as tx:
                        for item in absent[start:start + TRANSACT_ITEMS]:
                            tx.save(item, condition=_Item.pk.does_not_exist())
                return
            except TransactWriteError as exc:
                if not any(item_condition_failed(exc, i) for i in range(TRANSACT_ITEMS)):
                    raise
        raise Conflict(f"provenance of workspace {workspace!r}: rows kept being written concurrently; try again")

    def node(self, workspace: str, node: str) -> Node | None:
        return self.expand(workspace, node, ()).node

    def expand(self, workspace: str, node: str, prefixes: tuple[str, ...]) -> Expansion:
        condition = NodeItem.sk == "META"
        for prefix in prefixes:
            condition = condition | NodeItem.sk.startswith(prefix)
        # A FilterExpression: DynamoDB still reads the other direction's rows, but does not send them.
        pages = NodeItem.query(node_key(workspace, node), filter_condition=condition).page_iter
        meta: Node | None = None
        edges: list[tuple[str, str, str]] = []
        requests = 0
        for page in pages:
            requests += 1
            for raw in page.get("Items", []):
                row = NodeItem.from_raw_data(raw)
                if row.sk == "META":
                    meta = Node(node, row.node_type, dict(row.attrs), row.created_at)
                else:
                    tag, rel, other = row.sk.split("#", 2)
                    edges.append((tag, rel, other))
        return Expansion(meta, edges, max(requests, 1))

    def retract(self, workspace: str, source: str, rel: str, target: str, *, node: bool) -> None:
        rows = [_Item(node_key(workspace, here), sk) for here, sk, _, _ in _edge_rows(source, rel, target)]
        if node:
            rows.append(_Item(node_key(workspace, target), "META"))
        for row in rows:
            row.delete()


class MemoryProvenance:
    """The in-memory twin: per workspace, node -> sort key -> row (a Node for META, the edge tuple otherwise)."""

    def __init__(self, workspaces: MemoryWorkspaces) -> None:
        self._workspaces = workspaces
        self._lock: threading.RLock = workspaces.lock

    def _partition(self, workspace: str, node: str) -> dict[str, Any]:
        partition: dict[str, Any] = self._workspaces.table(workspace, "provenance").setdefault(node, {})
        return partition

    def add_node(self, workspace: str, node: Node) -> bool:
        with self._lock:
            partition = self._partition(workspace, node.id)
            if "META" in partition:
                return False
            partition["META"] = copy.deepcopy(node)
            return True

    def add_edge(self, workspace: str, source: str, rel: str, target: str, at: str) -> None:
        with self._lock:
            for here, sk, direction, other in _edge_rows(source, rel, target):
                self._partition(workspace, here).setdefault(sk, (direction, rel, other))

    def add(self, workspace: str, nodes: list[Node], edges: list[Edge]) -> None:
        for node in nodes:
            self.add_node(workspace, node)
        for edge in edges:
            self.add_edge(workspace, edge.source, edge.rel, edge.target, edge.at)

    def node(self, workspace: str, node: str) -> Node | None:
        return self.expand(workspace, node, ()).node

    def expand(self, workspace: str, node: str, prefixes: tuple[str, ...]) -> Expansion:
        with self._lock:
            partition = self._workspaces.rows.get(workspace, {}).get("provenance", {}).get(node, {})
            meta = copy.deepcopy(partition.get("META"))
            edges = [partition[sk] for sk in sorted(partition) if sk != "META" and sk.startswith(prefixes)]
        return Expansion(meta, edges, 1)

    def retract(self, workspace: str, source: str, rel: str, target: str, *, node: bool) -> None:
        with self._lock:
            for here, sk, _, _ in _edge_rows(source, rel, target):
                self._partition(workspace, here).pop(sk, None)
            if node:
                self._partition(workspace, target).pop("META", None)
