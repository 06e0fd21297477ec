"""The image catalogue (environments.json beside this module): which framework images kaos offers, their URI per
region, their Python and package pins (issue 10).

The API resolves a job's (framework, version) to an image URI here; the offline runners read an image's pins to build
its environment (kaos/local/environments.py). The default version of a framework is the newest image whose Python is
not newer than the Python that runs jobs offline (DEFAULT_PYTHON): code written for an older Python runs on a newer
one far more often than the reverse, so the offline run is the closest to AWS it can be.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

CATALOGUE = Path(__file__).with_name("environments.json")
# The Python every offline job runs with: the one this machine has (kaos's own, in a virtualenv of its own).
DEFAULT_PYTHON = "3.11"
DEFAULT_TRAINING_FRAMEWORK = "sklearn"
DEFAULT_BATCH_FRAMEWORK = "python"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)$")


# How an offline training job's status message names the environment it ran in (kaos.local.environments writes it
# into the Training transition's StatusMessage; the job's record reads it back with `environment_ran`).
_RAN = re.compile(r"Environment ([0-9a-f]{64}) packages ([0-9a-f]{64})\.(?: Fidelity: (.*)\.)?$", re.S)


def environment_message(environment_id: str, packages_sha256: str, warnings: Sequence[str]) -> str:
    text = f"Environment {environment_id} packages {packages_sha256}."
    return text + (f" Fidelity: {' | '.join(warnings)}." if warnings else "")


def environment_ran(training: Mapping[str, Any], requirements_sha256: str | None) -> dict[str, Any]:
    """What a training job ran with, from its DescribeTrainingJob answer: the image (DescribeTrainingJob gives no
    digest), the code's requirements.txt, and offline the built environment and its fidelity warnings."""
    ran: dict[str, Any] = {"image": str((training.get("AlgorithmSpecification") or {}).get("TrainingImage", ""))}
    if requirements_sha256:
        ran["requirements_sha256"] = requirements_sha256
    for transition in training.get("SecondaryStatusTransitions") or []:
        message = str(transition.get("StatusMessage", ""))
        match = _RAN.search(message)
        if match is not None:
            ran.update(environment_id=match.group(1), packages_sha256=match.group(2),
                       fidelity=match.group(3).split(" | ") if match.group(3) else [])
    return ran


class UnknownFramework(ValueError):
    """A (framework, version) the catalogue does not hold; the message lists what it does."""


def _py(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def split_requirement(line: str) -> tuple[str, str]:
    """'numpy==1.24.1' -> ('numpy', '==1.24.1'); a bare name has an empty spec."""
    match = _NAME.match(line)
    if match is None:
        raise ValueError(f"not a requirement: {line!r}")
    return match.group(1), match.group(2).replace(" ", "")


@dataclass(frozen=True)
class CatalogueEntry:
    framework: str
    version: str
    python: str | None  # None: an image kaos does not know
    raw: dict[str, Any] = field(repr=False, hash=False, compare=False)
    unknown: bool = False

    @property
    def label(self) -> str:
        return f"{self.framework} {self.version}" if not self.unknown else "an image outside the catalogue"

    def canonical(self) -> str:
        """What identifies the environment: everything the catalogue says of the image but where it is hosted."""
        return json.dumps({k: v for k, v in self.raw.items() if k not in ("registries", "source", "training_module")},
                          sort_keys=True)

    @property
    def offline_pins(self) -> list[tuple[str, str]]:
        """(name, spec) to install offline: the image's pins with the catalogue's offline replacements."""
        replaced = self.raw.get("offline", {})
        pins = []
        for line in self.raw.get("pins", []):
            name, spec = split_requirement(line)
            pins.append((name, replaced[name]["spec"] if name in replaced else spec))
        return pins

    def offline_warnings(self, python: str) -> Iterator[str]:
        """The differences the catalogue knows before any build: Python, replaced pins, the toolkit not installed."""
        if self.python is not None and _py(self.python) != _py(python)[:len(_py(self.python))]:
            yield f"Python {self.python} in the image, {python} offline"
        for name, replaced in sorted(self.raw.get("offline", {}).items()):
            image_spec = dict(split_requirement(p) for p in self.raw.get("pins", [])).get(name, "")
            yield f"{name}{image_spec} in the image, {name}{replaced['spec']} offline: {replaced['reason']}"
        toolkit = self.raw.get("toolkit", [])
        if toolkit:
            yield ("not installed offline (the container's own machinery, which kaos's runner plays): "
                   + ", ".join(toolkit))

    @property
    def training_module(self) -> str | None:
        """The image's SAGEMAKER_TRAINING_MODULE (the toolkit's SM_FRAMEWORK_MODULE); None without a toolkit."""
        module = self.raw.get("training_module")
        return str(module) if module else None

    def image_uri(self, region: str) -> str:
        if "uri" in self.raw:
            return str(self.raw["uri"])
        account = self.raw["registries"].get(region)
        if account is None:
            raise UnknownFramework(f"{self.label} has no image in {region}")
        domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
        return f"{account}.dkr.ecr.{region}.{domain}/{self.raw['repository']}:{self.raw['tag']}"

    def image_path(self) -> str:
        """The region-independent part of the image URI (repository:tag), which identifies the image."""
        return str(self.raw.get("uri") or f"{self.raw['repository']}:{self.raw['tag']}")


@cache
def entries() -> tuple[CatalogueEntry, ...]:
    data = json.loads(CATALOGUE.read_text())
    return tuple(CatalogueEntry(framework=raw["framework"], version=raw["version"], python=raw["python"], raw=raw)
                 for raw in data["images"])


def default_version(framework: str, python: str = DEFAULT_PYTHON) -> str:
    fitting = [e for e in entries() if e.framework == framework and e.python and _py(e.python) <= _py(python)]
    if not fitting:
        raise UnknownFramework(f"framework {framework!r} has no image for Python {python} or older")
    return max(fitting, key=lambda e: _py(e.python or "0")).version


def lookup(framework: str, version: str | None = None) -> CatalogueEntry:
    """The catalogue entry of `framework` at `version` (default: see the module docstring)."""
    chosen = version or default_version(framework)
    for entry in entries():
        if entry.framework == framework and entry.version == chosen:
            return entry
    known = ", ".join(sorted(f"{e.framework}:{e.version}" for e in entries()))
    raise UnknownFramework(f"no image {framework}:{chosen}; the catalogue has {known}")


def region_of(image_uri: str) -> str:
    """The region of an ECR image URI: a deployment's default training image names the region it runs in."""
    match = re.search(r"\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com", image_uri)
    if match is None:
        raise UnknownFramework(f"the deployment's training image {image_uri} is no ECR image: it names no region "
                               "to choose a framework image in")
    return match.group(1)


def entry_for_image(image_uri: str) -> CatalogueEntry:
    """The entry whose image `image_uri` is, in any region; an unknown image gets an entry of its own (no pins)."""
    path = image_uri.split("/", 1)[1] if "/" in image_uri and ".dkr.ecr." in image_uri else image_uri
    path = path.split("@", 1)[0]  # a digest pins the same image
    for entry in entries():
        if entry.image_path() == path:
            return entry
    return CatalogueEntry(framework="image", version=image_uri, python=None, raw={"uri": image_uri}, unknown=True)
