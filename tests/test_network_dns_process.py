"""
The cluster DNS for real: a ``k3s-server`` process holds the cluster (its
``kube-dns`` Service and ``coredns`` ConfigMap among it), the node's DNS
service reads it with kube-proxy's and k3s's controller credentials (so
their RBAC roles are proven to allow it) and answers on a loopback address,
over UDP and TCP, to C{twisted.names}' client and to ``busybox nslookup``;
names outside the cluster go to an upstream nameserver on another loopback
address.
"""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar, cast

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.names import client, dns, error
from twisted.trial.unittest import SynchronousTestCase, TestCase

from k3stw.httpclient import HTTPSClient
from k3stw.kubeclient import KubeClient
from k3stw.network.dns import (
    ClusterDNS,
    ClusterDNSDatagramProtocol,
    ClusterDNSFactory,
    ClusterDNSSettings,
    QuietUDPReactor,
)
from k3stw.network.dnsrecords import ClusterState
from k3stw.pki.certs import KeyPair, Usage, load_pem_certificates, load_pem_key, new_leaf
from k3stw.pki.tls import PinnedCAPolicy
from tests.support.net import free_port
from tests.support.twistd import Twistd, https_get, k3s_server

HOST = "127.0.0.41"
UPSTREAM = "127.0.0.42"
KUBECTL = "/usr/bin/kubectl"
OBJECTS = """\
apiVersion: v1
kind: Namespace
metadata: {name: dnstest}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: dnstest}
spec:
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: dnstest}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-1
  namespace: dnstest
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
endpoints:
- {addresses: [10.42.0.5], hostname: db-0, conditions: {ready: true}}
ports: [{name: pg, port: 5432, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: dnstest}
spec: {type: ExternalName, externalName: www.example.test}
"""


def _dns_address() -> tuple[str, int]:
    """Port 53 on a free loopback address when this may bind it (busybox asks only there)."""
    if os.geteuid() == 0:
        for last in range(43, 60):
            address = f"127.0.0.{last}"
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                    probe.bind((address, 53))
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    probe.bind((address, 53))
                return address, 53
            except OSError:
                continue
    return HOST, free_port(HOST)


