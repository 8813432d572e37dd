"""
The iptables floor against the real iptables, inside a network namespace the
test makes (nothing touches this machine's own rules).
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.trial.unittest import TestCase

from k3stw.network.iptables import (
    MANY_CHAINS,
    IPTables,
    IPTablesError,
    fetch_all_chains,
    restore_text,
)
from k3stw.network.proxyrules import DISPATCH_ABOVE, NodeFacts, render


class RestoreTextTests(TestCase):
    def test_declares_chains_then_rules_per_table(self) -> None:
        text = restore_text(
            {
                "nat": (["KUBE-SERVICES"], ["-A KUBE-SERVICES -j RETURN"]),
                "filter": ([], []),
            }
        )
        self.assertEqual(
            text,
            "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j RETURN\nCOMMIT\n*filter\nCOMMIT\n",
        )

    def test_block_of_many_chains_starts_with_a_listing(self) -> None:
        """Only a table declaring MANY_CHAINS chains or more gets the ``-S`` line, first."""
        many = [f"C{i}" for i in range(MANY_CHAINS)]
        text = restore_text({"filter": (["A"], ["-A A -j RETURN"]), "nat": (many, [])})
        self.assertEqual(
            fetch_all_chains(text).splitlines()[:6],
            ["*filter", ":A - [0:0]", "-A A -j RETURN", "COMMIT", "*nat", "-S"],
        )
        few = restore_text({"nat": (many[:-1], [])})
        self.assertEqual(fetch_all_chains(few), few)


class IPTablesTests(TestCase):
    def setUp(self) -> None:
        self.namespace = f"k3stw-ipt-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", self.namespace], check=True, timeout=30)
        self.addCleanup(subprocess.run, ["ip", "netns", "delete", self.namespace], timeout=30)
        self.iptables = IPTables(reactor, prefix=("ip", "netns", "exec", self.namespace))

    def run_async(self, coroutine: object) -> Deferred[object]:
        return ensureDeferred(coroutine)  # type: ignore[arg-type]

    async def _own_chains_replaced_others_kept(self) -> None:
        ipt = self.iptables
        # A rule someone else owns, in a built-in chain.
        await ipt.ensure_rule("filter", "INPUT", ["-p", "tcp", "--dport", "22", "-j", "ACCEPT"])
        await ipt.restore(
            restore_text({"filter": (["K3STW-TEST"], ["-A K3STW-TEST -s 10.0.0.1/32 -j DROP"])})
        )
        self.assertTrue(await ipt.ensure_rule("filter", "INPUT", ["-j", "K3STW-TEST"]))
        self.assertFalse(await ipt.ensure_rule("filter", "INPUT", ["-j", "K3STW-TEST"]))
        # A second sync replaces the chain's rules and nothing else.
        await ipt.restore(
            restore_text({"filter": (["K3STW-TEST"], ["-A K3STW-TEST -s 10.0.0.2/32 -j DROP"])})
        )
        saved = await ipt.save("filter")
        self.assertIn("-A K3STW-TEST -s 10.0.0.2/32 -j DROP", saved)
        self.assertNotIn("10.0.0.1", saved)
        self.assertIn("-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT", saved)
        self.assertIn("K3STW-TEST", await ipt.chains("filter"))
        # Removing the chain needs its jump gone first, as the kernel insists.
        await ipt.delete_rule("filter", "INPUT", ["-j", "K3STW-TEST"])
        await ipt.remove_chains("filter", ["K3STW-TEST", "NEVER-MADE"])
        self.assertNotIn("K3STW-TEST", await ipt.chains("filter"))

    def test_own_chains_replaced_others_kept(self) -> Deferred[object]:
        """A restore replaces only the chains it declares; jump rules are added once."""
        return self.run_async(self._own_chains_replaced_others_kept())

    async def _bad_rules_refused_whole(self) -> None:
        ipt = self.iptables
        text = restore_text(
            {"filter": (["K3STW-TEST"], ["-A K3STW-TEST -j ACCEPT", "-A K3STW-TEST -j NOPE"])}
        )
        with self.assertRaises(IPTablesError) as caught:
            await ipt.restore(text)
        self.assertIn("iptables-restore", str(caught.exception))
        # Nothing of the failed transaction was applied.
        self.assertNotIn("K3STW-TEST", await ipt.chains("filter"))

    async def _many_chains_replaced_others_kept(self) -> None:
        ipt = self.iptables
        await ipt.restore(restore_text({"nat": (["OTHER"], ["-A OTHER -j RETURN"])}))
        chains = [f"K3STW-{i}" for i in range(MANY_CHAINS)]
        rules = [f"-A {chain} -s 10.0.0.{i % 250}/32 -j RETURN" for i, chain in enumerate(chains)]
        await ipt.restore(restore_text({"nat": (chains, rules)}))
        await ipt.restore(restore_text({"nat": (chains, rules[:1])}))
        saved = await ipt.save("nat")
        self.assertIn("-A OTHER -j RETURN", saved)
        self.assertIn("-A K3STW-0 -s 10.0.0.0/32 -j RETURN", saved)
        self.assertNotIn("-A K3STW-1 ", saved)
        made = [chain for chain in await ipt.chains("nat") if chain.startswith("K3STW-")]
        self.assertEqual(len(made), MANY_CHAINS)

    def test_many_chains_replaced_others_kept(self) -> Deferred[object]:
        """A table of many chains (restored with its listing first) still replaces only those."""
        return self.run_async(self._many_chains_replaced_others_kept())

    def test_bad_rules_refused_whole(self) -> Deferred[object]:
        """A transaction with a bad rule applies nothing and fails naming the command."""
        return self.run_async(self._bad_rules_refused_whole())


#: A server in the namespace: one byte to each connection (closed as its socket is dropped).
ONE_BYTE_SERVER = (
    "import socket, sys\n"
    "server = socket.create_server((sys.argv[1], int(sys.argv[2])))\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    server.accept()[0].sendall(b'x')\n"
)


class DispatchedServicesInTheKernelTests(TestCase):
    """kube-proxy's rules dispatched by address block, loaded and followed by the kernel."""

    def setUp(self) -> None:
        self.namespace = f"k3stw-disp-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", self.namespace], check=True, timeout=30)
        self.addCleanup(subprocess.run, ["ip", "netns", "delete", self.namespace], timeout=30)
        # The endpoint is an address of the namespace's own; the service range routes there.
        for command in (
            "ip link set lo up",
            "ip addr add 10.180.0.1/32 dev lo",
            "ip route add 10.43.0.0/16 dev lo",
        ):
            self.in_ns(*command.split())

    def in_ns(self, *argv: str, stdin: bytes | None = None) -> bytes:
        done = subprocess.run(
            ["ip", "netns", "exec", self.namespace, *argv],
            input=stdin,
            capture_output=True,
            timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stderr.decode(errors="replace"))
        return done.stdout

    def test_a_connection_to_a_cluster_ip_reaches_its_endpoint(self) -> None:
        """Past DISPATCH_ABOVE Services, a ClusterIP still DNATs to its endpoint; others don't."""
        count = DISPATCH_ABOVE + 20
        services, slices = [], []
        for i in range(count):
            services.append(
                {
                    "metadata": {"namespace": "ns", "name": f"s{i}"},
                    "spec": {"clusterIP": f"10.43.{i // 50}.{i % 50 + 1}", "ports": [{"port": 80}]},
                }
            )
            # Service 70's endpoint is the server here; the others' a port nothing listens on.
            port = 8080 if i == 70 else 8081
            slices.append(
                {
                    "metadata": {
                        "namespace": "ns",
                        "name": f"s{i}-1",
                        "labels": {"kubernetes.io/service-name": f"s{i}"},
                    },
                    "addressType": "IPv4",
                    "ports": [{"port": port, "protocol": "TCP"}],
                    "endpoints": [{"addresses": ["10.180.0.1"]}],
                }
            )
        ruleset = render(services, slices, NodeFacts(name="node", cluster_cidrs=("10.42.0.0/16",)))
        self.assertIn("KUBE-SVCS-", ruleset.text)
        self.in_ns("iptables-restore", "--noflush", stdin=fetch_all_chains(ruleset.text).encode())
        self.in_ns("iptables", "-t", "nat", "-I", "OUTPUT", "-j", "KUBE-SERVICES")
        serve = [sys.executable, "-c", ONE_BYTE_SERVER, "10.180.0.1", "8080"]
        server = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, *serve], stdout=subprocess.PIPE
        )
        self.addCleanup(server.wait, 10)
        self.addCleanup(server.terminate)
        assert server.stdout is not None
        self.assertEqual(server.stdout.readline(), b"ready\n")
        fetch = "import socket, sys; print(socket.create_connection((sys.argv[1], 80), 5).recv(1))"
        self.assertEqual(self.in_ns(sys.executable, "-c", fetch, "10.43.1.21"), b"b'x'\n")
        # Service 71's endpoint refuses: it is the same address, on another port.
        refused = subprocess.run(
            ["ip", "netns", "exec", self.namespace, sys.executable, "-c", fetch, "10.43.1.22"],
            capture_output=True,
            timeout=60,
        )
        self.assertIn(b"ConnectionRefusedError", refused.stderr)
