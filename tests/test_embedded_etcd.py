"""
Servers on embedded etcd, as real processes on loopback addresses: each
runs Debian's etcd as its member (peer and client URLs on its own
127.0.0.x).  A cluster-init server serves kubectl and keeps its data over a
restart; three servers take writes through any of them, and deleting a
server's Node removes its member, which joins again when restarted; joins
that k3s refuses are refused; a scheduled snapshot restores with
``--cluster-reset``.  Faults (SIGKILL, partitions) are in
tests/test_ha_machines.py, each server in a network namespace of its own.

Slow (each test starts etcd members and servers): 20-60 s apiece.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import yaml
from twisted.trial.unittest import SynchronousTestCase

from tests.support.embedded_etcd import Admin, EtcdServers, refused, wait


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
        # The cluster's bootstrap data is kept in etcd, sealed with the token, as k3s keeps it.
        first.wait_for_output("Saved the cluster's bootstrap data to etcd")
        keys = servers.etcdctl("s1", address, "get", "--prefix", "/bootstrap/", "--keys-only")
        self.assertRegex(keys.stdout.strip(), r"^/bootstrap/[0-9a-f]{12}$")
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
        again.wait_for_output("Serving HTTP bootstrap from datastore for")


class ThreeServerTests(SynchronousTestCase):
    def test_writes_through_any_and_a_deleted_server_node_loses_its_member(self) -> None:
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

        # Deleting a server's Node removes its member, as k3s's controller does.
        through, gone, gone_name = addresses[0], addresses[2], "s3"
        member = (servers.home(gone_name) / "data/server/db/etcd/name").read_text()

        def annotated() -> str | None:
            found = servers.kubectl(
                through, "get", "node", gone_name, "-o", "jsonpath={.metadata.annotations}"
            )
            member = json.loads(found.stdout or "{}").get("etcd.k3s.cattle.io/node-name")
            return member if isinstance(member, str) else None

        # Its server annotates its Node with its member once the Node is registered.
        wait(lambda: annotated() is not None, "the server's Node annotated")
        self.assertEqual(annotated(), member)
        deleted = servers.kubectl(through, "delete", "node", gone_name, "--timeout=60s")
        self.assertEqual(deleted.returncode, 0, deleted.stderr)
        listed = servers.etcdctl("s1", through, "member", "list", "-w", "json",
                                 "--endpoints", f"https://{through}:2379")  # fmt: skip
        names = {m.get("name") for m in json.loads(listed.stdout)["members"]}
        self.assertEqual(len(names), 2, listed.stdout)
        self.assertNotIn(member, names)
        # Its server hears it was removed, and joins again as a new member when restarted.
        removed = servers.processes[gone_name]
        removed.wait_for_output(
            "This node has been removed from the cluster - please restart k3s to rejoin the cluster"
        )
        self.assertTrue((servers.home(gone_name) / "data/server/db/etcd/tombstone").exists())
        removed.stop(timeout=15)
        rejoined = servers.joining(gone_name, gone).start()
        servers.ready(rejoined, gone, timeout=90)
        rejoined.wait_for_output(
            "tombstone file has been detected, removing data dir to rejoin the cluster"
        )
        again = servers.etcdctl("s1", through, "member", "list", "-w", "json",
                                "--endpoints", f"https://{through}:2379")  # fmt: skip
        self.assertEqual(len(json.loads(again.stdout)["members"]), 3, again.stdout)


class SnapshotResetTests(SynchronousTestCase):
    def test_a_scheduled_snapshot_restores_with_cluster_reset(self) -> None:
        servers = EtcdServers(self, ["127.0.0.231"])
        address = servers.addresses[0]
        flags = ("--etcd-snapshot-schedule-cron", "* * * * *", "--etcd-snapshot-compress")
        first = servers.first("s1", address, *flags).start()
        servers.ready(first, address)
        admin = Admin(servers.home("s1"))
        self.assertTrue(admin.create_configmap(address, servers.port, "before"))
        written = time.time()
        snapshots = servers.home("s1") / "data/server/db/snapshots"

        def taken_since() -> list[Path]:
            # Named by the minute it was scheduled for: one scheduled while the
            # server was starting (a slow start) holds nothing written yet.
            return [
                path
                for path in snapshots.glob("etcd-snapshot-s1-*.zip")
                if int(path.name.removesuffix(".zip").rpartition("-")[2]) > written
            ]

        wait(lambda: bool(taken_since()), "a snapshot scheduled after the write", 135)
        snapshot = max(taken_since())
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
