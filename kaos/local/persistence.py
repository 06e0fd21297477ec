"""Keeps the embedded stack's data across restarts and crashes: DynamoDB items, S3 objects, CloudWatch log events
and Step Functions execution records.

moto holds everything in memory. This module writes what the product stored to ``<state_dir>/data`` and
loads it back into a freshly started emulator (after the template's resources exist, before the API
serves)::

    data/format.json                          {"format": 2}
    data/journal.log                          records since the snapshots, one a line: "<crc32 hex> <json>"
    data/dynamodb/<table>.jsonl               a header {"kaos_snapshot": {"journal_seq", "key", "crc32"}}, then one
                                              low-level item per line, as Scan returns it, its key's
                                              attributes first (item_line)
    data/s3/<bucket>/index.json               {"journal_seq": n, "objects": {key: {sha256, size, etag, ...}}}
    data/s3/<bucket>/objects/<sha[:2]>/<sha>  object bodies, by content (identical bodies stored once)
    data/logs/<hash of group>/index.json      {"group": name, "streams": {name: {file, signature}}}
    data/logs/<hash of group>/<hash>.jsonl    one {"timestamp", "message"} event per line
    data/stepfunctions/executions.jsonl       a header, then one record (name, input, status, dates, output)
                                              per execution
    data/resources.json                       {"journal_seq": n, "resources": {kind: {name: description}}}:
                                              what the API makes at run time besides items and objects (a
                                              workspace's IAM role, its Batch job definition)

Durable before acknowledged. An API write answers 2xx only after what it changed is on disk: the local
gateway calls :meth:`Persistence.flush` between the app's answer and sending it, and a presigned PUT straight
to the emulator's S3 (uploads never go through the API) is flushed before S3's 200 leaves. A flush is
incremental: :class:`ChangeTracker`, in front of the emulator's WSGI app, records *what* each write request
touched — the DynamoDB keys (from the request body: PutItem, UpdateItem, DeleteItem, BatchWriteItem,
TransactWriteItems), the S3 keys (from the path; DeleteObjects from its body), the Step Functions execution
(StartExecution, StopExecution), the IAM role and Batch job definition (a workspace's, made by the API) —
and the flush reads the current state of exactly those (items, roles and job definitions from moto's
backends in this process, a GetObject per changed key, a DescribeExecution) and appends it to
``journal.log`` as one write and one fdatasync: the item (or its deletion), the object's entry after its
body is fsynced under ``objects/``, the execution record, the resource's description. A write the tracker
cannot attribute to keys (an unknown action, an unsigned request) makes the next flush record whole tables or
buckets instead, so nothing is missed, only slower. What Lambdas and jobs write (acknowledged to no user) is
flushed by the next API write or by the periodic thread within a few seconds.

Concurrent flushes are one: a flush takes every change recorded so far, and a caller whose changes were
taken by a flush that finished returns without a second one (group commit). A flush never stores half of a
transaction (or of an UpdateItem's actions): the tracker knows which DynamoDB writes are in flight and their
keys; when none of them touched a key the flush read while it read, the read was clean; otherwise it reads
again while holding the emulator's DynamoDB write lock (kaos.local.patches applies every write under it, so
nothing is half applied then), together with the keys of the writes in flight. S3 objects are read after the
items, so an item never names an object that is older on disk than the item.

Snapshots (compaction): every few seconds a thread flushes what internal writes (Lambdas, jobs) changed and
exports new log events; when the journal passes ``KAOS_LOCAL_JOURNAL_BYTES`` (and on the first tick after a
start that replayed journal records) the whole state is written as snapshot files that carry the journal
sequence number they cover, and the journal is emptied. A clean stop flushes and exports the logs, no more.
Restoring reads each snapshot and replays the journal records newer than it (a record holds the state after
the write, so replaying is idempotent); a torn or corrupt journal tail (a crash during an append that was
therefore never acknowledged) ends the replay there.

Restoring is not a replay through the emulator's API: items, object records and log streams go straight
into moto's backends in this process. An item line whose key needs no escaping is read by its key alone (the
line's start) and stays text until something uses the item (:class:`StoredTable`); a snapshot writes an item
nothing has used as the line it was read from. An object's body stays in its file under ``objects/`` until
the object is read (:class:`StoredBody`), so the start and the stack's memory do not grow with the bytes stored.

Every file is written to a temporary name, fsynced, renamed, and its directory fsynced, so a crash (or power
loss) leaves each file as it was or complete. Only the latest version of each S3 key is kept (restored
objects get new version ids). Log events are not journaled: they are exported every few seconds and on a
clean stop (a crash loses at most the last seconds of a job's log, and the job itself is marked FAILED).
Step Functions executions are kept as records only (describe/list, and their names stay taken, so a cache
hit's idempotent StartExecution still finds the job's execution instead of starting a second one); moto
cannot resume a running one, so it comes back ABORTED, the jobs that were in flight are marked FAILED
(:func:`fail_interrupted_jobs`) and ``kaos train resume`` runs them again under a new execution name.
SageMaker training job records are not kept (the product reads a job's outcome from its own table, its logs
from CloudWatch).
"""
from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _json_string  # json.dumps' own (ensure_ascii) string encoder
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote
from xml.sax.saxutils import unescape

from kaos.local.patches_dynamodb import StoredText

LOG = logging.getLogger(__name__)

FORMAT = 2
READABLE_FORMATS = (1, 2)  # 1: whole-table snapshots, no journal
EXPORT_INTERVAL_SECONDS = float(os.environ.get("KAOS_LOCAL_EXPORT_SECONDS", "5"))
JOURNAL_LIMIT_BYTES = int(os.environ.get("KAOS_LOCAL_JOURNAL_BYTES", str(8 << 20)))
TRANSFER_THREADS = 8
INTERRUPTED_REASON = (
    "the embedded stack stopped while this job was running; `kaos train resume {job}` runs it again"
)
IN_FLIGHT = ("SUBMITTED", "TRAINING")
INTERRUPTED_EXECUTION = ("KaosStackStopped", "the embedded stack stopped while this execution was running")
_READ_ACTIONS = ("Get", "Describe", "List", "Scan", "Query", "Filter", "BatchGet", "Head", "Test")
_SCOPE = re.compile(r"Credential=[^/&,\s]+/\d{8}/[^/&,\s]+/([^/&,\s]+)/aws4_request")
_HEADER = "kaos_snapshot"  # never a low-level item: attribute values are {"S": ...}-shaped
# DynamoDB actions that change no item (the template's tables are re-created on every start).
_DDB_NO_ITEMS = {"CreateTable", "UpdateTable", "UpdateTimeToLive", "TagResource", "UntagResource",
                 "UpdateContinuousBackups", "UpdateContributorInsights", "CreateBackup", "DeleteBackup"}
# S3 sub-resources whose writes change no object body or its listing (not persisted).
_S3_NO_OBJECT = ("tagging", "acl", "retention", "legal-hold", "uploads", "select", "restore")
_MAX_BUFFERED_BODY = 4 << 20
# What RegisterJobDefinition takes back from DescribeJobDefinitions.
_JOB_DEFINITION_FIELDS = ("type", "parameters", "schedulingPriority", "containerProperties", "nodeProperties",
                          "retryStrategy", "propagateTags", "timeout", "tags", "platformCapabilities",
                          "eksProperties", "ecsProperties")
_CHECKSUMS = ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1", "ChecksumSHA256")
# The object headers an entry keeps besides its type and metadata (restored by StateStore._import_s3).
_HEADERS = ("content_encoding", "cache_control", "content_disposition")


# --- files -------------------------------------------------------------------------------------------
def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """Creates ``path`` and its missing parents, each new directory entry made durable."""
    missing: list[Path] = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        fsync_dir(directory.parent)


