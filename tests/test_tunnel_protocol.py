"""
The tunnel's adapters: an autobahn client/server pair over C{iosim}, plain
and behind TLS, the TCP stream pump on a L{StringTransport}, and dialling
through L{TunnelEndpoint}.  (What they take from autobahn's internals is
checked in C{test_autobahn_hooks}.)
"""

from __future__ import annotations

import datetime
import socket
from typing import Any, cast

from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import ISystemHandle, ITransport
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase, TestCase

from k3stw.pki.certs import SubjectAltNames, Usage, new_ca, new_leaf
from k3stw.pki.tls import PinnedCAPolicy
from k3stw.tunnel.address import loopback_ports_authorizer
from k3stw.tunnel.protocol import (
    TunnelClientFactory,
    TunnelClientProtocol,
    TunnelEndpoint,
    TunnelServerFactory,
    TunnelServerProtocol,
    TunnelStreamProtocol,
)
from k3stw.tunnel.session import Session
from tests.support.tunnel import (
    Collector,
    FakeDialer,
    QueueTransport,
    TunnelEnds,
    connect_in_memory,
    run_autobahn_timers_on,
    tls_server,
)

KUBELET = "127.0.0.1:10250"


class WebSocketPairTests(SynchronousTestCase):
    """A server and an agent joined by autobahn over iosim, timers on a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        run_autobahn_timers_on(self, self.clock)
        self.checked: list[ConnectionRequest] = []
        self.deny: ConnectionDeny | None = None
        # Late bound: a test may replace the check.
        self.ends = TunnelEnds(
            self.clock, check=lambda request, transport: self.check(request, transport),
            name="server-a",
        )  # fmt: skip
        self.server_sessions = self.ends.server_sessions
        self.client_sessions = self.ends.client_sessions
        self.dialer = self.ends.dialer

    def check(self, request: ConnectionRequest, transport: ITransport) -> str:
        self.checked.append(request)
        if self.deny is not None:
            raise self.deny
        return "node-1"

    def connect(self, greet: bool = True) -> tuple[Any, Any, iosim.IOPump]:
        address = IPv4Address("TCP", "127.0.0.71", 40000)
        return connect_in_memory(self.ends.server, self.ends.client, self.clock, address, greet)

    def close(self, protocol: Any, pump: iosim.IOPump) -> None:
        protocol.sendClose()
        pump.flush()
        self.clock.advance(2)

    def test_options_are_explicit(self) -> None:
        """Limits, keepalive and handshake timeouts are set, not autobahn's defaults."""
        server, client, pump = self.connect()
        for proto in (server, client):
            self.assertEqual(proto.maxMessagePayloadSize, 1024 * 1024)
            self.assertEqual(proto.autoPingInterval, 5.0)
            self.assertEqual(proto.autoPingTimeout, 60.0)
            self.assertEqual(proto.openHandshakeTimeout, 5.0)
        server.sendClose()
        pump.flush()
        self.clock.advance(2)

    def test_stream_end_to_end(self) -> None:
        """The server dials the agent's kubelet through the tunnel, and bytes flow both ways."""
        _server, client, pump = self.connect()
        self.assertEqual([name for name, _ in self.server_sessions], ["node-1"])
        self.assertEqual([name for name, _ in self.client_sessions], ["server-a"])
        server_session = self.server_sessions[0][1]

        endpoint = TunnelEndpoint(server_session, KUBELET, self.clock)
        collector = Collector()
        self.successResultOf(endpoint.connect(Factory.forProtocol(lambda: collector)))
        assert collector.transport is not None
        collector.transport.write(b"GET /healthz HTTP/1.1\r\n\r\n")
        pump.flush()

        self.assertEqual(self.dialer.dials, [("tcp", KUBELET)])
        (conn_id,) = self.dialer.streams
        self.assertEqual(self.dialer.receivers[conn_id].data, b"GET /healthz HTTP/1.1\r\n\r\n")
        agent_stream = self.dialer.streams[conn_id]
        agent_stream.write(b"HTTP/1.1 200 OK\r\n\r\nok")
        agent_stream.close()
        pump.flush()
        self.assertEqual(collector.received, b"HTTP/1.1 200 OK\r\n\r\nok")
        assert collector.lost is not None
        self.assertTrue(collector.lost.check(ConnectionDone))

        refused = Collector()
        TunnelEndpoint(server_session, "127.0.0.1:22", self.clock).connect(
            Factory.forProtocol(lambda: refused)
        )
        pump.flush()
        assert refused.lost is not None
        self.assertTrue(refused.lost.check(ConnectionLost))
        self.assertIn("connect not allowed", refused.lost.getErrorMessage())
        self.assertFalse(server_session.ended.called)

        client.sendClose()
        pump.flush()
        self.clock.advance(2)
        self.assertTrue(server_session.ended.called)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_large_writes_arrive_in_32k_messages(self) -> None:
        """A write larger than a Data message arrives whole, as 32 KiB messages, both ways."""
        server, client, pump = self.connect()
        endpoint = TunnelEndpoint(self.server_sessions[0][1], KUBELET, self.clock)
        collector = Collector()
        self.successResultOf(endpoint.connect(Factory.forProtocol(lambda: collector)))
        assert collector.transport is not None
        collector.transport.write(b"open")
        pump.flush()
        (conn_id,) = self.dialer.streams
        sent = bytes(range(256)) * 400  # 102,400 bytes: 3 full messages and 4 KiB
        messages = client.trafficStats.incomingWebSocketMessages
        collector.transport.write(sent)
        pump.flush()
        self.assertEqual(self.dialer.receivers[conn_id].data, b"open" + sent)
        self.assertEqual(client.trafficStats.incomingWebSocketMessages - messages, 4)
        messages = server.trafficStats.incomingWebSocketMessages
        self.dialer.streams[conn_id].write(sent[::-1])
        pump.flush()
        self.assertEqual(collector.received, sent[::-1])
        self.assertEqual(server.trafficStats.incomingWebSocketMessages - messages, 4)
        self.close(server, pump)

    def test_pings_keep_the_tunnel_up(self) -> None:
        """Pings every 5 s keep an idle tunnel open past the 60 s read deadline."""
        _server, client, pump = self.connect()
        for _ in range(30):
            self.clock.advance(5)
            pump.flush()
        self.assertFalse(self.server_sessions[0][1].ended.called)
        self.assertFalse(self.client_sessions[0][1].ended.called)
        client.sendClose()
        pump.flush()
        self.clock.advance(2)

    def test_silent_peer_is_dropped_after_the_read_deadline(self) -> None:
        """A peer that stops answering is dropped once the read deadline passes."""
        _server, _client, pump = self.connect()
        session = self.client_sessions[0][1]
        # Nothing the server sends reaches the client any more, and vice versa.
        for _ in range(14):
            self.clock.advance(5)
        self.assertFalse(session.ended.called)
        self.clock.advance(60)
        pump.flush()
        self.clock.advance(5)
        pump.flush()
        self.assertTrue(session.ended.called)
        self.assertTrue(self.server_sessions[0][1].ended.called)

    def test_refused_upgrade(self) -> None:
        """The check's ConnectionDeny refuses the websocket, and the refusal is logged."""
        self.deny = ConnectionDeny(401, "failed authentication")
        with capturedLogs() as events:
            _server, _client, _pump = self.connect()
        self.assertEqual(self.server_sessions, [])
        self.assertEqual(self.client_sessions, [])
        self.assertEqual(len(self.checked), 1)
        self.assertTrue(
            any("refused websocket" in (event.get("log_format") or "") for event in events)
        )
        self.clock.advance(10)

    def test_broken_check_is_logged(self) -> None:
        """A check that raises refuses with 500 and logs the failure itself."""
        self.deny = ConnectionDeny(401, "x")

        def broken(request: ConnectionRequest, transport: ITransport) -> str:
            return str(1 // 0)

        self.patch(self, "check", broken)
        self.connect()
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.server_sessions, [])
        self.clock.advance(10)


