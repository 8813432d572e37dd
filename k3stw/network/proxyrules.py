"""
kube-proxy's iptables mode as pure rule generation: Services and
EndpointSlices (plain dicts, as the informers hold them) and the node's facts
in, one ``iptables-restore`` input (``*filter`` then ``*nat``) out, with
kube-proxy 1.32's chain names, rule order and comments (see
``shared/reference/networking.md`` section 2).

Chains are named by kube's hash: the first 16 characters of the base32
SHA-256 of ``ns/svc[:port]`` + protocol (+ ``ip:port`` for an endpoint's
``KUBE-SEP-``), so that ``iptables-save`` reads as on a kube node.  Every
top-level chain is written whole (its ``:CHAIN`` line flushes it) and so is
every per-service chain: the caller applies the text as one transaction and
names the service chains that exist already, so that those no longer wanted
are flushed and deleted in the same transaction (kube-proxy's stale-chain
clean-up).  The jumps from the built-in chains are not in the text: they are
C{JUMPS}, ensured one by one, as kube-proxy does.

One deviation from kube's layout, for large clusters: every new connection
through the node (to a Service or not) walks nat KUBE-SERVICES rule by rule,
1,000 rules with 1,000 Services.  Above C{DISPATCH_ABOVE} rules, KUBE-SERVICES
holds one jump per destination address block instead (``-d 10.43.0.0/21 -j
KUBE-SVCS-10.43.0.0/21``), the block's chain holds kube's own rules for the
addresses in it, unchanged, and the NodePort rule stays last: a connection
evaluates a few dozen rules.  The block size is the one with the fewest
blocks plus rules in the largest block; ``iptables-save | grep KUBE-SVC-...``
still shows each Service's rule with its comment.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import NamedTuple

from k3stw.machinery.objects import Object

__all__ = [
    "DISPATCH_ABOVE",
    "JUMPS",
    "LOCALNET_JUMPS",
    "Endpoint",
    "NodeFacts",
    "PortPlan",
    "Ruleset",
    "ServicePort",
    "UDPFlows",
    "chain_hash",
    "endpoint_chain",
    "endpoints_by_port",
    "is_service_chain",
    "plan",
    "proxied_ports",
    "render",
    "service_ports",
    "stale_udp_flows",
]

#: kube-proxy's masqueradeBit 14, formatted as it writes it (``%#08x``).
MASQ_MARK = "0x004000"
#: Above this many endpoints in all, rule comments are left out (kube's large-cluster mode).
LARGE_CLUSTER_ENDPOINTS = 1000
#: The API's default for ``sessionAffinityConfig.clientIP.timeoutSeconds``.
DEFAULT_AFFINITY_SECONDS = 10800

#: Above this many rules, nat KUBE-SERVICES dispatches by address block (see the module doc).
DISPATCH_ABOVE = 100

#: The prefixes of the chains kube-proxy makes per service port and endpoint, and k3stw's
#: per address block.
SERVICE_CHAIN_PREFIXES = (
    "KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-", "KUBE-SVCS-"
)  # fmt: skip
FILTER_CHAINS = (
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-FORWARD",
    "KUBE-NODEPORTS",
    "KUBE-PROXY-FIREWALL",
)
NAT_CHAINS = ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ")

_NEW = ("-m", "conntrack", "--ctstate", "NEW")
_EXTERNAL = "kubernetes externally-visible service portals"


def _jump(
    table: str, chain: str, target: str, comment: str, extra: tuple[str, ...] = ()
) -> tuple[str, str, tuple[str, ...]]:
    return (table, chain, (*extra, "-m", "comment", "--comment", comment, "-j", target))


#: The jumps from the built-in chains (table, chain, rule), each prepended if missing.
JUMPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    _jump("filter", "INPUT", "KUBE-EXTERNAL-SERVICES", _EXTERNAL, _NEW),
    _jump("filter", "FORWARD", "KUBE-EXTERNAL-SERVICES", _EXTERNAL, _NEW),
    _jump("filter", "INPUT", "KUBE-NODEPORTS", "kubernetes health check service ports"),
    _jump("filter", "FORWARD", "KUBE-SERVICES", "kubernetes service portals", _NEW),
    _jump("filter", "OUTPUT", "KUBE-SERVICES", "kubernetes service portals", _NEW),
    _jump("filter", "FORWARD", "KUBE-FORWARD", "kubernetes forwarding rules"),
    _jump("filter", "INPUT", "KUBE-PROXY-FIREWALL", "kubernetes load balancer firewall", _NEW),
    _jump("filter", "OUTPUT", "KUBE-PROXY-FIREWALL", "kubernetes load balancer firewall", _NEW),
    _jump("filter", "FORWARD", "KUBE-PROXY-FIREWALL", "kubernetes load balancer firewall", _NEW),
    _jump("nat", "OUTPUT", "KUBE-SERVICES", "kubernetes service portals"),
    _jump("nat", "PREROUTING", "KUBE-SERVICES", "kubernetes service portals"),
    _jump("nat", "POSTROUTING", "KUBE-POSTROUTING", "kubernetes postrouting rules"),
)  # fmt: skip
#: The kubelet's jumps to KUBE-FIREWALL (no comment), ensured with localhost NodePorts.
LOCALNET_JUMPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("filter", "INPUT", ("-j", "KUBE-FIREWALL")),
    ("filter", "OUTPUT", ("-j", "KUBE-FIREWALL")),
)


@lru_cache(maxsize=65536)
def chain_hash(text: str) -> str:
    """kube's ``portProtoHash``: base32 (padded) of SHA-256 of C{text}, its first 16 characters."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def endpoint_chain(port_name: str, protocol: str, endpoint: str) -> str:
    """The ``KUBE-SEP-`` chain of C{endpoint} (``ip:port``) behind a service port."""
    return "KUBE-SEP-" + chain_hash(port_name + protocol + endpoint)


