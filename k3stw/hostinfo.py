"""Facts about the host a node runs on, read from the kernel without sending anything."""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from pathlib import Path

_SIOCGIFADDR = 0x8915


def hostname() -> str:
    """The node name k3s would pick: the hostname, lowercased."""
    return socket.gethostname().lower()


def default_route_interface(route_table: Path = Path("/proc/net/route")) -> str | None:
    """The interface of the IPv4 default route, if there is one."""
    try:
        lines = route_table.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000":
            return fields[0]
    return None


def interface_address(interface: str) -> str | None:
    """The IPv4 address of C{interface}, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            answer = fcntl.ioctl(
                probe.fileno(), _SIOCGIFADDR, struct.pack("256s", interface.encode()[:15])
            )
        except OSError:
            return None
    return str(ipaddress.IPv4Address(answer[20:24]))


def primary_address() -> str:
    """
    The address k3s advertises when ``--node-ip`` is not given: that of the
    default-route interface, or loopback on a host without one.
    """
    interface = default_route_interface()
    address = interface_address(interface) if interface else None
    return address or "127.0.0.1"
