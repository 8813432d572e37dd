"""
``kubectl logs`` against real pods: ``k3s-server --container-runtime
containerd`` in a test machine (the server's own node: the request goes from
the API server to its own kubelet, not through a tunnel), with log rotation
made small (``--kubelet-arg container-log-max-size=4Ki
container-log-max-files=3``).

A busybox pod counts lines; ``kubectl logs`` reads them with ``--tail``,
``--since``, ``--timestamps`` and ``--limit-bytes``; ``kubectl logs -f``
streams them as they are written, without a gap across the kubelet's
rotations, until it is stopped; the rotated files are there, compressed, at
most three.  A crashing pod's ``--previous`` is its last instance's log, and
kube's words come back for a pod without a previous instance, a container
waiting for its image, and a container that is not the pod's.

The same through the agent's tunnel: a pod on an agent in a second machine,
read with ``kubectl logs`` and ``logs -f`` on the server's machine.  Both
measure ``logs -f`` latency (bench/streams_logs.py) and print it.

Needs root, Debian's containerd, containernetworking-plugins and
busybox-static, as tests/test_containerd_machine.py does.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.images import BUSYBOX_IMAGE, write_airgap_images
from tests.support.machines import machines
from tests.test_pods_machine import KUBECTL, PodsInAMachine

# The benchmarks are scripts, which import their siblings from their own directory.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from streams_logs import follow_latency, summary

COUNTER = "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.05; done"
STAMPED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z line \d+")


def numbers(text: str) -> list[int]:
    return [int(found) for found in re.findall(r"^line (\d+)$", text, re.MULTILINE)]


class PodLogsInAMachineTests(PodsInAMachine):
    timeout = 300

    def run_pod(self, name: str, command: str, image: str = BUSYBOX_IMAGE) -> None:
        self.kubectl(
            f"run {name} --image={image} --image-pull-policy=IfNotPresent"
            f" --command -- /bin/sh -c '{command}'"
        )

    def container_status(self, name: str) -> dict[str, Any]:
        statuses = (self.pod(name).get("status") or {}).get("containerStatuses") or [{}]
        found: dict[str, Any] = statuses[0]
        return found

    def restarts(self, name: str) -> int:
        return int(self.container_status(name).get("restartCount") or 0)

    def failing(self, arguments: str) -> str:
        """kubectl's error output of a command that must fail."""
        return self.machine.run(f"{self.kubectl_line(arguments)} 2>&1 && exit 1 || true").strip()

    def kubectl_line(self, arguments: str) -> str:
        return f"kubectl --kubeconfig /etc/rancher/k3s/k3s.yaml {arguments}"

    def test_kubectl_logs(self) -> None:
        self.launch(
            "k3s-server --container-runtime containerd --bind-address 127.0.0.1"
            " --node-ip 127.0.0.1 --node-name m1"
            f" --kubelet-arg cgroup-root={self.machine.cgroup_parent}"
            " --kubelet-arg container-log-max-size=4Ki --kubelet-arg container-log-max-files=3",
            "server.log",
            "Successfully registered node m1",
        )
        self.run_pod("counter", COUNTER)
        self.until(
            "counter running",
            lambda: "running" in (self.container_status("counter").get("state") or {}),
        )
        self.until("counter writing", lambda: len(numbers(self.kubectl("logs counter"))) >= 5)

        tail = numbers(self.kubectl("logs counter --tail=3"))
        self.assertEqual(len(tail), 3)
        self.assertEqual(tail, list(range(tail[0], tail[0] + 3)))
        stamped = self.kubectl("logs counter --timestamps --tail=2").splitlines()
        self.assertEqual(len(stamped), 2)
        for entry in stamped:
            self.assertRegex(entry, STAMPED)
        self.assertEqual(len(self.kubectl("logs counter --limit-bytes=7")), 7)
        time.sleep(2)
        recent = numbers(self.kubectl("logs counter --since=1s"))
        # About 20 lines a second, each a record of its own.
        self.assertTrue(5 <= len(recent) <= 40, recent)
        self.assertEqual(recent, list(range(recent[0], recent[0] + len(recent))))

        # Followed for 25 s, across two rotations at least (4Ki every ~3 s, checked every 10 s).
        followed = self.machine.run(
            f"timeout 25 {self.kubectl_line('logs -f counter --tail=1')} || test $? = 124",
            timeout=40,
        )
        seen = numbers(followed)
        self.assertGreater(len(seen), 300, followed[-500:])
        self.assertEqual(seen, list(range(seen[0], seen[0] + len(seen))), "a line missed")
        uid = self.pod("counter")["metadata"]["uid"]
        logs = sorted(
            p.name
            for p in self.machine.path(f"/var/log/pods/default_counter_{uid}/counter").iterdir()
        )
        self.assertLessEqual(len(logs), 3, logs)
        self.assertIn("0.log", logs)
        self.assertTrue(any(name.endswith(".gz") for name in logs), logs)
        self.assertTrue(any(re.fullmatch(r"0\.log\.\d{8}-\d{6}", name) for name in logs), logs)

        # Each line reaches kubectl as soon as containerd writes it (inotify, not the
        # kubelet's one-second check).
        latencies = follow_latency(self.machine.reading, self.kubectl_line(""), "counter", 100)
        print(f"\nkubectl logs -f latency: {summary(latencies)}")
        self.assertLess(sorted(latencies)[50], 0.3, summary(latencies))

        # No previous instance yet; then the crashing pod's last one.
        self.assertEqual(
            self.failing("logs counter --previous"),
            'Error from server (BadRequest): previous terminated container "counter" in pod '
            '"counter" not found',
        )
        self.run_pod("crash", "echo run $(cat /proc/sys/kernel/random/uuid); sleep 1; exit 1")
        self.until("crash restarted", lambda: self.restarts("crash") >= 1)
        self.assertRegex(self.kubectl("logs crash --previous"), r"^run [0-9a-f-]{36}\n$")

        # Kube's words for what cannot be read.
        self.run_pod("nope", "true", image="docker.io/library/busybox:absent")
        self.until(
            "nope waiting for its image",
            lambda: "waiting to start" in self.failing("logs nope"),
        )
        self.assertIn(
            self.failing("logs nope"),
            (
                'Error from server (BadRequest): container "nope" in pod "nope" is waiting to '
                "start: trying and failing to pull image",
                'Error from server (BadRequest): container "nope" in pod "nope" is waiting to '
                "start: image can't be pulled",
                'Error from server (BadRequest): container "nope" in pod "nope" is waiting to '
                "start: ContainerCreating",
            ),
        )
        self.assertIn(
            "container other is not valid for pod counter", self.failing("logs counter -c other")
        )
        self.kubectl("delete pod counter crash nope --wait=false")
        self.assertNotIn("Streaming the log", self.log.read_text(), "a stream failed")


