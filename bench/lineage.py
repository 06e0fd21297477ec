"""Lineage walks on large synthetic provenance graphs: DynamoDB requests and seconds, against a naive walk.

Starts moto's server in this process (127.0.0.1, a free port), creates the table with the key schema of
chalicelib/tables.py (pk/sk + gsi1: gsi1pk/gsi1sk) and a bucket (lineage cursors), points chalicelib at them
(KAOS_TABLE, KAOS_BUCKET, AWS_ENDPOINT_URL) and writes the graphs with chalicelib.provenance.Provenance:
  * chains of depth 10, 100 and 1,000: snapshot <-used- job -produced-> model <-used- job -produced-> ...
    walked up from the last node (depth + 1 nodes);
  * a wide fan-in: one model whose job used 1,000 snapshots (and an environment), walked up from the model;
  * the 1,000-chain again walked in pages of 250 nodes (cursor state in S3, requests summed over pages).
Measured: `Provenance.lineage` (one Query per node, each BFS level's Queries concurrent) against a naive walk
written here (sequential BFS: one GetItem for the node, then one Query for its edges). Requests are counted by
wrapping botocore's BaseClient._make_api_call (every DynamoDB call of every pynamodb model and thread).
Seconds: median of ROUNDS walks (one walk for the graphs of 1,000 nodes). moto answers a Query by scanning the
whole table (each graph therefore gets its own table), so its seconds grow with graph size where DynamoDB's do
not: read the request counts and the ratios. Goal: lineage requests <= nodes (so <= depth + 1 for chains).

Run: .venv/bin/python -m bench.lineage
"""
from __future__ import annotations

import functools

import os
import statistics
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

ROUNDS = 3
WORKSPACE = "bench"
AT = "2026-01-01T00:00:00Z"
_calls: Counter[str] = Counter()
_lock = threading.Lock()


def start_moto() -> Any:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log line per request

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update({
        "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1", "KAOS_BUCKET": "bench-lineage",
    })
    os.environ.pop("AWS_PROFILE", None)
    return server


def create_bucket() -> None:
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench-lineage")


def use_table(name: str) -> None:
    """A fresh table per graph, made current (chalicelib reads KAOS_TABLE at call time): moto answers a Query
    by scanning every item of the table, so graphs sharing one table would slow each other's walks."""
    import boto3

    os.environ["KAOS_TABLE"] = name
    boto3.client("dynamodb").create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in ("pk", "sk", "gsi1pk", "gsi1sk")],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        GlobalSecondaryIndexes=[{
            "IndexName": "gsi1", "Projection": {"ProjectionType": "ALL"},
            "KeySchema": [{"AttributeName": "gsi1pk", "KeyType": "HASH"},
                          {"AttributeName": "gsi1sk", "KeyType": "RANGE"}],
        }],
    )


def count_calls() -> None:
    """Every botocore API call, whichever client (pynamodb keeps one per model class) and thread makes it."""
    from botocore.client import BaseClient

    original = BaseClient._make_api_call  # type: ignore[attr-defined]  # botocore's private dispatch, untyped

    def counted(self: Any, operation: str, params: Any) -> Any:
        with _lock:
            _calls[f"{self.meta.service_model.service_name}:{operation}"] += 1
        return original(self, operation, params)

    setattr(BaseClient, "_make_api_call", counted)  # noqa: B010  (a private attribute the stubs do not declare)


def dynamodb_calls() -> int:
    with _lock:
        return sum(n for name, n in _calls.items() if name.startswith("dynamodb:"))


def hexid(prefix: str, i: int) -> str:
    return f"{prefix}{i:064x}"[-64:]


def build_chain(prov: Any, name: str, depth: int) -> str:
    """depth hops, depth + 1 nodes; returns the last node (the walk starts there and goes up)."""
    previous = f"snapshot:{hexid(name.encode().hex(), 0)}"
    prov.add_node(WORKSPACE, previous, "snapshot", {"kind": "data"}, AT)
    for i in range(1, depth + 1):
        if i % 2:
            node = f"job:{name}-{i:024x}"
            prov.add_node(WORKSPACE, node, "job", {"kind": "train"}, AT)
            prov.add_edge(WORKSPACE, node, "used", previous, AT)
        else:
            node = f"model:{name}-{i - 1:024x}"
            prov.add_node(WORKSPACE, node, "model", {"uri": f"s3://b/{i}"}, AT)
            prov.add_edge(WORKSPACE, previous, "produced", node, AT)
        previous = node
    return previous


