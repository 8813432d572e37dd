"""
``nodes/proxy`` in memory: a real twisted.web request relayed by
L{NodeProxy} to a kubelet connection that is a L{StringTransport}; who may
use it; and the API server's client certificate for kubelets.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.test.requesthelper import DummyChannel
from zope.interface import implementer

from k3stw.apiserver.auth import Attributes, authorize
from k3stw.apiserver.kinds import built_in_registry
from k3stw.apiserver.nodeproxy import NodeProxy, kubelet_port, proxied_target
from k3stw.apiserver.status import StatusError
from k3stw.machinery.identity import User
from k3stw.machinery.objects import Object
from k3stw.pki.certs import SubjectAltNames, is_signed_by, new_ca
from k3stw.pki.store import load_or_create_server_credentials
from k3stw.pki.tls import PinnedCAPolicy
from k3stw.tunnel.registry import TunnelRegistry

NODES = built_in_registry().require("", "v1", "nodes")
NOW = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)
KUBELET_TLS = PinnedCAPolicy(new_ca("k3s-server-ca@1", NOW).certificate_pem)


def node(name: str, port: int | None = None) -> Object:
    status: dict[str, Any] = {}
    if port is not None:
        status["daemonEndpoints"] = {"kubeletEndpoint": {"Port": port}}
    return {"metadata": {"name": name}, "status": status}


@implementer(IStreamClientEndpoint)
class MemoryKubelet:
    """The kubelet's end of every connection the proxy opens: a StringTransport each."""

    transport_type: type[StringTransport] = StringTransport

    def __init__(self) -> None:
        self.protocols: list[IProtocol] = []
        self.transports: list[StringTransport] = []

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        protocol = protocolFactory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 10250))
        assert protocol is not None
        transport = self.transport_type()
        protocol.makeConnection(transport)
        self.protocols.append(protocol)
        self.transports.append(transport)
        return succeed(protocol)

    def respond(self, data: bytes) -> None:
        self.protocols[-1].dataReceived(data)


class InMemoryNodeProxy(NodeProxy):
    """Every kubelet is L{MemoryKubelet}; the endpoints asked for are recorded."""

    def __init__(self, nodes: dict[str, Object], reactor: MemoryReactorClock) -> None:
        async def get_node(name: str) -> Object:
            if name not in nodes:
                raise StatusError(404, f'nodes "{name}" not found')
            return nodes[name]

        super().__init__(get_node, TunnelRegistry(reactor), KUBELET_TLS, None, reactor)
        self.kubelet = MemoryKubelet()
        self.asked: list[tuple[str, int]] = []

    def endpoint(self, node: str, port: int, seen: Any = None) -> IStreamClientEndpoint:
        self.asked.append((node, port))
        return self.kubelet


class Relay(Resource):
    isLeaf = True

    def __init__(self, proxy: NodeProxy) -> None:
        super().__init__()
        self.proxy = proxy
        self.errors: list[Failure] = []

    def render(self, request: Request) -> int:
        node = request.path.split(b"/")[4].decode()
        relaying = Deferred.fromCoroutine(
            self.proxy.relay(request, node, proxied_target(request, 5))
        )
        relaying.addErrback(self.errors.append)
        return NOT_DONE_YET


class NodeProxyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.proxy = InMemoryNodeProxy(
            {"agent-1": node("agent-1", 10999), "agent-2": node("agent-2")}, self.reactor
        )
        self.resource = Relay(self.proxy)
        site = Site(self.resource, reactor=self.reactor)
        site.timeOut = None
        self.channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert self.channel is not None
        self.client = StringTransport()
        self.channel.makeConnection(self.client)

    def send(self, head: bytes) -> None:
        assert self.channel is not None
        self.channel.dataReceived(head)

    @property
    def kubelet(self) -> MemoryKubelet:
        return self.proxy.kubelet

    def test_relays_request_and_response(self) -> None:
        """Path, query and end-to-end headers go on; credentials and hop-by-hop ones do not."""
        self.send(
            b"GET /api/v1/nodes/agent-1/proxy/stats/summary?only_cpu_and_memory=true HTTP/1.1\r\n"
            b"Host: 127.0.0.1:6443\r\nAuthorization: Bearer secret\r\nImpersonate-User: x\r\n"
            b"Accept: application/json\r\nConnection: keep-alive\r\n\r\n"
        )
        self.assertEqual(self.proxy.asked, [("agent-1", 10999)])
        sent = self.kubelet.transports[0].value()
        self.assertTrue(
            sent.startswith(b"GET /stats/summary?only_cpu_and_memory=true HTTP/1.1\r\n"), sent
        )
        self.assertIn(b"Host: agent-1:10999\r\n", sent)
        self.assertIn(b"Accept: application/json\r\n", sent)
        self.assertNotIn(b"secret", sent)
        self.assertNotIn(b"Impersonate", sent)
        self.kubelet.respond(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        )
        answer = self.client.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer)
        self.assertIn(b"Content-Type: application/json\r\n", answer)
        self.assertIn(b"Content-Length: 2\r\n", answer)
        self.assertTrue(answer.endswith(b"\r\n\r\n{}"))
        self.assertEqual(self.resource.errors, [])

    def test_default_kubelet_port_and_bare_proxy_path(self) -> None:
        """A Node without daemonEndpoints is reached on 10250; /proxy is the kubelet's /."""
        self.send(b"GET /api/v1/nodes/agent-2/proxy HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.proxy.asked, [("agent-2", 10250)])
        self.assertTrue(self.kubelet.transports[0].value().startswith(b"GET / HTTP/1.1\r\n"))

    def test_request_body_is_sent_on(self) -> None:
        """A POST's body reaches the kubelet with its length."""
        self.send(
            b"POST /api/v1/nodes/agent-1/proxy/run/ns/pod/c HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 5\r\n\r\nhello"
        )
        self.reactor.advance(0)
        sent = self.kubelet.transports[0].value()
        self.assertIn(b"Content-Length: 5\r\n", sent)
        self.assertTrue(sent.endswith(b"\r\n\r\nhello"), sent)

    def test_body_streams_with_back_pressure(self) -> None:
        """Chunks pass as they come; a full client socket pauses the kubelet's connection."""
        self.send(b"GET /api/v1/nodes/agent-1/proxy/logs/big HTTP/1.1\r\nHost: x\r\n\r\n")
        kubelet = self.kubelet.transports[0]
        self.kubelet.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        self.assertIn(b"first", self.client.value())
        self.assertEqual(kubelet.producerState, "producing")
        assert self.client.producer is not None
        self.client.producer.pauseProducing()
        self.assertEqual(kubelet.producerState, "paused")
        self.client.producer.resumeProducing()
        self.assertEqual(kubelet.producerState, "producing")
        self.kubelet.respond(b"4\r\nlast\r\n0\r\n\r\n")
        answer = self.client.value()
        self.assertIn(b"last", answer)
        self.assertTrue(answer.endswith(b"0\r\n\r\n"), answer)

    def test_client_going_away_drops_the_kubelet_connection(self) -> None:
        """kubectl hangs up mid-body: the kubelet's connection is stopped, nothing is written."""
        self.send(b"GET /api/v1/nodes/agent-1/proxy/logs/big HTTP/1.1\r\nHost: x\r\n\r\n")
        self.kubelet.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        assert self.channel is not None
        self.channel.connectionLost(Failure(ConnectionDone()))
        # A socket (TCP, or the tunnel's stream under TLS) closes when its producer is stopped.
        self.assertEqual(self.kubelet.transports[0].producerState, "stopped")

    def test_truncated_kubelet_body_drops_the_client(self) -> None:
        """A body cut short is not finished as if complete: the client's connection is closed."""
        self.send(b"GET /api/v1/nodes/agent-1/proxy/logs/big HTTP/1.1\r\nHost: x\r\n\r\n")
        self.kubelet.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly some")
        protocol = self.kubelet.protocols[0]
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(self.client.disconnecting)
        self.assertFalse(self.client.value().endswith(b"0\r\n\r\n"))

    def test_upgrade_goes_on_as_an_upgrade(self) -> None:
        """An upgrade through nodes/proxy keeps its Connection and Upgrade headers."""
        self.send(
            b"GET /api/v1/nodes/agent-1/proxy/exec/ns/p/c?output=1 HTTP/1.1\r\nHost: x\r\n"
            b"Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n"
        )
        sent = self.kubelet.transports[0].value()
        self.assertTrue(sent.startswith(b"GET /exec/ns/p/c?output=1 HTTP/1.1\r\n"), sent)
        self.assertIn(b"Upgrade: SPDY/3.1\r\n", sent)
        self.assertIn(b"Connection: Upgrade\r\n", sent)

    def test_unknown_node_is_not_found(self) -> None:
        """No Node object: the 404 Status of the store passes through, nothing is dialled."""
        self.send(b"GET /api/v1/nodes/ghost/proxy/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        [failure] = self.resource.errors
        error = failure.value
        assert isinstance(error, StatusError)
        self.assertEqual((error.code, error.message), (404, 'nodes "ghost" not found'))
        self.assertEqual(self.proxy.asked, [])


class NodeProxyRoutingTests(SynchronousTestCase):
    """Which way the real endpoint goes: the node's tunnel, or straight to the own node."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.tunnels = TunnelRegistry(self.reactor)

        async def get_node(name: str) -> Object:
            return node(name, 10250)

        self.proxy = NodeProxy(get_node, self.tunnels, KUBELET_TLS, "server", self.reactor)

    def relay_error(self, node_name: str) -> StatusError:
        request = Request(DummyChannel())
        request.method = b"GET"
        request.uri = request.path = f"/api/v1/nodes/{node_name}/proxy/healthz".encode()
        failure = self.failureResultOf(
            Deferred.fromCoroutine(self.proxy.relay(request, node_name, b"/healthz")), StatusError
        )
        assert isinstance(failure.value, StatusError)
        return failure.value

    def test_no_session_is_503_with_the_tunnel_error(self) -> None:
        """A node without a tunnel: 503 and remotedialer's message; nothing dialled directly."""
        error = self.relay_error("agent-1")
        self.assertEqual(
            (error.code, error.message), (503, "failed to find Session for client agent-1")
        )
        self.assertEqual(self.reactor.tcpClients, [])

    def test_own_node_is_dialled_directly(self) -> None:
        """The server's own node: 127.0.0.1:<kubelet port>, never a tunnel."""
        self.proxy.endpoint("server", 10250).connect(Factory.forProtocol(Protocol))
        self.assertEqual([c[:2] for c in self.reactor.tcpClients], [("127.0.0.1", 10250)])


class PathTests(SynchronousTestCase):
    def target(self, uri: bytes, skip: int = 5) -> bytes:
        request = Request(DummyChannel())
        request.uri = uri
        request.path = uri.partition(b"?")[0]
        return proxied_target(request, skip)

    def test_proxied_target(self) -> None:
        """The rest after /proxy, percent-encoding, a trailing slash and the query kept."""
        self.assertEqual(self.target(b"/api/v1/nodes/n/proxy"), b"/")
        self.assertEqual(self.target(b"/api/v1/nodes/n/proxy/"), b"/")
        self.assertEqual(self.target(b"/api/v1/nodes/n/proxy/a%2Fb/c/"), b"/a%2Fb/c/")
        self.assertEqual(self.target(b"/api/v1/nodes/proxy/proxy/x?a=1&b"), b"/x?a=1&b")
        self.assertEqual(
            self.target(b"/api/v1/namespaces/proxy/pods/proxy/proxy/proxy/", 7), b"/proxy/"
        )

    def test_kubelet_port(self) -> None:
        self.assertEqual(kubelet_port(node("n", 10251)), 10251)
        self.assertEqual(kubelet_port(node("n")), 10250)
        self.assertEqual(
            kubelet_port({"status": {"daemonEndpoints": {"kubeletEndpoint": {}}}}), 10250
        )


class AuthorizationTests(SynchronousTestCase):
    """nodes/proxy is an admin's: a node may not reach even its own kubelet through the API."""

    def decide(self, user: User, verb: str, name: str) -> Failure | None:
        async def never(*_: str) -> bool:
            return False

        attributes = Attributes.of(verb, NODES, None, name, "proxy")
        deciding = Deferred.fromCoroutine(authorize(user, attributes, never))
        failures: list[Failure] = []
        deciding.addErrback(failures.append)
        return failures[0] if failures else None

    def test_nodes_are_forbidden(self) -> None:
        kubelet = User("system:node:agent-1", ("system:nodes",))
        for name in ("agent-1", "agent-2"):
            failure = self.decide(kubelet, "get", name)
            assert failure is not None
            error = failure.value
            assert isinstance(error, StatusError)
            self.assertEqual(error.code, 403)
            self.assertEqual(
                error.message,
                f'nodes "{name}" is forbidden: User "system:node:agent-1" cannot get '
                'resource "nodes/proxy" in API group "" at the cluster scope',
            )

    def test_admins_may(self) -> None:
        admin = User("system:admin", ("system:masters",))
        self.assertIsNone(self.decide(admin, "create", "agent-1"))


class APIServerClientCertificateTests(SynchronousTestCase):
    def test_client_kube_apiserver(self) -> None:
        """system:apiserver in system:masters, from the client CA, kept as k3s keeps it."""
        server_dir = Path(self.mktemp())
        now = NOW
        credentials = load_or_create_server_credentials(
            server_dir, SubjectAltNames.of(["127.0.0.1"]), now
        )
        certificate = credentials.kube_apiserver.certificate
        self.assertEqual(
            certificate.subject.rfc4514_string(), "CN=system:apiserver,O=system:masters"
        )
        self.assertTrue(is_signed_by(certificate, credentials.client_ca.certificate))
        stored = (server_dir / "tls" / "client-kube-apiserver.crt").read_bytes()
        self.assertEqual(stored, credentials.kube_apiserver.certificate_pem)
        again = load_or_create_server_credentials(
            server_dir, SubjectAltNames.of(["127.0.0.1"]), now
        )
        self.assertEqual(again.kube_apiserver.certificate, certificate)
