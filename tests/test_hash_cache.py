"""The client's hash cache (kaos/bundle.py): one file per bundle directory, holding what its last scan found; an
unchanged directory is neither read again nor written again, whatever else the user has hashed."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from kaos import bundle
from kaos.bundle import HashCache, hash_files, scan


def tree(root: Path, files: dict[str, bytes]) -> Path:
    old = 1_700_000_000  # long ago: not "racy", so the cache may keep the digests
    for path, body in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(body)
        os.utime(root / path, (old, old))
    return root


def digests(root: Path, cache_dir: Path) -> dict[str, str]:
    return {f.path: f.sha256 for f in hash_files(scan(root, "code"), lambda _: None, HashCache(root, cache_dir))}


def test_an_unchanged_directory_is_neither_hashed_nor_written_again(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    code = tree(tmp_path / "code", {f"m{i}.py": f"x = {i}\n".encode() for i in range(20)})
    cache_dir = tmp_path / "hashes"
    first = digests(code, cache_dir)
    assert first == {f"m{i}.py": hashlib.sha256(f"x = {i}\n".encode()).hexdigest() for i in range(20)}
    (kept,) = cache_dir.glob("*.json")

    opened: list[Path] = []
    writes: list[Path] = []
    reads, write = Path.open, bundle._write_json

    def counted_open(path: Path, *args: Any, **kwargs: Any) -> Any:
        if code in path.parents:
            opened.append(path)
        return reads(path, *args, **kwargs)

    def counted_write(path: Path, value: Any) -> None:
        writes.append(path)
        write(path, value)

    monkeypatch.setattr(Path, "open", counted_open)
    monkeypatch.setattr(bundle, "_write_json", counted_write)
    assert digests(code, cache_dir) == first
    assert opened == [] and writes == []

    # One file changed (and one removed): that one is read, and the directory's file holds what the scan found.
    tree(code, {"m3.py": b"x = 'changed'\n"})
    (code / "m4.py").unlink()
    opened.clear()
    again = digests(code, cache_dir)
    assert again["m3.py"] == hashlib.sha256(b"x = 'changed'\n").hexdigest() and "m4.py" not in again
    assert opened == [code / "m3.py"] and writes == [kept]
    assert len(bundle._read_json(kept)) == 19


def test_each_directory_has_its_own_file_and_the_least_recently_used_are_dropped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundle, "MAX_HASHED_ROOTS", 3)
    cache_dir = tmp_path / "hashes"
    roots = [tree(tmp_path / f"code{i}", {"a.py": f"a = {i}\n".encode()}) for i in range(5)]
    for root in roots:
        digests(root, cache_dir)
        for existing in cache_dir.glob("*.json"):  # coarse clocks: order the files' last use explicitly
            os.utime(existing, (existing.stat().st_mtime - 1,) * 2)
    names = {HashCache(root, cache_dir).path.name for root in roots}
    assert len(names) == 5
    assert {p.name for p in cache_dir.glob("*.json")} == {HashCache(r, cache_dir).path.name for r in roots[2:]}
