"""
kube-proxy's nftables mode (GA in Kubernetes 1.31) as pure rule generation:
the same Services, EndpointSlices and endpoint choices as the iptables mode
(L{proxyrules.proxied_ports}, L{proxyrules.plan}), written as one ``nft -f``
transaction on kube-proxy's own table ``ip kube-proxy``, with kube's names:

- base chains ``filter-prerouting``, ``filter-input``, ``filter-forward``,
  ``filter-output`` (before DNAT), ``filter-output-post-dnat``,
  ``nat-prerouting``, ``nat-output``, ``nat-postrouting``;
- ``services`` dispatches through the verdict maps ``service-ips`` (ClusterIP,
  external and LB IP . protocol . port) and ``service-nodeports``; the maps
  ``no-endpoint-services`` / ``no-endpoint-nodeports`` reject (or drop) in
  ``service-endpoints-check`` / ``nodeport-endpoints-check``; ``firewall-ips``
  sends loadBalancerSourceRanges traffic to a ``firewall-`` chain; the set
  ``cluster-ips`` rejects other ports of a ClusterIP;
- per service port ``service-<hash>-<ns>/<name>/<proto>/<port>`` (Cluster
  policy), ``local-`` (Local policy), ``external-``, ``firewall-``, and per
  endpoint ``endpoint-<hash>-<...>__<ip>/<port>``, which choose with ``numgen
  random mod N vmap``; ClientIP affinity keeps each endpoint's clients in a
  set ``affinity-...`` with a timeout.

A full sync (at start, after a failure, hourly) rewrites the table in place
(its top-level chains, and the service chains whose rules differ from what
it lists, see L{parse_table}, emptied and written again; its maps emptied
and filled; chains no longer used emptied), or, after a failed full sync,
makes it anew (``add``, ``delete``, then everything); either in one
transaction: nothing outside the table is touched, and the kernel sees all
of it or none.  (In place, the table and the chains it lacks are declared,
empty, by a transaction just before: inert, as no rule or map refers to
them yet, and far cheaper for the kernel, see L{render_nft}.)  A partial
sync writes the changed Services' chains, the map and set elements that
changed, and empties chains no longer used; as kube-proxy, it deletes those
a sync later (kernels before 6.2 see a chain a map element named as used
for a moment after the element goes).  Not here, as in kube 1.32 by
default: localhost NodePorts, the drop of unallocated ClusterIPs.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from k3stw.machinery.objects import Object
from k3stw.network.proxyrules import (
    MASQ_MARK,
    Endpoint,
    NodeFacts,
    ServicePort,
    UDPFlows,
    plan,
    proxied_ports,
)

__all__ = [
    "TABLE",
    "Existing",
    "NFTRuleset",
    "chain_base",
    "cleanup_text",
    "endpoint_base",
    "parse_table",
    "render_nft",
]

#: kube-proxy's table, in the ``ip`` family.
TABLE = "kube-proxy"
_ADD = f"add rule ip {TABLE}"
#: knftables' longest name, less kube's longest chain prefix.
_BASE_MAX = 256 - 16

#: (name, type, hook, priority): dstnat is -100, srcnat 100; filters see addresses before DNAT.
BASE_CHAINS = (
    ("filter-prerouting", "filter", "prerouting", -110),
    ("filter-input", "filter", "input", -110),
    ("filter-forward", "filter", "forward", -110),
    ("filter-output", "filter", "output", -110),
    ("filter-output-post-dnat", "filter", "output", -90),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
)
#: (chain, from base chain, match): the jumps into kube-proxy's top-level chains.
JUMPS = (
    ("nodeport-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-forward", "ct state new"),
    ("service-endpoints-check", "filter-output", "ct state new"),
    ("firewall-check", "filter-prerouting", "ct state new"),
    ("firewall-check", "filter-output", "ct state new"),
    ("services", "nat-output", ""),
    ("services", "nat-prerouting", ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new"),
    ("cluster-ips-check", "filter-output-post-dnat", "ct state new"),
)
_KEYED = "ipv4_addr . inet_proto . inet_service : verdict"
_PORTS = "inet_proto . inet_service : verdict"
#: The maps and sets whose elements a sync writes: name -> (kind, type, comment).
CONTAINERS = {
    "cluster-ips": ("set", "ipv4_addr", "Active ClusterIPs"),
    "no-endpoint-services": (
        "map", _KEYED, "vmap to drop or reject packets to services with no endpoints"
    ),
    "no-endpoint-nodeports": (
        "map", _PORTS, "vmap to drop or reject packets to service nodeports with no endpoints"
    ),
    "firewall-ips": ("map", _KEYED, "destinations that are subject to LoadBalancerSourceRanges"),
    "service-ips": ("map", _KEYED, "ClusterIP, ExternalIP and LoadBalancer IP traffic"),
    "service-nodeports": ("map", _PORTS, "NodePort traffic"),
}  # fmt: skip
_NO_LOCALHOST = "ip daddr != 127.0.0.0/8"


@lru_cache(maxsize=65536)
def _hash_and_truncate(name: str) -> str:
    """kube's ``hashAndTruncate``: 8 base32 characters of SHA-256, a dash, the name."""
    digest = base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()
    name = f"{digest[:8]}-{name}"
    return name if len(name) <= _BASE_MAX else name[: _BASE_MAX - 3] + "..."


