"""
Pods run for real: ``k3s-server --container-runtime containerd`` in a test
machine (its own network, mount and PID namespaces), the busybox images in
``agent/images``, the bridge conflist the node writes from its podCIDR.

``kubectl run`` inside the machine starts a busybox ``httpd`` pod that becomes
Running and Ready (its HTTP readiness and TCP liveness probes passing) with an
IP of the node's podCIDR and answers HTTP, a crashing pod reaches
CrashLoopBackOff with its restarts counted, and ``kubectl delete`` stops both
and removes their sandboxes.

A pod with volumes: its init container's file reaches the main container
through an emptyDir; its configMap, secret and ``kube-api-access-*`` files are
there inside the container (read with ``ctr task exec``, beneath the
kubelet: ``kubectl exec`` is tests/test_pod_exec_machine.py's) and under
``/var/lib/kubelet/pods/<uid>/volumes``; a configMap update reaches the file
in place and makes a failing readiness probe pass (Ready False, then True);
k3stw stopped and started again adopts the running containers (same IDs, no
restart); ``kubectl delete`` removes its containers and its volumes.

Needs root, Debian's containerd, containernetworking-plugins and
busybox-static, as tests/test_containerd_machine.py does.
"""

from __future__ import annotations

import ipaddress
import json
import os
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


