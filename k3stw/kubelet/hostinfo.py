"""Facts about the host a node runs on, read from the kernel without sending anything."""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from k3stw.machinery.nodes import NO_RUNTIME

_SIOCGIFADDR = 0x8915


def hostname() -> str:
    """The node name k3s would pick: the hostname, lowercased."""
    return socket.gethostname().lower()


def default_route_interface(route_table: Path = Path("/proc/net/route")) -> str | None:
    """The interface of the IPv4 default route, if there is one."""
    try:
        lines = route_table.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000":
            return fields[0]
    return None


def interface_address(interface: str) -> str | None:
    """The IPv4 address of C{interface}, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            answer = fcntl.ioctl(
                probe.fileno(), _SIOCGIFADDR, struct.pack("256s", interface.encode()[:15])
            )
        except OSError:
            return None
    return str(ipaddress.IPv4Address(answer[20:24]))


def primary_address() -> str:
    """
    The address k3s advertises when ``--node-ip`` is not given: that of the
    default-route interface, or loopback on a host without one.
    """
    interface = default_route_interface()
    address = interface_address(interface) if interface else None
    return address or "127.0.0.1"


# What the kubelet reports about the machine.  Every reader takes the file it
# reads as a parameter (tests point it at fakes) and answers something sensible
# when the file is missing: a node with an unknown boot id is still a node.

#: Go's names for the machine types ``uname -m`` reports (``GOARCH``).
_GO_ARCHITECTURES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv6l": "arm",
    "armv7l": "arm",
    "armv8l": "arm",
    "i386": "386",
    "i486": "386",
    "i586": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "ppc64": "ppc64",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "loongarch64": "loong64",
    "mips64": "mips64",
}


def _read_first_line(path: Path) -> str:
    """The first line of C{path}, stripped; "" when it cannot be read."""
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            return f.readline().strip()
    except OSError:
        return ""


def cpu_count(online: Path = Path("/sys/devices/system/cpu/online")) -> int:
    """
    The number of online CPUs, from the kernel's range list (``0-3,6``);
    Python's count, or 1, when that file is missing or unreadable.
    """
    total = 0
    text = _read_first_line(online)
    try:
        for part in text.split(","):
            if not part:
                continue
            first, _, last = part.partition("-")
            total += int(last or first) - int(first) + 1
    except ValueError:
        total = 0
    return total if total > 0 else (os.cpu_count() or 1)


def memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """The host's memory (``MemTotal``) in bytes; 0 when it cannot be read."""
    return _meminfo_values(meminfo).get("MemTotal", 0)


def _meminfo_values(meminfo: Path) -> dict[str, int]:
    """C{meminfo}'s values in bytes, by name; {} when it cannot be read."""
    try:
        lines = meminfo.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return {}
    values: dict[str, int] = {}
    for line in lines:
        name, _, rest = line.partition(":")
        fields = rest.split()
        try:
            value = int(fields[0])
        except (IndexError, ValueError):
            continue
        unit = fields[1].lower() if len(fields) > 1 else ""
        values[name.strip()] = value * 1024 if unit == "kb" else value
    return values


def storage_bytes(directory: Path) -> int:
    """
    The size of the filesystem holding C{directory} (or its nearest existing
    parent, as the data dir may not exist yet); 0 when none can be examined.
    """
    stat = _statvfs_nearest(directory)
    return stat.f_blocks * stat.f_frsize if stat is not None else 0


def machine_id(
    paths: tuple[Path, ...] = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id")),
) -> str:
    """The systemd/D-Bus machine id, or "" on a host without one."""
    for path in paths:
        found = _read_first_line(path)
        if found:
            return found
    return ""


def boot_id(path: Path = Path("/proc/sys/kernel/random/boot_id")) -> str:
    """The kernel's id of the current boot, or ""."""
    return _read_first_line(path)


def system_uuid(
    product_uuid: Path = Path("/sys/class/dmi/id/product_uuid"), machine: str | None = None
) -> str:
    """
    The firmware's system UUID when it is readable (it usually needs root);
    otherwise one derived from the machine id, so that it is stable across
    boots; "" when neither is known.

    :param machine: the machine id (read from the host when None).
    """
    found = _read_first_line(product_uuid).lower()
    if found:
        return found
    machine = machine_id() if machine is None else machine
    try:
        return str(uuid.UUID(hex=machine))
    except ValueError:
        return str(uuid.uuid5(uuid.NAMESPACE_OID, machine)) if machine else ""


def kernel_version() -> str:
    """The running kernel's release, as ``uname -r`` prints it."""
    return os.uname().release


def os_image(
    paths: tuple[Path, ...] = (Path("/etc/os-release"), Path("/usr/lib/os-release")),
) -> str:
    """The distribution's ``PRETTY_NAME`` (os-release(5)), or "Linux"."""
    for path in paths:
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            name, _, value = line.strip().partition("=")
            if name == "PRETTY_NAME":
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                    value = value[1:-1]
                if value:
                    return value
    return "Linux"


