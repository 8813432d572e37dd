"""
Servers on embedded etcd as real processes, each on its own loopback
address (its etcd member's peer and client URLs there too), and blocking
admin requests to any of them: for the embedded-etcd tests.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support.twistd import Twistd, admin_context, https_get, k3s_server
from tests.test_ha_failover import port_free_on

KUBECTL = "kubectl"
TOKEN = "embedded-etcd-secret"
#: Faster elections than k3s's 5 s, so that a lost leader is replaced within the goal.
FAST_ELECTIONS = (
    "--etcd-arg", "election-timeout=1000", "--etcd-arg", "heartbeat-interval=100",
)  # fmt: skip


#: Seconds servers stopped together may take (one member's datastore timeout and its stop).
STOP_ALL_TIMEOUT = 15.0


def wait(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Admin:
    """Blocking requests as the cluster admin, to any server."""

    def __init__(self, root: Path) -> None:
        self.context = admin_context(root)

    def request(
        self, host: str, port: int, method: str, path: str, body: object = None, timeout: float = 10
    ) -> tuple[int, dict[str, object]]:
        connection = http.client.HTTPSConnection(host, port, context=self.context, timeout=timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            connection.request(method, path, payload, {"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            connection.close()

    def create_configmap(self, host: str, port: int, name: str, timeout: float = 10) -> bool:
        """Whether the server acknowledged the write (201)."""
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}
        try:
            status, _ = self.request(
                host, port, "POST", "/api/v1/namespaces/default/configmaps", body, timeout
            )
        except OSError:
            return False
        return status == 201

    def configmaps(self, host: str, port: int) -> set[str]:
        status, listed = self.request(host, port, "GET", "/api/v1/namespaces/default/configmaps")
        assert status == 200, listed
        items = listed["items"]
        assert isinstance(items, list)
        return {item["metadata"]["name"] for item in items}


class EtcdServers:
    """Servers on embedded etcd under one root, each on its own loopback address."""

    def __init__(self, case: SynchronousTestCase, addresses: list[str]) -> None:
        self.case = case
        self.root = Path(tempfile.mkdtemp(prefix="k3stw-etcd-"))
        self.addresses = addresses
        self.port = port_free_on(*addresses)
        self.processes: dict[str, Twistd] = {}

    def home(self, name: str) -> Path:
        return self.root / name

    def server(self, name: str, address: str, *flags: str) -> Twistd:
        server = k3s_server(
            self.case, self.home(name), address, self.port,
            "--node-name", name, "--node-ip", address, "--token", TOKEN, *FAST_ELECTIONS, *flags,
        )  # fmt: skip
        self.processes[name] = server
        # Runs before the servers' own cleanups: all stop together, as members
        # that stop one by one would lose their quorum under the last ones.
        self.case.addCleanup(self.stop_all)
        return server

    def stop_all(self) -> None:
        """
        SIGTERM to every server at once, and a wait for each: the last ones
        lose their quorum as the others' members go, and their final writes
        (leases given up) wait out the datastore's 5 s timeout first.
        """
        running = [
            server.process
            for server in self.processes.values()
            if server.process is not None and server.process.poll() is None
        ]
        for process in running:
            process.send_signal(signal.SIGTERM)
        for process in running:
            process.wait(STOP_ALL_TIMEOUT)

    def first(self, name: str, address: str, *flags: str) -> Twistd:
        return self.server(name, address, "--cluster-init", *flags)

    def joining(self, name: str, address: str, *flags: str) -> Twistd:
        url = f"https://{self.addresses[0]}:{self.port}"
        return self.server(name, address, "--server", url, *flags)

    def ready(self, server: Twistd, address: str, timeout: float = 60.0) -> None:
        ca = self.home("s1") / "data/server/tls/server-ca.crt"

        def answers() -> bool:
            if server.process is not None and server.process.poll() is not None:
                raise AssertionError(f"server exited:\n{server.output[-4000:]}")
            try:
                return https_get(address, self.port, "/v1-k3s/readyz", ca, timeout=2)[0] == 200
            except OSError:
                return False

        wait(answers, f"{address} ready", timeout)

    def etcdctl(self, name: str, address: str, *args: str) -> subprocess.CompletedProcess[str]:
        tls = self.home(name) / "data/server/tls/etcd"
        return subprocess.run(
            [
                "etcdctl", "--endpoints", f"https://{address}:2379",
                "--cacert", str(tls / "server-ca.crt"), "--cert", str(tls / "client.crt"),
                "--key", str(tls / "client.key"), "--dial-timeout", "2s", *args,
            ],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    def leader(self) -> str:
        """The address of the server whose member leads etcd."""
        status = self.etcdctl(
            "s1", self.addresses[0], "endpoint", "status", "-w", "json",
            "--endpoints", ",".join(f"https://{a}:2379" for a in self.addresses),
        )  # fmt: skip
        reports = json.loads(status.stdout)
        leaders = {r["Status"]["leader"] for r in reports}
        assert len(leaders) == 1, reports
        (address,) = {
            r["Endpoint"].removeprefix("https://").rpartition(":")[0]
            for r in reports
            if r["Status"]["header"]["member_id"] in leaders
        }
        return str(address)

    def kubectl(self, address: str, *args: str) -> subprocess.CompletedProcess[str]:
        config = self.home("s1") / "k3s.yaml"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "K3S_"))}
        env.update(KUBECONFIG=str(config), KUBECACHEDIR=str(self.root / "kubecache"))
        server = f"https://{address}:{self.port}"
        return subprocess.run(
            [KUBECTL, "--server", server, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )


def refused(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return False
    except OSError:
        return True
