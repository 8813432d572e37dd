"""
ServiceLB in a real ``k3s-server`` with its own node and two ``k3s-agent``
nodes, driven with the real kubectl: a LoadBalancer Service's EXTERNAL-IP
lists the nodes' IPs, the ``enablelb`` label narrows them, and a second
Service on a port every serving node holds stays ``<pending>`` until the
first goes.
"""

from __future__ import annotations

import json
from typing import ClassVar

from twisted.trial.unittest import SynchronousTestCase

from tests.test_join import Cluster

SERVER_HOST = "127.0.0.221"
AGENTS = {"agent-1": "127.0.0.222", "agent-2": "127.0.0.223"}


class ServiceLBTests(SynchronousTestCase):
    cluster: ClassVar[Cluster]

    @classmethod
    def setUpClass(cls) -> None:
        cls.cluster = Cluster.with_agents("k3stw-servicelb-", SERVER_HOST, AGENTS)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.cluster.stop()

    def kubectl(self, *args: str) -> str:
        done = self.cluster.kubectl(*args)
        self.assertEqual(done.returncode, 0, done.stderr)
        return done.stdout

    def external_ip(self, service: str) -> str:
        """The EXTERNAL-IP column ``kubectl get svc`` prints."""
        header, row = self.kubectl("get", "svc", service).splitlines()
        self.assertRegex(header, r"^NAME\s+TYPE\s+CLUSTER-IP\s+EXTERNAL-IP\s+PORT\(S\)\s+AGE")
        return row.split()[3]

    def eventually_external_ip(self, service: str, wanted: str) -> None:
        self.cluster.wait(
            lambda: self.external_ip(service) == wanted,
            f"{service} EXTERNAL-IP {wanted} (now {self.external_ip(service)})",
            timeout=30,
        )

    def test_expose_label_and_contend(self) -> None:
        server_ip = json.loads(self.kubectl("get", "node", "server", "-o", "json"))["status"][
            "addresses"
        ][0]["address"]
        everyone = ",".join(sorted([server_ip, *AGENTS.values()]))
        self.kubectl("create", "deployment", "web", "--image=nginx:1.27")
        self.kubectl("expose", "deployment", "web", "--type=LoadBalancer", "--port", "8080")
        self.eventually_external_ip("web", everyone)
        row = self.kubectl("get", "svc", "web").splitlines()[1].split()
        self.assertEqual(row[1], "LoadBalancer")
        self.assertRegex(row[4], r"^8080:\d+/TCP$")
        self.assertEqual(
            self.kubectl(
                "get", "svc", "web", "-o", "jsonpath={.metadata.finalizers[*]} {.status}"
            ).split(" ", 1)[0],
            "service.kubernetes.io/load-balancer-cleanup",
        )
        events = self.kubectl(
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=web,reason=UpdatedLoadBalancer",
        )
        self.assertIn(
            f"Updated LoadBalancer with new IPs: [] -> [{everyone.replace(',', ' ')}]", events
        )

        # Every node holds 8080 for web: a second Service on it has nowhere to go.
        self.kubectl(
            "expose", "deployment", "web", "--name", "web2", "--type=LoadBalancer", "--port", "8080"
        )
        self.kubectl(
            "expose", "deployment", "web", "--name", "web3", "--type=LoadBalancer", "--port", "9090"
        )
        self.eventually_external_ip("web3", everyone)
        self.assertEqual(self.external_ip("web2"), "<pending>")

        # Labelling one node enablelb=true narrows ServiceLB to it.
        self.kubectl("label", "node", "agent-1", "svccontroller.k3s.cattle.io/enablelb=true")
        self.eventually_external_ip("web", AGENTS["agent-1"])
        self.eventually_external_ip("web3", AGENTS["agent-1"])
        self.assertEqual(self.external_ip("web2"), "<pending>")

        # The first Service gone, the second gets its port.
        self.kubectl("delete", "svc", "web")
        self.eventually_external_ip("web2", AGENTS["agent-1"])
