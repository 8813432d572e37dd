"""
The contract of L{k3stw.tunnel.autobahn_hooks} with the installed autobahn:
every private name the hooks use exists with the shape they rely on, the
fast path writes byte for byte what autobahn's C{sendMessage} writes, a
websocket whose handshake was trimmed still works, the options live on the
protocol class, and C{WebSocketResource} takes an HTTP connection over as the
hook that frees its channel expects.  An autobahn upgrade that breaks a hook
fails here.
"""

from __future__ import annotations

import inspect
import random
from collections import deque
from collections.abc import Callable
from typing import Any

from autobahn.twisted import websocket as autobahn_twisted_websocket
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.xormasker import create_xor_masker  # type: ignore[attr-defined]
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from k3stw.tunnel import autobahn_hooks
from k3stw.tunnel.protocol import (
    TunnelEndpoint,
    TunnelServerFactory,
    TunnelServerProtocol,
)
from k3stw.tunnel.session import Session
from tests.support.tunnel import (
    UPGRADE,
    Collector,
    TunnelEnds,
    connect_in_memory,
    run_autobahn_timers_on,
)

KUBELET = "127.0.0.1:10250"
#: Messages whose lengths take each of the three header forms (7, 16 and 64 bits), at the edges.
PAYLOADS: list[tuple[bytes, bytes | memoryview]] = [
    (b"", b"z"),
    (b"head", b"x" * 121),
    (b"h", memoryview(b"y" * 125)),
    (b"", b"w" * 0xFFFF),
    (b"head", memoryview(b"v" * 0xFFFC)),
    (b"h", b"u" * 70_000),
]
_OUTGOING = (
    "outgoingWebSocketMessages",
    "outgoingWebSocketFrames",
    "outgoingOctetsAppLevel",
    "outgoingOctetsWebSocketLevel",
    "outgoingOctetsWireLevel",
)


class TunnelPair(SynchronousTestCase):
    """A tunnel server and agent joined by autobahn over iosim, timers on a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        run_autobahn_timers_on(self, self.clock)
        self.ends = TunnelEnds(self.clock)

    def connect(self, greet: bool = True) -> tuple[Any, Any, iosim.IOPump]:
        return connect_in_memory(self.ends.server, self.ends.client, self.clock, greet=greet)

    def close(self, protocol: Any, pump: iosim.IOPump) -> None:
        protocol.sendClose()
        pump.flush()
        self.clock.advance(2)
        self.assertEqual(self.clock.getDelayedCalls(), [])


def plain_pair(clock: Clock) -> tuple[Any, Any, iosim.IOPump]:
    """autobahn's own protocols, untouched by any hook, open over iosim."""
    server_factory = WebSocketServerFactory()
    server_factory.protocol = WebSocketServerProtocol
    client_factory = WebSocketClientFactory("ws://127.0.0.70:6443/v1-k3s/connect")
    client_factory.protocol = WebSocketClientProtocol
    return connect_in_memory(server_factory, client_factory, clock, greet=True)


