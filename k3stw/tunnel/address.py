"""
Connect addresses (C{host:port}, C{[v6]:port}) and the agent's default
authorizer: k3s's C{agent} egress mode, loopback kubelet ports only.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

__all__ = ["Authorizer", "loopback_ports_authorizer", "split_host_port"]

#: Decides a peer's Connect: C{(proto, address) -> allowed}.
Authorizer = Callable[[str, str], bool]

_LOOPBACK = frozenset({"127.0.0.1", "::1"})


def split_host_port(address: str) -> tuple[str, int]:
    """
    Split C{host:port} or C{[v6]:port}, as Go's C{net.SplitHostPort}.

    :raises ValueError: no port, a port that is not 0-65535, or stray brackets.
    """
    if address.startswith("["):
        host, bracket, rest = address[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"address {address!r}: missing port")
        port_text = rest[1:]
    else:
        host, colon, port_text = address.rpartition(":")
        if not colon:
            raise ValueError(f"address {address!r}: missing port")
        if ":" in host or "[" in host or "]" in host:
            raise ValueError(f"address {address!r}: too many colons")
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"address {address!r}: invalid port")
    return host, int(port_text)


def loopback_ports_authorizer(ports: Collection[int]) -> Authorizer:
    """
    Allow C{tcp} to C{127.0.0.1} or C{::1} on one of C{ports}, nothing else
    (k3s's agent authorizer in its default C{agent} egress mode, with the
    kubelet port and 10010).
    """
    allowed = frozenset(ports)

    def authorize(proto: str, address: str) -> bool:
        if proto != "tcp":
            return False
        try:
            host, port = split_host_port(address)
        except ValueError:
            return False
        return host in _LOOPBACK and port in allowed

    return authorize
