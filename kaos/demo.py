"""`make demo`: the quick start, offline, start to finish, printing each command as a user would type it."""
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


def kaos(env: dict[str, str], *args: str, capture: bool = False) -> str:
    if not capture:
        print(f"\n$ kaos {' '.join(shlex.quote(a) for a in args)}", flush=True)
    result = subprocess.run([sys.executable, "-m", "kaos.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE if capture else None)
    if result.returncode != 0:
        raise SystemExit(f"demo failed at: kaos {' '.join(args)}")
    return result.stdout or ""


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
            jobs = json.loads(kaos(env, "train", "list", "--json", capture=True))["jobs"]
            job_id = jobs[0]["id"]
            kaos(env, "train", "list")
            kaos(env, "train", "logs", job_id)
            kaos(env, "train", "provenance", f"model:{job_id}")
            kaos(env, *deploy)
        finally:
            kaos(env, "local", "down")
    print(f"\ndemo finished in {time.monotonic() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
