"""
NetworkPolicy as iptables rules and ipsets, the way k3s's embedded
kube-router network policy controller lays them out (IPv4): pure, from the
informers' Pods, Namespaces and NetworkPolicies and the node's addresses to
the text of one C{ipset restore} and one C{iptables-restore --noflush}.

The layout, in the filter table:

- C{INPUT}, C{FORWARD} and C{OUTPUT} jump to C{KUBE-ROUTER-INPUT},
  C{-FORWARD} and C{-OUTPUT} first of all (comment C{kube-router netpol - <id>}).
- Each of those sends traffic from and to each of this node's pods to the
  pod's C{KUBE-POD-FW-<hash>} chain, then accepts what the pod chain marked
  0x20000 (complies with the policies).
- A pod chain accepts established and related traffic and traffic from the
  node itself, drops invalid packets, runs the packet through
  C{KUBE-NWPLCY-DEFAULT} for each direction no policy selects the pod in (it
  marks 0x10000: allowed), through the C{KUBE-NWPLCY-<hash>} chain of each
  policy selecting the pod, and rejects what none of them marked 0x10000.
- A policy chain marks 0x10000 (and returns) what one of its rules allows;
  the pods and address blocks a rule names are ipsets (C{KUBE-SRC-<hash>},
  C{KUBE-DST-<hash>}).

Chain names carry the sync's version (its start in Unix nanoseconds), as
kube-router's do, so every full sync declares new chains and deletes the old
ones in the same transaction; ipset names are stable and swapped in whole.
"""

from __future__ import annotations

import hashlib
import ipaddress
from base64 import b32encode
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from k3stw.machinery.labels import LabelSelector, LabelSelectorError, label_selector_from_spec
from k3stw.machinery.objects import Object
from k3stw.network.iptables import restore_text

__all__ = [
    "ACCEPT_MARK",
    "BUILTIN_CHAINS",
    "COMPLY_MARK",
    "DEFAULT_CHAIN",
    "Firewall",
    "IPSet",
    "PolicySettings",
    "pod_chain_name",
    "policy_chain_name",
    "relevant_pod_change",
    "render",
    "stale_sets",
]

FAMILY = "IPv4"
POD_CHAIN_PREFIX = "KUBE-POD-FW-"
POLICY_CHAIN_PREFIX = "KUBE-NWPLCY-"
SOURCE_SET_PREFIX = "KUBE-SRC-"
DESTINATION_SET_PREFIX = "KUBE-DST-"
DEFAULT_CHAIN = "KUBE-NWPLCY-DEFAULT"
#: Each built-in chain and the chain of kube-router's it jumps to first.
BUILTIN_CHAINS = {
    "INPUT": "KUBE-ROUTER-INPUT",
    "FORWARD": "KUBE-ROUTER-FORWARD",
    "OUTPUT": "KUBE-ROUTER-OUTPUT",
}
#: A policy (or the default chain) allowed the packet.
ACCEPT_MARK = "0x10000/0x10000"
#: The pod chain passed the packet: its top chain accepts it.
COMPLY_MARK = "0x20000/0x20000"
_FINISHED = frozenset({"Succeeded", "Failed", "Completed"})
_ICMP_ALLOWED = (
    ("echo-request", "allow icmp echo requests"),
    ("destination-unreachable", "allow icmp destination unreachable messages"),
    ("time-exceeded", "allow icmp time exceeded messages"),
)
#: iptables refuses a longer comment.
_MAX_COMMENT = 255


def _hash16(text: str) -> str:
    return b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def pod_chain_name(namespace: str, name: str, version: str) -> str:
    """A local pod's chain in the sync C{version}."""
    return POD_CHAIN_PREFIX + _hash16(namespace + name + version)


def policy_chain_name(namespace: str, name: str, version: str) -> str:
    """A policy's chain in the sync C{version}."""
    return POLICY_CHAIN_PREFIX + _hash16(namespace + name + version + FAMILY)


def _set_name(prefix: str, *parts: str) -> str:
    return prefix + _hash16("".join(parts))


