"""
The node around the pods for real: ``k3s-server --container-runtime
containerd`` in a test machine gets its ``spec.podCIDR`` from the server's
node IPAM controller, writes the bridge conflist where k3s writes flannel's,
and containerd then reports NetworkReady; the Node turns Ready and lists the
imported images; a sandbox run through the CRI client gets an address from
the node's range; registries.yaml is rendered into containerd's ``certs.d``
and containerd accepts the config with its auth.

Needs root, Debian's containerd, containernetworking-plugins and
busybox-static (run-tests.sh installs them): without them the test fails.
"""

from __future__ import annotations

import ipaddress
import json
import time
import uuid
from pathlib import Path
from typing import Any, cast

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads

from k3stw.kubelet.cri import api_pb2 as api
from k3stw.kubelet.cri.client import CRIClient
from tests.support.images import BUSYBOX_IMAGE, PAUSE, write_airgap_images
from tests.support.machines import machines
from tests.test_containerd_machine import NodeInAMachine

reactor = cast(IReactorThreads, _reactor)
KUBECTL = "kubectl --kubeconfig /etc/rancher/k3s/k3s.yaml"
REGISTRIES = """\
mirrors:
  docker.io:
    endpoint: ["http://127.0.0.1:5000"]
configs:
  "127.0.0.1:5000":
    auth: {username: puller, password: secret}
"""


class NodeNetworkInAMachineTests(NodeInAMachine):
    def setUp(self) -> None:
        self.work = Path(self.mktemp()).absolute()
        self.machine = machines(self, self.work / "machines", 1)[0]
        self.machine.boot(runtime=True)
        write_airgap_images(self.machine.rancher / "k3s" / "agent" / "images")
        self.machine.run(
            "mkdir -p /etc/rancher/k3s && cat > /etc/rancher/k3s/registries.yaml <<'EOF'\n"
            f"{REGISTRIES}EOF"
        )

    def node(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.machine.run(f"{KUBECTL} get node m1 -o json"))
        return found

    def until_ready(self) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while True:
            node = self.node()
            conditions = {c["type"]: c for c in node["status"].get("conditions", [])}
            if conditions.get("Ready", {}).get("status") == "True":
                return node
            self.assertLess(time.monotonic(), deadline, json.dumps(node["status"], indent=1))
            time.sleep(0.5)

    def test_pod_network_from_the_assigned_cidr(self) -> Deferred[None]:
        node_pid = self.launch(
            "k3s-server --container-runtime containerd --bind-address 127.0.0.1"
            " --node-ip 127.0.0.1 --node-name m1",
            "server.log",
            "Successfully registered node m1",
        )
        node = self.until_ready()
        cidr = node["spec"]["podCIDR"]
        self.assertTrue(cidr.startswith("10.42."), cidr)
        conflist = self.machine.path("/var/lib/rancher/k3s/agent/etc/cni/net.d/10-flannel.conflist")
        bridge = json.loads(conflist.read_text())["plugins"][0]
        self.assertEqual(bridge["ipam"]["ranges"], [[{"subnet": cidr}]])
        names = {name for image in node["status"]["images"] for name in image["names"]}
        self.assertLessEqual({PAUSE, BUSYBOX_IMAGE}, names)
        self.assertNotIn(
            "node.kubernetes.io/not-ready",
            [t["key"] for t in node["spec"].get("taints", [])],
            "the lifecycle controller lifts it once the node is Ready",
        )
        hosts = self.machine.path(
            "/var/lib/rancher/k3s/agent/etc/containerd/certs.d/docker.io/hosts.toml"
        )
        self.assertIn('[host."http://127.0.0.1:5000/v2"]', hosts.read_text())

        socket = self.machine.path("/run/k3s/containerd/containerd.sock")
        client = CRIClient(reactor, f"unix://{socket}", timeout=30)
        self.addCleanup(client.close)

        async def sandbox() -> None:
            status = await client.status()
            network = {c.type: c.status for c in status.status.conditions}
            self.assertEqual(network, {"RuntimeReady": True, "NetworkReady": True})
            uid = str(uuid.uuid4())
            config = api.PodSandboxConfig(
                metadata=api.PodSandboxMetadata(name="probe", namespace="default", uid=uid),
                hostname="probe",
                log_directory=f"/var/log/pods/default_probe_{uid}",
                linux=api.LinuxPodSandboxConfig(
                    cgroup_parent=f"{self.machine.cgroup_parent}/pod{uid}"
                ),
            )
            sandbox_id = await client.run_pod_sandbox(config)
            ip = (await client.pod_sandbox_status(sandbox_id)).network.ip
            self.assertIn(ipaddress.ip_address(ip), ipaddress.ip_network(cidr))
            await client.stop_pod_sandbox(sandbox_id)
            await client.remove_pod_sandbox(sandbox_id)
            self.stop_node(node_pid)

        return Deferred.fromCoroutine(sandbox())
