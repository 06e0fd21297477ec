"""Serving (issue 9): offline deploy -> first prediction and warm /invocations latency of the sklearn-digits model,
against `mlflow models serve` of the same model in the same run; requests per second at 1, 4 and 16 clients; the
memory of one idle endpoint process.

    .venv/bin/python -m bench.serving [--requests 300] [--seconds 5]

kaos side: the embedded emulator (IAM enforced, as the stack runs it): CreateModel, CreateEndpointConfig
(serverless), CreateEndpoint, DescribeEndpoint every 0.1 s until InService, then InvokeEndpoint until the first
answer; warm requests both through sagemaker-runtime InvokeEndpoint (what the product calls) and straight to the
model server's port. MLflow side: `mlflow models serve --env-manager local`, installed by this benchmark into its own
virtualenv (/tmp/kaos-bench-mlflow, reused by later runs; never a project dependency), timed from the command's
start to its first answer. Both serve a LogisticRegression trained by the same script on the template's digits, each
in its own environment (the sklearn image's for kaos, MLflow's venv for MLflow: a pickle does not cross scikit-learn
versions); both get the same JSON rows. The image environment is assumed built (its cold build is
bench/environments.py's subject); a cold one is built first and reported apart.
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import statistics
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.peers import venv_python
from chalicelib import environments as catalogue
from kaos.local.emulator import Emulator
from kaos.local.environments import Environments, default_cache_dir

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "kaos" / "templates" / "sklearn-digits"
MLFLOW_VENV = Path("/tmp/kaos-bench-mlflow")
ROLE_NAME = "bench-serving"
TRUST = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                 "Principal": {"Service": "sagemaker.amazonaws.com"}}]}
TRAIN = """
import csv, pickle, sys
from sklearn.linear_model import LogisticRegression
rows = list(csv.reader(open(sys.argv[1])))[1:]
features, labels = [[float(v) for v in r[:-1]] for r in rows], [int(r[-1]) for r in rows]
model = LogisticRegression(C=1.0, max_iter=500).fit(features, labels)
if sys.argv[3] == "mlflow":
    import mlflow.sklearn
    mlflow.sklearn.save_model(model, sys.argv[2])
else:
    pickle.dump(model, open(sys.argv[2], "wb"))
"""


def mlflow_python() -> Path:
    return venv_python(MLFLOW_VENV, ["mlflow", "scikit-learn"])


def post(port: int, body: bytes, connection: http.client.HTTPConnection | None = None) -> int:
    own = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        own.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
        response = own.getresponse()
        response.read()
        return response.status
    finally:
        if connection is None:
            own.close()


def wait_for_answer(call: Callable[[], Any], started: float, limit: float = 300,
                    process: subprocess.Popen[bytes] | None = None) -> float:
    while time.perf_counter() - started < limit:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            if call():
                return time.perf_counter() - started
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError("no answer")


def latencies(call: Callable[[], Any], count: int) -> tuple[float, float]:
    """p50 and p99 in milliseconds of `count` sequential calls."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49], cuts[98]


