"""
The server's credentials on disk, under ``<data-dir>/server``, laid out as k3s lays them out.

First start creates everything; every later start reuses what is there
byte for byte.  Only derived files are ever rewritten: the serving
certificate when its SANs or CA change.  A CA or token is never replaced:
a missing, corrupt or mismatched one stops the server with a message that
says what to do.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from k3stw.files import write_atomically, write_if_changed
from k3stw.lifecycle import StartupError
from k3stw.pki.certs import (
    KeyPair,
    SubjectAltNames,
    Usage,
    is_signed_by,
    load_pem_certificates,
    load_pem_key,
    new_ca,
    new_leaf,
    private_pem,
)
from k3stw.pki.token import InvalidToken, Token, ca_hash, parse_token, random_secret

ADMIN_USER = "system:admin"
ADMIN_GROUP = "system:masters"
#: The identity the API server presents to kubelets (k3s's client-kube-apiserver).
APISERVER_USER = "system:apiserver"
# A serving certificate this close to expiry is renewed at start, as k3s does.
RENEW_BEFORE = datetime.timedelta(days=90)
#: The service-account signing key's size (k3s: RSA 2048, no certificate).
SERVICE_KEY_BITS = 2048


@dataclass(frozen=True)
class ServerCredentials:
    """
    Everything a server needs to serve TLS and admit clients.

    :ivar server_ca_bundle: ``server-ca.crt`` exactly as on disk; it is what
        ``/cacerts`` serves and what the token's CA hash covers.
    :ivar token: the server token, ``K10<hash>::server:<password>``.
    :ivar agent_password: the password agents join with (user ``node``).
    :ivar kube_apiserver: the client certificate the API server presents to
        kubelets (``nodes/proxy``).
    :ivar service_key: ``service.key`` as on disk: the PEM private key that
        signs service-account tokens (L{k3stw.apiserver.tokens.keys}).
    """

    server_ca: KeyPair
    server_ca_bundle: bytes
    client_ca: KeyPair
    serving: KeyPair
    admin: KeyPair
    token: Token
    agent_password: str
    kube_apiserver: KeyPair
    service_key: bytes


@dataclass(frozen=True)
class ServerLayout:
    """The paths k3s uses below ``<data-dir>/server``."""

    server_dir: Path

    @property
    def tls(self) -> Path:
        return self.server_dir / "tls"

    def pair(self, stem: str) -> tuple[Path, Path]:
        return self.tls / f"{stem}.crt", self.tls / f"{stem}.key"

    @property
    def service_key(self) -> Path:
        return self.tls / "service.key"

    @property
    def token(self) -> Path:
        return self.server_dir / "token"

    @property
    def node_token(self) -> Path:
        return self.server_dir / "node-token"

    @property
    def agent_token(self) -> Path:
        return self.server_dir / "agent-token"

    @property
    def passwd(self) -> Path:
        return self.server_dir / "cred" / "passwd"


def load_or_create_server_credentials(
    server_dir: Path,
    alt_names: SubjectAltNames,
    now: datetime.datetime,
    token: Token | None = None,
    agent_token: Token | None = None,
) -> ServerCredentials:
    """
    Load the credentials in C{server_dir}, creating what is missing.

    :param token: ``--token``: sets the secret on a first start; later it
        must match the stored one.
    :param agent_token: ``--agent-token``, likewise for the agent secret.
    :raises StartupError: the directory cannot be used, a file is corrupt, or
        a token disagrees with the one on disk.
    """
    layout = ServerLayout(server_dir)
    _make_private_dir(layout.tls)
    server_ca = _load_or_create_ca(layout, "server-ca", "k3s-server-ca", now)
    client_ca = _load_or_create_ca(layout, "client-ca", "k3s-client-ca", now)
    # etcd's CAs exist on every server, as k3s's do: they are bootstrap data
    # that a server joining over embedded etcd takes from the cluster.
    _make_private_dir(layout.tls / "etcd")
    for stem, name in ETCD_CAS.items():
        _load_or_create_ca(layout, stem, name, now)
    server_ca_bundle = _read(layout.pair("server-ca")[0])
    serving = _load_or_create_leaf(
        layout,
        "serving-kube-apiserver",
        server_ca,
        now,
        _serving_matches(alt_names),
        lambda: new_leaf(server_ca, "k3s", Usage.SERVER, now, ["k3s"], alt_names),
    )
    admin = _load_or_create_leaf(
        layout,
        "client-admin",
        client_ca,
        now,
        lambda _: True,
        lambda: new_leaf(client_ca, ADMIN_USER, Usage.CLIENT, now, [ADMIN_GROUP]),
    )
    kube_apiserver = _load_or_create_leaf(
        layout,
        "client-kube-apiserver",
        client_ca,
        now,
        lambda _: True,
        lambda: new_leaf(client_ca, APISERVER_USER, Usage.CLIENT, now, [ADMIN_GROUP]),
    )
    service_key = _load_or_create_service_key(layout.service_key)
    hash_ = ca_hash(server_ca_bundle)
    server_token = _load_or_create_token(layout, token, hash_)
    agent_password = _load_or_create_agent_password(
        layout, agent_token, hash_, server_token.password
    )
    write_token_files(layout, server_token, agent_password)
    return ServerCredentials(
        server_ca,
        server_ca_bundle,
        client_ca,
        serving,
        admin,
        server_token,
        agent_password,
        kube_apiserver,
        service_key,
    )


#: etcd's CAs below ``tls/``, with their common names (k3s's).
ETCD_CAS = {"etcd/server-ca": "etcd-server-ca", "etcd/peer-ca": "etcd-peer-ca"}


@dataclass(frozen=True)
class EtcdCertificates:
    """The files an etcd member and its clients use, under ``tls/etcd/`` (k3s's names)."""

    tls_dir: Path

    def path(self, name: str) -> str:
        return str(self.tls_dir / name)

    @property
    def server_ca(self) -> str:
        return self.path("server-ca.crt")

    @property
    def peer_ca(self) -> str:
        return self.path("peer-ca.crt")

    @property
    def client(self) -> tuple[str, str]:
        return self.path("client.crt"), self.path("client.key")


def load_or_create_etcd_certificates(
    server_dir: Path, alt_names: SubjectAltNames, now: datetime.datetime
) -> EtcdCertificates:
    """
    The member's certificates, made (or renewed) from the cluster's etcd CAs
    as k3s makes them: ``server-client`` and ``peer-server-client`` (CN
    ``etcd-server``/``etcd-peer``, server and client use, the server's names
    plus ``localhost``) and ``client`` (CN ``etcd-client``).

    :raises StartupError: as L{load_or_create_server_credentials}.
    """
    layout = ServerLayout(server_dir)
    server_ca = _load_or_create_ca(layout, "etcd/server-ca", ETCD_CAS["etcd/server-ca"], now)
    peer_ca = _load_or_create_ca(layout, "etcd/peer-ca", ETCD_CAS["etcd/peer-ca"], now)
    names = SubjectAltNames(alt_names.dns_names | {"localhost"}, alt_names.ip_addresses)
    for stem, ca, common_name in (
        ("etcd/server-client", server_ca, "etcd-server"),
        ("etcd/peer-server-client", peer_ca, "etcd-peer"),
    ):
        _load_or_create_leaf(
            layout,
            stem,
            ca,
            now,
            _serving_matches(names),
            partial(new_leaf, ca, common_name, Usage.SERVER_CLIENT, now, (), names),
        )
    _load_or_create_leaf(
        layout,
        "etcd/client",
        server_ca,
        now,
        lambda _: True,
        partial(new_leaf, server_ca, "etcd-client", Usage.CLIENT, now),
    )
    return EtcdCertificates(layout.tls / "etcd")


def _make_private_dir(path: Path) -> None:
    for each in (path, *path.parents):
        if each.exists() and not each.is_dir():
            raise StartupError(f"data directory path {each} exists but is not a directory")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise StartupError(f"cannot create {path}: {e.strerror}") from None
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise StartupError(f"data directory {path} is not readable and writable by this user")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise StartupError(f"cannot read {path}: {e.strerror}") from None


def _load_pair(certificate_path: Path, key_path: Path, remedy: str) -> KeyPair:
    try:
        certificate = load_pem_certificates(_read(certificate_path))[0]
    except ValueError:
        raise StartupError(f"{certificate_path} is not a valid PEM certificate; {remedy}") from None
    try:
        key = load_pem_key(_read(key_path))
    except (ValueError, TypeError):
        raise StartupError(f"{key_path} is not a valid ECDSA private key; {remedy}") from None
    if certificate.public_key() != key.public_key():
        raise StartupError(f"{key_path} does not belong to {certificate_path}; {remedy}")
    return KeyPair(certificate, key)


def _store_pair(certificate_path: Path, key_path: Path, pair: KeyPair) -> None:
    # The key first: a certificate on disk always has its key beside it.
    write_atomically(key_path, pair.key_pem, 0o600)
    write_atomically(certificate_path, pair.certificate_pem, 0o644)


def _load_or_create_ca(
    layout: ServerLayout, stem: str, name: str, now: datetime.datetime
) -> KeyPair:
    certificate_path, key_path = layout.pair(stem)
    remedy = (
        "restore it from a backup; k3stw never replaces a cluster CA, because every "
        "node and kubeconfig trusts it"
    )
    present = [p for p in (certificate_path, key_path) if p.exists()]
    if len(present) == 1:
        missing = key_path if present[0] == certificate_path else certificate_path
        raise StartupError(f"{present[0]} exists but {missing} is missing; {remedy}")
    if present:
        return _load_pair(certificate_path, key_path, remedy)
    ca = new_ca(f"{name}@{int(now.timestamp())}", now)
    _store_pair(certificate_path, key_path, ca)
    return ca


def _load_or_create_service_key(path: Path) -> bytes:
    """
    ``service.key``, made at first start as k3s makes it (RSA, PKCS#1 PEM);
    like a CA it is never replaced: every token issued is signed with it.
    """
    if path.exists():
        pem = _read(path)
        try:
            key = serialization.load_pem_private_key(pem, None)
        except (ValueError, TypeError):
            key = None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise StartupError(
                f"{path} is not a PEM RSA private key; restore it from a backup, or delete it "
                "to have a new one made (every service-account token issued so far then stops "
                "working)"
            )
        return pem
    pem = private_pem(rsa.generate_private_key(65537, SERVICE_KEY_BITS))
    write_atomically(path, pem, 0o600)
    return pem


def _load_or_create_leaf(
    layout: ServerLayout,
    stem: str,
    ca: KeyPair,
    now: datetime.datetime,
    still_good: Callable[[x509.Certificate], bool],
    create: Callable[[], KeyPair],
) -> KeyPair:
    certificate_path, key_path = layout.pair(stem)
    if certificate_path.exists() or key_path.exists():
        remedy = "delete both files to have a new pair issued at the next start"
        current = _load_pair(certificate_path, key_path, remedy)
        if (
            is_signed_by(current.certificate, ca.certificate)
            and current.certificate.not_valid_after_utc - now > RENEW_BEFORE
            and still_good(current.certificate)
        ):
            return current
    leaf = create()
    _store_pair(certificate_path, key_path, leaf)
    return leaf


def _serving_matches(alt_names: SubjectAltNames) -> Callable[[x509.Certificate], bool]:
    def check(certificate: x509.Certificate) -> bool:
        return SubjectAltNames.of_certificate(certificate) == alt_names

    return check


def _load_or_create_token(layout: ServerLayout, given: Token | None, hash_: str) -> Token:
    wanted = _password_for_this_ca(given, "--token", hash_)
    if layout.token.exists():
        stored_text = _read(layout.token).decode("utf-8", "replace")
        try:
            stored = parse_token(stored_text)
        except InvalidToken as e:
            raise StartupError(
                f"{layout.token} does not hold a k3s token ({e}); restore it from a backup"
            ) from None
        if wanted is not None and wanted != stored.password:
            raise StartupError(
                f"--token does not match the token this server was created with "
                f"(in {layout.token}); a server's token cannot be changed by restarting "
                f"it with another one"
            )
        return Token(hash_, "server", stored.password)
    return Token(hash_, "server", wanted or random_secret())


def _password_for_this_ca(token: Token | None, flag: str, hash_: str) -> str | None:
    """The password of a given token, refused if the token names another CA."""
    if token is None:
        return None
    if token.ca_hash and token.ca_hash != hash_:
        raise StartupError(
            f"{flag}: token CA hash does not match the Cluster CA certificate hash: "
            f"{token.ca_hash} != {hash_}"
        )
    return token.password


def _load_or_create_agent_password(
    layout: ServerLayout, given: Token | None, hash_: str, server_password: str
) -> str:
    wanted = _password_for_this_ca(given, "--agent-token", hash_)
    stored = _passwd_entries(layout.passwd).get("node")
    if stored is not None:
        if wanted is not None and wanted != stored:
            raise StartupError(
                f"--agent-token does not match the agent token this server was created with "
                f"(in {layout.passwd}); it cannot be changed by restarting with another one"
            )
        return stored
    return wanted or server_password


def _passwd_entries(path: Path) -> dict[str, str]:
    """``password,user,uid,groups`` lines, as k3s's passwd file holds them."""
    if not path.exists():
        return {}
    entries = {}
    for number, line in enumerate(_read(path).decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(",")
        if len(fields) < 3 or not fields[0]:
            raise StartupError(
                f"{path} line {number} is not 'password,user,uid,groups'; restore it from a backup"
            )
        entries[fields[1]] = fields[0]
    return entries


def write_token_files(layout: ServerLayout, token: Token, agent_password: str) -> None:
    """``server/token``, ``node-token``, ``agent-token`` and ``cred/passwd``, as k3s keeps them."""
    write_if_changed(layout.token, f"{token}\n".encode(), 0o600)
    _symlink(layout.node_token, layout.token.name)
    if agent_password == token.password:
        _symlink(layout.agent_token, layout.token.name)
    else:
        agent = Token(token.ca_hash, "node", agent_password)
        if layout.agent_token.is_symlink():
            layout.agent_token.unlink()
        write_if_changed(layout.agent_token, f"{agent}\n".encode(), 0o600)
    passwd = f"{agent_password},node,node,k3s:agent\n{token.password},server,server,k3s:server\n"
    layout.passwd.parent.mkdir(mode=0o700, exist_ok=True)
    write_if_changed(layout.passwd, passwd.encode(), 0o600)


def _symlink(link: Path, target: str) -> None:
    """k3s keeps ``node-token`` (and a default ``agent-token``) as links to ``token``."""
    if link.is_symlink() and os.readlink(link) == target:
        return
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)
