"""Cached synthesis: tests and the offline emulator call `synthesize` and pay for CDK only when inputs change.

The cache key is a sha256 over the bytes of `cdk/`, `app/`, `chalicelib/`, `functions/`, `requirements.txt`, the
context and the aws-cdk-lib version; it is stored as `<outdir>/synth.key` next to `Kaos.template.json`.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from cdk.constants import REPO_ROOT, STACK_ID
from cdk.digest import tree_digest

SOURCES = ("cdk", "app", "chalicelib", "functions", "requirements.txt")
KEY_FILE = "synth.key"


def template_path(outdir: Path) -> Path:
    return outdir / f"{STACK_ID}.template.json"


def cache_key(context: dict[str, str], root: Path = REPO_ROOT) -> str:
    sources = tree_digest([root / s for s in SOURCES if (root / s).exists()], root=root)
    extra = json.dumps(
        {"context": context, "aws-cdk-lib": metadata.version("aws-cdk-lib"), "cdk-nag": metadata.version("cdk-nag")},
        sort_keys=True,
    )
    return hashlib.sha256(f"{sources}\n{extra}".encode()).hexdigest()


def synthesize(outdir: Path, context: dict[str, str]) -> Path:
    """Synthesize the app into `outdir` unless the cached template there matches; return the template path.

    Raises SynthFailed with the synth's own error (cdk-nag findings fail it); the cache is only written after a
    success. Concurrent callers (pytest-xdist, the emulator) serialise on `<outdir>.lock`.
    """
    outdir = outdir.resolve()
    outdir.parent.mkdir(parents=True, exist_ok=True)
    key = cache_key(context)
    template, key_file = template_path(outdir), outdir / KEY_FILE
    with open(outdir.parent / f"{outdir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if template.exists() and key_file.exists() and key_file.read_text().strip() == key:
            return template
        key_file.unlink(missing_ok=True)
        # In a child process: jsii starts a node runtime (~600 MB RSS) that lives as long as the Python process
        # that imported aws_cdk, and the embedded stack, which synthesizes on a cache miss, runs for hours.
        done = subprocess.run([sys.executable, "-m", "cdk.synth", str(outdir), json.dumps(context)],
                              cwd=REPO_ROOT, capture_output=True, text=True,
                              env={**os.environ, "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1"})
        if done.returncode != 0:
            raise SynthFailed("\n".join((done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-3:]))
        _prune_stale_assets(outdir)
        key_file.write_text(key + "\n")
        return template


class SynthFailed(Exception):
    """The CDK app did not synthesize; the message is the end of the synth's error output."""


def _prune_stale_assets(outdir: Path) -> None:
    """Drop `asset.*` left by earlier synths (each Chalice zip is ~17 MB); CDK reuses the ones still referenced."""
    manifest = json.loads((outdir / f"{STACK_ID}.assets.json").read_text())
    live = {f"asset.{h}" for h in manifest.get("files", {})} | {
        f["source"]["path"] for f in manifest.get("files", {}).values() if "path" in f.get("source", {})
    }
    for path in outdir.glob("asset.*"):
        if path.name not in live:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def main() -> None:
    """The child of `synthesize`: `python -m cdk.synth OUTDIR CONTEXT_JSON`."""
    from cdk.app import build_app

    outdir, context = sys.argv[1], json.loads(sys.argv[2])
    build_app(outdir=outdir, context=context).synth()


if __name__ == "__main__":
    main()
