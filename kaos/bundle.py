"""Turns a directory into a content-addressed manifest (path, sha256, size), checking limits before upload.

Two small caches under the user's kaos cache directory (KAOS_CACHE_DIR, default $KAOS_HOME/cache; both safe to
delete, each written whole by an atomic rename, last writer wins):
* `hashes/<root>.json`, like git's index, one per bundle directory: a file whose (size, mtime, ctime, inode) are
  unchanged is not hashed again. As in git, a digest taken while the file could still change without its mtime
  moving (modified within the last RACY_SECONDS: coarse file system clocks) is not kept. One file per directory
  holds exactly what its last scan found, so reading it costs that directory's size, not every file ever hashed,
  and a scan that found everything unchanged writes nothing; the MAX_HASHED_ROOTS directories used last are kept.
  A stale digest cannot store wrong bytes: S3 refuses a blob whose bytes do not hash to its name.
* `committed.json`: the snapshot ids committed per API endpoint and workspace, so an unchanged input is named by
  its id (one small lookup) instead of resent as a manifest.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tempfile
import time
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
        # The walk follows no link, so a directory it reaches is really real_root/<its relative path>.
        relative_dir = os.path.relpath(dirpath, root)
        real_dir = real_root if relative_dir == "." else real_root / relative_dir
        for name in sorted(filenames):
            if name in IGNORED_NAMES or name.endswith(IGNORED_SUFFIXES):
                continue
            path = Path(dirpath) / name
            try:
                status = os.lstat(path)
            except OSError as exc:
                raise BundleError(f"{label}: {path} cannot be read ({exc.strerror})", 2) from None
            if stat.S_ISLNK(status.st_mode):  # only a link needs resolving (one lstat per file otherwise)
                real = _resolve(path, label)
                if real != real_root and real_root not in real.parents:
                    raise BundleError(f"{label}: {path} is a symlink leaving the bundle (to {real})")
                if real.is_symlink():  # 3.13 resolves a loop to one of its links
                    raise BundleError(f"{label}: {path} is a symlink loop", 2)
                if not real.is_file():
                    continue
                size = real.stat().st_size
            elif stat.S_ISREG(status.st_mode):
                real, size = real_dir / name, status.st_size
            else:
                continue  # a socket, a pipe or a device is not a file to send
            rel = path.relative_to(root).as_posix()
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


# A file modified this recently may change again without its mtime moving (coarse clocks): its digest is not kept.
RACY_SECONDS = 2.0
# The hash cache keeps the files of this many bundle directories, the ones used last.
MAX_HASHED_ROOTS = 256


def cache_dir() -> Path:
    from kaos.settings import home

    return Path(os.environ.get("KAOS_CACHE_DIR") or home() / "cache")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or damaged: a cache starts over
        return {}


def _write_json(path: Path, value: Any) -> None:
    """Whole or not at all (a concurrent reader sees the old file or the new one); a failure loses only cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, delete=False) as tmp:
            json.dump(value, tmp, separators=(",", ":"))
        os.replace(tmp.name, path)
    except OSError:
        pass


class HashCache:
    """Digests of the files under one bundle directory by real path, valid while the file's (size, mtime_ns,
    ctime_ns, inode) are the ones recorded."""

    def __init__(self, root: Path, directory: Path | None = None) -> None:
        self.directory = directory or cache_dir() / "hashes"
        self.path = self.directory / f"{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:32]}.json"
        loaded = _read_json(self.path)
        self.entries: dict[str, list[Any]] = loaded if isinstance(loaded, dict) else {}
        self.used: dict[str, list[Any]] = {}

    @staticmethod
    def _stamp(real: Path) -> list[Any]:
        st = real.stat()
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    def lookup(self, real: Path) -> tuple[list[Any], str | None]:
        stamp = self._stamp(real)
        entry = self.entries.get(str(real))
        return stamp, entry[4] if isinstance(entry, list) and entry[:4] == stamp else None

    def keep(self, real: Path, stamp: list[Any], digest: str) -> None:
        if time.time_ns() - stamp[1] > RACY_SECONDS * 1e9:
            self.used[str(real)] = [*stamp, digest]

    def save(self) -> None:
        """The digests this scan kept, unless they are exactly the recorded ones; then the oldest directories' files
        past MAX_HASHED_ROOTS are dropped."""
        try:
            if self.used == self.entries:
                os.utime(self.path)  # used now: the last directory to be dropped
                return
        except OSError:
            pass
        _write_json(self.path, self.used)
        try:
            kept = sorted(self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
            for stale in kept[MAX_HASHED_ROOTS:]:
                stale.unlink(missing_ok=True)
        except OSError:
            pass


def hash_files(entries: list[tuple[str, Path, int]], progress: Callable[[int], None],
               cache: HashCache | None = None) -> list[LocalFile]:
    """LocalFiles of the scanned entries; with a cache, a file unchanged since it was last hashed is not read."""
    files = []
    for rel, real, size in entries:
        stamp, known = cache.lookup(real) if cache else ([], None)
        if known is None:
            digest = hashlib.sha256()
            with real.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
                    progress(len(chunk))
            known = digest.hexdigest()
        else:
            progress(size)
        if cache:
            cache.keep(real, stamp, known)
        files.append(LocalFile(rel, real, known, size))
    if cache:
        cache.save()
    return files


class Committed:
    """The snapshot ids this user committed, per API endpoint and workspace (a hint: the API is asked to confirm)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_dir() / "committed.json"

    def _key(self, endpoint: str, workspace: str) -> str:
        return f"{endpoint} {workspace}"

    def knows(self, endpoint: str, workspace: str, snapshot_id: str) -> bool:
        ids = _read_json(self.path).get(self._key(endpoint, workspace), [])
        return isinstance(ids, list) and snapshot_id in ids

    def remember(self, endpoint: str, workspace: str, snapshot_id: str, known: bool = True) -> None:
        """Adds (or, known=False, drops) the id; each workspace keeps its newest MAX_COMMITTED ids."""
        everything = _read_json(self.path)
        ids = [i for i in everything.get(self._key(endpoint, workspace), []) if i != snapshot_id]
        everything[self._key(endpoint, workspace)] = ([*ids, snapshot_id] if known else ids)[-MAX_COMMITTED:]
        _write_json(self.path, everything)


MAX_COMMITTED = 256


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