def is_service_chain(chain: str) -> bool:
    """Whether C{chain} is one kube-proxy makes per service port or endpoint (and may delete)."""
    return chain.startswith(SERVICE_CHAIN_PREFIXES)


@dataclass(frozen=True)
class NodeFacts:
    """
    What the rules need of the node.

    :ivar name: the node's name (an endpoint on it is local).
    :ivar node_ips: its addresses (a loadBalancerSourceRanges entry holding one lets the
        node reach the LB IP).
    :ivar cluster_cidrs: the pod ranges (kube's ClusterCIDR local-traffic detector).
    :ivar localhost_node_ports: NodePorts answer on 127.0.0.1 (route_localnet set).
    :ivar tcp_be_liberal: ``nf_conntrack_tcp_be_liberal`` is set: no INVALID drop.
    :ivar random_fully: MASQUERADE takes ``--random-fully``.
    """

    name: str
    node_ips: tuple[str, ...] = ()
    cluster_cidrs: tuple[str, ...] = ()
    localhost_node_ports: bool = True
    tcp_be_liberal: bool = False
    random_fully: bool = True

    @property
    def pod_range(self) -> str | None:
        """kube's ClusterCIDR local-traffic detector: pods are the sources in this range."""
        return next((c for c in map(_ipv4_cidr, self.cluster_cidrs) if c), None)


@dataclass(frozen=True)
class ServicePort:
    """One port of a Service, as kube-proxy's ``servicePortInfo`` holds it (IPv4 only)."""

    namespace: str
    service: str
    port_name: str
    protocol: str
    cluster_ip: str
    port: int
    node_port: int = 0
    external_ips: tuple[str, ...] = ()
    lb_ips: tuple[str, ...] = ()
    source_ranges: tuple[str, ...] = ()
    #: 0 without ClientIP affinity.
    affinity_seconds: int = 0
    internal_local: bool = False
    external_local: bool = False
    health_check_node_port: int = 0

    @cached_property
    def name(self) -> str:
        """kube's ``ServicePortName.String()``: ``ns/svc``, ``:port`` added for a named port."""
        base = f"{self.namespace}/{self.service}"
        return f"{base}:{self.port_name}" if self.port_name else base

    def _chain(self, prefix: str) -> str:
        return prefix + chain_hash(self.name + self.protocol)

    @property
    def cluster_chain(self) -> str:
        return self._chain("KUBE-SVC-")

    @property
    def local_chain(self) -> str:
        return self._chain("KUBE-SVL-")

    @property
    def external_chain(self) -> str:
        return self._chain("KUBE-EXT-")

    @property
    def firewall_chain(self) -> str:
        return self._chain("KUBE-FW-")

    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port or self.external_ips or self.lb_ips)

    @property
    def uses_cluster_endpoints(self) -> bool:
        # Even with externalTrafficPolicy Local, pod and host traffic short-circuits to Cluster.
        return not self.internal_local or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        return self.internal_local or (self.external_local and self.externally_accessible)