@dataclass(frozen=True)
class PolicySettings:
    """
    What the rules need to know of the node and the cluster.

    :ivar node_ips: this node's addresses: pods whose C{status.hostIP} is one
        of them are this node's.
    :ivar service_cidrs: traffic to these reaches the node's INPUT unfiltered
        (kube-proxy's NAT makes it pod traffic before FORWARD).
    :ivar node_port_range: the NodePort range, C{first:last}.
    """

    node_ips: frozenset[str]
    service_cidrs: tuple[str, ...] = ("10.43.0.0/16",)
    node_port_range: str = "30000:32767"


@dataclass(frozen=True)
class IPSet:
    """
    One ipset: C{hash:ip} of pod addresses or C{hash:net} of address blocks
    (an entry may end in C{nomatch}: an ipBlock's C{except}).
    """

    name: str
    kind: str
    entries: tuple[str, ...]


@dataclass(frozen=True)
class Firewall:
    """One full sync's ipsets and filter table rules."""

    sets: tuple[IPSet, ...]
    filter_rules: str
    chains: tuple[str, ...] = ()

    def ipset_restore(self) -> str:
        """
        The text for C{ipset restore -exist}: each set filled in a temporary
        set of its type, then swapped in whole (kube-router's way), so a rule
        never sees a half-filled set.
        """
        lines: list[str] = []
        temporaries: dict[str, str] = {}
        for ipset in self.sets:
            options = f"{ipset.kind} timeout 0"
            temporary = temporaries.get(options)
            if temporary is None:
                digest = hashlib.sha1(("tmp:" + options).encode()).digest()[:10]
                temporary = temporaries[options] = "TMP-" + b32encode(digest).decode()
                lines.append(f"create {temporary} {options}")
                lines.append(f"flush {temporary}")
            for entry in ipset.entries:
                address, _, flag = entry.partition(" ")
                lines.append(f"add {temporary} {address} timeout 0{' ' if flag else ''}{flag}")
            lines.append(f"create {ipset.name} {options}")
            lines.append(f"swap {temporary} {ipset.name}")
            lines.append(f"flush {temporary}")
        lines.extend(f"destroy {temporary}" for temporary in sorted(temporaries.values()))
        return "".join(line + "\n" for line in lines)


def stale_sets(names: Iterable[str], firewall: Firewall) -> list[str]:
    """The policy ipsets among C{names} (C{ipset list -n}) that C{firewall} no longer uses."""
    active = {ipset.name for ipset in firewall.sets}
    return sorted(
        name
        for name in names
        if name.startswith((SOURCE_SET_PREFIX, DESTINATION_SET_PREFIX)) and name not in active
    )


def relevant_pod_change(old: Object, new: Object) -> bool:
    """Whether a pod's update can change the rules: its phase, addresses, host or labels."""
    old_status, new_status = old.get("status") or {}, new.get("status") or {}
    return any(
        old_status.get(key) != new_status.get(key) for key in ("phase", "podIP", "podIPs", "hostIP")
    ) or (old.get("metadata") or {}).get("labels") != (new.get("metadata") or {}).get("labels")


@dataclass(frozen=True, eq=False)
class _Pod:
    namespace: str
    name: str
    ip: str
    host_ip: str
    labels: Mapping[str, str]
    #: (name, protocol, number) of each container port.
    ports: tuple[tuple[str, str, int], ...]


