"""
flannel as k3s embeds it: each node routes the other nodes' pod ranges
(``spec.podCIDR``) with the kube subnet manager's leases, read from the
Nodes' ``flannel.alpha.coreos.com/*`` annotations.

The node writes its own annotations (``backend-type``, ``backend-data``,
``kube-subnet-manager``, ``public-ip``), ``/run/flannel/subnet.env``, and the
masquerade and forward rules in flannel's chains (``FLANNEL-POSTRTG``,
``FLANNEL-FWD``); then, for each other node of the same backend, the kernel
entries its backend wants (L{k3stw.network.vxlan}: a route, a neighbour and
an FDB entry on ``flannel.1``; L{k3stw.network.hostgw}: a plain route).  The
entries follow the Nodes through an informer; a Node deleted takes its
entries with it.  Everything is applied with ``ip``/``bridge -batch`` as
``replace``, so a restart or a periodic resync re-applies it idempotently;
what a node owns is left in place when it stops, as flannel leaves it.

The pure parts (leases from Nodes, entries, annotations, rules, subnet.env)
take plain dicts and return text; L{FlannelController} runs them.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.interfaces import IReactorProcess, IReactorTime

from k3stw.files import write_atomically
from k3stw.kubeclient import KubeAPI, KubeAPIError
from k3stw.logs import Logger
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import EventHandler, Informer, Retention
from k3stw.machinery.objects import Object
from k3stw.machinery.processes import CommandFailed, run_command
from k3stw.machinery.source import HTTPSource
from k3stw.machinery.timing import PeriodicJob
from k3stw.network.iptables import IPTables, IPTablesError, restore_text

if TYPE_CHECKING:
    from k3stw.agent.join import Joined
    from k3stw.network.node import NetworkSettings

__all__ = [
    "ANNOTATION_PREFIX",
    "Backend",
    "Entry",
    "FlannelController",
    "Lease",
    "Link",
    "LocalLease",
    "annotation_patch",
    "find_link",
    "lease_of",
    "own_annotations",
    "rules",
    "subnet_env",
]

_log = Logger(namespace="k3stw.network.flannel")

ANNOTATION_PREFIX = "flannel.alpha.coreos.com/"
BACKEND_TYPE = ANNOTATION_PREFIX + "backend-type"
BACKEND_DATA = ANNOTATION_PREFIX + "backend-data"
SUBNET_MANAGER = ANNOTATION_PREFIX + "kube-subnet-manager"
PUBLIC_IP = ANNOTATION_PREFIX + "public-ip"

#: Where flannel writes its subnet file (not under the data dir, in k3s too).
SUBNET_ENV = Path("/run/flannel/subnet.env")
#: kube-proxy's masquerade mark: traffic it marked is left to its own rule.
KUBE_PROXY_MARK = "0x4000/0x4000"
MASQ_COMMENT = "flanneld masq"
FORWARD_COMMENT = "flanneld forward"
#: The jumps into flannel's chains, appended (as flannel does) and checked before.
JUMPS = (
    ("nat", "POSTROUTING", ("-m", "comment", "--comment", MASQ_COMMENT, "-j", "FLANNEL-POSTRTG")),
    ("filter", "FORWARD", ("-m", "comment", "--comment", FORWARD_COMMENT, "-j", "FLANNEL-FWD")),
)
#: k3s re-applies flannel's rules every minute (and flannel re-checks its routes).
RESYNC_INTERVAL = 60.0
#: The one key of the controller's queue: every change syncs the whole node.
SYNC = "sync"
RESYNC = "resync"
COMMAND_TIMEOUT = 30.0
NODES_PATH = "/api/v1/nodes"


@dataclass(frozen=True)
class Lease:
    """
    Another node's lease, as flannel's kube subnet manager reads it from its Node.

    :ivar node: the Node's name.
    :ivar subnet: its pod range (``spec.podCIDR``, IPv4).
    :ivar public_ip: where its traffic goes (``public-ip``).
    :ivar backend_type: its ``backend-type``.
    :ivar backend_data: its ``backend-data``, decoded (None for ``null``).
    """

    node: str
    subnet: ipaddress.IPv4Network
    public_ip: str
    backend_type: str
    backend_data: Any = None

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The range's network address: the peer's ``flannel.1`` address."""
        return self.subnet.network_address


