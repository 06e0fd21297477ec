"""What committing a code bundle costs (issue 14 item 1): requests per commit, and the whole `train deploy` process.

* requests: the snapshot service (`Snapshots`, with the real DynamoDB repository and S3 adapter on moto in
  process), driven as the client drives it (commit, upload what is missing, complete, ...), for n = 1,001 and
  10,000 files: a new bundle, the same bundle with one file changed, and the unchanged bundle. Every AWS request is
  counted where botocore sends it; API requests are the service calls (one per HTTP request). The client's
  presigned PUTs are counted apart (one per missing blob).
* wall: `kaos train deploy -s <1,001 files of 2 KB> -d <digits> -h params --json` as a subprocess on the embedded
  stack (no --wait: up to the job's acceptance), new bundle, one file changed, unchanged (a cache hit: the same
  job). Baseline: the same process running `kaos --help` (interpreter and CLI imports, no request), same run.

Run: .venv/bin/python -m bench.bundle_commit [requests|wall]   (both by default; BUNDLE_SIZES=1001,10000)
"""
from __future__ import annotations

import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.submit import TEMPLATE, Bench, checked, kaos_cli

SIZES = [int(n) for n in os.environ.get("BUNDLE_SIZES", "1001,10000").split(",")]
WALL_FILES = 1_001
WALL_RUNS = int(os.environ.get("BUNDLE_WALL_RUNS", "3"))
USER = "arn:aws:iam::123456789012:user/dev"


def source(n: int, changed: int | None = None) -> dict[str, bytes]:
    """n files of ~2 KB (the issue's bundle), each distinct; `changed` differs from the others' run."""
    return {f"pkg/m{i:05}.py": (f"# module {i} {'changed' if i == changed else ''}\n" + "x = 1\n" * 340).encode()
            for i in range(n)}


# --- requests per commit -------------------------------------------------------------------------------------
def count_requests() -> None:
    import boto3
    import botocore.client
    from moto import mock_aws

    from chalicelib.adapters import ObjectStore, WebFiles
    from chalicelib.blobs import blob_key
    from chalicelib.domain import sha256_hex
    from chalicelib.repositories.snapshots import DynamoSnapshots
    from chalicelib.snapshots import Snapshots
    from kaos.local import patches_s3

    seen: Counter[str] = Counter()
    send = botocore.client.BaseClient._make_api_call  # type: ignore[attr-defined]  # untyped in botocore

    def counted(client: Any, operation: str, params: Any) -> Any:
        seen[f"{client.meta.service_model.service_name}:{operation}"] += 1
        return send(client, operation, params)

    os.environ.update({"KAOS_TABLE": "bench-commit", "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    os.environ.pop("AWS_ENDPOINT_URL", None)
    botocore.client.BaseClient._make_api_call = counted  # type: ignore[attr-defined]
    print(f"{'n files':>8} {'case':14} {'API':>4} {'PUT':>6} {'S3 HEAD':>8} {'S3 other':>8} {'DDB':>5} {'s':>6}")
    with mock_aws():
        patches_s3.apply()  # S3 keeps the SHA-256 a presigned PUT sends, as the embedded stack's S3 does
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="bench-commit")
        boto3.client("dynamodb").create_table(
            TableName="bench-commit", BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in ("pk", "sk")],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}])
        snapshots = Snapshots(store=ObjectStore(s3, "bench-commit"), repository=DynamoSnapshots(), web=WebFiles())
        for n in SIZES:
            ws = f"ws-{n}"
            for case, files in (("new", source(n)), ("one changed", source(n, changed=n // 2)),
                                ("unchanged", source(n, changed=n // 2))):
                bodies = {sha256_hex(b): b for b in files.values()}
                entries = [{"path": p, "sha256": sha256_hex(b), "size": len(b)} for p, b in files.items()]
                seen.clear()
                api, puts, started = 1, 0, time.perf_counter()
                answer, _ = snapshots.commit(ws, "code", entries, USER)
                while answer["status"] == "pending":
                    server = Counter(seen)
                    for blob in answer["missing"]:  # the client's PUTs, not the server's requests
                        snapshots.store.put_bytes(blob_key(ws, blob["sha256"]), bodies[blob["sha256"]],
                                                  sha256_hex=blob["sha256"], if_absent=True)
                    puts += len(answer["missing"])
                    seen.clear()
                    seen.update(server)
                    answer, _ = snapshots.complete(ws, answer["id"], USER)
                    api += 1
                heads = seen.pop("s3:HeadObject", 0)
                s3_other = sum(v for k, v in seen.items() if k.startswith("s3:"))
                ddb = sum(v for k, v in seen.items() if k.startswith("dynamodb:"))
                print(f"{n:>8} {case:14} {api:>4} {puts:>6} {heads:>8} {s3_other:>8} {ddb:>5} "
                      f"{time.perf_counter() - started:6.1f}")
        patches_s3.remove()


# --- the whole deploy process ------------------------------------------------------------------------------
def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def deployed(env: dict[str, str], args: tuple[str, ...]) -> float:
    started = time.perf_counter()
    checked(kaos_cli(env, *args), "kaos train deploy")
    return time.perf_counter() - started


def wall() -> None:
    with tempfile.TemporaryDirectory(prefix="kaos-bench-bundle-") as tmp:
        bench = Bench(Path(tmp))
        bench.env["KAOS_CACHE_DIR"] = str(Path(tmp) / "cache")
        bench.up()
        rows: dict[str, list[float]] = {"kaos --help (baseline)": [], "new bundle": [], "one file changed": [],
                                        "unchanged (cache hit)": []}
        try:
            bench.client().create_workspace("bundle")
            checked(kaos_cli(bench.env, "config", "show"), "kaos config show")
            for run in range(WALL_RUNS):
                code = Path(tmp) / f"code-{run}"
                for path, body in source(WALL_FILES, changed=None).items():
                    (code / path).parent.mkdir(parents=True, exist_ok=True)
                    (code / path).write_bytes(body.replace(b"# module", f"# run {run} module".encode()))
                (code / "train.py").write_text("print('hi')\n")
                params = Path(tmp) / f"params-{run}.json"
                params.write_text(json.dumps({"seed": run}))
                deploy = ("train", "deploy", "-s", str(code), "-d", str(TEMPLATE / "data"), "-h", str(params),
                          "-w", "bundle", "--json")
                rows["kaos --help (baseline)"].append(timed(functools.partial(kaos_cli, bench.env, "--help")))
                rows["new bundle"].append(deployed(bench.env, deploy))
                (code / "pkg" / "m00007.py").write_text("x = 2\n")
                rows["one file changed"].append(deployed(bench.env, deploy))
                rows["unchanged (cache hit)"].append(deployed(bench.env, deploy))
        finally:
            bench.down()
    base = statistics.median(rows["kaos --help (baseline)"])
    print(f"{'kaos train deploy, 1,001 files':34} {'n':>3} {'median s':>9} {'min s':>7} {'x --help':>9}")
    for label, samples in rows.items():
        print(f"{label:34} {len(samples):>3} {statistics.median(samples):9.2f} {min(samples):7.2f} "
              f"{statistics.median(samples) / base:9.1f}")


def main() -> int:
    print(f"bundle commits; Python {sys.version.split()[0]}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    what = sys.argv[1:] or ["requests", "wall"]
    if "requests" in what:
        count_requests()
    if "wall" in what:
        wall()
    return 0


if __name__ == "__main__":
    sys.exit(main())
