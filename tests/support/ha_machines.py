"""
An HA cluster in test machines (tests/support/machines.py): a hub machine
(m0) that routes between the others and holds the fixed registration
address (haproxy in TCP mode on ``10.199.1.1:6443``, in front of every
server), the external database when there is one, and the writer; each
server and each agent a machine of its own, with k3s's default paths and
ports.  Every client that dials a machine's address runs inside a machine.

Faults: a server SIGKILLed (its etcd member dies with it), or partitioned
(everything but loopback dropped inside its network namespace).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from twisted.trial.unittest import SynchronousTestCase

from tests.support.machines import Machine, machines

TOKEN = "ha-machines-secret"
PORT = 6443
#: The fixed registration address: the hub's end of the first server's link.
FIXED = "10.199.1.1"
TWISTD = Path(sys.executable).with_name("twistd")
PYTHON = sys.executable
REPOSITORY = Path(__file__).resolve().parents[2]
FAST_ELECTIONS = "--etcd-arg election-timeout=1000 --etcd-arg heartbeat-interval=100"
DATA = "/var/lib/rancher/k3s"
#: Rules that cut a machine off from every other (inserted, then deleted to heal).
PARTITION = ("INPUT ! -i lo -j DROP", "OUTPUT ! -o lo -j DROP")


def until(what: str, check: Callable[[], bool], timeout: float = 90.0) -> float:
    """Wait for C{check}; the seconds it took.  Fails the test after C{timeout}."""
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - began


def child(launcher: subprocess.Popen[bytes]) -> int:
    """The host pid of what C{Machine.spawn} started (nsenter's child), 0 before it runs."""
    pid = launcher.pid
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0
    return int(children[0]) if children else 0


@dataclass
class Node:
    """A k3stw process in a machine: its launcher (nsenter), its host pid, its log."""

    machine: Machine
    name: str
    arguments: str
    log: Path = Path()
    launcher: subprocess.Popen[bytes] | None = None
    pid: int = 0
    runs: int = 0

    @property
    def address(self) -> str:
        return self.machine.address

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class HACluster:
    """
    The machines of one HA test: hub, C{servers} server machines (one more
    spare for a server that joins later) and C{agents} agent machines.

    :param datastore: ``etcd`` (embedded) or an external database's endpoint
        (on the hub), which every server gets as ``--datastore-endpoint``.
    """

    def __init__(
        self, case: SynchronousTestCase, work: Path, servers: int, agents: int, datastore: str
    ) -> None:
        self.case = case
        self.work = work
        self.datastore = datastore
        found = machines(case, work / "machines", 1 + servers + 1 + agents)
        self.hub = found[0]
        self.server_machines = found[1 : servers + 2]
        self.agent_machines = found[servers + 2 :]
        for machine in found:
            machine.boot()
        self.hub.run("sysctl -qw net.ipv4.ip_forward=1")
        self.nodes: dict[str, Node] = {}
        self.tls = work / "tls"
        self.haproxy: subprocess.Popen[bytes] | None = None
        #: The embedded-etcd servers' election flags ("": k3s's 500 ms heartbeat, 5 s election).
        self.elections = FAST_ELECTIONS
        case.addCleanup(self.stop_all)

    # -- processes -------------------------------------------------------

    def launch(self, node: Node) -> Node:
        """Start C{node}'s twistd in its machine (again, after a kill or a stop)."""
        # One log per run: node.log is the latest.
        node.runs += 1
        node.log = self.work / f"{node.name}-{node.runs}.log"
        node.launcher = node.machine.spawn(
            f"exec {TWISTD} -n --pidfile= --logfile=- {node.arguments}", node.log
        )
        until(f"{node.name}'s twistd", lambda: self._child(node) != 0, 30)
        node.pid = self._child(node)
        return node

    @staticmethod
    def _child(node: Node) -> int:
        assert node.launcher is not None
        return child(node.launcher)

    def server(self, index: int, *flags: str) -> Node:
        """Server C{index} (1-based) in its machine, started."""
        store = self.elections
        if self.datastore != "etcd":
            store = f"--datastore-endpoint '{self.datastore}'"
        extra = f"--tls-san {FIXED} {store} {' '.join(flags)}"
        return self._node("k3s-server", self.server_machines[index - 1], f"s{index}", extra)

    def agent(self, index: int, server: str = FIXED) -> Node:
        """Agent C{index} (1-based) in its machine, registering through C{server}, started."""
        extra = f"--server https://{server}:{PORT}"
        return self._node("k3s-agent", self.agent_machines[index - 1], f"a{index}", extra)

    def _node(self, plugin: str, machine: Machine, name: str, extra: str) -> Node:
        arguments = (
            f"{plugin} --container-runtime none --node-name {name} --node-ip {machine.address} "
            f"--token {TOKEN} {extra}"
        )
        node = Node(machine, name, arguments)
        self.nodes[name] = node
        return self.launch(node)

    def kill(self, node: Node) -> None:
        """SIGKILL, as a crash: nothing of the node runs any more."""
        assert node.launcher is not None
        os.kill(node.pid, signal.SIGKILL)
        node.launcher.wait(30)
        node.launcher = None

    def stop(self, node: Node) -> None:
        """SIGTERM; the node must exit by itself."""
        assert node.launcher is not None
        os.kill(node.pid, signal.SIGTERM)
        node.launcher.wait(60)
        node.launcher = None

    def stop_all(self) -> None:
        """
        SIGTERM to every node still running, all at once (members stopped one
        by one would lose their quorum under the last), then haproxy.
        """
        running = [n for n in self.nodes.values() if n.launcher is not None]
        for node in running:
            # A node that failed the test may have exited (its launcher with it).
            assert node.launcher is not None
            if node.launcher.poll() is None:
                os.kill(node.pid, signal.SIGTERM)
        for node in running:
            assert node.launcher is not None
            # Else the machine's end (its cleanup) takes it down.
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.launcher.wait(30)
            node.launcher = None
        if self.haproxy is not None:
            self.stop_haproxy()

    def fail(self, node: Node, kind: str) -> None:
        """C{kind} (``SIGKILL`` or ``partition``) befalls C{node}."""
        if kind == "SIGKILL":
            self.kill(node)
        else:
            self.partition(node)

    def bring_back(self, node: Node, kind: str, writer: Writer, timeout: float = 90) -> float:
        """
        C{node} returns from C{kind} (restarted on its data, or healed); the
        seconds until it serves the write acknowledged last before it returned.
        """
        returned = time.monotonic()
        if kind == "SIGKILL":
            self.launch(node)
        else:
            self.heal(node)
        newest = writer.newest()
        self.ready(node)
        until(f"{node.name} caught up", lambda: self.shows(node, newest), timeout)
        return time.monotonic() - returned

    def partition(self, node: Node) -> None:
        node.machine.run(" && ".join(f"iptables -I {rule}" for rule in PARTITION))

    def heal(self, node: Node) -> None:
        node.machine.run(" && ".join(f"iptables -D {rule}" for rule in PARTITION))

    # -- the fixed registration address -----------------------------------

    def start_haproxy(self) -> None:
        """haproxy in TCP mode on the hub's FIXED:6443, in front of every server machine."""
        backends = "\n".join(
            f"    server s{i} {m.address}:{PORT} check inter 1s"
            for i, m in enumerate(self.server_machines, 1)
        )
        config = self.work / "haproxy.cfg"
        config.write_text(
            "global\n    maxconn 500\n"
            "defaults\n    mode tcp\n    timeout connect 2s\n"
            "    timeout client 1h\n    timeout server 1h\n"
            f"frontend fixed\n    bind {FIXED}:{PORT}\n    default_backend servers\n"
            f"backend servers\n{backends}\n"
        )
        self.haproxy = self.hub.spawn(f"exec haproxy -db -f {config}", self.work / "haproxy.log")
        until("haproxy listening", lambda: f":{PORT} " in self.hub.run("ss -Htln"), 15)

    def stop_haproxy(self) -> None:
        assert self.haproxy is not None
        os.kill(child(self.haproxy), signal.SIGTERM)
        self.haproxy.wait(10)
        self.haproxy = None

    # -- clients, all in machines -----------------------------------------

    def take_admin_credentials(self, node: Node) -> None:
        """The admin's certificate and the server CA, for clients: from C{node}'s machine."""
        self.tls.mkdir(exist_ok=True)
        config = yaml.safe_load(node.machine.path("/etc/rancher/k3s/k3s.yaml").read_text())
        user = config["users"][0]["user"]
        (self.tls / "admin.pem").write_bytes(
            base64.b64decode(user["client-certificate-data"])
            + base64.b64decode(user["client-key-data"])
        )
        ca = node.machine.path(f"{DATA}/server/tls/server-ca.crt").read_bytes()
        (self.tls / "ca.crt").write_bytes(ca)
        etcd = node.machine.path(f"{DATA}/server/tls/etcd")
        if self.datastore == "etcd":
            for name in ("server-ca.crt", "client.crt", "client.key"):
                (self.tls / f"etcd-{name}").write_bytes((etcd / name).read_bytes())

    def tool(self, machine: Machine, *arguments: str, timeout: float = 30) -> str:
        """tests/support/ha_writer.py run in C{machine}."""
        return machine.run(
            f"cd {REPOSITORY} && {PYTHON} -m tests.support.ha_writer {' '.join(arguments)}",
            timeout=timeout,
        )

    def get(self, machine: Machine, address: str, path: str, port: int = PORT) -> int:
        """The status of an admin GET of C{path} from C{machine} (0: no answer)."""
        return int(self.tool(machine, "get", str(self.tls), str(port), address, path))

    def ready(self, node: Node, timeout: float = 120) -> float:
        """Wait for C{node}'s ``/v1-k3s/readyz``; the first ready server gives the clients' TLS."""
        if not (self.tls / "ca.crt").exists():
            config = node.machine.path("/etc/rancher/k3s/k3s.yaml")
            until(f"{node.name}'s admin kubeconfig", config.exists, timeout)
            self.take_admin_credentials(node)

        def answers() -> bool:
            if node.launcher is not None and node.launcher.poll() is not None:
                raise AssertionError(f"{node.name} exited:\n{node.output()[-4000:]}")
            return self.get(self.hub, node.address, "/v1-k3s/readyz") == 200

        return until(f"{node.name} ready", answers, timeout)

    def kubectl(self, *arguments: str, server: Node | None = None, machine: Machine | None = None,
                port: int = PORT, address: str | None = None) -> str:  # fmt: skip
        """kubectl as the admin, in C{machine} (the hub), through C{server} (s1)."""
        target = address or (server or self.nodes["s1"]).address
        config = self.work / "admin.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "c", "cluster": {
                        "server": f"https://{target}:{port}",
                        "certificate-authority": str(self.tls / "ca.crt")}}],
                    "users": [{"name": "u", "user": {
                        "client-certificate": str(self.tls / "admin.pem"),
                        "client-key": str(self.tls / "admin.pem")}}],
                    "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "c",
                }
            )
        )  # fmt: skip
        return (machine or self.hub).run(
            f"KUBECONFIG={config} kubectl --request-timeout=5s {' '.join(arguments)}"
        )

    def node_ready(self, name: str, server: Node) -> bool:
        try:
            found = json.loads(self.kubectl("get", "node", name, "-o", "json", server=server))
        except AssertionError:
            return False
        conditions = {c["type"]: c["status"] for c in found["status"].get("conditions", [])}
        return conditions.get("Ready") == "True"

    def agent_healthy(self, agent: Node, servers: list[Node]) -> bool:
        """
        Whether the agent's own load balancer (127.0.0.1:6444 in its machine)
        reaches a server, and each of C{servers} reaches its kubelet (its tunnel).
        """
        path = f"/api/v1/nodes/{agent.name}"
        if self.get(agent.machine, "127.0.0.1", path, port=6444) != 200:
            return False
        return all(self.get(self.hub, s.address, f"{path}/proxy/healthz") == 200 for s in servers)

    def shows(self, server: Node, name: str) -> bool:
        """Whether C{server} serves the ConfigMap C{name} (asked from the hub)."""
        return (
            self.get(self.hub, server.address, f"/api/v1/namespaces/default/configmaps/{name}")
            == 200
        )

    def balancer_addresses(self, agent: Node) -> set[str]:
        """The server list the agent's load balancer keeps across restarts (k3s's state file)."""
        state = agent.machine.path(f"{DATA}/agent/etc/k3s-agent-load-balancer.json")
        try:
            return set(json.loads(state.read_text())["ServerAddresses"])
        except (OSError, ValueError):
            return set()

    def etcd_leader(self) -> Node:
        """The server whose etcd member leads (asked from the hub with etcdctl)."""
        servers = [n for n in self.nodes.values() if n.name.startswith("s") and n.launcher]
        endpoints = ",".join(f"https://{s.address}:2379" for s in servers)
        reports = json.loads(
            self.hub.run(
                f"etcdctl --endpoints {endpoints} --cacert {self.tls}/etcd-server-ca.crt "
                f"--cert {self.tls}/etcd-client.crt --key {self.tls}/etcd-client.key "
                "endpoint status -w json"
            )
        )
        (leader,) = {r["Status"]["leader"] for r in reports}
        (endpoint,) = [
            r["Endpoint"] for r in reports if r["Status"]["header"]["member_id"] == leader
        ]
        return next(s for s in servers if endpoint == f"https://{s.address}:2379")