def ipv4_subnet(node: Object) -> ipaddress.IPv4Network | None:
    """The Node's IPv4 pod range (``spec.podCIDRs``, else ``spec.podCIDR``); None before one."""
    spec = node.get("spec") or {}
    for cidr in spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []):
        try:
            network = ipaddress.ip_network(str(cidr), strict=False)
        except ValueError:
            continue
        if isinstance(network, ipaddress.IPv4Network):
            return network
    return None


def lease_of(node: Object) -> Lease | None:
    """
    C{node}'s lease, or None: flannel ignores Nodes not marked
    ``kube-subnet-manager: "true"``, without a pod range or a public IP.
    """
    metadata = node.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    if annotations.get(SUBNET_MANAGER) != "true":
        return None
    subnet = ipv4_subnet(node)
    public_ip = str(annotations.get(PUBLIC_IP) or "")
    if subnet is None or not public_ip:
        return None
    try:
        ipaddress.IPv4Address(public_ip)
        data = json.loads(annotations.get(BACKEND_DATA) or "null")
    except ValueError:
        return None
    return Lease(
        str(metadata.get("name") or ""),
        subnet,
        public_ip,
        str(annotations.get(BACKEND_TYPE) or ""),
        data,
    )


def trim_node(node: Object) -> Object:
    """What the informer keeps of a Node: its name, flannel's annotations, its pod ranges."""
    metadata = node.get("metadata") or {}
    spec = node.get("spec") or {}
    annotations = {
        key: value
        for key, value in (metadata.get("annotations") or {}).items()
        if key.startswith(ANNOTATION_PREFIX)
    }
    return {
        "metadata": {
            "name": metadata.get("name"),
            "resourceVersion": metadata.get("resourceVersion"),
            "annotations": annotations,
        },
        "spec": {key: spec[key] for key in ("podCIDR", "podCIDRs") if key in spec},
    }


def own_annotations(backend_type: str, backend_data: Any, public_ip: str) -> dict[str, str]:
    """The annotations flannel writes on its own Node."""
    return {
        BACKEND_DATA: json.dumps(backend_data, separators=(",", ":")),
        BACKEND_TYPE: backend_type,
        SUBNET_MANAGER: "true",
        PUBLIC_IP: public_ip,
    }


def annotation_patch(node: Object, wanted: Mapping[str, str]) -> Object | None:
    """The merge patch that gives C{node} the annotations C{wanted}; None if it has them."""
    have = (node.get("metadata") or {}).get("annotations") or {}
    changed = {key: value for key, value in wanted.items() if have.get(key) != value}
    return {"metadata": {"annotations": changed}} if changed else None


def rules(cluster: str, subnet: str, random_fully: bool = True) -> str:
    """
    flannel's masquerade (``nat`` ``FLANNEL-POSTRTG``) and forward (``filter``
    ``FLANNEL-FWD``) chains for the cluster range C{cluster} and this node's
    pod range C{subnet}, as one ``iptables-restore --noflush`` transaction:
    declaring a chain flushes it, so applying it again duplicates nothing.
    """
    masquerade = "MASQUERADE --random-fully" if random_fully else "MASQUERADE"
    masq = f'-m comment --comment "{MASQ_COMMENT}"'
    forward = f'-m comment --comment "{FORWARD_COMMENT}"'
    chain = "-A FLANNEL-POSTRTG"
    return restore_text(
        {
            "nat": (
                ["FLANNEL-POSTRTG"],
                [
                    f"{chain} -m mark --mark {KUBE_PROXY_MARK} {masq} -j RETURN",
                    f"{chain} -s {subnet} -d {cluster} {masq} -j RETURN",
                    f"{chain} -s {cluster} -d {subnet} {masq} -j RETURN",
                    f"{chain} ! -s {cluster} -d {subnet} {masq} -j RETURN",
                    f"{chain} -s {cluster} ! -d 224.0.0.0/4 {masq} -j {masquerade}",
                    f"{chain} ! -s {cluster} -d {cluster} {masq} -j {masquerade}",
                ],
            ),
            "filter": (
                ["FLANNEL-FWD"],
                [
                    f"-A FLANNEL-FWD -s {cluster} {forward} -j ACCEPT",
                    f"-A FLANNEL-FWD -d {cluster} {forward} -j ACCEPT",
                ],
            ),
        }
    )


