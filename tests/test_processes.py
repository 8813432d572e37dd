"""
Real ``twistd -n k3s-server`` and ``k3s-agent`` processes on loopback, driven
over real TLS and with the real kubectl.
"""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import ssl
import subprocess
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support.net import free_port
from tests.support.twistd import Twistd, https_get, k3s_server, snapshot

KUBECTL = "/usr/bin/kubectl"


class ServerProcess:
    """A server on its own 127.0.0.x address and data dir."""

    def __init__(
        self, case: SynchronousTestCase, root: Path, host: str, *extra: str, port: int = 0
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.root = root
        self.data_dir = root / "data"
        self.kubeconfig = root / "k3s.yaml"
        self.twistd = k3s_server(case, root, host, self.port, *extra)

    def start(self) -> ServerProcess:
        self.twistd.start()
        self.twistd.wait_for_answer(self.host, self.port)
        return self

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "server" / "tls" / "server-ca.crt"

    @property
    def token(self) -> str:
        return (self.data_dir / "server" / "token").read_text().strip()

    def get(self, path: str, verified: bool = True) -> tuple[int, bytes]:
        return https_get(self.host, self.port, path, self.ca_file if verified else None)


def credentials(data_dir: Path) -> dict[str, bytes]:
    """
    Every file of the server's identity: certificates, keys and tokens. Not the
    database, nor the embedded agent's kubelet certificates, issued anew at each
    join as k3s issues them.
    """
    return {
        k: v
        for k, v in snapshot(data_dir).items()
        if k.startswith("server/") and not k.startswith("server/db")
    }


class ServerProcessTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp()).absolute()

    def test_cacerts_matches_the_token_and_tls_verifies(self) -> None:
        """/cacerts hashes to the token's CA hash; TLS verifies for the address; /ping pongs."""
        server = ServerProcess(self, self.root, "127.0.0.2").start()
        code, bundle = server.get("/cacerts", verified=False)
        self.assertEqual(code, 200)
        self.assertEqual(bundle, server.ca_file.read_bytes())
        self.assertTrue(server.token.startswith(f"K10{hashlib.sha256(bundle).hexdigest()}::"))
        self.assertEqual(server.get("/ping"), (200, b"pong"))
        # /ping answers as soon as TLS listens; readiness follows the bootstrap.
        server.twistd.wait_for_answer(server.host, server.port, "/v1-k3s/readyz", b"ok")
        code, body = server.get("/nope")
        self.assertEqual((code, json.loads(body)["reason"]), (404, "NotFound"))
        code, body = server.get("/api/v1/namespaces")
        self.assertEqual((code, json.loads(body)["reason"]), (401, "Unauthorized"))

    def test_tls_refuses_a_name_not_in_the_certificate(self) -> None:
        """A client that expects another host name is refused by verification."""
        server = ServerProcess(self, self.root, "127.0.0.2").start()
        context = ssl.create_default_context(cafile=str(server.ca_file))
        with socket.create_connection((server.host, server.port), timeout=5) as raw:
            self.assertRaises(
                ssl.SSLCertVerificationError,
                context.wrap_socket,
                raw,
                server_hostname="not-this-server.example",
            )

    def test_kubectl_uses_the_admin_kubeconfig(self) -> None:
        """The real kubectl reaches the server with the written kubeconfig's client cert."""
        server = ServerProcess(self, self.root, "127.0.0.2").start()
        result = subprocess.run(
            [KUBECTL, "--kubeconfig", str(server.kubeconfig), "get", "--raw", "/ping"],
            capture_output=True,
            timeout=60,
        )
        self.assertEqual((result.returncode, result.stdout), (0, b"pong"), result.stderr)
        self.assertEqual(server.kubeconfig.stat().st_mode & 0o777, 0o600)

    def test_restart_keeps_every_file_byte_identical(self) -> None:
        """CA, token, certificates and kubeconfig survive a restart unchanged."""
        server = ServerProcess(self, self.root, "127.0.0.2").start()
        # twistd ends by re-raising SIGTERM, which systemd counts as a clean stop.
        self.assertEqual(server.twistd.stop(), -signal.SIGTERM)
        before = credentials(self.root / "data"), server.kubeconfig.read_bytes()
        server.start()
        self.assertEqual(server.get("/ping"), (200, b"pong"))
        self.assertEqual((credentials(self.root / "data"), server.kubeconfig.read_bytes()), before)

    def test_two_servers_on_one_machine(self) -> None:
        """Two servers with their own data dirs, same port on two addresses, do not collide."""
        port = free_port("127.0.0.3")
        first = ServerProcess(self, self.root / "a", "127.0.0.3", port=port)
        second = ServerProcess(self, self.root / "b", "127.0.0.4", port=port)
        first.start()
        second.start()
        self.assertNotEqual(first.ca_file.read_bytes(), second.ca_file.read_bytes())
        for server in (first, second):
            _, bundle = server.get("/cacerts")
            self.assertIn(hashlib.sha256(bundle).hexdigest(), server.token)