class Endpoint(NamedTuple):
    """One endpoint of a service port, from an EndpointSlice (a tuple: 10,000 are made a sync)."""

    ip: str
    port: int
    local: bool = False
    ready: bool = True
    serving: bool = True
    terminating: bool = False

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"


#: (namespace, service, port name, protocol) of a service port.
PortKey = tuple[str, str, str, str]


def _ipv4(text: object) -> str | None:
    try:
        address = ipaddress.ip_address(str(text))
    except ValueError:
        return None
    return str(address) if address.version == 4 else None


def _ipv4_cidr(text: object) -> str | None:
    try:
        network = ipaddress.ip_network(str(text).strip(), strict=False)
    except ValueError:
        return None
    return str(network) if network.version == 4 else None


def service_ports(service: Object) -> list[ServicePort]:
    """
    The ports kube-proxy proxies of C{service}: none for a headless or
    ExternalName Service or one without an IPv4 cluster IP.
    """
    meta = service.get("metadata") or {}
    spec = service.get("spec") or {}
    if spec.get("type") == "ExternalName":
        return []
    cluster_ip = next(
        (ip for ip in map(_ipv4, spec.get("clusterIPs") or [spec.get("clusterIP")]) if ip), None
    )
    if cluster_ip is None:
        return []
    kind = spec.get("type") or "ClusterIP"
    external_ips = tuple(ip for ip in map(_ipv4, spec.get("externalIPs") or ()) if ip)
    lb_ips = tuple(
        ip
        for ingress in ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress")
        or ()
        if ingress.get("ipMode") in (None, "VIP")
        for ip in [_ipv4(ingress.get("ip"))]
        if ip
    )
    ranges = tuple(r for r in map(_ipv4_cidr, spec.get("loadBalancerSourceRanges") or ()) if r)
    accessible = kind in ("NodePort", "LoadBalancer") or bool(spec.get("externalIPs"))
    external_local = accessible and spec.get("externalTrafficPolicy") == "Local"
    affinity = 0
    if spec.get("sessionAffinity") == "ClientIP":
        config = (spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}
        affinity = int(config.get("timeoutSeconds") or DEFAULT_AFFINITY_SECONDS)
    health = int(spec.get("healthCheckNodePort") or 0) if kind == "LoadBalancer" else 0
    return [
        ServicePort(
            namespace=meta.get("namespace") or "default",
            service=meta.get("name") or "",
            port_name=port.get("name") or "",
            protocol=(port.get("protocol") or "TCP").lower(),
            cluster_ip=cluster_ip,
            port=int(port.get("port") or 0),
            node_port=int(port.get("nodePort") or 0) if kind in ("NodePort", "LoadBalancer") else 0,
            external_ips=external_ips,
            lb_ips=lb_ips,
            source_ranges=ranges,
            affinity_seconds=affinity,
            internal_local=spec.get("internalTrafficPolicy") == "Local",
            external_local=external_local,
            health_check_node_port=health if external_local else 0,
        )
        for port in spec.get("ports") or ()
    ]


def endpoints_by_port(slices: Iterable[Object], node_name: str) -> dict[PortKey, list[Endpoint]]:
    """
    The endpoints of each service port from the IPv4 EndpointSlices,
    merged across slices and sorted by ``ip:port`` as kube-proxy sorts them.
    """
    found: dict[PortKey, dict[str, Endpoint]] = {}
    for item in slices:
        if item.get("addressType") != "IPv4":
            continue
        meta = item.get("metadata") or {}
        service = (meta.get("labels") or {}).get("kubernetes.io/service-name")
        if not service:
            continue
        for port in item.get("ports") or ():
            if port.get("port") is None:
                continue
            key = (
                meta.get("namespace") or "default",
                service,
                port.get("name") or "",
                (port.get("protocol") or "TCP").lower(),
            )
            into = found.setdefault(key, {})
            for endpoint in item.get("endpoints") or ():
                addresses = endpoint.get("addresses") or ()
                if not addresses:
                    continue
                conditions = endpoint.get("conditions") or {}
                ready = conditions.get("ready") is not False
                serving = conditions.get("serving")
                found_endpoint = Endpoint(
                    ip=addresses[0],
                    port=int(port["port"]),
                    local=endpoint.get("nodeName") == node_name,
                    ready=ready,
                    serving=ready if serving is None else bool(serving),
                    terminating=bool(conditions.get("terminating")),
                )
                into.setdefault(str(found_endpoint), found_endpoint)
    return {key: [eps[name] for name in sorted(eps)] for key, eps in found.items()}


