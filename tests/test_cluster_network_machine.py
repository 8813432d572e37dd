"""
The cluster network as a whole, for real: a server (m0) and an agent (m1),
each in its own test machine with containerd, on flannel's default vxlan; a
web pod on the agent and a client pod on the server.  The client reaches the
web pod's Service by its ClusterIP and its DNS name across the nodes
(flannel, kube-proxy, the cluster DNS through 10.43.0.10); one machine
reaches the NodePort and the LoadBalancer port ServiceLB published on the
other's address (kube-proxy's rules for the ingress IPs); a deny-all
NetworkPolicy on the web pod stops the client until a rule lets its label in.

Needs what tests/test_flannel_machine.py needs.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from tests.support.images import INDEX_HTML
from tests.support.machines import Machine
from tests.test_flannel_machine import TwoMachinesWithFlannel
from tests.test_pods_machine import KUBECTL

PAGE = INDEX_HTML.decode()

DENY_ALL = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "web-deny-all"},
    "spec": {"podSelector": {"matchLabels": {"run": "web"}}, "policyTypes": ["Ingress"]},
}
ALLOW_CLIENT = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "web-allow-client"},
    "spec": {
        "podSelector": {"matchLabels": {"run": "web"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"run": "client"}}}]}],
    },
}


class ClusterNetworkAcrossTwoMachines(TwoMachinesWithFlannel):
    def page_from(self, pod: str, url: str) -> str:
        """
        What C{pod} gets from C{url} ("" if it gets nothing within 5 s: through
        ``timeout``, as busybox 1.35's own ``wget -T`` crashes).
        """
        status, out, _ = self.run_status(
            f"{KUBECTL} exec {pod} -- busybox timeout 5 busybox wget -q -O - {url}", timeout=30
        )
        return out if status == 0 else ""

    def machine_fetches(self, machine: Machine, url: str) -> bool:
        """Whether C{machine} itself (its host network) gets the page from C{url} within 5 s."""
        try:
            return machine.run(f"timeout 5 busybox wget -q -O - {url}", timeout=30) == PAGE
        except AssertionError:
            return False

    def fetched(self, pod: str, url: str) -> bool:
        return self.page_from(pod, url) == PAGE

    def service(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.kubectl("get service web -o json"))
        return found

    def ingress(self) -> list[str]:
        status = self.service().get("status") or {}
        return [entry["ip"] for entry in (status.get("loadBalancer") or {}).get("ingress") or []]

    def apply(self, manifest: dict[str, Any]) -> None:
        status, _, err = self.run_status(f"echo '{json.dumps(manifest)}' | {KUBECTL} apply -f -")
        self.assertEqual(status, 0, err)

    def network_state(self, web_ip: str) -> str:
        """What the nodes' kernels and the API say, for a failure's message."""
        state = [
            f"client to the pod directly: {self.page_from('client', f'http://{web_ip}/')!r}",
            self.kubectl("get endpointslices -o wide"),
        ]
        for machine in (self.machine, self.agent):
            state += [
                f"== {machine.name}",
                machine.run("ip route show"),
                machine.run("iptables-save -t nat | grep -e KUBE-SVC -e KUBE-SEP -e KUBE-SERVICES"),
                machine.run("iptables-save -t filter | grep -e FORWARD -e KUBE-ROUTER"),
            ]
        return "\n".join(state)

    def resolves(self, name: str, address: str) -> bool:
        """Whether the client pod's nameserver (10.43.0.10) answers C{address} for C{name}."""
        status, answer, _ = self.run_status(f"{KUBECTL} exec client -- busybox nslookup {name}")
        return status == 0 and "Server:\t\t10.43.0.10" in answer and f"Address: {address}" in answer

    def test_services_dns_node_ports_load_balancers_and_policies_across_nodes(self) -> None:
        self.start_nodes()
        self.until("m1 registered", self.agent_registered, 90)
        self.until(
            "both nodes annotated", lambda: self.annotated("m0") and self.annotated("m1"), 60
        )
        for machine in (self.machine, self.agent):
            self.until("the bridge's MTU", partial(self.has_bridge_mtu, machine), 30)
        web_ip = self.run_pod("web", "m1")
        self.run_pod("client", "m0")
        self.kubectl("expose pod web --port 8080 --target-port 80 --type LoadBalancer")
        service = self.service()
        cluster_ip = service["spec"]["clusterIP"]
        node_port = service["spec"]["ports"][0]["nodePort"]

        # By ClusterIP, from a pod on the other node.
        try:
            self.until(
                "the ClusterIP from the other node",
                partial(self.fetched, "client", f"http://{cluster_ip}:8080/"),
                60,
            )
        except self.failureException:
            self.fail(self.network_state(web_ip))
        # By name, through the pod's nameserver 10.43.0.10.
        self.until(
            "the Service's name resolved through 10.43.0.10",
            partial(self.resolves, "web.default.svc.cluster.local", cluster_ip),
            30,
        )
        self.assertTrue(self.fetched("client", "http://web.default.svc.cluster.local:8080/"))

        # The NodePort of each node, from the other machine.
        for machine, other in ((self.machine, self.agent), (self.agent, self.machine)):
            self.until(
                f"{other.name}'s NodePort from {machine.name}",
                partial(self.machine_fetches, machine, f"http://{other.address}:{node_port}/"),
                30,
            )

        # ServiceLB publishes both nodes; each answers on the Service's port.
        self.until(
            "the nodes' addresses in the Service's status",
            lambda: sorted(self.ingress()) == sorted([self.machine.address, self.agent.address]),
            60,
        )
        self.assertIn("EXTERNAL-IP", self.kubectl("get service web"))
        # Each node's kube-proxy writes the ingress addresses' rules at its next sync.
        for machine, other in ((self.machine, self.agent), (self.agent, self.machine)):
            self.until(
                f"the LoadBalancer port on {other.name} from {machine.name}",
                partial(self.machine_fetches, machine, f"http://{other.address}:8080/"),
                30,
            )

        # The web pod's node enforces its policies on traffic from the other node.
        self.apply(DENY_ALL)
        self.until(
            "the deny-all policy enforced",
            lambda: self.page_from("client", f"http://{cluster_ip}:8080/") == "",
            60,
        )
        self.apply(ALLOW_CLIENT)
        self.until(
            "the client let in again",
            partial(self.fetched, "client", f"http://{cluster_ip}:8080/"),
            60,
        )