def build_fan_in(prov: Any, width: int) -> str:
    job, model = f"job:fan-{0:024x}", f"model:fan-{0:024x}"
    prov.add_node(WORKSPACE, job, "job", {"kind": "train"}, AT)
    prov.add_node(WORKSPACE, model, "model", {"uri": "s3://b/fan"}, AT)
    prov.add_edge(WORKSPACE, job, "produced", model, AT)
    prov.add_node(WORKSPACE, "environment:fan", "environment", {"image": "img"}, AT)
    prov.add_edge(WORKSPACE, job, "used", "environment:fan", AT)
    for i in range(width):
        snapshot = f"snapshot:{hexid('f', i)}"
        prov.add_node(WORKSPACE, snapshot, "snapshot", {"kind": "data"}, AT)
        prov.add_edge(WORKSPACE, job, "used", snapshot, AT)
    return model


def naive_walk(root: str) -> int:
    """Sequential BFS up: GetItem for the node, then one Query for its upstream edges. Returns nodes seen."""
    from chalicelib.tables import EdgeItem, NodeItem, node_key
    from chalicelib.provenance import _UPSTREAM

    condition = EdgeItem.sk.startswith(_UPSTREAM[0])
    for prefix in _UPSTREAM[1:]:
        condition = condition | EdgeItem.sk.startswith(prefix)
    queue, seen, found = deque([root]), {root}, 0
    while queue:
        current = queue.popleft()
        NodeItem.get(node_key(WORKSPACE, current), "META")
        found += 1
        for edge in EdgeItem.query(node_key(WORKSPACE, current), filter_condition=condition):
            if edge.other not in seen:
                seen.add(edge.other)
                queue.append(edge.other)
    return found


def measure(walk: Callable[[], int], rounds: int) -> tuple[int, int, float]:
    """(nodes, DynamoDB requests of one walk, median seconds over `rounds` walks)."""
    samples, requests, nodes = [], 0, 0
    for _ in range(rounds):
        before = dynamodb_calls()
        start = time.perf_counter()
        nodes = walk()
        samples.append(time.perf_counter() - start)
        requests = dynamodb_calls() - before
    return nodes, requests, statistics.median(samples)


def main() -> None:
    server = start_moto()
    try:
        create_bucket()
        count_calls()
        from chalicelib.adapters import AwsClients, ObjectStore
        from chalicelib.provenance import Provenance
        from chalicelib.repositories.provenance import DynamoProvenance
        from chalicelib.repositories.snapshots import DynamoSnapshots

        # Built as chalicelib.wiring builds it; the table is read at call time, so use_table switches it.
        prov = Provenance(store=ObjectStore(AwsClients().s3, "bench-lineage"), repository=DynamoProvenance(),
                          snapshots=DynamoSnapshots())
        print(f"building graphs (load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores) ...", flush=True)
        built = time.perf_counter()
        graphs = []
        for d in (10, 100, 1000):
            use_table(f"bench-chain-{d}")
            graphs.append((f"chain depth {d}", f"bench-chain-{d}", build_chain(prov, f"c{d}", d), d + 1))
        use_table("bench-fan-in")
        graphs.append(("fan-in 1,000 snapshots", "bench-fan-in", build_fan_in(prov, 1000), 1000 + 3))
        print(f"built in {time.perf_counter() - built:.1f} s", flush=True)

        def kaos_walk(root: str) -> int:
            return len(prov.lineage(WORKSPACE, root, "up", limit=5000)["nodes"])

        def paged_walk(root: str, limit: int = 250) -> int:
            seen: set[str] = set()
            cursor = None
            while True:
                page = prov.lineage(WORKSPACE, root, "up", limit=limit, cursor=cursor)
                seen.update(n["id"] for n in page["nodes"])
                cursor = page["next"]
                if not cursor:
                    return len(seen)

        rows = []
        for label, table, root, expected in graphs:
            print(f"walking {label} ...", flush=True)
            os.environ["KAOS_TABLE"] = table
            rounds = ROUNDS if expected <= 200 else 1
            rows.append((label, expected, measure(functools.partial(kaos_walk, root), rounds),
                         measure(functools.partial(naive_walk, root), rounds)))
            if expected == 1001:
                rows.append(("chain depth 1000, pages of 250", expected,
                             measure(functools.partial(paged_walk, root), rounds), rows[-1][3]))

        print()
        print("| graph | nodes | lineage requests | lineage s | naive requests | naive s | requests ratio "
              "| time ratio | goal (requests <= nodes) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for label, expected, (nodes, requests, seconds), (naive_nodes, naive_requests, naive_seconds) in rows:
            assert nodes == expected == naive_nodes, (label, nodes, expected, naive_nodes)
            ok = "ok" if requests <= nodes else "MISSED"
            print(f"| {label} | {nodes} | {requests} | {seconds:.3f} | {naive_requests} | {naive_seconds:.3f} "
                  f"| {requests / naive_requests:.2f} | {seconds / naive_seconds:.2f} | {ok} |")
        s3_calls = sum(n for name, n in _calls.items() if name.startswith("s3:"))
        print(f"\n(S3 calls for paged-walk cursors over all rounds: {s3_calls}; "
              f"load average {os.getloadavg()[0]:.1f})")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
