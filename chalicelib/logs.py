"""Job logs: paging them to the client (`GET .../jobs/{job}/logs`) and archiving them to S3 when a job ends.

A page answers `{"job", "status", "events": [{"timestamp", "message"}], "next", "complete"}`. `next` is an opaque
cursor that always moves past every event already returned, so a client that follows it never sees an event twice;
`complete` is true once the job has ended and every event was returned (a follower stops there).

Two sources, neither ever read whole into the Lambda:
* CloudWatch Logs (the job's streams, while it runs and after): FilterLogEvents pages. Its `nextToken` continues a
  read; a page without one means "everything stored so far", and CloudWatch has no token for "after the last event".
  So the cursor then holds the last event's timestamp and how many events of that millisecond were returned: the next
  read starts at that timestamp (FilterLogEvents' `startTime` is inclusive) and skips those.
* The archived `log.txt` beside the job's outputs (written by `archive` when the job ends, one line per event): read
  for ended jobs that have one, a byte range at a time; the cursor is a byte offset. Archived lines carry no
  timestamp (`timestamp` is null).
"""
from __future__ import annotations

import base64
import binascii
import json
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from chalicelib import limits
from chalicelib.adapters import LogReader, ObjectStore
from chalicelib.errors import ValidationFailed

# CloudWatch answers at most 1 MB per page; the archive is read in the same measure, so a page stays far below
# Lambda's 6 MB response limit whatever `limit` asks.
MAX_PAGE_BYTES = 1024 * 1024
_READ_CHUNK = 256 * 1024
# FilterLogEvents may answer empty pages that carry a token (it searches in time slices): a request follows at most
# this many before answering (with the token as its cursor), so one request never scans an unbounded range.
MAX_EMPTY_PAGES = 10
# FilterLogEvents' largest page.
_MAX_LIMIT = 10_000


