"""
The cluster's DNS records from informer state, as CoreDNS's hosts and
kubernetes plugins answer them: no sockets, messages built and read in memory.
"""

from __future__ import annotations

from typing import Any

from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase

from k3stw.machinery.nodes import node_host_entries
from k3stw.machinery.objects import Object
from k3stw.network.dnsrecords import ClusterState, Reply, answer


def service(name: str, namespace: str = "default", **spec: Any) -> Object:
    spec.setdefault("ports", [{"name": "http", "port": 80, "protocol": "TCP"}])
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec}


def endpoint_slice(
    service_name: str,
    endpoints: list[Object],
    ports: list[Object] | None = None,
    namespace: str = "default",
    name: str = "",
) -> Object:
    return {
        "metadata": {
            "name": name or f"{service_name}-abcde",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}] if ports is None else ports,
    }


def node(name: str, *addresses: tuple[str, str]) -> Object:
    return {
        "metadata": {"name": name},
        "status": {"addresses": [{"type": t, "address": a} for t, a in addresses]},
    }


def cluster() -> ClusterState:
    state = ClusterState("cluster.local", ["10.43.0.10"])
    for ns in ("default", "kube-system", "other"):
        state.put_namespace({"metadata": {"name": ns}})
    state.put_service(
        service(
            "kubernetes",
            clusterIP="10.43.0.1",
            clusterIPs=["10.43.0.1"],
            ports=[{"name": "https", "port": 443, "protocol": "TCP"}],
        )
    )
    state.put_service(
        service(
            "web",
            clusterIP="10.43.5.6",
            clusterIPs=["10.43.5.6", "fd00:43::6"],
            ports=[
                {"name": "http", "port": 80, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"port": 9000, "protocol": "TCP"},
            ],
        )
    )
    state.put_service(service("db", clusterIP="None", clusterIPs=["None"]))
    state.put_slice(
        endpoint_slice(
            "db",
            [
                {"addresses": ["10.42.1.5"], "hostname": "db-0", "conditions": {"ready": True}},
                {"addresses": ["10.42.2.7"], "conditions": {}},
                {"addresses": ["10.42.3.9"], "hostname": "db-2", "conditions": {"ready": False}},
            ],
        )
    )
    state.put_service(service("empty", clusterIP="None", clusterIPs=["None"]))
    state.put_service(service("ext", type="ExternalName", externalName="example.com", ports=[]))
    state.put_node(node("server-1", ("InternalIP", "10.199.1.2"), ("Hostname", "server-1")))
    state.put_node(
        node("agent-1", ("InternalIP", "10.199.2.2"), ("InternalIP", "fd00::2"), ("Hostname", "a1"))
    )
    state.synced = True
    state.serial = 1700000000
    return state


def ask(state: ClusterState, name: str, qtype: int) -> Reply:
    reply = answer(state, name.encode(), qtype)
    assert reply is not None, f"{name} was passed on"
    return reply


def srv(record: dns.RRHeader) -> dns.Record_SRV:
    payload: Any = record.payload
    assert isinstance(payload, dns.Record_SRV)
    return payload


def payloads(records: list[dns.RRHeader]) -> list[str]:
    return [f"{r.name} {dns.QUERY_TYPES[r.type]} {r.ttl} {_data(r.payload)}" for r in records]


def _data(payload: Any) -> str:
    if isinstance(payload, (dns.Record_A, dns.Record_AAAA)):
        return str(payload.dottedQuad() if isinstance(payload, dns.Record_A) else payload._address)
    if isinstance(payload, dns.Record_SRV):
        return f"{payload.priority} {payload.weight} {payload.port} {payload.target}"
    if isinstance(payload, (dns.Record_CNAME, dns.Record_PTR, dns.Record_NS)):
        return str(payload.name)
    if isinstance(payload, dns.Record_TXT):
        return repr(payload.data)
    return repr(payload)


