"""
``k3s-server --datastore-endpoint`` on real PostgreSQL and MariaDB: kubectl's
objects live in the external database, survive a restart, and two servers
on one database see the same cluster state.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support.mariadb import shared_mariadb
from tests.support.postgres import fresh_database_name, shared_postgres
from tests.support.twistd import Twistd, free_port

KUBECTL = "/usr/bin/kubectl"
HOST = "127.0.0.12"


class ExternalDatastoreMixin:
    """The same checks for each external database; subclasses name the endpoint."""

    def endpoint(self) -> str:
        raise NotImplementedError

    def start_server(self, case: SynchronousTestCase, root: Path, endpoint: str) -> Path:
        """A server on C{endpoint}; its admin kubeconfig once it is ready."""
        root.mkdir(parents=True, exist_ok=True)
        (root / "config.yaml").write_text("")
        port = free_port(HOST)
        server = Twistd(
            case,
            root,
            "k3s-server",
            "--config",
            str(root / "config.yaml"),
            "--data-dir",
            str(root / "data"),
            "--bind-address",
            HOST,
            "--https-listen-port",
            str(port),
            "--write-kubeconfig",
            str(root / "k3s.yaml"),
            "--node-identity-dir",
            str(root / "node"),
            "--node-name",
            root.name,
            "--datastore-endpoint",
            endpoint,
        ).start()
        server.wait_for_ping(HOST, port)
        kubeconfig = root / "k3s.yaml"
        deadline = time.monotonic() + 60
        while self.kubectl(kubeconfig, "get", "--raw", "/v1-k3s/readyz").returncode != 0:
            if time.monotonic() > deadline:
                raise AssertionError("server never became ready:\n" + server.output)
            time.sleep(0.1)
        self.servers.append(server)
        return kubeconfig

    def kubectl(
        self, kubeconfig: Path, *args: str, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "K3S_"))}
        env.update(KUBECONFIG=str(kubeconfig), KUBECACHEDIR=str(kubeconfig.parent / "cache"))
        return subprocess.run(
            [KUBECTL, *args], input=stdin, capture_output=True, text=True, env=env, timeout=60
        )

    def test_objects_live_in_the_database(self) -> None:
        """Applied objects survive a restart and are seen by a second server."""
        case: SynchronousTestCase = self  # type: ignore[assignment]
        self.servers: list[Twistd] = []
        endpoint = self.endpoint()
        root = Path(case.mktemp()).absolute()
        first = self.start_server(case, root / "one", endpoint)
        manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: shared}\ndata: {k: v}\n"
        applied = self.kubectl(first, "apply", "-f", "-", stdin=manifest)
        case.assertEqual(applied.returncode, 0, applied.stderr)

        self.servers.pop().stop()
        first = self.start_server(case, root / "one", endpoint)
        read = self.kubectl(first, "get", "cm", "shared", "-o", "jsonpath={.data.k}")
        case.assertEqual((read.returncode, read.stdout), (0, "v"), read.stderr)

        second = self.start_server(case, root / "two", endpoint)
        read = self.kubectl(second, "get", "cm", "shared", "-o", "jsonpath={.data.k}")
        case.assertEqual((read.returncode, read.stdout), (0, "v"), read.stderr)
        deleted = self.kubectl(second, "delete", "cm", "shared")
        case.assertEqual(deleted.returncode, 0, deleted.stderr)
        gone = self.kubectl(first, "get", "cm", "shared")
        case.assertIn("NotFound", gone.stderr)


class PostgresServerTests(ExternalDatastoreMixin, SynchronousTestCase):
    def endpoint(self) -> str:
        return shared_postgres().endpoint(fresh_database_name("api"))


class MariaDBServerTests(ExternalDatastoreMixin, SynchronousTestCase):
    def endpoint(self) -> str:
        return shared_mariadb().endpoint(fresh_database_name("api"))