def chain_base(port: ServicePort) -> str:
    """A service port's chain name after its prefix: ``<hash>-<ns>/<name>/<proto>/<port>``."""
    return _hash_and_truncate(f"{port.namespace}/{port.service}/{port.protocol}/{port.port_name}")


def endpoint_base(port: ServicePort, endpoint: Endpoint) -> str:
    """An endpoint's chain (and affinity set) name after its prefix."""
    ip = endpoint.ip.replace(":", ".")
    return _hash_and_truncate(
        f"{port.namespace}/{port.service}/{port.protocol}/{port.port_name}__{ip}/{endpoint.port}"
    )


def cleanup_text() -> str:
    """The transaction that removes kube-proxy's table if it is there (a switch of mode)."""
    return f"add table ip {TABLE}\ndelete table ip {TABLE}\n"


@dataclass
class NFTRuleset:
    """
    One sync's outcome.

    :ivar text: the ``nft -f`` input.
    :ivar chains: the service and endpoint chains it keeps.
    :ivar affinity_sets: the affinity sets it keeps.
    :ivar elements: each map's and set's elements, key -> what follows it (for the next diff).
    :ivar stale: chains it flushed, for the next sync to delete.
    :ivar udp: each UDP service port's flows, keyed by its name.
    :ivar declarations: for a full sync in place, the ``nft -f`` input run
        before C{text}, in a transaction of its own: the table and the new
        service chains, empty (nothing refers to them before C{text}); ""
        for none.
    """

    text: str
    chains: frozenset[str]
    affinity_sets: frozenset[str]
    elements: dict[str, dict[str, str]]
    stale: frozenset[str] = frozenset()
    udp: dict[str, UDPFlows] = field(default_factory=dict)
    declarations: str = ""


#: The protocols of Service ports, by number.
_PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}


@dataclass(frozen=True)
class Existing:
    """
    What kube-proxy's table holds before a full sync (from L{parse_table}).

    :ivar rules: each service chain's rules as ``nft list`` prints them.
    """

    chains: frozenset[str]
    sets: frozenset[str]
    rules: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def parse_table(text: str) -> Existing:
    """
    What ``nft -t -p list table ip kube-proxy`` shows: the chains, sets and
    maps, and each service chain's rules (no set elements; their protocol
    numbers given back the names a sync writes).
    """
    for number, protocol in _PROTOCOLS.items():
        text = text.replace(f"meta l4proto {number} ", f"meta l4proto {protocol} ")
    chains: set[str] = set()
    sets: set[str] = set()
    rules: dict[str, tuple[str, ...]] = {}
    chain: list[str] | None = None
    name = ""
    for line in text.splitlines():
        words = line.split(None, 2)
        if not words:
            continue
        if len(words) >= 2 and words[-1] == "{" and words[0] in ("chain", "set", "map"):
            (chains if words[0] == "chain" else sets).add(words[1])
            chain = [] if words[0] == "chain" and "/" in words[1] else None
            if chain is not None:
                rules[words[1]] = ()
            name = words[1]
        elif words == ["}"]:
            if chain is not None:
                rules[name] = tuple(chain)
            chain = None
        elif chain is not None:
            chain.append(line.strip())
    return Existing(frozenset(chains), frozenset(sets), rules)


