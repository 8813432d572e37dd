"""
The node's container runtime for real: containerd started by k3stw's
supervisor (L{NodeRuntime}) inside a test machine (its own network, mount and
PID namespaces, k3s's paths private to it), the airgap images imported from
``agent/images``, and a busybox ``httpd`` run through the CRI client as the
kubelet will: sandbox, container, start, status, HTTP from inside the
machine, stop, remove; then containerd stopped with the node's SIGTERM.

Needs root, Debian's containerd, containernetworking-plugins and
busybox-static (run-tests.sh installs them): without them the test fails.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import cast

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from k3stw.kubelet.cri import api_pb2 as api
from k3stw.kubelet.cri.client import CRIClient
from k3stw.kubelet.cri.runtime import CRIError, Runtime
from tests.support.images import BUSYBOX_IMAGE, INDEX_HTML, PAUSE, write_airgap_images
from tests.support.machines import Machine, machines

#: What the node process runs: k3stw's runtime service and nothing else.
RUNTIME_TAC = """
from pathlib import Path
from twisted.application.service import Application
from twisted.internet import reactor
from k3stw.kubelet.containerd import NodeRuntime, RuntimeSettings

application = Application("node-runtime")
runtime = NodeRuntime(reactor, Path("/var/lib/rancher/k3s"), RuntimeSettings())
runtime.setServiceParent(application)
runtime.when_ready().addCallback(lambda _: print("RUNTIME READY", flush=True))
"""

#: The pod network: a bridge in the machine, host-local addresses, loopback.
CONFLIST = {
    "cniVersion": "1.0.0",
    "name": "cbr0",
    "plugins": [
        {
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": True,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.42.0.0/24"}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        },
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}
START_TIMEOUT = 60.0
reactor = cast(IReactorThreads, _reactor)


class NodeInAMachine(TestCase):
    """A test that runs a node in C{self.machine}: its start, containerd's pid, its stop."""

    timeout = 180
    work: Path
    machine: Machine

    def launch(
        self, arguments: str, log_name: str, ready: str, machine: Machine | None = None
    ) -> int:
        """
        Run ``twistd -n`` with C{arguments} in the machine (C{self.machine}
        unless another is given) until its log says C{ready}; the host pid of
        its twistd.  A node that does not get there fails the test.
        """
        twistd = Path(sys.executable).with_name("twistd")
        self.log = self.work / log_name
        launcher = (machine or self.machine).spawn(
            f"exec {twistd} -n --pidfile= {arguments}", self.log
        )
        node = 0

        def stop() -> None:
            # After a failure: SIGTERM to a node still running (the machine's end does the rest).
            if launcher.poll() is None and node and Path(f"/proc/{node}").exists():
                os.kill(node, signal.SIGTERM)
            launcher.wait(30)

        self.addCleanup(stop)
        deadline = time.monotonic() + START_TIMEOUT
        while ready not in self.log.read_text(errors="replace"):
            if launcher.poll() is not None or time.monotonic() > deadline:
                self.fail(f"{ready!r} not logged:\n{self.log.read_text()}")
            time.sleep(0.1)
        children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
        node = int(children[0])
        return node

    def containerd_pid(self) -> int:
        """The pid (in the machine's numbering) of the containerd the last log started."""
        started = self.log.read_text().rsplit("Started containerd (pid ", 1)[1]
        return int(started.split(")", 1)[0])

    def stop_node(self, node: int) -> None:
        """SIGTERM to the node, which stops containerd and exits by itself."""
        containerd = self.containerd_pid()
        os.kill(node, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{node}").exists():
            self.assertLess(time.monotonic(), deadline, "the node did not stop on SIGTERM")
            time.sleep(0.05)
        # containerd's pid is the machine's own numbering: ask the machine.
        self.machine.run(f"test ! -e /proc/{containerd}")
        self.assertIn("Stopping containerd", self.log.read_text())


class ContainerdInAMachineTests(NodeInAMachine):
    def setUp(self) -> None:
        self.work = Path(self.mktemp()).absolute()
        self.machine = machines(self, self.work / "machines", 1)[0]
        self.machine.boot(runtime=True)
        data = self.machine.rancher / "k3s"
        write_airgap_images(data / "agent" / "images", compress="zst")
        cni = data / "agent" / "etc" / "cni" / "net.d"
        cni.mkdir(parents=True)
        (cni / "10-test.conflist").write_text(json.dumps(CONFLIST))

    def start_node(self, log_name: str = "node.log") -> int:
        """Start the node's runtime in the machine; the host pid of its twistd."""
        tac = self.work / "runtime.tac"
        tac.write_text(RUNTIME_TAC)
        return self.launch(f"--logfile=- -y {tac}", log_name, "RUNTIME READY")

    def test_server_node_reports_containerd(self) -> None:
        """
        ``k3s-server --container-runtime=containerd`` with k3s's default paths:
        its node registers with containerd's version and stops containerd on SIGTERM.
        """
        node = self.launch(
            "k3s-server --container-runtime containerd --bind-address 127.0.0.1"
            " --node-ip 127.0.0.1 --node-name m1",
            "server.log",
            "Successfully registered node m1",
        )
        registered = json.loads(
            self.machine.run("kubectl --kubeconfig /etc/rancher/k3s/k3s.yaml get node m1 -o json")
        )
        version = registered["status"]["nodeInfo"]["containerRuntimeVersion"]
        self.assertTrue(version.startswith("containerd://1.6."), version)
        self.assertTrue(
            self.machine.path("/var/lib/rancher/k3s/agent/containerd/containerd.log").exists()
        )
        self.stop_node(node)

    def test_busybox_httpd_runs_and_is_removed(self) -> Deferred[None]:
        node = self.start_node()
        socket = self.machine.path("/run/k3s/containerd/containerd.sock")
        client = CRIClient(reactor, f"unix://{socket}", timeout=30)
        self.addCleanup(client.close)
        return Deferred.fromCoroutine(self.run_pod(client, self.machine, node))

    async def run_pod(self, runtime: Runtime, machine: Machine, node: int) -> None:
        version = await runtime.version()
        self.assertEqual(version.runtime_name, "containerd")
        self.assertTrue(version.runtime_version.startswith("1.6"), version.runtime_version)
        tags = {tag for image in await runtime.list_images() for tag in image.repo_tags}
        self.assertLessEqual({PAUSE, BUSYBOX_IMAGE}, tags)

        uid = str(uuid.uuid4())
        metadata = api.PodSandboxMetadata(name="web", namespace="default", uid=uid)
        sandbox = api.PodSandboxConfig(
            metadata=metadata,
            hostname="web",
            log_directory=f"/var/log/pods/default_web_{uid}",
            linux=api.LinuxPodSandboxConfig(
                cgroup_parent=f"{machine.cgroup_parent}/pod{uid}",
                security_context=api.LinuxSandboxSecurityContext(
                    seccomp=api.SecurityProfile(
                        profile_type=api.SecurityProfile.ProfileType.RuntimeDefault
                    )
                ),
            ),
        )
        sandbox_id = await runtime.run_pod_sandbox(sandbox)
        container = api.ContainerConfig(
            metadata=api.ContainerMetadata(name="httpd"),
            image=api.ImageSpec(image=BUSYBOX_IMAGE),
            command=["/bin/httpd", "-f", "-p", "80", "-h", "/www"],
            log_path="httpd/0.log",
        )
        container_id = await runtime.create_container(sandbox_id, container, sandbox)
        self.assertEqual(
            (await runtime.container_status(container_id)).state, api.CONTAINER_CREATED
        )
        await runtime.start_container(container_id)
        status = await runtime.container_status(container_id)
        self.assertEqual(status.state, api.CONTAINER_RUNNING)

        ip = (await runtime.pod_sandbox_status(sandbox_id)).network.ip
        self.assertTrue(ip.startswith("10.42.0."), ip)
        self.assertEqual(self.fetch(ip), INDEX_HTML.decode())
        exec_result = await runtime.exec_sync(container_id, ["/bin/cat", "/www/index.html"], 10)
        self.assertEqual((exec_result.exit_code, exec_result.stdout), (0, INDEX_HTML))

        # containerd killed: the supervisor starts it again, and it finds the pod running.
        killed = self.containerd_pid()
        machine.run(f"kill -KILL {killed}")
        await self.until_answers(runtime, lambda: self.containerd_pid() != killed)
        self.assertEqual(
            (await runtime.container_status(container_id)).state, api.CONTAINER_RUNNING
        )
        # The node stopped and started again (k3s's KillMode=process): the pod outlives it.
        self.stop_node(node)
        self.assertEqual(self.fetch(ip), INDEX_HTML.decode())
        node = self.start_node("node-again.log")
        self.assertEqual(
            (await runtime.container_status(container_id)).state, api.CONTAINER_RUNNING
        )

        await runtime.stop_container(container_id, 2)
        stopped = await runtime.container_status(container_id)
        self.assertEqual(stopped.state, api.CONTAINER_EXITED)
        await runtime.remove_container(container_id)
        await runtime.stop_pod_sandbox(sandbox_id)
        await runtime.remove_pod_sandbox(sandbox_id)
        self.assertEqual(await runtime.list_containers(), [])
        self.assertEqual(await runtime.list_pod_sandboxes(), [])
        with self.assertRaises(CRIError) as gone:
            await runtime.container_status(container_id)
        self.assertTrue(gone.exception.not_found, str(gone.exception))

        self.stop_node(node)

    def fetch(self, ip: str) -> str:
        """The pod's page, fetched from inside the machine (httpd may still be binding its port)."""
        deadline = time.monotonic() + 10
        while True:
            try:
                return self.machine.run(f"busybox wget -q -O - http://{ip}/", timeout=10)
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    async def until_answers(self, runtime: Runtime, started: Callable[[], bool]) -> None:
        """Wait (on the reactor) until C{started} and the runtime answers again."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if started():
                try:
                    await runtime.version()
                    return
                except CRIError:
                    pass
            self.assertLess(time.monotonic(), deadline, self.log.read_text())
            await deferLater(_reactor, 0.1, lambda: None)