def throughput(make_call: Callable[[], Callable[[], Any]], clients: int, seconds: float) -> float:
    """Requests per second of `clients` threads, each calling its own callable (connection) for `seconds`."""
    done = [0] * clients
    stop = time.perf_counter() + seconds

    def run(index: int) -> None:
        call = make_call()
        while time.perf_counter() < stop:
            try:
                call()
            except Exception as exc:  # counted out, and said: a server that drops requests must show
                print(f"request failed: {exc!r}")
                call = make_call()
                continue
            done[index] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / seconds


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants, in MB."""
    total = 0
    pids = [pid]
    while pids:
        current = pids.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (OSError, StopIteration):
            continue
        pids += [int(child) for child in children]
    return total / 1024


def kaos_archive(root: Path, python: Path) -> bytes:
    model_dir = root / "kaos-model"
    (model_dir / "code").mkdir(parents=True)
    subprocess.run([str(python), "-c", TRAIN, str(TEMPLATE / "data" / "digits.csv"), str(model_dir / "model.pkl"),
                    "kaos"], check=True)
    (model_dir / "code" / "inference.py").write_text((TEMPLATE / "train" / "inference.py").read_text())
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(model_dir, arcname=".")
    return buffer.getvalue()


def grant_role(emulator: Emulator) -> str:
    iam = emulator.client("iam")
    arn: str = iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(TRUST))["Role"]["Arn"]
    iam.put_role_policy(RoleName=ROLE_NAME, PolicyName="serve", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::bench/*"},
            {"Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
             "Resource": "arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/Endpoints/*"}]}))
    return arn


def bench_kaos(root: Path, image: str, row: bytes, args: argparse.Namespace) -> dict[str, Any]:
    python = Environments(default_cache_dir()).ensure(image).python
    archive = kaos_archive(root, python)
    results: dict[str, Any] = {}
    with Emulator(root / "emu", enforce_iam=True) as emulator:
        emulator.client("s3").create_bucket(Bucket="bench")
        emulator.client("s3").put_object(Bucket="bench", Key="digits/model.tar.gz", Body=archive)
        role = grant_role(emulator)
        sagemaker, runtime = emulator.client("sagemaker"), emulator.client("sagemaker-runtime")

        def invoke() -> bool:
            return bool(runtime.invoke_endpoint(EndpointName="digits", Body=row, ContentType="application/json",
                                                Accept="application/json")["Body"].read())

        started = time.perf_counter()
        sagemaker.create_model(ModelName="digits", ExecutionRoleArn=role, PrimaryContainer={
            "Image": image, "ModelDataUrl": "s3://bench/digits/model.tar.gz",
            "Environment": {"SAGEMAKER_PROGRAM": "inference.py"}})
        sagemaker.create_endpoint_config(EndpointConfigName="digits", ProductionVariants=[{
            "VariantName": "AllTraffic", "ModelName": "digits",
            "ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 20}}])
        sagemaker.create_endpoint(EndpointName="digits", EndpointConfigName="digits")
        wait_for_answer(lambda: sagemaker.describe_endpoint(EndpointName="digits")["EndpointStatus"] == "InService",
                        started)
        results["deploy_to_first_prediction_s"] = wait_for_answer(invoke, started)
        fleet = next(iter(emulator.serving_runner._fleets))
        port, pid = fleet.port, fleet.process.pid
        results["idle_rss_mb"] = rss_mb(pid)
        results["runtime_p50_p99_ms"] = latencies(invoke, args.requests)
        direct = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        results["direct_p50_p99_ms"] = latencies(lambda: post(port, row, direct), args.requests)

        def runtime_client() -> Callable[[], Any]:
            client = emulator.client("sagemaker-runtime")
            return lambda: client.invoke_endpoint(EndpointName="digits", Body=row, ContentType="application/json",
                                                  Accept="application/json")["Body"].read()

        def direct_client() -> Callable[[], Any]:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            return lambda: post(port, row, connection)

        results["runtime_rps"] = {c: throughput(runtime_client, c, args.seconds) for c in (1, 4, 16)}
        results["direct_rps"] = {c: throughput(direct_client, c, args.seconds) for c in (1, 4, 16)}
    return results


def bench_mlflow(root: Path, rows: list[list[float]], args: argparse.Namespace) -> dict[str, Any]:
    python = mlflow_python()
    model = root / "mlflow-model"
    subprocess.run([str(python), "-c", TRAIN, str(TEMPLATE / "data" / "digits.csv"), str(model), "mlflow"],
                   check=True, capture_output=True)
    port = 18000 + int(time.time()) % 1000
    body = json.dumps({"inputs": rows}).encode()
    results: dict[str, Any] = {}
    started = time.perf_counter()
    server = subprocess.Popen([str(python), "-m", "mlflow", "models", "serve", "-m", str(model), "--env-manager",
                               "local", "-h", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True,
                              # MLflow starts uvicorn by name: the venv's scripts must be on PATH.
                              env={**os.environ, "PATH": f"{MLFLOW_VENV / 'bin'}:{os.environ.get('PATH', '')}"})
    try:
        results["deploy_to_first_prediction_s"] = wait_for_answer(lambda: post(port, body) == 200, started,
                                                              process=server)
        time.sleep(1)  # idle, as the kaos process is measured
        results["idle_rss_mb"] = rss_mb(server.pid)
        direct = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        results["direct_p50_p99_ms"] = latencies(lambda: post(port, body, direct), args.requests)

        def client() -> Callable[[], Any]:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            return lambda: post(port, body, connection)

        results["direct_rps"] = {c: throughput(client, c, args.seconds) for c in (1, 4, 16)}
    finally:
        server.terminate()
        server.wait(30)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    image = catalogue.lookup("sklearn").image_uri("us-east-1")  # the default image, as `kaos train` uses
    first = (TEMPLATE / "data" / "digits.csv").read_text().splitlines()[1]
    rows = [[float(v) for v in first.split(",")[:-1]]]
    cold = time.perf_counter()
    Environments(default_cache_dir()).ensure(image)
    print(f"image environment ready in {time.perf_counter() - cold:.1f} s (0 when cached)")
    with tempfile.TemporaryDirectory() as scratch:
        mlflow = bench_mlflow(Path(scratch), rows, args)
        kaos = bench_kaos(Path(scratch), image, json.dumps(rows).encode(), args)
    print(json.dumps({"kaos": kaos, "mlflow": mlflow}, indent=1))
    print(f"deploy -> first prediction: kaos {kaos['deploy_to_first_prediction_s']:.2f} s, MLflow "
          f"{mlflow['deploy_to_first_prediction_s']:.2f} s")
    for name, key in (("kaos via InvokeEndpoint", "runtime_p50_p99_ms"), ("kaos server direct", "direct_p50_p99_ms")):
        p50, p99 = kaos[key]
        print(f"warm p50/p99 {name}: {p50:.2f}/{p99:.2f} ms; MLflow {mlflow['direct_p50_p99_ms'][0]:.2f}/"
              f"{mlflow['direct_p50_p99_ms'][1]:.2f} ms; p50 ratio {p50 / mlflow['direct_p50_p99_ms'][0]:.2f}")
    for clients in (1, 4, 16):
        print(f"RPS at {clients:2d} clients: kaos runtime {kaos['runtime_rps'][clients]:.0f}, kaos direct "
              f"{kaos['direct_rps'][clients]:.0f}, MLflow {mlflow['direct_rps'][clients]:.0f}")
    print(f"idle RSS: kaos endpoint {kaos['idle_rss_mb']:.0f} MB, MLflow {mlflow['idle_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
