"""
kubectl's websockets answered by the API server (L{k3stw.apiserver.streams}),
in memory: exec's v5 channels translated to SPDY streams to the kubelet and
back (stdin's half-close, the Status on channel 3, a refusal, a kubelet or a
client that goes away mid-stream, back-pressure both ways), and
port-forward's SPDY carried in binary messages.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.test.requesthelper import DummyRequest

from k3stw.apiserver.nodeproxy import NodeProxy
from k3stw.apiserver.streams import decode_error_stream, serve_websocket, translated
from k3stw.spdy import Data, Frame, GoAway, SpdyCodec, SynReply, SynStream
from tests.support.tunnel import run_autobahn_timers_on
from tests.test_node_proxy import InMemoryNodeProxy, MemoryKubelet, node

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
EXEC = b"/exec/default/p/c?command=cat&error=1&input=1&output=1"
TTY = b"/exec/default/p/c?command=sh&input=1&output=1&tty=1"
PORTFORWARD = b"/portForward/default/p"
SPDY_SWITCHED = (
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
    b"X-Stream-Protocol-Version: %s\r\n\r\n"
)


def handshake(protocols: bytes) -> bytes:
    return (
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:6443\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: " + protocols + b"\r\n\r\n"
    )


def client_frame(payload: bytes, opcode: int = 2) -> bytes:
    """A masked client frame (a zero mask leaves the payload as it is)."""
    size = len(payload)
    if size < 126:
        length = bytes([0x80 | size])
    elif size < 65536:
        length = bytes([0x80 | 126]) + struct.pack(">H", size)
    else:
        length = bytes([0x80 | 127]) + struct.pack(">Q", size)
    return bytes([0x80 | opcode]) + length + b"\0\0\0\0" + payload


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of each whole frame the server wrote."""
    frames = []
    while data:
        opcode, size = data[0] & 0x0F, data[1] & 0x7F
        offset = 2
        if size == 126:
            (size,) = struct.unpack(">H", data[2:4])
            offset = 4
        elif size == 127:
            (size,) = struct.unpack(">Q", data[2:10])
            offset = 10
        frames.append((opcode, data[offset : offset + size]))
        data = data[offset + size :]
    return frames


class ClientTransport(StringTransport):
    """Unregistering no producer is allowed, as on TCP and TLS transports (autobahn does so)."""

    def unregisterProducer(self) -> None:
        self.producer = None


class Streams(Resource):
    isLeaf = True

    def __init__(self, proxy: NodeProxy, target: bytes, subresource: str) -> None:
        super().__init__()
        self.proxy = proxy
        self.target = target
        self.subresource = subresource
        self.errors: list[Failure] = []
        self.translated: list[bool] = []

    def render(self, request: Request) -> int:
        self.translated.append(translated(request, self.subresource))
        serving = Deferred.fromCoroutine(
            serve_websocket(request, self.proxy, "agent-1", self.target, self.subresource)
        )
        serving.addErrback(self.errors.append)
        return NOT_DONE_YET


class Case(SynchronousTestCase):
    target = EXEC
    subresource = "exec"

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        run_autobahn_timers_on(self, self.reactor)
        self.proxy = InMemoryNodeProxy({"agent-1": node("agent-1", 10250)}, self.reactor)
        self.resource = Streams(self.proxy, self.target, self.subresource)
        site = Site(self.resource, reactor=self.reactor)
        site.timeOut = None
        self.channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert self.channel is not None
        self.client = ClientTransport()
        self.channel.makeConnection(self.client)
        self.reader = SpdyCodec()
        self.writer = SpdyCodec()

    @property
    def kubelet(self) -> MemoryKubelet:
        return self.proxy.kubelet

    def client_protocol(self) -> Protocol:
        protocol = self.client.protocol  # type: ignore[attr-defined]
        assert isinstance(protocol, Protocol)
        return protocol

    def answer(self, protocols: bytes) -> bytes:
        """Send the websocket request; the HTTP head the client got."""
        assert self.channel is not None
        self.channel.dataReceived(handshake(protocols))
        answer: bytes = self.client.value()
        head, _, rest = answer.partition(b"\r\n\r\n")
        self.client.clear()
        self.client.write(rest)
        return head

    def received(self) -> list[tuple[int, bytes]]:
        frames = server_frames(self.client.value())
        self.client.clear()
        return frames

    def send(self, payload: bytes, opcode: int = 2) -> None:
        self.client_protocol().dataReceived(client_frame(payload, opcode))

    def kubelet_sent(self) -> list[Frame]:
        transport = self.kubelet.transports[0]
        frames = self.reader.feed(transport.value())
        transport.clear()
        return frames

    def kubelet_send(self, *frames: Frame) -> None:
        self.kubelet.respond(b"".join(self.writer.encode(f) for f in frames))

    def end(self) -> None:
        """Both connections end; nothing is left on the clock."""
        for protocol in self.kubelet.protocols:
            protocol.connectionLost(Failure(ConnectionDone()))
        self.client_protocol().connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.resource.errors, [])
        # txaio's batched timers stay on the clock, cancelled, until their bucket is due.
        self.reactor.advance(61)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


