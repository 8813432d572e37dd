"""
``kubectl logs -f`` latency: how long a line a container wrote takes to
reach kubectl, through containerd's log file, the kubelet's follower, the
API server's relay and kubectl.

Each line's start is containerd's own time stamp (``--timestamps``: when it
wrote the line to the log file); its end, when kubectl's output brings it
here.  The clocks are one: the machine's processes and this one share the
host's kernel.  L{follow_latency} is called by tests/test_pod_logs_machine.py
on a pod that writes a line every 50 ms; the figures go in its output.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime
from subprocess import Popen

__all__ = ["follow_latency", "summary"]


def _written_at(stamp: bytes) -> float:
    """containerd's RFC 3339 time (nanoseconds, as kubectl prints it) in seconds."""
    text = stamp.decode()
    seconds, _, rest = text.partition(".")
    fraction = rest.rstrip("Z")
    whole = datetime.fromisoformat(seconds + "+00:00").timestamp()
    return whole + int(fraction.ljust(9, "0")[:9]) / 1e9


def follow_latency(
    start: Callable[[str], Popen[bytes]], kubectl: str, pod: str, lines: int
) -> list[float]:
    """
    Follow C{pod}'s log from now (``logs -f --tail=0 --timestamps``) for
    C{lines} lines; each one's latency in seconds.

    :param start: runs a shell command where kubectl reaches the cluster, its output piped.
    :param kubectl: the kubectl command line (with its kubeconfig).
    """
    follower = start(f"exec timeout 120 {kubectl} logs -f --tail=0 --timestamps {pod}")
    assert follower.stdout is not None
    found: list[float] = []
    try:
        for raw in follower.stdout:
            arrived = time.time()
            stamp, _, _ = raw.partition(b" ")
            found.append(arrived - _written_at(stamp))
            if len(found) >= lines:
                break
    finally:
        follower.kill()
        follower.wait(30)
    return found


def summary(samples: Sequence[float]) -> str:
    """p50, p90, p99 and max in milliseconds."""
    ordered = sorted(samples)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))] * 1000

    return (
        f"{len(ordered)} lines: p50 {at(0.5):.1f} ms, p90 {at(0.9):.1f} ms, "
        f"p99 {at(0.99):.1f} ms, max {ordered[-1] * 1000:.1f} ms"
    )
