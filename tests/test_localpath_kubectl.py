"""
A real server with its own node (no runtime), through the real kubectl:
k3s's ``local-path`` default class, a claim provisioned under the data
directory's ``storage`` once a pod uses it, the pod bound to the node, and
the volume deleted with the claim (the node runs no pods: no helper pod
tears it down, tests/test_sidecars_machine.py has that).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.test_join import Cluster

CLAIM_AND_POD = """
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 128Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers:
  - name: web
    image: busybox
    volumeMounts: [{name: data, mountPath: /data}]
  volumes:
  - name: data
    persistentVolumeClaim: {claimName: data}
"""


class LocalPathKubectlTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="k3stw-localpath-"))
        self.cluster = Cluster(self.root, host="127.0.0.186").start()
        self.addCleanup(self.cluster.stop)
        self.cluster.wait(lambda: self.cluster.node_status() == {"server": "True"}, "node Ready")

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        ran = self.cluster.kubectl(*args) if stdin is None else self._with_input(args, stdin)
        self.assertEqual(ran.returncode, 0, ran.stderr)
        return ran.stdout

    def _with_input(self, args: tuple[str, ...], stdin: str) -> subprocess.CompletedProcess[str]:
        manifest = self.root / "manifest.yaml"
        manifest.write_text(stdin)
        return self.cluster.kubectl(*[str(manifest) if a == "-" else a for a in args])

    def test_a_claim_of_the_default_class_is_provisioned_for_its_pod(self) -> None:
        classes = self.kubectl("get", "storageclass")
        self.assertRegex(
            classes,
            r"(?m)^local-path \(default\)\s+rancher\.io/local-path\s+Delete\s+"
            r"WaitForFirstConsumer\s+false\s+\S+$",
        )
        self.kubectl("apply", "-f", "-", stdin=CLAIM_AND_POD)

        def claim() -> Any:
            return json.loads(self.kubectl("get", "pvc", "data", "-o", "json"))

        bound = {
            "phase": "Bound",
            "accessModes": ["ReadWriteOnce"],
            "capacity": {"storage": "128Mi"},
        }
        self.cluster.wait(lambda: claim()["status"] == bound, "the claim Bound")
        uid = claim()["metadata"]["uid"]
        self.assertEqual(claim()["spec"]["storageClassName"], "local-path")
        volume = json.loads(self.kubectl("get", "pv", f"pvc-{uid}", "-o", "json"))
        storage = self.root / "server" / "data" / "storage"
        self.assertEqual(volume["spec"]["local"], {"path": f"{storage}/pvc-{uid}_default_data"})
        self.assertEqual(volume["status"]["phase"], "Bound")
        self.cluster.wait(
            lambda: (
                self.kubectl("get", "pod", "web", "-o", "jsonpath={.spec.nodeName}") == "server"
            ),
            "the pod bound to the node",
        )
        described = self.kubectl("describe", "pvc", "data")
        for reason in (
            "WaitForFirstConsumer",
            "ExternalProvisioning",
            "Provisioning",
            "ProvisioningSucceeded",
        ):
            self.assertIn(reason, described)
        self.kubectl("delete", "pod", "web", "--wait=false")
        self.kubectl("delete", "pvc", "data", "--wait=false")
        # This node runs no pods: no helper can tear the volume down there; it is deleted.
        self.cluster.wait(
            lambda: f"pvc-{uid}" not in self.kubectl("get", "pv", "-o", "name"),
            "the volume deleted",
        )
        helpers = self.kubectl("get", "pods", "-n", "kube-system", "-o", "name")
        self.assertNotIn("helper-pod", helpers)