def atomic_write(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Writes through ``write(handle)`` to a temporary file beside ``path``, fsyncs it, renames it over and
    fsyncs the directory (the rename itself survives a power loss)."""
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, lambda h: json.dump(value, h, sort_keys=True))


def write_lines(path: Path, values: Iterable[Any]) -> None:
    write_text_lines(path, (json.dumps(value, separators=(",", ":")) for value in values))


def write_text_lines(path: Path, lines: Iterable[str]) -> None:
    """Lines already JSON, one per line (a snapshot's items, see item_line)."""
    def write(handle: Any) -> None:
        for line in lines:
            handle.write(line + "\n")

    atomic_write(path, write)


def lines_crc32(lines: Iterable[str]) -> int:
    """The CRC-32 of the lines as write_text_lines writes them (each with its newline)."""
    crc = 0
    for line in lines:
        crc = zlib.crc32(line.encode() + b"\n", crc)
    return crc


def read_lines(path: Path) -> Iterator[Any]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else default


def _name_hash(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:24]


def _code(exc: Exception) -> str:
    return str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", ""))


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _key_json(attributes: dict[str, Any], names: Iterable[str] | None = None) -> str:
    """A DynamoDB key (or the key of an item, given the key's attribute names) as a canonical string: the compact
    JSON of the key, names sorted. Written out for string-valued attributes (every key is S, N or B, binary values
    base64), which json.dumps took ~10 us a key for, 0.3 s of a restart on 30,000 items."""
    key = attributes if names is None else {name: attributes[name] for name in names}
    parts = []
    for name in sorted(key):
        ((kind, value),) = key[name].items()
        if not isinstance(value, str):
            return json.dumps(key, sort_keys=True, separators=(",", ":"))
        parts.append(f"{_json_string(name)}:{{{_json_string(kind)}:{_json_string(value)}}}")
    return "{" + ",".join(parts) + "}"


def item_line(item: dict[str, Any], names: Iterable[str]) -> str:
    """An item (binary values base64) as a snapshot's line: compact JSON whose key attributes come first, names
    sorted, spelled as _key_json spells the key, so a reader finds the key without parsing the line (key_prefix)."""
    names = list(names)
    key = _key_json(item, names)
    rest = {name: value for name, value in item.items() if name not in names}
    return key[:-1] + "," + json.dumps(rest, separators=(",", ":"))[1:] if rest else key


@functools.cache
def key_prefix(names: tuple[str, ...]) -> re.Pattern[str]:
    """What item_line writes first when each key value is a plain string (printable ASCII without quote or
    backslash: the JSON of such a string is the string in quotes, nothing escaped), one group pair (type, value)
    per key attribute, names sorted. The match plus "}" is the key's _key_json. Values that need escaping are not
    matched (their line is parsed)."""
    attributes = ",".join(re.escape(_json_string(name)) + r':\{"(S|N|B)":"([ !#-\[\]-~]*)"\}'
                          for name in sorted(names))
    return re.compile(r"\{" + attributes + r"(?=[,}])")


class StoredTable(MutableMapping[str, dict[str, Any]]):
    """A table's items as the state files hold them, by key JSON (_key_json). An item read from a snapshot line
    whose key key_prefix finds stays that line (a StoredText) until it is asked for: a start on 100,000 items
    parsed every one of them (~0.45 s) only to hand most to the emulator untouched (insert_restored)."""

    def __init__(self, items: dict[str, dict[str, Any]] | None = None) -> None:
        self.entries: dict[str, dict[str, Any] | StoredText] = dict(items or {})

    def __getitem__(self, key: str) -> dict[str, Any]:
        entry = self.entries[key]
        return json.loads(entry.text) if isinstance(entry, StoredText) else entry

    def __setitem__(self, key: str, item: dict[str, Any]) -> None:
        self.entries[key] = item

    def __delitem__(self, key: str) -> None:
        del self.entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def read(self, lines: Iterable[str], names: list[str], lazily: bool = True) -> None:
        """Adds a snapshot's item lines (key attribute names `names`). Only `lazily` are lines left unparsed: a
        snapshot whose CRC does not match is parsed whole, so a damaged line fails the start here (as every line
        did before lines were left unparsed) rather than the first request that reads its item."""
        prefix, ordered = key_prefix(tuple(names)), sorted(names)
        for line in lines:
            line = line.rstrip("\n")
            match = prefix.match(line) if lazily else None
            if match is None:
                item = json.loads(line)
                self.entries[_key_json(item, names)] = item
                continue
            values = match.groups()
            key = {name: (values[2 * i], values[2 * i + 1]) for i, name in enumerate(ordered)}
            self.entries[match.group(0) + "}"] = StoredText(key, line)


def _table_name(name: str) -> str:
    return name.split(":table/", 1)[1].split("/", 1)[0] if name.startswith("arn:") else name


def _base64(value: Any) -> str:
    """JSON for the bytes of binary attributes in moto's items (as DynamoDB's JSON spells them)."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _map_binary(item: dict[str, Any], convert: Callable[[Any], Any]) -> dict[str, Any]:
    """A low-level item with each binary value (B, BS, also inside M and L) passed through `convert`."""
    def value(attribute: dict[str, Any]) -> dict[str, Any]:
        ((kind, inner),) = attribute.items()
        if kind == "B":
            return {kind: convert(inner)}
        if kind == "BS":
            return {kind: [convert(v) for v in inner]}
        if kind == "M":
            return {kind: {k: value(v) for k, v in inner.items()}}
        if kind == "L":
            return {kind: [value(v) for v in inner]}
        return attribute

    return {name: value(attribute) for name, attribute in item.items()}


def _json_safe(item: dict[str, Any]) -> dict[str, Any]:
    """A low-level item as boto returns it, with binary values base64-encoded as DynamoDB's JSON has them."""
    return _map_binary(item, lambda v: base64.b64encode(v).decode() if isinstance(v, bytes) else v)


def _snapshot_header(record: Any) -> dict[str, Any] | None:
    if isinstance(record, dict) and set(record) == {_HEADER} and isinstance(record[_HEADER], dict):
        return dict(record[_HEADER])
    return None


# --- the journal -------------------------------------------------------------------------------------
class Journal:
    """``data/journal.log``: append-only, one record a line, ``<crc32 of the JSON, 8 hex> <JSON>\\n``.

    An append is one write and one fdatasync; a failed append is cut off again, so the file is always a
    sequence of whole records followed by at most one torn line (a crash during an unacknowledged append)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._fd: int | None = None
        self._broken: str | None = None

    @staticmethod
    def encode(record: dict[str, Any]) -> bytes:
        payload = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
        return b"%08x %s\n" % (zlib.crc32(payload), payload)

    def read(self) -> tuple[list[dict[str, Any]], int]:
        """The records of the valid prefix and its length in bytes (the replay stops at the first bad line)."""
        if not self.path.exists():
            return [], 0
        data = self.path.read_bytes()
        records: list[dict[str, Any]] = []
        position = 0
        while True:
            end = data.find(b"\n", position)
            if end < 0:
                break
            crc, _, payload = data[position:end].partition(b" ")
            try:
                if int(crc, 16) != zlib.crc32(payload):
                    break
                record = json.loads(payload)
            except ValueError:
                break
            records.append(record)
            position = end + 1
        if position < len(data):
            LOG.warning("%s: ignoring %d bytes after the last whole record (a write the crash interrupted)",
                        self.path, len(data) - position)
        return records, position

    def open(self, valid_length: int) -> None:
        """Opens for appending, cutting off whatever follows the valid prefix first."""
        make_dirs(self.path.parent)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        if os.fstat(fd).st_size > valid_length:
            os.ftruncate(fd, valid_length)
            os.fsync(fd)
        if created:
            fsync_dir(self.path.parent)
        self._fd, self.size, self._broken = fd, valid_length, None

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def append(self, records: list[dict[str, Any]]) -> None:
        if self._fd is None:
            raise RuntimeError("the journal is not open")
        if self._broken:
            raise OSError(f"the journal cannot be written ({self._broken}); restart the stack")
        data = b"".join(self.encode(r) for r in records)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            (getattr(os, "fdatasync", None) or os.fsync)(self._fd)
        except OSError as exc:
            try:  # a partial record must not stay in front of the next one
                os.ftruncate(self._fd, self.size)
                os.fsync(self._fd)
            except OSError as cut:
                self._broken = str(cut)
            raise exc
        self.size += len(data)

    def reset(self) -> None:
        """Empties the journal (its records are all covered by snapshots written before)."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        self.size = 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# --- change tracking ---------------------------------------------------------------------------------
@dataclass
class Changes:
    """What write requests touched since the last flush took it."""

    ddb_keys: set[tuple[str, str, str]] = field(default_factory=set)  # (table, "key" | "item", json)
    ddb_all: bool = False
    s3_keys: dict[str, set[str]] = field(default_factory=dict)
    s3_buckets: set[str] = field(default_factory=set)  # list and compare whole buckets
    s3_all: bool = False
    executions: set[str] = field(default_factory=set)  # execution ARNs
    executions_all: bool = False
    resources: set[tuple[str, str]] = field(default_factory=set)  # (kind, name): see RESOURCE_KINDS
    logs: bool = False

    def merge(self, other: Changes) -> None:
        self.ddb_keys |= other.ddb_keys
        self.ddb_all |= other.ddb_all
        for bucket, keys in other.s3_keys.items():
            self.s3_keys.setdefault(bucket, set()).update(keys)
        self.s3_buckets |= other.s3_buckets
        self.s3_all |= other.s3_all
        self.executions |= other.executions
        self.executions_all |= other.executions_all
        self.resources |= other.resources
        self.logs |= other.logs

    @property
    def durable_part(self) -> bool:
        """Whether anything besides log events changed (log events are exported periodically)."""
        return bool(self.ddb_keys or self.ddb_all or self.s3_keys or self.s3_buckets or self.s3_all
                    or self.executions or self.executions_all or self.resources)

    @classmethod
    def everything(cls) -> Changes:
        return cls(ddb_all=True, s3_all=True, executions_all=True, logs=True)


@dataclass
class Request:
    """A write request as the tracker classified it."""

    changes: Changes
    early: bool = False      # a DynamoDB write: known to be in flight from its arrival to its answer
    presigned: bool = False  # a client's direct upload: acknowledged by the emulator's answer


def _body(environ: dict[str, Any]) -> bytes | None:
    """The request body, read and put back for the app; None when it is too large or of unknown length (then
    the app reads it as it came)."""
    if not environ.get("CONTENT_LENGTH"):
        return None if environ.get("HTTP_TRANSFER_ENCODING") else b""
    try:
        length = int(environ["CONTENT_LENGTH"])
    except ValueError:
        return None
    if length > _MAX_BUFFERED_BODY or length < 0:
        return None
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def _dynamodb_keys(action: str, body: dict[str, Any]) -> set[tuple[str, str, str]]:
    keys: set[tuple[str, str, str]] = set()
    if action == "PutItem":
        keys.add((_table_name(body["TableName"]), "item", _key_json(body["Item"])))
    elif action in ("UpdateItem", "DeleteItem"):
        keys.add((_table_name(body["TableName"]), "key", _key_json(body["Key"])))
    elif action == "BatchWriteItem":
        for table, requests in body["RequestItems"].items():
            for request in requests:
                if "PutRequest" in request:
                    keys.add((_table_name(table), "item", _key_json(request["PutRequest"]["Item"])))
                else:
                    keys.add((_table_name(table), "key", _key_json(request["DeleteRequest"]["Key"])))
    elif action == "TransactWriteItems":
        for entry in body["TransactItems"]:
            if "Put" in entry:
                keys.add((_table_name(entry["Put"]["TableName"]), "item", _key_json(entry["Put"]["Item"])))
            for kind in ("Update", "Delete"):
                if kind in entry:
                    keys.add((_table_name(entry[kind]["TableName"]), "key", _key_json(entry[kind]["Key"])))
    else:
        raise KeyError(action)
    return keys


def _path_style(host: str) -> bool:
    """Whether moto reads the bucket from the path for this Host (it does for localhost and IP addresses)."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return (not name or name.startswith("localhost") or "." not in name or name.startswith("[")
            or bool(re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", name)))


def _s3_changes(environ: dict[str, Any], method: str) -> Changes:
    if not _path_style(str(environ.get("HTTP_HOST", ""))):
        return Changes(s3_all=True)  # virtual-hosted bucket: not worth parsing, rare offline
    raw = str(environ.get("RAW_URI") or environ.get("REQUEST_URI") or "")
    path = unquote(raw.split("?", 1)[0]) if raw else str(environ.get("PATH_INFO", ""))
    bucket, _, key = path.lstrip("/").partition("/")
    query = parse_qs(str(environ.get("QUERY_STRING", "")), keep_blank_values=True)
    if not bucket:
        return Changes()
    if not key:
        if method == "POST" and "delete" in query:  # DeleteObjects: the keys are in the body
            body = _body(environ)
            if body is not None:
                names = re.findall(rb"<Key>(.*?)</Key>", body, re.DOTALL)
                return Changes(s3_keys={bucket: {unescape(n.decode()) for n in names}})
            return Changes(s3_buckets={bucket})
        if method in ("POST", "DELETE"):  # a browser-form upload, a bucket deletion
            return Changes(s3_buckets={bucket})
        return Changes()  # bucket configuration: the template's, applied on every start
    if any(name in query for name in _S3_NO_OBJECT) or ("uploadId" in query and method != "POST"):
        return Changes()  # tags, ACLs, multipart parts (the object appears on CompleteMultipartUpload)
    return Changes(s3_keys={bucket: {key}})


def classify(environ: dict[str, Any]) -> Request | None:
    """What a request to the emulator may change, or None for reads and services that are not persisted."""
    method = str(environ.get("REQUEST_METHOD", "GET"))
    target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
    if target:
        prefix, _, action = target.rpartition(".")
        if action.startswith(_READ_ACTIONS):
            return None
        if prefix.startswith("DynamoDB"):
            if action in _DDB_NO_ITEMS:
                return None
            body = _body(environ)
            try:
                keys = _dynamodb_keys(action, json.loads(body or b""))
            except (KeyError, TypeError, ValueError, AttributeError):
                return Request(Changes(ddb_all=True), early=True)  # not attributable: whole tables next flush
            return Request(Changes(ddb_keys=keys), early=True) if keys else None
        if prefix.startswith("AWSStepFunctions"):
            body = _body(environ)
            try:
                request = json.loads(body or b"")
                if action in ("StartExecution", "StartSyncExecution") and request.get("name"):
                    machine = str(request["stateMachineArn"])
                    return Request(Changes(executions={
                        f"{machine.replace(':stateMachine:', ':execution:')}:{request['name']}"}))
                if action == "StopExecution":
                    return Request(Changes(executions={str(request["executionArn"])}))
            except (KeyError, TypeError, ValueError, AttributeError):
                pass
            return Request(Changes(executions_all=True))
        if prefix.startswith("Logs"):
            return Request(Changes(logs=True))
    elif method in ("GET", "HEAD", "OPTIONS"):
        return None
    query = str(environ.get("QUERY_STRING", ""))
    scope = _SCOPE.search(str(environ.get("HTTP_AUTHORIZATION", ""))) or _SCOPE.search(unquote(query))
    presigned = "X-Amz-Signature=" in query or ("Signature=" in query and "AWSAccessKeyId=" in query)
    service = scope.group(1) if scope else ("s3" if presigned else None)
    if service is None:
        return Request(Changes.everything())  # unsigned or unrecognised: assume the worst
    if target:
        # A JSON-protocol service not parsed above: only the persisted ones matter.
        return {"dynamodb": Request(Changes(ddb_all=True)), "logs": Request(Changes(logs=True)),
                "states": Request(Changes(executions_all=True))}.get(service)
    if service == "s3":
        changes = _s3_changes(environ, method)
        return Request(changes, presigned=presigned) if changes.durable_part else None
    # Resources made at run time (a workspace's role and job definition); the template's are made on every start.
    if service == "iam":
        form = parse_qs((_body(environ) or b"").decode("utf-8", "replace")) if method == "POST" else {}
        form = form or parse_qs(query)
        action, role = (form.get("Action") or [""])[0], (form.get("RoleName") or [""])[0]
        if role and not action.startswith(_READ_ACTIONS):
            return Request(Changes(resources={("iam_role", role)}))
    if service == "batch" and str(environ.get("PATH_INFO", "")).rstrip("/") in (
            "/v1/registerjobdefinition", "/v1/deregisterjobdefinition"):
        try:
            request = json.loads(_body(environ) or b"")
            name = str(request.get("jobDefinitionName") or request["jobDefinition"])
        except (KeyError, TypeError, ValueError, AttributeError):
            return None  # refused by Batch too
        # A definition is named by ARN (arn:...:job-definition/NAME:REV), NAME:REV or NAME.
        return Request(Changes(resources={("batch_job_definition", name.rsplit("/", 1)[-1].split(":", 1)[0])}))
    return None


class ChangeTracker:
    """Records what write requests to the emulator touched (see the module docstring) when they complete, and
    which DynamoDB writes are in flight (arrived, not answered yet) with their keys."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changes = Changes()
        self.generation = 0  # counts recordings; a flush that took generation g covers all before it
        self.on_presigned_write: Callable[[int], object] | None = None
        self.unattributed = 0
        # DynamoDB writes in flight (arrived, not answered), numbered by arrival; their keys (None: any key).
        self._writes = 0
        self._in_flight: dict[int, frozenset[tuple[str, str, str]] | None] = {}
        self._recent: deque[tuple[int, frozenset[tuple[str, str, str]] | None]] = deque(maxlen=4096)

    def wrap(self, app: Callable[..., Any]) -> Callable[..., Any]:
        def tracked(environ: dict[str, Any], start_response: Any) -> Any:
            try:
                request = classify(environ)
            except Exception:
                LOG.exception("could not classify a request to the emulator; exporting everything")
                request = Request(Changes.everything())
            if request is None:
                return app(environ, start_response)
            if request.changes.ddb_all or request.changes.s3_all or request.changes.s3_buckets:
                self._unattributed(environ)
            number = self._arrive(request.changes) if request.early else 0
            statuses: list[str] = []

            def capture(status: str, headers: Any, exc_info: Any = None) -> Any:
                statuses.append(status)
                return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

            try:
                result = app(environ, capture)
            finally:
                if number:
                    self._leave(number)
            code = int(statuses[-1].split(" ", 1)[0]) if statuses else 0
            if 400 <= code < 500:
                return result  # refused: nothing changed
            generation = self.record(request.changes)
            hook = self.on_presigned_write
            if request.presigned and 200 <= code < 300 and hook is not None:
                try:
                    hook(generation)
                except Exception as exc:
                    LOG.exception("an upload could not be made durable")
                    if hasattr(result, "close"):
                        result.close()
                    message = f"<Error><Code>ServiceUnavailable</Code><Message>the upload was not stored " \
                              f"durably: {exc}</Message></Error>".encode()
                    start_response("503 Service Unavailable", [("Content-Type", "application/xml"),
                                                               ("Content-Length", str(len(message)))],
                                   sys.exc_info())
                    return [message]
            return result

        return tracked

    def _arrive(self, changes: Changes) -> int:
        keys = None if changes.ddb_all else frozenset(changes.ddb_keys)
        with self._lock:
            self._writes += 1
            self._in_flight[self._writes] = keys
            self._recent.append((self._writes, keys))
            return self._writes

    def _leave(self, number: int) -> None:
        with self._lock:
            self._in_flight.pop(number, None)

    def in_flight(self) -> list[frozenset[tuple[str, str, str]] | None]:
        """The keys of the DynamoDB writes in flight now (None: a write of unknown keys)."""
        with self._lock:
            return list(self._in_flight.values())

    def writes_window(self) -> tuple[int, list[frozenset[tuple[str, str, str]] | None]]:
        """Opens a window: the DynamoDB writes in flight now (see :meth:`writes_since`)."""
        with self._lock:
            return self._writes, list(self._in_flight.values())

    def writes_since(self, window: tuple[int, list[frozenset[tuple[str, str, str]] | None]]
                     ) -> list[frozenset[tuple[str, str, str]] | None] | None:
        """The keys of every DynamoDB write that was in flight at some moment since the window opened; None when
        too many arrived to tell."""
        start, in_flight = window
        with self._lock:
            if self._writes > start and (not self._recent or self._recent[0][0] > start + 1):
                return None
            return in_flight + [keys for number, keys in self._recent if number > start]

    def _unattributed(self, environ: dict[str, Any]) -> None:
        with self._lock:
            self.unattributed += 1
            if self.unattributed > 20:
                return
        LOG.info("a write to the emulator not attributed to keys (whole tables or buckets are compared at the "
                 "next flush): %s %s %s", environ.get("REQUEST_METHOD"), environ.get("RAW_URI") or
                 environ.get("PATH_INFO"), environ.get("HTTP_X_AMZ_TARGET", ""))

    def observe(self, environ: dict[str, Any]) -> None:
        """Records the request as if it had completed (for callers without a WSGI app to wrap)."""
        request = classify(environ)
        if request is not None:
            self.record(request.changes)

    def record(self, changes: Changes) -> int:
        with self._lock:
            self._changes.merge(changes)
            self.generation += 1
            return self.generation

    def mark(self, *services: str) -> None:
        """Marks whole services changed (everything in them is compared at the next flush)."""
        changes = Changes(ddb_all="dynamodb" in services, s3_all="s3" in services,
                          executions_all="dynamodb" in services or "states" in services, logs="logs" in services)
        self.record(changes)

    def take(self) -> tuple[int, Changes]:
        """The changes recorded so far (now cleared) and the generation they cover; log changes stay (they are
        exported periodically, see :meth:`take_logs`)."""
        with self._lock:
            taken, self._changes = self._changes, Changes(logs=self._changes.logs)
            taken.logs = False
            return self.generation, taken

    def take_logs(self) -> bool:
        with self._lock:
            logs, self._changes.logs = self._changes.logs, False
            return logs

    def take_beyond_dynamodb(self) -> Changes:
        """The changes besides DynamoDB's recorded so far (now cleared); DynamoDB keys stay for the next take."""
        with self._lock:
            current = self._changes
            taken = Changes(s3_keys=current.s3_keys, s3_buckets=current.s3_buckets, s3_all=current.s3_all,
                            executions=current.executions, executions_all=current.executions_all,
                            resources=current.resources)
            current.s3_keys, current.s3_buckets, current.s3_all = {}, set(), False
            current.executions, current.executions_all, current.resources = set(), False, set()
            return taken

    def clear(self) -> None:
        with self._lock:
            self._changes = Changes()


# --- reading what was stored -------------------------------------------------------------------------
@dataclass
class Stored:
    """The state as the files hold it: each snapshot with the journal records newer than it replayed."""

    tables: dict[str, StoredTable] = field(default_factory=dict)  # table -> key json -> item
    buckets: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # bucket -> key -> entry
    executions: dict[str, dict[str, Any]] = field(default_factory=dict)  # execution ARN -> record
    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # kind -> name -> description
    seq: int = 0
    journal_records: int = 0
    journal_length: int = 0
    format: int | None = None
    unverified: bool = False  # a table snapshot without a CRC of its lines (written before they had one), or not
    # matching it: its lines were all parsed, and the next snapshot writes them as a start can leave them unparsed


def load_stored(data_dir: Path) -> Stored:
    """Reads ``data_dir`` without an emulator (restore uses it; tests read what a crash would leave)."""
    stored = Stored()
    if (data_dir / "format.json").exists():
        stored.format = read_json(data_dir / "format.json", {}).get("format")
        if stored.format not in READABLE_FORMATS:
            raise RuntimeError(f"{data_dir} holds state format {stored.format}; this kaos reads formats "
                               f"{', '.join(map(str, READABLE_FORMATS))}")
    records, stored.journal_length = Journal(data_dir / "journal.log").read()
    stored.journal_records = len(records)
    seq = max((int(r["seq"]) for r in records), default=0)

    # DynamoDB: table snapshots, then the newer item records (a table record replaces the whole table).
    covered: dict[str, int] = {}
    key_names: dict[str, list[str]] = {}
    snapshot_lines: dict[str, list[str]] = {}  # each item line parsed only if its key is not plain (StoredTable)
    verified: set[str] = set()  # the snapshots whose lines match their header's CRC: only those are left unparsed
    for path in sorted((data_dir / "dynamodb").glob("*.jsonl")):
        content = path.read_bytes()
        first, _, rest = content.partition(b"\n")
        header = _snapshot_header(json.loads(first)) if first.strip() else None
        body = rest if header else content
        if header and header.get("crc32") == zlib.crc32(body):
            verified.add(path.stem)
        else:
            stored.unverified = True
        covered[path.stem] = int(header["journal_seq"]) if header else 0
        if header and header.get("key"):
            key_names[path.stem] = list(header["key"])
        snapshot_lines[path.stem] = [line for line in body.decode("utf-8").split("\n") if line.strip()]
        seq = max(seq, covered[path.stem])
    replay: dict[str, tuple[bool, dict[str, dict[str, Any] | None]]] = {}
    for record in records:
        if record["t"] not in ("ddb", "ddb_table") or int(record["seq"]) <= covered.get(record["table"], 0):
            continue
        table = str(record["table"])
        keep_snapshot, overrides = replay.setdefault(table, (True, {}))
        if record["t"] == "ddb_table":
            key_names[table] = list(record["key"])
            replay[table] = (False, {_key_json(item, record["key"]): item for item in record["items"]})
        else:
            key_names.setdefault(table, sorted(record["key"]))
            overrides[_key_json(record["key"])] = record["item"]
    for table in sorted(set(snapshot_lines) | set(replay)):
        keep_snapshot, overrides = replay.get(table, (True, {}))
        items = StoredTable()
        if keep_snapshot:
            names = key_names.get(table)
            if names:
                items.read(snapshot_lines.get(table, []), names, lazily=table in verified)
            else:  # format 1 wrote no key names: every line is an item of its own
                for position, line in enumerate(snapshot_lines.get(table, [])):
                    items[f"#{position}"] = json.loads(line)
        for key, override in overrides.items():
            if override is None:
                items.pop(key, None)
            else:
                items[key] = override
        stored.tables[table] = items

    # S3: bucket indexes, then the newer object records.
    bucket_covered: dict[str, int] = {}
    for index_path in sorted((data_dir / "s3").glob("*/index.json")):
        index = read_json(index_path, {})
        if set(index) == {"journal_seq", "objects"} and isinstance(index["journal_seq"], int):
            bucket_covered[index_path.parent.name] = index["journal_seq"]
            index = index["objects"]
        stored.buckets[index_path.parent.name] = dict(index)
        seq = max(seq, bucket_covered.get(index_path.parent.name, 0))
    for record in records:
        if record["t"] == "s3" and int(record["seq"]) > bucket_covered.get(record["bucket"], 0):
            objects = stored.buckets.setdefault(record["bucket"], {})
            if record["entry"] is None:
                objects.pop(record["key"], None)
            else:
                objects[record["key"]] = record["entry"]

    # Step Functions execution records.
    path = data_dir / "stepfunctions" / "executions.jsonl"
    execution_lines = list(read_lines(path)) if path.exists() else []
    header = _snapshot_header(execution_lines[0]) if execution_lines else None
    executions_covered = int(header["journal_seq"]) if header else 0
    seq = max(seq, executions_covered)
    stored.executions = {r["executionArn"]: r for r in (execution_lines[1:] if header else execution_lines)}
    for record in records:
        if record["t"] == "execution" and int(record["seq"]) > executions_covered:
            stored.executions[record["record"]["executionArn"]] = record["record"]

    # Resources made at run time.
    resources = read_json(data_dir / "resources.json", {"journal_seq": 0, "resources": {}})
    seq = max(seq, int(resources["journal_seq"]))
    stored.resources = {kind: dict(named) for kind, named in resources["resources"].items()}
    for record in records:
        if record["t"] == "resource" and int(record["seq"]) > int(resources["journal_seq"]):
            named = stored.resources.setdefault(record["kind"], {})
            if record["state"] is None:
                named.pop(record["name"], None)
            else:
                named[record["name"]] = record["state"]
    stored.seq = seq
    return stored


# --- export / import ---------------------------------------------------------------------------------
@dataclass
class Report:
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, value: int) -> None:
        self.counts[name] = self.counts.get(name, 0) + value


class StoredBody:
    """A restored S3 object's body as moto reads it (seek, then read): the content-addressed file under data/s3,
    opened for each read, so no descriptor stays open per object. The file outlives the object's record: bodies
    are removed only when no stored entry names them (:meth:`StateStore.collect_garbage`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._position = 0

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self.path.stat().st_size}[whence]
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def read(self, size: int = -1) -> bytes:
        with self.path.open("rb") as handle:
            handle.seek(self._position)
            data = handle.read(size)
        self._position += len(data)
        return data

    def close(self) -> None:
        """Nothing is open between reads."""


def _gone(known: dict[str, Any] | None) -> bool | None:
    """An object absent from S3: None (its stored entry is removed) if one is stored, else False (nothing to do)."""
    return None if known is not None else False


class _KeyBody:
    """A moto object's body read in chunks, each under the object's lock (moto's own reads seek, then read, under
    it), so a body is never copied whole into memory and concurrent reads of the object keep their positions."""

    def __init__(self, fake: Any) -> None:
        self.fake = fake
        self._position = 0

    def read(self, size: int) -> bytes:
        with self.fake.lock:
            self.fake._value_buffer.seek(self._position)
            data: bytes = self.fake._value_buffer.read(size)
        self._position += len(data)
        return data


class StateStore:
    """Writes the emulator's persisted services to ``data_dir`` (journal records and snapshots) and imports
    them back. Not thread-safe: :class:`Persistence` serializes the calls that write."""

    def __init__(self, data_dir: Path, client: Callable[[str], Any], region: str, account: str) -> None:
        self.data_dir = data_dir
        self.region, self.account = region, account
        self.journal = Journal(data_dir / "journal.log")
        self.seq = 0
        # What the files hold now (snapshots + journal): S3 entries and execution records, to tell changes.
        self.buckets: dict[str, dict[str, dict[str, Any]]] = {}
        self.executions: dict[str, dict[str, Any]] = {}
        self.resources: dict[str, dict[str, dict[str, Any]]] = {}
        self._key_names: dict[str, list[str]] = {}
        self._clients: dict[str, Any] = {}
        self._client_factory = client
        self._client_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def client(self, service: str) -> Any:
        with self._client_lock:
            if service not in self._clients:
                self._clients[service] = self._client_factory(service)
            return self._clients[service]

    def has_data(self) -> bool:
        return (self.data_dir / "format.json").exists()

    def _map(self, function: Callable[[Any], Any], values: list[Any]) -> list[Any]:
        if len(values) <= 1:
            return [function(v) for v in values]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=TRANSFER_THREADS, thread_name_prefix="kaos-persist")
        return list(self._pool.map(function, values))

    def close(self) -> None:
        self.journal.close()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    # -- opening
    def open(self, stored: Stored) -> None:
        """Continues the files ``stored`` was read from: the journal after its valid prefix."""
        self.seq = stored.seq
        self.buckets = {bucket: dict(objects) for bucket, objects in stored.buckets.items()}
        self.executions = dict(stored.executions)
        self.resources = {kind: dict(named) for kind, named in stored.resources.items()}
        self.journal.open(stored.journal_length)
        if stored.format != FORMAT:
            write_json(self.data_dir / "format.json", {"format": FORMAT})

    def key_names(self, table: str) -> list[str]:
        if table not in self._key_names:
            schema = self.client("dynamodb").describe_table(TableName=table)["Table"]["KeySchema"]
            self._key_names[table] = [k["AttributeName"] for k in schema]
        return self._key_names[table]

    # -- journal records: the current state of what changed
    def read_dynamodb(self, changes: Changes, report: Report) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        if changes.ddb_all:
            for table in self._tables():
                items = [json.loads(line) for line in self._scan(table)]
                records.append({"t": "ddb_table", "table": table, "key": self.key_names(table), "items": items})
                report.add("dynamodb_items", len(items))
            return records
        return self.read_items(self.resolve(changes.ddb_keys), report)

    def resolve(self, marks: Iterable[tuple[str, str, str]]) -> dict[str, dict[str, dict[str, Any]]]:
        """Recorded DynamoDB keys (a key, or an item whose key the table's schema tells) by table and key."""
        wanted: dict[str, dict[str, dict[str, Any]]] = {}
        for table, kind, attributes in marks:
            try:
                names = self.key_names(table)
            except Exception as exc:
                if _code(exc) == "ResourceNotFoundException":
                    continue  # the write was refused (no such table)
                raise
            value = json.loads(attributes)
            try:
                key = {name: value[name] for name in names} if kind == "item" else value
            except KeyError:
                continue  # an item without its key was refused
            wanted.setdefault(table, {})[_key_json(key)] = key
        return wanted

    def read_items(self, wanted: dict[str, dict[str, dict[str, Any]]], report: Report) -> list[dict[str, Any]]:
        ddb = self.client("dynamodb")
        records: list[dict[str, Any]] = []
        for table, keys in wanted.items():
            found = self._items_in_process(table, keys)
            if found is None:
                found = {}
                listed = list(keys.values())
                for start in range(0, len(listed), 100):
                    pending: dict[str, Any] = {table: {"Keys": listed[start:start + 100], "ConsistentRead": True}}
                    while pending:
                        response = ddb.batch_get_item(RequestItems=pending)
                        for item in response["Responses"].get(table, []):
                            found[_key_json(item, self.key_names(table))] = _json_safe(item)
                        pending = response.get("UnprocessedKeys") or {}
            for key_json, key in keys.items():
                records.append({"t": "ddb", "table": table, "key": key, "item": found.get(key_json)})
            report.add("dynamodb_items", len(keys))
        return records

    def _items_in_process(self, table: str, keys: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        """The items straight from the emulator's backend in this process (a GetItem over HTTP costs ~100x more);
        None when it is not reachable."""
        try:
            from moto.dynamodb.models import dynamodb_backends

            backend = dynamodb_backends[self.account][self.region]
            moto_table = backend.get_table(table)
            found = {}
            for key_json, key in keys.items():
                hash_key, range_key = backend.get_keys_value(moto_table, key)
                # .get, not moto's get_item: its items are a defaultdict, and looking up an absent partition
                # would insert one (a change under a concurrent transaction's deepcopy of the table).
                item = moto_table.items.get(hash_key)
                if item is not None and range_key is not None:
                    item = item.get(range_key)
                if item is not None:  # a copy: the backend's values may change after this
                    attributes = item.to_json()["Attributes"]  # type: ignore[attr-defined]  # an Item here, not a dict
                    found[key_json] = json.loads(json.dumps(attributes, default=_base64))
            return found
        except Exception:
            LOG.debug("reading %s in process failed; reading over HTTP", table, exc_info=True)
            return None

    def _tables(self) -> list[str]:
        ddb = self.client("dynamodb")
        return [t for page in ddb.get_paginator("list_tables").paginate() for t in page["TableNames"]]

    def _scan(self, table: str) -> list[str]:
        """Every item of the table as its snapshot line (item_line): from moto's backend in this process (Scan over
        HTTP took seconds for a few thousand items under load, while the caller holds the write lock), else over
        HTTP. Lines are copies: the backend's values may change after the caller's lock."""
        try:
            from moto.dynamodb.models import dynamodb_backends

            from kaos.local.patches_dynamodb import stored_text, unsorted_items

            moto_table = dynamodb_backends[self.account][self.region].get_table(table)
            names = [name for name in (moto_table.hash_key_attr, moto_table.range_key_attr) if name]
            # Unsorted (moto's sort was a third of a snapshot of 100,000 items); a restored item not used since
            # is the line it was read from.
            return [stored_text(row) or item_line(_json_safe(row.to_json()["Attributes"]), names)
                    for row in unsorted_items(moto_table)]
        except Exception:
            LOG.debug("scanning %s in process failed; scanning over HTTP", table, exc_info=True)
        names = self.key_names(table)
        pages = self.client("dynamodb").get_paginator("scan").paginate(TableName=table, ConsistentRead=True)
        return [item_line(_json_safe(item), names) for page in pages for item in page["Items"]]

    def read_s3(self, changes: Changes, report: Report) -> list[dict[str, Any]]:
        s3 = self.client("s3")
        wanted: dict[str, set[str]] = {bucket: set(keys) for bucket, keys in changes.s3_keys.items()}
        whole = set(changes.s3_buckets)
        if changes.s3_all:
            whole |= {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        for bucket in whole:
            known = self.buckets.get(bucket, {})
            try:
                listed = self._listing(bucket)
            except Exception as exc:
                if _code(exc) != "NoSuchBucket":
                    raise
                listed = {}
            # Listed with another ETag, or gone: each is read again (unchanged ones are not).
            wanted.setdefault(bucket, set()).update(
                {key for key, etag in listed.items() if key not in known or known[key]["etag"] != etag}
                | (set(known) - set(listed)))
        jobs = [(bucket, key) for bucket, keys in wanted.items() for key in sorted(keys)]
        records = []
        for bucket, key, entry in self._map(lambda job: self._object(*job), jobs):
            if entry is False:
                continue  # unchanged
            records.append({"t": "s3", "bucket": bucket, "key": key, "entry": entry})
            if entry is not None:
                report.add("s3_bytes_stored", int(entry["size"]))
        report.add("s3_objects", len(records))
        return records

    def _listing(self, bucket: str) -> dict[str, str]:
        listed: dict[str, str] = {}
        for page in self.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                listed[obj["Key"]] = obj["ETag"]
        return listed

    def _object(self, bucket: str, key: str) -> tuple[str, str, dict[str, Any] | bool | None]:
        """The key's entry after its body is stored durably; None if it is gone, False if the files have it."""
        known = self.buckets.get(bucket, {}).get(key)
        root = self.data_dir / "s3" / bucket
        try:  # in process (over HTTP each changed object was read back whole: ~15 ms of the stack's CPU apiece)
            fake = self._key_in_process(bucket, key)
        except Exception:
            LOG.debug("reading s3://%s/%s in process failed", bucket, key, exc_info=True)
            return self._object_over_http(bucket, key, known, root)
        if fake is None:
            return bucket, key, _gone(known)
        etag = fake.etag
        if self._stored(root, known, etag):
            return bucket, key, False
        digest, size = self._store_body(root, _KeyBody(fake))
        metadata = fake.metadata
        entry: dict[str, Any] = {
            "sha256": digest, "size": size, "etag": etag, "content_type": metadata.get("content-type"),
            "metadata": {name.removeprefix("x-amz-meta-"): value for name, value in metadata.items()
                         if name.startswith("x-amz-meta-")}}
        for name in _HEADERS:
            if header := metadata.get(name.replace("_", "-")):
                entry[name] = header
        # GetObject returns the checksum only with its algorithm; a composite one is not kept (see below).
        if fake.checksum_algorithm and fake.checksum_value and fake.checksum_type != "COMPOSITE":
            entry["checksums"] = {f"Checksum{fake.checksum_algorithm.upper()}": fake.checksum_value}
        return bucket, key, entry

    def _key_in_process(self, bucket: str, key: str) -> Any:
        """moto's current object under the key (None if absent, deleted or its bucket is gone)."""
        from moto.s3.exceptions import MissingBucket
        from moto.s3.models import FakeKey, s3_backends

        try:
            fake = s3_backends[self.account]["aws"].get_object(bucket, key)
        except MissingBucket:
            return None
        if fake is not None and not isinstance(fake, FakeKey):
            raise TypeError(f"moto's get_object gave a {type(fake).__name__}")
        return fake

    def _object_over_http(self, bucket: str, key: str, known: dict[str, Any] | None,
                          root: Path) -> tuple[str, str, dict[str, Any] | bool | None]:
        try:
            response = self.client("s3").get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        except Exception as exc:
            if _code(exc) in ("NoSuchKey", "404", "NoSuchBucket"):
                return bucket, key, _gone(known)
            raise
        if self._stored(root, known, response["ETag"]):
            response["Body"].close()
            return bucket, key, False
        digest, size = self._store_body(root, response["Body"])
        entry: dict[str, Any] = {"sha256": digest, "size": size, "etag": response["ETag"],
                                 "content_type": response.get("ContentType"),
                                 "metadata": response.get("Metadata") or {}}
        for name, header in zip(_HEADERS, ("ContentEncoding", "CacheControl", "ContentDisposition"), strict=True):
            if response.get(header):
                entry[name] = response[header]
        # The checksum S3 stored with the bytes (the product reads it back as proof of content); a multipart
        # object's composite one ("...-N") cannot be given to a single PutObject and is not kept.
        checksums = {name: response[name] for name in _CHECKSUMS if response.get(name) and "-" not in response[name]}
        if checksums:
            entry["checksums"] = checksums
        return bucket, key, entry

    def _store_body(self, root: Path, body: Any) -> tuple[str, int]:
        objects = root / "objects"
        make_dirs(objects)
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=objects, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in iter(lambda: body.read(1 << 20), b""):
                    digest.update(chunk)
                    size += len(chunk)
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            blob = self._blob(root, digest.hexdigest())
            if blob.exists():
                os.unlink(tmp)  # the same bytes are stored (and were fsynced) already
            else:
                make_dirs(blob.parent)
                os.replace(tmp, blob)
                fsync_dir(blob.parent)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest.hexdigest(), size

    def _stored(self, root: Path, known: dict[str, Any] | None, etag: str) -> bool:
        """Whether the stored entry already has this version of the object, body file included."""
        return known is not None and known["etag"] == etag and self._blob(root, known["sha256"]).exists()

    @staticmethod
    def _blob(root: Path, digest: str) -> Path:
        return root / "objects" / digest[:2] / digest

    def read_executions(self, changes: Changes, report: Report) -> list[dict[str, Any]]:
        """Execution records that are new or changed status (a closed execution never changes again)."""
        sfn = self.client("stepfunctions")
        arns: dict[str, str | None] = dict.fromkeys(changes.executions)
        if changes.executions_all:
            for arn, status in self._listed_executions():
                known = self.executions.get(arn)
                if known is None or known["status"] != status:
                    arns[arn] = status
        records = []
        for arn in arns:
            try:
                described = sfn.describe_execution(executionArn=arn)
            except Exception as exc:
                if _code(exc) == "ExecutionDoesNotExist":
                    continue
                raise
            record = {k: described.get(k) for k in ("executionArn", "stateMachineArn", "name", "input",
                                                    "status", "output", "error", "cause")}
            for key in ("startDate", "stopDate"):
                record[key] = described[key].timestamp() if described.get(key) else None
            if record != self.executions.get(arn):
                records.append({"t": "execution", "record": record})
        report.add("executions", len(records))
        return records

    def _listed_executions(self) -> list[tuple[str, str]]:
        """(ARN, status) of every execution, as ListExecutions lists them: from moto's backend in this process, since
        over HTTP every state machine's executions cost a request per 100 at each flush (or tick) that follows a job
        step, in proportion to every execution ever run; over HTTP if that fails."""
        try:
            return self._executions_in_process()
        except Exception:
            LOG.debug("listing executions in process failed; listing over HTTP", exc_info=True)
        sfn = self.client("stepfunctions")
        return [(listed["executionArn"], listed["status"])
                for page in sfn.get_paginator("list_state_machines").paginate() for machine in page["stateMachines"]
                for executions in sfn.get_paginator("list_executions").paginate(
                    stateMachineArn=machine["stateMachineArn"])
                for listed in executions["executions"]]

    def _executions_in_process(self) -> list[tuple[str, str]]:
        from moto.stepfunctions.responses import get_backend

        listed = []
        for machine in list(get_backend(self.account, self.region).state_machines):
            for execution in list(machine.executions):
                try:
                    listed.append((str(execution.execution_arn), str(execution.status)))
                except AttributeError:  # the executing backend's, before its status is set: the next flush
                    continue
        return listed

    def read_resources(self, changes: Changes, report: Report) -> list[dict[str, Any]]:
        records = []
        for kind, name in sorted(changes.resources):
            state = {"iam_role": self._role, "batch_job_definition": self._job_definition}[kind](name)
            if state != self.resources.get(kind, {}).get(name):
                records.append({"t": "resource", "kind": kind, "name": name, "state": state})
        report.add("resources", len(records))
        return records

    def _job_definition(self, name: str) -> dict[str, Any] | None:
        """The latest active revision (jobs name the definition, so the latest is what runs), as registered."""
        try:  # in process, as DescribeJobDefinitions answers (over HTTP, each call costs tens of ms)
            active = self._job_definitions_in_process(name)
        except Exception:
            LOG.debug("reading job definition %s in process failed", name, exc_info=True)
            active = self.client("batch").describe_job_definitions(jobDefinitionName=name,
                                                                   status="ACTIVE")["jobDefinitions"]
        if not active:
            return None
        latest = max(active, key=lambda d: int(d.get("revision", 0)))
        return {key: latest[key] for key in _JOB_DEFINITION_FIELDS if latest.get(key) not in (None, {}, [])}

    def _role(self, name: str) -> dict[str, Any] | None:
        try:  # in process (over HTTP: four calls, each evaluated by the emulator's IAM, tens of ms)
            return self._role_in_process(name)
        except Exception:
            LOG.debug("reading role %s in process failed", name, exc_info=True)
        iam = self.client("iam")
        try:
            role = iam.get_role(RoleName=name)["Role"]
        except Exception as exc:
            if _code(exc) == "NoSuchEntity":
                return None
            raise
        policies = {}
        for page in iam.get_paginator("list_role_policies").paginate(RoleName=name):
            for policy in page["PolicyNames"]:
                policies[policy] = iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"]
        pages = iam.get_paginator("list_attached_role_policies").paginate(RoleName=name)
        return {"path": role.get("Path", "/"), "trust": role.get("AssumeRolePolicyDocument"),
                "boundary": (role.get("PermissionsBoundary") or {}).get("PermissionsBoundaryArn"),
                "max_session": role.get("MaxSessionDuration"), "description": role.get("Description"),
                "tags": role.get("Tags") or [], "policies": policies,
                "attached": [p["PolicyArn"] for page in pages for p in page["AttachedPolicies"]]}

    def _job_definitions_in_process(self, name: str) -> list[dict[str, Any]]:
        from moto.batch.models import batch_backends

        stored = list(batch_backends[self.account][self.region]._job_definitions.values())
        return [json.loads(json.dumps(d.describe())) for d in stored if d.name == name and d.status == "ACTIVE"]

    def _role_in_process(self, name: str) -> dict[str, Any] | None:
        from moto.iam.models import iam_backends

        def document(value: Any) -> Any:
            try:
                return json.loads(unquote(value)) if isinstance(value, str) else value
            except ValueError:
                return value

        roles = list(iam_backends[self.account]["aws"].roles.values())  # not get_role: it iterates the live dict
        role = next((r for r in roles if r.name == name), None)
        if role is None:
            return None
        tags = role.tags
        if isinstance(tags, dict):
            tags = [{"Key": k, "Value": v.get("Value", v) if isinstance(v, dict) else v} for k, v in tags.items()]
        described: dict[str, Any] = json.loads(json.dumps({
            "path": role.path, "trust": document(role.assume_role_policy_document),
            "boundary": role.permissions_boundary_arn,
            "max_session": int(role.max_session_duration) if role.max_session_duration else None,
            "description": role.description or None, "tags": list(tags or []),
            "policies": {policy: document(value) for policy, value in dict(role.policies).items()},
            "attached": list(dict(role.managed_policies))}))
        return described

    def snapshot_resources(self, report: Report) -> None:
        write_json(self.data_dir / "resources.json", {"journal_seq": self.seq, "resources": self.resources})
        report.add("resources", sum(len(named) for named in self.resources.values()))

    def commit(self, records: list[dict[str, Any]]) -> None:
        """Appends the records to the journal durably; then the store's view of the files follows them."""
        if not records:
            return
        for record in records:
            self.seq += 1
            record["seq"] = self.seq
        try:
            self.journal.append(records)
        except BaseException:
            self.seq -= len(records)
            raise
        for record in records:
            if record["t"] == "s3":
                objects = self.buckets.setdefault(record["bucket"], {})
                if record["entry"] is None:
                    objects.pop(record["key"], None)
                else:
                    objects[record["key"]] = record["entry"]
            elif record["t"] == "execution":
                self.executions[record["record"]["executionArn"]] = record["record"]
            elif record["t"] == "resource":
                named = self.resources.setdefault(record["kind"], {})
                if record["state"] is None:
                    named.pop(record["name"], None)
                else:
                    named[record["name"]] = record["state"]

    # -- snapshots
    def scan_dynamodb(self) -> dict[str, list[str]]:
        """Every table's item lines as of now (the caller holds the DynamoDB write lock: no write half applied)."""
        return {table: self._scan(table) for table in self._tables()}

    def snapshot_dynamodb(self, tables: dict[str, list[str]], report: Report) -> None:
        """Writes the scanned tables as snapshots covering the journal so far."""
        for table, lines in tables.items():
            header = json.dumps({_HEADER: {"journal_seq": self.seq, "key": self.key_names(table),
                                           "crc32": lines_crc32(lines)}}, separators=(",", ":"))
            write_text_lines(self.data_dir / "dynamodb" / f"{table}.jsonl", [header, *lines])
            report.add("dynamodb_items", len(lines))

    def snapshot_s3(self, report: Report) -> None:
        """Every bucket's index as of now: listed objects whose ETag the files have keep their entry; others
        (changed without a request the tracker attributed, so rare) are downloaded."""
        for bucket in [b["Name"] for b in self.client("s3").list_buckets().get("Buckets", [])]:
            root = self.data_dir / "s3" / bucket
            known = self.buckets.get(bucket, {})
            listed = self._listing(bucket)
            index = {key: known[key] for key, etag in listed.items()
                     if key in known and known[key]["etag"] == etag and self._blob(root, known[key]["sha256"]).exists()}
            fetch = [(bucket, key) for key in listed if key not in index]
            for _, key, entry in self._map(lambda job: self._object(*job), fetch):
                if isinstance(entry, dict):
                    index[key] = entry
                    report.add("s3_bytes_stored", int(entry["size"]))
            write_json(root / "index.json", {"journal_seq": self.seq, "objects": index})
            self.buckets[bucket] = index
            report.add("s3_objects", len(index))

    def snapshot_executions(self, report: Report) -> None:
        self.commit(self.read_executions(Changes(executions_all=True), Report()))
        records = sorted(self.executions.values(), key=lambda r: (r["startDate"] or 0, r["executionArn"]))
        write_lines(self.data_dir / "stepfunctions" / "executions.jsonl",
                    [{_HEADER: {"journal_seq": self.seq}}, *records])
        report.add("executions", len(records))

    def collect_garbage(self) -> int:
        """Removes bodies no stored entry names (overwritten or deleted keys); the journal must be empty."""
        removed = 0
        for bucket, objects in self.buckets.items():
            root = self.data_dir / "s3" / bucket / "objects"
            if not root.is_dir():
                continue
            named = {entry["sha256"] for entry in objects.values()}
            for blob in root.glob("*/*"):
                if blob.name not in named and not blob.name.startswith(".tmp-"):
                    blob.unlink(missing_ok=True)
                    removed += 1
        return removed

    # -- logs (exported periodically, not journaled)
    def export_logs(self, report: Report) -> None:
        for group, streams in self._log_streams():
            self._export_group(group, streams, report)

    def _log_streams(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """Every log group with its streams as DescribeLogStreams describes them: from moto's backend in this
        process, since over HTTP that was a request per 50 streams of every group at each tick after a job logged,
        in proportion to every stream ever written; over HTTP if that fails."""
        try:
            return self._log_streams_in_process()
        except Exception:
            LOG.debug("listing log streams in process failed; listing over HTTP", exc_info=True)
        logs = self.client("logs")
        return [(group["logGroupName"], [stream for streams in logs.get_paginator("describe_log_streams").paginate(
                    logGroupName=group["logGroupName"]) for stream in streams["logStreams"]])
                for page in logs.get_paginator("describe_log_groups").paginate() for group in page["logGroups"]]

    def _log_streams_in_process(self) -> list[tuple[str, list[dict[str, Any]]]]:
        from moto.logs.models import logs_backends

        return [(name, [stream.to_describe_dict() for stream in list(group.streams.values())])
                for name, group in list(logs_backends[self.account][self.region].groups.items())]

    def _export_group(self, group: str, described: list[dict[str, Any]], report: Report) -> None:
        root = self.data_dir / "logs" / _name_hash(group)
        old = read_json(root / "index.json", {"group": group, "streams": {}})["streams"]
        streams: dict[str, dict[str, Any]] = {}
        for stream in described:
            name = stream["logStreamName"]
            signature = [stream.get("storedBytes", 0), stream.get("firstEventTimestamp"),
                         stream.get("lastEventTimestamp")]
            entry: dict[str, Any] = {"file": f"{_name_hash(name)}.jsonl", "signature": signature}
            if old.get(name) != entry or not (root / entry["file"]).exists():
                events = self._stream_events(group, name)
                write_lines(root / entry["file"], events)
                report.add("log_events_written", len(events))
            streams[name] = entry
        if streams != old or not (root / "index.json").exists():
            write_json(root / "index.json", {"group": group, "streams": streams})
        for name in set(old) - set(streams):
            (root / old[name]["file"]).unlink(missing_ok=True)
        report.add("log_streams", len(streams))

    def _stream_events(self, group: str, stream: str) -> list[dict[str, Any]]:
        logs = self.client("logs")
        events: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"logGroupName": group, "logStreamName": stream, "startFromHead": True}
            if token:
                kwargs["nextToken"] = token
            response = logs.get_log_events(**kwargs)
            batch = response.get("events", [])
            events.extend({"timestamp": e["timestamp"], "message": e["message"]} for e in batch)
            if not batch or response.get("nextForwardToken") in (None, token):
                return events
            token = response["nextForwardToken"]

    # -- import
    def import_all(self, stored: Stored) -> Report:
        started = time.monotonic()
        report = Report()
        if stored.format is None and not stored.journal_records:
            return report
        self._import_resources(stored, report)
        self._import_s3(stored, report)
        self._import_logs(report)
        self._import_executions(stored, report)
        self._import_dynamodb(stored, report)
        if stored.journal_records:
            report.add("journal_records", stored.journal_records)
        report.seconds = time.monotonic() - started
        return report

    def _import_resources(self, stored: Stored, report: Report) -> None:
        """IAM roles first (a job definition names its role)."""
        iam, batch = self.client("iam"), self.client("batch")

        def document(value: Any) -> str:
            return value if isinstance(value, str) else json.dumps(value)

        for name, role in sorted(stored.resources.get("iam_role", {}).items()):
            kwargs: dict[str, Any] = {"RoleName": name, "Path": role["path"],
                                      "AssumeRolePolicyDocument": document(role["trust"])}
            for key, value in (("PermissionsBoundary", role.get("boundary")), ("Tags", role.get("tags")),
                               ("MaxSessionDuration", role.get("max_session")),
                               ("Description", role.get("description"))):
                if value:
                    kwargs[key] = value
            try:
                iam.create_role(**kwargs)
            except Exception as exc:
                if _code(exc) != "EntityAlreadyExists":
                    raise
                iam.update_assume_role_policy(RoleName=name, PolicyDocument=kwargs["AssumeRolePolicyDocument"])
            for policy, value in role["policies"].items():
                iam.put_role_policy(RoleName=name, PolicyName=policy, PolicyDocument=document(value))
            for arn in role["attached"]:
                iam.attach_role_policy(RoleName=name, PolicyArn=arn)
            report.add("iam_roles", 1)
        for name, definition in sorted(stored.resources.get("batch_job_definition", {}).items()):
            if not batch.describe_job_definitions(jobDefinitionName=name, status="ACTIVE")["jobDefinitions"]:
                batch.register_job_definition(jobDefinitionName=name, **definition)
            report.add("batch_job_definitions", 1)

    def _import_executions(self, stored: Stored, report: Report) -> None:
        """Closed execution records straight into moto's state machines (StartExecution would run them)."""
        from moto.stepfunctions.models import Execution
        from moto.stepfunctions.responses import get_backend

        backend = get_backend(self.account, self.region)

        def moment(value: float | None) -> datetime | None:
            # Aware, as the executing backend's own executions (ListExecutions sorts them all by start date).
            return None if value is None else datetime.fromtimestamp(value, UTC)

        for record in sorted(stored.executions.values(), key=lambda r: (r["startDate"] or 0, r["executionArn"])):
            try:
                machine = backend.describe_state_machine(record["stateMachineArn"])
            except Exception:
                LOG.warning("not restoring execution %s: its state machine is gone", record["executionArn"])
                continue
            execution = Execution(region_name=self.region, account_id=self.account, state_machine_name=machine.name,
                                  execution_name=record["name"], state_machine_arn=machine.arn,
                                  execution_input=record["input"])
            execution.start_date = moment(record["startDate"]) or execution.start_date
            if record["status"] == "RUNNING":
                execution.status, execution.stop_date = "ABORTED", datetime.now(UTC)
                execution.error, execution.cause = INTERRUPTED_EXECUTION
            else:
                execution.status, execution.stop_date = record["status"], moment(record["stopDate"])
                execution.output, execution.error, execution.cause = record["output"], record["error"], record["cause"]
            machine.executions.append(execution)
            report.add("executions", 1)

    def _import_dynamodb(self, stored: Stored, report: Report) -> None:
        """Items straight into moto's tables in this process (the stored items are the wire's JSON, binary values
        base64), parsed and typed when first used (patches_dynamodb.insert_restored): over HTTP each batch of 25
        cost tens of milliseconds, and moto's PutItem in process ~80 us an item."""
        from moto.dynamodb.models import dynamodb_backends

        from kaos.local.patches_dynamodb import insert_restored

        backend = dynamodb_backends[self.account][self.region]
        existing = set(self._tables())
        for table, items in sorted(stored.tables.items()):
            if table not in existing:
                LOG.warning("not restoring %d items: the template no longer has table %s", len(items), table)
                continue
            insert_restored(backend.get_table(table), items.entries.values())
            report.add("dynamodb_items", len(items))

    def _import_s3(self, stored: Stored, report: Report) -> None:
        """Every object's record into moto's buckets in this process; its body stays in the content-addressed file
        under data/s3 and is read from there when the object is read (:class:`StoredBody`), so neither the start
        nor the memory of the stack grows with the bytes stored."""
        from moto.s3.models import s3_backends

        backend = s3_backends[self.account]["aws"]
        existing = {b["Name"] for b in self.client("s3").list_buckets().get("Buckets", [])}
        for bucket, index in sorted(stored.buckets.items()):
            root = self.data_dir / "s3" / bucket
            if bucket not in existing:
                LOG.warning("not restoring %s: the template no longer has bucket %s", root, bucket)
                continue
            for key, entry in index.items():
                checksums = entry.get("checksums") or {}
                algorithm, checksum = next(iter(checksums.items()), (None, None))
                fake = backend.put_object(bucket, key, b"", etag=str(entry["etag"]).strip('"'),
                                          checksum_value=checksum, disable_notification=True)
                fake.dispose()  # its empty in-memory buffer
                fake._value_buffer = StoredBody(self._blob(root, entry["sha256"]))  # type: ignore[assignment]
                fake.disposed = False
                fake.contentsize = int(entry["size"])
                if algorithm:
                    fake.checksum_algorithm = algorithm.removeprefix("Checksum")
                metadata = {f"x-amz-meta-{name}": value for name, value in (entry.get("metadata") or {}).items()}
                for name, header in (("content_type", "Content-Type"), ("content_encoding", "Content-Encoding"),
                                     ("cache_control", "Cache-Control"),
                                     ("content_disposition", "Content-Disposition")):
                    if entry.get(name):
                        metadata[header] = entry[name]
                fake.set_metadata(metadata)
                report.add("s3_objects", 1)
                report.add("s3_bytes", int(entry["size"]))

    def _import_logs(self, report: Report) -> None:
        # Into moto's log groups in this process: CloudWatch's PutLogEvents (and moto's) rejects events older than
        # 14 days, and a CreateLogStream over HTTP per stream cost more than its events.
        from moto.logs.models import logs_backends

        backend = logs_backends[self.account][self.region]
        for index_path in sorted((self.data_dir / "logs").glob("*/index.json")):
            index = read_json(index_path, {})
            group = index["group"]
            if group not in backend.groups:
                backend.create_log_group(group, {})
            for stream, entry in index["streams"].items():
                if stream not in backend.groups[group].streams:
                    backend.create_log_stream(group, stream)
                events = list(read_lines(index_path.parent / entry["file"]))
                if events:
                    backend.groups[group].put_log_events(stream, events)
                report.add("log_streams", 1)
                report.add("log_events", len(events))

    def size_on_disk(self) -> int:
        return _dir_size(self.data_dir) if self.data_dir.exists() else 0


def in_flight_jobs(stored: Stored) -> list[tuple[str, str]]:
    """The (pk, sk) of the job rows the stored state has in flight, found in the files just read: a Scan of the
    table over HTTP read every row of it (the blob index's too, thousands per bundle), page after page, each page
    sorting the whole table in moto, most of a start's time once a few large bundles were committed."""
    found = []
    for items in stored.tables.values():
        for entry in items.entries.values():
            if isinstance(entry, StoredText):
                # A line whose key has a sort key other than a job's is no job row (most are the blob index's).
                kind, value = entry.key.get("sk", ("S", "JOB#"))
                if kind != "S" or not value.startswith("JOB#"):
                    continue
                entry = json.loads(entry.text)
            job_row = str(entry.get("sk", {}).get("S", "")).startswith("JOB#")
            if job_row and entry.get("status", {}).get("S") in IN_FLIGHT:
                found.append((entry["pk"]["S"], entry["sk"]["S"]))
    return found


def fail_interrupted_jobs(keys: list[tuple[str, str]]) -> list[str]:
    """Marks those of these jobs still running when the stack stopped FAILED: their executions are gone.

    Goes through the product's own versioned model, as the pipeline's status writes do (one update that
    bumps the version and appends to the history)."""
    from pynamodb.exceptions import DoesNotExist

    from chalicelib.tables import JobItem
    from chalicelib.domain import now

    failed: list[str] = []
    for pk, sk in keys:
        try:
            item = JobItem.get(pk, sk, consistent_read=True)
        except DoesNotExist:  # a row of another table
            continue
        if item.status not in IN_FLIGHT:
            continue
        at = now()
        item.update(actions=[
            JobItem.status.set("FAILED"),
            JobItem.updated_at.set(at),
            JobItem.ended_at.set(at),
            JobItem.failure_reason.set(INTERRUPTED_REASON.format(job=item.job_id)),
            JobItem.history.set((item.history or []) + [{"status": "FAILED", "at": at}]),
        ])
        failed.append(item.job_id)
    return failed


def _dynamodb_write_lock() -> Any:
    """The lock kaos.local.patches applies moto's DynamoDB writes under (a flush reads under it, so it never
    sees half a transaction); a no-op lock when the patches are not in use."""
    try:
        from kaos.local import patches
    except Exception:  # pragma: no cover - the emulator is not importable here
        return contextlib.nullcontext()
    return getattr(patches, "_DYNAMODB_LOCK", None) or contextlib.nullcontext()


class Persistence:
    """Restore on start; every acknowledged write flushed before it is acknowledged; a periodic thread for
    internal writes, log events and snapshots; a final snapshot on a clean stop."""

    def __init__(self, state_dir: Path, client: Callable[[str], Any], region: str, account: str,
                 interval: float = EXPORT_INTERVAL_SECONDS, journal_limit: int = JOURNAL_LIMIT_BYTES) -> None:
        self.store = StateStore(state_dir / "data", client, region, account)
        self.tracker = ChangeTracker()
        self.interval = interval
        self.journal_limit = journal_limit
        self._flush_lock = threading.Lock()
        self._logs_lock = threading.Lock()
        self._ddb_lock = _dynamodb_write_lock()
        self._flushed = 0  # the tracker generation the last finished flush took
        self._snapshot_due = True
        self._executions_stale = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tracked = False
        self.last_flush: Report | None = None
        self.flushes = 0
        self.waits: deque[float] = deque(maxlen=100_000)  # how long each flush() call took, waiting included

    def track(self, server: Any) -> bool:
        """Puts the change tracker in front of a werkzeug server's WSGI app; False if there is none to wrap
        (then every flush compares everything)."""
        if server is None or not hasattr(server, "app"):
            return False
        server.app = self.tracker.wrap(server.app)
        self._tracked = True
        return True

    def restore(self) -> Report:
        """Loads the stored state, opens the journal and fails the interrupted jobs. Raises rather than start
        empty: an empty stack would overwrite the stored state with nothing on its first snapshot."""
        stored = load_stored(self.store.data_dir)
        report = self.store.import_all(stored)
        # The emulator now holds what the files hold: what the import (and the template) wrote is not news.
        self.tracker.clear()
        self.store.open(stored)
        # A clean stop leaves snapshots only; otherwise the first tick writes them (and empties the journal), as it
        # does for an older format or a table snapshot without its lines' CRC. A new state (no files) has nothing
        # to compact: `open` wrote its format.
        self._snapshot_due = stored.journal_records > 0 or stored.format not in (FORMAT, None) or stored.unverified
        if report.counts:
            failed = fail_interrupted_jobs(in_flight_jobs(stored))
            report.add("jobs_failed", len(failed))
            self.flush()
            LOG.info("restored %s in %.2f s; interrupted jobs marked failed: %s", report.counts, report.seconds,
                     failed or "none")
        return report

    def flush(self, generation: int | None = None) -> Report | None:
        """Makes every change recorded so far durable (those up to ``generation`` suffice when given). Callers
        wait for one flush at a time; a caller whose changes a finished flush took returns at once."""
        target = self.tracker.generation if generation is None else generation
        started = time.perf_counter()
        try:
            with self._flush_lock:
                if self._flushed >= target and self._tracked:
                    return None
                return self._flush_locked()
        finally:
            self.waits.append(time.perf_counter() - started)

    def _flush_locked(self) -> Report | None:
        if not self.store.journal.is_open:
            raise RuntimeError("the state is not open: restore() first")
        started = time.monotonic()
        report = Report()
        if not self._tracked:
            self.tracker.mark("dynamodb", "s3", "states")
        window = self.tracker.writes_window()
        generation, changes = self.tracker.take()
        ddb = self._read_outside_lock(window, changes, report)
        if ddb is None:
            # A write to one of these keys (or of unknown keys) was in flight meanwhile: what was read may hold
            # half of a transaction (or of an UpdateItem's actions). Under the write lock nothing is half
            # applied; the writes in flight (applied or not) are read too, so no transaction is stored in part.
            with self._ddb_lock:
                more_generation, more = self.tracker.take()
                changes.merge(more)
                generation = more_generation
                for keys in self.tracker.in_flight():
                    if keys is None:
                        changes.ddb_all = True
                    else:
                        changes.ddb_keys |= keys
                try:
                    ddb = self.store.read_dynamodb(changes, report)
                except BaseException:
                    self.tracker.record(changes)
                    raise
        try:
            # After the items: every object an item names was written before it, so is among these.
            changes.merge(self.tracker.take_beyond_dynamodb())
            s3 = self.store.read_s3(changes, report) if changes.s3_keys or changes.s3_buckets or changes.s3_all \
                else []
            executions = self.store.read_executions(changes, report) \
                if changes.executions or changes.executions_all else []
            resources = self.store.read_resources(changes, report) if changes.resources else []
            self.store.commit(resources + s3 + executions + ddb)  # what items name before the items
        except BaseException:
            changes.logs = False
            self.tracker.record(changes)  # taken but not stored: the next flush tries again
            raise
        if changes.ddb_keys or changes.ddb_all:
            self._executions_stale = True  # a job step: its execution may have moved on
        self._flushed = generation
        self.flushes += 1
        report.seconds = time.monotonic() - started
        if report.counts:
            self.last_flush = report
            LOG.debug("flushed in %.4f s: %s", report.seconds, report.counts)
        return report

    def _read_outside_lock(self, window: Any, changes: Changes, report: Report) -> list[dict[str, Any]] | None:
        """The items of the taken keys read without the write lock, or None when that read may be torn."""
        if changes.ddb_all:
            return None
        if not changes.ddb_keys:
            return []
        try:
            wanted = self.store.resolve(changes.ddb_keys)
            attempt = Report()
            records = self.store.read_items(wanted, attempt)
        except Exception:
            LOG.debug("reading without the write lock failed; reading under it", exc_info=True)
            return None
        overlapping = self.tracker.writes_since(window)
        if overlapping is None:
            return None
        for keys in overlapping:
            if keys is None:
                return None
            for table, key_json in ((t, k) for t, by_key in self.store.resolve(keys).items() for k in by_key):
                if key_json in wanted.get(table, {}):
                    return None
        for name, value in attempt.counts.items():
            report.add(name, value)
        return records

    def snapshot(self) -> Report:
        """Writes every service as snapshot files covering the journal, then empties the journal."""
        started = time.monotonic()
        report = Report()
        with self._flush_lock:
            self._flush_locked()
            # Only the scan holds the write lock: writing and fsyncing the files under it stalled every Lambda's
            # DynamoDB write for as long, seconds on a big table (enough to split an upload burst in two batches).
            # Writes after the scan are journaled after the snapshot's sequence number, as any later write.
            with self._ddb_lock:
                tables = self.store.scan_dynamodb()
            self.store.snapshot_dynamodb(tables, report)
            self.store.snapshot_executions(report)
            self.store.snapshot_s3(report)  # after the items: objects are never older than the items
            self.store.snapshot_resources(report)
            self.store.journal.reset()
            report.add("bodies_removed", self.store.collect_garbage())
            self._snapshot_due = False
        self.export_logs(report)
        report.seconds = time.monotonic() - started
        LOG.debug("snapshot in %.3f s: %s", report.seconds, report.counts)
        return report

    def export_logs(self, report: Report | None = None) -> None:
        with self._logs_lock:
            if self.tracker.take_logs() or not self._tracked or report is not None:
                try:
                    self.store.export_logs(report or Report())
                except BaseException:
                    self.tracker.record(Changes(logs=True))
                    raise

    def refresh_executions(self) -> None:
        """Stores the executions that ended since they were stored RUNNING. An execution ends inside the
        emulator's interpreter, after its last task's writes, with no request that would mark it changed."""
        if self._executions_stale or any(r["status"] == "RUNNING" for r in list(self.store.executions.values())):
            self._executions_stale = False
            # Listed and described outside the flush lock (~100 ms over HTTP): acknowledged writes do not wait.
            records = self.store.read_executions(Changes(executions_all=True), Report())
            with self._flush_lock:  # a closed execution never changes: what a flush stored meanwhile stays
                known = self.store.executions
                self.store.commit([r for r in records if r["record"] != known.get(r["record"]["executionArn"]) and (
                    known.get(r["record"]["executionArn"]) or {"status": "RUNNING"})["status"] == "RUNNING"])

    def tick(self) -> None:
        """The periodic work: internal writes flushed (and executions that moved on), new log events exported,
        a snapshot when due."""
        self.refresh_executions()
        self.flush()
        self.export_logs()
        if self._snapshot_due or self.store.journal.size > self.journal_limit:
            self.snapshot()

    def start(self) -> None:
        self.tracker.on_presigned_write = self.flush
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="kaos-persistence", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception:
                LOG.exception("storing the embedded stack's state failed; retrying in %s s", self.interval)

    def stop(self) -> Report | None:
        """Stops the periodic thread and makes the last changes durable: the journal's flush and the log export.
        No snapshot: the journal is as durable, and the next start, which replays it, writes one in the
        background (its first tick), so neither the stop nor the start waits for one."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.tracker.on_presigned_write = None
        if not self.store.journal.is_open:
            return None
        try:
            started = time.monotonic()
            # An execution that ended after the last tick is stored as ended, not left RUNNING (which the next
            # start would fail as interrupted). Reading them must not cost the last writes their flush.
            try:
                self.refresh_executions()
            except Exception:
                LOG.exception("reading the executions' states at the stop failed; each keeps its last stored state")
            report = self.flush() or Report()
            self.export_logs(report)
            report.seconds = time.monotonic() - started
            if self.waits:  # what durability cost the writes of this run, for `kaos local down`'s last line
                waits = sorted(self.waits)
                report.counts.update(flush_calls=len(waits), flushes=self.flushes,
                                     flush_p50_us=int(waits[len(waits) // 2] * 1e6),
                                     flush_p95_us=int(waits[int(len(waits) * 0.95)] * 1e6))
            return report
        finally:
            self.store.close()
