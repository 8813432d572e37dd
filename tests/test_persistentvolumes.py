"""
Persistent volumes on the in-memory server, on a Clock: the
persistentvolume-binder, the local-path provisioner with k3s's packaged
class and config, and the scheduler's VolumeBinding plugin, together as
they run in a server.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from k3stw.controllers import localpath
from k3stw.controllers.persistentvolumes import PersistentVolumeBinder, best_match
from k3stw.machinery.objects import Object, find_condition
from k3stw.scheduler.scheduler import Scheduler
from k3stw.scheduler.volumebinding import BIND_TIMEOUT
from tests.support.apiserver import MemoryServer
from tests.test_scheduler import node_object, pod_object

STORAGE = "/var/lib/rancher/k3s/storage"
HOSTNAME = "kubernetes.io/hostname"
#: A class of volumes made by hand, bound when a pod uses them.
MANUAL = {
    "metadata": {"name": "manual"},
    "provisioner": "kubernetes.io/no-provisioner",
    "volumeBindingMode": "WaitForFirstConsumer",
}


def claim_object(
    name: str, storage: str = "1Gi", storage_class: str | None = "local-path", **spec: Any
) -> Object:
    body: Object = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "default", **spec.pop("metadata", {})},
        "spec": {
            "accessModes": spec.pop("accessModes", ["ReadWriteOnce"]),
            "resources": {"requests": {"storage": storage}},
            **spec,
        },
    }
    if storage_class is not None:
        body["spec"]["storageClassName"] = storage_class
    return body


def volume_object(
    name: str,
    storage: str = "1Gi",
    storage_class: str = "",
    policy: str = "Retain",
    node: str | None = None,
    **spec: Any,
) -> Object:
    body: Object = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, **spec.pop("metadata", {})},
        "spec": {
            "capacity": {"storage": storage},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": policy,
            "storageClassName": storage_class,
            "hostPath": {"path": f"/data/{name}"},
            **spec,
        },
    }
    if node is not None:
        body["spec"]["nodeAffinity"] = {
            "required": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": HOSTNAME, "operator": "In", "values": [node]}]}
                ]
            }
        }
    return body


def pod_with_claims(name: str, *claims: str, **spec: Any) -> Object:
    volumes = [{"name": c, "persistentVolumeClaim": {"claimName": c}} for c in claims]
    return pod_object(name, volumes=volumes, **spec)


class VolumeTestCase(SynchronousTestCase):
    scheduler = False

    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.clock = self.server.clock
        store, registry = self.server.store, self.server.registry
        self.server.run(localpath.deploy(store, registry, STORAGE))
        services: list[Any] = [
            PersistentVolumeBinder(self.server.informers, store, registry),
            localpath.LocalPathProvisioner(self.server.informers, store, registry, "server-1"),
        ]
        if self.scheduler:
            services.append(Scheduler(self.server.informers, store, "server-1", registry))
        self.server.start(*services)

    def claim(self, name: str) -> Object:
        return self.server.get("", "persistentvolumeclaims", name, "default")

    def volume(self, name: str) -> Object:
        return self.server.get("", "persistentvolumes", name)

    def add_claim(self, name: str, **options: Any) -> Object:
        return self.server.create(
            "", "persistentvolumeclaims", claim_object(name, **options), "default"
        )

    def add_volume(self, name: str, **options: Any) -> Object:
        return self.server.create("", "persistentvolumes", volume_object(name, **options))

    def add_node(self, name: str, **options: Any) -> None:
        self.server.create("", "nodes", node_object(name, **options))

    def events(self, name: str) -> list[tuple[str, str, str]]:
        resource = self.server.resource("", "events")
        listed = self.server.run(self.server.store.list(resource, "default"))
        return [
            (e["type"], e["reason"], e["message"])
            for e in listed.items
            if e["involvedObject"]["name"] == name
        ]

    def select_node(self, claim: str, node: str) -> None:
        current = self.claim(claim)
        current["metadata"].setdefault("annotations", {})["volume.kubernetes.io/selected-node"] = (
            node
        )
        self.server.run(
            self.server.store.update(
                self.server.resource("", "persistentvolumeclaims"), "default", claim, current
            )
        )


class PackagedStorageTests(VolumeTestCase):
    def test_local_path_is_the_default_class_as_k3s_ships_it(self) -> None:
        found = self.server.get("storage.k8s.io", "storageclasses", "local-path")
        self.assertEqual(
            (
                found["provisioner"],
                found["volumeBindingMode"],
                found["reclaimPolicy"],
                found["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"],
            ),
            ("rancher.io/local-path", "WaitForFirstConsumer", "Delete", "true"),
        )
        config = self.server.get("", "configmaps", "local-path-config", "kube-system")
        self.assertEqual(localpath.node_paths(config["data"], "any-node"), [STORAGE])
        self.assertIn('mkdir -m 0777 -p "${VOL_DIR}"', config["data"]["setup"])

    def test_a_second_start_puts_the_manifest_back(self) -> None:
        config = self.server.get("", "configmaps", "local-path-config", "kube-system")
        config["data"]["config.json"] = "{}"
        self.server.run(
            self.server.store.update(
                self.server.resource("", "configmaps"), "kube-system", "local-path-config", config
            )
        )
        self.server.run(localpath.deploy(self.server.store, self.server.registry, "/srv/volumes"))
        config = self.server.get("", "configmaps", "local-path-config", "kube-system")
        self.assertEqual(localpath.node_paths(config["data"], "n1"), ["/srv/volumes"])

    def test_node_paths_errors_in_the_provisioners_words(self) -> None:
        data = {"config.json": '{"nodePathMap":[{"node":"n1","paths":["/a"]}]}'}
        self.assertEqual(localpath.node_paths(data, "n1"), ["/a"])
        with self.assertRaises(ValueError) as raised:
            localpath.node_paths(data, "n2")
        self.assertEqual(
            str(raised.exception),
            "config doesn't contain node n2, and no DEFAULT_PATH_FOR_NON_LISTED_NODES available",
        )


class BinderTests(VolumeTestCase):
    def test_binds_a_claim_to_the_smallest_matching_volume_on_both_sides(self) -> None:
        self.add_volume("big", storage="10Gi")
        self.add_volume("small", storage="2Gi")
        self.add_volume("tiny", storage="500Mi")
        self.add_volume("other-class", storage="2Gi", storage_class="fast")
        created = self.add_claim("data", storage_class="")
        claim = self.claim("data")
        self.assertEqual(claim["spec"]["volumeName"], "small")
        self.assertEqual(
            claim["status"],
            {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "2Gi"}},
        )
        annotations = claim["metadata"]["annotations"]
        self.assertEqual(annotations["pv.kubernetes.io/bind-completed"], "yes")
        self.assertEqual(annotations["pv.kubernetes.io/bound-by-controller"], "yes")
        volume = self.volume("small")
        self.assertEqual(volume["status"]["phase"], "Bound")
        self.assertEqual(
            (volume["spec"]["claimRef"]["name"], volume["spec"]["claimRef"]["uid"]),
            ("data", created["metadata"]["uid"]),
        )
        self.assertEqual(
            volume["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"], "yes"
        )
        self.assertEqual(self.volume("big")["status"]["phase"], "Available")

    def test_a_claim_naming_its_volume_is_bound_to_it_and_a_selector_limits(self) -> None:
        self.add_volume("chosen", storage="5Gi")
        self.add_volume("labelled", storage="5Gi", metadata={"labels": {"tier": "db"}})
        self.add_claim("named", storage_class="", volumeName="chosen")
        self.add_claim("selective", storage_class="", selector={"matchLabels": {"tier": "db"}})
        self.assertEqual(self.claim("named")["status"]["phase"], "Bound")
        self.assertNotIn(
            "pv.kubernetes.io/bound-by-controller", self.claim("named")["metadata"]["annotations"]
        )
        self.assertEqual(self.claim("selective")["spec"]["volumeName"], "labelled")

    def test_no_match_without_a_class_waits_with_failed_binding(self) -> None:
        self.add_volume("small", storage="1Gi", accessModes=["ReadOnlyMany"])
        self.add_claim("data", storage="1Gi", storage_class="")
        self.assertEqual(self.claim("data")["status"]["phase"], "Pending")
        self.assertEqual(
            self.events("data"),
            [
                (
                    "Warning",
                    "FailedBinding",
                    "no persistent volumes available for this claim and no storage class is set",
                )
            ],
        )
        self.add_volume("fits", storage="3Gi")
        self.assertEqual(self.claim("data")["spec"]["volumeName"], "fits")

    def test_wait_for_first_consumer_claims_wait_for_the_scheduler(self) -> None:
        self.add_volume("static", storage="5Gi", storage_class="local-path")
        self.add_claim("data")
        claim = self.claim("data")
        self.assertEqual(claim["status"]["phase"], "Pending")
        self.assertNotIn("volumeName", claim["spec"])
        self.assertEqual(
            self.events("data"),
            [
                (
                    "Normal",
                    "WaitForFirstConsumer",
                    "waiting for first consumer to be created before binding",
                )
            ],
        )

    def test_released_volumes_are_kept_or_fail_by_their_policy(self) -> None:
        self.add_volume("kept", storage="1Gi", policy="Retain")
        self.add_volume("deleted", storage="2Gi", policy="Delete")
        self.add_claim("a", storage="1Gi", storage_class="")
        self.add_claim("b", storage="2Gi", storage_class="")
        self.assertEqual(self.claim("b")["spec"]["volumeName"], "deleted")
        self.server.delete("", "persistentvolumeclaims", "a", "default")
        self.server.delete("", "persistentvolumeclaims", "b", "default")
        self.assertEqual(self.volume("kept")["status"]["phase"], "Released")
        failed = self.volume("deleted")
        message = (
            'error getting deleter volume plugin for volume "deleted": '
            "no deletable volume plugin matched"
        )
        self.assertEqual(
            (failed["status"]["phase"], failed["status"]["message"]), ("Failed", message)
        )
        self.assertEqual(self.events("deleted"), [("Warning", "VolumeFailedDelete", message)])

    def test_a_bound_claim_whose_volume_is_deleted_is_lost(self) -> None:
        self.add_volume("only", storage="1Gi")
        self.add_claim("data", storage_class="")
        self.assertEqual(self.claim("data")["status"]["phase"], "Bound")
        self.server.delete("", "persistentvolumes", "only")
        self.assertEqual(self.claim("data")["status"]["phase"], "Lost")
        self.assertIn(
            (
                "Warning",
                "ClaimLost",
                "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
            ),
            self.events("data"),
        )

    def test_best_match_prefers_the_volume_reserved_for_the_claim(self) -> None:
        claim = claim_object("c", storage_class="")
        claim["metadata"]["uid"] = "u1"
        free = volume_object("free", storage="1Gi")
        reserved = volume_object(
            "reserved", storage="9Gi", claimRef={"namespace": "default", "name": "c"}
        )
        taken = volume_object(
            "taken", storage="1Gi", claimRef={"namespace": "default", "name": "x"}
        )
        self.assertEqual(best_match([free, reserved, taken], claim), reserved)
        self.assertIsNone(best_match([free, taken], claim, reserved_only=True))


class ProvisionerTests(VolumeTestCase):
    def setUp(self) -> None:
        super().setUp()
        node = node_object("n1", labels={HOSTNAME: "host-1"})
        node["status"]["nodeInfo"] = {"containerRuntimeVersion": "containerd://1.7.23-k3s1"}
        self.server.create("", "nodes", node)

    def test_a_claim_with_a_selected_node_gets_a_local_volume_there(self) -> None:
        created = self.add_claim("data", storage="2Gi")
        uid = created["metadata"]["uid"]
        self.select_node("data", "n1")
        name = f"pvc-{uid}"
        claim = self.claim("data")
        self.assertEqual(claim["spec"]["volumeName"], name)
        self.assertEqual(claim["status"]["phase"], "Bound")
        self.assertEqual(
            claim["metadata"]["annotations"]["volume.kubernetes.io/storage-provisioner"],
            "rancher.io/local-path",
        )
        volume = self.volume(name)
        self.assertEqual(volume["spec"]["local"], {"path": f"{STORAGE}/{name}_default_data"})
        self.assertEqual(volume["spec"]["capacity"], {"storage": "2Gi"})
        self.assertEqual(volume["spec"]["persistentVolumeReclaimPolicy"], "Delete")
        self.assertEqual(volume["spec"]["storageClassName"], "local-path")
        self.assertEqual(volume["spec"]["claimRef"]["uid"], uid)
        self.assertEqual(
            volume["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"],
            [{"key": HOSTNAME, "operator": "In", "values": ["host-1"]}],
        )
        self.assertEqual(
            volume["metadata"]["annotations"],
            {
                "pv.kubernetes.io/provisioned-by": "rancher.io/local-path",
                "local.path.provisioner/selected-node": "n1",
            },
        )
        self.assertEqual(volume["status"]["phase"], "Bound")
        self.assertEqual(
            self.events("data"),
            [
                (
                    "Normal",
                    "WaitForFirstConsumer",
                    "waiting for first consumer to be created before binding",
                ),
                (
                    "Normal",
                    "ExternalProvisioning",
                    "Waiting for a volume to be created either by the external provisioner "
                    "'rancher.io/local-path' or manually by the system administrator. If volume "
                    "creation is delayed, please verify that the provisioner is running and "
                    "correctly registered.",
                ),
                (
                    "Normal",
                    "Provisioning",
                    'External provisioner is provisioning volume for claim "default/data"',
                ),
                ("Normal", "ProvisioningSucceeded", f"Successfully provisioned volume {name}"),
            ],
        )

    def released(self) -> str:
        """A provisioned volume whose claim was deleted: its name."""
        uid = self.add_claim("data", storage="2Gi")["metadata"]["uid"]
        self.select_node("data", "n1")
        self.assertTrue(self.server.exists("", "persistentvolumes", f"pvc-{uid}"))
        self.server.delete("", "persistentvolumeclaims", "data", "default")
        return f"pvc-{uid}"

    def helper_finished(self, name: str, phase: str) -> None:
        """The node ran the helper pod C{name} to C{phase}."""
        pods = self.server.resource("", "pods")
        helper = self.server.get("", "pods", name, "kube-system")
        helper["status"] = {"phase": phase}
        self.server.run(self.server.store.update(pods, "kube-system", name, helper, "status"))

    def test_a_released_volume_is_torn_down_on_its_node_then_deleted(self) -> None:
        name = self.released()
        self.assertEqual(self.volume(name)["status"]["phase"], "Released")
        helper = self.server.get("", "pods", f"helper-pod-delete-{name}", "kube-system")
        spec = helper["spec"]
        self.assertEqual((spec["nodeName"], spec["restartPolicy"]), ("n1", "Never"))
        path = f"{STORAGE}/{name}_default_data"
        (container,) = spec["containers"]
        self.assertEqual(container["image"], localpath.BUSYBOX)
        self.assertEqual(container["command"], ["/bin/sh", "/script/teardown"])
        self.assertEqual(
            container["args"],
            ["-p", path, "-s", str(2 * 1024**3), "-m", "Filesystem", "-a", "delete"],
        )
        self.assertIn({"name": "VOL_DIR", "value": path}, container["env"])
        volumes = {v["name"]: v for v in spec["volumes"]}
        self.assertEqual(
            volumes["helper-data-volume"]["hostPath"],
            {"path": STORAGE, "type": "DirectoryOrCreate"},
        )
        self.assertEqual(volumes["script"]["configMap"]["name"], "local-path-config")
        self.assertEqual(
            {m["name"]: m["mountPath"] for m in container["volumeMounts"]},
            {"helper-data-volume": STORAGE, "script": "/script"},
        )
        self.helper_finished(f"helper-pod-delete-{name}", "Succeeded")
        self.assertFalse(self.server.exists("", "persistentvolumes", name))
        self.assertFalse(self.server.exists("", "pods", f"helper-pod-delete-{name}", "kube-system"))

    def test_a_volume_on_a_node_that_runs_no_pods_is_deleted_at_once(self) -> None:
        self.add_node("bare")  # --container-runtime none: runc://unknown, or nothing
        uid = self.add_claim("data")["metadata"]["uid"]
        self.select_node("data", "bare")
        self.assertTrue(self.server.exists("", "persistentvolumes", f"pvc-{uid}"))
        self.server.delete("", "persistentvolumeclaims", "data", "default")
        self.assertFalse(self.server.exists("", "persistentvolumes", f"pvc-{uid}"))
        helper = f"helper-pod-delete-pvc-{uid}"
        self.assertFalse(self.server.exists("", "pods", helper, "kube-system"))

    def test_a_helper_that_does_not_succeed_in_time_is_retried(self) -> None:
        name = self.released()
        helper = f"helper-pod-delete-{name}"
        first = self.server.get("", "pods", helper, "kube-system")["metadata"]["uid"]
        self.helper_finished(helper, "Failed")
        self.clock.advance(localpath.HELPER_TIMEOUT - 1)
        self.assertTrue(self.server.exists("", "persistentvolumes", name))
        self.assertEqual(self.events(name), [])
        self.clock.advance(1)
        self.assertIn(
            ("Warning", "VolumeFailedDelete", "create process timeout after 120 seconds"),
            self.events(name),
        )
        # Removed, and made again after the back-off.
        self.clock.advance(60)
        again = self.server.get("", "pods", helper, "kube-system")["metadata"]["uid"]
        self.assertNotEqual(again, first)
        self.helper_finished(helper, "Succeeded")
        self.assertFalse(self.server.exists("", "persistentvolumes", name))

    def test_a_retained_volume_is_released_not_deleted(self) -> None:
        retain = localpath.storage_class()
        retain["metadata"] = {"name": "keep", "annotations": {}}
        retain["reclaimPolicy"] = "Retain"
        self.server.create("storage.k8s.io", "storageclasses", retain)
        uid = self.add_claim("data", storage_class="keep")["metadata"]["uid"]
        self.select_node("data", "n1")
        volume = self.volume(f"pvc-{uid}")
        self.assertEqual(
            volume["spec"]["hostPath"],
            {"path": f"{STORAGE}/pvc-{uid}_default_data", "type": "DirectoryOrCreate"},
        )
        self.server.delete("", "persistentvolumeclaims", "data", "default")
        self.assertEqual(self.volume(f"pvc-{uid}")["status"]["phase"], "Released")

    def test_claims_the_provisioner_cannot_serve_fail_with_its_reason(self) -> None:
        self.add_claim("shared", accessModes=["ReadWriteMany"])
        self.select_node("shared", "n1")
        self.assertEqual(self.claim("shared")["status"]["phase"], "Pending")
        self.assertIn(
            (
                "Warning",
                "ProvisioningFailed",
                'failed to provision volume with StorageClass "local-path": NodePath only '
                "supports ReadWriteOnce and ReadWriteOncePod (1.22+) access modes",
            ),
            self.events("shared"),
        )


class VolumeBindingTests(VolumeTestCase):
    scheduler = True

    def pod(self, name: str) -> Object:
        return self.server.get("", "pods", name, "default")

    def add_pod(self, name: str, *claims: str, **spec: Any) -> None:
        self.server.create("", "pods", pod_with_claims(name, *claims, **spec), "default")

    def unschedulable(self, name: str) -> str:
        condition = find_condition(self.pod(name), "PodScheduled")
        assert condition is not None
        self.assertEqual(condition["reason"], "Unschedulable")
        return str(condition["message"])

    def test_a_pod_of_a_missing_claim_waits_for_it(self) -> None:
        self.add_node("n1")
        self.add_pod("web", "data")
        self.assertEqual(
            self.unschedulable("web"),
            '0/1 nodes are available: persistentvolumeclaim "data" not found. preemption: '
            "0/1 nodes are available: 1 Preemption is not helpful for scheduling.",
        )
        self.add_claim("data")
        self.clock.advance(1)
        self.assertEqual(self.pod("web")["spec"]["nodeName"], "n1")

    def test_first_consumer_chooses_the_node_and_binds_after_the_claim(self) -> None:
        self.add_node("n1", cpu="1")
        self.add_node("n2", cpu="8")
        uid = self.add_claim("data")["metadata"]["uid"]
        self.add_pod("web", "data", cpu="2")
        self.assertEqual(self.pod("web")["spec"]["nodeName"], "n2")
        claim = self.claim("data")
        self.assertEqual(
            claim["metadata"]["annotations"]["volume.kubernetes.io/selected-node"], "n2"
        )
        self.assertEqual(claim["spec"]["volumeName"], f"pvc-{uid}")
        self.assertEqual(
            self.volume(f"pvc-{uid}")["metadata"]["annotations"][
                "local.path.provisioner/selected-node"
            ],
            "n2",
        )

    def test_a_static_volume_of_a_delayed_class_is_reserved_by_the_scheduler(self) -> None:
        self.server.create("storage.k8s.io", "storageclasses", MANUAL)
        self.add_node("n1")
        self.add_node("n2")
        self.add_volume("static", storage="5Gi", storage_class="manual", node="n2")
        self.add_claim("data", storage_class="manual")
        self.add_pod("web", "data")
        self.assertEqual(self.pod("web")["spec"]["nodeName"], "n2")
        self.assertEqual(self.claim("data")["spec"]["volumeName"], "static")
        self.assertNotIn(
            "volume.kubernetes.io/selected-node",
            self.claim("data")["metadata"].get("annotations", {}),
        )

    def test_a_bound_volumes_node_affinity_filters_nodes(self) -> None:
        self.add_node("n1")
        self.add_volume("pinned", storage="1Gi", node="n2")
        self.add_claim("data", storage_class="")
        self.assertEqual(self.claim("data")["spec"]["volumeName"], "pinned")
        self.add_pod("web", "data")
        self.assertEqual(
            self.unschedulable("web"),
            "0/1 nodes are available: 1 node(s) had volume node affinity conflict. preemption: "
            "0/1 nodes are available: 1 Preemption is not helpful for scheduling.",
        )
        self.add_node("n2")
        self.clock.advance(1)
        self.assertEqual(self.pod("web")["spec"]["nodeName"], "n2")

    def test_an_unbound_immediate_claim_keeps_the_pod_off_every_node(self) -> None:
        self.add_node("n1")
        self.add_claim("data", storage_class="")
        self.add_pod("web", "data")
        self.assertEqual(
            self.unschedulable("web"),
            "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims. "
            "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.",
        )

    def test_no_volume_and_no_provisioner_rejects_the_node(self) -> None:
        self.server.create("storage.k8s.io", "storageclasses", MANUAL)
        self.add_node("n1")
        self.add_claim("data", storage_class="manual")
        self.add_pod("web", "data")
        self.assertIn(
            "1 node(s) didn't find available persistent volumes to bind", self.unschedulable("web")
        )

    def test_prebind_gives_up_when_the_claim_is_never_bound(self) -> None:
        manual = localpath.storage_class()
        manual["metadata"] = {"name": "elsewhere", "annotations": {}}
        manual["provisioner"] = "example.com/absent"
        self.server.create("storage.k8s.io", "storageclasses", manual)
        self.add_node("n1")
        self.add_claim("data", storage_class="elsewhere")
        self.add_pod("web", "data")
        self.assertNotIn("nodeName", self.pod("web")["spec"])
        self.assertEqual(
            self.claim("data")["metadata"]["annotations"]["volume.kubernetes.io/selected-node"],
            "n1",
        )
        self.clock.advance(BIND_TIMEOUT)
        self.assertNotIn("nodeName", self.pod("web")["spec"])
        self.assertIn(
            (
                "Warning",
                "FailedScheduling",
                'running PreBind plugin "VolumeBinding": binding volumes: '
                "context deadline exceeded",
            ),
            self.events("web"),
        )
        # Tried again: a volume made meanwhile is reserved for the claim this time.
        self.add_volume("late", storage="1Gi", storage_class="elsewhere", node="n1")
        self.clock.advance(BIND_TIMEOUT)
        self.clock.advance(1)
        self.assertEqual(self.claim("data")["spec"]["volumeName"], "late")
        self.assertEqual(self.pod("web")["spec"]["nodeName"], "n1")


class DefaultStorageClassTests(VolumeTestCase):
    def test_a_claim_naming_no_class_gets_the_newest_default(self) -> None:
        self.add_claim("plain", storage_class=None)
        self.assertEqual(self.claim("plain")["spec"]["storageClassName"], "local-path")
        self.clock.advance(5)
        newer = dict(
            MANUAL, metadata={"name": "newer", "annotations": {localpath.DEFAULT_CLASS: "true"}}
        )
        self.server.create("storage.k8s.io", "storageclasses", newer)
        self.add_claim("later", storage_class=None)
        self.assertEqual(self.claim("later")["spec"]["storageClassName"], "newer")

    def test_an_empty_class_or_the_beta_annotation_is_left_alone(self) -> None:
        self.add_claim("none", storage_class="")
        self.assertEqual(self.claim("none")["spec"]["storageClassName"], "")
        beta = {"annotations": {"volume.beta.kubernetes.io/storage-class": "old"}}
        self.add_claim("legacy", storage_class=None, metadata=beta)
        self.assertNotIn("storageClassName", self.claim("legacy")["spec"])
