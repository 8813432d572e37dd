"""
The node's cluster DNS server, in memory: C{twisted.names}' server over the
cluster state, answering UDP and TCP questions with CoreDNS's flags,
truncation and EDNS0; the informers that fill the state; the resolv.conf
rules.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase

from k3stw.kubelet.pods.spec import DNSSettings as PodDNSSettings
from k3stw.kubelet.pods.spec import dns_config
from k3stw.network.dns import (
    ClusterDNS,
    ClusterDNSDatagramProtocol,
    ClusterDNSFactory,
    ClusterDNSSettings,
)
from k3stw.network.resolvconf import FALLBACK_NAMESERVERS, ResolvConf, parse, pick
from tests.support.fakes import FakeKubeClient
from tests.test_network_dnsrecords import cluster, endpoint_slice


class DatagramTransport:
    """What a UDP port is to its protocol: the datagrams written, to whom."""

    def __init__(self) -> None:
        self.written: list[tuple[bytes, Any]] = []

    def write(self, data: bytes, address: Any) -> None:
        self.written.append((data, address))


def question(
    name: str, qtype: int, ident: int = 1, edns: int | None = None, recurse: bool = True
) -> bytes:
    message = dns.Message(id=ident, recDes=recurse)
    message.queries = [dns.Query(name, qtype)]
    if edns is not None:
        message.additional = [dns.RRHeader(b"", dns.OPT, edns, 0, dns.UnknownRecord(b""))]
    return message.toStr()


class UDPServer:
    """A factory and its UDP protocol on a fake transport."""

    def __init__(self, state: Any = None, upstream: list[tuple[str, int]] | None = None) -> None:
        self.clock = Clock()
        self.state = state or cluster()
        self.factory = ClusterDNSFactory(self.state, self.clock, upstream or [])
        self.protocol = ClusterDNSDatagramProtocol(self.factory, self.clock)
        self.transport = DatagramTransport()
        self.protocol.makeConnection(self.transport)  # type: ignore[arg-type]

    def ask(self, data: bytes) -> tuple[dns.Message, bytes]:
        self.protocol.datagramReceived(data, ("127.0.0.9", 5353))
        raw, address = self.transport.written.pop()
        assert address == ("127.0.0.9", 5353)
        reply = dns.Message()
        reply.fromStr(raw)
        return reply, raw


def big_headless(count: int = 60) -> Any:
    state = cluster()
    endpoints = [{"addresses": [f"10.42.9.{i}"], "hostname": f"member-{i}"} for i in range(count)]
    state.put_slice(endpoint_slice("db", endpoints, name="db-big"))
    return state


class ServerTests(SynchronousTestCase):
    def test_cluster_answer_flags(self) -> None:
        """A cluster name: authoritative, no recursion available, the question's ID and name."""
        server = UDPServer()
        reply, _ = server.ask(question("kubernetes.default.svc.cluster.local", dns.A, ident=77))
        self.assertEqual((reply.id, reply.answer, reply.auth, reply.recAv), (77, 1, 1, 0))
        self.assertEqual(reply.rCode, dns.OK)
        [record] = reply.answers
        self.assertEqual(
            (str(record.name), record.ttl), ("kubernetes.default.svc.cluster.local", 5)
        )

    def test_nxdomain_carries_soa(self) -> None:
        server = UDPServer()
        reply, _ = server.ask(question("nope.default.svc.cluster.local", dns.A))
        self.assertEqual((reply.rCode, reply.auth, reply.answers), (dns.ENAME, 1, []))
        self.assertEqual([r.type for r in reply.authority], [dns.SOA])

    def test_no_upstream_refuses_other_names(self) -> None:
        """Without a nameserver to forward to, names outside the cluster are refused."""
        server = UDPServer()
        reply, _ = server.ask(question("example.com", dns.A))
        self.assertEqual(reply.rCode, dns.EREFUSED)

    def test_udp_truncated_without_edns(self) -> None:
        """An answer over 512 bytes: whole records dropped, TC set, still a valid message."""
        server = UDPServer(big_headless())
        reply, raw = server.ask(question("db.default.svc.cluster.local", dns.A))
        self.assertLessEqual(len(raw), 512)
        self.assertEqual(reply.trunc, 1)
        self.assertTrue(0 < len(reply.answers) < 62)

    def test_edns_raises_the_limit(self) -> None:
        """With EDNS0's payload size the whole answer fits, and the reply has an OPT record."""
        server = UDPServer(big_headless())
        reply, raw = server.ask(question("db.default.svc.cluster.local", dns.A, edns=4096))
        self.assertGreater(len(raw), 512)
        self.assertEqual((reply.trunc, len(reply.answers)), (0, 62))
        self.assertEqual([(r.type, r.cls) for r in reply.additional], [(dns.OPT, 4096)])

    def test_tcp_is_not_truncated(self) -> None:
        server = UDPServer(big_headless())
        protocol = server.factory.buildProtocol(("127.0.0.9", 5353))
        transport = StringTransport()
        protocol.makeConnection(transport)
        data = question("db.default.svc.cluster.local", dns.A)
        protocol.dataReceived(len(data).to_bytes(2, "big") + data)
        written = transport.value()
        self.assertEqual(int.from_bytes(written[:2], "big"), len(written) - 2)
        reply = dns.Message()
        reply.fromStr(written[2:])
        self.assertEqual((reply.trunc, len(reply.answers)), (0, 62))
        protocol.connectionLost(None)

    def test_repeated_question_from_kept_packet(self) -> None:
        """The same question again (another ID) is answered from the kept packet."""
        server = UDPServer()
        first, _ = server.ask(question("web.default.svc.cluster.local", dns.A, ident=1))
        self.assertEqual(len(server.factory.packets), 1)
        # The state changes behind the server's back: the kept packet still answers...
        server.state.drop_service({"metadata": {"name": "web", "namespace": "default"}})
        again, _ = server.ask(question("web.default.svc.cluster.local", dns.A, ident=2))
        self.assertEqual((again.id, again.answers), (2, first.answers))
        # ...until the state says it changed.
        server.factory.changed()
        gone, _ = server.ask(question("web.default.svc.cluster.local", dns.A, ident=3))
        self.assertEqual(gone.rCode, dns.ENAME)

    def test_unsynced_servfail_not_kept(self) -> None:
        state = cluster()
        state.synced = False
        server = UDPServer(state)
        reply, _ = server.ask(question("nope.default.svc.cluster.local", dns.A))
        self.assertEqual(reply.rCode, dns.ESERVER)
        self.assertEqual(server.factory.packets, {})

    def test_no_question_is_format_error(self) -> None:
        server = UDPServer()
        reply, _ = server.ask(dns.Message(id=5).toStr())
        self.assertEqual((reply.id, reply.rCode), (5, dns.EFORMAT))


class InformerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.client = FakeKubeClient(self.clock)
        settings = ClusterDNSSettings(listen=(), cluster_dns=("10.43.0.10",))
        self.dns = ClusterDNS(self.clock, self.client, self.client, settings)

    def wait(self, coroutine: Any) -> Any:
        return self.successResultOf(Deferred.fromCoroutine(coroutine))

    def ask(self, name: str, qtype: int = dns.A) -> dns.Message:
        server = UDPServer(self.dns.state)
        server.factory = self.dns.factory
        server.protocol = ClusterDNSDatagramProtocol(self.dns.factory, self.clock)
        server.protocol.makeConnection(server.transport)  # type: ignore[arg-type]
        reply, _ = server.ask(question(name, qtype))
        return reply

    def test_state_follows_the_api(self) -> None:
        """Services, slices, namespaces and nodes reach the answers as the API changes."""
        self.wait(self.client.create("/api/v1/namespaces", {"metadata": {"name": "default"}}))
        self.dns.startService()
        self.addCleanup(self.dns.stopService)
        self.assertTrue(self.dns.state.synced)
        self.assertEqual(self.ask("web.default.svc.cluster.local").rCode, dns.ENAME)
        self.wait(
            self.client.create(
                "/api/v1/namespaces/default/services",
                {
                    "metadata": {"name": "web", "namespace": "default"},
                    "spec": {
                        "clusterIP": "10.43.7.7",
                        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
                    },
                },
            )
        )
        reply = self.ask("web.default.svc.cluster.local")
        self.assertEqual([r.payload.dottedQuad() for r in reply.answers], ["10.43.7.7"])  # type: ignore[union-attr]
        self.wait(
            self.client.create(
                "/api/v1/nodes",
                {
                    "metadata": {"name": "agent-1"},
                    "status": {"addresses": [{"type": "InternalIP", "address": "10.199.2.2"}]},
                },
            )
        )
        self.assertEqual(len(self.ask("agent-1").answers), 1)
        self.wait(self.client.delete("/api/v1/namespaces/default/services/web"))
        self.assertEqual(self.ask("web.default.svc.cluster.local").rCode, dns.ENAME)


