"""
k3stw's logger: Twisted's, with k3s's default level. Debug events are dropped
unless ``--debug`` (or ``K3S_DEBUG``) turned them on for the process.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from twisted.logger import ILogObserver, LogEvent, LogLevel, eventAsText
from twisted.logger import Logger as TwistedLogger
from zope.interface import implementer

_debug = False


def set_debug(enabled: bool) -> None:
    """Let debug events through (``--debug``) or drop them (the default)."""
    global _debug
    _debug = enabled


def debug_enabled() -> bool:
    return _debug


class Logger(TwistedLogger):
    """A L{twisted.logger.Logger} whose debug events are emitted only with ``--debug``."""

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        if level is LogLevel.debug and not _debug:
            return
        super().emit(level, format, **kwargs)


#: sd-daemon(3) priority prefixes, which journald reads off each line.
_PRIORITIES = {
    LogLevel.critical: "<2>",
    LogLevel.error: "<3>",
    LogLevel.warn: "<4>",
    LogLevel.info: "<6>",
    LogLevel.debug: "<7>",
}


@implementer(ILogObserver)
class JournalObserver:
    """
    Writes events for the systemd journal: each line prefixed with its
    priority (so ``journalctl -p warning`` finds warnings and errors), and no
    timestamp, since the journal keeps its own.
    """

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: LogEvent) -> None:
        level = event.get("log_level") or LogLevel.info
        if event.get("isError"):
            level = LogLevel.error
        text = eventAsText(event, includeTimestamp=False)
        prefix = _PRIORITIES.get(level, "<6>")
        self._out.write("".join(f"{prefix}{line}\n" for line in text.splitlines() or [""]))
        self._out.flush()


def journal_observer() -> ILogObserver:
    """twistd's ``--logger`` factory when standard output is the journal."""
    return JournalObserver(sys.stdout)
