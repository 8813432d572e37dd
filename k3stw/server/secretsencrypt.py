"""
``--secrets-encryption`` as k3s runs it on a server: the key file
``cred/encryption-config.json`` (kube-apiserver's EncryptionConfiguration,
compact JSON, 0600), the stage file ``cred/encryption-state.json``
(``<stage>-<sha256 of the key file>``), and the supervisor endpoints that
``k3s secrets-encrypt`` calls: ``GET /v1-k3s/encrypt/status`` and
``PUT /v1-k3s/encrypt/config`` (``{"stage", "enable", "force", "skip"}``),
with k3s's stages: ``start``, ``prepare``, ``rotate``, ``reencrypt_finished``,
and ``rotate_keys`` in one step.

The server applies a new key file at once (kube-apiserver reloads it on its
own in k3s), so no restart is needed between stages.  Left out: the
``k3s.io/encryption-config-hash`` node annotations that k3s compares across
servers (the hash is checked against this server's state file only), the
``secrets-reencrypt`` Events.  The command is L{k3stw.cli.secretsencrypt}.

``--secrets-encryption-provider=secretbox`` makes new keys secretbox keys:
the first key file's, and ``rotate-keys``'s, which moves every Secret from
the AES-CBC keys to the new secretbox key and drops the AES-CBC provider,
as k3s's migration does.  The secretbox key names (``secretboxkey``,
``secretboxkey-<time>``) and the key type shown by ``status``
(``XSalsa20-POLY1305``) follow k3s's drafts; the released names are
unconfirmed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.web.iweb import IRequest

from k3stw.apiserver.encryption import (
    EncryptedDatastore,
    Provider,
    Transformer,
    configuration,
    new_key,
    parse_configuration,
)
from k3stw.apiserver.kinds import secrets
from k3stw.apiserver.status import StatusError
from k3stw.datastore.interface import Conflict, KeyNotFound
from k3stw.files import write_atomically
from k3stw.logs import Logger
from k3stw.machinery.times import rfc3339
from k3stw.supervisor.nodes import require_server
from k3stw.supervisor.resource import Handler, Route, json_object

START = "start"
PREPARE = "prepare"
ROTATE = "rotate"
REENCRYPT_REQUEST = "reencrypt_request"
REENCRYPT_ACTIVE = "reencrypt_active"
REENCRYPT_FINISHED = "reencrypt_finished"
ROTATE_KEYS = "rotate_keys"
#: The first key's name; later ones carry their time (``aescbckey-2021-12-10T22:54:38Z``).
FIRST_KEY = "aescbckey"
#: Each provider's first key name and the "Key Type" ``status`` shows for its keys
#: (secretbox's are as k3s's pre-release drafts named them; see the module docstring).
KEY_NAMES = {"aescbc": FIRST_KEY, "secretbox": "secretboxkey"}
KEY_TYPES = {"aescbc": "AES-CBC", "secretbox": "XSalsa20-POLY1305"}
_PAGE = 20


def config_path(server_dir: Path) -> Path:
    return server_dir / "cred" / "encryption-config.json"


def state_path(server_dir: Path) -> Path:
    return server_dir / "cred" / "encryption-state.json"


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_first_key_file(server_dir: Path, provider: str = "aescbc") -> None:
    """
    The key file of a first start (one new key of C{provider}, identity last)
    and the stage ``start``, unless there is one (made here, or taken from the
    cluster's bootstrap data).  Blocking.
    """
    path = config_path(server_dir)
    if not path.exists():
        providers = [Provider(provider, (new_key(KEY_NAMES[provider]),)), Provider("identity")]
        data = configuration(providers)
        write_atomically(path, data)
        write_atomically(state_path(server_dir), f"{START}-{_hash(data)}".encode())


def prepare_encryption(server_dir: Path, provider: str = "aescbc") -> Transformer:
    """
    The Secrets' transformer of the key file (L{write_first_key_file} first).
    Blocking: for C{makeService}.

    :raises ValueError: the key file is not one k3stw can use.
    """
    write_first_key_file(server_dir, provider)
    path = config_path(server_dir)
    transformer = parse_configuration(path.read_bytes()).get(secrets.RESOURCE.plural)
    if transformer is None:
        raise ValueError(f"{path}: no providers for secrets")
    return transformer


@dataclass
class EncryptionStatus:
    """k3s's ``EncryptionState`` JSON: what ``k3s secrets-encrypt status`` shows."""

    stage: str
    active_key: str
    enable: bool | None
    hash_match: bool
    hash_error: str
    inactive_keys: list[str]

    def as_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"stage": self.stage, "activekey": self.active_key}
        if self.enable is not None:
            document["enable"] = self.enable
        if self.hash_match:
            document["hashmatch"] = True
        if self.hash_error:
            document["hasherror"] = self.hash_error
        if self.inactive_keys:
            document["inactivekeys"] = self.inactive_keys
        return document


