"""Client-side rules the CLI only displays: what a deploy needs (checked before any file is hashed), whether params
make a grid, id prefixes, waiting for jobs and grids, and reading logs to their end. Everything here talks to the
API through kaos.client and has a timeout; nothing here prints."""
from __future__ import annotations

import re
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from chalicelib.domain import grid_points, is_grid, parse_params, validate_channel
from chalicelib.errors import ValidationFailed
from kaos.bundle import read_data_manifest, scan
from kaos.client import ApiError, Client, load_params
from kaos.settings import ClientConfig

T = TypeVar("T")

TERMINAL = ("COMPLETED", "FAILED", "KILLED")
# The server's defaults (chalicelib.training / chalicelib.batch); the server stays the authority, this only
# turns its late refusal into an early one.
TRAIN_ENTRY_POINTS = ("train.py", "train.sh", "train")
BATCH_ENTRY_POINTS = ("process.py", "main.py", "process.sh")
CODE_CONFIG = "kaos.toml"
FULL_ID = re.compile(r"^(?:[a-z]+-[0-9a-f]{24}|[0-9a-f]{64})$")
# What may be an id prefix: anything else goes to the server as given, which names what is wrong with it.
PREFIX = re.compile(r"^(?:[a-z]+-)?[0-9a-f]*$")
LIST_PAGE = 200
# A job may run 24 h (SageMaker's MaxRuntimeInSeconds default cap in kaos); waiting longer means something is stuck.
WAIT_TIMEOUT_SECONDS = 25 * 3600
# A wait asks again after POLL_SHARE of the time it has waited so far, within [POLL_FIRST, POLL_MAX]: the end of a
# job is seen at most ~15% late (a 4 s local job within 0.6 s; the old 1.5x backoff from 0.5 s saw it up to 2.5 s
# late), and a long job costs one request per POLL_MAX seconds.
POLL_FIRST, POLL_MAX, POLL_SHARE = 0.25, 5.0, 0.15


