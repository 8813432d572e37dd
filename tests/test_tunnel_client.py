"""
The agent's end of the tunnel on wsproto (L{k3stw.tunnel.client}) against
the server's end (autobahn, L{TunnelServerFactory}) over C{iosim}, plain and
behind TLS, every timer on a Clock: the session opens on both ends, bytes
flow, pings keep it up, a silent or misbehaving server is dropped with a
clear reason, and a refused or stalled upgrade is logged in k3s's words.
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Sequence
from typing import Any

from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from k3stw.pki.certs import SubjectAltNames, Usage, new_ca, new_leaf
from k3stw.pki.tls import PinnedCAPolicy
from k3stw.tunnel.client import AgentTunnelFactory, AgentTunnelProtocol
from k3stw.tunnel.codec import Data, encode
from k3stw.tunnel.protocol import TunnelEndpoint
from tests.support.tunnel import (
    Collector,
    TunnelEnds,
    connect_in_memory,
    run_autobahn_timers_on,
    tls_server,
)

KUBELET = "127.0.0.1:10250"
URL = "wss://127.0.0.70:6443/v1-k3s/connect"


def messages(events: Sequence[LogEvent]) -> list[str]:
    return [formatEvent(event) for event in events]


class AgentEnd(TunnelEnds):
    """The new agent's factory and the server's, the server recording each upgrade."""

    def __init__(self, case: SynchronousTestCase, clock: Clock) -> None:
        run_autobahn_timers_on(case, clock)
        self.checked: list[ConnectionRequest] = []
        self.deny: ConnectionDeny | None = None
        super().__init__(clock, URL, check=self.check, name="server-a", agent=AgentTunnelFactory)

    def check(self, request: ConnectionRequest, transport: ITransport) -> str:
        self.checked.append(request)
        if self.deny is not None:
            raise self.deny
        return "node-1"


class _Refusing(Protocol):
    """Answers any request with a plain-text 401."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 401 Unauthorized\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(self.body), self.body)
        )


