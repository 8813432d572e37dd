"""
How a k3stw process fails: one clear line and a non-zero exit, as k3s's
``level=fatal`` does, never a traceback for a problem the user can fix.
"""

from __future__ import annotations

import gc
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from twisted.application.service import MultiService
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorCore

from k3stw.logs import Logger

_log = Logger()


class StartupError(Exception):
    """A problem found while starting that the user must fix; the message says how."""


def stop_with_error(reactor: IReactorCore, message: str, code: int = 1) -> None:
    """
    Log C{message} as fatal, stop the services gracefully, then exit with C{code}.

    twistd always exits 0 once its reactor stops, so the exit status is set
    after every service has stopped, from the last shutdown phase.
    """
    _log.critical("{error}", error=message)
    reactor.addSystemEventTrigger("after", "shutdown", _exit_now, code)
    reactor.stop()


def _exit_now(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def notify_systemd(state: str) -> None:
    """
    Tell systemd C{state} (``READY=1``) when it started us as a
    ``Type=notify`` unit, as k3s does once it is up; otherwise do nothing.
    """
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    # A leading "@" names a socket in the abstract namespace.
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(state.encode(), address)
    except OSError as e:
        _log.warn("could not notify systemd ({state}): {error}", state=state, error=e)


def settle_memory() -> None:
    """
    Once a long-running process has started: collect once, then freeze what
    start-up made (modules, certificates, the service tree), so that no later
    full collection of Python's cyclic garbage collector scans it again.  On a
    busy server each such collection pauses the reactor, and every request in
    flight with it; frozen, the start-up objects no longer add to the pause.
    """
    gc.collect()
    gc.freeze()


class ApplianceService(MultiService):
    """
    The root service of a k3stw process.  A L{StartupError} or a port that
    cannot be bound while starting becomes one line and exit status 1
    instead of a traceback.
    """

    def __init__(self, command: str) -> None:
        super().__init__()
        self.command = command

    def privilegedStartService(self) -> None:
        # twistd binds listening ports here, before dropping privileges.
        with self._one_line_errors():
            super().privilegedStartService()

    def startService(self) -> None:
        with self._one_line_errors():
            super().startService()

    @contextmanager
    def _one_line_errors(self) -> Iterator[None]:
        try:
            yield
        except StartupError as e:
            raise SystemExit(f"{self.command}: {e}") from None
        except CannotListenError as e:
            reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
            where = f"{e.interface or '0.0.0.0'}:{e.port}"
            raise SystemExit(f"{self.command}: cannot listen on {where}: {reason}") from None
