"""
The kubelet's volume manager: a pod's volumes set up under the kubelet's
root directory as kube lays them out
(``pods/<uid>/volumes/kubernetes.io~<plugin>/<name>``), the CRI mounts of a
container's ``volumeMounts``, and the pod's directory removed when it is gone.

Setting up again is how contents follow their objects: the pod worker calls
L{VolumeManager.prepare} (or the lighter L{VolumeManager.refresh}) on each
sync, as the kubelet's reconciler remounts configMap, secret, downwardAPI and
projected volumes; files change only when the objects did, and atomically.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime

from k3stw.kubeclient import KubeAPIError
from k3stw.kubelet.cri import api_pb2
from k3stw.kubelet.volumes.atomic import FileProjection, PayloadError, write_payload
from k3stw.kubelet.volumes.mounter import Mounter, MountError
from k3stw.kubelet.volumes.ownership import set_volume_ownership
from k3stw.kubelet.volumes.sources import (
    DEFAULT_MODE,
    SourceError,
    aggregate,
    configmap_payload,
    container_env,
    downward_payload,
    expand,
    needs_allocatable,
    secret_payload,
)
from k3stw.kubelet.volumes.tokens import TokenKey, TokenManager
from k3stw.machinery.objects import Object, get_path, name_of, namespace_of, uid_of
from k3stw.machinery.quantity import parse_quantity

#: Where k3s's kubelet keeps its state (kube's default ``--root-dir``).
KUBELET_ROOT = "/var/lib/kubelet"

#: Volume kinds whose files the kubelet writes, by their plugin directory.
PLUGINS = {
    "emptyDir": "kubernetes.io~empty-dir",
    "configMap": "kubernetes.io~configmap",
    "secret": "kubernetes.io~secret",
    "downwardAPI": "kubernetes.io~downward-api",
    "projected": "kubernetes.io~projected",
}
#: The kinds set up again on every sync, so that their files follow their objects.
_REMOUNTED = ("configMap", "secret", "downwardAPI", "projected")
#: The kinds the kubelet keeps in memory (an emptyDir of medium Memory under them).
_IN_MEMORY = ("secret", "downwardAPI", "projected")
#: The kinds a container only ever reads.
_READ_ONLY = ("configMap", "secret", "downwardAPI", "projected")

_PROPAGATION = {
    None: api_pb2.PROPAGATION_PRIVATE,
    "None": api_pb2.PROPAGATION_PRIVATE,
    "HostToContainer": api_pb2.PROPAGATION_HOST_TO_CONTAINER,
    "Bidirectional": api_pb2.PROPAGATION_BIDIRECTIONAL,
}

#: Who made a PersistentVolume, and the provisioner of k3s's ``local-path`` class
#: (L{k3stw.controllers.localpath}), whose volumes' directories the kubelet makes.
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
LOCAL_PATH_PROVISIONER = "rancher.io/local-path"


class VolumeAPI(Protocol):
    """What the volume manager asks of the API (L{k3stw.kubeclient.KubeClient} has it)."""

    async def get(self, path: str) -> Object: ...

    async def create(self, path: str, obj: Object) -> Object: ...


class VolumeError(Exception):
    """
    A pod's volumes could not all be set up.

    :ivar messages: one per failed volume, in kube's words: for a mount that
        failed, the ``FailedMount`` event's message (``MountVolume.SetUp
        failed for volume "cfg" : configmap "x" not found``); for a claim not
        yet usable, the volume manager's (``error processing PVC ...``).
    :ivar waiting: only claims are not ready: the pod waits (kube records no
        event for that; the pod stays ``ContainerCreating``).
    """

    def __init__(self, messages: list[str], waiting: bool = False) -> None:
        super().__init__(messages[0])
        self.messages = messages
        self.waiting = waiting


class _ClaimNotReady(Exception):
    """A persistentVolumeClaim (or its volume) the pod cannot use yet."""


@dataclass(frozen=True)
class _Volume:
    """A set-up volume: where it is on the host, and whether containers only read it."""

    path: str
    read_only: bool


class VolumeManager:
    """
    One node's pod volumes.

    :param client: the API with the node's identity (it reads the ConfigMaps,
        Secrets, claims and volumes its pods use, and asks for their tokens).
    :param clock: names data directories and times token refreshes.
    :param node_name: this node (its allocatable resources fill unset limits).
    :param root_dir: the kubelet's root directory.
    :param mounter: makes the tmpfs mounts of memory-backed volumes.
    :param chance: a number in [0, 1) for each token refresh's jitter.
    """

    def __init__(
        self,
        client: VolumeAPI,
        clock: IReactorTime,
        node_name: str,
        mounter: Mounter,
        root_dir: str = KUBELET_ROOT,
        chance: Callable[[], float] = random.random,
    ) -> None:
        self.client = client
        self.clock = clock
        self.node_name = node_name
        self.mounter = mounter
        self.root = Path(root_dir).absolute()
        self.tokens = TokenManager(client, clock, chance)
        self._volumes: dict[str, dict[str, _Volume]] = {}

    def pod_dir(self, pod_uid: str) -> Path:
        """``<root>/pods/<uid>``: everything the kubelet keeps for one pod."""
        return self.root / "pods" / pod_uid

    def volume_dir(self, pod_uid: str, plugin: str, name: str) -> Path:
        """Where a volume of a kind the kubelet writes lives (C{plugin}: ``configMap``, ...)."""
        return self.pod_dir(pod_uid) / "volumes" / PLUGINS[plugin] / name

    async def prepare(self, pod: Object) -> None:
        """
        Set up every volume of C{pod} (again: contents follow their objects).

        :raises VolumeError: for each volume that failed, kube's message.
        """
        await self._set_up(pod, only_remounted=False)

    async def refresh(self, pod: Object) -> None:
        """
        Bring the pod's configMap, secret, downwardAPI and projected volumes up
        to date (rotating tokens that are due), leaving the others alone.

        :raises VolumeError: as L{prepare}.
        """
        await self._set_up(pod, only_remounted=True)

    async def _set_up(self, pod: Object, only_remounted: bool) -> None:
        uid = uid_of(pod)
        volumes = self._volumes.setdefault(uid, {})
        failed: list[str] = []
        waiting: list[str] = []
        for volume in (pod.get("spec") or {}).get("volumes") or []:
            name = str(volume.get("name", ""))
            kind = _kind(volume)
            if only_remounted and kind not in _REMOUNTED:
                continue
            try:
                volumes[name] = await self._set_up_volume(pod, volume, kind)
            except _ClaimNotReady as e:
                waiting.append(str(e))
            except (SourceError, PayloadError, MountError, KubeAPIError, OSError) as e:
                failed.append(f'MountVolume.SetUp failed for volume "{name}" : {_message(e)}')
        if failed or waiting:
            raise VolumeError(failed + waiting, waiting=not failed)

    async def _set_up_volume(self, pod: Object, volume: Object, kind: str) -> _Volume:
        uid, name = uid_of(pod), str(volume["name"])
        source = volume.get(kind) or {}
        if kind == "hostPath":
            path = str(source.get("path", ""))
            check_host_path(path, source.get("type") or "")
            return _Volume(path, False)
        if kind in ("persistentVolumeClaim", "ephemeral"):
            return await self._claimed(pod, volume, kind)
        if kind not in PLUGINS:
            raise SourceError(f"volume type {kind or 'unknown'} is not supported by k3stw")
        target = self.volume_dir(uid, kind, name)
        in_memory = kind in _IN_MEMORY or (kind == "emptyDir" and source.get("medium") == "Memory")
        if kind == "emptyDir" and source.get("medium") not in (None, "", "Memory"):
            raise SourceError(f"medium {source['medium']} is not supported by k3stw")
        if not target.is_dir():
            target.mkdir(parents=True)
            target.chmod(0o777)
        if in_memory and not self.mounter.is_mounted(str(target)):
            limit = source.get("sizeLimit") if kind == "emptyDir" else None
            await self.mounter.mount_tmpfs(str(target), await self._tmpfs_size(pod, limit))
            target.chmod(0o777)
        if kind != "emptyDir":
            payload = await self._payload(pod, kind, source)
            write_payload(target, payload, self.clock.seconds())
        context = get_path(pod, "spec", "securityContext") or {}
        if context.get("fsGroup") is not None:
            policy = str(context.get("fsGroupChangePolicy") or "Always")
            set_volume_ownership(target, int(context["fsGroup"]), kind in _READ_ONLY, policy)
        return _Volume(str(target), kind in _READ_ONLY)

    async def _tmpfs_size(self, pod: Object, size_limit: object) -> int | None:
        """
        A memory-backed volume's size (kube's ``calculateEmptyDirMemorySize``):
        the node's allocatable memory, or less: the pod's memory limit, then
        the volume's ``sizeLimit``.
        """
        node = await self.client.get(f"/api/v1/nodes/{self.node_name}")
        allocatable = ((node.get("status") or {}).get("allocatable") or {}).get("memory")
        size = int(parse_quantity(allocatable).value) if allocatable else None
        volume_limit = int(parse_quantity(size_limit).value) if size_limit else None
        for smaller in (pod_memory_limit(pod), volume_limit):
            if smaller is not None and smaller > 0 and (size is None or smaller <= size):
                size = smaller
        return size

    async def _payload(self, pod: Object, kind: str, source: Object) -> dict[str, FileProjection]:
        mode = _mode(source)
        namespace = namespace_of(pod)
        if kind == "configMap":
            found = await self._object(namespace, "configmaps", str(source.get("name", "")), source)
            return configmap_payload(source, found, mode)
        if kind == "secret":
            found = await self._object(
                namespace, "secrets", str(source.get("secretName", "")), source
            )
            return secret_payload(source, found, mode)
        if kind == "downwardAPI":
            items = list(source.get("items") or [])
            return downward_payload(items, pod, await self._allocatable(items), mode)
        return await self._projected(pod, source, mode)

    async def _projected(self, pod: Object, source: Object, mode: int) -> dict[str, FileProjection]:
        """A projected volume's files, every source's error aggregated as kube does."""
        payload: dict[str, FileProjection] = {}
        errors: list[str] = []
        namespace = namespace_of(pod)
        for projection in source.get("sources") or []:
            try:
                payload.update(await self._projection(pod, namespace, projection, mode))
            except (SourceError, KubeAPIError) as e:
                errors.append(_message(e))
        if errors:
            raise SourceError(aggregate(errors))
        return payload

    async def _projection(
        self, pod: Object, namespace: str, projection: Object, mode: int
    ) -> dict[str, FileProjection]:
        if "configMap" in projection:
            source = projection["configMap"] or {}
            found = await self._object(namespace, "configmaps", str(source.get("name", "")), source)
            return configmap_payload(source, found, mode)
        if "secret" in projection:
            source = projection["secret"] or {}
            found = await self._object(namespace, "secrets", str(source.get("name", "")), source)
            return secret_payload(source, found, mode)
        if "downwardAPI" in projection:
            items = list((projection["downwardAPI"] or {}).get("items") or [])
            return downward_payload(items, pod, await self._allocatable(items), mode)
        if "serviceAccountToken" in projection:
            source = projection["serviceAccountToken"] or {}
            audience = str(source.get("audience") or "")
            key = TokenKey(
                namespace,
                str((pod.get("spec") or {}).get("serviceAccountName") or "default"),
                (audience,) if audience else (),
                int(source.get("expirationSeconds") or 3600),
                name_of(pod),
                uid_of(pod),
            )
            token = await self.tokens.token(key)
            return {str(source.get("path", "")): FileProjection(token.encode(), mode)}
        raise SourceError(f"unsupported projected volume source: {sorted(projection)}")

    async def _object(
        self, namespace: str, plural: str, name: str, source: Mapping[str, Any]
    ) -> Object | None:
        """A ConfigMap or Secret; None if it is missing and optional (kube's singular 404)."""
        try:
            return await self.client.get(f"/api/v1/namespaces/{namespace}/{plural}/{name}")
        except KubeAPIError as e:
            if e.code != 404:
                raise
            if source.get("optional"):
                return None
            raise SourceError(f'{plural.removesuffix("s")} "{name}" not found') from None

    async def _allocatable(self, items: list[Object]) -> Mapping[str, Any]:
        """The node's allocatable resources, read only when a resourceFieldRef needs them."""
        if not needs_allocatable(items):
            return {}
        node = await self.client.get(f"/api/v1/nodes/{self.node_name}")
        return dict((node.get("status") or {}).get("allocatable") or {})

    async def _claimed(self, pod: Object, volume: Object, kind: str) -> _Volume:
        """The volume a claim is bound to, used in place (hostPath and local volumes)."""
        namespace, name = namespace_of(pod), str(volume["name"])
        if kind == "ephemeral":
            claim_name, read_only = f"{name_of(pod)}-{name}", False
        else:
            claim_name = str(volume["persistentVolumeClaim"].get("claimName", ""))
            read_only = bool(volume["persistentVolumeClaim"].get("readOnly"))
        prefix = f"error processing PVC {namespace}/{claim_name}: "
        try:
            claim = await self.client.get(
                f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim_name}"
            )
        except KubeAPIError as e:
            raise _ClaimNotReady(
                f"{prefix}failed to fetch PVC from API server: {_message(e)}"
            ) from None
        volume_name = str((claim.get("spec") or {}).get("volumeName") or "")
        phase = str((claim.get("status") or {}).get("phase") or "")
        if phase != "Bound" or not volume_name:
            raise _ClaimNotReady(
                f'{prefix}PVC {namespace}/{claim_name} has non-bound phase ("{phase}") '
                f'or empty pvc.Spec.VolumeName ("{volume_name}")'
            )
        try:
            bound = await self.client.get(f"/api/v1/persistentvolumes/{volume_name}")
        except KubeAPIError as e:
            raise _ClaimNotReady(
                f"{prefix}failed to fetch PV {volume_name} from API server: {_message(e)}"
            ) from None
        spec = bound.get("spec") or {}
        claim_ref = spec.get("claimRef")
        if not claim_ref:
            raise _ClaimNotReady(
                f"{prefix}found PV object {volume_name} but it has a nil pv.Spec.ClaimRef "
                "indicating it is not yet bound to the claim"
            )
        if claim_ref.get("uid") != uid_of(claim):
            raise _ClaimNotReady(
                f"{prefix}found PV object {volume_name} but its pv.Spec.ClaimRef.UID "
                f"({claim_ref.get('uid', '')}) does not point to claim.UID ({uid_of(claim)})"
            )
        if spec.get("hostPath"):
            path = str(spec["hostPath"].get("path", ""))
            check_host_path(path, spec["hostPath"].get("type") or "")
        elif spec.get("local"):
            path = str(spec["local"].get("path", ""))
            annotations = (bound.get("metadata") or {}).get("annotations") or {}
            if annotations.get(PROVISIONED_BY) == LOCAL_PATH_PROVISIONER:
                # k3s's provisioner runs a helper pod that makes the directory
                # (``mkdir -m 0777 -p``); k3stw's kubelet makes it in its place.
                os.makedirs(path, mode=0o777, exist_ok=True)
                os.chmod(path, 0o777)
            if not os.path.exists(path):
                raise SourceError(f'path "{path}" does not exist')
        else:
            raise SourceError(
                f"persistent volume {volume_name}: only hostPath and local are supported"
            )
        return _Volume(path, read_only or bool(spec.get("hostPath", {}).get("readOnly")))

    def mounts(self, pod: Object, container: Object) -> list[api_pb2.Mount]:
        """
        The CRI mounts of a container's ``volumeMounts``, of volumes L{prepare} set up.
        A ``subPath`` (or ``subPathExpr``, expanded with the container's plain and
        pod-field variables) is created if missing (with its volume's mode) and
        may not leave its volume, symlinks resolved.

        :raises VolumeError: a mount of a volume that is not set up, or a bad subPath.
        """
        volumes = self._volumes.get(uid_of(pod), {})
        container_name = str(container.get("name", ""))
        mounts = []
        for mount in container.get("volumeMounts") or []:
            name = str(mount.get("name", ""))
            volume = volumes.get(name)
            if volume is None:
                raise VolumeError(
                    [f'cannot find volume "{name}" to mount into container "{container_name}"']
                )
            host_path = volume.path
            sub_path = str(mount.get("subPath") or "")
            if mount.get("subPathExpr"):
                sub_path = expand(str(mount["subPathExpr"]), container_env(pod, container))
            if sub_path:
                host_path = _sub_path(volume.path, sub_path, name, container_name)
            mounts.append(
                api_pb2.Mount(
                    container_path=str(mount.get("mountPath", "")),
                    host_path=host_path,
                    readonly=bool(mount.get("readOnly")) or volume.read_only,
                    selinux_relabel=False,
                    propagation=_PROPAGATION.get(
                        mount.get("mountPropagation"), api_pb2.PROPAGATION_PRIVATE
                    ),
                )
            )
        return mounts

    async def cleanup(self, pod_uid: str) -> None:
        """
        Unmount the pod's memory-backed volumes and remove its directory, and
        forget its tokens.  Host paths and claimed volumes are left as they are.

        :raises VolumeError: an unmount failed (the directory is kept).
        """
        self.tokens.forget(pod_uid)
        self._volumes.pop(pod_uid, None)
        volumes = self.pod_dir(pod_uid) / "volumes"
        failed = []
        if volumes.is_dir():
            for plugin in volumes.iterdir():
                for volume in plugin.iterdir():
                    if self.mounter.is_mounted(str(volume)):
                        try:
                            await self.mounter.unmount(str(volume))
                        except MountError as e:
                            failed.append(
                                f'UnmountVolume.TearDown failed for volume "{volume.name}" : {e}'
                            )
        if failed:
            raise VolumeError(failed)
        shutil.rmtree(self.pod_dir(pod_uid), ignore_errors=True)


