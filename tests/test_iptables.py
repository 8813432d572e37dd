"""
The iptables floor against the real iptables, inside a network namespace the
test makes (nothing touches this machine's own rules).
"""

from __future__ import annotations

import os
import subprocess

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
