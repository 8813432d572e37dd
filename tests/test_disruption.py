"""
The disruption controller on the in-memory server, on a Clock: budgets'
status follows their pods' readiness and their controllers' scale, and
agrees with what the eviction subresource spends.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.eviction import evict
from k3stw.controllers.disruption import DisruptionController
from k3stw.machinery.objects import Object, find_condition
from k3stw.machinery.times import rfc3339
from tests.support.apiserver import MemoryServer


class DisruptionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.store = self.server.store
        self.clock = self.server.clock
        self.budgets = self.server.resource("policy", "poddisruptionbudgets")
        self.server.start(
            DisruptionController(self.server.informers, self.store, self.server.registry)
        )

    def pod(self, name: str, ready: bool = True, owner: Object | None = None) -> None:
        metadata: dict[str, Any] = {"name": name, "labels": {"app": "web"}}
        if owner is not None:
            metadata["ownerReferences"] = [
                {
                    "apiVersion": owner["apiVersion"],
                    "kind": owner["kind"],
                    "name": owner["metadata"]["name"],
                    "uid": owner["metadata"]["uid"],
                    "controller": True,
                }
            ]
        self.server.create(
            "",
            "pods",
            {"metadata": metadata, "spec": {"containers": [{"name": "c", "image": "i"}]}},
            "default",
        )
        self.set_ready(name, ready)

    def set_ready(self, name: str, ready: bool) -> None:
        pod = self.server.get("", "pods", name, "default")
        pod["status"] = {
            "phase": "Running",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "lastTransitionTime": rfc3339(self.clock.seconds()),
                }
            ],
        }
        pods = self.server.resource("", "pods")
        self.server.run(self.store.update(pods, "default", name, pod, subresource="status"))

    def budget(self, **spec: Any) -> None:
        self.server.create(
            "policy",
            "poddisruptionbudgets",
            {
                "metadata": {"name": "web"},
                "spec": {"selector": {"matchLabels": {"app": "web"}}, **spec},
            },
            "default",
        )

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.server.get(
            "policy", "poddisruptionbudgets", "web", "default"
        )["status"]
        return status

    def counts(self) -> tuple[int, int, int, int]:
        status = self.status()
        return (
            status["currentHealthy"],
            status["desiredHealthy"],
            status["expectedPods"],
            status["disruptionsAllowed"],
        )

    def allowed_condition(self) -> tuple[str, str]:
        condition = find_condition({"status": self.status()}, "DisruptionAllowed")
        assert condition is not None
        return condition["status"], condition["reason"]

    def replica_set(self, replicas: int, deployment: Object | None = None) -> Object:
        template = {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
        }
        spec = {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": template,
        }
        if deployment is None:
            kind, plural, name = "Deployment", "deployments", "web"
            metadata: dict[str, Any] = {"name": name}
        else:
            kind, plural, name = "ReplicaSet", "replicasets", "web-1"
            metadata = {
                "name": name,
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": "web",
                        "uid": deployment["metadata"]["uid"],
                        "controller": True,
                    }
                ],
            }
        created = self.server.create(
            "apps", plural, {"metadata": metadata, "spec": spec}, "default"
        )
        created.setdefault("apiVersion", "apps/v1")
        created.setdefault("kind", kind)
        return created

    def test_min_available_count(self) -> None:
        """An integer minAvailable counts against the pods there are."""
        self.pod("a")
        self.pod("b")
        self.pod("c", ready=False)
        self.budget(minAvailable=1)
        self.assertEqual(self.counts(), (2, 1, 3, 1))
        self.assertEqual(self.status()["observedGeneration"], 1)
        self.assertEqual(self.allowed_condition(), ("True", "SufficientPods"))
        self.set_ready("b", False)
        self.assertEqual(self.counts(), (1, 1, 3, 0))
        self.assertEqual(self.allowed_condition(), ("False", "InsufficientPods"))

    def test_max_unavailable_against_deployment_scale(self) -> None:
        """maxUnavailable counts against the Deployment's replicas, not the pods there are."""
        deployment = self.replica_set(4)
        rs = self.replica_set(4, deployment)
        self.pod("a", owner=rs)
        self.pod("b", owner=rs)
        self.pod("c", owner=rs)
        self.budget(maxUnavailable="25%")
        self.assertEqual(self.counts(), (3, 3, 4, 0))
        self.pod("d", owner=rs)
        self.assertEqual(self.counts(), (4, 3, 4, 1))

    def test_min_available_percent(self) -> None:
        deployment = self.replica_set(3)
        rs = self.replica_set(3, deployment)
        for name in ("a", "b", "c"):
            self.pod(name, owner=rs)
        self.budget(minAvailable="50%")
        self.assertEqual(self.counts(), (3, 2, 3, 1))

    def test_missing_controller_fails_safe(self) -> None:
        rs = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {"name": "gone", "uid": "0000"},
        }
        self.pod("a", owner=rs)
        self.budget(maxUnavailable=1)
        self.assertEqual(self.status()["disruptionsAllowed"], 0)
        condition = find_condition({"status": self.status()}, "DisruptionAllowed")
        assert condition is not None
        self.assertEqual(
            (condition["reason"], condition["message"]),
            ("SyncFailed", 'found no controllers for pod "a"'),
        )

    def test_eviction_spends_and_controller_agrees(self) -> None:
        """An evicted pod leaves the count while it goes; the entry is dropped once it is gone."""
        for name in ("a", "b", "c"):
            self.pod(name)
        self.budget(minAvailable=1)
        self.assertEqual(self.counts(), (3, 1, 3, 2))
        # Hold the pod so it is still there, being deleted, after the eviction.
        pod = self.server.get("", "pods", "a", "default")
        pod["metadata"]["finalizers"] = ["example.com/hold"]
        self.server.run(self.store.update(self.server.resource("", "pods"), "default", "a", pod))
        self.server.run(evict(self.store, self.budgets, "default", "a", {}))
        self.assertEqual(self.counts(), (2, 1, 3, 1))
        self.assertEqual(self.status().get("disruptedPods"), None)

    def test_disrupted_pod_not_deleted_counts_again_after_timeout(self) -> None:
        for name in ("a", "b"):
            self.pod(name)
        self.budget(minAvailable=1)
        budget = self.server.get("policy", "poddisruptionbudgets", "web", "default")
        budget["status"]["disruptedPods"] = {"a": rfc3339(self.clock.seconds())}
        budget["status"]["disruptionsAllowed"] = 0
        self.server.run(
            self.store.update(self.budgets, "default", "web", budget, subresource="status")
        )
        self.assertEqual(self.counts(), (1, 1, 2, 0))
        self.assertEqual(list(self.status()["disruptedPods"]), ["a"])
        self.clock.advance(121)
        self.assertEqual(self.counts(), (2, 1, 2, 1))
        self.assertNotIn("disruptedPods", self.status())

    def test_empty_selector_covers_every_pod(self) -> None:
        """policy/v1: an empty selector covers every pod of the namespace, for both sides."""
        self.pod("a")
        self.pod("b")
        self.server.create(
            "policy",
            "poddisruptionbudgets",
            {"metadata": {"name": "web"}, "spec": {"selector": {}, "minAvailable": 2}},
            "default",
        )
        self.assertEqual(self.counts(), (2, 2, 2, 0))
        error = self.server.fails(evict(self.store, self.budgets, "default", "a", {}))
        self.assertEqual(error.code, 429)
