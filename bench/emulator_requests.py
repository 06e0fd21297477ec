"""The cost of one AWS call to the embedded emulator: kaos' server (persistent connections) against moto's own
ThreadedMotoServer (a new connection, accept and server thread per call), the same moto app in the same run.

Each server runs in this process with moto's backends; one botocore client makes S3 GetObject and PutObject calls
in turn (1 KB and 100 B bodies). CPU is this process's (client and server together), so the ratio is what a call
costs the machine. Rounds alternate between the servers.

Run: .venv/bin/python -m bench.emulator_requests [--calls 600] [--rounds 3]
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import time
from typing import Any, Protocol

import boto3
from botocore.config import Config


class Server(Protocol):
    def start(self) -> None: ...

    def get_host_and_port(self) -> tuple[str, int]: ...

    def stop(self) -> None: ...


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _round(server: Server, calls: int) -> tuple[float, float]:
    """(wall, CPU) milliseconds per call."""
    host, port = server.get_host_and_port()
    s3: Any = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                           aws_access_key_id="bench", aws_secret_access_key="bench",
                           config=Config(retries={"max_attempts": 1}))
    s3.create_bucket(Bucket="bench-requests")
    s3.put_object(Bucket="bench-requests", Key="read", Body=b"x" * 1000)
    s3.get_object(Bucket="bench-requests", Key="read")["Body"].read()  # warm: models loaded, first connection
    cpu, wall = _cpu(), time.monotonic()
    for i in range(calls // 2):
        s3.get_object(Bucket="bench-requests", Key="read")["Body"].read()
        s3.put_object(Bucket="bench-requests", Key=f"write-{i % 10}", Body=b"y" * 100)
    return (time.monotonic() - wall) * 1000 / calls, (_cpu() - cpu) * 1000 / calls


def main() -> None:
    from moto.server import ThreadedMotoServer

    from kaos.local.moto_server import KeepAliveMotoServer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log lines in the measurement
    results: dict[str, list[tuple[float, float]]] = {"moto ThreadedMotoServer": [], "kaos KeepAliveMotoServer": []}
    for _ in range(args.rounds):
        for label in results:
            server: Server = (ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
                              if label.startswith("moto") else KeepAliveMotoServer())
            server.start()
            try:
                results[label].append(_round(server, args.calls))
            finally:
                server.stop()
    print(f"{args.calls} S3 calls per round, {args.rounds} rounds alternated, load average "
          f"{os.getloadavg()[0]:.1f}")
    medians = {}
    for label, rounds in results.items():
        wall, cpu = statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)
        medians[label] = (wall, cpu)
        print(f"  {label:26s} {wall:6.2f} ms wall per call, {cpu:6.2f} ms CPU per call (median)")
    (moto_wall, moto_cpu), (kaos_wall, kaos_cpu) = medians.values()
    print(f"  ratio kaos/moto: wall {kaos_wall / moto_wall:.2f}x, CPU {kaos_cpu / moto_cpu:.2f}x")


if __name__ == "__main__":
    main()