def pod_memory_limit(pod: Mapping[str, Any]) -> int | None:
    """
    The pod's memory limit as its cgroup gets it: its containers' limits added
    up (or an init container's, if larger), plus its overhead; None unless
    every container has one.
    """
    spec = pod.get("spec") or {}

    def limit(container: Mapping[str, Any]) -> int | None:
        given = ((container.get("resources") or {}).get("limits") or {}).get("memory")
        return int(parse_quantity(given).value) if given else None

    containers = [limit(c) for c in spec.get("containers") or []]
    inits = [limit(c) for c in spec.get("initContainers") or []]
    if not containers or None in containers or None in inits:
        return None
    total = max([sum(c or 0 for c in containers), *(i or 0 for i in inits)])
    overhead = (spec.get("overhead") or {}).get("memory")
    return total + (int(parse_quantity(overhead).value) if overhead else 0)


def _kind(volume: Mapping[str, Any]) -> str:
    """A volume's source: the one key besides its name."""
    return next((key for key in volume if key != "name"), "")


def _mode(source: Mapping[str, Any]) -> int:
    mode = source.get("defaultMode")
    return DEFAULT_MODE if mode is None else int(mode)


def _message(error: Exception) -> str:
    """An error's own words (an API error's Status message)."""
    if isinstance(error, KubeAPIError):
        return str(error.status.get("message") or error)
    if isinstance(error, OSError) and error.strerror:
        where = f" {error.filename}" if error.filename else ""
        return f"{error.strerror.lower()}{':' if where else ''}{where}"
    return str(error)


