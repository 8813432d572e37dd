"""
What k3s packages in, on a real ``twistd -n k3s-server`` on SQLite with the
real kubectl: manifests dropped in ``server/manifests`` kept applied, and
Secrets encrypted at rest (the database file read directly).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import ssl
import subprocess
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from k3stw.controllers.deploy import INTERVAL
from tests.support.kubectl import kubectl_env, run_kubectl
from tests.support.net import free_port
from tests.support.twistd import K3S, Twistd, k3s_server

DEPLOY_HOST = "127.0.0.201"
SECRETS_HOST = "127.0.0.202"


def config_map(name: str, color: str) -> str:
    return (
        f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: default\n"
        f"data:\n  color: {color}\n"
    )


class ProcessCase(SynchronousTestCase):
    host: str

    def start(self, *extra: str, root: Path | None = None, port: int = 0) -> Twistd:
        self.root = root or Path(self.mktemp()).absolute()
        self.port = port or free_port(self.host)
        server = k3s_server(self, self.root, self.host, self.port, "--disable-agent", *extra)
        server.start()
        server.wait_for_answer(self.host, self.port)
        self.env = kubectl_env(self.root)
        self.wait_until(lambda: self.kubectl_code("get", "--raw", "/readyz") == 0, server)
        return server

    def wait_until(self, done: object, server: Twistd, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise AssertionError("timed out; server output:\n" + server.output[-4000:])
            time.sleep(0.2)

    def kubectl_code(self, *args: str) -> int:
        return run_kubectl(self.env, *args).returncode

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        result = run_kubectl(self.env, *args, stdin=stdin)
        self.assertEqual(result.returncode, 0, f"kubectl {' '.join(args)}:\n{result.stderr}")
        return result.stdout


class ManifestsTests(ProcessCase):
    host = DEPLOY_HOST

    def test_a_dropped_manifest_is_applied_updated_and_removed(self) -> None:
        manifests = Path(self.mktemp()).absolute() / "data" / "server" / "manifests"
        manifests.mkdir(parents=True)
        first = manifests / "first.yaml"
        first.write_text(config_map("first", "blue"))
        server = self.start(root=manifests.parent.parent.parent)
        # Applied at start (the first pass).
        self.wait_until(lambda: self.kubectl_code("get", "configmap", "first") == 0, server)
        addons = self.kubectl("get", "addons", "-n", "kube-system")
        self.assertIn("SOURCE", addons.splitlines()[0])
        self.assertIn("CHECKSUM", addons.splitlines()[0])
        self.assertIn(str(first), addons)
        # While running: an edit, a new file and a removal, all within one walk.
        first.write_text(config_map("first", "red"))
        (manifests / "second.yaml").write_text(config_map("second", "green"))
        started = time.monotonic()

        def settled() -> bool:
            color = self.kubectl("get", "configmap", "first", "-o", "jsonpath={.data.color}")
            return color == "red" and self.kubectl_code("get", "configmap", "second") == 0

        self.wait_until(settled, server, timeout=INTERVAL + 15)
        self.assertLess(time.monotonic() - started, INTERVAL + 15)
        (manifests / "second.yaml").unlink()
        self.wait_until(
            lambda: self.kubectl_code("get", "configmap", "second") != 0,
            server,
            timeout=INTERVAL + 15,
        )
        names = self.kubectl("get", "addons", "-n", "kube-system", "-o", "name")
        self.assertIn("addon.k3s.cattle.io/first", names)
        self.assertNotIn("addon.k3s.cattle.io/second", names)


def _database_bytes(root: Path) -> bytes:
    db = root / "data" / "server" / "db"
    return b"".join(path.read_bytes() for path in sorted(db.glob("state.db*")))


class SecretsCase(ProcessCase):
    """A server's secrets-encryption status and ``k3s secrets-encrypt`` against it."""

    def status(self) -> dict[str, object]:
        token = (self.root / "data" / "server" / "token").read_text().strip()
        password = token.rpartition(":")[2]
        context = ssl.create_default_context(
            cafile=str(self.root / "data" / "server" / "tls" / "server-ca.crt")
        )
        connection = http.client.HTTPSConnection(self.host, self.port, context=context, timeout=30)
        auth = base64.b64encode(f"server:{password}".encode()).decode()
        try:
            connection.request(
                "GET", "/v1-k3s/encrypt/status", headers={"Authorization": f"Basic {auth}"}
            )
            response = connection.getresponse()
            self.assertEqual(response.status, 200)
            document: dict[str, object] = json.loads(response.read())
            return document
        finally:
            connection.close()

    def secrets_encrypt(self, *args: str, code: int = 0) -> str:
        """``k3s secrets-encrypt`` against this server: its stdout (or stderr when it fails)."""
        command = [
            *K3S, "secrets-encrypt", *args,
            "--data-dir", str(self.root / "data"), "--server", f"https://{self.host}:{self.port}",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, code, result.stderr)
        return result.stdout if code == 0 else result.stderr


