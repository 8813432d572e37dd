"""
kube-proxy's iptables rules as k3stw renders them (k3stw.network.proxyrules):
chain names by kube's hash, checked against names kube-proxy itself produces
(its proxier tests and any kube node's ``iptables-save``), and each Service
feature's rules in kube's order and words.  Pure: no kernel, no sockets.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.network.proxyrules import (
    DISPATCH_ABOVE,
    LOCALNET_JUMPS,
    NodeFacts,
    ServicePort,
    UDPFlows,
    chain_hash,
    endpoint_chain,
    render,
    service_ports,
    stale_udp_flows,
)

NODE = NodeFacts(
    name="node1", node_ips=("192.168.0.2",), cluster_cidrs=("10.0.0.0/8",), random_fully=False
)


def service(name: str = "svc1", namespace: str = "ns1", **spec: Any) -> dict[str, Any]:
    status = spec.pop("status", {})
    body: dict[str, Any] = {"clusterIP": "172.30.0.41", "ports": [{"name": "p80", "port": 80}]}
    body.update(spec)
    return {"metadata": {"namespace": namespace, "name": name}, "spec": body, "status": status}


def endpoint(ip: str, node: str = "node2", **conditions: bool) -> dict[str, Any]:
    return {"addresses": [ip], "nodeName": node, "conditions": conditions}


def slice_of(
    *endpoints: dict[str, Any], service: str = "svc1", namespace: str = "ns1", port: int = 80
) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": namespace,
            "name": f"{service}-x",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "p80", "port": port, "protocol": "TCP"}],
        "endpoints": list(endpoints),
    }


def tables(text: str) -> dict[str, list[str]]:
    """Each table's lines of a restore input, without the table and COMMIT lines."""
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("*"):
            current = found.setdefault(line[1:], [])
        elif line and line != "COMMIT":
            current.append(line)
    return found


def rules_of(text: str, table: str, chain: str) -> list[str]:
    return [line for line in tables(text)[table] if line.startswith(f"-A {chain} ")]


SVC = "KUBE-SVC-XPGD46QRK7WJZT7O"
SVL = "KUBE-SVL-XPGD46QRK7WJZT7O"
EXT = "KUBE-EXT-XPGD46QRK7WJZT7O"
FW = "KUBE-FW-XPGD46QRK7WJZT7O"
SEP1 = "KUBE-SEP-SXIVWICOYRO3J4NJ"  # 10.180.0.1:80
SEP2 = "KUBE-SEP-LXVODXWDISEETFEF"  # 10.180.0.2:80
SEP3 = "KUBE-SEP-ZX7GRIZKSNUQ3LAJ"  # 10.180.2.1:80


class ChainNameTests(SynchronousTestCase):
    def test_names_are_kubes(self) -> None:
        """The hashes kube-proxy gives these service ports and endpoints (sha256, base32, 16)."""
        for port_name, protocol, expected in [
            ("default/kubernetes:https", "tcp", "NPX46M4PTMTKRN6Y"),
            ("kube-system/kube-dns:dns", "udp", "TCOU7JCQXEZGVUNU"),
            ("kube-system/kube-dns:dns-tcp", "tcp", "ERIFXISQEP7F7OF4"),
            ("kube-system/kube-dns:metrics", "tcp", "JD5MR3NA4I4DYORP"),
            ("ns1/svc1:p80", "tcp", "XPGD46QRK7WJZT7O"),
            ("ns5/svc5:p80", "tcp", "NUKIZ6OKUXPJNT4C"),
        ]:
            self.assertEqual(chain_hash(port_name + protocol), expected, port_name)
        for address, expected in [
            ("10.180.0.1:80", SEP1),
            ("10.180.0.2:80", SEP2),
            ("10.180.2.1:80", SEP3),
        ]:
            self.assertEqual(endpoint_chain("ns1/svc1:p80", "tcp", address), expected)

    def test_port_names(self) -> None:
        """``ns/svc:port`` for a named port, ``ns/svc`` for an unnamed one (kube's String())."""
        [named] = service_ports(service())
        [unnamed] = service_ports(service(ports=[{"port": 53, "protocol": "UDP"}]))
        self.assertEqual((named.name, named.protocol), ("ns1/svc1:p80", "tcp"))
        self.assertEqual(named.cluster_chain, SVC)
        self.assertEqual((unnamed.name, unnamed.protocol), ("ns1/svc1", "udp"))
        self.assertEqual(unnamed.cluster_chain, "KUBE-SVC-" + chain_hash("ns1/svc1udp"))


