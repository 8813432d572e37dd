"""
flannel's ``host-gw`` backend: no tunnel, a plain route to each other
node's range through its public IP on the flannel interface (the nodes
must share a link); the pods' MTU is the interface's.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from k3stw.network.flannel import Entry, Lease, Link, LocalLease

__all__ = ["HostGWBackend", "entries"]


class HostGWBackend:
    """flannel's ``host-gw`` backend."""

    name = "host-gw"

    def __init__(self) -> None:
        self.link: Link | None = None

    async def setup(self, link: Link, subnet: ipaddress.IPv4Network, previous: Any) -> LocalLease:
        self.link = link
        return LocalLease(link.mtu, None)

    def entries(self, lease: Lease) -> tuple[Entry, ...]:
        return entries(lease, self.link.name if self.link is not None else "")


def entries(lease: Lease, device: str) -> tuple[Entry, ...]:
    """The route to another node's range through its public IP (on C{device} when known)."""
    dev = f" dev {device}" if device else ""
    return (
        Entry(
            "ip",
            f"route replace {lease.subnet} via {lease.public_ip}{dev}",
            f"route del {lease.subnet} via {lease.public_ip}{dev}",
        ),
    )