class Refused(ApiError):
    """A local check refused the input before anything was sent."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "ValidationFailed", message)


# --- deploy inputs, checked before hashing -----------------------------------------------------------------
def check_params(path: Path) -> dict[str, Any]:
    """The params file, read and checked as the server will (names, sizes, grid size) before any folder is hashed."""
    params = load_params(path)
    try:
        parse_params(params)
        if is_grid(params):
            grid_points(params)
    except ValidationFailed as exc:
        raise Refused(f"-h {path}: {exc.message}") from None
    return params


def check_entry_point(code: Path, defaults: tuple[str, ...], label: str, otherwise: str) -> None:
    """A code folder the pipeline could not start: no default entry point (and, for training, no kaos.toml
    naming one). `otherwise` says the other way to name it."""
    config = code / CODE_CONFIG
    if config.is_file() and defaults == TRAIN_ENTRY_POINTS:
        try:
            entry = tomllib.loads(config.read_text()).get("train", {}).get("entry_point")
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise Refused(f"{label}: {config} is not valid TOML ({exc})") from None
        if entry is not None:
            if not isinstance(entry, str) or not (code / entry).is_file():
                raise Refused(f"{label}: {CODE_CONFIG} names entry_point {entry!r}, which is not in {code}")
            return
    if not any((code / name).is_file() for name in defaults):
        raise Refused(f"{label}: {code} has no entry point; add one of {', '.join(defaults)} or {otherwise}")


TRAIN_OTHERWISE = f"name it in {CODE_CONFIG} ([train] entry_point = \"...\")"
BATCH_OTHERWISE = "give --command"


@dataclass
class DeployInputs:
    """What `train deploy` was given, checked: folders to snapshot, snapshots to reuse, remote manifests, params."""

    code: Path | None = None
    folders: dict[str, Path] = field(default_factory=dict)
    snapshots: dict[str, str] = field(default_factory=dict)
    remote: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    params: dict[str, Any] | None = None
    # What the checks listed of each folder (code and data), so the upload does not list it again.
    scanned: dict[Path, list[tuple[str, Path, int]]] = field(default_factory=dict)

    @property
    def grid(self) -> bool:
        return self.params is not None and is_grid(self.params)


def channels(values: list[str], flag: str) -> dict[str, str]:
    """`DIR` is the channel `training`; `NAME=DIR` names it, as SageMaker channels are named."""
    named: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        name, path = (name, path) if sep and not Path(value).exists() else ("training", value)
        try:
            validate_channel(name, f"{flag} {value}")
        except ValidationFailed as exc:
            raise Refused(exc.message) from None
        if name in named:
            raise Refused(f"{flag}: channel {name!r} given twice")
        named[name] = path
    return named


def check_deploy(source: Path | None, data: list[str], manifests: list[str], params: Path | None) -> DeployInputs:
    """Every local check of a deploy, cheapest first, so a mistake costs no hashing and no upload."""
    if data and manifests:
        raise Refused("-d and -m are mutually exclusive: give data as directories (-d) or as remote manifests (-m)")
    inputs = DeployInputs(code=source, params=check_params(params) if params else None)
    for name, value in channels(data, "-d").items():
        if value.startswith("snapshot:"):
            inputs.snapshots[name] = value.removeprefix("snapshot:")
        else:
            inputs.folders[name] = Path(value)
    for name, value in channels(manifests, "-m").items():
        inputs.remote[name] = read_data_manifest(Path(value), f"-m {name}")
    if source is not None:
        inputs.scanned[source] = scan(source, "-s")
        check_entry_point(source, TRAIN_ENTRY_POINTS, "-s", TRAIN_OTHERWISE)
    for name, path in inputs.folders.items():
        inputs.scanned[path] = scan(path, f"-d {name}")
    return inputs


def submitting(client: Client, workspace: str, attempt: Callable[[], T]) -> T:
    """`attempt()`: commits a command's inputs and submits what names them. An unchanged input is named by the id
    this user committed before, without a request, so a resubmit is one round trip; if the workspace no longer has
    such a snapshot (SnapshotNotFound), the ids are forgotten and the attempt runs once more, committing in full."""
    try:
        return attempt()
    except ApiError as exc:
        if exc.code != "SnapshotNotFound" or not client.forget_unconfirmed(workspace):
            raise
    return attempt()


def submit(client: Client, workspace: str, code: str | None, data: dict[str, str] | None,
           params: dict[str, Any] | None, resources: dict[str, Any], parallelism: int,
           framework: str | None = None) -> dict[str, Any]:
    """One job, or a grid when a param is a list; the answer carries `grid: True` for a grid."""
    if params is not None and is_grid(params):
        return {**client.submit_grid(workspace, code, data, params, resources, parallelism, framework), "grid": True}
    return {**client.submit(workspace, code, data, params, resources, framework), "grid": False}


def code_framework(code: Path | None) -> str | None:
    """`framework[:framework_version]` of the code's kaos.toml [train] (the image the job runs in), if it names one."""
    config = code / CODE_CONFIG if code is not None else None
    if config is None or not config.is_file():
        return None
    train = tomllib.loads(config.read_text()).get("train", {})
    name, version = train.get("framework"), train.get("framework_version")
    if name is None:
        return None
    return f"{name}:{version}" if version else str(name)


def environment_ran(client: Client, workspace: str, job_id: str) -> dict[str, Any] | None:
    """What the job ran in, as its record wrote it: the environment node it used that says the most (the image
    node it was registered with says only the image); None before the job has ended."""
    nodes = client.lineage(workspace, f"job:{job_id}", "up", depth=1)["nodes"]
    ran = [node["attrs"] for node in nodes if node["type"] == "environment" and len(node["attrs"]) > 1]
    return max(ran, key=len) if ran else None


def commit_remote(client: Client, workspace: str, entries: list[dict[str, Any]]) -> str:
    """A data snapshot of remote objects (referenced, not uploaded)."""
    committed: dict[str, Any] = client.request("POST", f"/workspaces/{workspace}/snapshots",
                                               {"kind": "data", "files": entries})
    return str(committed["id"])


def failed_before(job: dict[str, Any]) -> bool:
    """An identical job that ended FAILED or KILLED is no cache hit: nothing useful came back."""
    return bool(job.get("cached")) and job.get("status") in ("FAILED", "KILLED")


# --- members -------------------------------------------------------------------------------------------------
LOCAL_PROFILE = "kaos-local-"
_ARN = re.compile(r"^arn:aws[a-z-]*:(?:iam|sts)::\d{12}:(?:user|role|assumed-role|federated-user)/[\w+=,.@/-]+$"
                  r"|^arn:aws[a-z-]*:iam::\d{12}:root$")
_IAM_USER = re.compile(r"^[\w+=,.@-]{1,64}$")


