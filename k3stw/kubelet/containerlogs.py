"""
Container logs as the kubelet reads them, without I/O: the CRI log format,
the options of ``GET /containerLogs`` (kube's v1 PodLogOptions, as the
kubelet decodes and validates them), which container instance a request
reads (kube's ``validateContainerLogStatus``), where the last N lines of a
log start, and L{LogFilter}, which turns the log's records into what the
client gets (``sinceSeconds``/``sinceTime``, ``timestamps``, ``tailLines``,
``limitBytes``).

A CRI log record is ``<RFC 3339 time> <stdout|stderr> <tags> <content>\\n``;
the first tag is ``P`` for a partial line (a long line cut by the runtime:
its newline is not part of the content, the next record goes on with it) or
``F`` for a full one.  As the kubelet, a record is the unit: ``tailLines``
counts records, and with ``timestamps`` each record gets its own time.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "LogFilter",
    "LogOptions",
    "LogQueryError",
    "LogRecord",
    "container_log_id",
    "format_timestamp",
    "parse_log_options",
    "parse_record",
    "tail_start",
]

#: How far back the start of the last lines is looked for at a time (kube's ``blockSize``).
TAIL_BLOCK = 1024

_TIME = re.compile(
    rb"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})\Z"
)
_STREAMS = (b"stdout", b"stderr")
_INT = re.compile(r"[+-]?[0-9]+\Z")


class LogQueryError(Exception):
    """A query the kubelet refuses: its status code and its (JSON-looking) text."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class LogRecord:
    """
    One record of a CRI log.

    :ivar nanos: its time, in nanoseconds since the epoch.
    :ivar offset: the time's UTC offset in minutes, as written.
    :ivar stream: ``stdout`` or ``stderr``.
    :ivar partial: a ``P`` record: the line goes on in the next one.
    :ivar content: what the container wrote, with its newline unless partial.
    """

    nanos: int
    offset: int
    stream: bytes
    partial: bool
    content: bytes


def _parse_time(text: bytes) -> tuple[int, int] | None:
    match = _TIME.match(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zone = match.group(7) or b"", match.group(8)
    offset = 0
    if zone != b"Z":
        sign = -1 if zone[:1] == b"-" else 1
        offset = sign * (int(zone[1:3]) * 60 + int(zone[4:6]))
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 60):
        return None
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    nanos = int(fraction.ljust(9, b"0")) if fraction else 0
    return (seconds - offset * 60) * 1_000_000_000 + nanos, offset


def parse_record(line: bytes) -> LogRecord | None:
    """
    A record from one line of a CRI log (its newline included, if it has
    one); None for a line that is not one (kube skips those).
    """
    time_text, space, rest = line.partition(b" ")
    if not space:
        return None
    when = _parse_time(time_text)
    if when is None:
        return None
    stream, space, rest = rest.partition(b" ")
    if not space or stream not in _STREAMS:
        return None
    tags, space, content = rest.partition(b" ")
    if not space:
        return None
    partial = tags.split(b":")[0] == b"P"
    if partial and content.endswith(b"\n"):
        content = content[:-1]
    return LogRecord(when[0], when[1], stream, partial, content)


def format_timestamp(nanos: int, offset: int = 0) -> bytes:
    """A time as kube's ``RFC3339NanoFixed`` (nine digits of fraction) writes it."""
    seconds, fraction = divmod(nanos + offset * 60 * 1_000_000_000, 1_000_000_000)
    year, month, day, hour, minute, second = _civil(seconds)
    if offset == 0:
        zone = "Z"
    else:
        sign = "-" if offset < 0 else "+"
        zone = f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    text = (
        f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
        f".{fraction:09d}{zone}"
    )
    return text.encode("ascii")


def _civil(seconds: int) -> tuple[int, int, int, int, int, int]:
    parts = time.gmtime(seconds)
    return parts.tm_year, parts.tm_mon, parts.tm_mday, parts.tm_hour, parts.tm_min, parts.tm_sec


# Options


@dataclass(frozen=True)
class LogOptions:
    """
    What one request asks of a log (kube's CRI ``LogOptions``).

    :ivar tail: the last records to read (None: all).
    :ivar limit: the most bytes to send (None: no limit).
    :ivar since: the earliest record time to send, in nanoseconds (None: any).
    """

    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    tail: int | None = None
    limit: int | None = None
    since: int | None = None


def _first(query: Mapping[bytes, Sequence[bytes]], name: str) -> str | None:
    values = query.get(name.encode())
    return values[0].decode("utf-8", "replace") if values else None


def _flag(query: Mapping[bytes, Sequence[bytes]], name: str) -> bool:
    value = _first(query, name)
    if value is None or value == "":
        return False
    if value in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if value in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise LogQueryError(400, '{"message": "Unable to decode query."}')


def _number(query: Mapping[bytes, Sequence[bytes]], name: str) -> int | None:
    value = _first(query, name)
    if value is None:
        return None
    if not _INT.match(value) or not -(2**63) <= int(value) < 2**63:
        raise LogQueryError(400, '{"message": "Unable to decode query."}')
    return int(value)