class PrivateNamesTests(SynchronousTestCase):
    """Each private name the hooks use is there, with the shape they rely on."""

    def setUp(self) -> None:
        self.clock = Clock()
        run_autobahn_timers_on(self, self.clock)

    def test_masker(self) -> None:
        """C{create_xor_masker(key, length).process(data)} XORs C{data} with the key repeated."""
        key = bytes((0x12, 0x34, 0x56, 0x78))
        data = bytes(range(256)) * 3 + b"tail"
        expected = bytes(byte ^ key[index % 4] for index, byte in enumerate(data))
        self.assertEqual(create_xor_masker(key, len(data)).process(data), expected)

    def test_open_protocol_state(self) -> None:
        """
        An open protocol's C{state} is C{STATE_OPEN}; the send path's queue
        (a deque, empty), C{autoFragmentSize} (0: none), C{trafficStats}'s
        outgoing counters and the masking options are where the fast path reads them.
        """
        server, client, _ = plain_pair(self.clock)
        self.assertNotEqual(WebSocketProtocol.STATE_OPEN, WebSocketProtocol.STATE_CLOSED)
        for protocol in (server, client):
            self.assertEqual(protocol.state, WebSocketProtocol.STATE_OPEN)
            self.assertTrue(autobahn_hooks.is_open(protocol))
            self.assertIsInstance(protocol.send_queue, deque)
            self.assertEqual(len(protocol.send_queue), 0)
            self.assertEqual(protocol.autoFragmentSize, 0)
            for counter in _OUTGOING:
                self.assertIsInstance(getattr(protocol.trafficStats, counter), int, counter)
            self.assertIs(protocol.failedByMe, False)
            self.assertTrue(protocol.applyMask)
            self.assertIsNone(protocol._perMessageCompress)
        self.assertIs(server.factory.isServer, True)
        self.assertIs(client.factory.isServer, False)
        self.assertIs(client.maskClientFrames, True)
        self.assertIs(server.maskServerFrames, False)
        self.assertEqual((autobahn_hooks.masks_frames(server), autobahn_hooks.masks_frames(client)),
                         (False, True))  # fmt: skip
        server.sendClose()
        self.assertFalse(autobahn_hooks.is_open(server))

    def test_data_received_and_message_end(self) -> None:
        """
        C{_dataReceived(data)} is autobahn's parser; when a message ends,
        C{failedByMe} is false, C{message_data} holds its parts and
        C{message_is_binary} its type, and the hooks deliver it whole.
        """
        self.assertEqual(
            list(inspect.signature(WebSocketProtocol._dataReceived).parameters), ["self", "data"]
        )
        server, client, pump = plain_pair(self.clock)
        self.patch(server, "dataReceived", lambda data: autobahn_hooks.receive(server, data))
        seen: list[tuple[bool, list[bytes], bool]] = []
        delivered: list[tuple[bytes, bool]] = []

        def message_end() -> None:
            seen.append((server.failedByMe, list(server.message_data), server.message_is_binary))
            autobahn_hooks.deliver_message(server)
            self.assertIsNone(server.message_data)

        self.patch(server, "onMessageEnd", message_end)
        self.patch(server, "onMessage", lambda *message: delivered.append(message))
        client.sendMessage(b"one, two", isBinary=True, fragmentSize=3)
        client.sendMessage(b"three", isBinary=False)
        pump.flush()
        self.assertEqual(delivered, [(b"one, two", True), (b"three", False)])
        ((failed, parts, binary), _) = seen
        self.assertEqual((failed, b"".join(parts), binary), (False, b"one, two", True))
        self.assertGreater(len(parts), 1)

    def test_handshake_leftovers(self) -> None:
        """
        What the opening handshake leaves on an open protocol is in its
        C{__dict__} under the names the hook empties, as bytes, text or
        dicts; the peer certificate is on its C{transport_details}.
        """
        server, client, _ = plain_pair(self.clock)
        for name in autobahn_hooks.HANDSHAKE_LEFTOVERS:
            kept = [vars(protocol)[name] for protocol in (server, client) if name in vars(protocol)]
            self.assertNotEqual(kept, [], name)
            for value in kept:
                self.assertIsInstance(value, bytes | str | dict, name)
        for protocol in (server, client):
            self.assertTrue(hasattr(protocol.transport_details, "peer_cert"))

    def test_config_attrs(self) -> None:
        """
        Each role's C{CONFIG_ATTRS} names the options a factory holds, and
        autobahn copies into a new connection only those its class lacks.
        """
        for protocol, factory in (
            (WebSocketServerProtocol, WebSocketServerFactory()),
            (WebSocketClientProtocol, WebSocketClientFactory("ws://127.0.0.70:6443/")),
        ):
            self.assertIn("autoPingInterval", protocol.CONFIG_ATTRS)
            for name in protocol.CONFIG_ATTRS:
                self.assertTrue(hasattr(factory, name), name)
        source = inspect.getsource(WebSocketProtocol._connectionMade)
        self.assertIn("if not hasattr(self, configAttr)", source)


