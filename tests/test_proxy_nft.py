"""
kube-proxy's nftables mode as k3stw renders it (k3stw.network.proxynft):
chain names checked against those kube-proxy's own proxier tests print, each
Service feature's rules and map elements in kube's words, and partial syncs
that write only what changed.  Pure: no kernel, no sockets.
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.network.proxynft import TABLE, Existing, NFTRuleset, parse_table, render_nft
from k3stw.network.proxyrules import NodeFacts
from tests.test_proxy_rules import endpoint, service, slice_of

NODE = NodeFacts(name="node1", node_ips=("192.168.0.2",), cluster_cidrs=("10.0.0.0/8",))
ADD = f"add rule ip {TABLE}"
#: Names kube-proxy's nftables proxier tests expect (ns1/svc1 port p80, endpoint 10.180.0.1:80).
SVC1 = "service-ULMVA6XW-ns1/svc1/tcp/p80"
EP1 = "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"


def lines(ruleset: NFTRuleset) -> list[str]:
    return ruleset.text.splitlines()


def elements(ruleset: NFTRuleset, container: str) -> list[str]:
    """The elements an ``add element`` line of C{container} writes, one string each."""
    head = f"add element ip {TABLE} {container} {{ "
    found: list[str] = []
    for line in lines(ruleset):
        if line.startswith(head):
            found += line[len(head) : -2].split(", ")
    return found


def one(**spec: Any) -> dict[str, Any]:
    return service(**spec)


class NFTablesRulesTests(SynchronousTestCase):
    def test_names_are_kubes(self) -> None:
        """Chains are named as kube's nftables proxier names them (hash, then the port's path)."""
        ruleset = render_nft([one()], [slice_of(endpoint("10.180.0.1"))], NODE)
        self.assertEqual(ruleset.chains, frozenset({SVC1, EP1}))
        lb = one(
            name="svc5",
            namespace="ns5",
            type="LoadBalancer",
            clusterIP="172.30.0.45",
            ports=[{"name": "p80", "port": 80, "nodePort": 3002}],
            status={"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}]}},
            sessionAffinity="ClientIP",
        )
        ruleset = render_nft(
            [lb], [slice_of(endpoint("10.180.0.3"), service="svc5", namespace="ns5")], NODE
        )
        self.assertIn("external-HVFWP5L3-ns5/svc5/tcp/p80", ruleset.chains)
        self.assertEqual(
            ruleset.affinity_sets, {"affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80"}
        )

    def test_a_full_sync_replaces_only_kube_proxys_table(self) -> None:
        """The table is added, deleted and made again in one transaction; nothing else named."""
        text = lines(render_nft([one()], [slice_of(endpoint("10.180.0.1"))], NODE))
        self.assertEqual(
            text[:3],
            [
                f"add table ip {TABLE}",
                f"delete table ip {TABLE}",
                f'add table ip {TABLE} {{ comment "rules for kube-proxy" ; }}',
            ],
        )
        self.assertTrue(all(f" ip {TABLE}" in line for line in text), text)
        for base in (
            "add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }",
            "add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }",
            "add chain ip kube-proxy filter-forward { type filter hook forward priority -110 ; }",
            f"{ADD} nat-prerouting jump services",
            f"{ADD} nat-postrouting jump masquerading",
            f"{ADD} filter-forward ct state new jump service-endpoints-check",
            f"{ADD} services ip daddr . meta l4proto . th dport vmap @service-ips",
            f"{ADD} services fib daddr type local ip daddr != 127.0.0.0/8"
            " meta l4proto . th dport vmap @service-nodeports",
            f"{ADD} mark-for-masquerade mark set mark or 0x004000",
            f"{ADD} masquerading mark and 0x004000 == 0 return",
            f"{ADD} masquerading mark set mark xor 0x004000",
            f"{ADD} masquerading masquerade fully-random",
        ):
            self.assertIn(base, text)
        # Every chain is declared before a rule or an element jumps to it (nft needs it so).
        declared: set[str] = set()
        for line in text:
            words = line.split()
            if line.startswith("add chain"):
                declared.add(words[4])
            for verb, target in itertools.pairwise(words):
                if verb in ("goto", "jump"):
                    self.assertIn(target, declared, line)

    def test_cluster_ip_with_two_endpoints(self) -> None:
        """A ClusterIP in service-ips, masquerade of off-cluster sources, a numgen choice, DNAT."""
        ruleset = render_nft(
            [one()], [slice_of(endpoint("10.180.0.1"), endpoint("10.180.0.2"))], NODE
        )
        text = lines(ruleset)
        self.assertEqual(elements(ruleset, "cluster-ips"), ["172.30.0.41"])
        self.assertEqual(
            elements(ruleset, "service-ips"), [f"172.30.0.41 . tcp . 80 : goto {SVC1}"]
        )
        ep2 = "endpoint-2ZNDXFAB-ns1/svc1/tcp/p80__10.180.0.2/80"
        self.assertIn(ep2, ruleset.chains)
        self.assertIn(
            f"{ADD} {SVC1} ip daddr 172.30.0.41 tcp dport 80 ip saddr != 10.0.0.0/8"
            " jump mark-for-masquerade",
            text,
        )
        self.assertIn(
            f"{ADD} {SVC1} numgen random mod 2 vmap {{ 0 : goto {EP1}, 1 : goto {ep2} }}", text
        )
        self.assertIn(f"{ADD} {EP1} ip saddr 10.180.0.1 jump mark-for-masquerade", text)
        self.assertIn(f"{ADD} {EP1} meta l4proto tcp dnat to 10.180.0.1:80", text)

    def test_no_endpoints_rejected(self) -> None:
        """Without endpoints: no chains, the ClusterIP, NodePort and external IP go to reject."""
        svc = one(
            type="NodePort",
            externalIPs=["192.168.99.11"],
            ports=[{"name": "p80", "port": 80, "nodePort": 3001}],
        )
        ruleset = render_nft([svc], [], NODE)
        self.assertEqual(ruleset.chains, frozenset())
        self.assertEqual(elements(ruleset, "service-ips"), [])
        self.assertEqual(
            elements(ruleset, "no-endpoint-services"),
            [
                '172.30.0.41 . tcp . 80 comment "ns1/svc1:p80" : goto reject-chain',
                '192.168.99.11 . tcp . 80 comment "ns1/svc1:p80" : goto reject-chain',
            ],
        )
        self.assertEqual(
            elements(ruleset, "no-endpoint-nodeports"),
            ['tcp . 3001 comment "ns1/svc1:p80" : goto reject-chain'],
        )
        self.assertIn(f"{ADD} reject-chain reject", lines(ruleset))

    def test_node_port_and_load_balancer_with_local_policy(self) -> None:
        """
        externalTrafficPolicy Local without a local endpoint: the external
        chain short-circuits pod and host traffic; outside traffic is dropped.
        """
        svc = one(
            name="svc2",
            namespace="ns2",
            type="LoadBalancer",
            externalTrafficPolicy="Local",
            clusterIP="172.30.0.42",
            ports=[{"name": "p80", "port": 80, "nodePort": 3001}],
            externalIPs=["192.168.99.22"],
            status={"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}},
        )
        ruleset = render_nft(
            [svc], [slice_of(endpoint("10.180.0.2"), service="svc2", namespace="ns2")], NODE
        )
        ext, svc_chain = "external-42NFTM6N-ns2/svc2/tcp/p80", "service-42NFTM6N-ns2/svc2/tcp/p80"
        text = lines(ruleset)
        self.assertEqual(
            [line for line in text if line.startswith(f"{ADD} {ext} ")],
            [
                f'{ADD} {ext} ip saddr 10.0.0.0/8 goto {svc_chain} comment "short-circuit pod'
                ' traffic"',
                f'{ADD} {ext} fib saddr type local jump mark-for-masquerade comment "masquerade'
                ' local traffic"',
                f'{ADD} {ext} fib saddr type local goto {svc_chain} comment "short-circuit local'
                ' traffic"',
            ],
        )
        self.assertEqual(
            elements(ruleset, "service-ips"),
            [
                f"172.30.0.42 . tcp . 80 : goto {svc_chain}",
                f"192.168.99.22 . tcp . 80 : goto {ext}",
                f"1.2.3.4 . tcp . 80 : goto {ext}",
            ],
        )
        self.assertEqual(elements(ruleset, "service-nodeports"), [f"tcp . 3001 : goto {ext}"])
        self.assertEqual(
            elements(ruleset, "no-endpoint-nodeports"), ['tcp . 3001 comment "ns2/svc2:p80" : drop']
        )
        # With a local endpoint, the rest goes to the local policy chain.
        local = render_nft(
            [svc],
            [slice_of(endpoint("10.180.0.2", "node1"), service="svc2", namespace="ns2")],
            NODE,
        )
        self.assertIn(f"{ADD} {ext} goto local-42NFTM6N-ns2/svc2/tcp/p80", lines(local))
        self.assertEqual(elements(local, "no-endpoint-nodeports"), [])

    def test_external_policy_cluster_masquerades(self) -> None:
        svc = one(type="NodePort", ports=[{"name": "p80", "port": 80, "nodePort": 3003}])
        ruleset = render_nft([svc], [slice_of(endpoint("10.180.0.1"))], NODE)
        ext = "external-ULMVA6XW-ns1/svc1/tcp/p80"
        self.assertEqual(
            [line for line in lines(ruleset) if line.startswith(f"{ADD} {ext} ")],
            [f"{ADD} {ext} jump mark-for-masquerade", f"{ADD} {ext} goto {SVC1}"],
        )

    def test_internal_traffic_policy_local_without_local_endpoints_drops(self) -> None:
        svc = one(internalTrafficPolicy="Local")
        ruleset = render_nft([svc], [slice_of(endpoint("10.180.0.1"))], NODE)
        self.assertEqual(
            elements(ruleset, "no-endpoint-services"),
            ['172.30.0.41 . tcp . 80 comment "ns1/svc1:p80" : drop'],
        )
        local = render_nft([svc], [slice_of(endpoint("10.180.0.1", "node1"))], NODE)
        self.assertEqual(
            elements(local, "service-ips"),
            ["172.30.0.41 . tcp . 80 : goto local-ULMVA6XW-ns1/svc1/tcp/p80"],
        )

    def test_client_ip_affinity(self) -> None:
        """Each endpoint's clients in a set with the timeout; its clients go back to it."""
        svc = one(
            sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}}
        )
        ruleset = render_nft([svc], [slice_of(endpoint("10.180.0.1"))], NODE)
        text = lines(ruleset)
        affinity = "affinity-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        self.assertIn(
            f"add set ip {TABLE} {affinity} {{ type ipv4_addr ; flags dynamic,timeout ;"
            " timeout 60s ; }",
            text,
        )
        chain_rules = [line for line in text if line.startswith(f"{ADD} {SVC1} ")]
        self.assertEqual(chain_rules[1], f"{ADD} {SVC1} ip saddr @{affinity} goto {EP1}")
        self.assertTrue(chain_rules[2].startswith(f"{ADD} {SVC1} numgen random mod 1 vmap"))
        self.assertEqual(
            [line for line in text if line.startswith(f"{ADD} {EP1} ")][1],
            f"{ADD} {EP1} update @{affinity} {{ ip saddr }}",
        )

    def test_load_balancer_source_ranges(self) -> None:
        svc = one(
            type="LoadBalancer",
            ports=[{"name": "p80", "port": 80, "nodePort": 3002}],
            status={"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}]}},
            loadBalancerSourceRanges=[" 203.0.113.0/25", "192.168.0.0/24"],
        )
        ruleset = render_nft([svc], [slice_of(endpoint("10.180.0.1"))], NODE)
        fw = "firewall-ULMVA6XW-ns1/svc1/tcp/p80"
        self.assertEqual(elements(ruleset, "firewall-ips"), [f"5.6.7.8 . tcp . 80 : goto {fw}"])
        # The node's own address is in a range: the LB IP itself is let through too.
        self.assertIn(
            f"{ADD} {fw} ip saddr != {{ 5.6.7.8, 192.168.0.0/24, 203.0.113.0/25 }} drop",
            lines(ruleset),
        )

    def test_partial_sync_writes_what_changed(self) -> None:
        """
        A partial sync writes the changed Service's chains and the elements
        that changed; a chain no longer used is flushed, and deleted a sync later.
        """
        other = one(name="svc2", clusterIP="172.30.0.42")
        slices = [
            slice_of(endpoint("10.180.0.1")),
            slice_of(endpoint("10.180.0.9"), service="svc2"),
        ]
        first = render_nft([one(), other], slices, NODE)
        moved = [slice_of(endpoint("10.180.0.2")), slices[1]]
        second = render_nft([one(), other], moved, NODE, first, {("ns1", "svc1")})
        text = lines(second)
        ep2 = "endpoint-2ZNDXFAB-ns1/svc1/tcp/p80__10.180.0.2/80"
        self.assertFalse(any("table" in line for line in text), text)
        self.assertFalse(any("svc2" in line for line in text), text)
        self.assertIn(f"add chain ip {TABLE} {ep2}", text)
        self.assertIn(f"flush chain ip {TABLE} {SVC1}", text)
        self.assertIn(f"flush chain ip {TABLE} {EP1}", text)
        self.assertNotIn(f"delete chain ip {TABLE} {EP1}", text)
        self.assertEqual(second.stale, frozenset({EP1}))
        self.assertIn(f"{ADD} {SVC1} numgen random mod 1 vmap {{ 0 : goto {ep2} }}", text)
        # The service-ips element did not change: not written again.
        self.assertFalse(any("element" in line for line in text), text)
        third = render_nft([other], moved, NODE, second, {("ns1", "svc1")})
        self.assertEqual(
            lines(third)[:2],
            [f"delete chain ip {TABLE} {EP1}", f"flush chain ip {TABLE} {ep2}"],
        )
        self.assertIn(
            f"delete element ip {TABLE} service-ips {{ 172.30.0.41 . tcp . 80 }}", lines(third)
        )
        self.assertIn(f"delete element ip {TABLE} cluster-ips {{ 172.30.0.41 }}", lines(third))

    def test_affinity_sets_of_a_removed_service_deleted(self) -> None:
        svc = one(sessionAffinity="ClientIP")
        first = render_nft([svc], [slice_of(endpoint("10.180.0.1"))], NODE)
        second = render_nft([], [slice_of(endpoint("10.180.0.1"))], NODE, first, {("ns1", "svc1")})
        self.assertIn(
            f"delete set ip {TABLE} affinity-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80",
            lines(second),
        )

    def test_udp_ports_reported(self) -> None:
        svc = one(ports=[{"name": "p80", "port": 80, "protocol": "UDP"}])
        udp = dict(
            slice_of(endpoint("10.180.0.1")), ports=[{"name": "p80", "port": 80, "protocol": "UDP"}]
        )
        ruleset = render_nft([svc], [udp], NODE)
        flows = ruleset.udp["ns1/svc1:p80"]
        self.assertEqual((flows.ips, flows.endpoint_ips), (("172.30.0.41",), {"10.180.0.1"}))
        self.assertIn("meta l4proto udp dnat to 10.180.0.1:80", ruleset.text)

    def test_a_full_sync_rewrites_an_existing_table_in_place(self) -> None:
        """
        With the table there, a full sync empties and rewrites it without
        deleting it: its chains are flushed (policy chains before the others'
        rules are dropped, the kernel's cheap order), maps emptied and
        refilled, a chain of a Service gone flushed for the next sync to delete.
        """
        stale = "service-AAAAAAAA-ns9/gone/tcp/p80"
        existing = Existing(
            frozenset({SVC1, EP1, stale, "services"}),
            frozenset({"cluster-ips", "affinity-AAAAAAAA-ns9/gone/tcp/p80__10.1.1.1/80"}),
        )
        ruleset = render_nft(
            [one()], [slice_of(endpoint("10.180.0.1"))], NODE, None, None, existing
        )
        text = lines(ruleset)
        self.assertNotIn(f"delete table ip {TABLE}", text)
        self.assertNotIn(f"add chain ip {TABLE} {SVC1}", text)
        flushes = [line for line in text if line.startswith("flush chain") and "/" in line]
        self.assertEqual(
            flushes,
            [
                f"flush chain ip {TABLE} {SVC1}",
                f"flush chain ip {TABLE} {EP1}",
                f"flush chain ip {TABLE} {stale}",
            ],
        )
        self.assertLess(
            text.index(f"{ADD} {SVC1} numgen random mod 1 vmap {{ 0 : goto {EP1} }}"),
            text.index(f"flush chain ip {TABLE} {EP1}"),
        )
        self.assertLess(
            text.index(f"flush map ip {TABLE} service-ips"),
            text.index(
                f"add element ip {TABLE} service-ips {{ 172.30.0.41 . tcp . 80 : goto {SVC1} }}"
            ),
        )
        self.assertIn(f"flush chain ip {TABLE} services", text)
        self.assertIn(
            f"delete set ip {TABLE} affinity-AAAAAAAA-ns9/gone/tcp/p80__10.1.1.1/80", text
        )
        self.assertEqual(ruleset.stale, {stale})

    def test_table_listing_parsed(self) -> None:
        """Chains, sets and maps of ``nft -t list table``; each service chain's rules."""
        listing = (
            'table ip kube-proxy {\n\tcomment "rules for kube-proxy"\n'
            "\tset cluster-ips {\n\t\ttype ipv4_addr\n\t}\n\n"
            "\tmap service-ips {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n"
            "\t}\n\n"
            "\tchain services {\n\t\tip daddr . meta l4proto . th dport vmap @service-ips\n\t}\n\n"
            f"\tchain {SVC1} {{\n\t\tnumgen random mod 1 vmap {{ 0 : goto {EP1} }}\n\t}}\n\n"
            f"\tchain {EP1} {{\n\t}}\n}}\n"
        )
        existing = parse_table(listing)
        self.assertEqual(existing.chains, {"services", SVC1, EP1})
        self.assertEqual(existing.sets, {"cluster-ips", "service-ips"})
        self.assertEqual(
            existing.rules,
            {SVC1: (f"numgen random mod 1 vmap {{ 0 : goto {EP1} }}",), EP1: ()},
        )