def subnet_env(cluster: str, subnet: ipaddress.IPv4Network, mtu: int) -> str:
    """``/run/flannel/subnet.env``: the subnet is the range's first address (cni0's)."""
    return (
        f"FLANNEL_NETWORK={cluster}\n"
        f"FLANNEL_SUBNET={subnet.network_address + 1}/{subnet.prefixlen}\n"
        f"FLANNEL_MTU={mtu}\n"
        "FLANNEL_IPMASQ=true\n"
    )


def read_subnet_mtu(path: Path = SUBNET_ENV) -> int | None:
    """``FLANNEL_MTU`` of the subnet file at C{path}; None without one."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "FLANNEL_MTU" and value.strip().isdigit():
            return int(value.strip())
    return None


@dataclass(frozen=True)
class Link:
    """The interface flannel sends through: its name, IPv4 address and MTU."""

    name: str
    address: str
    mtu: int


def find_link(links: Sequence[Object], address: str, name: str = "") -> Link:
    """
    The interface among C{links} (``ip -j -4 addr show``) named C{name}, or
    else the one holding C{address}; the address is C{name}'s first IPv4
    address, or C{address}.

    :raises ValueError: no such interface, in flannel's words.
    """
    for link in links:
        addresses = [
            str(info.get("local"))
            for info in link.get("addr_info") or ()
            if info.get("family") == "inet"
        ]
        if (name and link.get("ifname") == name) or (not name and address in addresses):
            if not addresses:
                raise ValueError(f"failed to find IPv4 address for interface {name}")
            chosen = address if address in addresses else addresses[0]
            return Link(str(link.get("ifname")), chosen, int(link.get("mtu") or 1500))
    if name:
        raise ValueError(f"error looking up interface {name}: Link not found")
    raise ValueError(f"failed to find interface with specified node ip {address}")


@dataclass(frozen=True)
class Entry:
    """
    One kernel entry a backend keeps for a remote node: the ``-batch`` line
    that sets it (a ``replace``) and the one that removes it, for C{tool}
    (``ip`` or ``bridge``).
    """

    tool: str
    apply: str
    remove: str


@dataclass(frozen=True)
class LocalLease:
    """What a backend made of this node's lease: its MTU and its ``backend-data``."""

    mtu: int
    backend_data: Any


class Backend(Protocol):
    """A flannel backend: the local set-up, then entries for each remote lease."""

    #: The ``backend-type`` it writes and accepts.
    name: str

    async def setup(self, link: Link, subnet: ipaddress.IPv4Network, previous: Any) -> LocalLease:
        """Prepare this node (C{previous}: its ``backend-data`` from before, if any)."""

    def entries(self, lease: Lease) -> tuple[Entry, ...]:
        """The entries that route to C{lease}, in the order they are applied."""

    async def found(self, cluster: ipaddress.IPv4Network) -> list[Entry]:
        """Its entries already on the host (from before a restart), after L{setup}."""


def changes(
    applied: Iterable[Entry], wanted: Iterable[Entry], everything: bool = False
) -> tuple[list[Entry], list[Entry]]:
    """
    What to remove (applied, no longer wanted; last applied first) and what to
    apply (wanted, not yet applied, or every one of them with C{everything}).
    """
    applied, wanted = list(applied), list(wanted)
    have, want = set(applied), set(wanted)
    removals = [entry for entry in reversed(applied) if entry not in want]
    additions = [entry for entry in wanted if everything or entry not in have]
    return removals, additions


async def apply_entries(
    reactor: IReactorProcess, removals: list[Entry], additions: list[Entry]
) -> None:
    """
    Run the removals (each on its own: one that is already gone does not stop
    the rest), then the additions (``bridge`` first: FDB entries before the
    routes that need them).
    """
    for tool in ("ip", "bridge"):
        lines = [entry.remove for entry in removals if entry.tool == tool]
        if lines:
            try:
                await batch(reactor, tool, lines, force=True)
            except CommandFailed as e:
                _log.debug("Stale entries already gone: {error}", error=str(e))
    for tool in ("bridge", "ip"):
        lines = [entry.apply for entry in additions if entry.tool == tool]
        if lines:
            await batch(reactor, tool, lines)


