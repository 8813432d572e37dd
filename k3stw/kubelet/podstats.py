"""
What the Summary API reports of a node's pods, gathered: the runtime's
figures (CRI ``ListPodSandbox``, ``ListContainers``, ``ListPodSandboxStats``
and ``ImageFsInfo``, as the kubelet's CRI stats provider asks without
cAdvisor) and what each pod's logs, volumes and ``etc-hosts`` take on disk,
measured off the reactor thread (the kubelet's ``du``).  The documents are
built by L{k3stw.kubelet.stats}.

Loaded only on a node with a container runtime (it needs the CRI messages).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.threads import deferToThreadPool

from k3stw.kubelet.cri import api_pb2 as api
from k3stw.kubelet.cri.runtime import CRIError, Runtime
from k3stw.kubelet.hostinfo import filesystem_usage
from k3stw.kubelet.pods.spec import POD_LOGS, log_directory
from k3stw.kubelet.stats import (
    CPURates,
    DiskUse,
    Filesystems,
    PodFigures,
    VolumeUse,
    current_containers,
    current_sandboxes,
    image_fs_stats,
    pod_stats,
)
from k3stw.kubelet.volumes.manager import KUBELET_ROOT
from k3stw.machinery.times import rfc3339

T = TypeVar("T")
#: Runs a blocking function somewhere else; its result.
InThread = Callable[[Callable[[], T]], Deferred[T]]


def disk_use(path: Path) -> DiskUse | None:
    """
    What C{path} takes, as ``du -x -s``: the blocks of every file under it on
    its filesystem, hard links once, and its inodes; None if it is not there.
    """
    try:
        top = os.lstat(path)
    except OSError:
        return None
    seen: set[tuple[int, int]] = set()
    size = inodes = 0
    pending = [(path, top)]
    while pending:
        where, info = pending.pop()
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        size += info.st_blocks * 512
        inodes += 1
        if not stat.S_ISDIR(info.st_mode):
            continue
        try:
            entries = list(os.scandir(where))
        except OSError:
            continue
        for entry in entries:
            try:
                child = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if child.st_dev == top.st_dev:
                pending.append((Path(entry.path), child))
    return DiskUse(size, inodes)


@dataclass(frozen=True)
class PodDisk:
    """What one pod has on disk (L{measure_pod})."""

    logs: dict[str, DiskUse]
    volumes: tuple[VolumeUse, ...]
    etc_hosts: DiskUse | None


def measure_pod(
    kubelet_root: Path, pod_logs: Path, sandbox: api.PodSandbox, containers: Iterable[str]
) -> PodDisk:
    """
    The sizes of a pod's container log directories, of each volume under
    ``pods/<uid>/volumes/<plugin>/<name>`` (on the node's root filesystem or
    not: tmpfs volumes are no ephemeral storage) and of its ``etc-hosts``.
    """
    meta = sandbox.metadata
    pod = {"metadata": {"namespace": meta.namespace, "name": meta.name, "uid": meta.uid}}
    logs_dir = Path(log_directory(pod, str(pod_logs)))
    logs = {}
    for name in containers:
        used = disk_use(logs_dir / name)
        if used is not None:
            logs[name] = used
    pod_dir = kubelet_root / "pods" / meta.uid
    try:
        root_device = os.stat(kubelet_root).st_dev
    except OSError:
        root_device = -1
    volumes = []
    for plugin in sorted(_children(pod_dir / "volumes")):
        for volume in sorted(_children(plugin)):
            used = disk_use(volume)
            if used is None:
                continue
            ephemeral = volume.stat().st_dev == root_device
            volumes.append(VolumeUse(volume.name, used, filesystem_usage(volume), ephemeral))
    return PodDisk(logs, tuple(volumes), disk_use(pod_dir / "etc-hosts"))


def _children(directory: Path) -> list[Path]:
    try:
        return [entry for entry in directory.iterdir() if entry.is_dir()]
    except OSError:
        return []


async def _sandbox_stats(runtime: Runtime, sandboxes: Iterable[str]) -> list[api.PodSandboxStats]:
    """
    The stats of each ready sandbox, asked for one by one: containerd 1.6
    fails the whole list when any sandbox is stopped (a finished pod's), and
    one stopped meanwhile is left out.
    """

    async def one(sandbox_id: str) -> list[api.PodSandboxStats]:
        try:
            return await runtime.list_pod_sandbox_stats(api.PodSandboxStatsFilter(id=sandbox_id))
        except CRIError as e:
            if e.unavailable:
                raise
            return []

    asked = [Deferred.fromCoroutine(one(sandbox_id)) for sandbox_id in sandboxes]
    try:
        found = await gatherResults(asked, consumeErrors=True)
    except FirstError as e:
        e.subFailure.raiseException()
        raise
    return [stats for each in found for stats in each]


def in_reactor_threads(reactor: Any) -> InThread[Any]:
    """Runs blocking work in C{reactor}'s thread pool."""

    def run(work: Callable[[], T]) -> Deferred[T]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), work)

    return run