class FastPathTests(TunnelPair):
    """L{autobahn_hooks.send_binary_messages} writes what C{sendMessage} writes."""

    def both_ways(
        self,
        protocol: Any,
        frames: list[tuple[bytes, bytes | memoryview]],
        prepare: Callable[[], None] = lambda: None,
    ) -> None:
        """
        The fast path writes what C{sendMessage} writes for C{frames} (with
        the same random mask keys, each after C{prepare}), and advances the
        traffic counters as it does.
        """
        stats = protocol.trafficStats
        written: list[list[bytes]] = []
        advanced: list[list[int]] = []
        state = random.getstate()
        try:
            for send in (self.fast_path, self.send_message):
                written.append([])
                protocol.transport.write = written[-1].append
                prepare()
                before = [getattr(stats, counter) for counter in _OUTGOING]
                random.seed(7)
                send(protocol, frames)
                # autobahn trickles a queue out a write per turn.
                while protocol.send_queue:
                    self.clock.advance(0.001)
                self.clock.advance(0.001)
                now = [getattr(stats, counter) for counter in _OUTGOING]
                advanced.append([after - was for was, after in zip(before, now, strict=True)])
        finally:
            del protocol.transport.write
            random.setstate(state)
        fast, slow = written
        self.assertEqual(b"".join(fast), b"".join(slow))
        self.assertEqual(advanced[0], advanced[1])

    @staticmethod
    def fast_path(protocol: Any, frames: list[tuple[bytes, bytes | memoryview]]) -> None:
        masked = autobahn_hooks.masks_frames(protocol)
        autobahn_hooks.send_binary_messages(protocol, frames, masked)

    @staticmethod
    def send_message(protocol: Any, frames: list[tuple[bytes, bytes | memoryview]]) -> None:
        for head, payload in frames:
            protocol.sendMessage(head + payload, isBinary=True)

    def test_frames_are_autobahns_unmasked_and_masked(self) -> None:
        """
        The server's frames (unmasked) and the agent's (masked, with the same
        random key) are byte for byte autobahn's, every length form, all in one write.
        """
        server, client, pump = self.connect()
        for protocol in (server, client):
            written: list[bytes] = []
            protocol.transport.write = written.append
            autobahn_hooks.send_binary_messages(
                protocol, PAYLOADS, autobahn_hooks.masks_frames(protocol)
            )
            del protocol.transport.write
            self.assertEqual(len(written), 1)
            self.both_ways(protocol, PAYLOADS)
        self.close(server, pump)

    def test_the_tunnels_data_frames_take_the_fast_path(self) -> None:
        """
        A stream's data leaves as autobahn's frames, several messages in one
        write (the session's transport uses the hook).
        """
        server, client, pump = self.connect()
        sessions = (self.ends.server_session, self.ends.client_session)
        for protocol, session in zip((server, client), sessions, strict=True):
            written: list[bytes] = []
            protocol.transport.write = written.append
            state = random.getstate()
            try:
                random.seed(7)
                session._transport.send_frames(PAYLOADS[:3])  # type: ignore[attr-defined]
                random.seed(7)
                for head, payload in PAYLOADS[:3]:
                    protocol.sendMessage(head + payload, isBinary=True)
            finally:
                del protocol.transport.write
                random.setstate(state)
            self.assertEqual(len(written), 1 + 3)
            self.assertEqual(written[0], b"".join(written[1:]))
        self.close(server, pump)

    def test_queued_or_fragmenting_protocols_use_send_message(self) -> None:
        """
        While autobahn fragments, or trickles a queue out, the frames are
        its own, sent in order after what is queued.
        """
        server, client, pump = self.connect()
        server.autoFragmentSize = 1000
        self.both_ways(server, PAYLOADS)
        del server.autoFragmentSize
        self.both_ways(client, PAYLOADS, lambda: client.sendData(b"queued bytes", chopsize=4))
        self.close(server, pump)


class HandshakeTrimmingTests(TunnelPair):
    """L{autobahn_hooks.forget_handshake} frees the handshake and nothing else."""

    def test_open_websocket_forgets_its_handshake(self) -> None:
        """
        Once open, neither end keeps the opening handshake: its request and
        response, the headers, the peer certificate autobahn renders as text.
        """
        rendered: list[object] = []

        def peer_certificate(transport: object) -> dict[str, str]:
            rendered.append(transport)
            return {"subject": "CN=system:node:node-1"}

        self.patch(autobahn_twisted_websocket, "extract_peer_certificate", peer_certificate)
        self.patch(autobahn_twisted_websocket, "transport_channel_id", lambda *a: None)
        server, client, pump = self.connect(greet=False)
        # As over TLS: autobahn renders the peer certificate when the websocket opens.
        server.transport_details.is_secure = True
        pump.flush()
        self.assertEqual(len(self.ends.server_sessions), 1)
        self.assertEqual(len(rendered), 1)
        self.assertIsNone(server.transport_details.peer_cert)
        for proto in (server, client):
            self.assertEqual(proto.http_headers, {})
            self.assertEqual(proto.http_request_data, b"")
            self.assertEqual(proto.http_status_line, "")
            for name in autobahn_hooks.HANDSHAKE_LEFTOVERS:
                self.assertFalse(vars(proto).get(name), name)
        self.assertEqual(server.http_response_data, "")
        self.close(server, pump)

    def test_a_trimmed_websocket_still_works(self) -> None:
        """
        After trimming, a stream carries bytes both ways, pings keep the
        tunnel up past the read deadline, and the close handshake is clean.
        """
        server, client, pump = self.connect()
        endpoint = TunnelEndpoint(self.ends.server_session, KUBELET, self.clock)
        collector = Collector()
        self.successResultOf(endpoint.connect(Factory.forProtocol(lambda: collector)))
        assert collector.transport is not None
        collector.transport.write(b"GET /healthz HTTP/1.1\r\n\r\n")
        pump.flush()
        dialer = self.ends.dialer
        (conn_id,) = dialer.streams
        self.assertEqual(dialer.receivers[conn_id].data, b"GET /healthz HTTP/1.1\r\n\r\n")
        dialer.streams[conn_id].write(b"HTTP/1.1 200 OK\r\n\r\nok")
        pump.flush()
        self.assertEqual(collector.received, b"HTTP/1.1 200 OK\r\n\r\nok")
        for _ in range(30):
            self.clock.advance(5)
            pump.flush()
        self.assertFalse(self.ends.client_session.ended.called)
        closed: list[tuple[bool, int | None]] = []
        self.patch(server, "onClose", lambda clean, code, reason: closed.append((clean, code)))
        client.sendClose(code=1000)
        pump.flush()
        self.assertEqual(closed, [(True, 1000)])
        self.clock.advance(2)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class OptionsOnTheClassTests(TunnelPair):
    """L{autobahn_hooks.protocol_with_options}: the options live on the protocol class."""

    def test_options_are_not_copied_into_each_connection(self) -> None:
        """
        autobahn's options live on the factory's protocol class: no connection
        carries its own copy of them (3.3 KB per idle tunnel on the server).
        """
        server, client, pump = self.connect()
        for proto in (server, client):
            self.assertEqual([name for name in proto.CONFIG_ATTRS if name in vars(proto)], [])
            # A function option is not turned into a method of the protocol.
            self.assertIsNone(proto.perMessageCompressionAccept([]))
        self.close(server, pump)

    def test_options_set_later_reach_new_connections(self) -> None:
        """setProtocolOptions on a factory still applies to the connections it builds next."""
        factory = TunnelServerFactory(
            check=lambda request, transport: "node-1", opened=lambda n, s: None, clock=self.clock
        )
        factory.setProtocolOptions(autoPingInterval=7.5)
        protocol: Any = factory.buildProtocol(IPv4Address("TCP", "127.0.0.71", 40000))
        protocol.makeConnection(StringTransport())
        self.assertIsInstance(protocol, TunnelServerProtocol)
        self.assertEqual(protocol.autoPingInterval, 7.5)
        self.assertEqual(protocol.maxMessagePayloadSize, 1024 * 1024)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.clock.advance(10)


