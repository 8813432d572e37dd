"""
``kubectl logs``, ``exec`` and ``port-forward`` between real processes: a
``k3s-server`` and a ``k3s-agent`` on loopback and the real kubectl.  No
container runs yet (the kubelet's streaming endpoints answer 501 until the
node has a runtime), so what these prove is the way there: each request
reaches the kubelet of the pod's node, through the agent's tunnel or, on
the server's own node, directly, and kubectl prints the kubelet's answer.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import ClassVar

from twisted.trial.unittest import SynchronousTestCase

from tests.support.net import free_port
from tests.support.twistd import Twistd
from tests.test_join import Cluster

AGENT_HOST = "127.0.0.37"
#: The kubelet's own words: only it says them, so seeing them proves the request got there.
KUBELET_501 = "not implemented: this node has no container runtime yet"


class PodStreamProcessTests(SynchronousTestCase):
    cluster: ClassVar[Cluster]
    agent: ClassVar[Twistd]

    @classmethod
    def setUpClass(cls) -> None:
        cls.cluster = Cluster(Path(tempfile.mkdtemp(prefix="k3stw-streams-"))).start()
        # --debug: the kubelet logs each request it answers.
        cls.agent = cls.cluster.agent(
            "streamer", AGENT_HOST, "--kubelet-arg", f"port={free_port('127.0.0.1')}", "--debug"
        ).start()
        for name, node, containers in (
            ("solo", "streamer", ["a"]),
            ("duo", "streamer", ["a", "b"]),
            ("home", "server", ["a"]),
        ):
            cls.create_pod(name, node, containers)
        cls.cluster.wait(
            lambda: (
                cls.cluster.kubectl("get", "--raw", "/api/v1/nodes/streamer/proxy/healthz").stdout
                == "ok"
            ),
            "the agent's kubelet through its tunnel",
        )

    @classmethod
    def tearDownClass(cls) -> None:
        cls.cluster.stop()

    @classmethod
    def create_pod(cls, name: str, node: str, containers: list[str]) -> None:
        manifest = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "nodeName": node,
                "containers": [
                    {"name": c, "image": "busybox", "ports": [{"containerPort": 80}]}
                    for c in containers
                ],
            },
        }
        path = cls.cluster.root / f"{name}.json"
        path.write_text(json.dumps(manifest))
        created = cls.cluster.kubectl("create", "-f", str(path))
        assert created.returncode == 0, created.stderr

    def kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args)

    def test_logs_reach_the_agents_kubelet(self) -> None:
        """kubectl logs: through the agent's tunnel to its kubelet, whose 501 kubectl prints."""
        found = self.kubectl("logs", "solo")
        self.assertEqual(found.returncode, 1)
        self.assertEqual(
            found.stderr.strip(),
            f'Error from server (InternalError): an error on the server ("{KUBELET_501}\\n") '
            "has prevented the request from succeeding ( pods/log solo)",
        )

    def test_logs_on_the_servers_own_node(self) -> None:
        """The server's own node is dialled directly, and answers in the same words."""
        found = self.kubectl("logs", "home", "--tail=5", "--timestamps")
        self.assertEqual(found.returncode, 1)
        self.assertIn(KUBELET_501, found.stderr)

    def test_logs_of_two_containers_need_a_name(self) -> None:
        """kubectl picks a container itself; the API refuses to guess, in kube's words."""
        found = self.kubectl("get", "--raw", "/api/v1/namespaces/default/pods/duo/log")
        self.assertNotEqual(found.returncode, 0)
        self.assertIn(
            "a container name must be specified for pod duo, choose one of: [a b]", found.stderr
        )
        found = self.kubectl("logs", "duo", "-c", "c")
        self.assertIn("container c is not valid for pod duo", found.stderr)

    def test_exec_reaches_the_agents_kubelet(self) -> None:
        """
        kubectl exec: its websocket is answered by the API server, which asks
        the kubelet for SPDY (a POST); the kubelet's 501 reaches kubectl as
        the Status on the error channel, without a fallback to SPDY.
        """
        found = self.kubectl("exec", "solo", "--", "true")
        self.assertEqual(
            (found.returncode, found.stderr),
            (1, f"error: Internal error occurred: unable to upgrade connection: {KUBELET_501}\n"),
        )
        self.agent.wait_for_output("POST /exec/default/solo/a?command=true&error=1&output=1 501")
        self.assertNotIn("GET /exec/", self.agent.output)

    def test_port_forward_reaches_the_agents_kubelet(self) -> None:
        """kubectl port-forward (to a pod it believes runs) gets as far as the kubelet's 501."""
        running = {"status": {"phase": "Running"}}
        patched = self.kubectl(
            "patch", "pod", "solo", "--subresource=status", "--type=merge",
            "-p", json.dumps(running),
        )  # fmt: skip
        self.assertEqual(patched.returncode, 0, patched.stderr)
        found = self.kubectl("port-forward", "pod/solo", f"{free_port('127.0.0.1')}:80")
        self.assertEqual(
            (found.returncode, found.stderr), (1, "error: error upgrading connection: \n")
        )
        # The websocket, unwrapped to a SPDY POST, then kubectl's own SPDY fallback.
        self.agent.wait_for_output("POST /portForward/default/solo 501")
        self.assertNotIn("GET /portForward/", self.agent.output)
