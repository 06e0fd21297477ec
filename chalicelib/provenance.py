"""Provenance: append-only nodes and edges; every edge is written in both directions so each hop is one Query.

Walking (`lineage`) is a level-by-level breadth-first search. Each visited node costs exactly one Query on its
own partition (`NODE#<ws>#<node>`), which returns the node's META row and its edge rows in the walk's direction
(a FilterExpression drops the other direction's rows from the response; DynamoDB still reads them, so a hub
with 10,000 `used by` edges costs those reads even when walking up). The Queries of one BFS level are
independent, so they run concurrently (DynamoDB has no batched Query): a walk costs `nodes` requests (more
only when one node's edges exceed a 1 MB Query page) and `levels` round trips of latency, not `nodes`.

Paging: a walk stops after `limit` nodes and answers `next`, an opaque cursor. The walk's state (the pending
BFS frontier with levels, and the visited set) is kept in the workspace bucket under
`ws/<ws>/lineage-cursors/<random id>.json`; the cursor is that id. Why not encode the state in the cursor
itself: the frontier of a fan-in (one job that used 1,000 snapshots) is ~70 KB of ids and the visited set
grows with every page, which no URL carries (API Gateway caps the request line and headers at ~10 KB), and
a resumable BFS "level + offset" would have to re-walk every earlier level on each page. The stored state is
exact (no node is visited twice across pages, `both` walks terminate), costs one S3 PUT per page that has a
`next` and one GET per resumed page, is scoped to the workspace (a cursor of another workspace is unknown
here) and is deleted with the workspace (`kaos workspace kill` deletes its prefix). Only a page that answers a
`next` writes one: `impact`, which answers whole (or `truncated`), walks without cursors. Cursors a client never
resumes are not expired yet: a lifecycle rule on the `lineage-cursors/` prefix (CDK) is the follow-up.
Edges are returned with the page whose node they leave, so an edge may name a node that arrives on a later page;
clients merge pages by node id.
"""
from __future__ import annotations

import secrets
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from chalicelib.adapters import ObjectStore
from chalicelib.errors import NotFound, ValidationFailed
from chalicelib.repositories.provenance import Edge, Node, ProvenanceRepository
from chalicelib.repositories.snapshots import SnapshotRepository
from chalicelib.domain import workspace_prefix

NODE_TYPES = ("snapshot", "environment", "job", "model", "version", "endpoint", "capture")
DIRECTIONS = ("up", "down", "both")
DEFAULT_LIMIT = 1000
MAX_LIMIT = 5000
# Concurrent Queries per BFS level (each a small single-partition read); botocore pools 10 connections.
QUERY_CONCURRENCY = 10
# Which stored edge rows lead upstream (towards inputs): a job *used* its inputs (job -> snapshot), a job
# *produced* its model (job -> model, so upstream of a model is the IN side), a snapshot is *derived* from
# its predecessor (new -> old). Serving (chalicelib/serving.py, registry.py) reuses them: a registry version *used*
# its model, an endpoint *used* the versions (or models) it served and *produced* its capture data. Downstream is the
# mirror image.
_UPSTREAM = ("OUT#used#", "IN#produced#", "OUT#derived#", "OUT#reproduces#")  # reproduces: new job -> original
_DOWNSTREAM = ("IN#used#", "OUT#produced#", "IN#derived#", "IN#reproduces#")
_PREFIXES = {"up": _UPSTREAM, "down": _DOWNSTREAM, "both": _UPSTREAM + _DOWNSTREAM}


def cursor_key(workspace: str, cursor: str) -> str:
    return f"{workspace_prefix(workspace)}lineage-cursors/{cursor}.json"


@dataclass
class _Walk:
    """One page of a breadth-first walk: what it found, and the frontier (with levels) and visited set left."""

    nodes: list[dict[str, Any]]
    edges: dict[tuple[str, str, str], dict[str, str]]
    queue: deque[tuple[str, int]]
    seen: set[str]
    requests: int


