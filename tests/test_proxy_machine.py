"""
kube-proxy for real: ``k3s-server --container-runtime containerd`` in a test
machine writes kube's iptables rules in the machine's own network namespace,
and busybox pods reach a Service through them:

- a pod fetches a busybox httpd pod's page through the Service's ClusterIP,
  and the httpd pod fetches its own page through it (hairpin);
- another machine fetches it through the node's address and the NodePort,
  and through a LoadBalancer ingress IP (the node's, as ServiceLB sets it);
- a Service without endpoints refuses at once (REJECT), not a timeout;
- ``iptables-save`` shows kube's chain names, one jump of each kind however
  many syncs ran, and a deleted Service's chains gone.

All pods run on the one node, so that no route between nodes (flannel) is
needed.  Needs what tests/test_pods_machine.py needs, and iptables.
"""

from __future__ import annotations

import json
import sys
import time
from functools import partial
from pathlib import Path

from k3stw.network.proxyrules import chain_hash
from tests.support.images import INDEX_HTML, write_airgap_images
from tests.support.machines import Machine, machines
from tests.test_pod_exec_machine import IMAGE, PodStreamsInAMachine
from tests.test_pods_machine import KUBECTL


class ServiceProxyInAMachineTests(PodStreamsInAMachine):
    timeout = 300

    def setUp(self) -> None:
        self.work = Path(self.mktemp()).absolute()
        self.machine, self.other = machines(self, self.work / "machines", 2)
        self.machine.boot(runtime=True)
        self.other.boot()
        write_airgap_images(self.machine.rancher / "k3s" / "agent" / "images")

    def service(self, name: str) -> dict[str, object]:
        found: dict[str, object] = json.loads(self.kubectl(f"get service {name} -o json"))
        return found

    def in_pod(self, pod: str, url: str) -> tuple[int, str, str]:
        return self.run_status(f"{KUBECTL} exec {pod} -- wget -q -O - {url}", timeout=30)

    def running(self, pod: str) -> bool:
        return bool((self.pod(pod).get("status") or {}).get("phase") == "Running")

    def rules(self, saved: str | None = None) -> list[str]:
        """
        ``iptables-save``'s lines (the machine's now, or C{saved}) without its
        dated comments, nor the network policy controller's, whose chain names
        change with every sync as kube-router's do.
        """
        text = self.machine.run("iptables-save") if saved is None else saved
        return [
            line
            for line in text.splitlines()
            if not line.startswith("#")
            and "KUBE-ROUTER" not in line
            and "KUBE-NWPLCY" not in line
            and "KUBE-POD-FW" not in line
        ]

    def until_answered(self, machine: Machine, url: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return machine.run(f"busybox wget -q -O - {url}", timeout=20)
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.5)

    def until_fetched(self, pod: str, url: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            status, out, err = self.in_pod(pod, url)
            if status == 0:
                return out
            if time.monotonic() > deadline:
                self.fail(f"{url} from {pod}: {err}\n{self.machine.run('iptables-save')}")
            time.sleep(0.5)

    def web_through_its_service(self) -> tuple[str, int]:
        """
        A web pod behind NodePort Service ``web`` and a client pod (both
        Running), and Service ``empty`` without endpoints; the client and the
        web pod itself (hairpin) fetch the page through the ClusterIP.  The
        ClusterIP and NodePort.
        """
        self.kubectl(f"run web {IMAGE} --labels app=web --command -- /bin/httpd -f -p 80 -h /www")
        self.kubectl(f"run client {IMAGE} --command -- sleep 3600")
        self.kubectl("create service nodeport web --tcp=80:80")
        self.kubectl("create service clusterip empty --tcp=80:80")
        for pod in ("web", "client"):
            self.until(f"{pod} Running", partial(self.running, pod))
        web = self.service("web")["spec"]
        assert isinstance(web, dict)
        cluster_ip, node_port = web["clusterIP"], web["ports"][0]["nodePort"]
        page = self.until_fetched("client", f"http://{cluster_ip}/")
        self.assertEqual(page, INDEX_HTML.decode())
        # Hairpin: the endpoint reaches itself through its Service (masqueraded).
        self.assertEqual(self.until_fetched("web", f"http://{cluster_ip}/"), page)
        return cluster_ip, node_port

    def assert_refused_without_endpoints(self) -> None:
        """Service ``empty`` (no endpoints) refuses the client at once, not after a timeout."""
        empty_spec = self.service("empty")["spec"]
        assert isinstance(empty_spec, dict)
        started = time.monotonic()
        status, _, err = self.in_pod("client", f"http://{empty_spec['clusterIP']}/")
        self.assertNotEqual(status, 0)
        self.assertIn("Connection refused", err)
        self.assertLess(time.monotonic() - started, 10)

    def test_cluster_ip_node_port_hairpin_and_reject(self) -> None:
        node = self.start_server("server.log")
        cluster_ip, node_port = self.web_through_its_service()
        page = INDEX_HTML.decode()
        # From another machine, through the node's address and the NodePort.
        self.assertEqual(
            self.other.run(f"busybox wget -q -O - http://10.199.1.1:{node_port}/", timeout=20),
            page,
        )
        # A LoadBalancer's ingress IP (ServiceLB puts the nodes' there): <nodeIP>:<port> serves.
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "lb"},
                "spec": {
                    "type": "LoadBalancer",
                    # Some other controller's: no ServiceLB pods for it.
                    "loadBalancerClass": "example.com/elsewhere",
                    "selector": {"app": "web"},
                    "ports": [{"name": "http", "port": 8080, "targetPort": 80}],
                },
            }
        )
        ingress = json.dumps({"status": {"loadBalancer": {"ingress": [{"ip": "10.199.1.1"}]}}})
        self.kubectl(f"patch service lb --subresource=status --type=merge -p '{ingress}'")
        self.assertEqual(self.until_answered(self.other, "http://10.199.1.1:8080/"), page)
        # The node itself reaches the NodePort on 127.0.0.1 (route_localnet).
        self.assertEqual(
            self.machine.run(f"busybox wget -q -O - http://127.0.0.1:{node_port}/", timeout=20),
            page,
        )

        self.assert_refused_without_endpoints()

        saved = self.machine.run("iptables-save")
        web_chain = "KUBE-SVC-" + chain_hash("default/web:80-80tcp")
        self.assertIn(
            f'-A KUBE-SERVICES -d {cluster_ip}/32 -p tcp -m comment --comment "default/web:80-80'
            f' cluster IP" -m tcp --dport 80 -j {web_chain}',
            saved,
        )
        self.assertIn(f"-j KUBE-EXT-{chain_hash('default/web:80-80tcp')}", saved)
        self.assertIn('"default/empty:80-80 has no endpoints"', saved)
        self.assertIn("-j REJECT", saved)
        self.assertEqual(
            saved.count('-A PREROUTING -m comment --comment "kubernetes service portals"'), 1
        )
        self.assertEqual(saved.count("-j KUBE-POSTROUTING"), 1)
        web_endpoints = {
            line.split()[1]
            for line in saved.splitlines()
            if "KUBE-SEP-" in line and "default/web" in line and line.startswith("-A KUBE-SEP-")
        }
        self.assertEqual(len(web_endpoints), 1, saved)

        # Restarted, the node writes the same rules: no jump twice.
        self.stop_node(node)
        self.start_server("server-again.log")
        self.until(
            "a full sync",
            lambda: "full sync: True" in self.log.read_text(errors="replace"),
        )
        self.assertEqual(self.rules(), self.rules(saved))

        # A deleted Service's chains go with it, in a later sync.
        self.kubectl("delete service web")
        deadline = time.monotonic() + 20
        while web_chain in self.machine.run("iptables-save -t nat"):
            self.assertLess(time.monotonic(), deadline, "KUBE-SVC chain left after delete")
            time.sleep(0.5)
        nat = self.machine.run("iptables-save -t nat")
        self.assertEqual([chain for chain in web_endpoints if chain in nat], [])
        self.assertNotIn("Failed to sync iptables rules", self.log.read_text())


