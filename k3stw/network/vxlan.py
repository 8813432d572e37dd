"""
flannel's vxlan backend: the device ``flannel.1`` (VNI 1, UDP 8472, no
learning, local = the node's address on its interface, MTU = the
interface's - 50, address = the node's range's network address /32), and
for each other node a neighbour entry for its ``flannel.1`` address, an FDB
entry sending its VTEP MAC to its public IP, and an ``onlink`` route to its
range through that address (applied in that order, so that the kernel never
has to ask for the gateway).  The MAC is kept across restarts: the one in
the Node's ``backend-data`` is given to a device made again.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorProcess

from k3stw.machinery.objects import Object
from k3stw.machinery.processes import CommandFailed
from k3stw.network.flannel import (
    Entry,
    Lease,
    Link,
    LocalLease,
    batch,
    command_json,
    ip_json,
)

__all__ = ["DEVICE", "VNI", "VXLAN_PORT", "Device", "VXLANBackend", "device_commands"]

VNI = 1
DEVICE = f"flannel.{VNI}"
#: The kernel's (and flannel's) vxlan port.
VXLAN_PORT = 8472
#: What vxlan adds to each packet (outer IPv4, UDP, vxlan, inner Ethernet).
ENCAP_OVERHEAD = 50


@dataclass(frozen=True)
class Device:
    """The ``flannel.1`` a node needs."""

    link: Link
    subnet: ipaddress.IPv4Network

    @property
    def mtu(self) -> int:
        return self.link.mtu - ENCAP_OVERHEAD

    @property
    def address(self) -> str:
        return f"{self.subnet.network_address}/32"

    def matches(self, found: Object) -> bool:
        """
        Whether C{found} (``ip -j -d addr show dev flannel.1``) is this device
        already: same VNI, local address, lower device, port, no learning,
        MTU and only this address (IPv4).
        """
        data = (found.get("linkinfo") or {}).get("info_data") or {}
        addresses = [
            f"{info.get('local')}/{info.get('prefixlen')}"
            for info in found.get("addr_info") or ()
            if info.get("family") == "inet"
        ]
        return (
            (found.get("linkinfo") or {}).get("info_kind") == "vxlan"
            and data.get("id") == VNI
            and data.get("local") == self.link.address
            and data.get("link") == self.link.name
            and data.get("port") == VXLAN_PORT
            and data.get("learning") is False
            and found.get("mtu") == self.mtu
            and addresses == [self.address]
            and "UP" in (found.get("flags") or ())
        )


def device_commands(device: Device, mac: str | None) -> list[str]:
    """The ``ip -batch`` lines that make C{device} (with the MAC C{mac} when it had one)."""
    address = f" address {mac}" if mac else ""
    return [
        f"link add {DEVICE}{address} type vxlan id {VNI} local {device.link.address}"
        f" dev {device.link.name} dstport {VXLAN_PORT} nolearning",
        f"link set dev {DEVICE} mtu {device.mtu} up",
        f"addr add {device.address} dev {DEVICE}",
    ]


def previous_mac(backend_data: Any) -> str | None:
    """The VtepMAC of C{backend_data} (the Node's, from before), if it names one."""
    if isinstance(backend_data, dict) and isinstance(backend_data.get("VtepMAC"), str):
        return str(backend_data["VtepMAC"]).lower() or None
    return None


class VXLANBackend:
    """flannel's ``vxlan`` backend, through ``ip``."""

    name = "vxlan"

    def __init__(self, reactor: IReactorProcess) -> None:
        self.reactor = reactor

    async def setup(self, link: Link, subnet: ipaddress.IPv4Network, previous: Any) -> LocalLease:
        """``flannel.1`` for C{subnet}: kept if it is already right, else made (again)."""
        device = Device(link, subnet)
        found = await self._device()
        if found is None or not device.matches(found):
            if found is not None:
                await self._ip("link del dev " + DEVICE)
            mac = previous_mac(previous) or (str(found.get("address")) if found else None)
            await self._ip(*device_commands(device, mac))
            found = await self._device()
        if found is None:
            raise ValueError(f"failed to create the vxlan device {DEVICE}")
        return LocalLease(device.mtu, {"VNI": VNI, "VtepMAC": str(found.get("address"))})

    def entries(self, lease: Lease) -> tuple[Entry, ...]:
        return entries(lease)

    async def found(self, cluster: ipaddress.IPv4Network) -> list[Entry]:
        """What ``flannel.1`` holds already (all of it is flannel's)."""
        routes = await ip_json(self.reactor, "route", "show", "dev", DEVICE)
        neighbours = await ip_json(self.reactor, "neigh", "show", "dev", DEVICE)
        fdb = await command_json(self.reactor, "bridge", "fdb", "show", "dev", DEVICE)
        return found_entries(routes, neighbours, fdb)

    async def _device(self) -> Object | None:
        try:
            found = await ip_json(self.reactor, "-d", "addr", "show", "dev", DEVICE)
        except CommandFailed:
            return None
        return found[0] if found else None

    async def _ip(self, *lines: str) -> None:
        await batch(self.reactor, "ip", list(lines))


def entries(lease: Lease) -> tuple[Entry, ...]:
    """
    The neighbour, FDB entry and route for another node's lease; none for a
    lease without a VtepMAC (flannel cannot route to it).
    """
    data = lease.backend_data if isinstance(lease.backend_data, dict) else {}
    mac = str(data.get("VtepMAC") or "").lower()
    if not mac:
        return ()
    gateway = str(lease.gateway)
    return (
        neighbour(gateway, mac),
        forwarding(mac, lease.public_ip),
        route(str(lease.subnet), gateway),
    )


def neighbour(gateway: str, mac: str) -> Entry:
    """The peer's ``flannel.1`` address answered with its MAC, never asked for."""
    return Entry(
        "ip",
        f"neigh replace {gateway} lladdr {mac} dev {DEVICE} nud permanent",
        f"neigh del {gateway} dev {DEVICE}",
    )


def forwarding(mac: str, public_ip: str) -> Entry:
    """Frames for the peer's MAC go, encapsulated, to its public IP."""
    return Entry(
        "bridge",
        f"fdb replace {mac} dev {DEVICE} dst {public_ip} self permanent",
        f"fdb del {mac} dev {DEVICE} dst {public_ip} self",
    )


def route(subnet: str, gateway: str) -> Entry:
    """The peer's range through its ``flannel.1`` address."""
    return Entry(
        "ip",
        f"route replace {subnet} via {gateway} dev {DEVICE} onlink",
        f"route del {subnet} via {gateway} dev {DEVICE}",
    )


def found_entries(
    routes: Sequence[Object], neighbours: Sequence[Object], fdb: Sequence[Object]
) -> list[Entry]:
    """
    The entries on ``flannel.1`` already (``ip -j route``/``neigh show dev
    flannel.1``, ``bridge -j fdb show dev flannel.1``): a node's from before a
    restart, those of nodes deleted meanwhile among them.
    """
    found = [
        neighbour(str(n["dst"]), str(n["lladdr"]).lower())
        for n in neighbours
        if n.get("dst") and n.get("lladdr") and "PERMANENT" in (n.get("state") or ())
    ]
    found += [
        forwarding(str(f["mac"]).lower(), str(f["dst"]))
        for f in fdb
        if f.get("mac") and f.get("dst")
    ]
    found += [
        route(str(r["dst"]), str(r["gateway"]))
        for r in routes
        if r.get("gateway") and "/" in str(r.get("dst"))
    ]
    return found