@dataclass(frozen=True)
class _Cursor:
    """Where the next page starts. CloudWatch: `token` if CloudWatch gave one, else after the `seen` events of
    millisecond `after` (None: from the start). Archive: `offset`, a byte offset into log.txt."""

    source: str = "cloudwatch"
    token: str | None = None
    after: int | None = None
    seen: int = 0
    offset: int = 0

    @property
    def at_start(self) -> bool:
        return self == _Cursor()

    def encode(self) -> str:
        if self.source == "archive":
            document: dict[str, Any] = {"o": self.offset}
        else:
            document = {"t": self.token, "a": self.after, "n": self.seen}
        return base64.urlsafe_b64encode(json.dumps(document, separators=(",", ":")).encode()).decode()

    @classmethod
    def decode(cls, cursor: str) -> _Cursor:
        invalid = ValidationFailed("next: not a log cursor (pass the `next` of the previous page)")
        try:
            document = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        except (ValueError, binascii.Error):
            raise invalid from None
        if isinstance(document, dict) and set(document) == {"o"} and _natural(document["o"]):
            return cls(source="archive", offset=document["o"])
        if not (isinstance(document, dict) and set(document) == {"t", "a", "n"} and _natural(document["n"])
                and (document["t"] is None or isinstance(document["t"], str))
                and (document["a"] is None or _natural(document["a"]))):
            raise invalid
        return cls(token=document["t"], after=document["a"], seen=document["n"])


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class JobLogs:
    """The logs of one kind of job: `reader` is CloudWatch's group for them, `store` holds the archives."""

    def __init__(self, *, store: ObjectStore, reader: LogReader) -> None:
        self.store = store
        self.reader = reader

    def page(self, *, job_id: str, status: str, ended: bool, stream_prefix: str | None, archive_key: str,
             cursor: str | None, limit: int) -> dict[str, Any]:
        """The page after `cursor` of the job's log (see the module). `ended`: the job's status is terminal, read
        BEFORE the log, so no event written before the end is missed by a page that says `complete`.
        `stream_prefix`: the job's CloudWatch streams (None when it has none, e.g. before it started)."""
        if not 1 <= limit <= limits.MAX_LOG_LINES:
            raise ValidationFailed(f"limit: must be an integer from 1 to {limits.MAX_LOG_LINES}")
        state = _Cursor.decode(cursor) if cursor else _Cursor()
        archived = None
        if state.source == "archive" or (ended and state.at_start):
            archived = self.store.size(archive_key)
        if ended and state.at_start and archived is not None:
            state = _Cursor(source="archive")
        if state.source == "archive":
            events, state, exhausted = self._archived(archive_key, archived or 0, state, limit)
        elif stream_prefix is None:
            events, exhausted = [], True
        else:
            events, state, exhausted = self._cloudwatch(stream_prefix, state, limit)
        return {"job": job_id, "status": status, "events": events, "next": state.encode(),
                "complete": ended and exhausted}

    def _cloudwatch(self, prefix: str, state: _Cursor, limit: int) -> tuple[list[dict[str, Any]], _Cursor, bool]:
        token, after, seen = state.token, state.after, state.seen
        skip = seen if token is None and after is not None else 0
        events: list[dict[str, Any]] = []
        for _ in range(MAX_EMPTY_PAGES):
            page = self.reader.page(prefix, min(_MAX_LIMIT, limit + skip), token, after if token is None else None)
            fresh = page.events
            # The events of millisecond `after` that earlier pages returned come first again: drop them.
            dropped = 0
            while dropped < skip and dropped < len(fresh) and fresh[dropped]["timestamp"] == after:
                dropped += 1
            events, skip, token = fresh[dropped:], 0, page.token
            if len(events) > limit:
                # Fewer repeated events than expected came first (say, expired): the page is longer than asked.
                # Its token would skip the rest, so the next read starts after the last event returned instead.
                events, token = events[:limit], None
                break
            if events or token is None:
                break
        for event in events:
            seen = seen + 1 if event["timestamp"] == after else 1
            after = event["timestamp"]
        exhausted = token is None and page.token is None
        return events, _Cursor(token=token, after=after, seen=seen), exhausted

    def _archived(self, key: str, size: int, state: _Cursor,
                  limit: int) -> tuple[list[dict[str, Any]], _Cursor, bool]:
        offset = state.offset
        if offset >= size:
            return [], state, True
        # One ranged GET of at most MAX_PAGE_BYTES: a CloudWatch event is at most 256 KB, so it holds whole lines.
        body = self.store.stream(key, start=offset, end=min(size, offset + MAX_PAGE_BYTES) - 1)
        try:
            data = body.read()
        finally:
            body.close()
        last_window = offset + len(data) >= size
        lines: list[bytes] = []
        position = 0
        while len(lines) < limit and position < len(data):
            newline = data.find(b"\n", position)
            if newline < 0:
                # A last line without its newline, or (never from `archive`) a line longer than a window.
                if last_window or not lines:
                    lines.append(data[position:])
                    position = len(data)
                break
            lines.append(data[position:newline])
            position = newline + 1
        offset += position
        events = [{"timestamp": None, "message": line.decode("utf-8", "replace")} for line in lines]
        return events, _Cursor(source="archive", offset=offset), offset >= size

    def archive(self, stream_prefix: str, key: str, tail: int = 0) -> list[str]:
        """Copies the job's CloudWatch log to `key` (one line per event) a page at a time, as a streamed upload, so
        no log is ever held whole; returns its last `tail` lines. Nothing is written for a job that logged nothing."""
        last: deque[str] = deque(maxlen=tail)

        def lines() -> Iterator[bytes]:
            for message in self.reader.messages(stream_prefix):
                line = message.rstrip("\n")
                last.append(line)
                yield (line + "\n").encode()

        body = _IterReader(lines())
        if body.peek():
            self.store.put_stream(key, body, "text/plain")
        return list(last)


class _IterReader:
    """A read()-able file over an iterator of byte chunks (what a streamed upload reads from)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def peek(self) -> bool:
        """True when there is at least one byte to read."""
        if not self._buffer:
            self._buffer = next(self._chunks, b"")
        return bool(self._buffer)

    def read(self, size: int = -1) -> bytes:
        parts, have = [self._buffer], len(self._buffer)
        while size < 0 or have < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        if size < 0:
            self._buffer = b""
            return data
        self._buffer = data[size:]
        return data[:size]
