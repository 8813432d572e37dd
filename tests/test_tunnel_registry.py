"""
The server side of the tunnel in memory: sessions by node name, and who may
open one on ``/v1-k3s/connect`` (real certificates, fake transports).
"""

from __future__ import annotations

import datetime
import gc
import weakref
from typing import Any, cast

from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from OpenSSL import crypto
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IProtocol, ITransport
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.server import Request, Site
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from k3stw.pki.certs import KeyPair, Usage, new_ca, new_leaf
from k3stw.supervisor.connect import (
    FAILED_AUTHENTICATION,
    TunnelConnectResource,
    node_check,
    node_of_peer,
)
from k3stw.tunnel.codec import Connect
from k3stw.tunnel.registry import ITunnelDialer, NoTunnelSession, TunnelRegistry
from k3stw.tunnel.session import Session
from tests.support.tunnel import UPGRADE, Collector, QueueTransport, run_autobahn_timers_on

NOW = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)
KUBELET = "127.0.0.1:10250"


def connection_request() -> ConnectionRequest:
    return ConnectionRequest("127.0.0.90", {}, "127.0.0.1", "/v1-k3s/connect", {}, 13, None, [], [])


class PeerTransport:
    """A transport whose TLS peer presented C{certificate} (pyOpenSSL's view), or nothing."""

    def __init__(self, pair: KeyPair | None) -> None:
        self._peer = crypto.X509.from_cryptography(pair.certificate) if pair else None

    def getPeerCertificate(self) -> object:
        return self._peer


def peer_transport(pair: KeyPair | None) -> ITransport:
    """A L{PeerTransport} where a check takes a transport: the check reads only the peer."""
    return cast(ITransport, PeerTransport(pair))


class Certificates:
    """A client CA and certificates signed by it, and by a stranger."""

    def __init__(self) -> None:
        self.client_ca = new_ca("k3s-client-ca@1", NOW)
        self.stranger_ca = new_ca("k3s-client-ca@2", NOW)

    def node(self, name: str, ca: KeyPair | None = None, when: datetime.datetime = NOW) -> KeyPair:
        return new_leaf(
            ca or self.client_ca, f"system:node:{name}", Usage.CLIENT, when, ["system:nodes"]
        )


class NodeCertificateCheckTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.certs = Certificates()

    def node_of(self, pair: KeyPair | None, now: datetime.datetime = NOW) -> str | None:
        return node_of_peer(PeerTransport(pair), self.certs.client_ca.certificate, now)

    def test_kubelet_client_certificate_names_its_node(self) -> None:
        """CN system:node:<name>, O system:nodes, from the client CA: the node is <name>."""
        self.assertEqual(self.node_of(self.certs.node("agent-1")), "agent-1")

    def test_other_certificates_are_refused(self) -> None:
        """No certificate, an admin's, a node name without system:nodes, another CA's, expired."""
        ca = self.certs.client_ca
        admin = new_leaf(ca, "system:admin", Usage.CLIENT, NOW, ["system:masters"])
        no_group = new_leaf(ca, "system:node:agent-1", Usage.CLIENT, NOW)
        foreign = self.certs.node("agent-1", self.certs.stranger_ca)
        expired = self.certs.node("agent-1", when=NOW - datetime.timedelta(days=400))
        for pair in (None, admin, no_group, foreign, expired):
            self.assertIsNone(self.node_of(pair), pair and pair.certificate.subject)

    def test_not_yet_valid_is_refused(self) -> None:
        """A certificate from the future (beyond its backdating) does not open a tunnel."""
        early = NOW - datetime.timedelta(days=1)
        self.assertIsNone(self.node_of(self.certs.node("agent-1"), early))

    def test_websocket_check_denies_with_remotedialers_words(self) -> None:
        """The autobahn check answers 401 "failed authentication", or returns the node."""
        clock = Clock()
        clock.advance(NOW.timestamp())
        check = node_check(self.certs.client_ca.certificate, clock)
        request = connection_request()
        with self.assertRaises(ConnectionDeny) as denied:
            check(request, peer_transport(None))
        self.assertEqual(
            (denied.exception.code, denied.exception.reason), (401, FAILED_AUTHENTICATION)
        )
        node = check(request, peer_transport(self.certs.node("agent-2")))
        self.assertEqual(node, "agent-2")


