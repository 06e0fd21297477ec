"""Provenance: append-only nodes and edges; every edge is written in both directions so each hop is one Query."""
from __future__ import annotations

from collections import deque
from typing import Any

from pynamodb.exceptions import DoesNotExist, PutError

from chalicelib.errors import NotFound, ValidationFailed
from chalicelib.models import EdgeItem, NodeItem, node_key

NODE_TYPES = ("snapshot", "environment", "job", "model")
DIRECTIONS = ("up", "down", "both")
# Which stored edge rows lead upstream (towards inputs): a job *used* its inputs (job -> snapshot), a job
# *produced* its model (job -> model, so upstream of a model is the IN side), a snapshot is *derived* from
# its predecessor (new -> old). Downstream is the mirror image.
_UPSTREAM = ("OUT#used#", "IN#produced#", "OUT#derived#")
_DOWNSTREAM = ("IN#used#", "OUT#produced#", "IN#derived#")


def _put_once(item: NodeItem | EdgeItem) -> bool:
    """Appends a row unless it is already there (retries and duplicate events write the same row)."""
    try:
        item.save(condition=NodeItem.pk.does_not_exist())
    except PutError as exc:
        if exc.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise
    return True


class Provenance:
    def add_node(self, workspace: str, node: str, node_type: str, attrs: dict[str, Any], at: str) -> None:
        _put_once(
            NodeItem(
                node_key(workspace, node), "META", node_type=node_type, attrs=attrs, created_at=at,
                gsi1pk=f"PROV#{workspace}", gsi1sk=node,
            )
        )

    def add_edge(self, workspace: str, source: str, rel: str, target: str, at: str) -> None:
        """`source -rel-> target`, e.g. job -used-> snapshot, job -produced-> model."""
        for here, direction, other in ((source, "OUT", target), (target, "IN", source)):
            sk = f"{direction}#{rel}#{other}"
            _put_once(
                EdgeItem(
                    node_key(workspace, here), sk, rel=rel, direction=direction, other=other, created_at=at,
                    gsi1pk=f"PROV#{workspace}", gsi1sk=f"{here}#{sk}",
                )
            )

    def node(self, workspace: str, node: str) -> dict[str, Any]:
        try:
            item = NodeItem.get(node_key(workspace, node), "META")
        except DoesNotExist:
            raise NotFound(f"node {node!r} does not exist in workspace {workspace!r}") from None
        return {"id": node, "type": item.node_type, "attrs": item.attrs, "created_at": item.created_at}

    def lineage(self, workspace: str, node: str, direction: str, depth: int | None) -> dict[str, Any]:
        """Breadth-first walk: one Query per visited node returns its node row and its edges in that direction."""
        if direction not in DIRECTIONS:
            raise ValidationFailed(f"direction: must be one of {', '.join(DIRECTIONS)}")
        if depth is not None and depth < 1:
            raise ValidationFailed("depth: must be a positive integer")
        self.node(workspace, node)
        prefixes = {"up": _UPSTREAM, "down": _DOWNSTREAM, "both": _UPSTREAM + _DOWNSTREAM}[direction]
        nodes: dict[str, dict[str, Any]] = {}
        edges: list[dict[str, str]] = []
        queue: deque[tuple[str, int]] = deque([(node, 0)])
        seen = {node}
        while queue:
            current, level = queue.popleft()
            for row in NodeItem.query(node_key(workspace, current)):
                if row.sk == "META":
                    nodes[current] = {"id": current, "type": row.node_type, "attrs": row.attrs}
                    continue
                if not row.sk.startswith(prefixes) or (depth is not None and level >= depth):
                    continue
                direction_tag, rel, other = row.sk.split("#", 2)
                source, target = (other, current) if direction_tag == "IN" else (current, other)
                edges.append({"source": source, "rel": rel, "target": target})
                if other not in seen:
                    seen.add(other)
                    queue.append((other, level + 1))
        unique_edges = {(e["source"], e["rel"], e["target"]): e for e in edges}
        return {"root": node, "direction": direction, "nodes": list(nodes.values()),
                "edges": list(unique_edges.values())}