def check_member(config: ClientConfig, user: str) -> None:
    """Offline, the users the embedded stack made (its credentials file's kaos-local-* profiles); on AWS, the form
    of an IAM principal ARN or user name (whether it exists IAM only tells an administrator)."""
    if user.startswith("arn:"):
        if not _ARN.match(user):
            raise Refused(f"user: {user!r} is not an IAM principal ARN (arn:aws:iam::123456789012:user/NAME or "
                          ":role/NAME)")
        return
    if config.profile.startswith(LOCAL_PROFILE) and config.credentials_file:
        from kaos.client import profiles

        local = sorted(p.removeprefix(LOCAL_PROFILE) for p in profiles(config.credentials_file)
                       if p.startswith(LOCAL_PROFILE))
        if user not in local:
            raise Refused(f"user: the embedded stack has no user {user!r}; its users: {', '.join(local)}")
        return
    if not _IAM_USER.match(user):
        raise Refused(f"user: {user!r} is not an IAM user name (1-64 letters, digits and +=,.@_-) nor an ARN")


# --- ids -----------------------------------------------------------------------------------------------------
def jobs_pages(client: Client, workspace: str, cursor: str | None = None,
               limit: int = LIST_PAGE) -> Iterator[tuple[list[dict[str, Any]], str | None]]:
    """Every page of the workspace's jobs, newest first, with the cursor of the page after it."""
    while True:
        page = client.jobs(workspace, limit, cursor)
        cursor = page.get("next")
        yield page["jobs"], cursor
        if not cursor:
            return


def _ids(job: dict[str, Any], kind: str) -> list[str]:
    if kind == "job":
        return [job["id"]]
    if kind == "grid":
        grid = (job.get("sources") or {}).get("grid")
        return [grid] if grid else []
    inputs = job.get("inputs") or {}
    found = [inputs.get("code"), inputs.get("params"), *(inputs.get("data") or {}).values()]
    model = job.get("model") or ""
    if model.startswith("snapshot:"):  # a batch job's output
        found.append(model.removeprefix("snapshot:"))
    return [f for f in found if f]


def resolve(client: Client, workspace: str, value: str, kinds: tuple[str, ...] = ("job",)) -> str:
    """A full id as given; a unique prefix (with or without `train-`/`grid-`/`batch-`) to its full id.

    Prefixes are resolved from the jobs list (jobs, the grids their points belong to, the snapshots they used or
    made), so a snapshot no job used yet must be given in full."""
    if FULL_ID.match(value) or not PREFIX.match(value) or not value:
        return value
    matches: set[str] = set()
    for jobs, _ in jobs_pages(client, workspace):
        for job in jobs:
            for kind in kinds:
                matches.update(i for i in _ids(job, kind)
                               if i.startswith(value) or i.partition("-")[2].startswith(value))
    what = " or ".join(kinds)
    if not matches:
        raise ApiError(404, "NotFound", f"no {what} id in workspace {workspace!r} starts with {value!r}")
    if len(matches) > 1:
        shown = sorted(matches)
        more = f" and {len(shown) - 10} more" if len(shown) > 10 else ""
        raise ApiError(400, "Ambiguous", f"{value!r} matches {len(shown)} {what} ids: {', '.join(shown[:10])}{more}")
    return matches.pop()


def resolve_node(client: Client, workspace: str, node: str) -> str:
    """A provenance node `type:id` (or a bare job id) with its id part resolved from a prefix."""
    kind, sep, ident = node.partition(":")
    if not sep:
        kind, ident = "job", node
    kinds = {"snapshot": ("snapshot",), "job": ("job",), "model": ("job",)}.get(kind)
    return f"{kind}:{resolve(client, workspace, ident, kinds) if kinds else ident}"


def resolve_target(client: Client, workspace: str, target: str) -> str:
    """`data impact`'s target: an s3:// URL as given, a snapshot (`snapshot:` optional) resolved from a prefix."""
    ident = target.removeprefix("snapshot:")
    if target.startswith("s3://") or not PREFIX.match(ident):
        return target
    return f"snapshot:{resolve(client, workspace, ident, ('snapshot',))}"


# --- lists ---------------------------------------------------------------------------------------------------
_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def since_time(value: str, now: datetime | None = None) -> str:
    """`--since`: an ISO date/time, or a duration back from now (30m, 2h, 7d, 1w); as the API's created_at text."""
    relative = _RELATIVE.match(value)
    if relative:
        moment = (now or datetime.now(UTC)) - timedelta(**{_UNITS[relative[2]]: int(relative[1])})
    else:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise Refused(f"--since {value!r}: give an ISO date (2026-12-01, 2026-12-01T10:00) or a duration "
                          "(30m, 2h, 7d, 1w)") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


@dataclass
class JobList:
    jobs: list[dict[str, Any]]
    next: str | None


