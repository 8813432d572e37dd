"""
In-memory fakes of the tunnel's interfaces (L{k3stw.tunnel.interfaces}):
a pair of websocket stand-ins that queue frames until pumped, a local dialer,
a stream receiver and a push producer that record what happens to them; and
real connections in memory: the two ends' websocket factories, joined by
C{iosim}, behind TLS as the supervisor port serves them, with autobahn's
timers on the test's clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import txaio
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from k3stw.pki.certs import KeyPair
from k3stw.pki.tls import server_tls_options
from k3stw.tunnel.address import loopback_ports_authorizer
from k3stw.tunnel.client import AgentTunnelFactory
from k3stw.tunnel.codec import Message, Unknown, decode
from k3stw.tunnel.interfaces import ILocalDialer, IStreamReceiver, ITunnelTransport
from k3stw.tunnel.protocol import TunnelClientFactory, TunnelServerFactory
from k3stw.tunnel.session import Session, Stream


def run_autobahn_timers_on(case: SynchronousTestCase, clock: IReactorTime) -> None:
    """Point autobahn's timers (C{txaio.config.loop}) at C{clock} until C{case} ends."""
    # txaio.use_twisted() sets txaio.config at import; txaio's types do not declare it.
    case.patch(cast(Any, txaio).config, "loop", clock)


@implementer(ITunnelTransport)
class QueueTransport:
    """Frames a session sent, waiting to be delivered by L{pump}."""

    def __init__(self) -> None:
        self.queued: list[bytes] = []
        self.sent: list[Message | Unknown] = []
        self.closed: str | None = None

    def send_frame(self, frame: bytes) -> None:
        self.queued.append(frame)
        self.sent.append(decode(frame))

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason

    def kinds(self) -> list[str]:
        """The class names of every message sent, in order."""
        return [type(message).__name__ for message in self.sent]


def pump(*pairs: tuple[QueueTransport, Session]) -> int:
    """
    Deliver queued frames (C{transport}'s frames go to C{session}) until
    none are left; return how many were delivered.
    """
    delivered = 0
    while any(transport.queued for transport, _ in pairs):
        for transport, session in pairs:
            frames, transport.queued = transport.queued, []
            for frame in frames:
                session.frame_received(frame)
                delivered += 1
    return delivered


