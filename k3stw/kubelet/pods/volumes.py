"""
The seam between the pod worker and the volume manager: L{VolumeManager}
makes a pod's volumes ready before its sandbox starts, refreshes the contents
of a running pod's volumes, gives each container its mounts, and tears the
volumes down once the pod is gone.
L{NoVolumes} is the manager of a node that mounts nothing: it accepts only
volumes a container can run without (none mounted, or the service account
token nobody mounts), and refuses the rest with a message the worker turns
into a C{FailedMount} event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from k3stw.kubelet.cri import api_pb2 as api
from k3stw.machinery.objects import Object, get_path

__all__ = ["MountError", "NoVolumes", "VolumeManager"]

#: The projected token volume admission adds to every pod: a container runs without it.
SERVICE_ACCOUNT_VOLUME = "kube-api-access-"


class MountError(Exception):
    """A pod's volumes cannot be made ready; the message is the FailedMount event's."""


class VolumeManager(Protocol):
    """What the pod worker asks of the volume manager."""

    async def prepare(self, pod: Object) -> None:
        """
        Make every volume of C{pod} ready.  Any error (L{MountError}, say)
        keeps the pod ContainerCreating; its message is the FailedMount event's.
        """

    async def refresh(self, pod: Object) -> None:
        """
        Bring the contents of a running pod's configMap, secret, downwardAPI
        and projected volumes up to date; errors as L{prepare}'s.
        """

    def mounts(self, pod: Object, container: Object) -> list[api.Mount]:
        """The CRI mounts of C{container} (its C{volumeMounts}), once L{prepare} succeeded."""

    async def cleanup(self, pod_uid: str) -> None:
        """Tear down everything prepared for the pod C{pod_uid} (it no longer runs here)."""


class NoVolumes:
    """A L{VolumeManager} that mounts nothing; see the module docstring."""

    async def prepare(self, pod: Mapping[str, Any]) -> None:
        mounted = {
            str(mount.get("name"))
            for key in ("initContainers", "containers")
            for container in get_path(pod, "spec", key) or ()
            for mount in container.get("volumeMounts") or ()
            if not str(mount.get("name")).startswith(SERVICE_ACCOUNT_VOLUME)
        }
        if mounted:
            names = ", ".join(sorted(mounted))
            raise MountError(
                f"MountVolume.SetUp failed for volumes [{names}]: this node mounts no volumes"
            )

    async def refresh(self, pod: Mapping[str, Any]) -> None:
        return None

    def mounts(self, pod: Mapping[str, Any], container: Mapping[str, Any]) -> list[api.Mount]:
        return []

    async def cleanup(self, pod_uid: str) -> None:
        return None
