"""
k3stw's logger: Twisted's, with k3s's default level. Debug events are dropped
unless ``--debug`` (or ``K3S_DEBUG``) turned them on for the process.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger as TwistedLogger
from twisted.logger import LogLevel

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
