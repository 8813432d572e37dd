"""
The kubelet's Summary API (``/stats/summary``, ``stats/v1alpha1.Summary``),
built in pure code: the node's CPU, memory, network, filesystem and process
figures from one L{HostUsage} reading, and each pod's from what its runtime
reports (CRI ``ListPodSandboxStats``, as the kubelet's CRI stats provider
does without cAdvisor) and the sizes of its logs and volumes on disk
(L{PodFigures}, gathered by L{k3stw.kubelet.podstats}).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from k3stw.kubelet.hostinfo import FilesystemUsage, HostUsage
from k3stw.machinery.times import rfc3339

if TYPE_CHECKING:
    from k3stw.kubelet.cri import api_pb2 as api


class SampleTime(str):
    """
    A sample's time as the Summary API writes it (RFC 3339, whole seconds),
    that keeps the exact time for ``/metrics/resource``'s millisecond
    timestamps (L{k3stw.kubelet.metrics}).
    """

    at: float

    def __new__(cls, at: float) -> SampleTime:
        made = super().__new__(cls, rfc3339(at))
        made.at = at
        return made


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


class CPURates:
    """A L{CPUUsageRate} for each container and pod, forgetting those gone."""

    def __init__(self, min_interval: float = 1.0) -> None:
        self.min_interval = min_interval
        self._rates: dict[str, CPUUsageRate] = {}
        self._seen: set[str] = set()

    def observe(self, key: str, at: float, usage_core_nanoseconds: int) -> int | None:
        """Take a sample of C{key}'s CPU time; its rate in nanocores, if known."""
        self._seen.add(key)
        rate = self._rates.get(key)
        if rate is None:
            rate = self._rates[key] = CPUUsageRate(self.min_interval)
        return rate.observe(at, usage_core_nanoseconds)

    def forget_unseen(self) -> None:
        """Drop the rates of those not sampled since the last call."""
        self._rates = {k: v for k, v in self._rates.items() if k in self._seen}
        self._seen = set()


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
    used = DiskUse(0, 0) if image_fs else DiskUse(fs.used_bytes, fs.inodes_used)
    return filesystem_stats(fs, time, used)


def filesystem_stats(
    fs: FilesystemUsage | None, time: str, used: DiskUse | None = None
) -> dict[str, Any]:
    """
    ``FsStats``: the capacity and free space of filesystem C{fs}, and what
    C{used} takes of it (omitted when not known).
    """
    stats: dict[str, Any] = {"time": time}
    if fs is not None:
        stats.update(
            availableBytes=fs.available_bytes,
            capacityBytes=fs.capacity_bytes,
            inodesFree=fs.inodes_free,
            inodes=fs.inodes,
        )
    if used is not None:
        stats.update(usedBytes=used.bytes, inodesUsed=used.inodes)
    return stats


# Pods


@dataclass(frozen=True)
class DiskUse:
    """What a directory or file takes on disk (``du``): bytes of blocks and inodes."""

    bytes: int
    inodes: int


@dataclass(frozen=True)
class VolumeUse:
    """
    One of a pod's volumes on disk.

    :ivar ephemeral: it is on the node's root filesystem (an emptyDir or
        configMap), so it counts in the pod's ephemeral storage; tmpfs
        volumes (secrets, projected, emptyDir of medium Memory) do not.
    """

    name: str
    used: DiskUse
    fs: FilesystemUsage | None
    ephemeral: bool


@dataclass(frozen=True)
class PodFigures:
    """
    What one pod's ``PodStats`` are built from.

    :ivar sandbox: the pod's sandbox (its start time and pod reference).
    :ivar stats: the runtime's figures of the sandbox and its containers.
    :ivar containers: the containers to report, by ID (the running ones,
        else the latest of each name: L{current_containers}).
    :ivar logs: what each container's log directory takes, by container name.
    :ivar volumes: the pod's volumes.
    :ivar etc_hosts: the pod's ``etc-hosts`` file, counted in its ephemeral storage.
    """

    sandbox: api.PodSandbox
    stats: api.PodSandboxStats
    containers: Mapping[str, api.Container]
    logs: Mapping[str, DiskUse] = field(default_factory=dict)
    volumes: tuple[VolumeUse, ...] = ()
    etc_hosts: DiskUse | None = None


@dataclass(frozen=True)
class Filesystems:
    """The filesystems pods use: the node's root (logs, volumes) and the runtime's image fs."""

    root: FilesystemUsage | None
    image: FilesystemUsage | None


