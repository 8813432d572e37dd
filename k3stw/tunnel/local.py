"""
The tunnel's sockets, apart from any websocket library (the agent's end
imports no autobahn): the local TCP connections a stream is pumped through
(L{TunnelStreamProtocol}, opened by L{TCPDialer}), and what both websocket
ends share (L{tune_websocket_socket}, L{close_reason}).
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any, cast

from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from k3stw.hostport import connect_protocol, hostname_dialer
from k3stw.tunnel.interfaces import ILocalDialer, IStreamReceiver
from k3stw.tunnel.session import Stream

__all__ = [
    "TCPDialer",
    "TunnelStreamProtocol",
    "close_reason",
    "no_delay",
    "tune_websocket_socket",
]

#: Bytes the websocket's socket may hold before the session (every stream's
#: local source) is paused.  Twisted's default, 64 KiB, is two Data
#: messages: a busy session paused and resumed every stream (a system call
#: each) for every 64 KiB it sent.  (Twisted reads up to this much at a
#: time too.)
WEBSOCKET_SEND_BUFFER = 512 * 1024
#: The websocket close reason is at most 123 bytes (RFC 6455 5.5).
_CLOSE_REASON_LIMIT = 123


def close_reason(reason: str) -> str:
    """C{reason} cut to what a websocket Close frame carries, on a character boundary."""
    return reason.encode("utf-8")[:_CLOSE_REASON_LIMIT].decode("utf-8", "ignore")


def no_delay(transport: object) -> None:
    """
    Turn Nagle off on C{transport}'s socket, if it has one.

    A TLS handshake through the tunnel is several small websocket messages
    in a row each way; with Nagle on, the second waits for the peer's
    delayed ACK (40 ms on Linux) before it leaves.  Go peers have
    TCP_NODELAY on every TCP connection.
    """
    setter = getattr(transport, "setTcpNoDelay", None)
    if setter is None:
        return
    # Not a TCP socket (a Unix socket), or a socket already gone.
    with suppress(OSError):
        setter(True)


def _socket_transport(transport: object) -> FileDescriptor | None:
    """The socket's own transport under C{transport} (which may be a TLS wrapper)."""
    for _ in range(4):
        if transport is None or isinstance(transport, FileDescriptor):
            return transport
        transport = getattr(transport, "transport", None)
    return None


def tune_websocket_socket(transport: object) -> None:
    """Nagle off and a L{WEBSOCKET_SEND_BUFFER} on the socket under a tunnel's websocket."""
    no_delay(transport)
    socket = _socket_transport(transport)
    if socket is not None:
        socket.bufferSize = WEBSOCKET_SEND_BUFFER


@implementer(IStreamReceiver, IPushProducer)
class TunnelStreamProtocol(Protocol):
    """
    Pumps one local TCP connection into a tunnel stream, both ways.

    The stream produces into our transport (paused when the socket is full)
    and our transport produces into the stream (paused when the peer sends
    Pause or the websocket is full).
    """

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    def connectionMade(self) -> None:
        assert self.transport is not None
        # As Go's net.Dial (remotedialer's local dial) does.
        no_delay(self.transport)
        cast(IConsumer, self.transport).registerProducer(self, True)
        self._stream.register_producer(IPushProducer(self.transport))
        self._stream.attach(self)

    def dataReceived(self, data: bytes) -> None:
        self._stream.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stream.unregister_producer()
        self._stream.close(None if reason.check(ConnectionDone) else reason.getErrorMessage())

    # IStreamReceiver

    def stream_data(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def stream_ended(self, reason: str | None) -> None:
        assert self.transport is not None
        # A paused streaming producer would keep the socket from closing.
        cast(IConsumer, self.transport).unregisterProducer()
        self.transport.loseConnection()

    # IPushProducer: our socket's write buffer pushes back on the peer's bytes

    def pauseProducing(self) -> None:
        self._stream.pauseProducing()

    def resumeProducing(self) -> None:
        self._stream.resumeProducing()

    def stopProducing(self) -> None:
        # connectionLost follows, with the reason the peer should hear.
        pass


@implementer(ILocalDialer)
class TCPDialer:
    """
    Opens the local TCP connections of allowed Connect messages.

    :param reactor: an C{IReactorTCP} and C{IReactorTime}.
    :param timeout: seconds a dial may take (remotedialer: one minute).
    """

    def __init__(self, reactor: Any, timeout: float = 60.0) -> None:
        self._reactor = reactor
        self._timeout = timeout

    def dial(self, proto: str, address: str, stream: Stream) -> Deferred[None]:
        if proto != "tcp":
            return fail(ValueError(f"unsupported protocol {proto!r}"))
        # An IP address (the kubelet's 127.0.0.1) is dialled straight: a
        # HostnameEndpoint would resolve it in a thread on every Connect.
        try:
            endpoint = hostname_dialer(self._reactor, self._timeout)(address)
        except ValueError:
            return fail()
        connecting: Deferred[Any] = connect_protocol(endpoint, TunnelStreamProtocol(stream))

        def connected(_: object) -> None:
            return None

        return connecting.addCallback(connected)