class TakeoverTests(SynchronousTestCase):
    """L{autobahn_hooks.release_http_channel}: how C{WebSocketResource} takes a connection."""

    def setUp(self) -> None:
        self.clock = Clock()
        run_autobahn_timers_on(self, self.clock)
        #: Each rendered request's channel.
        self.channels: list[HTTPChannel] = []

    def upgrade(self, resource: IResource) -> StringTransport:
        """
        Send an upgrade through a Site serving C{resource}, whose every
        request is left open (C{NOT_DONE_YET}); the hook runs after each render.
        """
        channels = self.channels

        class Rendering(Request):
            def render(self, resource: IResource) -> None:
                channel = self.channel
                super().render(resource)
                channels.append(channel)
                autobahn_hooks.release_http_channel(self)

        site = Site(resource, reactor=self.clock)
        site.requestFactory = Rendering
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.1.1", 40000))
        protocol = site.buildProtocol(transport.getPeer())
        assert protocol is not None
        # As a TCP connection's transport, which autobahn hands to its protocol.
        transport.protocol = protocol  # type: ignore[attr-defined]
        protocol.makeConnection(transport)
        protocol.dataReceived(UPGRADE)
        return transport

    def test_the_websocket_takes_the_channels_transport(self) -> None:
        """
        After rendering an upgrade, the websocket protocol has the transport
        and the HTTP channel has none (the hook's sign that it was taken over).
        """
        sessions: list[Session] = []
        factory = TunnelServerFactory(
            check=lambda request, transport: "node-1",
            opened=lambda name, session: sessions.append(session),
            clock=self.clock,
        )
        transport = self.upgrade(WebSocketResource(factory))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "), transport.value())
        self.assertEqual(len(sessions), 1)
        websocket = transport.protocol  # type: ignore[attr-defined]
        self.assertIsInstance(websocket, TunnelServerProtocol)
        self.assertIs(websocket.transport, transport)
        (channel,) = self.channels
        self.assertIsNone(channel.transport)
        sessions[0].close("test over")
        websocket.connectionLost(Failure(ConnectionDone()))
        self.clock.advance(10)

    def test_a_channel_keeping_its_connection_is_left_alone(self) -> None:
        """A request refused over HTTP leaves the channel its transport; the hook does nothing."""

        class Plain(Resource):
            isLeaf = True

            def render(self, request: Request) -> int:
                # As TunnelConnectResource refuses: the answer comes later, the request open.
                self.request = request
                return NOT_DONE_YET

        plain = Plain()
        transport = self.upgrade(plain)
        (channel,) = self.channels
        self.assertIs(channel.transport, transport)
        plain.request.write(b"refused")
        plain.request.finish()
        self.assertIn(b"refused", transport.value())
        channel.connectionLost(Failure(ConnectionDone()))