class Writer:
    """The writer in the hub: creates ConfigMaps through every server in turn, records acks."""

    def __init__(self, cluster: HACluster, servers: list[Node]) -> None:
        self.cluster = cluster
        self.record = cluster.work / "acknowledged"
        self.stop_file = cluster.work / "writer-stop"
        addresses = " ".join(s.address for s in servers)
        self.process = cluster.hub.spawn(
            f"cd {REPOSITORY} && exec {PYTHON} -m tests.support.ha_writer write "
            f"{cluster.tls} {PORT} {self.record} {self.stop_file} {addresses}",
            cluster.work / "writer.log",
        )
        cluster.case.addCleanup(self.stop)

    def acknowledged(self) -> list[tuple[str, str, float, float]]:
        """(name, address, sent, acknowledged) of every acknowledged write so far (monotonic)."""
        if not self.record.exists():
            return []
        # A line still being written has fewer fields.
        lines = [line.split() for line in self.record.read_text().splitlines()]
        return [(n, ip, float(s), float(a)) for n, ip, s, a in (f for f in lines if len(f) == 4)]

    def first_after(self, moment: float) -> dict[str, float]:
        """
        Per server address, the seconds from C{moment} to the acknowledgement
        of the first write sent after it that the server acknowledged.
        """
        first: dict[str, float] = {}
        for _, address, sent, acknowledged in self.acknowledged():
            if sent > moment and address not in first:
                first[address] = acknowledged - moment
        return first

    def newest(self) -> str:
        """The name of the write acknowledged last."""
        return self.acknowledged()[-1][0]

    def stop(self) -> None:
        self.stop_file.touch()
        if self.process.poll() is None:
            self.process.wait(30)

    def lost(self, through: Node) -> list[str] | None:
        """Acknowledged writes a list through C{through} does not show (None: no list)."""
        try:
            missing = self.cluster.tool(
                self.cluster.hub, "check", str(self.cluster.tls), str(PORT), str(self.record),
                through.address,
            )  # fmt: skip
        except AssertionError:
            return None
        return missing.split()
