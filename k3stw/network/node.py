"""
What every node runs for the cluster network, agents and a server's own node
alike: the settings it takes from the server it joined (as k3s's agents take
``FlannelBackend``, ``DisableKubeProxy`` and the ranges from
``/v1-k3s/config``) and the service that holds each network component.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService
from twisted.internet.interfaces import IReactorTime

from k3stw.httpclient import HTTPSClient
from k3stw.kubeclient import KubeClient
from k3stw.pki.certs import KeyPair
from k3stw.pki.tls import PinnedCAPolicy

if TYPE_CHECKING:
    from k3stw.agent.join import Joined
    from k3stw.agent.service import AgentConfig
    from k3stw.network.ingress import IngressController

__all__ = ["KubeProxyArgError", "NetworkSettings", "NodeNetworking", "network_client", "proxy_mode"]

#: kube-proxy's ``--proxy-mode`` values, and those k3stw runs (k3s's default first).
PROXY_MODES = ("iptables", "ipvs", "nftables")
RUN_MODES = ("iptables", "nftables")

#: k3s's ``--disable`` items that name a network component.
COREDNS = "coredns"
SERVICELB = "servicelb"
#: k3s's bundled Ingress controller, in whose place the node runs its own.
TRAEFIK = "traefik"


class KubeProxyArgError(ValueError):
    """A ``--kube-proxy-arg`` kube-proxy (or k3stw's) would refuse."""


def proxy_mode(args: Iterable[str]) -> str:
    """
    The proxy mode that ``--kube-proxy-arg`` values (``name=value``, with or
    without leading dashes) choose, as k3s passes them over its own
    ``--proxy-mode=iptables``; other names are kube-proxy's and left alone.

    :raises KubeProxyArgError: a value without ``=``, a mode kube-proxy does not
        know, or ipvs, which k3stw does not run.
    """
    mode = "iptables"
    for arg in args:
        name, equals, value = arg.lstrip("-").partition("=")
        if not equals:
            raise KubeProxyArgError(f"invalid kube-proxy-arg {arg!r}: expected name=value")
        if name != "proxy-mode":
            continue
        value = value or "iptables"
        if value not in PROXY_MODES:
            supported = ", ".join(f'"{m}"' for m in PROXY_MODES)
            raise KubeProxyArgError(
                f'KubeProxyConfiguration.Mode: Unsupported value: "{value}": supported values:'
                f" {supported}"
            )
        if value not in RUN_MODES:
            raise KubeProxyArgError(f"kube-proxy-arg {arg!r}: k3stw runs iptables or nftables")
        mode = value
    return mode


def _ranges(value: object, default: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in str(value or default).split(",") if part.strip())


@dataclass(frozen=True)
class NetworkSettings:
    """
    A node's network, as the server it joined and its own flags say.

    :ivar node_name: the Node's name.
    :ivar node_ips: ``--node-ip`` (the host's primary address by default).
    :ivar flannel_backend: ``vxlan``, ``host-gw``, ``wireguard-native`` or ``none``.
    :ivar flannel_iface: ``--flannel-iface``; None for the default route's interface.
    :ivar disabled: the packaged components turned off (``coredns``, ``servicelb``, ...).
    :ivar proxy_mode: kube-proxy's mode (``--kube-proxy-arg=proxy-mode=``): ``iptables`` or
        ``nftables``.
    """

    node_name: str
    node_ips: tuple[str, ...]
    cluster_cidrs: tuple[str, ...] = ("10.42.0.0/16",)
    service_cidrs: tuple[str, ...] = ("10.43.0.0/16",)
    cluster_dns: tuple[str, ...] = ("10.43.0.10",)
    cluster_domain: str = "cluster.local"
    node_port_range: str = "30000-32767"
    flannel_backend: str = "vxlan"
    flannel_iface: str | None = None
    kube_proxy: bool = True
    network_policy: bool = True
    disabled: frozenset[str] = field(default_factory=frozenset)
    proxy_mode: str = "iptables"

    @classmethod
    def of(
        cls, node_name: str, settings: Mapping[str, Any], config: AgentConfig
    ) -> NetworkSettings:
        """The settings of node C{node_name}, from the server's C{settings} and its C{config}."""
        return cls(
            node_name=node_name,
            node_ips=config.node_ips,
            cluster_cidrs=_ranges(settings.get("ClusterIPRange"), "10.42.0.0/16"),
            service_cidrs=_ranges(settings.get("ServiceIPRange"), "10.43.0.0/16"),
            cluster_dns=_ranges(settings.get("ClusterDNS"), "10.43.0.10"),
            cluster_domain=str(settings.get("ClusterDomain") or "cluster.local"),
            node_port_range=str(settings.get("ServiceNodePortRange") or "30000-32767"),
            flannel_backend=str(settings.get("FlannelBackend") or "vxlan"),
            flannel_iface=config.flannel_iface,
            kube_proxy=not settings.get("DisableKubeProxy"),
            network_policy=not settings.get("DisableNPC"),
            disabled=frozenset(settings.get("Disables") or ()),
            proxy_mode=config.proxy_mode,
        )

    @property
    def cluster_dns_enabled(self) -> bool:
        return COREDNS not in self.disabled

    @property
    def ingress_enabled(self) -> bool:
        return TRAEFIK not in self.disabled


def network_client(
    clock: IReactorTime, joined: Joined, server_url: str, pair: KeyPair
) -> KubeClient:
    """The API at C{server_url} as C{pair} (``joined.kube_proxy`` or ``joined.k3s_controller``)."""
    return KubeClient(HTTPSClient(clock, PinnedCAPolicy(joined.server_ca, pair)), server_url)


class NodeNetworking(MultiService):
    """
    The node's network components, each a child service started and stopped
    with the node: flannel, kube-proxy, cluster DNS, the network policy
    controller and the Ingress controller, as the settings enable them.  A node without a container
    runtime runs none: it has no pods to connect.
    """

    def __init__(
        self, reactor: Any, settings: NetworkSettings, joined: Joined, server_url: str
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.settings = settings
        self.joined = joined
        self.server_url = server_url
        #: The Ingress controller, when the node runs one (the kubelet serves its metrics).
        self.ingress: IngressController | None = None
        from k3stw.network.flannel import flannel_for

        flannel = flannel_for(reactor, settings, joined, server_url)
        if flannel is not None:
            flannel.setServiceParent(self)
        if settings.kube_proxy:
            from k3stw.network.proxy import KubeProxy

            client = network_client(reactor, joined, server_url, joined.kube_proxy)
            KubeProxy(reactor, settings, client, mode=settings.proxy_mode).setServiceParent(self)
        if settings.network_policy:
            from k3stw.network.iptables import IPTables
            from k3stw.network.policy import NetworkPolicyController
            from k3stw.network.policyrules import PolicySettings

            rules = PolicySettings(
                frozenset(settings.node_ips),
                settings.service_cidrs,
                settings.node_port_range.replace("-", ":"),
            )
            client = network_client(reactor, joined, server_url, joined.k3s_controller)
            policies = NetworkPolicyController(reactor, client, rules, IPTables(reactor))
            policies.setServiceParent(self)
        if settings.cluster_dns_enabled:
            # twisted.names loads only on nodes that serve the cluster DNS.
            from k3stw.network.dns import ClusterDNS, ClusterDNSSettings
            from k3stw.network.resolvconf import pick

            ClusterDNS(
                reactor,
                network_client(reactor, joined, server_url, joined.kube_proxy),
                network_client(reactor, joined, server_url, joined.k3s_controller),
                ClusterDNSSettings.of(
                    settings.node_ips, settings.cluster_dns, settings.cluster_domain, pick()
                ),
            ).setServiceParent(self)
        if settings.ingress_enabled:
            from k3stw.network.ingress import IngressController

            client = network_client(reactor, joined, server_url, joined.k3s_controller)
            self.ingress = IngressController(reactor, client, settings.node_ips)
            self.ingress.setServiceParent(self)
