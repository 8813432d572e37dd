"""
The load balancer's memory of the server list across restarts:
``<data-dir>/agent/etc/<name>.json`` with k3s's keys, ``ServerURL`` and
``ServerAddresses``. An agent that restarts while its ``--server`` host is down
still reaches the other servers, as long as ``--server`` did not change.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from k3stw.files import write_atomically


def state_file(data_dir: Path, name: str = "k3s-agent-load-balancer") -> Path:
    """Where the load balancer ``name`` keeps its server list."""
    return data_dir / "agent" / "etc" / f"{name}.json"


def default_address(server_url: str) -> str:
    """
    The ``host:port`` of a server URL, with the scheme's port if it has none
    (443 for https, 80 for http), as k3s seeds its default server.

    :raises ValueError: if the URL has no host.
    """
    parts = urlsplit(server_url)
    host = parts.hostname
    if not host:
        raise ValueError(f"server URL {server_url!r} has no host")
    port = parts.port or (80 if parts.scheme == "http" else 443)
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


def load_addresses(path: Path, server_url: str) -> list[str] | None:
    """
    The addresses saved at ``path``, if it was saved for the same ``server_url``.

    :return: None when the file is missing, unreadable, not k3s's shape, or
        written for another default server.
    """
    try:
        saved = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("ServerURL") != server_url:
        return None
    addresses = saved.get("ServerAddresses")
    if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
        return None
    return list(addresses)


def save_addresses(path: Path, server_url: str, addresses: Sequence[str]) -> None:
    """Write the server list atomically (a reader sees the old list or the new)."""
    document = {"ServerURL": server_url, "ServerAddresses": list(addresses)}
    write_atomically(path, json.dumps(document).encode() + b"\n", 0o600)
