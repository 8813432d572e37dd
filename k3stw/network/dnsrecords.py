"""
The cluster's DNS records, answered as CoreDNS answers them with k3s's
Corefile: the ``hosts`` plugin over ``NodeHosts`` first, then the
``kubernetes`` plugin for the cluster zone (``pods insecure``, reverse zones
falling through), everything else left to the forwarder.

Pure: L{ClusterState} holds what the node's informers hold (Services,
EndpointSlices, Namespaces, Nodes, kept as the informers give them) and
L{answer} turns one question into a L{Reply} of C{twisted.names} records,
or None when the question is not the cluster's to answer.

Record formats and the NXDOMAIN/NODATA split follow the Kubernetes DNS
specification (schema 1.1.0) as CoreDNS's kubernetes plugin implements it:
``<svc>.<ns>.svc.<zone>`` A/AAAA (ClusterIP, or each ready endpoint of a
headless Service), ``<hostname>.<svc>.<ns>.svc.<zone>`` per endpoint,
``_<port>._<proto>.<svc>.<ns>.svc.<zone>`` SRV, ExternalName CNAMEs,
``a-b-c-d.<ns>.pod.<zone>`` pod records, PTRs for ClusterIPs and named
endpoints, and the zone's SOA in the authority section of every negative
answer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.names import dns

from k3stw.machinery.nodes import node_host_entries
from k3stw.machinery.objects import Object, metadata

#: The kubernetes plugin's default ``ttl`` (k3s's Corefile does not set it).
TTL = 5
#: The hosts plugin's ``ttl 60`` in k3s's Corefile.
HOSTS_TTL = 60
#: The schema version CoreDNS publishes at ``dns-version.<zone>``.
SCHEMA_VERSION = b"1.1.0"
SCHEMA_TTL = 28800
#: The SOA's refresh, retry and expire, as CoreDNS writes them.
SOA_TIMERS = (7200, 1800, 86400)
SERVICE_NAME = "kubernetes.io/service-name"
REVERSE_ZONES = ("in-addr.arpa", "ip6.arpa")

_ADDRESS_TYPES = (dns.A, dns.AAAA)


@dataclass
class Reply:
    """
    The answer to one question.

    :ivar chase: a CNAME target outside the cluster zone whose records of the
        asked type belong after the CNAME (CoreDNS asks its upstream for them).
    """

    rcode: int = dns.OK
    answers: list[dns.RRHeader] = field(default_factory=list)
    authority: list[dns.RRHeader] = field(default_factory=list)
    additional: list[dns.RRHeader] = field(default_factory=list)
    authoritative: bool = True
    chase: bytes | None = None


@dataclass(frozen=True)
class _Backend:
    """One of CoreDNS's ``msg.Service``: an address or a CNAME target, a port, a name."""

    host: str
    port: int
    name: str


class _NameError(Exception):
    """The name does not exist (NXDOMAIN)."""


