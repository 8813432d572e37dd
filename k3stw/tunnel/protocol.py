"""
Thin adapters around L{k3stw.tunnel.session.Session}.

- L{TunnelServerFactory} / L{TunnelClientFactory}: autobahn websocket
  factories (binary frames only, limits and keepalive set explicitly) whose
  protocols feed one session per websocket.  The agent runs
  L{k3stw.tunnel.client} instead (no autobahn in the agent process);
  L{TunnelClientFactory} is the agent's end as agents before it ran it,
  kept so that the tests show a server serves both, and for C{bench/tunnel.py}.
- L{TunnelStreamProtocol} and L{TCPDialer} (from L{k3stw.tunnel.local}):
  the local TCP connections of the agent's streams.
- L{TunnelEndpoint}: an L{IStreamClientEndpoint} that dials through a
  session, so any Twisted client (C{Agent}, C{wrapClientTLS}) can reach the
  far end of a tunnel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IProducer,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from k3stw.logs import Logger
from k3stw.tunnel import autobahn_hooks
from k3stw.tunnel.address import Authorizer
from k3stw.tunnel.interfaces import ILocalDialer, IStreamReceiver, ITunnelTransport
from k3stw.tunnel.local import (
    TCPDialer,
    TunnelStreamProtocol,
    close_reason,
    tune_websocket_socket,
)
from k3stw.tunnel.session import (
    Frames,
    Role,
    Session,
    SessionClosed,
    SessionOpened,
    SessionSettings,
    Stream,
)

__all__ = [
    "SessionOpened",
    "StreamTransport",
    "TCPDialer",
    "TunnelAddress",
    "TunnelClientFactory",
    "TunnelClientProtocol",
    "TunnelEndpoint",
    "TunnelServerFactory",
    "TunnelServerProtocol",
    "TunnelStreamProtocol",
    "WebSocketCheck",
]

#: Decides a websocket upgrade: returns the peer's name (the node name) or
#: raises L{ConnectionDeny}.  Gets the request and the transport under it
#: (for the TLS client certificate).
WebSocketCheck = Callable[[ConnectionRequest, ITransport], str]


def _refuse_compression(offers: object) -> None:
    return None


def _apply_settings(factory: Any, settings: SessionSettings) -> None:
    """Set every autobahn option the tunnel depends on, never trusting its defaults."""
    factory.setProtocolOptions(
        maxMessagePayloadSize=settings.max_frame,
        maxFramePayloadSize=settings.max_frame,
        autoPingInterval=settings.ping_interval,
        autoPingTimeout=settings.read_deadline,
        autoPingRestartOnAnyTraffic=True,
        openHandshakeTimeout=settings.handshake_timeout,
        closeHandshakeTimeout=1.0,
        perMessageCompressionAccept=_refuse_compression,
    )


@implementer(ITunnelTransport)
class _WebSocketTransport:
    """The session's view of one autobahn protocol."""

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self._mask = autobahn_hooks.masks_frames(protocol)

    def send_frame(self, frame: bytes) -> None:
        # Closing: onClose follows and ends the session; nothing more can go out.
        if autobahn_hooks.is_open(self._protocol):
            self._protocol.sendMessage(frame, isBinary=True)

    def send_frames(self, frames: Frames) -> None:
        """
        Send each C{(head, payload)} as one binary websocket message
        C{head + payload}, all in one write (see L{autobahn_hooks.send_binary_messages}).
        """
        protocol = self._protocol
        if autobahn_hooks.is_open(protocol):
            autobahn_hooks.send_binary_messages(protocol, frames, self._mask)

    def close(self, reason: str) -> None:
        protocol = self._protocol
        protocol.sendClose(code=1000, reason=close_reason(reason))
        # The session produces into the websocket's transport no more, and a
        # TLS transport closes only once its producer is unregistered: now,
        # rather than when the peer answers the Close (or the close handshake
        # times out), so that the transport's owner can close it at once.
        protocol.unregisterProducer()


