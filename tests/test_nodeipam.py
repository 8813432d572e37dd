"""
Node IPAM on the in-memory server: each Node gets its own pod subnet from
the cluster CIDR, the subnets Nodes already hold are never handed out again,
a deleted Node's subnet is free again, and a full range is the Node's
``CIDRNotAvailable`` event.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.controllers.events import EventRecorder
from k3stw.controllers.nodeipam import (
    COMPONENT,
    CIDRSet,
    NodeIPAMController,
    RangeFull,
    cidr_sets,
)
from tests.support.apiserver import MemoryServer


class NodeIPAMTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)

    def controller(
        self, cluster_cidr: str = "10.42.0.0/16", mask: int | None = None
    ) -> NodeIPAMController:
        store = self.server.store
        events = EventRecorder(store, store.clock, COMPONENT, "server-1")
        controller = NodeIPAMController(
            self.server.informers, store, cidr_sets(cluster_cidr, mask), events
        )
        self.server.start(controller)
        return controller

    def add_node(self, name: str, pod_cidr: str | None = None) -> None:
        node: dict[str, Any] = {"metadata": {"name": name}}
        if pod_cidr is not None:
            node["spec"] = {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]}
        self.server.create("", "nodes", node)

    def spec(self, name: str) -> dict[str, Any]:
        spec: dict[str, Any] = self.server.get("", "nodes", name).get("spec") or {}
        return spec

    def test_each_node_gets_its_own_subnet(self) -> None:
        self.controller()
        for name in ("n1", "n2", "n3"):
            self.add_node(name)
        self.assertEqual(
            [self.spec(name)["podCIDRs"] for name in ("n1", "n2", "n3")],
            [["10.42.0.0/24"], ["10.42.1.0/24"], ["10.42.2.0/24"]],
        )
        self.assertEqual(self.spec("n2")["podCIDR"], "10.42.1.0/24")

    def test_subnets_held_at_start_are_kept(self) -> None:
        """Subnets existing Nodes hold (from before a restart) are never given to another."""
        self.add_node("old-1", "10.42.0.0/24")
        self.add_node("old-2", "10.42.1.0/24")
        self.add_node("new")
        self.controller()
        self.assertEqual(self.spec("new")["podCIDRs"], ["10.42.2.0/24"])
        self.assertEqual(self.spec("old-1")["podCIDRs"], ["10.42.0.0/24"])

    def test_full_range_is_an_event_and_a_deleted_node_frees_its_subnet(self) -> None:
        self.controller("10.42.0.0/23")
        self.add_node("n1")
        self.add_node("n2")
        self.add_node("n3")
        self.assertNotIn("podCIDR", self.spec("n3"))
        events = self.server.run(
            self.server.store.list(self.server.resource("", "events"), "default")
        ).items
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["reason"], "CIDRNotAvailable")
        self.assertEqual(events[0]["type"], "Normal")
        self.assertEqual(events[0]["message"], "Node n3 status is now: CIDRNotAvailable")
        self.assertEqual(events[0]["involvedObject"], {"kind": "Node", "name": "n3", "uid": "n3"})
        self.assertEqual(events[0]["source"]["component"], "cidrAllocator")
        self.server.delete("", "nodes", "n1")
        self.server.clock.advance(1)
        self.assertEqual(self.spec("n3")["podCIDRs"], ["10.42.0.0/24"])

    def test_dual_stack_gives_one_subnet_per_family(self) -> None:
        self.controller("10.42.0.0/16,fd00:42::/56")
        self.add_node("n1")
        self.assertEqual(self.spec("n1")["podCIDRs"], ["10.42.0.0/24", "fd00:42::/64"])
        self.assertEqual(self.spec("n1")["podCIDR"], "10.42.0.0/24")

    def test_mask_size(self) -> None:
        self.controller(mask=26)
        self.add_node("n1")
        self.add_node("n2")
        self.assertEqual(self.spec("n2")["podCIDRs"], ["10.42.0.64/26"])

    def test_nodes_added_while_stopped_get_subnets_when_it_starts_again(self) -> None:
        """A controller that lost and won its lease again looks at every Node still without one."""
        controller = self.controller()
        self.add_node("n1")
        stopped = controller.stopService()
        assert stopped is not None
        self.successResultOf(stopped)
        self.add_node("n2")
        self.assertNotIn("podCIDR", self.spec("n2"))
        controller.startService()
        self.add_node("n3")
        self.assertEqual(self.spec("n2")["podCIDRs"], ["10.42.1.0/24"])
        self.assertEqual(self.spec("n3")["podCIDRs"], ["10.42.2.0/24"])


class CIDRSetTests(SynchronousTestCase):
    def test_allocation_goes_round_from_the_last_handed_out(self) -> None:
        """As kube's cidrset: a freed subnet is handed out again only once the others are used."""
        cidrs = CIDRSet(ipaddress.ip_network("10.0.0.0/22"), 24)
        first, second = cidrs.allocate(), cidrs.allocate()
        cidrs.release(first)
        self.assertEqual(str(cidrs.allocate()), "10.0.2.0/24")
        self.assertEqual(str(cidrs.allocate()), "10.0.3.0/24")
        self.assertEqual(str(cidrs.allocate()), "10.0.0.0/24")
        self.assertRaises(RangeFull, cidrs.allocate)
        self.assertEqual(str(second), "10.0.1.0/24")

    def test_occupy_marks_every_subnet_covered(self) -> None:
        cidrs = CIDRSet(ipaddress.ip_network("10.0.0.0/22"), 24)
        cidrs.occupy(ipaddress.ip_network("10.0.0.0/23"))
        cidrs.occupy(ipaddress.ip_network("192.168.0.0/24"))
        self.assertEqual(cidrs.used, 2)
        self.assertEqual(str(cidrs.allocate()), "10.0.2.0/24")

    def test_mask_sizes_outside_the_range_are_refused(self) -> None:
        self.assertRaises(ValueError, cidr_sets, "10.42.0.0/16", 8)
        self.assertRaises(ValueError, cidr_sets, "10.42.0.0/8", 30)