class ClusterState:
    """
    What the node knows of the cluster, as its informers tell it: kept by
    reference (the informers' trimmed objects), indexed the way questions ask.

    :param domain: ``--cluster-domain``.
    :param cluster_dns: the ``kube-dns`` ClusterIPs (``ns.dns.<zone>``).
    """

    def __init__(self, domain: str = "cluster.local", cluster_dns: Sequence[str] = ()) -> None:
        self.domain = domain.lower().strip(".")
        self.cluster_dns = tuple(cluster_dns)
        self.services: dict[tuple[str, str], Object] = {}
        self.slices: dict[tuple[str, str], dict[str, Object]] = {}
        self.namespaces: set[str] = set()
        self.nodes: dict[str, Object] = {}
        #: Lower-case names to addresses, addresses to names (the hosts plugin's maps).
        self.hosts: dict[str, list[str]] = {}
        self.host_names: dict[str, list[str]] = {}
        #: Whether every informer has listed once (misses before are SERVFAIL).
        self.synced = False
        #: The SOA serial: when the state last changed (Unix seconds).
        self.serial = 0

    def put_service(self, obj: Object) -> None:
        meta = metadata(obj)
        self.services[(meta.get("namespace", ""), meta.get("name", ""))] = obj

    def drop_service(self, obj: Object) -> None:
        meta = metadata(obj)
        self.services.pop((meta.get("namespace", ""), meta.get("name", "")), None)

    def put_slice(self, obj: Object) -> None:
        meta = metadata(obj)
        service = (meta.get("labels") or {}).get(SERVICE_NAME)
        if service:
            key = (meta.get("namespace", ""), service)
            self.slices.setdefault(key, {})[meta.get("name", "")] = obj

    def drop_slice(self, obj: Object) -> None:
        meta = metadata(obj)
        key = (meta.get("namespace", ""), (meta.get("labels") or {}).get(SERVICE_NAME, ""))
        held = self.slices.get(key)
        if held is not None:
            held.pop(meta.get("name", ""), None)
            if not held:
                del self.slices[key]

    def put_namespace(self, obj: Object) -> None:
        self.namespaces.add(metadata(obj).get("name", ""))

    def drop_namespace(self, obj: Object) -> None:
        self.namespaces.discard(metadata(obj).get("name", ""))

    def put_node(self, obj: Object) -> None:
        self.nodes[metadata(obj).get("name", "")] = obj
        self._index_hosts()

    def drop_node(self, obj: Object) -> None:
        self.nodes.pop(metadata(obj).get("name", ""), None)
        self._index_hosts()

    def _index_hosts(self) -> None:
        hosts: dict[str, list[str]] = {}
        names: dict[str, list[str]] = {}
        for node in self.nodes.values():
            for ip, node_names in node_host_entries(node):
                for name in node_names:
                    hosts.setdefault(name.lower().rstrip("."), []).append(ip)
                names.setdefault(ip, []).extend(node_names)
        self.hosts, self.host_names = hosts, names

    def ready_endpoints(self, namespace: str, service: str) -> Iterator[tuple[str, str, list[Any]]]:
        """
        Each ready endpoint's address, hostname (empty if it has none) and
        ports: CoreDNS's view of EndpointSlices, where a slice without ports
        has one of port -1.
        """
        for piece in (self.slices.get((namespace, service)) or {}).values():
            ports = piece.get("ports") or [{"name": "", "port": -1, "protocol": ""}]
            for endpoint in piece.get("endpoints") or ():
                if (endpoint.get("conditions") or {}).get("ready") is False:
                    continue
                for address in (endpoint.get("addresses") or ())[:1]:
                    yield str(address), str(endpoint.get("hostname") or ""), ports


def answer(state: ClusterState, name: bytes, qtype: int) -> Reply | None:
    """
    The cluster's answer to C{name} (as asked, any case) of type C{qtype},
    or None when the question goes on to the forwarder.
    """
    name = name.rstrip(b".")
    lowered = name.decode("ascii", "replace").lower().rstrip(".")
    found = _from_hosts(state, name, lowered, qtype)
    if found is not None:
        return found
    zone = state.domain
    if lowered == zone or lowered.endswith("." + zone):
        return _kubernetes(state, name, lowered[: -len(zone)].rstrip("."), qtype)
    if qtype == dns.PTR and any(lowered.endswith("." + z) for z in REVERSE_ZONES):
        return _reverse(state, name, lowered)
    return None


def _record(name: bytes, payload: Any, ttl: int = TTL) -> dns.RRHeader:
    return dns.RRHeader(name, payload.TYPE, dns.IN, ttl, payload, auth=True)


def _address(name: bytes, ip: str, ttl: int = TTL) -> dns.RRHeader:
    if ":" in ip:
        return _record(name, dns.Record_AAAA(ip, ttl), ttl)
    return _record(name, dns.Record_A(ip, ttl), ttl)


def _from_hosts(state: ClusterState, name: bytes, lowered: str, qtype: int) -> Reply | None:
    """The hosts plugin: A/AAAA/PTR of NodeHosts lines; a miss falls through."""
    if qtype in _ADDRESS_TYPES:
        family = ":" if qtype == dns.AAAA else "."
        ips = [ip for ip in state.hosts.get(lowered, ()) if family in ip]
        if ips:
            return Reply(answers=[_address(name, ip, HOSTS_TTL) for ip in ips])
    elif qtype == dns.PTR:
        ip = _reverse_address(lowered)
        names = state.host_names.get(ip or "")
        if names:
            return Reply(
                answers=[_record(name, dns.Record_PTR(n, HOSTS_TTL), HOSTS_TTL) for n in names]
            )
    return None


