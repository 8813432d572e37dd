"""
The cluster's shared secrets in the datastore, as k3s keeps them for servers
on an external datastore: the CAs, the service-account key and the passwd file, encrypted with the
token's password, under ``/bootstrap/<first 12 hex of sha256(password)>``.

The first server saves them; every later server takes them before it makes
any certificate, so all servers share one cluster CA and agents can move
between them.  The format is k3s's (``pkg/cluster/encrypt.go``): a JSON map
of field name to ``{"Timestamp", "Content"}``, sealed with AES-256-GCM under
a PBKDF2-HMAC-SHA1 key (4096 rounds) salted with a random hex string, stored
as ``<salt>:<base64(nonce || ciphertext)>``.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from k3stw.datastore.blocking import BlockingKeys
from k3stw.datastore.interface import IDatastore
from k3stw.files import write_atomically
from k3stw.lifecycle import StartupError
from k3stw.logs import Logger

_log = Logger(namespace="k3stw.server.bootstrapdata")

PREFIX = "/bootstrap/"
#: k3s's field names, and where each file lives under ``<data-dir>/server``.
FILES = {
    "ClientCA": "tls/client-ca.crt",
    "ClientCAKey": "tls/client-ca.key",
    "ServerCA": "tls/server-ca.crt",
    "ServerCAKey": "tls/server-ca.key",
    "ServiceKey": "tls/service.key",
    "PasswdFile": "cred/passwd",
    # --secrets-encryption's key file and stage, once there are any.
    "EncryptionConfig": "cred/encryption-config.json",
    "EncryptionHash": "cred/encryption-state.json",
    "ETCDServerCA": "tls/etcd/server-ca.crt",
    "ETCDServerCAKey": "tls/etcd/server-ca.key",
    "ETCDPeerCA": "tls/etcd/peer-ca.crt",
    "ETCDPeerCAKey": "tls/etcd/peer-ca.key",
}
#: k3s's words for data sealed with another token.
OTHER_TOKEN = "bootstrap data already found and encrypted with different token"
#: A file on disk this much newer than the datastore's copy is not overwritten (k3s: 3 s).
NEWER_BY = datetime.timedelta(seconds=3)


def storage_key(password: str) -> str:
    return PREFIX + hashlib.sha256(password.encode()).hexdigest()[:12]


def _key(password: str, salt: str) -> bytes:
    kdf = PBKDF2HMAC(hashes.SHA1(), 32, salt.encode(), 4096)
    return kdf.derive(password.encode())


def encrypt(password: str, plain: bytes) -> bytes:
    salt = secrets.token_hex(8)
    nonce = os.urandom(12)
    sealed = AESGCM(_key(password, salt)).encrypt(nonce, plain, None)
    return f"{salt}:{base64.b64encode(nonce + sealed).decode()}".encode()


def decrypt(password: str, stored: bytes) -> bytes:
    """:raises ValueError: not k3s's format, or sealed with another password."""
    salt, colon, sealed_text = stored.decode("ascii", "replace").partition(":")
    if not colon:
        raise ValueError("not salt:ciphertext")
    sealed = base64.b64decode(sealed_text)
    try:
        return AESGCM(_key(password, salt)).decrypt(sealed[:12], sealed[12:], None)
    except InvalidTag:
        raise ValueError("sealed with another password") from None


def _mtime(path: Path) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.UTC)


def _rfc3339(when: datetime.datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def _file_mode(name: str) -> int:
    return 0o644 if name.endswith(".crt") else 0o600


def take(server_dir: Path, keys: BlockingKeys, password: str) -> bool:
    """
    Write the cluster's shared files from the datastore into C{server_dir}.

    :return: whether the datastore had them (False: this is the first server).
    :raises StartupError: with k3s's messages, when the datastore holds
        another cluster's data or a file on disk is newer than its copy.
    """
    found = keys.list_prefix(PREFIX)
    if len(found) > 1:
        raise StartupError("found multiple bootstrap keys in storage")
    if not found:
        return False
    ((key, stored),) = found.items()
    if key != storage_key(password):
        raise StartupError(OTHER_TOKEN)
    try:
        data = json.loads(decrypt(password, stored))
    except ValueError:
        raise StartupError(OTHER_TOKEN) from None
    reconcile(server_dir, data, keys.description)
    return True


def reconcile(server_dir: Path, document: dict[str, Any], source: str) -> None:
    """
    Write the files of a bootstrap C{document} (k3s's JSON) into C{server_dir}
    where they differ.

    :raises StartupError: with k3s's message, when a file on disk is newer than its copy.
    """
    newer: list[str] = []
    writes: list[tuple[Path, bytes]] = []
    for field, name in FILES.items():
        entry = document.get(field)
        if not isinstance(entry, dict):
            continue
        content = base64.b64decode(entry.get("Content", ""))
        path = server_dir / name
        if path.exists():
            if path.read_bytes() == content:
                continue
            stamp = datetime.datetime.fromisoformat(str(entry.get("Timestamp", "")))
            if _mtime(path) - stamp >= NEWER_BY:
                newer.append(str(path))
                continue
        writes.append((path, content))
    if newer:
        raise StartupError(
            f"{', '.join(newer)} newer than datastore and could cause a cluster outage. "
            "Remove the file(s) from disk and restart to be recreated from datastore."
        )
    for path, content in writes:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomically(path, content, _file_mode(path.name))
    if writes:
        _log.info(
            "Took the cluster's bootstrap data from {datastore}: {files}",
            datastore=source,
            files=", ".join(str(path) for path, _ in writes),
        )


def document(server_dir: Path, into: dict[str, Any] | None = None) -> dict[str, Any]:
    """
    C{into} (a new document by default) with C{server_dir}'s shared files as
    they are there: k3s's bootstrap JSON (``/v1-k3s/server-bootstrap``).
    """
    found = {} if into is None else into
    for field, name in FILES.items():
        path = server_dir / name
        if path.exists():
            found[field] = {
                "Timestamp": _rfc3339(_mtime(path)),
                "Content": base64.b64encode(path.read_bytes()).decode(),
            }
    return found


async def publish(datastore: IDatastore, server_dir: Path, password: str) -> None:
    """
    Save C{server_dir}'s shared files over the bootstrap data already in the
    datastore (k3s does after each secrets-encryption stage), so that a server
    restarted later takes the new key file rather than refusing the older one.
    """
    key = storage_key(password)
    current = await datastore.get(key)
    if current is None:
        return
    merged = document(server_dir, json.loads(decrypt(password, current.value)))
    sealed = encrypt(password, json.dumps(merged).encode())
    await datastore.update(key, sealed, current.mod_revision)


def save(server_dir: Path, keys: BlockingKeys, password: str) -> bool:
    """
    Save C{server_dir}'s shared files as the cluster's bootstrap data.

    :return: False if another server saved its data first.
    """
    sealed = encrypt(password, json.dumps(document(server_dir)).encode())
    saved = keys.create(storage_key(password), sealed)
    if saved:
        _log.info("Saved the cluster's bootstrap data to {datastore}", datastore=keys.description)
    return saved