def categorize(
    endpoints: Sequence[Endpoint], port: ServicePort
) -> tuple[list[Endpoint], list[Endpoint], list[Endpoint], bool]:
    """
    kube's ``CategorizeEndpoints`` (without topology hints): the endpoints
    for Cluster policy, for Local policy, all that get a ``KUBE-SEP-`` chain,
    and whether the service has usable endpoints anywhere.  Ready endpoints
    are used; with none, the serving terminating ones.
    """
    cluster: list[Endpoint] = []
    local: list[Endpoint] = []
    has_any = False
    if port.uses_cluster_endpoints:
        cluster = [ep for ep in endpoints if ep.ready]
        if not cluster:
            cluster = [ep for ep in endpoints if ep.serving and ep.terminating]
        has_any = bool(cluster)
    if not port.uses_local_endpoints:
        return cluster, local, cluster, has_any
    local_ready = local_terminating = False
    for ep in endpoints:
        if ep.ready:
            has_any = True
            local_ready = local_ready or ep.local
        elif ep.serving and ep.terminating:
            has_any = True
            local_terminating = local_terminating or ep.local
    if local_ready:
        local = [ep for ep in endpoints if ep.local and ep.ready]
    elif local_terminating:
        local = [ep for ep in endpoints if ep.local and ep.serving and ep.terminating]
    if not port.uses_cluster_endpoints:
        return cluster, local, local, has_any
    if not local_terminating or local_ready:
        # Local holds ready endpoints only, all of them in cluster already.
        return cluster, local, cluster, has_any
    merged = {str(ep): ep for ep in cluster}
    merged.update((str(ep), ep) for ep in local)
    return cluster, local, list(merged.values()), has_any


@dataclass(frozen=True)
class PortPlan:
    """
    What kube-proxy decides for one service port from its endpoints, the
    same in its iptables and nftables modes (only the rules that carry it
    out differ).

    :ivar cluster: the endpoints for Cluster traffic policy.
    :ivar local: the endpoints for Local traffic policy.
    :ivar reachable: every endpoint that gets a chain of its own.
    :ivar has_any: the port has usable endpoints on some node.
    :ivar has_internal: ClusterIP traffic has endpoints (else it is rejected or dropped).
    :ivar has_external: NodePort, external and LB traffic has endpoints.
    :ivar uses_external_chain: the external chain exists (endpoints anywhere, reachable from
        outside): it short-circuits pod and host traffic even without local endpoints.
    """

    cluster: list[Endpoint]
    local: list[Endpoint]
    reachable: list[Endpoint]
    has_any: bool
    has_internal: bool
    has_external: bool
    uses_external_chain: bool
    uses_cluster_chain: bool
    uses_local_chain: bool


def plan(port: ServicePort, endpoints: Sequence[Endpoint]) -> PortPlan:
    """kube's decisions for C{port} with C{endpoints} (see L{PortPlan})."""
    cluster, local, reachable, has_any = categorize(endpoints, port)
    return PortPlan(
        cluster=cluster,
        local=local,
        reachable=reachable,
        has_any=has_any,
        has_internal=bool(local) if port.internal_local else has_any,
        has_external=bool(local) if port.external_local else has_any,
        uses_external_chain=has_any and port.externally_accessible,
        uses_cluster_chain=bool(cluster) and port.uses_cluster_endpoints,
        uses_local_chain=bool(local) and port.uses_local_endpoints,
    )


def proxied_ports(
    services: Iterable[Object], slices: Iterable[Object], node_name: str
) -> list[tuple[ServicePort, list[Endpoint]]]:
    """Every service port kube-proxy proxies, in kube's order, with its endpoints."""
    endpoints = endpoints_by_port(slices, node_name)
    ports = sorted(
        (port for service in services for port in service_ports(service)),
        key=lambda p: (p.namespace, p.service, p.port_name, p.protocol),
    )
    return [
        (port, endpoints.get((port.namespace, port.service, port.port_name, port.protocol), []))
        for port in ports
    ]