def _pod(obj: Object) -> _Pod | None:
    """The pod as the rules see it; None if not actionable (finished, no address, host network)."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if status.get("phase") in _FINISHED or spec.get("hostNetwork") or not status.get("podIP"):
        return None
    addresses = [item.get("ip", "") for item in status.get("podIPs") or ()] or [status["podIP"]]
    ip = next((a for a in addresses if _is_ipv4(a)), None)
    if ip is None:
        return None
    meta = obj.get("metadata") or {}
    ports = tuple(
        (str(port.get("name") or ""), str(port.get("protocol") or "TCP"), port["containerPort"])
        for container in spec.get("containers") or ()
        for port in container.get("ports") or ()
        if isinstance(port.get("containerPort"), int)
    )
    return _Pod(
        meta.get("namespace", ""),
        meta.get("name", ""),
        ip,
        str(status.get("hostIP") or ""),
        meta.get("labels") or {},
        ports,
    )


def _is_ipv4(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 4
    except ValueError:
        return False


def _selector(spec: Mapping[str, Any] | None) -> LabelSelector:
    try:
        return label_selector_from_spec(spec)
    except LabelSelectorError:
        return label_selector_from_spec(None)


@dataclass(frozen=True)
class _Port:
    """A rule's port: a protocol, and a port or a range of them (C{""}: any port)."""

    protocol: str = ""
    port: str = ""

    def matches(self) -> str:
        protocol = f" -p {self.protocol.lower()}" if self.protocol else ""
        return protocol + (f" --dport {self.port}" if self.port else "")


@dataclass(frozen=True)
class _NamedPort:
    """A named port resolved to one number: the addresses of the pods exposing it so."""

    port: _Port
    ips: tuple[str, ...]


@dataclass
class _Cluster:
    """The informers' objects, indexed for the rules."""

    pods: dict[str, list[_Pod]] = field(default_factory=dict)
    namespaces: dict[str, Mapping[str, str]] = field(default_factory=dict)

    def select(self, namespace: str, selector: LabelSelector) -> list[_Pod]:
        return [pod for pod in self.pods.get(namespace, ()) if selector.matches(pod.labels)]

    def peers(self, namespace: str, peer: Mapping[str, Any]) -> list[_Pod]:
        """The pods a C{from}/C{to} peer names (kube-router's evalPodPeer)."""
        if peer.get("namespaceSelector") is not None:
            spaces = _selector(peer["namespaceSelector"])
            pods = _selector(peer.get("podSelector") or {})
            return [
                pod
                for name in sorted(self.namespaces)
                if spaces.matches(self.namespaces[name])
                for pod in self.select(name, pods)
            ]
        if peer.get("podSelector") is not None:
            return self.select(namespace, _selector(peer["podSelector"]))
        return []


def _ip_block(peer: Mapping[str, Any]) -> list[str]:
    """The C{hash:net} entries of a peer's ipBlock: its CIDR, and its exceptions as C{nomatch}."""
    block = peer.get("ipBlock")
    if (
        block is None
        or peer.get("podSelector") is not None
        or peer.get("namespaceSelector") is not None
    ):
        return []
    cidr = str(block.get("cidr") or "")
    if not _is_ipv4(cidr.partition("/")[0]):
        return []

    def entries(text: str) -> list[str]:
        # hash:net holds no /0: two halves stand for it.
        return ["0.0.0.0/1", "128.0.0.0/1"] if text.endswith("/0") else [text]

    return entries(cidr) + [
        f"{entry} nomatch" for text in block.get("except") or () for entry in entries(str(text))
    ]


def _ports(
    specs: Sequence[Mapping[str, Any]], pods: Iterable[_Pod]
) -> tuple[list[_Port], list[_NamedPort]]:
    """A rule's numeric ports, and its named ports resolved against C{pods}' container ports."""
    numeric: list[_Port] = []
    named: list[_NamedPort] = []
    pods = list(pods)
    for spec in specs:
        protocol = str(spec.get("protocol") or "TCP")
        port = spec.get("port")
        if port is None:
            numeric.append(_Port(protocol))
        elif isinstance(port, int):
            end = spec.get("endPort")
            text = f"{port}:{end}" if isinstance(end, int) and end >= port else str(port)
            numeric.append(_Port(protocol, text))
        else:
            by_number: dict[int, list[str]] = {}
            for pod in pods:
                for name, proto, number in pod.ports:
                    if (
                        name == port
                        and proto == protocol
                        and pod.ip not in by_number.get(number, ())
                    ):
                        by_number.setdefault(number, []).append(pod.ip)
            named += [
                _NamedPort(_Port(protocol, str(number)), tuple(ips))
                for number, ips in sorted(by_number.items())
            ]
    return numeric, named


