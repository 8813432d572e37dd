"""
Upgrades relayed to a kubelet (exec, attach, port-forward), in memory: the
head and body readers, the request sent on, a non-101 answer relayed, the
byte splice after a 101 with back-pressure both ways, and either side's end
closing the other; and taking the connection from Twisted Web's channel,
over TLS as the API server serves it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import connect, makeFakeClient, makeFakeServer
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from k3stw.apiserver.status import StatusError
from k3stw.pki.certs import SubjectAltNames
from k3stw.pki.store import load_or_create_server_credentials
from k3stw.pki.tls import PinnedCAPolicy, server_tls_options
from k3stw.upgrade import BackendError, BodyReader, HeadReader, ResponseHead, take_over
from tests.test_node_proxy import InMemoryNodeProxy, MemoryKubelet, Relay, node

#: An exec as the pods/exec route sends it on, here through nodes/proxy's relay.
EXEC = (
    b"GET /api/v1/nodes/agent-1/proxy/exec/default/p/c?command=true&output=1 HTTP/1.1\r\n"
    b"Host: 127.0.0.1:6443\r\nAuthorization: Bearer secret\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Key: a2V5\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n"
)
SWITCHED = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: x\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n"
)
TARGET = b"/exec/default/p/c?command=true&output=1"


def head(raw: bytes) -> ResponseHead:
    parsed = HeadReader().feed(raw)
    assert parsed is not None
    return parsed[0]


class HeadReaderTests(SynchronousTestCase):
    def test_head_in_pieces(self) -> None:
        """The head completes across reads; the bytes after it are handed back."""
        reader = HeadReader()
        self.assertIsNone(reader.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: web"))
        parsed = reader.feed(b"socket\r\n\r\n\x01data")
        assert parsed is not None
        found, rest = parsed
        self.assertEqual((found.code, found.phrase), (101, b"Switching Protocols"))
        self.assertEqual(found.header(b"upgrade"), b"websocket")
        self.assertEqual(rest, b"\x01data")
        self.assertTrue(found.raw.endswith(b"websocket\r\n\r\n"))

    def test_malformed_and_endless_heads(self) -> None:
        for bad in (
            b"SSH-2.0-x\r\n\r\n",
            b"HTTP/1.1 99x OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx\r\n\r\n",
        ):
            with self.assertRaises(BackendError):
                HeadReader().feed(bad)
        with self.assertRaises(BackendError):
            HeadReader(limit=10).feed(b"HTTP/1.1 200 OK\r\nX: " + b"y" * 20)


class BodyReaderTests(SynchronousTestCase):
    def test_content_length(self) -> None:
        body = BodyReader.of(head(b"HTTP/1.1 501 x\r\nContent-Length: 5\r\n\r\n"), b"GET")
        self.assertEqual((body.feed(b"abc"), body.finished), (b"abc", False))
        self.assertEqual((body.feed(b"de-extra"), body.finished), (b"de", True))
        self.assertEqual(body.length, 5)

    def test_chunked_split_anywhere(self) -> None:
        """Sizes, data and the trailers' end line may be split across reads."""
        raw = b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n"
        for cut in range(len(raw)):
            body = BodyReader.of(
                head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), b"GET"
            )
            data = body.feed(raw[:cut]) + body.feed(raw[cut:])
            self.assertEqual((data, body.finished), (b"hello", True), cut)

    def test_malformed_chunks(self) -> None:
        chunked = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for bad in (b"zz\r\n", b"2\r\nabc\r\n"):
            with self.assertRaises(BackendError):
                BodyReader.of(chunked, b"GET").feed(bad)

    def test_no_body_and_until_close(self) -> None:
        self.assertTrue(BodyReader.of(head(b"HTTP/1.1 204 No\r\n\r\n"), b"GET").finished)
        self.assertTrue(
            BodyReader.of(head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"), b"HEAD").finished
        )
        endless = BodyReader.of(head(b"HTTP/1.1 200 OK\r\n\r\n"), b"GET")
        self.assertTrue(endless.until_close)
        self.assertEqual(endless.feed(b"x" * 10), b"x" * 10)


class UpgradeRelayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.proxy = InMemoryNodeProxy({"agent-1": node("agent-1", 10250)}, self.reactor)
        self.resource = Relay(self.proxy)
        site = Site(self.resource, reactor=self.reactor)
        self.channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert self.channel is not None
        self.client = StringTransport()
        self.channel.makeConnection(self.client)

    @property
    def kubelet(self) -> MemoryKubelet:
        return self.proxy.kubelet

    def error(self) -> StatusError:
        [failure] = self.resource.errors
        assert isinstance(failure.value, StatusError)
        return failure.value

    def switch(self) -> tuple[Protocol, StringTransport]:
        """Send the exec, answer 101: the client's new protocol and the kubelet's transport."""
        assert self.channel is not None
        self.channel.dataReceived(EXEC)
        self.kubelet.respond(SWITCHED + b"\x01hi")
        self.assertEqual(self.resource.errors, [])
        protocol = self.client.protocol  # type: ignore[attr-defined]
        assert isinstance(protocol, Protocol)
        return protocol, self.kubelet.transports[0]

    def test_request_goes_on_with_its_upgrade(self) -> None:
        """The kubelet's path, Upgrade and websocket headers kept; no credentials."""
        assert self.channel is not None
        self.channel.dataReceived(EXEC)
        sent = self.kubelet.transports[0].value()
        self.assertTrue(sent.startswith(b"GET " + TARGET + b" HTTP/1.1\r\nHost: agent-1:10250\r\n"))
        for kept in (b"Connection: Upgrade", b"Upgrade: websocket", b"v5.channel.k8s.io"):
            self.assertIn(kept, sent)
        self.assertNotIn(b"secret", sent)
        self.assertTrue(sent.endswith(b"\r\n\r\n"))

    def test_non_101_answer_is_relayed(self) -> None:
        """The kubelet's 501 and its text reach the client; the kubelet's connection is closed."""
        assert self.channel is not None
        self.channel.dataReceived(EXEC)
        self.kubelet.respond(
            b"HTTP/1.1 501 Not Implemented\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n"
            b"Connection: close\r\n\r\nno run"
        )
        answer = self.client.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 501 Not Implemented\r\n"), answer)
        self.assertIn(b"Content-Length: 6\r\n", answer)
        self.assertTrue(answer.endswith(b"\r\n\r\nno run"), answer)
        self.assertTrue(self.kubelet.transports[0].disconnecting)
        self.assertEqual(self.resource.errors, [])

    def test_spliced_after_101(self) -> None:
        """The 101 and what follows it reach the client; each side's bytes reach the other."""
        protocol, kubelet = self.switch()
        self.assertTrue(self.client.value().endswith(SWITCHED + b"\x01hi"), self.client.value())
        sent_before = len(kubelet.value())
        protocol.dataReceived(b"\x00stdin")
        self.assertEqual(kubelet.value()[sent_before:], b"\x00stdin")
        self.kubelet.respond(b"\x01more")
        self.assertTrue(self.client.value().endswith(b"\x01more"))

    def test_back_pressure_both_ways(self) -> None:
        """A full client pauses the kubelet's connection, and a full kubelet the client's."""
        _, kubelet = self.switch()
        assert self.client.producer is not None and kubelet.producer is not None
        self.client.producer.pauseProducing()
        self.assertEqual(kubelet.producerState, "paused")
        self.client.producer.resumeProducing()
        self.assertEqual(kubelet.producerState, "producing")
        kubelet.producer.pauseProducing()
        self.assertEqual(self.client.producerState, "paused")
        kubelet.producer.resumeProducing()
        self.assertEqual(self.client.producerState, "producing")

    def test_client_going_away_closes_the_kubelet(self) -> None:
        protocol, kubelet = self.switch()
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(kubelet.disconnecting)
        self.assertIsNone(kubelet.producer)

    def test_kubelet_going_away_closes_the_client(self) -> None:
        self.switch()
        self.kubelet.protocols[0].connectionLost(Failure(ConnectionDone()))
        self.assertTrue(self.client.disconnecting)
        self.assertIsNone(self.client.producer)

    def test_client_gone_before_the_answer(self) -> None:
        """kubectl hangs up while the kubelet has not answered: its connection is aborted."""
        assert self.channel is not None
        self.channel.dataReceived(EXEC)
        self.channel.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(self.kubelet.transports[0].disconnected)
        self.assertEqual(self.resource.errors, [])

    def test_kubelet_closing_without_an_answer_is_503(self) -> None:
        assert self.channel is not None
        self.channel.dataReceived(EXEC)
        self.kubelet.protocols[0].connectionLost(Failure(ConnectionDone()))
        error = self.error()
        self.assertEqual(
            (error.code, error.message),
            (503, "error dialing backend: the backend closed the connection"),
        )

    def test_no_answer_times_out(self) -> None:
        assert self.channel is not None
        self.channel.dataReceived(EXEC)
        self.reactor.advance(60)
        self.assertEqual(
            self.error().message, "error dialing backend: timeout awaiting response headers"
        )
        self.assertTrue(self.kubelet.transports[0].disconnected)


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Upgrader(Resource):
    """Answers 101 itself and takes the connection, as the relay does once the kubelet switched."""

    isLeaf = True

    def render(self, request: Request) -> int:
        protocol = Echo()
        leftover = take_over(request, protocol)
        assert protocol.transport is not None
        protocol.transport.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n" + leftover)
        return NOT_DONE_YET


class OneProtocol(Factory):
    def __init__(self, protocol: Protocol) -> None:
        self.protocol_ = protocol

    def buildProtocol(self, addr: object) -> Protocol:
        return self.protocol_


class Collect(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost = True


class TakeOverTests(SynchronousTestCase):
    """L{take_over} against the installed Twisted Web, over TLS as the API server serves."""

    def test_tls_connection_taken_from_the_channel(self) -> None:
        credentials = load_or_create_server_credentials(
            # Real time: OpenSSL checks validity against the wall clock.
            Path(self.mktemp()),
            SubjectAltNames.of(["127.0.0.1"]),
            datetime.now(UTC),
        )
        reactor = MemoryReactorClock()
        site = Site(Upgrader(), reactor=reactor)
        server_factory = TLSMemoryBIOFactory(
            server_tls_options(
                credentials.serving, credentials.server_ca_bundle, credentials.client_ca
            ),
            False,
            site,
            reactor,
        )
        client = Collect()
        client_factory = TLSMemoryBIOFactory(
            PinnedCAPolicy(credentials.server_ca_bundle).creatorForNetloc(b"127.0.0.1", 6443),
            True,
            OneProtocol(client),
            reactor,
        )
        server_protocol = server_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 6443))
        client_protocol = client_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 6443))
        pump = connect(
            server_protocol, makeFakeServer(server_protocol),
            client_protocol, makeFakeClient(client_protocol),
        )  # fmt: skip
        assert client.transport is not None

        def send(data: bytes) -> None:
            assert client.transport is not None
            client.transport.write(data)
            for _ in range(3):
                # TLS writes are aggregated until the reactor's next turn.
                reactor.advance(0)
                pump.flush()

        send(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n\r\n")
        self.assertEqual(client.data, b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        send(b"spliced bytes")
        self.assertTrue(client.data.endswith(b"spliced bytes"), client.data)
        # The channel no longer owns the connection: its idle timeout never fires.
        reactor.advance(3600)
        send(b"still here")
        self.assertTrue(client.data.endswith(b"still here"))
        self.assertFalse(client.lost)