#: Ask 10.43.99.99:53 one DNS question from local port 40000; print whether an answer came (1 s).
ASK_FROM_ONE_PORT = """
import socket, struct
name = "kubernetes.default.svc.cluster.local"
question = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"".join(
    bytes([len(label)]) + label.encode() for label in name.split(".")
) + b"\\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 40000)); s.settimeout(1)
try:
    s.sendto(question, ("10.43.99.99", 53))
    print("answered" if s.recv(512)[:2] == question[:2] else "other")
except socket.timeout:
    print("nothing")
except OSError as e:
    print("refused", e.errno)
"""


class StaleUDPFlowsInAMachineTests(ServiceProxyInAMachineTests):
    test_cluster_ip_node_port_hairpin_and_reject = None  # type: ignore[assignment]

    def ask(self) -> str:
        return self.machine.run(f"{sys.executable} -c '{ASK_FROM_ONE_PORT}'", timeout=30).strip()

    def test_a_udp_flow_sent_before_its_service_existed_meets_the_rule(self) -> None:
        """
        A question sent to a ClusterIP before its Service existed made a flow
        that went nowhere; when kube-proxy first writes the Service (with an
        endpoint) it drops that flow, so the same asker (same port) is
        answered.  Each unanswered try renews the flow: without the clean-up
        it would never end (a DNS client's retries from one port time out).
        """
        self.start_server("server.log")
        self.until("a full sync", lambda: "full sync: True" in self.log.read_text())
        self.assertEqual(self.ask(), "nothing")
        # The endpoints first: kube-proxy meets the Service with them, in one sync.
        self.apply(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": "late-1", "labels": {"kubernetes.io/service-name": "late"}},
                "addressType": "IPv4",
                "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}],
                # The node's own cluster DNS answers there.
                "endpoints": [{"addresses": ["127.0.0.1"]}],
            }
        )
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "late"},
                "spec": {
                    "clusterIP": "10.43.99.99",
                    "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}],
                },
            }
        )
        self.until(
            "the same port answered through the Service", lambda: self.ask() == "answered", 30
        )