@dataclass(frozen=True)
class UDPFlows:
    """A UDP service port's destinations and serving endpoint IPs, for conntrack clean-up."""

    ips: tuple[str, ...]
    port: int
    node_port: int
    endpoint_ips: frozenset[str]

    @classmethod
    def of(cls, port: ServicePort, reachable: Iterable[Endpoint]) -> UDPFlows:
        """The flows of C{port}, served by its C{reachable} endpoints."""
        return cls(
            ips=(port.cluster_ip, *port.external_ips, *port.lb_ips),
            port=port.port,
            node_port=port.node_port,
            endpoint_ips=frozenset(ep.ip for ep in reachable),
        )


@dataclass
class Ruleset:
    """
    One sync's outcome.

    :ivar text: the ``iptables-restore --noflush`` input, ``*filter`` then ``*nat``.
    :ivar nat_chains: the service chains it keeps (the next sync's stale candidates).
    :ivar udp: each UDP service port's flows, keyed by its name.
    :ivar large: written in large-cluster mode (no per-endpoint comments).
    """

    text: str
    nat_chains: frozenset[str]
    udp: dict[str, UDPFlows] = field(default_factory=dict)
    large: bool = False


def _comment(text: str) -> str:
    """A comment match as kube writes it: quoted when it holds a space."""
    return f'-m comment --comment "{text}"' if " " in text else f"-m comment --comment {text}"


def _line(*parts: str) -> str:
    return " ".join(filter(None, parts))


@dataclass
class _Tables:
    """The restore input being written: each table's chain lines and rules."""

    filter_chains: list[str] = field(
        default_factory=lambda: [f":{c} - [0:0]" for c in FILTER_CHAINS]
    )
    filter_rules: list[str] = field(default_factory=list)
    nat_chains: list[str] = field(default_factory=lambda: [f":{c} - [0:0]" for c in NAT_CHAINS])
    nat_rules: list[str] = field(default_factory=list)
    active: set[str] = field(default_factory=set)
    #: Where each rule of nat KUBE-SERVICES is in C{nat_rules}, and its destination address.
    portals: list[tuple[int, str]] = field(default_factory=list)

    def filter(self, *parts: str) -> None:
        self.filter_rules.append(_line(*parts))

    def nat(self, *parts: str) -> None:
        self.nat_rules.append(_line(*parts))

    def portal(self, address: str, *parts: str) -> None:
        """A rule of nat KUBE-SERVICES for packets to C{address}."""
        self.portals.append((len(self.nat_rules), address))
        self.nat("-A KUBE-SERVICES", *parts)

    def dispatch(self, above: int) -> None:
        """
        With more than C{above} rules in nat KUBE-SERVICES, move
        each to the ``KUBE-SVCS-<block>`` chain of its destination's address
        block, in place, and jump there from KUBE-SERVICES by block.
        """
        if len(self.portals) <= above:
            return
        addresses = [int(ipaddress.IPv4Address(address)) for _, address in self.portals]
        prefix = _block_prefix(addresses)
        chains: dict[int, str] = {}
        head = len("-A KUBE-SERVICES")
        for (index, _), address in zip(self.portals, addresses, strict=True):
            block = address >> (32 - prefix) << (32 - prefix)
            chain = chains.setdefault(block, f"KUBE-SVCS-{ipaddress.IPv4Address(block)}/{prefix}")
            self.nat_rules[index] = f"-A {chain}{self.nat_rules[index][head:]}"
        for _, chain in sorted(chains.items()):
            self.chain(chain)
            self.nat("-A KUBE-SERVICES -d", chain[len("KUBE-SVCS-") :], "-j", chain)

    def chain(self, name: str) -> None:
        """A service chain of the nat table, written whole and kept."""
        self.nat_chains.append(f":{name} - [0:0]")
        self.active.add(name)


def _block_prefix(addresses: Sequence[int]) -> int:
    """
    The prefix length whose blocks make the shortest walks: a packet
    evaluates every block's jump and then the rules of its block, so the
    length with the fewest blocks plus rules in the largest block.
    """

    def walk(prefix: int) -> int:
        sizes = Counter(address >> (32 - prefix) for address in addresses)
        return len(sizes) + max(sizes.values())

    return min(range(8, 33), key=walk)