class PodsInAMachine(NodeInAMachine):
    """A runtime machine with the busybox images, and kubectl in it."""

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

    def apply(self, obj: dict[str, Any]) -> None:
        manifest = self.work / f"{obj['kind']}-{obj['metadata']['name']}.json"
        manifest.write_text(json.dumps(obj))
        self.kubectl(f"apply -f {manifest}")

    def pod(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.kubectl(f"get pod {name} -o json"))
        return found

    def condition(self, name: str, kind: str) -> str | None:
        conditions = (self.pod(name).get("status") or {}).get("conditions") or ()
        return next((c["status"] for c in conditions if c["type"] == kind), None)

    #: Flags the server gets besides those L{start_server} gives.
    server_flags = ""

    def start_server(self, log_name: str) -> int:
        """k3stw's server with containerd, its node m1 registered; the host pid of its twistd."""
        return self.launch(
            "k3s-server --container-runtime containerd --bind-address 127.0.0.1"
            f" --node-ip 127.0.0.1 --node-name m1{self.server_flags}"
            f" --kubelet-arg cgroup-root={self.machine.cgroup_parent}",
            log_name,
            "Successfully registered node m1",
        )

    def pod_cgroups(self, uids: list[str]) -> list[Path]:
        """The cgroups of the pods C{uids} in every hierarchy (runc's ``pod<uid>``)."""
        kubepods = f"{self.machine.cgroup_parent.strip('/')}/kubepods"
        return [
            path
            for uid in uids
            for pattern in (f"*/{kubepods}/pod{uid}", f"*/{kubepods}/*/pod{uid}")
            for path in Path("/sys/fs/cgroup").glob(pattern)
        ]

    def until(self, what: str, check: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                self.fail(f"{what} did not happen:\n{self.log.read_text(errors='replace')[-4000:]}")
            time.sleep(0.5)


class PodsInAMachineTests(PodsInAMachine):
    def test_kubectl_run_pods_run_crash_and_are_deleted(self) -> Deferred[None]:
        node = self.start_server("server.log")
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
        # The kubelet's legacy link to its log.
        web_id = main["containerID"].removeprefix("containerd://")
        link = self.machine.path(f"/var/log/containers/web_default_web-{web_id}.log")
        self.assertEqual(
            os.readlink(link),
            f"/var/log/pods/default_web_{self.pod('web')['metadata']['uid']}/web/0.log",
        )
        events = self.kubectl("get events --field-selector involvedObject.name=web -o json")
        reasons = {e["reason"] for e in json.loads(events)["items"]}
        self.assertLessEqual({"Pulled", "Created", "Started"}, reasons)
        self.assertNotIn("Unhealthy", reasons)

        self.kubectl(
            f"run crash --image={BUSYBOX_IMAGE} --image-pull-policy=IfNotPresent"
            " --command -- /bin/sh -c 'echo bye > /dev/termination-log; exit 3'"
        )

        def crash_looping() -> bool:
            statuses = (self.pod("crash").get("status") or {}).get("containerStatuses") or []
            waiting = (statuses[0]["state"].get("waiting") or {}) if statuses else {}
            return waiting.get("reason") == "CrashLoopBackOff" and statuses[0]["restartCount"] >= 1

        self.until("crash in CrashLoopBackOff", crash_looping)
        (crashed,) = self.pod("crash")["status"]["containerStatuses"]
        self.assertEqual(crashed["lastState"]["terminated"]["exitCode"], 3)
        # What it wrote to its termination message file.
        self.assertEqual(crashed["lastState"]["terminated"]["message"], "bye\n")
        self.assertIn("restarting failed container=crash", crashed["state"]["waiting"]["message"])

        uids = [self.pod(name)["metadata"]["uid"] for name in ("web", "crash")]
        self.assertTrue(self.pod_cgroups(uids), "runc made no pod cgroups")
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
            # runc leaves the pods' cgroups; the kubelet removes them with the sandboxes.
            while self.pod_cgroups(uids):
                self.assertLess(time.monotonic(), deadline, "the pods' cgroups were not removed")
                await _sleep(0.5)
            self.stop_node(node)

        return Deferred.fromCoroutine(removed())


async def _sleep(seconds: float) -> None:
    await deferLater(cast(IReactorTime, reactor), seconds, lambda: None)


#: A pod with every kind of volume the issue names: an init container writes
#: into an emptyDir the main container reads; a configMap, a secret and (added by
#: admission) the service account's projected token; a readiness probe that
#: passes once the configMap holds the key ``ready``.
def busybox(name: str, *command: str, **fields: Any) -> dict[str, Any]:
    """A container of the machine's busybox image running C{command}."""
    image = {"image": BUSYBOX_IMAGE, "imagePullPolicy": "IfNotPresent"}
    return {"name": name, **image, "command": list(command), **fields}


VOLUMES_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "vols", "namespace": "default"},
    "spec": {
        "terminationGracePeriodSeconds": 2,
        "initContainers": [
            busybox(
                "init",
                *("/bin/sh", "-c", "echo from-init > /work/init.txt"),
                volumeMounts=[{"name": "work", "mountPath": "/work"}],
            )
        ],
        "containers": [
            busybox(
                "main",
                *("/bin/sh", "-c", "while true; do sleep 1; done"),
                readinessProbe={
                    "exec": {"command": ["/bin/cat", "/cfg/ready"]},
                    "periodSeconds": 1,
                },
                volumeMounts=[
                    {"name": "work", "mountPath": "/work"},
                    {"name": "cfg", "mountPath": "/cfg"},
                    {"name": "sec", "mountPath": "/sec"},
                ],
            )
        ],
        "volumes": [
            {"name": "work", "emptyDir": {}},
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {"name": "sec", "secret": {"secretName": "sec"}},
        ],
    },
}
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class PodVolumesInAMachineTests(PodsInAMachine):
    """One machine, one pod, every step of its life the issue asks to see for real."""

    def read(self, container_id: str, path: str) -> str:
        """A file as the container sees it (an exec through containerd's own client)."""
        return self.machine.run(
            "ctr -a /run/k3s/containerd/containerd.sock -n k8s.io task exec"
            f" --exec-id read-{time.monotonic_ns()} {container_id} /bin/cat {path}"
        )

    def main_status(self) -> dict[str, Any]:
        statuses = (self.pod("vols").get("status") or {}).get("containerStatuses") or [{}]
        found: dict[str, Any] = statuses[0]
        return found

    def test_volumes_probes_restart_adoption_and_deletion(self) -> None:
        node = self.start_server("server.log")
        config_map = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "cfg", "namespace": "default"},
            "data": {"greeting": "hello"},
        }
        self.apply(config_map)
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "sec", "namespace": "default"},
            "stringData": {"token": "s3cret"},
        }
        self.apply(secret)
        self.until("the default service account", lambda: "default" in self.kubectl("get sa"))
        self.apply(VOLUMES_POD)

        self.until("vols Running", lambda: self.main_status().get("started") is True)
        pod = self.pod("vols")
        uid = pod["metadata"]["uid"]
        (init,) = pod["status"]["initContainerStatuses"]
        self.assertEqual(init["state"]["terminated"]["exitCode"], 0)
        self.assertEqual(self.condition("vols", "Initialized"), "True")
        main = self.main_status()
        container_id = main["containerID"].removeprefix("containerd://")

        # What the main container sees: the init container's file, its volumes' files.
        self.assertEqual(self.read(container_id, "/work/init.txt"), "from-init\n")
        self.assertEqual(self.read(container_id, "/cfg/greeting"), "hello")
        self.assertEqual(self.read(container_id, "/sec/token"), "s3cret")
        (access,) = [v for v in pod["spec"]["volumes"] if v["name"].startswith("kube-api-access-")]
        self.assertEqual(self.read(container_id, f"{TOKEN_DIR}/namespace"), "default")
        self.assertEqual(self.read(container_id, f"{TOKEN_DIR}/token").count("."), 2)
        self.assertIn("BEGIN CERTIFICATE", self.read(container_id, f"{TOKEN_DIR}/ca.crt"))
        # ... which the kubelet keeps where kube does.
        volumes = f"/var/lib/kubelet/pods/{uid}/volumes"
        self.assertEqual(
            self.machine.run(f"cat {volumes}/kubernetes.io~configmap/cfg/greeting"), "hello"
        )
        self.machine.run(f"test -d {volumes}/kubernetes.io~projected/{access['name']}")

        # The readiness probe fails (no /cfg/ready): the pod is not Ready.
        self.until("an Unhealthy event", lambda: "Unhealthy" in self.reasons("vols"))
        self.assertEqual(self.condition("vols", "Ready"), "False")
        # The configMap changes: its files change in place and the probe passes.
        config_map["data"] = {"greeting": "bye", "ready": "yes"}
        self.apply(config_map)
        self.until("vols Ready", lambda: self.condition("vols", "Ready") == "True", timeout=40)
        self.assertEqual(self.read(container_id, "/cfg/greeting"), "bye")
        self.assertEqual(self.main_status()["containerID"], main["containerID"])

        # k3stw stops and starts again: the containers run on and are adopted.
        self.stop_node(node)
        node = self.start_server("server-again.log")
        # Only the new kubelet, syncing the adopted pod, brings this change to its file.
        config_map["data"] = {"greeting": "again", "ready": "yes"}
        self.apply(config_map)
        self.until(
            "the adopted pod's configMap file updated",
            lambda: self.read(container_id, "/cfg/greeting") == "again",
            timeout=40,
        )
        self.until("vols Ready again", lambda: self.condition("vols", "Ready") == "True")
        again = self.pod("vols")
        self.assertEqual(self.main_status()["containerID"], main["containerID"])
        self.assertEqual(self.main_status()["restartCount"], 0)
        self.assertEqual(
            again["status"]["initContainerStatuses"][0]["containerID"], init["containerID"]
        )
        self.assertEqual(self.read(container_id, "/work/init.txt"), "from-init\n")

        # Deleted: its containers stop, its sandbox and volumes go.
        self.kubectl("delete pod vols --wait=false")
        ctr = "ctr -a /run/k3s/containerd/containerd.sock -n k8s.io"
        self.until(
            "vols's containers removed",
            lambda: container_id not in self.machine.run(f"{ctr} containers ls -q"),
        )
        self.until(
            "vols's volumes removed",
            lambda: not self.machine.path(f"/var/lib/kubelet/pods/{uid}").exists(),
        )
        self.until("vols gone", lambda: "vols" not in self.kubectl("get pods -o name"))
        self.stop_node(node)

    def reasons(self, name: str) -> set[str]:
        events = self.kubectl(f"get events --field-selector involvedObject.name={name} -o json")
        return {e["reason"] for e in json.loads(events)["items"]}
