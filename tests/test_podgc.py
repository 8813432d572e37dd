"""
The pod garbage collector on the in-memory server, on a Clock: pods of
nodes that are gone, unscheduled pods being deleted, and terminated pods
over the threshold.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.controllers.podgc import PodGCController
from k3stw.machinery.informer import each_change
from k3stw.machinery.objects import Object, find_condition
from tests.support.apiserver import MemoryServer


class PodGCTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.store = self.server.store
        self.clock = self.server.clock
        self.pods = self.server.resource("", "pods")
        self.server.start(PodGCController(self.server.informers, self.store, threshold=2))

    def node(self, name: str) -> None:
        self.server.create("", "nodes", {"metadata": {"name": name}})

    def pod(self, name: str, phase: str = "Running", **spec: Any) -> Object:
        self.server.create(
            "",
            "pods",
            {
                "metadata": {"name": name},
                "spec": {"containers": [{"name": "c", "image": "i"}], **spec},
            },
            "default",
        )
        pod = self.server.get("", "pods", name, "default")
        pod["status"] = {"phase": phase}
        return self.server.run(
            self.store.update(self.pods, "default", name, pod, subresource="status")
        )

    def exists(self, name: str) -> bool:
        return self.server.exists("", "pods", name, "default")

    def test_pods_of_a_deleted_node_go_after_the_quarantine(self) -> None:
        """A pod whose node is gone is marked Failed, DisruptionTarget, and deleted after 40s."""
        self.node("n1")
        self.pod("a", nodeName="n1")
        self.pod("b", nodeName="n2")  # never existed
        self.server.delete("", "nodes", "n1")
        self.clock.advance(39)
        self.assertTrue(self.exists("a"))
        # Watch the pod's last state on its way out.
        seen: list[Object] = []
        self.server.informers.for_resource(self.pods).add_handler(each_change(seen.append))
        seen.clear()
        self.clock.advance(2)
        self.assertFalse(self.exists("a"))
        self.assertFalse(self.exists("b"))
        failed = [p for p in seen if p["metadata"]["name"] == "a"][-1]
        self.assertEqual(failed["status"]["phase"], "Failed")
        condition = find_condition(failed, "DisruptionTarget")
        assert condition is not None
        self.assertEqual(
            (condition["status"], condition["reason"], condition["message"]),
            ("True", "DeletionByPodGC", "PodGC: node no longer exists"),
        )

    def test_node_back_within_quarantine_keeps_pods(self) -> None:
        self.pod("a", nodeName="n1")
        self.clock.advance(20)
        self.node("n1")
        self.clock.advance(30)
        self.assertTrue(self.exists("a"))

    def test_terminated_over_threshold_oldest_first(self) -> None:
        self.node("n1")
        self.pod("old", "Succeeded", nodeName="n1")
        self.clock.advance(1)
        self.pod("mid", "Failed", nodeName="n1")
        self.clock.advance(1)
        self.pod("running", nodeName="n1")
        self.assertTrue(self.exists("old"))
        self.pod("new", "Succeeded", nodeName="n1")
        self.assertEqual(
            [self.exists(n) for n in ("old", "mid", "new", "running")], [False, True, True, True]
        )

    def test_a_terminating_pod_of_a_live_node_is_left_to_its_kubelet(self) -> None:
        """A bound pod deleted gracefully stays Terminating: the collector does not force it."""
        self.node("n1")
        self.pod("a", nodeName="n1")
        _, gone = self.server.delete("", "pods", "a", "default")
        self.assertFalse(gone)
        self.clock.advance(3600)
        self.assertTrue(self.exists("a"))

    def test_a_terminating_pod_of_a_deleted_node_is_forced_out(self) -> None:
        self.node("n1")
        self.pod("a", nodeName="n1")
        self.server.delete("", "pods", "a", "default")
        self.server.delete("", "nodes", "n1")
        self.clock.advance(41)
        self.assertFalse(self.exists("a"))

    def test_a_terminating_pod_of_an_out_of_service_node_is_failed_and_deleted(self) -> None:
        """kube's gcTerminating: the node is not Ready and tainted out-of-service."""
        self.node("n1")
        self.pod("a", nodeName="n1")
        self.pod("b", nodeName="n1")  # not being deleted: left alone
        self.server.delete("", "pods", "a", "default")
        seen: list[Object] = []
        self.server.informers.for_resource(self.pods).add_handler(each_change(seen.append))
        node = self.server.get("", "nodes", "n1")
        node.setdefault("spec", {})["taints"] = [
            {
                "key": "node.kubernetes.io/out-of-service",
                "value": "nodeshutdown",
                "effect": "NoExecute",
            }
        ]
        self.server.run(self.store.update(self.server.resource("", "nodes"), None, "n1", node))
        self.clock.advance(1)
        self.assertFalse(self.exists("a"))
        self.assertTrue(self.exists("b"))
        last = [p for p in seen if p["metadata"]["name"] == "a"][-1]
        self.assertEqual(last["status"]["phase"], "Failed")

    def test_a_ready_node_with_the_out_of_service_taint_keeps_its_terminating_pods(self) -> None:
        self.server.create(
            "",
            "nodes",
            {
                "metadata": {"name": "n1"},
                "spec": {
                    "taints": [{"key": "node.kubernetes.io/out-of-service", "effect": "NoExecute"}]
                },
            },
        )
        node = self.server.get("", "nodes", "n1")
        node["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
        nodes = self.server.resource("", "nodes")
        self.server.run(self.store.update(nodes, None, "n1", node, subresource="status"))
        self.pod("a", nodeName="n1")
        self.server.delete("", "pods", "a", "default")
        self.clock.advance(60)
        self.assertTrue(self.exists("a"))
