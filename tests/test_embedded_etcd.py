"""
Servers on embedded etcd, as real processes on loopback addresses: each
runs Debian's etcd as its member (peer and client URLs on its own
127.0.0.x).  A cluster-init server serves kubectl and keeps its data over a
restart; three servers take writes through any of them, carry on within
5 s of one being SIGKILLed with no acknowledged write lost, and the killed
one catches up when it returns; joins that k3s refuses are refused; a
scheduled snapshot restores with ``--cluster-reset``.

Slow (each test starts etcd members and servers): 20-60 s apiece.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from twisted.trial.unittest import SynchronousTestCase

from tests.support.twistd import Twistd, https_get, k3s_server
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
        config = yaml.safe_load((root / "k3s.yaml").read_text())
        user = config["users"][0]["user"]
        pem = root / "admin.pem"
        pem.write_bytes(
            base64.b64decode(user["client-certificate-data"])
            + base64.b64decode(user["client-key-data"])
        )
        self.context = ssl.create_default_context(
            cafile=str(root / "data/server/tls/server-ca.crt")
        )
        self.context.load_cert_chain(str(pem))

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


class ClusterInitTests(SynchronousTestCase):
    def test_cluster_init_serves_kubectl_and_keeps_its_data_over_a_restart(self) -> None:
        servers = EtcdServers(self, ["127.0.0.211"])
        address = servers.addresses[0]
        first = servers.first("s1", address).start()
        servers.ready(first, address)
        db = servers.home("s1") / "data/server/db/etcd"
        self.assertEqual(oct(db.stat().st_mode & 0o777), "0o700")
        config = yaml.safe_load((db / "config").read_text())
        self.assertEqual(config["name"], (db / "name").read_text())
        self.assertEqual(config["initial-cluster-state"], "new")
        self.assertEqual(config["election-timeout"], 1000)
        created = servers.kubectl(address, "create", "configmap", "kept")
        self.assertEqual(created.returncode, 0, created.stderr)
        members = servers.etcdctl("s1", address, "member", "list")
        self.assertEqual(members.returncode, 0, members.stderr)
        self.assertIn(config["name"], members.stdout)
        self.assertEqual(first.stop(), -signal.SIGTERM)
        self.assertTrue(refused(address, 2379), "etcd outlived its server")

        # Started again on its data: the same member, no new cluster.
        again = servers.server("s1", address).start()
        servers.ready(again, address)
        again.wait_for_output("Managed etcd cluster bootstrap already complete and initialized")
        self.assertNotIn("initial-cluster", yaml.safe_load((db / "config").read_text()))
        listed = servers.kubectl(address, "get", "configmap", "kept", "-o", "name")
        self.assertEqual(listed.stdout.strip(), "configmap/kept", listed.stderr)

        # A server whose critical flags differ, or whose name is taken, is refused as k3s refuses.
        other = servers.joining("s2", "127.0.0.212", "--cluster-cidr", "10.99.0.0/16").start()
        self.assertEqual(other.wait_for_exit(60), 1)
        self.assertIn("critical configuration mismatched: cluster-cidr", other.output)
        self.assertIn(
            "failed to validate server configuration: critical configuration value mismatch "
            "between servers",
            other.output,
        )
        twin = servers.server(
            "s1-twin", "127.0.0.213", "--server", f"https://{address}:{servers.port}",
        )  # fmt: skip
        # Same node name as the first server, on another address.
        twin.args = tuple("s1" if arg == "s1-twin" else arg for arg in twin.args)
        twin.start()
        self.assertEqual(twin.wait_for_exit(60), 1)
        self.assertIn(
            "duplicate node name found, please use a unique name for this node", twin.output
        )


class ThreeServerTests(SynchronousTestCase):
    def test_writes_survive_a_sigkilled_server_and_it_catches_up(self) -> None:
        addresses = ["127.0.0.221", "127.0.0.222", "127.0.0.223"]
        servers = EtcdServers(self, addresses)
        first = servers.first("s1", addresses[0]).start()
        servers.ready(first, addresses[0])
        for i, address in enumerate(addresses[1:], 2):
            servers.joining(f"s{i}", address).start()
        for i, address in enumerate(addresses[1:], 2):
            servers.ready(servers.processes[f"s{i}"], address, timeout=90)
        listed = servers.etcdctl("s1", addresses[0], "member", "list", "-w", "json")
        members = json.loads(listed.stdout)["members"]
        self.assertEqual(len(members), 3)
        self.assertFalse(any(m.get("isLearner") for m in members), members)
        admin = Admin(servers.home("s1"))
        # Writes through any server.
        for i, address in enumerate(addresses):
            self.assertTrue(admin.create_configmap(address, servers.port, f"through-{i}"))

        # The etcd leader's server is the one killed.
        status = servers.etcdctl(
            "s1", addresses[0], "endpoint", "status", "-w", "json",
            "--endpoints", ",".join(f"https://{a}:2379" for a in addresses),
        )  # fmt: skip
        reports = json.loads(status.stdout)
        leader_id = reports[0]["Status"]["leader"]
        (victim,) = {
            r["Endpoint"].removeprefix("https://").rpartition(":")[0]
            for r in reports
            if r["Status"]["header"]["member_id"] == leader_id
        }
        victim_name = f"s{addresses.index(victim) + 1}"
        survivors = [a for a in addresses if a != victim]

        acknowledged: list[str] = []
        first_after_kill: dict[str, float] = {}
        killed_at: list[float] = []
        stop = threading.Event()

        def writer() -> None:
            n = 0
            while not stop.is_set():
                for address in addresses:
                    n += 1
                    name = f"w-{n}"
                    if admin.create_configmap(address, servers.port, name, timeout=3):
                        acknowledged.append(name)
                        if killed_at and address not in first_after_kill:
                            first_after_kill[address] = time.monotonic() - killed_at[0]

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            wait(lambda: len(acknowledged) > 20, "writes before the kill")
            process = servers.processes[victim_name].process
            assert process is not None
            killed_at.append(time.monotonic())
            process.send_signal(signal.SIGKILL)
            process.wait()
            wait(lambda: refused(victim, 2379), "the killed server's etcd gone", 5)
            wait(lambda: set(survivors) <= set(first_after_kill), "writes after the kill", 30)
            time.sleep(2)
        finally:
            stop.set()
            thread.join()
        print("first acknowledged write after the kill, by server:", first_after_kill)
        for address in survivors:
            self.assertLess(first_after_kill[address], 5.0, (address, first_after_kill))
        for address in survivors:
            names = admin.configmaps(address, servers.port)
            self.assertEqual(set(acknowledged) - names, set(), address)

        # The killed server comes back on its data and catches up.
        back = servers.server(victim_name, victim).start()
        servers.ready(back, victim, timeout=90)
        wait(
            lambda: set(acknowledged) <= admin.configmaps(victim, servers.port),
            "the returned server caught up",
        )

        # Deleting a server's Node removes its member, as k3s's controller does.
        gone = survivors[-1]
        gone_name = f"s{addresses.index(gone) + 1}"
        member = (servers.home(gone_name) / "data/server/db/etcd/name").read_text()
        annotations = servers.kubectl(
            victim, "get", "node", gone_name, "-o", "jsonpath={.metadata.annotations}"
        )
        self.assertEqual(
            json.loads(annotations.stdout)["etcd.k3s.cattle.io/node-name"], member, annotations
        )
        deleted = servers.kubectl(victim, "delete", "node", gone_name, "--timeout=60s")
        self.assertEqual(deleted.returncode, 0, deleted.stderr)
        listed = servers.etcdctl("s1", victim, "member", "list", "-w", "json",
                                 "--endpoints", f"https://{victim}:2379")  # fmt: skip
        names = {m.get("name") for m in json.loads(listed.stdout)["members"]}
        self.assertEqual(len(names), 2, listed.stdout)
        self.assertNotIn(member, names)


class SnapshotResetTests(SynchronousTestCase):
    def test_a_scheduled_snapshot_restores_with_cluster_reset(self) -> None:
        servers = EtcdServers(self, ["127.0.0.231"])
        address = servers.addresses[0]
        flags = ("--etcd-snapshot-schedule-cron", "* * * * *", "--etcd-snapshot-compress")
        first = servers.first("s1", address, *flags).start()
        servers.ready(first, address)
        admin = Admin(servers.home("s1"))
        self.assertTrue(admin.create_configmap(address, servers.port, "before"))
        snapshots = servers.home("s1") / "data/server/db/snapshots"
        wait(lambda: any(snapshots.glob("etcd-snapshot-s1-*.zip")), "a snapshot", 75)
        (snapshot,) = snapshots.glob("etcd-snapshot-s1-*.zip")
        first.wait_for_output("Saving etcd snapshot to")
        self.assertTrue(admin.create_configmap(address, servers.port, "after"))
        self.assertEqual(first.stop(), -signal.SIGTERM)

        reset = servers.server(
            "s1", address, "--cluster-reset", "--cluster-reset-restore-path", str(snapshot)
        ).start()
        self.assertEqual(reset.wait_for_exit(90), 0, reset.output[-4000:])
        self.assertIn(
            "Managed etcd cluster membership has been reset, restart without --cluster-reset "
            "flag now. Backup and delete ${datadir}/server/db on each peer etcd server and "
            "rejoin the nodes",
            reset.output,
        )
        self.assertIn("Pre-restore etcd database moved to", reset.output)
        db = servers.home("s1") / "data/server/db"
        self.assertTrue((db / "reset-flag").exists())

        again = servers.server("s1", address).start()
        servers.ready(again, address)
        names = admin.configmaps(address, servers.port)
        self.assertIn("before", names)
        self.assertNotIn("after", names)
        self.assertFalse((db / "reset-flag").exists())
