"""
The cluster's bootstrap data: k3s's sealed format, taking and saving the
shared files, k3s's errors; and the blocking key access it uses, against real
PostgreSQL, MariaDB and etcd.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from k3stw.datastore.blocking import BlockingKeys, blocking_keys
from k3stw.datastore.endpoint import DatastoreTLS, EtcdEndpoint
from k3stw.datastore.etcd import EtcdKeys
from k3stw.lifecycle import StartupError
from k3stw.server import bootstrapdata
from tests.support.etcd import start_etcd
from tests.support.mariadb import shared_mariadb
from tests.support.postgres import fresh_database_name, shared_postgres

reactor: Any = _reactor
PASSWORD = "the-cluster-token-password"


class DictKeys:
    """Keys in a dict: what the take and save logic needs of a datastore."""

    description = "memory"

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}

    def list_prefix(self, prefix: str) -> dict[str, bytes]:
        return {k: v for k, v in self.keys.items() if k.startswith(prefix)}

    def create(self, key: str, value: bytes) -> bool:
        if key in self.keys:
            return False
        self.keys[key] = value
        return True

    def close(self) -> None:
        pass


def server_dir(root: Path, marker: str) -> Path:
    """A server directory with the shared files, their content marked."""
    for name in bootstrapdata.FILES.values():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{marker} {name}\n")
    return root


class SealTests(SynchronousTestCase):
    def test_round_trip_in_k3s_format(self) -> None:
        sealed = bootstrapdata.encrypt(PASSWORD, b"secret data")
        self.assertRegex(sealed.decode(), r"^[0-9a-f]{16}:[A-Za-z0-9+/]+=*$")
        self.assertEqual(bootstrapdata.decrypt(PASSWORD, sealed), b"secret data")
        # A fresh salt and nonce each time.
        self.assertNotEqual(sealed, bootstrapdata.encrypt(PASSWORD, b"secret data"))

    def test_another_password_cannot_open_it(self) -> None:
        sealed = bootstrapdata.encrypt(PASSWORD, b"secret data")
        self.assertRaises(ValueError, bootstrapdata.decrypt, "another", sealed)
        self.assertRaises(ValueError, bootstrapdata.decrypt, PASSWORD, b"no colon here")

    def test_storage_key_is_k3s(self) -> None:
        key = bootstrapdata.storage_key(PASSWORD)
        self.assertTrue(re.fullmatch(r"/bootstrap/[0-9a-f]{12}", key), key)


class TakeAndSaveTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.keys = DictKeys()
        self.first = server_dir(Path(self.mktemp()), "first")
        self.assertTrue(bootstrapdata.save(self.first, self.keys, PASSWORD))

    def test_nothing_saved_yet(self) -> None:
        self.assertFalse(bootstrapdata.take(Path(self.mktemp()), DictKeys(), PASSWORD))

    def test_a_new_server_takes_every_file(self) -> None:
        second = Path(self.mktemp())
        self.assertTrue(bootstrapdata.take(second, self.keys, PASSWORD))
        for name in bootstrapdata.FILES.values():
            self.assertEqual((second / name).read_text(), f"first {name}\n")
            mode = stat.S_IMODE((second / name).stat().st_mode)
            self.assertEqual(mode, 0o644 if name.endswith(".crt") else 0o600, name)

    def test_the_saved_document_is_k3s_json(self) -> None:
        ((_, sealed),) = self.keys.keys.items()
        document = json.loads(bootstrapdata.decrypt(PASSWORD, sealed))
        self.assertEqual(set(document), set(bootstrapdata.FILES))
        entry = document["ServerCA"]
        self.assertEqual(base64.b64decode(entry["Content"]), b"first tls/server-ca.crt\n")
        self.assertTrue(entry["Timestamp"].endswith("Z"), entry["Timestamp"])

    def test_a_second_save_is_refused(self) -> None:
        self.assertFalse(bootstrapdata.save(self.first, self.keys, PASSWORD))

    def test_another_token(self) -> None:
        error = self.assertRaises(
            StartupError, bootstrapdata.take, Path(self.mktemp()), self.keys, "other"
        )
        self.assertEqual(
            str(error), "bootstrap data already found and encrypted with different token"
        )

    def test_multiple_keys(self) -> None:
        self.keys.keys["/bootstrap/0123456789ab"] = b"x"
        error = self.assertRaises(
            StartupError, bootstrapdata.take, Path(self.mktemp()), self.keys, PASSWORD
        )
        self.assertEqual(str(error), "found multiple bootstrap keys in storage")

    def test_an_older_different_file_is_replaced(self) -> None:
        second = server_dir(Path(self.mktemp()), "stale")
        past = time.time() - 3600
        for name in bootstrapdata.FILES.values():
            os.utime(second / name, (past, past))
        bootstrapdata.take(second, self.keys, PASSWORD)
        self.assertEqual((second / "tls/client-ca.key").read_text(), "first tls/client-ca.key\n")

    def test_a_newer_different_file_stops_the_start(self) -> None:
        second = server_dir(Path(self.mktemp()), "newer")
        future = time.time() + 3600
        os.utime(second / "tls/server-ca.crt", (future, future))
        error = self.assertRaises(StartupError, bootstrapdata.take, second, self.keys, PASSWORD)
        self.assertIn(f"{second / 'tls/server-ca.crt'} newer than datastore", str(error))
        self.assertIn(
            "Remove the file(s) from disk and restart to be recreated from datastore.", str(error)
        )
        # Nothing was written: the other files keep their own content.
        self.assertEqual((second / "cred/passwd").read_text(), "newer cred/passwd\n")


class BlockingKeysTests(TestCase):
    """The same three operations on every external backend."""

    def exercise(self, keys: BlockingKeys) -> None:
        try:
            self.assertEqual(keys.list_prefix("/bootstrap/"), {})
            self.assertTrue(keys.create("/bootstrap/abc", b"sealed"))
            self.assertFalse(keys.create("/bootstrap/abc", b"other"))
            self.assertTrue(keys.create("/registry/x", b"not bootstrap"))
            self.assertEqual(keys.list_prefix("/bootstrap/"), {"/bootstrap/abc": b"sealed"})
        finally:
            keys.close()

    async def test_postgres(self) -> None:
        endpoint = shared_postgres().endpoint(fresh_database_name("bootstrap"))
        keys = await deferToThread(blocking_keys, endpoint, self.mktemp(), None)
        assert keys is not None
        await deferToThread(self.exercise, keys)

    async def test_mariadb(self) -> None:
        endpoint = shared_mariadb().endpoint(fresh_database_name("bootstrap"))
        keys = await deferToThread(blocking_keys, endpoint, self.mktemp(), None)
        assert keys is not None
        await deferToThread(self.exercise, keys)

    async def test_etcd_with_tls(self) -> None:
        cluster = await start_etcd(reactor, tls=True)
        self.addCleanup(cluster.stop)
        tls = cluster.client_tls()
        assert tls is not None
        endpoint = EtcdEndpoint(
            tuple(cluster.endpoints), DatastoreTLS(tls.cafile, tls.certfile, tls.keyfile)
        )
        keys = await deferToThread(EtcdKeys, endpoint)
        await deferToThread(self.exercise, keys)

    def test_sqlite_shares_nothing(self) -> None:
        self.assertIsNone(blocking_keys(None, self.mktemp(), None))


class EncryptionKeyFileTests(SynchronousTestCase):
    """--secrets-encryption's key file travels with the bootstrap data, as k3s's does."""

    def test_a_server_without_a_key_file_saves_none(self) -> None:
        first = server_dir(Path(self.mktemp()), "first")
        (first / "cred/encryption-config.json").unlink()
        (first / "cred/encryption-state.json").unlink()
        keys = DictKeys()
        bootstrapdata.save(first, keys, PASSWORD)
        ((_, sealed),) = keys.keys.items()
        self.assertNotIn("EncryptionConfig", json.loads(bootstrapdata.decrypt(PASSWORD, sealed)))
        second = Path(self.mktemp())
        bootstrapdata.take(second, keys, PASSWORD)
        self.assertFalse((second / "cred/encryption-config.json").exists())

    def test_a_stage_publishes_the_new_key_file(self) -> None:
        from twisted.internet.task import Clock

        from k3stw.datastore.memory import MemoryDatastore

        first = server_dir(Path(self.mktemp()), "first")
        datastore = MemoryDatastore(Clock())
        datastore.startService()
        self.addCleanup(datastore.stopService)
        keys = DictKeys()
        bootstrapdata.save(first, keys, PASSWORD)
        ((key, sealed),) = keys.keys.items()
        self.successResultOf(datastore.create(key, sealed))
        (first / "cred/encryption-config.json").write_text("rotated")
        self.successResultOf(
            Deferred.fromCoroutine(bootstrapdata.publish(datastore, first, PASSWORD))
        )
        stored = self.successResultOf(datastore.get(key))
        assert stored is not None
        document = json.loads(bootstrapdata.decrypt(PASSWORD, stored.value))
        self.assertEqual(base64.b64decode(document["EncryptionConfig"]["Content"]), b"rotated")
        self.assertEqual(
            base64.b64decode(document["ServerCA"]["Content"]), b"first tls/server-ca.crt\n"
        )
