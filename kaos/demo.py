"""`make demo`: the quick start, offline, start to finish, printing each command as a user would type it.

It trains the digits template, shows metrics, logs and provenance, redeploys the same inputs (a cache hit),
then drops a new data file into S3 and lets auto-retrain build the next generation, whose provenance reaches
back through both data snapshots. It ends by serving the first model: registered, approved, deployed behind an
endpoint and asked to classify three rows of the data (the digits 0, 1 and 2)."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "templates" / "sklearn-digits"
RETRAIN_TIMEOUT_SECONDS = 120


def kaos(env: dict[str, str], *args: str, capture: bool = False) -> str:
    if not capture:
        print(f"\n$ kaos {' '.join(shlex.quote(a) for a in args)}", flush=True)
    result = subprocess.run([sys.executable, "-m", "kaos.cli", *args], env=env, text=True, check=False,
                            stdout=subprocess.PIPE if capture else None)
    if result.returncode != 0:
        raise SystemExit(f"demo failed at: kaos {' '.join(args)}")
    return result.stdout or ""


def jobs(env: dict[str, str]) -> list[dict[str, object]]:
    listed: list[dict[str, object]] = json.loads(kaos(env, "train", "list", "--json", capture=True))["jobs"]
    return listed


def main() -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kaos-demo-") as home:
        env = {**os.environ, "KAOS_HOME": home}
        deploy = ("train", "deploy", "-s", str(TEMPLATE / "train"), "-d", str(TEMPLATE / "data"),
                  "-h", str(TEMPLATE / "params.json"))
        kaos(env, "local", "up", "--detach")
        try:
            kaos(env, "workspace", "create", "digits")
            kaos(env, *deploy, "--wait")
            job_id = str(jobs(env)[0]["id"])
            kaos(env, "train", "list")
            kaos(env, "train", "logs", job_id)
            kaos(env, "train", "provenance", f"model:{job_id}")
            kaos(env, *deploy)
            # Incremental retraining: a new file in S3 becomes data snapshot N+1 and one new training.
            new_rows = Path(home) / "more-digits.csv"
            lines = (TEMPLATE / "data" / "digits.csv").read_text().splitlines()
            new_rows.write_text("\n".join([lines[0], *lines[1:201]]) + "\n")
            kaos(env, "workspace", "auto-retrain", "digits", "on")
            kaos(env, "data", "push", str(new_rows))
            print("\n(waiting for auto-retrain: one upload window, then the training)", flush=True)
            deadline = time.monotonic() + RETRAIN_TIMEOUT_SECONDS
            while time.monotonic() < deadline:
                newer = [j for j in jobs(env) if j["id"] != job_id and j["status"] in ("COMPLETED", "FAILED")]
                if newer:
                    break
                time.sleep(1)
            else:
                raise SystemExit("demo failed: auto-retrain did not finish in time")
            kaos(env, "train", "list")
            kaos(env, "train", "provenance", f"model:{newer[0]['id']}")
            kaos(env, "model", "register", job_id, "--group", "digits")
            kaos(env, "model", "approve", "digits/1")
            kaos(env, "model", "alias", "digits", "champion", "1")
            kaos(env, "serve", "deploy", "digits@champion", "--wait")
            kaos(env, "serve", "predict", "digits", "--data", str(TEMPLATE / "requests" / "digits-0-1-2.csv"))
        finally:
            kaos(env, "local", "down")
    print(f"\ndemo finished in {time.monotonic() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
