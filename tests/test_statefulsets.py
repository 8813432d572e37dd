"""
The StatefulSet controller on the real object store over the in-memory
datastore, on a Clock: ordered creation as pods turn Running and Ready
through the status subresource, scale-down from the highest ordinal,
Parallel, claims and their retention policy, rolling updates with a
partition, OnDelete, revisions and status.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.binding import bind
from k3stw.controllers.garbage import GarbageCollector
from k3stw.controllers.statefulsets import StatefulSetController
from k3stw.machinery.objects import Object
from k3stw.machinery.times import rfc3339
from tests.support.apiserver import MemoryServer

NS = "default"

CLAIM = {
    "metadata": {"name": "data"},
    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
}


def statefulset(
    name: str = "web", replicas: int = 3, image: str = "nginx:1", **spec: Any
) -> Object:
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "serviceName": "nginx",
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": image}]},
            },
            **spec,
        },
    }


class StatefulSetControllerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.store = self.server.store
        self.clock = self.server.clock
        self.controller = StatefulSetController(
            self.server.informers, self.store, self.server.registry, "server"
        )
        self.server.start(self.controller)

    # The cluster

    def create(self, obj: Object) -> Object:
        return self.server.create("apps", "statefulsets", obj, NS)

    def sts(self, name: str = "web") -> Object:
        return self.server.get("apps", "statefulsets", name, NS)

    def change(self, name: str = "web", **spec: Any) -> None:
        current = self.sts(name)
        if "image" in spec:
            current["spec"]["template"]["spec"]["containers"][0]["image"] = spec.pop("image")
        current["spec"].update(spec)
        resource = self.server.resource("apps", "statefulsets")
        self.server.run(self.store.update(resource, NS, name, current))

    def pods(self) -> dict[str, Object]:
        listed = self.server.run(self.store.list(self.server.resource("", "pods"), NS))
        return {p["metadata"]["name"]: p for p in listed.items}

    def names(self) -> list[str]:
        return sorted(self.pods())

    def images(self) -> dict[str, str]:
        return {n: p["spec"]["containers"][0]["image"] for n, p in sorted(self.pods().items())}

    def mark(self, name: str, ready: bool = True, phase: str = "Running") -> None:
        now = rfc3339(self.clock.seconds())
        current = self.server.get("", "pods", name, NS)
        current["status"] = {
            "phase": phase,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "lastTransitionTime": now,
                }
            ],
        }
        resource = self.server.resource("", "pods")
        self.server.run(self.store.update(resource, NS, name, current, subresource="status"))

    def ready_all(self) -> None:
        for name, pod in self.pods().items():
            if pod.get("status", {}).get("phase") != "Running":
                self.mark(name)

    def claims(self) -> dict[str, Object]:
        resource = self.server.resource("", "persistentvolumeclaims")
        listed = self.server.run(self.store.list(resource, NS))
        return {c["metadata"]["name"]: c for c in listed.items}

    def events(self, reason: str) -> list[str]:
        listed = self.server.run(self.store.list(self.server.resource("", "events"), NS))
        items = sorted(listed.items, key=lambda e: e["metadata"]["name"])
        return [e["message"] for e in items if e["reason"] == reason]

    # Tests

    def test_ordered_creation_waits_for_running_and_ready(self) -> None:
        sts = self.create(statefulset())
        self.assertEqual(self.names(), ["web-0"])
        pod = self.pods()["web-0"]
        labels = pod["metadata"]["labels"]
        self.assertEqual(labels["statefulset.kubernetes.io/pod-name"], "web-0")
        self.assertEqual(labels["apps.kubernetes.io/pod-index"], "0")
        self.assertTrue(labels["controller-revision-hash"].startswith("web-"))
        self.assertEqual((pod["spec"]["hostname"], pod["spec"]["subdomain"]), ("web-0", "nginx"))
        owner = pod["metadata"]["ownerReferences"][0]
        self.assertEqual((owner["kind"], owner["uid"]), ("StatefulSet", sts["metadata"]["uid"]))
        # Running but not Ready holds web-1 back; so does Ready but not Running.
        self.mark("web-0", ready=False)
        self.assertEqual(self.names(), ["web-0"])
        self.mark("web-0", ready=True, phase="Pending")
        self.assertEqual(self.names(), ["web-0"])
        self.mark("web-0")
        self.assertEqual(self.names(), ["web-0", "web-1"])
        self.mark("web-1")
        self.assertEqual(self.names(), ["web-0", "web-1", "web-2"])
        self.mark("web-2")
        self.assertEqual(
            self.events("SuccessfulCreate"),
            [f"create Pod web-{i} in StatefulSet web successful" for i in range(3)],
        )
        status = self.sts()["status"]
        revision = labels["controller-revision-hash"]
        self.assertEqual(
            {
                k: status.get(k)
                for k in (
                    "replicas",
                    "readyReplicas",
                    "currentReplicas",
                    "updatedReplicas",
                    "availableReplicas",
                )
            },
            dict.fromkeys(
                (
                    "replicas",
                    "readyReplicas",
                    "currentReplicas",
                    "updatedReplicas",
                    "availableReplicas",
                ),
                3,
            ),
        )
        self.assertEqual(
            (status["currentRevision"], status["updateRevision"]), (revision, revision)
        )
        self.assertEqual((status["observedGeneration"], status["collisionCount"]), (1, 0))

    def test_scale_down_from_the_highest_ordinal_one_at_a_time(self) -> None:
        self.create(statefulset())
        for i in range(3):
            self.mark(f"web-{i}")
        self.change(replicas=1)
        # web-2 goes first; web-1 stays while web-2 has not gone... it is gone at once here,
        # so web-1 follows only once the remaining pods are healthy.
        self.assertEqual(self.names(), ["web-0"])
        self.assertEqual(
            self.events("SuccessfulDelete"),
            [
                "delete Pod web-2 in StatefulSet web successful",
                "delete Pod web-1 in StatefulSet web successful",
            ],
        )

    def bind(self, name: str) -> None:
        binding = {"target": {"kind": "Node", "name": "n1"}}
        self.server.run(bind(self.store, NS, name, binding))

    def test_bound_pods_go_one_at_a_time_waiting_for_each_to_terminate(self) -> None:
        """A deleted pod of a node is Terminating until its kubelet confirms; the next waits."""
        self.create(statefulset())
        for i in range(3):
            self.bind(f"web-{i}")
            self.mark(f"web-{i}")
        self.change(replicas=1)
        terminating = [n for n, p in self.pods().items() if p["metadata"].get("deletionTimestamp")]
        self.assertEqual((self.names(), terminating), (["web-0", "web-1", "web-2"], ["web-2"]))
        self.clock.advance(10)
        self.assertEqual(
            self.events("SuccessfulDelete"), ["delete Pod web-2 in StatefulSet web successful"]
        )
        self.server.confirm_pod_deletions()  # web-2's kubelet
        self.assertEqual(self.names(), ["web-0", "web-1"])
        self.server.confirm_pod_deletions()  # web-1's
        self.assertEqual(self.names(), ["web-0"])

    def test_a_deleted_bound_pod_is_recreated_once_it_is_gone(self) -> None:
        self.create(statefulset(replicas=1))
        self.bind("web-0")
        self.mark("web-0")
        uid = self.pods()["web-0"]["metadata"]["uid"]
        self.server.delete("", "pods", "web-0", NS)
        self.clock.advance(10)
        self.assertEqual(self.pods()["web-0"]["metadata"]["uid"], uid)  # still Terminating
        self.server.confirm_pod_deletions()
        self.assertNotEqual(self.pods()["web-0"]["metadata"]["uid"], uid)

    def test_scale_down_waits_for_unhealthy_pods(self) -> None:
        self.create(statefulset())
        for i in range(3):
            self.mark(f"web-{i}")
        self.mark("web-0", ready=False)
        self.change(replicas=1)
        # web-2 is healthy but web-0 is not: nothing is deleted until web-0 is Ready.
        self.assertEqual(self.names(), ["web-0", "web-1", "web-2"])
        self.mark("web-0")
        self.assertEqual(self.names(), ["web-0"])

    def test_parallel_creates_and_deletes_without_waiting(self) -> None:
        self.create(statefulset(podManagementPolicy="Parallel"))
        self.assertEqual(self.names(), ["web-0", "web-1", "web-2"])
        self.change(replicas=1)
        self.assertEqual(self.names(), ["web-0"])

    def test_claims_from_templates(self) -> None:
        self.create(statefulset(replicas=2, volumeClaimTemplates=[CLAIM]))
        claim = self.claims()["data-web-0"]
        self.assertEqual(claim["metadata"]["labels"], {"app": "web"})
        self.assertNotIn("ownerReferences", claim["metadata"])
        volumes = self.pods()["web-0"]["spec"]["volumes"]
        self.assertEqual(volumes[0]["name"], "data")
        self.assertEqual(volumes[0]["persistentVolumeClaim"]["claimName"], "data-web-0")
        self.assertEqual(
            self.events("SuccessfulCreate"),
            [
                "create Claim data-web-0 Pod web-0 in StatefulSet web success",
                "create Pod web-0 in StatefulSet web successful",
            ],
        )
        self.mark("web-0")
        self.assertEqual(sorted(self.claims()), ["data-web-0", "data-web-1"])

    def test_retention_policy_delete_when_scaled_and_when_deleted(self) -> None:
        collector = GarbageCollector(self.server.informers, self.store, self.server.registry)
        self.server.start(collector)
        policy = {"whenDeleted": "Delete", "whenScaled": "Delete"}
        sts = self.create(
            statefulset(
                replicas=2,
                volumeClaimTemplates=[CLAIM],
                persistentVolumeClaimRetentionPolicy=policy,
            )
        )
        self.ready_all()
        self.ready_all()
        refs = self.claims()["data-web-1"]["metadata"]["ownerReferences"]
        self.assertEqual(
            [(r["kind"], r["uid"]) for r in refs], [("StatefulSet", sts["metadata"]["uid"])]
        )
        self.change(replicas=1)
        self.assertEqual(self.names(), ["web-0"])
        self.assertEqual(sorted(self.claims()), ["data-web-0"])
        self.server.delete("apps", "statefulsets", "web", NS)
        self.assertEqual(self.claims(), {})

    def test_retention_policy_retain_keeps_claims(self) -> None:
        collector = GarbageCollector(self.server.informers, self.store, self.server.registry)
        self.server.start(collector)
        self.create(statefulset(replicas=2, volumeClaimTemplates=[CLAIM]))
        self.ready_all()
        self.ready_all()
        self.change(replicas=1)
        self.assertEqual(self.names(), ["web-0"])
        self.assertEqual(sorted(self.claims()), ["data-web-0", "data-web-1"])

    def test_rolling_update_highest_first_down_to_the_partition(self) -> None:
        strategy = {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}
        self.create(statefulset(updateStrategy=strategy))
        for i in range(3):
            self.mark(f"web-{i}")
        old = self.sts()["status"]["currentRevision"]
        self.change(image="nginx:2")
        # web-2 is replaced first; web-1 waits until the new web-2 is Running and Ready.
        self.assertEqual(
            self.images(), {"web-0": "nginx:1", "web-1": "nginx:1", "web-2": "nginx:2"}
        )
        new = self.pods()["web-2"]["metadata"]["labels"]["controller-revision-hash"]
        self.assertNotEqual(new, old)
        self.mark("web-2")
        self.assertEqual(
            self.images(), {"web-0": "nginx:1", "web-1": "nginx:2", "web-2": "nginx:2"}
        )
        self.mark("web-1")
        # web-0 is below the partition: it stays at the old revision.
        self.assertEqual(self.images()["web-0"], "nginx:1")
        status = self.sts()["status"]
        self.assertEqual((status["currentRevision"], status["updateRevision"]), (old, new))
        self.assertEqual((status["currentReplicas"], status["updatedReplicas"]), (1, 2))
        # A recreated pod below the partition comes back at the current revision.
        self.server.delete("", "pods", "web-0", NS)
        self.assertEqual(self.images()["web-0"], "nginx:1")
        # Partition 0 finishes the roll-out; the current revision becomes the update one.
        self.mark("web-0")
        self.change(updateStrategy={"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        self.mark("web-0")
        self.assertEqual(set(self.images().values()), {"nginx:2"})
        status = self.sts()["status"]
        self.assertEqual(status["currentRevision"], new)
        self.assertEqual(status["currentReplicas"], 3)
        listed = self.server.run(
            self.store.list(self.server.resource("apps", "controllerrevisions"), NS)
        )
        self.assertEqual(sorted(r["revision"] for r in listed.items), [1, 2])

    def test_on_delete_replaces_pods_only_when_deleted(self) -> None:
        self.create(statefulset(replicas=2, updateStrategy={"type": "OnDelete"}))
        self.ready_all()
        self.ready_all()
        self.change(image="nginx:2")
        self.clock.advance(30)
        self.assertEqual(self.images(), {"web-0": "nginx:1", "web-1": "nginx:1"})
        self.server.delete("", "pods", "web-1", NS)
        self.assertEqual(self.images(), {"web-0": "nginx:1", "web-1": "nginx:2"})

    def test_a_failed_pod_is_recreated(self) -> None:
        self.create(statefulset(replicas=1))
        uid = self.pods()["web-0"]["metadata"]["uid"]
        self.mark("web-0", ready=False, phase="Failed")
        pod = self.pods()["web-0"]
        self.assertNotEqual(pod["metadata"]["uid"], uid)
        self.assertEqual(
            self.events("RecreatingFailedPod"),
            ["StatefulSet default/web is recreating failed Pod web-0"],
        )
