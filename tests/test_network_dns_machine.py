"""
Cluster DNS from a pod, for real: ``k3s-server --container-runtime
containerd`` in a test machine whose node IP is its veth address; its node
serves the cluster DNS on that address, port 53, and a busybox pod resolves
``kubernetes.default``, a Service of its own and an SRV record through it
(over the pod network: the pod's packets reach the node through ``cni0``).
The pod's resolv.conf is the kubelet's ClusterFirst one.  (busybox's
nslookup asks for the name as given, without the search list: the names it
asks are whole; ``ping`` shows the C library's resolver walking the list.)

Through ``10.43.0.10`` itself the pod's questions go through kube-proxy's
DNAT of the ``kube-dns`` ClusterIP to the nodes listed in its endpoints.

Needs root, Debian's containerd, containernetworking-plugins and
busybox-static, as tests/test_pods_machine.py does.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.images import BUSYBOX_IMAGE, write_airgap_images
from tests.support.machines import machines
from tests.test_pods_machine import KUBECTL, PodsInAMachine

NODE_IP = "10.199.1.1"
CLIENT = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "dnsclient", "namespace": "default"},
    "spec": {
        "terminationGracePeriodSeconds": 1,
        "containers": [
            {
                "name": "main",
                "image": BUSYBOX_IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "command": ["/bin/sh", "-c", "while true; do sleep 1; done"],
            }
        ],
    },
}
WEB = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
}


class ClusterDNSInAMachineTests(PodsInAMachine):
    def setUp(self) -> None:
        self.work = Path(self.mktemp()).absolute()
        # A second machine only for the veth pair: the first gets 10.199.1.1.
        self.machine = machines(self, self.work / "machines", 2)[0]
        self.machine.boot(runtime=True)
        write_airgap_images(self.machine.rancher / "k3s" / "agent" / "images")

    def nslookup(self, *arguments: str) -> str:
        return self.kubectl(f"exec dnsclient -- busybox nslookup {' '.join(arguments)}")

    def test_pod_resolves_through_the_node(self) -> None:
        self.launch(
            "k3s-server --container-runtime containerd"
            f" --node-ip {NODE_IP} --node-name m1"
            f" --kubelet-arg cgroup-root={self.machine.cgroup_parent}",
            "server.log",
            "cluster DNS serving cluster.local",
        )
        self.apply(WEB)
        self.apply(CLIENT)

        def running() -> bool:
            return (self.pod("dnsclient").get("status") or {}).get("phase") == "Running"

        self.until("dnsclient Running", running)
        resolv = self.kubectl("exec dnsclient -- cat /etc/resolv.conf")
        self.assertIn("nameserver 10.43.0.10", resolv)
        self.assertIn("search default.svc.cluster.local svc.cluster.local cluster.local", resolv)
        self.assertIn("options ndots:5", resolv)

        found = self.nslookup("kubernetes.default.svc.cluster.local", NODE_IP)
        self.assertIn("Address: 10.43.0.1", found)
        web_ip = json.loads(self.kubectl("get service web -o json"))["spec"]["clusterIP"]
        self.assertIn(f"Address: {web_ip}", self.nslookup("web.default.svc.cluster.local", NODE_IP))
        srv = self.nslookup("-type=srv", "_http._tcp.web.default.svc.cluster.local", NODE_IP)
        self.assertIn("web.default.svc.cluster.local", srv)
        self.assertIn(" 80 ", srv)
        # The server lists this node, the one that serves the cluster DNS, behind kube-dns.
        endpoints = json.loads(self.kubectl("get endpoints -n kube-system kube-dns -o json"))
        self.assertEqual([a["ip"] for s in endpoints["subsets"] for a in s["addresses"]], [NODE_IP])
        hosts = self.kubectl("get configmap -n kube-system coredns -o jsonpath={.data.NodeHosts}")
        self.assertEqual(hosts.strip(), f"{NODE_IP} m1")

        # Through 10.43.0.10, the pod's own nameserver.
        self.assertIn("Address: 10.43.0.1", self.nslookup("kubernetes.default.svc.cluster.local"))
        srv = self.nslookup("-type=srv", "_http._tcp.web.default.svc.cluster.local")
        self.assertIn("web.default.svc.cluster.local", srv)
        # The C library's resolver walks the search list (busybox nslookup does not):
        # ping names the address it resolved, though a ClusterIP does not answer pings.
        ping = self.machine.run(
            f"{KUBECTL} exec dnsclient -- busybox ping -c1 -W1 kubernetes.default 2>&1 || true"
        )
        self.assertIn("PING kubernetes.default (10.43.0.1)", ping)
