"""
Secrets encrypted at rest: kube-apiserver's value format and provider order,
the datastore view the object store writes through, and k3s's key stages on
a server directory, on the in-memory datastore.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.encryption import (
    AESCBC_PREFIX,
    SECRETBOX_PREFIX,
    EncryptedDatastore,
    Key,
    Provider,
    Transformer,
    TransformError,
    configuration,
    parse_configuration,
)
from k3stw.apiserver.kinds import namespaces, secrets
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.datastore.interface import Event
from k3stw.datastore.memory import MemoryDatastore
from k3stw.machinery.times import rfc3339
from k3stw.server.secretsencrypt import (
    SecretsEncryption,
    config_path,
    prepare_encryption,
    state_path,
    status_text,
)
from tests.support.apiserver import START

KEY_1 = Key("one", base64.b64encode(b"1" * 32).decode())
KEY_2 = Key("two", base64.b64encode(b"2" * 32).decode())
CLEAR = b'{"metadata":{"name":"s"},"data":{"password":"aHVudGVyMg=="}}'


def aescbc(*keys: Key) -> Provider:
    return Provider("aescbc", keys)


def secretbox(*keys: Key) -> Provider:
    return Provider("secretbox", keys)


IDENTITY = Provider("identity")


def with_default_namespace(case: SynchronousTestCase, store: ObjectStore) -> None:
    namespace = {"metadata": {"name": "default"}}
    case.successResultOf(ensureDeferred(store.create(namespaces.RESOURCE, None, namespace)))


class FormatTests(SynchronousTestCase):
    def test_round_trip_under_the_first_key_with_kubes_prefix(self) -> None:
        transformer = Transformer([aescbc(KEY_1, KEY_2), IDENTITY])
        stored = transformer.to_storage(CLEAR)
        self.assertTrue(stored.startswith(AESCBC_PREFIX + b"one:"))
        self.assertNotIn(b"aHVudGVyMg", stored)
        # IV (16) + padded ciphertext: a whole number of blocks.
        self.assertEqual(len(stored[len(AESCBC_PREFIX + b"one:") :]) % 16, 0)
        self.assertEqual(transformer.from_storage(stored), CLEAR)

    def test_each_write_has_its_own_iv(self) -> None:
        transformer = Transformer([aescbc(KEY_1)])
        self.assertNotEqual(transformer.to_storage(CLEAR), transformer.to_storage(CLEAR))

    def test_a_value_is_read_with_the_key_its_prefix_names(self) -> None:
        old = Transformer([aescbc(KEY_2)]).to_storage(CLEAR)
        rotated = Transformer([aescbc(KEY_1, KEY_2), IDENTITY])
        self.assertEqual(rotated.from_storage(old), CLEAR)

    def test_identity_reads_clear_values_and_writes_them_first(self) -> None:
        self.assertEqual(Transformer([aescbc(KEY_1), IDENTITY]).from_storage(CLEAR), CLEAR)
        disabled = Transformer([IDENTITY, aescbc(KEY_1)])
        self.assertEqual(disabled.to_storage(CLEAR), CLEAR)
        encrypted = Transformer([aescbc(KEY_1)]).to_storage(CLEAR)
        self.assertEqual(disabled.from_storage(encrypted), CLEAR)

    def test_clear_values_are_refused_without_identity(self) -> None:
        error = self.assertRaises(TransformError, Transformer([aescbc(KEY_1)]).from_storage, CLEAR)
        self.assertEqual(str(error), "no matching prefix found")

    def test_a_key_not_in_the_configuration_is_named_in_the_error(self) -> None:
        stored = Transformer([aescbc(KEY_2)]).to_storage(CLEAR)
        error = self.assertRaises(
            TransformError, Transformer([aescbc(KEY_1), IDENTITY]).from_storage, stored
        )
        self.assertEqual(str(error), "no matching key was found for the provided AES transformer")

    def test_a_wrong_secret_under_the_same_name_fails_clearly(self) -> None:
        stored = Transformer([aescbc(KEY_1)]).to_storage(CLEAR)
        impostor = Key("one", KEY_2.secret)
        error = self.assertRaises(
            TransformError, Transformer([aescbc(impostor), IDENTITY]).from_storage, stored
        )
        self.assertIn(
            str(error),
            ("invalid padding on input", "invalid PKCS7 data (empty or not padded)"),
        )

    def test_the_configuration_k3s_writes_is_parsed_back(self) -> None:
        text = configuration([aescbc(KEY_1), IDENTITY])
        document = json.loads(text)
        self.assertEqual(document["kind"], "EncryptionConfiguration")
        self.assertEqual(document["apiVersion"], "apiserver.config.k8s.io/v1")
        self.assertEqual(document["resources"][0]["providers"][1], {"identity": {}})
        self.assertNotIn(b" ", text)
        transformer = parse_configuration(text)["secrets"]
        self.assertEqual(transformer.providers, (aescbc(KEY_1), IDENTITY))

    def test_a_bad_key_is_refused_in_kubes_words(self) -> None:
        short = Key("short", base64.b64encode(b"x" * 10).decode())
        error = self.assertRaises(
            ValueError, parse_configuration, configuration([aescbc(short), IDENTITY])
        )
        self.assertIn("secret is not of the expected length, got 10", str(error))
        aes128 = Key("aes128", base64.b64encode(b"x" * 16).decode())
        error = self.assertRaises(
            ValueError, parse_configuration, configuration([secretbox(aes128), IDENTITY])
        )
        self.assertIn("got 16, expected one of [32]", str(error))
        aesgcm = configuration([IDENTITY]).replace(b'"identity"', b'"aesgcm"')
        self.assertRaises(ValueError, parse_configuration, aesgcm)


class SecretboxTests(SynchronousTestCase):
    """kube-apiserver's ``secretbox`` provider: XSalsa20-Poly1305 under 32-byte keys."""

    def test_round_trip_with_kubes_prefix_nonce_and_box(self) -> None:
        from nacl.secret import SecretBox

        transformer = Transformer([secretbox(KEY_1), IDENTITY])
        stored = transformer.to_storage(CLEAR)
        self.assertTrue(stored.startswith(SECRETBOX_PREFIX + b"one:"))
        box = stored[len(SECRETBOX_PREFIX + b"one:") :]
        # 24-byte nonce, 16-byte Poly1305 tag, then as many bytes as the clear text.
        self.assertEqual(len(box), 24 + 16 + len(CLEAR))
        self.assertNotIn(b"aHVudGVyMg", stored)
        self.assertEqual(transformer.from_storage(stored), CLEAR)
        # NaCl's own secretbox opens it: the layout is the standard one kube writes.
        self.assertEqual(SecretBox(b"1" * 32).decrypt(box[24:], box[:24]), CLEAR)
        self.assertNotEqual(transformer.to_storage(CLEAR), stored)

    def test_aescbc_values_stay_readable_behind_a_secretbox_writer(self) -> None:
        old = Transformer([aescbc(KEY_2)]).to_storage(CLEAR)
        migrating = Transformer([secretbox(KEY_1), aescbc(KEY_2), IDENTITY])
        self.assertEqual(migrating.from_storage(old), CLEAR)

    def test_a_wrong_key_under_the_same_name_fails_in_kubes_words(self) -> None:
        stored = Transformer([secretbox(KEY_1)]).to_storage(CLEAR)
        impostor = Transformer([secretbox(Key("one", KEY_2.secret))])
        error = self.assertRaises(TransformError, impostor.from_storage, stored)
        self.assertEqual(str(error), "output array was not large enough for encryption")
        other = Transformer([secretbox(KEY_2)])
        error = self.assertRaises(TransformError, other.from_storage, stored)
        self.assertEqual(
            str(error), "no matching key was found for the provided Secretbox transformer"
        )
        short = SECRETBOX_PREFIX + b"one:" + b"x" * 30
        error = self.assertRaises(
            TransformError, Transformer([secretbox(KEY_1)]).from_storage, short
        )
        self.assertEqual(str(error), "the stored data was shorter than the required size")

    def test_the_configuration_round_trips(self) -> None:
        text = configuration([secretbox(KEY_1), IDENTITY])
        self.assertEqual(
            json.loads(text)["resources"][0]["providers"][0],
            {"secretbox": {"keys": [{"name": "one", "secret": KEY_1.secret}]}},
        )
        self.assertEqual(
            parse_configuration(text)["secrets"].providers, (secretbox(KEY_1), IDENTITY)
        )


class DatastoreViewTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.datastore = MemoryDatastore(self.clock)
        self.datastore.startService()
        self.addCleanup(self.datastore.stopService)
        prefix = secrets.RESOURCE.storage_prefix()
        transformer = Transformer([aescbc(KEY_1), IDENTITY])
        self.view = EncryptedDatastore(self.datastore, transformer, prefix)
        self.store = ObjectStore(self.view, self.clock)
        with_default_namespace(self, self.store)

    def raw(self, name: str) -> bytes:
        kv = self.successResultOf(self.datastore.get(f"/registry/secrets/default/{name}"))
        assert kv is not None
        return bytes(kv.value)

    def create_secret(self, name: str) -> None:
        secret = {"metadata": {"name": name}, "stringData": {"password": "hunter2-secret"}}
        self.successResultOf(self.store.create(secrets.RESOURCE, "default", secret))

    def test_a_secret_is_stored_encrypted_and_read_back(self) -> None:
        self.create_secret("db")
        raw = self.raw("db")
        self.assertTrue(raw.startswith(b"k8s:enc:aescbc:v1:one:"))
        self.assertNotIn(b"hunter2", raw)
        self.assertNotIn(base64.b64encode(b"hunter2-secret"), raw)
        got = self.successResultOf(self.store.get(secrets.RESOURCE, "default", "db"))
        self.assertEqual(base64.b64decode(got["data"]["password"]), b"hunter2-secret")
        listed = self.successResultOf(self.store.list(secrets.RESOURCE, None))
        self.assertEqual([s["metadata"]["name"] for s in listed.items], ["db"])

    def test_other_resources_are_stored_as_they_are(self) -> None:
        from k3stw.apiserver.kinds import configmaps

        config = {"metadata": {"name": "c"}, "data": {"k": "visible"}}
        self.successResultOf(self.store.create(configmaps.RESOURCE, "default", config))
        kv = self.successResultOf(self.datastore.get("/registry/configmaps/default/c"))
        assert kv is not None
        self.assertIn(b"visible", kv.value)

    def test_watch_events_arrive_decrypted(self) -> None:
        seen: list[Event] = []
        watch = self.successResultOf(self.view.watch("/registry/secrets/", 0, seen.extend))
        self.addCleanup(watch.cancel)
        self.create_secret("db")
        self.assertEqual(len(seen), 1)
        self.assertIn(
            b"hunter2", base64.b64decode(json.loads(seen[0].kv.value)["data"]["password"])
        )

    def test_an_unreadable_value_is_an_internal_error(self) -> None:
        self.create_secret("db")
        self.view.replace(Transformer([aescbc(KEY_2), IDENTITY]))
        failure = self.failureResultOf(self.store.get(secrets.RESOURCE, "default", "db"))
        self.assertEqual(failure.value.code, 500)
        self.assertEqual(
            failure.value.message,
            'Internal error occurred: unable to transform key "/registry/secrets/default/db": '
            "no matching key was found for the provided AES transformer",
        )


class StageTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server_dir = Path(self.mktemp())
        self.server_dir.mkdir()
        self.clock = Clock()
        self.clock.advance(START)
        datastore = MemoryDatastore(self.clock)
        datastore.startService()
        self.addCleanup(datastore.stopService)
        self.raw = datastore
        transformer = prepare_encryption(self.server_dir)
        self.view = EncryptedDatastore(datastore, transformer, secrets.RESOURCE.storage_prefix())
        self.store = ObjectStore(self.view, self.clock)
        self.encryption = SecretsEncryption(
            self.server_dir, "node-1", self.view, self.clock.seconds
        )
        with_default_namespace(self, self.store)

    def configure(self, **body: object) -> None:
        self.successResultOf(ensureDeferred(self.encryption.configure(dict(body))))

    def test_the_first_start_writes_one_key_and_the_start_stage(self) -> None:
        document = json.loads(config_path(self.server_dir).read_bytes())
        providers = document["resources"][0]["providers"]
        self.assertEqual([k["name"] for k in providers[0]["aescbc"]["keys"]], ["aescbckey"])
        self.assertEqual(providers[1], {"identity": {}})
        self.assertEqual(config_path(self.server_dir).stat().st_mode & 0o777, 0o600)
        self.assertTrue(state_path(self.server_dir).read_text().startswith("start-"))
        status = self.encryption.status().as_json()
        self.assertEqual(
            status, {"stage": "start", "activekey": "aescbckey", "enable": True, "hashmatch": True}
        )

    def test_status_text_as_k3s_prints_it(self) -> None:
        self.assertEqual(
            status_text(self.encryption.status().as_json()),
            "Encryption Status: Enabled\n"
            "Current Rotation Stage: start\n"
            "Server Encryption Hashes: All hashes match\n"
            "\n"
            "Active  Key Type  Name\n"
            "------  --------  ----\n"
            " *      AES-CBC   aescbckey\n",
        )
        self.assertEqual(
            status_text(None), "Encryption Status: Disabled, no configuration file found\n"
        )

    def test_prepare_rotate_reencrypt_moves_every_secret_to_the_new_key(self) -> None:
        secret = {"metadata": {"name": "db"}, "stringData": {"password": "hunter2"}}
        self.successResultOf(self.store.create(secrets.RESOURCE, "default", secret))
        self.configure(stage="prepare")
        status = self.encryption.status()
        new = f"aescbckey-{rfc3339(START)}"
        self.assertEqual((status.stage, status.active_key), ("prepare", "aescbckey"))
        self.assertEqual(status.inactive_keys, [new])
        self.configure(stage="rotate")
        self.assertEqual(self.encryption.status().active_key, new)
        self.configure(stage="reencrypt_request")
        status = self.encryption.status()
        self.assertEqual((status.stage, status.inactive_keys), ("reencrypt_finished", []))
        kv = self.successResultOf(self.raw.get("/registry/secrets/default/db"))
        assert kv is not None
        self.assertTrue(kv.value.startswith(f"k8s:enc:aescbc:v1:{new}:".encode()))

    def test_a_stage_out_of_order_is_refused(self) -> None:
        failure = self.failureResultOf(
            ensureDeferred(self.encryption.configure({"stage": "rotate"})), StatusError
        )
        self.assertEqual(failure.value.message, "incorrect stage: start found on node node-1")

    def test_disable_then_enable_swaps_identity(self) -> None:
        self.configure(enable=False)
        self.assertIs(self.encryption.status().enable, False)
        self.assertEqual(self.view.transformer.providers[0].type, "identity")
        self.configure(enable=True)
        self.assertIs(self.encryption.status().enable, True)

    def test_rotate_keys_to_secretbox_reencrypts_every_secret_and_drops_aescbc(self) -> None:
        secret = {"metadata": {"name": "db"}, "stringData": {"password": "hunter2"}}
        self.successResultOf(self.store.create(secrets.RESOURCE, "default", secret))
        kv = self.successResultOf(self.raw.get("/registry/secrets/default/db"))
        assert kv is not None
        self.assertTrue(kv.value.startswith(b"k8s:enc:aescbc:v1:aescbckey:"))
        # The server restarted with --secrets-encryption-provider=secretbox.
        self.encryption.provider = "secretbox"
        self.configure(stage="rotate_keys")
        status = self.encryption.status()
        new = f"secretboxkey-{rfc3339(START)}"
        self.assertEqual((status.stage, status.active_key), ("reencrypt_finished", new))
        self.assertEqual(status.inactive_keys, [])
        kv = self.successResultOf(self.raw.get("/registry/secrets/default/db"))
        assert kv is not None
        self.assertTrue(kv.value.startswith(f"k8s:enc:secretbox:v1:{new}:".encode()))
        self.assertNotIn(b"hunter2", kv.value)
        self.assertNotIn(base64.b64encode(b"hunter2"), kv.value)
        providers = json.loads(config_path(self.server_dir).read_bytes())["resources"][0]
        self.assertEqual([list(p) for p in providers["providers"]], [["secretbox"], ["identity"]])
        got = self.successResultOf(self.store.get(secrets.RESOURCE, "default", "db"))
        self.assertEqual(base64.b64decode(got["data"]["password"]), b"hunter2")
        self.assertIn(" *      XSalsa20-POLY1305  " + new, status_text(status.as_json()))

    def test_a_secretbox_first_start_stores_secrets_under_secretbox(self) -> None:
        server_dir = Path(self.mktemp())
        server_dir.mkdir()
        transformer = prepare_encryption(server_dir, "secretbox")
        view = EncryptedDatastore(self.raw, transformer, secrets.RESOURCE.storage_prefix())
        store = ObjectStore(view, self.clock)
        secret = {"metadata": {"name": "box"}, "stringData": {"password": "hunter2"}}
        self.successResultOf(store.create(secrets.RESOURCE, "default", secret))
        kv = self.successResultOf(self.raw.get("/registry/secrets/default/box"))
        assert kv is not None
        self.assertTrue(kv.value.startswith(b"k8s:enc:secretbox:v1:secretboxkey:"))
        self.assertNotIn(b"hunter2", kv.value)

    def test_rotate_keys_leaves_only_the_new_key(self) -> None:
        self.configure(stage="rotate_keys")
        status = self.encryption.status()
        self.assertEqual(status.stage, "reencrypt_finished")
        self.assertTrue(status.active_key.startswith("aescbckey-"))
        self.assertEqual(status.inactive_keys, [])