class ServerStartErrorTests(SynchronousTestCase):
    """Each bad start: exit status 1, one line naming the problem, nothing on disk changed."""

    def setUp(self) -> None:
        self.root = Path(self.mktemp()).absolute()

    def state(self, server: ServerProcess) -> dict[str, bytes]:
        files = snapshot(server.data_dir) if server.data_dir.is_dir() else {}
        if server.data_dir.is_file():
            files["<data-dir>"] = server.data_dir.read_bytes()
        if server.kubeconfig.exists():
            files["<kubeconfig>"] = server.kubeconfig.read_bytes()
        return files

    def assertFailsToStart(self, server: ServerProcess, *fragments: str) -> str:
        before = self.state(server)
        server.twistd.start()
        self.assertEqual(server.twistd.wait_for_exit(), 1, server.twistd.output)
        output = server.twistd.output
        # Raw before twistd's logging starts, or as one [stderr#error] log line after.
        errors = [line for line in output.splitlines() if "k3s-server: " in line]
        self.assertEqual(len(errors), 1, output)
        self.assertNotIn("Traceback", output)
        for fragment in fragments:
            self.assertIn(fragment, errors[0])
        after = self.state(server)
        self.assertEqual({name: after.get(name) for name in before}, before)
        return errors[0]

    def test_malformed_token(self) -> None:
        """A malformed --token is refused before anything is written."""
        server = ServerProcess(self, self.root, "127.0.0.5", "--token", "K10abc::server:x")
        self.assertFailsToStart(server, "invalid --token: invalid token CA hash length")
        self.assertFalse(server.data_dir.exists())

    def test_data_dir_is_a_file(self) -> None:
        """A --data-dir that is a file is refused."""
        server = ServerProcess(self, self.root, "127.0.0.5")
        server.data_dir.write_text("precious")
        self.assertFailsToStart(server, "is not a directory")

    def test_unreadable_ca(self) -> None:
        """A CA path that cannot be read stops the start and names the file."""
        server = ServerProcess(self, self.root, "127.0.0.5").start()
        server.twistd.stop()
        server.ca_file.unlink()
        server.ca_file.mkdir()
        self.assertFailsToStart(server, "cannot read", "server-ca.crt")

    def test_corrupt_certificate(self) -> None:
        """A corrupt CA on disk stops the start and is not replaced."""
        server = ServerProcess(self, self.root, "127.0.0.5").start()
        server.twistd.stop()
        server.ca_file.write_bytes(b"-----BEGIN CERTIFICATE-----\nbroken\n")
        self.assertFailsToStart(server, "server-ca.crt is not a valid PEM certificate")

    def test_different_token_on_restart(self) -> None:
        """Restarting with another --token is refused; the stored token stays."""
        first = ServerProcess(self, self.root, "127.0.0.5", "--token", "first").start()
        first.twistd.stop()
        second = ServerProcess(self, self.root, "127.0.0.5", "--token", "second")
        self.assertFailsToStart(second, "--token does not match")

    def test_port_in_use(self) -> None:
        """A taken port is one line naming the address."""
        server = ServerProcess(self, self.root, "127.0.0.5")
        with socket.socket() as squatter:
            squatter.bind((server.host, server.port))
            squatter.listen()
            self.assertFailsToStart(
                server, f"cannot listen on 127.0.0.5:{server.port}", "Address already in use"
            )

    def test_bad_flag_value(self) -> None:
        """A bad value is one line naming the flag."""
        server = ServerProcess(self, self.root, "127.0.0.5", "--write-kubeconfig-mode", "999")
        self.assertFailsToStart(server, "--write-kubeconfig-mode")


class AgentProcessTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp()).absolute()

    def agent(self, server_url: str, token: str) -> Twistd:
        self.lb_port = free_port("127.0.0.1")
        config = self.root / "agent-config.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text("")
        return Twistd(
            self,
            self.root / "agent",
            "k3s-agent",
            "--config", str(config),
            "--data-dir", str(self.root / "agent-data"),
            "--node-identity-dir", str(self.root / "agent-node"),
            "--node-name", "worker",
            "--server", server_url,
            "--token", token,
            "--lb-server-port", str(self.lb_port),
            "--kubelet-arg", f"port={free_port('127.0.0.1')}",
            "--container-runtime", "none",
        )  # fmt: skip

    def test_agent_joins_with_the_servers_token(self) -> None:
        """With the server's token the agent verifies the CA and gets its kubelet certificates."""
        server = ServerProcess(self, self.root / "server", "127.0.0.6").start()
        agent = self.agent(f"https://{server.host}:{server.port}", server.token).start()
        agent.wait_for_output("joined the cluster")
        for name in ("client-kubelet.crt", "serving-kubelet.crt", "kubelet.kubeconfig"):
            self.assertTrue((self.root / "agent-data" / "agent" / name).exists(), name)
        self.assertEqual(agent.stop(), -signal.SIGTERM)

    def test_agent_with_another_clusters_token_stops(self) -> None:
        """A token for another CA stops the agent with k3s's message and status 1."""
        server = ServerProcess(self, self.root / "server", "127.0.0.6").start()
        wrong = "K10" + "f" * 64 + "::node:secret"
        agent = self.agent(f"https://{server.host}:{server.port}", wrong).start()
        self.assertEqual(agent.wait_for_exit(), 1, agent.output)
        self.assertIn(
            "token CA hash does not match the Cluster CA certificate hash: " + "f" * 64,
            agent.output,
        )

    def test_agent_retries_while_the_server_is_down(self) -> None:
        """With no server, the agent logs k3s's failure line, keeps trying, then joins."""
        port = free_port("127.0.0.7")
        url = f"https://127.0.0.7:{port}"
        agent = self.agent(url, "K10::node:secret").start()
        # As k3s's agent, it reaches the server through its load balancer.
        balancer = f"https://127.0.0.1:{self.lb_port}"
        agent.wait_for_output(
            f'Failed to validate connection to cluster at {balancer}: Get "{balancer}/cacerts": EOF'
        )
        root = self.root / "server"
        ServerProcess(self, root, "127.0.0.7", "--token", "secret", port=port).start()
        agent.wait_for_output("joined the cluster")
