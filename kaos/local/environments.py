"""The Python environment an image gives a job, built offline from the package registry (issue 10).

On AWS a training job or a Batch task runs in its image: the image's Python, the packages the image's Dockerfile
pinned (chalicelib/environments.json cites each image's requirements file), then whatever the job's
``requirements.txt`` adds (``pip install -r`` on top of the image, as the SageMaker toolkit does). Offline
:meth:`Environments.ensure` builds that as a virtualenv of this machine's Python — nothing of kaos's own virtualenv is
visible in it — once per (catalogue entry, requirements contents), in a cache shared by every stack of the machine:

- ``<cache>/base-<id>/``: the image's pins alone (every job of that image without requirements runs here);
- ``<cache>/env-<id>/``: the job's requirements installed over the base (layered on its site-packages), like the
  image + pip -r.

A build happens in a temporary folder renamed into place (a crash leaves no half environment), under a file lock
(threads of one stack and processes of several stacks wait for one builder, then all use its result). Where the
image's Python or one of its pins cannot be had on this machine, the build takes the closest available and says so in
``BuiltEnvironment.warnings``: never a silent substitution.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uv import find_uv_bin

from chalicelib.environments import CatalogueEntry, entry_for_image
from chalicelib.environments import environment_message as catalogue_message

CACHE_ENV = "KAOS_ENVIRONMENTS_CACHE"
MARKER = "kaos-environment.json"
# pip's last lines are what a failed build reports (SageMaker's FailureReason holds 1024 characters).
PIP_MESSAGE_CHARS = 800
Progress = Callable[[str], None]


def default_cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "kaos" / "environments"


@dataclass(frozen=True)
class BuiltEnvironment:
    python: Path  # the interpreter a job/endpoint process runs with (nothing of kaos importable)
    environment_id: str  # sha256 hex of (catalogue entry, requirements file contents)
    packages_sha256: str  # sha256 of the built environment's sorted `name==version` list
    warnings: tuple[str, ...]  # fidelity differences from the image (Python version, unmet pins), human readable


def environment_message(built: BuiltEnvironment) -> str:
    """How a job's status message names the environment it ran in (read back by chalicelib.environments)."""
    return catalogue_message(built.environment_id, built.packages_sha256, built.warnings)


class EnvironmentBuildError(Exception):
    """A build pip could not do; str() is pip's message tail."""