@dataclass
class _Transaction:
    """The service chains, rules and elements of a sync, before they are put in nft's order."""

    #: The chains written (emptied first if they exist), in order.
    written: list[str] = field(default_factory=list)
    affinity_heads: list[str] = field(default_factory=list)
    #: The policy chains' rules (the numgen vmaps; see L{render_nft}), then the others'.
    choices: list[tuple[str, str]] = field(default_factory=list)
    rules: list[tuple[str, str]] = field(default_factory=list)
    #: Each chain's rules, as ``nft list`` prints them.
    listed: dict[str, list[str]] = field(default_factory=dict)
    chains: set[str] = field(default_factory=set)
    affinity_sets: set[str] = field(default_factory=set)
    elements: dict[str, dict[str, str]] = field(
        default_factory=lambda: {name: {} for name in CONTAINERS}
    )

    def chain(self, name: str, write: bool) -> None:
        """A service chain this sync keeps: written again if C{write}."""
        self.chains.add(name)
        if write:
            self.written.append(name)

    def rule(self, chain: str, *parts: str) -> None:
        into = self.choices if _is_policy_chain(chain) else self.rules
        body = " ".join(filter(None, parts))
        into.append((chain, f"{_ADD} {chain} {body}"))
        self.listed.setdefault(chain, []).append(body)

    def element(self, container: str, key: str, value: str = "") -> None:
        self.elements[container].setdefault(key, value)


def _is_policy_chain(chain: str) -> bool:
    return chain.startswith(("service-", "local-"))


