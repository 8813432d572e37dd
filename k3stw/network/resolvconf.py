"""
The node's resolv.conf, read and chosen as k3s chooses it: ``/etc/resolv.conf``,
else systemd-resolved's ``/run/systemd/resolve/resolv.conf``; a file naming a
loopback, multicast or link-local nameserver (a local stub the pods and the
cluster DNS could not reach) is passed over, and when neither will do k3s's
stub of Google's resolvers stands in.  ``--resolv-conf`` is taken unchecked.

Both the cluster DNS (its upstreams: CoreDNS's ``forward . /etc/resolv.conf``)
and the kubelet (the host search domains of pods' resolv.conf) read it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

CANDIDATES = ("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf")
#: What k3s writes when no host file will do.
FALLBACK_NAMESERVERS = ("8.8.8.8", "2001:4860:4860::8888")


@dataclass(frozen=True)
class ResolvConf:
    """The parts of a resolv.conf a node uses."""

    nameservers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    #: The file read (None: k3s's fallback).
    path: str | None = None


def parse(text: str, path: str | None = None) -> ResolvConf:
    """C{nameserver}, C{search}/C{domain} (the last one wins, as glibc's) and C{options} lines."""
    nameservers: list[str] = []
    searches: list[str] = []
    options: list[str] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if not fields:
            continue
        keyword, values = fields[0], fields[1:]
        if keyword == "nameserver" and values:
            nameservers.append(values[0])
        elif keyword in ("search", "domain"):
            searches = values
        elif keyword == "options":
            options += values
    return ResolvConf(tuple(nameservers), tuple(searches), tuple(options), path)


def usable(conf: ResolvConf) -> bool:
    """Whether every nameserver is one pods can reach (and there is one)."""
    if not conf.nameservers:
        return False
    for server in conf.nameservers:
        try:
            address = ipaddress.ip_address(server.split("%", 1)[0])
        except ValueError:
            return False
        if address.is_loopback or address.is_multicast or address.is_link_local:
            return False
    return True


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def pick(
    override: str | None = None,
    candidates: Sequence[str] = CANDIDATES,
    read: Callable[[str], str | None] = _read,
) -> ResolvConf:
    """The node's resolv.conf by k3s's rules (C{override}: ``--resolv-conf``)."""
    if override:
        return parse(read(override) or "", override)
    for path in candidates:
        text = read(path)
        if text is not None:
            conf = parse(text, path)
            if usable(conf):
                return conf
    return ResolvConf(FALLBACK_NAMESERVERS)
