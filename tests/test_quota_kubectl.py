"""
ResourceQuotas and LimitRanges with the real kubectl against a real
``twistd -n k3s-server``: the resourcequota controller's counts in ``kubectl
describe quota``, a pod over a quota refused in kube's words, and a
LimitRange's defaults on a pod that states no resources.
"""

from __future__ import annotations

import json

from tests.support.kubectl import KubectlServerCase

HOST = "127.0.0.161"

_POD = """
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
spec:
  containers:
  - name: app
    image: busybox
    resources:
      requests:
        cpu: {cpu}
"""


class QuotaKubectlTests(KubectlServerCase):
    host = HOST

    def wait_for_no_pods_used(self) -> None:
        """Until the controller has counted the quota (again) with no pods."""
        self.kubectl(
            "wait",
            "-n",
            "quota",
            "--for=jsonpath={.status.used.pods}=0",
            "resourcequota/compute",
            "--timeout=30s",
        )

    def test_a_quota_counts_pods_and_refuses_one_over_it(self) -> None:
        self.kubectl("create", "namespace", "quota")
        self.kubectl("create", "quota", "compute", "-n", "quota", "--hard=pods=2,requests.cpu=1")
        self.wait_for_no_pods_used()
        self.kubectl(
            "create", "-f", "-", stdin=_POD.format(name="small", namespace="quota", cpu="500m")
        )
        error = self.kubectl_fails(
            "create", "-f", "-", stdin=_POD.format(name="big", namespace="quota", cpu="2")
        )
        self.assertIn(
            'pods "big" is forbidden: exceeded quota: compute, requested: requests.cpu=2, '
            "used: requests.cpu=500m, limited: requests.cpu=1",
            error,
        )
        self.assertIn("Error from server (Forbidden)", error)
        described = self.kubectl("describe", "quota", "compute", "-n", "quota")
        rows = {line.split()[0]: line.split()[1:] for line in described.splitlines()[4:]}
        self.assertEqual(rows["pods"], ["1", "2"])
        self.assertEqual(rows["requests.cpu"], ["500m", "1"])
        self.kubectl("delete", "pod", "small", "-n", "quota", "--wait=false")
        self.wait_for_no_pods_used()

    def test_a_limit_range_defaults_a_pods_resources(self) -> None:
        self.kubectl("create", "namespace", "limited")
        limit_range = {
            "apiVersion": "v1",
            "kind": "LimitRange",
            "metadata": {"name": "defaults", "namespace": "limited"},
            "spec": {
                "limits": [
                    {
                        "type": "Container",
                        "default": {"cpu": "500m", "memory": "128Mi"},
                        "defaultRequest": {"cpu": "100m"},
                        "max": {"cpu": "1"},
                    }
                ]
            },
        }
        self.kubectl("create", "-f", "-", stdin=json.dumps(limit_range))
        self.kubectl("run", "plain", "-n", "limited", "--image=busybox")
        pod = json.loads(self.kubectl("get", "pod", "plain", "-n", "limited", "-o", "json"))
        self.assertEqual(
            pod["spec"]["containers"][0]["resources"],
            {
                "limits": {"cpu": "500m", "memory": "128Mi"},
                "requests": {"cpu": "100m", "memory": "128Mi"},
            },
        )
        self.assertEqual(
            pod["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
            "LimitRanger plugin set: cpu, memory request for container plain; "
            "cpu, memory limit for container plain",
        )
        big = _POD.format(name="big", namespace="limited", cpu="2").replace("requests", "limits")
        error = self.kubectl_fails("create", "-f", "-", stdin=big)
        self.assertIn(
            'pods "big" is forbidden: maximum cpu usage per Container is 1, but limit is 2', error
        )
