"""Fakes for the load balancer's tests: connections, dial endpoints, log capture."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer


class FakeConnection:
    """A proxied connection that remembers being closed."""

    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


class HalfCloseTransport(StringTransport):
    """A StringTransport that also records a half-close (``loseWriteConnection``)."""

    def __init__(self) -> None:
        super().__init__()
        self.write_closed = False
        self.aborted = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


@implementer(IStreamClientEndpoint)
class PendingEndpoint:
    """An endpoint whose connection attempt the test completes or refuses."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.attempt: Deferred[IProtocol] | None = None
        self.factory: IProtocolFactory | None = None
        self.cancelled = False

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        def cancel(d: Deferred[IProtocol]) -> None:
            self.cancelled = True

        self.factory = factory
        self.attempt = Deferred(cancel)
        return self.attempt

    def succeed(self) -> tuple[Any, HalfCloseTransport]:
        """The server accepted: a protocol connected to a fresh transport."""
        assert self.factory is not None and self.attempt is not None
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.10.1", 6443))
        assert protocol is not None
        transport = HalfCloseTransport()
        protocol.makeConnection(transport)
        self.attempt.callback(protocol)
        return protocol, transport

    def refuse(self) -> None:
        assert self.attempt is not None
        self.attempt.errback(ConnectionRefusedError())


class Dialer:
    """Records every dial; each returns a new :class:`PendingEndpoint`."""

    def __init__(self) -> None:
        self.endpoints: list[PendingEndpoint] = []

    def __call__(self, address: str) -> IStreamClientEndpoint:
        endpoint = PendingEndpoint(address)
        self.endpoints.append(endpoint)
        return endpoint

    def last(self, address: str) -> PendingEndpoint:
        return [e for e in self.endpoints if e.address == address][-1]

    def addresses(self) -> list[str]:
        return [e.address for e in self.endpoints]


def capture_logs(case: SynchronousTestCase) -> list[str]:
    """Every log line emitted during the test, formatted."""
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        text = formatEvent(event)
        if text:
            lines.append(text)

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return lines


DialFunction = Callable[[str], IStreamClientEndpoint]
