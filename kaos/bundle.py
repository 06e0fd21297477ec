"""Turns a directory into a content-addressed manifest (path, sha256, size), checking limits before upload."""
from __future__ import annotations

import errno
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

from chalicelib import limits

IGNORED_DIRS = {".git", "__pycache__", ".ipynb_checkpoints", ".venv", "node_modules"}
IGNORED_SUFFIXES = (".pyc", ".pyo")
IGNORED_NAMES = {".DS_Store"}


class BundleError(Exception):
    """A local input the CLI cannot send; `exit_code` 2 marks input it cannot even read (a usage error)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _resolve(path: Path, label: str) -> Path:
    """The real path of a file found by the walk; a symlink loop (or an unreadable link) is a clean error."""
    try:
        return path.resolve()
    except RuntimeError:  # Python < 3.13 reports a symlink loop as RuntimeError
        raise BundleError(f"{label}: {path} is a symlink loop", 2) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BundleError(f"{label}: {path} is a symlink loop", 2) from None
        raise BundleError(f"{label}: {path} cannot be read ({exc.strerror})", 2) from None


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
            real = _resolve(path, label)
            if real != real_root and real_root not in real.parents:
                raise BundleError(f"{label}: {path} is a symlink leaving the bundle (to {real})")
            if path.is_symlink() and real.is_symlink():  # 3.13 resolves a loop to one of its links
                raise BundleError(f"{label}: {path} is a symlink loop", 2)
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


def read_data_manifest(path: Path, label: str) -> list[dict[str, Any]]:
    """A remote data manifest: JSON lines of {"url": s3://... | https://..., "path": ..., "sha256"?: ...}.

    Every bad line is reported with its number before anything is sent."""
    if not path.is_file():
        raise BundleError(f"{label}: manifest {str(path)!r} does not exist")
    entries: list[dict[str, Any]] = []
    problems: list[str] = []
    seen: set[str] = set()
    directories: dict[str, str] = {}  # directory path -> a file under it
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            problems.append(f"line {number}: not JSON")
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str) or \
                not isinstance(entry.get("path"), str):
            problems.append(f"line {number}: needs \"url\" and \"path\" strings")
            continue
        if not entry["url"].startswith(("s3://", "https://")):
            problems.append(f"line {number}: unsupported URL scheme in {entry['url'][:60]!r} (use s3:// or https://)")
            continue
        parts = entry["path"].split("/")
        if entry["path"].startswith("/") or any(p in ("", ".", "..") for p in parts):
            problems.append(f"line {number}: path {entry['path']!r} must be relative, without '.' or '..' parts")
            continue
        if entry["path"] in seen:
            problems.append(f"line {number}: path {entry['path']!r} appears twice")
            continue
        parents = _parents(entry["path"])
        clash = next((parent for parent in parents if parent in seen), None) or directories.get(entry["path"])
        if clash is not None:
            problems.append(f"line {number}: paths {entry['path']!r} and {clash!r} cannot both exist (one would be "
                            "a file and a directory)")
            continue
        seen.add(entry["path"])
        for parent in parents:
            directories.setdefault(parent, entry["path"])
        entries.append({k: entry[k] for k in ("url", "path", "sha256") if k in entry})
    if problems:
        raise BundleError(f"{label}: {path} has bad lines:\n  " + "\n  ".join(problems[:20]))
    if not entries:
        raise BundleError(f"{label}: manifest {str(path)!r} has no entries")
    return entries


def _parents(path: str) -> list[str]:
    """'a/b/c' -> ['a', 'a/b']."""
    parts = path.split("/")
    return ["/".join(parts[:k]) for k in range(1, len(parts))]