class PodLogsThroughTheTunnelTests(PodsInAMachine):
    """
    The pod on an agent in a second machine: ``kubectl logs`` on the server's
    machine goes from the API server through the agent's tunnel to its
    kubelet.
    """

    timeout = 300

    def setUp(self) -> None:
        self.work = Path(self.mktemp()).absolute()
        self.server_machine, self.machine = machines(self, self.work / "machines", 2)
        for machine in (self.server_machine, self.machine):
            machine.boot(runtime=True)
        write_airgap_images(self.machine.rancher / "k3s" / "agent" / "images")

    def kubectl(self, arguments: str) -> str:
        return self.server_machine.run(f"{KUBECTL} {arguments}")

    def test_logs_of_a_pod_on_an_agent(self) -> None:
        server_ip, agent_ip = self.server_machine.address, self.machine.address
        self.launch(
            f"k3s-server --container-runtime none --node-ip {server_ip}"
            f" --advertise-address {server_ip} --node-name m0",
            "server.log",
            "Successfully registered node m0",
            self.server_machine,
        )
        token = (self.server_machine.rancher / "k3s" / "server" / "token").read_text().strip()
        self.launch(
            f"k3s-agent --server https://{server_ip}:6443 --token {token}"
            f" --node-ip {agent_ip} --node-name m1"
            f" --kubelet-arg cgroup-root={self.machine.cgroup_parent}",
            "agent.log",
            "Successfully registered node m1",
        )
        overrides = json.dumps({"spec": {"nodeName": "m1"}})
        self.kubectl(
            f"run counter --image={BUSYBOX_IMAGE} --image-pull-policy=IfNotPresent"
            f" --overrides='{overrides}' --command -- /bin/sh -c '{COUNTER}'"
        )
        self.until("counter writing", lambda: len(numbers(self.logs_so_far())) >= 5)
        tail = numbers(self.kubectl("logs counter --tail=2"))
        self.assertEqual(len(tail), 2)
        followed = self.server_machine.run(
            f"timeout 5 {KUBECTL} logs -f counter --tail=1 || test $? = 124", timeout=20
        )
        seen = numbers(followed)
        self.assertGreater(len(seen), 20, followed)
        self.assertEqual(seen, list(range(seen[0], seen[0] + len(seen))))
        latencies = follow_latency(self.server_machine.reading, KUBECTL, "counter", 100)
        print(f"\nkubectl logs -f latency through the tunnel: {summary(latencies)}")
        self.assertLess(sorted(latencies)[50], 0.3, summary(latencies))
        self.assertEqual(
            self.failing_on_server("logs counter --previous"),
            'Error from server (BadRequest): previous terminated container "counter" in pod '
            '"counter" not found',
        )

    def logs_so_far(self) -> str:
        """The counter's log, or nothing while its container is not started."""
        try:
            return self.kubectl("logs counter")
        except AssertionError as e:
            self.assertIn('container "counter" in pod "counter" is', str(e))
            return ""

    def failing_on_server(self, arguments: str) -> str:
        return self.server_machine.run(f"{KUBECTL} {arguments} 2>&1 && exit 1 || true").strip()