def parse_log_options(query: Mapping[bytes, Sequence[bytes]], now: float) -> LogOptions:
    """
    The options of a ``/containerLogs`` query, decoded and validated as the
    kubelet does (the legacy ``tail``, ``all`` included), at time C{now}.

    :raises LogQueryError: 400 ``Unable to decode query.``, or 422
        ``Invalid request.`` for options kube's ValidatePodLogOptions refuses.
    """
    query = dict(query)
    tail = _first(query, "tail")
    if tail:
        query[b"tailLines"] = [tail.encode()]
        if tail == "all":
            del query[b"tailLines"]
    tail_lines = _number(query, "tailLines")
    limit = _number(query, "limitBytes")
    since_seconds = _number(query, "sinceSeconds")
    since_time: int | None = None
    text = _first(query, "sinceTime")
    if text:
        parsed = _parse_time(text.encode())
        if parsed is None:
            raise LogQueryError(400, '{"message": "Unable to decode query."}')
        # metav1.Time keeps whole seconds.
        since_time = parsed[0] // 1_000_000_000 * 1_000_000_000
    invalid = (
        (tail_lines is not None and tail_lines < 0)
        or (limit is not None and limit < 1)
        or (since_seconds is not None and since_seconds < 1)
        or (since_seconds is not None and since_time is not None)
        # Split streams need the PodLogsQuerySplitStreams gate, alpha and off in 1.32.
        or _first(query, "stream") is not None
    )
    if invalid:
        raise LogQueryError(422, '{"message": "Invalid request."}')
    since: int | None = None
    if since_seconds is not None:
        since = int(now * 1_000_000_000) - since_seconds * 1_000_000_000
    if since_time is not None and (since is None or since_time > since):
        since = since_time
    return LogOptions(
        follow=_flag(query, "follow"),
        previous=_flag(query, "previous"),
        timestamps=_flag(query, "timestamps"),
        tail=tail_lines,
        limit=limit,
        since=since,
    )


# Which instance


def container_log_id(
    pod_name: str, status: Mapping[str, Any], container: str, previous: bool
) -> str:
    """
    The ID (``containerd://<id>``) of the container instance whose log a request reads
    (kube's ``validateContainerLogStatus``): the running one, else the one
    that ended; with C{previous}, the one before.

    :param status: the pod's status as the kubelet knows it.
    :raises LogQueryError: 400 in the kubelet's words (not started yet, no
        previous instance, not in the status).
    """
    found = None
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        for entry in status.get(key) or ():
            if entry.get("name") == container:
                found = entry
                break
        if found is not None:
            break
    who = f'container "{container}" in pod "{pod_name}"'
    if found is None:
        raise LogQueryError(400, f"{who} is not available")
    state = found.get("state") or {}
    last = (found.get("lastState") or {}).get("terminated")
    terminated = state.get("terminated")
    if previous:
        if not last or not last.get("containerID"):
            raise LogQueryError(400, f"previous terminated {who} not found")
        cid = str(last["containerID"])
    elif "running" in state:
        cid = str(found.get("containerID") or "")
    elif terminated is not None:
        if terminated.get("containerID"):
            cid = str(terminated["containerID"])
        elif last and last.get("containerID"):
            cid = str(last["containerID"])
        else:
            raise LogQueryError(400, f"{who} is terminated")
    elif last is not None:
        if not last.get("containerID"):
            raise LogQueryError(400, f"{who} is terminated")
        cid = str(last["containerID"])
    elif "waiting" in state:
        reason = (state["waiting"] or {}).get("reason", "")
        if reason == "ErrImagePull":
            raise LogQueryError(400, f"{who} is waiting to start: image can't be pulled")
        if reason == "ImagePullBackOff":
            raise LogQueryError(400, f"{who} is waiting to start: trying and failing to pull image")
        raise LogQueryError(400, f"{who} is waiting to start: {reason}")
    else:
        raise LogQueryError(400, f"{who} is waiting to start - no logs yet")
    return cid


# Reading


def tail_start(size: int, read_at: Any, lines: int | None) -> int:
    """
    Where the last C{lines} records of a log of C{size} bytes start (kube's
    ``FindTailLineStartIndex``: an unfinished last line does not count).

    :param read_at: C{read_at(offset, length)} gives those bytes of the log.
    """
    if lines is None:
        return 0
    left, count, block = 0, 0, b""
    right = size
    while right > 0 and count <= lines:
        left = max(0, right - TAIL_BLOCK)
        block = read_at(left, right - left)
        count += block.count(b"\n")
        right = left
    while count > lines:
        cut = block.index(b"\n") + 1
        block = block[cut:]
        left += cut
        count -= 1
    return left


class LogFilter:
    """
    The records of a log in, what the client gets out: records older than
    C{since} skipped, each prefixed with its time when asked, at most C{tail}
    records when not following, at most C{limit} bytes in all.
    """

    def __init__(self, options: LogOptions) -> None:
        self.options = options
        self.remaining = options.limit
        #: Records still to send before stopping (None: no count).
        self.records = options.tail if options.tail is not None and not options.follow else None

    @property
    def done(self) -> bool:
        """Nothing more will be sent: the limit of bytes or records is reached."""
        return self.remaining == 0 or self.records == 0

    def feed(self, line: bytes) -> bytes:
        """What to send for one line of the log (b"" for none)."""
        if self.done:
            return b""
        record = parse_record(line)
        if record is None:
            return b""
        # As the kubelet's: a record too old still counts against C{tail}.
        if self.records is not None:
            self.records -= 1
        if self.options.since is not None and record.nanos < self.options.since:
            return b""
        out = record.content
        if self.options.timestamps:
            out = format_timestamp(record.nanos, record.offset) + b" " + out
        if self.remaining is not None:
            out = out[: self.remaining]
            self.remaining -= len(out)
        return out
