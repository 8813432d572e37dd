"""
k3s's packaged cluster DNS on the server: the ``kube-dns`` Service and
``coredns`` ConfigMap as its manifest makes them, NodeHosts kept in step with
the Nodes as k3s's node controller keeps it, and the Service's endpoints on
the Ready nodes that serve the cluster DNS.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.controllers import coredns
from k3stw.controllers.coredns import ClusterDNSController, updated_node_hosts
from k3stw.machinery.objects import Object
from tests.support.apiserver import MemoryServer


def node(name: str, *ips: str, ready: bool = True, runtime: str = "containerd://1.6.20") -> Object:
    addresses = [{"type": "InternalIP", "address": ip} for ip in ips]
    addresses.append({"type": "Hostname", "address": name})
    return {
        "metadata": {"name": name},
        "status": {
            "addresses": addresses,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "nodeInfo": {"containerRuntimeVersion": runtime},
        },
    }


class NodeHostsTextTests(SynchronousTestCase):
    def test_sorted_by_address(self) -> None:
        text = updated_node_hosts("10.0.0.9 b\n", node("a", "10.0.0.10"), removing=False)
        self.assertEqual(text, "10.0.0.9 b\n10.0.0.10 a\n")

    def test_unchanged_is_none(self) -> None:
        self.assertIsNone(updated_node_hosts("10.0.0.1 a\n", node("a", "10.0.0.1"), False))

    def test_moved_address_replaced_and_other_lines_kept(self) -> None:
        """A node's old address goes; a line someone else wrote (comments too) stays."""
        text = "10.0.0.1 a # old\n10.0.0.5 printer\nbroken\n"
        self.assertEqual(
            updated_node_hosts(text, node("a", "10.0.0.2"), False),
            "10.0.0.2 a\n10.0.0.5 printer\n",
        )

    def test_hostname_differing_from_name(self) -> None:
        agent = node("agent-1", "10.0.0.3", "fd00::3")
        agent["status"]["addresses"][-1]["address"] = "host-3"
        self.assertEqual(
            updated_node_hosts("", agent, False),
            "10.0.0.3 agent-1 host-3\nfd00::3 agent-1 host-3\n",
        )

    def test_removed(self) -> None:
        self.assertEqual(
            updated_node_hosts("10.0.0.1 a\n10.0.0.2 b\n", node("a"), removing=True), "10.0.0.2 b\n"
        )


class ControllerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.server.run(coredns.deploy(self.server.store, "10.43.0.10", "cluster.local"))
        self.controller = ClusterDNSController(self.server.informers, self.server.store)
        self.server.start(self.controller)

    def get(self, plural: str, name: str, group: str = "") -> Any:
        return self.server.get(group, plural, name, "kube-system")

    def test_manifest_objects(self) -> None:
        """kube-dns at the cluster DNS address, without a selector; the Corefile k3s ships."""
        service = self.get("services", "kube-dns")
        self.assertEqual(service["spec"]["clusterIP"], "10.43.0.10")
        self.assertNotIn("selector", service["spec"])
        self.assertEqual(
            [(p["name"], p["port"], p["protocol"]) for p in service["spec"]["ports"]],
            [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")],
        )
        self.assertEqual(service["metadata"]["labels"]["k8s-app"], "kube-dns")
        self.assertEqual(service["metadata"]["annotations"]["prometheus.io/port"], "9153")
        data = self.get("configmaps", "coredns")["data"]
        self.assertIn("kubernetes cluster.local in-addr.arpa ip6.arpa {", data["Corefile"])
        self.assertEqual(data["NodeHosts"], "")

    def test_deploy_again_puts_back_and_keeps_node_hosts(self) -> None:
        self.server.create("", "nodes", node("server-1", "10.199.1.2"))
        store = self.server.store
        self.server.run(
            store.guaranteed_update(
                self.server.resource("", "configmaps"),
                "kube-system",
                "coredns",
                lambda cm: {**cm, "data": {**cm["data"], "Corefile": "edited"}},
            )
        )
        self.server.run(coredns.deploy(store, "10.43.0.10", "cluster.local"))
        data = self.get("configmaps", "coredns")["data"]
        self.assertIn("pods insecure", data["Corefile"])
        self.assertEqual(data["NodeHosts"], "10.199.1.2 server-1\n")

    def test_node_hosts_follow_nodes(self) -> None:
        self.server.create("", "nodes", node("server-1", "10.199.1.2"))
        self.server.create("", "nodes", node("agent-1", "10.199.2.2"))
        self.assertEqual(
            self.get("configmaps", "coredns")["data"]["NodeHosts"],
            "10.199.1.2 server-1\n10.199.2.2 agent-1\n",
        )
        self.server.delete("", "nodes", "agent-1")
        self.assertEqual(
            self.get("configmaps", "coredns")["data"]["NodeHosts"], "10.199.1.2 server-1\n"
        )

    def test_endpoints_on_ready_nodes_that_run_pods(self) -> None:
        """Only Ready nodes with a runtime serve the cluster DNS, so only they are listed."""
        self.server.create("", "nodes", node("server-1", "10.199.1.2"))
        self.server.create("", "nodes", node("agent-1", "10.199.2.2", ready=False))
        self.server.create("", "nodes", node("agent-2", "10.199.3.2", runtime="runc://unknown"))
        endpoints = self.get("endpoints", "kube-dns")
        self.assertEqual(
            [(a["ip"], a["nodeName"]) for s in endpoints["subsets"] for a in s["addresses"]],
            [("10.199.1.2", "server-1")],
        )
        slices = self.get("endpointslices", "kube-dns-ipv4", "discovery.k8s.io")
        self.assertEqual(slices["metadata"]["labels"]["kubernetes.io/service-name"], "kube-dns")
        self.assertEqual([e["addresses"] for e in slices["endpoints"]], [["10.199.1.2"]])
        self.assertEqual(
            [(p["name"], p["port"], p["protocol"]) for p in slices["ports"]],
            [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")],
        )
