"""A port a node component opens when started, and that failing to open does not stop the node."""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort

from k3stw.logs import Logger

__all__ = ["Listener"]


class Listener(Service):
    """
    One UDP or TCP port, opened when started: a port taken (a resolver of the
    host's own on port 53, a web server on 80) is logged and leaves the node
    running without it.

    :param what: the component, for the log line (``cluster DNS``).
    """

    _log = Logger()

    def __init__(self, listen: Callable[[], IListeningPort], where: str, what: str) -> None:
        self._open = listen
        self.where = where
        self.what = what
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        try:
            self.port = self._open()
        except CannotListenError as e:
            self._log.error(
                "{what} cannot listen on {where}: {error}",
                what=self.what,
                where=self.where,
                error=e,
            )

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        return None if port is None else port.stopListening()
