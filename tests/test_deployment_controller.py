"""
The deployment controller with the replicaset controller on the in-memory
server, on a Clock: ReplicaSets per template with kube's names, labels and
annotations, rolling updates paced by readiness, Recreate, history cleanup,
pause, and the conditions ``kubectl rollout status`` reads.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.controllers.deployment import (
    DESIRED_REPLICAS,
    HASH_LABEL,
    MAX_REPLICAS,
    REVISION,
    DeploymentController,
    template_hash,
)
from k3stw.controllers.replicaset import ReplicaSetController
from k3stw.machinery.objects import Object, find_condition
from tests.test_replicaset_controller import Cluster

LABELS = {"app": "web"}


def deployment(replicas: int = 3, image: str = "nginx", **spec: Any) -> Object:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": LABELS},
            "template": {
                "metadata": {"labels": LABELS},
                "spec": {"containers": [{"name": "web", "image": image}]},
            },
            **spec,
        },
    }


class DeploymentControllerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cluster = Cluster(self)
        self.server = self.cluster.server
        informers, store = self.server.informers, self.server.store
        self.server.start(
            ReplicaSetController(informers, store, host="server-1"),
            DeploymentController(informers, store, host="server-1"),
        )

    def deploy(self, **spec: Any) -> Object:
        created = self.server.create("apps", "deployments", deployment(**spec), "default")
        self.cluster.settle()
        return created

    def change(self, **spec: Any) -> None:
        def changed(current: Object) -> Object:
            for key, value in spec.items():
                if key == "image":
                    current["spec"]["template"]["spec"]["containers"][0]["image"] = value
                else:
                    current["spec"][key] = value
            return current

        resource = self.server.resource("apps", "deployments")
        self.server.run(self.server.store.guaranteed_update(resource, "default", "web", changed))
        self.cluster.settle()

    def get(self) -> Object:
        return self.server.get("apps", "deployments", "web", "default")

    def replicasets(self) -> dict[str, Object]:
        resource = self.server.resource("apps", "replicasets")
        listed = self.server.run(self.server.store.list(resource, "default")).items
        return {rs["spec"]["template"]["spec"]["containers"][0]["image"]: rs for rs in listed}

    def ready_all(self) -> None:
        """Play kubelet: every pod not yet ready turns Running and Ready; until nothing changes."""
        for _ in range(10):
            waiting = [p for p in self.cluster.pods() if find_condition(p, "Ready") is None]
            if not waiting:
                return
            for pod in waiting:
                self.cluster.mark(pod)
            self.cluster.settle()

    def condition(self, kind: str) -> tuple[str, str, str]:
        found = find_condition(self.get(), kind)
        assert found is not None, kind
        return found["status"], found["reason"], found["message"]

    def test_a_new_deployment_gets_a_replicaset_named_by_its_template_hash(self) -> None:
        created = self.deploy()
        [rs] = self.replicasets().values()
        hashed = rs["metadata"]["labels"][HASH_LABEL]
        self.assertEqual(rs["metadata"]["name"], f"web-{hashed}")
        self.assertEqual(hashed, template_hash(created["spec"]["template"], None))
        self.assertEqual(rs["spec"]["selector"]["matchLabels"], {**LABELS, HASH_LABEL: hashed})
        self.assertEqual(rs["spec"]["template"]["metadata"]["labels"][HASH_LABEL], hashed)
        annotations = rs["metadata"]["annotations"]
        self.assertEqual(
            (annotations[REVISION], annotations[DESIRED_REPLICAS], annotations[MAX_REPLICAS]),
            ("1", "3", "4"),
        )
        self.assertEqual(rs["metadata"]["ownerReferences"][0]["uid"], created["metadata"]["uid"])
        self.assertEqual(len(self.cluster.pods()), 3)
        self.assertEqual(
            self.cluster.events("ScalingReplicaSet"),
            [f"Scaled up replica set web-{hashed} from 0 to 3"],
        )
        status = self.get()["status"]
        self.assertEqual(
            (status["replicas"], status["updatedReplicas"], status["unavailableReplicas"]),
            (3, 3, 3),
        )
        self.assertEqual(self.get()["metadata"]["annotations"][REVISION], "1")
        self.assertEqual(self.condition("Available")[:2], ("False", "MinimumReplicasUnavailable"))
        self.assertEqual(
            self.condition("Progressing"),
            ("True", "ReplicaSetUpdated", f'ReplicaSet "web-{hashed}" is progressing.'),
        )
        self.ready_all()
        status = self.get()["status"]
        self.assertEqual((status["readyReplicas"], status["availableReplicas"]), (3, 3))
        self.assertNotIn("unavailableReplicas", status)
        self.assertEqual(
            self.condition("Available"),
            ("True", "MinimumReplicasAvailable", "Deployment has minimum availability."),
        )
        self.assertEqual(
            self.condition("Progressing"),
            (
                "True",
                "NewReplicaSetAvailable",
                f'ReplicaSet "web-{hashed}" has successfully progressed.',
            ),
        )

    def test_the_hash_is_kube_shaped_and_moves_with_the_collision_count(self) -> None:
        template = deployment()["spec"]["template"]
        first = template_hash(template, None)
        self.assertRegex(first, r"^[bcdfghjklmnpqrstvwxz2456789]{1,10}$")
        self.assertEqual(first, template_hash(template, None))
        self.assertNotEqual(first, template_hash(template, 1))

    def test_a_rolling_update_waits_for_new_pods_to_be_ready(self) -> None:
        self.deploy()
        self.ready_all()
        self.change(image="nginx:2")
        rss = self.replicasets()
        old, new = rss["nginx"], rss["nginx:2"]
        # maxSurge 1 (25% of 3, up), maxUnavailable 0 (down): one new pod first, no old one gone.
        self.assertEqual((old["spec"]["replicas"], new["spec"]["replicas"]), (3, 1))
        self.assertEqual(new["metadata"]["annotations"][REVISION], "2")
        self.assertEqual(self.get()["metadata"]["annotations"][REVISION], "2")
        self.assertEqual(len(self.cluster.pods()), 4)
        self.ready_all()
        rss = self.replicasets()
        self.assertEqual(
            (rss["nginx"]["spec"]["replicas"], rss["nginx:2"]["spec"]["replicas"]), (0, 3)
        )
        new_name, old_name = rss["nginx:2"]["metadata"]["name"], rss["nginx"]["metadata"]["name"]
        events = self.cluster.events("ScalingReplicaSet")
        self.assertIn(f"Scaled up replica set {new_name} from 0 to 1", events)
        self.assertIn(f"Scaled down replica set {old_name} from 3 to 2", events)
        self.assertIn(f"Scaled down replica set {old_name} from 1 to 0", events)
        status = self.get()["status"]
        self.assertEqual(
            (status["replicas"], status["updatedReplicas"], status["availableReplicas"]), (3, 3, 3)
        )
        self.assertEqual(self.condition("Progressing")[1], "NewReplicaSetAvailable")

    def test_recreate_removes_every_old_pod_before_the_new_replicaset(self) -> None:
        self.deploy(strategy={"type": "Recreate"})
        self.ready_all()
        self.change(image="nginx:2")
        rss = self.replicasets()
        self.assertEqual(rss["nginx"]["spec"]["replicas"], 0)
        self.assertEqual(rss["nginx:2"]["spec"]["replicas"], 3)
        images = {p["spec"]["containers"][0]["image"] for p in self.cluster.pods()}
        self.assertEqual(images, {"nginx:2"})
        events = self.cluster.events("ScalingReplicaSet")
        self.assertEqual(
            events[-2:],
            [events[-2], f"Scaled up replica set {rss['nginx:2']['metadata']['name']} from 0 to 3"],
        )
        self.assertTrue(
            events[-2].startswith("Scaled down replica set web-")
            and events[-2].endswith("from 3 to 0")
        )

    def test_old_replicasets_beyond_the_history_limit_are_deleted(self) -> None:
        self.deploy(replicas=1, revisionHistoryLimit=1)
        self.ready_all()
        for image in ("nginx:2", "nginx:3"):
            self.change(image=image)
            self.ready_all()
        rss = self.replicasets()
        self.assertEqual(sorted(rss), ["nginx:2", "nginx:3"])
        self.assertEqual(rss["nginx:3"]["metadata"]["annotations"][REVISION], "3")

    def test_a_paused_deployment_scales_but_does_not_roll_out(self) -> None:
        self.deploy()
        self.ready_all()
        self.change(paused=True)
        self.assertEqual(
            self.condition("Progressing"), ("Unknown", "DeploymentPaused", "Deployment is paused")
        )
        self.change(image="nginx:2", replicas=5)
        rss = self.replicasets()
        self.assertEqual(list(rss), ["nginx"])
        self.assertEqual(rss["nginx"]["spec"]["replicas"], 5)
        self.assertEqual(rss["nginx"]["metadata"]["annotations"][DESIRED_REPLICAS], "5")
        self.change(paused=False)
        self.assertIn("nginx:2", self.replicasets())
        self.ready_all()
        self.assertEqual(self.replicasets()["nginx:2"]["spec"]["replicas"], 5)
        self.assertEqual(self.condition("Progressing")[1], "NewReplicaSetAvailable")

    def test_scaling_resizes_the_replicaset(self) -> None:
        self.deploy()
        self.change(replicas=1)
        [rs] = self.replicasets().values()
        self.assertEqual(rs["spec"]["replicas"], 1)
        self.assertEqual(len(self.cluster.pods()), 1)
        self.assertIn(
            f"Scaled down replica set {rs['metadata']['name']} from 3 to 1",
            self.cluster.events("ScalingReplicaSet"),
        )

    def test_a_rollout_without_progress_exceeds_its_deadline(self) -> None:
        self.deploy(progressDeadlineSeconds=30)
        self.cluster.clock.advance(31)
        self.cluster.settle()
        [rs] = self.replicasets().values()
        self.assertEqual(
            self.condition("Progressing"),
            (
                "False",
                "ProgressDeadlineExceeded",
                f'ReplicaSet "{rs["metadata"]["name"]}" has timed out progressing.',
            ),
        )

    def test_rolling_back_reuses_the_old_replicaset_with_a_new_revision(self) -> None:
        self.deploy(replicas=1)
        self.ready_all()
        self.change(image="nginx:2")
        self.ready_all()
        self.change(image="nginx")
        self.ready_all()
        rss = self.replicasets()
        self.assertEqual(len(rss), 2)
        annotations = rss["nginx"]["metadata"]["annotations"]
        self.assertEqual(annotations[REVISION], "3")
        self.assertEqual(annotations["deployment.kubernetes.io/revision-history"], "1")
        self.assertEqual(rss["nginx"]["spec"]["replicas"], 1)
