"""
Fixtures of the kubelet API's tests: a fake ``/proc`` to read the host's
usage from, and throwaway CAs with the client certificates that the tests
present.
"""

from __future__ import annotations

import datetime
import functools
from pathlib import Path
from typing import Any

from k3stw.kubelet.hostinfo import CPUTimes, HostUsage
from k3stw.pki.certs import SubjectAltNames, Usage, new_ca, new_leaf

NOW = datetime.datetime(2025, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)

PROC_STAT = """\
cpu  1000 20 300 50000 400 5 6 7 80 0
cpu0 500 10 150 25000 200 3 3 4 40 0
intr 1 2 3
ctxt 4242
btime 1740800000
processes 12345
"""

MEMINFO = """\
MemTotal:        8000000 kB
MemFree:         2000000 kB
MemAvailable:    5000000 kB
Inactive(file):  1000000 kB
AnonPages:       1500000 kB
HugePages_Total:       0
"""

VMSTAT = "nr_free_pages 500000\npgfault 987654\npgmajfault 321\n"

NET_DEV = "\n".join(
    [
        "Inter-|   Receive                |  Transmit",
        " face |bytes packets errs drop ...|bytes packets errs drop ...",
        "    lo: 5000 50 0 0 0 0 0 0 5000 50 0 0 0 0 0 0",
        "  eth0: 123456 1000 2 0 0 0 0 0 654321 900 3 0 0 0 0 0",
        "  wlan0: 10 1 0 0 0 0 0 0 20 2 0 0 0 0 0 0",
        "veth1234: 77 1 0 0 0 0 0 0 88 1 0 0 0 0 0 0",
    ]
)

ROUTE = """\
Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT
wlan0\t00000000\t0102000A\t0003\t0\t0\t600\t00000000\t0\t0\t0
"""


def write_proc(root: Path) -> Path:
    """A fake proc root with the files the readers read."""
    files = {
        "stat": PROC_STAT,
        "meminfo": MEMINFO,
        "vmstat": VMSTAT,
        "net/dev": NET_DEV,
        "net/route": ROUTE,
        "sys/kernel/pid_max": "4194304\n",
        "loadavg": "0.50 0.40 0.30 2/345 6789\n",
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def wall_clock_now() -> datetime.datetime:
    """Now, for checks against the real certificates' validity."""
    return datetime.datetime.now(datetime.UTC)


class KubeletPKI:
    """Throwaway CAs and the certificates the tests present."""

    def __init__(self) -> None:
        now = wall_clock_now()
        self.server_ca = new_ca("k3s-server-ca@1", now)
        self.client_ca = new_ca("k3s-client-ca@1", now)
        self.stranger_ca = new_ca("k3s-client-ca@2", now)
        self.serving = new_leaf(
            self.server_ca,
            "node-a",
            Usage.SERVER,
            now,
            alt_names=SubjectAltNames.of(["node-a", "localhost", "127.0.0.1"]),
        )
        self.apiserver = new_leaf(
            self.client_ca, "system:apiserver", Usage.CLIENT, now, ["system:masters"]
        )
        self.named_apiserver = new_leaf(
            self.client_ca, "kube-apiserver-kubelet-client", Usage.CLIENT, now
        )
        self.node = new_leaf(
            self.client_ca, "system:node:other", Usage.CLIENT, now, ["system:nodes"]
        )
        self.stranger = new_leaf(
            self.stranger_ca, "system:apiserver", Usage.CLIENT, now, ["system:masters"]
        )
        self.server_as_client = new_leaf(
            self.client_ca, "system:apiserver", Usage.SERVER, now, ["system:masters"]
        )


@functools.cache
def pki() -> KubeletPKI:
    """The L{KubeletPKI} every test shares, made on first use."""
    return KubeletPKI()


def cpu_and_memory(
    cpu_nanoseconds: int, boot: int, used: int, total: int = 8 * 1024**3
) -> HostUsage:
    """A host's usage with CPU time since C{boot} and C{used} bytes of memory, nothing else."""
    return HostUsage(
        cpu=CPUTimes(cpu_nanoseconds, boot),
        memory={"MemTotal": total, "MemFree": total - used, "Inactive(file)": 0},
        vmstat={},
        interfaces=[],
        default_interface=None,
        filesystem=None,
        pid_max=None,
        processes=None,
    )


async def no_summary(only_cpu_and_memory: bool) -> dict[str, Any]:
    """A ``/stats/summary`` source for kubelet routes whose tests do not read it."""
    return {}
