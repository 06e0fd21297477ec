"""What committing a code bundle costs (issue 14 item 1): requests per commit, and the whole `train deploy` process.

* requests: the snapshot service (`Snapshots`, with the real DynamoDB repository and S3 adapter on moto in
  process), driven as the client drives it (commit, upload what is missing, complete, ...), for n = 1,001 and
  10,000 files: a new bundle, the same bundle with one file changed, and the unchanged bundle. Every AWS request is
  counted where botocore sends it; API requests are the service calls (one per HTTP request). The client's
  presigned PUTs are counted apart (one per loose missing blob, one per pack of many small ones).
* wall: `kaos train deploy -s <1,001 files of 2 KB> -d <digits> -h params --json` as a subprocess on the embedded
  stack (no --wait: up to the job's acceptance), new bundle, one file changed, unchanged (a cache hit: the same
  job); wall time, CPU seconds and peak RSS of the process. The peer, interleaved: the SageMaker SDK's
  `SKLearn(...).fit(wait=False)` on the same source dir against a moto server, installed by this benchmark into a
  venv of its own (BENCH_SDK_VENV, default /tmp/kaos-bench-sdk; never a kaos dependency). Baseline: `kaos --help`.

Run: .venv/bin/python -m bench.bundle_commit [requests|wall]   (both by default; BUNDLE_SIZES=1001,10000)
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.submit import ROOT, TEMPLATE, Bench

SIZES = [int(n) for n in os.environ.get("BUNDLE_SIZES", "1001,10000").split(",")]
WALL_FILES = 1_001
WALL_RUNS = int(os.environ.get("BUNDLE_WALL_RUNS", "3"))
USER = "arn:aws:iam::123456789012:user/dev"
MOTO_PORT = int(os.environ.get("BENCH_MOTO_PORT", "5077"))


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
    from chalicelib.blobs import blob_key, pack_key
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
    print(f"{'n files':>8} {'case':14} {'API':>4} {'PUT':>6} {'S3 HEAD':>8} {'S3 PUT':>8} {'S3 other':>8} {'DDB':>5} "
          f"{'s':>6}")
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
                    for pack in answer.get("packs", []):  # many small blobs: their bytes concatenated, one PUT
                        snapshots.store.put_bytes(pack_key(ws, pack["id"]), b"".join(bodies[d] for d in pack["blobs"]),
                                                  if_absent=True)
                    puts += len(answer["missing"]) + len(answer.get("packs", []))
                    seen.clear()
                    seen.update(server)
                    answer, _ = snapshots.complete(ws, answer["id"], USER)
                    api += 1
                heads, writes = seen.pop("s3:HeadObject", 0), seen.pop("s3:PutObject", 0)
                s3_other = sum(v for k, v in seen.items() if k.startswith("s3:"))
                ddb = sum(v for k, v in seen.items() if k.startswith("dynamodb:"))
                print(f"{n:>8} {case:14} {api:>4} {puts:>6} {heads:>8} {writes:>8} {s3_other:>8} {ddb:>5} "
                      f"{time.perf_counter() - started:6.1f}")
        patches_s3.remove()


# --- the whole deploy process ------------------------------------------------------------------------------
SDK_VENV = Path(os.environ.get("BENCH_SDK_VENV", "/tmp/kaos-bench-sdk"))
SDK_PIN = "sagemaker>=2.200,<3"
# The peer: the SageMaker Python SDK's script-mode submit (tar the source dir, upload it, CreateTrainingJob).
SDK_SCRIPT = """
import sys
import boto3, sagemaker
from sagemaker.sklearn import SKLearn
code, data, seed = sys.argv[1:4]
session = sagemaker.Session(boto_session=boto3.Session(region_name="us-east-1"), default_bucket="sdk-bench")
SKLearn(entry_point="train.py", source_dir=code, role="arn:aws:iam::123456789012:role/sdk-bench",
        instance_type="ml.m5.large", instance_count=1, framework_version="1.2-1", sagemaker_session=session,
        hyperparameters={"seed": int(seed)}).fit({"training": data}, wait=False)
"""


@dataclass
class Run:
    wall: float
    cpu: float
    peak_mb: float


# Starts the measured command and reports its rusage (max RSS, CPU) and wall time on the descriptor it is given (its
# first argument). Linux carries a process's
# peak RSS across exec, so a command forked straight from this benchmark (hundreds of MB after the request counts'
# in-process moto) reported this process's peak as its own; forked from this small launcher, it reports its own.
LAUNCHER = """
import os, sys, time
report, command = int(sys.argv[1]), sys.argv[2:]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.close(report)
    os.execvp(command[0], command)
_, status, usage = os.wait4(pid, 0)
os.write(report, f"{os.waitstatus_to_exitcode(status)} {time.perf_counter() - started} "
                 f"{usage.ru_utime + usage.ru_stime} {usage.ru_maxrss}".encode())
