"""
Two real servers on one PostgreSQL elect one kube-controller-manager: one
holds the Lease (and runs the loops) while the other waits, and when the
holder is stopped (SIGTERM) the other takes the Lease and its loops run.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.support.net import free_port
from tests.support.postgres import fresh_database_name, shared_postgres
from tests.support.twistd import Twistd, k3s_server

KUBECTL = "kubectl"
TOKEN = "leader-election-secret"
ACQUIRED = "successfully acquired lease kube-system/kube-controller-manager"


class LeaderFailoverTests(SynchronousTestCase):
    def start(self, root: Path, host: str, name: str, endpoint: str) -> tuple[Twistd, Path]:
        port = free_port(host)
        server = k3s_server(
            self, root, host, port, "--disable-agent", "--node-name", name,
            "--datastore-endpoint", endpoint, "--token", TOKEN,
        ).start()  # fmt: skip
        server.wait_for_answer(host, port)
        return server, root / "k3s.yaml"

    def kubectl(self, kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "K3S_"))}
        env.update(KUBECONFIG=str(kubeconfig), KUBECACHEDIR=str(kubeconfig) + ".cache")
        done = subprocess.run(
            [KUBECTL, *args], capture_output=True, text=True, env=env, timeout=60, input=stdin
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        return done.stdout

    def lease(self, kubeconfig: Path, name: str = "kube-controller-manager") -> dict[str, Any]:
        found = self.kubectl(kubeconfig, "-n", "kube-system", "get", "lease", name, "-o", "json")
        spec: dict[str, Any] = json.loads(found)["spec"]
        return spec

    def wait_for_holder(self, kubeconfig: Path, prefix: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                spec = self.lease(kubeconfig)
            except AssertionError:
                spec = {}
            if str(spec.get("holderIdentity", "")).startswith(prefix):
                return spec
            self.assertLess(time.monotonic(), deadline, f"{prefix} never held the lease: {spec}")
            time.sleep(0.2)

    def test_one_holder_and_takeover_after_sigterm(self) -> None:
        endpoint = shared_postgres().endpoint(fresh_database_name("leader"))
        root = Path(self.mktemp()).absolute()
        first, first_kubeconfig = self.start(root / "a", "127.0.0.44", "lead-a", endpoint)
        self.wait_for_holder(first_kubeconfig, "lead-a_", 30)
        second, kubeconfig = self.start(root / "b", "127.0.0.45", "lead-b", endpoint)
        # The holder keeps renewing; the other waits and runs none of the loops.
        renewed = self.lease(kubeconfig)["renewTime"]
        for _ in range(3):
            time.sleep(1.5)
            spec = self.lease(kubeconfig)
            self.assertTrue(spec["holderIdentity"].startswith("lead-a_"), spec)
            self.assertEqual(spec["leaseTransitions"], 0)
        self.assertNotEqual(spec["renewTime"], renewed)
        self.assertTrue(
            self.lease(kubeconfig, "kube-scheduler")["holderIdentity"].startswith("lead-a_")
        )
        self.assertIn(ACQUIRED, first.output)
        self.assertNotIn(ACQUIRED, second.output)

        first.stop()
        spec = self.wait_for_holder(kubeconfig, "lead-b_", 20)
        self.assertEqual(spec["leaseTransitions"], 1)
        self.assertIn(ACQUIRED, second.output)
        # kube-controller-manager's loops now run on the second server: node IPAM, say.
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "leader-test"}}
        self.kubectl(kubeconfig, "create", "-f", "-", stdin=json.dumps(node))
        deadline = time.monotonic() + 20
        while not (cidr := self.kubectl(kubeconfig, "get", "node", "leader-test", "-o",
                                        "jsonpath={.spec.podCIDR}")):  # fmt: skip
            self.assertLess(time.monotonic(), deadline, "the node never got a pod CIDR")
            time.sleep(0.2)
        self.assertEqual(cidr, "10.42.0.0/24")
        second.stop()
