"""
kube-proxy's full sync against the real iptables and nft, in a network
namespace the test makes: the sync lists the nat table (iptables mode) or
kube-proxy's table (nftables mode) and writes only the chains that do not
hold their rules already, so a second full sync writes none of the service
chains, and a rule deleted, changed or added by hand comes back (its chain,
alone, written again).  The iptables comparison's canonical form is checked
rule by rule against iptables-save's.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from k3stw.network.iptables import IPTables, canonical_rule, saved_chains
from k3stw.network.nftables import NFTables
from k3stw.network.node import NetworkSettings
from k3stw.network.proxy import IPTABLES, NFTABLES, KubeProxy
from k3stw.network.proxynft import TABLE
from k3stw.network.proxyrules import NodeFacts
from tests.support.fakes import FakeKubeClient
from tests.test_proxy_rules import endpoint, service, slice_of


class CanonicalRuleTests(SynchronousTestCase):
    """kube's restore input brought to what Debian's iptables 1.8.9 saves for it."""

    def test_kubes_forms_as_iptables_save_prints_them(self) -> None:
        pairs = [
            (
                '-A S -m comment --comment "ns/web:http cluster IP" -m tcp -p tcp -d 10.43.0.1'
                " --dport 80 ! -s 10.42.0.0/16 -j KUBE-MARK-MASQ",
                "-A S ! -s 10.42.0.0/16 -d 10.43.0.1/32 -p tcp"
                ' -m comment --comment "ns/web:http cluster IP" -m tcp --dport 80'
                " -j KUBE-MARK-MASQ",
            ),
            (
                "-A S -m comment --comment ns/web:http -m statistic --mode random"
                " --probability 0.1000000000 -j SEP",
                '-A S -m comment --comment "ns/web:http" -m statistic --mode random'
                " --probability 0.10000000009 -j SEP",
            ),
            ("-A KUBE-MARK-MASQ -j MARK --or-mark 0x004000", "-A KUBE-MARK-MASQ -j MARK"
             " --set-xmark 0x4000/0x4000"),
            ("-A P -j MARK --xor-mark 0x004000", "-A P -j MARK --set-xmark 0x4000/0x0"),
            (
                "-A P -m mark ! --mark 0x004000/0x004000 -j RETURN",
                "-A P -m mark ! --mark 0x4000/0x4000 -j RETURN",
            ),
            ("-A F -m comment --comment x_y -j REJECT",
             "-A F -m comment --comment x_y -j REJECT --reject-with icmp-port-unreachable"),
        ]  # fmt: skip
        for kube, saved in pairs:
            self.assertEqual(canonical_rule(kube), saved)


NODE_IP = "192.168.0.2"


def cluster() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Services of every form kube's iptables rules take, with their slices."""
    nodeport = [{"name": "p80", "port": 80, "nodePort": 30001}]
    services = [
        service("plain", sessionAffinity="ClientIP"),
        service(
            "lb",
            clusterIP="172.30.0.42",
            type="LoadBalancer",
            externalTrafficPolicy="Local",
            externalIPs=["192.168.99.11"],
            loadBalancerSourceRanges=["192.168.0.0/24"],
            ports=[{"name": "p80", "port": 80, "nodePort": 30002}],
            status={"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}},
        ),
        service("np", clusterIP="172.30.0.43", type="NodePort", ports=nodeport),
        service("internal", clusterIP="172.30.0.44", internalTrafficPolicy="Local"),
        service("empty", clusterIP="172.30.0.45"),
        service(
            "dns", clusterIP="172.30.0.46", ports=[{"name": "p80", "port": 53, "protocol": "UDP"}]
        ),
    ]
    dns = slice_of(endpoint("10.180.0.9", node="node1"), service="dns", port=53)
    dns["ports"][0]["protocol"] = "UDP"
    slices = [
        slice_of(endpoint("10.180.0.1"), endpoint("10.180.0.2"), service="plain"),
        slice_of(endpoint("10.180.0.3"), endpoint("10.180.2.1", node="node1"), service="lb"),
        slice_of(endpoint("10.180.0.4"), service="np"),
        slice_of(endpoint("10.180.2.2", node="node1"), service="internal"),
        dns,
    ]
    return services, slices


class RecordingIPTables(IPTables):
    """The real iptables, keeping each restore's input for the test to read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.restored: list[str] = []

    async def restore(self, text: str) -> None:
        self.restored.append(text)
        await super().restore(text)


class RecordingNFTables(NFTables):
    """The real nft, keeping each transaction's input for the test to read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.applied: list[str] = []

    async def apply(self, text: str) -> None:
        self.applied.append(text)
        await super().apply(text)


class _KubeProxyInANamespace(TestCase):
    """A L{KubeProxy} on the real iptables and nft of a network namespace of its own."""

    mode = IPTABLES

    def setUp(self) -> None:
        self.namespace = f"k3stw-kp-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", self.namespace], check=True, timeout=30)
        self.addCleanup(subprocess.run, ["ip", "netns", "delete", self.namespace], timeout=30)
        prefix = ("ip", "netns", "exec", self.namespace)
        self.iptables = RecordingIPTables(reactor, prefix=prefix)
        self.nft = RecordingNFTables(reactor, prefix=prefix)
        settings = NetworkSettings(node_name="node1", node_ips=(NODE_IP,))
        sysctls = Path(self.mktemp())
        self.proxy = KubeProxy(
            reactor,
            settings,
            FakeKubeClient(),
            iptables=self.iptables,
            sysctls=sysctls,
            mode=self.mode,
            nft=self.nft,
        )
        self.proxy.node = NodeFacts(
            name="node1",
            node_ips=(NODE_IP,),
            cluster_cidrs=("10.0.0.0/8",),
            localhost_node_ports=self.mode == IPTABLES,
        )
        # The informers stay unstarted: the test fills their caches as a list would.
        services, slices = cluster()
        for obj in services:
            self.proxy.services.cache.upsert(obj)
        for obj in slices:
            self.proxy.slices.cache.upsert(obj)

    def ipt(self, *argv: str) -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", self.namespace, *argv], capture_output=True, timeout=60
        )
        self.assertEqual(done.returncode, 0, done.stderr.decode(errors="replace"))
        return done.stdout.decode()


