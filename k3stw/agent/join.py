"""
The agent's registration handshake, as one chain of steps with a retry
policy each, in k3s's order and with k3s's messages:

1. ``GET /cacerts`` and the token's CA hash (every 2 s until the server
   answers; a hash for another CA stops the agent);
2. the node's identity files (password, optional id) and name;
3. ``/v1-k3s/config``, the CA files, and the kubelet serving and client
   certificates from CSRs carrying ``k3s-Node-Name``, ``k3s-Node-Password``
   and ``k3s-Node-IP`` (every 5-10 s while the server is not ready);
4. the certificates and ``kubelet.kubeconfig`` written under ``<data-dir>/agent``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IPolicyForHTTPS

from k3stw.agent.cacerts import CAHashMismatch, Fetch, fetch_cluster_ca
from k3stw.agent.identity import NodeIdentity, load_identity
from k3stw.files import write_atomically
from k3stw.httpclient import HTTPSClient, HTTPStatusError, Response
from k3stw.logs import Logger
from k3stw.machinery.identity import K3S_CONTROLLER_USER, KUBE_PROXY_USER
from k3stw.machinery.timing import fixed, retrying
from k3stw.pki.certs import KeyPair, load_pem_certificates, load_pem_key, new_key, private_pem
from k3stw.pki.kubeconfig import write_kubeconfig
from k3stw.pki.tls import PinnedCAPolicy
from k3stw.pki.token import Token

_log = Logger(namespace="k3stw.agent.join")
T = TypeVar("T")

#: Sends a request: (method, url, headers, body, policy) -> response.
Send = Callable[
    [bytes, str, dict[bytes, bytes], bytes | None, IPolicyForHTTPS], Awaitable[Response]
]


def https_sender(clock: IReactorTime) -> Send:
    """Real requests: a connection each, as k3s's supervisor client keeps none alive."""

    async def send(
        method: bytes,
        url: str,
        headers: dict[bytes, bytes],
        body: bytes | None,
        policy: IPolicyForHTTPS,
    ) -> Response:
        return await HTTPSClient(clock, policy, persistent=False).request(
            method, url, headers, body
        )

    return send


#: k3s retries token validation every 2 s ...
VALIDATE_RETRY = fixed(2.0)
#: The network components' certificates a node asks for after its own, as k3s's agent.
COMPONENTS = {"client-kube-proxy": KUBE_PROXY_USER, "client-k3s-controller": K3S_CONTROLLER_USER}
#: ... and the agent configuration with 5 s and a jitter of 1.0 (5-10 s).
CONFIG_RETRY = fixed(5.0, jitter=1.0)


class PasswordRejected(Exception):
    """A 403 on a node certificate: k3s's message, naming the password file."""

    def __init__(self, password_file: Path) -> None:
        super().__init__(
            "Node password rejected, duplicate hostname or contents of "
            f"'{password_file}' may not match server node-passwd entry, try enabling a unique "
            "node name with the --with-node-id flag"
        )


@dataclass(frozen=True)
class JoinRequest:
    """What the agent joins with."""

    server_url: str
    token: Token
    agent_dir: Path
    identity_dir: Path
    node_name: str
    with_node_id: bool
    node_ips: tuple[str, ...]


@dataclass(frozen=True)
class Joined:
    """What joining gave the node."""

    identity: NodeIdentity
    server_ca: bytes
    client_ca: bytes
    serving: KeyPair
    client: KeyPair
    settings: dict[str, Any]
    #: ``client-kube-proxy``: the identity kube-proxy reads Services and EndpointSlices as.
    kube_proxy: KeyPair
    #: ``client-k3s-controller``: flannel's, network policy's and cluster DNS's identity.
    k3s_controller: KeyPair


def _logged(describe: Callable[[Exception], str]) -> Callable[[int, Exception], None]:
    """Log each failed attempt as k3s words it."""

    def failed(attempt: int, error: Exception) -> None:
        _log.error("{problem}", problem=describe(error))

    return failed


def _key(path: Path) -> Any:
    """The private key at C{path}, made (0600) if missing or unreadable, as k3s's agent does."""
    try:
        return load_pem_key(path.read_bytes())
    except (OSError, ValueError, TypeError):
        key = new_key()
        write_atomically(path, private_pem(key), 0o600)
        return key


def _csr(key: Any, common_name: str) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    request = (
        x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.DER)


def _existing_pair(agent_dir: Path, stem: str) -> KeyPair | None:
    try:
        certificate = load_pem_certificates((agent_dir / f"{stem}.crt").read_bytes())[0]
        key = load_pem_key((agent_dir / f"{stem}.key").read_bytes())
    except (OSError, ValueError, TypeError):
        return None
    return KeyPair(certificate, key)


