"""Loopback helpers shared by the fixtures, the tests and the benchmarks."""

from __future__ import annotations

import socket


def free_port(host: str) -> int:
    """A TCP port that is free on C{host} (a 127.0.0.x address) right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
