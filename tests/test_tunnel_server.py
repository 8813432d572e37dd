"""
The tunnel against a real ``k3s-server``: an agent-side websocket opened in
this test with a node certificate, a small HTTPS "kubelet" behind it, and the
real kubectl reaching that kubelet through ``nodes/<node>/proxy``.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import ssl
import tracemalloc
from pathlib import Path
from typing import Any, cast

from twisted.internet import reactor as _reactor
from twisted.internet import ssl as tssl
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint, SSL4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from k3stw.pki.certs import (
    KeyPair,
    SubjectAltNames,
    Usage,
    load_pem_certificates,
    load_pem_key,
    new_leaf,
)
from k3stw.pki.tls import server_tls_options
from k3stw.tunnel.address import loopback_ports_authorizer, split_host_port
from k3stw.tunnel.client import AgentTunnelFactory
from k3stw.tunnel.interfaces import ILocalDialer
from k3stw.tunnel.protocol import TCPDialer, TunnelClientFactory
from k3stw.tunnel.session import Session, Stream
from tests.support.net import free_port
from tests.support.twistd import k3s_server

reactor: Any = _reactor
KUBECTL = "/usr/bin/kubectl"
SERVER_HOST = "127.0.0.110"
KUBELET_HOST = "127.0.0.111"


def load_pair(tls: Path, stem: str) -> KeyPair:
    certificate = load_pem_certificates((tls / f"{stem}.crt").read_bytes())[0]
    return KeyPair(certificate, load_pem_key((tls / f"{stem}.key").read_bytes()))


@implementer(ILocalDialer)
class KubeletHostDialer:
    """As k3s's agent: the kubelet on loopback is dialled at the kubelet's own address."""

    def __init__(self) -> None:
        self._tcp = TCPDialer(reactor, timeout=10)

    def dial(self, proto: str, address: str, stream: Stream) -> Deferred[None]:
        _, port = split_host_port(address)
        return self._tcp.dial(proto, f"{KUBELET_HOST}:{port}", stream)


class Healthz(Resource):
    isLeaf = True

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def render_GET(self, request: Any) -> bytes:
        # Who the API server said it was, in the client certificate it presented.
        caller = request.transport.getPeerCertificate().get_subject().CN
        return f"ok from {self.node} {request.uri.decode()} for {caller}".encode()


#: What the streaming test sends through the tunnel.
BIG = 100 * 1024 * 1024
#: What either end may hold while it does (the whole body is 100 MiB).
MEMORY_BOUND = 48 * 1024 * 1024


@implementer(IPushProducer)
class Zeros:
    """Writes C{size} bytes to a request as fast as its transport lets it."""

    CHUNK = b"\0" * 65536

    def __init__(self, request: Any, size: int) -> None:
        self.request = request
        self.left = size
        self.paused = False

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        while self.left and not self.paused:
            chunk = self.CHUNK[: self.left]
            self.left -= len(chunk)
            self.request.write(chunk)
        if not self.left:
            self.request.unregisterProducer()
            self.request.finish()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.left = 0


class Big(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> int:
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", str(BIG).encode())
        Zeros(request, BIG).start()
        return NOT_DONE_YET


class _Channel(HTTPChannel):
    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.open.add(self)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.site.open.discard(self)  # type: ignore[attr-defined]
        super().connectionLost(reason)


class ClosingSite(Site):
    """A site that can close every connection it has open, and wait until they are gone."""

    # Site builds whatever channel class it is given; the stub names only its HTTP/1-or-2 one.
    protocol = _Channel  # type: ignore[assignment]

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.open: set[_Channel] = set()

    async def close_all(self) -> None:
        for channel in list(self.open):
            if channel.transport is not None:
                channel.transport.abortConnection()  # type: ignore[attr-defined]
        for _ in range(500):
            if not self.open:
                return
            await deferLater(reactor, 0.01)
        raise AssertionError(f"{len(self.open)} kubelet connections never closed")


def high_water_mark(pid: int) -> int:
    """A process's peak resident memory (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


