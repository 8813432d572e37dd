"""
A real ``twistd -n k3s-server``, the real kubectl and the kubernetes Python
client: a Service's Endpoints and EndpointSlices list the pods it selects
once they are Ready with IPs, and a PodDisruptionBudget counts them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from kubernetes import client, config
from twisted.trial.unittest import SynchronousTestCase

from tests.support.kubectl import KubectlServer

HOST = "127.0.0.117"

MANIFESTS = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web, namespace: default}
spec:
  minAvailable: 1
  selector: {matchLabels: {app: web}}
"""

POD = """\
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{app: web}}}}
spec:
  containers:
  - name: nginx
    image: nginx:1.27
    ports: [{{name: http, containerPort: 8080}}]
"""


class ServiceEndpointsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cluster = KubectlServer.start(self, HOST)
        kubeconfig = Path(self.cluster.env["KUBECONFIG"])
        self.api = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))

    def mark_ready(self, name: str, ip: str) -> None:
        """What a kubelet would post: Running, Ready, with its IP."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.api.patch_namespaced_pod_status(
            name,
            "default",
            {
                "status": {
                    "phase": "Running",
                    "podIP": ip,
                    "podIPs": [{"ip": ip}],
                    "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
                }
            },
        )

    def eventually(self, check: Callable[[], str], wanted: str) -> str:
        """C{check}'s output once it contains C{wanted} (controllers write in the background)."""
        deadline = time.monotonic() + 20
        while True:
            output = check()
            if wanted in output or time.monotonic() > deadline:
                self.assertIn(wanted, output)
                return output
            time.sleep(0.1)

    def test_endpoints_slices_and_budget(self) -> None:
        self.cluster.kubectl("apply", "-f", "-", stdin=MANIFESTS)
        # Pod IPs written into the pods' status only: no traffic goes to them.
        for name, ip in (("web-1", "10.42.0.5"), ("web-2", "10.42.0.6")):
            self.cluster.kubectl("apply", "-f", "-", stdin=POD.format(name=name))
            self.mark_ready(name, ip)
        endpoints = self.eventually(
            lambda: self.cluster.kubectl("get", "endpoints", "web"),
            "10.42.0.5:8080,10.42.0.6:8080",
        )
        self.assertEqual(endpoints.split()[:3], ["NAME", "ENDPOINTS", "AGE"])
        slices = self.eventually(
            lambda: self.cluster.kubectl(
                "get", "endpointslices", "-l", "kubernetes.io/service-name=web"
            ),
            "10.42.0.5,10.42.0.6",
        )
        [row] = slices.splitlines()[1:]
        self.assertTrue(row.startswith("web-"), row)
        self.assertEqual(row.split()[1:3], ["IPv4", "8080"])
        self.eventually(
            lambda: self.cluster.kubectl(
                "get", "pdb", "web", "-o", "jsonpath={.status.disruptionsAllowed}"
            ),
            "1",
        )
        header, row = self.cluster.kubectl("get", "pdb", "web").splitlines()
        self.assertRegex(header, r"^NAME\s+MIN AVAILABLE\s+MAX UNAVAILABLE\s+ALLOWED DISRUPTIONS")
        self.assertRegex(row, r"^web\s+1\s+N/A\s+1\s+")
