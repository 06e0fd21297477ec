"""Turns a directory into a content-addressed manifest (path, sha256, size), checking limits before upload."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

from chalicelib import limits

IGNORED_DIRS = {".git", "__pycache__", ".ipynb_checkpoints", ".venv", "node_modules"}
IGNORED_SUFFIXES = (".pyc", ".pyo")
IGNORED_NAMES = {".DS_Store"}


class BundleError(Exception):
    pass


@dataclass(frozen=True)
class LocalFile:
    path: str
    source: Path
    sha256: str
    size: int


def scan(root: Path, label: str) -> list[tuple[str, Path, int]]:
    """Files under root as (relative path, real path, size); symlinks may not point outside root."""
    if not root.exists():
        raise BundleError(f"{label}: directory {str(root)!r} does not exist")
    if not root.is_dir():
        raise BundleError(f"{label}: {str(root)!r} is not a directory")
    real_root = root.resolve()
    found: list[tuple[str, Path, int]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORED_DIRS)
        for name in sorted(filenames):
            if name in IGNORED_NAMES or name.endswith(IGNORED_SUFFIXES):
                continue
            path = Path(dirpath) / name
            real = path.resolve()
            if real != real_root and real_root not in real.parents:
                raise BundleError(f"{label}: {path} is a symlink leaving the bundle (to {real})")
            if not real.is_file():
                continue
            rel = path.relative_to(root).as_posix()
            size = real.stat().st_size
            if size > limits.MAX_FILE_BYTES:
                raise BundleError(f"{label}: {rel} is {size} bytes; the limit is {limits.MAX_FILE_BYTES} per file")
            if len(rel) > limits.MAX_PATH_CHARS:
                raise BundleError(f"{label}: {rel[:60]}... is longer than {limits.MAX_PATH_CHARS} characters")
            found.append((rel, real, size))
            if len(found) > limits.MAX_FILES_PER_SNAPSHOT:
                raise BundleError(f"{label}: more than {limits.MAX_FILES_PER_SNAPSHOT} files (the snapshot limit)")
    if not found:
        raise BundleError(f"{label}: directory {str(root)!r} has no files")
    return found


def hash_files(entries: list[tuple[str, Path, int]], progress: Callable[[int], None]) -> list[LocalFile]:
    files = []
    for rel, real, size in entries:
        digest = hashlib.sha256()
        with real.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
                progress(len(chunk))
        files.append(LocalFile(rel, real, digest.hexdigest(), size))
    return files
