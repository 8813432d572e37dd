"""
``kubectl top`` against real processes: a ``k3s-server`` with its own node
and a ``k3s-agent`` on loopback; the server reads both kubelets' summaries
(its own directly, the agent's through its tunnel) and answers
``metrics.k8s.io/v1beta1`` to the real kubectl.
"""

from __future__ import annotations

import json
import re
import tempfile
from functools import partial
from pathlib import Path
from typing import ClassVar

from twisted.trial.unittest import SynchronousTestCase

from k3stw.machinery.quantity import parse_quantity
from k3stw.machinery.times import parse_time
from tests.support.twistd import Twistd
from tests.test_join import Cluster

AGENT_HOST = "127.0.0.33"


class KubectlTopTests(SynchronousTestCase):
    cluster: ClassVar[Cluster]
    agent: ClassVar[Twistd]

    @classmethod
    def setUpClass(cls) -> None:
        cls.cluster = Cluster(Path(tempfile.mkdtemp(prefix="k3stw-top-"))).start()
        try:
            cls.agent = cls.cluster.agent("worker", AGENT_HOST).start()
            for name in ("server", "worker"):
                path = f"/api/v1/nodes/{name}/proxy/healthz"
                cls.cluster.wait(partial(cls.answers, path, "ok"), f"{name}'s kubelet")
        except BaseException:
            cls.cluster.stop()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.cluster.stop()

    @classmethod
    def answers(cls, path: str, text: str) -> bool:
        return cls.raw(path) == text

    @classmethod
    def raw(cls, path: str) -> str | None:
        found = cls.cluster.kubectl("get", "--raw", path)
        return found.stdout if found.returncode == 0 else None

    def test_kubectl_top_node(self) -> None:
        """Both nodes, with their CPU and memory use and the share of what each can allocate."""
        top = self.cluster.kubectl("top", "node")
        self.assertEqual(top.returncode, 0, top.stderr)
        header, *rows = top.stdout.splitlines()
        self.assertEqual(
            header.split(), ["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"]
        )
        self.assertEqual([row.split()[0] for row in rows], ["server", "worker"], top.stdout)
        for row in rows:
            _, cpu, cpu_share, memory, memory_share = row.split()
            self.assertRegex(cpu, r"^\d+m$")
            self.assertRegex(cpu_share, r"^\d+%$")
            self.assertRegex(memory, r"^[1-9]\d*Mi$")
            self.assertRegex(memory_share, r"^[1-9]\d*%$")

    def test_kubectl_top_pod_with_no_pods_running(self) -> None:
        """No pod runs yet: kubectl's own "No resources found"."""
        top = self.cluster.kubectl("top", "pod", "-A")
        self.assertEqual(top.returncode, 0, top.stderr)
        self.assertEqual(top.stdout, "")
        self.assertEqual(top.stderr.strip(), "No resources found")

    def test_the_raw_node_metrics(self) -> None:
        """A well-formed NodeMetricsList: quantities, RFC 3339 times, a Go duration window."""
        body = self.raw("/apis/metrics.k8s.io/v1beta1/nodes")
        assert body is not None
        listed = json.loads(body)
        self.assertEqual(
            (listed["kind"], listed["apiVersion"]), ("NodeMetricsList", "metrics.k8s.io/v1beta1")
        )
        self.assertEqual([i["metadata"]["name"] for i in listed["items"]], ["server", "worker"])
        for item in listed["items"]:
            self.assertEqual(set(item), {"metadata", "timestamp", "window", "usage"})
            self.assertEqual(
                item["metadata"]["labels"]["kubernetes.io/hostname"], item["metadata"]["name"]
            )
            self.assertIsNotNone(parse_time(item["timestamp"]))
            self.assertRegex(item["window"], r"^\d+(\.\d+)?s$")
            self.assertRegex(item["usage"]["cpu"], r"^(0|\d+[nm]?)$")
            self.assertRegex(item["usage"]["memory"], r"^\d+(Ki|Mi)$")
            self.assertGreater(parse_quantity(item["usage"]["memory"]).value, 0)

    def test_an_unknown_node(self) -> None:
        """kubectl top of a node that does not exist prints the server's 404."""
        top = self.cluster.kubectl("top", "node", "nope")
        self.assertNotEqual(top.returncode, 0)
        self.assertEqual(top.stderr.strip(), 'Error from server (NotFound): node "nope" not found')

    def test_the_group_is_discovered(self) -> None:
        """kubectl api-resources lists both resources of the group."""
        found = self.cluster.kubectl("api-resources", "--api-group=metrics.k8s.io", "-o", "name")
        self.assertEqual(found.returncode, 0, found.stderr)
        self.assertEqual(
            sorted(found.stdout.split()), ["nodes.metrics.k8s.io", "pods.metrics.k8s.io"]
        )
        self.assertTrue(re.search(r"^metrics\.k8s\.io/v1beta1$", self.api_versions(), re.M))

    def api_versions(self) -> str:
        versions = self.cluster.kubectl("api-versions")
        self.assertEqual(versions.returncode, 0, versions.stderr)
        return versions.stdout

    def test_view_users_read_metrics(self) -> None:
        """Metrics are for whom view allows (k3s's aggregated-metrics-reader), no one else."""
        path = "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods"
        before = self.cluster.kubectl("get", "--raw", path, "--as=alice")
        self.assertIn("forbidden", before.stderr)
        granted = self.cluster.kubectl(
            "create", "rolebinding", "alice-views", "--clusterrole=view", "--user=alice"
        )
        self.assertEqual(granted.returncode, 0, granted.stderr)
        # The view role aggregates the metrics reader: a controller, so it may take a moment.
        self.cluster.wait(
            lambda: self.cluster.kubectl("get", "--raw", path, "--as=alice").returncode == 0,
            "alice reading pod metrics",
            timeout=30,
        )
        listed = json.loads(self.cluster.kubectl("get", "--raw", path, "--as=alice").stdout)
        self.assertEqual(listed["kind"], "PodMetricsList")