def render(
    services: Iterable[Object],
    slices: Iterable[Object],
    node: NodeFacts,
    existing: Iterable[str] = (),
    changed: Collection[tuple[str, str]] | None = None,
    dispatch_above: int = DISPATCH_ABOVE,
) -> Ruleset:
    """
    The rules for C{services} and their C{slices} on C{node}; service chains in
    C{existing} that are no longer wanted are flushed and deleted.

    :param changed: for a partial sync (kube's), the (namespace, name) of the
        Services whose own chains are written; the others' chains, in place
        already, are left out of the text (the top-level chains are always
        written whole).  None writes every chain.
    :param dispatch_above: how many rules nat KUBE-SERVICES may hold before
        it dispatches by address block.
    """
    chosen = proxied_ports(services, slices, node.name)
    large = sum(len(eps) for _, eps in chosen) > LARGE_CLUSTER_ENDPOINTS
    mark = f"{MASQ_MARK}/{MASQ_MARK}"
    out = _Tables()
    out.nat("-A KUBE-POSTROUTING -m mark ! --mark", mark, "-j RETURN")
    # Clear the mark, so that a packet going through the stack again is not masqueraded twice.
    out.nat("-A KUBE-POSTROUTING -j MARK --xor-mark", MASQ_MARK)
    out.nat(
        "-A KUBE-POSTROUTING",
        _comment("kubernetes service traffic requiring SNAT"),
        "-j MASQUERADE",
        "--random-fully" if node.random_fully else "",
    )
    out.nat("-A KUBE-MARK-MASQ -j MARK --or-mark", MASQ_MARK)
    if node.localhost_node_ports:
        # route_localnet lets 127.0.0.1:<nodePort> work; this keeps others off 127.0.0.0/8.
        out.filter_chains.append(":KUBE-FIREWALL - [0:0]")
        out.filter(
            "-A KUBE-FIREWALL",
            _comment("block incoming localnet connections"),
            "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT",
            "-j DROP",
        )
    if not node.tcp_be_liberal:
        out.filter("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP")
    out.filter(
        "-A KUBE-FORWARD",
        _comment("kubernetes forwarding rules"),
        "-m mark --mark",
        mark,
        "-j ACCEPT",
    )
    out.filter(
        "-A KUBE-FORWARD",
        _comment("kubernetes forwarding conntrack rule"),
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    )
    pod_range = node.pod_range
    from_pods = f"-s {pod_range}" if pod_range else ""
    udp: dict[str, UDPFlows] = {}
    for port, port_endpoints in chosen:
        whole = changed is None or (port.namespace, port.service) in changed
        reachable = _write_port(out, port, port_endpoints, node, from_pods, large, whole)
        if port.protocol == "udp":
            udp[port.name] = UDPFlows.of(port, reachable)
    out.dispatch(dispatch_above)
    # Last: whatever reaches a local address unmatched may be a NodePort.
    out.nat(
        "-A KUBE-SERVICES",
        _comment("kubernetes service nodeports; NOTE: this must be the last rule in this chain"),
        "-m addrtype --dst-type LOCAL",
        "" if node.localhost_node_ports else "! -d 127.0.0.0/8",
        "-j KUBE-NODEPORTS",
    )
    for chain in sorted(set(existing)):
        if is_service_chain(chain) and chain not in out.active:
            # Its chain line flushes it, so that it can go in the same transaction.
            out.nat_chains.append(f":{chain} - [0:0]")
            out.nat("-X", chain)
    text = "\n".join(
        [
            "*filter",
            *out.filter_chains,
            *out.filter_rules,
            "COMMIT",
            "*nat",
            *out.nat_chains,
            *out.nat_rules,
            "COMMIT",
            "",
        ]
    )
    return Ruleset(text=text, nat_chains=frozenset(out.active), udp=udp, large=large)


