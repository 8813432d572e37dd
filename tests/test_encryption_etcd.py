"""
Secrets encrypted at rest on embedded etcd: a ``--cluster-init`` server with
``--secrets-encryption`` writes a Secret that etcd itself (read with
``etcdctl``) holds only under kube's ``k8s:enc:aescbc:v1:`` prefix, while a
ConfigMap beside it is there in clear, and kubectl reads the Secret back.
"""

from __future__ import annotations

import base64
import json

from twisted.trial.unittest import SynchronousTestCase

from tests.support.embedded_etcd import EtcdServers

ADDRESS = "127.0.0.248"


class EncryptedOnEtcdTests(SynchronousTestCase):
    def test_a_secret_is_never_in_etcd_in_clear(self) -> None:
        servers = EtcdServers(self, [ADDRESS])
        server = servers.first("s1", ADDRESS, "--secrets-encryption").start()
        servers.ready(server, ADDRESS)
        secret = "etcd-hunter2-5b7d"
        for args in (
            ("create", "secret", "generic", "db", f"--from-literal=password={secret}"),
            ("create", "configmap", "plain", "--from-literal=note=visible-on-etcd-2e4f"),
        ):
            created = servers.kubectl(ADDRESS, *args)
            self.assertEqual(created.returncode, 0, created.stderr)

        def stored(key: str) -> bytes:
            got = servers.etcdctl("s1", ADDRESS, "get", key, "-w", "json")
            self.assertEqual(got.returncode, 0, got.stderr)
            found = json.loads(got.stdout).get("kvs") or []
            self.assertEqual(len(found), 1, f"{key} is not in etcd")
            return base64.b64decode(found[0]["value"])

        # The ConfigMap proves the reading finds what is there in clear.
        self.assertIn(b"visible-on-etcd-2e4f", stored("/registry/configmaps/default/plain"))
        value = stored("/registry/secrets/default/db")
        self.assertTrue(value.startswith(b"k8s:enc:aescbc:v1:aescbckey:"), value[:40])
        self.assertNotIn(secret.encode(), value)
        self.assertNotIn(base64.b64encode(secret.encode()), value)
        read = servers.kubectl(ADDRESS, "get", "secret", "db", "-o", "jsonpath={.data.password}")
        self.assertEqual(read.returncode, 0, read.stderr)
        self.assertEqual(base64.b64decode(read.stdout).decode(), secret)
