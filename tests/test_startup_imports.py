"""
What real processes have imported once their node has joined.  A
``k3s-server``: nothing that only agents use (the load balancer, its
Prometheus metrics, the tunnel client), and no test or optional-driver
library.  A ``k3s-agent``: nothing of the server half (the API server, the
controllers, the datastores, the supervisor endpoints).  Start-up time and
memory go with every module loaded (``bench/startup.py``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support.net import free_port
from tests.support.twistd import START_TIMEOUT, clean_environment, k3s_server

HOST = "127.0.0.9"
#: The address an agent reports as its node's: another "host" than the server's.
AGENT_HOST = "127.0.0.10"
#: The packages only servers run.
SERVER_HALF = ("k3stw.apiserver", "k3stw.controllers", "k3stw.datastore", "k3stw.supervisor")
#: How long a process may take to end once its reactor stopped, as the twistd helper allows.
STOP_TIMEOUT = 10.0

#: The log line after which a node's process has loaded what it runs on: a server's node
#: has joined, an agent's tunnel is up (it opens once the server's endpoints are known).
JOINED = "joined the cluster"
TUNNEL_UP = "Remotedialer connected"

#: twistd, which writes the modules it has loaded a second after it logged its argv[2]
#: (time for the kubelet to register and serve), then stops.
_RUN_TWISTD = """
import json, sys
from twisted.internet import reactor
from twisted.logger import globalLogPublisher
from twisted.scripts.twistd import run
def report(path=sys.argv[1]):
    with open(path, "w") as out:
        json.dump(sorted(sys.modules), out)
    reactor.stop()
def reached(event, text=sys.argv[2]):
    if text in (event.get("log_format") or ""):
        globalLogPublisher.removeObserver(reached)
        reactor.callLater(1.0, report)
