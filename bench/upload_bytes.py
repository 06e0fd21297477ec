"""Bytes uploaded to redeploy after changing 1 file of a 1,000-file code bundle.

kaos uploads only the blobs the workspace lacks (by presigned PUT) plus the manifest in the commit request;
the baseline, measured in the same run, is what the SageMaker SDK and the original kaos send: a tar.gz of the
whole bundle. Goal: kaos <= 1.05 x (changed bytes + manifest).

Run: .venv/bin/python -m bench.upload_bytes
"""
from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from kaos.bundle import hash_files, scan
from kaos.client import Client
from kaos.settings import ClientConfig

FILES = 1_000
FILE_BYTES = 4_096


class CountingClient(Client):
    """Counts request bodies: the API calls' JSON and the presigned PUTs' file bytes."""

    api_bytes = 0
    put_bytes = 0

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        if body is not None:
            CountingClient.api_bytes += len(json.dumps(body).encode())
        return super().request(method, path, body, query)


def make_bundle(root: Path) -> None:
    rng = random.Random(7)
    for i in range(FILES):
        path = root / f"pkg{i // 100}" / f"module_{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(FILE_BYTES))


def tar_gz_size(root: Path) -> int:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(root, arcname=".")
    return len(buffer.getvalue())


def upload(client: CountingClient, workspace: str, root: Path) -> tuple[int, int]:
    CountingClient.api_bytes = 0
    uploaded = [0]
    files = hash_files(scan(root, "-s"), lambda _: None)
    client.upload_snapshot(workspace, "code", files, lambda n: uploaded.__setitem__(0, uploaded[0] + n))
    return uploaded[0], CountingClient.api_bytes


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="kaos-bench-") as tmp:
        home = Path(tmp)
        env = {**os.environ, "KAOS_HOME": str(home)}
        state = home / "local"
        subprocess.run([sys.executable, "-m", "kaos.cli", "local", "up", "--detach", "--state-dir", str(state)],
                       env=env, check=True, capture_output=True)
        try:
            runtime = json.loads((state / "runtime.json").read_text())
            client = CountingClient(ClientConfig(api_url=runtime["api_url"], profile="kaos-local-dev",
                                                 credentials_file=str(state / "credentials")))
            client.create_workspace("bytes")
            bundle = home / "bundle"
            make_bundle(bundle)
            first_put, first_api = upload(client, "bytes", bundle)
            changed = bundle / "pkg3" / "module_321.py"
            changed.write_bytes(random.Random(8).randbytes(FILE_BYTES))
            put, api = upload(client, "bytes", bundle)
            baseline = tar_gz_size(bundle)
            manifest = len(json.dumps([{"path": f.path, "sha256": f.sha256, "size": f.size}
                                       for f in hash_files(scan(bundle, "-s"), lambda _: None)]).encode())
        finally:
            subprocess.run([sys.executable, "-m", "kaos.cli", "local", "down", "--state-dir", str(state)],
                           env=env, check=False, capture_output=True)
    kaos_total = put + api
    goal = 1.05 * (FILE_BYTES + manifest)
    print(f"bundle: {FILES} files x {FILE_BYTES} B; first upload {first_put} B of blobs + {first_api} B of API bodies")
    print(f"{'measure':<44}{'bytes':>12}{'x baseline':>12}")
    print(f"{'baseline: tar.gz of the whole bundle':<44}{baseline:>12}{1.0:>12.3f}")
    print(f"{'kaos: changed blob (presigned PUT)':<44}{put:>12}{put / baseline:>12.3f}")
    print(f"{'kaos: API bodies (manifest + complete)':<44}{api:>12}{api / baseline:>12.3f}")
    print(f"{'kaos: total':<44}{kaos_total:>12}{kaos_total / baseline:>12.3f}")
    print(f"goal: <= 1.05 x (changed {FILE_BYTES} B + manifest {manifest} B) = {goal:.0f} B -> "
          f"{'ok' if kaos_total <= goal else 'MISSED'} ({kaos_total / (FILE_BYTES + manifest):.3f} x)")


if __name__ == "__main__":
    main()