def architecture(machine: str | None = None) -> str:
    """
    The machine type as Go names it (``amd64``, ``arm64``, ...), the name the
    ``kubernetes.io/arch`` label carries.

    :param machine: ``uname -m`` (the host's when None).
    """
    machine = os.uname().machine if machine is None else machine
    return _GO_ARCHITECTURES.get(machine.lower(), machine.lower())


@dataclass(frozen=True)
class HostFacts:
    """What a kubelet reports about its host in the Node's status."""

    hostname: str
    cpus: int
    memory_bytes: int
    storage_bytes: int
    machine_id: str
    boot_id: str
    system_uuid: str
    kernel_version: str
    os_image: str
    operating_system: str
    architecture: str
    #: ``<runtime>://<version>`` as the runtime answers CRI Version (none: L{NO_RUNTIME}).
    container_runtime_version: str = NO_RUNTIME
    # The eviction signals (None: unknown, which is never pressure).
    #: ``MemAvailable``.
    memory_available_bytes: int | None = None
    #: The filesystem of the data dir (the kubelet's nodefs).
    nodefs: FilesystemUsage | None = None
    #: The filesystem of containerd's root (the imagefs).
    imagefs: FilesystemUsage | None = None
    #: The kernel's pid limit and the tasks there are now.
    pid_max: int | None = None
    processes: int | None = None


def read_host_facts(data_dir: str | Path) -> HostFacts:
    """
    This host's facts, with ephemeral storage measured where C{data_dir} lives.
    Reads a few small files under ``/proc``, ``/sys`` and ``/etc``, and
    ``statvfs`` of the data dir and of containerd's root.
    """
    machine = machine_id()
    memory = _meminfo_values(Path("/proc/meminfo"))
    pid_max, processes = read_process_limits()
    return HostFacts(
        hostname=hostname(),
        cpus=cpu_count(),
        memory_bytes=memory.get("MemTotal", 0),
        storage_bytes=storage_bytes(Path(data_dir)),
        machine_id=machine,
        boot_id=boot_id(),
        system_uuid=system_uuid(machine=machine),
        kernel_version=kernel_version(),
        os_image=os_image(),
        operating_system="linux",
        architecture=architecture(),
        memory_available_bytes=memory.get("MemAvailable"),
        nodefs=filesystem_usage(Path(data_dir)),
        imagefs=filesystem_usage(Path(data_dir) / "agent" / "containerd"),
        pid_max=pid_max,
        processes=processes,
    )


# What the kubelet's Summary API reports about the machine's use: counters and
# gauges read afresh on every request.  The readers take the proc root (tests
# point it at a directory of fixture files) and answer None or nothing when a
# file is missing or garbled, so that one unreadable file empties one field,
# not the whole summary.

#: Interfaces cAdvisor leaves out of a node's network stats: loopback, the
#: host ends of pods' veth pairs and container engines' bridges.
_IGNORED_INTERFACE_PREFIXES = ("lo", "veth", "docker", "nerdctl")


def read_meminfo(proc: Path = Path("/proc")) -> dict[str, int]:
    """``/proc/meminfo`` as a mapping of its names to bytes; {} when unreadable."""
    return _meminfo_values(proc / "meminfo")


def read_vmstat(proc: Path = Path("/proc")) -> dict[str, int]:
    """``/proc/vmstat``'s counters (``pgfault``, ``pgmajfault``, ...); {} when unreadable."""
    try:
        lines = (proc / "vmstat").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return {}
    values: dict[str, int] = {}
    for line in lines:
        fields = line.split()
        if len(fields) == 2 and fields[1].isdigit():
            values[fields[0]] = int(fields[1])
    return values


@dataclass(frozen=True)
class CPUTimes:
    """What ``/proc/stat`` says of the whole machine's CPUs."""

    #: CPU time spent working, summed over all CPUs, since boot.
    usage_core_nanoseconds: int
    #: When the machine booted, in seconds since the epoch (None if unknown).
    boot_time: int | None