@implementer(IStreamReceiver)
class RecordingReceiver:
    """Collects a stream's bytes and its end."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.ended = False
        self.reason: str | None = None
        self.on_data: Callable[[bytes], None] | None = None

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def stream_data(self, data: bytes) -> None:
        self.chunks.append(data)
        if self.on_data is not None:
            self.on_data(data)

    def stream_ended(self, reason: str | None) -> None:
        assert not self.ended, "stream_ended twice"
        self.ended = True
        self.reason = reason


@implementer(IPushProducer)
class RecordingProducer:
    """A local source that remembers whether it is paused."""

    def __init__(self) -> None:
        self.paused = False
        self.stopped = False
        self.pauses = 0

    def pauseProducing(self) -> None:
        assert not self.paused, "paused twice"
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        assert self.paused, "resumed while not paused"
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


@implementer(ILocalDialer)
class FakeDialer:
    """
    Local dials in memory.  By default every dial connects at once to a new
    L{RecordingReceiver} with a L{RecordingProducer}; C{refuse} makes dials to
    those addresses fail; C{hold} leaves dials pending in C{pending}.
    """

    def __init__(self) -> None:
        self.dials: list[tuple[str, str]] = []
        self.streams: dict[int, Stream] = {}
        self.receivers: dict[int, RecordingReceiver] = {}
        self.producers: dict[int, RecordingProducer] = {}
        self.refuse: set[str] = set()
        self.hold = False
        self.pending: dict[int, Deferred[None]] = {}

    def dial(self, proto: str, address: str, stream: Stream) -> Deferred[None]:
        self.dials.append((proto, address))
        if address in self.refuse:
            return fail(ConnectionRefusedError(address))
        self.streams[stream.conn_id] = stream
        if self.hold:
            waiting: Deferred[None] = Deferred()
            self.pending[stream.conn_id] = waiting
            return waiting
        self.connect(stream)
        return succeed(None)

    def connect(self, stream: Stream) -> RecordingReceiver:
        """Attach a receiver and producer to C{stream}, as a connected socket would."""
        receiver = self.receivers[stream.conn_id] = RecordingReceiver()
        producer = self.producers[stream.conn_id] = RecordingProducer()
        stream.register_producer(producer)
        stream.attach(receiver)
        return receiver


#: A websocket upgrade of C{/v1-k3s/connect}, as an agent sends it.
UPGRADE = (
    b"GET /v1-k3s/connect HTTP/1.1\r\n"
    b"Host: 127.0.0.90:6443\r\n"
    b"Connection: Upgrade\r\n"
    b"Upgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"\r\n"
)


def tls_server(
    wrapped: IProtocolFactory,
    serving: KeyPair,
    server_ca: KeyPair,
    client_ca: KeyPair,
    clock: IReactorTime,
) -> TLSMemoryBIOFactory:
    """
    C{wrapped} behind TLS as the supervisor port serves it: C{serving}
    chained to C{server_ca}, a client certificate from C{client_ca} asked for.
    Its small writes are gathered on C{clock}.
    """
    options = server_tls_options(serving, server_ca.certificate_pem, client_ca)
    return TLSMemoryBIOFactory(options, False, wrapped, clock)


def connect_in_memory(
    server_factory: IProtocolFactory,
    client_factory: IProtocolFactory,
    clock: Clock,
    peer: IPv4Address | None = None,
    greet: bool = False,
) -> tuple[Any, Any, iosim.IOPump]:
    """
    A protocol of each factory, joined by C{iosim}: C{(server, client,
    pump)}.  Nothing moves until the pump is flushed (at once if C{greet}),
    which also runs what is due on C{clock}.
    """
    address = peer if peer is not None else IPv4Address("TCP", "127.0.0.1", 40000)
    server: IProtocol | None = server_factory.buildProtocol(address)
    client: IProtocol | None = client_factory.buildProtocol(address)
    assert server is not None and client is not None
    pump = iosim.connect(
        server,
        iosim.makeFakeServer(server),
        client,
        iosim.makeFakeClient(client),
        greet=greet,
        clock=clock,
    )
    return server, client, pump


class Collector(Protocol):
    """A protocol that remembers what it got, and why its connection ended."""

    def __init__(self) -> None:
        self.received = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = reason


class TunnelEnds:
    """
    The two ends' websocket factories on C{clock}, each recording the
    sessions it opens as C{(peer name, session)}.  The agent's end lets the
    server reach port 10250 through C{dialer}.

    :param check: the server's check of each upgrade (default: every one is node-1).
    :param agent: the agent's end: autobahn's (as older agents ran it) or the
        agent's own L{AgentTunnelFactory}.
    """

    def __init__(
        self,
        clock: IReactorTime,
        url: str = "ws://127.0.0.70:6443/v1-k3s/connect",
        *,
        check: Callable[[ConnectionRequest, ITransport], str] | None = None,
        dialer: FakeDialer | None = None,
        name: str = "",
        agent: type[TunnelClientFactory | AgentTunnelFactory] = TunnelClientFactory,
    ) -> None:
        self.server_sessions: list[tuple[str, Session]] = []
        self.client_sessions: list[tuple[str, Session]] = []
        self.dialer = dialer if dialer is not None else FakeDialer()
        self.server = TunnelServerFactory(
            check=check if check is not None else lambda request, transport: "node-1",
            opened=lambda peer, session: self.server_sessions.append((peer, session)),
            clock=clock,
        )
        self.client = agent(
            url,
            clock=clock,
            authorizer=loopback_ports_authorizer({10250}),
            dialer=self.dialer,
            opened=lambda peer, session: self.client_sessions.append((peer, session)),
            name=name,
        )

    @property
    def server_session(self) -> Session:
        """The one session the server's end opened."""
        ((_, session),) = self.server_sessions
        return session

    @property
    def client_session(self) -> Session:
        """The one session the agent's end opened."""
        ((_, session),) = self.client_sessions
        return session
