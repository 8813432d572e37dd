"""
flannel for real: a server (m0) and an agent (m1), each in its own test
machine with containerd, joined by a veth pair; a busybox pod on each node.

With each backend (vxlan, host-gw): each node writes its flannel
annotations (vxlan: its ``flannel.1``'s MAC), subnet.env and flannel's
chains; the pods reach each other's IP (ping and HTTP) across the nodes,
through ``flannel.1`` (its MTU, the pods' too, is the link's - 50) or a
plain route through the other node; once the agent stops and its Node is
deleted, the server's machine has no route (nor neighbour, nor FDB entry)
to its pods any more.

Needs what tests/test_pod_exec_machine.py needs, and iptables.
"""

from __future__ import annotations

import json
import signal
import subprocess
from functools import partial
from typing import Any

from tests.support.images import BUSYBOX_IMAGE, INDEX_HTML
from tests.support.machines import Machine
from tests.test_pod_exec_machine import ServerAndAgent

IMAGE = f"--image={BUSYBOX_IMAGE} --image-pull-policy=IfNotPresent"
CONFLIST = "/var/lib/rancher/k3s/agent/etc/cni/net.d/10-flannel.conflist"
PREFIX = "flannel.alpha.coreos.com/"


class TwoMachinesWithFlannel(ServerAndAgent):
    """The server in C{self.machine}, the agent in C{self.agent}; C{backend} between them."""

    backend = "vxlan"
    #: The pods' MTU on a 1500 link.
    mtu = 1450

    def start_nodes(self, server_flags: str = "") -> subprocess.Popen[bytes]:
        return super().start_nodes(f"--flannel-backend {self.backend} {server_flags}".strip())

    def agent_registered(self) -> bool:
        return "Successfully registered node m1" in self.agent_log.read_text()

    def node(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.kubectl(f"get node {name} -o json"))
        return found

    def annotated(self, name: str) -> bool:
        annotations = self.node(name)["metadata"].get("annotations") or {}
        return annotations.get(PREFIX + "kube-subnet-manager") == "true"

    def bridge_mtu(self, machine: Machine) -> int | None:
        path = machine.path(CONFLIST)
        if not path.exists():
            return None
        mtu: int | None = json.loads(path.read_text())["plugins"][0].get("mtu")
        return mtu

    def has_bridge_mtu(self, machine: Machine) -> bool:
        return self.bridge_mtu(machine) == self.mtu

    def run_pod(self, name: str, node: str) -> str:
        overrides = json.dumps({"spec": {"nodeName": node}})
        self.kubectl(
            f"run {name} {IMAGE} --overrides='{overrides}' --command -- /bin/httpd -f -p 80 -h /www"
        )
        self.until(
            f"{name} Running on {node}",
            lambda: (self.pod(name).get("status") or {}).get("phase") == "Running",
            timeout=90,
        )
        ip: str = self.pod(name)["status"]["podIP"]
        return ip

    def routes(self, machine: Machine) -> str:
        return machine.run("ip route show")

    def check_local(self, machine: Machine, name: str) -> dict[str, Any]:
        """The node's annotations, subnet.env and chains; its Node."""
        node = self.node(name)
        annotations = node["metadata"]["annotations"]
        self.assertEqual(annotations[PREFIX + "backend-type"], self.backend)
        self.assertEqual(annotations[PREFIX + "public-ip"], machine.address)
        cidr = node["spec"]["podCIDR"]
        subnet = machine.path("/run/flannel/subnet.env").read_text()
        first = cidr.replace(".0/", ".1/")
        self.assertEqual(
            subnet,
            f"FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET={first}\n"
            f"FLANNEL_MTU={self.mtu}\nFLANNEL_IPMASQ=true\n",
        )
        nat = machine.run("iptables -t nat -S")
        self.assertIn('-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG', nat)
        self.assertIn(
            "-A FLANNEL-POSTRTG -s 10.42.0.0/16 ! -d 224.0.0.0/4"
            ' -m comment --comment "flanneld masq" -j MASQUERADE --random-fully',
            nat,
        )
        self.assertEqual(nat.count("-j FLANNEL-POSTRTG"), 1)
        forward = machine.run("iptables -S FORWARD")
        self.assertIn('-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD', forward)
        return node

    def reaches(self, pod: str, ip: str) -> None:
        self.assertEqual(
            self.kubectl(f"exec {pod} -- busybox wget -q -O - http://{ip}/"), INDEX_HTML.decode()
        )
        self.assertIn(" 0% packet loss", self.kubectl(f"exec {pod} -- busybox ping -c 2 {ip}"))