def _sha256(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()


def _requirement_lines(requirements: Sequence[Path]) -> list[str]:
    """The lines pip would act on (comments and blank lines do not change an environment)."""
    lines: list[str] = []
    for path in requirements:
        for line in path.read_text().splitlines():
            stripped = line.split(" #", 1)[0].strip()
            if stripped and not stripped.startswith("#"):
                lines.append(stripped)
    return lines


# uv's words for an exact pin it cannot meet: no release of that version, or none with a wheel for this Python.
_UNMET = re.compile(r"Because (?:there is no version of )?([A-Za-z0-9][A-Za-z0-9_.-]*)==([^\s,]+)"
                    r"(?: has no usable wheels)? and you require")


def closest_wheel(venv: Path, name: str, wanted: str) -> str | None:
    """The release nearest the image's pin that has a wheel for this Python: the oldest newer one (its API is the
    pin's, plus fixes), else the newest older one. uv resolves each side (lowest or highest), installing nothing."""
    for spec, resolution in ((f">{wanted}", "lowest-direct"), (f"<{wanted}", "highest")):
        result = subprocess.run([find_uv_bin(), "pip", "install", "--dry-run", "--no-deps", "--python",
                                 str(venv / "bin" / "python"), f"--only-binary={name}", "--resolution", resolution,
                                 *_find_links(), f"{name}{spec}"], capture_output=True, text=True)
        found = re.search(rf"^ \+ {re.escape(name)}==(\S+)$", result.stdout + result.stderr, re.M | re.I)
        if found is not None:
            return found.group(1)
    return None


def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def _packages(*layers: Path) -> list[str]:
    """`name==version` of every distribution the interpreter of the first layer imports, sorted (from the dist-info
    folders' names, which the wheel spec normalizes); an earlier layer shadows a later one, as on sys.path."""
    found: dict[str, str] = {}
    for venv in reversed(layers):
        for dist in _site_packages(venv).glob("*.dist-info"):
            name, _, version = dist.name[: -len(".dist-info")].partition("-")
            found[name.lower().replace("_", "-")] = version
    return sorted(f"{name}=={version}" for name, version in found.items())


def layered_environment(target: Path, under: Path) -> Path:
    """A virtualenv at `target` over the environment `under` (returns its python): `under`'s site-packages follow
    this one's on sys.path, with their own .pth files (so a layer over a layer sees both), the way pip -r installs over
    an image. A requirement pip finds satisfied below costs nothing; one it upgrades lands here and shadows the one
    below, which is never touched."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True, capture_output=True)
    (_site_packages(target) / "_kaos_image.pth").write_text(
        f"import site; site.addsitedir({str(_site_packages(under))!r})\n")
    return target / "bin" / "python"


def pip_install(venv: Path, args: list[str], say: Progress, cwd: Path | None = None) -> None:
    """pip of kaos's interpreter installing into `venv` (which carries no pip of its own), as the toolkit's pip
    installs over an image: it sees the layers below `venv` (uv would not, and would install them again)."""
    _install([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
              "--disable-pip-version-check", "--no-input", "--progress-bar", "off", *args], say, cwd,
             ("Collecting", "Installing", "Successfully", "ERROR"))


def uv_install(venv: Path, args: list[str], say: Progress) -> None:
    """uv installing into the empty `venv` of an image's pins: the same resolution as pip's, many times faster
    (bench/environments.py); the scikit-learn images install their own pins with uv too."""
    _install([find_uv_bin(), "pip", "install", "--python", str(venv / "bin" / "python"), *_find_links(), *args],
             say, None, ("Resolved", "Prepared", "Installed", "error"))


def _install(command: list[str], say: Progress, cwd: Path | None, shown: tuple[str, ...]) -> None:
    """Runs an installer: the lines starting with `shown` are the build's progress, the output's tail the error."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               stdin=subprocess.DEVNULL, cwd=cwd)
    assert process.stdout is not None
    output: list[str] = []
    for line in process.stdout:
        output.append(line.rstrip("\n"))
        if line.startswith(shown):
            say(line.split(" (from ", 1)[0].rstrip())
    if process.wait() != 0:
        raise EnvironmentBuildError("\n".join(output)[-PIP_MESSAGE_CHARS:])


@cache
def _find_links() -> tuple[str, ...]:
    """This machine's pip find-links (pip's configuration, which uv does not read), as uv options: where wheels that
    no index has lie, such as a CPU build of torch."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    links = {value for line in listed.splitlines() if line.partition("=")[0].endswith(".find-links")
             for value in line.partition("=")[2].strip("'\"").split()}
    return tuple(f"--find-links={link}" for link in sorted(links))


class Environments:
    """Builds and caches the environments of catalogue images; safe from any thread or process."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)

    def ensure(self, image_uri: str, requirements: Sequence[Path] = (),
               progress: Progress | None = None) -> BuiltEnvironment:
        say = progress or (lambda line: None)
        entry = entry_for_image(image_uri)
        lines = _requirement_lines(requirements)
        base = self._ensure_base(entry, image_uri, say)
        if not lines:
            return base
        environment_id = _sha256(entry.canonical().encode(), "\n".join(lines).encode())
        target = self.cache_dir / f"env-{environment_id}"
        with self._locked(target):
            built = self._read(target)
            if built is not None:
                return built
            say(f"Building the environment of {entry.label} with requirements.txt ({len(lines)} lines)")
            tmp = self._fresh_tmp(target)
            image = base.python.parent.parent
            layered_environment(tmp, image)
            (tmp / "requirements.txt").write_text("\n".join(lines) + "\n")
            try:
                pip_install(tmp, ["-r", str(tmp / "requirements.txt")], say)
            except EnvironmentBuildError:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            return self._finish(tmp, target, environment_id, base.warnings, _packages(tmp, image))

    # -- the image's own packages ---------------------------------------------------------------

    def _ensure_base(self, entry: CatalogueEntry, image_uri: str, say: Progress) -> BuiltEnvironment:
        environment_id = _sha256(entry.canonical().encode(), b"")
        target = self.cache_dir / f"base-{environment_id}"
        with self._locked(target):
            built = self._read(target)
            if built is not None:
                return built
            warnings = list(entry.offline_warnings(platform.python_version()))
            if entry.unknown:
                warnings.insert(0, f"{image_uri} is not in kaos's image catalogue: offline the job gets Python "
                                   f"{platform.python_version()} and only its own requirements")
            say(f"Building the environment of {entry.label} ({len(entry.offline_pins)} pinned packages, "
                f"Python {platform.python_version()}); later jobs of this image reuse it")
            tmp = self._fresh_tmp(target)
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp)], check=True,
                           capture_output=True)
            pins = dict(entry.offline_pins)
            while True:
                (tmp / "requirements.txt").write_text("".join(f"{name}{spec}\n" for name, spec in pins.items()))
                exact = [name for name, spec in pins.items() if spec.startswith("==")]
                try:
                    # Only wheels for the exact pins: an image's pin with no wheel for this Python would otherwise
                    # compile (minutes) or fail to; the closest release with a wheel is taken instead, and said.
                    uv_install(tmp, [*(f"--only-binary={name}" for name in exact), "-r",
                                     str(tmp / "requirements.txt")], say)
                    break
                except EnvironmentBuildError as error:
                    unmet = _UNMET.search(str(error))
                    wanted = unmet and next((n for n in pins if n.lower() == unmet.group(1).lower()), None)
                    chosen = wanted and closest_wheel(tmp, wanted, pins[wanted].removeprefix("=="))
                    if not unmet or not wanted or not chosen:
                        shutil.rmtree(tmp, ignore_errors=True)
                        raise
                    warnings.append(f"{wanted}{pins[wanted]} (the image's) has no wheel for Python "
                                    f"{platform.python_version()}: {wanted}=={chosen} offline")
                    say(f"{wanted}{pins[wanted]} has no wheel for this Python; retrying with {wanted}=={chosen}")
                    pins[wanted] = f"=={chosen}"
            return self._finish(tmp, target, environment_id, tuple(warnings), _packages(tmp))

    # -- building blocks ------------------------------------------------------------------------

    def _fresh_tmp(self, target: Path) -> Path:
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        shutil.rmtree(tmp, ignore_errors=True)
        return tmp

    def _finish(self, tmp: Path, target: Path, environment_id: str, warnings: Sequence[str],
                packages: list[str]) -> BuiltEnvironment:
        record = {"environment_id": environment_id,
                  "packages_sha256": hashlib.sha256("\n".join(packages).encode()).hexdigest(),
                  "packages": packages, "warnings": list(warnings)}
        (tmp / MARKER).write_text(json.dumps(record, indent=1))
        shutil.rmtree(target, ignore_errors=True)  # a folder without a marker: a build that crashed mid-rename
        tmp.rename(target)
        built = self._read(target)
        assert built is not None
        return built

    @staticmethod
    def _read(target: Path) -> BuiltEnvironment | None:
        try:
            record: dict[str, Any] = json.loads((target / MARKER).read_text())
        except FileNotFoundError:
            return None
        return BuiltEnvironment(python=target / "bin" / "python", environment_id=record["environment_id"],
                                packages_sha256=record["packages_sha256"], warnings=tuple(record["warnings"]))

    @contextmanager
    def _locked(self, target: Path) -> Iterator[None]:
        """One builder per environment across threads and processes: flock on a file beside it (each open() is its
        own lock holder, so threads of one process exclude each other too)."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with open(target.with_name(target.name + ".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