class PodStatsProvider:
    """
    The pods' ``PodStats`` and the runtime's image filesystem, read from the
    node's runtime (none before it answered: no pods then).

    :param runtime: the runtime, once it answered.
    :param in_thread: runs the disk measures (L{in_reactor_threads}; tests
        run them at once).
    :param kubelet_root: where the pods' volumes and ``etc-hosts`` are.
    :param pod_logs: where the containers' logs are.
    """

    def __init__(
        self,
        runtime: Callable[[], Runtime | None],
        in_thread: InThread[Any],
        kubelet_root: Path = Path(KUBELET_ROOT),
        pod_logs: Path = Path(POD_LOGS),
    ) -> None:
        self.runtime = runtime
        self.in_thread = in_thread
        self.kubelet_root = kubelet_root
        self.pod_logs = pod_logs
        self.rates = CPURates()

    async def collect(
        self, now: float, only_cpu_and_memory: bool = False
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """
        The ``PodStats`` of every pod with a sandbox, by namespace and name,
        and the runtime's ``imageFs`` (None with C{only_cpu_and_memory}).

        :raises CRIError: if the runtime does not answer.
        """
        runtime = self.runtime()
        if runtime is None:
            return [], None
        sandboxes = await runtime.list_pod_sandboxes()
        containers = await runtime.list_containers()
        by_sandbox = {s.id: s for s in current_sandboxes(sandboxes) if s.state == api.SANDBOX_READY}
        stats = await _sandbox_stats(runtime, by_sandbox)
        kept = {c.id: c for c in current_containers(containers)}
        filesystems = Filesystems(None, None)
        image_fs = None
        disks: dict[str, PodDisk] = {}
        if not only_cpu_and_memory:
            images = (await runtime.image_fs_info()).image_filesystems
            mountpoint = images[0].fs_id.mountpoint if images else ""
            image_usage = filesystem_usage(Path(mountpoint)) if mountpoint else None
            filesystems = Filesystems(filesystem_usage(self.kubelet_root), image_usage)
            if images:
                image_fs = image_fs_stats(images[0], image_usage, rfc3339(now))
            disks = await self.in_thread(lambda: self._measure(by_sandbox.values(), kept))
        found = []
        for sandbox_stats in stats:
            sandbox = by_sandbox.get(sandbox_stats.attributes.id)
            if sandbox is None:
                continue
            disk = disks.get(sandbox.id)
            figures = PodFigures(
                sandbox,
                sandbox_stats,
                {c.id: c for c in kept.values() if c.pod_sandbox_id == sandbox.id},
                disk.logs if disk else {},
                disk.volumes if disk else (),
                disk.etc_hosts if disk else None,
            )
            found.append(
                pod_stats(
                    figures, self.rates, now, filesystems, only_cpu_and_memory=only_cpu_and_memory
                )
            )
        self.rates.forget_unseen()
        found.sort(key=lambda pod: (pod["podRef"]["namespace"], pod["podRef"]["name"]))
        return found, image_fs

    def _measure(
        self, sandboxes: Iterable[api.PodSandbox], containers: dict[str, api.Container]
    ) -> dict[str, PodDisk]:
        return {
            sandbox.id: measure_pod(
                self.kubelet_root,
                self.pod_logs,
                sandbox,
                {c.metadata.name for c in containers.values() if c.pod_sandbox_id == sandbox.id},
            )
            for sandbox in sandboxes
        }
