"""
Encryption at rest, as kube-apiserver's ``--encryption-provider-config``:
an ``EncryptionConfiguration`` (``apiserver.config.k8s.io/v1``) names, for
``secrets``, an ordered list of providers; the first writes, every one may
read.  A value written by ``aescbc`` is stored as
``k8s:enc:aescbc:v1:<key name>:`` followed by a random 16-byte IV and the
PKCS#7-padded AES-CBC ciphertext; by ``secretbox`` as
``k8s:enc:secretbox:v1:<key name>:`` followed by a random 24-byte nonce and
NaCl's box (Poly1305 tag, then the XSalsa20 ciphertext); ``identity`` stores
the value as it is.  PyNaCl is imported only when a secretbox key is used.

L{EncryptedDatastore} applies it where the object store meets the datastore:
values under an encrypted resource's prefix are encrypted on the way in and
decrypted on the way out (gets, lists, watch events, a conflict's current
value), so the datastore never holds such an object in clear.

Left out: ``aesgcm`` and ``kms``: a configuration naming them is refused.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from twisted.internet.defer import Deferred
from zope.interface import implementer

from k3stw.apiserver.status import StatusError
from k3stw.datastore.interface import Conflict, Event, IDatastore, IWatch, KeyValue, ListResult
from k3stw.logs import Logger

KIND = "EncryptionConfiguration"
API_VERSION = "apiserver.config.k8s.io/v1"
#: The prefix every encrypting provider's values start with (identity refuses them).
ENCRYPTED = b"k8s:enc:"
AESCBC_PREFIX = b"k8s:enc:aescbc:v1:"
SECRETBOX_PREFIX = b"k8s:enc:secretbox:v1:"
_BLOCK = 16
_NONCE = 24
#: The key sizes each encrypting provider accepts (kube's validation).
_KEY_SIZES = {"aescbc": (16, 24, 32), "secretbox": (32,)}
#: kube's words when a value's key name is not among a provider's keys.
_TRANSFORMER_NAMES = {"aescbc": "AES", "secretbox": "Secretbox"}


class TransformError(Exception):
    """A stored value no provider of the configuration can read (kube's words)."""


@dataclass(frozen=True)
class Key:
    """One named key of a provider (``secret`` is its base64 text)."""

    name: str
    secret: str

    @cached_property
    def material(self) -> bytes:
        # Decoded once: every Secret written or read uses it.
        return base64.b64decode(self.secret)


@dataclass(frozen=True)
class Provider:
    """``aescbc`` (with its keys, the first writing) or ``identity`` (no keys)."""

    type: str
    keys: tuple[Key, ...] = ()

    def as_json(self) -> dict[str, Any]:
        if self.type == "identity":
            return {"identity": {}}
        return {self.type: {"keys": [{"name": k.name, "secret": k.secret} for k in self.keys]}}


def aescbc_encrypt(key: bytes, data: bytes) -> bytes:
    """IV then the PKCS#7-padded ciphertext, as kube's CBC transformer writes."""
    padding = _BLOCK - len(data) % _BLOCK
    iv = os.urandom(_BLOCK)
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return iv + encryptor.update(data + bytes([padding]) * padding) + encryptor.finalize()


def aescbc_decrypt(key: bytes, data: bytes) -> bytes:
    """:raises TransformError: in kube's CBC transformer's words."""
    if len(data) < _BLOCK:
        raise TransformError("the stored data was shorter than the required size")
    iv, body = data[:_BLOCK], data[_BLOCK:]
    if len(body) % _BLOCK:
        raise TransformError("the stored data is not a multiple of the block size")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    clear = decryptor.update(body) + decryptor.finalize()
    padding = clear[-1] if clear else 0
    if padding == 0 or padding > len(clear):
        raise TransformError("invalid PKCS7 data (empty or not padded)")
    if clear[-padding:] != bytes([padding]) * padding:
        raise TransformError("invalid padding on input")
    return clear[:-padding]


def secretbox_encrypt(key: bytes, data: bytes) -> bytes:
    """A random 24-byte nonce, then the box, as kube's secretbox transformer writes."""
    from nacl.secret import SecretBox

    return bytes(SecretBox(key).encrypt(data, os.urandom(_NONCE)))


def secretbox_decrypt(key: bytes, data: bytes) -> bytes:
    """:raises TransformError: in kube's secretbox transformer's words."""
    from nacl.exceptions import CryptoError
    from nacl.secret import SecretBox

    if len(data) < _NONCE + SecretBox.MACBYTES:
        raise TransformError("the stored data was shorter than the required size")
    try:
        return SecretBox(key).decrypt(data)
    except CryptoError:
        raise TransformError("output array was not large enough for encryption") from None


#: Each encrypting provider's value prefix, encryption and decryption.
_CIPHERS: dict[str, tuple[bytes, Callable[[bytes, bytes], bytes], Callable[[bytes, bytes], bytes]]]
_CIPHERS = {
    "aescbc": (AESCBC_PREFIX, aescbc_encrypt, aescbc_decrypt),
    "secretbox": (SECRETBOX_PREFIX, secretbox_encrypt, secretbox_decrypt),
}


class Transformer:
    """The providers of one resource: the first writes, the first that can read reads."""

    def __init__(self, providers: Sequence[Provider]) -> None:
        if not providers:
            raise ValueError("providers: Required value")
        self.providers = tuple(providers)
        first = self.providers[0]
        self._writer = None if first.type == "identity" else first.keys[0]
        self._writer_type = first.type

    @property
    def encrypts(self) -> bool:
        return self._writer is not None

    @property
    def active_key(self) -> Key | None:
        return self._writer

    def to_storage(self, data: bytes) -> bytes:
        key = self._writer
        if key is None:
            return data
        prefix, encrypt, _ = _CIPHERS[self._writer_type]
        return prefix + key.name.encode() + b":" + encrypt(key.material, data)

    def from_storage(self, data: bytes) -> bytes:
        """:raises TransformError: no provider reads C{data}."""
        errors: list[str] = []
        for provider in self.providers:
            if provider.type == "identity":
                # kube's identity refuses encrypted data, and the next provider is tried.
                if not data.startswith(ENCRYPTED):
                    return data
                continue
            prefix, _, decrypt = _CIPHERS[provider.type]
            if not data.startswith(prefix):
                continue
            rest = data[len(prefix) :]
            matched = False
            for key in provider.keys:
                name = key.name.encode() + b":"
                if rest.startswith(name):
                    matched = True
                    try:
                        return decrypt(key.material, rest[len(name) :])
                    except TransformError as e:
                        errors.append(str(e))
            if not matched:
                cipher = _TRANSFORMER_NAMES[provider.type]
                errors.append(f"no matching key was found for the provided {cipher} transformer")
        if errors:
            raise TransformError(errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]")
        raise TransformError("no matching prefix found")


def parse_configuration(text: bytes | str) -> dict[str, Transformer]:
    """
    The transformers of an ``EncryptionConfiguration``, by resource (``secrets``).

    :raises ValueError: the configuration is not one k3stw can use, in kube's words.
    """
    try:
        document = json.loads(text)
    except ValueError as e:
        raise ValueError(f"error while parsing file: {e}") from None
    if not isinstance(document, dict) or document.get("kind") != KIND:
        raise ValueError(f"got unexpected config type: {document.get('kind')!r}")
    if document.get("apiVersion") != API_VERSION:
        raise ValueError(f"unsupported apiVersion {document.get('apiVersion')!r}")
    transformers: dict[str, Transformer] = {}
    for index, entry in enumerate(document.get("resources") or ()):
        path = f"resources[{index}]"
        listed = entry.get("providers") or ()
        providers = [_provider(p, f"{path}.providers[{i}]") for i, p in enumerate(listed)]
        if not providers:
            raise ValueError(f"{path}.providers: Required value")
        for resource in entry.get("resources") or ():
            transformers.setdefault(str(resource), Transformer(providers))
    return transformers


def _provider(entry: Any, path: str) -> Provider:
    if not isinstance(entry, dict) or len(entry) != 1:
        raise ValueError(f"{path}: Invalid value: exactly one provider must be configured")
    ((kind, settings),) = entry.items()
    if kind == "identity":
        return Provider("identity")
    sizes = _KEY_SIZES.get(kind)
    if sizes is None:
        raise ValueError(
            f"{path}.{kind}: Unsupported value: k3stw encrypts with aescbc or secretbox only"
        )
    keys = []
    for index, key in enumerate((settings or {}).get("keys") or ()):
        name, secret = str(key.get("name") or ""), str(key.get("secret") or "")
        where = f"{path}.{kind}.keys[{index}]"
        if not name:
            raise ValueError(f"{where}.name: Required value")
        try:
            size = len(base64.b64decode(secret, validate=True))
        except (binascii.Error, ValueError):
            raise ValueError(
                f"{where}.secret: Invalid value: secrets must be base64 encoded"
            ) from None
        if size not in sizes:
            raise ValueError(
                f"{where}.secret: Invalid value: secret is not of the expected length, "
                f"got {size}, expected one of {list(sizes)}"
            )
        keys.append(Key(name, secret))
    if not keys:
        raise ValueError(f"{path}.{kind}.keys: Required value")
    return Provider(kind, tuple(keys))


def new_key(name: str) -> Key:
    """A new 32-byte key (AES-256 or secretbox's), as k3s makes them."""
    return Key(name, base64.b64encode(os.urandom(32)).decode())


def configuration(providers: Sequence[Provider]) -> bytes:
    """The compact JSON k3s writes to ``cred/encryption-config.json``."""
    document = {
        "kind": KIND,
        "apiVersion": API_VERSION,
        "resources": [{"resources": ["secrets"], "providers": [p.as_json() for p in providers]}],
    }
    return json.dumps(document, separators=(",", ":")).encode()


def _internal(key: str, error: TransformError) -> StatusError:
    return StatusError(500, f'Internal error occurred: unable to transform key "{key}": {error}')


@implementer(IDatastore)
class EncryptedDatastore:
    """
    C{datastore} with every value under C{prefix} passed through the
    transformer (which L{replace} swaps, as kube-apiserver reloads its config).
    """

    _log = Logger()

    def __init__(self, datastore: IDatastore, transformer: Transformer, prefix: str) -> None:
        self._datastore = datastore
        self.transformer = transformer
        self.prefix = prefix
        self.count = datastore.count
        self.current_revision = datastore.current_revision
        self.compact = datastore.compact
        self.compacted_revision = datastore.compacted_revision
        self.health = datastore.health
        self.delete = datastore.delete

    def replace(self, transformer: Transformer) -> None:
        self.transformer = transformer

    def _read(self, kv: KeyValue) -> KeyValue:
        if not kv.key.startswith(self.prefix):
            return kv
        try:
            value = self.transformer.from_storage(kv.value)
        except TransformError as e:
            raise _internal(kv.key, e) from None
        return KeyValue(kv.key, value, kv.create_revision, kv.mod_revision, kv.lease)

    def _write(self, key: str, value: bytes) -> bytes:
        return self.transformer.to_storage(value) if key.startswith(self.prefix) else value

    def get(self, key: str, revision: int = 0) -> Deferred[KeyValue | None]:
        return self._datastore.get(key, revision).addCallback(
            lambda kv: None if kv is None else self._read(kv)
        )

    def list(
        self, prefix: str, limit: int = 0, continue_from: str | None = None, revision: int = 0
    ) -> Deferred[ListResult]:
        listed = self._datastore.list(prefix, limit, continue_from, revision)
        if not self._overlaps(prefix):
            return listed
        return listed.addCallback(
            lambda page: ListResult([self._read(kv) for kv in page.items], page.revision, page.more)
        )

    def create(self, key: str, value: bytes, lease_ttl: int | None = None) -> Deferred[int]:
        return self._datastore.create(key, self._write(key, value), lease_ttl)

    def update(
        self, key: str, value: bytes, expected_revision: int, lease_ttl: int | None = None
    ) -> Deferred[int]:
        value = self._write(key, value)
        updating = self._datastore.update(key, value, expected_revision, lease_ttl)
        return updating.addErrback(self._conflict)

    def _conflict(self, failure: Any) -> Any:
        error = failure.check(Conflict) and failure.value
        if error:
            raise Conflict(error.key, error.expected_revision, self._read(error.current))
        return failure

    def watch(
        self, prefix: str, start_revision: int, deliver: Callable[[Sequence[Event]], None]
    ) -> Deferred[IWatch]:
        if not self._overlaps(prefix):
            return self._datastore.watch(prefix, start_revision, deliver)

        def decrypted(events: Sequence[Event]) -> None:
            readable = []
            for event in events:
                if not event.kv.key.startswith(self.prefix):
                    readable.append(event)
                    continue
                try:
                    kv = self._read(event.kv)
                    prev = None if event.prev is None else self._read(event.prev)
                except StatusError as e:
                    self._log.error("Dropping a watch event: {error}", error=e.message)
                    continue
                readable.append(Event(event.type, event.revision, kv, prev))
            deliver(readable)

        return self._datastore.watch(prefix, start_revision, decrypted)

    def _overlaps(self, prefix: str) -> bool:
        return self.prefix.startswith(prefix) or prefix.startswith(self.prefix)