def _soa(state: ClusterState) -> dns.RRHeader:
    zone = state.domain
    refresh, retry, expire = SOA_TIMERS
    soa = dns.Record_SOA(
        f"ns.dns.{zone}",
        f"hostmaster.{zone}",
        state.serial,
        refresh,
        retry,
        expire,
        TTL,
        TTL,
    )
    return _record(zone.encode(), soa)


def _negative(state: ClusterState, rcode: int) -> Reply:
    return Reply(rcode=rcode, authority=[_soa(state)])


def _kubernetes(state: ClusterState, name: bytes, base: str, qtype: int) -> Reply:
    """The kubernetes plugin for a name in the cluster zone (C{base}: the labels left of it)."""
    if qtype in (dns.AXFR, dns.IXFR):
        return Reply(rcode=dns.EREFUSED, authoritative=False)
    if base == "dns-version" and qtype == dns.TXT:
        return Reply(
            answers=[_record(name, dns.Record_TXT(SCHEMA_VERSION, ttl=SCHEMA_TTL), SCHEMA_TTL)]
        )
    if base == "":
        return _apex(state, name, qtype)
    if base == "ns.dns":
        ips = [ip for ip in state.cluster_dns if (":" in ip) == (qtype == dns.AAAA)]
        if qtype in _ADDRESS_TYPES and ips:
            return Reply(answers=[_address(name, ip) for ip in ips])
        return _negative(state, dns.OK)
    try:
        backends = _records(state, base)
    except _NameError:
        if not state.synced:
            return Reply(rcode=dns.ESERVER, authoritative=False)
        return _negative(state, dns.ENAME)
    reply = Reply()
    if qtype in _ADDRESS_TYPES:
        _addresses(reply, name, backends, qtype)
    elif qtype == dns.SRV:
        _services(state, reply, name, backends)
    elif qtype == dns.CNAME:
        reply.answers = [_cname(name, b.host) for b in backends[:1] if not _is_ip(b.host)]
    if not reply.answers:
        reply.authority = [_soa(state)]
    return reply


def _apex(state: ClusterState, name: bytes, qtype: int) -> Reply:
    if qtype == dns.SOA:
        return Reply(answers=[_soa(state)])
    if qtype == dns.NS:
        target = f"ns.dns.{state.domain}"
        return Reply(
            answers=[_record(name, dns.Record_NS(target, TTL))],
            additional=[_address(target.encode(), ip) for ip in state.cluster_dns],
        )
    return _negative(state, dns.OK)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _cname(name: bytes, target: str) -> dns.RRHeader:
    return _record(name, dns.Record_CNAME(target.rstrip("."), TTL))


def _addresses(reply: Reply, name: bytes, backends: list[_Backend], qtype: int) -> None:
    seen: set[str] = set()
    for backend in backends:
        if not _is_ip(backend.host):
            # An ExternalName: its CNAME, then the target's own records.
            reply.answers.append(_cname(name, backend.host))
            reply.chase = backend.host.rstrip(".").encode()
            return
        if (":" in backend.host) == (qtype == dns.AAAA) and backend.host not in seen:
            seen.add(backend.host)
            reply.answers.append(_address(name, backend.host))


