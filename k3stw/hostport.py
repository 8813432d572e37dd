"""``host:port`` addresses as Go's ``net`` package writes and reads them, and dialling them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IAddress, IProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol

#: The endpoint of a ``host:port`` address.
Dial = Callable[[str], IStreamClientEndpoint]


def join_host_port(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 host (``[::1]:6443``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(address: str) -> tuple[str, int]:
    """
    Split ``host:port`` or ``[v6]:port``, as Go's ``net.SplitHostPort``.

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


def hostname_dialer(reactor: Any, timeout: float = 10.0) -> Dial:
    """
    Dial addresses with L{HostnameEndpoint} (names resolved, IPv4 and IPv6),
    and IP addresses straight with a TCP endpoint: ``HostnameEndpoint`` would
    resolve them in a thread on every dial, and report a refused connection
    only at its next attempt (0.3 s later), which would slow every failover.

    :param reactor: the reactor (an ``IReactorTCP`` and ``IReactorTime``), passed in.
    """

    def dial(address: str) -> IStreamClientEndpoint:
        host, port = split_host_port(address)
        if isIPAddress(host):
            return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
        if isIPv6Address(host):
            return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
        return HostnameEndpoint(reactor, host, port, timeout=timeout)

    return dial


class _OneProtocol(Factory[Protocol]):
    # Twisted's connectProtocol logs "Starting factory <... object at 0x...>" and
    # "Stopping factory" around every connection: nothing a user can act on.
    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self._protocol


def connect_protocol(endpoint: IStreamClientEndpoint, protocol: Protocol) -> Deferred[IProtocol]:
    """Twisted's C{connectProtocol}, without its two log lines per connection."""
    connecting: Deferred[IProtocol] = endpoint.connect(_OneProtocol(protocol))
    return connecting