def render_nft(
    services: Iterable[Object],
    slices: Iterable[Object],
    node: NodeFacts,
    previous: NFTRuleset | None = None,
    changed: Collection[tuple[str, str]] | None = None,
    existing: Existing | None = None,
) -> NFTRuleset:
    """
    The nftables transaction for C{services} and their C{slices} on C{node}:
    a partial sync (C{previous} and C{changed}), a full one rewriting the
    C{existing} table in place, or a full one making the table anew (no
    C{existing} table: at the first start, or after a failed full sync).

    Each ``numgen ... vmap { ... }`` makes an anonymous map, and the kernel
    (6.x ``__nft_set_trans_bind``) walks the whole transaction so far for
    each one made or dropped: the policy chains are emptied and written
    first, before the other chains' rules are dropped and written, and a
    full sync in place declares its new chains (empty, unreferenced) in a
    transaction before (L{NFTRuleset.declarations}), so that none of the
    walks goes over their thousands of declarations; a table made anew
    empties nothing.  (Replacing a table of 1,000 Services with ``delete
    table`` costs seconds so.)

    :param previous: what the last successful sync wrote.
    :param changed: for a partial sync, the (namespace, name) of the Services
        whose chains are written again; None for a full sync.
    :param existing: for a full sync, the chains and sets the table holds.
    """
    partial = previous is not None and changed is not None
    tx = _Transaction()
    pods = node.pod_range
    udp: dict[str, UDPFlows] = {}
    for port, endpoints in proxied_ports(services, slices, node.name):
        write = not partial or (port.namespace, port.service) in (changed or ())
        reachable = _write_port(tx, port, endpoints, pods, node, write)
        if port.protocol == "udp":
            udp[port.name] = UDPFlows.of(port, reachable)
    lines: list[str] = []
    if partial:
        assert previous is not None
        gone = previous.stale - tx.chains
        lines += [f"delete chain ip {TABLE} {chain}" for chain in sorted(gone)]
        present = (previous.chains | previous.stale) - gone
        present_sets = previous.affinity_sets
    elif existing is None:
        lines += _table(node, anew=True)
        present, present_sets = frozenset(), frozenset()
    else:
        lines += _table(node, anew=False)
        present = frozenset(chain for chain in existing.chains if "/" in chain)
        present_sets = frozenset(name for name in existing.sets if name.startswith("affinity-"))
    new_chains = [f"add chain ip {TABLE} {chain}" for chain in tx.written if chain not in present]
    declarations = ""
    if existing is not None and not partial and new_chains:
        declarations = "\n".join([f"add table ip {TABLE}", *new_chains, ""])
    else:
        lines += new_chains
    lines += tx.affinity_heads
    flushed = [chain for chain in tx.written if chain in present]
    if existing is not None and existing.rules:
        # Chains holding their rules already stay as they are (a chain changed by hand, or
        # listed in another form, is written again).
        same = {
            chain
            for chain in flushed
            if existing.rules.get(chain) == tuple(tx.listed.get(chain, ()))
        }
        flushed = [chain for chain in flushed if chain not in same]
        tx.choices = [(chain, line) for chain, line in tx.choices if chain not in same]
        tx.rules = [(chain, line) for chain, line in tx.rules if chain not in same]
    lines += [f"flush chain ip {TABLE} {c}" for c in flushed if _is_policy_chain(c)]
    lines += [line for _, line in tx.choices]
    lines += [f"flush chain ip {TABLE} {c}" for c in flushed if not _is_policy_chain(c)]
    # Chains no longer used are emptied now and deleted by the next sync.
    stale = present - tx.chains
    lines += [f"flush chain ip {TABLE} {chain}" for chain in sorted(stale)]
    lines += [line for _, line in tx.rules]
    for container, elements in tx.elements.items():
        if partial:
            assert previous is not None
            lines += _diff_elements(container, previous.elements.get(container, {}), elements)
        else:
            if existing is not None:
                lines.append(f"flush {CONTAINERS[container][0]} ip {TABLE} {container}")
            lines += _add_elements(container, elements)
    lines += [f"delete set ip {TABLE} {name}" for name in sorted(present_sets - tx.affinity_sets)]
    return NFTRuleset(
        text="\n".join(lines) + "\n",
        chains=frozenset(tx.chains),
        affinity_sets=frozenset(tx.affinity_sets),
        elements=tx.elements,
        stale=frozenset(stale),
        udp=udp,
        declarations=declarations,
    )


def _add_elements(container: str, elements: Mapping[str, str]) -> list[str]:
    if not elements:
        return []
    body = ", ".join(f"{key}{value}" for key, value in elements.items())
    return [f"add element ip {TABLE} {container} {{ {body} }}"]


def _diff_elements(
    container: str, before: Mapping[str, str], after: Mapping[str, str]
) -> list[str]:
    gone = [key for key, value in before.items() if after.get(key) != value]
    lines = []
    if gone:
        lines.append(f"delete element ip {TABLE} {container} {{ {', '.join(gone)} }}")
    added = {key: value for key, value in after.items() if before.get(key) != value}
    return lines + _add_elements(container, added)