def _services(state: ClusterState, reply: Reply, name: bytes, backends: list[_Backend]) -> None:
    """SRV records, CoreDNS's way: priority 0, weight 100/n (at least 1), targets' addresses."""
    internal = [b for b in backends if _is_ip(b.host)]
    weight = max(1, 100 // len(internal)) if internal else 0
    seen: set[tuple[str, int]] = set()
    glue: set[tuple[str, str]] = set()
    for backend in internal:
        if backend.port == -1:
            continue
        target = backend.name
        if (target, backend.port) not in seen:
            seen.add((target, backend.port))
            srv = dns.Record_SRV(0, weight, backend.port, target, TTL)
            reply.answers.append(_record(name, srv))
        if (target, backend.host) not in glue:
            glue.add((target, backend.host))
            reply.additional.append(_address(target.encode(), backend.host))


def _records(state: ClusterState, base: str) -> list[_Backend]:
    """
    CoreDNS's ``Records``: what a name under the zone stands for (an empty
    list: the name exists without records), or L{_NameError}.
    """
    labels = base.split(".")
    if labels in (["svc"], ["pod"]):
        return []
    kind = labels[-1]
    if kind not in ("svc", "pod") or len(labels) > 5:
        raise _NameError()
    namespace = labels[-2]
    if namespace not in state.namespaces:
        raise _NameError()
    if len(labels) == 2:
        return []
    if kind == "pod":
        return _pod(state, labels[-3], namespace)
    rest = labels[:-3]
    endpoint = rest[0] if len(rest) == 1 else ""
    port, protocol = (
        (rest[0].removeprefix("_"), rest[1].removeprefix("_")) if len(rest) == 2 else ("", "")
    )
    return _find_services(state, namespace, labels[-3], endpoint, port, protocol)


def _pod(state: ClusterState, label: str, namespace: str) -> list[_Backend]:
    """``pods insecure``: any dashed address answers, if it is one."""
    if label.count("-") == 3 and "--" not in label:
        ip = label.replace("-", ".")
    else:
        ip = label.replace("-", ":")
    if not _is_ip(ip):
        raise _NameError()
    return [_Backend(str(ipaddress.ip_address(ip)), 0, f"{label}.{namespace}.pod.{state.domain}")]


def _matches(wanted: str, actual: str) -> bool:
    return not wanted or wanted.lower() == actual.lower()


def _find_services(
    state: ClusterState, namespace: str, name: str, endpoint: str, port: str, protocol: str
) -> list[_Backend]:
    service = state.services.get((namespace, name))
    if service is None:
        raise _NameError()
    spec = service.get("spec") or {}
    fqdn = f"{name}.{namespace}.svc.{state.domain}"
    if spec.get("type") == "ExternalName":
        target = str(spec.get("externalName") or "")
        if endpoint or not target or _is_ip(target):
            raise _NameError()
        return [_Backend(target, 0, fqdn)]
    found: list[_Backend] = []
    cluster_ips = list(
        spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    )
    if endpoint or "None" in cluster_ips[:1]:
        for address, named, ports in state.ready_endpoints(namespace, name):
            hostname = named or address.replace(".", "-").replace(":", "-")
            if endpoint and endpoint != hostname.lower():
                continue
            for p in ports:
                if _matches(port, str(p.get("name") or "")) and _matches(
                    protocol, str(p.get("protocol") or "")
                ):
                    found.append(_Backend(address, int(p.get("port", -1)), f"{hostname}.{fqdn}"))
    else:
        for p in spec.get("ports") or ():
            if _matches(port, str(p.get("name") or "")) and _matches(
                protocol, str(p.get("protocol") or "TCP")
            ):
                found += [_Backend(ip, int(p.get("port", 0)), fqdn) for ip in cluster_ips]
    if not found:
        raise _NameError()
    return found


def _reverse_address(lowered: str) -> str | None:
    """The address a reverse name stands for, or None."""
    if lowered.endswith(".in-addr.arpa"):
        octets = lowered[: -len(".in-addr.arpa")].split(".")
        if len(octets) == 4 and all(o.isdigit() and int(o) < 256 for o in octets):
            return ".".join(reversed(octets))
    elif lowered.endswith(".ip6.arpa"):
        nibbles = lowered[: -len(".ip6.arpa")].split(".")
        if len(nibbles) == 32 and all(len(n) == 1 and n in "0123456789abcdef" for n in nibbles):
            digits = "".join(reversed(nibbles))
            return str(ipaddress.ip_address(int(digits, 16)))
    return None


def _reverse(state: ClusterState, name: bytes, lowered: str) -> Reply | None:
    """PTR for a ClusterIP, else for each named endpoint; a miss falls through."""
    ip = _reverse_address(lowered)
    if ip is None:
        return None
    targets = list(_ptr_targets(state, ip))
    if not targets:
        return None
    return Reply(answers=[_record(name, dns.Record_PTR(t, TTL)) for t in targets])


def _ptr_targets(state: ClusterState, ip: str) -> Iterable[str]:
    zone = state.domain
    for (namespace, name), service in state.services.items():
        spec = service.get("spec") or {}
        if spec.get("type") == "ExternalName":
            continue
        if ip in (spec.get("clusterIPs") or [spec.get("clusterIP")]):
            return [f"{name}.{namespace}.svc.{zone}"]
    return [
        f"{hostname}.{name}.{namespace}.svc.{zone}"
        for namespace, name in state.slices
        for address, hostname, _ in state.ready_endpoints(namespace, name)
        if address == ip and hostname
    ]
