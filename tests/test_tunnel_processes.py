"""
The tunnel between real processes: a ``k3s-server`` and a ``k3s-agent`` on
loopback, the real kubectl reaching the agent's kubelet API through the
websocket the agent opened, and the agent's tunnel coming back after the
server restarts.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import ClassVar

from twisted.trial.unittest import SynchronousTestCase

from tests.support.net import free_port
from tests.support.twistd import Twistd
from tests.test_join import Cluster

AGENT_HOST = "127.0.0.31"


class TunnelProcessTests(SynchronousTestCase):
    cluster: ClassVar[Cluster]
    kubelet_port: ClassVar[int]
    agent: ClassVar[Twistd]

    @classmethod
    def setUpClass(cls) -> None:
        cls.cluster = Cluster(Path(tempfile.mkdtemp(prefix="k3stw-tunnel-"))).start()
        cls.kubelet_port = free_port("127.0.0.1")
        cls.agent = cls.cluster.agent(
            "tunnelled", AGENT_HOST, "--kubelet-arg", f"port={cls.kubelet_port}"
        ).start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.cluster.stop()

    def raw(self, path: str) -> tuple[int, str, str]:
        found = self.cluster.kubectl("get", "--raw", path)
        return found.returncode, found.stdout, found.stderr

    def wait_for_kubelet(self, node: str, timeout: float = 60.0) -> None:
        self.cluster.wait(
            lambda: self.raw(f"/api/v1/nodes/{node}/proxy/healthz")[:2] == (0, "ok"),
            f"{node}'s kubelet through nodes/proxy",
            timeout,
        )

    def test_kubelet_api_through_the_tunnel(self) -> None:
        """healthz, pods and the stats summary of the agent's kubelet, through its tunnel."""
        self.wait_for_kubelet("tunnelled")
        self.agent.wait_for_output("Remotedialer connected to proxy")
        code, out, err = self.raw("/api/v1/nodes/tunnelled/proxy/stats/summary")
        self.assertEqual(code, 0, err)
        summary = json.loads(out)
        self.assertEqual(summary["node"]["nodeName"], "tunnelled")
        self.assertGreater(summary["node"]["memory"]["workingSetBytes"], 0)
        self.assertGreater(summary["node"]["fs"]["capacityBytes"], 0)
        code, out, err = self.raw("/api/v1/nodes/tunnelled/proxy/pods")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["kind"], "PodList")

    def test_the_servers_own_node_is_reached_directly(self) -> None:
        """The server's node has no tunnel: its kubelet is dialled on loopback."""
        self.wait_for_kubelet("server")

    def test_the_agent_refuses_other_addresses(self) -> None:
        """
        A Node that names another port makes the server ask the agent for
        it; the agent allows only its kubelet's port and refuses.
        """
        self.wait_for_kubelet("tunnelled")
        other = {"status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": 22}}}}
        patched = self.cluster.kubectl(
            "patch", "node", "tunnelled", "--subresource=status", "--type=merge",
            "-p", json.dumps(other),
        )  # fmt: skip
        self.assertEqual(patched.returncode, 0, patched.stderr)
        code, _, err = self.raw("/api/v1/nodes/tunnelled/proxy/healthz")
        self.assertNotEqual(code, 0)
        self.assertIn("error dialing backend: connect not allowed", err)
        self.agent.wait_for_output("refused Connect")
        self.assertIn("tcp/127.0.0.1:22", self.agent.output)
        # The kubelet's next status post puts its real port back.
        self.wait_for_kubelet("tunnelled")

    def test_the_tunnel_is_back_soon_after_the_server_restarts(self) -> None:
        """The agent reconnects every second; within 5 s of the restart its kubelet is reachable."""
        self.wait_for_kubelet("tunnelled")
        server = self.cluster.server
        server.stop()
        server.start()
        server.wait_for_answer("127.0.0.14", self.cluster.port)
        restarted = time.monotonic()
        self.wait_for_kubelet("tunnelled", timeout=5.0)
        self.assertLess(time.monotonic() - restarted, 5.0 + 1.0)