def check_host_path(path: str, kind: str) -> None:
    """
    kube's hostPath type check: create what the ``...OrCreate`` types ask for,
    refuse a path that is not of the type given.

    :raises SourceError: in kube's words.
    """
    checks = {
        "Directory": (stat.S_ISDIR, "a directory"),
        "File": (stat.S_ISREG, "a file"),
        "Socket": (stat.S_ISSOCK, "a socket file"),
        "CharDevice": (stat.S_ISCHR, "a character device"),
        "BlockDevice": (stat.S_ISBLK, "a block device"),
    }
    if kind == "":
        return
    exists = os.path.lexists(path)
    if kind == "DirectoryOrCreate":
        if not exists:
            os.makedirs(path, 0o755, exist_ok=True)
            return
        kind = "Directory"
    elif kind == "FileOrCreate":
        if not exists:
            fd = os.open(path, os.O_CREAT | os.O_RDONLY, 0o644)
            os.close(fd)
            return
        kind = "File"
    if kind not in checks:
        raise SourceError(f"{kind} is an invalid volume type")
    test, what = checks[kind]
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = 0
    if not test(mode):
        raise SourceError(f"hostPath type check failed: {path} is not {what}")


def _sub_path(volume_path: str, sub_path: str, name: str, container: str) -> str:
    """A volumeMount's subPath in its volume, created if missing, never outside it."""
    if os.path.isabs(sub_path):
        raise VolumeError([f"error SubPath `{sub_path}` must not be an absolute path"])
    if ".." in sub_path.split("/"):
        raise VolumeError([f"unable to provision SubPath `{sub_path}`: must not contain '..'"])
    path = os.path.join(volume_path, sub_path)
    if not os.path.lexists(path):
        try:
            os.makedirs(path, exist_ok=True)
            os.chmod(path, stat.S_IMODE(os.stat(volume_path).st_mode))
        except OSError:
            raise VolumeError(
                [
                    f'failed to create subPath directory for volumeMount "{name}" '
                    f'of container "{container}"'
                ]
            ) from None
    resolved, base = os.path.realpath(path), os.path.realpath(volume_path)
    if resolved != base and not resolved.startswith(base + os.sep):
        raise VolumeError([f'subpath "{resolved}" not within volume path "{base}"'])
    return resolved