class SecretsEncryptionTests(SecretsCase):
    host = SECRETS_HOST

    def test_a_secret_is_never_in_the_database_in_clear(self) -> None:
        server = self.start("--secrets-encryption")
        secret = "hunter2-at-rest-9f3a"
        self.kubectl("create", "secret", "generic", "db", f"--from-literal=password={secret}")
        self.kubectl("create", "configmap", "plain", "--from-literal=note=visible-config-7c1e")
        stored = _database_bytes(self.root)
        # The ConfigMap proves the reading finds what is there in clear.
        self.assertIn(b"visible-config-7c1e", stored)
        self.assertNotIn(secret.encode(), stored)
        self.assertNotIn(base64.b64encode(secret.encode()), stored)
        self.assertIn(b"k8s:enc:aescbc:v1:aescbckey:", stored)
        got = self.kubectl("get", "secret", "db", "-o", "jsonpath={.data.password}")
        self.assertEqual(base64.b64decode(got).decode(), secret)
        self.assertEqual(
            self.status(),
            {"stage": "start", "activekey": "aescbckey", "enable": True, "hashmatch": True},
        )
        config = json.loads(
            (self.root / "data" / "server" / "cred" / "encryption-config.json").read_text()
        )
        self.assertEqual(config["kind"], "EncryptionConfiguration")
        # k3s secrets-encrypt: status as k3s prints it, then new keys while the API serves.
        self.assertEqual(
            self.secrets_encrypt("status"),
            "Encryption Status: Enabled\nCurrent Rotation Stage: start\n"
            "Server Encryption Hashes: All hashes match\n\n"
            "Active  Key Type  Name\n------  --------  ----\n *      AES-CBC   aescbckey\n",
        )
        self.assertEqual(
            self.secrets_encrypt("rotate-keys"), "keys rotated, reencryption finished\n"
        )
        stored = _database_bytes(self.root)
        active = self.status()["activekey"]
        self.assertNotEqual(active, "aescbckey")
        self.assertIn(f"k8s:enc:aescbc:v1:{active}:".encode(), stored)
        self.assertIn("incorrect stage: reencrypt_finished", self.secrets_encrypt("rotate", code=1))
        # A restart with the same key file reads it back.
        server.stop()
        self.start("--secrets-encryption", root=self.root, port=self.port)
        got = self.kubectl("get", "secret", "db", "-o", "jsonpath={.data.password}")
        self.assertEqual(base64.b64decode(got).decode(), secret)


