"""
``bench/pods.py`` at a tiny scale (2 pods one at a time, 2 at once, 1 s idle
samples), so that the benchmark cannot rot: the floor through CRI and the
k3stw server with containerd, both in one test machine.

Needs root, Debian's containerd, containernetworking-plugins and
busybox-static, as tests/test_pods_machine.py does.
"""

from __future__ import annotations

import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

# The benchmarks are scripts, which import their siblings from their own directory.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from pods import Bench, Plan, report


class TinyRunTests(SynchronousTestCase):
    def test_tiny_run(self) -> None:
        """
        Every phase times every pod, the footprints see the server, containerd
        and one shim per pod, and the report states the goals.
        """
        work = Path(self.mktemp()).absolute()
        result = Bench(self, work, Plan(sequential=2, pods=2, idle=1.0)).run()
        assert result.floor is not None and result.k3stw is not None
        for found in (result.floor, result.k3stw):
            self.assertEqual(len(found.sequential), 2)
            self.assertEqual(len(found.burst), 2)
            self.assertTrue(all(0 < t < 60 for t in [*found.sequential, *found.burst]))
            self.assertGreaterEqual(found.burst_total, max(found.burst) * 0.99)
        idle, busy = result.footprints
        self.assertEqual((idle.pods, busy.pods), (0, 2))
        self.assertGreater(idle.rss, 30)
        self.assertGreater(idle.containerd_rss, 5)
        self.assertEqual(busy.shims, 2)
        text = report(result)
        self.assertIn("| k3stw: pod create to its Ready condition, seen by a watch |", text)
        self.assertIn("Goals (issue 18)", text)
