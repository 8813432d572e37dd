"""
``bench/controlplane.py`` at a tiny scale (3 hollow nodes, 10 pods, a
Deployment of 10), so that the benchmark cannot rot: a real server, its
scheduler and controllers, the hollow nodes kept Ready by their Leases.
"""

from __future__ import annotations

import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

# The benchmarks are scripts, which import their siblings from their own directory.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from controlplane import Plan, Run, hollow_node, node_lease, report, run

HOST = "127.0.0.47"


class HollowNodeTests(SynchronousTestCase):
    def test_node_is_ready_and_labelled(self) -> None:
        """A hollow node registers Ready, with its hostname label and a kubelet's size."""
        node = hollow_node("hollow-0001", 1, 0.0)
        self.assertEqual(node["metadata"]["labels"]["kubernetes.io/hostname"], "hollow-0001")
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        self.assertEqual(ready[0]["status"], "True")
        self.assertEqual(node["status"]["allocatable"]["pods"], "110")
        self.assertNotIn("unschedulable", node["spec"])
        self.assertTrue(hollow_node("hollow-0001", 1, 0.0, unschedulable=True)["spec"])

    def test_lease_is_owned_by_its_node(self) -> None:
        """The Lease names its node as holder and owner, as a kubelet's does."""
        node = hollow_node("hollow-0002", 2, 0.0)
        node["metadata"]["uid"] = "u-2"
        lease = node_lease(node, 1.5)
        self.assertEqual(lease["spec"]["holderIdentity"], "hollow-0002")
        self.assertEqual(lease["metadata"]["ownerReferences"][0]["uid"], "u-2")
        self.assertEqual(lease["spec"]["renewTime"], "1970-01-01T00:00:01.500000Z")


class TinyRunTests(TestCase):
    timeout = 120

    async def test_tiny_run(self) -> None:
        """
        Every phase binds every pod over the hollow nodes, which stay Ready,
        and the report states the goals.
        """
        result: Run = await run(reactor, Plan(nodes=3, pods=10, replicas=10, rounds=1), HOST)
        (only,) = result.rounds
        self.assertGreater(only.pods_bound, 0)
        self.assertGreater(only.backlog_rate, 0)
        self.assertGreater(only.deployment_bound, 0)
        # Ten pods over three empty nodes: the scores spread them.
        self.assertGreaterEqual(only.spread[0], 3)
        self.assertLessEqual(only.spread[1], 4)
        self.assertGreater(only.holding_rss, result.idle_rss / 2)
        text = report(result)
        self.assertIn("| 10 pods: first create to all bound, pods bound/s |", text)
        self.assertIn("Goals (issue 17)", text)
