"""
The ``k3s`` command against real servers on loopback: ``etcd-snapshot``
save, ls, prune and delete on a server on embedded etcd (with the
``ETCDSnapshotFile`` records following), a bootstrap token from ``token
create`` that an agent joins with, ``token rotate``, ``certificate check``
on a server's directory and ``kubectl get nodes``.

Slow (real twistd servers, an etcd member, an agent): 20-60 s apiece.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support.embedded_etcd import EtcdServers, wait
from tests.support.net import free_port
from tests.support.twistd import K3S, STOP_TIMEOUT, clean_environment, https_get, k3s_server
from tests.test_join import Cluster

ETCD_HOST = "127.0.0.176"
SERVER_HOST = "127.0.0.177"
AGENT_HOST = "127.0.0.178"
DAEMON_HOST = "127.0.0.175"


def k3s(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("K3S_", "KUBECONFIG"))}
    return subprocess.run(
        [*K3S, *argv], capture_output=True, text=True, timeout=120, env={**clean, **(env or {})}
    )


class EtcdSnapshotTests(SynchronousTestCase):
    def test_save_ls_prune_and_delete_with_their_records(self) -> None:
        servers = EtcdServers(self, [ETCD_HOST])
        server = servers.first("s1", ETCD_HOST, "--etcd-disable-snapshots").start()
        servers.ready(server, ETCD_HOST)
        data = str(servers.home("s1") / "data")
        where = ("--data-dir", data, "--etcd-server", f"https://{ETCD_HOST}:{servers.port}")
        saved = []
        for _ in range(2):
            done = k3s("etcd-snapshot", "save", *where)
            self.assertEqual(done.returncode, 0, done.stderr)
            match = re.fullmatch(r"Snapshot (on-demand-s1-\d+) saved\.\n", done.stdout)
            assert match is not None, done.stdout
            saved.append(match.group(1))
            # One a second: k3s names snapshots by the second they were taken.
            taken = int(saved[-1].rpartition("-")[2])
            wait(lambda taken=taken: taken < int(time.time()), "a new second")  # type: ignore[misc]
            if len(saved) > 1:
                continue
            # The second snapshot is taken with extra metadata, as k3s keeps it.
            made = servers.kubectl(
                ETCD_HOST, "create", "configmap", "-n", "kube-system",
                "k3s-etcd-snapshot-extra-metadata", "--from-literal=release=v1.32",
            )  # fmt: skip
            self.assertEqual(made.returncode, 0, made.stderr)
        snapshots = Path(data) / "server/db/snapshots"
        self.assertEqual(sorted(p.name for p in snapshots.iterdir()), sorted(saved))
        metadata = Path(data) / "server/db/.metadata"
        self.assertEqual(json.loads((metadata / saved[1]).read_text()), {"release": "v1.32"})
        self.assertFalse((metadata / saved[0]).exists())
        listed = k3s("etcd-snapshot", "ls", *where)
        self.assertEqual(listed.returncode, 0, listed.stderr)
        lines = listed.stdout.splitlines()
        self.assertEqual(lines[0].split(), ["Name", "Location", "Size", "Created"])
        self.assertEqual([line.split()[0] for line in lines[1:]], saved)
        self.assertEqual(lines[1].split()[1], (snapshots / saved[0]).as_uri())
        self.assertEqual(int(lines[1].split()[2]), (snapshots / saved[0]).stat().st_size)

        def records() -> dict[str, object]:
            got = servers.kubectl(ETCD_HOST, "get", "etcdsnapshotfiles", "-o", "json")
            if got.returncode != 0:
                return {}
            return {
                item["spec"]["snapshotName"]: (
                    item["status"].get("readyToUse"),
                    item["spec"].get("metadata"),
                )
                for item in json.loads(got.stdout)["items"]
            }

        def legacy() -> dict[str, str]:
            got = servers.kubectl(
                ETCD_HOST, "get", "configmap", "-n", "kube-system", "k3s-etcd-snapshots",
                "-o", "jsonpath={.data}",
            )  # fmt: skip
            return json.loads(got.stdout or "{}") if got.returncode == 0 else {}

        expected = {saved[0]: (True, None), saved[1]: (True, {"release": "v1.32"})}
        wait(lambda: records() == expected, "a record per snapshot")
        table = servers.kubectl(ETCD_HOST, "get", "etcdsnapshotfiles")
        self.assertIn("SNAPSHOTNAME", table.stdout)
        self.assertIn(f"local-{saved[0]}-", table.stdout)
        # k3s 1.32's legacy ConfigMap holds the snapshots that carry extra metadata.
        entries = legacy()
        self.assertEqual(list(entries), [f"local-{saved[1]}"])
        entry = json.loads(entries[f"local-{saved[1]}"])
        self.assertEqual((entry["name"], entry["status"]), (saved[1], "successful"))
        self.assertEqual(json.loads(base64.b64decode(entry["metadata"])), {"release": "v1.32"})
        pruned = k3s("etcd-snapshot", "prune", "--etcd-snapshot-retention", "1", *where)
        self.assertEqual(pruned.returncode, 0, pruned.stderr)
        self.assertEqual(pruned.stdout, f"Snapshot {saved[0]} deleted.\n")
        self.assertEqual([p.name for p in snapshots.iterdir()], [saved[1]])
        deleted = k3s("etcd-snapshot", "delete", saved[1], "no-such-snapshot", *where)
        self.assertEqual(deleted.returncode, 0, deleted.stderr)
        self.assertEqual(deleted.stdout, f"Snapshot {saved[1]} deleted.\n")
        self.assertIn("Snapshot no-such-snapshot not found.", deleted.stderr)
        self.assertEqual(list(snapshots.iterdir()), [])
        self.assertFalse((metadata / saved[1]).exists())
        self.assertEqual(records(), {})
        self.assertEqual(legacy(), {})
        refused = k3s(
            "etcd-snapshot", "ls", "--data-dir", data, "--etcd-token", "wrong",
            "--etcd-server", f"https://{ETCD_HOST}:{servers.port}",
        )  # fmt: skip
        self.assertEqual(refused.returncode, 1)
        self.assertIn("not authorized (HTTP 401), see server log for details", refused.stderr)


class TokenTests(SynchronousTestCase):
    def setUp(self) -> None:
        root = Path(tempfile.mkdtemp(prefix="k3stw-cli-"))
        self.addCleanup(shutil.rmtree, root, ignore_errors=True)
        self.cluster = Cluster(root, host=SERVER_HOST)
        self.addCleanup(self.cluster.stop)
        self.cluster.start()
        self.kubeconfig = str(self.cluster.root / "server" / "k3s.yaml")
        self.data = str(self.cluster.root / "server" / "data")

    def test_an_agent_joins_with_a_created_bootstrap_token(self) -> None:
        created = k3s(
            "token", "create", "--kubeconfig", self.kubeconfig, "--description", "for agent-1"
        )
        self.assertEqual(created.returncode, 0, created.stderr)
        token = created.stdout.strip()
        server_token = self.cluster.token
        ca_hash = server_token[3 : server_token.index("::")]
        match = re.fullmatch(rf"K10{ca_hash}::([a-z0-9]{{6}})\.([a-z0-9]{{16}})", token)
        assert match is not None, token
        listed = k3s("token", "list", "--kubeconfig", self.kubeconfig)
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertEqual(listed.stdout.splitlines()[0].split()[:2], ["TOKEN", "TTL"])
        row = listed.stdout.splitlines()[1]
        self.assertTrue(row.startswith(match.group(1)), row)
        self.assertIn("authentication,signing", row)
        self.assertIn("for agent-1", row)
        agent = self.cluster.agent("agent-1", AGENT_HOST, token=token).start()
        # The bare <id>.<secret> form joins too (trusting the CA it is served, as k3s does).
        bare = self.cluster.agent("agent-3", "127.0.0.173", token=token.split("::")[1]).start()
        self.cluster.wait(
            lambda: (
                {"agent-1", "agent-3"}
                <= {n for n, ready in self.cluster.node_status().items() if ready == "True"}
            ),
            "agent-1 and agent-3 Ready",
        )
        bare.stop()
        deleted = k3s("token", "delete", match.group(1), "--kubeconfig", self.kubeconfig)
        self.assertEqual(deleted.returncode, 0, deleted.stderr)
        self.assertEqual(deleted.stdout, f'bootstrap token "{match.group(1)}" deleted\n')
        agent.stop()
        # A token deleted admits nobody: a new agent with it is refused.
        refused = self.cluster.agent("agent-2", "127.0.0.179", token=token).start()
        refused.wait_for_output("/v1-k3s/config: 401 Unauthorized")

    def test_rotate_makes_the_new_token_the_servers(self) -> None:
        rotated = k3s(
            "token", "rotate", "--data-dir", self.data, "--new-token", "rotated-secret-1",
            "--server", self.cluster.url,
        )  # fmt: skip
        self.assertEqual(rotated.returncode, 0, rotated.stderr)
        self.assertEqual(rotated.stdout, "Token rotated, restart k3s nodes with new token\n")
        self.assertIn("WARNING: Recommended to keep a record of the old token.", rotated.stderr)
        self.assertTrue(self.cluster.token.endswith("::server:rotated-secret-1"))
        passwd = (Path(self.data) / "server/cred/passwd").read_text()
        self.assertIn("rotated-secret-1,server,server,k3s:server", passwd)
        # The old token no longer opens the server; the new one does.
        status = k3s(
            "secrets-encrypt", "status", "--data-dir", self.data, "--server", self.cluster.url
        )
        self.assertEqual(status.returncode, 0, status.stderr)
        old = k3s(
            "token", "rotate", "--data-dir", self.data, "--token", "not-the-token",
            "--server", self.cluster.url,
        )  # fmt: skip
        self.assertEqual(old.returncode, 1)
        self.assertIn("not authorized", old.stderr)

    def test_certificate_check_lists_the_servers_certificates(self) -> None:
        # The server's own node has joined: its kubelet's certificates are there too.
        self.cluster.wait(lambda: self.cluster.node_status().get("server") == "True", "Ready")
        checked = k3s("certificate", "check", "--data-dir", self.data)
        self.assertEqual(checked.returncode, 0, checked.stderr)
        lines = checked.stderr.splitlines()
        self.assertEqual(
            lines[0], "INFO[0000] Server detected, checking agent and server certificates"
        )
        self.assertIn(
            "client-admin.crt: certificate system:admin (ClientAuth) is ok", checked.stderr
        )
        self.assertIn("server-ca.crt: certificate k3s-server-ca", checked.stderr)
        self.assertIn("client-kubelet.crt", checked.stderr)
        self.assertTrue(all(" is ok, expires at " in line for line in lines[1:]), lines)
        table = k3s("certificate", "check", "--data-dir", self.data, "-o", "table")
        self.assertEqual(table.stdout.split()[:2], ["FILENAME", "SUBJECT"])

    def test_certificate_rotate_renews_the_named_certificates_at_the_next_start(self) -> None:
        tls = Path(self.data) / "server/tls"
        admin = (tls / "client-admin.crt").read_bytes()
        serving = (tls / "serving-kube-apiserver.crt").read_bytes()
        self.cluster.server.stop()
        rotated = k3s("certificate", "rotate", "--service", "admin", "--data-dir", self.data)
        self.assertEqual(rotated.returncode, 0, rotated.stderr)
        self.assertIn("Rotating certificates for admin", rotated.stderr)
        backups = list((Path(self.data) / "server").glob("tls-*"))
        self.assertEqual(len(backups), 1)
        self.assertEqual((backups[0] / "client-admin.crt").read_bytes(), admin)
        self.assertFalse((tls / "client-admin.crt").exists())
        self.cluster.start()
        self.assertNotEqual((tls / "client-admin.crt").read_bytes(), admin)
        self.assertEqual((tls / "serving-kube-apiserver.crt").read_bytes(), serving)
        # The kubeconfig written at the start carries the new certificate, from the same CA.
        self.cluster.wait(
            lambda: self.cluster.kubectl("get", "--raw", "/readyz").stdout == "ok", "/readyz ok"
        )

    def test_kubectl_reads_the_admin_kubeconfig(self) -> None:
        self.cluster.wait(lambda: "server" in self.cluster.node_status(), "the server's node")
        got = k3s("kubectl", "get", "nodes", "-o", "name", env={"KUBECONFIG": self.kubeconfig})
        self.assertEqual(got.returncode, 0, got.stderr)
        self.assertEqual(got.stdout, "node/server\n")


class ServerCommandTests(SynchronousTestCase):
    def test_k3s_server_serves_and_stops_cleanly_on_sigterm(self) -> None:
        """
        ``k3s server`` runs the k3s-server plugin in the foreground; SIGTERM
        stops it gracefully, ending as ``twistd -n`` does (by the signal).
        """
        root = Path(self.mktemp()).absolute()
        port = free_port(DAEMON_HOST)
        # The flags of the tests' twistd servers, given to ``k3s server`` instead.
        flags = k3s_server(self, root, DAEMON_HOST, port, "--disable-agent").args[1:]
        log = root / "k3s.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*K3S, "server", *flags], cwd=root, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=clean_environment(),
            )  # fmt: skip

        def end() -> None:
            if process.poll() is None:
                process.kill()
                process.wait()

        self.addCleanup(end)

        def answers() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"k3s server exited:\n{log.read_text()[-3000:]}")
            try:
                return https_get(DAEMON_HOST, port, "/ping", timeout=1) == (200, b"pong")
            except OSError:
                return False

        wait(answers, "k3s server answering", timeout=60)
        self.assertFalse((root / "twistd.pid").exists())
        process.send_signal(signal.SIGTERM)
        self.assertEqual(process.wait(STOP_TIMEOUT), -signal.SIGTERM, log.read_text()[-3000:])
        self.assertTrue(log.read_text().endswith("Server Shut Down.\n"))