def _table(node: NodeFacts, anew: bool) -> list[str]:
    """
    kube's ``setupNFTables``: base chains, top-level chains and their rules,
    maps; in a table made C{anew} (the old one, if any, deleted first), else
    in the table as it is, its top-level chains emptied (its maps are, later).
    """
    lines = [f"add table ip {TABLE}"]
    if anew:
        lines.append(f"delete table ip {TABLE}")
    lines.append(f'add table ip {TABLE} {{ comment "rules for kube-proxy" ; }}')
    for name, (kind, kind_type, comment) in CONTAINERS.items():
        lines.append(f'add {kind} ip {TABLE} {name} {{ type {kind_type} ; comment "{comment}" ; }}')
    for name, chain_type, hook, priority in BASE_CHAINS:
        lines.append(
            f"add chain ip {TABLE} {name} {{ type {chain_type} hook {hook} priority {priority} ; }}"
        )
    top = [
        "nodeport-endpoints-check", "service-endpoints-check", "firewall-check", "services",
        "cluster-ips-check", "masquerading", "mark-for-masquerade",
    ]  # fmt: skip
    lines += [f"add chain ip {TABLE} {name}" for name in top]
    lines.append(
        f"add chain ip {TABLE} reject-chain"
        ' { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }'
    )
    if not anew:
        emptied = [name for name, *_ in BASE_CHAINS] + top + ["reject-chain"]
        lines += [f"flush chain ip {TABLE} {name}" for name in emptied]
    for chain, base, match in JUMPS:
        lines.append(" ".join(part for part in (_ADD, base, match, "jump", chain) if part))
    masquerade = "masquerade fully-random" if node.random_fully else "masquerade"
    lines += [
        f"{_ADD} mark-for-masquerade mark set mark or {MASQ_MARK}",
        f"{_ADD} masquerading mark and {MASQ_MARK} == 0 return",
        f"{_ADD} masquerading mark set mark xor {MASQ_MARK}",
        f"{_ADD} masquerading {masquerade}",
        f'{_ADD} cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to'
        ' invalid ports of ClusterIPs"',
        f"{_ADD} reject-chain reject",
        f"{_ADD} service-endpoints-check ip daddr . meta l4proto . th dport"
        " vmap @no-endpoint-services",
        f"{_ADD} nodeport-endpoints-check {_NO_LOCALHOST} meta l4proto . th dport"
        " vmap @no-endpoint-nodeports",
        f"{_ADD} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips",
        f"{_ADD} services ip daddr . meta l4proto . th dport vmap @service-ips",
        f"{_ADD} services fib daddr type local {_NO_LOCALHOST} meta l4proto . th dport"
        " vmap @service-nodeports",
    ]
    return lines


