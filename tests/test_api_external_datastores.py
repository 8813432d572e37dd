"""
``k3s-server --datastore-endpoint`` on real PostgreSQL and MariaDB: kubectl's
objects live in the external database, survive a restart, and two servers
on one database see the same cluster state.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import subprocess
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support.mariadb import shared_mariadb
from tests.support.net import free_port
from tests.support.postgres import fresh_database_name, shared_postgres
from tests.support.twistd import Twistd, k3s_server

KUBECTL = "/usr/bin/kubectl"
HOST = "127.0.0.12"
#: Servers of one cluster share its token (their CAs come sealed with it from the datastore).
TOKEN = "external-datastore-secret"


class ExternalDatastoreMixin:
    """The same checks for each external database; subclasses name the endpoint."""

    def endpoint(self) -> str:
        raise NotImplementedError

    def start_server(self, case: SynchronousTestCase, root: Path, endpoint: str) -> Path:
        """A server on C{endpoint}; its admin kubeconfig once it is ready."""
        port = free_port(HOST)
        server = k3s_server(
            case, root, HOST, port, "--node-name", root.name, "--datastore-endpoint", endpoint,
            "--token", TOKEN,
        ).start()  # fmt: skip
        server.wait_for_answer(HOST, port)
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


class KubernetesEndpointsTests(SynchronousTestCase):
    """Two servers on one PostgreSQL: the kubernetes Endpoints follow the live servers."""

    def start(self, root: Path, host: str, endpoint: str) -> tuple[Twistd, Path, int]:
        port = free_port(host)
        server = k3s_server(
            self,
            root,
            host,
            port,
            "--disable-agent",
            "--datastore-endpoint",
            endpoint,
            "--token",
            TOKEN,
        ).start()
        server.wait_for_answer(host, port)
        return server, root / "k3s.yaml", port

    def endpoints(self, kubeconfig: Path) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "K3S_"))}
        env.update(KUBECONFIG=str(kubeconfig), KUBECACHEDIR=str(kubeconfig) + ".cache")
        return subprocess.run(
            [
                KUBECTL,
                "get",
                "endpoints",
                "kubernetes",
                "-o",
                "jsonpath={range .subsets[*].addresses[*]}{.ip} {end}",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        ).stdout

    def apiservers(self, root: Path, host: str, port: int) -> list[str]:
        """``/v1-k3s/apiservers`` as an agent asks it: basic auth with the node password."""
        server_dir = root / "data" / "server"
        password = (server_dir / "token").read_text().strip().rpartition(":")[2]
        context = ssl.create_default_context(cafile=str(server_dir / "tls" / "server-ca.crt"))
        connection = http.client.HTTPSConnection(host, port, context=context, timeout=10)
        auth = base64.b64encode(f"node:{password}".encode()).decode()
        connection.request("GET", "/v1-k3s/apiservers", headers={"Authorization": f"Basic {auth}"})
        answer: list[str] = json.loads(connection.getresponse().read())
        connection.close()
        return sorted(answer)

    def wait_for(self, kubeconfig: Path, expected: set[str]) -> None:
        deadline = time.monotonic() + 60
        while set(self.endpoints(kubeconfig).split()) != expected:
            self.assertLess(time.monotonic(), deadline, f"endpoints never became {expected}")
            time.sleep(0.2)

    def test_endpoints_list_live_servers(self) -> None:
        """Both servers appear; one stopped gracefully leaves at once; the service exists."""
        endpoint = shared_postgres().endpoint(fresh_database_name("endpoints"))
        root = Path(self.mktemp()).absolute()
        first, kubeconfig, port = self.start(root / "a", "127.0.0.26", endpoint)
        second, _, second_port = self.start(root / "b", "127.0.0.27", endpoint)
        self.wait_for(kubeconfig, {"127.0.0.26", "127.0.0.27"})
        self.assertEqual(
            self.apiservers(root / "a", "127.0.0.26", port),
            sorted([f"127.0.0.26:{port}", f"127.0.0.27:{second_port}"]),
        )
        second.stop()
        self.wait_for(kubeconfig, {"127.0.0.26"})
        first.stop()


class AllocationRaceTests(SynchronousTestCase):
    """Two servers on one PostgreSQL hand out a small service CIDR at once: each IP once."""

    def test_two_servers_fill_one_range_without_sharing(self) -> None:
        endpoint = shared_postgres().endpoint(fresh_database_name("alloc"))
        root = Path(self.mktemp()).absolute()
        kubeconfigs = []
        for name in ("one", "two"):
            port = free_port(HOST)
            server = k3s_server(
                self, root / name, HOST, port, "--disable-agent", "--datastore-endpoint",
                endpoint, "--token", TOKEN, "--service-cidr", "10.45.0.0/27",
                # No kube-dns: the range is the test's to fill.
                "--disable", "coredns",
            ).start()  # fmt: skip
            server.wait_for_answer(HOST, port)
            server.wait_for_output("k3s is up and running")
            kubeconfigs.append(root / name / "k3s.yaml")
        # A /27 has 30 addresses; the kubernetes service holds .1: 29 are left.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "K3S_"))}
        applying = []
        for index, kubeconfig in enumerate(kubeconfigs):
            manifest = "---\n".join(
                f"apiVersion: v1\nkind: Service\nmetadata: {{name: s{index}-{n}}}\n"
                "spec: {ports: [{port: 80}]}\n"
                for n in range(15 if index == 0 else 14)
            )
            process = subprocess.Popen(
                [KUBECTL, "--kubeconfig", str(kubeconfig), "apply", "-f", "-"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, env=env,
            )  # fmt: skip
            assert process.stdin is not None
            process.stdin.write(manifest)
            process.stdin.close()
            applying.append(process)
        for process in applying:
            self.assertEqual(process.wait(120), 0, process.stderr.read() if process.stderr else "")
        listed = subprocess.run(
            [KUBECTL, "--kubeconfig", str(kubeconfigs[1]), "get", "svc", "-A", "-o",
             "jsonpath={range .items[*]}{.spec.clusterIP} {end}"],
            capture_output=True, text=True, env=env, timeout=60,
        ).stdout.split()  # fmt: skip
        self.assertEqual(len(listed), 30)
        self.assertEqual(len(set(listed)), 30)
        full = subprocess.run(
            [KUBECTL, "--kubeconfig", str(kubeconfigs[0]), "apply", "-f", "-"],
            input="apiVersion: v1\nkind: Service\nmetadata: {name: extra}\n"
            "spec: {ports: [{port: 80}]}\n",
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        self.assertIn("failed to allocate a serviceIP: range is full", full.stderr)