class _Rules:
    """Filter table text under construction, and the ipsets it matches."""

    def __init__(self) -> None:
        self.chains: list[str] = []
        self.lines: list[str] = []
        self.sets: dict[str, IPSet] = {}

    def add(self, chain: str, args: str, comment: str = "") -> None:
        """Append C{-A chain} with C{args}, after a comment match if C{comment}."""
        remark = f" -m comment --comment {_quote(comment)}" if comment else ""
        self.lines.append(f"-A {chain}{remark} {args}")

    def add_kept(self, chain: str, comment: str, args: str, before: str = "") -> None:
        """Append a rule whose comment ends in kube-router's id of it (its chain and arguments)."""
        spec = [*before.split(), "-m", "comment", "--comment", comment, *args.split()]
        remark = _quote(f"{comment} - {_rule_id(chain, spec)}")
        self.lines.append(f"-A {chain} {before}-m comment --comment {remark} {args}")

    def ipset(self, name: str, kind: str, entries: Iterable[str]) -> str:
        self.sets[name] = IPSet(name, kind, tuple(entries))
        return name

    def allow(
        self,
        chain: str,
        comment: str,
        source: str = "",
        destination: str = "",
        port: _Port = _Port(),
    ) -> None:
        """A policy chain's allow rule: mark the packet accepted, then return."""
        matches = ""
        if source:
            matches += f" -m set --match-set {source} src"
        if destination:
            matches += f" -m set --match-set {destination} dst"
        matches = (matches + port.matches()).lstrip()
        self.add(chain, f"{matches} -j MARK --set-xmark {ACCEPT_MARK}".lstrip(), comment)
        self.add(chain, f"{matches} -m mark --mark {ACCEPT_MARK} -j RETURN".lstrip(), comment)

    def allow_ports(
        self,
        chain: str,
        specs: Sequence[Mapping[str, Any]],
        numeric: Sequence[_Port],
        named: Sequence[_NamedPort],
        prefix: Sequence[str],
        comment: str,
        source: str,
        destination: str,
    ) -> None:
        """
        A rule's allow rules, one per port (one for all when its C{specs}
        name none); a named port's destination is the set of the pods that
        expose it under that number.
        """
        if not specs:
            self.allow(chain, comment, source, destination)
        for port in numeric:
            self.allow(chain, comment, source, destination, port)
        for number, resolved in enumerate(named):
            key = _set_name(DESTINATION_SET_PREFIX, *prefix, str(number), FAMILY, "namedport")
            exposing = self.ipset(key, "hash:ip", resolved.ips)
            self.allow(chain, comment, source, exposing, resolved.port)


def _quote(comment: str) -> str:
    return '"' + comment[:_MAX_COMMENT].replace('"', "'") + '"'


def _rule_id(chain: str, spec: Sequence[str]) -> str:
    """kube-router's id of a rule it keeps in place: a hash of its chain and arguments."""
    return _hash16(chain + "".join(spec))


def _jump(builtin: str, chain: str) -> str:
    """A built-in chain's jump to kube-router's, as iptables-save prints it (without C{-A})."""
    spec = ["-m", "comment", "--comment", "kube-router netpol", "-j", chain]
    return f'-m comment --comment "kube-router netpol - {_rule_id(builtin, spec)}" -j {chain}'


@dataclass(eq=False)
class _Policy:
    namespace: str
    name: str
    chain: str
    ingress: bool
    egress: bool
    targets: list[_Pod]