class Handshake:
    """The steps of one join; L{run} chains them."""

    def __init__(self, request: JoinRequest, clock: IReactorTime, fetch: Fetch, send: Send):
        self.request = request
        self.clock = clock
        self.fetch = fetch
        self.send = send

    async def run(self) -> Joined:
        url = self.request.server_url
        cluster_ca = await retrying(
            self.clock,
            lambda: fetch_cluster_ca(self.fetch, url, self.request.token),
            VALIDATE_RETRY,
            _logged(lambda e: f"Failed to validate connection to cluster at {url}: {e}"),
            fatal=(CAHashMismatch,),
        )
        identity = load_identity(
            self.request.identity_dir, self.request.node_name, self.request.with_node_id
        )
        joined = await retrying(
            self.clock,
            lambda: self._configure(cluster_ca, identity),
            CONFIG_RETRY,
            _logged(lambda e: f"Waiting to retrieve agent configuration; server is not ready: {e}"),
        )
        self._write(joined)
        return joined

    def _headers(self, identity: NodeIdentity | None = None) -> dict[bytes, bytes]:
        headers = {b"authorization": self.request.token.authorization("node")}
        if identity is not None:
            headers[b"k3s-node-name"] = identity.name.encode()
            headers[b"k3s-node-password"] = identity.password.encode()
            headers[b"k3s-node-ip"] = ",".join(self.request.node_ips).encode()
        return headers

    async def _get(self, path: str, policy: IPolicyForHTTPS) -> bytes:
        url = self.request.server_url + path
        response = await self.send(b"GET", url, self._headers(), None, policy)
        if not 200 <= response.code < 300:
            raise HTTPStatusError(url, response)
        return response.body

    async def _configure(self, cluster_ca: bytes, identity: NodeIdentity) -> Joined:
        policy = PinnedCAPolicy(cluster_ca)
        settings = json.loads(await self._get("/v1-k3s/config", policy))
        client_ca = await self._get("/v1-k3s/client-ca.crt", policy)
        server_ca = await self._get("/v1-k3s/server-ca.crt", policy)
        agent_dir = self.request.agent_dir
        serving_key = _key(agent_dir / "serving-kubelet.key")
        client_key = _key(agent_dir / "client-kubelet.key")
        serving = await self._node_certificate(
            "/v1-k3s/serving-kubelet.crt", serving_key, identity, cluster_ca
        )
        client = await self._node_certificate(
            "/v1-k3s/client-kubelet.crt", client_key, identity, cluster_ca
        )
        kube_proxy, k3s_controller = [
            await self._component_certificate(stem, user, policy)
            for stem, user in COMPONENTS.items()
        ]
        return Joined(
            identity, server_ca, client_ca, serving, client, settings, kube_proxy, k3s_controller
        )

    async def _component_certificate(
        self, stem: str, user: str, policy: IPolicyForHTTPS
    ) -> KeyPair:
        """A network component's client certificate, for a CSR of its own key."""
        key = _key(self.request.agent_dir / f"{stem}.key")
        url = f"{self.request.server_url}/v1-k3s/{stem}.crt"
        response = await self.send(b"POST", url, self._headers(), _csr(key, user), policy)
        if not 200 <= response.code < 300:
            raise HTTPStatusError(url, response)
        return KeyPair(load_pem_certificates(response.body)[0], key)

    async def _node_certificate(
        self, path: str, key: Any, identity: NodeIdentity, cluster_ca: bytes
    ) -> KeyPair:
        """
        POST a CSR for a node certificate.  With node identity (a client
        certificate from an earlier join) first; a 401 then means the Node
        was deleted, and k3s retries once with the token alone.
        """
        url = self.request.server_url + path
        body = _csr(key, identity.name)
        own = _existing_pair(self.request.agent_dir, "client-kubelet")
        policies = (
            [PinnedCAPolicy(cluster_ca, own), PinnedCAPolicy(cluster_ca)]
            if own
            else [PinnedCAPolicy(cluster_ca)]
        )
        for attempt, policy in enumerate(policies):
            response = await self.send(b"POST", url, self._headers(identity), body, policy)
            if response.code == 401 and attempt == 0 and own is not None:
                _log.info(
                    "Node authorization rejected, retrying without client certificate "
                    "authentication"
                )
                continue
            if response.code == 403:
                raise PasswordRejected(identity.password_file)
            if not 200 <= response.code < 300:
                raise HTTPStatusError(url, response)
            certificates = load_pem_certificates(response.body)
            return KeyPair(certificates[0], key)
        raise HTTPStatusError(url, response)

    def _write(self, joined: Joined) -> None:
        agent_dir = self.request.agent_dir
        write_atomically(agent_dir / "client-ca.crt", joined.client_ca, 0o644)
        write_atomically(agent_dir / "server-ca.crt", joined.server_ca, 0o644)
        pairs = {
            "serving-kubelet": joined.serving,
            "client-kubelet": joined.client,
            "client-kube-proxy": joined.kube_proxy,
            "client-k3s-controller": joined.k3s_controller,
        }
        for stem, pair in pairs.items():
            write_atomically(agent_dir / f"{stem}.key", pair.key_pem, 0o600)
            write_atomically(agent_dir / f"{stem}.crt", pair.certificate_pem, 0o644)
        for name, pair in (
            ("kubelet", joined.client),
            ("kubeproxy", joined.kube_proxy),
            ("k3scontroller", joined.k3s_controller),
        ):
            write_kubeconfig(
                agent_dir / f"{name}.kubeconfig",
                self.request.server_url,
                joined.server_ca,
                pair,
                0o600,
            )