globalLogPublisher.addObserver(reached)
sys.argv = ["twistd", *sys.argv[3:]]
run()
"""


@dataclass(frozen=True)
class NodeProcess:
    """What a real process had loaded once its node was up, and how it ended."""

    modules: frozenset[str]
    #: Whether it ended by itself once its reactor stopped (no SIGKILL needed).
    stopped: bool


def run_until(up: str, work: Path, *twistd: str) -> NodeProcess:
    """Run ``twistd -n`` with C{twistd} in C{work} until it logged C{up}, then stop it."""
    report = work / "modules.json"
    argv = [sys.executable, "-c", _RUN_TWISTD, str(report), up, "-n", "--pidfile=", *twistd]
    log = work / "twistd.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, cwd=work, stdout=out, stderr=subprocess.STDOUT, env=clean_environment()
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not report.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if report.exists():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(STOP_TIMEOUT)
    finally:
        stopped = process.poll() is not None
        if not stopped:
            process.kill()
            process.wait()
    if not report.exists():
        raise AssertionError(f"no {up!r}:\n{log.read_text(errors='replace')}")
    return NodeProcess(frozenset(json.loads(report.read_text())), stopped)


@functools.cache
def server_modules() -> frozenset[str]:
    """The modules of ``twistd -n k3s-server`` (defaults, SQLite) after its node joined."""
    with tempfile.TemporaryDirectory(prefix="k3stw-imports-") as directory:
        work = Path(directory)
        (work / "config.yaml").write_text("")
        return run_until(
            JOINED, work, "k3s-server",
            "--config", str(work / "config.yaml"), "--data-dir", str(work / "data"),
            "--bind-address", HOST, "--https-listen-port", str(free_port(HOST)),
            "--write-kubeconfig", str(work / "k3s.yaml"), "--node-identity-dir", str(work / "node"),
            "--kubelet-arg", f"port={free_port('127.0.0.1')}", "--container-runtime", "none",
        ).modules  # fmt: skip


@functools.cache
def agent_process() -> NodeProcess:
    """
    ``twistd -n k3s-agent`` joined to a real server, up to its tunnel (the
    server runs no node of its own: this agent is the only one).
    """
    with tempfile.TemporaryDirectory(prefix="k3stw-imports-") as directory:
        work = Path(directory)
        port = free_port(HOST)
        server = k3s_server(SynchronousTestCase(), work / "server", HOST, port, "--disable-agent")
        try:
            server.start().wait_for_answer(HOST, port)
            token = (work / "server" / "data" / "server" / "token").read_text().strip()
            agent = work / "agent"
            agent.mkdir()
            (agent / "config.yaml").write_text("")
            return run_until(
                TUNNEL_UP, agent, "k3s-agent",
                "--config", str(agent / "config.yaml"), "--data-dir", str(agent / "data"),
                "--node-identity-dir", str(agent / "node"),
                "--node-name", "agent", "--node-ip", AGENT_HOST,
                "--server", f"https://{HOST}:{port}", "--token", token,
                "--lb-server-port", str(free_port("127.0.0.1")),
                "--kubelet-arg", f"port={free_port('127.0.0.1')}", "--container-runtime", "none",
            )  # fmt: skip
        finally:
            server.stop()


def loaded(modules: frozenset[str], *packages: str) -> list[str]:
    """The C{modules} that are one of C{packages} or inside one."""
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


class ServerImportTests(SynchronousTestCase):
    def test_no_load_balancer_nor_metrics(self) -> None:
        """A server has no balancer: neither it nor prometheus_client nor the agent's
        tunnels and server discovery are imported."""
        self.assertEqual(
            loaded(
                server_modules(),
                "prometheus_client",
                "k3stw.loadbalancer.service",
                "k3stw.loadbalancer.health",
                "k3stw.loadbalancer.metrics",
                "k3stw.loadbalancer.persistence",
                "k3stw.loadbalancer.status",
                "k3stw.agent.tunnels",
                "k3stw.agent.apiservers",
            ),
            [],
        )

    def test_no_test_or_unused_driver_libraries(self) -> None:
        """hypothesis is for tests only; on SQLite, no PostgreSQL or MySQL driver."""
        self.assertEqual(loaded(server_modules(), "hypothesis", "psycopg", "pymysql"), [])

    def test_no_grpc_without_a_container_runtime(self) -> None:
        """grpc and protobuf (the CRI client) load only with a node's container runtime."""
        self.assertEqual(
            loaded(server_modules(), "grpc", "google.protobuf", "k3stw.kubelet.cri.client"), []
        )

    def test_no_yaml_for_an_empty_config(self) -> None:
        """PyYAML (about a megabyte) loads only to read a config file that says something."""
        self.assertEqual(loaded(server_modules(), "yaml"), [])

    def test_no_secrets_encryption_without_the_flag(self) -> None:
        """The value transformer and the key stages load only with ``--secrets-encryption``."""
        self.assertEqual(
            loaded(server_modules(), "k3stw.apiserver.encryption", "k3stw.server.secretsencrypt"),
            [],
        )

    def test_no_spdy_before_a_stream(self) -> None:
        """The exec stream translator and SPDY load with the first exec, attach or port-forward."""
        self.assertEqual(loaded(server_modules(), "k3stw.spdy", "k3stw.apiserver.streams"), [])

    def test_no_websocket_before_a_tunnel(self) -> None:
        """autobahn (about 5 MiB) and the tunnel protocol load with the first tunnel
        (k3stw.supervisor.connect); the tunnel registry alone needs neither, nor
        any module of the load balancer."""
        self.assertEqual(
            loaded(
                server_modules(), "autobahn", "txaio", "k3stw.tunnel.protocol", "k3stw.loadbalancer"
            ),
            [],
        )

    def test_no_agent_websocket_client(self) -> None:
        """wsproto and h11 carry the agent's end of a tunnel only: a server has neither."""
        self.assertEqual(loaded(server_modules(), "wsproto", "h11", "k3stw.tunnel.client"), [])


