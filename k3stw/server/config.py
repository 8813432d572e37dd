"""What a server is asked to be, independent of where the settings came from."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from k3stw.agent.service import NodeSettings
from k3stw.datastore.endpoint import DatastoreTLS
from k3stw.etcd.config import EtcdSettings
from k3stw.pki.certs import SubjectAltNames
from k3stw.pki.token import Token


@dataclass(frozen=True)
class ServerConfig:
    """
    A server's settings, already validated.

    :ivar node_ips: the node's addresses (``--node-ip``, else the host's primary address).
    :ivar token: ``--token`` (or the content of ``--token-file``), if given.
    """

    data_dir: Path
    hostname: str
    bind_address: str
    https_port: int
    node_ips: tuple[str, ...]
    advertise_address: str | None
    tls_sans: tuple[str, ...]
    token: Token | None
    agent_token: Token | None
    kubeconfig: Path
    kubeconfig_mode: int
    service_cidr: str
    cluster_domain: str
    cluster_cidr: str = "10.42.0.0/16"
    cluster_dns: str = "10.43.0.10"
    node_monitor_grace_period: float = 40.0
    #: ``--node-cidr-mask-size``: each node's pod subnet; None for kube's (/24, /64).
    node_cidr_mask_size: int | None = None
    advertise_port: int | None = None
    #: The embedded agent's node settings; None with ``--disable-agent``.
    node: NodeSettings | None = None
    datastore_endpoint: str | None = None
    datastore_tls: DatastoreTLS = field(default_factory=DatastoreTLS)
    node_external_ips: tuple[str, ...] = ()
    #: ``--service-node-port-range`` (``30000-32767``).
    service_node_port_range: str = "30000-32767"
    #: Validation, defaulting and authorization; off (``--unchecked-api``) only to measure them.
    api_checks: bool = True
    #: ``--disable``: the packaged components not to deploy (``local-storage``, ...).
    disable: frozenset[str] = frozenset()
    #: ``--flannel-backend``: how pods on different nodes reach each other.
    flannel_backend: str = "vxlan"
    #: ``--disable-kube-proxy``, ``--disable-network-policy``.
    disable_kube_proxy: bool = False
    disable_network_policy: bool = False
    #: ``--secrets-encryption``: Secrets stored encrypted under ``cred/encryption-config.json``.
    secrets_encryption: bool = False
    #: ``--secrets-encryption-provider``: ``aescbc`` or ``secretbox`` for new keys.
    secrets_encryption_provider: str = "aescbc"
    #: ``--default-local-storage-path``; None for ``<data-dir>/storage``.
    default_local_storage_path: Path | None = None
    #: Embedded etcd's flags, on a server that runs a member; None otherwise.
    etcd: EtcdSettings | None = None

    @property
    def local_storage_path(self) -> Path:
        """Where the local-path provisioner keeps volumes on nodes not listed in its config."""
        return self.default_local_storage_path or self.data_dir / "storage"

    @property
    def node_ports(self) -> range:
        first, _, last = self.service_node_port_range.partition("-")
        return range(int(first), int(last) + 1)

    @property
    def server_dir(self) -> Path:
        return self.data_dir / "server"

    @property
    def manifests_dir(self) -> Path:
        """Where the deploy controller finds the manifests it keeps applied."""
        return self.server_dir / "manifests"

    @property
    def service_account_issuer(self) -> str:
        """k3s's ``--service-account-issuer``: the bound tokens' ``iss``."""
        return f"https://kubernetes.default.svc.{self.cluster_domain}"

    @property
    def api_audiences(self) -> tuple[str, ...]:
        """k3s's ``--api-audiences``: the issuer and ``k3s``."""
        return (self.service_account_issuer, "k3s")

    @property
    def local_url(self) -> str:
        """How clients on this host reach the server (k3s's kubeconfig URL)."""
        address = ipaddress.ip_address(self.bind_address)
        host = "127.0.0.1" if address.is_unspecified else _url_host(address)
        return f"https://{host}:{self.https_port}"

    @property
    def advertised(self) -> tuple[str, int]:
        """
        Where other servers and agents reach this one, by k3s's rules: the
        address is ``--advertise-address``, else the first
        ``--node-external-ip``, else the first node IP; the port is
        ``--advertise-port``, else the listen port.
        """
        address = self.advertise_address or (self.node_external_ips or self.node_ips)[0]
        return (address, self.advertise_port or self.https_port)

    def advertise_warning(self) -> str | None:
        """
        Why agents would fail to reach this server at its advertised address,
        if they would: it listens on one address and advertises another.
        """
        bind = ipaddress.ip_address(self.bind_address)
        address, port = self.advertised
        if bind.is_unspecified or ipaddress.ip_address(address) == bind:
            return None
        return (
            f"this server advertises {address}:{port} in the kubernetes endpoints but listens "
            f"only on {self.bind_address}:{self.https_port}: agents and other servers will fail "
            f"to reach it; set --advertise-address (or --node-ip) to {self.bind_address}, or "
            f"--bind-address to an address that includes {address}"
        )

    @property
    def kubernetes_cluster_ip(self) -> str:
        """The ``kubernetes`` service's ClusterIP: the first address of the service CIDR."""
        first = self.service_cidr.split(",")[0].strip()
        return str(ipaddress.ip_network(first, strict=False).network_address + 1)

    def agent_settings(self) -> dict[str, object]:
        """``/v1-k3s/config``: the fields of k3s's ``config.Control`` that agents read."""
        return {
            "SupervisorPort": self.https_port,
            "HTTPSPort": self.https_port,
            "ClusterIPRange": self.cluster_cidr,
            "ServiceIPRange": self.service_cidr,
            "ClusterDNS": self.cluster_dns,
            "ClusterDomain": self.cluster_domain,
            "EgressSelectorMode": "agent",
            "FlannelBackend": self.flannel_backend,
            "EncryptSecrets": self.secrets_encryption,
            "EncryptProvider": self.secrets_encryption_provider,
            "DisableKubeProxy": self.disable_kube_proxy,
            "DisableNPC": self.disable_network_policy,
            "DisableCCM": True,
            "ServiceNodePortRange": self.service_node_port_range,
            # k3s's agents learn these from the server's manifests; k3stw's nodes serve DNS.
            "Disables": sorted(self.disable),
        }

    def serving_alt_names(self) -> SubjectAltNames:
        """Every name a client may use to reach this server, as k3s lists them."""
        names: list[str] = ["localhost", "127.0.0.1", "::1", self.hostname, *self.node_ips]
        names.append(self.advertised[0])
        if not ipaddress.ip_address(self.bind_address).is_unspecified:
            names.append(self.bind_address)
        names += kubernetes_service_names(self.cluster_domain, self.service_cidr)
        names += self.tls_sans
        return SubjectAltNames.of(names)


def kubernetes_service_names(cluster_domain: str, service_cidr: str) -> Iterable[str]:
    """The in-cluster names of the ``kubernetes`` service and its cluster IP."""
    yield from (
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        f"kubernetes.default.svc.{cluster_domain}",
    )
    for cidr in service_cidr.split(","):
        network = ipaddress.ip_network(cidr.strip(), strict=False)
        yield str(network.network_address + 1)


def _url_host(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return f"[{address}]" if address.version == 6 else str(address)
