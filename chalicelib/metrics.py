"""Metrics logged over time: extracted from a training's log when its outcome is recorded, stored once per job,
served in pages (GET /workspaces/{workspace}/jobs/{job}/metrics).

A training script logs a metric as many times as it likes, in either of two forms:
* a line matching one of the job's SageMaker metric definitions (kaos.toml `[train] metric_definitions`, a list of
  `{name, regex}` tables, handed to CreateTrainingJob as `AlgorithmSpecification.MetricDefinitions`): the regex's
  first group is the value, as SageMaker reads it; the step is the metric's occurrence count (0, 1, ...);
* a JSON line `{"metric": "loss", "value": 0.3, "step": 5}` (`step` optional: the occurrence count again).

Storage, one S3 object per job beside its log (`ws/<ws>/jobs/<job>/series.json`, columnar so a long series stays
small: `{"format": 1, "metrics": {name: {"steps": [...], "values": [...]}}, "summary": {...}}`), written after the
job's fenced end like the log archive. The summary of each metric (`min`, `max`, `last`, `count`, `last_step`, over
every point logged) also goes into the job row (`metric_series` of the job document), so a runs table of hundreds
of jobs needs no read per job. A series longer than MAX_POINTS is thinned to every 2nd, 4th... point (the last point
is always kept); its summary still covers every point.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from chalicelib.adapters import ObjectStore
from chalicelib.errors import InputInvalid, ValidationFailed
from chalicelib.lifecycle import job_prefix
from chalicelib.repositories.jobs import JobRepository

# SageMaker's limits on MetricDefinitions (CreateTrainingJob): 40 definitions, Name 1-255, Regex 1-500 characters.
MAX_DEFINITIONS = 40
MAX_NAME_CHARS = 255
MAX_REGEX_CHARS = 500
# Points kept per metric; more are thinned (see the module). 20k points of two numbers stay well under 1 MB.
MAX_POINTS = 20_000
# Distinct metric names kept per job: a script printing JSON lines with ever-new names cannot grow the row unbounded.
MAX_METRICS = 100
DEFAULT_PAGE = 1000
MAX_PAGE = 10_000
SERIES_FILE = "series.json"
FORMAT = 1


@dataclass(frozen=True)
class MetricDefinition:
    name: str
    regex: re.Pattern[str]

    def as_sagemaker(self) -> dict[str, str]:
        return {"Name": self.name, "Regex": self.regex.pattern}


def parse_definitions(raw: Any, where: str = "kaos.toml [train] metric_definitions") -> list[MetricDefinition]:
    """The metric definitions of a code snapshot's kaos.toml, each checked as SageMaker would (and the regex to have
    the group holding the value)."""
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_DEFINITIONS:
        raise InputInvalid(f"code: {where} must be a list of at most {MAX_DEFINITIONS} {{name, regex}} tables")
    definitions = []
    for i, entry in enumerate(raw):
        name, regex = (entry.get("name"), entry.get("regex")) if isinstance(entry, dict) else (None, None)
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_CHARS:
            raise InputInvalid(f"code: {where}[{i}].name must be a string of 1 to {MAX_NAME_CHARS} characters")
        if not isinstance(regex, str) or not 1 <= len(regex) <= MAX_REGEX_CHARS:
            raise InputInvalid(f"code: {where}[{i}].regex must be a string of 1 to {MAX_REGEX_CHARS} characters")
        try:
            pattern = re.compile(regex)
        except re.error as exc:
            raise InputInvalid(f"code: {where}[{i}].regex is not a valid regular expression ({exc})") from None
        if pattern.groups < 1:
            raise InputInvalid(f"code: {where}[{i}].regex needs a group capturing the value, e.g. loss=(\\S+)")
        definitions.append(MetricDefinition(name, pattern))
    return definitions


@dataclass
class _Series:
    steps: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    stride: int = 1
    seen: int = 0
    minimum: float = math.inf
    maximum: float = -math.inf
    last: float = math.nan
    last_step: float = 0

    def add(self, step: float, value: float) -> None:
        self.minimum, self.maximum = min(self.minimum, value), max(self.maximum, value)
        self.last, self.last_step = value, step
        if self.seen % self.stride == 0:
            self.steps.append(step)
            self.values.append(value)
            if len(self.steps) > MAX_POINTS:
                self.steps, self.values, self.stride = self.steps[::2], self.values[::2], self.stride * 2
        self.seen += 1

    def columns(self) -> dict[str, list[float]]:
        steps, values = self.steps, self.values
        if not steps or steps[-1] != self.last_step or values[-1] != self.last:  # thinning must not hide the end
            steps, values = [*steps, self.last_step], [*values, self.last]
        return {"steps": steps, "values": values}

    def summary(self) -> dict[str, float]:
        return {"min": self.minimum, "max": self.maximum, "last": self.last, "count": self.seen,
                "last_step": self.last_step}


class Extractor:
    """Reads a log line by line and keeps every metric point it finds (see the module for the two forms)."""

    def __init__(self, definitions: Iterable[MetricDefinition] = ()) -> None:
        self._definitions = tuple(definitions)
        self._series: dict[str, _Series] = {}

    def feed(self, line: str) -> None:
        for definition in self._definitions:
            found = definition.regex.search(line)
            if found is not None:
                self._add(definition.name, None, _number(found.group(1)))
        stripped = line.strip()
        if stripped.startswith("{") and '"metric"' in stripped:
            try:
                point = json.loads(stripped)
            except ValueError:
                return
            if isinstance(point, dict) and isinstance(point.get("metric"), str) and point["metric"]:
                self._add(point["metric"][:MAX_NAME_CHARS], _number(point.get("step")), _number(point.get("value")))

    def _add(self, name: str, step: float | None, value: float | None) -> None:
        if value is None:
            return
        series = self._series.get(name)
        if series is None:
            if len(self._series) >= MAX_METRICS:
                return
            series = self._series[name] = _Series()
        series.add(series.seen if step is None else step, value)

    def document(self) -> dict[str, Any]:
        """The stored form (see the module)."""
        names = sorted(self._series)
        return {"format": FORMAT, "metrics": {n: self._series[n].columns() for n in names}, "summary": self.summary()}

    def summary(self) -> dict[str, dict[str, float]]:
        return {name: self._series[name].summary() for name in sorted(self._series)}


def _number(raw: Any) -> float | None:
    """A finite number (JSON has no NaN or infinity, and a chart cannot place them), else None."""
    if isinstance(raw, bool):
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value):
        return None
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def series_key(workspace: str, job_id: str) -> str:
    return job_prefix(workspace, job_id) + SERIES_FILE


class JobMetrics:
    """GET /workspaces/{workspace}/jobs/{job}/metrics: the summary of every metric and one page of points."""

    def __init__(self, *, store: ObjectStore, repository: JobRepository) -> None:
        self._store = store
        self._repository = repository

    def page(self, workspace: str, job_id: str, metric: str | None, cursor: str | None,
             limit: int | None) -> dict[str, Any]:
        """Points in metric-name order then logging order, `limit` at a time (`next`: where the next page starts,
        null at the end); with `metric`, that metric's points only."""
        size = DEFAULT_PAGE if limit is None else limit
        if not 1 <= size <= MAX_PAGE:
            raise ValidationFailed(f"limit: must be an integer from 1 to {MAX_PAGE}")
        start = _offset(cursor)
        job = self._repository.get(workspace, job_id)
        document = self._document(workspace, job_id)
        columns: dict[str, dict[str, list[float]]] = document.get("metrics", {})
        if metric is not None and metric not in columns:
            known = ", ".join(sorted(columns)) or "none logged"
            raise ValidationFailed(f"metric: job {job_id} logged no metric {metric!r} (metrics: {known})")
        names = [metric] if metric is not None else sorted(columns)
        points: list[dict[str, Any]] = []
        position = 0
        for name in names:
            steps, values = columns[name]["steps"], columns[name]["values"]
            skip = max(0, start - position)
            take = min(len(steps), skip + size - len(points))
            points += [{"metric": name, "step": s, "value": v} for s, v in zip(steps[skip:take], values[skip:take],
                                                                             strict=True)]
            position += len(steps)
        end = start + len(points)
        return {"job": job_id, "status": job.status, "summary": document.get("summary", {}), "points": points,
                "next": str(end) if end < position else None}

    def _document(self, workspace: str, job_id: str) -> dict[str, Any]:
        key = series_key(workspace, job_id)
        if self._store.size(key) is None:  # nothing logged, or the job has not ended yet
            return {}
        document: dict[str, Any] = self._store.get_json(key)
        return document


def _offset(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if not cursor.isdigit() or len(cursor) > 9:
        raise ValidationFailed("next: not a metrics cursor (pass the `next` of the previous page)")
    return int(cursor)
