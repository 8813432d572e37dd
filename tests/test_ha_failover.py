"""
An agent in front of two servers that share a PostgreSQL database: it learns
both from the kubernetes Endpoints, keeps a tunnel to each, and when the
server it joined through dies, kubectl through its load balancer and the
other server's reach to its kubelet carry on.

The second server takes the cluster's CAs from the encrypted bootstrap data
the first saved in the database, as k3s's servers do.
"""

from __future__ import annotations

import json
import socket
import tempfile
import urllib.request
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support.net import free_port
from tests.support.postgres import fresh_database_name, shared_postgres
from tests.support.twistd import Twistd, https_get, k3s_server
from tests.test_join import Cluster

FIRST = "127.0.0.41"
SECOND = "127.0.0.42"
AGENT = "127.0.0.43"
TOKEN = "ha-failover-secret"


def port_free_on(*hosts: str) -> int:
    """A port free on every one of C{hosts}."""
    for _ in range(100):
        port = free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.create_server((host, port)):
                    pass
        except OSError:
            continue
        return port
    raise AssertionError(f"no port free on all of {hosts}")


class TwoServers(Cluster):
    """The first server of L{Cluster} on FIRST, on PostgreSQL, plus a second one on SECOND."""

    def __init__(self, root: Path, endpoint: str) -> None:
        self.endpoint = endpoint
        self.extra_servers: list[Twistd] = []
        super().__init__(
            root, "--node-name", "first", "--datastore-endpoint", endpoint, "--token", TOKEN,
            host=FIRST, port=port_free_on(FIRST, SECOND),
        )  # fmt: skip

    def second(self) -> tuple[Twistd, int]:
        # Servers share one port, as k3s's do: the kubernetes Endpoints has one.
        port = self.port
        server = k3s_server(
            self.holder, self.root / "second", SECOND, port,
            "--node-name", "second", "--datastore-endpoint", self.endpoint, "--token", TOKEN,
        )  # fmt: skip
        # Stopped with the cluster, as its agents are.
        self.extra_servers.append(server)
        return server.start(), port

    def stop(self) -> None:
        super().stop()
        for server in self.extra_servers:
            server.stop()


class FailoverTests(SynchronousTestCase):
    def setUp(self) -> None:
        endpoint = shared_postgres().endpoint(fresh_database_name("failover"))
        root = Path(tempfile.mkdtemp(prefix="k3stw-ha-"))
        self.cluster = TwoServers(root, endpoint)
        self.addCleanup(self.cluster.stop)

    def test_the_agent_survives_the_server_it_joined_through(self) -> None:
        cluster = self.cluster.start()
        second, second_port = cluster.second()
        second.wait_for_answer(SECOND, second_port)
        cluster.server.wait_for_output("Saved the cluster's bootstrap data to")
        second.wait_for_output("Took the cluster's bootstrap data from")
        for name in ("server-ca.crt", "client-ca.crt", "server-ca.key"):
            first_file = cluster.root / "server" / "data" / "server" / "tls" / name
            second_file = cluster.root / "second" / "data" / "server" / "tls" / name
            self.assertEqual(first_file.read_bytes(), second_file.read_bytes(), name)
        ca = cluster.root / "server" / "data" / "server" / "tls" / "server-ca.crt"
        cluster.wait(lambda: https_get(SECOND, second_port, "/v1-k3s/readyz", ca)[0] == 200, "")

        status_port = free_port("127.0.0.1")
        agent = cluster.agent("ha-agent", AGENT, "--lb-status-port", str(status_port)).start()
        first_address = f"{FIRST}:{cluster.port}"
        second_address = f"{SECOND}:{second_port}"

        def states() -> dict[str, str]:
            with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/", timeout=5) as page:
                (balancer,) = json.load(page)["loadBalancers"]
            return {s["address"]: s["state"] for s in balancer["servers"]}

        # Both servers learnt, each with a tunnel (their health is the tunnel's).
        cluster.wait(
            lambda: (
                set(states()) == {first_address, second_address}
                and "FAILED" not in states().values()
            ),
            "both servers in the agent's balancer",
        )
        second.wait_for_output("Handling backend connection request [ha-agent]")

        cluster.server.stop()
        balancer = f"https://127.0.0.1:{cluster.lb_ports['ha-agent']}"
        # kubectl through the agent's balancer now reaches the second server.
        nodes = cluster.kubectl("--server", balancer, "get", "nodes", "-o", "name")
        self.assertEqual(nodes.returncode, 0, nodes.stderr)
        self.assertIn("node/ha-agent", nodes.stdout.split())
        healthz = cluster.kubectl(
            "--server", f"https://{second_address}",
            "get", "--raw", "/api/v1/nodes/ha-agent/proxy/healthz",
        )  # fmt: skip
        self.assertEqual((healthz.returncode, healthz.stdout), (0, "ok"), healthz.stderr)
        cluster.wait(lambda: states().get(first_address) == "FAILED", "the first server failed")
        cluster.wait(lambda: states().get(second_address) == "ACTIVE", "the second server active")
        agent.stop()
