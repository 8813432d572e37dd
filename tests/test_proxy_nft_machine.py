"""
kube-proxy's nftables mode for real: ``k3s-server --kube-proxy-arg
proxy-mode=nftables`` in a test machine writes kube's ``ip kube-proxy``
table in the machine's own network namespace, and busybox pods reach a
Service through it:

- a pod fetches a busybox httpd pod's page through the Service's ClusterIP,
  and the httpd pod fetches its own page through it (hairpin);
- another machine fetches it through the node's address and the NodePort;
- a Service without endpoints refuses at once (reject), not a timeout;
- kube-proxy's iptables-mode rules left from before are removed, and a table
  of someone else's is left alone.

Needs what tests/test_proxy_machine.py needs, and nft (Debian nftables).
"""

from __future__ import annotations

from k3stw.network.proxynft import chain_base
from k3stw.network.proxyrules import ServicePort
from tests import test_proxy_machine
from tests.support.images import INDEX_HTML

#: What an iptables-mode kube-proxy left: its chain and the jump to it.
LEFTOVER = (
    "iptables -t nat -N KUBE-SERVICES && iptables -t nat -I PREROUTING"
    ' -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
)
#: A table of another program's, with a chain.
OTHERS = "nft add table ip others && nft add chain ip others mine"


class NFTablesProxyInAMachineTests(test_proxy_machine.ServiceProxyInAMachineTests):
    test_cluster_ip_node_port_hairpin_and_reject = None  # type: ignore[assignment]

    server_flags = " --kube-proxy-arg proxy-mode=nftables"

    def test_cluster_ip_node_port_hairpin_and_reject_through_nftables(self) -> None:
        self.machine.run(LEFTOVER)
        self.machine.run(OTHERS)
        self.start_server("server.log")
        cluster_ip, node_port = self.web_through_its_service()
        page = INDEX_HTML.decode()
        # From another machine, through the node's address and the NodePort.
        self.assertEqual(self.until_answered(self.other, f"http://10.199.1.1:{node_port}/"), page)

        self.assert_refused_without_endpoints()

        table = self.machine.run("nft list table ip kube-proxy")
        port = ServicePort("default", "web", "80-80", "tcp", cluster_ip, 80)
        chain = f"service-{chain_base(port)}"
        self.assertIn(f"{cluster_ip} . tcp . 80 : goto {chain}", table)
        self.assertIn(f"tcp . {node_port} : goto external-", table)
        self.assertIn('comment "default/empty:80-80" : goto reject-chain', table)
        self.assertIn("numgen random mod 1 vmap", table)
        # The iptables mode's rules are gone; the other table is as it was.
        self.assertNotIn("KUBE-SERVICES", self.machine.run("iptables-save -t nat"))
        self.assertIn("chain mine", self.machine.run("nft list table ip others"))
        log = self.log.read_text(errors="replace")
        self.assertIn("Synced nftables rules", log)
        self.assertNotIn("Failed to sync", log)
