"""
Node IPAM (kube-controller-manager's ``nodeipam`` range allocator, as k3s
turns it on with ``--allocate-node-cidrs``): every Node gets a pod subnet
(``spec.podCIDR``, ``spec.podCIDRs``, one per family) carved out of
``--cluster-cidr`` in ``--node-cidr-mask-size`` pieces (/24 for IPv4, /64 for
IPv6), no two nodes the same.

What the Nodes hold is the allocator's state: the informer's handlers mark
each Node's subnets used as they are seen (so at start every existing Node's
subnets are taken before any new one is handed out) and free them when the
Node is deleted.  Allocation takes the next free subnet after the last one
handed out, as kube's ``cidrset`` does; a full range is the Node's
``CIDRNotAvailable`` event, tried again with back-off.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.kinds import nodes
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers import TRANSIENT
from k3stw.controllers.events import NORMAL, EventRecorder
from k3stw.machinery.controller import Controller
from k3stw.machinery.informer import each_change
from k3stw.machinery.objects import Object, name_of

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The allocator's Event source (kube's range allocator records as ``cidrAllocator``).
COMPONENT = "cidrAllocator"
#: kube's default subnet sizes per family.
DEFAULT_MASK_SIZES = {4: 24, 6: 64}
#: kube's cidrset refuses more than 2^16 subnets per cluster CIDR.
MAX_PREFIX_DIFFERENCE = 16


class RangeFull(Exception):
    """No subnet of a cluster CIDR is free."""

    def __str__(self) -> str:
        return (
            "CIDR allocation failed; there are no remaining CIDRs left to allocate in the "
            "accepted range"
        )


class CIDRSet:
    """
    One cluster CIDR cut into equal subnets, each free or used (kube's
    ``cidrset``): allocation goes round from the last subnet handed out.
    """

    def __init__(self, cluster: Network, mask_size: int) -> None:
        if not cluster.prefixlen <= mask_size <= cluster.max_prefixlen:
            raise ValueError(
                f"node CIDR mask size {mask_size} must be between the cluster CIDR's "
                f"{cluster.prefixlen} and {cluster.max_prefixlen}"
            )
        if mask_size - cluster.prefixlen > MAX_PREFIX_DIFFERENCE:
            raise ValueError(
                "CIDRSet max subnets exceeded: the node CIDR mask size "
                f"{mask_size} is more than {MAX_PREFIX_DIFFERENCE} bits longer than {cluster}"
            )
        self.cluster = cluster
        self.mask_size = mask_size
        self.size = 1 << (mask_size - cluster.prefixlen)
        self._shift = cluster.max_prefixlen - mask_size
        self._used: set[int] = set()
        self._next = 0

    def subnet(self, index: int) -> Network:
        address = int(self.cluster.network_address) + (index << self._shift)
        return ipaddress.ip_network((address, self.mask_size))

    def allocate(self) -> Network:
        """The next free subnet, now used. :raises RangeFull: none is free."""
        for step in range(self.size):
            index = (self._next + step) % self.size
            if index not in self._used:
                self._used.add(index)
                self._next = (index + 1) % self.size
                return self.subnet(index)
        raise RangeFull()

    def occupy(self, cidr: Network) -> None:
        """Mark the subnets C{cidr} covers used (what does not overlap the range is ignored)."""
        self._used.update(self._covered(cidr))

    def release(self, cidr: Network) -> None:
        self._used.difference_update(self._covered(cidr))

    def _covered(self, cidr: Network) -> range:
        if cidr.version != self.cluster.version or not cidr.overlaps(self.cluster):
            return range(0)
        base = int(self.cluster.network_address)
        first = max(int(cidr.network_address), base) - base
        last = min(int(cidr.broadcast_address), int(self.cluster.broadcast_address)) - base
        return range(first >> self._shift, (last >> self._shift) + 1)

    @property
    def used(self) -> int:
        return len(self._used)


def cidr_sets(cluster_cidrs: str, mask_size: int | None = None) -> list[CIDRSet]:
    """
    The sets of C{cluster_cidrs} (comma-separated, one per family).

    :param mask_size: ``--node-cidr-mask-size``: the subnets' size in a
        single-stack cluster; kube's defaults per family otherwise.
    """
    networks = [
        ipaddress.ip_network(part.strip(), strict=False) for part in cluster_cidrs.split(",")
    ]
    single = len(networks) == 1
    return [
        CIDRSet(
            network,
            mask_size if single and mask_size else DEFAULT_MASK_SIZES[network.version],
        )
        for network in networks
    ]


def pod_cidrs(node: Object) -> tuple[str, ...]:
    """The subnets a Node holds (``spec.podCIDRs``, else ``spec.podCIDR``)."""
    spec = node.get("spec") or {}
    held = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    return tuple(str(cidr) for cidr in held)


class NodeIPAMController(Controller):
    """
    Gives each Node without one a pod subnet per cluster CIDR.

    :param sets: from L{cidr_sets}.
    :param events: records ``CIDRNotAvailable`` and ``CIDRAssignmentFailed``.
    """

    label = "node ipam controller"
    expected = (*TRANSIENT, RangeFull)

    def __init__(
        self,
        informers: ServerInformers,
        store: ObjectStore,
        sets: Sequence[CIDRSet],
        events: EventRecorder,
    ) -> None:
        self.nodes = informers.for_resource(nodes.RESOURCE)
        super().__init__(store.clock, [self.nodes])
        self.store = store
        self.sets = list(sets)
        self.events = events
        #: The subnets each Node holds, or is being given.
        self._held: dict[str, tuple[str, ...]] = {}
        self.add_handler(
            self.nodes,
            each_change(self._seen, deleted=self._gone),
        )

    def _seen(self, node: Object) -> None:
        name, cidrs = name_of(node), pod_cidrs(node)
        if not cidrs:
            self.enqueue(name)
            return
        if self._held.get(name) != cidrs:
            self._release(name)
            self._held[name] = cidrs
            self._mark(cidrs, used=True)

    def _gone(self, node: Object) -> None:
        self._release(name_of(node))

    def _release(self, name: str) -> None:
        cidrs = self._held.pop(name, None)
        if cidrs is not None:
            self._mark(cidrs, used=False)

    def _mark(self, cidrs: Sequence[str], used: bool) -> None:
        for text in cidrs:
            try:
                cidr = ipaddress.ip_network(text, strict=False)
            except ValueError:
                continue
            for cidr_set in self.sets:
                if used:
                    cidr_set.occupy(cidr)
                else:
                    cidr_set.release(cidr)

    async def sync(self, key: str) -> None:
        node = self.nodes.get(key)
        if node is None or pod_cidrs(node):
            return
        cidrs = self._held.get(key)
        if cidrs is None:
            cidrs = self._allocate(node)
            self._held[key] = cidrs
        try:
            await self.store.guaranteed_update(
                nodes.RESOURCE, None, key, lambda current: _with_cidrs(current, cidrs)
            )
        except StatusError as e:
            if e.code == 404:
                return  # deleted meanwhile: the informer's delete frees the subnets
            self._record(node, "CIDRAssignmentFailed")
            raise
        self._log.info("Set node {node} PodCIDR to {cidrs}", node=key, cidrs=list(cidrs))

    def _allocate(self, node: Object) -> tuple[str, ...]:
        allocated: list[tuple[CIDRSet, Network]] = []
        try:
            for cidr_set in self.sets:
                allocated.append((cidr_set, cidr_set.allocate()))
        except RangeFull:
            for cidr_set, cidr in allocated:
                cidr_set.release(cidr)
            self._record(node, "CIDRNotAvailable")
            raise
        return tuple(str(cidr) for _, cidr in allocated)

    def _record(self, node: Object, status: str) -> None:
        # kube's node status events name the Node with its name as uid, in no namespace.
        name = name_of(node)
        reference = {"kind": "Node", "metadata": {"name": name, "uid": name}}
        self.events.emit(reference, NORMAL, status, f"Node {name} status is now: {status}")


def _with_cidrs(node: Object, cidrs: tuple[str, ...]) -> Object:
    if pod_cidrs(node):
        return node  # someone set them first: the informer picks theirs up
    spec = node.setdefault("spec", {})
    spec["podCIDR"] = cidrs[0]
    spec["podCIDRs"] = list(cidrs)
    return node
