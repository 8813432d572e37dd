"""
Node enrollment on the supervisor: who may ask (the cluster token or a
kubelet certificate), node passwords, and the kubelet certificates issued
from the agents' CSRs.  Status codes and messages follow k3s, because agents
act on them (401: retry without the certificate, 403: the password message).
"""

from __future__ import annotations

import base64
import datetime
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IRequest

from k3stw.apiserver.kinds import nodes, secrets
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.hostport import join_host_port
from k3stw.logs import Logger
from k3stw.machinery.identity import (
    K3S_CONTROLLER_USER,
    KUBE_PROXY_USER,
    NODE_PREFIX,
    NODES,
    User,
    user_of_certificate,
)
from k3stw.machinery.times import utc
from k3stw.pki.certs import KeyPair, SubjectAltNames, Usage, issue, new_key
from k3stw.supervisor.nodepassword import (
    SECRET_NAMESPACE,
    SECRET_TYPE,
    BadHash,
    hash_password,
    secret_name,
    verify_password,
)

AGENT_GROUPS = frozenset({"k3s:agent", "k3s:server", NODES, "system:bootstrappers"})


def authenticate(request: IRequest, passwords: Mapping[str, str]) -> User | None:
    """
    The caller of a supervisor endpoint: a client certificate from the client
    CA first (a kubelet's node identity), else basic auth against
    ``server/cred/passwd`` (user ``node`` is ``k3s:agent``, user ``server`` is
    ``k3s:server``; either password admits an agent, as the server token joins
    agents too).
    """
    transport = getattr(request, "transport", None)
    certificate = transport.getPeerCertificate() if transport is not None else None
    if certificate is not None:
        return user_of_certificate(certificate)
    header = (request.getHeader(b"authorization") or b"").decode("latin-1")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(credentials).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    for name, role in (("server", "k3s:server"), ("node", "k3s:agent")):
        expected = passwords.get(name)
        if expected and hmac.compare_digest(password.encode(), expected.encode()):
            groups = (role, "k3s:agent") if role == "k3s:server" else (role,)
            return User(user or name, groups)
    return None


def require_agent(request: IRequest, passwords: Mapping[str, str]) -> User:
    """The caller, if it may use the agent endpoints: else 401 ``not authorized`` / 403."""
    user = authenticate(request, passwords)
    if user is None:
        raise StatusError(401, "not authorized")
    if not AGENT_GROUPS.intersection(user.groups):
        raise StatusError(403, "forbidden")
    return user


SERVER_ROLE = "k3s:server"


def require_server(request: IRequest, passwords: Mapping[str, str]) -> User:
    """The caller, if it holds the server token (``k3s:server``): else 401 / 403."""
    user = authenticate(request, passwords)
    if user is None:
        raise StatusError(401, "not authorized")
    if SERVER_ROLE not in user.groups:
        raise StatusError(403, "forbidden")
    return user


@dataclass(frozen=True)
class NodeRequest:
    """What a certificate request says about its node."""

    name: str
    password: str
    addresses: tuple[str, ...]
    by_node_identity: bool


def node_request(request: IRequest, user: User) -> NodeRequest:
    """Read k3s's node headers, with k3s's 400s."""
    name = (request.getHeader(b"k3s-node-name") or b"").decode("utf-8").strip().lower()
    password = (request.getHeader(b"k3s-node-password") or b"").decode("utf-8").strip()
    if not name:
        raise StatusError(400, "node name not set")
    if not password:
        raise StatusError(400, "node password not set")
    identity = user.name[len(NODE_PREFIX) :] if user.name.startswith(NODE_PREFIX) else None
    if identity is not None and identity != name:
        raise StatusError(400, "header node name does not match auth node name")
    addresses = tuple(
        a.strip()
        for a in (request.getHeader(b"k3s-node-ip") or b"").decode("latin-1").split(",")
        if a.strip()
    )
    return NodeRequest(name, password, addresses, identity is not None)


#: Runs a CPU-heavy function (scrypt) where it does not hold up the reactor.
OffThread = Callable[..., Deferred[Any]]