def _write_port(
    tx: _Transaction,
    port: ServicePort,
    endpoints: list[Endpoint],
    pods: str | None,
    node: NodeFacts,
    write: bool,
) -> list[Endpoint]:
    """
    One service port's elements (always) and chains (if C{write}); its
    reachable endpoints.  kube's ``syncProxyRules`` loop body.
    """
    chosen = plan(port, endpoints)
    base = chain_base(port)
    cluster_chain, local_chain = f"service-{base}", f"local-{base}"
    external_chain, firewall_chain = f"external-{base}", f"firewall-{base}"
    internal_chain = local_chain if port.internal_local else cluster_chain
    external_policy_chain = local_chain if port.external_local else cluster_chain
    uses_fw_chain = bool(port.lb_ips) and bool(port.source_ranges)
    proto, number = port.protocol, str(port.port)
    comment = f' comment "{port.name}"'
    if not chosen.has_any:
        internal_verdict = external_verdict = "goto reject-chain"
    else:
        internal_verdict = external_verdict = "drop"

    endpoint_chains = {str(ep): f"endpoint-{endpoint_base(port, ep)}" for ep in chosen.reachable}
    for chain in endpoint_chains.values():
        tx.chain(chain, write)
    if chosen.uses_cluster_chain:
        tx.chain(cluster_chain, write)
    if chosen.uses_local_chain:
        tx.chain(local_chain, write)
    if chosen.uses_external_chain:
        tx.chain(external_chain, write)
    if uses_fw_chain:
        tx.chain(firewall_chain, write)
    affinity = {
        str(ep): f"affinity-{endpoint_base(port, ep)}"
        for ep in (chosen.reachable if port.affinity_seconds else ())
    }
    tx.affinity_sets.update(affinity.values())

    tx.element("cluster-ips", port.cluster_ip)
    key = f"{port.cluster_ip} . {proto} . {number}"
    if chosen.has_internal:
        tx.element("service-ips", key, f" : goto {internal_chain}")
    else:
        tx.element("no-endpoint-services", key, f"{comment} : {internal_verdict}")
    for ip in (*port.external_ips, *port.lb_ips):
        key = f"{ip} . {proto} . {number}"
        if chosen.has_any:
            tx.element("service-ips", key, f" : goto {external_chain}")
        if not chosen.has_external:
            tx.element("no-endpoint-services", key, f"{comment} : {external_verdict}")
    if uses_fw_chain:
        for ip in port.lb_ips:
            tx.element("firewall-ips", f"{ip} . {proto} . {number}", f" : goto {firewall_chain}")
    if port.node_port:
        key = f"{proto} . {port.node_port}"
        if chosen.has_any:
            tx.element("service-nodeports", key, f" : goto {external_chain}")
        if not chosen.has_external:
            tx.element("no-endpoint-nodeports", key, f"{comment} : {external_verdict}")
    if not write:
        return chosen.reachable

    if chosen.has_internal and pods:
        # Off-cluster sources reaching the VIP are masqueraded: the endpoint may answer
        # through another node.
        tx.rule(
            internal_chain,
            f"ip daddr {port.cluster_ip} {proto} dport {number} ip saddr != {pods}",
            "jump mark-for-masquerade",
        )
    if chosen.uses_external_chain:
        if not port.external_local:
            tx.rule(external_chain, "jump mark-for-masquerade")
        else:
            if pods:
                # Pods are subject to no traffic policy, as if out to an LB and back.
                tx.rule(
                    external_chain,
                    f"ip saddr {pods} goto {cluster_chain}",
                    'comment "short-circuit pod traffic"',
                )
            tx.rule(
                external_chain,
                "fib saddr type local jump mark-for-masquerade",
                'comment "masquerade local traffic"',
            )
            tx.rule(
                external_chain,
                f"fib saddr type local goto {cluster_chain}",
                'comment "short-circuit local traffic"',
            )
        if chosen.has_external:
            tx.rule(external_chain, f"goto {external_policy_chain}")
    if uses_fw_chain:
        sources = list(port.source_ranges)
        if any(_holds(cidr, ip) for cidr in port.source_ranges for ip in node.node_ips):
            # The node reaching a VIP it holds itself comes from that VIP.
            sources += port.lb_ips
        # In address order, as ``nft list`` prints the set (so that a full sync finds it equal).
        sources.sort(key=_address_order)
        tx.rule(firewall_chain, f"ip saddr != {{ {', '.join(sources)} }} drop")
    for name in affinity.values():
        tx.affinity_heads.append(
            f"add set ip {TABLE} {name} {{ type ipv4_addr ; flags dynamic,timeout ;"
            f" timeout {port.affinity_seconds}s ; }}"
        )
    if chosen.uses_cluster_chain:
        _write_choice(tx, cluster_chain, chosen.cluster, endpoint_chains, affinity)
    if chosen.uses_local_chain:
        _write_choice(tx, local_chain, chosen.local, endpoint_chains, affinity)
    for endpoint in chosen.reachable:
        chain = endpoint_chains[str(endpoint)]
        # Hairpin: a pod reaching itself through its Service must see the node as the source.
        tx.rule(chain, f"ip saddr {endpoint.ip} jump mark-for-masquerade")
        if affinity:
            tx.rule(chain, f"update @{affinity[str(endpoint)]} {{ ip saddr }}")
        tx.rule(chain, f"meta l4proto {proto} dnat to {endpoint}")
    return chosen.reachable


def _write_choice(
    tx: _Transaction,
    chain: str,
    endpoints: list[Endpoint],
    endpoint_chains: Mapping[str, str],
    affinity: Mapping[str, str],
) -> None:
    """A policy chain: a client's endpoint first (ClientIP affinity), then a uniform choice."""
    for ep in endpoints:
        if str(ep) in affinity:
            tx.rule(chain, f"ip saddr @{affinity[str(ep)]} goto {endpoint_chains[str(ep)]}")
    choices = ", ".join(f"{i} : goto {endpoint_chains[str(ep)]}" for i, ep in enumerate(endpoints))
    tx.rule(chain, f"numgen random mod {len(endpoints)} vmap {{ {choices} }}")


def _address_order(cidr: str) -> tuple[int, int]:
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return (-1, 0)
    return (int(network.network_address), network.prefixlen)


def _holds(cidr: str, address: str) -> bool:
    try:
        return ipaddress.ip_address(address) in ipaddress.ip_network(cidr)
    except ValueError:
        return False