def read_cpu_times(
    proc: Path = Path("/proc"), ticks_per_second: int | None = None
) -> CPUTimes | None:
    """
    The machine's cumulative busy CPU time, from the ``cpu`` line of
    ``/proc/stat``: user, nice, system, irq, softirq and steal; not idle or
    iowait.  (guest time is already inside user.)  None when unreadable.

    :param ticks_per_second: ``USER_HZ`` (the host's ``SC_CLK_TCK`` when None).
    """
    try:
        lines = (proc / "stat").read_text(encoding="ascii", errors="replace").splitlines()
    except OSError:
        return None
    busy: int | None = None
    boot: int | None = None
    for line in lines:
        fields = line.split()
        if not fields:
            continue
        try:
            if fields[0] == "cpu":
                user, nice, system, _idle, _iowait, irq, softirq, steal = (
                    int(f) for f in (fields[1:9] + ["0"] * 8)[:8]
                )
                busy = user + nice + system + irq + softirq + steal
            elif fields[0] == "btime" and len(fields) > 1:
                boot = int(fields[1])
        except ValueError:
            continue
    if busy is None:
        return None
    hz = ticks_per_second or os.sysconf("SC_CLK_TCK")
    return CPUTimes(busy * 1_000_000_000 // hz, boot)


@dataclass(frozen=True)
class InterfaceCounters:
    """One network interface's totals since it came up."""

    name: str
    rx_bytes: int
    rx_errors: int
    tx_bytes: int
    tx_errors: int


def read_interfaces(proc: Path = Path("/proc")) -> list[InterfaceCounters]:
    """
    The counters of the host's interfaces in ``/proc/net/dev``, leaving out
    those cAdvisor leaves out of a node's stats (loopback, veth, bridges of
    container engines); [] when unreadable.
    """
    try:
        lines = (proc / "net" / "dev").read_text(encoding="ascii", errors="replace").splitlines()
    except OSError:
        return []
    interfaces = []
    # Two header lines, then "name: rx bytes packets errs drop fifo frame
    # compressed multicast tx bytes packets errs ...".
    for line in lines[2:]:
        name, sep, rest = line.partition(":")
        name = name.strip()
        fields = rest.split()
        if not sep or len(fields) < 11 or name.startswith(_IGNORED_INTERFACE_PREFIXES):
            continue
        try:
            interfaces.append(
                InterfaceCounters(
                    name, int(fields[0]), int(fields[2]), int(fields[8]), int(fields[10])
                )
            )
        except ValueError:
            continue
    return interfaces


@dataclass(frozen=True)
class FilesystemUsage:
    """Sizes and inodes of one filesystem, from ``statvfs``."""

    capacity_bytes: int
    available_bytes: int
    used_bytes: int
    inodes: int
    inodes_free: int

    @property
    def inodes_used(self) -> int:
        return self.inodes - self.inodes_free


def _statvfs_nearest(directory: Path) -> os.statvfs_result | None:
    """``statvfs`` of C{directory} or of its nearest existing parent; None if none answers."""
    path = directory.absolute()
    while True:
        try:
            return os.statvfs(path)
        except OSError:
            if path.parent == path:
                return None
            path = path.parent


def filesystem_usage(directory: Path) -> FilesystemUsage | None:
    """
    The filesystem holding C{directory} (or its nearest existing parent);
    used bytes count the blocks reserved for root, as ``df`` does.
    """
    stat = _statvfs_nearest(directory)
    if stat is None:
        return None
    return FilesystemUsage(
        capacity_bytes=stat.f_blocks * stat.f_frsize,
        available_bytes=stat.f_bavail * stat.f_frsize,
        used_bytes=(stat.f_blocks - stat.f_bfree) * stat.f_frsize,
        inodes=stat.f_files,
        inodes_free=stat.f_ffree,
    )


def read_process_limits(proc: Path = Path("/proc")) -> tuple[int | None, int | None]:
    """
    ``(pid_max, running)``: the kernel's limit on process ids and how many
    tasks exist now (the total in ``/proc/loadavg``, which counts threads as
    ``sysinfo(2)``, the kubelet's source, does); None for what cannot be read.
    """
    limit_text = _read_first_line(proc / "sys" / "kernel" / "pid_max")
    limit = int(limit_text) if limit_text.isdigit() else None
    fields = _read_first_line(proc / "loadavg").split()
    total = fields[3].partition("/")[2] if len(fields) > 3 else ""
    if total.isdigit():
        return limit, int(total)
    try:
        return limit, sum(1 for entry in proc.iterdir() if entry.name.isdigit())
    except OSError:
        return limit, None


@dataclass(frozen=True)
class HostUsage:
    """One reading of what the machine is using, for the Summary API."""

    cpu: CPUTimes | None
    memory: dict[str, int]
    vmstat: dict[str, int]
    interfaces: list[InterfaceCounters]
    default_interface: str | None
    filesystem: FilesystemUsage | None
    pid_max: int | None
    processes: int | None


def read_host_usage(data_dir: str | Path, proc: Path = Path("/proc")) -> HostUsage:
    """Read the machine's usage now, with the filesystem measured where C{data_dir} lives."""
    pid_max, processes = read_process_limits(proc)
    return HostUsage(
        cpu=read_cpu_times(proc),
        memory=read_meminfo(proc),
        vmstat=read_vmstat(proc),
        interfaces=read_interfaces(proc),
        default_interface=default_route_interface(proc / "net" / "route"),
        filesystem=filesystem_usage(Path(data_dir)),
        pid_max=pid_max,
        processes=processes,
    )
