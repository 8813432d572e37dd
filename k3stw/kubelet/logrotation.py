"""
Container log rotation, as the kubelet's container log manager does it.

Every C{interval} (``containerLogMonitorInterval``, 10 s) each running
container's log (``<n>.log``) is measured; one of ``containerLogMaxSize``
(10Mi) or more is rotated: leftovers of an interrupted rotation removed
(``.tmp`` files, a rotated file that also exists compressed), the oldest
rotated files removed so that at most ``containerLogMaxFiles - 2`` remain,
the remaining uncompressed ones gzipped, then ``<n>.log`` renamed to
``<n>.log.<YYYYMMDD-hhmmss>`` (local time) and the runtime asked to reopen
the log (CRI ``ReopenContainerLog``), which creates a new ``<n>.log``; if
it cannot, the rename is undone.  A log that is missing is reopened too.

The kubelet itself reads only ``<n>.log``; a follower reads a rotated log
to its end and goes on with the new one (L{k3stw.kubelet.logstream}).
"""

from __future__ import annotations

import glob
import gzip
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool

from k3stw.kubelet.config import CONTAINER_LOG_MAX_FILES, CONTAINER_LOG_MAX_SIZE
from k3stw.kubelet.cri import api_pb2 as api
from k3stw.kubelet.cri.runtime import CRIError, Runtime
from k3stw.logs import Logger
from k3stw.machinery.timing import PeriodicJob

__all__ = [
    "LogRotation",
    "compress_log",
    "excess_logs",
    "rotation_job",
    "unused_logs",
]

#: ``containerLogMonitorInterval``.
MONITOR_INTERVAL = 10.0
#: The rotated file's suffix (Go's ``20060102-150405``).
ROTATED_SUFFIX = "%Y%m%d-%H%M%S"
COMPRESSED = ".gz"
TEMPORARY = ".tmp"
#: Go's ``gzip.DefaultCompression``.
GZIP_LEVEL = 6


def unused_logs(logs: Iterable[str]) -> tuple[list[str], list[str]]:
    """
    The rotated files of one log split in those in use and those an
    interrupted rotation left (temporary files, files also compressed).
    """
    logs = list(logs)
    present = set(logs)
    inuse: list[str] = []
    unused: list[str] = []
    for log in logs:
        if log.endswith(TEMPORARY) or (
            not log.endswith(COMPRESSED) and log + COMPRESSED in present
        ):
            unused.append(log)
        else:
            inuse.append(log)
    return inuse, unused


def excess_logs(logs: Sequence[str], max_files: int) -> tuple[list[str], list[str]]:
    """
    The rotated files to remove, oldest first, and those to keep: the
    current log and the one about to be rotated leave room for
    C{max_files - 2}.
    """
    ordered = sorted(logs)
    cut = max(0, len(ordered) - max(0, max_files - 2))
    return ordered[:cut], ordered[cut:]


def compress_log(path: str) -> None:
    """Gzip C{path} to C{path}.gz (through a temporary file), then remove it."""
    temporary = path + TEMPORARY
    try:
        mode = os.stat(path).st_mode & 0o777
        with open(path, "rb") as source, open(temporary, "wb") as raw:
            os.fchmod(raw.fileno(), mode)
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=GZIP_LEVEL) as packed:
                shutil.copyfileobj(source, packed)
        os.rename(temporary, path + COMPRESSED)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    os.remove(path)


def _in_threads(reactor: Any) -> Callable[[str], Deferred[None]]:
    """Compress in the reactor's thread pool where it has one (it takes a while), else now."""
    if IReactorThreads.providedBy(reactor):
        return lambda path: deferToThreadPool(reactor, reactor.getThreadPool(), compress_log, path)

    def now(path: str) -> Deferred[None]:
        compress_log(path)
        return succeed(None)

    return now


class LogRotation:
    """
    The rotation of the node's container logs (see the module docstring).

    :param max_size: ``containerLogMaxSize`` in bytes (negative: never rotate).
    :param max_files: ``containerLogMaxFiles`` (at least 2).
    :param compress: gzips a file (default: in the reactor's thread pool).
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        runtime: Runtime,
        max_size: int = CONTAINER_LOG_MAX_SIZE,
        max_files: int = CONTAINER_LOG_MAX_FILES,
        compress: Callable[[str], Deferred[None]] | None = None,
    ) -> None:
        self.clock = clock
        self.runtime = runtime
        self.max_size = max_size
        self.max_files = max_files
        self.compress = compress or _in_threads(clock)
        #: Each running container's log path: it never changes for a container,
        #: so one ContainerStatus each, not one per container every round.
        self._paths: dict[str, str] = {}

    async def rotate_all(self) -> None:
        """One round: every running container's log looked at, one after another."""
        if self.max_size < 0:
            return
        running = api.ContainerFilter(state=api.ContainerStateValue(state=api.CONTAINER_RUNNING))
        containers = await self.runtime.list_containers(running)
        ids = {container.id for container in containers}
        self._paths = {id: path for id, path in self._paths.items() if id in ids}
        for container in containers:
            try:
                await self.check(container.id)
            except (CRIError, OSError) as e:
                self._log.warn(
                    "Failed to rotate log for container {id}: {error}",
                    id=container.id[:13],
                    error=e,
                )

    async def check(self, container_id: str) -> None:
        """Rotate one container's log if it reached the size (reopen it if it is missing)."""
        path = self._paths.get(container_id)
        if path is None:
            path = self._paths[container_id] = (
                await self.runtime.container_status(container_id)
            ).log_path
        if not path:
            return
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            await self.runtime.reopen_container_log(container_id)
            size = os.stat(path).st_size
        if size >= self.max_size:
            await self.rotate(container_id, path)

    async def rotate(self, container_id: str, path: str) -> None:
        """Make room among the rotated files, compress them, rotate C{path} and reopen it."""
        inuse, unused = unused_logs(glob.glob(glob.escape(path) + ".*"))
        for log in unused:
            os.remove(log)
        excess, kept = excess_logs(inuse, self.max_files)
        for log in excess:
            os.remove(log)
        for log in kept:
            if not log.endswith(COMPRESSED):
                await self.compress(log)
        suffix = time.strftime(ROTATED_SUFFIX, time.localtime(self.clock.seconds()))
        rotated = f"{path}.{suffix}"
        os.rename(path, rotated)
        try:
            await self.runtime.reopen_container_log(container_id)
        except CRIError:
            # Put it back, to be rotated next round.
            os.rename(rotated, path)
            raise


def rotation_job(rotation: LogRotation, interval: float = MONITOR_INTERVAL) -> PeriodicJob:
    """The service that runs C{rotation} every C{interval} seconds."""
    return PeriodicJob(
        rotation.clock,
        interval,
        rotation.rotate_all,
        "Failed to rotate container logs",
        first=interval,
        expected=(CRIError, OSError),
    )
