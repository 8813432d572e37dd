"""
The kubelet's image garbage collection (kubelet 1.32's image GC manager).

Every five minutes (``ImageGCPeriod``) the images are listed with the
containers: an image a container (running or not) uses is used now; the
others keep the time they were last used.  When the image filesystem is
``imageGCHighThresholdPercent`` (85) full or more, the unused images first
seen ``imageMinimumGCAge`` (2 minutes) ago or earlier and not pinned (the
sandbox image) are removed, least recently used first, until it would be
down to ``imageGCLowThresholdPercent`` (80).  Not finding that much to free
is a ``FreeDiskSpaceFailed`` Warning on the node; a second failed collection
in a row also an ``ImageGCFailed`` one.

The runtime reports the image filesystem's mount point (``ImageFsInfo``), not
its size: the size is the file system's own (``statvfs``), as cAdvisor reads it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from k3stw.kubeclient import KubeAPI
from k3stw.kubelet.cri import api_pb2 as api
from k3stw.kubelet.cri.runtime import CRIError, Runtime
from k3stw.logs import Logger
from k3stw.machinery.events import WARNING, APIEvents, EventRecorder

#: How often images are collected (the kubelet's ``ImageGCPeriod``).
PERIOD = 300.0


@dataclass(frozen=True)
class ImageGCPolicy:
    """The kubelet's image GC settings, with its defaults."""

    high_threshold_percent: int = 85
    low_threshold_percent: int = 80
    minimum_age: float = 120.0


#: A file system's size and free bytes, by a path on it.
DiskUsage = Callable[[str], tuple[int, int]]


def statvfs_usage(path: str) -> tuple[int, int]:
    """The capacity and the bytes available of the file system holding C{path}."""
    found = os.statvfs(path)
    return found.f_blocks * found.f_frsize, found.f_bavail * found.f_frsize


class ImageGCFailed(Exception):
    """A collection could not free what it had to."""


@dataclass
class _Record:
    first_detected: float
    last_used: float
    size: int = 0
    pinned: bool = False


def _names(image: api.Image) -> set[str]:
    return {image.id, image.spec.image, *image.repo_tags, *image.repo_digests} - {""}


class ImageGC(Service):
    """Collects the node's unused images when its image filesystem fills up; see the module."""

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        runtime: Runtime,
        client: KubeAPI,
        node_name: str,
        policy: ImageGCPolicy | None = None,
        disk: DiskUsage = statvfs_usage,
    ) -> None:
        self.clock = clock
        self.runtime = runtime
        self.node_name = node_name
        self.policy = policy or ImageGCPolicy()
        self.disk = disk
        self.events = EventRecorder(APIEvents(client), clock, "kubelet", node_name)
        self._images: dict[str, _Record] = {}
        self._failed_before = False
        self._timer: IDelayedCall | None = None
        self._running: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self._timer = self.clock.callLater(PERIOD, self._collect)

    def stopService(self) -> None:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._running is not None:
            self._running.cancel()

    def _collect(self) -> None:
        self._timer = None
        self._running = Deferred.fromCoroutine(self.collect())
        self._running.addErrback(self._failed).addBoth(self._again)

    def _failed(self, failure: object) -> None:
        error = getattr(failure, "value", failure)
        if self._failed_before:
            self._log.warn("Image garbage collection failed multiple times in a row: {e}", e=error)
            self.events.emit(self._node(), WARNING, "ImageGCFailed", str(error))
        else:
            self._log.warn("Image garbage collection failed once: {e}", e=error)
        self._failed_before = True

    def _again(self, _: object) -> None:
        self._running = None
        if self.running:
            self._timer = self.clock.callLater(PERIOD, self._collect)

    def _node(self) -> dict[str, object]:
        """The node as the kubelet's Events name it (its UID is its name)."""
        meta = {"name": self.node_name, "uid": self.node_name}
        return {"kind": "Node", "apiVersion": "v1", "metadata": meta}

    async def detect(self, now: float) -> None:
        """Note the images there now, and which ones containers use."""
        images = await self.runtime.list_images()
        used = set()
        for container in await self.runtime.list_containers():
            used |= {container.image_ref, container.image.image} - {""}
        for image in images:
            record = self._images.setdefault(image.id, _Record(now, 0.0))
            record.size, record.pinned = image.size, image.pinned
            if _names(image) & used:
                record.last_used = now
        for gone in set(self._images) - {image.id for image in images}:
            del self._images[gone]

    async def collect(self) -> None:
        """
        One collection: free space down to the low threshold if the image
        filesystem is at the high one.

        :raises ImageGCFailed: there was not enough to free.
        """
        now = self.clock.seconds()
        await self.detect(now)
        filesystems = (await self.runtime.image_fs_info()).image_filesystems
        if not filesystems:
            raise ImageGCFailed("the runtime reports no image filesystem")
        capacity, available = self.disk(filesystems[0].fs_id.mountpoint)
        if capacity <= 0:
            raise ImageGCFailed(f"invalid capacity {capacity} on image filesystem")
        usage = 100 - available * 100 // capacity
        policy = self.policy
        if usage < policy.high_threshold_percent:
            self._failed_before = False
            return
        wanted = capacity * (100 - policy.low_threshold_percent) // 100 - available
        self._log.info(
            "Disk usage on image filesystem is at {usage}% which is over the high threshold "
            "({high}%). Trying to free {wanted} bytes down to the low threshold ({low}%).",
            usage=usage,
            high=policy.high_threshold_percent,
            wanted=wanted,
            low=policy.low_threshold_percent,
        )
        freed = await self.free(wanted, now)
        if freed < wanted:
            message = (
                "Failed to garbage collect required amount of images. Attempted to free "
                f"{wanted} bytes, but only found {freed} bytes eligible to free."
            )
            await self.events.emit(self._node(), WARNING, "FreeDiskSpaceFailed", message)
            raise ImageGCFailed(message)
        self._failed_before = False

    async def free(self, wanted: int, now: float) -> int:
        """Remove unused images, least recently used first, until C{wanted} bytes are freed."""
        candidates = sorted(
            (
                (record.last_used, record.first_detected, image_id)
                for image_id, record in self._images.items()
                if record.last_used < now
                and not record.pinned
                and now - record.first_detected >= self.policy.minimum_age
            ),
        )
        freed = 0
        for _, _, image_id in candidates:
            if freed >= wanted:
                break
            try:
                await self.runtime.remove_image(image_id)
            except CRIError as e:
                self._log.warn("Failed to remove image {id}: {error}", id=image_id, error=e)
                continue
            freed += self._images.pop(image_id).size
        return freed