def list_jobs(client: Client, workspace: str, limit: int, cursor: str | None, every: bool,
              status: str | None = None, since: str | None = None) -> JobList:
    """Up to `limit` jobs (all with `every`) from `cursor` on, newest first, filtered by status and creation time;
    `next` continues exactly after the last job returned."""
    wanted = status.upper() if status else None
    chosen: list[dict[str, Any]] = []
    after = cursor
    while True:
        page = client.jobs(workspace, LIST_PAGE if (wanted or since or every) else limit, after)
        rows: list[dict[str, Any]] = page["jobs"]
        for index, job in enumerate(rows):
            if since and job["created_at"] < since:
                return JobList(chosen, None)  # newest first: everything after is older
            if wanted and job["status"] != wanted:
                continue
            chosen.append(job)
            if not every and len(chosen) == limit:
                if index == len(rows) - 1:
                    return JobList(chosen, page.get("next"))
                # The API's cursor is a page boundary; a page cut short is resumed after this job's position.
                return JobList(chosen, _cursor_after(client, workspace, after, index))
        after = page.get("next")
        if not after:
            return JobList(chosen, None)


def _cursor_after(client: Client, workspace: str, start: str | None, index: int) -> str | None:
    """The cursor right after the job at `index` of the page that began at `start`."""
    page = client.jobs(workspace, index + 1, start)
    return str(page["next"]) if page.get("next") else None


# --- waiting -------------------------------------------------------------------------------------------------
class TimedOut(ApiError):
    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(0, "TimedOut", f"{what} did not end within {seconds:.0f} s")


def _polls(timeout: float, what: str) -> Iterator[None]:
    """Yields until the deadline, sleeping between polls POLL_SHARE of the time waited (POLL_FIRST to POLL_MAX)."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        yield
        now = time.monotonic()
        if now >= deadline:
            raise TimedOut(what, timeout)
        time.sleep(min(max(POLL_FIRST, (now - started) * POLL_SHARE), POLL_MAX, deadline - now))


def wait_job(client: Client, workspace: str, job_id: str, on_change: Callable[[dict[str, Any]], None],
             timeout: float = WAIT_TIMEOUT_SECONDS) -> dict[str, Any]:
    """Polls the job until it is terminal; `on_change` sees it once per status (the first one included)."""
    return _wait_for(lambda: client.job(workspace, job_id), lambda job: job["status"] in TERMINAL, f"job {job_id}",
                     on_change, timeout)


def _wait_for(read: Callable[[], Any], done: Callable[[dict[str, Any]], bool], what: str,
              on_change: Callable[[dict[str, Any]], None], timeout: float) -> dict[str, Any]:
    """Reads until `done`; `on_change` sees each new status."""
    seen = None
    for _ in _polls(timeout, what):
        current: dict[str, Any] = read()
        if current["status"] != seen:
            seen = current["status"]
            on_change(current)
        if done(current):
            return current
    raise AssertionError("unreachable: _polls ends by raising")


def grid_done(grid: dict[str, Any]) -> int:
    return sum(n for status, n in grid["counts"].items() if status in TERMINAL)


def wait_grid(client: Client, workspace: str, grid_id: str, on_change: Callable[[dict[str, Any]], None],
              timeout: float = WAIT_TIMEOUT_SECONDS) -> dict[str, Any]:
    """Polls the grid (one point per request) until every point ended; `on_change` sees each new count."""
    seen: tuple[str, int] | None = None
    for _ in _polls(timeout, f"grid {grid_id}"):
        grid: dict[str, Any] = client.grid(workspace, grid_id, limit=1)
        state = (grid["status"], grid_done(grid))
        if state != seen:
            seen = state
            on_change(grid)
        if grid["status"] in ("COMPLETED", "FAILED", "KILLED") and state[1] == grid["points"]:
            return grid
    raise AssertionError("unreachable: _polls ends by raising")


# --- logs ----------------------------------------------------------------------------------------------------
class LogReader:
    """The events of a job's log, page by page (contract C7: `next` always moves on, `complete` says the job ended
    and everything was returned). Also tolerates the older answer without `complete`, whose `next` may be the token
    sent with the same events again: those are skipped, and the log ends when the job is terminal and a page brings
    nothing new. After iterating, `status` is the job's last status."""

    terminal: tuple[str, ...] = TERMINAL  # statuses after which nothing more is written

    def __init__(self, client: Client, workspace: str, job_id: str, follow: bool,
                 timeout: float = WAIT_TIMEOUT_SECONDS) -> None:
        self.client, self.workspace, self.job_id = client, workspace, job_id
        self.follow, self.timeout = follow, timeout
        self.status = ""

    def page(self, token: str | None) -> dict[str, Any]:
        page: dict[str, Any] = self.client.logs(self.workspace, self.job_id, token)
        return page

    def __iter__(self) -> Iterator[dict[str, Any]]:
        token: str | None = None
        served: dict[str | None, int] = {}  # old shape: events already printed from a token re-served
        for _ in _polls(self.timeout, f"the log of {self.job_id}"):
            while True:
                page = self.page(token)
                self.status = page["status"]
                events: list[dict[str, Any]] = page["events"]
                after = page.get("next")
                fresh = events[served.get(token, 0):] if after == token else events
                served[token] = len(events) if after == token else 0
                yield from fresh
                if page.get("complete"):
                    return
                token = after
                ended = "complete" not in page and self.status in self.terminal and not fresh
                if ended or not fresh:
                    break
            if ended or not self.follow:
                return
        raise AssertionError("unreachable: _polls ends by raising")