async def batch(reactor: IReactorProcess, tool: str, lines: list[str], force: bool = False) -> None:
    """Run C{lines} through C{tool} ``-batch -`` (with ``-force``: on past a line that fails)."""
    argv = [tool, *(["-force"] if force else []), "-batch", "-"]
    await run_command(
        reactor,
        argv,
        timeout=COMMAND_TIMEOUT,
        stdin="".join(f"{line}\n" for line in lines).encode(),
    )


async def ip_json(reactor: IReactorProcess, *arguments: str) -> list[Object]:
    """``ip -j <arguments>``, decoded."""
    return await command_json(reactor, "ip", *arguments)


async def command_json(reactor: IReactorProcess, tool: str, *arguments: str) -> list[Object]:
    """C{tool} ``-j`` C{arguments} (``ip``, ``bridge``): its JSON list, decoded."""
    result = await run_command(reactor, [tool, "-j", *arguments], timeout=COMMAND_TIMEOUT)
    decoded = json.loads(result.stdout or b"[]")
    return [item for item in decoded if isinstance(item, dict)] if isinstance(decoded, list) else []


def write_if_changed(path: Path, text: str) -> None:
    """Write C{path} (0644, atomically) unless it already says C{text}."""
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    write_atomically(path, text.encode(), 0o644)


class FlannelController(Controller):
    """
    flannel on one node: once its Node has a pod range, the backend's local
    set-up, the Node's annotations, subnet.env and the rules; then every other
    node's entries, kept in step with the Nodes (one key, so changes coalesce),
    and all of it re-applied every L{RESYNC_INTERVAL}.

    :param client: the API as this node (list and watch Nodes, patch its own).
    :param iptables: applies the rules (None: leave them to someone else).
    :param cluster_cidr: the IPv4 cluster range (``--cluster-cidr``).
    :param node_ip: the node's IPv4 address; the tunnel's end unless C{iface} says otherwise.
    :param iface: ``--flannel-iface`` (empty: the interface holding C{node_ip}).
    """

    label = "flannel"
    expected = (CommandFailed, IPTablesError, KubeAPIError, ValueError, OSError)

    def __init__(
        self,
        reactor: Any,
        client: KubeAPI,
        node_name: str,
        backend: Backend,
        cluster_cidr: str,
        node_ip: str,
        iface: str = "",
        iptables: IPTables | None = None,
        subnet_file: Path = SUBNET_ENV,
    ) -> None:
        self.nodes = Informer(
            HTTPSource(client, NODES_PATH),
            IReactorTime(reactor),
            retention=Retention(trim=trim_node),
        )
        super().__init__(reactor, [self.nodes])
        self.reactor = reactor
        self.client = client
        self.node_name = node_name
        self.backend = backend
        self.cluster_cidr = cluster_cidr
        self.node_ip = node_ip
        self.iface = iface
        self.iptables = iptables
        self.subnet_file = subnet_file
        self.nodes.setServiceParent(self)
        self.add_handler(
            self.nodes,
            EventHandler(
                on_add=lambda _: self.enqueue(SYNC),
                on_update=lambda old, new: self._changed(old, new),
                on_delete=lambda _: self.enqueue(SYNC),
            ),
        )
        PeriodicJob(
            self.clock, RESYNC_INTERVAL, self._resync, "flannel resync", first=RESYNC_INTERVAL
        ).setServiceParent(self)
        #: The local set-up once done: the range it was made for, and what it gave.
        self.local: tuple[ipaddress.IPv4Network, Link, LocalLease] | None = None
        #: The entries applied, by node (None: not yet looked at what the host has).
        self.applied: dict[str, tuple[Entry, ...]] | None = None

    def new_term(self) -> None:
        self.local = None
        self.applied = None

    def _changed(self, old: Object, new: Object) -> None:
        # Only what a lease is made of matters (the informer keeps nothing else).
        if old != new:
            self.enqueue(SYNC)

    async def _resync(self) -> None:
        self.enqueue(RESYNC)

    async def sync(self, key: str) -> None:
        own = self.nodes.get(self.node_name)
        subnet = None if own is None else ipv4_subnet(own)
        if own is None or subnet is None:
            # Its Node (or its range) is not there yet: the event that brings it syncs again.
            return
        local = await self._local(own, subnet, again=key == RESYNC)
        link, lease = local[1], local[2]
        patch = annotation_patch(
            own, own_annotations(self.backend.name, lease.backend_data, link.address)
        )
        if patch is not None:
            await self.client.call(
                "PATCH",
                f"{NODES_PATH}/{self.node_name}",
                patch,
                "application/merge-patch+json",
            )
        await self._routes(everything=key == RESYNC)

    async def _local(
        self, own: Object, subnet: ipaddress.IPv4Network, again: bool
    ) -> tuple[ipaddress.IPv4Network, Link, LocalLease]:
        """The local set-up for C{subnet}: done once (again on a resync), redone if it changes."""
        if self.local is not None and self.local[0] == subnet and not again:
            return self.local
        link = find_link(
            await ip_json(self.reactor, "-4", "addr", "show"), self.node_ip, self.iface
        )
        previous = lease_of(own)
        lease = await self.backend.setup(
            link, subnet, previous.backend_data if previous is not None else None
        )
        write_if_changed(self.subnet_file, subnet_env(self.cluster_cidr, subnet, lease.mtu))
        if self.iptables is not None:
            await self.iptables.restore(rules(self.cluster_cidr, str(subnet)))
            for table, chain, arguments in JUMPS:
                await self.iptables.ensure_rule(table, chain, list(arguments), first=False)
        if self.local is None or self.local[0] != subnet:
            _log.info(
                "flannel {backend} on {link} ({address}, MTU {mtu}) for {subnet}",
                backend=self.backend.name,
                link=link.name,
                address=link.address,
                mtu=lease.mtu,
                subnet=str(subnet),
            )
        self.local = (subnet, link, lease)
        return self.local

    async def _routes(self, everything: bool) -> None:
        """Apply every other node's entries that are new, and remove those of nodes gone."""
        wanted: dict[str, tuple[Entry, ...]] = {}
        for node in self.nodes.cache.list():
            lease = lease_of(node)
            if lease is None or lease.node == self.node_name:
                continue
            if lease.backend_type != self.backend.name:
                _log.debug(
                    "Ignoring non-{backend} lease of {node}",
                    backend=self.backend.name,
                    node=lease.node,
                )
                continue
            wanted[lease.node] = self.backend.entries(lease)
        if self.applied is None:
            # What a run before this one left (a node deleted meanwhile goes now).
            found = await self.backend.found(ipaddress.IPv4Network(self.cluster_cidr, strict=False))
            self.applied = {"": tuple(found)} if found else {}
        removals, additions = changes(
            (e for entries in self.applied.values() for e in entries),
            (e for entries in wanted.values() for e in entries),
            everything,
        )
        await apply_entries(self.reactor, removals, additions)
        for name in sorted(set(self.applied) - set(wanted) - {""}):
            _log.info("flannel removed the routes to node {node}", node=name)
        for name in sorted(set(wanted) - set(self.applied)):
            _log.info("flannel routes node {node}'s pods", node=name)
        self.applied = wanted


