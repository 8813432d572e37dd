"""
kube-scheduler's VolumeBinding plugin: a pod's PersistentVolumeClaims.

- PreFilter: a claim that does not exist, or is being deleted, or is
  unbound in a class that binds at once (``Immediate``), keeps the pod off
  every node;
- Filter: a node must satisfy the node affinity of every bound claim's
  volume, and, for each unbound claim of a ``WaitForFirstConsumer`` class,
  either have a matching available volume or a class that can provision one;
- PreBind: on the chosen node, each unbound claim gets its volume reserved
  (the volume's ``claimRef``) or, to be provisioned there, the node
  (``volume.kubernetes.io/selected-node``); the pod is bound once the
  persistentvolume-binder has bound every claim (at most 10 minutes).

Left out: the storage capacity check (CSIStorageCapacity), the class's
``allowedTopologies``, scoring by volume size, ``VolumeRestrictions``,
``NodeVolumeLimits`` and ``VolumeZone``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall

from k3stw.apiserver.informers import ServerInformers
from k3stw.apiserver.registry import Registry
from k3stw.apiserver.storage import ObjectStore
from k3stw.controllers.persistentvolumes import (
    BIND_COMPLETED,
    BOUND_BY_CONTROLLER,
    NO_PROVISIONER,
    SELECTED_NODE,
    StorageKinds,
    best_match,
    claim_ref,
    claims_of,
    waits_for_consumer,
)
from k3stw.machinery.informer import each_change
from k3stw.machinery.nodeaffinity import matches_node_selector
from k3stw.machinery.objects import (
    Object,
    get_path,
    is_deleting,
    join_key,
    metadata,
    name_of,
    namespace_of,
    object_key,
)
from k3stw.scheduler.framework import NEVER_PREEMPTS, NOT_HELPFUL, NodeState, Rejection, histogram

NODE_CONFLICT = "node(s) had volume node affinity conflict"
BIND_CONFLICT = "node(s) didn't find available persistent volumes to bind"
UNBOUND_IMMEDIATE = "pod has unbound immediate PersistentVolumeClaims"
#: kube-scheduler's ``bindTimeoutSeconds``: how long PreBind waits for the claims to be bound.
BIND_TIMEOUT = 600.0


class VolumesNotBound(Exception):
    """PreBind gave up waiting for the pod's claims to be bound."""


@dataclass
class PodVolumes:
    """A pod's claims as PreFilter found them: bound ones' volumes, unbound delayed ones."""

    bound: list[Object] = field(default_factory=list)
    #: (claim, its class) of each unbound claim of a WaitForFirstConsumer class.
    delayed: list[tuple[Object, Object]] = field(default_factory=list)
    volumes: list[Object] = field(default_factory=list)

    def matching_volume(self, claim: Object, node: Object) -> Object | None:
        """An available volume that matches the claim and may be used on C{node}."""
        return best_match((v for v in self.volumes if _on_node(v, node)), claim)

    def filter(self, state: NodeState) -> Rejection | None:
        node = state.node or {"metadata": {"name": state.name}}
        if any(not _on_node(volume, node) for volume in self.bound):
            return Rejection((NODE_CONFLICT,), False)
        for claim, storage_class in self.delayed:
            if self.matching_volume(claim, node) is not None:
                continue
            if storage_class.get("provisioner") in (None, "", NO_PROVISIONER):
                return Rejection((BIND_CONFLICT,), False)
        return None


