"""
flannel's pure parts, with no kernel: leases read from Nodes, the vxlan and
host-gw entries for them (the ``ip``/``bridge -batch`` lines), what changes
when nodes come, change and go, the node's own annotations, the masquerade
and forward rules, subnet.env, the interface and the ``flannel.1`` check.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.network.flannel import (
    RESYNC_INTERVAL,
    Entry,
    FlannelController,
    Lease,
    Link,
    annotation_patch,
    changes,
    find_link,
    lease_of,
    own_annotations,
    read_subnet_mtu,
    rules,
    subnet_env,
    trim_node,
)
from k3stw.network.hostgw import HostGWBackend
from k3stw.network.hostgw import entries as hostgw_entries
from k3stw.network.hostgw import found_entries as hostgw_found
from k3stw.network.iptables import IPTables
from k3stw.network.vxlan import Device, device_commands, previous_mac
from k3stw.network.vxlan import entries as vxlan_entries
from k3stw.network.vxlan import found_entries as vxlan_found
from tests.support.fakes import FakeKubeClient
from tests.support.processes import FakeProcessReactor

MAC2 = "0a:00:00:00:00:02"
#: eth0's routes left by a run before: m1's, one to a node deleted since, and others'.
ROUTES = [
    {"dst": "10.199.1.0/24", "protocol": "kernel", "scope": "link", "prefsrc": "10.199.1.1"},
    {"dst": "10.42.1.0/24", "gateway": "10.199.1.2"},
    {"dst": "10.42.9.0/24", "gateway": "10.199.9.2"},
    {"dst": "10.50.0.0/24", "gateway": "10.199.1.2"},
]
#: The node's interface, as ``ip -j -4 addr show`` lists it.
LINK = {"ifname": "eth0", "mtu": 1500, "addr_info": [{"family": "inet", "local": "10.199.1.1"}]}


def node(
    name: str,
    cidr: str | None = "10.42.2.0/24",
    public_ip: str = "10.199.1.2",
    backend: str = "vxlan",
    data: Any = None,
    managed: bool = True,
    extra: dict[str, str] | None = None,
) -> dict[str, Any]:
    annotations = {
        "flannel.alpha.coreos.com/backend-type": backend,
        "flannel.alpha.coreos.com/backend-data": json.dumps(
            {"VNI": 1, "VtepMAC": MAC2} if data is None else data, separators=(",", ":")
        ),
        "flannel.alpha.coreos.com/public-ip": public_ip,
        **(extra or {}),
    }
    if managed:
        annotations["flannel.alpha.coreos.com/kube-subnet-manager"] = "true"
    spec = {"podCIDR": cidr, "podCIDRs": [cidr]} if cidr else {}
    return {"metadata": {"name": name, "annotations": annotations}, "spec": spec}


class LeaseTests(SynchronousTestCase):
    def test_a_managed_node_is_a_lease(self) -> None:
        self.assertEqual(
            lease_of(node("m1")),
            Lease(
                "m1",
                ipaddress.IPv4Network("10.42.2.0/24"),
                "10.199.1.2",
                "vxlan",
                {"VNI": 1, "VtepMAC": MAC2},
            ),
        )

    def test_nodes_flannel_cannot_use_are_no_lease(self) -> None:
        self.assertIsNone(lease_of(node("m1", managed=False)), "no kube-subnet-manager")
        self.assertIsNone(lease_of(node("m1", cidr=None)), "no pod range yet")
        self.assertIsNone(lease_of(node("m1", public_ip="")), "no public IP")
        self.assertIsNone(lease_of(node("m1", public_ip="not-an-ip")))
        broken = node("m1")
        broken["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-data"] = "{"
        self.assertIsNone(lease_of(broken))

    def test_the_ipv4_range_of_a_dual_stack_node(self) -> None:
        dual = node("m1")
        dual["spec"] = {"podCIDRs": ["fd00:42:0:2::/64", "10.42.2.0/24"]}
        lease = lease_of(dual)
        assert lease is not None
        self.assertEqual(lease.subnet, ipaddress.IPv4Network("10.42.2.0/24"))
        self.assertEqual(str(lease.gateway), "10.42.2.0")

    def test_the_informer_keeps_only_what_a_lease_is_made_of(self) -> None:
        full = node("m1", extra={"k3s.io/hostname": "m1"})
        full["metadata"]["managedFields"] = [{"manager": "kubelet"}]
        full["status"] = {"capacity": {"cpu": "2"}}
        trimmed = trim_node(full)
        self.assertEqual(
            set(trimmed["metadata"]["annotations"]),
            {
                "flannel.alpha.coreos.com/backend-type",
                "flannel.alpha.coreos.com/backend-data",
                "flannel.alpha.coreos.com/public-ip",
                "flannel.alpha.coreos.com/kube-subnet-manager",
            },
        )
        self.assertNotIn("status", trimmed)
        self.assertNotIn("managedFields", trimmed["metadata"])
        self.assertEqual(lease_of(trimmed), lease_of(full))


class VXLANTests(SynchronousTestCase):
    def test_neighbour_fdb_and_onlink_route_for_another_node(self) -> None:
        lease = lease_of(node("m1"))
        assert lease is not None
        self.assertEqual(
            vxlan_entries(lease),
            (
                Entry(
                    "ip",
                    f"neigh replace 10.42.2.0 lladdr {MAC2} dev flannel.1 nud permanent",
                    "neigh del 10.42.2.0 dev flannel.1",
                ),
                Entry(
                    "bridge",
                    f"fdb replace {MAC2} dev flannel.1 dst 10.199.1.2 self permanent",
                    f"fdb del {MAC2} dev flannel.1 dst 10.199.1.2 self",
                ),
                Entry(
                    "ip",
                    "route replace 10.42.2.0/24 via 10.42.2.0 dev flannel.1 onlink",
                    "route del 10.42.2.0/24 via 10.42.2.0 dev flannel.1",
                ),
            ),
        )

    def test_no_vtep_mac_no_entries(self) -> None:
        lease = lease_of(node("m1", data={"VNI": 1}))
        assert lease is not None
        self.assertEqual(vxlan_entries(lease), ())

    def test_the_device_flannel_makes(self) -> None:
        device = Device(Link("eth0", "10.199.1.1", 1500), ipaddress.IPv4Network("10.42.1.0/24"))
        self.assertEqual(device.mtu, 1450)
        self.assertEqual(
            device_commands(device, "0a:11:22:33:44:55"),
            [
                "link add flannel.1 address 0a:11:22:33:44:55 type vxlan id 1 local 10.199.1.1"
                " dev eth0 dstport 8472 nolearning",
                "link set dev flannel.1 mtu 1450 up",
                "addr add 10.42.1.0/32 dev flannel.1",
            ],
        )
        self.assertNotIn("address", device_commands(device, None)[0])

    def test_an_existing_device_is_kept_only_if_it_is_the_same(self) -> None:
        device = Device(Link("eth0", "10.199.1.1", 1500), ipaddress.IPv4Network("10.42.1.0/24"))
        found: dict[str, Any] = {
            "ifname": "flannel.1",
            "flags": ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"],
            "mtu": 1450,
            "address": "0a:11:22:33:44:55",
            "linkinfo": {
                "info_kind": "vxlan",
                "info_data": {
                    "id": 1,
                    "local": "10.199.1.1",
                    "link": "eth0",
                    "port": 8472,
                    "learning": False,
                },
            },
            "addr_info": [
                {"family": "inet", "local": "10.42.1.0", "prefixlen": 32},
                {"family": "inet6", "local": "fe80::811:22ff:fe33:4455", "prefixlen": 64},
            ],
        }
        self.assertTrue(device.matches(found))
        for change in (
            lambda d: d["linkinfo"]["info_data"].update(local="10.199.1.9"),
            lambda d: d["linkinfo"]["info_data"].update(learning=True),
            lambda d: d["linkinfo"]["info_data"].update(id=2),
            lambda d: d.update(mtu=1500),
            lambda d: d["addr_info"].__setitem__(
                0, {"family": "inet", "local": "10.42.9.0", "prefixlen": 32}
            ),
            lambda d: d.update(flags=["BROADCAST"]),
        ):
            other = json.loads(json.dumps(found))
            change(other)
            self.assertFalse(device.matches(other), other)

    def test_what_flannel_1_holds_already_reads_back_as_the_same_entries(self) -> None:
        lease = lease_of(node("m1"))
        assert lease is not None
        found = vxlan_found(
            [{"dst": "10.42.2.0/24", "gateway": "10.42.2.0", "flags": ["onlink"]}],
            [
                {"dst": "10.42.2.0", "lladdr": MAC2.upper(), "state": ["PERMANENT"]},
                {"dst": "10.42.7.0", "lladdr": "0a:00:00:00:00:07", "state": ["STALE"]},
            ],
            [{"mac": MAC2, "dst": "10.199.1.2", "flags": ["self"], "state": "permanent"}],
        )
        self.assertEqual(sorted(found, key=repr), sorted(vxlan_entries(lease), key=repr))
        self.assertEqual(changes(found, vxlan_entries(lease)), ([], []), "nothing to redo")

    def test_the_mac_of_before_is_kept(self) -> None:
        self.assertEqual(
            previous_mac({"VNI": 1, "VtepMAC": "0A:11:22:33:44:55"}), "0a:11:22:33:44:55"
        )
        self.assertIsNone(previous_mac(None))
        self.assertIsNone(previous_mac({"VNI": 1}))


class HostGWTests(SynchronousTestCase):
    def test_a_plain_route_through_the_nodes_ip(self) -> None:
        lease = lease_of(node("m1", backend="host-gw", data=None))
        assert lease is not None
        self.assertEqual(
            hostgw_entries(lease, "eth0"),
            (
                Entry(
                    "ip",
                    "route replace 10.42.2.0/24 via 10.199.1.2 dev eth0",
                    "route del 10.42.2.0/24 via 10.199.1.2 dev eth0",
                ),
            ),
        )

    def test_the_routes_into_the_cluster_already_there(self) -> None:
        routes = [
            {"dst": "10.199.1.0/24", "protocol": "kernel", "scope": "link"},
            {"dst": "10.42.2.0/24", "gateway": "10.199.1.2"},
            {"dst": "10.42.0.0/16", "gateway": "10.199.1.2"},
            {"dst": "default", "gateway": "10.199.1.2"},
        ]
        lease = lease_of(node("m1", backend="host-gw", data=None))
        assert lease is not None
        self.assertEqual(
            hostgw_found(routes, "eth0", ipaddress.IPv4Network("10.42.0.0/16")),
            list(hostgw_entries(lease, "eth0")),
        )


class ChangesTests(SynchronousTestCase):
    def leases(self, *nodes: dict[str, Any]) -> list[Entry]:
        found: list[Entry] = []
        for each in nodes:
            lease = lease_of(each)
            assert lease is not None
            found.extend(vxlan_entries(lease))
        return found

    def test_a_node_joining_adds_its_entries_only(self) -> None:
        before = self.leases(node("m1"))
        after = self.leases(
            node("m1"),
            node(
                "m2",
                cidr="10.42.3.0/24",
                public_ip="10.199.2.2",
                data={"VNI": 1, "VtepMAC": "0a:00:00:00:00:03"},
            ),
        )
        removals, additions = changes(before, after)
        self.assertEqual(removals, [])
        self.assertEqual(additions, after[3:])

    def test_a_node_leaving_takes_its_entries_route_first(self) -> None:
        before = self.leases(node("m1"))
        removals, additions = changes(before, [])
        self.assertEqual(additions, [])
        self.assertEqual(
            [entry.remove for entry in removals],
            [
                "route del 10.42.2.0/24 via 10.42.2.0 dev flannel.1",
                f"fdb del {MAC2} dev flannel.1 dst 10.199.1.2 self",
                "neigh del 10.42.2.0 dev flannel.1",
            ],
        )

    def test_a_new_vtep_mac_replaces_the_old_fdb_entry(self) -> None:
        before = self.leases(node("m1"))
        after = self.leases(node("m1", data={"VNI": 1, "VtepMAC": "0a:00:00:00:00:99"}))
        removals, additions = changes(before, after)
        self.assertEqual([e.tool for e in removals], ["bridge", "ip"])
        self.assertIn("0a:00:00:00:00:02", removals[0].remove)
        self.assertEqual([e.tool for e in additions], ["ip", "bridge"])
        self.assertIn("0a:00:00:00:00:99", additions[1].apply)

    def test_a_resync_applies_everything_again(self) -> None:
        entries = self.leases(node("m1"))
        self.assertEqual(changes(entries, entries), ([], []))
        self.assertEqual(changes(entries, entries, everything=True), ([], entries))


class LocalTests(SynchronousTestCase):
    def test_own_annotations_and_the_patch_that_gives_them(self) -> None:
        wanted = own_annotations("vxlan", {"VNI": 1, "VtepMAC": MAC2}, "10.199.1.2")
        self.assertEqual(
            wanted,
            {
                "flannel.alpha.coreos.com/backend-data": '{"VNI":1,"VtepMAC":"0a:00:00:00:00:02"}',
                "flannel.alpha.coreos.com/backend-type": "vxlan",
                "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                "flannel.alpha.coreos.com/public-ip": "10.199.1.2",
            },
        )
        self.assertEqual(
            own_annotations("host-gw", None, "10.199.1.2")["flannel.alpha.coreos.com/backend-data"],
            "null",
        )
        self.assertIsNone(annotation_patch(node("m1"), wanted), "already there: no write")
        moved = own_annotations("vxlan", {"VNI": 1, "VtepMAC": MAC2}, "10.199.1.9")
        self.assertEqual(
            annotation_patch(node("m1"), moved),
            {"metadata": {"annotations": {"flannel.alpha.coreos.com/public-ip": "10.199.1.9"}}},
        )
        self.assertEqual(
            annotation_patch({"metadata": {"name": "m1"}}, wanted),
            {"metadata": {"annotations": wanted}},
        )

    def test_masquerade_and_forward_rules_as_flannel_writes_them(self) -> None:
        masq = '-m comment --comment "flanneld masq"'
        forward = '-m comment --comment "flanneld forward"'
        cluster, pods = "10.42.0.0/16", "10.42.1.0/24"
        self.assertEqual(
            rules(cluster, pods).splitlines(),
            [
                "*nat",
                ":FLANNEL-POSTRTG - [0:0]",
                f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {masq} -j RETURN",
                f"-A FLANNEL-POSTRTG -s {pods} -d {cluster} {masq} -j RETURN",
                f"-A FLANNEL-POSTRTG -s {cluster} -d {pods} {masq} -j RETURN",
                f"-A FLANNEL-POSTRTG ! -s {cluster} -d {pods} {masq} -j RETURN",
                f"-A FLANNEL-POSTRTG -s {cluster} ! -d 224.0.0.0/4 {masq}"
                " -j MASQUERADE --random-fully",
                f"-A FLANNEL-POSTRTG ! -s {cluster} -d {cluster} {masq}"
                " -j MASQUERADE --random-fully",
                "COMMIT",
                "*filter",
                ":FLANNEL-FWD - [0:0]",
                f"-A FLANNEL-FWD -s {cluster} {forward} -j ACCEPT",
                f"-A FLANNEL-FWD -d {cluster} {forward} -j ACCEPT",
                "COMMIT",
            ],
        )
        self.assertNotIn(
            "--random-fully", rules("10.42.0.0/16", "10.42.1.0/24", random_fully=False)
        )

    def test_subnet_env_and_the_mtu_read_back(self) -> None:
        text = subnet_env("10.42.0.0/16", ipaddress.IPv4Network("10.42.1.0/24"), 1450)
        self.assertEqual(
            text,
            "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.1.1/24\n"
            "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        path = Path(self.mktemp())
        path.write_text(text)
        self.assertEqual(read_subnet_mtu(path), 1450)
        self.assertIsNone(read_subnet_mtu(path.with_name("missing")))

    def test_the_interface_of_the_node_ip_or_the_one_named(self) -> None:
        links = [
            {"ifname": "lo", "mtu": 65536, "addr_info": [{"family": "inet", "local": "127.0.0.1"}]},
            {
                "ifname": "eth0",
                "mtu": 9000,
                "addr_info": [
                    {"family": "inet", "local": "10.199.1.1"},
                    {"family": "inet", "local": "10.199.9.1"},
                ],
            },
            {
                "ifname": "eth1",
                "mtu": 1500,
                "addr_info": [{"family": "inet", "local": "10.200.0.1"}],
            },
        ]
        self.assertEqual(find_link(links, "10.199.9.1"), Link("eth0", "10.199.9.1", 9000))
        self.assertEqual(find_link(links, "10.199.1.1", "eth1"), Link("eth1", "10.200.0.1", 1500))
        with self.assertRaises(ValueError) as raised:
            find_link(links, "10.1.1.1")
        self.assertEqual(
            str(raised.exception), "failed to find interface with specified node ip 10.1.1.1"
        )
        with self.assertRaises(ValueError) as raised:
            find_link(links, "10.199.1.1", "eth7")
        self.assertEqual(str(raised.exception), "error looking up interface eth7: Link not found")


class ControllerTests(SynchronousTestCase):
    """
    The controller with the API in memory and every command answered by the
    test (no kernel): what it asks of ``ip`` and iptables as Nodes come and go.
    """

    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.client = FakeKubeClient(self.reactor)
        self.subnet_file = Path(self.mktemp()) / "subnet.env"
        self.answered = 0
        self.commands: list[tuple[tuple[str, ...], str]] = []
        own = {"metadata": {"name": "m0"}, "spec": {"podCIDR": "10.42.0.0/24"}}
        self.client.put_object("/api/v1/nodes/m0", own)
        self.client.put_object("/api/v1/nodes/m1", node("m1", "10.42.1.0/24", backend="host-gw"))
        self.controller = FlannelController(
            self.reactor,
            self.client,
            "m0",
            HostGWBackend(self.reactor),
            "10.42.0.0/16",
            "10.199.1.1",
            iptables=IPTables(self.reactor),
            subnet_file=self.subnet_file,
        )
        self.controller.startService()
        self.addCleanup(self.controller.stopService)

    def answer(self) -> list[tuple[tuple[str, ...], str]]:
        """Answer every command spawned since the last time, as a kernel would; them."""
        start = len(self.commands)
        while self.answered < len(self.reactor.processes):
            process = self.reactor.processes[self.answered]
            self.answered += 1
            self.commands.append((process.args, process.stdin.decode()))
            if process.args[:4] == ("ip", "-j", "-4", "addr"):
                process.output(json.dumps([LINK]).encode())
            if process.args == ("ip", "-j", "route", "show", "dev", "eth0"):
                process.output(json.dumps(ROUTES).encode())
            # iptables -C: the jump is not there yet.
            process.exit(1 if "-C" in process.args else 0)
            self.reactor.advance(0)
        return self.commands[start:]

    def test_own_node_set_up_then_routes_following_nodes(self) -> None:
        commands = self.answer()
        argv = [" ".join(args) for args, _ in commands]
        self.assertEqual(argv[0], "ip -j -4 addr show")
        self.assertEqual(argv[1], "iptables-restore -w 5 --noflush")
        self.assertEqual(commands[1][1], rules("10.42.0.0/16", "10.42.0.0/24"))
        self.assertIn(
            "iptables -w 5 -t nat -A POSTROUTING -m comment --comment flanneld masq"
            " -j FLANNEL-POSTRTG",
            argv,
        )
        self.assertIn(
            "iptables -w 5 -t filter -A FORWARD -m comment --comment flanneld forward"
            " -j FLANNEL-FWD",
            argv,
        )
        self.assertEqual(
            self.subnet_file.read_text(),
            "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\n"
            "FLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n",
        )
        annotations = self.client.objects["/api/v1/nodes/m0"]["metadata"]["annotations"]
        self.assertEqual(
            annotations, own_annotations("host-gw", None, "10.199.1.1"), "the node's own"
        )
        self.assertEqual(
            commands[-2:],
            [
                (("ip", "-j", "route", "show", "dev", "eth0"), ""),
                # What a run before left, for a node deleted since; m1's route stays as it is.
                (
                    ("ip", "-force", "-batch", "-"),
                    "route del 10.42.9.0/24 via 10.199.9.2 dev eth0\n",
                ),
            ],
        )

        # A node joins: only its route is added.
        self.client.put_object(
            "/api/v1/nodes/m2", node("m2", "10.42.2.0/24", "10.199.2.2", "host-gw")
        )
        self.assertEqual(
            self.answer(),
            [(("ip", "-batch", "-"), "route replace 10.42.2.0/24 via 10.199.2.2 dev eth0\n")],
        )
        # A node of another backend is no route.
        self.client.put_object("/api/v1/nodes/m3", node("m3", "10.42.3.0/24", "10.199.3.2"))
        self.assertEqual(self.answer(), [])
        # A node deleted takes its route with it.
        self.client.remove_object("/api/v1/nodes/m1")
        self.assertEqual(
            self.answer(),
            [(("ip", "-force", "-batch", "-"), "route del 10.42.1.0/24 via 10.199.1.2 dev eth0\n")],
        )
        # The resync re-applies every route and the rules, and patches nothing.
        patches = self.client.count("PATCH", "/api/v1/nodes/m0")
        self.reactor.advance(RESYNC_INTERVAL)
        argv = [" ".join(args) for args, _ in self.answer()]
        self.assertIn("iptables-restore -w 5 --noflush", argv)
        self.assertEqual(
            self.commands[-1][1], "route replace 10.42.2.0/24 via 10.199.2.2 dev eth0\n"
        )
        self.assertEqual(self.client.count("PATCH", "/api/v1/nodes/m0"), patches)
