"""
The horizontal pod autoscaler through the real kubectl against a real
``twistd -n k3s-server``: ``kubectl autoscale`` makes an HPA the controller
looks at after its 15-second sync period; with no node to measure the pods,
it reports the metric unknown and why, in kube's words.
"""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.support.kubectl import KubectlServer

HOST = "127.0.0.147"


class HorizontalKubectlTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = KubectlServer.start(self, HOST)

    def hpa(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(
            self.server.kubectl(
                "get", "horizontalpodautoscalers.v2.autoscaling", "web", "-o", "json"
            )
        )
        return found

    def test_autoscale_without_metrics_shows_unknown_and_why(self) -> None:
        self.server.kubectl("create", "deployment", "web", "--image=nginx", "--replicas=1")
        self.server.kubectl(
            "autoscale", "deployment", "web", "--min=1", "--max=3", "--cpu-percent=50"
        )
        deadline = time.monotonic() + 40
        while not self.hpa().get("status", {}).get("conditions"):
            if time.monotonic() > deadline:
                self.fail(
                    f"the HPA was never looked at: {self.hpa()}\n"
                    f"{self.server.kubectl('get', 'events', '-A')}\n"
                    f"{self.server.kubectl('get', 'pods', '-o', 'wide')}\n"
                    f"{self.server.server.output[-3000:]}"
                )
            time.sleep(0.5)
        conditions = {c["type"]: c for c in self.hpa()["status"]["conditions"]}
        self.assertEqual(conditions["AbleToScale"]["reason"], "SucceededGetScale")
        active = conditions["ScalingActive"]
        self.assertEqual((active["status"], active["reason"]), ("False", "FailedGetResourceMetric"))
        self.assertEqual(
            active["message"],
            "the HPA was unable to compute the replica count: failed to get cpu utilization: "
            "unable to get metrics for resource cpu: no metrics returned from resource metrics API",
        )
        listed = self.server.kubectl("get", "hpa", "web")
        self.assertIn("cpu: <unknown>/50%", listed)
        self.assertIn("Deployment/web", listed)
        events = self.server.kubectl("get", "events", "--field-selector", "involvedObject.name=web")
        self.assertIn("FailedGetResourceMetric", events)
        described = self.server.kubectl("describe", "hpa", "web")
        self.assertIn("<unknown> / 50%", described)
        self.assertIn("ScalingActive  False   FailedGetResourceMetric", described)