class ServiceRecordTests(SynchronousTestCase):
    def test_cluster_ip(self) -> None:
        """A ClusterIP Service answers its address with TTL 5, authoritatively."""
        reply = ask(cluster(), "kubernetes.default.svc.cluster.local", dns.A)
        self.assertEqual(reply.rcode, dns.OK)
        self.assertTrue(reply.authoritative)
        self.assertEqual(
            payloads(reply.answers), ["kubernetes.default.svc.cluster.local A 5 10.43.0.1"]
        )

    def test_query_case_is_kept(self) -> None:
        """Names compare case-insensitively; the answer keeps the question's spelling."""
        reply = ask(cluster(), "Web.Default.SVC.cluster.local.", dns.A)
        self.assertEqual(str(reply.answers[0].name), "Web.Default.SVC.cluster.local")

    def test_dual_stack(self) -> None:
        """A dual-stack Service answers AAAA with its IPv6 ClusterIP; A with the IPv4 one."""
        state = cluster()
        self.assertEqual(
            [
                _data(r.payload)
                for r in ask(state, "web.default.svc.cluster.local", dns.AAAA).answers
            ],
            ["fd00:43::6"],
        )
        self.assertEqual(
            [_data(r.payload) for r in ask(state, "web.default.svc.cluster.local", dns.A).answers],
            ["10.43.5.6"],
        )

    def test_aaaa_on_ipv4_service_is_nodata(self) -> None:
        """An IPv4-only Service asked for AAAA: NOERROR, no answer, the zone's SOA."""
        reply = ask(cluster(), "kubernetes.default.svc.cluster.local", dns.AAAA)
        self.assertEqual((reply.rcode, reply.answers), (dns.OK, []))
        self.assertEqual([r.type for r in reply.authority], [dns.SOA])

    def test_missing_service_is_nxdomain_with_soa(self) -> None:
        """A Service that does not exist: NXDOMAIN with CoreDNS's SOA in the authority section."""
        reply = ask(cluster(), "nope.default.svc.cluster.local", dns.A)
        self.assertEqual(reply.rcode, dns.ENAME)
        [soa] = reply.authority
        self.assertEqual((str(soa.name), soa.ttl), ("cluster.local", 5))
        record: Any = soa.payload
        self.assertEqual(
            (str(record.mname), str(record.rname), record.serial),
            ("ns.dns.cluster.local", "hostmaster.cluster.local", 1700000000),
        )
        self.assertEqual(
            (record.refresh, record.retry, record.expire, record.minimum), (7200, 1800, 86400, 5)
        )

    def test_not_synced_miss_is_servfail(self) -> None:
        """Before the informers listed, a miss is SERVFAIL, not a cacheable NXDOMAIN."""
        state = cluster()
        state.synced = False
        self.assertEqual(ask(state, "nope.default.svc.cluster.local", dns.A).rcode, dns.ESERVER)

    def test_nodata_and_nxdomain_table(self) -> None:
        """CoreDNS's split between names that exist without records and names that do not."""
        state = cluster()
        expected = {
            ("cluster.local", dns.A): dns.OK,
            ("svc.cluster.local", dns.A): dns.OK,
            ("pod.cluster.local", dns.A): dns.OK,
            ("default.svc.cluster.local", dns.A): dns.OK,
            ("missing.svc.cluster.local", dns.A): dns.ENAME,
            ("web.missing.svc.cluster.local", dns.A): dns.ENAME,
            ("web.default.svc.cluster.local", dns.MX): dns.OK,
            ("web.default.svc.cluster.local", dns.TXT): dns.OK,
            ("nope.default.svc.cluster.local", dns.TXT): dns.ENAME,
            ("empty.default.svc.cluster.local", dns.A): dns.ENAME,
            ("foo.cluster.local", dns.A): dns.ENAME,
            ("a.b.c.web.default.svc.cluster.local", dns.A): dns.ENAME,
            ("web.default.svc.cluster.local", dns.AXFR): dns.EREFUSED,
        }
        found = {key: ask(state, *key).rcode for key in expected}
        self.assertEqual(found, expected)

    def test_srv_named_port(self) -> None:
        """``_<port>._<proto>.<svc>``: one SRV to the Service's name, its address in additional."""
        reply = ask(cluster(), "_http._tcp.web.default.svc.cluster.local", dns.SRV)
        self.assertEqual(
            payloads(reply.answers),
            [
                "_http._tcp.web.default.svc.cluster.local SRV 5 "
                "0 50 80 web.default.svc.cluster.local"
            ],
        )
        self.assertEqual(
            payloads(reply.additional),
            [
                "web.default.svc.cluster.local A 5 10.43.5.6",
                "web.default.svc.cluster.local AAAA 5 fd00:43::6",
            ],
        )

    def test_srv_protocol_must_match(self) -> None:
        """The protocol label is compared to the port's protocol: _dns._tcp does not exist."""
        state = cluster()
        self.assertEqual(
            ask(state, "_dns._udp.web.default.svc.cluster.local", dns.SRV).rcode, dns.OK
        )
        self.assertEqual(
            ask(state, "_dns._tcp.web.default.svc.cluster.local", dns.SRV).rcode, dns.ENAME
        )

    def test_srv_of_service_lists_every_port(self) -> None:
        """SRV on the bare Service name: every port, weight 100/n."""
        reply = ask(cluster(), "web.default.svc.cluster.local", dns.SRV)
        self.assertEqual(
            sorted((srv(r).port, srv(r).weight) for r in reply.answers),
            [(53, 16), (80, 16), (9000, 16)],
        )

    def test_external_name(self) -> None:
        """An ExternalName Service is a CNAME whose target the server chases upstream."""
        reply = ask(cluster(), "ext.default.svc.cluster.local", dns.A)
        self.assertEqual(
            payloads(reply.answers), ["ext.default.svc.cluster.local CNAME 5 example.com"]
        )
        self.assertEqual(reply.chase, b"example.com")
        cname = ask(cluster(), "ext.default.svc.cluster.local", dns.CNAME)
        self.assertEqual(cname.chase, None)
        self.assertEqual(len(cname.answers), 1)

    def test_schema_version(self) -> None:
        reply = ask(cluster(), "dns-version.cluster.local", dns.TXT)
        self.assertEqual(
            payloads(reply.answers), ["dns-version.cluster.local TXT 28800 [b'1.1.0']"]
        )

    def test_apex_ns_and_soa(self) -> None:
        """The zone's NS is ``ns.dns.<zone>`` with the kube-dns address as glue."""
        state = cluster()
        reply = ask(state, "cluster.local", dns.NS)
        self.assertEqual(payloads(reply.answers), ["cluster.local NS 5 ns.dns.cluster.local"])
        self.assertEqual(payloads(reply.additional), ["ns.dns.cluster.local A 5 10.43.0.10"])
        self.assertEqual([r.type for r in ask(state, "cluster.local", dns.SOA).answers], [dns.SOA])
        self.assertEqual(
            payloads(ask(state, "ns.dns.cluster.local", dns.A).answers),
            ["ns.dns.cluster.local A 5 10.43.0.10"],
        )


