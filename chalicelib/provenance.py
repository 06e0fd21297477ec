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
here) and is deleted with the workspace (`kaos workspace kill` deletes its prefix). Cursor objects are not
expired yet: a lifecycle rule on the `lineage-cursors/` prefix (CDK) is the follow-up.
Edges are returned with the page whose node they leave, so an edge may name a node that arrives on a later page;
clients merge pages by node id.
"""
from __future__ import annotations

import secrets
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pynamodb.exceptions import DoesNotExist, PutError

from chalicelib import config
from chalicelib.adapters import ObjectStore, clients
from chalicelib.errors import NotFound, ValidationFailed
from chalicelib.tables import EdgeItem, NodeItem, SnapshotItem, node_key, ws_key
from chalicelib.workspaces import workspace_prefix

NODE_TYPES = ("snapshot", "environment", "job", "model")
DIRECTIONS = ("up", "down", "both")
DEFAULT_LIMIT = 1000
MAX_LIMIT = 5000
# Concurrent Queries per BFS level (each a small single-partition read); botocore pools 10 connections.
QUERY_CONCURRENCY = 10
# Which stored edge rows lead upstream (towards inputs): a job *used* its inputs (job -> snapshot), a job
# *produced* its model (job -> model, so upstream of a model is the IN side), a snapshot is *derived* from
# its predecessor (new -> old). Downstream is the mirror image.
_UPSTREAM = ("OUT#used#", "IN#produced#", "OUT#derived#", "OUT#reproduces#")  # reproduces: new job -> original
_DOWNSTREAM = ("IN#used#", "OUT#produced#", "IN#derived#", "IN#reproduces#")
_PREFIXES = {"up": _UPSTREAM, "down": _DOWNSTREAM, "both": _UPSTREAM + _DOWNSTREAM}


def _put_once(item: NodeItem | EdgeItem) -> bool:
    """Appends a row unless it is already there (retries and duplicate events write the same row)."""
    try:
        item.save(condition=NodeItem.pk.does_not_exist())
    except PutError as exc:
        if exc.cause_response_code == "ConditionalCheckFailedException":
            return False
        raise
    return True


def cursor_key(workspace: str, cursor: str) -> str:
    return f"{workspace_prefix(workspace)}lineage-cursors/{cursor}.json"


class Provenance:
    def __init__(self, store: ObjectStore | None = None) -> None:
        self._store = store

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            settings = config.settings()
            self._store = ObjectStore(clients().s3, settings.bucket, platform_buckets=settings.platform_buckets)
        return self._store

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

    # -- walking -----------------------------------------------------------------------------------------

    def _expand(self, workspace: str, node: str, prefixes: tuple[str, ...]) -> tuple[dict[str, Any] | None,
                                                                                   list[tuple[str, str, str]], int]:
        """One Query (more pages only past 1 MB): the node's META and its edges (direction tag, rel, other)."""
        condition = NodeItem.sk == "META"
        for prefix in prefixes:
            condition = condition | NodeItem.sk.startswith(prefix)
        pages = NodeItem.query(node_key(workspace, node), filter_condition=condition).page_iter
        meta: dict[str, Any] | None = None
        edges: list[tuple[str, str, str]] = []
        requests = 0
        for page in pages:
            requests += 1
            for raw in page.get("Items", []):
                row = NodeItem.from_raw_data(raw)
                if row.sk == "META":
                    meta = {"id": node, "type": row.node_type, "attrs": row.attrs}
                else:
                    tag, rel, other = row.sk.split("#", 2)
                    edges.append((tag, rel, other))
        return meta, edges, requests

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
        queue: deque[tuple[str, int]]
        if cursor:
            queue, seen = self._resume(workspace, cursor, node, direction, depth)
        else:
            queue, seen = deque([(node, 0)]), {node}
        prefixes = _PREFIXES[direction]
        nodes: list[dict[str, Any]] = []
        edges: dict[tuple[str, str, str], dict[str, str]] = {}
        requests = 0
        workers = ThreadPoolExecutor(max_workers=QUERY_CONCURRENCY)
        try:
            while queue and len(nodes) < limit:
                # The rest of the current level (up to the page's remaining budget), queried concurrently.
                level = queue[0][1]
                batch: list[str] = []
                while queue and queue[0][1] == level and len(batch) < limit - len(nodes):
                    batch.append(queue.popleft()[0])
                expanded = list(workers.map(lambda n: self._expand(workspace, n, prefixes), batch))
                for current, (meta, rows, count) in zip(batch, expanded, strict=True):
                    requests += count
                    if meta is None:
                        if current == node and not cursor:
                            raise NotFound(f"node {node!r} does not exist in workspace {workspace!r}")
                        meta = {"id": current, "type": current.split(":", 1)[0], "attrs": {}}
                    nodes.append(meta)
                    if depth is not None and level >= depth:
                        continue
                    for tag, rel, other in sorted(rows):
                        source, target = (other, current) if tag == "IN" else (current, other)
                        edges[(source, rel, target)] = {"source": source, "rel": rel, "target": target}
                        if other not in seen:
                            seen.add(other)
                            queue.append((other, level + 1))
        finally:
            workers.shutdown(wait=False)
        next_cursor = self._suspend(workspace, node, direction, depth, queue, seen) if queue else None
        return {"root": node, "direction": direction, "nodes": nodes, "edges": list(edges.values()),
                "next": next_cursor, "requests": requests}

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
        snapshot with remote entries is committed (chalicelib/snapshots.py `_record`), so this becomes one
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
            try:
                graph = self.lineage(workspace, f"snapshot:{snapshot_id}", "down", limit=MAX_LIMIT)
            except NotFound:
                # Never used by a job: no provenance node. An explicit id must still name a real snapshot.
                if not target.startswith("s3://"):
                    try:
                        SnapshotItem.get(ws_key(workspace), f"SNAP#{snapshot_id}")
                    except DoesNotExist:
                        raise NotFound(f"snapshot {snapshot_id!r} does not exist in workspace "
                                       f"{workspace!r}") from None
                continue
            requests += graph["requests"]
            truncated = truncated or graph["next"] is not None
            nodes.update({n["id"]: n for n in graph["nodes"]})
            edges.update({(e["source"], e["rel"], e["target"]): e for e in graph["edges"]})

        def of_type(kind: str) -> list[dict[str, Any]]:
            found = [{"id": n["id"], **n["attrs"]} for n in nodes.values() if n["type"] == kind]
            return sorted(found, key=lambda n: str(n["id"]))

        snapshots = {f"snapshot:{s}" for s in matched}
        return {
            "target": target, "matched": [f"snapshot:{s}" for s in matched],
            "jobs": of_type("job"), "models": of_type("model"),
            "snapshots": [n for n in of_type("snapshot") if n["id"] not in snapshots],
            "edges": list(edges.values()), "manifests_scanned": scanned, "requests": requests,
            "truncated": truncated,
        }

    def _snapshots_referencing(self, workspace: str, url: str) -> tuple[list[str], int]:
        rows = SnapshotItem.query(ws_key(workspace), SnapshotItem.sk.startswith("SNAP#"),
                                  filter_condition=SnapshotItem.kind == "data")
        keys = [(row.snapshot_id, row.manifest_key) for row in rows]

        def references(entry: tuple[str, str]) -> bool:
            files = self.store.get_json(entry[1]).get("files", [])
            urls = (f.get("url", "") for f in files)
            return any(u == url or (url.endswith("/") and u.startswith(url)) for u in urls)

        with ThreadPoolExecutor(max_workers=QUERY_CONCURRENCY) as pool:
            hits = list(pool.map(references, keys))
        return sorted(s for (s, _), hit in zip(keys, hits, strict=True) if hit), len(keys)
