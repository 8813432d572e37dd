"""
Sidecars and local-path teardown for real: ``k3s-server --container-runtime
containerd`` in a test machine, as tests/test_pods_machine.py runs it.

A job-like pod (``restartPolicy: Never``) whose sidecar serves HTTP: the init
container after it fetches the sidecar's page (so the sidecar started first),
the main container reads it and exits 0, and the pod is Succeeded with its
sidecar stopped.  A ``local-path`` claim's pod writes into its volume; the
claim deleted, a helper pod removes the directory on the node and the volume
is deleted.

Needs root, Debian's containerd, containernetworking-plugins and
busybox-static, as tests/test_containerd_machine.py does.
"""

from __future__ import annotations

import json
from typing import Any

from tests.support.images import BUSYBOX_IMAGE
from tests.test_pods_machine import PodsInAMachine, busybox


def job(name: str, volume: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """A pod that runs once (``restartPolicy: Never``) with one volume."""
    settings = {"restartPolicy": "Never", "terminationGracePeriodSeconds": 2, **spec}
    metadata = {"name": name, "namespace": "default"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {**settings, "volumes": [volume]},
    }


WORK = [{"name": "work", "mountPath": "/work"}]
SIDECAR_POD = job(
    "job",
    {"name": "work", "emptyDir": {}},
    initContainers=[
        busybox(
            "web",
            *("httpd", "-f", "-p", "8080", "-h", "/www"),
            restartPolicy="Always",
            startupProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 1},
        ),
        busybox(
            "fetch",
            *("wget", "-q", "-O", "/work/page", "http://127.0.0.1:8080/"),
            volumeMounts=WORK,
        ),
    ],
    containers=[
        busybox(
            "main", *("/bin/sh", "-c", "grep -q k3stw /work/page && sleep 8"), volumeMounts=WORK
        )
    ],
)
CLAIM = {
    "apiVersion": "v1",
    "kind": "PersistentVolumeClaim",
    "metadata": {"name": "data", "namespace": "default"},
    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}},
}
WRITER = job(
    "writer",
    {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
    containers=[
        busybox(
            "writer",
            *("/bin/sh", "-c", "echo kept > /data/file"),
            volumeMounts=[{"name": "data", "mountPath": "/data"}],
        )
    ],
)
HELPER_POD = (
    "apiVersion: v1\nkind: Pod\nmetadata:\n  name: helper-pod\nspec:\n  containers:\n"
    f"  - name: helper-pod\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: IfNotPresent\n"
)


class SidecarsInAMachineTests(PodsInAMachine):
    def status(self, name: str, container: str) -> dict[str, Any]:
        status = self.pod(name).get("status") or {}
        every = [*(status.get("initContainerStatuses") or ()), *status.get("containerStatuses", ())]
        return next((s for s in every if s["name"] == container), {})

    def test_a_sidecar_serves_the_next_init_container_and_stops_after_the_job(self) -> None:
        node = self.start_server("server.log")
        self.until("the default service account", lambda: "default" in self.kubectl("get sa"))
        self.apply(SIDECAR_POD)

        def running_with_its_sidecar() -> bool:
            web = self.status("job", "web")
            return "running" in self.status("job", "main").get("state", {}) and bool(
                web.get("ready")
            )

        self.until("main running beside a ready sidecar", running_with_its_sidecar)
        self.assertEqual(self.pod("job")["status"]["phase"], "Running")
        self.assertEqual(self.condition("job", "Initialized"), "True")
        self.assertEqual(self.status("job", "fetch")["state"]["terminated"]["exitCode"], 0)

        self.until("job Succeeded", lambda: self.pod("job")["status"]["phase"] == "Succeeded")
        self.assertEqual(self.status("job", "main")["state"]["terminated"]["exitCode"], 0)
        self.assertIn("terminated", self.status("job", "web")["state"])
        ctr = "ctr -a /run/k3s/containerd/containerd.sock -n k8s.io"
        self.assertEqual(self.machine.run(f"{ctr} tasks ls -q").split(), [])
        self.kubectl("delete pod job --wait=false")
        self.until("job gone", lambda: "job" not in self.kubectl("get pods -o name"))
        self.stop_node(node)

    def test_a_released_local_path_volume_is_removed_on_its_node(self) -> None:
        node = self.start_server("server.log")
        self.until("the default service account", lambda: "default" in self.kubectl("get sa"))
        # The helper pods run the image this machine has (k3s's airgap images carry its own).
        patch = json.dumps({"data": {"helperPod.yaml": HELPER_POD}})
        self.kubectl(f"patch configmap local-path-config -n kube-system --type merge -p '{patch}'")
        self.apply(CLAIM)
        self.apply(WRITER)
        self.until(
            "writer Succeeded", lambda: self.pod("writer")["status"].get("phase") == "Succeeded"
        )
        claim = json.loads(self.kubectl("get pvc data -o json"))
        name = claim["spec"]["volumeName"]
        volume = json.loads(self.kubectl(f"get pv {name} -o json"))
        directory = self.machine.path(volume["spec"]["local"]["path"])
        self.assertEqual((directory / "file").read_text(), "kept\n")

        self.kubectl("delete pod writer --wait=false")
        self.kubectl("delete pvc data --wait=false")
        self.until("the volume deleted", lambda: name not in self.kubectl("get pv -o name"))
        self.assertFalse(directory.exists())
        self.until(
            "the helper pod gone",
            lambda: "helper-pod" not in self.kubectl("get pods -n kube-system -o name"),
        )
        self.stop_node(node)