class ClusterDNSProcessTests(TestCase):
    server: ClassVar[Twistd]
    root: ClassVar[Path]
    port: ClassVar[int]

    @classmethod
    def setUpClass(cls) -> None:
        cls.root = Path(tempfile.mkdtemp(prefix="k3stw-dns-"))
        cls.port = free_port(HOST)
        cls.server = k3s_server(SynchronousTestCase(), cls.root, HOST, cls.port).start()
        cls.server.wait_for_answer(HOST, cls.port)
        ca = cls.root / "data" / "server" / "tls" / "server-ca.crt"
        deadline = time.monotonic() + 60
        while https_get(HOST, cls.port, "/v1-k3s/readyz", ca)[0] != 200:
            assert time.monotonic() < deadline, cls.server.output
            time.sleep(0.1)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "K3S_"))}
        env["KUBECONFIG"] = str(cls.root / "k3s.yaml")
        for _ in range(100):
            done = subprocess.run(
                [KUBECTL, "apply", "-f", "-"],
                input=OBJECTS,
                text=True,
                capture_output=True,
                env=env,
            )
            if done.returncode == 0:
                break
            time.sleep(0.2)
        assert done.returncode == 0, done.stderr

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()

    def credential(self, user: str) -> KubeClient:
        """The API as C{user}, with a certificate from the cluster's client CA."""
        tls = self.root / "data" / "server" / "tls"
        ca = KeyPair(
            load_pem_certificates((tls / "client-ca.crt").read_bytes())[0],
            load_pem_key((tls / "client-ca.key").read_bytes()),
        )
        pair = new_leaf(ca, user, Usage.CLIENT, datetime.datetime.now(datetime.UTC), [])
        policy = PinnedCAPolicy((tls / "server-ca.crt").read_bytes(), pair)
        return KubeClient(HTTPSClient(reactor, policy), f"https://{HOST}:{self.port}")

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        upstream_state = ClusterState()
        upstream_state.put_node(
            {
                "metadata": {"name": "www.example.test"},
                "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.10"}]},
            }
        )
        upstream_factory = ClusterDNSFactory(upstream_state, reactor, [])
        upstream_port = free_port(UPSTREAM)
        udp = reactor.listenUDP(  # type: ignore[attr-defined]
            upstream_port, ClusterDNSDatagramProtocol(upstream_factory, reactor), interface=UPSTREAM
        )
        self.addCleanup(udp.stopListening)
        self.address, self.dns_port = _dns_address()
        settings = ClusterDNSSettings(
            listen=(self.address,), port=self.dns_port, upstream=((UPSTREAM, upstream_port),)
        )
        self.dns = ClusterDNS(
            reactor,
            self.credential("system:kube-proxy"),
            self.credential("system:k3s-controller"),
            settings,
        )
        self.dns.startService()
        self.addCleanup(self.dns.stopService)
        # Quiet as the server's forwarder is, so that what it logs is the server's.
        quiet = QuietUDPReactor(reactor)
        self.resolver = client.Resolver(servers=[(self.address, self.dns_port)], reactor=quiet)
        self.addCleanup(self._closed)
        return Deferred.fromCoroutine(self._synced())

    def _closed(self) -> Deferred[None]:
        """Close the resolver's TCP connections; let both ends see it."""
        for connection in self.resolver.connections:
            connection.transport.loseConnection()
        return deferLater(reactor, 0.05)

    async def _synced(self) -> None:
        for _ in range(200):
            if self.dns.state.synced and ("dnstest", "db") in self.dns.state.slices:
                return
            await deferLater(reactor, 0.05)
        self.fail("the cluster DNS never synced")

    async def addresses(self, name: str) -> list[str]:
        answers, _, _ = await self.resolver.lookupAddress(name)
        return [r.payload.dottedQuad() for r in answers if r.type == dns.A]

    def test_cluster_names(self) -> Deferred[None]:
        """Services, the server's kube-dns, headless endpoints and SRV, over UDP."""

        async def check() -> None:
            self.assertEqual(
                await self.addresses("kubernetes.default.svc.cluster.local"), ["10.43.0.1"]
            )
            self.assertEqual(
                await self.addresses("kube-dns.kube-system.svc.cluster.local"), ["10.43.0.10"]
            )
            self.assertEqual(
                await self.addresses("db-0.db.dnstest.svc.cluster.local"), ["10.42.0.5"]
            )
            answers, _, additional = await self.resolver.lookupService(
                "_pg._tcp.db.dnstest.svc.cluster.local"
            )
            srv: Any = answers[0].payload
            self.assertEqual(
                (srv.port, str(srv.target)), (5432, "db-0.db.dnstest.svc.cluster.local")
            )
            self.assertEqual(len(additional), 1)
            failure = None
            try:
                await self.resolver.lookupAddress("nope.dnstest.svc.cluster.local")
            except error.DNSNameError as e:
                failure = e
            self.assertIsNotNone(failure)

        return Deferred.fromCoroutine(check())

    def test_forwarded_and_external_name(self) -> Deferred[None]:
        """Other names go upstream; an ExternalName's CNAME brings the target's address."""

        logged: list[str] = []

        def observe(event: Any) -> None:
            logged.append(formatEvent(event))

        observer = cast(ILogObserver, observe)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

        async def check() -> None:
            self.assertEqual(await self.addresses("www.example.test"), ["192.0.2.10"])
            # The forwarder's port for each question comes and goes without a word.
            self.assertEqual([line for line in logged if "object at 0x" in line], [])
            answers, _, _ = await self.resolver.lookupAddress("ext.dnstest.svc.cluster.local")
            self.assertEqual(
                [(r.type, str(r.name)) for r in answers],
                [(dns.CNAME, "ext.dnstest.svc.cluster.local"), (dns.A, "www.example.test")],
            )

        return Deferred.fromCoroutine(check())

    def test_tcp(self) -> Deferred[None]:
        async def check() -> None:
            message = await self.resolver.queryTCP(
                [dns.Query("web.dnstest.svc.cluster.local", dns.A)]
            )
            self.assertEqual((message.rCode, len(message.answers)), (dns.OK, 1))

        return Deferred.fromCoroutine(check())

    def test_busybox_nslookup(self) -> Deferred[None]:
        """busybox's resolver (port 53 only: needs root) finds a Service and an SRV record."""
        # The suite runs as root (its machine tests need it too): a port other than 53 is a failure.
        self.assertEqual(self.dns_port, 53, "no 127.0.0.43-59 address could bind port 53")

        async def check() -> None:
            out, err, code = await getProcessOutputAndValue(
                "/usr/bin/busybox",
                ["nslookup", "web.dnstest.svc.cluster.local", self.address],
                env={},
            )
            self.assertEqual(code, 0, (out + err).decode())
            web = await self.addresses("web.dnstest.svc.cluster.local")
            self.assertIn(f"Address: {web[0]}", out.decode())
            out, err, code = await getProcessOutputAndValue(
                "/usr/bin/busybox",
                ["nslookup", "-type=srv", "_http._tcp.web.dnstest.svc.cluster.local", self.address],
                env={},
            )
            self.assertIn("web.dnstest.svc.cluster.local", out.decode(), (out + err).decode())
            self.assertIn(" 80 ", out.decode())

        return Deferred.fromCoroutine(check())