def status_text(status: dict[str, Any] | None) -> str:
    """``k3s secrets-encrypt status``'s text output for the status JSON (None: no key file)."""
    if status is None:
        return "Encryption Status: Disabled, no configuration file found\n"
    lines = [
        f"Encryption Status: {'Enabled' if status.get('enable') else 'Disabled'}",
        f"Current Rotation Stage: {status.get('stage', '')}",
        "Server Encryption Hashes: "
        + ("All hashes match" if status.get("hashmatch") else str(status.get("hasherror", ""))),
        "",
    ]
    rows = [("Active", "Key Type", "Name"), ("------", "--------", "----")]
    if status.get("activekey"):
        rows.append((" *", _key_type(status["activekey"]), status["activekey"]))
    rows.extend(("", _key_type(name), name) for name in status.get("inactivekeys") or ())
    # Go's tabwriter with two spaces of padding.
    widths = [max(len(row[i]) for row in rows) + 2 for i in range(2)]
    lines.extend(f"{a:<{widths[0]}}{b:<{widths[1]}}{c}".rstrip() for a, b, c in rows)
    return "\n".join(lines) + "\n"


def _key_type(name: str) -> str:
    """The key type of a key, known from its name (the status JSON has only names)."""
    if name.startswith(KEY_NAMES["secretbox"]):
        return KEY_TYPES["secretbox"]
    return KEY_TYPES["aescbc"]