def _newest_per(items: Iterable[Any], key: Any, running: Any) -> list[Any]:
    """Of each group of C{items} by C{key}: the running ones, or else the newest."""
    groups: dict[Any, list[Any]] = {}
    for item in sorted(items, key=lambda item: item.created_at):
        groups.setdefault(key(item), []).append(item)
    kept = []
    for group in groups.values():
        alive = [item for item in group if running(item)]
        kept.extend(alive or group[-1:])
    return kept


def current_sandboxes(sandboxes: Iterable[api.PodSandbox]) -> list[api.PodSandbox]:
    """A pod's ready sandboxes, or its newest one (the kubelet's ``removeTerminatedPods``)."""
    return _newest_per(sandboxes, lambda s: s.metadata.uid, lambda s: s.state == 0)


def current_containers(containers: Iterable[api.Container]) -> list[api.Container]:
    """
    Each container's running instances, or its newest one (the kubelet's
    ``removeTerminatedContainers``): restarts are not counted twice.
    """
    return _newest_per(
        containers,
        lambda c: (c.pod_sandbox_id, c.metadata.name),
        lambda c: c.state == 1,
    )


def _uint(message: Any, name: str) -> int | None:
    """A C{UInt64Value} field's value; None when the runtime left it out."""
    return int(getattr(message, name).value) if message.HasField(name) else None


def _cri_time(timestamp: int, fallback: str) -> str:
    return SampleTime(timestamp / 1e9) if timestamp else fallback


def _cri_cpu(usage: api.CpuUsage, rates: CPURates, key: str, fallback: str) -> dict[str, Any]:
    """``CPUStats`` from CRI ``CpuUsage``, the rate measured here between samples."""
    total = _uint(usage, "usage_core_nano_seconds")
    at = usage.timestamp / 1e9
    rate = rates.observe(key, at, total) if total is not None and at else None
    return _present(
        time=_cri_time(usage.timestamp, fallback),
        usageNanoCores=rate,
        usageCoreNanoSeconds=total,
    )


def _cri_memory(usage: api.MemoryUsage, fallback: str) -> dict[str, Any]:
    """``MemoryStats`` from CRI ``MemoryUsage``."""
    return _present(
        time=_cri_time(usage.timestamp, fallback),
        availableBytes=_uint(usage, "available_bytes"),
        usageBytes=_uint(usage, "usage_bytes"),
        workingSetBytes=_uint(usage, "working_set_bytes"),
        rssBytes=_uint(usage, "rss_bytes"),
        pageFaults=_uint(usage, "page_faults"),
        majorPageFaults=_uint(usage, "major_page_faults"),
    )


def _interface(usage: api.NetworkInterfaceUsage) -> dict[str, Any]:
    return _present(
        name=usage.name,
        rxBytes=_uint(usage, "rx_bytes"),
        rxErrors=_uint(usage, "rx_errors"),
        txBytes=_uint(usage, "tx_bytes"),
        txErrors=_uint(usage, "tx_errors"),
    )


def _cri_network(usage: api.NetworkUsage, fallback: str) -> dict[str, Any]:
    """
    ``NetworkStats`` of the pod's network namespace: its default interface
    inline, then every interface the runtime listed (containerd 1.6 lists
    none, and gives no timestamp: the sample's time stands in).
    """
    stats: dict[str, Any] = {"time": _cri_time(usage.timestamp, fallback)}
    if usage.HasField("default_interface"):
        stats.update(_interface(usage.default_interface))
    if usage.interfaces:
        stats["interfaces"] = [_interface(i) for i in usage.interfaces]
    return stats


def _sum_use(uses: Iterable[DiskUse | None]) -> DiskUse:
    known = [use for use in uses if use is not None]
    return DiskUse(sum(u.bytes for u in known), sum(u.inodes for u in known))


def _fs_use(usage: api.FilesystemUsage) -> DiskUse:
    """What CRI ``FilesystemUsage`` says is used (containerd counts it every 10 s)."""
    return DiskUse(_uint(usage, "used_bytes") or 0, _uint(usage, "inodes_used") or 0)