#: Makes /v1-k3s/connect's resource, prints whether autobahn is loaded, uses it, prints again.
_CONNECT_RESOURCE = """
import datetime, sys
from twisted.internet.task import Clock
from k3stw.pki.certs import new_ca
from k3stw.supervisor.connect import TunnelConnectResource
class Registry:
    def register(self, node, session):
        pass
ca = new_ca("k3s-client-ca@1", datetime.datetime.now(datetime.UTC))
resource = TunnelConnectResource(Registry(), ca.certificate, Clock())
print("autobahn" in sys.modules)
resource.factory
print("autobahn" in sys.modules)
"""


def run_python(script: str, *args: str) -> list[str]:
    """The words C{script} prints, run by this Python in a clean environment."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        check=True,
        env=clean_environment(),
    ).stdout.split()


class ConnectResourceImportTests(SynchronousTestCase):
    def test_autobahn_loads_with_the_first_tunnel(self) -> None:
        """/v1-k3s/connect's resource loads autobahn when it first needs it, not before."""
        # A stand-in registry: k3stw.tunnel.registry itself imports autobahn today.
        self.assertEqual(run_python(_CONNECT_RESOURCE), ["False", "True"])


#: Builds an agent's service tree with and without --lb-status-port; prints whether
#: prometheus_client is loaded after each.
_AGENT = """
import pathlib, sys
from k3stw.tap import agent

pathlib.Path(sys.argv[1]).mkdir(parents=True)
pathlib.Path(sys.argv[1], "none.yaml").write_text("")

def build(*extra):
    options = agent.Options()
    options.parseOptions([
        "--config", sys.argv[1] + "/none.yaml", "--server", "https://127.0.0.1:1",
        "--token", "K10::node:x", "--data-dir", sys.argv[1] + "/data",
        "--node-identity-dir", sys.argv[1] + "/node", *extra,
    ])
    agent.makeService(options)
    print("prometheus_client" in sys.modules)

build()
build("--lb-status-port", "1")
"""


class AgentImportTests(SynchronousTestCase):
    def test_metrics_only_with_a_status_page(self) -> None:
        """An agent keeps Prometheus metrics only when --lb-status-port serves them."""
        self.assertEqual(run_python(_AGENT, self.mktemp()), ["False", "True"])


class AgentProcessTests(SynchronousTestCase):
    """A real agent joined to a real server, running its kubelet and a tunnel."""

    def test_nothing_of_the_server_half(self) -> None:
        """The node half takes the identities it shares with servers from
        k3stw.machinery.identity: no API server, controller, datastore or
        supervisor module is loaded."""
        modules = agent_process().modules
        self.assertIn("k3stw.kubelet.api", modules)
        self.assertIn("k3stw.tunnel.session", modules)
        self.assertEqual(loaded(modules, *SERVER_HALF, "yaml"), [])

    def test_no_autobahn(self) -> None:
        """The agent's tunnel runs on wsproto: autobahn and txaio (about 5 MiB with
        their native pieces) are never imported by an agent."""
        modules = agent_process().modules
        self.assertIn("wsproto", modules)
        self.assertIn("k3stw.tunnel.client", modules)
        self.assertEqual(loaded(modules, "autobahn", "txaio", "k3stw.tunnel.protocol"), [])

    def test_stops_when_its_reactor_stops(self) -> None:
        """With its tunnel open, the agent still ends by itself once its reactor stops."""
        self.assertTrue(
            agent_process().stopped,
            f"the agent was still running {STOP_TIMEOUT:g} s after its reactor stopped (SIGKILLed)",
        )


#: Imports the module named by its argument; prints every module then loaded.
_IMPORT = """
import importlib, sys
importlib.import_module(sys.argv[1])
print(*sorted(sys.modules))
"""


class NodeModuleImportTests(SynchronousTestCase):
    def test_node_modules_leave_the_server_half_out(self) -> None:
        """Importing the kubelet's API or the agent's service loads nothing of the server half."""
        for module in ("k3stw.kubelet.api", "k3stw.agent.service"):
            modules = frozenset(run_python(_IMPORT, module))
            self.assertIn(module, modules)
            self.assertEqual(loaded(modules, *SERVER_HALF), [], module)
