"""
The DaemonSet and StatefulSet controllers in a real ``k3s-server`` with its
own node and a ``k3s-agent``, driven with the real kubectl: a DaemonSet gets a
pod for each node, each pod's required node affinity naming its node; a
StatefulSet of two creates ``web-1`` only once ``web-0`` is Running and
Ready (marked so through the status subresource: no kubelet runs pods yet).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from twisted.trial.unittest import SynchronousTestCase

from tests.test_join import Cluster

SERVER_HOST = "127.0.0.56"
AGENT_HOST = "127.0.0.57"

DAEMONSET = {
    "apiVersion": "apps/v1",
    "kind": "DaemonSet",
    "metadata": {"name": "agent", "namespace": "default"},
    "spec": {
        "selector": {"matchLabels": {"app": "agent"}},
        "template": {
            "metadata": {"labels": {"app": "agent"}},
            "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]},
        },
    },
}

STATEFULSET = {
    "apiVersion": "apps/v1",
    "kind": "StatefulSet",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {
        "replicas": 2,
        "serviceName": "web",
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]},
        },
    },
}


class WorkloadControllerTests(SynchronousTestCase):
    cluster: ClassVar[Cluster]

    @classmethod
    def setUpClass(cls) -> None:
        cls.cluster = Cluster.with_agents("k3stw-workloads-", SERVER_HOST, {"worker": AGENT_HOST})

    @classmethod
    def tearDownClass(cls) -> None:
        cls.cluster.stop()

    def apply(self, obj: dict[str, Any]) -> None:
        path = self.cluster.root / f"{obj['metadata']['name']}.json"
        path.write_text(json.dumps(obj))
        applied = self.cluster.kubectl("apply", "-f", str(path))
        self.assertEqual(applied.returncode, 0, applied.stderr)

    def pods(self, selector: str) -> list[dict[str, Any]]:
        listed = self.cluster.kubectl("get", "pods", "-l", selector, "-o", "json")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        items: list[dict[str, Any]] = json.loads(listed.stdout)["items"]
        return items

    def test_a_daemonset_pod_per_node_with_affinity_to_it(self) -> None:
        self.apply(DAEMONSET)
        self.cluster.wait(lambda: len(self.pods("app=agent")) == 2, "a daemon pod per node")
        placed = []
        for pod in self.pods("app=agent"):
            terms = pod["spec"]["affinity"]["nodeAffinity"][
                "requiredDuringSchedulingIgnoredDuringExecution"
            ]["nodeSelectorTerms"]
            [field] = terms[0]["matchFields"]
            self.assertEqual((field["key"], field["operator"]), ("metadata.name", "In"))
            placed += field["values"]
            self.assertIn("controller-revision-hash", pod["metadata"]["labels"])
        self.assertEqual(sorted(placed), ["server", "worker"])

        def counted() -> bool:
            got = self.cluster.kubectl("get", "ds", "agent", "-o", "json")
            status = json.loads(got.stdout).get("status", {}) if got.returncode == 0 else {}
            return status.get("desiredNumberScheduled") == status.get("currentNumberScheduled") == 2

        self.cluster.wait(counted, "the DaemonSet's status")

    def test_a_statefulset_creates_web_1_once_web_0_is_ready(self) -> None:
        self.apply(STATEFULSET)
        self.cluster.wait(lambda: len(self.pods("app=web")) == 1, "web-0")
        [pod] = self.pods("app=web")
        self.assertEqual(pod["metadata"]["name"], "web-0")
        self.assertEqual(pod["spec"]["hostname"], "web-0")

        # The controller has counted web-0 (its sync is over), and made nothing more.
        def observed() -> bool:
            got = self.cluster.kubectl("get", "sts", "web", "-o", "json")
            status = json.loads(got.stdout).get("status", {}) if got.returncode == 0 else {}
            return status.get("replicas") == 1 and status.get("observedGeneration") == 1

        self.cluster.wait(observed, "the StatefulSet's status")
        self.assertEqual([p["metadata"]["name"] for p in self.pods("app=web")], ["web-0"])
        status = {
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
            }
        }
        patched = self.cluster.kubectl(
            "patch",
            "pod",
            "web-0",
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps(status),
        )
        self.assertEqual(patched.returncode, 0, patched.stderr)
        self.cluster.wait(lambda: len(self.pods("app=web")) == 2, "web-1")
        self.assertEqual(
            sorted(p["metadata"]["name"] for p in self.pods("app=web")), ["web-0", "web-1"]
        )
