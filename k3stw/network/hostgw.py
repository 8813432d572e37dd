"""
flannel's ``host-gw`` backend: no tunnel, a plain route to each other
node's range through its public IP on the flannel interface (the nodes
must share a link); the pods' MTU is the interface's.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.interfaces import IReactorProcess

from k3stw.machinery.objects import Object
from k3stw.network.flannel import Entry, Lease, Link, LocalLease, ip_json

__all__ = ["HostGWBackend", "entries"]


class HostGWBackend:
    """flannel's ``host-gw`` backend."""

    name = "host-gw"

    def __init__(self, reactor: IReactorProcess) -> None:
        self.reactor = reactor
        self.link: Link | None = None

    async def setup(self, link: Link, subnet: ipaddress.IPv4Network, previous: Any) -> LocalLease:
        self.link = link
        return LocalLease(link.mtu, None)

    def entries(self, lease: Lease) -> tuple[Entry, ...]:
        return entries(lease, self.link.name if self.link is not None else "")

    async def found(self, cluster: ipaddress.IPv4Network) -> list[Entry]:
        """The routes into the cluster range through a gateway on the interface already."""
        if self.link is None:
            return []
        routes = await ip_json(self.reactor, "route", "show", "dev", self.link.name)
        return found_entries(routes, self.link.name, cluster)


def entries(lease: Lease, device: str) -> tuple[Entry, ...]:
    """The route to another node's range through its public IP (on C{device} when known)."""
    return (route(str(lease.subnet), lease.public_ip, device),)


def route(subnet: str, gateway: str, device: str) -> Entry:
    dev = f" dev {device}" if device else ""
    return Entry(
        "ip",
        f"route replace {subnet} via {gateway}{dev}",
        f"route del {subnet} via {gateway}{dev}",
    )


def found_entries(routes: list[Object], device: str, cluster: ipaddress.IPv4Network) -> list[Entry]:
    """Of C{device}'s routes (``ip -j route show dev``), those into C{cluster} through a gateway."""
    found = []
    for each in routes:
        try:
            network = ipaddress.ip_network(str(each.get("dst")))
        except ValueError:
            continue
        inside = isinstance(network, ipaddress.IPv4Network) and network.subnet_of(cluster)
        if each.get("gateway") and inside and network != cluster:
            found.append(route(str(network), str(each["gateway"]), device))
    return found
