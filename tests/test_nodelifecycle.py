"""
The node lifecycle controller on the real object store over the in-memory
datastore, on a Clock: silent nodes turn Unknown and unreachable the moment
their grace period runs out, and come back when they report.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.controllers.nodelifecycle import NodeLifecycleController
from k3stw.kubelet.node import build_lease, build_node, node_status, renew_lease
from k3stw.machinery.nodes import LEASE_NAMESPACE
from k3stw.machinery.objects import find_condition
from k3stw.machinery.times import micro_time, rfc3339
from tests.support.apiserver import START, MemoryServer
from tests.test_kubelet_node import FACTS, as_model, config

UNREACHABLE_TAINTS = [
    ("node.kubernetes.io/unreachable", "NoSchedule"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
]
NOT_READY_TAINTS = [
    ("node.kubernetes.io/not-ready", "NoSchedule"),
    ("node.kubernetes.io/not-ready", "NoExecute"),
]


def taints_of(node: dict[str, Any]) -> list[tuple[str, str]]:
    return [(t["key"], t["effect"]) for t in node.get("spec", {}).get("taints") or []]


class NodeLifecycleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.store = self.server.store
        self.clock = self.server.clock
        self.nodes = self.server.resource("", "nodes")
        self.leases = self.server.resource("coordination.k8s.io", "leases")
        self.controller = NodeLifecycleController(
            self.server.informers, self.store, grace_period=40.0
        )
        self.server.start(self.controller)

    # What a kubelet does

    def register(self, name: str, lease: bool = True) -> None:
        settings = config(node_name=name, taints=())
        now = self.clock.seconds()
        node = self.server.run(
            self.store.create(self.nodes, None, build_node(settings, FACTS, rfc3339(now)))
        )
        if lease:
            uid = node["metadata"]["uid"]
            self.server.run(
                self.store.create(
                    self.leases, LEASE_NAMESPACE, build_lease(name, uid, micro_time(now), 40)
                )
            )

    def renew(self, name: str) -> None:
        now = micro_time(self.clock.seconds())
        lease = self.server.get("coordination.k8s.io", "leases", name, LEASE_NAMESPACE)
        node = self.node(name)
        renewed = renew_lease(lease, name, node["metadata"]["uid"], now, 40)
        self.server.run(self.store.update(self.leases, LEASE_NAMESPACE, name, renewed))

    def post_status(self, name: str, ready: str = "True") -> None:
        now = rfc3339(self.clock.seconds())
        node = self.node(name)
        node["status"] = node_status(config(node_name=name), FACTS, node["status"], now)
        condition = find_condition(node, "Ready")
        assert condition is not None
        condition["status"] = ready
        self.server.run(self.store.update(self.nodes, None, name, node, subresource="status"))

    def node(self, name: str) -> dict[str, Any]:
        return self.server.get("", "nodes", name)

    def ready(self, name: str) -> str:
        ready = find_condition(self.node(name), "Ready")
        assert ready is not None
        return str(ready["status"])

    def at(self, seconds: float) -> None:
        """Let the clock reach START + C{seconds}."""
        self.clock.advance(START + seconds - self.clock.seconds())

    # Tests

    def test_a_reporting_node_stays_ready(self) -> None:
        self.register("n1")
        for t in (10, 20, 30, 40, 50, 60):
            self.at(t)
            self.renew("n1")
        self.at(61)
        self.assertEqual(self.ready("n1"), "True")
        self.assertEqual(taints_of(self.node("n1")), [])

    def test_a_silent_node_turns_unknown_and_unreachable(self) -> None:
        self.register("n1")
        self.at(40)
        self.assertEqual(self.ready("n1"), "True")
        self.at(40.5)
        node = self.node("n1")
        for condition in node["status"]["conditions"]:
            self.assertEqual(condition["status"], "Unknown")
            self.assertEqual(condition["reason"], "NodeStatusUnknown")
            self.assertEqual(condition["message"], "Kubelet stopped posting node status.")
            self.assertEqual(condition["lastTransitionTime"], rfc3339(START + 40))
            self.assertEqual(condition["lastHeartbeatTime"], rfc3339(START))
        self.assertEqual(taints_of(node), UNREACHABLE_TAINTS)
        model = as_model(node, "V1Node")
        self.assertIsNotNone(model.spec.taints[1].time_added)
        version = node["metadata"]["resourceVersion"]
        self.at(100)
        self.assertEqual(self.node("n1")["metadata"]["resourceVersion"], version)

    def test_ready_again_when_the_kubelet_returns(self) -> None:
        self.register("n1")
        self.at(60)
        self.assertEqual(taints_of(self.node("n1")), UNREACHABLE_TAINTS)
        self.at(61)
        self.renew("n1")
        self.assertEqual(taints_of(self.node("n1")), UNREACHABLE_TAINTS)
        self.post_status("n1")
        ready = find_condition(self.node("n1"), "Ready")
        assert ready is not None
        self.assertEqual(ready["status"], "True")
        self.assertEqual(ready["lastTransitionTime"], rfc3339(START + 61))
        self.assertEqual(taints_of(self.node("n1")), [])

    def test_other_taints_are_kept(self) -> None:
        self.register("n1")
        node = self.node("n1")
        node["spec"]["taints"] = [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]
        self.server.run(self.store.update(self.nodes, None, "n1", node))
        self.at(45)
        self.assertEqual(
            taints_of(self.node("n1")), [("dedicated", "NoSchedule"), *UNREACHABLE_TAINTS]
        )
        self.renew("n1")
        self.post_status("n1")
        self.assertEqual(taints_of(self.node("n1")), [("dedicated", "NoSchedule")])

    def test_lease_renewals_alone_keep_a_node_ready(self) -> None:
        self.register("n1")
        self.at(30)
        self.renew("n1")
        self.at(60)
        self.assertEqual(self.ready("n1"), "True")
        self.at(71)
        self.assertEqual(self.ready("n1"), "Unknown")

    def test_without_a_lease_the_ready_heartbeat_counts(self) -> None:
        self.register("n1", lease=False)
        self.at(30)
        self.post_status("n1")
        self.at(60)
        self.assertEqual(taints_of(self.node("n1")), [])
        self.at(71)
        self.assertEqual(taints_of(self.node("n1")), UNREACHABLE_TAINTS)

    def test_only_the_silent_node_is_marked(self) -> None:
        self.register("n1")
        self.register("n2")
        for t in (10, 20, 30, 40, 50):
            self.at(t)
            self.renew("n2")
        self.assertEqual(taints_of(self.node("n1")), UNREACHABLE_TAINTS)
        self.assertEqual(taints_of(self.node("n2")), [])

    def test_nothing_polls(self) -> None:
        """A node that reports is looked at only as its Lease changes and its grace runs out."""
        self.register("n1")
        lists = []
        for t in range(10, 310, 10):
            self.at(t)
            self.renew("n1")
            lists.append(len(self.clock.getDelayedCalls()))
        # The node's grace-period timer is all that waits: no periodic pass.
        self.assertEqual(max(lists), 1)
        self.server.informers.stopService()
        self.controller.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_node_not_ready_gets_the_not_ready_taints(self) -> None:
        self.register("n1")
        self.at(45)
        self.assertEqual(taints_of(self.node("n1")), UNREACHABLE_TAINTS)
        self.renew("n1")
        self.post_status("n1", ready="False")
        node = self.node("n1")
        self.assertEqual(taints_of(node), NOT_READY_TAINTS)
        self.assertIsNotNone(as_model(node, "V1Node").spec.taints[1].time_added)
        self.post_status("n1")
        self.assertEqual(taints_of(self.node("n1")), [])

    def test_a_new_term_gives_every_node_a_full_grace_period(self) -> None:
        """Leadership lost and won again: nothing from the last term marks a node early."""
        self.register("n1")
        self.at(30)
        self.controller.stopService()
        self.at(35)
        self.controller.startService()
        self.at(74)
        self.assertEqual(self.ready("n1"), "True")
        self.at(75.5)
        self.assertEqual(taints_of(self.node("n1")), UNREACHABLE_TAINTS)