class SecretsEncryption:
    """The key file's stages on this server, applied to its store at once."""

    _log = Logger()

    def __init__(
        self,
        server_dir: Path,
        node_name: str,
        datastore: EncryptedDatastore,
        now: Callable[[], float],
        publish: Callable[[], Awaitable[None]] | None = None,
        provider: str = "aescbc",
    ) -> None:
        """
        :param publish: saves the key file to the cluster's bootstrap data (on an
            external datastore), for the servers that start after a stage.
        :param provider: ``--secrets-encryption-provider``, the type of new keys.
        """
        self.provider = provider
        self.server_dir = server_dir
        self.node_name = node_name
        self.datastore = datastore
        self.now = now
        self.publish = publish

    def _providers(self) -> list[Provider]:
        return list(self.datastore.transformer.providers)

    def _stage(self) -> tuple[str, str]:
        stage, _, digest = state_path(self.server_dir).read_text().strip().rpartition("-")
        return stage, digest

    def status(self) -> EncryptionStatus:
        data = config_path(self.server_dir).read_bytes()
        stage, digest = self._stage()
        providers = self._providers()
        enabled = providers[0].type != "identity"
        keys = [key.name for p in providers for key in p.keys]
        match = digest == _hash(data)
        error = "" if match else f"invalid hash: {stage}-{digest} found on node {self.node_name}"
        active = keys[0] if enabled and keys else ""
        return EncryptionStatus(stage, active, enabled, match, error, keys[1:] if active else keys)

    async def _save(self, providers: list[Provider], stage: str) -> None:
        data = configuration(providers)
        write_atomically(config_path(self.server_dir), data)
        write_atomically(state_path(self.server_dir), f"{stage}-{_hash(data)}".encode())
        self.datastore.replace(Transformer(providers))
        if self.publish is not None:
            await self.publish()

    def _keyed(self, providers: list[Provider]) -> tuple[int, Provider]:
        """The provider of C{--secrets-encryption-provider}'s type, and where it is."""
        for index, provider in enumerate(providers):
            if provider.type == self.provider:
                return index, provider
        raise StatusError(400, f"no {KEY_TYPES[self.provider]} keys found")

    def _require(self, allowed: tuple[str, ...], force: bool) -> str:
        stage, _ = self._stage()
        if not force and stage not in allowed:
            raise StatusError(400, f"incorrect stage: {stage} found on node {self.node_name}")
        return stage

    def _new_key_name(self) -> str:
        return f"{KEY_NAMES[self.provider]}-{rfc3339(self.now())}"

    async def configure(self, body: dict[str, Any]) -> None:
        """One ``PUT /v1-k3s/encrypt/config``: enable/disable, or the next stage."""
        force = bool(body.get("force"))
        enable = body.get("enable")
        providers = self._providers()
        if enable is not None:
            enabled = providers[0].type != "identity"
            if bool(enable) == enabled:
                word = "enabled" if enabled else "disabled"
                self._log.info("Secrets encryption already {word}", word=word)
                return
            self._log.info("{what} secrets encryption", what="Enabling" if enable else "Disabling")
            current, _ = self._stage()
            identity = [p for p in providers if p.type == "identity"]
            others = [p for p in providers if p.type != "identity"]
            await self._save(others + identity if enable else identity + others, current)
            return
        stage = str(body.get("stage"))
        if stage == PREPARE:
            self._require((START, REENCRYPT_FINISHED), force)
            index, keyed = self._keyed(providers)
            key = new_key(self._new_key_name())
            self._log.info("Adding secrets-encryption key: {name}", name=key.name)
            providers[index] = Provider(keyed.type, (*keyed.keys, key))
            await self._save(providers, PREPARE)
        elif stage == ROTATE:
            self._require((PREPARE,), force)
            index, keyed = self._keyed(providers)
            providers[index] = Provider(keyed.type, (keyed.keys[-1], *keyed.keys[:-1]))
            self._log.info("Encryption keys right rotated")
            await self._save(providers, ROTATE)
        elif stage == REENCRYPT_REQUEST:
            self._require((ROTATE,), force)
            await self.reencrypt()
            if not body.get("skip"):
                index, keyed = self._keyed(providers)
                if len(keyed.keys) > 1:
                    self._log.info("Removing key: {name}", name=keyed.keys[-1].name)
                    providers[index] = Provider(keyed.type, keyed.keys[:-1])
                await self._save(providers, REENCRYPT_FINISHED)
        elif stage == ROTATE_KEYS:
            self._require((START, REENCRYPT_FINISHED), force)
            key = new_key(self._new_key_name())
            self._log.info("Adding secrets-encryption key: {name}", name=key.name)
            old_keys = next((p.keys for p in providers if p.type == self.provider), ())
            # The new key writes; every old key (of any provider) still reads until reencrypted.
            others = [p for p in providers if p.type != self.provider]
            await self._save([Provider(self.provider, (key, *old_keys)), *others], REENCRYPT_ACTIVE)
            await self.reencrypt()
            identity = [p for p in others if p.type == "identity"]
            await self._save([Provider(self.provider, (key,)), *identity], REENCRYPT_FINISHED)
        else:
            raise StatusError(400, f"unknown stage {stage!r} requested")

    async def reencrypt(self) -> int:
        """Write every Secret again under the active key; how many were written."""
        prefix = secrets.RESOURCE.storage_prefix()
        written = 0
        start: str | None = None
        while True:
            page = await self.datastore.list(prefix, _PAGE, start)
            for kv in page.items:
                start = kv.key
                try:
                    await self.datastore.update(kv.key, kv.value, kv.mod_revision)
                except (Conflict, KeyNotFound):
                    # Written or deleted meanwhile: under the active key already, or gone.
                    continue
                written += 1
            if not page.more:
                break
        self._log.info("reencrypted {count} secrets", count=written)
        return written

    def resource(self, passwords: Mapping[str, str]) -> Route:
        """``/v1-k3s/encrypt``, for the server token's holders (``k3s:server``)."""

        def server_only(handler: Callable[[IRequest], Awaitable[bytes]]) -> Handler:
            def checked(request: IRequest) -> Awaitable[bytes]:
                require_server(request, passwords)
                return handler(request)

            return checked

        encrypt = Route()
        encrypt.putChild(b"status", Route(b"application/json", GET=server_only(self._status)))
        encrypt.putChild(b"config", Route(PUT=server_only(self._configure)))
        return encrypt

    async def _status(self, request: IRequest) -> bytes:
        return json.dumps(self.status().as_json()).encode()

    async def _configure(self, request: IRequest) -> bytes:
        body = json_object(request)
        await self.configure(body)
        return b""