class _TunnelAdapter:
    """What the server and client protocols share: one session per open websocket."""

    _log = Logger()
    _session: Session | None = None
    _peer_name = ""
    #: Whether the transport's producer was unregistered (once is enough).
    _producer_gone = False

    def connectionMade(self) -> None:
        # autobahn's connectionMade asks for TCP_NODELAY before it has copied
        # its options from the factory, so the call fails (silently) and the
        # websocket keeps Nagle on: set it here, after autobahn is done.
        protocol: Any = self
        super().connectionMade()  # type: ignore[misc]
        tune_websocket_socket(protocol.transport)

    def unregisterProducer(self) -> None:
        """
        autobahn's, once: the session's close unregisters the session, and
        autobahn's C{dropConnection} unregisters whatever is registered again.
        """
        if not self._producer_gone:
            self._producer_gone = True
            super().unregisterProducer()  # type: ignore[misc]

    def _open_session(
        self,
        role: Role,
        clock: IReactorTime,
        settings: SessionSettings,
        authorizer: Authorizer | None,
        dialer: ILocalDialer | None,
    ) -> Session:
        protocol: Any = self
        autobahn_hooks.forget_handshake(protocol)
        session = Session(
            _WebSocketTransport(protocol),
            clock,
            role=role,
            authorizer=authorizer,
            dialer=dialer,
            settings=settings,
            name=self._peer_name,
        )
        self._session = session
        # A full socket pauses every stream's local source.  (Behind a
        # WebSocketResource the HTTP channel may still be registered.)
        try:
            protocol.registerProducer(session, True)
        except RuntimeError:
            protocol.transport.unregisterProducer()
            protocol.registerProducer(session, True)
        session.start()
        return session

    #: autobahn's, without its debug line: that one formats its arguments
    #: (the method's qualified name, the peer) for every read, logged or not.
    dataReceived = autobahn_hooks.receive
    #: autobahn's, without its C{"message"} event: that builds a Deferred for
    #: every message, and no one here listens to it.
    onMessageEnd = autobahn_hooks.deliver_message

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self._session
        if session is None:
            return
        if not isBinary:
            self._log.warn("tunnel {peer}: text websocket message; closing", peer=self._peer_name)
            session.connection_lost("wrong websocket message type")
            protocol: Any = self
            protocol.sendClose(code=1003, reason="binary messages only")
            return
        session.frame_received(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._session is not None:
            self._session.connection_lost(f"websocket closed ({code}): {reason or ''}")
        else:
            self.closed_before_open(reason or f"websocket closed ({code})")

    def closed_before_open(self, reason: str) -> None:
        """The websocket closed before its session opened (the handshake failed)."""


class TunnelServerProtocol(_TunnelAdapter, WebSocketServerProtocol):  # type: ignore[misc]
    """The server end of a tunnel websocket (C{/v1-k3s/connect})."""

    factory: TunnelServerFactory

    def onConnect(self, request: ConnectionRequest) -> None:
        try:
            assert self.transport is not None
            self._peer_name = self.factory.tunnel_check(request, self.transport)
        except ConnectionDeny as deny:
            self._log.info(
                "tunnel: refused websocket from {peer}: {code} {reason}",
                peer=request.peer,
                code=deny.code,
                reason=deny.reason,
            )
            raise
        except Exception:
            # autobahn would turn this into a bare 500 and a warning.
            self._log.failure(
                "tunnel: checking the websocket from {peer} failed", peer=request.peer
            )
            raise ConnectionDeny(ConnectionDeny.INTERNAL_SERVER_ERROR, "internal error") from None

    def onOpen(self) -> None:
        factory = self.factory
        session = self._open_session(
            "server",
            factory.tunnel_clock,
            factory.tunnel_settings,
            factory.tunnel_authorizer,
            factory.tunnel_dialer,
        )
        self._log.info("tunnel: session opened by {peer}", peer=self._peer_name)
        try:
            factory.tunnel_opened(self._peer_name, session)
        except Exception:
            self._log.failure("tunnel: registering the session of {peer}", peer=self._peer_name)
            session.close("could not register the session")


class TunnelServerFactory(WebSocketServerFactory):
    """
    Builds L{TunnelServerProtocol}s.

    :param check: decides each upgrade (see L{WebSocketCheck}).
    :param opened: told about each open session.
    :param clock: time for the sessions (SyncConnections handling needs none,
        but the sessions' timers use it); autobahn's own timers use
        C{txaio.config.loop}.
    :param authorizer: the server accepts no Connect by default.
    """

    protocol = TunnelServerProtocol  # type: ignore[assignment]
    # The listener logs its own line; one per websocket would be noise.
    noisy = False

    def __init__(
        self,
        *,
        check: WebSocketCheck,
        opened: SessionOpened,
        clock: IReactorTime,
        settings: SessionSettings | None = None,
        authorizer: Authorizer | None = None,
        dialer: ILocalDialer | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(url)
        self.tunnel_check = check
        self.tunnel_opened = opened
        self.tunnel_clock = clock
        self.tunnel_settings = settings if settings is not None else SessionSettings()
        self.tunnel_authorizer = authorizer
        self.tunnel_dialer = dialer
        _apply_settings(self, self.tunnel_settings)

    def setProtocolOptions(self, *args: Any, **options: Any) -> None:
        """autobahn's, and the protocols built from now on carry the new options."""
        super().setProtocolOptions(*args, **options)
        self.protocol = autobahn_hooks.protocol_with_options(TunnelServerProtocol, self)


class TunnelClientProtocol(_TunnelAdapter, WebSocketClientProtocol):  # type: ignore[misc]
    """The agent end of a tunnel websocket."""

    factory: TunnelClientFactory

    def closed_before_open(self, reason: str) -> None:
        # k3s's words for a tunnel whose upgrade failed ("websocket: bad handshake").
        self._log.warn(
            "Failed to connect to proxy {server}: {reason}",
            server=self.factory.tunnel_name,
            reason=reason,
        )

    def onOpen(self) -> None:
        factory = self.factory
        self._peer_name = factory.tunnel_name
        session = self._open_session(
            "client",
            factory.tunnel_clock,
            factory.tunnel_settings,
            factory.tunnel_authorizer,
            factory.tunnel_dialer,
        )
        self._log.info("tunnel: connected to {server}", server=self._peer_name)
        try:
            factory.tunnel_opened(self._peer_name, session)
        except Exception:
            self._log.failure("tunnel: reporting the session to {server}", server=self._peer_name)
            session.close("could not register the session")


class TunnelClientFactory(WebSocketClientFactory):
    """
    Builds L{TunnelClientProtocol}s: the agent's side, which accepts the
    server's Connect messages through C{authorizer} and C{dialer}.

    :param url: C{wss://<server>/v1-k3s/connect}.
    :param name: the server, for logs and for C{opened}.
    """

    protocol = TunnelClientProtocol  # type: ignore[assignment]
    # Started and stopped around every connection attempt; the tunnel logs its own lines.
    noisy = False

    def __init__(
        self,
        url: str,
        *,
        clock: IReactorTime,
        authorizer: Authorizer,
        dialer: ILocalDialer,
        opened: SessionOpened,
        settings: SessionSettings | None = None,
        name: str = "",
    ) -> None:
        super().__init__(url)
        self.tunnel_clock = clock
        self.tunnel_authorizer = authorizer
        self.tunnel_dialer = dialer
        self.tunnel_opened = opened
        self.tunnel_name = name or url
        self.tunnel_settings = settings if settings is not None else SessionSettings()
        _apply_settings(self, self.tunnel_settings)

    def setProtocolOptions(self, *args: Any, **options: Any) -> None:
        """autobahn's, and the protocols built from now on carry the new options."""
        super().setProtocolOptions(*args, **options)
        self.protocol = autobahn_hooks.protocol_with_options(TunnelClientProtocol, self)


# -- dialling through a session ------------------------------------------------------------


@implementer(IAddress)
@dataclass(frozen=True)
class TunnelAddress:
    """The far end of a tunnelled stream: C{proto} C{address} at node C{node}."""

    node: str
    proto: str
    address: str


@implementer(ITransport, IConsumer, IPushProducer, IStreamReceiver)
class StreamTransport:
    """
    A Twisted transport over a L{Stream}, so an ordinary protocol can talk
    through the tunnel.  C{connectionLost} is delivered once: after the
    peer's Error (EOF: L{ConnectionDone}, else L{ConnectionLost}), or a turn
    after L{loseConnection}.
    """

    disconnecting = False

    def __init__(self, stream: Stream, protocol: IProtocol, clock: IReactorTime, node: str) -> None:
        self._stream = stream
        self._protocol = protocol
        self._clock = clock
        self._peer = TunnelAddress(node, stream.proto, stream.address)
        self._lost = False
        #: Why the far end ended the stream (its Error message), once it has.
        self.ended_reason: str | None = None

    # ITransport

    def write(self, data: bytes) -> None:
        if not self.disconnecting:
            self._stream.write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if self.disconnecting or self._lost:
            return
        self.disconnecting = True
        self._stream.close(None)
        self._clock.callLater(0, self._connection_lost, None)

    def abortConnection(self) -> None:
        self.loseConnection()

    def getPeer(self) -> IAddress:
        return self._peer

    def getHost(self) -> IAddress:
        return TunnelAddress(self._peer.node, "tunnel", str(self._stream.conn_id))

    # Twisted's HTTP client sets TCP_NODELAY on every connection; a stream has no
    # Nagle of its own (each write is one Data message), so there is nothing to set.

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def getTcpNoDelay(self) -> bool:
        return True

    # IConsumer

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if not streaming:
            raise ValueError("a tunnel stream takes streaming (push) producers only")
        self._stream.register_producer(IPushProducer(producer))

    def unregisterProducer(self) -> None:
        self._stream.unregister_producer()

    # IPushProducer: the protocol pushes back on the peer's bytes

    def pauseProducing(self) -> None:
        self._stream.pauseProducing()

    def resumeProducing(self) -> None:
        self._stream.resumeProducing()

    def stopProducing(self) -> None:
        self.loseConnection()

    # IStreamReceiver

    def stream_data(self, data: bytes) -> None:
        if not self._lost:
            self._protocol.dataReceived(data)

    def stream_ended(self, reason: str | None) -> None:
        self._connection_lost(reason)

    def _connection_lost(self, reason: str | None) -> None:
        if self._lost:
            return
        self._lost = True
        self.ended_reason = reason
        error = ConnectionDone() if reason is None else ConnectionLost(reason)
        self._protocol.connectionLost(Failure(error))


@implementer(IStreamClientEndpoint)
class TunnelEndpoint:
    """
    Connects to C{address} at the agent's end of C{session}.

    As with remotedialer, the connection is usable at once: a refused or
    failed dial shows up as C{connectionLost} with the agent's error text.
    """

    def __init__(self, session: Session, address: str, clock: IReactorTime) -> None:
        self._session = session
        self._address = address
        self._clock = clock

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        try:
            stream = self._session.dial(self._address)
        except SessionClosed:
            return fail()
        address = TunnelAddress(self._session.name, stream.proto, stream.address)
        protocol = protocolFactory.buildProtocol(address)
        if protocol is None:
            stream.close(None)
            return fail(ConnectionRefusedError("the protocol factory refused the connection"))
        transport = StreamTransport(stream, protocol, self._clock, self._session.name)
        protocol.makeConnection(transport)
        stream.attach(transport)
        return succeed(protocol)
