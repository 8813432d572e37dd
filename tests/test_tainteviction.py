"""
The taint eviction controller on the in-memory server, on a Clock: pods on
nodes with NoExecute taints they do not tolerate are deleted at once, those
tolerating them for a while when that runs out, and none when the taint
goes first.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.controllers.tainteviction import TaintEvictionController, toleration_time
from k3stw.machinery.informer import each_change
from k3stw.machinery.objects import Object, find_condition
from tests.support.apiserver import MemoryServer

UNREACHABLE = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}
DEDICATED = {"key": "dedicated", "value": "db", "effect": "NoExecute"}


class TolerationTimeTests(SynchronousTestCase):
    """How long tolerations allow, as kube's getMinTolerationTime reckons it."""

    def test_an_untolerated_taint_allows_nothing(self) -> None:
        self.assertEqual(toleration_time([DEDICATED], [{"key": "other", "operator": "Exists"}]), 0)

    def test_a_toleration_of_another_effect_does_not_count(self) -> None:
        only_scheduling = {"key": "dedicated", "value": "db", "effect": "NoSchedule"}
        self.assertEqual(toleration_time([DEDICATED], [only_scheduling]), 0)

    def test_the_shortest_used_toleration_wins(self) -> None:
        tolerations = [
            {"key": "dedicated", "operator": "Exists", "tolerationSeconds": 100},
            {**UNREACHABLE, "operator": "Exists", "tolerationSeconds": 50},
        ]
        self.assertEqual(toleration_time([DEDICATED, UNREACHABLE], tolerations), 50)

    def test_tolerations_without_seconds_allow_for_ever(self) -> None:
        self.assertIsNone(toleration_time([DEDICATED], [{"operator": "Exists"}]))

    def test_negative_seconds_allow_nothing(self) -> None:
        toleration = {"operator": "Exists", "tolerationSeconds": -5}
        self.assertEqual(toleration_time([DEDICATED], [toleration]), 0)


class TaintEvictionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.store = self.server.store
        self.clock = self.server.clock
        self.controller = TaintEvictionController(self.server.informers, self.store)
        self.server.start(self.controller)
        self.server.create("", "nodes", {"metadata": {"name": "n1"}})
        # Every state of every pod, to see the last one before it went.
        self.seen: list[Object] = []
        pods = self.server.informers.for_resource(self.server.resource("", "pods"))
        pods.add_handler(each_change(self.seen.append))

    def pod(self, name: str, **spec: Any) -> None:
        body = {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}], **spec}
        self.server.create("", "pods", {"metadata": {"name": name}, "spec": body}, "default")

    def taint(self, *taints: Object) -> None:
        node = self.server.get("", "nodes", "n1")
        node["spec"] = {"taints": list(taints)} if taints else {}
        self.server.run(self.store.update(self.server.resource("", "nodes"), None, "n1", node))

    def exists(self, name: str) -> bool:
        """
        Whether the pod is there and not being deleted (the controller's
        deletion leaves a bound pod Terminating until its kubelet confirms).
        """
        if not self.server.exists("", "pods", name, "default"):
            return False
        pod = self.server.get("", "pods", name, "default")
        return not pod["metadata"].get("deletionTimestamp")

    def events(self) -> list[tuple[str, str, str]]:
        listed = self.server.run(self.store.list(self.server.resource("", "events"), "default"))
        return [
            (e["reason"], e["message"], e["source"]["component"])
            for e in listed.items
            if e["involvedObject"]["kind"] == "Pod"
        ]

    def test_a_pod_that_does_not_tolerate_the_taint_goes_at_once(self) -> None:
        self.pod("web")
        self.taint(DEDICATED)
        self.assertFalse(self.exists("web"))
        last = [p for p in self.seen if p["metadata"]["name"] == "web"][-1]
        condition = find_condition(last, "DisruptionTarget")
        assert condition is not None
        self.assertEqual(
            (condition["status"], condition["reason"], condition["message"]),
            ("True", "DeletionByTaintManager", "Taint manager: deleting due to NoExecute taint"),
        )
        self.assertEqual(
            self.events(),
            [
                (
                    "TaintManagerEviction",
                    "Marking for deletion Pod default/web",
                    "taint-eviction-controller",
                )
            ],
        )

    def test_a_pod_bound_to_a_tainted_node_goes(self) -> None:
        self.taint(DEDICATED)
        self.pod("late")
        self.assertFalse(self.exists("late"))

    def test_the_default_toleration_keeps_a_pod_five_minutes(self) -> None:
        # Admission gave the pod not-ready and unreachable tolerations of 300 seconds.
        self.pod("web")
        self.clock.advance(10)
        self.taint(UNREACHABLE)
        self.clock.advance(299)
        self.assertTrue(self.exists("web"))
        self.clock.advance(1.1)
        self.assertFalse(self.exists("web"))

    def test_the_deletion_is_cancelled_when_the_taint_goes(self) -> None:
        self.pod("web")
        self.taint(UNREACHABLE)
        self.clock.advance(200)
        self.taint()
        self.clock.advance(1000)
        self.assertTrue(self.exists("web"))
        self.assertEqual(
            [event[:2] for event in self.events()],
            [("TaintManagerEviction", "Cancelling deletion of Pod default/web")],
        )

    def test_a_pod_tolerating_for_ever_stays(self) -> None:
        self.pod("db", tolerations=[{"key": "dedicated", "operator": "Equal", "value": "db"}])
        self.taint(DEDICATED)
        self.clock.advance(10_000)
        self.assertTrue(self.exists("db"))
        self.assertEqual(self.events(), [])

    def test_a_second_taint_with_a_shorter_toleration_brings_the_time_forward(self) -> None:
        self.pod("db", tolerations=[{**DEDICATED, "operator": "Equal", "tolerationSeconds": 60}])
        self.taint(UNREACHABLE)
        self.clock.advance(30)
        self.taint(UNREACHABLE, DEDICATED)
        self.clock.advance(29)
        self.assertTrue(self.exists("db"))
        self.clock.advance(1.1)
        self.assertFalse(self.exists("db"))

    def test_other_nodes_pods_are_left_alone(self) -> None:
        self.server.create("", "nodes", {"metadata": {"name": "n2"}})
        self.pod("elsewhere", nodeName="n2")
        self.pod("unbound", nodeName="")
        self.taint(DEDICATED)
        self.assertTrue(self.exists("elsewhere"))
        self.assertTrue(self.exists("unbound"))
