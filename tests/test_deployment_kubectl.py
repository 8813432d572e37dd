"""
Deployments through the real kubectl against a real ``twistd -n k3s-server``:
create, scale, ``set image`` (the rollout finishes once the test, playing
kubelet, marks the new pods Ready through the status subresource) and
``rollout history``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.support.kubectl import KubectlServer

HOST = "127.0.0.117"


class DeploymentKubectlTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = KubectlServer.start(self, HOST)

    def items(self, kind: str) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = json.loads(
            self.server.kubectl("get", kind, "-l", "app=web", "-o", "json")
        )["items"]
        return listed

    def images(self) -> set[str]:
        return {p["spec"]["containers"][0]["image"] for p in self.items("pods")}

    def revisions(self) -> list[str]:
        """The REVISION column of ``kubectl rollout history``."""
        history = self.server.kubectl("rollout", "history", "deployment/web")
        return [line.split()[0] for line in history.splitlines()[2:] if line.strip()]

    def wait_for(self, what: str, done: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {what}:\n{self.server.server.output[-3000:]}")
            time.sleep(0.2)

    def mark_pods_ready(self) -> None:
        """Play kubelet: every pod not Ready yet turns Running and Ready."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        ready = {"type": "Ready", "status": "True", "lastTransitionTime": now}
        status = {"status": {"phase": "Running", "conditions": [ready]}}
        for pod in self.items("pods"):
            conditions = pod.get("status", {}).get("conditions") or []
            if not any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                self.server.run(
                    "patch", "pod", pod["metadata"]["name"], "--subresource=status",
                    "--type=merge", "-p", json.dumps(status),
                )  # fmt: skip

    def test_create_scale_set_image_and_history(self) -> None:
        self.server.kubectl("create", "deployment", "web", "--image=nginx", "--replicas=3")
        self.wait_for("3 pods", lambda: len(self.items("pods")) == 3)
        [replicaset] = self.items("replicasets")
        hashed = replicaset["metadata"]["labels"]["pod-template-hash"]
        self.assertEqual(replicaset["metadata"]["name"], f"web-{hashed}")

        self.server.kubectl("scale", "deployment", "web", "--replicas=1")
        self.wait_for("1 pod", lambda: len(self.items("pods")) == 1)

        self.server.kubectl("set", "image", "deployment/web", "nginx=nginx:1.27")
        self.wait_for("a second ReplicaSet", lambda: len(self.items("replicasets")) == 2)

        def rolled_out() -> bool:
            """Whether the rollout is done (marking the pods it waits on Ready first)."""
            self.mark_pods_ready()
            return self.server.run(
                "rollout", "status", "deployment/web", "--watch=false"
            ).stdout.startswith('deployment "web" successfully rolled out')

        self.wait_for("the rollout", rolled_out)
        self.assertEqual(self.images(), {"nginx:1.27"})
        self.assertEqual(self.revisions(), ["1", "2"])

        # undo copies revision 1's template back: its ReplicaSet becomes revision 3.
        self.server.kubectl("rollout", "undo", "deployment/web")
        self.wait_for("the rollback", rolled_out)
        self.assertEqual(self.images(), {"nginx"})
        self.assertEqual(self.revisions(), ["2", "3"])
        self.assertEqual(len(self.items("replicasets")), 2)
        self.assertNotIn("Traceback", self.server.server.output)