class HeadlessTests(SynchronousTestCase):
    def test_ready_endpoints(self) -> None:
        """A headless Service answers each ready endpoint (ready true or unset), not the others."""
        reply = ask(cluster(), "db.default.svc.cluster.local", dns.A)
        self.assertEqual(
            sorted(_data(r.payload) for r in reply.answers), ["10.42.1.5", "10.42.2.7"]
        )

    def test_endpoint_hostname(self) -> None:
        """``<hostname>.<svc>``, and the dashed address for an endpoint without one."""
        state = cluster()
        self.assertEqual(
            [
                _data(r.payload)
                for r in ask(state, "db-0.db.default.svc.cluster.local", dns.A).answers
            ],
            ["10.42.1.5"],
        )
        self.assertEqual(
            [
                _data(r.payload)
                for r in ask(state, "10-42-2-7.db.default.svc.cluster.local", dns.A).answers
            ],
            ["10.42.2.7"],
        )
        self.assertEqual(ask(state, "db-2.db.default.svc.cluster.local", dns.A).rcode, dns.ENAME)

    def test_headless_srv_targets_each_endpoint(self) -> None:
        reply = ask(cluster(), "_http._tcp.db.default.svc.cluster.local", dns.SRV)
        self.assertEqual(
            sorted(str(srv(r).target) for r in reply.answers),
            ["10-42-2-7.db.default.svc.cluster.local", "db-0.db.default.svc.cluster.local"],
        )
        self.assertEqual({srv(r).weight for r in reply.answers}, {50})
        self.assertEqual(len(reply.additional), 2)

    def test_endpoints_without_ports_have_no_srv(self) -> None:
        """A slice without ports still answers A; SRV has nothing (CoreDNS's port -1)."""
        state = cluster()
        state.put_slice(endpoint_slice("db", [{"addresses": ["10.42.4.4"]}], ports=[], name="db-x"))
        self.assertIn(
            "10.42.4.4",
            [_data(r.payload) for r in ask(state, "db.default.svc.cluster.local", dns.A).answers],
        )
        reply = ask(state, "4-4.db.default.svc.cluster.local", dns.SRV)
        self.assertEqual(reply.rcode, dns.ENAME)

    def test_slice_removed(self) -> None:
        """A deleted slice takes its endpoints out: the headless name no longer exists."""
        state = cluster()
        state.drop_slice(endpoint_slice("db", []))
        self.assertEqual(ask(state, "db.default.svc.cluster.local", dns.A).rcode, dns.ENAME)


