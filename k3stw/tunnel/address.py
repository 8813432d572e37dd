"""
Connect addresses (C{host:port}, C{[v6]:port}) and the agent's default
authorizer: k3s's C{agent} egress mode, loopback kubelet ports only.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from k3stw.hostport import split_host_port

__all__ = ["Authorizer", "loopback_ports_authorizer", "split_host_port"]

#: Decides a peer's Connect: C{(proto, address) -> allowed}.
Authorizer = Callable[[str, str], bool]

_LOOPBACK = frozenset({"127.0.0.1", "::1"})


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
