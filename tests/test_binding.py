"""pods/<name>/binding: a scheduler places a pod on a node, once."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.binding import bind
from tests.support.apiserver import MemoryServer


class BindingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.server.create(
            "",
            "pods",
            {"metadata": {"name": "web"}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
            "default",
        )

    def binding(self, node: str) -> dict[str, object]:
        return {"metadata": {"name": "web"}, "target": {"kind": "Node", "name": node}}

    def test_the_pod_gets_its_node_and_is_scheduled(self) -> None:
        answer = self.server.run(bind(self.server.store, "default", "web", self.binding("n1")))
        self.assertEqual((answer["status"], answer["code"]), ("Success", 201))
        pod = self.server.get("", "pods", "web", "default")
        self.assertEqual(pod["spec"]["nodeName"], "n1")
        scheduled = [c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled"]
        self.assertEqual(scheduled[0]["status"], "True")

    def test_a_placed_pod_is_not_placed_again(self) -> None:
        self.server.run(bind(self.server.store, "default", "web", self.binding("n1")))
        error = self.server.fails(bind(self.server.store, "default", "web", self.binding("n2")))
        self.assertEqual(error.code, 409)
        self.assertIn('pod web is already assigned to node "n1"', error.message)
        self.assertEqual(self.server.get("", "pods", "web", "default")["spec"]["nodeName"], "n1")

    def test_a_binding_must_name_a_node(self) -> None:
        error = self.server.fails(
            bind(self.server.store, "default", "web", {"target": {"kind": "Pod", "name": "x"}})
        )
        self.assertEqual(error.code, 422)
        self.assertIn('target.kind: Invalid value: "Pod"', error.message)
        missing = self.server.fails(bind(self.server.store, "default", "web", {"target": {}}))
        self.assertIn("target.name: Required value", missing.message)
