"""
The agent's end of a tunnel websocket, on C{wsproto} (the sans-IO
websocket that Twisted's own C{twisted.web.websocket} is built on): the
agent process imports no autobahn (4 MiB of RSS with txaio and its native pieces).

L{AgentTunnelFactory} builds one L{AgentTunnelProtocol} per connection
attempt (under the agent's C{ClientService} and TLS).  The protocol sends
the upgrade, then feeds one client L{Session}; what autobahn did for the
agent it does itself, with the same settings as the server's end
(L{k3stw.tunnel.protocol}): binary messages only, at most C{max_frame}
bytes each, a ping every C{ping_interval}, the websocket dropped after
C{read_deadline} without any traffic, C{handshake_timeout} for the upgrade,
1 s for the close handshake.

Not C{twisted.web.websocket} itself: its client takes no Host port nor an
C{IProtocolFactory} (the agent's C{ClientService} reconnects through one),
and its protocols never see a close code or reason (a bad frame's error),
a message's size before it is whole, or a handshake that never ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit

from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError
from zope.interface import implementer

from k3stw.logs import Logger
from k3stw.tunnel.address import Authorizer
from k3stw.tunnel.interfaces import ILocalDialer, ITunnelTransport
from k3stw.tunnel.local import close_reason, tune_websocket_socket
from k3stw.tunnel.session import Frames, Session, SessionOpened, SessionSettings

__all__ = ["AgentTunnelFactory", "AgentTunnelProtocol"]

#: Seconds the server has to answer our Close before the connection is dropped.
CLOSE_HANDSHAKE_TIMEOUT = 1.0
#: What of a refused upgrade's body is kept for the log line.
_REFUSAL_BODY_LIMIT = 200
# RFC 6455 7.4.1 close codes.
_NORMAL = 1000
_UNSUPPORTED_DATA = 1003
_ABNORMAL = 1006
_TOO_BIG = 1009


@implementer(ITunnelTransport)
class AgentTunnelProtocol(Protocol):
    """
    One websocket to a server, and the client L{Session} on it once open.
    It is its session's L{ITunnelTransport}.
    """

    _log = Logger()
    factory: AgentTunnelFactory

    def __init__(self) -> None:
        self._handshake: WSConnection | None = WSConnection(ConnectionType.CLIENT)
        #: The open websocket's frames (wsproto's connection after the upgrade).
        self._frames: Connection | None = None
        self._session: Session | None = None
        self._timer: IDelayedCall | None = None
        #: Parts of the binary message being received, and their size.
        self._parts: list[bytes] = []
        self._size = 0
        #: Whether anything arrived since the last ping, and since when nothing has.
        self._heard = False
        self._silent_since = 0.0
        self._refusal: str | None = None
        #: Why the websocket ended, for the session (its first cause wins).
        self._end: str | None = None
        self._producing = False

    # -- Protocol --------------------------------------------------------------------------

    def connectionMade(self) -> None:
        assert self.transport is not None and self._handshake is not None
        tune_websocket_socket(self.transport)
        factory = self.factory
        self._schedule(factory.tunnel_settings.handshake_timeout, self._handshake_timed_out)
        self.transport.write(
            self._handshake.send(Request(host=factory.tunnel_host, target=factory.tunnel_target))
        )

    def dataReceived(self, data: bytes) -> None:
        frames = self._frames
        if frames is None:
            self._upgrade_data(data)
            return
        if frames.state is ConnectionState.CLOSED:
            return
        self._heard = True
        frames.receive_data(data)
        self._handle(frames.events())

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timer()
        session = self._session
        if session is not None:
            session.connection_lost(
                self._end or f"websocket closed ({_ABNORMAL}): {reason.getErrorMessage()}"
            )
        elif self._end is None:
            self._closed_before_open(self._refusal or reason.getErrorMessage())

    # -- ITunnelTransport ------------------------------------------------------------------

    def send_frame(self, frame: bytes) -> None:
        frames = self._frames
        # Closing: the session is ending; nothing more can go out.
        if frames is not None and frames.state is ConnectionState.OPEN:
            assert self.transport is not None
            self.transport.write(bytes(frames.send(BytesMessage(frame))))

    def send_frames(self, messages: Frames) -> None:
        """Each C{(head, payload)} as one binary message C{head + payload}, in one write."""
        frames = self._frames
        if frames is not None and frames.state is ConnectionState.OPEN:
            assert self.transport is not None
            send = frames.send
            self.transport.write(
                b"".join([send(BytesMessage(head + payload)) for head, payload in messages])
            )

    def close(self, reason: str) -> None:
        self._close(_NORMAL, reason)

    # -- the upgrade -----------------------------------------------------------------------

    def _upgrade_data(self, data: bytes) -> None:
        handshake = self._handshake
        if handshake is None:
            # Refused: only the rest of the answer's body is still arriving.
            return
        try:
            handshake.receive_data(data)
            events = list(handshake.events())
        except RemoteProtocolError as error:
            self._refused(f"websocket: bad handshake ({error})")
            return
        for event in events:
            if isinstance(event, AcceptConnection):
                self._frames = handshake.connection
                self._handshake = None
                self._opened()
            elif isinstance(event, RejectConnection):
                self._refusal = f"websocket: bad handshake (HTTP {event.status_code})"
                if not event.has_body:
                    self._refused(self._refusal)
                    return
            elif isinstance(event, RejectData):
                self._refusal_body(event)
                if event.body_finished:
                    self._refused(self._refusal or "websocket: bad handshake")
                    return
            elif self._frames is not None:
                # The server's first frames, read with its answer.
                self._handle([event])

    def _refusal_body(self, event: RejectData) -> None:
        if self._refusal is not None and len(self._refusal) < _REFUSAL_BODY_LIMIT:
            text = bytes(event.data).decode("utf-8", "replace").strip()
            if text:
                self._refusal = f"{self._refusal}: {text}"[:_REFUSAL_BODY_LIMIT]

    def _refused(self, reason: str) -> None:
        self._handshake = None
        self._end = reason
        self._closed_before_open(reason)
        assert self.transport is not None
        self.transport.loseConnection()

    def _handshake_timed_out(self) -> None:
        self._timer = None
        self._refused("websocket: opening handshake timed out")

    def _closed_before_open(self, reason: str) -> None:
        # k3s's words for a tunnel whose upgrade failed ("websocket: bad handshake").
        self._log.warn(
            "Failed to connect to proxy {server}: {reason}",
            server=self.factory.tunnel_name,
            reason=reason,
        )

    def _opened(self) -> None:
        self._cancel_timer()
        factory = self.factory
        assert self.transport is not None
        session = Session(
            self,
            factory.tunnel_clock,
            role="client",
            authorizer=factory.tunnel_authorizer,
            dialer=factory.tunnel_dialer,
            settings=factory.tunnel_settings,
            name=factory.tunnel_name,
        )
        self._session = session
        # A full socket pauses every stream's local source.
        self._producing = True
        cast(IConsumer, self.transport).registerProducer(session, True)
        self._silent_since = factory.tunnel_clock.seconds()
        self._schedule(factory.tunnel_settings.ping_interval, self._ping)
        session.start()
        self._log.info("tunnel: connected to {server}", server=factory.tunnel_name)
        try:
            factory.tunnel_opened(factory.tunnel_name, session)
        except Exception:
            self._log.failure(
                "tunnel: reporting the session to {server}", server=factory.tunnel_name
            )
            session.close("could not register the session")

    # -- the open websocket ----------------------------------------------------------------

    def _handle(self, events: Any) -> None:
        for event in events:
            if isinstance(event, BytesMessage):
                if not self._message(event):
                    return
            elif isinstance(event, Ping):
                self._reply(event.response())
            elif isinstance(event, CloseConnection):
                self._peer_closed(event)
                return
            elif isinstance(event, TextMessage):
                self._failed(_UNSUPPORTED_DATA, "binary messages only", "text websocket message")
                return
            # A Pong: being heard is all it is for.

    def _message(self, event: BytesMessage) -> bool:
        """Deliver a whole message to the session; C{False} once the websocket failed."""
        data = bytes(event.data)
        size = self._size + len(data)
        limit = self.factory.tunnel_settings.max_frame
        if size > limit:
            self._parts = []
            self._failed(_TOO_BIG, "message too big", f"websocket message over {limit} bytes")
            return False
        if not event.message_finished:
            self._parts.append(data)
            self._size = size
            return True
        if self._parts:
            self._parts.append(data)
            data = b"".join(self._parts)
            self._parts = []
            self._size = 0
        session = self._session
        if session is not None:
            session.frame_received(data)
        return True

    def _reply(self, event: Any) -> None:
        frames = self._frames
        if frames is not None and frames.state is ConnectionState.OPEN:
            assert self.transport is not None
            self.transport.write(bytes(frames.send(event)))

    def _peer_closed(self, event: CloseConnection) -> None:
        """The server's Close, its answer to ours, or wsproto's for a bad frame."""
        frames = self._frames
        assert frames is not None and self.transport is not None
        if frames.state is ConnectionState.REMOTE_CLOSING:
            self._end = self._end or f"websocket closed ({event.code}): {event.reason or ''}"
            self.transport.write(bytes(frames.send(event.response())))
        elif frames.state is ConnectionState.OPEN:
            # wsproto could not parse the server's frames: it says why in the event.
            self._failed(event.code, event.reason or "protocol error", "websocket protocol error")
            return
        self._stop_producing()
        self.transport.loseConnection()

    def _failed(self, code: int, reason: str, what: str) -> None:
        """The server broke the websocket's rules: say so in the log, to it, and to the session."""
        self._log.warn(
            "tunnel {server}: {what} ({reason}); closing",
            server=self.factory.tunnel_name,
            what=what,
            reason=reason,
        )
        self._end = f"{what} ({code}): {reason}"
        self._close(code, reason)
        if self._session is not None:
            self._session.connection_lost(self._end)

    def _close(self, code: int, reason: str) -> None:
        frames = self._frames
        if frames is None or frames.state is not ConnectionState.OPEN:
            return
        assert self.transport is not None
        self._end = self._end or f"websocket closed ({code}): {reason}"
        self.transport.write(bytes(frames.send(CloseConnection(code, close_reason(reason)))))
        # The session produces into the websocket's transport no more, and a
        # TLS transport closes only once its producer is unregistered: now,
        # rather than when the server answers, so that the transport's owner
        # can close it at once.
        self._stop_producing()
        self._schedule(CLOSE_HANDSHAKE_TIMEOUT, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self._timer = None
        assert self.transport is not None
        self.transport.loseConnection()

    def _stop_producing(self) -> None:
        if self._producing:
            self._producing = False
            assert self.transport is not None
            cast(IConsumer, self.transport).unregisterProducer()

    def _ping(self) -> None:
        self._timer = None
        frames = self._frames
        if frames is None or frames.state is not ConnectionState.OPEN:
            return
        settings = self.factory.tunnel_settings
        now = self.factory.tunnel_clock.seconds()
        if self._heard:
            self._heard = False
            self._silent_since = now
        elif now - self._silent_since >= settings.read_deadline:
            self._log.warn(
                "tunnel {server}: nothing heard for {seconds:g} s; closing",
                server=self.factory.tunnel_name,
                seconds=now - self._silent_since,
            )
            self._end = f"websocket closed ({_ABNORMAL}): ping timeout"
            assert self.transport is not None
            self._stop_producing()
            cast(ITCPTransport, self.transport).abortConnection()
            return
        self._reply(Ping())
        self._schedule(settings.ping_interval, self._ping)

    # -- timers ----------------------------------------------------------------------------

    def _schedule(self, delay: float, call: Callable[[], None]) -> None:
        self._cancel_timer()
        self._timer = self.factory.tunnel_clock.callLater(delay, call)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()


class AgentTunnelFactory(Factory[AgentTunnelProtocol]):
    """
    Builds L{AgentTunnelProtocol}s: the agent's side, which accepts the
    server's Connect messages through C{authorizer} and C{dialer}.

    :param url: C{wss://<server>/v1-k3s/connect}.
    :param name: the server, for logs and for C{opened}.
    """

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
        parts = urlsplit(url)
        #: The Host header (with its port, as autobahn and Go send it) and the path.
        self.tunnel_host = parts.netloc
        self.tunnel_target = parts.path or "/"
        self.tunnel_clock = clock
        self.tunnel_authorizer = authorizer
        self.tunnel_dialer = dialer
        self.tunnel_opened = opened
        self.tunnel_name = name or url
        self.tunnel_settings = settings if settings is not None else SessionSettings()

    def buildProtocol(self, addr: IAddress | None) -> AgentTunnelProtocol:
        protocol = AgentTunnelProtocol()
        protocol.factory = self
        return protocol