"""


def measured(command: list[str], env: dict[str, str]) -> Run:
    """Wall time, CPU seconds and peak RSS of one process (its own rusage, read by the launcher as it reaps it)."""
    read, write = os.pipe()
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(write), *command], env=env, cwd=ROOT,
                                   stdout=out, stderr=subprocess.STDOUT, pass_fds=(write,))
        os.close(write)
        process.wait()
        with os.fdopen(read) as report:
            code, wall, cpu, maxrss = report.read().split()
        if int(code):
            out.seek(0)
            raise SystemExit(f"{command[:4]} failed ({code}):\n{out.read().decode()[-3000:]}")
    return Run(float(wall), float(cpu), int(maxrss) / 1024)


def ensure_sdk() -> Path | None:
    """The SDK in a venv of its own (never a kaos dependency); None when it cannot be installed here."""
    python = SDK_VENV / "bin" / "python"
    if not python.exists():
        made = subprocess.run([sys.executable, "-m", "venv", str(SDK_VENV)], capture_output=True, check=False)
        pip = subprocess.run([str(python), "-m", "pip", "install", "-q", SDK_PIN], capture_output=True, check=False)
        if made.returncode or pip.returncode:
            print(f"the SageMaker SDK could not be installed ({pip.stderr.decode()[-300:]}); no peer row")
            return None
    return python


def wall() -> None:
    sdk = ensure_sdk()
    with tempfile.TemporaryDirectory(prefix="kaos-bench-bundle-") as tmp:
        bench = Bench(Path(tmp))
        bench.env["KAOS_CACHE_DIR"] = str(Path(tmp) / "cache")
        bench.up()
        rows: dict[str, list[Run]] = defaultdict(list)
        moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(MOTO_PORT)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sdk_env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{MOTO_PORT}", "AWS_ACCESS_KEY_ID": "bench",
                   "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
        try:
            sdk_data = sdk_bucket(sdk_env) if sdk else ""
            bench.client().create_workspace("bundle")
            for run in range(WALL_RUNS):
                code = Path(tmp) / f"code-{run}"
                for path, body in source(WALL_FILES, changed=None).items():
                    (code / path).parent.mkdir(parents=True, exist_ok=True)
                    (code / path).write_bytes(body.replace(b"# module", f"# run {run} module".encode()))
                (code / "train.py").write_text("print('hi')\n")
                params = Path(tmp) / f"params-{run}.json"
                params.write_text(json.dumps({"seed": run}))
                kaos = [sys.executable, "-m", "kaos.cli", "train", "deploy", "-s", str(code), "-d",
                        str(TEMPLATE / "data"), "-h", str(params), "-w", "bundle", "--json"]
                peer = [str(sdk), "-c", SDK_SCRIPT, str(code), sdk_data, str(run)] if sdk else []
                rows["kaos --help (baseline)"].append(measured([sys.executable, "-m", "kaos.cli", "--help"],
                                                               bench.env))
                for case in ("new bundle", "one file changed", "unchanged (cache hit)"):
                    if case == "one file changed":
                        (code / "pkg" / "m00007.py").write_text(f"x = {run}\n")
                    rows[f"kaos: {case}"].append(measured(kaos, bench.env))
                    if peer:
                        rows[f"SDK: {case}"].append(measured(peer, sdk_env))
        finally:
            moto.terminate()
            moto.wait()
            bench.down()
    print(f"{'1,001 files of 2 KB, whole process':36} {'n':>3} {'median s':>9} {'min s':>7} {'CPU s':>6} "
          f"{'peak MB':>8} {'kaos/SDK':>9}")
    for label, runs in rows.items():
        wall_s = statistics.median(r.wall for r in runs)
        sdk_runs = rows.get(label.replace("kaos:", "SDK:")) if label.startswith("kaos:") else None
        ratio = f"{wall_s / statistics.median(r.wall for r in sdk_runs):9.2f}" if sdk_runs else ""
        print(f"{label:36} {len(runs):>3} {wall_s:9.2f} {min(r.wall for r in runs):7.2f} "
              f"{statistics.median(r.cpu for r in runs):6.2f} {statistics.median(r.peak_mb for r in runs):8.0f} "
              f"{ratio}")


def sdk_bucket(env: dict[str, str]) -> str:
    """The SDK's bucket on its moto server, with the digits data in it (as s3:// for fit)."""
    import boto3
    import botocore.exceptions

    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id="bench", aws_secret_access_key="bench")
    for _ in range(100):  # the server is starting
        try:
            s3.create_bucket(Bucket="sdk-bench")
            break
        except botocore.exceptions.EndpointConnectionError:  # it listens once started
            time.sleep(0.1)
    s3.upload_file(str(TEMPLATE / "data" / "digits.csv"), "sdk-bench", "data/digits.csv")
    return "s3://sdk-bench/data/"


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