def render(
    pods: Iterable[Object],
    namespaces: Iterable[Object],
    policies: Iterable[Object],
    settings: PolicySettings,
    version: str,
    saved: str = "",
) -> Firewall:
    """
    One full sync's ipsets and filter rules.

    :param version: the sync's version, part of every chain's name.
    :param saved: C{iptables-save -t filter} before the sync: the chains of
        earlier syncs are deleted, and the built-in chains' jumps put back at
        the top if something went before them.
    """
    cluster = _Cluster()
    for obj in pods:
        pod = _pod(obj)
        if pod is not None:
            cluster.pods.setdefault(pod.namespace, []).append(pod)
    for listed in cluster.pods.values():
        listed.sort(key=lambda pod: pod.name)
    for space in namespaces:
        meta = space.get("metadata") or {}
        cluster.namespaces[meta.get("name", "")] = meta.get("labels") or {}

    rules = _top_chains(settings)
    chosen = sorted(
        policies, key=lambda p: (p["metadata"].get("namespace", ""), p["metadata"]["name"])
    )
    applied = [_policy_chain(rules, cluster, obj, version) for obj in chosen]
    for namespace in sorted(cluster.pods):
        for pod in cluster.pods[namespace]:
            if pod.host_ip in settings.node_ips:
                selecting = [policy for policy in applied if pod in policy.targets]
                _pod_chain(rules, pod, selecting, version)
    for chain in BUILTIN_CHAINS.values():
        rules.add(
            chain,
            f"-m mark --mark {COMPLY_MARK} -j ACCEPT",
            "rule to explicitly ACCEPT traffic that comply to network policies",
        )

    existing, builtin_rules = _parse_saved(saved)
    stale = [
        chain
        for chain in existing
        if chain.startswith((POD_CHAIN_PREFIX, POLICY_CHAIN_PREFIX)) and chain not in rules.chains
    ]
    jumps: list[str] = []
    for builtin, chain in BUILTIN_CHAINS.items():
        spec = _jump(builtin, chain)
        current = builtin_rules.get(builtin, [])
        present = [rule for rule in current if rule.endswith(" -j " + chain)]
        if present == [spec] and current[0] == spec:
            continue
        jumps += [f"-D {builtin} {rule}" for rule in present]
        jumps.append(f"-I {builtin} 1 {spec}")

    # Old chains are declared (emptied) so that they can be deleted at the end.
    lines = rules.lines + jumps + [f"-X {chain}" for chain in stale]
    return Firewall(
        tuple(sorted(rules.sets.values(), key=lambda s: s.name)),
        restore_text({"filter": (rules.chains + stale, lines)}),
        tuple(rules.chains),
    )


def _top_chains(settings: PolicySettings) -> _Rules:
    """kube-router's own chains, with the rules that come before any pod's."""
    rules = _Rules()
    rules.chains += [*BUILTIN_CHAINS.values(), DEFAULT_CHAIN]
    for cidr in settings.service_cidrs:
        if _is_ipv4(cidr.partition("/")[0]):
            rules.add_kept(
                "KUBE-ROUTER-INPUT",
                "allow traffic to primary/secondary cluster IP range",
                f"-d {cidr} -j RETURN",
            )
            # k3stw's, not kube-router's: a packet still bound for a cluster IP in FORWARD
            # was not DNATed (its Service has no endpoint), so it can reach no pod; left to
            # kube-proxy's filter rules, it is rejected at once instead of being accepted as
            # policy-compliant pod traffic and routed nowhere.
            rules.add_kept(
                "KUBE-ROUTER-FORWARD",
                "let kube-proxy reject traffic to cluster IPs without endpoints",
                f"-d {cidr} -j RETURN",
            )
    for protocol in ("tcp", "udp"):
        rules.add_kept(
            "KUBE-ROUTER-INPUT",
            f"allow LOCAL {protocol.upper()} traffic to node ports",
            "-m addrtype --dst-type LOCAL"
            f" -m multiport --dports {settings.node_port_range} -j RETURN",
            before=f"-p {protocol} ",
        )
    for icmp, comment in _ICMP_ALLOWED:
        rules.add(DEFAULT_CHAIN, f"-p icmp --icmp-type {icmp} -j ACCEPT", comment)
    rules.add(
        DEFAULT_CHAIN,
        f"-j MARK --set-xmark {ACCEPT_MARK}",
        "rule to mark traffic matching a network policy",
    )
    return rules