def status_of(frame: tuple[int, bytes]) -> dict[str, Any]:
    opcode, payload = frame
    assert (opcode, payload[:1]) == (2, b"\x03"), frame
    status: dict[str, Any] = json.loads(payload[1:])
    return status


class TranslatorTests(Case):
    def start(self, protocol: bytes = b"v4.channel.k8s.io") -> None:
        """Answer the websocket, switch the kubelet to SPDY."""
        head = self.answer(b"v4.channel.k8s.io, v5.channel.k8s.io")
        self.assertIn(b"101 Switching Protocols", head)
        self.assertIn(b"Sec-WebSocket-Protocol: v5.channel.k8s.io", head)
        self.assertEqual(self.resource.translated, [True])
        # The lowest writable channel tells the client the streams are up.
        self.assertEqual(self.received(), [(2, b"\x01")])
        self.kubelet.respond(SPDY_SWITCHED % protocol)
        transport = self.kubelet.transports[0]
        self.request, _, rest = transport.value().partition(b"\r\n\r\n")
        transport.clear()
        transport.write(rest)

    def test_exec_both_ways(self) -> None:
        """Channels 0-2 to and from the kubelet's streams; its exit Status on channel 3."""
        self.start()
        self.assertEqual(
            self.request.split(b"\r\n"),
            [
                b"POST " + EXEC + b" HTTP/1.1",
                b"Host: agent-1:10250",
                b"Connection: Upgrade",
                b"Upgrade: SPDY/3.1",
                b"X-Stream-Protocol-Version: v5.channel.k8s.io",
                b"X-Stream-Protocol-Version: v4.channel.k8s.io",
                b"X-Stream-Protocol-Version: v3.channel.k8s.io",
                b"X-Stream-Protocol-Version: v2.channel.k8s.io",
                b"X-Stream-Protocol-Version: channel.k8s.io",
                b"Content-Length: 0",
            ],
        )
        # What the client sends before the streams are up waits for them.
        self.send(b"\x00early")
        opened = self.kubelet_sent()
        self.assertEqual(
            [(f.stream_id, f.headers) for f in opened if isinstance(f, SynStream)],
            [
                (1, [(b"streamtype", b"error")]),
                (3, [(b"streamtype", b"stdin")]),
                (5, [(b"streamtype", b"stdout")]),
                (7, [(b"streamtype", b"stderr")]),
            ],
        )
        self.kubelet_send(*(SynReply(i, []) for i in (1, 3, 5, 7)))
        self.assertEqual(self.kubelet_sent(), [Data(3, b"early")])
        self.send(b"\x00more")
        self.send(b"\xff\x00")
        self.assertEqual(self.kubelet_sent(), [Data(3, b"more"), Data(3, b"", fin=True)])
        self.kubelet_send(Data(5, b"out"), Data(7, b"err"), Data(5, b"", fin=True))
        self.assertEqual(self.received(), [(2, b"\x01out"), (2, b"\x02err")])
        exit_status = {
            "metadata": {},
            "status": "Failure",
            "message": "command terminated with non-zero exit code: exit 3",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
        }
        self.kubelet_send(Data(1, json.dumps(exit_status).encode(), fin=True))
        self.assertEqual(self.received(), [])
        self.kubelet_send(Data(7, b"", fin=True))
        status, close = self.received()
        self.assertEqual(
            status_of(status),
            {
                "metadata": {},
                "status": "Failure",
                "message": "command terminated with non-zero exit code: "
                "command terminated with exit code 3",
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
            },
        )
        self.assertEqual(close[0], 8)
        self.assertIsInstance(self.kubelet_sent()[-1], GoAway)
        self.assertTrue(self.kubelet.transports[0].disconnecting)
        self.end()

    def test_back_pressure_both_ways(self) -> None:
        """Once the streams are up each connection pauses the other."""
        self.start()
        self.kubelet_send(*(SynReply(i, []) for i in (1, 3, 5, 7)))
        kubelet = self.kubelet.transports[0]
        self.assertIs(self.client.producer, kubelet)
        self.assertIs(kubelet.producer, self.client)
        self.end()

    def test_tty_resizes(self) -> None:
        """With a terminal: no stderr stream, a resize stream fed from channel 4."""
        self.resource.target = TTY
        self.start()
        opened = [f.headers for f in self.kubelet_sent() if isinstance(f, SynStream)]
        kinds = [dict(h)[b"streamtype"] for h in opened]
        self.assertEqual(kinds, [b"error", b"stdin", b"stdout", b"resize"])
        self.kubelet_send(*(SynReply(i, []) for i in (1, 3, 5, 7)))
        self.send(b'\x04{"Width":80,"Height":24}')
        self.assertEqual(self.kubelet_sent(), [Data(7, b'{"Width":80,"Height":24}')])
        self.kubelet_send(Data(1, b'{"metadata":{},"status":"Success"}', fin=True))
        self.kubelet_send(Data(5, b"", fin=True))
        status, _ = self.received()
        self.assertEqual(status_of(status), {"metadata": {}, "status": "Success"})
        self.end()

    def test_kubelet_refuses(self) -> None:
        """A kubelet that does not switch: its words in an InternalError on channel 3."""
        self.answer(b"v5.channel.k8s.io")
        self.received()
        self.kubelet.respond(
            b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 16\r\n\r\nnot implemented\n"
        )
        status, close = self.received()
        self.assertEqual(
            status_of(status)["message"],
            "Internal error occurred: unable to upgrade connection: not implemented",
        )
        self.assertEqual(status_of(status)["code"], 500)
        self.assertEqual(close[0], 8)
        # Reading (paused until the streams were up) resumes for the client's close.
        self.assertEqual(self.client.producerState, "producing")
        self.end()

    def test_kubelet_refuses_with_a_status(self) -> None:
        self.answer(b"v5.channel.k8s.io")
        self.received()
        body = json.dumps({"kind": "Status", "status": "Failure", "code": 404, "message": "no"})
        self.kubelet.respond(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body.encode())
        )
        status, _ = self.received()
        self.assertEqual(status_of(status)["message"], "no")
        self.end()

    def test_kubelet_dies_mid_stream(self) -> None:
        """Output so far is delivered, then an error (not success) on channel 3."""
        self.start()
        self.kubelet_send(*(SynReply(i, []) for i in (1, 3, 5, 7)), Data(5, b"partial"))
        self.kubelet.protocols[0].connectionLost(Failure(ConnectionLost("reset by peer")))
        out, status, close = self.received()
        self.assertEqual(out, (2, b"\x01partial"))
        self.assertIn("error reading from error stream", status_of(status)["message"])
        self.assertEqual(close[0], 8)
        self.end()

    def test_client_goes_away_mid_stream(self) -> None:
        """The kubelet's connection is told GOAWAY and closed."""
        self.start()
        self.kubelet_send(*(SynReply(i, []) for i in (1, 3, 5, 7)))
        self.client_protocol().connectionLost(Failure(ConnectionLost()))
        self.assertIsInstance(self.kubelet_sent()[-1], GoAway)
        self.assertTrue(self.kubelet.transports[0].disconnecting)
        self.end()

    def test_streams_not_answered_in_time(self) -> None:
        self.start()
        self.reactor.advance(30)
        status, _ = self.received()
        self.assertEqual(status_of(status)["message"], "Internal error occurred: timeout")
        self.end()