class ResolvConfTests(SynchronousTestCase):
    def test_parse(self) -> None:
        conf = parse(
            "# generated\nnameserver 10.0.0.2\nnameserver 10.0.0.3 # second\n"
            "domain old.example\nsearch corp.example lab.example\noptions ndots:2 edns0\n"
        )
        self.assertEqual(
            conf,
            ResolvConf(
                ("10.0.0.2", "10.0.0.3"), ("corp.example", "lab.example"), ("ndots:2", "edns0")
            ),
        )

    def test_loopback_stub_passed_over(self) -> None:
        """systemd-resolved's 127.0.0.53 stub is passed over for the file it reads."""
        files = {
            "/etc/resolv.conf": "nameserver 127.0.0.53\nsearch lan\n",
            "/run/systemd/resolve/resolv.conf": "nameserver 192.168.1.1\nsearch lan\n",
        }
        conf = pick(read=files.get)
        self.assertEqual(
            (conf.path, conf.nameservers), ("/run/systemd/resolve/resolv.conf", ("192.168.1.1",))
        )

    def test_fallback(self) -> None:
        """No usable file (link-local, none at all): k3s's Google stub."""
        files = {"/etc/resolv.conf": "nameserver fe80::1\n"}
        self.assertEqual(pick(read=files.get).nameservers, FALLBACK_NAMESERVERS)

    def test_override_unchecked(self) -> None:
        files = {"/custom": "nameserver 127.0.0.1\n"}
        self.assertEqual(pick("/custom", read=files.get).nameservers, ("127.0.0.1",))


HOST = ResolvConf(("192.168.1.1", "192.168.1.2"), ("corp.example", "cluster.local"), ("ndots:2",))


def resolver(**spec: Any) -> tuple[list[str], list[str], list[str]]:
    pod = {"metadata": {"name": "p", "namespace": "apps"}, "spec": spec}
    config = dns_config(pod, PodDNSSettings(("10.43.0.10",), "cluster.local", HOST))
    return list(config.servers), list(config.searches), list(config.options)


class PodResolverTests(SynchronousTestCase):
    """The pod resolv.conf the kubelet forms, by dnsPolicy."""

    def test_cluster_first_appends_host_search_domains(self) -> None:
        """Cluster search path, then the node's own domains (duplicates once), ndots:5 alone."""
        self.assertEqual(
            resolver(),
            (
                ["10.43.0.10"],
                ["apps.svc.cluster.local", "svc.cluster.local", "cluster.local", "corp.example"],
                ["ndots:5"],
            ),
        )

    def test_default_copies_the_node_file(self) -> None:
        self.assertEqual(
            resolver(dnsPolicy="Default"),
            (["192.168.1.1", "192.168.1.2"], ["corp.example", "cluster.local"], ["ndots:2"]),
        )
        self.assertEqual(resolver(hostNetwork=True), resolver(dnsPolicy="Default"))

    def test_none_and_dns_config_merge(self) -> None:
        """None takes only dnsConfig; options merge by name, the pod's value winning."""
        self.assertEqual(
            resolver(
                dnsPolicy="None",
                dnsConfig={"nameservers": ["1.1.1.1"], "options": [{"name": "edns0"}]},
            ),
            (["1.1.1.1"], [], ["edns0"]),
        )
        self.assertEqual(
            resolver(dnsConfig={"options": [{"name": "ndots", "value": "2"}]})[2], ["ndots:2"]
        )

    def test_limits(self) -> None:
        """At most three nameservers; the search list cut from the end to 32 domains."""
        servers, searches, _ = resolver(
            dnsConfig={
                "nameservers": ["1.1.1.1", "8.8.8.8", "9.9.9.9"],
                "searches": [f"d{i}.example" for i in range(40)],
            }
        )
        self.assertEqual(servers, ["10.43.0.10", "1.1.1.1", "8.8.8.8"])
        self.assertEqual((len(searches), searches[-1]), (32, "d27.example"))
