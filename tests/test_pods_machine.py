"""
Pods run for real: ``k3s-server --container-runtime containerd`` in a test
machine (its own network, mount and PID namespaces), the busybox images in
``agent/images``, a bridge CNI conflist; ``kubectl run`` inside the machine
starts a busybox ``httpd`` pod that becomes Running and Ready (its HTTP
readiness and TCP liveness probes passing) with a pod IP and answers HTTP,
a crashing pod reaches CrashLoopBackOff with its restarts counted, and
``kubectl delete`` stops both and removes their sandboxes.

Needs root, Debian's containerd, containernetworking-plugins and
busybox-static, as tests/test_containerd_machine.py does.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from k3stw.kubelet.cri.client import CRIClient
from tests.support.images import BUSYBOX_IMAGE, INDEX_HTML, write_airgap_images
from tests.support.machines import machines
from tests.test_containerd_machine import NodeInAMachine, reactor

KUBECTL = "kubectl --kubeconfig /etc/rancher/k3s/k3s.yaml"


class PodsInAMachineTests(NodeInAMachine):
    timeout = 240

    def setUp(self) -> None:
        self.work = Path(self.mktemp()).absolute()
        self.machine = machines(self, self.work / "machines", 1)[0]
        self.machine.boot(runtime=True)
        data = self.machine.rancher / "k3s"
        write_airgap_images(data / "agent" / "images")

    def fetch(self, ip: str) -> str:
        """The pod's page, fetched from inside the machine."""
        return self.machine.run(f"busybox wget -q -O - http://{ip}/", timeout=10)

    def kubectl(self, arguments: str) -> str:
        return self.machine.run(f"{KUBECTL} {arguments}")

    def pod(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.kubectl(f"get pod {name} -o json"))
        return found

    def until(self, what: str, check: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                self.fail(f"{what} did not happen:\n{self.log.read_text(errors='replace')[-4000:]}")
            time.sleep(0.5)

    def test_kubectl_run_pods_run_crash_and_are_deleted(self) -> Deferred[None]:
        node = self.launch(
            "k3s-server --container-runtime containerd --bind-address 127.0.0.1"
            " --node-ip 127.0.0.1 --node-name m1"
            f" --kubelet-arg cgroup-root={self.machine.cgroup_parent}",
            "server.log",
            "Successfully registered node m1",
        )
        probes = {
            "name": "web",
            "readinessProbe": {"httpGet": {"path": "/", "port": 80}, "periodSeconds": 1},
            "livenessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 1},
        }
        overrides = json.dumps(
            {"spec": {"terminationGracePeriodSeconds": 2, "containers": [probes]}}
        )
        self.kubectl(
            f"run web --image={BUSYBOX_IMAGE} --image-pull-policy=IfNotPresent"
            f" --override-type=strategic --overrides='{overrides}'"
            " --command -- /bin/httpd -f -p 80 -h /www"
        )

        def ready() -> bool:
            status = self.pod("web").get("status") or {}
            conditions = {c["type"]: c["status"] for c in status.get("conditions") or ()}
            return status.get("phase") == "Running" and conditions.get("Ready") == "True"

        self.until("web Running and Ready", ready)
        status = self.pod("web")["status"]
        ip = status["podIP"]
        # The node's conflist, written from the podCIDR the server gave it.
        cidr = json.loads(self.kubectl("get node m1 -o json"))["spec"]["podCIDR"]
        self.assertIn(ipaddress.ip_address(ip), ipaddress.ip_network(cidr))
        self.assertEqual(status["hostIP"], "127.0.0.1")
        (main,) = status["containerStatuses"]
        self.assertTrue(main["containerID"].startswith("containerd://"), main)
        self.assertEqual(main["restartCount"], 0)
        self.assertEqual(self.fetch(ip), INDEX_HTML.decode())
        events = self.kubectl("get events --field-selector involvedObject.name=web -o json")
        reasons = {e["reason"] for e in json.loads(events)["items"]}
        self.assertLessEqual({"Pulled", "Created", "Started"}, reasons)
        self.assertNotIn("Unhealthy", reasons)

        self.kubectl(
            f"run crash --image={BUSYBOX_IMAGE} --image-pull-policy=IfNotPresent"
            " --command -- /bin/sh -c 'exit 3'"
        )

        def crash_looping() -> bool:
            statuses = (self.pod("crash").get("status") or {}).get("containerStatuses") or []
            waiting = (statuses[0]["state"].get("waiting") or {}) if statuses else {}
            return waiting.get("reason") == "CrashLoopBackOff" and statuses[0]["restartCount"] >= 1

        self.until("crash in CrashLoopBackOff", crash_looping)
        (crashed,) = self.pod("crash")["status"]["containerStatuses"]
        self.assertEqual(crashed["lastState"]["terminated"]["exitCode"], 3)
        self.assertIn("restarting failed container=crash", crashed["state"]["waiting"]["message"])

        self.kubectl("delete pod web crash --wait=false")
        socket = self.machine.path("/run/k3s/containerd/containerd.sock")
        client = CRIClient(reactor, f"unix://{socket}", timeout=30)
        self.addCleanup(client.close)

        async def removed() -> None:
            deadline = time.monotonic() + 60
            while await client.list_pod_sandboxes():
                self.assertLess(time.monotonic(), deadline, "the pods' sandboxes were not removed")
                await _sleep(0.5)
            self.assertEqual(await client.list_containers(), [])
            self.stop_node(node)

        return Deferred.fromCoroutine(removed())


async def _sleep(seconds: float) -> None:
    await deferLater(cast(IReactorTime, reactor), seconds, lambda: None)