def _parse_saved(saved: str) -> tuple[list[str], dict[str, list[str]]]:
    """An C{iptables-save -t filter}'s user chains, and each built-in chain's rules (no C{-A})."""
    chains: list[str] = []
    builtin: dict[str, list[str]] = {}
    for line in saved.splitlines():
        if line.startswith(":"):
            name = line[1:].split(" ", 1)[0]
            if name not in BUILTIN_CHAINS:
                chains.append(name)
        elif line.startswith("-A "):
            _, chain, rest = line.split(" ", 2)
            if chain in BUILTIN_CHAINS:
                builtin.setdefault(chain, []).append(rest)
    return chains, builtin


def _policy_chain(rules: _Rules, cluster: _Cluster, obj: Object, version: str) -> _Policy:
    """Declare a policy's chain, its allow rules and its ipsets."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    # The API server defaults policyTypes; an object without them reads as it would.
    types = spec.get("policyTypes") or ["Ingress", *(["Egress"] if spec.get("egress") else [])]
    policy = _Policy(
        namespace,
        name,
        policy_chain_name(namespace, name, version),
        "Ingress" in types,
        "Egress" in types,
        cluster.select(namespace, _selector(spec.get("podSelector") or {})),
    )
    rules.chains.append(policy.chain)
    target_ips = [pod.ip for pod in policy.targets]
    if policy.ingress:
        key = _set_name(DESTINATION_SET_PREFIX, namespace, name, FAMILY)
        targets = rules.ipset(key, "hash:ip", target_ips)
        for index, rule in enumerate(spec.get("ingress") or ()):
            _ingress_rule(rules, cluster, policy, targets, index, rule or {})
    if policy.egress:
        key = _set_name(SOURCE_SET_PREFIX, namespace, name, FAMILY)
        sources = rules.ipset(key, "hash:ip", target_ips)
        for index, rule in enumerate(spec.get("egress") or ()):
            _egress_rule(rules, cluster, policy, sources, index, rule or {})
    return policy


def _ingress_rule(
    rules: _Rules,
    cluster: _Cluster,
    policy: _Policy,
    targets: str,
    index: int,
    rule: Mapping[str, Any],
) -> None:
    """One ingress rule's allow rules: from its peers' pods, from anywhere, from its ipBlocks."""
    namespace, name = policy.namespace, policy.name
    ports = rule.get("ports") or ()
    # A named port is resolved among the pods the policy protects.
    numeric, named = _ports(ports, policy.targets)
    peers = rule.get("from") or ()
    prefix = (namespace, name, "ingressrule", str(index))
    allow = partial(rules.allow_ports, policy.chain, ports, numeric, named, prefix)
    pods = [pod for peer in peers for pod in cluster.peers(namespace, peer)]
    if pods:
        key = _set_name(SOURCE_SET_PREFIX, *prefix, FAMILY, "pod")
        source = rules.ipset(key, "hash:ip", _unique(pods))
        allow(_accepting("source pods to dest pods", policy), source, targets)
    if not peers:
        allow(_accepting("all sources to dest pods", policy, ":"), "", targets)
    blocks = [entry for peer in peers for entry in _ip_block(peer)]
    if blocks:
        key = _set_name(SOURCE_SET_PREFIX, *prefix, FAMILY, "ipblock")
        source = rules.ipset(key, "hash:net", blocks)
        allow(_accepting("specified ipBlocks to dest pods", policy, ":"), source, targets)


def _egress_rule(
    rules: _Rules,
    cluster: _Cluster,
    policy: _Policy,
    sources: str,
    index: int,
    rule: Mapping[str, Any],
) -> None:
    """One egress rule's allow rules: to its peers' pods, to anywhere, to its ipBlocks."""
    namespace, name = policy.namespace, policy.name
    ports = rule.get("ports") or ()
    peers = rule.get("to") or ()
    prefix = (namespace, name, "egressrule", str(index))
    pods = [pod for peer in peers for pod in cluster.peers(namespace, peer)]
    if pods:
        key = _set_name(DESTINATION_SET_PREFIX, *prefix, FAMILY, "pod")
        destination = rules.ipset(key, "hash:ip", _unique(pods))
        # A named port is resolved among the peer pods.
        numeric, named = _ports(ports, pods)
        comment = _accepting("source pods to dest pods", policy)
        rules.allow_ports(
            policy.chain, ports, numeric, named, prefix, comment, sources, destination
        )
    if not peers:
        # With no peers, among the pods of the policy's namespace, for any destination.
        numeric, named = _ports(ports, cluster.pods.get(namespace, ()))
        numeric += [resolved.port for resolved in named]
        comment = _accepting("source pods to all destinations", policy, ":")
        rules.allow_ports(policy.chain, ports, numeric, [], prefix, comment, sources, "")
    blocks = [entry for peer in peers for entry in _ip_block(peer)]
    if blocks:
        key = _set_name(DESTINATION_SET_PREFIX, *prefix, FAMILY, "ipblock")
        destination = rules.ipset(key, "hash:net", blocks)
        # Named ports cannot be resolved for addresses outside the cluster.
        numeric, _ = _ports(ports, ())
        comment = _accepting("source pods to specified ipBlocks", policy, ":")
        rules.allow_ports(policy.chain, ports, numeric, [], prefix, comment, sources, destination)


def _accepting(what: str, policy: _Policy, colon: str = "") -> str:
    """kube-router's comment on a policy's allow rule."""
    return (
        f"rule to ACCEPT traffic from {what} selected by policy name{colon} {policy.name}"
        f" namespace {policy.namespace}"
    )


def _unique(pods: Iterable[_Pod]) -> list[str]:
    return list(dict.fromkeys(pod.ip for pod in pods))


def _pod_chain(rules: _Rules, pod: _Pod, policies: list[_Policy], version: str) -> None:
    """A local pod's chain, and the jumps to it from kube-router's top chains."""
    chain = pod_chain_name(pod.namespace, pod.name, version)
    rules.chains.append(chain)
    ip, who = pod.ip, f"POD name:{pod.name} namespace: {pod.namespace}"
    add = partial(rules.add, chain)
    add(
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", "rule for stateful firewall for pod"
    )
    add("-m conntrack --ctstate INVALID -j DROP", "rule to drop invalid state for pod")
    add(
        f"-m addrtype --src-type LOCAL -d {ip} -j ACCEPT",
        "rule to permit the traffic traffic to pods when source is the pod's local node",
    )
    if not any(policy.egress for policy in policies):
        add(f"-s {ip} -j {DEFAULT_CHAIN}", "run through default egress network policy chain")
    if not any(policy.ingress for policy in policies):
        add(f"-d {ip} -j {DEFAULT_CHAIN}", "run through default ingress network policy chain")
    for policy in policies:
        # A policy of both directions sees both; its own rules tell them apart.
        both = policy.ingress and policy.egress
        address = "" if both else f"-d {ip} " if policy.ingress else f"-s {ip} "
        add(f"{address}-j {policy.chain}", f"run through nw policy {policy.name}")
    unmarked = f"-m mark ! --mark {ACCEPT_MARK}"
    add(
        f"{unmarked} -j NFLOG --nflog-group 100 -m limit --limit 10/minute --limit-burst 10",
        f"rule to log dropped traffic {who}",
    )
    add(f"{unmarked} -j REJECT", f"rule to REJECT traffic destined for {who}")
    add("-j MARK --set-mark 0/0x10000")
    add(
        f"-j MARK --set-mark {COMPLY_MARK}",
        "set mark to ACCEPT traffic that comply to network policies",
    )

    to_pod = f"rule to jump traffic destined to {who} to chain {chain}"
    from_pod = f"rule to jump traffic from {who} to chain {chain}"
    forward, output = BUILTIN_CHAINS["FORWARD"], BUILTIN_CHAINS["OUTPUT"]
    bridged = "-m physdev --physdev-is-bridged"
    rules.add(forward, f"-d {ip} -j {chain}", to_pod)
    rules.add(output, f"-d {ip} -j {chain}", to_pod)
    rules.add(forward, f"{bridged} -d {ip} -j {chain}", to_pod)
    for top in BUILTIN_CHAINS.values():
        rules.add(top, f"-s {ip} -j {chain}", from_pod)
    rules.add(forward, f"{bridged} -s {ip} -j {chain}", from_pod)