class TunnelServerTests(TestCase):
    def setUp(self) -> None:
        root = Path(self.mktemp()).absolute()
        self.root = root
        self.port = free_port(SERVER_HOST)
        self.server = k3s_server(self, root, SERVER_HOST, self.port, "--disable-agent").start()
        self.server.wait_for_answer(SERVER_HOST, self.port)
        self.tls = root / "data" / "server" / "tls"
        self.server_ca = (self.tls / "server-ca.crt").read_bytes()
        self.client_ca = load_pair(self.tls, "client-ca")
        self.now = datetime.datetime.now(datetime.UTC)

    def node_certificate(self, node: str) -> tssl.PrivateCertificate:
        pair = new_leaf(
            self.client_ca, f"system:node:{node}", Usage.CLIENT, self.now, ["system:nodes"]
        )
        certificate: tssl.PrivateCertificate = tssl.PrivateCertificate.loadPEM(
            pair.certificate_pem + pair.key_pem
        )
        return certificate

    def start_kubelet(self, node: str) -> int:
        """A tiny HTTPS kubelet for C{node}, its serving certificate from the server CA."""
        server_ca = load_pair(self.tls, "server-ca")
        serving = new_leaf(
            server_ca, node, Usage.SERVER, self.now, (), SubjectAltNames.of([node, "127.0.0.1"])
        )
        options = server_tls_options(serving, self.server_ca, self.client_ca)
        endpoint = SSL4ServerEndpoint(reactor, 0, options, interface=KUBELET_HOST)
        root = Resource()
        root.putChild(b"healthz", Healthz(node))
        root.putChild(b"big", Big())
        site = ClosingSite(root)
        # SSL4ServerEndpoint.listen fires at once.
        listening: IListeningPort = self.successResultOf(endpoint.listen(site))
        self.addCleanup(site.close_all)
        self.addCleanup(listening.stopListening)
        return cast(IPv4Address, listening.getHost()).port

    async def open_tunnel(
        self, node: str, kubelet_port: int, agent: type[Any] = TunnelClientFactory
    ) -> Session:
        """Open C{node}'s tunnel with C{agent}'s end: autobahn's (older agents) or wsproto's."""
        opened: Deferred[Session] = Deferred()
        factory = agent(
            f"wss://{SERVER_HOST}:{self.port}/v1-k3s/connect",
            clock=reactor,
            authorizer=loopback_ports_authorizer({kubelet_port}),
            dialer=KubeletHostDialer(),
            opened=lambda name, session: opened.callback(session),
        )
        trust = tssl.trustRootFromCertificates(
            [tssl.Certificate.loadPEM(c) for c in [self.server_ca]]
        )
        options = tssl.optionsForClientTLS(
            SERVER_HOST, trustRoot=trust, clientCertificate=self.node_certificate(node)
        )
        protocol = await SSL4ClientEndpoint(reactor, SERVER_HOST, self.port, options).connect(
            factory
        )
        self.addCleanup(protocol.transport.loseConnection)
        opened.addTimeout(10, reactor)
        return await opened

    async def kubectl(self, *args: str) -> tuple[int, str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "K3S_"))}
        config = str(self.root / "k3s.yaml")
        env.update(KUBECONFIG=config, KUBECACHEDIR=config + ".cache")
        out, err, code = await getProcessOutputAndValue(KUBECTL, args, env=env)
        return code, out.decode(), err.decode()

    async def create_node(self, node: str, kubelet_port: int) -> None:
        manifest = self.root / f"{node}.json"
        manifest.write_text(
            json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})
        )
        code, _, err = await self.kubectl("create", "-f", str(manifest))
        self.assertEqual(code, 0, err)
        port = {"status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}}}}
        code, _, err = await self.kubectl(
            "patch", "node", node, "--subresource=status", "--type=merge", "-p", json.dumps(port)
        )
        self.assertEqual(code, 0, err)

    async def test_kubectl_reaches_the_kubelet_through_the_tunnel(self) -> None:
        """nodes/<n>/proxy goes through n's tunnel only; a node certificate opens only its own."""
        kubelet_port = self.start_kubelet("agent-a")
        await self.create_node("agent-a", kubelet_port)
        await self.create_node("agent-b", kubelet_port)
        code, _, err = await self.kubectl("get", "--raw", "/api/v1/nodes/agent-a/proxy/healthz")
        self.assertNotEqual(code, 0)
        self.assertIn("failed to find Session for client agent-a", err)

        await self.open_tunnel("agent-a", kubelet_port)
        self.server.wait_for_output("Handling backend connection request [agent-a]", 10)
        code, out, err = await self.kubectl(
            "get", "--raw", "/api/v1/nodes/agent-a/proxy/healthz?verbose=1"
        )
        self.assertEqual(
            (code, out), (0, "ok from agent-a /healthz?verbose=1 for system:apiserver"), err
        )
        # agent-a's certificate opened a session for agent-a, never for agent-b.
        code, _, err = await self.kubectl("get", "--raw", "/api/v1/nodes/agent-b/proxy/healthz")
        self.assertNotEqual(code, 0)
        self.assertIn("failed to find Session for client agent-b", err)

    async def test_new_agent_reaches_the_kubelet(self) -> None:
        """The agent's end on wsproto opens a session with a real server; the API
        server reaches the kubelet through it, a 100 MiB answer included."""
        kubelet_port = self.start_kubelet("agent-a")
        await self.create_node("agent-a", kubelet_port)
        session = await self.open_tunnel("agent-a", kubelet_port, AgentTunnelFactory)
        self.addCleanup(session.close, "test over")
        code, out, err = await self.kubectl("get", "--raw", "/api/v1/nodes/agent-a/proxy/healthz")
        self.assertEqual((code, out), (0, "ok from agent-a /healthz for system:apiserver"), err)
        received = await deferToThread(self.read_through_proxy, "/api/v1/nodes/agent-a/proxy/big")
        self.assertEqual(received, BIG)

    async def test_100_mib_stream_with_bounded_memory(self) -> None:
        """
        100 MiB from the kubelet through the tunnel to an API client, while
        neither the server nor this process (the agent's end) holds more
        than a bounded part of it.
        """
        kubelet_port = self.start_kubelet("agent-a")
        await self.create_node("agent-a", kubelet_port)
        await self.open_tunnel("agent-a", kubelet_port)
        server_pid = self.server.process.pid  # type: ignore[union-attr]
        server_before = high_water_mark(server_pid)
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        received = await deferToThread(self.read_through_proxy, "/api/v1/nodes/agent-a/proxy/big")
        _, agent_peak = tracemalloc.get_traced_memory()
        self.assertEqual(received, BIG)
        self.assertLess(agent_peak, MEMORY_BOUND)
        self.assertLess(high_water_mark(server_pid) - server_before, MEMORY_BOUND)

    def read_through_proxy(self, path: str) -> int:
        """GET C{path} as the admin, reading 1 MiB at a time; the bytes received."""
        context = ssl.create_default_context(cafile=str(self.tls / "server-ca.crt"))
        context.load_cert_chain(self.tls / "client-admin.crt", self.tls / "client-admin.key")
        connection = http.client.HTTPSConnection(
            SERVER_HOST, self.port, context=context, timeout=60
        )
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            assert response.status == 200, (response.status, response.read(500))
            total = 0
            while chunk := response.read(1024 * 1024):
                total += len(chunk)
            return total
        finally:
            connection.close()

    def test_websocket_without_certificate_is_401(self) -> None:
        """An upgrade without a client certificate: remotedialer's 401."""
        context = ssl.create_default_context(cafile=str(self.tls / "server-ca.crt"))
        connection = http.client.HTTPSConnection(SERVER_HOST, self.port, context=context, timeout=5)
        self.addCleanup(connection.close)
        connection.request(
            "GET",
            "/v1-k3s/connect",
            headers={
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        )
        response = connection.getresponse()
        self.assertEqual((response.status, response.read()), (401, b"failed authentication"))
