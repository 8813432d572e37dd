"""``host:port`` addresses as Go's ``net`` package writes and reads them."""

from __future__ import annotations


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