class ConnectResourceTests(SynchronousTestCase):
    """What /v1-k3s/connect answers before any websocket exists."""

    def setUp(self) -> None:
        self.certs = Certificates()
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        self.registry = TunnelRegistry(self.clock)
        self.resource = TunnelConnectResource(
            self.registry, self.certs.client_ca.certificate, self.clock
        )

    def render(self, pair: KeyPair | None, headers: dict[bytes, bytes]) -> DummyRequest:
        request = DummyRequest([])
        request.transport = PeerTransport(pair)  # type: ignore[attr-defined]
        request.requestHeaders = Headers({k: [v] for k, v in headers.items()})
        request.render(self.resource)
        return request

    def test_no_node_certificate_is_401(self) -> None:
        """Without a node certificate, even a proper upgrade gets remotedialer's 401."""
        upgrade = {b"connection": b"Upgrade", b"upgrade": b"websocket"}
        request = self.render(None, upgrade)
        self.assertEqual(
            (request.responseCode, b"".join(request.written)), (401, b"failed authentication")
        )

    def test_plain_get_is_refused_clearly(self) -> None:
        """A node that forgets the upgrade hears gorilla's 400, not a page of HTML."""
        request = self.render(self.certs.node("agent-1"), {})
        self.assertEqual(request.responseCode, 400)
        self.assertIn(b"not using the websocket protocol", b"".join(request.written))

    def test_factory_registers_under_the_certificates_name(self) -> None:
        """The websocket check names the session after the certificate; it is registered."""
        factory = self.resource.factory
        name = factory.tunnel_check(
            connection_request(), peer_transport(self.certs.node("agent-3"))
        )
        session, _ = server_session(name, self.clock)
        factory.tunnel_opened(name, session)
        self.assertEqual(self.registry.nodes(), ["agent-3"])


class PeerStringTransport(StringTransport):
    """A connection whose TLS peer presented C{pair}'s certificate."""

    #: The protocol on this connection, as a TCP transport has it (the test sets it).
    protocol: IProtocol

    def __init__(self, pair: KeyPair) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.1.1", 40000))
        self._peer = crypto.X509.from_cryptography(pair.certificate)

    def getPeerCertificate(self) -> object:
        return self._peer