class FullSyncInANamespaceTests(_KubeProxyInANamespace):
    def nat(self) -> dict[str, list[str]]:
        return saved_chains(self.ipt("iptables-save", "-t", "nat"))

    async def full_sync(self) -> str:
        """A full sync; the nat block of what it restored."""
        self.proxy._full_due = True
        self.iptables.restored.clear()
        await self.proxy.sync()
        self.assertFalse(self.proxy._full_due, "the sync failed")
        [text] = self.iptables.restored
        return text[text.index("*nat") :]

    def declared(self, nat_block: str) -> set[str]:
        return {line[1:].split(" ")[0] for line in nat_block.splitlines() if line[:1] == ":"}

    async def test_second_full_sync_writes_no_chain(self) -> None:
        """Rules of every form compare equal to what iptables-save prints for them."""
        first = self.declared(await self.full_sync())
        self.assertIn("KUBE-SERVICES", first)
        written = self.nat()
        self.assertTrue(any(chain.startswith("KUBE-FW-") for chain in written))
        self.assertTrue(any(chain.startswith("KUBE-SVL-") for chain in written))
        # Every rule the first sync wrote is in the form iptables-save prints it in.
        self.assertEqual(self.declared(await self.full_sync()), set())
        self.assertEqual(self.nat(), written)

    async def test_rules_changed_by_hand_come_back(self) -> None:
        """A full sync writes again exactly the chains changed by hand, and drops a stale one."""
        await self.full_sync()
        before = self.nat()
        sep = next(c for c, rules in before.items() if c.startswith("KUBE-SEP-") and rules)
        svc = next(c for c, rules in before.items() if c.startswith("KUBE-SVC-") and rules)
        ext = next(c for c in before if c.startswith("KUBE-EXT-"))
        stale = "KUBE-SVC-AAAAAAAAAAAAAAAA"
        # Someone deletes one rule, changes another, adds a third, and leaves a service chain.
        self.ipt("iptables", "-t", "nat", "-D", sep, "1")
        self.ipt("iptables", "-t", "nat", "-R", svc, "1", "-j", "ACCEPT")
        self.ipt("iptables", "-t", "nat", "-A", ext, "-j", "RETURN")
        self.ipt("iptables", "-t", "nat", "-N", stale)
        self.assertNotEqual(self.nat(), {**before, stale: []})
        self.assertEqual(self.declared(await self.full_sync()), {sep, svc, ext, stale})
        self.assertEqual(self.nat(), before)


class NFTFullSyncInANamespaceTests(_KubeProxyInANamespace):
    mode = NFTABLES

    def table(self) -> str:
        return self.ipt("nft", "-t", "list", "table", "ip", TABLE)

    async def full_sync_nft(self) -> set[str]:
        """A full sync; the service chains its transactions write."""
        self.proxy._full_due = True
        self.nft.applied.clear()
        await self.proxy.sync()
        self.assertFalse(self.proxy._full_due, "the sync failed")
        written = set()
        for line in "".join(self.nft.applied).splitlines():
            words = line.split()
            if words[:2] in (["add", "rule"], ["flush", "chain"]) and "/" in words[4]:
                written.add(words[4])
        return written

    async def test_second_full_sync_writes_no_nft_chain(self) -> None:
        """Rules of every form compare equal to what ``nft list`` prints for them."""
        first = await self.full_sync_nft()
        self.assertTrue(any(chain.startswith("firewall-") for chain in first))
        self.assertTrue(any(chain.startswith("local-") for chain in first))
        written = self.table()
        self.assertEqual(await self.full_sync_nft(), set())
        self.assertEqual(self.table(), written)

    async def test_nft_rules_changed_by_hand_come_back(self) -> None:
        """A full sync writes again exactly the chains changed by hand."""
        await self.full_sync_nft()
        before = self.table()
        chains = [line.split()[1] for line in before.splitlines() if "chain " in line]
        endpoint = next(c for c in chains if c.startswith("endpoint-"))
        policy = next(c for c in chains if c.startswith("service-"))
        # Someone empties one chain and adds a rule to another.
        self.ipt("nft", "flush", "chain", "ip", TABLE, endpoint)
        self.ipt("nft", "add", "rule", "ip", TABLE, policy, "drop")
        self.assertNotEqual(self.table(), before)
        self.assertEqual(await self.full_sync_nft(), {endpoint, policy})
        self.assertEqual(self.table(), before)