class TLSWebSocketTests(SynchronousTestCase):
    """
    A tunnel websocket over TLS, as in production: the session is the
    streaming producer of the TLS transport, whose C{loseConnection} waits
    until its producer is unregistered.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        run_autobahn_timers_on(self, self.clock)
        now = datetime.datetime.now(datetime.UTC)
        server_ca, client_ca = new_ca("k3s-server-ca@1", now), new_ca("k3s-client-ca@1", now)
        serving = new_leaf(
            server_ca, "k3s", Usage.SERVER, now, alt_names=SubjectAltNames.of(["127.0.0.73"])
        )
        node = new_leaf(client_ca, "system:node:node-1", Usage.CLIENT, now, ["system:nodes"])
        self.ends = TunnelEnds(self.clock, "wss://127.0.0.73:6443/v1-k3s/connect")
        creator = PinnedCAPolicy(server_ca.certificate_pem, node).creatorForNetloc(
            b"127.0.0.73", 6443
        )
        self.server, self.client, self.pump = connect_in_memory(
            tls_server(self.ends.server, serving, server_ca, client_ca, self.clock),
            TLSMemoryBIOFactory(creator, True, self.ends.client, self.clock),
            self.clock,
        )
        self.pump.flush()
        self.lost: list[Failure] = []
        websocket = self.client.wrappedProtocol
        self.patch(websocket, "connectionLost", lambda reason: self.record_lost(websocket, reason))

    def record_lost(self, websocket: Any, reason: Failure) -> None:
        self.lost.append(reason)
        type(websocket).connectionLost(websocket, reason)

    def produces_until_closed(self, session: Session, tls: Any) -> None:
        """
        A full socket under C{tls} pauses C{session} (every stream's local
        source); once closed, the session is no producer of it any more.
        """
        socket = tls.transport
        socket.producer.pauseProducing()
        self.assertTrue(session.paused)
        socket.producer.resumeProducing()
        self.assertFalse(session.paused)
        session.close("test over")
        self.assertIsNone(socket.producer)
        self.pump.flush()
        self.assertEqual(len(self.lost), 1)

    def test_the_agents_session_produces_into_tls_until_it_closes(self) -> None:
        """The agent's end: its session produces into TLS until it closes."""
        self.produces_until_closed(self.ends.client_session, self.client)

    def test_the_servers_session_produces_into_tls_until_it_closes(self) -> None:
        """The server's end: its session produces into TLS until it closes."""
        self.produces_until_closed(self.ends.server_session, self.server)

    def test_a_closed_session_lets_tls_close_at_once(self) -> None:
        """
        Closing the session, then the TLS transport (as the agent's tunnel
        service does when it stops), ends the connection in one exchange: the
        server hears the Close, both sessions end, nothing stays scheduled.
        """
        session = self.ends.client_session
        session.close("tunnel stopped")
        self.client.loseConnection()
        self.pump.flush()
        self.assertEqual(len(self.lost), 1)
        self.assertTrue(self.lost[0].check(ConnectionDone))
        self.assertEqual(self.successResultOf(session.ended), "tunnel stopped")
        self.assertEqual(
            self.successResultOf(self.ends.server_session.ended),
            "websocket closed (1000): tunnel stopped",
        )
        self.clock.advance(2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_silent_server_holds_the_close_one_second_at_most(self) -> None:
        """
        A server that never answers (neither the websocket Close nor TLS's
        close_notify) holds the connection only until the close handshake
        times out.
        """
        self.ends.client_session.close("tunnel stopped")
        self.client.loseConnection()
        socket = self.client.transport
        self.clock.advance(0.9)
        self.assertFalse(socket.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(socket.disconnecting)
        self.pump.flush()
        self.assertEqual(len(self.lost), 1)
        self.clock.advance(2)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class StreamPumpTests(SynchronousTestCase):
    """L{TunnelStreamProtocol} joins a local TCP connection to a stream."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.frames = QueueTransport()
        self.session = Session(self.frames, self.clock, role="server")
        self.session.start()
        self.addCleanup(self.session.close)

    def test_producers_both_ways(self) -> None:
        """The stream produces into the socket and the socket into the stream."""
        stream = self.session.dial(KUBELET)
        protocol = TunnelStreamProtocol(stream)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertIs(transport.producer, protocol)
        self.assertTrue(transport.streaming)

        protocol.dataReceived(b"to the peer")
        self.assertEqual(self.frames.sent[-1].data, b"to the peer")  # type: ignore[union-attr]
        self.session.frame_received(
            b"\x02" + bytes([stream.conn_id * 2]) + b"\x02\x00from the peer"
        )
        self.assertEqual(transport.value(), b"from the peer")

        # The socket is full: the peer's bytes are held.
        producer = transport.producer
        assert producer is not None
        producer.pauseProducing()
        self.session.frame_received(b"\x02" + bytes([stream.conn_id * 2]) + b"\x02\x00more")
        self.assertEqual(stream.buffered, 4)
        producer.resumeProducing()
        self.assertEqual(transport.value(), b"from the peermore")

        # The peer is full: the socket stops reading.
        self.session.frame_received(b"\x02" + bytes([stream.conn_id * 2]) + b"\x0c")
        self.assertEqual(transport.producerState, "paused")
        self.session.frame_received(b"\x02" + bytes([stream.conn_id * 2]) + b"\x0e")
        self.assertEqual(transport.producerState, "producing")

    def test_peer_eof_closes_the_socket(self) -> None:
        """The peer's EOF unregisters the producer and closes the socket."""
        stream = self.session.dial(KUBELET)
        protocol = TunnelStreamProtocol(stream)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.session.frame_received(b"\x02" + bytes([stream.conn_id * 2]) + b"\x06EOF")
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(transport.producer)

    def test_socket_error_is_sent(self) -> None:
        """A socket that fails sends its error text; a clean close sends EOF."""
        for reason, text in [
            (Failure(ConnectionLost("reset")), "Connection to the other side was lost"),
            (Failure(ConnectionDone()), "EOF"),
        ]:
            stream = self.session.dial(KUBELET)
            protocol = TunnelStreamProtocol(stream)
            protocol.makeConnection(StringTransport())
            protocol.connectionLost(reason)
            self.assertIn(text, self.frames.sent[-1].text)  # type: ignore[union-attr]
            self.assertTrue(stream.closed)


class RealSocketTests(TestCase):
    """Socket options that only a real TCP connection has."""

    async def test_websockets_turn_nagle_off(self) -> None:
        """
        Both ends of a tunnel websocket set TCP_NODELAY: a TLS handshake
        through the tunnel is small messages in a row, which Nagle would hold
        for the peer's delayed ACK.
        """
        from twisted.internet import reactor as real_reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint

        live: Any = real_reactor
        opened: dict[str, Deferred[Session]] = {"server": Deferred(), "client": Deferred()}
        server_factory = TunnelServerFactory(
            check=lambda request, transport: "node-1",
            opened=lambda name, session: opened["server"].callback(session),
            clock=live,
        )
        accepted: list[TunnelServerProtocol] = []

        class Recording(TunnelServerProtocol):
            def connectionMade(self) -> None:
                super().connectionMade()
                accepted.append(self)

        server_factory.protocol = Recording
        port = await TCP4ServerEndpoint(live, 0, interface="127.0.0.72").listen(server_factory)
        self.addCleanup(port.stopListening)
        client_factory = TunnelClientFactory(
            f"ws://127.0.0.72:{port.getHost().port}/v1-k3s/connect",
            clock=live,
            authorizer=loopback_ports_authorizer({10250}),
            dialer=FakeDialer(),
            opened=lambda name, session: opened["client"].callback(session),
        )
        # The endpoint answers the protocol the factory built.
        client = cast(
            TunnelClientProtocol,
            await TCP4ClientEndpoint(live, "127.0.0.72", port.getHost().port).connect(
                client_factory
            ),
        )
        assert client.transport is not None
        self.addCleanup(client.transport.loseConnection)
        for side in opened.values():
            side.addTimeout(10, live)
            await side
        for transport in (client.transport, accepted[0].transport):
            # A TCP transport's handle is its socket.
            handle = cast(socket.socket, cast(ISystemHandle, transport).getHandle())
            self.assertTrue(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