class NodePasswords(Service):
    """
    Verifies node passwords against their secrets, creating a secret on a
    node's first join.  scrypt runs on a small thread pool, and a verified
    (hash, password) pair is remembered so a join storm pays for each once.

    :param off_thread: where scrypt runs (tests run it in line); by default a
        two-thread pool of C{reactor}'s.
    """

    _log = Logger()

    def __init__(
        self, store: ObjectStore, reactor: Any, off_thread: OffThread | None = None
    ) -> None:
        self.store = store
        self.reactor: IReactorThreads = reactor
        # Two threads: a join storm of 1,000 agents joined in 69 s with two, 83 s with one
        # (each scrypt hash walks 32 MiB, so a third would mostly fight over the cache).
        self.pool = ThreadPool(minthreads=0, maxthreads=2, name="node-passwords")
        self._run = off_thread or partial(deferToThreadPool, reactor, self.pool)
        self._verified: dict[tuple[str, str], bool] = {}

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()

    async def _off_thread(self, function: Any, *args: Any) -> Any:
        return await self._run(function, *args)

    async def check(self, node: NodeRequest) -> None:
        """
        Accept C{node}'s password or raise the StatusError k3s would answer.
        """
        if node.by_node_identity:
            try:
                await self.store.get(nodes.RESOURCE, None, node.name)
            except StatusError as e:
                if e.code == 404:
                    raise StatusError(
                        401, f'unable to verify node identity: nodes "{node.name}" not found'
                    ) from None
                raise
        for _ in range(2):
            try:
                secret = await self.store.get(
                    secrets.RESOURCE, SECRET_NAMESPACE, secret_name(node.name)
                )
            except StatusError as e:
                if e.code != 404:
                    raise
                if await self._create(node):
                    return
                continue
            await self._verify(node, secret)
            return

    async def _create(self, node: NodeRequest) -> bool:
        """Store the hash of a new node's password; False if another request won the race."""
        hashed: str = await self._off_thread(hash_password, node.password)
        secret = {
            "metadata": {"name": secret_name(node.name), "namespace": SECRET_NAMESPACE},
            "type": SECRET_TYPE,
            "immutable": True,
            "data": {"hash": base64.b64encode(hashed.encode()).decode("ascii")},
        }
        try:
            await self.store.create(secrets.RESOURCE, SECRET_NAMESPACE, secret)
        except StatusError as e:
            if e.code == 409:
                return False
            raise
        self._verified[(hashed, node.password)] = True
        return True

    async def _verify(self, node: NodeRequest, secret: dict[str, Any]) -> None:
        try:
            hashed = base64.b64decode(secret.get("data", {}).get("hash", "")).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            hashed = ""
        key = (hashed, node.password)
        if key not in self._verified:
            try:
                self._verified[key] = await self._off_thread(verify_password, node.password, hashed)
            except BadHash:
                self._verified[key] = False
        if not self._verified[key]:
            self._log.error(
                "unable to verify password for node {node}: hash does not match", node=node.name
            )
            raise StatusError(
                403, f"unable to verify password for node {node.name}: hash does not match"
            )


def _csr_public_key(body: bytes) -> ec.EllipticCurvePublicKey | None:
    """The public key of a DER (or PEM) CSR in C{body}, None for no CSR (legacy GET)."""
    if not body.strip():
        return None
    try:
        csr = (
            x509.load_pem_x509_csr(body)
            if body.lstrip().startswith(b"-----")
            else x509.load_der_x509_csr(body)
        )
    except ValueError:
        raise StatusError(400, "the request body is not a certificate signing request") from None
    if not csr.is_signature_valid:
        raise StatusError(400, "the certificate signing request's signature is not valid")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise StatusError(400, "only ECDSA keys can be certified")
    return key


def sign_node_certificate(
    ca: KeyPair,
    ca_bundle: bytes,
    node: NodeRequest,
    body: bytes,
    usage: Usage,
    now: datetime.datetime,
) -> bytes:
    """
    The kubelet serving (server CA) or client (client CA) certificate for
    C{node}: the certificate and the CA chain, PEM; for a request without a
    CSR, also a new private key, as k3s's legacy answer has it.
    """
    if usage is Usage.SERVER:
        names = SubjectAltNames.of([node.name, "localhost", "127.0.0.1", *node.addresses])
        return sign_certificate(ca, ca_bundle, body, node.name, usage, now, (), names)
    return sign_certificate(
        ca, ca_bundle, body, NODE_PREFIX + node.name, usage, now, ["system:nodes"]
    )


