"""
The mounts the volume manager makes itself: tmpfs for memory-backed volumes
(emptyDir ``medium: Memory``, and the secret, downwardAPI and projected
volumes, which kube keeps off the disk), made with mount(8) as the kubelet
does, and their unmounting.
"""

from __future__ import annotations

import os
from typing import Protocol

from twisted.internet.interfaces import IReactorProcess
from twisted.internet.utils import getProcessOutputAndValue


class MountError(Exception):
    """mount(8) or umount(8) failed; the message is the kubelet's (command, arguments, output)."""


class Mounter(Protocol):
    """How the volume manager mounts and unmounts (L{SystemMounter}, or a test's)."""

    def is_mounted(self, path: str) -> bool:
        """Whether something is mounted at C{path}."""

    async def mount_tmpfs(self, path: str, size: int | None) -> None:
        """Mount a tmpfs at C{path}, of at most C{size} bytes if given; L{MountError} if refused."""

    async def unmount(self, path: str) -> None:
        """Unmount C{path}; L{MountError} if that fails."""


class SystemMounter:
    """Mounts through mount(8) and umount(8), in this process's mount namespace."""

    def __init__(self, reactor: IReactorProcess, mount: str = "mount", umount: str = "umount"):
        self.reactor = reactor
        self.mount = mount
        self.umount = umount

    def is_mounted(self, path: str) -> bool:
        return os.path.ismount(path)

    async def mount_tmpfs(self, path: str, size: int | None) -> None:
        args = ["-t", "tmpfs", *(["-o", f"size={size}"] if size is not None else []), "tmpfs", path]
        await self._run(self.mount, args)

    async def unmount(self, path: str) -> None:
        await self._run(self.umount, [path])

    async def _run(self, command: str, args: list[str]) -> None:
        out, err, code = await getProcessOutputAndValue(
            command, args, env=dict(os.environ), reactor=self.reactor
        )
        if code != 0:
            output = (out + err).decode("utf-8", "replace").strip()
            verb = "mount" if command == self.mount else "unmount"
            raise MountError(
                f"{verb} failed: exit status {code}\nMounting command: {command}\n"
                f"Mounting arguments: {' '.join(args)}\nOutput: {output}"
            )