class ErrorStreamTests(SynchronousTestCase):
    def test_decoding(self) -> None:
        """client-go's v4 decoder, then the translator's re-encoding; v1-v3 are plain text."""
        v4 = "v4.channel.k8s.io"
        self.assertEqual(decode_error_stream(v4, b""), {"metadata": {}, "status": "Success"})
        other = b'{"status":"Failure","reason":"InternalError","message":"boom"}'
        self.assertEqual(decode_error_stream(v4, other)["message"], "Internal error occurred: boom")
        bad = b'{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[]}}'
        self.assertEqual(
            decode_error_stream(v4, bad)["message"],
            "Internal error occurred: error stream protocol error: no ExitCode cause given",
        )
        self.assertIn("error stream protocol error", decode_error_stream(v4, b"{")["message"])
        self.assertEqual(
            decode_error_stream("v2.channel.k8s.io", b"oops")["message"],
            "Internal error occurred: error executing remote command: oops",
        )


class TunnelTests(Case):
    target = PORTFORWARD
    subresource = "portforward"

    def test_spdy_in_binary_messages(self) -> None:
        """A plain SPDY upgrade to the kubelet; after its 101 the bytes travel as messages."""
        assert self.channel is not None
        self.channel.dataReceived(handshake(b"SPDY/3.1+portforward.k8s.io"))
        self.assertEqual(self.resource.translated, [True])
        request = self.kubelet.transports[0].value()
        self.assertEqual(
            request.split(b"\r\n")[:5],
            [
                b"POST " + PORTFORWARD + b" HTTP/1.1",
                b"Host: agent-1:10250",
                b"Connection: Upgrade",
                b"Upgrade: SPDY/3.1",
                b"X-Stream-Protocol-Version: portforward.k8s.io",
            ],
        )
        self.assertEqual(self.client.value(), b"")
        self.kubelet.respond(SPDY_SWITCHED % b"portforward.k8s.io" + b"\x80\x03first")
        head, _, rest = self.client.value().partition(b"\r\n\r\n")
        self.assertIn(b"101 Switching Protocols", head)
        self.assertIn(b"Sec-WebSocket-Protocol: SPDY/3.1+portforward.k8s.io", head)
        self.assertEqual(server_frames(rest), [(2, b"\x80\x03first")])
        self.client.clear()
        self.kubelet.transports[0].clear()
        self.send(b"\x00\x00\x00\x01spdy")
        self.assertEqual(self.kubelet.transports[0].value(), b"\x00\x00\x00\x01spdy")
        self.assertIs(self.client.producer, self.kubelet.transports[0])
        self.assertIs(self.kubelet.transports[0].producer, self.client)
        # The kubelet's end closes the websocket.
        self.kubelet.protocols[0].connectionLost(Failure(ConnectionDone()))
        self.assertEqual([opcode for opcode, _ in self.received()], [8])
        self.end()

    def test_client_closing_closes_the_kubelet(self) -> None:
        assert self.channel is not None
        self.channel.dataReceived(handshake(b"SPDY/3.1+portforward.k8s.io"))
        self.kubelet.respond(SPDY_SWITCHED % b"portforward.k8s.io")
        self.client_protocol().connectionLost(Failure(ConnectionLost()))
        self.assertTrue(self.kubelet.transports[0].disconnecting)
        self.end()

    def test_bad_handshake_closes_the_kubelet(self) -> None:
        """autobahn refuses a malformed websocket over HTTP; the kubelet's SPDY goes."""
        assert self.channel is not None
        self.channel.dataReceived(handshake(b"SPDY/3.1+portforward.k8s.io").replace(KEY, b"a2V5"))
        self.kubelet.respond(SPDY_SWITCHED % b"portforward.k8s.io")
        self.assertTrue(self.client.value().startswith(b"HTTP/1.1 400 "), self.client.value())
        self.assertTrue(self.kubelet.transports[0].disconnecting)
        self.end()

    def test_refusal_relayed(self) -> None:
        """A kubelet that does not switch: its answer goes back as HTTP, no websocket."""
        assert self.channel is not None
        self.channel.dataReceived(handshake(b"SPDY/3.1+portforward.k8s.io"))
        self.kubelet.respond(
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 18\r\n\r\n"
            b"pod does not exist"
        )
        answer = self.client.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 404 Not Found\r\n"), answer)
        self.assertTrue(answer.endswith(b"\r\n\r\npod does not exist"), answer)
        self.assertEqual(self.resource.errors, [])


class TranslatedTests(SynchronousTestCase):
    def test_which_requests(self) -> None:
        """Only v5 exec/attach and SPDY-tunnelling port-forward websockets are answered here."""

        def request(upgrade: bytes, protocols: bytes) -> Any:
            r = DummyRequest([])
            r.requestHeaders.setRawHeaders(b"upgrade", [upgrade])
            r.requestHeaders.setRawHeaders(b"sec-websocket-protocol", [protocols])
            return r

        v5 = request(b"websocket", b"v4.channel.k8s.io,v5.channel.k8s.io")
        self.assertTrue(translated(v5, "exec"))
        self.assertTrue(translated(v5, "attach"))
        self.assertFalse(translated(v5, "portforward"))
        self.assertFalse(translated(request(b"websocket", b"v4.channel.k8s.io"), "exec"))
        self.assertFalse(translated(request(b"SPDY/3.1", b"v5.channel.k8s.io"), "exec"))
        tunnel = request(b"websocket", b"SPDY/3.1+portforward.k8s.io")
        self.assertTrue(translated(tunnel, "portforward"))
        self.assertFalse(translated(request(b"websocket", b"portforward.k8s.io"), "portforward"))