class UpgradeThroughSiteTests(SynchronousTestCase):
    """An upgrade as production takes it: a Site, its HTTPChannel and Request, autobahn."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW.timestamp())
        run_autobahn_timers_on(self, self.clock)
        self.certs = Certificates()
        self.registry = TunnelRegistry(self.clock)
        resource = TunnelConnectResource(
            self.registry, self.certs.client_ca.certificate, self.clock
        )
        self.site = Site(resource, reactor=self.clock)
        self.requests: list[weakref.ref[Request]] = []

        def request_factory(channel: HTTPChannel, queued: bool = False) -> Request:
            request = Request(channel, queued)
            self.requests.append(weakref.ref(request))
            return request

        # Site only calls requestFactory(channel, queued); the stub asks for Request itself.
        self.site.requestFactory = request_factory  # type: ignore[assignment]

    def test_channel_and_request_are_freed_once_upgraded(self) -> None:
        """
        Once autobahn has the connection, the HTTP channel and the request
        are freed at once, without waiting for the cycle collector; the
        tunnel keeps working.
        """
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        transport = PeerStringTransport(self.certs.node("agent-1"))
        channel = self.site.buildProtocol(transport.getPeer())
        assert channel is not None
        # As a TCP connection's transport, which autobahn hands to its protocol.
        transport.protocol = channel
        channel.makeConnection(transport)
        channel.dataReceived(UPGRADE)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "), transport.value())
        self.assertEqual(self.registry.nodes(), ["agent-1"])
        released = weakref.ref(channel)
        del channel
        self.assertEqual((released(), [ref() for ref in self.requests]), (None, [None]))
        # The websocket is alive: the server's session pings, autobahn pings.
        websocket = transport.protocol
        self.assertIsNotNone(cast(Any, websocket)._session)
        session = self.registry.session("agent-1")
        assert session is not None
        session.close("test over")
        cast(Any, websocket).dropConnection(abort=True)
        self.clock.advance(60)


def server_session(name: str, clock: Clock) -> tuple[Session, QueueTransport]:
    transport = QueueTransport()
    session = Session(transport, clock, role="server", name=name)
    session.start()
    return session, transport


class TunnelRegistryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = TunnelRegistry(self.clock)

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(ITunnelDialer, self.registry))

    def test_register_logs_k3s_words_and_end_removes(self) -> None:
        """A session is kept from registration until it ends; both are logged as k3s logs them."""
        session, _ = server_session("agent-1", self.clock)
        with capturedLogs() as events:
            self.registry.register("agent-1", session)
        self.assertTrue(self.registry.has_session("agent-1"))
        self.assertEqual(self.registry.nodes(), ["agent-1"])
        self.assertEqual(
            [e["log_format"].format(**e) for e in events],
            ["Handling backend connection request [agent-1]"],
        )
        with capturedLogs() as events:
            session.connection_lost("websocket closed (1006): ")
        self.assertFalse(self.registry.has_session("agent-1"))
        self.assertIn(
            "error in remotedialer server [400]: websocket closed (1006): ",
            [e["log_format"].format(**e) for e in events],
        )

    def test_newest_open_session_is_used(self) -> None:
        """Reconnect overlap: the newest session dials; when it ends, the older one does."""
        old, old_wire = server_session("agent-1", self.clock)
        new, new_wire = server_session("agent-1", self.clock)
        self.registry.register("agent-1", old)
        self.registry.register("agent-1", new)
        self.assertIs(self.registry.session("agent-1"), new)
        self.registry.dial("agent-1", KUBELET).connect(Factory.forProtocol(Collector))
        self.assertEqual([type(m) for m in new_wire.sent], [Connect])
        self.assertEqual(old_wire.sent, [])
        new.close("gone")
        self.assertIs(self.registry.session("agent-1"), old)
        self.registry.dial("agent-1", KUBELET).connect(Factory.forProtocol(Collector))
        connect = old_wire.sent[-1]
        assert isinstance(connect, Connect)
        self.assertEqual((connect.proto, connect.address), ("tcp", KUBELET))

    def test_dial_without_session_fails_with_k3s_message(self) -> None:
        """No session: the endpoint's connect fails with remotedialer's message."""
        connecting = self.registry.dial("agent-9", KUBELET).connect(Factory.forProtocol(Collector))
        failure = self.failureResultOf(connecting, NoTunnelSession)
        self.assertEqual(failure.getErrorMessage(), "failed to find Session for client agent-9")

    def test_endpoint_dials_the_session_of_the_moment(self) -> None:
        """An endpoint made before the node connected works once it has."""
        endpoint = self.registry.dial("agent-1", KUBELET)
        session, wire = server_session("agent-1", self.clock)
        self.registry.register("agent-1", session)
        protocol = self.successResultOf(endpoint.connect(Factory.forProtocol(Collector)))
        self.assertIsInstance(protocol, Collector)
        self.assertEqual(len(wire.sent), 1)

    def test_when_registered(self) -> None:
        """Tests can wait for a node's session; a wait can be cancelled."""
        waiting = self.registry.when_registered("agent-1")
        abandoned = self.registry.when_registered("agent-2")
        self.assertNoResult(waiting)
        session, _ = server_session("agent-1", self.clock)
        self.registry.register("agent-1", session)
        self.assertIs(self.successResultOf(waiting), session)
        self.assertIs(self.successResultOf(self.registry.when_registered("agent-1")), session)
        abandoned.cancel()
        self.failureResultOf(abandoned)
        other, _ = server_session("agent-2", self.clock)
        self.registry.register("agent-2", other)