class NewAgentTests(SynchronousTestCase):
    """The wsproto agent and autobahn's server end, joined over iosim."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.ends = AgentEnd(self, self.clock)

    def connect(self) -> tuple[Any, AgentTunnelProtocol, iosim.IOPump]:
        address = IPv4Address("TCP", "127.0.0.71", 40000)
        server, client, pump = connect_in_memory(
            self.ends.server, self.ends.client, self.clock, address, greet=True
        )
        return server, client, pump

    def open_stream(self, pump: iosim.IOPump) -> tuple[Collector, int]:
        """A stream from the server to the kubelet, which has read C{open}: its two ends."""
        collector = Collector()
        endpoint = TunnelEndpoint(self.ends.server_session, KUBELET, self.clock)
        self.successResultOf(endpoint.connect(Factory.forProtocol(lambda: collector)))
        assert collector.transport is not None
        collector.transport.write(b"open")
        pump.flush()
        (conn_id,) = self.ends.dialer.streams
        return collector, conn_id

    def test_upgrade_as_the_old_agent_sent_it(self) -> None:
        """The upgrade names the server's host and port and /v1-k3s/connect, and opens."""
        self.connect()
        (request,) = self.ends.checked
        self.assertEqual((request.host, request.path), ("127.0.0.70", "/v1-k3s/connect"))
        self.assertEqual(request.headers["host"], "127.0.0.70:6443")
        self.assertEqual([name for name, _ in self.ends.server_sessions], ["node-1"])
        self.assertEqual([name for name, _ in self.ends.client_sessions], ["server-a"])

    def test_stream_end_to_end(self) -> None:
        """The server dials the kubelet through the new agent; bytes flow; a refused
        Connect ends only its stream; the agent's close ends the server's session."""
        _server, _client, pump = self.connect()
        server_session = self.ends.server_session
        collector = Collector()
        endpoint = TunnelEndpoint(server_session, KUBELET, self.clock)
        self.successResultOf(endpoint.connect(Factory.forProtocol(lambda: collector)))
        assert collector.transport is not None
        collector.transport.write(b"GET /healthz HTTP/1.1\r\n\r\n")
        pump.flush()
        self.assertEqual(self.ends.dialer.dials, [("tcp", KUBELET)])
        (conn_id,) = self.ends.dialer.streams
        self.assertEqual(self.ends.dialer.receivers[conn_id].data, b"GET /healthz HTTP/1.1\r\n\r\n")
        agent_stream = self.ends.dialer.streams[conn_id]
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

        self.ends.client_session.close("tunnel stopped")
        pump.flush()
        self.assertEqual(
            self.successResultOf(server_session.ended), "websocket closed (1000): tunnel stopped"
        )
        self.clock.advance(2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_large_writes_arrive_whole_both_ways(self) -> None:
        """102,400 bytes each way arrive whole (32 KiB Data messages)."""
        _server, _client, pump = self.connect()
        collector, conn_id = self.open_stream(pump)
        sent = bytes(range(256)) * 400
        assert collector.transport is not None
        collector.transport.write(sent)
        pump.flush()
        self.assertEqual(self.ends.dialer.receivers[conn_id].data, b"open" + sent)
        self.ends.dialer.streams[conn_id].write(sent[::-1])
        pump.flush()
        self.assertEqual(collector.received, sent[::-1])

    def test_a_message_in_pieces_arrives_whole(self) -> None:
        """A Data message whose frame arrives in three reads is delivered once, whole."""
        server, _client, pump = self.connect()
        _, conn_id = self.open_stream(pump)
        payload = bytes(range(256)) * 160
        message = encode(Data(7, conn_id, payload))
        frame = struct.pack("!BBH", 0x82, 126, len(message)) + message
        for piece in (frame[:5], frame[5:20000], frame[20000:]):
            server.transport.write(piece)
            pump.flush()
        self.assertEqual(self.ends.dialer.receivers[conn_id].data, b"open" + payload)

    def test_the_server_closing_ends_the_agents_session(self) -> None:
        """The server's Close is answered; the agent's session ends with its code and reason."""
        _server, _client, pump = self.connect()
        self.ends.server_session.close("server stopping")
        pump.flush()
        self.assertEqual(
            self.successResultOf(self.ends.client_session.ended),
            "websocket closed (1000): server stopping",
        )
        self.clock.advance(2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_pings_keep_the_tunnel_up(self) -> None:
        """Pings every 5 s keep an idle tunnel open well past the 60 s read deadline."""
        _server, _client, pump = self.connect()
        for _ in range(30):
            self.clock.advance(5)
            pump.flush()
        self.assertFalse(self.ends.server_session.ended.called)
        self.assertFalse(self.ends.client_session.ended.called)

    def test_silent_server_is_dropped_after_the_read_deadline(self) -> None:
        """A server that stops answering is dropped once 60 s passed without a byte from it."""
        _server, _client, pump = self.connect()
        session = self.ends.client_session
        with capturedLogs() as events:
            for _ in range(12):
                self.clock.advance(5)
            self.assertFalse(session.ended.called)
            self.clock.advance(5)
            pump.flush()
        self.assertEqual(
            self.successResultOf(session.ended), "websocket closed (1006): ping timeout"
        )
        self.assertIn("tunnel server-a: nothing heard for 60 s; closing", messages(events))

    def test_refused_upgrade_is_logged_in_k3s_words(self) -> None:
        """autobahn's 401 (the check in onConnect): logged with its status; no session."""
        self.ends.deny = ConnectionDeny(401, "failed authentication")
        with capturedLogs() as events:
            _server, _client, pump = self.connect()
            pump.flush()
        self.assertEqual(self.ends.client_sessions, [])
        lines = [line for line in messages(events) if "Failed to connect to proxy" in line]
        self.assertEqual(
            lines, ["Failed to connect to proxy server-a: websocket: bad handshake (HTTP 401)"]
        )
        self.clock.advance(10)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refusal_body_is_logged(self) -> None:
        """
        The supervisor's own 401 (TunnelConnectResource, in plain text, as
        remotedialer answers): the body is in the log line.
        """
        client = self.ends.client.buildProtocol(None)
        refusing = _Refusing(b"failed authentication")
        with capturedLogs() as events:
            pump = iosim.connect(
                refusing,
                iosim.makeFakeServer(refusing),
                client,
                iosim.makeFakeClient(client),
                clock=self.clock,
            )
            pump.flush()
        self.assertTrue(pump.clientIO.disconnected)
        self.assertIn(
            "Failed to connect to proxy server-a: "
            "websocket: bad handshake (HTTP 401): failed authentication",
            messages(events),
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stalled_upgrade_times_out(self) -> None:
        """A server that never answers the upgrade is given 5 s."""
        client = self.ends.client.buildProtocol(None)
        silent = Protocol()
        with capturedLogs() as events:
            pump = iosim.connect(
                silent,
                iosim.makeFakeServer(silent),
                client,
                iosim.makeFakeClient(client),
                clock=self.clock,
            )
            self.clock.advance(4.9)
            self.assertFalse(pump.clientIO.disconnected)
            self.clock.advance(0.1)
            pump.flush()
        self.assertTrue(pump.clientIO.disconnected)
        self.assertIn(
            "Failed to connect to proxy server-a: websocket: opening handshake timed out",
            messages(events),
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])


class MisbehavingServerTests(SynchronousTestCase):
    """A server that breaks the websocket's or the tunnel's rules gets a clear error."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.ends = AgentEnd(self, self.clock)
        address = IPv4Address("TCP", "127.0.0.71", 40000)
        self.server, self.client, self.pump = connect_in_memory(
            self.ends.server, self.ends.client, self.clock, address, greet=True
        )

    def ended(self, send: Any) -> tuple[str, list[str]]:
        """What the agent's session ended with, and the log, after C{send()}."""
        with capturedLogs() as events:
            send()
            self.pump.flush()
        self.clock.advance(2)
        return self.successResultOf(self.ends.client_session.ended), messages(events)

    def test_bad_frame(self) -> None:
        """A frame with a reserved opcode: Close 1002 to the server, wsproto's words in the log."""
        reason, log = self.ended(lambda: self.server.transport.write(b"\x83\x00"))
        self.assertEqual(reason, "websocket protocol error (1002): Invalid opcode 0x3")
        self.assertIn(
            "tunnel server-a: websocket protocol error (Invalid opcode 0x3); closing", log
        )
        server_end = self.successResultOf(self.ends.server_session.ended)
        self.assertIn("(1002)", server_end)

    def test_text_message(self) -> None:
        """A text message ends the tunnel: binary messages only (1003)."""
        reason, _ = self.ended(lambda: self.server.sendMessage(b"hello", isBinary=False))
        self.assertEqual(reason, "text websocket message (1003): binary messages only")

    def test_message_over_the_limit(self) -> None:
        """A message over 1 MiB is refused (1009) before it is whole, with one log line."""
        # A 2 MiB frame of which only the first 1 MiB and 1 byte arrive, in two writes.
        head = struct.pack("!BBQ", 0x82, 127, 2 * 1024 * 1024)

        def send() -> None:
            self.server.transport.write(head + b"\x01" * (1024 * 1024 - 10))
            self.pump.flush()
            self.server.transport.write(b"\x01" * 11)

        reason, log = self.ended(send)
        self.assertEqual(reason, "websocket message over 1048576 bytes (1009): message too big")
        self.assertEqual(
            [line for line in log if "closing" in line],
            ["tunnel server-a: websocket message over 1048576 bytes (message too big); closing"],
        )

    def test_tunnel_protocol_error(self) -> None:
        """A well-formed websocket message that is no tunnel message ends the session."""
        reason, _ = self.ended(lambda: self.server.sendMessage(b"\x80", isBinary=True))
        self.assertIn("protocol error", reason)


class NewAgentOverTLSTests(SynchronousTestCase):
    """The new agent behind TLS with a node certificate, as the agent's tunnel runs it."""

    def test_session_produces_into_tls_until_closed(self) -> None:
        """
        A full socket under TLS pauses the agent's session; once the session
        closes, it is no producer of the TLS transport, the server hears the
        Close and the connection ends without any timer left.
        """
        clock = Clock()
        ends = AgentEnd(self, clock)
        now = datetime.datetime.now(datetime.UTC)
        server_ca, client_ca = new_ca("k3s-server-ca@1", now), new_ca("k3s-client-ca@1", now)
        serving = new_leaf(
            server_ca, "k3s", Usage.SERVER, now, alt_names=SubjectAltNames.of(["127.0.0.70"])
        )
        node = new_leaf(client_ca, "system:node:node-1", Usage.CLIENT, now, ["system:nodes"])
        creator = PinnedCAPolicy(server_ca.certificate_pem, node).creatorForNetloc(
            b"127.0.0.70", 6443
        )
        _server, client, pump = connect_in_memory(
            tls_server(ends.server, serving, server_ca, client_ca, clock),
            TLSMemoryBIOFactory(creator, True, ends.client, clock),
            clock,
        )
        pump.flush()
        session = ends.client_session
        socket = client.transport
        socket.producer.pauseProducing()
        self.assertTrue(session.paused)
        socket.producer.resumeProducing()
        self.assertFalse(session.paused)
        session.close("tunnel stopped")
        self.assertIsNone(socket.producer)
        client.loseConnection()
        pump.flush()
        self.assertEqual(
            self.successResultOf(ends.server_session.ended),
            "websocket closed (1000): tunnel stopped",
        )
        self.assertTrue(pump.clientIO.disconnected)
        clock.advance(2)
        self.assertEqual(clock.getDelayedCalls(), [])