def _write_port(
    out: _Tables,
    port: ServicePort,
    endpoints: Sequence[Endpoint],
    node: NodeFacts,
    from_pods: str,
    large: bool,
    whole: bool = True,
) -> list[Endpoint]:
    """
    One service port's rules (kube's ``syncProxyRules`` loop body); its
    reachable endpoints.  Not C{whole}: its own chains are only counted.
    """
    name, proto = port.name, port.protocol
    chosen = plan(port, endpoints)
    cluster, local, reachable, has_any = (
        chosen.cluster,
        chosen.local,
        chosen.reachable,
        chosen.has_any,
    )
    has_internal, has_external = chosen.has_internal, chosen.has_external
    uses_ext_chain = chosen.uses_external_chain
    uses_cluster_chain, uses_local_chain = chosen.uses_cluster_chain, chosen.uses_local_chain
    cluster_chain, local_chain = port.cluster_chain, port.local_chain
    ext_chain, fw_chain = port.external_chain, port.firewall_chain
    internal_chain = local_chain if port.internal_local else cluster_chain
    external_policy_chain = local_chain if port.external_local else cluster_chain
    uses_fw_chain = has_any and bool(port.lb_ips) and bool(port.source_ranges)
    lb_chain = fw_chain if uses_fw_chain else ext_chain
    if has_any:
        target, why = "DROP", _comment(f"{name} has no local endpoints")
    else:
        target, why = "REJECT", _comment(f"{name} has no endpoints")
    match = f"-m {proto} -p {proto}"
    vip = f"{match} -d {port.cluster_ip} --dport {port.port}"

    if has_internal:
        out.portal(port.cluster_ip, _comment(f"{name} cluster IP"), vip, "-j", internal_chain)
    else:
        out.filter("-A KUBE-SERVICES", why, vip, "-j", target)
    for ip in port.external_ips:
        to = f"{match} -d {ip} --dport {port.port}"
        if has_any:
            out.portal(ip, _comment(f"{name} external IP"), to, "-j", ext_chain)
        if not has_external:
            out.filter("-A KUBE-EXTERNAL-SERVICES", why, to, "-j", target)
    for ip in port.lb_ips:
        to = f"{match} -d {ip} --dport {port.port}"
        if has_any:
            out.portal(ip, _comment(f"{name} loadbalancer IP"), to, "-j", lb_chain)
        if uses_fw_chain:
            dropped = _comment(f"{name} traffic not accepted by {fw_chain}")
            out.filter("-A KUBE-PROXY-FIREWALL", dropped, to, "-j DROP")
    if not has_external:
        for ip in port.lb_ips:
            to = f"{match} -d {ip} --dport {port.port}"
            out.filter("-A KUBE-EXTERNAL-SERVICES", why, to, "-j", target)
    if port.node_port:
        to = f"{match} --dport {port.node_port}"
        if has_any:
            out.nat("-A KUBE-NODEPORTS", _comment(name), to, "-j", ext_chain)
        if not has_external:
            local_to = f"-m addrtype --dst-type LOCAL {to}"
            out.filter("-A KUBE-EXTERNAL-SERVICES", why, local_to, "-j", target)
    if port.health_check_node_port:
        hc = f"-m tcp -p tcp --dport {port.health_check_node_port}"
        out.filter("-A KUBE-NODEPORTS", _comment(f"{name} health check node port"), hc, "-j ACCEPT")

    if not whole:
        own = [
            (ext_chain, uses_ext_chain),
            (fw_chain, uses_fw_chain),
            (cluster_chain, uses_cluster_chain),
            (local_chain, uses_local_chain),
        ]
        out.active.update(chain for chain, used in own if used)
        out.active.update(endpoint_chain(name, proto, f"{ep.ip}:{ep.port}") for ep in reachable)
        return reachable
    seps = {ep: endpoint_chain(name, proto, f"{ep.ip}:{ep.port}") for ep in reachable}
    if has_internal and from_pods:
        # Off-cluster sources reaching the VIP (a route to the service range through a node)
        # are masqueraded: the endpoint may answer through another node.
        out.nat(
            "-A", internal_chain, _comment(f"{name} cluster IP"), vip, "!", from_pods,
            "-j KUBE-MARK-MASQ",
        )  # fmt: skip
    if uses_ext_chain:
        out.chain(ext_chain)
        if not port.external_local:
            masq = _comment(f"masquerade traffic for {name} external destinations")
            out.nat("-A", ext_chain, masq, "-j KUBE-MARK-MASQ")
        else:
            if from_pods:
                # Pods are subject to no traffic policy, as if out to an LB and back.
                pods = _comment(f"pod traffic for {name} external destinations")
                out.nat("-A", ext_chain, pods, from_pods, "-j", cluster_chain)
            masq = _comment(f"masquerade LOCAL traffic for {name} external destinations")
            route = _comment(f"route LOCAL traffic for {name} external destinations")
            host = "-m addrtype --src-type LOCAL"
            out.nat("-A", ext_chain, masq, host, "-j KUBE-MARK-MASQ")
            out.nat("-A", ext_chain, route, host, "-j", cluster_chain)
        if has_external:
            out.nat("-A", ext_chain, "-j", external_policy_chain)
    if uses_fw_chain:
        out.chain(fw_chain)
        head = f"-A {fw_chain} {_comment(f'{name} loadbalancer IP')}"
        from_node = False
        for cidr in port.source_ranges:
            out.nat(head, "-s", cidr, "-j", ext_chain)
            network = ipaddress.ip_network(cidr)
            from_node = from_node or any(
                ipaddress.ip_address(ip) in network for ip in node.node_ips if _ipv4(ip)
            )
        if from_node:
            # The node reaching a VIP it holds itself comes from that VIP.
            for ip in port.lb_ips:
                out.nat(head, "-s", ip, "-j", ext_chain)
        other = _comment(f"other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL")
        out.nat("-A", fw_chain, other)
    if uses_cluster_chain:
        out.chain(cluster_chain)
        _write_choice(out, port, cluster_chain, [(ep, seps[ep]) for ep in cluster], large)
    if uses_local_chain:
        out.chain(local_chain)
        _write_choice(out, port, local_chain, [(ep, seps[ep]) for ep in local], large)
    for endpoint, sep in seps.items():
        out.chain(sep)
        head = f"-A {sep}" if large else f"-A {sep} {_comment(name)}"
        # Hairpin: a pod reaching itself through its Service must see the node as the source.
        out.nat(head, "-s", endpoint.ip, "-j KUBE-MARK-MASQ")
        recent = f"-m recent --name {sep} --set" if port.affinity_seconds else ""
        out.nat(head, recent, match, "-j DNAT --to-destination", f"{endpoint.ip}:{endpoint.port}")
    return reachable


