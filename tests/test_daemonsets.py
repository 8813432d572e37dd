"""
The DaemonSet controller on the real object store over the in-memory
datastore, on a Clock: one pod per eligible node as nodes come and go and
change their labels and taints, pods placed by node affinity, ControllerRevisions,
rolling updates within maxUnavailable/maxSurge, OnDelete, status and events.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.binding import bind
from k3stw.controllers.daemonsets import (
    DaemonSetController,
    node_affinity_for,
    should_run,
    target_node,
)
from k3stw.machinery.objects import Object, is_deleting
from k3stw.machinery.times import rfc3339
from tests.support.apiserver import MemoryServer

NS = "default"


def node_object(name: str, labels: dict[str, str] | None = None, taints: Any = ()) -> Object:
    node: Object = {"metadata": {"name": name, "labels": labels or {}}, "spec": {}}
    if taints:
        node["spec"]["taints"] = list(taints)
    return node


def daemonset(name: str = "agent", image: str = "busybox:1", **spec: Any) -> Object:
    template_spec = {"containers": [{"name": "c", "image": image}]}
    template_spec.update(spec.pop("pod", {}))
    return {
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": template_spec},
            **spec,
        },
    }


class PlacementTests(SynchronousTestCase):
    """What decides whether a node runs a daemon pod, without a store."""

    def test_untolerated_no_schedule_taint_keeps_a_running_pod(self) -> None:
        node = node_object("n", taints=[{"key": "k", "effect": "NoSchedule"}])
        self.assertEqual(should_run(daemonset(), node), (False, True))

    def test_untolerated_no_execute_taint_evicts(self) -> None:
        node = node_object("n", taints=[{"key": "k", "effect": "NoExecute"}])
        self.assertEqual(should_run(daemonset(), node), (False, False))

    def test_the_daemon_tolerations_cover_node_conditions(self) -> None:
        taints = [
            {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"},
            {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
            {"key": "node.kubernetes.io/disk-pressure", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/memory-pressure", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/pid-pressure", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
        ]
        self.assertEqual(should_run(daemonset(), node_object("n", taints=taints)), (True, True))
        unavailable = [{"key": "node.kubernetes.io/network-unavailable", "effect": "NoSchedule"}]
        node = node_object("n", taints=unavailable)
        self.assertEqual(should_run(daemonset(), node), (False, True))
        self.assertEqual(should_run(daemonset(pod={"hostNetwork": True}), node), (True, True))

    def test_node_selector_and_required_affinity(self) -> None:
        ds = daemonset(pod={"nodeSelector": {"disk": "ssd"}})
        self.assertEqual(should_run(ds, node_object("n", {"disk": "ssd"})), (True, True))
        self.assertEqual(should_run(ds, node_object("n", {"disk": "hdd"})), (False, False))
        affinity = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                        {
                            "matchFields": [
                                {"key": "metadata.name", "operator": "In", "values": ["x"]}
                            ]
                        },
                    ]
                }
            }
        }
        ds = daemonset(pod={"affinity": affinity})
        self.assertTrue(should_run(ds, node_object("n", {"zone": "a"}))[0])
        self.assertTrue(should_run(ds, node_object("x"))[0])
        self.assertFalse(should_run(ds, node_object("n", {"zone": "b"}))[0])

    def test_the_pod_affinity_names_its_node(self) -> None:
        affinity = node_affinity_for({"podAffinity": {"x": 1}}, "n1")
        pod = {"spec": {"affinity": affinity}}
        self.assertEqual(target_node(pod), "n1")
        self.assertEqual(affinity["podAffinity"], {"x": 1})


class DaemonSetControllerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.store = self.server.store
        self.clock = self.server.clock
        self.controller = DaemonSetController(
            self.server.informers, self.store, self.server.registry, "server"
        )
        self.server.start(self.controller)

    # The cluster

    def add_node(self, name: str, labels: dict[str, str] | None = None, taints: Any = ()) -> None:
        self.server.create("", "nodes", node_object(name, labels, taints))

    def change_node(self, name: str, **changes: Any) -> None:
        node = self.server.get("", "nodes", name)
        if "labels" in changes:
            node["metadata"]["labels"] = changes["labels"]
        if "taints" in changes:
            node["spec"]["taints"] = changes["taints"]
        self.server.run(self.store.update(self.server.resource("", "nodes"), None, name, node))

    def create(self, obj: Object) -> Object:
        return self.server.create("apps", "daemonsets", obj, NS)

    def ds(self, name: str = "agent") -> Object:
        return self.server.get("apps", "daemonsets", name, NS)

    def update_template(self, name: str, image: str) -> None:
        current = self.ds(name)
        current["spec"]["template"]["spec"]["containers"][0]["image"] = image
        resource = self.server.resource("apps", "daemonsets")
        self.server.run(self.store.update(resource, NS, name, current))

    def pods(self) -> list[Object]:
        listed = self.server.run(self.store.list(self.server.resource("", "pods"), NS))
        return sorted(listed.items, key=lambda p: (target_node(p), p["metadata"]["name"]))

    def placement(self) -> list[tuple[str, str]]:
        return sorted((target_node(p), p["spec"]["containers"][0]["image"]) for p in self.pods())

    def bind_all(self) -> None:
        for pod in self.pods():
            if not pod["spec"].get("nodeName"):
                binding = {"target": {"kind": "Node", "name": target_node(pod)}}
                self.server.run(bind(self.store, NS, pod["metadata"]["name"], binding))

    def mark_ready(self, pod: Object, ready: bool = True) -> None:
        now = rfc3339(self.clock.seconds())
        current = self.server.get("", "pods", pod["metadata"]["name"], NS)
        current["status"] = {
            "phase": "Running",
            "conditions": [
                {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": now}
            ],
        }
        resource = self.server.resource("", "pods")
        self.server.run(
            self.store.update(resource, NS, pod["metadata"]["name"], current, subresource="status")
        )

    def ready_all(self) -> None:
        """
        The nodes' kubelets at work: confirm the deletions of the pods that were
        Terminating, then bind and mark Ready every pod there is now (the
        controller may act between marks).
        """
        self.server.confirm_pod_deletions()
        self.bind_all()
        for pod in self.pods():
            if self.server.exists("", "pods", pod["metadata"]["name"], NS):
                self.mark_ready(pod)

    def events(self, reason: str) -> list[str]:
        listed = self.server.run(self.store.list(self.server.resource("", "events"), NS))
        return sorted(e["message"] for e in listed.items if e["reason"] == reason)

    # Tests

    def test_one_pod_per_node_placed_by_affinity(self) -> None:
        self.add_node("n1")
        self.add_node("n2")
        ds = self.create(daemonset())
        pods = self.pods()
        self.assertEqual([target_node(p) for p in pods], ["n1", "n2"])
        for pod in pods:
            self.assertNotIn("nodeName", pod["spec"])
            terms = pod["spec"]["affinity"]["nodeAffinity"][
                "requiredDuringSchedulingIgnoredDuringExecution"
            ]["nodeSelectorTerms"]
            self.assertEqual(
                terms,
                [
                    {
                        "matchFields": [
                            {"key": "metadata.name", "operator": "In", "values": [target_node(pod)]}
                        ]
                    }
                ],
            )
            self.assertTrue(pod["metadata"]["name"].startswith("agent-"))
            labels = pod["metadata"]["labels"]
            self.assertEqual(labels["pod-template-generation"], "1")
            self.assertEqual(labels["app"], "agent")
            owner = pod["metadata"]["ownerReferences"][0]
            self.assertEqual(
                (owner["kind"], owner["name"], owner["uid"], owner["controller"]),
                ("DaemonSet", "agent", ds["metadata"]["uid"], True),
            )
            keys = [(t["key"], t["effect"]) for t in pod["spec"]["tolerations"]]
            self.assertIn(("node.kubernetes.io/unreachable", "NoExecute"), keys)
            self.assertNotIn("tolerationSeconds", pod["spec"]["tolerations"][1])
        self.assertEqual(
            self.events("SuccessfulCreate"),
            sorted(f"Created pod: {p['metadata']['name']}" for p in pods),
        )
        status = self.ds()["status"]
        self.assertEqual(status["desiredNumberScheduled"], 2)
        self.assertEqual(status["currentNumberScheduled"], 2)
        self.assertEqual(status["updatedNumberScheduled"], 2)
        self.assertEqual(status["numberReady"], 0)
        self.assertEqual(status["numberUnavailable"], 2)
        self.assertEqual(status["observedGeneration"], 1)

    def test_the_revision_names_the_hash_pods_carry(self) -> None:
        self.add_node("n1")
        self.create(daemonset(metadata={}))
        listed = self.server.run(
            self.store.list(self.server.resource("apps", "controllerrevisions"), NS)
        )
        [revision] = listed.items
        hash_ = self.pods()[0]["metadata"]["labels"]["controller-revision-hash"]
        self.assertEqual(revision["metadata"]["name"], f"agent-{hash_}")
        self.assertEqual(revision["metadata"]["labels"]["controller-revision-hash"], hash_)
        self.assertEqual(revision["revision"], 1)
        template = revision["data"]["spec"]["template"]
        self.assertEqual(template["$patch"], "replace")
        self.assertEqual(template["spec"]["containers"][0]["image"], "busybox:1")
        self.assertEqual(revision["metadata"]["ownerReferences"][0]["kind"], "DaemonSet")

    def test_nodes_that_come_get_a_pod_and_nodes_that_go_lose_it(self) -> None:
        self.add_node("n1")
        self.create(daemonset())
        self.assertEqual([n for n, _ in self.placement()], ["n1"])
        self.add_node("n2")
        self.assertEqual([n for n, _ in self.placement()], ["n1", "n2"])
        self.server.delete("", "nodes", "n1")
        self.assertEqual([n for n, _ in self.placement()], ["n2"])
        self.assertEqual(self.ds()["status"]["desiredNumberScheduled"], 1)
        self.assertEqual(len(self.events("SuccessfulDelete")), 1)

    def test_node_selector_follows_label_changes(self) -> None:
        self.add_node("n1", {"disk": "ssd"})
        self.add_node("n2")
        self.create(daemonset(pod={"nodeSelector": {"disk": "ssd"}}))
        self.assertEqual([n for n, _ in self.placement()], ["n1"])
        self.change_node("n2", labels={"disk": "ssd"})
        self.assertEqual([n for n, _ in self.placement()], ["n1", "n2"])
        self.change_node("n1", labels={})
        self.assertEqual([n for n, _ in self.placement()], ["n2"])

    def test_taints(self) -> None:
        self.add_node("n1", taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}])
        self.add_node("n2")
        self.create(daemonset())
        self.assertEqual([n for n, _ in self.placement()], ["n2"])
        # A NoSchedule taint added later leaves the running pod; the status counts it misscheduled.
        self.change_node("n2", taints=[{"key": "dedicated", "effect": "NoSchedule"}])
        self.assertEqual([n for n, _ in self.placement()], ["n2"])
        status = self.ds()["status"]
        self.assertEqual((status["desiredNumberScheduled"], status["numberMisscheduled"]), (0, 1))
        # NoExecute evicts it.
        self.change_node("n2", taints=[{"key": "dedicated", "effect": "NoExecute"}])
        self.assertEqual(self.placement(), [])
        # The not-ready and unreachable taints are tolerated.
        self.change_node(
            "n1",
            taints=[
                {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
                {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"},
            ],
        )
        self.assertEqual([n for n, _ in self.placement()], ["n1"])

    def test_status_counts_ready_and_available(self) -> None:
        self.add_node("n1")
        self.add_node("n2")
        self.create(daemonset(minReadySeconds=10))
        self.bind_all()
        self.mark_ready(self.pods()[0])
        status = self.ds()["status"]
        self.assertEqual((status["numberReady"], status.get("numberAvailable", 0)), (1, 0))
        self.clock.advance(10)
        status = self.ds()["status"]
        self.assertEqual((status["numberReady"], status["numberAvailable"]), (1, 1))
        self.assertEqual(status["numberUnavailable"], 1)

    def test_rolling_update_one_node_at_a_time(self) -> None:
        for name in ("n1", "n2", "n3"):
            self.add_node(name)
        self.create(daemonset())
        self.ready_all()
        self.update_template("agent", "busybox:2")
        self.assertEqual(
            self.ds()["metadata"]["annotations"]["deprecated.daemonset.template.generation"], "2"
        )
        # One old pod is Terminating: its node gets no new one until it is gone.
        self.assertEqual([i for _, i in self.placement()], ["busybox:1"] * 3)
        self.assertEqual(len([p for p in self.pods() if is_deleting(p)]), 1)
        self.server.confirm_pod_deletions()
        # Its node gets a new one; the others wait for it to be Ready.
        images = [image for _, image in self.placement()]
        self.assertEqual(sorted(images), ["busybox:1", "busybox:1", "busybox:2"])
        new = [p for p in self.pods() if p["spec"]["containers"][0]["image"] == "busybox:2"]
        self.assertEqual(new[0]["metadata"]["labels"]["pod-template-generation"], "2")
        self.clock.advance(5)
        self.assertEqual(sorted(i for _, i in self.placement()), sorted(images))
        for _ in range(3):
            self.ready_all()
        self.assertEqual([i for _, i in self.placement()], ["busybox:2"] * 3)
        status = self.ds()["status"]
        self.assertEqual((status["updatedNumberScheduled"], status["numberReady"]), (3, 3))
        listed = self.server.run(
            self.store.list(self.server.resource("apps", "controllerrevisions"), NS)
        )
        self.assertEqual(sorted(r["revision"] for r in listed.items), [1, 2])

    def test_rolling_update_with_surge_keeps_the_old_pod_until_the_new_is_ready(self) -> None:
        self.add_node("n1")
        self.add_node("n2")
        strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
        self.create(daemonset(updateStrategy=strategy))
        self.ready_all()
        self.update_template("agent", "busybox:2")
        self.assertEqual(
            self.placement(), [("n1", "busybox:1"), ("n1", "busybox:2"), ("n2", "busybox:1")]
        )
        self.ready_all()
        # The old pod of n1 is Terminating once its successor is Ready.
        [terminating] = [p for p in self.pods() if is_deleting(p)]
        self.assertEqual(target_node(terminating), "n1")
        self.server.confirm_pod_deletions()
        self.assertEqual(
            self.placement(), [("n1", "busybox:2"), ("n2", "busybox:1"), ("n2", "busybox:2")]
        )
        self.ready_all()
        self.server.confirm_pod_deletions()
        self.assertEqual(self.placement(), [("n1", "busybox:2"), ("n2", "busybox:2")])

    def test_on_delete_waits_for_the_user(self) -> None:
        self.add_node("n1")
        self.add_node("n2")
        self.create(daemonset(updateStrategy={"type": "OnDelete"}))
        self.ready_all()
        self.update_template("agent", "busybox:2")
        self.clock.advance(60)
        self.assertEqual([i for _, i in self.placement()], ["busybox:1", "busybox:1"])
        self.assertEqual(self.ds()["status"].get("updatedNumberScheduled", 0), 0)
        _, gone = self.server.delete("", "pods", self.pods()[0]["metadata"]["name"], NS)
        self.assertFalse(gone)  # bound: Terminating, and the new pod waits for it to go
        self.assertEqual(self.placement(), [("n1", "busybox:1"), ("n2", "busybox:1")])
        self.server.confirm_pod_deletions()
        self.assertEqual(self.placement(), [("n1", "busybox:2"), ("n2", "busybox:1")])

    def test_a_failed_pod_is_replaced(self) -> None:
        self.add_node("n1")
        self.create(daemonset())
        [pod] = self.pods()
        pod["status"] = {"phase": "Failed"}
        resource = self.server.resource("", "pods")
        self.server.run(
            self.store.update(resource, NS, pod["metadata"]["name"], pod, subresource="status")
        )
        [replacement] = self.pods()
        self.assertNotEqual(replacement["metadata"]["name"], pod["metadata"]["name"])
        self.assertEqual(
            self.events("FailedDaemonPod"),
            [
                f"Found failed daemon pod default/{pod['metadata']['name']} on node n1, "
                "will try to kill it"
            ],
        )