class FlannelAcrossTwoMachines(TwoMachinesWithFlannel):
    def test_pods_on_two_nodes_reach_each_other_until_one_leaves(self) -> None:
        agent = self.start_nodes()
        self.until("m1 registered", self.agent_registered, 90)
        self.until(
            "both nodes annotated", lambda: self.annotated("m0") and self.annotated("m1"), 60
        )
        # The bridge takes flannel's MTU once subnet.env is written.
        for machine in (self.machine, self.agent):
            self.until("the bridge's MTU", partial(self.has_bridge_mtu, machine), 30)
        server = self.check_local(self.machine, "m0")
        remote = self.check_local(self.agent, "m1")
        remote_cidr = remote["spec"]["podCIDR"]

        a = self.run_pod("a", "m0")
        b = self.run_pod("b", "m1")
        self.reaches("a", b)
        self.reaches("b", a)
        self.assertEqual(
            self.kubectl("exec b -- cat /sys/class/net/eth0/mtu").strip(), str(self.mtu)
        )
        # The node itself reaches the other node's pod (through flannel.1's /32, or its link).
        self.assertEqual(self.fetch(b), INDEX_HTML.decode())

        routes = self.routes(self.machine)
        gateway = remote_cidr.split("/")[0]
        if self.backend == "vxlan":
            mac = json.loads(remote["metadata"]["annotations"][PREFIX + "backend-data"])["VtepMAC"]
            self.assertEqual(
                mac, json.loads(self.agent.run("ip -j link show flannel.1"))[0]["address"]
            )
            self.assertIn(f"{remote_cidr} via {gateway} dev flannel.1 onlink", routes)
            self.assertIn(
                f"{gateway} lladdr {mac} PERMANENT", self.machine.run("ip neigh show dev flannel.1")
            )
            self.assertIn(
                f"{mac} dst {self.agent.address} self permanent",
                self.machine.run("bridge fdb show dev flannel.1"),
            )
            details = json.loads(self.machine.run("ip -j -d link show flannel.1"))[0]
            info = details["linkinfo"]["info_data"]
            self.assertEqual(
                (info["id"], info["port"], info["local"], info["learning"], details["mtu"]),
                (1, 8472, self.machine.address, False, 1450),
            )
            own = server["spec"]["podCIDR"].split("/")[0]
            self.assertIn(f"inet {own}/32", self.machine.run("ip -4 addr show dev flannel.1"))
        else:
            self.assertIn(f"{remote_cidr} via {self.agent.address} dev ", routes)
            self.assertNotIn("flannel.1", self.machine.run("ip link show"))

        # The agent again after a stop: the same device and MAC, its rules not doubled.
        # twistd ends itself with the signal that stopped it, once stopped.
        self.assertEqual(self.stop_agent(agent), -signal.SIGTERM)
        annotations = self.node("m1")["metadata"]["annotations"]
        agent = self.start_agent()
        self.until("m1 again", self.agent_registered, 90)
        self.until("m1's flannel again", lambda: "flannel" in self.agent_log.read_text(), 30)
        self.reaches("a", b)
        self.check_local(self.agent, "m1")
        self.assertEqual(self.node("m1")["metadata"]["annotations"], annotations)

        # The agent leaves: its Node deleted takes its route with it.
        self.stop_agent(agent)
        self.kubectl("delete node m1")
        self.until("m1's route gone", lambda: remote_cidr not in self.routes(self.machine), 30)
        if self.backend == "vxlan":
            self.assertEqual(self.machine.run("ip neigh show dev flannel.1").strip(), "")
            self.assertNotIn(mac, self.machine.run("bridge fdb show dev flannel.1"))


class HostGatewayAcrossTwoMachines(FlannelAcrossTwoMachines):
    backend = "host-gw"
    mtu = 1500
