"""pods/<name>/eviction: a pod goes unless its PodDisruptionBudget forbids it."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.eviction import evict
from k3stw.machinery.objects import Object
from tests.support.apiserver import MemoryServer


class EvictionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.budgets = self.server.resource("policy", "poddisruptionbudgets")
        for name in ("web-1", "web-2", "other"):
            self.server.create(
                "",
                "pods",
                {
                    "metadata": {"name": name, "labels": {"app": name.split("-")[0]}},
                    "spec": {"containers": [{"name": "c", "image": "i"}]},
                    "status": {"phase": "Running"},
                },
                "default",
            )

    def evict(self, name: str) -> Object:
        return self.server.run(evict(self.server.store, self.budgets, "default", name, {}))

    def budget(self, status: Object) -> None:
        self.server.create(
            "policy",
            "poddisruptionbudgets",
            {
                "metadata": {"name": "web"},
                "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}},
                "status": status,
            },
            "default",
        )

    def refusal(self, name: str) -> str:
        error = self.server.fails(evict(self.server.store, self.budgets, "default", name, {}))
        self.assertEqual((error.code, error.reason), (429, "TooManyRequests"))
        self.assertEqual(
            error.message, "Cannot evict pod as it would violate the pod's disruption budget."
        )
        assert error.details is not None
        cause: str = error.details["causes"][0]["message"]
        return cause

    def test_a_pod_without_a_budget_is_deleted(self) -> None:
        self.assertEqual(self.evict("other")["status"], "Success")
        self.assertFalse(self.server.exists("", "pods", "other", "default"))

    def test_a_budget_the_controller_has_not_counted_refuses(self) -> None:
        self.budget({})
        self.assertIn("is still being processed by the server", self.refusal("web-1"))
        self.assertTrue(self.server.exists("", "pods", "web-1", "default"))

    def test_a_budget_allows_what_it_allows_then_refuses(self) -> None:
        self.budget(
            {
                "observedGeneration": 1,
                "disruptionsAllowed": 1,
                "desiredHealthy": 1,
                "currentHealthy": 2,
            }
        )
        self.evict("web-1")
        self.assertFalse(self.server.exists("", "pods", "web-1", "default"))
        status = self.server.get("policy", "poddisruptionbudgets", "web", "default")["status"]
        self.assertEqual(status["disruptionsAllowed"], 0)
        self.assertIn("web-1", status["disruptedPods"])
        self.assertIn(
            "The disruption budget web needs 1 healthy pods and has 2 currently",
            self.refusal("web-2"),
        )
        self.assertTrue(self.server.exists("", "pods", "web-2", "default"))