class SecretboxTests(SecretsCase):
    """``--secrets-encryption-provider=secretbox`` on a real server, and the move to it."""

    host = "127.0.0.207"

    def test_secretbox_writes_no_plaintext_to_the_database(self) -> None:
        self.start("--secrets-encryption", "--secrets-encryption-provider", "secretbox")
        secret = "hunter2-in-a-box-5d1c"
        self.kubectl("create", "secret", "generic", "box", f"--from-literal=password={secret}")
        stored = _database_bytes(self.root)
        # assertTrue: a failure would print the whole database.
        self.assertTrue(b"k8s:enc:secretbox:v1:secretboxkey:" in stored)
        self.assertFalse(secret.encode() in stored)
        self.assertFalse(base64.b64encode(secret.encode()) in stored)
        got = self.kubectl("get", "secret", "box", "-o", "jsonpath={.data.password}")
        self.assertEqual(base64.b64decode(got).decode(), secret)
        self.assertIn(" *      XSalsa20-POLY1305  secretboxkey\n", self.secrets_encrypt("status"))

    def test_rotate_keys_moves_aescbc_secrets_to_secretbox(self) -> None:
        server = self.start("--secrets-encryption")
        secret = "hunter2-moving-boxes-77e0"
        self.kubectl("create", "secret", "generic", "db", f"--from-literal=password={secret}")
        self.assertTrue(b"k8s:enc:aescbc:v1:aescbckey:" in _database_bytes(self.root))
        server.stop()
        self.start(
            "--secrets-encryption", "--secrets-encryption-provider", "secretbox",
            root=self.root, port=self.port,
        )  # fmt: skip
        self.assertEqual(
            self.secrets_encrypt("rotate-keys"), "keys rotated, reencryption finished\n"
        )
        active = str(self.status()["activekey"])
        self.assertTrue(active.startswith("secretboxkey-"), active)
        kine = self.root / "data" / "server" / "db" / "state.db"
        import sqlite3

        with contextlib.closing(sqlite3.connect(kine)) as db:
            rows = db.execute(
                "SELECT value FROM kine WHERE name = '/registry/secrets/default/db' "
                "ORDER BY id DESC LIMIT 1"
            ).fetchall()
        self.assertTrue(bytes(rows[0][0]).startswith(f"k8s:enc:secretbox:v1:{active}:".encode()))
        got = self.kubectl("get", "secret", "db", "-o", "jsonpath={.data.password}")
        self.assertEqual(base64.b64decode(got).decode(), secret)


class SharedKeysTests(SynchronousTestCase):
    """Two servers on one PostgreSQL share the first one's key file (the bootstrap data)."""

    host = "127.0.0.205"

    def test_a_second_server_reads_what_the_first_encrypted(self) -> None:
        import psycopg

        from tests.support.postgres import fresh_database_name, shared_postgres

        endpoint = shared_postgres().endpoint(fresh_database_name("encrypt"))
        root = Path(self.mktemp()).absolute()
        envs = []
        for name in ("one", "two"):
            port = free_port(self.host)
            server = k3s_server(
                self, root / name, self.host, port, "--disable-agent", "--secrets-encryption",
                "--datastore-endpoint", endpoint, "--token", "shared-encryption-token",
            ).start()  # fmt: skip
            server.wait_for_answer(self.host, port)
            server.wait_for_output("k3s is up and running")
            envs.append(kubectl_env(root / name))
        keys = [
            (root / n / "data/server/cred/encryption-config.json").read_bytes()
            for n in ("one", "two")
        ]
        self.assertEqual(keys[0], keys[1])
        created = run_kubectl(
            envs[0], "create", "secret", "generic", "db", "--from-literal=p=shared-hunter2"
        )
        self.assertEqual(created.returncode, 0, created.stderr)
        read = run_kubectl(envs[1], "get", "secret", "db", "-o", "jsonpath={.data.p}")
        self.assertEqual(read.returncode, 0, read.stderr)
        self.assertEqual(base64.b64decode(read.stdout), b"shared-hunter2")
        with psycopg.connect(endpoint) as connection:
            rows = connection.execute(
                "SELECT value FROM kine WHERE name = '/registry/secrets/default/db'"
            ).fetchall()
        self.assertTrue(rows)
        for (value,) in rows:
            self.assertTrue(bytes(value).startswith(b"k8s:enc:aescbc:v1:aescbckey:"))
            self.assertNotIn(b"shared-hunter2", bytes(value))
