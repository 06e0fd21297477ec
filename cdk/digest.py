"""Content digests of source trees; kept free of aws_cdk/jsii imports so a cache hit stays cheap."""
from __future__ import annotations

import hashlib
from pathlib import Path


def tree_digest(paths: list[Path], *, root: Path) -> str:
    """sha256 over the relative names and bytes of every file under `paths` (caches, bytecode skipped)."""
    digest = hashlib.sha256()
    for top in paths:
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            rel = path.relative_to(root).as_posix()
            if "__pycache__" in rel or rel.endswith(".pyc") or "/.chalice/deployments/" in f"/{rel}":
                continue
            digest.update(rel.encode() + b"\0")
            digest.update(path.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()