def exit_code(status: str) -> int:
    return 0 if status == "COMPLETED" else 1


# --- serving -------------------------------------------------------------------------------------------------
# An endpoint rests in one of these; any other status (Creating, Updating, RollingBack, Deleting) still moves.
ENDPOINT_SETTLED = ("InService", "Failed", "Deleted")
# The deployment state machine bounds its own wait for InService well below this; waiting longer means it is stuck.
ENDPOINT_WAIT_SECONDS = 3600
CONTENT_TYPES = {".json": "application/json", ".csv": "text/csv", ".npy": "application/x-npy"}
_VERSION_REF = re.compile(r"^([^/@]+)/(\d+)$")


def model_reference(client: Client, workspace: str, value: str) -> str:
    """A MODEL argument as the API takes it: GROUP/VERSION and GROUP@ALIAS as given, a job id (`model:` optional)
    from any unique prefix."""
    if "/" in value or "@" in value:
        return value
    job = value.removeprefix("model:")
    if not PREFIX.match(job) or not job.strip("-"):
        raise Refused(f"MODEL {value!r}: give a job id (or a unique prefix), GROUP/VERSION (digits/3) or "
                      "GROUP@ALIAS (digits@champion)")
    return resolve(client, workspace, job)


def group_version(value: str) -> tuple[str, int]:
    """`G/VERSION` (as `kaos model list G` shows it) as (group, version)."""
    matched = _VERSION_REF.match(value)
    if not matched:
        raise Refused(f"{value!r}: give GROUP/VERSION, e.g. digits/3 (`kaos model list` shows the versions)")
    return matched[1], int(matched[2])


def content_type(path: str, given: str | None) -> str:
    """--content-type, else what the file's extension says; stdin and other extensions need --content-type."""
    if given:
        return given
    found = CONTENT_TYPES.get(Path(path).suffix.lower()) if path != "-" else None
    if found is None:
        where = "stdin" if path == "-" else f"{path!r} (extension {Path(path).suffix or 'none'})"
        raise Refused(f"--data {where}: give --content-type ({', '.join(CONTENT_TYPES.values())})")
    return found


def wait_endpoint(client: Client, workspace: str, name: str, on_change: Callable[[dict[str, Any]], None],
                  timeout: float = ENDPOINT_WAIT_SECONDS) -> dict[str, Any]:
    """Polls the endpoint until it rests (InService, Failed or Deleted, its latest deployment ended); `on_change`
    sees each new status."""
    return _wait_for(lambda: client.endpoint(workspace, name), endpoint_rests, f"endpoint {name}", on_change, timeout)


def endpoint_rests(endpoint: dict[str, Any]) -> bool:
    """Settled, and its latest deployment ended (a promotion is recorded as started before the status moves)."""
    deployments = endpoint.get("deployments") or []
    ended = not deployments or bool(deployments[0].get("ended_at"))
    return endpoint["status"] == "Deleted" or (endpoint["status"] in ENDPOINT_SETTLED and ended)


def deployment_failure(endpoint: dict[str, Any]) -> str | None:
    """Why the endpoint's latest deployment did not go live (a failed create, or a promotion rolled back), or None."""
    latest = (endpoint.get("deployments") or [{}])[0]
    if endpoint["status"] == "InService" and not latest.get("failure_reason"):
        return None
    return str(latest.get("failure_reason") or endpoint.get("failure_reason") or f"status {endpoint['status']}")


class EndpointLogReader(LogReader):
    """An endpoint's log (the model server's output): the same pages as a job's; it ends when the endpoint is
    deleted."""

    terminal = ("Deleted",)

    def page(self, token: str | None) -> dict[str, Any]:
        page: dict[str, Any] = self.client.endpoint_logs(self.workspace, self.job_id, token)
        return page
