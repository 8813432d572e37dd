"""
The load balancer's TCP proxy: plain pass-through (TLS stays end to end).

Each accepted connection is paused until a server accepts a connection of its
own; the servers are tried in the list's order, moving on at once when a dial
fails. Then each side is registered as a streaming producer of the other, so
a slow reader slows the writer down and no buffer grows without bound; an
end of stream on one side becomes a half-close on the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from k3stw.hostport import Dial, connect_protocol
from k3stw.loadbalancer.servers import Server, ServerList
from k3stw.logs import Logger

#: Bytes a side holds before it is wired to its peer (the accepted side is
#: paused, so this is only a guard against a transport that reads anyway).
HELD_LIMIT = 64 * 1024
#: Seconds a dial to a server may take.  Servers are on the cluster's own
#: network, where a connect answers in milliseconds or (SYN dropped: the
#: server partitioned away) never; a short wait moves clients on to another
#: server within the 5 s an HA cluster promises, after one SYN retransmit.
DIAL_TIMEOUT = 3.0

#: Told of each dial attempt: whether it succeeded, and how long it took.
DialObserver = Callable[[bool, float], None]


def _consumer(transport: object) -> IConsumer:
    return cast(IConsumer, transport)


def _close(transport: Any) -> None:
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        transport.loseConnection()


@implementer(IHalfCloseableProtocol)
class _Side(Protocol):
    """One end of a proxied connection: what it reads, its peer writes."""

    _log = Logger()

    def __init__(self) -> None:
        self.peer: _Side | None = None
        self.connection: ProxiedConnection | None = None
        self.read_closed = False
        self.lost = False
        self._held: list[bytes] = []
        self._held_size = 0

    def dataReceived(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
            return
        self._held.append(data)
        self._held_size += len(data)
        if self._held_size > HELD_LIMIT and self.transport is not None:
            self._log.warn("Load balancer connection sent too much before its server answered")
            _close(self.transport)

    def take_held(self) -> bytes:
        held = b"".join(self._held)
        self._held.clear()
        self._held_size = 0
        return held

    def readConnectionLost(self) -> None:
        self.read_closed = True
        peer = self.peer
        if peer is None or peer.lost or peer.transport is None:
            return
        # We produce no more for the peer; a registered producer would keep its
        # transport from ever shutting down the write half.
        _consumer(peer.transport).unregisterProducer()
        cast(ITCPTransport, peer.transport).loseWriteConnection()
        if peer.read_closed:
            # Both directions are done.
            assert self.transport is not None
            self.transport.loseConnection()
            peer.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True
        if self.connection is not None:
            self.connection.side_lost()
        peer = self.peer
        if peer is not None and not peer.lost and peer.transport is not None:
            _consumer(peer.transport).unregisterProducer()
            peer.transport.loseConnection()


class ProxiedConnection:
    """A client connection joined to a server; the server list can close it."""

    def __init__(self, servers: ServerList, server: Server, down: _Side, up: _Side) -> None:
        self.server = server
        self._servers = servers
        self._down = down
        self._up = up
        self._closed = False
        down.connection = up.connection = self

    def close(self) -> None:
        """Close both sides at once (the server failed or was removed)."""
        if self._closed:
            return
        self._closed = True
        for side in (self._down, self._up):
            if not side.lost and side.transport is not None:
                _close(side.transport)

    def side_lost(self) -> None:
        self._servers.remove_connection(self.server, self)


class _Accepted(_Side):
    """A client's connection to the load balancer."""

    def __init__(self, factory: LoadBalancerFactory) -> None:
        super().__init__()
        self.factory = factory
        self._dialing: Deferred[None] | None = None

    def connectionMade(self) -> None:
        # Read nothing until there is somewhere to send it.
        assert self.transport is not None
        cast(IPushProducer, self.transport).pauseProducing()
        self.factory.pending.add(self)
        self._dialing = Deferred.fromCoroutine(self._connect())
        self._dialing.addErrback(self._failed)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.factory.pending.discard(self)
        if self._dialing is not None:
            self._dialing.cancel()
        super().connectionLost(reason)

    def readConnectionLost(self) -> None:
        if self.peer is None:
            # The client finished sending before a server answered: the
            # upstream's write half is closed once it is wired.
            self.read_closed = True
            return
        super().readConnectionLost()

    async def _connect(self) -> None:
        factory = self.factory
        servers = factory.servers
        for server in servers.dial_order():
            if not servers.is_current(server):
                continue
            up = _Side()
            started = factory.clock.seconds()
            try:
                attempt = connect_protocol(factory.dial(server.address), up)
                attempt.addTimeout(factory.dial_timeout, factory.clock)
                await attempt
            except CancelledError:
                raise
            except Exception as error:
                factory.observe(False, factory.clock.seconds() - started)
                self._log.debug(
                    "Dial error from load balancer {name}: {error}",
                    name=servers.name,
                    error=str(error) or repr(error),
                )
                servers.record_dial(server, False)
                continue
            factory.observe(True, factory.clock.seconds() - started)
            servers.record_dial(server, True)
            connection = ProxiedConnection(servers, server, self, up)
            if not servers.add_connection(server, connection):
                # Removed while we dialed.
                assert up.transport is not None
                _close(up.transport)
                continue
            self._join(up)
            return
        self._log.warn(
            "Incoming conn {peer}, error dialing load balancer servers: all servers failed",
            peer=str(self._peer_address()),
        )
        assert self.transport is not None
        self.transport.loseConnection()

    def _join(self, up: _Side) -> None:
        self.factory.pending.discard(self)
        down_transport, up_transport = self.transport, up.transport
        assert down_transport is not None and up_transport is not None
        self.peer, up.peer = up, self
        _consumer(down_transport).registerProducer(cast(IPushProducer, up_transport), True)
        _consumer(up_transport).registerProducer(cast(IPushProducer, down_transport), True)
        held = up.take_held()
        if held:
            down_transport.write(held)
        held = self.take_held()
        if held:
            up_transport.write(held)
        if self.read_closed:
            self.read_closed = False
            self.readConnectionLost()
        else:
            cast(IPushProducer, down_transport).resumeProducing()

    def abandon(self) -> None:
        """Stop dialing and close the client's connection (the balancer stops)."""
        self.factory.pending.discard(self)
        if self._dialing is not None:
            self._dialing.cancel()
        if self.transport is not None:
            _close(self.transport)

    def _peer_address(self) -> IAddress | None:
        return self.transport.getPeer() if self.transport is not None else None

    def _failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return
        self._log.failure("Load balancer connection failed", failure)
        if self.transport is not None:
            _close(self.transport)