def _on_node(volume: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    required = get_path(volume, "spec", "nodeAffinity", "required")
    return required is None or matches_node_selector(required, node)


def pre_filter_error(reason: str, nodes: int, preemption_policy: str) -> str:
    """The ``FailedScheduling`` message of a pod PreFilter turned away from every node."""
    if preemption_policy == "Never":
        tail = NEVER_PREEMPTS
    else:
        tail = histogram([NOT_HELPFUL] * nodes, nodes)
    return f"0/{nodes} nodes are available: {reason}. preemption: {tail}"


@dataclass
class _Wait:
    keys: list[str]
    done: Deferred[None]
    timer: IDelayedCall | None = None


class VolumeBinding(StorageKinds):
    """The plugin, on the shared informers of claims, volumes and classes."""

    def __init__(self, informers: ServerInformers, store: ObjectStore, registry: Registry) -> None:
        super().__init__(informers, registry)
        self.store = store
        self._waits: list[_Wait] = []
        self.claims.add_handler(each_change(self._claim_changed, deletions=False))

    def pre_filter(self, pod: Object) -> PodVolumes | str | None:
        """
        The pod's claims (None if it has none), or why no node can take it.
        """
        names = claims_of(pod)
        if not names:
            return None
        namespace = namespace_of(pod)
        found = PodVolumes(volumes=self.volumes.cache.list())
        for name in names:
            claim = self.claims.get(join_key(namespace, name))
            if claim is None:
                return f'persistentvolumeclaim "{name}" not found'
            if is_deleting(claim):
                return f'persistentvolumeclaim "{name}" is being deleted'
            volume_name = get_path(claim, "spec", "volumeName")
            if volume_name:
                volume = self.volumes.get(str(volume_name))
                if volume is None:
                    return f'persistentvolume "{volume_name}" not found'
                found.bound.append(volume)
                continue
            storage_class = self.class_of(claim)
            if not waits_for_consumer(storage_class):
                return UNBOUND_IMMEDIATE
            assert storage_class is not None
            found.delayed.append((claim, storage_class))
        return found

    async def pre_bind(self, volumes: PodVolumes, node: Object) -> None:
        """
        Reserve or ask for each unbound claim's volume on C{node}; wait until
        every claim is bound.

        :raises VolumesNotBound: they were not bound in time.
        """
        if not volumes.delayed:
            return
        for claim, _ in volumes.delayed:
            chosen = volumes.matching_volume(claim, node)
            if chosen is not None:
                await self._reserve(chosen, claim)
            else:
                await self._select_node(claim, name_of(node))
        await self._bound([object_key(claim) for claim, _ in volumes.delayed])

    async def _reserve(self, volume: Object, claim: Object) -> None:
        def reserve(current: Object) -> Object:
            if get_path(current, "spec", "claimRef"):
                return current
            current["spec"]["claimRef"] = claim_ref(claim)
            annotations = current["metadata"].setdefault("annotations", {})
            annotations[BOUND_BY_CONTROLLER] = "yes"
            return current

        await self.store.guaranteed_update(self.volume_resource, None, name_of(volume), reserve)

    async def _select_node(self, claim: Object, node: str) -> None:
        def select(current: Object) -> Object:
            current["metadata"].setdefault("annotations", {})[SELECTED_NODE] = node
            return current

        if (metadata(claim).get("annotations") or {}).get(SELECTED_NODE) != node:
            await self.store.guaranteed_update(
                self.claim_resource, namespace_of(claim), name_of(claim), select
            )

    def _bound(self, keys: list[str]) -> Deferred[None]:
        if self._all_bound(keys):
            return succeed(None)

        def cancel(_: Deferred[None]) -> None:
            self._drop(wait)

        wait = _Wait(keys, Deferred(cancel))

        def timed_out() -> None:
            wait.timer = None
            self._drop(wait)
            wait.done.errback(VolumesNotBound("binding volumes: context deadline exceeded"))

        wait.timer = self.store.clock.callLater(BIND_TIMEOUT, timed_out)
        self._waits.append(wait)
        return wait.done

    def _drop(self, wait: _Wait) -> None:
        if wait in self._waits:
            self._waits.remove(wait)
        if wait.timer is not None and wait.timer.active():
            wait.timer.cancel()
        wait.timer = None

    def _all_bound(self, keys: list[str]) -> bool:
        for key in keys:
            claim = self.claims.get(key)
            if claim is None or not get_path(claim, "spec", "volumeName"):
                return False
            if BIND_COMPLETED not in (metadata(claim).get("annotations") or {}):
                return False
        return True

    def _claim_changed(self, claim: Object) -> None:
        key = object_key(claim)
        for wait in [w for w in self._waits if key in w.keys]:
            if self._all_bound(wait.keys):
                self._drop(wait)
                wait.done.callback(None)
