"""
Agents joining a real server: real ``twistd`` processes on distinct 127.0.0.x
addresses, each with its own data and identity dirs, checked with kubectl.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Self

from twisted.trial.unittest import SynchronousTestCase

from tests.support.net import free_port
from tests.support.twistd import Twistd, https_get, k3s_server

KUBECTL = "/usr/bin/kubectl"
SERVER_HOST = "127.0.0.14"
# Longer than the kubelet's 10 s Lease renewals, shorter than the default 40 s.
GRACE = "15"


class Cluster:
    """A server, and agents started on demand, under one temporary root."""

    def __init__(
        self, root: Path, *server_flags: str, host: str = SERVER_HOST, port: int | None = None
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.holder = SynchronousTestCase()
        self.host = host
        self.port = port or free_port(host)
        (root / "config.yaml").write_text("")
        self.server = k3s_server(
            self.holder,
            root / "server",
            host,
            self.port,
            "--node-name",
            "server",
            "--node-monitor-grace-period",
            GRACE,
            *server_flags,
        )
        self.agents: list[Twistd] = []
        #: Each agent's load balancer port, by node name.
        self.lb_ports: dict[str, int] = {}

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def token(self) -> str:
        return (self.root / "server" / "data" / "server" / "token").read_text().strip()

    def start(self) -> Self:
        self.server.start()
        self.server.wait_for_answer(self.host, self.port)
        ca = self.root / "server" / "data" / "server" / "tls" / "server-ca.crt"
        self.wait(
            lambda: https_get(self.host, self.port, "/v1-k3s/readyz", ca)[0] == 200,
            "server ready",
        )
        return self

    @classmethod
    def with_agents(cls, prefix: str, host: str, agents: dict[str, str]) -> Self:
        """
        A started server (node ``server``) on C{host} and C{agents} (node name
        to address), once every node is Ready; all stopped if that fails.
        """
        cluster = cls(Path(tempfile.mkdtemp(prefix=prefix)), host=host).start()
        try:
            for name, address in agents.items():
                cluster.agent(name, address).start()
            nodes = dict.fromkeys(["server", *agents], "True")
            cluster.wait(lambda: cluster.node_status() == nodes, f"{len(nodes)} Ready nodes")
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def agent(
        self,
        name: str,
        host: str,
        *flags: str,
        token: str | None = None,
        directory: str | None = None,
    ) -> Twistd:
        """An agent process (not started) with its own dirs under C{directory or name}."""
        home = self.root / (directory or name)
        home.mkdir(parents=True, exist_ok=True)
        self.lb_ports[name] = free_port("127.0.0.1")
        agent = Twistd(
            self.holder,
            home,
            "k3s-agent",
            "--container-runtime",
            "none",
            "--config",
            str(self.root / "config.yaml"),
            "--data-dir",
            str(home / "data"),
            "--node-identity-dir",
            str(home / "node"),
            "--node-name",
            name,
            "--node-ip",
            host,
            "--server",
            self.url,
            "--token",
            token or self.token,
            "--lb-server-port",
            str(self.lb_ports[name]),
            "--kubelet-arg",
            f"port={free_port('127.0.0.1')}",
            *flags,
        )
        self.agents.append(agent)
        return agent

    def kubectl(
        self, *args: str, kubeconfig: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "K3S_"))}
        config = kubeconfig or self.root / "server" / "k3s.yaml"
        env.update(KUBECONFIG=str(config), KUBECACHEDIR=str(config) + ".cache")
        return subprocess.run([KUBECTL, *args], capture_output=True, text=True, env=env, timeout=60)

    def node_status(self) -> dict[str, str]:
        """Each node's Ready condition status."""
        listed = self.kubectl("get", "nodes", "-o", "json")
        if listed.returncode != 0:
            return {}
        return {
            node["metadata"]["name"]: next(
                (
                    c["status"]
                    for c in node.get("status", {}).get("conditions", [])
                    if c["type"] == "Ready"
                ),
                "none",
            )
            for node in json.loads(listed.stdout)["items"]
        }

    def wait(self, condition: Callable[[], object], what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if condition():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.server.output[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()
        self.server.stop()


class JoinTests(SynchronousTestCase):
    cluster: ClassVar[Cluster]

    @classmethod
    def setUpClass(cls) -> None:
        cls.cluster = Cluster(Path(tempfile.mkdtemp(prefix="k3stw-join-"))).start()
        for index in range(1, 4):
            cls.cluster.agent(f"agent-{index}", f"127.0.0.{14 + index}").start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.cluster.stop()

    def test_four_ready_nodes(self) -> None:
        """The server's own node and three agents' nodes register and are Ready."""
        expected = {"server": "True", "agent-1": "True", "agent-2": "True", "agent-3": "True"}

        def ready() -> bool:
            status = self.cluster.node_status()
            return all(status.get(name) == ready for name, ready in expected.items())

        self.cluster.wait(ready, "four Ready nodes")
        wide = self.cluster.kubectl("get", "nodes", "-o", "wide").stdout
        self.assertIn("control-plane,master", wide)
        self.assertIn("127.0.0.15", wide)
        leases = self.cluster.kubectl("get", "leases", "-n", "kube-node-lease", "-o", "name")
        for name in expected:
            self.assertIn(f"lease.coordination.k8s.io/{name}", leases.stdout.split())
        secrets = self.cluster.kubectl("get", "secrets", "-n", "kube-system", "-o", "name").stdout
        for name in ("server", "agent-1", "agent-2", "agent-3"):
            self.assertIn(f"secret/{name}.node-password.k3s", secrets)

    def test_stopped_agent_turns_unknown_then_ready_again(self) -> None:
        """An agent that stops is Unknown after the grace period, Ready once it is back."""
        cluster = self.cluster
        cluster.wait(lambda: cluster.node_status().get("agent-3") == "True", "agent-3 Ready")
        agent = cluster.agents[2]
        agent.stop()
        cluster.wait(lambda: cluster.node_status().get("agent-3") == "Unknown", "agent-3 Unknown")
        taints = cluster.kubectl("get", "node", "agent-3", "-o", "jsonpath={.spec.taints}").stdout
        self.assertIn("node.kubernetes.io/unreachable", taints)
        agent.start()
        cluster.wait(lambda: cluster.node_status().get("agent-3") == "True", "agent-3 back")

    def test_same_name_other_password_is_rejected(self) -> None:
        """A second host named like a node, with its own password, gets k3s's message."""
        impostor = self.cluster.agent("agent-1", "127.0.0.19", directory="impostor").start()
        impostor.wait_for_output("Node password rejected, duplicate hostname or contents of '")
        self.assertIn(
            "may not match server node-passwd entry, try enabling a unique node name "
            "with the --with-node-id flag",
            impostor.output,
        )
        impostor.stop()

    def test_with_node_id_lets_hosts_share_a_name(self) -> None:
        """--with-node-id gives two hosts called 'twin' two nodes."""
        for host, directory in (("127.0.0.20", "twin-a"), ("127.0.0.21", "twin-b")):
            self.cluster.agent("twin", host, "--with-node-id", directory=directory).start()

        def twins() -> list[str]:
            return [
                n
                for n, ready in self.cluster.node_status().items()
                if n.startswith("twin-") and ready == "True"
            ]

        self.cluster.wait(lambda: len(twins()) == 2, "two twin nodes")
        for name in twins():
            self.assertRegex(name, r"^twin-[0-9a-f]{8}$")

    def test_wrong_token_is_refused(self) -> None:
        """A token with the right CA but a wrong password is a 401 the agent reports."""
        ca_hash = self.cluster.token.split("::")[0][3:]
        wrong = self.cluster.agent(
            "stranger", "127.0.0.22", token=f"K10{ca_hash}::node:not-the-password"
        )
        wrong.start()
        wrong.wait_for_output(
            "Waiting to retrieve agent configuration; server is not ready: "
            f"https://127.0.0.1:{self.cluster.lb_ports['stranger']}/v1-k3s/config: "
            "401 Unauthorized"
        )
        wrong.stop()

    def test_one_node_cannot_update_another(self) -> None:
        """agent-1's kubelet certificate is refused on agent-2's Node (403)."""
        self.cluster.wait(lambda: "agent-2" in self.cluster.node_status(), "agent-2")
        kubeconfig = self.cluster.root / "agent-1" / "data" / "agent" / "kubelet.kubeconfig"
        refused = self.cluster.kubectl("label", "node", "agent-2", "x=y", kubeconfig=kubeconfig)
        self.assertIn("Forbidden", refused.stderr)
        self.assertIn('node "agent-1" is not allowed to modify node "agent-2"', refused.stderr)
        own = self.cluster.kubectl("label", "node", "agent-1", "x=y", kubeconfig=kubeconfig)
        self.assertEqual(own.returncode, 0, own.stderr)

    def test_kubectl_through_an_agents_load_balancer(self) -> None:
        """
        The agent's balancer learns the server from the kubernetes Endpoints,
        checks it, shows it on the status page and passes kubectl through.
        """
        cluster = self.cluster
        status_port = free_port("127.0.0.1")
        agent = cluster.agent("balanced", "127.0.0.24", "--lb-status-port", str(status_port))
        agent.start()
        server = f"{SERVER_HOST}:{cluster.port}"

        def endpoints() -> list[str]:
            jsonpath = "jsonpath={.subsets[0].addresses[*].ip}:{.subsets[0].ports[0].port}"
            found = cluster.kubectl("get", "endpoints", "kubernetes", "-o", jsonpath)
            return found.stdout.split()

        cluster.wait(lambda: endpoints() == [server], "the server's advertise address")

        def balancer_servers() -> dict[str, str]:
            with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/", timeout=5) as page:
                document = json.load(page)
            (balancer,) = document["loadBalancers"]
            return {s["address"]: s["state"] for s in balancer["servers"]}

        # Learnt from /v1-k3s/apiservers and the Endpoints, then found healthy by /ping.
        cluster.wait(lambda: balancer_servers().get(server) == "ACTIVE", "the server active")
        agent.wait_for_output(f"Adding server to load balancer k3s-agent-load-balancer: {server}")
        saved = cluster.root / "balanced" / "data" / "agent" / "etc"
        state = json.loads((saved / "k3s-agent-load-balancer.json").read_text())
        self.assertEqual(state, {"ServerURL": cluster.url, "ServerAddresses": [server]})

        balancer = f"https://127.0.0.1:{cluster.lb_ports['balanced']}"
        nodes = cluster.kubectl("--server", balancer, "get", "nodes", "-o", "name")
        self.assertEqual(nodes.returncode, 0, nodes.stderr)
        self.assertIn("node/server", nodes.stdout.split())

        with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/metrics", timeout=5) as page:
            metrics = page.read().decode()
        labels = f'name="k3s-agent-load-balancer",server="{server}"'
        self.assertIn(f"k3s_loadbalancer_server_health{{{labels}}}", metrics)
        self.assertIn("k3s_loadbalancer_dial_duration_seconds_count", metrics)
        agent.stop()

    def test_deleted_node_rejoins(self) -> None:
        """After kubectl delete node (which takes its password), the host joins again."""
        cluster = self.cluster
        agent = cluster.agent("phoenix", "127.0.0.23").start()
        cluster.wait(lambda: cluster.node_status().get("phoenix") == "True", "phoenix Ready")
        agent.stop()
        deleted = cluster.kubectl("delete", "node", "phoenix")
        self.assertEqual(deleted.returncode, 0, deleted.stderr)

        def secret_gone() -> bool:
            found = cluster.kubectl(
                "get", "secret", "-n", "kube-system", "phoenix.node-password.k3s"
            )
            return "NotFound" in found.stderr

        cluster.wait(secret_gone, "the node-password secret to go with its node")
        agent.start()
        agent.wait_for_output(
            "Node authorization rejected, retrying without client certificate authentication"
        )
        cluster.wait(lambda: cluster.node_status().get("phoenix") == "True", "phoenix rejoined")


class AgentlessServerTests(SynchronousTestCase):
    def test_disable_agent_registers_no_node(self) -> None:
        """--disable-agent gives a server with no Node."""
        cluster = Cluster(Path(self.mktemp()).absolute(), "--disable-agent")
        self.addCleanup(cluster.stop)
        cluster.start()
        # An embedded agent registers within a second of readiness; give it three.
        time.sleep(3)
        self.assertEqual(cluster.node_status(), {})
        self.assertFalse((cluster.root / "server" / "data" / "agent").exists())
