"""
The kubelet's Summary API (``/stats/summary``, ``stats/v1alpha1.Summary``):
the node's CPU, memory, network, filesystem and process figures, built from
one L{HostUsage} reading in pure code.
"""

from __future__ import annotations

from typing import Any

from k3stw.kubelet.hostinfo import HostUsage
from k3stw.machinery.times import rfc3339


class CPUUsageRate:
    """
    ``usageNanoCores``: how fast the cumulative CPU time grew between the
    last two samples taken at least C{min_interval} seconds apart.  Closer
    samples answer the last rate, since a rate over a few milliseconds
    measures clock ticks more than use.
    """

    def __init__(self, min_interval: float = 1.0) -> None:
        self.min_interval = min_interval
        self._previous: tuple[float, int] | None = None
        self._rate: int | None = None

    def observe(self, at: float, usage_core_nanoseconds: int) -> int | None:
        """Take a sample; the rate in nanocores, or None before two samples."""
        previous = self._previous
        if previous is None:
            self._previous = (at, usage_core_nanoseconds)
            return None
        elapsed = at - previous[0]
        if elapsed < self.min_interval:
            return self._rate
        if usage_core_nanoseconds >= previous[1]:
            self._rate = int((usage_core_nanoseconds - previous[1]) / elapsed)
        self._previous = (at, usage_core_nanoseconds)
        return self._rate


def _present(**fields: Any) -> dict[str, Any]:
    """Drop None fields, as Go's ``omitempty`` drops nil pointers."""
    return {name: value for name, value in fields.items() if value is not None}


def memory_stats(usage: HostUsage, time: str) -> dict[str, Any]:
    """
    A node's ``MemoryStats`` from ``/proc/meminfo``: usage is what is not
    free, the working set leaves out the page cache the kernel may drop
    (``Inactive(file)``), and available is capacity less the working set
    (the kubelet's ``memory.available``).
    """
    meminfo = usage.memory
    total = meminfo.get("MemTotal")
    free = meminfo.get("MemFree")
    if total is None or free is None:
        return {"time": time}
    used = max(total - free, 0)
    working_set = max(used - meminfo.get("Inactive(file)", 0), 0)
    return _present(
        time=time,
        availableBytes=total - working_set,
        usageBytes=used,
        workingSetBytes=working_set,
        rssBytes=meminfo.get("AnonPages"),
        pageFaults=usage.vmstat.get("pgfault"),
        majorPageFaults=usage.vmstat.get("pgmajfault"),
    )


def network_stats(usage: HostUsage, time: str) -> dict[str, Any]:
    """
    A node's ``NetworkStats``: every interface, and inline the one of the
    default route (the kubelet inlines ``eth0``; the default route is what
    that name means on hosts that call it otherwise).
    """
    interfaces = [
        {
            "name": i.name,
            "rxBytes": i.rx_bytes,
            "rxErrors": i.rx_errors,
            "txBytes": i.tx_bytes,
            "txErrors": i.tx_errors,
        }
        for i in usage.interfaces
    ]
    stats: dict[str, Any] = {"time": time}
    main = next((i for i in interfaces if i["name"] == usage.default_interface), None)
    if main is None and interfaces:
        main = interfaces[0]
    if main is not None:
        stats.update(main)
    stats["interfaces"] = interfaces
    return stats


def fs_stats(usage: HostUsage, time: str, *, image_fs: bool = False) -> dict[str, Any]:
    """
    ``FsStats`` of the filesystem holding the data dir.  As the image
    filesystem (where the runtime will keep images, under the same data dir)
    it reports no bytes used: no image is stored yet.
    """
    fs = usage.filesystem
    if fs is None:
        return {"time": time}
    return {
        "time": time,
        "availableBytes": fs.available_bytes,
        "capacityBytes": fs.capacity_bytes,
        "usedBytes": 0 if image_fs else fs.used_bytes,
        "inodesFree": fs.inodes_free,
        "inodes": fs.inodes,
        "inodesUsed": 0 if image_fs else fs.inodes_used,
    }


def build_summary(
    node_name: str,
    usage: HostUsage,
    now: float,
    usage_nano_cores: int | None,
    *,
    only_cpu_and_memory: bool = False,
) -> dict[str, Any]:
    """
    The Summary API document (``stats/v1alpha1.Summary``) of a node that
    runs no pods yet; with C{only_cpu_and_memory} the node's CPU and memory
    only, as the kubelet answers ``?only_cpu_and_memory=true``.
    """
    time = rfc3339(now)
    boot = usage.cpu.boot_time if usage.cpu is not None else None
    node: dict[str, Any] = {
        "nodeName": node_name,
        "systemContainers": [],
        "startTime": rfc3339(boot) if boot is not None else None,
        "cpu": _present(
            time=time,
            usageNanoCores=usage_nano_cores,
            usageCoreNanoSeconds=(
                usage.cpu.usage_core_nanoseconds if usage.cpu is not None else None
            ),
        ),
        "memory": memory_stats(usage, time),
    }
    if not only_cpu_and_memory:
        node["network"] = network_stats(usage, time)
        node["fs"] = fs_stats(usage, time)
        node["runtime"] = {"imageFs": fs_stats(usage, time, image_fs=True)}
        node["rlimit"] = _present(time=time, maxpid=usage.pid_max, curproc=usage.processes)
    return {"node": node, "pods": []}