class Provenance:
    def __init__(self, *, store: ObjectStore, repository: ProvenanceRepository,
                 snapshots: SnapshotRepository) -> None:
        self.store = store
        self.repository = repository
        self.snapshots = snapshots

    def add_node(self, workspace: str, node: str, node_type: str, attrs: dict[str, Any], at: str) -> None:
        self.repository.add_node(workspace, Node(node, node_type, attrs, at))

    def add_edge(self, workspace: str, source: str, rel: str, target: str, at: str) -> None:
        """`source -rel-> target`, e.g. job -used-> snapshot, job -produced-> model."""
        self.repository.add_edge(workspace, source, rel, target, at)

    def add(self, workspace: str, nodes: list[Node], edges: list[Edge]) -> None:
        """These nodes, then these edges (many at once)."""
        self.repository.add(workspace, nodes, edges)

    def retract_produced(self, workspace: str, job_id: str, output: str, *, node: bool) -> None:
        """Deletes the `job -produced-> output` edge (and the output's node, if it is the job's own) that a Record
        wrote before its fenced end failed: a dropped outcome leaves no provenance behind."""
        self.repository.retract(workspace, f"job:{job_id}", "produced", output, node=node)

    def node(self, workspace: str, node: str) -> dict[str, Any]:
        found = self.repository.node(workspace, node)
        if found is None:
            raise NotFound(f"node {node!r} does not exist in workspace {workspace!r}")
        return {"id": node, "type": found.type, "attrs": found.attrs, "created_at": found.created_at}

    # -- walking -----------------------------------------------------------------------------------------

    def lineage(self, workspace: str, node: str, direction: str = "up", depth: int | None = None,
                limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        """Breadth-first walk from `node`, at most `limit` nodes per call; `next` resumes it (see the module)."""
        if direction not in DIRECTIONS:
            raise ValidationFailed(f"direction: must be one of {', '.join(DIRECTIONS)}")
        if depth is not None and depth < 1:
            raise ValidationFailed("depth: must be a positive integer")
        limit = DEFAULT_LIMIT if limit is None else limit
        if not 1 <= limit <= MAX_LIMIT:
            raise ValidationFailed(f"limit: must be 1 to {MAX_LIMIT} nodes")
        if cursor:
            queue, seen = self._resume(workspace, cursor, node, direction, depth)
        else:
            queue, seen = deque([(node, 0)]), {node}
        walk = self._walk(workspace, node, direction, depth, limit, queue, seen, resumed=bool(cursor))
        next_cursor = self._suspend(workspace, node, direction, depth, walk.queue, walk.seen) if walk.queue else None
        return {"root": node, "direction": direction, "nodes": walk.nodes, "edges": list(walk.edges.values()),
                "next": next_cursor, "requests": walk.requests}

    def _walk(self, workspace: str, root: str, direction: str, depth: int | None, limit: int,
              queue: deque[tuple[str, int]], seen: set[str], *, resumed: bool) -> _Walk:
        """Expands up to `limit` nodes from `queue`, level by level, the Queries of a level concurrently."""
        prefixes = _PREFIXES[direction]
        walk = _Walk([], {}, queue, seen, 0)
        workers = ThreadPoolExecutor(max_workers=QUERY_CONCURRENCY)
        try:
            while queue and len(walk.nodes) < limit:
                # The rest of the current level (up to the page's remaining budget), queried concurrently.
                level = queue[0][1]
                batch: list[str] = []
                while queue and queue[0][1] == level and len(batch) < limit - len(walk.nodes):
                    batch.append(queue.popleft()[0])
                expanded = list(workers.map(lambda n: self.repository.expand(workspace, n, prefixes), batch))
                for current, expansion in zip(batch, expanded, strict=True):
                    walk.requests += expansion.requests
                    if expansion.node is None and current == root and not resumed:
                        raise NotFound(f"node {root!r} does not exist in workspace {workspace!r}")
                    found = expansion.node
                    walk.nodes.append({"id": current, "type": found.type, "attrs": found.attrs} if found is not None
                                      else {"id": current, "type": current.split(":", 1)[0], "attrs": {}})
                    if depth is not None and level >= depth:
                        continue
                    for tag, rel, other in sorted(expansion.edges):
                        source, target = (other, current) if tag == "IN" else (current, other)
                        walk.edges[(source, rel, target)] = {"source": source, "rel": rel, "target": target}
                        if other not in seen:
                            seen.add(other)
                            queue.append((other, level + 1))
        finally:
            workers.shutdown(wait=False)
        return walk

    def _suspend(self, workspace: str, root: str, direction: str, depth: int | None,
                 queue: deque[tuple[str, int]], seen: set[str]) -> str:
        cursor = secrets.token_hex(16)
        self.store.put_json(cursor_key(workspace, cursor), {
            "root": root, "direction": direction, "depth": depth,
            "queue": [list(entry) for entry in queue], "seen": sorted(seen),
        })
        return cursor

    def _resume(self, workspace: str, cursor: str, root: str, direction: str,
                depth: int | None) -> tuple[deque[tuple[str, int]], set[str]]:
        if not (len(cursor) == 32 and all(c in "0123456789abcdef" for c in cursor)):
            raise ValidationFailed("cursor: not a lineage cursor (pass the `next` of the previous page)")
        try:
            state = self.store.get_json(cursor_key(workspace, cursor))
        except NotFound:
            raise ValidationFailed("cursor: unknown in this workspace (pass the `next` of the previous page)") from None
        if (state["root"], state["direction"], state["depth"]) != (root, direction, depth):
            raise ValidationFailed(f"cursor: continues the walk from {state['root']} direction={state['direction']} "
                                   f"depth={state['depth']}; ask with the same node, direction and depth")
        return deque((str(n), int(lvl)) for n, lvl in state["queue"]), set(state["seen"])

    # -- impact ------------------------------------------------------------------------------------------

    def impact(self, workspace: str, target: str | None) -> dict[str, Any]:
        """Every job and model downstream of a data snapshot, or of an S3 object (or prefix ending in "/")
        referenced by remote data manifests.

        s3:// targets are resolved by reading the manifest of every data snapshot of the workspace (one S3
        GET per snapshot, plus a Query over the snapshot rows): fine for hundreds of snapshots, linear in them.
        The better design records an `object:<url>` node with `contains` edges (object -> snapshot) when a
        snapshot with remote entries is committed (chalicelib/snapshots.py `record`), so this becomes one
        Query per hop like any lineage walk."""
        if not target:
            raise ValidationFailed("target: required: s3://bucket/key, snapshot:<id> or a snapshot id")
        scanned = 0
        if target.startswith("s3://"):
            matched, scanned = self._snapshots_referencing(workspace, target)
        else:
            snapshot_id = target.removeprefix("snapshot:")
            if len(snapshot_id) != 64 or any(c not in "0123456789abcdef" for c in snapshot_id):
                raise ValidationFailed("target: must be s3://bucket/key, snapshot:<sha256> or a sha256")
            matched = [snapshot_id]
        nodes: dict[str, dict[str, Any]] = {}
        edges: dict[tuple[str, str, str], dict[str, str]] = {}
        requests = 0
        truncated = False
        for snapshot_id in matched:
            root = f"snapshot:{snapshot_id}"
            try:
                # Walked here, not through `lineage`: the answer is whole or `truncated`, and hands out no cursor,
                # so no cursor object is written that nobody could resume.
                walk = self._walk(workspace, root, "down", None, MAX_LIMIT, deque([(root, 0)]), {root},
                                  resumed=False)
            except NotFound:
                # Never used by a job: no provenance node. An explicit id must still name a real snapshot.
                if not target.startswith("s3://") and self.snapshots.get(workspace, snapshot_id) is None:
                    raise NotFound(f"snapshot {snapshot_id!r} does not exist in workspace {workspace!r}") from None
                continue
            requests += walk.requests
            truncated = truncated or bool(walk.queue)
            nodes.update({n["id"]: n for n in walk.nodes})
            edges.update(walk.edges)

        def of_type(kind: str) -> list[dict[str, Any]]:
            found = [{"id": n["id"], **n["attrs"]} for n in nodes.values() if n["type"] == kind]
            return sorted(found, key=lambda n: str(n["id"]))

        snapshots = {f"snapshot:{s}" for s in matched}
        return {
            "target": target, "matched": [f"snapshot:{s}" for s in matched],
            "jobs": of_type("job"), "models": of_type("model"), "endpoints": of_type("endpoint"),
            "snapshots": [n for n in of_type("snapshot") if n["id"] not in snapshots],
            "edges": list(edges.values()), "manifests_scanned": scanned, "requests": requests,
            "truncated": truncated,
        }

    def _snapshots_referencing(self, workspace: str, url: str) -> tuple[list[str], int]:
        keys = [(row.snapshot_id, row.manifest_key) for row in self.snapshots.of_kind(workspace, "data")]

        def references(entry: tuple[str, str]) -> bool:
            files = self.store.get_json(entry[1]).get("files", [])
            urls = (f.get("url", "") for f in files)
            return any(u == url or (url.endswith("/") and u.startswith(url)) for u in urls)

        with ThreadPoolExecutor(max_workers=QUERY_CONCURRENCY) as pool:
            hits = list(pool.map(references, keys))
        return sorted(s for (s, _), hit in zip(keys, hits, strict=True) if hit), len(keys)
