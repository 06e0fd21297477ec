"""Model archives: what Record learns from a model.tar.gz in one streamed pass (SageMaker's ModelArtifacts)."""
from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from typing import IO, Any, cast

from chalicelib.adapters import ObjectStore
from chalicelib.blobs import HashingReader, sha256_of
from chalicelib.domain import sha256_hex

METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class ModelFacts:
    sha256: str  # of the archive's bytes
    metrics: dict[str, Any]  # the numeric members of its metrics.json ({} without one)
    content_sha256: str  # of its members (see `read_model`)


def member_name(name: str) -> str:
    """A tar member's name without its leading "./" prefixes (tar writes `./metrics.json` for `tar -C dir .`)."""
    while name.startswith("./"):
        name = name[2:]
    return name


def read_model(store: ObjectStore, key: str) -> ModelFacts:
    """Streams the archive once: its sha256, the metrics.json it holds (if any), and its content sha256.

    The content sha256 is the sha256 of the JSON list (no spaces) of sorted [member name, sha256 of its bytes]
    pairs of the archive's regular files (names without a leading "./"): unlike the archive's own sha256 it does
    not depend on mtimes, owners or compression, which SageMaker's tars do not fix."""
    body = HashingReader(store.stream(key))
    metrics: dict[str, Any] = {}
    files: list[tuple[str, str]] = []
    with tarfile.open(fileobj=cast(IO[bytes], body), mode="r|gz") as archive:
        for member in archive:
            handle = archive.extractfile(member) if member.isfile() else None
            if handle is None:
                continue
            name = member_name(member.name)
            if name == METRICS_FILE:
                raw = handle.read()
                member_sha256 = sha256_hex(raw)
                metrics = numeric_metrics(raw)
            else:
                member_sha256 = sha256_of(handle)[0]
            files.append((name, member_sha256))
    body.drain()
    content = sha256_hex(json.dumps(sorted(files), separators=(",", ":")).encode())
    return ModelFacts(body.hexdigest(), metrics, content)


def numeric_metrics(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
