"""
The replicaset controller on the in-memory server, on a Clock: pods made and
deleted towards ``spec.replicas`` in kube's order, orphans adopted and strays
released, the status counted; ReplicationControllers by the same code.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.binding import bind
from k3stw.controllers.ownership import EXPECTATIONS_TIMEOUT, Expectations, observing
from k3stw.controllers.replicaset import (
    ReplicaSetController,
    pods_to_delete,
    slow_start_batch,
)
from k3stw.machinery.objects import Object, find_condition, is_deleting
from k3stw.machinery.times import rfc3339
from tests.support.apiserver import MemoryServer

LABELS = {"app": "web"}


def replicaset(name: str = "web", replicas: int = 3, **spec: Any) -> Object:
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": LABELS},
            "template": {
                "metadata": {"labels": LABELS},
                "spec": {"containers": [{"name": "web", "image": "nginx"}]},
            },
            **spec,
        },
    }


class Cluster:
    """A MemoryServer with helpers to play kubelet and scheduler on its pods."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.server = MemoryServer(case)
        self.store = self.server.store
        self.clock = self.server.clock
        self.pod_resource = self.server.resource("", "pods")

    def settle(self) -> None:
        """Let retried keys (conflicts back off a few milliseconds) run."""
        for _ in range(20):
            self.clock.advance(0.05)

    def pods(self, namespace: str = "default") -> list[Object]:
        return self.server.run(self.store.list(self.pod_resource, namespace)).items

    def mark(self, pod: Object, phase: str = "Running", ready: bool = True) -> None:
        now = rfc3339(self.clock.seconds())

        def status(current: Object) -> Object:
            current["status"] = {
                **(current.get("status") or {}),
                "phase": phase,
                "conditions": [{"type": "Ready", "status": str(ready), "lastTransitionTime": now}],
            }
            return current

        name = pod["metadata"]["name"]
        self.server.run(
            self.store.guaranteed_update(
                self.pod_resource, "default", name, status, subresource="status"
            )
        )

    def bind(self, pod: Object, node: str = "node-1") -> None:
        binding = {"metadata": {"name": pod["metadata"]["name"]}, "target": {"name": node}}
        self.server.run(bind(self.store, "default", pod["metadata"]["name"], binding))

    def events(self, reason: str) -> list[str]:
        listed = self.server.run(self.store.list(self.server.resource("", "events"), "default"))
        return [e["message"] for e in listed.items if e["reason"] == reason]


class ReplicaSetControllerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cluster = Cluster(self)
        self.server = self.cluster.server
        self.controller = ReplicaSetController(
            self.server.informers, self.server.store, host="server-1"
        )
        self.server.start(self.controller)

    def rs(self, name: str = "web") -> Object:
        return self.server.get("apps", "replicasets", name, "default")

    def scale(self, replicas: int, name: str = "web") -> None:
        def scaled(current: Object) -> Object:
            current["spec"]["replicas"] = replicas
            return current

        resource = self.server.resource("apps", "replicasets")
        self.server.run(self.server.store.guaranteed_update(resource, "default", name, scaled))
        self.cluster.settle()

    def test_creates_pods_from_the_template_owned_by_the_replicaset(self) -> None:
        created = self.server.create("apps", "replicasets", replicaset(), "default")
        self.cluster.settle()
        pods = self.cluster.pods()
        self.assertEqual(len(pods), 3)
        for pod in pods:
            self.assertRegex(pod["metadata"]["name"], r"^web-[bcdfghjklmnpqrstvwxz2456789]{5}$")
            self.assertEqual(pod["metadata"]["labels"], LABELS)
            self.assertEqual(
                pod["metadata"]["ownerReferences"],
                [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "ReplicaSet",
                        "name": "web",
                        "uid": created["metadata"]["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            )
        self.assertEqual(
            sorted(self.cluster.events("SuccessfulCreate")),
            sorted(f"Created pod: {pod['metadata']['name']}" for pod in pods),
        )
        status = self.rs()["status"]
        self.assertEqual(
            status, {"replicas": 3, "fullyLabeledReplicas": 3, "observedGeneration": 1}
        )

    def test_scale_down_deletes_the_least_established_pods_first(self) -> None:
        self.server.create("apps", "replicasets", replicaset(replicas=4), "default")
        self.cluster.settle()
        _unassigned, pending, running, ready = self.cluster.pods()
        for pod in (pending, running, ready):
            self.cluster.bind(pod)
        self.cluster.mark(running, ready=False)
        self.cluster.mark(ready)
        self.scale(1)
        # The unbound pod went at once; the bound ones are Terminating until their kubelet says.
        terminating = [p for p in self.cluster.pods() if is_deleting(p)]
        self.assertEqual(
            sorted(p["metadata"]["name"] for p in terminating),
            sorted(p["metadata"]["name"] for p in (pending, running)),
        )
        self.server.confirm_pod_deletions()
        [kept] = self.cluster.pods()
        self.assertEqual(kept["metadata"]["name"], ready["metadata"]["name"])
        self.assertEqual(len(self.cluster.events("SuccessfulDelete")), 3)
        self.assertEqual(self.rs()["status"]["readyReplicas"], 1)

    def test_pods_are_deleted_in_kube_rank_order(self) -> None:
        now = self.cluster.clock.seconds()

        def pod(name: str, node: str = "", phase: str = "Pending", **extra: Any) -> Object:
            return {
                "metadata": {"name": name, "uid": name, "creationTimestamp": rfc3339(now - 100)},
                "spec": {"nodeName": node},
                "status": {"phase": phase, **extra},
            }

        ready = {"conditions": [{"type": "Ready", "status": "True"}]}
        candidates = [
            pod("ready", "n1", "Running", **ready),
            pod("running", "n1", "Running"),
            pod("unknown", "n1", "Unknown"),
            pod("pending", "n1"),
            pod("unassigned"),
            pod("restarted", "n1", "Running", containerStatuses=[{"restartCount": 3}]),
        ]
        order = [p["metadata"]["name"] for p in pods_to_delete(candidates, [], 5, now)]
        self.assertEqual(order, ["unassigned", "pending", "unknown", "restarted", "running"])

    def test_slow_start_doubles_batches_and_stops_at_a_failure(self) -> None:
        calls: list[int] = []

        def make() -> Any:
            calls.append(len(calls))
            if len(calls) == 5:
                raise ValueError("refused")
            return succeed(None)

        failure = self.failureResultOf(Deferred.fromCoroutine(slow_start_batch(20, 1, make)))
        # Batches of 1, 2 and 4: the third has the failure, so 1 + 2 + 3 succeeded.
        self.assertEqual(len(calls), 7)
        self.assertEqual(failure.value.successes, 6)

    def test_adopts_matching_orphans_and_releases_pods_that_stop_matching(self) -> None:
        orphan = {
            "metadata": {"name": "stray", "labels": LABELS},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]},
        }
        self.server.create("", "pods", orphan, "default")
        created = self.server.create("apps", "replicasets", replicaset(replicas=2), "default")
        self.cluster.settle()
        pods = {p["metadata"]["name"]: p for p in self.cluster.pods()}
        self.assertEqual(len(pods), 2)
        self.assertEqual(
            pods["stray"]["metadata"]["ownerReferences"][0]["uid"], created["metadata"]["uid"]
        )

        def relabel(current: Object) -> Object:
            current["metadata"]["labels"] = {"app": "other"}
            return current

        self.server.run(
            self.server.store.guaranteed_update(
                self.cluster.pod_resource, "default", "stray", relabel
            )
        )
        self.cluster.settle()
        stray = self.server.get("", "pods", "stray", "default")
        self.assertNotIn("ownerReferences", stray["metadata"])
        self.assertEqual(len(self.cluster.pods()), 3)
        self.assertEqual(self.rs()["status"]["replicas"], 2)

    def test_available_after_min_ready_seconds(self) -> None:
        self.server.create(
            "apps", "replicasets", replicaset(replicas=2, minReadySeconds=10), "default"
        )
        self.cluster.settle()
        for pod in self.cluster.pods():
            self.cluster.mark(pod)
        self.cluster.settle()
        status = self.rs()["status"]
        self.assertEqual((status["readyReplicas"], status.get("availableReplicas")), (2, None))
        self.cluster.clock.advance(10)
        self.cluster.settle()
        self.assertEqual(self.rs()["status"]["availableReplicas"], 2)

    def test_finished_pods_are_replaced(self) -> None:
        self.server.create("apps", "replicasets", replicaset(replicas=1), "default")
        self.cluster.settle()
        [pod] = self.cluster.pods()
        self.cluster.mark(pod, phase="Failed", ready=False)
        self.cluster.settle()
        self.assertEqual(len(self.cluster.pods()), 2)
        self.assertEqual(self.rs()["status"]["replicas"], 1)

    def test_failed_creates_set_replica_failure(self) -> None:
        self.server.create("apps", "replicasets", replicaset(replicas=1), "default")
        self.cluster.settle()
        # A namespace that is being deleted refuses new pods.
        self.server.delete("", "namespaces", "default", finalizers=("test/hold",))
        self.cluster.clock.advance(2)
        [pod] = self.cluster.pods()
        self.server.delete("", "pods", pod["metadata"]["name"], "default")
        self.cluster.settle()
        condition = find_condition(self.rs(), "ReplicaFailure")
        assert condition is not None
        self.assertEqual((condition["status"], condition["reason"]), ("True", "FailedCreate"))
        self.assertIn("being terminated", condition["message"])


class ExpectationsTests(SynchronousTestCase):
    def test_satisfied_when_observed_or_timed_out(self) -> None:
        clock = Clock()
        expectations = Expectations(clock)
        self.assertTrue(expectations.satisfied("default/web"))
        expectations.expect("default/web", creations=2)
        expectations.creation_observed("default/web")
        self.assertFalse(expectations.satisfied("default/web"))
        expectations.creation_observed("default/web")
        self.assertTrue(expectations.satisfied("default/web"))
        expectations.expect("default/web", deletions=["default/a"])
        self.assertFalse(expectations.satisfied("default/web"))
        clock.advance(EXPECTATIONS_TIMEOUT + 1)
        self.assertTrue(expectations.satisfied("default/web"))

    def test_observing_lowers_them_as_owned_objects_arrive_and_go(self) -> None:
        clock = Clock()
        expectations = Expectations(clock)
        handler = observing("DaemonSet", expectations)
        assert handler.on_add and handler.on_update and handler.on_delete
        ref = {"kind": "DaemonSet", "name": "agent", "uid": "u1", "controller": True}
        meta = {"namespace": "kube-system", "name": "agent-x", "ownerReferences": [ref]}
        pod: Object = {"metadata": meta}
        stranger: Object = {"metadata": {"namespace": "kube-system", "name": "other"}}
        expectations.expect("kube-system/agent", creations=1, deletions=["kube-system/agent-x"])
        handler.on_add(stranger)
        handler.on_add(pod)
        self.assertFalse(expectations.satisfied("kube-system/agent"))
        deleting: Object = {"metadata": {**meta, "deletionTimestamp": "2026-12-06T00:00:00Z"}}
        handler.on_update(pod, deleting)
        self.assertTrue(expectations.satisfied("kube-system/agent"))


class ReplicationControllerTests(SynchronousTestCase):
    def test_runs_replication_controllers_with_the_same_code(self) -> None:
        cluster = Cluster(self)
        server = cluster.server
        resource = server.resource("", "replicationcontrollers")
        controller = ReplicaSetController(server.informers, server.store, resource)
        server.start(controller)
        rc = {
            "apiVersion": "v1",
            "kind": "ReplicationController",
            "metadata": {"name": "legacy"},
            "spec": {
                "replicas": 2,
                "selector": LABELS,
                "template": {
                    "metadata": {"labels": LABELS},
                    "spec": {"containers": [{"name": "c", "image": "nginx"}]},
                },
            },
        }
        server.create("", "replicationcontrollers", rc, "default")
        cluster.settle()
        pods = cluster.pods()
        self.assertEqual(len(pods), 2)
        self.assertEqual(
            {p["metadata"]["ownerReferences"][0]["kind"] for p in pods}, {"ReplicationController"}
        )
        stored = server.get("", "replicationcontrollers", "legacy", "default")
        self.assertEqual(stored["status"]["replicas"], 2)