def container_stats(
    container: api.Container,
    stats: api.ContainerStats,
    rates: CPURates,
    time: str,
    disks: tuple[Filesystems, DiskUse | None, DiskUse | None] | None,
) -> dict[str, Any]:
    """
    One ``ContainerStats``: CPU and memory from the runtime and, given
    C{disks} (the filesystems, its writable layer's use and its logs'),
    its root filesystem and logs.
    """
    found: dict[str, Any] = {
        "name": container.metadata.name,
        "startTime": SampleTime(container.created_at / 1e9),
    }
    if stats.HasField("cpu"):
        found["cpu"] = _cri_cpu(stats.cpu, rates, container.id, time)
    if stats.HasField("memory"):
        found["memory"] = _cri_memory(stats.memory, time)
    if disks is not None:
        filesystems, layer, logs = disks
        found["rootfs"] = filesystem_stats(filesystems.image, time, layer)
        found["logs"] = filesystem_stats(filesystems.root, time, logs)
    return found


def pod_stats(
    figures: PodFigures,
    rates: CPURates,
    now: float,
    filesystems: Filesystems,
    *,
    only_cpu_and_memory: bool = False,
) -> dict[str, Any]:
    """
    One ``PodStats``: its reference and start, its containers, the pod
    cgroup's CPU and memory, its network namespace's traffic, its volumes and
    its ephemeral storage (its containers' writable layers and logs, the
    volumes on the root filesystem and its ``etc-hosts``, as the kubelet
    adds them up), and its process count.
    """
    time = SampleTime(now)
    meta = figures.sandbox.metadata
    linux = figures.stats.linux
    containers = []
    disk_uses: list[DiskUse | None] = []
    for stats in linux.containers:
        container = figures.containers.get(stats.attributes.id)
        if container is None:
            continue
        layer = _fs_use(stats.writable_layer) if stats.HasField("writable_layer") else None
        logs = figures.logs.get(container.metadata.name)
        disks = None if only_cpu_and_memory else (filesystems, layer, logs)
        containers.append(container_stats(container, stats, rates, time, disks))
        disk_uses += (layer, logs)
    pod: dict[str, Any] = {
        "podRef": {"name": meta.name, "namespace": meta.namespace, "uid": meta.uid},
        "startTime": rfc3339(figures.sandbox.created_at / 1e9),
        "containers": containers,
    }
    if linux.HasField("cpu"):
        pod["cpu"] = _cri_cpu(linux.cpu, rates, "pod " + meta.uid, time)
    if linux.HasField("memory"):
        pod["memory"] = _cri_memory(linux.memory, time)
    if only_cpu_and_memory:
        return pod
    if linux.HasField("network"):
        pod["network"] = _cri_network(linux.network, _cri_time(linux.cpu.timestamp, time))
    if figures.volumes:
        pod["volume"] = [
            {**filesystem_stats(v.fs, time, v.used), "name": v.name} for v in figures.volumes
        ]
    ephemeral = _sum_use(
        [*disk_uses, *(v.used for v in figures.volumes if v.ephemeral), figures.etc_hosts]
    )
    pod["ephemeral-storage"] = filesystem_stats(filesystems.root, time, ephemeral)
    if linux.HasField("process"):
        pod["process_stats"] = _present(process_count=_uint(linux.process, "process_count"))
    return pod


def image_fs_stats(
    info: api.FilesystemUsage, fs: FilesystemUsage | None, time: str
) -> dict[str, Any]:
    """The runtime's image filesystem: its capacity, and what the runtime says images take."""
    return filesystem_stats(fs, _cri_time(info.timestamp, time), _fs_use(info))


def build_summary(
    node_name: str,
    usage: HostUsage,
    now: float,
    usage_nano_cores: int | None,
    *,
    only_cpu_and_memory: bool = False,
    pods: list[dict[str, Any]] | None = None,
    image_fs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """
    The Summary API document (``stats/v1alpha1.Summary``) of a node and its
    C{pods} (``PodStats``, L{pod_stats}); with C{only_cpu_and_memory} the
    node's CPU and memory only, as the kubelet answers
    ``?only_cpu_and_memory=true``.

    :param image_fs: the runtime's image filesystem (L{image_fs_stats});
        None: the data dir's filesystem, with nothing used (no runtime).
    """
    time = SampleTime(now)
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
        node["runtime"] = {"imageFs": image_fs or fs_stats(usage, time, image_fs=True)}
        node["rlimit"] = _present(time=time, maxpid=usage.pid_max, curproc=usage.processes)
    return {"node": node, "pods": pods or []}