def flannel_for(
    reactor: Any, settings: NetworkSettings, joined: Joined, server_url: str
) -> FlannelController | None:
    """
    The node's flannel for C{settings}' backend (None for ``none``, and for
    ``wireguard-native``, which k3stw does not have), reading and patching
    Nodes as the node itself, as k3s's flannel does with the kubelet's
    kubeconfig (``system:k3s-controller`` may only get Nodes).
    """
    from k3stw.network.node import network_client

    backend: Backend
    if settings.flannel_backend == "vxlan":
        from k3stw.network.vxlan import VXLANBackend

        backend = VXLANBackend(reactor)
    elif settings.flannel_backend == "host-gw":
        from k3stw.network.hostgw import HostGWBackend

        backend = HostGWBackend(reactor)
    else:
        if settings.flannel_backend != "none":
            _log.error(
                "flannel backend {backend} is not supported by k3stw: no routes between nodes",
                backend=settings.flannel_backend,
            )
        return None
    cluster = next((c for c in settings.cluster_cidrs if ":" not in c), "")
    node_ip = next((ip for ip in settings.node_ips if ":" not in ip), "")
    if not cluster or not node_ip:
        _log.error("flannel needs an IPv4 cluster CIDR and node IP: no routes between nodes")
        return None
    return FlannelController(
        reactor,
        network_client(reactor, joined, server_url, joined.client),
        settings.node_name,
        backend,
        cluster,
        node_ip,
        settings.flannel_iface or "",
        IPTables(reactor),
    )
