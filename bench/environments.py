"""Environment builds (issue 10): time to a job's first line in a new environment (cold build), in a cached one (cache
hit), against a plain `pip install -r` of the same packages into a fresh venv, measured in the same run.

    .venv/bin/python -m bench.environments [--framework sklearn:1.4-2]

Each cold build uses an empty cache folder of its own. The builder installs an image's pins with uv, whose download
cache is whatever the machine has; the plain pip install runs second, so pip's HTTP cache holds what pip fetched
before.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chalicelib import environments as catalogue
from kaos.local.environments import Environments


def first_line(python: Path) -> float:
    """Seconds from starting the interpreter to the script's first printed line."""
    started = time.perf_counter()
    process = subprocess.Popen([str(python), "-c", "print('first line', flush=True)"], stdout=subprocess.PIPE)
    assert process.stdout is not None
    process.stdout.readline()
    elapsed = time.perf_counter() - started
    process.wait()
    return elapsed


def plain_install(pins: list[str], folder: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    (folder / "requirements.txt").write_text("\n".join(pins) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(folder / "bin" / "python"), "install", "--quiet",
                    "--disable-pip-version-check", "-r", str(folder / "requirements.txt")], check=True,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started + first_line(folder / "bin" / "python")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", default="sklearn")
    name, _, version = parser.parse_args().framework.partition(":")
    entry = catalogue.lookup(name, version or None)
    image = entry.image_uri("us-east-1")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        # The plain side installs what the cold build ends up installing (its substitutions included).
        cold_started = time.perf_counter()
        built = Environments(root / "cache").ensure(image)
        cold = time.perf_counter() - cold_started + first_line(built.python)
        pins = [line for line in (built.python.parent.parent / "requirements.txt").read_text().splitlines() if line]
        plain = plain_install(pins, root / "plain")
        hit_started = time.perf_counter()
        again = Environments(root / "cache").ensure(image)
        hit = time.perf_counter() - hit_started + first_line(again.python)
        baseline = first_line(Path(sys.executable))
    print(f"{entry.label}: {len(pins)} pins")
    print(f"plain pip install -r + first line: {plain:.1f} s")
    print(f"cold build + first line:          {cold:.1f} s ({cold / plain:.2f}x plain)")
    print(f"cache hit + first line:           {hit:.3f} s (interpreter alone {baseline:.3f} s; "
          f"+{hit - baseline:.3f} s)")


if __name__ == "__main__":
    main()