def sign_certificate(
    ca: KeyPair,
    ca_bundle: bytes,
    body: bytes,
    common_name: str,
    usage: Usage,
    now: datetime.datetime,
    organizations: Sequence[str] = (),
    names: SubjectAltNames | None = None,
) -> bytes:
    """C{signAndSend}: the CSR's key certified (or a new key's, returned too), then the CA chain."""
    public_key = _csr_public_key(body)
    key = None
    if public_key is None:
        key = new_key()
        public_key = key.public_key()
    certificate = issue(ca, public_key, common_name, usage, now, organizations, names)
    answer = certificate.public_bytes(serialization.Encoding.PEM) + ca_bundle
    if key is not None:
        answer += KeyPair(certificate, key).key_pem
    return answer


class NodeEnrollment:
    """The agent endpoints of ``/v1-k3s/``: each returns the body or raises a StatusError."""

    def __init__(
        self,
        server_ca: KeyPair,
        server_ca_bundle: bytes,
        client_ca: KeyPair,
        passwords: Mapping[str, str],
        node_passwords: NodePasswords,
        is_ready: Any,
        clock: IReactorTime,
        settings: Mapping[str, Any],
        live_servers: Callable[[], Awaitable[list[tuple[str, int]]]] | None = None,
        bootstrap_users: Callable[[IRequest], Awaitable[User | None]] | None = None,
    ) -> None:
        """
        :param bootstrap_users: who a request's bootstrap token (``Bearer
            <id>.<secret>``) authenticates, if anyone; None: no such tokens.
        """
        self.bootstrap_users = bootstrap_users
        self.server_ca = server_ca
        self.server_ca_bundle = server_ca_bundle
        self.client_ca = client_ca
        self.passwords = passwords
        self.node_passwords = node_passwords
        self.is_ready = is_ready
        self.clock = clock
        self.settings = settings
        self.live_servers = live_servers

    def _now(self) -> datetime.datetime:
        return utc(self.clock.seconds())

    async def _agent(self, request: IRequest) -> User:
        """L{require_agent}, with bootstrap tokens too."""
        if self.bootstrap_users is not None:
            user = await self.bootstrap_users(request)
            if user is not None:
                return user
        return require_agent(request, self.passwords)

    async def _certificate(self, request: IRequest, usage: Usage) -> bytes:
        user = await self._agent(request)
        node = node_request(request, user)
        if not self.is_ready():
            raise StatusError(503, "runtime core not ready")
        await self.node_passwords.check(node)
        body = request.content.read() if request.content is not None else b""
        if usage is Usage.SERVER:
            return sign_node_certificate(
                self.server_ca, self.server_ca_bundle, node, body, usage, self._now()
            )
        client_bundle = self.client_ca.certificate_pem
        return sign_node_certificate(self.client_ca, client_bundle, node, body, usage, self._now())

    async def serving_kubelet(self, request: IRequest) -> bytes:
        return await self._certificate(request, Usage.SERVER)

    async def client_kubelet(self, request: IRequest) -> bytes:
        return await self._certificate(request, Usage.CLIENT)

    async def client_kube_proxy(self, request: IRequest) -> bytes:
        """``client-kube-proxy.crt``: what every node's kube-proxy reads the API as."""
        await self._agent(request)
        return self._component_certificate(request, KUBE_PROXY_USER)

    async def client_k3s_controller(self, request: IRequest) -> bytes:
        """``client-k3s-controller.crt``: flannel's, network policy's and DNS's identity."""
        await self._agent(request)
        return self._component_certificate(request, K3S_CONTROLLER_USER)

    def _component_certificate(self, request: IRequest, user: str) -> bytes:
        body = request.content.read() if request.content is not None else b""
        bundle = self.client_ca.certificate_pem
        return sign_certificate(self.client_ca, bundle, body, user, Usage.CLIENT, self._now())

    async def client_ca_bundle(self, request: IRequest) -> bytes:
        await self._agent(request)
        return self.client_ca.certificate_pem

    async def server_ca_file(self, request: IRequest) -> bytes:
        await self._agent(request)
        return self.server_ca_bundle

    async def apiservers(self, request: IRequest) -> bytes:
        """``/v1-k3s/apiservers``: every live server, as ``["ip:port", ...]``."""
        await self._agent(request)
        servers = await self.live_servers() if self.live_servers is not None else []
        return json.dumps([join_host_port(host, port) for host, port in servers]).encode()

    async def config(self, request: IRequest) -> bytes:
        await self._agent(request)
        return json.dumps(dict(self.settings), sort_keys=True).encode()
