"""
Kubernetes times: ``metav1.Time`` (RFC 3339, UTC, whole seconds) and
``metav1.MicroTime`` (with microseconds), from and to an L{IReactorTime}'s
seconds.  Everything that stamps an object takes its seconds from an injected
clock, never from the wall clock.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# Python reads at most microseconds; Go writes up to nanoseconds.
_BEYOND_MICROSECONDS = re.compile(r"(\.\d{6})\d+")


def utc(seconds: float) -> datetime:
    """C{seconds} since the epoch as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


def rfc3339(seconds: float) -> str:
    """A ``metav1.Time``: RFC 3339 in UTC with second precision."""
    return utc(int(seconds)).strftime(TIME_FORMAT)


def micro_time(seconds: float) -> str:
    """A ``metav1.MicroTime``: RFC 3339 in UTC with microseconds."""
    return utc(seconds).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_datetime(text: object) -> datetime | None:
    """
    An RFC 3339 time (a Time, a MicroTime, or one with nanoseconds as Go
    writes them) as an aware datetime; None if C{text} is not one.
    """
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.fromisoformat(_BEYOND_MICROSECONDS.sub(r"\1", text))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def parse_time(text: object) -> float | None:
    """L{parse_datetime} as seconds since the epoch."""
    parsed = parse_datetime(text)
    return None if parsed is None else parsed.timestamp()


def go_duration(nanos: int) -> str:
    """Nanoseconds as Go's C{time.Duration.String} writes them (``1h2m3.5s``, ``250ms``)."""
    sign, nanos = ("-", -nanos) if nanos < 0 else ("", nanos)
    if nanos < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if nanos >= size or unit == "ns":
                return sign + _decimal(nanos, size) + unit if nanos else "0s"
    hours, rest = divmod(nanos, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    text = _decimal(rest, 10**9) + "s"
    if hours or minutes:
        text = f"{minutes}m" + text
    if hours:
        text = f"{hours}h" + text
    return sign + text


_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_GO_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(h|ms|us|µs|ns|m|s)")


def parse_go_duration(text: object) -> float:
    """Seconds from a Go duration as L{go_duration} writes it (``1m0s``, ``1.5s``); 0 if not one."""
    return sum(
        float(number) * _GO_UNITS[unit] for number, unit in _GO_DURATION.findall(str(text or ""))
    )


def _decimal(value: int, unit: int) -> str:
    whole, fraction = divmod(value, unit)
    digits = str(fraction).rjust(len(str(unit)) - 1, "0").rstrip("0") if unit > 1 else ""
    return f"{whole}.{digits}" if digits else str(whole)