class LoadBalancerFactory(Factory):
    """
    Accepts client connections and joins each to a server of ``servers``.

    :param clock: times dials (their timeout and their duration).
    :param servers: the server list, which orders the dials and learns their outcome.
    :param dial: the endpoint for a server address (L{hostname_dialer} in production).
    :param dial_timeout: seconds before a dial counts as failed.
    :param observe_dial: told of each dial's outcome and duration (metrics).
    """

    # The service logs "Running load balancer ..." instead, as k3s does.
    noisy = False

    def __init__(
        self,
        clock: IReactorTime,
        servers: ServerList,
        dial: Dial,
        dial_timeout: float = DIAL_TIMEOUT,
        observe_dial: DialObserver | None = None,
    ) -> None:
        self.clock = clock
        self.servers = servers
        self.dial = dial
        self.dial_timeout = dial_timeout
        self._observe_dial = observe_dial
        #: Accepted connections still waiting for a server.
        self.pending: set[_Accepted] = set()

    def buildProtocol(self, addr: IAddress | None) -> _Accepted:
        return _Accepted(self)

    def observe(self, succeeded: bool, seconds: float) -> None:
        if self._observe_dial is not None:
            self._observe_dial(succeeded, seconds)

    def close_pending(self) -> None:
        """Close the connections still waiting for a server."""
        for accepted in list(self.pending):
            accepted.abandon()
