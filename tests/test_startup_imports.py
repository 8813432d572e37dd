"""
What a real ``k3s-server`` process has imported once its own node has joined:
nothing that only agents use (the load balancer, its Prometheus metrics, the
tunnel client), and no test or optional-driver library.  Start-up time and
memory go with every module loaded (``bench/startup.py``).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support.net import free_port
from tests.support.twistd import START_TIMEOUT, clean_environment

HOST = "127.0.0.9"

#: twistd, which writes the modules it has loaded a second after its node joined (time for
#: the kubelet to register and serve), then stops.
_RUN_TWISTD = """
import json, sys
from twisted.internet import reactor
from twisted.logger import globalLogPublisher
from twisted.scripts.twistd import run
def report(path=sys.argv[1]):
    with open(path, "w") as out:
        json.dump(sorted(sys.modules), out)
    reactor.stop()
def joined(event):
    if "joined the cluster" in (event.get("log_format") or ""):
        reactor.callLater(1.0, report)
globalLogPublisher.addObserver(joined)
sys.argv = ["twistd", *sys.argv[2:]]
run()
"""


@functools.cache
def server_modules() -> frozenset[str]:
    """The modules of ``twistd -n k3s-server`` (defaults, SQLite) after its node joined."""
    with tempfile.TemporaryDirectory(prefix="k3stw-imports-") as directory:
        work = Path(directory)
        (work / "config.yaml").write_text("")
        report = work / "modules.json"
        argv = [
            sys.executable, "-c", _RUN_TWISTD, str(report), "-n", "--pidfile=", "k3s-server",
            "--config", str(work / "config.yaml"), "--data-dir", str(work / "data"),
            "--bind-address", HOST, "--https-listen-port", str(free_port(HOST)),
            "--write-kubeconfig", str(work / "k3s.yaml"), "--node-identity-dir", str(work / "node"),
            "--kubelet-arg", f"port={free_port('127.0.0.1')}",
        ]  # fmt: skip
        server = subprocess.run(
            argv,
            cwd=work,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            env=clean_environment(),
        )
        if not report.exists():
            raise AssertionError(f"the node did not join:\n{server.stdout}{server.stderr}")
        return frozenset(json.loads(report.read_text()))


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