class PodAndReverseTests(SynchronousTestCase):
    def test_pod_record(self) -> None:
        """``pods insecure``: any dashed IPv4 in an existing namespace."""
        state = cluster()
        self.assertEqual(
            payloads(ask(state, "10-42-0-7.default.pod.cluster.local", dns.A).answers),
            ["10-42-0-7.default.pod.cluster.local A 5 10.42.0.7"],
        )
        self.assertEqual(ask(state, "10-42-0-7.missing.pod.cluster.local", dns.A).rcode, dns.ENAME)
        self.assertEqual(ask(state, "not-an-ip.default.pod.cluster.local", dns.A).rcode, dns.ENAME)
        self.assertEqual(
            [
                _data(r.payload)
                for r in ask(state, "fd00--1.default.pod.cluster.local", dns.AAAA).answers
            ],
            ["fd00::1"],
        )

    def test_ptr_cluster_ip(self) -> None:
        reply = ask(cluster(), "6.5.43.10.in-addr.arpa", dns.PTR)
        self.assertEqual(
            payloads(reply.answers), ["6.5.43.10.in-addr.arpa PTR 5 web.default.svc.cluster.local"]
        )

    def test_ptr_named_endpoint_only(self) -> None:
        """An endpoint's PTR needs its hostname; other addresses fall through to the forwarder."""
        state = cluster()
        self.assertEqual(
            [_data(r.payload) for r in ask(state, "5.1.42.10.in-addr.arpa", dns.PTR).answers],
            ["db-0.db.default.svc.cluster.local"],
        )
        self.assertIsNone(answer(state, b"7.2.42.10.in-addr.arpa", dns.PTR))

    def test_ptr_ipv6(self) -> None:
        name = ".".join(reversed("fd000043000000000000000000000006")) + ".ip6.arpa"
        self.assertEqual(
            [_data(r.payload) for r in ask(cluster(), name, dns.PTR).answers],
            ["web.default.svc.cluster.local"],
        )

    def test_other_names_are_passed_on(self) -> None:
        self.assertIsNone(answer(cluster(), b"example.com", dns.A))


class NodeHostsTests(SynchronousTestCase):
    def test_entries(self) -> None:
        """k3s's NodeHosts lines: each family's first InternalIP, the name, a differing hostname."""
        self.assertEqual(
            node_host_entries(
                node(
                    "agent-1",
                    ("InternalIP", "fd00::2"),
                    ("InternalIP", "10.199.2.2"),
                    ("InternalIP", "10.199.2.3"),
                    ("ExternalIP", "1.2.3.4"),
                    ("Hostname", "a1"),
                )
            ),
            [("10.199.2.2", ["agent-1", "a1"]), ("fd00::2", ["agent-1", "a1"])],
        )

    def test_hosts_answer_first(self) -> None:
        """Node names answer from NodeHosts with TTL 60, in any zone, A and AAAA and PTR."""
        state = cluster()
        self.assertEqual(
            payloads(ask(state, "agent-1", dns.A).answers), ["agent-1 A 60 10.199.2.2"]
        )
        self.assertEqual(payloads(ask(state, "A1.", dns.AAAA).answers), ["A1 AAAA 60 fd00::2"])
        self.assertEqual(
            [_data(r.payload) for r in ask(state, "2.1.199.10.in-addr.arpa", dns.PTR).answers],
            ["server-1"],
        )

    def test_hosts_miss_falls_through(self) -> None:
        """A node name asked for a type it has no address of goes on (here: to the forwarder)."""
        state = cluster()
        self.assertIsNone(answer(state, b"server-1", dns.AAAA))
        state.drop_node(node("server-1"))
        self.assertIsNone(answer(state, b"server-1", dns.A))


class WireTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """A reply's records survive encoding into a DNS message and decoding back."""
        reply = ask(cluster(), "_http._tcp.db.default.svc.cluster.local", dns.SRV)
        message = dns.Message(id=7, answer=True, auth=True)
        message.queries = [dns.Query(b"_http._tcp.db.default.svc.cluster.local", dns.SRV)]
        message.answers, message.additional = reply.answers, reply.additional
        decoded = dns.Message()
        decoded.fromStr(message.toStr())
        self.assertEqual((decoded.id, decoded.auth), (7, 1))
        self.assertEqual(decoded.answers, reply.answers)
        self.assertEqual(decoded.additional, reply.additional)
