"""
Resource metrics of real pods: ``k3s-server --container-runtime containerd``
in a test machine runs a Deployment whose pod spins on its CPU limit (200m)
and an idle pod.  The kubelet's ``/stats/summary``, ``/metrics/resource`` and
``/metrics/cadvisor`` (read through the API server's node proxy) report both
pods from containerd;
``kubectl top pods`` shows the busy one using CPU, ``--containers`` its
container, ``kubectl top nodes`` the node; and a HorizontalPodAutoscaler on
the Deployment reads its CPU utilization from them and scales it up.

Needs root, Debian's containerd, containernetworking-plugins and
busybox-static, as tests/test_pods_machine.py does.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from tests.support.images import BUSYBOX_IMAGE
from tests.test_pods_machine import PodsInAMachine

#: A Deployment whose one container spins within a 200m CPU limit.
BUSY = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "busy", "namespace": "default"},
    "spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "busy"}},
        "template": {
            "metadata": {"labels": {"app": "busy"}},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "spin",
                        "image": BUSYBOX_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["/bin/sh", "-c", "while :; do :; done"],
                        "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "200m"}},
                    }
                ],
            },
        },
    },
}


def _millicores(text: str) -> int:
    """kubectl top's CPU column (``199m``, ``1``) in millicores."""
    return int(text[:-1]) if text.endswith("m") else int(text) * 1000


class PodMetricsInAMachineTests(PodsInAMachine):
    timeout = 300

    def raw(self, path: str) -> Any:
        return json.loads(self.kubectl(f"get --raw {path}"))

    def running(self, selector: str) -> list[dict[str, Any]]:
        found = json.loads(self.kubectl(f"get pods -l {selector} -o json"))["items"]
        return [p for p in found if (p.get("status") or {}).get("phase") == "Running"]

    def test_top_summary_metrics_and_autoscaling(self) -> None:
        node = self.start_server("server.log")
        self.apply(BUSY)
        self.kubectl(
            f"run idle --image={BUSYBOX_IMAGE} --image-pull-policy=IfNotPresent"
            " --labels=app=idle --command -- /bin/sleep 3600"
        )
        # A pod that has finished (its sandbox stopped) is no obstacle to the others' figures.
        self.kubectl(
            f"run done --image={BUSYBOX_IMAGE} --image-pull-policy=IfNotPresent"
            " --restart=Never --command -- /bin/true"
        )
        self.until("busy Running", lambda: bool(self.running("app=busy")))
        self.until("idle Running", lambda: bool(self.running("app=idle")))
        self.until(
            "done Succeeded",
            lambda: (self.pod("done").get("status") or {}).get("phase") == "Succeeded",
        )
        (busy,) = self.running("app=busy")
        busy_name = busy["metadata"]["name"]

        # The kubelet's summary: both pods, with containerd's figures.
        summary = self.raw("/api/v1/nodes/m1/proxy/stats/summary")
        pods = {p["podRef"]["name"]: p for p in summary["pods"]}
        self.assertLessEqual({busy_name, "idle"}, set(pods))
        spinning = pods[busy_name]
        self.assertEqual(spinning["podRef"]["uid"], busy["metadata"]["uid"])
        (spin,) = spinning["containers"]
        self.assertEqual(spin["name"], "spin")
        self.assertGreater(spin["cpu"]["usageCoreNanoSeconds"], 0)
        self.assertGreater(spin["memory"]["workingSetBytes"], 0)
        self.assertGreater(pods["idle"]["memory"]["workingSetBytes"], 0)
        self.assertEqual(spinning["network"]["name"], "eth0")
        self.assertGreater(spinning["ephemeral-storage"]["capacityBytes"], 0)
        self.assertIn("logs", spin)
        volumes = {v["name"] for v in pods["idle"]["volume"]}
        self.assertTrue(any(v.startswith("kube-api-access-") for v in volumes), volumes)
        self.assertGreater(summary["node"]["runtime"]["imageFs"]["usedBytes"], 0)
        # A second summary a moment later has the rate.
        time.sleep(1.5)
        summary = self.raw("/api/v1/nodes/m1/proxy/stats/summary?only_cpu_and_memory=true")
        spin = next(p for p in summary["pods"] if p["podRef"]["name"] == busy_name)
        self.assertGreater(spin["containers"][0]["cpu"]["usageNanoCores"], 50_000_000)
        self.assertNotIn("network", spin)

        text = self.kubectl("get --raw /api/v1/nodes/m1/proxy/metrics/resource")
        labels = f'container="spin",namespace="default",pod="{busy_name}"'
        series = f"container_cpu_usage_seconds_total{{{labels}}}"
        self.assertRegex(text, re.escape(series) + r" [0-9.e+]+ \d{13}\n")
        self.assertIn("resource_scrape_error 0\n", text)
        # cAdvisor's names: the container's CPU, and the pod's own network.
        text = self.kubectl("get --raw /api/v1/nodes/m1/proxy/metrics/cadvisor")
        labels = f'container="spin",cpu="total",namespace="default",pod="{busy_name}"'
        series = f"container_cpu_usage_seconds_total{{{labels}}}"
        self.assertRegex(text, re.escape(series) + r" [0-9.e+]+ \d{13}\n")
        received = 'container_network_receive_bytes_total{container="",interface="eth0",'
        self.assertIn(received + f'namespace="default",pod="{busy_name}"}}', text)

        # kubectl top: the busy pod near its limit, the idle one near nothing.
        def top_pods() -> dict[str, list[str]]:
            lines = self.kubectl("top pods --no-headers").splitlines()
            return {line.split()[0]: line.split()[1:] for line in lines}

        self.until("kubectl top pods lists both", lambda: {busy_name, "idle"} <= set(top_pods()))
        tops = top_pods()
        self.assertGreaterEqual(_millicores(tops[busy_name][0]), 100, tops)
        self.assertLess(_millicores(tops["idle"][0]), 50, tops)
        self.assertTrue(tops[busy_name][1].endswith("Mi"), tops)
        metrics = self.raw("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods")["items"]
        memory = {m["metadata"]["name"]: m["containers"][0]["usage"]["memory"] for m in metrics}
        for name in (busy_name, "idle"):
            self.assertNotEqual(memory[name], "0", memory)
        containers = self.kubectl(f"top pods {busy_name} --containers --no-headers").split()
        self.assertEqual(containers[:2], [busy_name, "spin"])
        (node_line,) = self.kubectl("top nodes --no-headers").splitlines()
        self.assertEqual(node_line.split()[0], "m1")
        self.assertGreater(_millicores(node_line.split()[1]), 100)

        # The autoscaler reads the busy pod's utilization (near 200 % of its request).
        self.kubectl("autoscale deployment busy --cpu-percent=50 --min=1 --max=2")

        def autoscaled() -> bool:
            status = json.loads(self.kubectl("get hpa busy -o json")).get("status") or {}
            return status.get("desiredReplicas") == 2

        self.until("the autoscaler scales busy to 2", autoscaled, timeout=90)
        status = json.loads(self.kubectl("get hpa busy -o json"))["status"]
        self.assertGreater(status["currentCPUUtilizationPercentage"], 100, status)
        events = self.kubectl("get events --field-selector involvedObject.name=busy")
        self.assertIn("New size: 2; reason: cpu resource utilization", events)
        self.kubectl("delete deployment busy --wait=false")
        self.kubectl("delete pod idle done --wait=false")
        self.stop_node(node)