class ServiceRulesTests(SynchronousTestCase):
    def test_nodeport_with_two_endpoints_as_kube_writes_it(self) -> None:
        """kube-proxy's own expected nat table for this Service, rule for rule."""
        text = render(
            [service(type="NodePort", ports=[{"name": "p80", "port": 80, "nodePort": 3001}])],
            [slice_of(endpoint("10.180.0.1"), endpoint("10.180.0.2"))],
            NODE,
        ).text
        self.assertEqual(
            tables(text)["nat"],
            [
                ":KUBE-SERVICES - [0:0]",
                ":KUBE-NODEPORTS - [0:0]",
                ":KUBE-POSTROUTING - [0:0]",
                ":KUBE-MARK-MASQ - [0:0]",
                f":{EXT} - [0:0]",
                f":{SVC} - [0:0]",
                f":{SEP1} - [0:0]",
                f":{SEP2} - [0:0]",
                "-A KUBE-POSTROUTING -m mark ! --mark 0x004000/0x004000 -j RETURN",
                "-A KUBE-POSTROUTING -j MARK --xor-mark 0x004000",
                '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring'
                ' SNAT" -j MASQUERADE',
                "-A KUBE-MARK-MASQ -j MARK --or-mark 0x004000",
                '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp'
                f" -d 172.30.0.41 --dport 80 -j {SVC}",
                "-A KUBE-NODEPORTS -m comment --comment ns1/svc1:p80 -m tcp -p tcp --dport 3001"
                f" -j {EXT}",
                f'-A {SVC} -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp'
                " -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ",
                f'-A {EXT} -m comment --comment "masquerade traffic for ns1/svc1:p80 external'
                ' destinations" -j KUBE-MARK-MASQ',
                f"-A {EXT} -j {SVC}",
                f'-A {SVC} -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80"'
                f" -m statistic --mode random --probability 0.5000000000 -j {SEP1}",
                f'-A {SVC} -m comment --comment "ns1/svc1:p80 -> 10.180.0.2:80" -j {SEP2}',
                f"-A {SEP1} -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ",
                f"-A {SEP1} -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT"
                " --to-destination 10.180.0.1:80",
                f"-A {SEP2} -m comment --comment ns1/svc1:p80 -s 10.180.0.2 -j KUBE-MARK-MASQ",
                f"-A {SEP2} -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT"
                " --to-destination 10.180.0.2:80",
                '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this'
                ' must be the last rule in this chain" -m addrtype --dst-type LOCAL'
                " -j KUBE-NODEPORTS",
            ],
        )
        self.assertEqual(
            tables(text)["filter"][:5],
            [
                ":KUBE-SERVICES - [0:0]",
                ":KUBE-EXTERNAL-SERVICES - [0:0]",
                ":KUBE-FORWARD - [0:0]",
                ":KUBE-NODEPORTS - [0:0]",
                ":KUBE-PROXY-FIREWALL - [0:0]",
            ],
        )
        self.assertEqual(
            rules_of(text, "filter", "KUBE-FORWARD"),
            [
                "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
                '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules"'
                " -m mark --mark 0x004000/0x004000 -j ACCEPT",
                '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule"'
                " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            ],
        )

    def test_probabilities_make_a_uniform_choice(self) -> None:
        """With n endpoints, rule i matches 1/(n-i) of what reaches it, the last all the rest."""
        eps = [endpoint(f"10.180.0.{i}") for i in range(1, 5)]
        chances = [
            rule.partition("--probability ")[2].split(" ")[0]
            for rule in rules_of(render([service()], [slice_of(*eps)], NODE).text, "nat", SVC)[1:]
        ]
        self.assertEqual(chances, ["0.2500000000", "0.3333333333", "0.5000000000", ""])

    def test_no_endpoints_rejected_in_filter(self) -> None:
        """No endpoints: REJECT for the cluster IP, external IPs, LB IPs and NodePort; no nat."""
        svc = service(
            type="LoadBalancer",
            ports=[{"name": "p80", "port": 80, "nodePort": 3001}],
            externalIPs=["192.168.99.11"],
            status={"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}},
        )
        text = render([svc], [], NODE).text
        why = '-m comment --comment "ns1/svc1:p80 has no endpoints"'
        self.assertEqual(
            rules_of(text, "filter", "KUBE-SERVICES"),
            [f"-A KUBE-SERVICES {why} -m tcp -p tcp -d 172.30.0.41 --dport 80 -j REJECT"],
        )
        self.assertEqual(
            rules_of(text, "filter", "KUBE-EXTERNAL-SERVICES"),
            [
                f"-A KUBE-EXTERNAL-SERVICES {why} -m tcp -p tcp -d 192.168.99.11 --dport 80"
                " -j REJECT",
                f"-A KUBE-EXTERNAL-SERVICES {why} -m tcp -p tcp -d 1.2.3.4 --dport 80 -j REJECT",
                f"-A KUBE-EXTERNAL-SERVICES {why} -m addrtype --dst-type LOCAL -m tcp -p tcp"
                " --dport 3001 -j REJECT",
            ],
        )
        self.assertNotIn("KUBE-SVC-", text)
        self.assertNotIn("KUBE-EXT-", text)

    def test_external_ips_and_load_balancer_ingress(self) -> None:
        """externalIPs and status ingress IPs (VIP mode) jump to KUBE-EXT; Proxy mode is skipped."""
        svc = service(
            type="LoadBalancer",
            ports=[{"name": "p80", "port": 80, "nodePort": 3001}],
            externalIPs=["192.168.99.11"],
            status={
                "loadBalancer": {
                    "ingress": [
                        {"ip": "10.199.0.2"},
                        {"ip": "10.199.1.2", "ipMode": "VIP"},
                        {"ip": "5.6.7.8", "ipMode": "Proxy"},
                        {"hostname": "lb.example"},
                    ]
                }
            },
        )
        text = render([svc], [slice_of(endpoint("10.180.0.1"))], NODE).text
        self.assertEqual(
            [r for r in rules_of(text, "nat", "KUBE-SERVICES") if EXT in r],
            [
                '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 external IP" -m tcp -p tcp'
                f" -d 192.168.99.11 --dport 80 -j {EXT}",
                '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 loadbalancer IP" -m tcp'
                f" -p tcp -d 10.199.0.2 --dport 80 -j {EXT}",
                '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 loadbalancer IP" -m tcp'
                f" -p tcp -d 10.199.1.2 --dport 80 -j {EXT}",
            ],
        )
        self.assertEqual(rules_of(text, "filter", "KUBE-EXTERNAL-SERVICES"), [])

    def test_external_traffic_policy_local(self) -> None:
        """KUBE-EXT short-circuits pods and the host to KUBE-SVC; the rest go to KUBE-SVL."""
        svc = service(
            type="NodePort",
            externalTrafficPolicy="Local",
            ports=[{"name": "p80", "port": 80, "nodePort": 3001}],
        )
        remote, here = endpoint("10.180.0.1"), endpoint("10.180.2.1", node="node1")
        text = render([svc], [slice_of(remote, here)], NODE).text
        self.assertEqual(
            rules_of(text, "nat", EXT),
            [
                f'-A {EXT} -m comment --comment "pod traffic for ns1/svc1:p80 external'
                f' destinations" -s 10.0.0.0/8 -j {SVC}',
                f'-A {EXT} -m comment --comment "masquerade LOCAL traffic for ns1/svc1:p80'
                ' external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ',
                f'-A {EXT} -m comment --comment "route LOCAL traffic for ns1/svc1:p80 external'
                f' destinations" -m addrtype --src-type LOCAL -j {SVC}',
                f"-A {EXT} -j {SVL}",
            ],
        )
        self.assertEqual(
            rules_of(text, "nat", SVL),
            [f'-A {SVL} -m comment --comment "ns1/svc1:p80 -> 10.180.2.1:80" -j {SEP3}'],
        )
        self.assertEqual(len(rules_of(text, "nat", SVC)), 3)
        # Without local endpoints: outside traffic is dropped, pods and the host still served.
        text = render([svc], [slice_of(remote)], NODE).text
        self.assertNotIn(f"-j {SVL}", text)
        self.assertEqual(
            rules_of(text, "filter", "KUBE-EXTERNAL-SERVICES"),
            [
                '-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns1/svc1:p80 has no local'
                ' endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j DROP'
            ],
        )
        self.assertEqual(len(rules_of(text, "nat", EXT)), 3)

    def test_health_check_node_port_accepted(self) -> None:
        svc = service(
            type="LoadBalancer",
            externalTrafficPolicy="Local",
            healthCheckNodePort=30000,
            ports=[{"name": "p80", "port": 80, "nodePort": 3001}],
        )
        text = render([svc], [], NODE).text
        self.assertEqual(
            rules_of(text, "filter", "KUBE-NODEPORTS"),
            [
                '-A KUBE-NODEPORTS -m comment --comment "ns1/svc1:p80 health check node port"'
                " -m tcp -p tcp --dport 30000 -j ACCEPT"
            ],
        )

    def test_internal_traffic_policy_local(self) -> None:
        """The cluster IP goes to KUBE-SVL; with no local endpoint it is dropped."""
        svc = service(internalTrafficPolicy="Local")
        here = endpoint("10.180.2.1", node="node1")
        text = render([svc], [slice_of(endpoint("10.180.0.1"), here)], NODE).text
        self.assertIn(
            '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp'
            f" -d 172.30.0.41 --dport 80 -j {SVL}",
            text,
        )
        self.assertNotIn(SVC, text)
        self.assertNotIn(SEP1, text)
        text = render([svc], [slice_of(endpoint("10.180.0.1"))], NODE).text
        self.assertEqual(
            rules_of(text, "filter", "KUBE-SERVICES"),
            [
                '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 has no local endpoints"'
                " -m tcp -p tcp -d 172.30.0.41 --dport 80 -j DROP"
            ],
        )
        self.assertNotIn("KUBE-SEP-", text)

    def test_client_ip_affinity(self) -> None:
        """recent-module checks before the random choice; each DNAT records its client."""
        svc = service(
            sessionAffinity="ClientIP",
            sessionAffinityConfig={"clientIP": {"timeoutSeconds": 300}},
        )
        text = render([svc], [slice_of(endpoint("10.180.0.1"), endpoint("10.180.0.2"))], NODE).text
        svc_rules = rules_of(text, "nat", SVC)
        self.assertEqual(
            svc_rules[1:3],
            [
                f'-A {SVC} -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m recent'
                f" --name {SEP1} --rcheck --seconds 300 --reap -j {SEP1}",
                f'-A {SVC} -m comment --comment "ns1/svc1:p80 -> 10.180.0.2:80" -m recent'
                f" --name {SEP2} --rcheck --seconds 300 --reap -j {SEP2}",
            ],
        )
        self.assertIn(
            f"-A {SEP1} -m comment --comment ns1/svc1:p80 -m recent --name {SEP1} --set"
            " -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80",
            text,
        )
        [port] = service_ports(service(sessionAffinity="ClientIP"))
        self.assertEqual(port.affinity_seconds, 10800)

    def test_load_balancer_source_ranges(self) -> None:
        """KUBE-FW lets the ranges (and the node, inside one) on; KUBE-PROXY-FIREWALL drops."""
        svc = service(
            type="LoadBalancer",
            loadBalancerSourceRanges=["192.168.0.0/24", "203.0.113.0/24"],
            ports=[{"name": "p80", "port": 80, "nodePort": 3001}],
            status={"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}},
        )
        text = render([svc], [slice_of(endpoint("10.180.0.1"))], NODE).text
        head = f'-A {FW} -m comment --comment "ns1/svc1:p80 loadbalancer IP"'
        self.assertEqual(
            rules_of(text, "nat", FW),
            [
                f"{head} -s 192.168.0.0/24 -j {EXT}",
                f"{head} -s 203.0.113.0/24 -j {EXT}",
                f"{head} -s 1.2.3.4 -j {EXT}",
                f'-A {FW} -m comment --comment "other traffic to ns1/svc1:p80 will be dropped by'
                ' KUBE-PROXY-FIREWALL"',
            ],
        )
        self.assertIn(f"-d 1.2.3.4 --dport 80 -j {FW}", text)
        self.assertEqual(
            rules_of(text, "filter", "KUBE-PROXY-FIREWALL"),
            [
                '-A KUBE-PROXY-FIREWALL -m comment --comment "ns1/svc1:p80 traffic not accepted'
                f' by {FW}" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j DROP'
            ],
        )

    def test_terminating_endpoints(self) -> None:
        """Ready endpoints are used; with none ready, the serving terminating ones (kube 1.32)."""
        ready = endpoint("10.180.0.1")
        draining = endpoint("10.180.0.2", ready=False, serving=True, terminating=True)
        gone = endpoint("10.180.2.1", ready=False, serving=False, terminating=True)
        both = render([service()], [slice_of(ready, draining, gone)], NODE).text
        self.assertIn(SEP1, both)
        self.assertNotIn(SEP2, both)
        only_draining = render([service()], [slice_of(draining, gone)], NODE).text
        self.assertIn(f"-j {SEP2}", only_draining)
        self.assertNotIn(SEP3, only_draining)
        # Not ready and not serving: no endpoints at all.
        self.assertIn("has no endpoints", render([service()], [slice_of(gone)], NODE).text)

    def test_services_without_rules(self) -> None:
        """Headless, ExternalName and IPv6-only Services get no rules; IPv6 slices are ignored."""
        for svc in [
            service(clusterIP="None"),
            service(type="ExternalName", clusterIP="", externalName="example.com"),
            service(clusterIP="fd00::1", clusterIPs=["fd00::1"]),
        ]:
            text = render([svc], [slice_of(endpoint("10.180.0.1"))], NODE).text
            self.assertNotIn("ns1/svc1", text)
        v6 = slice_of(endpoint("fd00::5"))
        v6["addressType"] = "IPv6"
        self.assertIn("has no endpoints", render([service()], [v6], NODE).text)

    def test_stale_service_chains_deleted_in_the_same_transaction(self) -> None:
        """Stale kube service chains are flushed and deleted; other chains are never touched."""
        old = "KUBE-SVC-AAAAAAAAAAAAAAAA"
        result = render(
            [service()],
            [slice_of(endpoint("10.180.0.1"))],
            NODE,
            existing=[
                SVC,
                SEP1,
                old,
                "KUBE-SEP-BBBBBBBBBBBBBBBB",
                "FLANNEL-POSTRTG",
                "CNI-HOSTPORT-DNAT",
            ],
        )
        nat = tables(result.text)["nat"]
        self.assertIn(f":{old} - [0:0]", nat)
        self.assertEqual([line for line in nat if line.startswith("-X")], [
            "-X KUBE-SEP-BBBBBBBBBBBBBBBB", f"-X {old}"
        ])  # fmt: skip
        self.assertNotIn("FLANNEL", result.text)
        self.assertNotIn("CNI-", result.text)
        self.assertEqual(result.nat_chains, {SVC, SEP1})

    def test_partial_sync_writes_only_changed_services_chains(self) -> None:
        """kube's partial sync: others' chains left out (and kept), top-level chains whole."""
        services = [service(), service(name="svc2", clusterIP="172.30.0.42")]
        slices = [
            slice_of(endpoint("10.180.0.1")),
            slice_of(endpoint("10.180.0.2"), service="svc2"),
        ]
        full = render(services, slices, NODE)
        partial = render(
            services, slices, NODE, existing=full.nat_chains, changed={("ns1", "svc2")}
        )
        self.assertEqual(partial.nat_chains, full.nat_chains)
        self.assertNotIn(f":{SVC} ", partial.text)
        self.assertNotIn(f"-A {SEP1} ", partial.text)
        self.assertNotIn("\n-X ", partial.text)
        svc2 = "KUBE-SVC-" + chain_hash("ns1/svc2:p80tcp")
        self.assertIn(f":{svc2} - [0:0]", partial.text)
        self.assertEqual(
            rules_of(partial.text, "nat", "KUBE-SERVICES"),
            rules_of(full.text, "nat", "KUBE-SERVICES"),
        )
        # svc2 deleted: its chains go, svc1's stay untouched.
        gone = render(
            services[:1], slices, NODE, existing=full.nat_chains, changed={("ns1", "svc2")}
        )
        self.assertIn(f"-X {svc2}", gone.text)
        self.assertNotIn(f"-X {SVC}", gone.text)

    def test_localhost_node_ports(self) -> None:
        """With route_localnet, the localnet guard; without, 127.0.0.0/8 is kept off NodePorts."""
        on = render([], [], NODE).text
        self.assertIn(
            '-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections"'
            " -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT"
            " -j DROP",
            on,
        )
        off = render([], [], NodeFacts(name="node1", localhost_node_ports=False)).text
        self.assertNotIn("KUBE-FIREWALL", off)
        self.assertIn("--dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS", off)
        self.assertEqual([chain for _, chain, _ in LOCALNET_JUMPS], ["INPUT", "OUTPUT"])

    def test_random_fully_and_liberal_conntrack(self) -> None:
        text = render([], [], NodeFacts(name="n", tcp_be_liberal=True)).text
        self.assertIn("-j MASQUERADE --random-fully", text)
        self.assertNotIn("INVALID", text)


class ScaleTests(SynchronousTestCase):
    def test_a_thousand_services_render_without_comments(self) -> None:
        """1,000 Services of 10 endpoints: large-cluster mode (no per-endpoint comments)."""
        services = [
            service(name=f"s{i}", clusterIP=f"10.43.{i // 250}.{i % 250 + 1}") for i in range(1000)
        ]
        slices = [
            slice_of(
                *[endpoint(f"10.42.{i // 25}.{(i % 25) * 10 + j + 1}") for j in range(10)],
                service=f"s{i}",
            )
            for i in range(1000)
        ]
        result = render(services, slices, NODE)
        kube_chains = [c for c in result.nat_chains if not c.startswith("KUBE-SVCS-")]
        self.assertEqual(len(kube_chains), 1000 + 10000)
        sep = endpoint_chain("ns1/s0:p80", "tcp", "10.42.0.1:80")
        self.assertEqual(
            rules_of(result.text, "nat", sep),
            [
                f"-A {sep} -s 10.42.0.1 -j KUBE-MARK-MASQ",
                f"-A {sep} -m tcp -p tcp -j DNAT --to-destination 10.42.0.1:80",
            ],
        )

    def test_many_services_dispatched_by_address_block(self) -> None:
        """
        Above DISPATCH_ABOVE portals, KUBE-SERVICES jumps by address block to
        chains holding kube's own rules unchanged, each in its destination's
        block, and the NodePort rule stays last; at or below, the layout is kube's.
        """
        count = DISPATCH_ABOVE + 1
        services = [
            service(name=f"s{i}", clusterIP=f"10.43.{i // 50}.{i % 50 + 1}") for i in range(count)
        ]
        slices = [slice_of(endpoint(f"10.42.0.{i + 1}"), service=f"s{i}") for i in range(count)]
        self.assertNotIn("KUBE-SVCS-", render(services[:-1], slices, NODE).text)
        flat = render(services, slices, NODE, dispatch_above=count)
        result = render(services, slices, NODE)
        top = rules_of(result.text, "nat", "KUBE-SERVICES")
        self.assertIn("-j KUBE-NODEPORTS", top[-1])
        self.assertEqual(top[-1], rules_of(flat.text, "nat", "KUBE-SERVICES")[-1])
        blocks = [rule.split()[3] for rule in top[:-1]]
        self.assertEqual(len(blocks), len(set(blocks)))
        self.assertEqual(top[:-1], [f"-A KUBE-SERVICES -d {b} -j KUBE-SVCS-{b}" for b in blocks])
        moved: list[str] = []
        for block in blocks:
            for rule in rules_of(result.text, "nat", f"KUBE-SVCS-{block}"):
                address = rule.split(" -d ")[1].split()[0]
                self.assertIn(ipaddress.ip_address(address), ipaddress.ip_network(block))
                moved.append(rule.split(" ", 2)[2])
        kube = [rule.split(" ", 2)[2] for rule in rules_of(flat.text, "nat", "KUBE-SERVICES")]
        self.assertEqual(sorted(moved), sorted(kube[:-1]))
        self.assertEqual(result.nat_chains - flat.nat_chains, {f"KUBE-SVCS-{b}" for b in blocks})


class UDPConntrackTests(SynchronousTestCase):
    def test_flows_to_removed_endpoints_and_newly_served_ports(self) -> None:
        ips = ("10.43.0.10",)
        before = {
            "kube-system/kube-dns:dns": UDPFlows(ips, 53, 0, frozenset({"10.42.0.5", "10.42.0.6"})),
            "ns/empty": UDPFlows(("10.43.0.20",), 99, 30053, frozenset()),
            "ns/gone": UDPFlows(("10.43.0.30",), 7, 0, frozenset({"10.42.0.9"})),
        }
        after = {
            "kube-system/kube-dns:dns": UDPFlows(ips, 53, 0, frozenset({"10.42.0.6"})),
            "ns/empty": UDPFlows(("10.43.0.20",), 99, 30053, frozenset({"10.42.0.7"})),
        }
        self.assertEqual(
            stale_udp_flows(before, after),
            [
                ("-D", "-p", "udp", "--orig-dst", "10.43.0.10", "--orig-port-dst", "53",
                 "--reply-src", "10.42.0.5"),
                ("-D", "-p", "udp", "--orig-dst", "10.43.0.20", "--orig-port-dst", "99",
                 "--reply-src", "10.43.0.20"),
                ("-D", "-p", "udp", "--orig-dst", "10.43.0.30", "--orig-port-dst", "7",
                 "--reply-src", "10.42.0.9"),
            ],
        )  # fmt: skip
        self.assertEqual(stale_udp_flows(after, after), [])

    def test_flows_to_a_port_first_served_dropped(self) -> None:
        """
        A UDP port the last sync did not know (or the first sync's): flows to
        its IP that were never DNATed go, so that the asker's retries meet the rule.
        """
        now = {"kube-system/kube-dns:dns": UDPFlows(("10.43.0.10",), 53, 0, frozenset({"a"}))}
        unserved = ("-D", "-p", "udp", "--orig-dst", "10.43.0.10", "--orig-port-dst", "53")
        self.assertEqual(stale_udp_flows({}, now), [(*unserved, "--reply-src", "10.43.0.10")])

    def test_udp_ports_reported(self) -> None:
        svc = service(ports=[{"name": "dns", "port": 53, "protocol": "UDP"}])
        eps = slice_of(endpoint("10.180.0.1"))
        eps["ports"] = [{"name": "dns", "port": 5353, "protocol": "UDP"}]
        result = render([svc], [eps], NODE)
        self.assertEqual(
            result.udp,
            {"ns1/svc1:dns": UDPFlows(("172.30.0.41",), 53, 0, frozenset({"10.180.0.1"}))},
        )
        self.assertIn("-m udp -p udp -j DNAT --to-destination 10.180.0.1:5353", result.text)


class ServicePortTests(SynchronousTestCase):
    def test_policies_apply_only_to_externally_reachable_services(self) -> None:
        [cluster_ip] = service_ports(service(externalTrafficPolicy="Local"))
        self.assertFalse(cluster_ip.external_local)
        [node_port] = service_ports(
            service(
                type="NodePort",
                externalTrafficPolicy="Local",
                ports=[{"port": 1, "nodePort": 30001}],
            )
        )
        self.assertEqual(
            (node_port.external_local, node_port.node_port, node_port.uses_local_endpoints),
            (True, 30001, True),
        )
        self.assertIsInstance(node_port, ServicePort)