def _write_choice(
    out: _Tables,
    port: ServicePort,
    chain: str,
    seps: Sequence[tuple[Endpoint, str]],
    large: bool,
) -> None:
    """A SVC/SVL chain's rules (C{seps}: each endpoint and its chain): ClientIP affinity
    first, then a uniform random choice."""

    def head(ep: Endpoint) -> str:
        return f"-A {chain}" if large else f"-A {chain} {_comment(f'{port.name} -> {ep}')}"

    if port.affinity_seconds:
        for ep, sep in seps:
            seconds = str(port.affinity_seconds)
            out.nat(
                head(ep), "-m recent --name", sep, "--rcheck --seconds", seconds, "--reap -j", sep
            )
    count = len(seps)
    for i, (ep, sep) in enumerate(seps):
        # Rule i takes 1/(n-i) of what reaches it: a uniform choice; the last takes the rest.
        chance = f"-m statistic --mode random --probability {1.0 / (count - i):0.10f}"
        out.nat(head(ep), chance if i < count - 1 else "", "-j", sep)


def stale_udp_flows(
    before: Mapping[str, UDPFlows], after: Mapping[str, UDPFlows]
) -> list[tuple[str, ...]]:
    """
    The ``conntrack -D`` arguments that drop UDP flows a sync left pointing
    nowhere (kube's conntrack clean-up, as filters): flows to a service IP or
    NodePort answered by an endpoint that no longer serves, and flows to a
    port that had no endpoints, or was not known (a port first served, every
    one at the first sync), now that it has: a question sent before the
    DNAT rule was there made a flow to the service IP itself, which the
    asker's retries from the same port would follow to nowhere.
    """
    commands: list[tuple[str, ...]] = []
    for name, now in after.items():
        was = before.get(name)
        if not now.endpoint_ips:
            continue
        served = was.endpoint_ips if was is not None else frozenset()
        gone = sorted(served - now.endpoint_ips)
        for ip in now.ips:
            dport = ("--orig-port-dst", str(now.port))
            if not served:
                commands.append(("-D", "-p", "udp", "--orig-dst", ip, *dport, "--reply-src", ip))
            commands += [
                ("-D", "-p", "udp", "--orig-dst", ip, *dport, "--reply-src", ep) for ep in gone
            ]
        if now.node_port:
            commands += [
                ("-D", "-p", "udp", "--orig-port-dst", str(now.node_port), "--reply-src", ep)
                for ep in gone
            ]
    for name, was in before.items():
        if name not in after or not after[name].endpoint_ips:
            for ip in was.ips:
                commands += [
                    (
                        "-D",
                        "-p",
                        "udp",
                        "--orig-dst",
                        ip,
                        "--orig-port-dst",
                        str(was.port),
                        "--reply-src",
                        ep,
                    )
                    for ep in sorted(was.endpoint_ips)
                ]
    return commands
